"""Every name the hospital and third-party modules export exists (STYLE.md 10)."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    f"patientkey.{party}.{module}"
    for party in ("hospital", "thirdparty")
    for module in ("core", "app", "server", "settings", "cli")
] + [
    "patientkey.hospital.enrollment",
    "patientkey.crypto.vault",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    """__all__ is declared and every name in it is defined."""
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported, name
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.{symbol}"


def test_parties_do_not_import_each_other():
    """A party imports the protocol and shared blocks, never another party's folder."""
    import ast
    from pathlib import Path

    root = Path(importlib.import_module("patientkey").__file__).parent
    others = {
        "hospital": ("platform", "wallet", "thirdparty"),
        "thirdparty": ("platform", "wallet", "hospital"),
    }
    for party, forbidden in others.items():
        for path in (root / party).glob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert not node.module.startswith(
                        tuple(f"patientkey.{f}" for f in forbidden)
                    ), path
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        assert not alias.name.startswith(
                            tuple(f"patientkey.{f}" for f in forbidden)
                        ), path
