"""``patientkey bench audit``: the transparency log at 10^4, 10^5 and 10^6 events.

What runs
---------
One :class:`~patientkey.audit.MerkleLog` over the in-memory node store, in this
process (the log core is sans-IO; a database store adds its own I/O cost per
:meth:`~patientkey.audit.NodeStore.get_nodes` / ``put_nodes`` call, which is
why the node reads per proof are reported). The log grows to each of
``--sizes`` in turn; events are synthetic security events (kind, User_ID,
time, sequence number; about 110 bytes of JSON), made before the clock starts.

Measured at each size
---------------------
* **appends**: events per second through :meth:`MerkleLog.append`, one event
  per call (each security event is logged as it happens), over the events
  added since the previous size;
* **inclusion proofs** for ``--samples`` random leaves and **consistency
  proofs** from ``--samples`` random earlier sizes: generation
  (:meth:`MerkleLog.inclusion_proof` / :meth:`MerkleLog.consistency_proof`)
  and verification (:func:`~patientkey.audit.verify_inclusion` from the event's
  bytes / :func:`~patientkey.audit.verify_consistency`), median µs; proof sizes
  in hashes, against ⌈log₂ n⌉; store nodes read per proof;
* **tree heads**: the current root (from the in-memory frontier), the root of a
  random earlier size (read from the store), Ed25519 signing and verification
  of a tree head, and the wallet's whole :func:`~patientkey.audit.check_consistency`
  (two signature checks and a consistency proof).

Figures are printed and written to JSON; tests only check that the machinery runs.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from patientkey.audit import (
    MemoryNodeStore,
    MerkleLog,
    NodeKey,
    StoredNode,
    TreeHead,
    check_consistency,
    leaf_hash,
    sign_tree_head,
    verify_consistency,
    verify_inclusion,
    verify_tree_head,
)
from patientkey.bench.rx import _default_console, _machine, _write_report
from patientkey.errors import InvalidInput

__all__ = ["DEFAULT_SIZES", "AuditOptions", "make_event", "parse_sizes", "run"]

DEFAULT_SIZES: Final = (10_000, 100_000, 1_000_000)
#: The in-memory store holds about 64 bytes per event; 10^7 events is about 640 MB.
MAX_SIZE: Final = 10_000_000
_CHUNK: Final = 10_000  # events made (untimed) and appended (timed) per progress step
_LOG_ID: Final = "patientkey-bench"
_KINDS: Final = (
    "bind",
    "key.rotate",
    "record.store",
    "record.fetch",
    "record.share",
    "dispense.claim",
    "authz.requested",
    "authz.approved",
    "authz.token_issued",
    "authz.used",
    "authz.revoked",
)


@dataclass(frozen=True, slots=True)
class AuditOptions:
    """The command's options (see ``patientkey bench audit --help``)."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    samples: int = 200
    json_out: Path | None = None
    seed: int = 1

    def check(self) -> None:
        if not self.sizes or any(not 2 <= s <= MAX_SIZE for s in self.sizes):
            raise InvalidInput(f"sizes must be between 2 and {MAX_SIZE:,} events")
        if list(self.sizes) != sorted(set(self.sizes)):
            raise InvalidInput("sizes must be increasing")
        if not 1 <= self.samples <= 100_000:
            raise InvalidInput("samples must be between 1 and 100,000")


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"10000,1e5,1_000_000"`` → ``(10000, 100000, 1000000)`` (sorted, without repeats)."""
    sizes: set[int] = set()
    for part in (p.strip().replace("_", "") for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part) if "e" in part.lower() else int(part)
        except ValueError as exc:
            raise InvalidInput(f"not a size: {part!r}") from exc
        if value != int(value):
            raise InvalidInput(f"not a whole number of events: {part!r}")
        sizes.add(int(value))
    if not sizes:
        raise InvalidInput("no sizes given")
    return tuple(sorted(sizes))


def make_event(seq: int) -> bytes:
    """A synthetic security event: metadata only (kind, User_ID, time), as the log holds."""
    kind = _KINDS[seq % len(_KINDS)]
    at_ms = 1_767_225_600_000 + seq * 250  # 2026-01-01T00:00:00Z, four events a second
    return (
        f'{{"at":{at_ms},"kind":"{kind}","seq":{seq},'
        f'"user_id":"u-{seq * 7919 % 100_003:06d}","by":"platform"}}'
    ).encode("ascii")


class _CountingStore:
    """A node store that counts the nodes read (to show O(log n) reads per proof)."""

    def __init__(self, inner: MemoryNodeStore) -> None:
        self.inner = inner
        self.reads = 0

    def leaf_count(self) -> int:
        return self.inner.leaf_count()

    def get_nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        self.reads += len(keys)
        return self.inner.get_nodes(keys)

    def put_nodes(self, nodes: Sequence[StoredNode]) -> None:
        self.inner.put_nodes(nodes)


def _summary(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "mean": round(statistics.fmean(values), digits),
        "max": round(max(values), digits),
    }


def _us(since: float) -> float:
    return (time.perf_counter() - since) * 1e6


@dataclass
class _ProofTimes:
    """Generation and verification times, sizes and node reads of one kind of proof."""

    generate_us: list[float] = field(default_factory=list)
    verify_us: list[float] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    node_reads: list[int] = field(default_factory=list)

    def measure(
        self,
        store: _CountingStore,
        generate: Callable[[], list[bytes]],
        verify: Callable[[list[bytes]], None],
    ) -> list[bytes]:
        """Time ``generate()`` and ``verify(proof)``; the proof."""
        before = store.reads
        t0 = time.perf_counter()
        proof = generate()
        self.generate_us.append(_us(t0))
        self.node_reads.append(store.reads - before)
        t0 = time.perf_counter()
        verify(proof)
        self.verify_us.append(_us(t0))
        self.hashes.append(len(proof))
        return proof

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            "generate_us": _summary(self.generate_us),
            "verify_us": _summary(self.verify_us),
            "hashes": _summary(self.hashes),
            "node_reads": _summary(self.node_reads),
        }


def _proofs(
    log: MerkleLog,
    store: _CountingStore,
    rng: random.Random,
    samples: int,
    key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """Inclusion and consistency proofs, and tree heads, at the log's current size."""
    n = log.size
    t0 = time.perf_counter()
    root = log.root()
    root_us = _us(t0)
    inclusion = _ProofTimes()
    for index in (rng.randrange(n) for _ in range(samples)):
        entry_hash = leaf_hash(make_event(index))
        inclusion.measure(
            store,
            partial(log.inclusion_proof, index, n),
            partial(verify_inclusion, entry_hash, index, n, root=root),
        )
    consistency, tree_head = _consistency(log, store, rng, samples, key)
    tree_head["root_us"] = round(root_us, 1)
    return {"inclusion": inclusion.summary(), "consistency": consistency, "tree_head": tree_head}


