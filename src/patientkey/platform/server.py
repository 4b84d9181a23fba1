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

The keys: with ``keystore`` set, the PQ responder key, the authorization unit's
keys (access-token signing key, MAC secret) and the transparency log's tree-head
signing key (``audit_signing``) are kept in that encrypted keystore
(passphrase from ``PATIENTKEY_PASSPHRASE``; created on first start); without, new keys
are generated at every start: wallets must redo the PQ exchange (their envelopes under
an old exchange fail as crypto-failure), earlier access tokens stop verifying, TOTP
enrollments (sealed at rest under a key derived from the MAC secret) no longer open, and
the transparency log gets a new key (and so a new log id): wallets that pinned the old
one refuse its heads.

TLS: the platform asks for, but does not require, a client certificate, because apps
reach its OAuth endpoints with ``private_key_jwt`` alone; every envelope route requires
a verified certificate (``service.tls.caller_name``), and a certificate presented is
always verified against the CA.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from patientkey.authz.catalog import load_catalog
from patientkey.crypto import ReplayCache, read_keystore, write_keystore
from patientkey.errors import ConfigError, CryptoError, InvalidInput
from patientkey.identity import CertificateSignatureVerifier, ConsoleSink, FileSink, Gateway
from patientkey.keysupply.etsi014 import Etsi014Client
from patientkey.keysupply.pq import PqResponder
from patientkey.pki import client_ssl_context
from patientkey.platform.app import create_app
from patientkey.platform.audit import TransparencyLog
from patientkey.platform.authorization import AuthorizationServer, AuthzKeys
from patientkey.platform.core import BindLimits, PeerPort, PlatformCore
from patientkey.platform.kue import (
    PqExchanges,
    StoreReplayCache,
    WalletKeySupply,
    platform_hop_end,
    wallet_peer_factory,
)
from patientkey.platform.ping import HttpPinger
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
from patientkey.storage.authz import authz_store, totp_vault

__all__ = [
    "PlatformKeys",
    "PlatformProcess",
    "PlatformRuntime",
    "build_authorization",
    "build_runtime",
    "issuer_of",
    "load_keys",
    "main",
    "serve",
]

log = logging.getLogger(__name__)

_PQ_SECRET = "pq_responder"  # noqa: S105 - the keystore entry's name
_AUTHZ_SIGNING = "authz_signing"  # the access-token signing key (Ed25519, raw)
_AUTHZ_SECRET = "authz_secret"  # noqa: S105 - the keystore entry's name
_AUDIT_SIGNING = "audit_signing"  # the transparency log's tree-head key (Ed25519, raw)
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
    authz: AuthorizationServer
    audit: TransparencyLog
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()


@dataclass(frozen=True)
class PlatformKeys:
    """The platform's long-lived secrets, loaded (or made) once, before any worker forks."""

    responder: PqResponder
    authz: AuthzKeys
    audit: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)


def load_keys(settings: PlatformSettings) -> PlatformKeys:
    """The PQ responder key and the authorization unit's keys: from the keystore (made on
    first use, added to an older keystore that lacks them), else fresh ones for this run."""
    if settings.keystore is None:
        log.info("no keystore configured: new PQ responder and token signing keys for this run")
        return PlatformKeys(PqResponder(), AuthzKeys.generate())
    passphrase = passphrase_from_env()
    stored: dict[str, bytes] = {}
    if settings.keystore.exists():
        try:
            stored = read_keystore(settings.keystore, passphrase)
        except CryptoError as exc:
            raise ConfigError(
                f"cannot open {settings.keystore}: wrong passphrase or damaged file"
            ) from exc
        if _PQ_SECRET not in stored:
            raise ConfigError(f"{settings.keystore} holds no {_PQ_SECRET}")
        if (_AUTHZ_SIGNING in stored) != (_AUTHZ_SECRET in stored):
            # One without the other is damage, not an older keystore: replacing the pair
            # would silently end every token and sealed TOTP enrollment.
            raise ConfigError(f"{settings.keystore} holds one authorization key of two")
    try:
        responder = (
            PqResponder.from_private_bytes(stored[_PQ_SECRET])
            if _PQ_SECRET in stored
            else PqResponder()
        )
        authz = (
            AuthzKeys(
                Ed25519PrivateKey.from_private_bytes(stored[_AUTHZ_SIGNING]), stored[_AUTHZ_SECRET]
            )
            if _AUTHZ_SIGNING in stored and _AUTHZ_SECRET in stored
            else AuthzKeys.generate()
        )
        audit = (
            Ed25519PrivateKey.from_private_bytes(stored[_AUDIT_SIGNING])
            if _AUDIT_SIGNING in stored
            else Ed25519PrivateKey.generate()
        )
    except (InvalidInput, ValueError) as exc:
        raise ConfigError(f"{settings.keystore}: a stored key is damaged") from exc
    wanted = {
        _PQ_SECRET: responder.private_bytes(),
        _AUTHZ_SIGNING: authz.signing_key.private_bytes_raw(),
        _AUTHZ_SECRET: authz.secret,
        _AUDIT_SIGNING: audit.private_bytes_raw(),
    }
    if stored != wanted:
        write_keystore(settings.keystore, passphrase, wanted)
        log.info("platform keys kept in %s", settings.keystore)
    return PlatformKeys(responder, authz, audit)


