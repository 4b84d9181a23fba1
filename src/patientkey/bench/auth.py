"""``patientkey bench auth``: the authorization unit under load, over real HTTPS.

What runs
---------
A loopback deployment (:class:`patientkey.demo.network.Network`): the KME, the
hospital, the pharmacy and the platform as separate processes speaking HTTPS, the
platform with ``--workers`` uvicorn processes on SQLite or PostgreSQL. One *virtual
patient* per unit of ``--concurrency``: its own User_ID (client certificate), its own
charged KUE pool and wallet (:class:`patientkey.wallet.core.WalletCore`, the library the
CLI uses; state in memory, see below), its identity enrolled once (password + an
ML-DSA-65 device key). Each virtual patient is driven by one thread of this process,
which is also the pharmacy: the thread holds its own pharmacy OAuth client
(:class:`patientkey.thirdparty.oauth.OAuthClient`, ``private_key_jwt`` with the
pharmacy's certificate key, one keep-alive TLS connection).

Phases, each ``--warmup`` seconds then ``--duration`` measured seconds, all threads
running the same operation back to back (closed loop):

=========== ======================================================= ==================
phase       one operation                                           platform requests
=========== ======================================================= ==================
ciba_flow   pharmacy ``POST /bc-authorize`` → wallet inbox →        4: bc-authorize,
            wallet approve (password + device signature) →          inbox, decide,
            pharmacy ``POST /token`` once (instant approval, the    token
            poll interval is not waited)
introspect  pharmacy ``POST /introspect`` of a token issued in the  1
            first phase (RFC 7662: the live grant state)
=========== ======================================================= ==================

An operation counts when it *completes* inside the measured window; its latency is
end to end at the client. Errors are counted apart, by type, never as operations.

What the numbers include
------------------------
Clients and servers share this machine's cores, and every client runs in this one
Python process (GIL): client-side costs — ES256 client assertions, the wallet's
ML-DSA-65 approval signature and hop envelopes, TLS — compete with the platform. The
report gives the CPU cores each process group used in each measured window.

Approval (``--proofs``) uses two factors (assurance ``substantial``, as
``pharmacy_dispense`` asks), either

* ``password``: password + device signature. The platform verifies the password with
  Argon2id at its shipped cost (~0.2 s) on every approval: by design the dominant cost;
* ``otp``: an e-mail one-time code + device signature, no Argon2id. The wallet asks the
  platform to send the code (one more platform request); the bench reads it from the
  development gateway's outbox file (``otp_outbox``), as the patient reads their mail.

TOTP codes are single use per 30 s step, so they cannot approve thousands of requests.

Wallets run with ``persist=False``: the real wallet rewrites and fsyncs its whole
keystore before every message (a client cost, and one lock per wallet, that would
serialise one patient's flows); here state stays in memory and every thread has its own
patient, so no wallet is shared between threads.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from patientkey.bench import DEFAULT_PG_URL
from patientkey.bench.rx import (
    _BENCH_KDF,
    PhaseResult,
    _add_cpu_per_op,
    _closed_loop,
    _CpuMeter,
    _default_console,
    _deployment,
    _fmt,
    _latency_summary,
    _machine,
    _meter,
    _pids_seconds,
    _print_errors,
    _settings,
    _step,
    _write_report,
    percentile,
)
from patientkey.demo.network import OTP_OUTBOX
from patientkey.errors import InvalidInput
from patientkey.thirdparty.oauth import OAuthClient, record_details

__all__ = [
    "PHASES",
    "PLATFORM_CALLS",
    "TARGETS",
    "AuthOptions",
    "run",
]

#: Measured phases in the order they run.
PHASES: Final = ("ciba_flow", "introspect")
#: Platform requests one operation makes.
PLATFORM_CALLS: Final = {"ciba_flow": 4, "introspect": 1}  # --proofs otp: +1, the code
#: Issue 4's targets on this machine (operations per second).
TARGETS: Final = {"ciba_flow": 2600.0, "introspect": 11000.0}
PASSWORD: Final = "bench password for approvals"  # noqa: S105 - a fixed bench account
PROOFS: Final = ("password", "otp")
_STEPS: Final = ("bc_authorize", "inbox", "otp", "approve", "token")


@dataclass(frozen=True, slots=True)
class AuthOptions:
    """The command's options (see ``patientkey bench auth --help``)."""

    concurrency: int = 8
    duration: float = 10.0
    warmup: float = 1.0
    workers: int = 1
    database: str = "sqlite"
    pool_keys: int = 1000
    workdir: Path | None = None
    json_out: Path | None = None
    pg_url: str = DEFAULT_PG_URL
    proofs: str = "password"

    def check(self) -> None:
        if self.concurrency < 1 or self.workers < 1:
            raise InvalidInput("concurrency and workers >= 1")
        if self.duration <= 0 or self.warmup < 0:
            raise InvalidInput("duration must be positive, warmup not negative")
        if self.database not in ("sqlite", "postgres"):
            raise InvalidInput("database is sqlite or postgres")
        if self.pool_keys < 16:
            raise InvalidInput("pool_keys >= 16")
        if self.proofs not in PROOFS:
            raise InvalidInput(f"proofs is one of {', '.join(PROOFS)}")


