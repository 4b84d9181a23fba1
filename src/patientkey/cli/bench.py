"""``patientkey bench``: benchmarks (figures go to docs/BENCHMARKS.md, never into tests)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from patientkey.bench import DEFAULT_PG_URL, PG_URL_ENV

app = typer.Typer(help="Benchmarks.")

# Options ``bench rx`` and ``bench auth`` share.
JsonOut = Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")]
Workers = Annotated[int, typer.Option(min=1, max=64, help="Platform uvicorn worker processes.")]
Database = Annotated[str, typer.Option(help="Every party's database: sqlite or postgres.")]
Workdir = Annotated[
    Path | None,
    typer.Option(help="Lay the deployment out here and keep it (default: a temporary directory)."),
]
PgUrl = Annotated[
    str,
    typer.Option(
        envvar=PG_URL_ENV,
        help="PostgreSQL for --database postgres (a schema per party, dropped afterwards).",
    ),
]


@contextlib.contextmanager
def _exit_on_error() -> Iterator[None]:
    """A PatientKeyError (bad options, a deployment that will not start) ends with exit code 2."""
    from patientkey.errors import PatientKeyError

    try:
        yield
    except PatientKeyError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc.detail}")
        raise typer.Exit(2) from exc


def _time_us(fn: Callable[[], object], *, min_seconds: float, repeats: int = 5) -> float:
    """Median over ``repeats`` runs of the mean µs per call (each run ≥ min_seconds / repeats)."""
    fn()  # warm-up
    n = 1
    while True:  # calibrate a batch size that takes a measurable time
        start = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - start
        if took >= min_seconds / repeats / 4 or n >= 1 << 20:
            break
        n *= 2
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def _open_us(factory: Callable[[], Any], seal: Callable[[], str], batch: int = 2000) -> float:
    """µs per envelope open: each token opened once (a second open would be a replay)."""
    runs = []
    for _ in range(5):
        tokens = [seal() for _ in range(batch)]
        opener = factory()
        start = time.perf_counter()
        for token in tokens:
            opener.open(token)
        runs.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(runs)


@app.command()
def crypto(
    seconds: float = typer.Option(1.0, min=0.05, help="Time spent per measurement."),
    body_bytes: int = typer.Option(4096, min=1, help="Payload size for envelope and record."),
    pulses: int = typer.Option(1_000_000, min=1000, help="BB84 pulses per simulated round."),
    out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON here."),
) -> None:
    """µs per envelope seal/open, record seal (1 and 3 recipients), HPKE wrap; BB84 pulses/s."""
    from patientkey.crypto import (
        EnvelopeOpener,
        HpkeKeyPair,
        PublicRecipient,
        SymmetricRecipient,
        hpke_unwrap,
        hpke_wrap,
        open_record,
        seal_envelope,
        seal_record,
    )
    from patientkey.kme.bb84 import pulses_per_second

    body = os.urandom(body_bytes)
    hop_key = os.urandom(32)
    kid = f"q.{uuid.uuid4()}|n.0"

    def opener_factory() -> EnvelopeOpener:
        return EnvelopeOpener(me="hospital-1", resolve_key=lambda _peer, _kid: hop_key)

    def seal() -> str:
        return seal_envelope(
            key=hop_key,
            kid=kid,
            sender="platform",
            receiver="hospital-1",
            mtype="fetch",
            payload=body,
        )

    kuh = SymmetricRecipient(kid="kuh:hospital-1", version=1, key=os.urandom(32))
    kub = SymmetricRecipient(kid="kub:pharmacy-1", version=1, key=os.urandom(32))
    third = HpkeKeyPair.generate()
    pub = PublicRecipient(kid="kbp:pharmacy-2", public_key=third.public_key)
    rec1 = seal_record(record_id="P1", owner="u1", body=body, recipients=[kuh])
    dek = os.urandom(32)
    wrapped = hpke_wrap(third.public_key, dek, b"bench")

    cases: list[tuple[str, Callable[[], object]]] = [
        (f"envelope seal ({body_bytes} B)", seal),
        (
            "record seal, 1 recipient (AES-KW)",
            lambda: seal_record(record_id="P1", owner="u1", body=body, recipients=[kuh]),
        ),
        (
            "record seal, 3 recipients (2 AES-KW + HPKE)",
            lambda: seal_record(record_id="P1", owner="u1", body=body, recipients=[kuh, kub, pub]),
        ),
        ("record open (AES-KW)", lambda: open_record(rec1, kid=kuh.kid, key=kuh.key, version=1)),
        ("HPKE wrap (ML-KEM-768+X25519)", lambda: hpke_wrap(third.public_key, dek, b"bench")),
        ("HPKE unwrap (ML-KEM-768+X25519)", lambda: hpke_unwrap(third, wrapped, b"bench")),
    ]
    results: dict[str, float] = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("measuring", total=len(cases) + 1)
        for name, fn in cases:
            results[name] = _time_us(fn, min_seconds=seconds)
            progress.advance(task)
        results[f"envelope open ({body_bytes} B)"] = _open_us(opener_factory, seal)
        rates = [pulses_per_second(pulses, seed=s) for s in range(3)]
        results["BB84 simulated pulses/s"] = statistics.median(rates)
        progress.advance(task)
    table = Table(title=f"patientkey bench crypto ({platform.machine()}, {os.cpu_count()} cores)")
    table.add_column("operation")
    table.add_column("result", justify="right")
    for name, value in results.items():
        unit = "pulses/s" if "pulses" in name else "µs"
        table.add_row(name, f"{value:,.0f} {unit}" if unit != "µs" else f"{value:,.1f} µs")
    Console().print(table)
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


@app.command()
def rx(
    concurrency: int = typer.Option(
        16, min=1, max=512, help="Virtual users, each its own thread, User_ID, pool, records."
    ),
    duration: float = typer.Option(10.0, min=0.1, help="Measured seconds per operation."),
    out: JsonOut = None,
    workers: Workers = 1,
    database: Database = "sqlite",
    records: int = typer.Option(
        200, min=2, help="Prescriptions generated per virtual user (each cold-fetched once)."
    ),
    workdir: Workdir = None,
    clients: int = typer.Option(2, min=1, max=64, help="Load-generator processes."),
    warmup: float = typer.Option(2.0, min=0.0, help="Unmeasured seconds before each phase."),
    pool_keys: int = typer.Option(
        3000, min=16, help="KUE pool keys per direction charged to each virtual user."
    ),
    hop_rekey: int = typer.Option(
        1, min=1, help="Platform→hospital/pharmacy: messages per QKD key (1 = fresh per message)."
    ),
    ops: str = typer.Option(
        "bind,cold_fetch,cached_fetch,share", help="Operations to measure, comma-separated."
    ),
    pg_url: PgUrl = DEFAULT_PG_URL,
    profile: Path | None = typer.Option(
        None, help="Run the platform under cProfile (one worker) and write the stats here."
    ),
) -> None:
    """Bind, cold/cached fetch and share over mutual TLS against running services.

    Prints ops/s and p50/p95/p99 latency per operation, the platform's bare request
    rate (GET /v1/ping) and each operation's ratio to it; see patientkey.bench.rx.
    """
    from patientkey.bench.rx import RxOptions
    from patientkey.bench.rx import run as run_rx

    with _exit_on_error():
        run_rx(
            RxOptions(
                concurrency=concurrency,
                duration=duration,
                warmup=warmup,
                workers=workers,
                database=database,
                records=records,
                clients=clients,
                pool_keys=pool_keys,
                hop_rekey=hop_rekey,
                ops=tuple(o.strip() for o in ops.split(",") if o.strip()),
                workdir=workdir,
                json_out=out,
                pg_url=pg_url,
                profile=profile,
            )
        )


@app.command()
def auth(
    concurrency: int = typer.Option(
        8, min=1, max=256, help="Virtual patients, each its own thread, wallet and OAuth client."
    ),
    duration: float = typer.Option(10.0, min=0.1, help="Measured seconds per phase."),
    out: JsonOut = None,
    workers: Workers = 1,
    database: Database = "sqlite",
    warmup: float = typer.Option(1.0, min=0.0, help="Unmeasured seconds before each phase."),
    pool_keys: int = typer.Option(
        1000, min=16, help="KUE pool keys per direction charged to each virtual patient."
    ),
    workdir: Workdir = None,
    pg_url: PgUrl = DEFAULT_PG_URL,
    proofs: str = typer.Option(
        "password",
        help="Approval proofs besides the device signature: password (Argon2id) or otp "
        "(an e-mail one-time code).",
    ),
) -> None:
    """CIBA flows/s (ask → approve → token) and introspections/s over HTTPS, with p50/p99.

    Prints both next to issue 4's targets; see patientkey.bench.auth.
    """
    from patientkey.bench.auth import AuthOptions
    from patientkey.bench.auth import run as run_auth

    with _exit_on_error():
        run_auth(
            AuthOptions(
                concurrency=concurrency,
                duration=duration,
                warmup=warmup,
                workers=workers,
                database=database,
                pool_keys=pool_keys,
                workdir=workdir,
                json_out=out,
                pg_url=pg_url,
                proofs=proofs,
            )
        )


@app.command()
def audit(
    sizes: str | None = typer.Option(
        None,
        help="Log sizes (events) to measure at, comma-separated "
        "[memory: 10000,100000,1000000; sql: 10000,100000].",
    ),
    samples: int = typer.Option(
        200, min=1, max=100_000, help="Proofs generated and verified per size and kind."
    ),
    store: str = typer.Option(
        "memory",
        help="memory: the log's algorithms in process; sql: the platform's own "
        "event log, sequencer and proofs on a database.",
    ),
    db_url: str | None = typer.Option(
        None, help="With --store sql: a PostgreSQL URL (default: a temporary SQLite file)."
    ),
    out: JsonOut = None,
    seed: int = typer.Option(1, help="Seed of the random sample leaves and earlier sizes."),
) -> None:
    """Transparency log: events appended/s, inclusion and consistency proofs (µs, hashes).

    The log grows to each size in turn; see patientkey.bench.audit and
    patientkey.bench.audit_sql.
    """
    from patientkey.bench.audit import DEFAULT_SIZES, AuditOptions, parse_sizes
    from patientkey.bench.audit import run as run_audit

    with _exit_on_error():
        if store == "sql":
            from patientkey.bench.audit_sql import DEFAULT_SQL_SIZES, SqlAuditOptions, run_sql

            run_sql(
                SqlAuditOptions(
                    sizes=parse_sizes(sizes) if sizes else DEFAULT_SQL_SIZES,
                    samples=min(samples, 10_000),
                    db_url=db_url,
                    json_out=out,
                    seed=seed,
                )
            )
        elif store == "memory":
            run_audit(
                AuditOptions(
                    sizes=parse_sizes(sizes) if sizes else DEFAULT_SIZES,
                    samples=samples,
                    json_out=out,
                    seed=seed,
                )
            )
        else:
            from patientkey.errors import InvalidInput

            raise InvalidInput("--store is memory or sql")
