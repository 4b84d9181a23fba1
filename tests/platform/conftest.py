"""Fixtures of the platform tests: a dev PKI, stores (memory and SQLite), the test world."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_world import PARTIES, World

from patientkey.pki import init_pki
from patientkey.storage import Database, PlatformRepo, SqlStore, open_database
from patientkey.storage.authz import authz_store, totp_vault
from patientkey.storage.memory import platform_store
from patientkey.storage.schema import Party


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev PKI with a certificate for every party of the platform tests."""
    directory = tmp_path_factory.mktemp("platform-pki")
    init_pki(directory, PARTIES)
    return directory


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite platform database in this test's temp dir."""
    db = open_database(f"sqlite:///{tmp_path / 'platform.db'}", Party.PLATFORM)
    db.upgrade()
    yield db
    db.close()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest) -> object:
    """The platform store the core runs on: in memory, or SQLite."""
    if request.param == "memory":
        return platform_store()
    return SqlStore(request.getfixturevalue("sqlite_db"), PlatformRepo)


@pytest.fixture
def world(store: object, pki: Path) -> World:
    """The platform wired to a fake hospital and two fake pharmacies."""
    return World(store, pki)


@pytest.fixture
def memory_world(pki: Path) -> World:
    """The same world on an in-memory store only (adapter tests)."""
    return World(platform_store(), pki)


@pytest.fixture
def sql_world(sqlite_db: Database, pki: Path) -> World:
    """The world on a real SQLite platform database, the authorization unit's events in it
    too (the transparency log's tests tamper with its rows)."""
    return World(
        SqlStore(sqlite_db, PlatformRepo),
        pki,
        authz_store=authz_store(sqlite_db, vault=totp_vault(os.urandom(32))),
    )
