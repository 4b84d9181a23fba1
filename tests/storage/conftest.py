"""Fixtures of the storage tests: backends, isolated PostgreSQL schemas, a fake clock.

PostgreSQL isolation: every test process creates its own schemas named
``pk_<random hex>`` (one per party database, plus fresh ones for the migration
tests), points its engines at them through ``search_path`` and drops exactly those
schemas (``DROP SCHEMA … CASCADE``) at teardown. Nothing shared is ever dropped, so
xdist workers and other sessions can use the same database at the same time.

With ``CI`` set, an unreachable PostgreSQL fails the tests; otherwise they skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from patientkey.storage import memory
from patientkey.storage.engine import Database, open_database
from patientkey.storage.repos import HospitalRepo, PlatformRepo, SqlStore, ThirdPartyRepo
from patientkey.storage.schema import METADATA, Party

PG_URL = os.environ.get(
    "PATIENTKEY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _libpq_dsn(url: str) -> str:
    u = make_url(url)
    parts = {
        "host": u.host or "127.0.0.1",
        "port": str(u.port or 5432),
        "dbname": u.database or "postgres",
        "user": u.username or "postgres",
    }
    if u.password:
        parts["password"] = u.password
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _admin(sql: str) -> None:
    with psycopg.connect(_libpq_dsn(PG_URL), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL URL; skips (fails in CI) when the server is unreachable."""
    try:
        with psycopg.connect(_libpq_dsn(PG_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        if _in_ci():
            pytest.fail(f"CI is set and PostgreSQL at {PG_URL} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable ({exc}); set CI to make this a failure")
    return PG_URL


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema of our own, dropped (with everything in it) afterwards."""
    name = f"pk_{secrets.token_hex(6)}"
    _admin(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        _admin(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@contextmanager
def fresh_pg_database(url: str, party: Party) -> Iterator[Database]:
    """An unmigrated database in a new schema."""
    with pg_schema() as schema:
        db = open_database(url, party, schema=schema)
        try:
            yield db
        finally:
            db.close()


@pytest.fixture
def fresh_pg(pg_url: str) -> Iterator[Callable[[Party], Database]]:
    """Makes unmigrated PostgreSQL databases in new schemas, dropped after the test."""
    with ExitStack() as stack:
        yield lambda party: stack.enter_context(fresh_pg_database(pg_url, party))


@pytest.fixture(scope="session")
def pg_databases(pg_url: str) -> Iterator[dict[Party, Database]]:
    """One migrated database per party, each in its own schema, for this test process."""
    with (
        fresh_pg_database(pg_url, Party.PLATFORM) as platform,
        fresh_pg_database(pg_url, Party.HOSPITAL) as hospital,
        fresh_pg_database(pg_url, Party.THIRDPARTY) as thirdparty,
    ):
        dbs = {Party.PLATFORM: platform, Party.HOSPITAL: hospital, Party.THIRDPARTY: thirdparty}
        for db in dbs.values():
            db.upgrade()
        yield dbs


def _truncate(db: Database) -> None:
    tables = ", ".join(t.name for t in METADATA[db.party].sorted_tables)
    with db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


DatabaseFactory = Callable[[Party], Database]


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[DatabaseFactory]:
    """Makes a migrated SQLite database per party, in files of this test's temp dir."""
    opened: list[Database] = []

    def make(party: Party) -> Database:
        db = open_database(f"sqlite:///{tmp_path / f'{party.value}.db'}", party)
        db.upgrade()
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


@pytest.fixture
def postgres_db(pg_databases: dict[Party, Database]) -> DatabaseFactory:
    """Hands out this process's migrated PostgreSQL database of a party, emptied."""

    def make(party: Party) -> Database:
        db = pg_databases[party]
        _truncate(db)
        return db

    return make


@dataclass
class FakeClock:
    """A clock that moves only when told to."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=SQL_BACKENDS)
def sql_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_db(sql_backend: str, request: pytest.FixtureRequest) -> DatabaseFactory:
    """A migrated, empty database per party on the SQL backend of the test."""
    factory: DatabaseFactory = request.getfixturevalue(f"{sql_backend}_db")
    return factory


def _store(backend: str, party: Party, request: pytest.FixtureRequest, clock: FakeClock) -> object:
    if backend == "memory":
        makers = {
            Party.PLATFORM: memory.platform_store,
            Party.HOSPITAL: memory.hospital_store,
            Party.THIRDPARTY: memory.thirdparty_store,
        }
        return makers[party](clock)
    db = request.getfixturevalue(f"{backend}_db")(party)
    repos = {
        Party.PLATFORM: PlatformRepo,
        Party.HOSPITAL: HospitalRepo,
        Party.THIRDPARTY: ThirdPartyRepo,
    }
    return SqlStore(db, repos[party], clock=clock)


@pytest.fixture
def platform(backend: str, request: pytest.FixtureRequest, clock: FakeClock) -> object:
    """A platform store (memory, SQLite or PostgreSQL) on the fake clock."""
    return _store(backend, Party.PLATFORM, request, clock)


@pytest.fixture
def hospital(backend: str, request: pytest.FixtureRequest, clock: FakeClock) -> object:
    """A hospital store (memory, SQLite or PostgreSQL) on the fake clock."""
    return _store(backend, Party.HOSPITAL, request, clock)


@pytest.fixture
def thirdparty(backend: str, request: pytest.FixtureRequest, clock: FakeClock) -> object:
    """A third-party store (memory, SQLite or PostgreSQL) on the fake clock."""
    return _store(backend, Party.THIRDPARTY, request, clock)
