"""Opening a party database: SQLite (embedded default) or PostgreSQL, one code path.

::

    db = open_database("sqlite:///var/platform.db", Party.PLATFORM)
    db.upgrade()                        # Alembic migrations to head, idempotent
    with db.transaction() as session:   # ONE transaction per operation
        PlatformRepo(session).bind(user_id, his_id, patient_id)

:meth:`Database.transaction` commits when the block ends normally and rolls back on
any exception, so a failed operation leaves no partial state. Repositories
(:mod:`patientkey.storage.repos`) never commit: they run inside the caller's
transaction, which is how "save state only after the cryptography succeeded" is kept
— the caller verifies first, then writes, all in one block.

SQLite connections get, from a ``connect`` event listener: WAL journal mode,
``foreign_keys=ON``, ``synchronous=NORMAL`` and a busy timeout. SQLAlchemy, not the
``sqlite3`` module, emits the ``BEGIN``: the module's legacy mode begins transactions
late (never for SELECT or DDL), which breaks repeatable reads and transactional DDL.
Every transaction is ``BEGIN IMMEDIATE``: it takes SQLite's single write lock at the
start (waiting up to the busy timeout), so a read-then-write can never fail half-way
with ``SQLITE_BUSY`` and writers are serialized as PostgreSQL's row locks would.

PostgreSQL uses psycopg 3 with a small pool sized for a 2-core machine. The optional
``schema`` puts every table (and the Alembic version table) in that schema by setting
``search_path`` at connect time; tests use it to isolate parallel runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, MetaData, create_engine, event, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from patientkey.errors import ConfigError, StoreBusy
from patientkey.storage.schema import METADATA, Party

__all__ = [
    "MIGRATIONS_DIR",
    "SQLITE_BUSY_TIMEOUT_MS",
    "Database",
    "open_database",
    "version_table",
]

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"

SQLITE_BUSY_TIMEOUT_MS: Final = 5_000
"""How long a SQLite transaction waits for the write lock before failing."""

# A 2-core machine gains nothing from many concurrent PostgreSQL backends; a handful
# of pooled connections plus a little overflow covers a web worker's threads.
_PG_POOL: Final[dict[str, Any]] = {
    "pool_size": 5,
    "max_overflow": 5,
    "pool_timeout": 10,
    "pool_recycle": 1_800,
    "pool_pre_ping": True,
}
_PG_CONNECT_TIMEOUT_S: Final = 5

_SCHEMA_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def version_table(party: Party) -> str:
    """The Alembic version table of ``party``'s database."""
    return f"alembic_version_{party.value}"


