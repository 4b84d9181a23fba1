"""``patientkey bench``: benchmarks (figures go to docs/BENCHMARKS.md, never into tests)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

app = typer.Typer(help="Benchmarks.")


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