class _Outbox:
    """The development mail gateway's outbox (one JSON line per message), read as the
    patients read their mail: new lines only, the newest code per address."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._codes: dict[str, str] = {}
        self._lock = threading.Lock()

    def code_for(self, address: str) -> str:
        with self._lock:
            if address not in self._codes:
                with self._path.open("rb") as handle:
                    handle.seek(self._offset)
                    new = handle.read()
                complete = new[: new.rfind(b"\n") + 1]  # a line being written waits
                self._offset += len(complete)
                for line in complete.splitlines():
                    message = json.loads(line)
                    self._codes[message["to"]] = message["code"]
            code = self._codes.pop(address, None)
        if code is None:
            raise RuntimeError(f"no code was sent to {address}")
        return code


class _Patient:
    """One virtual patient and the pharmacy's client that asks them, driven by one thread."""

    def __init__(
        self, user_id: str, his_id: str, wallet: Any, client: OAuthClient, outbox: _Outbox | None
    ) -> None:
        self.user_id = user_id
        self.wallet = wallet
        self.client = client
        self.outbox = outbox  # None: approve with the password
        self.details = record_details(
            [f"{his_id}:rx-{user_id}"],
            purpose="pharmacy_dispense",
            actions=["view", "fetch", "store", "use"],
        )
        self.tokens: list[str] = []
        self.turn = 0

    def ciba_flow(self) -> Mapping[str, float]:
        """Ask, approve at once, collect the token with one poll; the seconds of each step."""
        from patientkey.wallet.authz import MAX_INBOX_WAIT

        self.turn += 1
        message = f"bench {self.turn}"
        t0 = time.monotonic()
        ticket = self.client.request_authorization(self.user_id, self.details, message)
        t1 = time.monotonic()
        box = self.wallet.authz.inbox(per_call=MAX_INBOX_WAIT)
        pending = [r for r in box if r.binding_message == message]
        if not pending:
            raise RuntimeError("the request did not reach the wallet's inbox")
        t2 = time.monotonic()
        if self.outbox is None:
            t_otp = t2
            self.wallet.authz.approve(pending[0], password=PASSWORD)
        else:
            sent = self.wallet.authz.send_otp(pending[0].request_id, "email")
            code = self.outbox.code_for(_address(self.user_id))
            t_otp = time.monotonic()
            self.wallet.authz.approve(pending[0], otp=(sent.challenge_id, code))
        t3 = time.monotonic()
        outcome = self.client.poll_once(ticket)
        t4 = time.monotonic()
        if outcome.token is None:
            raise RuntimeError(f"no token after approval: {outcome.pending}")
        if len(self.tokens) < 64:
            self.tokens.append(outcome.token.access_token)
        steps = {"bc_authorize": t1 - t0, "inbox": t2 - t1, "approve": t3 - t_otp}
        if self.outbox is not None:
            steps["otp"] = t_otp - t2
        return {**steps, "token": t4 - t3}

    def introspect(self) -> None:
        """One RFC 7662 introspection of a token this pharmacy holds (must be active)."""
        if not self.tokens:
            raise RuntimeError("no token from the first phase to introspect")
        self.turn += 1
        answer = self.client.introspect(self.tokens[self.turn % len(self.tokens)])
        if answer.get("active") is not True:
            raise RuntimeError("an issued, unrevoked token was reported inactive")