class Database:
    """One party's database: transactions, migrations and a full dump.

    Build it with :func:`open_database`. Thread-safe: each transaction takes its own
    pooled connection.
    """

    def __init__(self, engine: Engine, party: Party, schema: str | None = None) -> None:
        self._engine = engine
        self.party = party
        self.schema = schema
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: commit if the block succeeds, roll back on any exception.

        Do not nest: an inner ``transaction()`` is a second, independent transaction
        (and on SQLite it waits for the outer one's write lock).
        """
        try:
            with self._sessions() as session, session.begin():
                yield session
        except OperationalError as exc:
            if not _busy(exc):
                raise
            raise StoreBusy() from exc
        except SqlTimeoutError as exc:  # no pooled connection within pool_timeout
            raise StoreBusy() from exc

    # ── migrations ────────────────────────────────────────────────────────────

    def _alembic_config(self, connection: Connection) -> Config:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        config.attributes["party"] = self.party
        return config

    def upgrade(self) -> None:
        """Migrate this party's schema to the newest revision; a no-op when already there.

        All revisions run in one transaction: on failure the schema stays as it was.
        """
        with self._engine.begin() as connection:
            if self.dialect == "postgresql":
                # Two processes upgrading the same schema at once take turns.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:key || current_schema()))"),
                    {"key": f"patientkey-migrate:{self.party.value}:"},
                )
            command.upgrade(self._alembic_config(connection), f"{self.party.value}@head")

    def current_revision(self) -> str | None:
        """The revision the database is at, ``None`` before the first upgrade."""
        with self._engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": version_table(self.party)}
            )
            return context.get_current_revision()

    def schema_diff(self) -> list[Any]:
        """Differences between the database and the models (empty when migrated to head)."""
        with self._engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={"version_table": version_table(self.party), "compare_type": True},
            )
            return list(compare_metadata(context, METADATA[self.party]))

    # ── inspection ────────────────────────────────────────────────────────────

    def dump_bytes(self) -> bytes:
        """Every row of every table in this database (or schema), as bytes.

        For the blindness test: whatever the platform stored is somewhere in these
        bytes, binary columns verbatim, text as UTF-8, JSON as text. Tables are found
        by reflection, so tables unknown to the models are included too. For SQLite
        the database file itself can also be read, but recent writes may still sit in
        the ``-wal`` file.
        """
        out: list[bytes] = []
        with self.transaction() as session:
            reflected = MetaData()
            reflected.reflect(bind=session.connection())
            for table in sorted(reflected.tables.values(), key=lambda t: t.name):
                out.append(b"## " + table.name.encode() + b"\n")
                out.extend(
                    b"\t".join(_as_bytes(value) for value in row) + b"\n"
                    for row in session.execute(select(table))
                )
        return b"".join(out)

    # ── life cycle ────────────────────────────────────────────────────────────

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never the URL: it may carry a password.
        return f"Database(party={self.party.value!r}, dialect={self.dialect!r})"


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True).encode()
    return str(value).encode()


def open_database(url: str | URL, party: Party | str, *, schema: str | None = None) -> Database:
    """Open (without migrating) ``party``'s database at ``url``.

    ``url`` is ``sqlite:///path.db`` or ``postgresql+psycopg://user@host/db``
    (``postgresql://`` means psycopg 3 too). ``schema`` (PostgreSQL only) is the
    schema every table lives in; it must exist. Raises :class:`ConfigError` for
    anything else, never echoing the URL (it may hold a password).
    """
    try:
        party = Party(party)
    except ValueError:
        raise ConfigError(f"unknown party {party!r}") from None
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("database URL is not a valid SQLAlchemy URL") from None

    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return Database(_sqlite_engine(parsed, schema), party)
    if backend == "postgresql":
        return Database(_postgres_engine(parsed, party, schema), party, schema)
    raise ConfigError(f"unsupported database backend {backend!r}: use sqlite or postgresql")


def _sqlite_engine(url: URL, schema: str | None) -> Engine:
    if schema is not None:
        raise ConfigError("a schema applies to PostgreSQL only; use one SQLite file per party")
    if url.get_driver_name() != "pysqlite":
        raise ConfigError("SQLite is used through the standard sqlite3 module only")
    if url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
        raise ConfigError(
            "in-memory SQLite is not supported (no WAL, one database per connection); "
            "use patientkey.storage.memory for in-memory stores"
        )
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # SQLAlchemy emits BEGIN itself (see _sqlite_on_begin); the module must not.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"SQLite refused WAL journal mode (got {mode!r})")
        cursor.execute("PRAGMA foreign_keys = ON")
        # Safe with WAL: a power loss may drop the last commits, never corrupt the file.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _postgres_engine(url: URL, party: Party, schema: str | None) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_driver_name() != "psycopg":
        raise ConfigError("PostgreSQL is used through psycopg 3 (postgresql+psycopg://)")
    connect_args: dict[str, Any] = {
        "connect_timeout": _PG_CONNECT_TIMEOUT_S,
        "application_name": f"patientkey-{party.value}",
    }
    if schema is not None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigError("schema name must match [a-z_][a-z0-9_]{0,62}")
        # Only this schema: tables, indexes and the Alembic version table all land here,
        # and nothing of another schema (such as public) can be reached by accident.
        connect_args["options"] = f"-c search_path={schema}"
    return create_engine(url, connect_args=connect_args, **_PG_POOL)


def _busy(exc: OperationalError) -> bool:
    """A transient refusal of the database, as opposed to a broken one.

    SQLite: "database is locked" / "database table is locked" after the busy timeout.
    PostgreSQL (psycopg): deadlock victims and serialization failures (SQLSTATE 40xxx).
    """
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith("40")
    return "locked" in str(exc.orig).lower()
