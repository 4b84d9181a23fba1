"""Run the platform over HTTPS with mutual TLS.

``python -m patientkey.platform.server --config platform.toml [--port-file P]
[--workers N]`` (or :func:`serve`): migrates the database, loads (or makes) the
post-quantum responder key, wires the core to its peers and serves until SIGTERM.
:class:`PlatformProcess` runs that in a subprocess for tests and demos.

Worker processes (``workers = N``): the parent binds the listening socket once
and forks N children that accept on it (pre-fork, as gunicorn does), each with
its own database pool, key-supply clients and hop sessions. What they share, and
what they cannot:

* the PQ responder key is loaded (or generated) *before* the fork, so every
  worker answers the same public key; the init message of each exchange is in the
  database, so any worker re-derives its secrets;
* replays: each worker's in-memory replay cache sees only its own envelopes. An
  envelope under a QKD or pool key opens only in the worker that consumed that
  key (its source releases it once), so its cache suffices; envelopes under a
  post-quantum key alone open in every worker, so with N > 1 those are also
  recorded in the database (``replay_guard``, one insert each;
  ``shared_replay_guard`` overrides the default of "on when N > 1");
* hop *sessions* (``rekey_messages > 1`` at a sender) are per process: a session
  key is consumed from the KME or the wallet pool by the first worker that sees
  it, and a later message of that session reaching another worker fails closed
  (400 crypto-failure, never an insecure accept). With N > 1 the senders towards
  the platform should use a fresh key per message (``rekey_messages = 1``, the
  default); PQ-only wallet sessions work in every worker (see above).

The PQ responder key: with ``keystore`` set it is kept in that encrypted keystore
(passphrase from ``PATIENTKEY_PASSPHRASE``; created on first start); without, a new
key pair is generated at every start and wallets must redo the exchange
(their envelopes under an old exchange fail as crypto-failure).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from patientkey.crypto import ReplayCache, read_keystore, write_keystore
from patientkey.errors import ConfigError, CryptoError, InvalidInput
from patientkey.keysupply.etsi014 import Etsi014Client
from patientkey.keysupply.pq import PqResponder
from patientkey.pki import client_ssl_context
from patientkey.platform.app import create_app
from patientkey.platform.core import BindLimits, PeerPort, PlatformCore
from patientkey.platform.kue import (
    PqExchanges,
    StoreReplayCache,
    WalletKeySupply,
    platform_hop_end,
    wallet_peer_factory,
)
from patientkey.platform.settings import (
    PlatformSettings,
    ca_certificate,
    load_platform_settings,
)
from patientkey.protocol.channel import HopEnd
from patientkey.service.client import PeerClient
from patientkey.service.party import passphrase_from_env
from patientkey.service.process import PartyProcess, server_main, write_port_file
from patientkey.service.tls import build_server
from patientkey.storage import Database, Party, PlatformRepo, SqlStore, open_database

__all__ = [
    "PlatformProcess",
    "PlatformRuntime",
    "build_runtime",
    "load_responder",
    "main",
    "serve",
]

log = logging.getLogger(__name__)

_PQ_SECRET = "pq_responder"  # noqa: S105 - the keystore entry's name
_BACKLOG = 2048


@dataclass
class PlatformRuntime:
    """Everything one platform process runs on; :meth:`close` releases it."""

    settings: PlatformSettings
    db: Database
    core: PlatformCore
    hop: HopEnd
    pq: PqExchanges
    app: FastAPI
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()


def load_responder(settings: PlatformSettings) -> PqResponder:
    """The PQ responder key: from the keystore (made on first use), else a fresh one."""
    if settings.keystore is None:
        log.info("no keystore configured: a new PQ responder key for this run")
        return PqResponder()
    passphrase = passphrase_from_env()
    if settings.keystore.exists():
        try:
            secrets = read_keystore(settings.keystore, passphrase)
        except CryptoError as exc:
            raise ConfigError(
                f"cannot open {settings.keystore}: wrong passphrase or damaged file"
            ) from exc
        if _PQ_SECRET not in secrets:
            raise ConfigError(f"{settings.keystore} holds no {_PQ_SECRET}")
        try:
            return PqResponder.from_private_bytes(secrets[_PQ_SECRET])
        except InvalidInput as exc:
            raise ConfigError(f"{settings.keystore}: {exc.detail}") from exc
    responder = PqResponder()
    write_keystore(settings.keystore, passphrase, {_PQ_SECRET: responder.private_bytes()})
    log.info("new PQ responder key kept in %s", settings.keystore)
    return responder


def build_runtime(
    settings: PlatformSettings,
    *,
    responder: PqResponder,
    db: Database | None = None,
) -> PlatformRuntime:
    """Wire store, key supplies, hops, peers, core and app from ``settings``."""
    closers: list[Callable[[], None]] = []
    if db is None:
        db = open_database(settings.database, Party.PLATFORM)
    closers.append(db.close)
    store = SqlStore(db, PlatformRepo)
    qkd = None
    if settings.kme_url is not None:
        qkd = Etsi014Client.from_pki(settings.kme_url, settings.pki_dir, settings.name)
        closers.append(qkd.close)
    pq = PqExchanges(
        responder,
        store,
        ttl=timedelta(seconds=settings.pq_exchange_ttl_s),
        max_entries=settings.pq_cache_entries,
    )
    replay: ReplayCache = (
        StoreReplayCache(store, settings.replay_cache_entries)
        if settings.replay_guard_shared
        else ReplayCache(max_entries=settings.replay_cache_entries)
    )
    peers = [*settings.hospitals, *settings.third_parties]
    factory = wallet_peer_factory(
        me=settings.name,
        reserved=peers,
        store=store,
        supply=WalletKeySupply(store),
        pq=pq,
        policy=settings.kue_policy,
        rekey=settings.rekey,
    )
    hop = platform_hop_end(
        settings.name,
        peers,
        qkd,
        policy=settings.qkd_policy,
        rekey=settings.rekey,
        replay_cache=replay,
        peer_factory=factory,
        prefetch=settings.qkd_prefetch,
    )
    ssl_context = client_ssl_context(settings.pki_dir, settings.name)
    ports: dict[str, PeerPort] = {}
    for name in peers:
        client = PeerClient(hop, name, settings.peers[name].url, ssl_context=ssl_context)
        closers.append(client.close)
        ports[name] = client
    core = PlatformCore(
        store,
        hospitals={name: ports[name] for name in settings.hospitals},
        third_parties={name: ports[name] for name in settings.third_parties},
        limits=BindLimits(
            per_patient=settings.bind_limit_patient,
            per_user=settings.bind_limit_user,
            window=settings.bind_window,
        ),
        ca_certificate=ca_certificate(settings),
    )
    app = create_app(core, hop, pq=pq, max_body_bytes=settings.max_body_bytes)
    return PlatformRuntime(settings, db, core, hop, pq, app, closers)


def _prepare(settings: PlatformSettings) -> PqResponder:
    """What runs once, before any worker: migrations and the responder key."""
    db = open_database(settings.database, Party.PLATFORM)
    try:
        db.upgrade()
    finally:
        db.close()
    return load_responder(settings)


def _settle() -> None:
    """Move everything built at start-up out of the garbage collector's way.

    The runtime (app, routes, models, TLS and database objects) lives as long as the
    process; freezing it spares every later collection from scanning it again.
    """
    gc.collect()
    gc.freeze()


def _uvicorn(app: FastAPI, settings: PlatformSettings) -> uvicorn.Server:
    """A mutual-TLS uvicorn server for ``app`` that will run on a socket made elsewhere.

    ``build_server`` is the one place TLS is configured; the socket it binds (an
    ephemeral port) is closed at once because the workers share the parent's.
    """
    server, own = build_server(
        app, files=settings.files, host=settings.host, port=0, access_log=settings.access_log
    )
    own.close()
    return server


def serve(config_path: Path, *, port_file: Path | None = None, workers: int | None = None) -> None:
    """Run the platform described by ``config_path`` until interrupted (blocking)."""
    settings = load_platform_settings(config_path)
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    responder = _prepare(settings)
    if settings.workers == 1:
        runtime = build_runtime(settings, responder=responder)
        _settle()
        server, sock = build_server(
            runtime.app,
            files=settings.files,
            host=settings.host,
            port=settings.port,
            workers_backlog=_BACKLOG,
            access_log=settings.access_log,
        )
        try:
            _announce(sock, port_file, 1)
            server.run(sockets=[sock])
        finally:
            runtime.close()
            sock.close()
        return
    _serve_forked(settings, responder, port_file)


def _announce(sock: socket.socket, port_file: Path | None, workers: int) -> None:
    host, port = sock.getsockname()[:2]
    log.info("platform listening on https://%s:%d (mutual TLS, %d worker(s))", host, port, workers)
    if port_file is not None:
        write_port_file(port_file, port)


def _serve_forked(
    settings: PlatformSettings, responder: PqResponder, port_file: Path | None
) -> None:
    """Pre-fork: one listening socket, ``settings.workers`` children accepting on it."""
    for path in (settings.files.ca, settings.files.cert, settings.files.key):
        if not path.is_file():
            raise ConfigError(f"missing {path} (run `patientkey pki init` first)")
    try:
        sock = socket.create_server((settings.host, settings.port), backlog=_BACKLOG)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
    children: list[int] = []
    try:
        for _ in range(settings.workers):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child process
                _worker(settings, responder, sock)
            children.append(pid)
        _announce(sock, port_file, settings.workers)

        def stop(signum: int, _frame: FrameType | None) -> None:
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        running, failed = set(children), 0
        while running:
            pid, status = os.wait()
            if pid not in running:
                continue
            running.discard(pid)
            if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM):
                failed += 1
                log.error("platform worker %d failed: stopping the others", pid)
                stop(signal.SIGTERM, None)
        if failed:
            raise ConfigError(f"{failed} platform worker(s) failed")
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        sock.close()


def _worker(settings: PlatformSettings, responder: PqResponder, sock: socket.socket) -> None:
    """A forked worker: its own runtime on the shared socket; never returns."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        runtime = build_runtime(settings, responder=responder)
        _settle()
        try:
            _uvicorn(runtime.app, settings).run(sockets=[sock])
        finally:
            runtime.close()
    except BaseException:
        log.exception("platform worker %d failed", os.getpid())
        code = 1
    finally:
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    server_main("patientkey.platform.server", serve, argv, workers_option=True)


class PlatformProcess(PartyProcess):
    """The platform in a subprocess (``python -m patientkey.platform.server``)."""

    module = "patientkey.platform.server"

    def __init__(
        self,
        config_path: Path,
        *,
        workers: int | None = None,
        timeout: float = 30.0,
        host: str = "localhost",
        env: dict[str, str] | None = None,
    ) -> None:
        extra = ["--workers", str(workers)] if workers is not None else []
        super().__init__(config_path, timeout=timeout, host=host, env=env, extra_args=extra)


if __name__ == "__main__":
    main()
