"""open_database and Database: SQLite settings, transactions, configuration errors."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, StatementError

from patientkey.errors import ConfigError, NotFound, StoreBusy
from patientkey.storage import engine
from patientkey.storage.engine import SQLITE_BUSY_TIMEOUT_MS, open_database
from patientkey.storage.repos import PlatformRepo
from patientkey.storage.schema import AccountRow, BindingRow, Party

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_sqlite_connections_use_wal_and_foreign_keys(sqlite_db):
    """Every SQLite connection has WAL, foreign keys, NORMAL sync and a busy timeout."""
    db = sqlite_db(Party.PLATFORM)
    with db.engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
        }
    assert pragma == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 1,  # NORMAL
        "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
    }


def test_sqlite_enforces_foreign_keys(sqlite_db):
    """A row referring to a missing parent is refused by SQLite itself."""
    db = sqlite_db(Party.PLATFORM)
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.add(BindingRow(user_id="ghost", his_id="h", patient_id="p", created_at=NOW))


def test_sqlite_transaction_takes_the_write_lock_at_begin(sqlite_db):
    """transaction() begins IMMEDIATE: even a read-only block holds SQLite's write lock."""
    db = sqlite_db(Party.PLATFORM)
    path = db.engine.url.database
    assert path is not None
    with db.transaction() as session:
        session.execute(select(AccountRow)).all()
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()


def test_a_lock_held_past_the_busy_timeout_is_store_busy(sqlite_db, monkeypatch):
    """Another writer holding SQLite's lock past the busy timeout: 503 StoreBusy, not a 500."""
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 100)
    db = sqlite_db(Party.PLATFORM)
    path = db.engine.url.database
    assert path is not None
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreBusy) as busy, db.transaction() as session:
            PlatformRepo(session).create_account("u1")
        assert busy.value.status == 503
    finally:
        other.close()
    with db.transaction() as session:
        assert session.execute(select(AccountRow)).all() == []  # nothing was written


def test_transaction_commits_on_success(make_db):
    """Writes inside a transaction() block that ends normally are committed."""
    db = make_db(Party.PLATFORM)
    with db.transaction() as session:
        PlatformRepo(session).create_account("u1")
    with db.engine.connect() as conn:
        assert conn.execute(select(AccountRow.user_id)).scalars().all() == ["u1"]


def test_transaction_rolls_back_on_any_exception(make_db):
    """An exception after several writes rolls every one of them back."""
    db = make_db(Party.PLATFORM)

    def write_then_interrupt() -> None:
        with db.transaction() as session:
            repo = PlatformRepo(session)
            repo.create_account("u1")
            repo.bind("u1", "his-a", "pat-1")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_then_interrupt()
    with db.transaction() as session:
        with pytest.raises(NotFound):
            PlatformRepo(session).get_account("u1")
        assert session.execute(select(BindingRow)).all() == []


def test_naive_timestamps_are_refused(make_db):
    """A naive datetime never reaches the database: UtcDateTime refuses it."""
    db = make_db(Party.PLATFORM)
    naive = AccountRow(user_id="u1", created_at=datetime(2025, 1, 1))  # noqa: DTZ001
    with pytest.raises(StatementError, match="naive"), db.transaction() as session:
        session.add(naive)


def test_naive_clock_is_refused(make_db):
    """A repository whose clock returns naive datetimes fails before writing."""
    db = make_db(Party.PLATFORM)
    with pytest.raises(ValueError, match="aware"), db.transaction() as session:
        PlatformRepo(session, lambda: datetime(2025, 1, 1)).create_account("u1")  # noqa: DTZ001


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("mysql://u@h/db", {}),
        ("not a url", {}),
        ("sqlite://", {}),
        ("sqlite:///:memory:", {}),
        ("sqlite:///x.db", {"schema": "pk_x"}),
        ("postgresql+psycopg://u@h/db", {"schema": "Bad-Name"}),
        ("postgresql+psycopg://u@h/db", {"schema": "x; DROP SCHEMA public"}),
        ("postgresql+asyncpg://u@h/db", {}),
    ],
)
def test_bad_configuration_is_a_config_error(url, kwargs):
    """Unsupported backends, in-memory SQLite and unsafe schema names raise ConfigError."""
    with pytest.raises(ConfigError):
        open_database(url, Party.PLATFORM, **kwargs)


def test_unknown_party_is_a_config_error(tmp_path):
    """A party name outside platform/hospital/thirdparty raises ConfigError."""
    with pytest.raises(ConfigError):
        open_database(f"sqlite:///{tmp_path / 'x.db'}", "pharmacy")


def test_plain_postgresql_url_means_psycopg3_and_hides_password():
    """postgresql:// selects psycopg 3; the Database's repr never shows the URL's password."""
    db = open_database("postgresql://user:hunter2@127.0.0.1/test", "hospital", schema="pk_abc")
    try:
        assert db.engine.dialect.driver == "psycopg"
        assert db.party is Party.HOSPITAL
        assert "hunter2" not in repr(db)
    finally:
        db.close()


@pytest.mark.postgres
def test_schema_isolates_postgres_tables(pg_databases):
    """A PostgreSQL database with a schema keeps its tables there, search_path pointing to it."""
    db = pg_databases[Party.PLATFORM]
    assert db.schema is not None
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT current_schema()")).scalar() == db.schema
        tables = set(
            conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": db.schema},
            ).scalars()
        )
    assert {"accounts", "bindings", "records", "alembic_version_platform"} <= tables
