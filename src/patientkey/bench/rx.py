"""``patientkey bench rx``: the e-prescription operations under load, over real HTTPS.

What runs
---------
A loopback deployment (:class:`patientkey.demo.network.Network`): the KME, the
hospital, the pharmacy and the platform as separate processes speaking HTTPS
with mutual TLS, the platform with ``--workers`` uvicorn processes on SQLite or
PostgreSQL. One *virtual user* per unit of ``--concurrency``: its own User_ID
(client certificate), its own charged KUE pool, its own patient at the hospital
with ``--records`` generated e-prescriptions. ``--clients`` load-generator
processes (the GIL would cap one) each run one thread per virtual user it
holds; each thread drives its own wallet (:class:`patientkey.wallet.core.WalletCore`,
the library the CLI uses) over its own keep-alive mutual-TLS connection.

Phases, each ``--warmup`` seconds then ``--duration`` measured seconds, all
threads running the same operation back to back (closed loop):

========== ================================================ =====================
phase      one operation                                    platform API calls
========== ================================================ =====================
bare       ``GET /v1/ping`` (no envelope, DB or crypto)     1
bind       ``wallet.bind`` again (idempotent re-bind)       1 (+ HIS bind/verify)
cold_fetch ``wallet.fetch`` of a record the platform has    1 (+ HIS records/get)
           not fetched yet (each record once)
cached     ``wallet.fetch`` of a record already stored      1
share      ``wallet.share`` with the pharmacy               2: offer, deliver
                                                            (+ relay to pharmacy)
========== ================================================ =====================

An operation counts when it *completes* inside the measured window; its latency
is end to end at the client (sealing, TLS, the platform and its peers, opening
and checking the reply). Errors are counted apart, by type, never as operations.

Bind is measured as a re-bind: the platform stores ``(User_ID, HIS_ID) →
Patient_ID`` idempotently for the same triple, while every re-bind still does
the full work (rate-limit buckets, the HIS checking a fresh proof, the binding
transaction, events). A User_ID binds one patient per hospital, so first-time
binds would need a new account per bind. The bench raises the platform's bind
rate limits (``bind_limit_patient``/``bind_limit_user``) to 1,000,000 per
window; with the defaults (5 and 20 per 15 minutes) every bind past those is 429.

What the numbers include
------------------------
Client and servers share this machine's cores: the load generators' CPU
(wallet crypto, TLS, HTTP) competes with the platform's. The report therefore
gives CPU cores used per process group in each measured window (from
``/proc``), and the machine's total. Wallets run with ``persist=False``: the real
wallet rewrites and fsyncs its whole keystore before every message (a client
cost that says nothing about the platform); here state stays in memory. Every
hop to a hospital or third party draws QKD keys from the simulated KME
(``--hop-rekey 1``: a fresh key per message, as shipped; the KME's BB84
simulation burns CPU on the same machine while it refills).

``--profile FILE`` runs the platform (one worker) under :mod:`cProfile` in every
thread (``PATIENTKEY_BENCH_PROFILE``) and prints the top costs; figures of a
profiled run are not benchmark figures.

The machinery here — the closed loop (:func:`_closed_loop`), the deployment
(:func:`_deployment`), the CPU meter, the summaries and the report helpers —
serves :mod:`patientkey.bench.auth` and :mod:`patientkey.bench.audit` too.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import math
import multiprocessing as mp
import os
import platform as pyplatform
import pstats
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from patientkey.bench import DEFAULT_PG_URL
from patientkey.errors import InvalidInput, PatientKeyError
from patientkey.protocol.routes import PING

__all__ = [
    "OPERATIONS",
    "PLATFORM_CALLS",
    "PROFILE_ENV",
    "RxOptions",
    "main",
    "percentile",
    "run",
]

#: Measured operations in the order they run (bare always runs first).
OPERATIONS: Final = ("bind", "cold_fetch", "cached_fetch", "share")
#: Platform API requests one operation makes (the wallet's requests to the platform).
PLATFORM_CALLS: Final = {"bare": 1, "bind": 1, "cold_fetch": 1, "cached_fetch": 1, "share": 2}
#: What the platform itself calls per operation (each such hop costs KME calls too).
PEER_CALLS: Final = {
    "bare": "",
    "bind": "hospital /v1/bind/verify",
    "cold_fetch": "hospital /v1/records/get",
    "cached_fetch": "",
    "share": "pharmacy /v1/share/receive",
}
#: The peak rate Germany's national e-prescription service must handle at its
#: professional interface: the target this bench compares against.
TARGET_CALLS_PER_S: Final = 1770.0
TARGET_P99_MS: Final = 100.0
PROFILE_ENV: Final = "PATIENTKEY_BENCH_PROFILE"
BIND_LIMIT: Final = 1_000_000
_HIS_PARTIES: Final = ("platform", "hospital-1", "pharmacy-1")
# The wallets' keystores are made and opened once per run: a cheap Argon2id cost
# keeps start-up short (the passphrase KDF is not what this bench measures).
_BENCH_KDF: Final = {"time_cost": 1, "memory_cost": 8192, "parallelism": 1}


@dataclass(frozen=True, slots=True)
class RxOptions:
    """The command's options (see ``patientkey bench rx --help``)."""

    concurrency: int = 16
    duration: float = 10.0
    warmup: float = 2.0
    workers: int = 1
    database: str = "sqlite"
    records: int = 200
    clients: int = 2
    pool_keys: int = 3000
    hop_rekey: int = 1
    ops: tuple[str, ...] = OPERATIONS
    workdir: Path | None = None
    json_out: Path | None = None
    pg_url: str = DEFAULT_PG_URL
    profile: Path | None = None
    seed: int = 1

    def check(self) -> None:
        if self.concurrency < 1 or self.clients < 1 or self.workers < 1 or self.records < 2:
            raise InvalidInput("concurrency, clients, workers >= 1 and records >= 2")
        if self.duration <= 0 or self.warmup < 0:
            raise InvalidInput("duration must be positive, warmup not negative")
        if self.database not in ("sqlite", "postgres"):
            raise InvalidInput("database is sqlite or postgres")
        unknown = set(self.ops) - set(OPERATIONS)
        if unknown:
            raise InvalidInput(f"unknown operations {sorted(unknown)}; known: {OPERATIONS}")
        if self.pool_keys < 16 or self.hop_rekey < 1:
            raise InvalidInput("pool_keys >= 16 and hop_rekey >= 1")
        if self.profile is not None and self.workers != 1:
            raise InvalidInput("--profile runs the platform with one worker (--workers 1)")