def _address(user_id: str) -> str:
    return f"{user_id}@bench.example"


def _summary(result: PhaseResult, name: str, duration: float, proofs: str) -> dict[str, Any]:
    calls = PLATFORM_CALLS[name] + (name == "ciba_flow" and proofs == "otp")
    return {
        **_latency_summary(result, duration),
        "platform_calls_per_op": calls,
        "platform_calls_per_s": round(len(result.latencies_ms) / duration * calls, 1),
        "target_ops_per_s": TARGETS[name],
        "steps_p50_ms": {
            step: round(percentile(sorted(result.steps_ms[step]), 50), 2)
            for step in _STEPS
            if step in result.steps_ms
        },
    }


def _open_patients(
    net: Any,
    options: AuthOptions,
    stack: contextlib.ExitStack,
    console: Console,
    timings: dict[str, float],
) -> list[_Patient]:
    """Virtual patients: certificates, charged pools, wallets, enrolled identities."""
    from patientkey.thirdparty.settings import load_thirdparty_settings

    users = [f"u-authbench-{i:03d}" for i in range(options.concurrency)]
    with _step(console, timings, "certificates", f"issuing {len(users)} client certificates"):
        net.add_users(users)
    with _step(
        console,
        timings,
        "charge",
        f"charging {len(users)} KUE pools with {options.pool_keys} keys per direction",
    ):
        pools = net.charge_users(users, options.pool_keys)
    with _step(console, timings, "keystores", "writing the wallets' keystores"):
        for user in users:
            net.make_wallet(user, codes=[], pool=pools.pop(user), kdf=_BENCH_KDF)
    pharmacy = load_thirdparty_settings(net.config(net.names.pharmacy))
    patients: list[_Patient] = []
    with _step(
        console,
        timings,
        "identities",
        f"opening {len(users)} wallets, enrolling password, e-mail and device key each",
    ):
        outbox = _Outbox(net.workdir / OTP_OUTBOX) if options.proofs == "otp" else None
        for user in users:
            wallet = stack.enter_context(net.wallet(user, persist=False))
            wallet.authz.enroll_identity(password=PASSWORD, email=_address(user))
            client = stack.enter_context(OAuthClient.from_settings(pharmacy, timeout_s=60.0))
            client.discover()
            patients.append(_Patient(user, net.names.hospital, wallet, client, outbox))
    return patients


