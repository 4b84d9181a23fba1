"""Wallet fixtures: a dev PKI, an in-process platform/hospital/third party, a wallet on disk."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from wallet_fakes import OTHER_USER, PLATFORM, TP, USER, World

from patientkey.fhir.synthetic import generate_json
from patientkey.pki import init_pki


@pytest.fixture(scope="session")
def wallet_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev PKI with the wallet, the platform and the pharmacy."""
    directory = tmp_path_factory.mktemp("wallet-pki")
    init_pki(directory, [USER, OTHER_USER, PLATFORM, TP])
    return directory


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA that issued a certificate with the pharmacy's name."""
    directory = tmp_path_factory.mktemp("foreign-pki")
    init_pki(directory, [TP])
    return directory


@pytest.fixture
def world(tmp_path: Path, wallet_pki: Path) -> Iterator[World]:
    """A fresh network and wallet directory."""
    with ExitStack() as stack:
        yield World(tmp_path, wallet_pki, stack)


@pytest.fixture(scope="session")
def synthetic_bodies() -> list[bytes]:
    """Three synthetic KBV e-prescription bundles."""
    return [text.encode() for text in generate_json(3, 11)]