# ── the load generators (separate processes) ────────────────────────────────────


@dataclass(frozen=True, slots=True)
class VUser:
    """One virtual user as a load generator needs it (picklable)."""

    user_id: str
    config: str
    his_id: str
    b_id: str
    p_ids: tuple[str, ...]


@dataclass
class PhaseResult:
    """What one thread, or load generator, measured in one phase."""

    latencies_ms: list[float] = field(default_factory=list)
    #: Per-step latencies of operations that report their steps (``bench auth``'s flow).
    steps_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: dict[str, str] = field(default_factory=dict)
    exhausted: int = 0  # virtual users that ran out of unfetched records
    pool_min: int = sys.maxsize  # smallest KUE pool left among the wallets
    pq_active: int = 0  # wallets that fell back to the PQ agreement (pool empty)

    def merge(self, other: PhaseResult) -> None:
        self.latencies_ms += other.latencies_ms
        for step, values in other.steps_ms.items():
            self.steps_ms.setdefault(step, []).extend(values)
        self.errors.update(other.errors)
        for key, text in other.error_samples.items():
            self.error_samples.setdefault(key, text)
        self.exhausted += other.exhausted
        self.pool_min = min(self.pool_min, other.pool_min)
        self.pq_active += other.pq_active


class _Exhausted(Exception):
    """A virtual user has nothing left to do in this phase (no unfetched record left)."""


#: One operation of a closed loop; it may return how long its steps took (seconds).
Operation = Callable[[], Mapping[str, float] | None]


class _Actor:
    """One virtual user inside a load generator: its wallet, ping client and records."""

    def __init__(self, user: VUser, wallet: Any, ping: Any) -> None:
        self.user = user
        self.wallet = wallet
        self.ping_client = ping
        self.cursor = 0  # next never-fetched record
        self.fetched: list[str] = []
        self.turn = 0

    def prepare(self) -> None:
        """Bind once and fetch the first record (cached fetch and share need one)."""
        self.wallet.bind(self.user.his_id)
        self.cold_fetch()

    def bare(self) -> None:
        response = self.ping_client.get(PING)
        if response.status_code != 200:
            raise RuntimeError(f"ping answered {response.status_code}")

    def bind(self) -> None:
        self.wallet.bind(self.user.his_id)

    def cold_fetch(self) -> None:
        if self.cursor >= len(self.user.p_ids):
            raise _Exhausted
        p_id = self.user.p_ids[self.cursor]
        self.cursor += 1
        self.wallet.fetch(self.user.his_id, p_id)
        self.fetched.append(p_id)

    def _next_fetched(self) -> str:
        self.turn += 1
        return self.fetched[self.turn % len(self.fetched)]

    def cached_fetch(self) -> None:
        self.wallet.fetch(self.user.his_id, self._next_fetched())

    def share(self) -> None:
        self.wallet.share(self.user.his_id, self._next_fetched(), self.user.b_id)

    def operation(self, name: str) -> Operation:
        op: Operation = getattr(self, name)
        return op


def _error_key(exc: BaseException) -> str:
    if isinstance(exc, PatientKeyError):
        return f"{type(exc).__name__} ({exc.status})"
    return type(exc).__name__


