"""``patientkey bench audit --store sql``: the platform's own transparency log on its database.

The in-memory run (:mod:`patientkey.bench.audit`) measures the log's algorithms;
this one measures what the platform actually runs: events written by the
repository's ``log_event`` into ``event_log``, the sequencer
(:meth:`~patientkey.platform.audit.TransparencyLog.integrate`: read the waiting
events, append their :class:`~patientkey.audit.LogEntry` leaves to the
``audit_nodes`` table, sign the head), and the answers the platform serves —
an inclusion proof, a consistency proof and a whole wallet sync — each read
from the database in its own transaction.

Measured at each size (events logged 500 per transaction, untimed apart from
their own rate):

* **logged/s** — ``log_event`` rows per second (500 per transaction);
* **sequenced/s** — events per second through ``integrate`` (batches of 1,000);
* **inclusion / consistency** — median µs for ``TransparencyLog.inclusion`` /
  ``consistency`` over ``--samples`` random leaves / earlier sizes, proof hashes;
* **sync** — median ms of ``TransparencyLog.sync`` for an account holding 20
  events (a patient after a few prescriptions), with every proof checked once
  by the wallet's :func:`~patientkey.wallet.audit.accept_sync`.

A SQLite file in a temporary directory unless ``--db-url`` names a database
(PostgreSQL: the tables are created in a fresh schema that is dropped after).
"""

from __future__ import annotations

import contextlib
import math
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import create_engine, text

from patientkey.bench.rx import _default_console, _machine, _write_report
from patientkey.errors import InvalidInput
from patientkey.platform.audit import TransparencyLog
from patientkey.protocol.messages import AuditSyncRequest
from patientkey.storage import Database, PlatformRepo, SqlStore, open_database
from patientkey.storage.schema import Party
from patientkey.wallet.audit import accept_sync

__all__ = ["SqlAuditOptions", "run_sql"]

DEFAULT_SQL_SIZES: Final = (10_000, 100_000)
_PER_TX: Final = 500
_PROBE_EVENTS: Final = 20
_KINDS: Final = ("bind", "record.stored", "record.fetch", "share.deliver", "authz.used")


@dataclass(frozen=True, slots=True)
class SqlAuditOptions:
    """The options of the SQL run (see ``patientkey bench audit --help``)."""

    sizes: tuple[int, ...] = DEFAULT_SQL_SIZES
    samples: int = 100
    db_url: str | None = None
    json_out: Path | None = None
    seed: int = 1

    def check(self) -> None:
        if not self.sizes or any(not 100 <= s <= 10_000_000 for s in self.sizes):
            raise InvalidInput("sizes must be between 100 and 10,000,000 events")
        if list(self.sizes) != sorted(set(self.sizes)):
            raise InvalidInput("sizes must be increasing")
        if not 1 <= self.samples <= 10_000:
            raise InvalidInput("samples must be between 1 and 10,000")


@contextlib.contextmanager
def _database(url: str | None) -> Iterator[tuple[Database, str]]:
    if url is None:
        with tempfile.TemporaryDirectory(prefix="pk-bench-audit-") as tmp:
            db = open_database(f"sqlite:///{Path(tmp) / 'platform.db'}", Party.PLATFORM)
            try:
                db.upgrade()
                yield db, "SQLite (temporary file)"
            finally:
                db.close()
        return
    schema = "bench_audit_" + secrets.token_hex(4)
    admin = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db = open_database(url, Party.PLATFORM, schema=schema)
    try:
        db.upgrade()
        yield db, f"{db.engine.dialect.name} (schema {schema}, dropped after)"
    finally:
        db.close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _us(since: float) -> float:
    return (time.perf_counter() - since) * 1e6


def _median(values: list[float], digits: int = 1) -> float:
    return round(statistics.median(values), digits)


def _log(store: SqlStore[PlatformRepo], start: int, count: int, users: int) -> None:
    for first in range(start, start + count, _PER_TX):
        with store.transaction() as repo:
            for seq in range(first, min(first + _PER_TX, start + count)):
                detail = {"his_id": "his-bench", "p_id": f"rx-{seq}"}
                repo.log_event(_KINDS[seq % len(_KINDS)], f"u-{seq % users:06d}", detail)


