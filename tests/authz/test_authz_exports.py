"""The authorization core's modules: explicit __all__, and no party imported."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

MODULES = [
    "audit",
    "catalog",
    "ciba",
    "clientauth",
    "clients",
    "consent",
    "errors",
    "form",
    "grants",
    "introspection",
    "metadata",
    "rar",
    "registration",
    "revocation",
    "tokens",
]
SOURCE = Path(importlib.import_module("patientkey.authz").__file__ or "").parent
PARTIES = ("platform", "hospital", "thirdparty", "wallet", "kme")


def test_every_module_is_listed():
    """The list above names every module of the package."""
    assert sorted(p.stem for p in SOURCE.glob("*.py") if p.stem != "__init__") == MODULES


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    """Every name in a module's __all__ exists, once."""
    module = importlib.import_module(f"patientkey.authz.{name}")
    exported = module.__all__
    assert exported
    assert len(set(exported)) == len(exported)
    assert [n for n in exported if not hasattr(module, n)] == []


@pytest.mark.parametrize("name", MODULES)
def test_core_imports_no_party_and_no_io_layer(name):
    """A shared, sans-IO layer: no party, no HTTP, no storage engine."""
    tree = ast.parse((SOURCE / f"{name}.py").read_text(encoding="utf-8"))
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    forbidden = (
        *(f"patientkey.{p}" for p in PARTIES),
        "patientkey.service",
        "patientkey.storage",
        "fastapi",
        "httpx",
        "sqlalchemy",
    )
    assert sorted(m for m in imported if m.startswith(forbidden)) == []


def test_scenarios_toml_ships_with_the_package():
    """The catalog file sits next to the code (package data: **/*.toml)."""
    assert (SOURCE / "scenarios.toml").is_file()