def _consistency(
    log: MerkleLog,
    store: _CountingStore,
    rng: random.Random,
    samples: int,
    key: Ed25519PrivateKey,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Consistency proofs from random earlier sizes, and the signed tree heads around them."""
    n = log.size
    root = log.root()
    now_ms = time.time_ns() // 1_000_000
    public = key.public_key()
    head = TreeHead(n, root, now_ms)
    sign_us: list[float] = []
    verify_sth_us: list[float] = []
    for _ in range(min(samples, 50)):
        t0 = time.perf_counter()
        new_sth = sign_tree_head(key, head, _LOG_ID)
        sign_us.append(_us(t0))
        t0 = time.perf_counter()
        verify_tree_head(public, new_sth)
        verify_sth_us.append(_us(t0))
    consistency = _ProofTimes()
    old_root_us: list[float] = []
    wallet_us: list[float] = []
    for old in (rng.randrange(1, n) for _ in range(samples)):
        t0 = time.perf_counter()
        old_root = log.root(old)
        old_root_us.append(_us(t0))
        proof = consistency.measure(
            store,
            partial(log.consistency_proof, old, n),
            partial(verify_consistency, old, n, old_root, root),
        )
        old_sth = sign_tree_head(key, TreeHead(old, old_root, now_ms - 1), _LOG_ID)
        t0 = time.perf_counter()
        check_consistency(old_sth, new_sth, proof, public)
        wallet_us.append(_us(t0))
    tree_head = {
        "earlier_root_us": _summary(old_root_us),
        "sign_us": _summary(sign_us),
        "verify_us": _summary(verify_sth_us),
        "wallet_check_consistency_us": _summary(wallet_us),
    }
    return consistency.summary(), tree_head


def run(options: AuditOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the benchmark; the report (also written to ``options.json_out``)."""
    options.check()
    console = _default_console(console, width=140)
    rng = random.Random(options.seed)  # noqa: S311 - picks sample leaves, nothing secret
    key = Ed25519PrivateKey.generate()
    store = _CountingStore(MemoryNodeStore())
    log = MerkleLog(store)
    results: list[dict[str, Any]] = []
    total_s = 0.0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("appending events", total=options.sizes[-1])
        for target in options.sizes:
            start_size, segment_s = log.size, 0.0
            while log.size < target:
                events = [make_event(i) for i in range(log.size, min(log.size + _CHUNK, target))]
                append = log.append
                t0 = time.perf_counter()
                for event in events:
                    append(event)
                segment_s += time.perf_counter() - t0
                progress.update(task, completed=log.size)
            total_s += segment_s
            progress.update(task, description=f"proofs at {target:,} events")
            measured = _proofs(log, store, rng, options.samples, key)
            progress.update(task, description="appending events")
            results.append(
                {
                    "size": target,
                    "log2_size": math.ceil(math.log2(target)),
                    "append": {
                        "events": target - start_size,
                        "seconds": round(segment_s, 3),
                        "events_per_s": round((target - start_size) / segment_s),
                        "cumulative_events_per_s": round(target / total_s),
                    },
                    "store_bytes": store.inner.nbytes,
                    **measured,
                }
            )
    report = {
        "settings": {
            "sizes": list(options.sizes),
            "samples": options.samples,
            "seed": options.seed,
            "store": "MemoryNodeStore (in-process)",
        },
        "machine": _machine(),
        "results": results,
    }
    _print(console, report)
    _write_report(options.json_out, report)
    return report


def _print(console: Console, report: dict[str, Any]) -> None:
    machine = report["machine"]
    where = f"{machine['machine']}, {machine['cpu_count']} cores, Python {machine['python']}"
    appends = Table(title=f"patientkey bench audit: appends ({where})")
    for column in ("events", "appends/s (this step)", "appends/s (overall)", "store MB"):
        appends.add_column(column, justify="right")
    for r in report["results"]:
        appends.add_row(
            f"{r['size']:,}",
            f"{r['append']['events_per_s']:,}",
            f"{r['append']['cumulative_events_per_s']:,}",
            f"{r['store_bytes'] / 1e6:,.1f}",
        )
    console.print(appends)

    samples = report["settings"]["samples"]
    proofs = Table(
        title=f"proofs: median µs over {samples} random leaves / earlier sizes; "
        "hashes and node reads mean (max)"
    )
    for column in ("events", "proof", "generate µs", "verify µs", "hashes", "node reads"):
        proofs.add_column(column, justify="left" if column == "proof" else "right")
    proofs.add_column("⌈log₂ n⌉", justify="right")
    for r in report["results"]:
        for kind in ("inclusion", "consistency"):
            p = r[kind]
            proofs.add_row(
                f"{r['size']:,}",
                kind,
                f"{p['generate_us']['median']:,.1f}",
                f"{p['verify_us']['median']:,.1f}",
                f"{p['hashes']['mean']:.1f} ({p['hashes']['max']:.0f})",
                f"{p['node_reads']['mean']:.1f} ({p['node_reads']['max']:.0f})",
                str(r["log2_size"]),
            )
    console.print(proofs)

    heads = Table(title="tree heads: median µs")
    for column in (
        "events",
        "root (frontier)",
        "root of earlier size",
        "sign STH",
        "verify STH",
        "wallet check_consistency",
    ):
        heads.add_column(column, justify="right")
    for r in report["results"]:
        h = r["tree_head"]
        heads.add_row(
            f"{r['size']:,}",
            f"{h['root_us']:,.1f}",
            f"{h['earlier_root_us']['median']:,.1f}",
            f"{h['sign_us']['median']:,.1f}",
            f"{h['verify_us']['median']:,.1f}",
            f"{h['wallet_check_consistency_us']['median']:,.1f}",
        )
    console.print(heads)