def _sync_probe(
    store: SqlStore[PlatformRepo], log: TransparencyLog, size: int
) -> tuple[float, int, int]:
    """Sync time (ms) for a fresh account with 20 events; the events and hashes served."""
    user = f"u-probe-{size}"
    with store.transaction() as repo:
        for i in range(_PROBE_EVENTS):
            repo.log_event(_KINDS[i % len(_KINDS)], user, {"his_id": "his-bench", "n": i})
    log.integrate()
    times: list[float] = []
    answer = None
    for _ in range(5):
        t0 = time.perf_counter()
        answer = log.sync(user, AuditSyncRequest(user_id=user))
        times.append(_us(t0) / 1000)
    assert answer is not None
    accept_sync(None, user, answer)  # every proof served must verify
    hashes = sum(len(e.proof) for e in answer.events)
    return _median(times, 2), len(answer.events), hashes


def run_sql(options: SqlAuditOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the SQL benchmark; the report (also written to ``options.json_out``)."""
    options.check()
    console = _default_console(console, width=140)
    rng = random.Random(options.seed)  # noqa: S311 - picks sample leaves, nothing secret
    users = max(100, options.sizes[-1] // 10)
    results: list[dict[str, Any]] = []
    with _database(options.db_url) as (db, where):
        store = SqlStore(db, PlatformRepo)
        log = TransparencyLog(
            store, Ed25519PrivateKey.generate(), is_wallet=lambda name: name.startswith("u-")
        )
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("logging events", total=options.sizes[-1])
            logged = 0
            for target in options.sizes:
                count = target - logged
                bar.update(task, description=f"logging events up to {target:,}")
                t0 = time.perf_counter()
                _log(store, logged, count, users)
                log_s = time.perf_counter() - t0
                bar.update(task, description=f"sequencing up to {target:,}")
                t0 = time.perf_counter()
                sth = log.integrate()
                seq_s = time.perf_counter() - t0
                logged = target
                size = sth.head.size
                bar.update(task, completed=logged, description=f"proofs at {size:,}")
                inclusion: list[float] = []
                inclusion_hashes: list[int] = []
                for index in (rng.randrange(size) for _ in range(options.samples)):
                    t0 = time.perf_counter()
                    proof = log.inclusion(index, size)
                    inclusion.append(_us(t0))
                    inclusion_hashes.append(len(proof["proof"]))
                consistency: list[float] = []
                for old in (rng.randrange(1, size) for _ in range(options.samples)):
                    t0 = time.perf_counter()
                    log.consistency(old, size)
                    consistency.append(_us(t0))
                sync_ms, served, hashes = _sync_probe(store, log, size)
                logged = log.integrate().head.size  # the probe's events are leaves too
                results.append(
                    {
                        "size": size,
                        "log2_size": math.ceil(math.log2(size)),
                        "logged_per_s": round(count / log_s),
                        "sequenced_per_s": round(count / seq_s),
                        "inclusion_us": _median(inclusion),
                        "inclusion_hashes": max(inclusion_hashes),
                        "consistency_us": _median(consistency),
                        "sync_ms": sync_ms,
                        "sync_events": served,
                        "sync_hashes": hashes,
                    }
                )
    report = {
        "settings": {
            "sizes": list(options.sizes),
            "samples": options.samples,
            "seed": options.seed,
            "store": where,
        },
        "machine": _machine(),
        "results": results,
    }
    _print(console, report)
    _write_report(options.json_out, report)
    return report


def _print(console: Console, report: dict[str, Any]) -> None:
    machine = report["machine"]
    table = Table(
        title=f"patientkey bench audit --store sql: {report['settings']['store']} "
        f"({machine['machine']}, {machine['cpu_count']} cores)"
    )
    for column in (
        "events",
        "logged/s",
        "sequenced/s",
        "inclusion µs",
        "hashes",
        "consistency µs",
        f"sync of {_PROBE_EVENTS} events ms",
        "⌈log₂ n⌉",
    ):
        table.add_column(column, justify="right")
    for r in report["results"]:
        table.add_row(
            f"{r['size']:,}",
            f"{r['logged_per_s']:,}",
            f"{r['sequenced_per_s']:,}",
            f"{r['inclusion_us']:,.1f}",
            str(r["inclusion_hashes"]),
            f"{r['consistency_us']:,.1f}",
            f"{r['sync_ms']:,.2f}",
            str(r["log2_size"]),
        )
    console.print(table)
