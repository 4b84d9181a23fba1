"""The public surface of patientkey.storage: explicit __all__ that resolves."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "patientkey.storage",
    "patientkey.storage.engine",
    "patientkey.storage.schema",
    "patientkey.storage.repos",
    "patientkey.storage.memory",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    """Every name in a storage module's __all__ exists and __all__ has no duplicates."""
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported)
    assert [n for n in exported if not hasattr(module, n)] == []


def test_package_exports_the_public_api():
    """The package re-exports the opener, the repositories and their interfaces."""
    storage = importlib.import_module("patientkey.storage")
    for name in ("open_database", "Database", "PlatformRepo", "PlatformRepository", "SqlStore"):
        assert name in storage.__all__
