"""The package's layering: parties never import each other, shared layers import no party."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import patientkey

ROOT = Path(patientkey.__file__).parent
PARTIES = ("platform", "hospital", "thirdparty", "wallet", "kme")
SHARED = (
    "crypto",
    "keysupply",
    "protocol",
    "storage",
    "service",
    "fhir",
    "errors",
    "pki",
    "fsutil",
    "identity",
    "authz",
    "audit",
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("patientkey.")}


def _files(top: str) -> list[Path]:
    target = ROOT / top
    return sorted(target.rglob("*.py")) if target.is_dir() else [ROOT / f"{top}.py"]


def _layer(module: str) -> str:
    return module.split(".")[1]


@pytest.mark.parametrize("party", PARTIES)
def test_party_imports_no_other_party(party):
    """A party imports the shared layers and itself, never another party."""
    for path in _files(party):
        bad = {m for m in _imports(path) if _layer(m) in PARTIES and _layer(m) != party}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("layer", SHARED)
def test_shared_layer_imports_no_party(layer):
    """Shared layers (crypto, protocol, storage, service, ...) never import a party."""
    for path in _files(layer):
        bad = {m for m in _imports(path) if _layer(m) in PARTIES}
        # KME *types* are shared by the key supply (embedded KME in-process) by design.
        if layer == "keysupply":
            bad = {m for m in bad if not m.startswith("patientkey.kme.core")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