def run(options: AuthOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the benchmark; the report (also written to ``options.json_out``)."""
    import logging

    options.check()
    console = _default_console(console)
    # Failures are counted by type; one log line per operation would garble the output.
    # Restored afterwards: this runs in the caller's process (a test's, say).
    logger = logging.getLogger("patientkey")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        timings: dict[str, float] = {}
        with (
            _deployment(
                console,
                timings,
                prefix="pk-bench-auth-",
                workdir=options.workdir,
                workers=options.workers,
                database=options.database,
                pg_url=options.pg_url,
                overrides={"platform": {"access_log": False}},
            ) as net,
            contextlib.ExitStack() as stack,
        ):
            patients = _open_patients(net, options, stack, console, timings)
            meter = _meter(
                net, options.database, options.pg_url, bench_clients=_pids_seconds([os.getpid()])
            )
            phases: dict[str, dict[str, Any]] = {}
            cpu: dict[str, dict[str, float]] = {}
            for name in PHASES:
                phases[name], cpu[name] = _phase(patients, meter, name, options, console)
    finally:
        logger.setLevel(level)
    report = _report(options, phases, cpu)
    report["setup_s"] = timings
    _print(console, report)
    _write_report(options.json_out, report)
    return report


def _phase(
    patients: Sequence[_Patient],
    meter: _CpuMeter,
    name: str,
    options: AuthOptions,
    console: Console,
) -> tuple[dict[str, Any], dict[str, float]]:
    start_at = time.monotonic() + 0.2
    window_from = start_at + options.warmup
    box: dict[str, PhaseResult] = {}

    def work() -> None:
        box["result"] = _closed_loop(
            [(f"auth-{p.user_id}", getattr(p, name)) for p in patients],
            start_at=start_at,
            warmup=options.warmup,
            duration=options.duration,
        )

    runner = threading.Thread(target=work, name=f"phase-{name}", daemon=True)
    with console.status(
        f"{name}: {options.warmup:g} s warm-up, {options.duration:g} s measured, "
        f"{len(patients)} threads"
    ):
        runner.start()
        time.sleep(max(window_from - time.monotonic(), 0.0))
        meter.start()
        time.sleep(options.duration)
        cpu = meter.stop()
        runner.join()
    summary = _summary(box.get("result", PhaseResult()), name, options.duration, options.proofs)
    console.print(
        f"[dim]{name}: {summary['ops_per_s']:,.1f} ops/s, p99 {summary['p99_ms']:.1f} ms, "
        f"{summary['errors']} errors[/]"
    )
    return summary, cpu


def _report(
    options: AuthOptions, phases: dict[str, dict[str, Any]], cpu: dict[str, dict[str, float]]
) -> dict[str, Any]:
    _add_cpu_per_op(phases, cpu)
    settings = {
        **_settings(options),
        "virtual_patients": options.concurrency,
        "approval_proofs": {
            "password": "password (Argon2id, the platform's shipped cost) + device signature "
            "(ML-DSA-65)",
            "otp": "e-mail one-time code (gateway outbox) + device signature (ML-DSA-65)",
        }[options.proofs],
        "token_poll": "one POST /token right after approval (poll interval not waited)",
        "client_auth": "private_key_jwt (ES256), a fresh assertion per request",
        "wallet_persistence": "memory only (open_wallet(persist=False)), one wallet per thread",
        "clients": "threads of the bench process (one GIL), one keep-alive TLS connection each",
        "platform_access_log": False,
    }
    return {
        "settings": settings,
        "machine": _machine(),
        "phases": phases,
        "cpu_cores": cpu,
        "target": {
            "ops_per_s": dict(TARGETS),
            "source": "issue 4: the rates a mature, certified OAuth server reaches on a 2-core "
            "machine with a durable store",
            "reached": {
                name: bool(row["ops_per_s"] >= TARGETS[name] and row["errors"] == 0)
                for name, row in phases.items()
            },
        },
    }


def _print(console: Console, report: dict[str, Any]) -> None:
    s = report["settings"]
    table = Table(
        title=f"patientkey bench auth — {s['database']}, {s['workers']} platform worker(s), "
        f"concurrency {s['concurrency']}, {s['duration']:g} s per phase, "
        f"{report['machine']['cpu_count']} cores"
    )
    table.add_column("operation")
    for column in (
        "ops/s",
        "target/s",
        "% of target",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "API calls/s",
        "platform cores",
        "client cores",
    ):
        table.add_column(column, justify="right")
    labels = {"ciba_flow": "CIBA flow (ask→approve→token)", "introspect": "introspection"}
    for name, row in report["phases"].items():
        cores = report["cpu_cores"].get(name, {})
        target = row["target_ops_per_s"]
        table.add_row(
            labels.get(name, name),
            _fmt(row["ops_per_s"]),
            f"{target:,.0f}",
            f"{100.0 * row['ops_per_s'] / target:.2f}",
            _fmt(row["p50_ms"]),
            _fmt(row["p95_ms"]),
            _fmt(row["p99_ms"]),
            str(row["errors"]),
            _fmt(row["platform_calls_per_s"]),
            _fmt(cores.get("platform", math.nan)),
            _fmt(cores.get("bench_clients", math.nan)),
        )
    console.print(table)
    steps = report["phases"].get("ciba_flow", {}).get("steps_p50_ms", {})
    if steps:
        console.print(
            "CIBA flow, p50 per step: "
            + ", ".join(f"{step} {ms:.1f} ms" for step, ms in steps.items())
        )
    _print_errors(console, report["phases"])
    reached = [n for n, ok in report["target"]["reached"].items() if ok]
    console.print(f"targets (issue 4) reached by: {', '.join(reached) if reached else 'none'}")
    console.print(
        "[dim]clients (pharmacy OAuth + wallets) are threads of this one process and share "
        "the machine's cores with the platform; approval: "
        f"{report['settings']['approval_proofs']}.[/]"
    )