def _closed_loop(
    operations: Sequence[tuple[str, Operation]],
    *,
    start_at: float,
    warmup: float,
    duration: float,
    counter: Synchronized[int] | None = None,
) -> PhaseResult:
    """Each ``(thread name, operation)`` runs back to back in its own thread from ``start_at``.

    Measured between the window's ends (``warmup`` after ``start_at``, ``duration``
    long): an operation counts when it completes inside the window. ``counter``, if
    given, counts every completion (for a progress display in another process).
    """
    window_from = start_at + warmup
    window_to = window_from + duration
    results = [PhaseResult() for _ in operations]

    def loop(op: Operation, out: PhaseResult) -> None:
        delay = start_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        while True:
            t0 = time.monotonic()
            if t0 >= window_to:
                return
            error: str | None = None
            steps: Mapping[str, float] | None = None
            try:
                steps = op()
            except _Exhausted:
                out.exhausted += 1
                return
            except Exception as exc:  # noqa: BLE001 - every failure is counted, by type
                error = _error_key(exc)
                out.error_samples.setdefault(error, str(getattr(exc, "detail", exc))[:300])
            t1 = time.monotonic()
            if counter is not None:
                with counter.get_lock():
                    counter.value += 1
            if window_from <= t1 <= window_to:
                if error is None:
                    out.latencies_ms.append((t1 - t0) * 1000.0)
                    for step, seconds in (steps or {}).items():
                        out.steps_ms.setdefault(step, []).append(seconds * 1000.0)
                else:
                    out.errors[error] += 1

    threads = [
        threading.Thread(target=loop, args=(op, r), name=name, daemon=True)
        for (name, op), r in zip(operations, results, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = PhaseResult()
    for result in results:
        total.merge(result)
    return total


def _run_phase(
    actors: Sequence[_Actor],
    *,
    name: str,
    start_at: float,
    warmup: float,
    duration: float,
    counter: Synchronized[int],
) -> PhaseResult:
    """Every actor runs ``name`` in its own thread; then the wallets' pool levels."""
    total = _closed_loop(
        [(f"vu-{a.user.user_id}", a.operation(name)) for a in actors],
        start_at=start_at,
        warmup=warmup,
        duration=duration,
        counter=counter,
    )
    total.pool_min = min((a.wallet.pool_remaining for a in actors), default=0)
    total.pq_active = sum(1 for a in actors if a.wallet.pq_active)
    return total


def _client_main(
    conn: Connection,
    *,
    users: Sequence[VUser],
    passphrase: str,
    platform_url: str,
    pki_dir: str,
    counter: Synchronized[int],
) -> None:
    """A load-generator process: opens its wallets, then runs the phases it is sent."""
    import logging

    import httpx

    from patientkey.pki import client_ssl_context
    from patientkey.wallet.client import open_wallet
    from patientkey.wallet.settings import load_wallet_settings

    # Failures are counted by type; a log line per failed operation (or the pool's
    # low-water warning) would only garble the progress display.
    logging.getLogger("patientkey").setLevel(logging.ERROR)
    try:
        with contextlib.ExitStack() as stack:
            actors: list[_Actor] = []
            for user in users:
                settings = load_wallet_settings(Path(user.config))
                wallet = stack.enter_context(open_wallet(settings, passphrase, persist=False))
                ping = stack.enter_context(
                    httpx.Client(
                        base_url=platform_url,
                        verify=client_ssl_context(Path(pki_dir), user.user_id),
                        timeout=30.0,
                    )
                )
                actors.append(_Actor(user, wallet, ping))
            for actor in actors:
                actor.prepare()
            conn.send(("ready", None))
            while True:
                command = conn.recv()
                if command[0] == "stop":
                    break
                _, name, start_at, warmup, duration = command
                result = _run_phase(
                    actors,
                    name=name,
                    start_at=start_at,
                    warmup=warmup,
                    duration=duration,
                    counter=counter,
                )
                conn.send(("result", result))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", f"{_error_key(exc)}: {getattr(exc, 'detail', exc)}"))
    finally:
        conn.close()


@dataclass
class _Client:
    process: mp.process.BaseProcess
    conn: Connection
    counter: Synchronized[int]


class _Generators:
    """The ``--clients`` load-generator processes and their command pipes."""

    def __init__(
        self, groups: Sequence[Sequence[VUser]], passphrase: str, url: str, pki: Path
    ) -> None:
        ctx = mp.get_context("spawn")  # no fork of a process with threads
        self.clients: list[_Client] = []
        for group in groups:
            mine, theirs = ctx.Pipe()
            counter: Synchronized[int] = ctx.Value("q", 0)
            process = ctx.Process(
                target=_client_main,
                args=(theirs,),
                kwargs={
                    "users": list(group),
                    "passphrase": passphrase,
                    "platform_url": url,
                    "pki_dir": str(pki),
                    "counter": counter,
                },
                daemon=True,
            )
            process.start()
            theirs.close()
            self.clients.append(_Client(process, mine, counter))

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self.clients if c.process.pid is not None]

    def _receive(self, client: _Client, timeout: float) -> Any:
        if not client.conn.poll(timeout):
            raise RuntimeError(f"load generator {client.process.pid} did not answer")
        kind, value = client.conn.recv()
        if kind == "error":
            raise RuntimeError(f"load generator failed: {value}")
        return value

    def ready(self, timeout: float) -> None:
        for client in self.clients:
            self._receive(client, timeout)

    def start_phase(self, name: str, start_at: float, warmup: float, duration: float) -> None:
        for client in self.clients:
            client.conn.send(("phase", name, start_at, warmup, duration))

    def results(self, timeout: float) -> PhaseResult:
        total = PhaseResult()
        for client in self.clients:
            result = self._receive(client, timeout)
            assert isinstance(result, PhaseResult)
            total.merge(result)
        return total

    def ops_done(self) -> int:
        return sum(int(c.counter.value) for c in self.clients)

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(OSError, ValueError, BrokenPipeError):
                client.conn.send(("stop",))
        for client in self.clients:
            client.process.join(timeout=10)
            if client.process.is_alive():
                client.process.terminate()
                client.process.join(timeout=5)
            client.conn.close()
        self.clients.clear()


# ── measuring ───────────────────────────────────────────────────────────────────


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (nan when there are none)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _latency_summary(result: PhaseResult, duration: float) -> dict[str, Any]:
    """Operations, their rate and latency percentiles, and the errors, of one phase."""
    values = sorted(result.latencies_ms)
    return {
        "ops": len(values),
        "ops_per_s": round(len(values) / duration, 1),
        "p50_ms": round(percentile(values, 50), 2),
        "p95_ms": round(percentile(values, 95), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "errors": sum(result.errors.values()),
        "error_types": dict(result.errors),
        "error_samples": result.error_samples,
    }


def _summary(result: PhaseResult, duration: float) -> dict[str, Any]:
    return {
        **_latency_summary(result, duration),
        "exhausted_users": result.exhausted,
        "kue_pool_min_left": None if result.pool_min == sys.maxsize else result.pool_min,
        "pq_fallback_wallets": result.pq_active,
    }


_TICKS: Final = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return []
    return raw.rsplit(")", 1)[1].split()  # fields from the 3rd (state) on


def _cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS if fields else 0.0  # utime, stime


def _machine_seconds() -> tuple[float, float]:
    """(busy, interrupt) CPU seconds of the whole machine: /proc/stat's first line."""
    parts = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    ticks = [int(x) for x in parts[:8]] + [0] * (8 - len(parts[:8]))
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    busy = user + nice + system + irq + softirq + steal
    return busy / _TICKS, (irq + softirq) / _TICKS


def _postgres_seconds() -> float:
    """CPU seconds of every PostgreSQL process, including backends that already exited.

    Backends come and go with connections (a pool's overflow connections are opened
    and closed under load); an exited backend's time is in the postmaster's
    cutime/cstime, so live processes plus the postmaster's children's time is
    monotonic. Database-wide: other clients of the same server are included.
    """
    total = 0.0
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text(encoding="ascii").strip() == "postgres":
                    stats[int(entry.name)] = _stat_fields(int(entry.name))
    for fields in stats.values():
        if not fields:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
        if int(fields[1]) not in stats:  # the postmaster: add its reaped children
            total += (int(fields[13]) + int(fields[14])) / _TICKS
    return total


def _pids_seconds(pids: Sequence[int]) -> Callable[[], float]:
    return lambda: sum(_cpu_seconds(p) for p in pids)


class _CpuMeter:
    """CPU seconds per process group between two snapshots, as cores used.

    ``counters`` are other monotonic counters reported as a rate per second.
    """

    def __init__(
        self,
        groups: dict[str, Callable[[], float]],
        counters: dict[str, Callable[[], float]] | None = None,
    ) -> None:
        self.groups = groups
        self.counters = counters or {}
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _read(self) -> dict[str, float]:
        out = {name: read() for name, read in self.groups.items()}
        # Loopback TCP runs partly in softirq context, which no process is charged for.
        out["machine"], out["kernel_irq"] = _machine_seconds()
        return out

    def start(self) -> None:
        self._start = {**self._read(), **{k: c() for k, c in self.counters.items()}}
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        end, elapsed = self._read(), max(time.monotonic() - self._t0, 1e-9)
        end.update({k: c() for k, c in self.counters.items()})
        cores = {k: round((end[k] - self._start.get(k, 0.0)) / elapsed, 2) for k in end}
        known = sum(v for k, v in cores.items() if k in self.groups or k == "kernel_irq")
        cores["other"] = round(max(cores["machine"] - known, 0.0), 2)
        return cores


def _pg_sessions(url: str) -> Callable[[], float]:
    """Sessions ever opened on the bench's database (pg_stat_database, PostgreSQL 14+)."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)

    def read() -> float:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute(
                    "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
                ).fetchone()
        except psycopg.Error:
            return math.nan
        return float(row[0]) if row is not None and row[0] is not None else math.nan

    return read


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem_gib,
        "machine": pyplatform.machine(),
        "kernel": pyplatform.release(),
        "python": pyplatform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# ── the deployment ──────────────────────────────────────────────────────────────


@contextlib.contextmanager
def _postgres_schemas(url: str) -> Iterator[dict[str, str]]:
    """One fresh schema per party for the run, dropped afterwards: party → URL."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    database: dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for party in _HIS_PARTIES:
            schema = f"pk_bench_{secrets.token_hex(4)}_{party.replace('-', '_')}"
            conn.execute(f'CREATE SCHEMA "{schema}"')
            database[party] = f"{url}?options=-csearch_path%3D{schema}"
    try:
        yield database
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for party_url in database.values():
                schema = party_url.rsplit("%3D", 1)[1]
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _split(items: Sequence[VUser], parts: int) -> list[list[VUser]]:
    groups: list[list[VUser]] = [[] for _ in range(min(parts, len(items)))]
    for i, item in enumerate(items):
        groups[i % len(groups)].append(item)
    return groups


@contextlib.contextmanager
def _step(console: Console, timings: dict[str, float], key: str, text: str) -> Iterator[None]:
    """A spinner while ``text`` runs, then one line with its duration (kept in ``timings``)."""
    started = time.monotonic()
    with console.status(text):
        yield
    timings[key] = round(time.monotonic() - started, 1)
    console.print(f"[dim]{text}: {timings[key]:.1f} s[/]")


@contextlib.contextmanager
def _deployment(
    console: Console,
    timings: dict[str, float],
    *,
    prefix: str,
    workdir: Path | None,
    workers: int,
    database: str,
    pg_url: str,
    overrides: dict[str, dict[str, object]],
    platform_module: str = "patientkey.platform.server",
) -> Iterator[Any]:
    """The loopback deployment, started; stopped afterwards.

    ``workdir`` must be empty; without one the deployment goes to a temporary
    directory that is removed afterwards. With ``database="postgres"`` every party
    gets a fresh schema in ``pg_url``, dropped afterwards.
    """
    from patientkey.demo.network import Network

    own_workdir = workdir is None
    where = Path(tempfile.mkdtemp(prefix=prefix)) if workdir is None else workdir
    if not own_workdir and where.exists() and any(where.iterdir()):
        raise InvalidInput(f"{where} is not empty (the bench lays out a fresh deployment)")
    try:
        with contextlib.ExitStack() as stack:
            schemas: dict[str, str] = {}
            if database == "postgres":
                schemas = stack.enter_context(_postgres_schemas(pg_url))
            net = Network(
                where,
                database=schemas,
                wallet_pool_keys=16,
                platform_workers=workers,
                overrides=overrides,
                platform_module=platform_module,
            )
            with _step(
                console,
                timings,
                "start",
                f"starting KME, hospital, pharmacy, platform ({workers} worker(s), {database})",
            ):
                stack.callback(net.stop)
                net.start()
            yield net
    finally:
        if own_workdir:
            shutil.rmtree(where, ignore_errors=True)


def _set_up_users(
    net: Any, options: RxOptions, console: Console, timings: dict[str, float]
) -> list[VUser]:
    """Virtual users: certificates, patients, records, charged pools, keystores."""
    from patientkey.fhir.synthetic import write_bundles

    names = net.names
    users = [f"u-bench-{i:03d}" for i in range(options.concurrency)]
    with _step(console, timings, "certificates", f"issuing {len(users)} client certificates"):
        net.add_users(users)
    with _step(console, timings, "enroll", f"enrolling {len(users)} patients"):
        people = [(f"Bench Patient {i}", "1970-01-01") for i in range(len(users))]
        enrolled = net.enroll_many(people)
    batches = []
    with _step(console, timings, "generate", f"generating {options.records} records per user"):
        for i, (patient_id, _code) in enumerate(enrolled):
            directory = net.workdir / "records" / users[i]
            write_bundles(directory, options.records, options.seed * 100_000 + i)
            batches.append((directory, patient_id))
    with _step(
        console, timings, "import", f"importing {options.records * len(users)} records (announced)"
    ):
        imported = net.import_many(batches)
    with _step(
        console,
        timings,
        "charge",
        f"charging {len(users)} KUE pools with {options.pool_keys} keys per direction "
        "from the KME (simulated BB84)",
    ):
        pools = net.charge_users(users, options.pool_keys)
    out: list[VUser] = []
    with _step(console, timings, "keystores", "writing the wallets' keystores"):
        for user, (_patient_id, code), p_ids in zip(users, enrolled, imported, strict=True):
            config = net.make_wallet(user, codes=[code], pool=pools.pop(user), kdf=_BENCH_KDF)
            out.append(VUser(user, str(config), names.hospital, names.pharmacy, tuple(p_ids)))
    with _step(console, timings, "grants", "each patient grants the pharmacy (CIBA)"):
        # A share needs a live grant (issue 4): one hospital-wide grant per patient.
        for user in users:
            with net.wallet(user) as wallet:
                net.authorize(wallet, [f"{names.hospital}:*"])
    return out


# ── the run ─────────────────────────────────────────────────────────────────────


def _phase(
    gens: _Generators,
    meter: _CpuMeter,
    name: str,
    options: RxOptions,
    progress: Progress,
) -> tuple[dict[str, Any], dict[str, float]]:
    start_at = time.monotonic() + 0.5
    window_from = start_at + options.warmup
    window_to = window_from + options.duration
    before = gens.ops_done()
    gens.start_phase(name, start_at, options.warmup, options.duration)
    total = options.warmup + options.duration
    task = progress.add_task(f"{name:<12}", total=total, ops="")
    cpu: dict[str, float] = {}
    started = False
    while True:
        now = time.monotonic()
        if not started and now >= window_from:
            meter.start()
            started = True
        if now >= window_to:
            break
        done = gens.ops_done() - before
        elapsed = max(now - start_at, 0.0)
        phase = "warm-up" if now < window_from else "measuring"
        rate = done / elapsed if elapsed > 0 else 0.0
        progress.update(task, completed=elapsed, ops=f"{phase} {done:,} ops ~{rate:,.0f}/s")
        time.sleep(min(0.2, max(window_to - now, 0.01)))
    if not started:
        meter.start()
    cpu = meter.stop()
    result = gens.results(timeout=120.0)
    summary = _summary(result, options.duration)
    progress.update(
        task,
        completed=total,
        ops=f"{summary['ops_per_s']:,.0f} ops/s, p99 {summary['p99_ms']:.1f} ms, "
        f"{summary['errors']} errors",
    )
    return summary, cpu


def _meter(net: Any, database: str, pg_url: str, **extra: Callable[[], float]) -> _CpuMeter:
    """CPU per process group of the deployment and ``extra`` (and PostgreSQL's new sessions)."""
    pids = net.pids()
    groups = {
        "platform": _pids_seconds(pids.get("platform", [])),
        "hospital": _pids_seconds(pids.get(net.names.hospital, [])),
        "pharmacy": _pids_seconds(pids.get(net.names.pharmacy, [])),
        "kme": _pids_seconds(pids.get("kme", [])),
        **extra,
    }
    counters = {}
    if database == "postgres":
        groups["postgres"] = _postgres_seconds
        # New PostgreSQL sessions per second (the meter divides by the window).
        counters["pg_sessions_per_s"] = _pg_sessions(pg_url)
    return _CpuMeter(groups, counters)


def _default_console(console: Console | None, width: int = 160) -> Console:
    """``console``, or one on standard output; into a log file, ``width`` columns wide."""
    if console is not None:
        return console
    console = Console()
    return console if console.is_terminal else Console(width=width)  # the tables need the room


def _write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def run(options: RxOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the benchmark; the report (also written to ``options.json_out``)."""
    options.check()
    console = _default_console(console)
    if options.profile is not None:
        os.environ[PROFILE_ENV] = str(options.profile.resolve())
    timings: dict[str, float] = {}
    overrides: dict[str, dict[str, object]] = {
        "platform": {
            "bind_limit_patient": BIND_LIMIT,
            "bind_limit_user": BIND_LIMIT,
            "rekey_messages": options.hop_rekey,
            "access_log": False,
        },
    }
    with (
        _deployment(
            console,
            timings,
            prefix="pk-bench-rx-",
            workdir=options.workdir,
            workers=options.workers,
            database=options.database,
            pg_url=options.pg_url,
            overrides=overrides,
            platform_module=(
                "patientkey.bench.rx" if options.profile else "patientkey.platform.server"
            ),
        ) as net,
        contextlib.ExitStack() as stack,
    ):
        users = _set_up_users(net, options, console, timings)
        gens = _Generators(
            _split(users, options.clients), net.passphrase, net.urls["platform"], net.pki
        )
        stack.callback(gens.close)
        with _step(
            console,
            timings,
            "generators",
            f"{len(gens.clients)} load generator(s): opening {len(users)} wallets, "
            "binding and fetching a first record each",
        ):
            gens.ready(timeout=300.0)
        meter = _meter(
            net,
            options.database,
            options.pg_url,
            load_generators=_pids_seconds(gens.pids),
            bench_parent=_pids_seconds([os.getpid()]),
        )
        phases: dict[str, dict[str, Any]] = {}
        cpu: dict[str, dict[str, float]] = {}
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[ops]}"),
            console=console,
        ) as progress:
            for name in ("bare", *options.ops):
                phases[name], cpu[name] = _phase(gens, meter, name, options, progress)
        report = _report(options, phases, cpu, len(users), len(gens.clients))  # before close()
    report["setup_s"] = timings
    if options.profile is not None:
        report["profile"] = profile_summary(options.profile)
    _print(console, report)
    _write_report(options.json_out, report)
    return report


#: Meter readings that are not a process group's CPU, or not an operation's cost.
_NOT_PER_OP: Final = frozenset(
    {"machine", "kernel_irq", "other", "bench_parent", "pg_sessions_per_s"}
)


def _add_cpu_per_op(phases: dict[str, dict[str, Any]], cpu: dict[str, dict[str, float]]) -> None:
    for name, row in phases.items():
        # CPU milliseconds each process group spent per completed operation: what an
        # operation costs, whatever else shared the machine.
        row["cpu_ms_per_op"] = {
            group: round(1000.0 * cores / row["ops_per_s"], 2) if row["ops_per_s"] else None
            for group, cores in cpu.get(name, {}).items()
            if group not in _NOT_PER_OP
        }


def _settings(options: Any) -> dict[str, Any]:
    """The options as reported: no local paths, the PostgreSQL URL only when it was used."""
    settings = {
        k: v for k, v in asdict(options).items() if k not in ("workdir", "json_out", "profile")
    }
    if options.database != "postgres":
        settings.pop("pg_url", None)
    return settings


def _report(
    options: RxOptions,
    phases: dict[str, dict[str, Any]],
    cpu: dict[str, dict[str, float]],
    users: int,
    clients: int,
) -> dict[str, Any]:
    _add_cpu_per_op(phases, cpu)
    bare = phases["bare"]
    operations: dict[str, dict[str, Any]] = {}
    for name in options.ops:
        row = dict(phases[name])
        calls = PLATFORM_CALLS[name]
        row["platform_calls_per_op"] = calls
        row["platform_also_calls"] = PEER_CALLS[name]
        row["platform_calls_per_s"] = round(row["ops_per_s"] * calls, 1)
        row["ratio_to_bare"] = (
            round(row["ops_per_s"] / bare["ops_per_s"], 3) if bare["ops_per_s"] else None
        )
        row["platform_calls_ratio_to_bare"] = (
            round(row["platform_calls_per_s"] / bare["ops_per_s"], 3) if bare["ops_per_s"] else None
        )
        operations[name] = row
    reached = {
        name: bool(
            row.get("platform_calls_per_s", row["ops_per_s"]) >= TARGET_CALLS_PER_S
            and row["p99_ms"] < TARGET_P99_MS
            and row["errors"] == 0
        )
        for name, row in {"bare": bare, **operations}.items()
    }
    settings = {
        **_settings(options),
        "ops": list(options.ops),
        "virtual_users": users,
        "load_generator_processes": clients,
        "threads_per_generator": math.ceil(users / clients),
        "platform_bind_limit_patient": BIND_LIMIT,
        "platform_bind_limit_user": BIND_LIMIT,
        "platform_access_log": False,
        "wallet_persistence": (
            "memory only (open_wallet(persist=False)): the real wallet rewrites and fsyncs "
            "its keystore before every message, a client cost not measured here"
        ),
        "connections": "one keep-alive mutual-TLS connection per virtual user",
        "bind": "idempotent re-bind of the same (User_ID, HIS_ID, Patient_ID), fresh proof",
        "hop_keys": (
            f"QKD (simulated BB84 KME) per hop to hospital/pharmacy, rekey every "
            f"{options.hop_rekey} message(s); wallet hop: pre-charged KUE pool, one key per "
            "message"
        ),
        "profiled": options.profile is not None,
    }
    return {
        "settings": settings,
        "machine": _machine(),
        "bare": bare,
        "operations": operations,
        "cpu_cores": cpu,
        "target": {
            "platform_calls_per_s": TARGET_CALLS_PER_S,
            "p99_ms": TARGET_P99_MS,
            "source": "peak rate of Germany's e-prescription service at its professional interface",
            "reached": reached,
        },
    }


def _fmt(value: float) -> str:
    return "—" if value != value else f"{value:,.1f}"  # noqa: PLR0124 - nan check


def _print_errors(console: Console, rows: Mapping[str, Mapping[str, Any]]) -> None:
    """One line per phase and error type: the count and a sample message."""
    for phase, row in rows.items():
        for kind, count in row["error_types"].items():
            sample = row["error_samples"].get(kind, "")
            console.print(f"[red]{phase}: {count} x {kind}[/] {sample}")


def _print(console: Console, report: dict[str, Any]) -> None:
    s = report["settings"]
    title = (
        f"patientkey bench rx — {s['database']}, {s['workers']} platform worker(s), "
        f"concurrency {s['concurrency']}, {s['duration']:g} s per phase, "
        f"{report['machine']['cpu_count']} cores"
    )
    table = Table(title=title)
    for column in ("operation", "ops/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for column in ("API calls/op", "API calls/s", "x bare", "platform cores", "platform ms/op"):
        table.add_column(column, justify="right")
    rows = {"bare (ping)": report["bare"], **report["operations"]}
    phases = ["bare", *report["operations"]]
    for (label, row), phase in zip(rows.items(), phases, strict=True):
        cores = report["cpu_cores"].get(phase, {}).get("platform", math.nan)
        table.add_row(
            label,
            _fmt(row["ops_per_s"]),
            _fmt(row["p50_ms"]),
            _fmt(row["p95_ms"]),
            _fmt(row["p99_ms"]),
            str(row["errors"]),
            str(row.get("platform_calls_per_op", 1)),
            _fmt(row.get("platform_calls_per_s", row["ops_per_s"])),
            "1.000" if phase == "bare" else str(row.get("ratio_to_bare")),
            _fmt(cores),
            f"{row['cpu_ms_per_op'].get('platform') or math.nan:.2f}",
        )
    console.print(table)
    cpu = Table(title="CPU cores used in each measured window (from /proc)")
    groups = list(next(iter(report["cpu_cores"].values()), {}))
    cpu.add_column("phase")
    for group in groups:
        cpu.add_column(group, justify="right")
    for phase, cores in report["cpu_cores"].items():
        cpu.add_row(phase, *(f"{cores.get(g, 0.0):.2f}" for g in groups))
    console.print(cpu)
    _print_errors(console, rows)
    for phase, row in rows.items():
        if row["exhausted_users"]:
            console.print(
                f"[yellow]{phase}: {row['exhausted_users']} user(s) ran out of unfetched "
                "records (raise --records)[/]"
            )
        if row["pq_fallback_wallets"]:
            console.print(
                f"[yellow]{phase}: {row['pq_fallback_wallets']} wallet(s) emptied their KUE "
                "pool and run on the ML-KEM+X25519 fallback (raise --pool-keys)[/]"
            )
    target = report["target"]
    met = [name for name, ok in target["reached"].items() if ok]
    console.print(
        f"target: {target['platform_calls_per_s']:,.0f} platform API calls/s with p99 < "
        f"{target['p99_ms']:.0f} ms — reached by: {', '.join(met) if met else 'none'}"
    )
    console.print(
        "[dim]wallets keep state in memory (the real wallet fsyncs its keystore before every "
        "message: a client cost, not measured); bind limits raised to "
        f"{BIND_LIMIT:,} per window; clients and servers share this machine's cores.[/]"
    )
    if "profile" in report:
        _print_profile(console, report["profile"])


# ── profiling the platform ──────────────────────────────────────────────────────

#: Where time goes, by source file (first match wins).
_AREAS: Final = (
    ("ssl / TLS", ("/ssl.py", "_ssl", "sslproto")),
    ("asyncio", ("/asyncio/",)),
    ("uvicorn / h11", ("/uvicorn/", "/h11/")),
    ("starlette / fastapi", ("/starlette/", "/fastapi/")),
    ("anyio threads", ("/anyio/", "/threading.py", "/queue.py", "concurrent/futures")),
    ("httpx / httpcore (peer calls)", ("/httpx/", "/httpcore/")),
    ("sqlalchemy", ("/sqlalchemy/",)),
    ("sqlite3", ("sqlite3",)),
    ("psycopg", ("psycopg",)),
    ("pydantic", ("/pydantic", "pydantic_core")),
    ("cryptography (C)", ("cryptography",)),
    ("patientkey.crypto", ("/patientkey/crypto/",)),
    ("patientkey.keysupply", ("/patientkey/keysupply/",)),
    ("patientkey.protocol", ("/patientkey/protocol/",)),
    ("patientkey.storage", ("/patientkey/storage/",)),
    ("patientkey.platform", ("/patientkey/platform/",)),
    ("patientkey.service", ("/patientkey/service/",)),
    ("logging", ("/logging/",)),
    ("json", ("/json/", "_json")),
)


def _area(filename: str, function: str) -> str:
    where = f"{filename} {function}"
    for name, needles in _AREAS:
        if any(n in where for n in needles):
            return name
    if filename == "~":
        return "other built-ins"
    return "other Python"


_IDLE: Final = ("acquire", "poll", "select", "sleep", "wait")


def _idle(filename: str, function: str) -> bool:
    """A C call in which a thread waits (for a lock, a socket, a timer), not works."""
    return filename == "~" and any(f"'{name}'" in function for name in _IDLE)


def profile_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """Own time by area, top functions by own time, PatientKey functions by cumulative time.

    Waiting (lock acquire, epoll, sleep) is reported apart and left out of the shares.
    """
    if not path.exists():
        return {"error": f"no profile written at {path}"}
    stats = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    waiting = sum(v[2] for (f, _l, fn), v in raw.items() if _idle(f, fn))
    busy = sum(v[2] for (f, _l, fn), v in raw.items() if not _idle(f, fn)) or 1e-9
    areas: dict[str, float] = {}
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        if not _idle(filename, function):
            key = _area(filename, function)
            areas[key] = areas.get(key, 0.0) + tottime

    def name(filename: str, line: int, function: str) -> str:
        return function if filename == "~" else f"{Path(filename).name}:{line}({function})"

    ranked = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)
    rows = [
        {
            "function": name(*where),
            "calls": ncalls,
            "own_s": round(tottime, 3),
            "own_pct": round(100 * tottime / busy, 1),
            "cum_s": round(cumtime, 3),
        }
        for where, (_cc, ncalls, tottime, cumtime, _callers) in ranked
        if not _idle(where[0], where[2])
    ][:top]
    ours = sorted(
        (kv for kv in raw.items() if "/patientkey/" in kv[0][0]),
        key=lambda kv: kv[1][3],
        reverse=True,
    )
    cumulative = [
        {
            "function": f"{Path(where[0]).parent.name}/{name(*where)}",
            "calls": ncalls,
            "cum_s": round(cumtime, 3),
            "cum_ms_per_call": round(1000 * cumtime / ncalls, 3) if ncalls else None,
        }
        for where, (_cc, ncalls, _tt, cumtime, _callers) in ours[:top]
    ]
    return {
        "file": str(path),
        "busy_s": round(busy, 2),
        "waiting_s": round(waiting, 2),
        "note": "cProfile in every platform thread (wall time; a thread waiting for the GIL "
        "is charged to where it stands); waiting in locks/epoll/sleep is left out of the "
        "shares; the profiler inflates Python-heavy code: read shares, not absolute times",
        "areas_pct": {
            k: round(100 * v / busy, 1) for k, v in sorted(areas.items(), key=lambda kv: -kv[1])
        },
        "top": rows,
        "patientkey_cumulative": cumulative,
    }


def _print_profile(console: Console, profile: dict[str, Any]) -> None:
    if "error" in profile:
        console.print(f"[red]profile: {profile['error']}[/]")
        return
    areas = Table(
        title=f"platform profile: own time by area ({profile['busy_s']:.1f} s busy, "
        f"{profile['waiting_s']:.1f} s waiting left out)"
    )
    areas.add_column("area")
    areas.add_column("% of busy", justify="right")
    for area, pct in profile["areas_pct"].items():
        areas.add_row(area, f"{pct:.1f}")
    console.print(areas)
    top = Table(title="platform profile: top functions by own time")
    for column in ("function", "calls", "own s", "own %", "cum s"):
        top.add_column(column, justify="left" if column == "function" else "right")
    for row in profile["top"]:
        top.add_row(
            row["function"],
            f"{row['calls']:,}",
            f"{row['own_s']:.2f}",
            f"{row['own_pct']:.1f}",
            f"{row['cum_s']:.2f}",
        )
    console.print(top)
    ours = Table(title="platform profile: PatientKey functions by cumulative time")
    for column in ("function", "calls", "cum s", "ms/call"):
        ours.add_column(column, justify="left" if column == "function" else "right")
    for row in profile["patientkey_cumulative"]:
        per_call = row["cum_ms_per_call"]
        ours.add_row(
            row["function"],
            f"{row['calls']:,}",
            f"{row['cum_s']:.2f}",
            "—" if per_call is None else f"{per_call:.3f}",
        )
    console.print(ours)


def _profiled_platform(argv: Sequence[str]) -> None:
    """``python -m patientkey.bench.rx --config ...``: the platform under cProfile.

    Every thread gets its own profiler (installed by :func:`threading.setprofile`
    before the server starts its threads); on shutdown (SIGTERM) they are merged
    into ``$PATIENTKEY_BENCH_PROFILE``.
    """
    from patientkey.platform import server

    out = Path(os.environ[PROFILE_ENV])
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def install(_frame: Any, _event: str, _arg: Any) -> None:
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)
        profile.enable()  # replaces this hook for the calling thread

    # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default
    # handler that would end the process before the profiles are written.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    main_profile = cProfile.Profile()
    profiles.append(main_profile)
    threading.setprofile(install)
    main_profile.enable()
    try:
        server.main(argv)
    finally:
        main_profile.disable()
        threading.setprofile(None)
        with lock:
            taken = list(profiles)
        merged: pstats.Stats | None = None
        for profile in taken:
            with contextlib.suppress(TypeError, ValueError):
                stats = pstats.Stats(profile)
                if merged is None:
                    merged = stats
                else:
                    merged.add(stats)
        if merged is not None:
            merged.dump_stats(str(out))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m patientkey.bench.rx`` (the profiled platform)."""
    _profiled_platform(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