def issuer_of(settings: PlatformSettings, port: int) -> str:
    """The OAuth issuer: configured, else this server's own https origin."""
    if settings.issuer is not None:
        return settings.issuer
    if settings.host in ("0.0.0.0", "::", ""):  # noqa: S104 - recognising, not binding
        raise ConfigError("listening on every address: set `issuer` to the URL apps use")
    return f"https://{settings.host}:{port}"


def build_authorization(
    settings: PlatformSettings, db: Database, keys: AuthzKeys, *, issuer: str
) -> tuple[AuthorizationServer, Callable[[], None]]:
    """The authorization unit and what closes it (the ping sender)."""
    gateway: Gateway = (
        FileSink(settings.otp_outbox) if settings.otp_outbox is not None else ConsoleSink()
    )
    x509_trust = None
    if settings.x509_trust is not None:
        try:
            x509_trust = CertificateSignatureVerifier.from_pem(settings.x509_trust.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read {settings.x509_trust}: {exc}") from exc
    verify: ssl.SSLContext | bool = True
    if settings.notification_ca is not None:
        verify = ssl.create_default_context(cafile=str(settings.notification_ca))
    pinger = HttpPinger(verify)
    server = AuthorizationServer(
        authz_store(db, vault=totp_vault(keys.secret)),  # TOTP secrets sealed at rest
        issuer=issuer,
        keys=keys,
        catalog=load_catalog(settings.scenarios),
        gateway=gateway,
        token_lifetime=settings.token_lifetime_s,
        x509_trust=x509_trust,
        pinger=pinger,
        webauthn=settings.webauthn_policy(),
    )
    return server, pinger.close


def build_runtime(
    settings: PlatformSettings,
    *,
    keys: PlatformKeys,
    issuer: str,
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
        keys.responder,
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
    authz, close_authz = build_authorization(settings, db, keys.authz, issuer=issuer)
    closers.append(close_authz)
    core = PlatformCore(
        store,
        grants=authz,
        hospitals={name: ports[name] for name in settings.hospitals},
        third_parties={name: ports[name] for name in settings.third_parties},
        limits=BindLimits(
            per_patient=settings.bind_limit_patient,
            per_user=settings.bind_limit_user,
            window=settings.bind_window,
        ),
        ca_certificate=ca_certificate(settings),
    )
    audit = TransparencyLog(store, keys.audit, is_wallet=core.is_wallet)
    app = create_app(
        core, hop, authz=authz, pq=pq, audit=audit, max_body_bytes=settings.max_body_bytes
    )
    return PlatformRuntime(settings, db, core, hop, pq, app, authz, audit, closers)


def _prepare(settings: PlatformSettings) -> PlatformKeys:
    """What runs once, before any worker: migrations and the keys."""
    db = open_database(settings.database, Party.PLATFORM)
    try:
        db.upgrade()
    finally:
        db.close()
    return load_keys(settings)


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
        app,
        files=settings.files,
        host=settings.host,
        port=0,
        access_log=settings.access_log,
        # Apps without a PatientKey certificate reach the OAuth endpoints; every other
        # route still requires one (service.tls.caller_name).
        client_certificate_required=False,
    )
    own.close()
    return server


def serve(config_path: Path, *, port_file: Path | None = None, workers: int | None = None) -> None:
    """Run the platform described by ``config_path`` until interrupted (blocking)."""
    settings = load_platform_settings(config_path)
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    keys = _prepare(settings)
    for path in (settings.files.ca, settings.files.cert, settings.files.key):
        if not path.is_file():
            raise ConfigError(f"missing {path} (run `patientkey pki init` first)")
    # Bound before the runtime is built: the OAuth issuer names the real port.
    try:
        sock = socket.create_server((settings.host, settings.port), backlog=_BACKLOG)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
    issuer = issuer_of(settings, sock.getsockname()[1])
    if settings.workers > 1:
        _serve_forked(settings, keys, sock, issuer, port_file)
        return
    try:
        runtime = build_runtime(settings, keys=keys, issuer=issuer)
        try:
            _settle()
            server = _uvicorn(runtime.app, settings)
            _announce(sock, port_file, 1)
            server.run(sockets=[sock])
        finally:
            runtime.close()
    finally:
        sock.close()


def _announce(sock: socket.socket, port_file: Path | None, workers: int) -> None:
    host, port = sock.getsockname()[:2]
    log.info("platform listening on https://%s:%d (mutual TLS, %d worker(s))", host, port, workers)
    if port_file is not None:
        write_port_file(port_file, port)


def _serve_forked(
    settings: PlatformSettings,
    keys: PlatformKeys,
    sock: socket.socket,
    issuer: str,
    port_file: Path | None,
) -> None:
    """Pre-fork: one listening socket, ``settings.workers`` children accepting on it."""
    children: list[int] = []
    try:
        for _ in range(settings.workers):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child process
                _worker(settings, keys, sock, issuer)
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


def _worker(
    settings: PlatformSettings, keys: PlatformKeys, sock: socket.socket, issuer: str
) -> None:
    """A forked worker: its own runtime on the shared socket; never returns."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        runtime = build_runtime(settings, keys=keys, issuer=issuer)
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
