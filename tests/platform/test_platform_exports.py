"""The platform's modules: explicit __all__ that resolves, and no import of another party."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

MODULES = ["app", "audit", "cli", "core", "kue", "server", "settings"]
SOURCE = Path(importlib.import_module("patientkey.platform").__file__ or "").parent


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    """Every name in a platform module's __all__ exists, once."""
    module = importlib.import_module(f"patientkey.platform.{name}")
    exported = module.__all__
    assert len(set(exported)) == len(exported)
    assert [n for n in exported if not hasattr(module, n)] == []


@pytest.mark.parametrize("name", MODULES)
def test_no_other_party_is_imported(name):
    """A party imports the protocol and shared layers, never another party's package."""
    tree = ast.parse((SOURCE / f"{name}.py").read_text(encoding="utf-8"))
    imported = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    parties = ("patientkey.hospital", "patientkey.thirdparty", "patientkey.wallet")
    assert [m for m in imported if m.startswith(parties)] == []
