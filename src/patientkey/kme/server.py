"""Run the KME over HTTPS with mutual TLS, as ETSI GS QKD 014 V1.1.1 expects.

``serve(config_path)`` loads the TOML config, fills the pools once, starts the
refill thread and runs uvicorn until SIGINT/SIGTERM. TLS: TLS >= 1.2, the
server presents ``server_name``'s certificate and *requires* a client
certificate issued by the dev CA (``CERT_REQUIRED``); a client without one
fails the handshake and never reaches the application.

How the application learns the client certificate: uvicorn (checked on
0.54, h11 and httptools protocols) does not fill the ASGI TLS extension
(``scope["extensions"]["tls"]``, asgiref spec "TLS" 0.2; uvicorn issue #1118).
:class:`MutualTLSH11Protocol` subclasses uvicorn's h11 protocol: when a
connection is made — after the handshake, so the peer certificate is final
and verified — it reads the DER certificate from the transport's
``ssl_object`` and wraps the ASGI app for that connection so every request
scope carries ``extensions["tls"]`` with ``client_cert_chain`` (PEM), as the
spec defines. The app reads only that standard extension, so it would run
unchanged under a server that fills it natively.

``python -m patientkey.kme.server --config FILE [--port-file PATH]`` is the
same as ``serve``; :class:`KmeProcess` starts that in a subprocess and waits
until it answers (integration tests, demos).

Nothing here logs key material: uvicorn's access log shows paths (SAE_IDs,
a GET dec_keys key_ID) and statuses, the refill thread round statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import uvicorn
from cryptography import x509
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from patientkey.errors import ConfigError
from patientkey.kme.app import create_app
from patientkey.kme.config import KmeSettings, load_config
from patientkey.kme.links import KmeRuntime
from patientkey.pki import PartyFiles, party_files, server_ssl_context

__all__ = ["KmeProcess", "MutualTLSH11Protocol", "build_server", "main", "serve", "tls_extension"]

log = logging.getLogger(__name__)

# IANA TLS version numbers, as the ASGI TLS extension reports them.
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension dict for a connection, or None if it is not TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der:
        chain.append(ssl.DER_cert_to_PEM_cert(der))
        name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    version = ssl_object.version()
    return {
        "server_cert": None,
        # Python's ssl gives only the leaf before 3.13 (get_verified_chain); the leaf
        # is what carries the SAE_ID.
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,  # CERT_REQUIRED: an unverified peer has no connection
        "tls_version": _TLS_VERSIONS.get(version) if version else None,
        "cipher_suite": None,  # the IANA number is not exposed by Python's ssl
    }


class _WithTLS:
    """Per-connection ASGI wrapper adding the TLS extension to every scope."""

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": self.tls}
        await self.app(scope, receive, send)


class MutualTLSH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that fills the ASGI TLS extension (see module doc)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _WithTLS(self.app, tls)


def _server_files(settings: KmeSettings) -> PartyFiles:
    files = party_files(settings.pki_dir, settings.server_name)
    for path in (files.ca, files.cert, files.key):
        if not path.is_file():
            raise ConfigError(f"missing {path} (run `patientkey pki init` first)")
    return files


def build_server(
    settings: KmeSettings, runtime: KmeRuntime
) -> tuple[uvicorn.Server, socket.socket]:
    """A uvicorn server for ``runtime`` and its bound, listening socket."""
    files = _server_files(settings)
    context = server_ssl_context(files)  # fail here, before binding, on bad TLS files
    app = create_app(
        runtime.core,
        links=runtime.links,
        admin_sae_ids=settings.admin_sae_ids,
    )
    config = uvicorn.Config(
        app,
        http=MutualTLSH11Protocol,
        ws="none",
        lifespan="off",
        # The factory is the one place TLS is configured (TLS >= 1.2, CERT_REQUIRED);
        # the plain options say the same for anyone reading uvicorn's view of it.
        ssl_context_factory=lambda _config, _default: context,
        ssl_certfile=str(files.cert),
        ssl_keyfile=str(files.key),
        ssl_ca_certs=str(files.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        server_header=False,
        timeout_graceful_shutdown=2,
        log_config=None,
    )
    try:
        sock = socket.create_server((settings.host, settings.port), backlog=128)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
    return uvicorn.Server(config), sock


def serve(config_path: Path, *, port_file: Path | None = None) -> None:
    """Run the KME described by ``config_path`` until interrupted (blocking).

    ``port_file`` receives the bound port once the pools are filled and the
    socket listens (useful with ``port = 0``).
    """
    settings = load_config(config_path)
    runtime = KmeRuntime.from_settings(settings)
    server, sock = build_server(settings, runtime)
    try:
        added = runtime.fill_all()
        log.info("initial fill: %d bytes of key material over %d links", added, len(settings.links))
        runtime.start()
        host, port = sock.getsockname()[:2]
        log.info("KME listening on https://%s:%d (mutual TLS)", host, port)
        if port_file is not None:
            _write_port(port_file, port)
        server.run(sockets=[sock])
    finally:
        runtime.stop()
        sock.close()


def _write_port(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="ascii")
    tmp.replace(path)  # readers never see a half-written file


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m patientkey.kme.server")
    parser.add_argument("--config", type=Path, required=True, help="KME TOML config")
    parser.add_argument("--port-file", type=Path, help="write the bound port here when ready")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        serve(args.config, port_file=args.port_file)
    except ConfigError as exc:
        log.error("%s", exc.detail)  # noqa: TRY400 - a config error needs no traceback
        sys.exit(2)


class KmeProcess:
    """The KME in a subprocess (``python -m patientkey.kme.server``), for tests and demos.

    ``with KmeProcess(config) as kme: kme.base_url`` starts it, waits until the
    pools are filled and the port listens (bounded by ``timeout``), and
    stops it (SIGTERM, then SIGKILL) on exit. Its output goes to ``log_path``.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        timeout: float = 20.0,
        host: str = "localhost",
        env: dict[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.timeout = timeout
        self.host = host
        self.env = env
        self.port: int | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="kme-proc-"))
        self.log_path = self._dir / "kme.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("KME process not started")
        return f"https://{self.host}:{self.port}"

    def start(self) -> None:
        port_file = self._dir / "port"
        with self.log_path.open("wb") as log_file:
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-m",
                    "patientkey.kme.server",
                    "--config",
                    str(self.config_path),
                    "--port-file",
                    str(port_file),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
            )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"KME exited with {self._proc.returncode}:\n{self.log()}")
            if port_file.exists():
                # Written after the pools are filled and the socket listens: from now
                # on connections queue in the backlog until uvicorn accepts them.
                self.port = int(port_file.read_text(encoding="ascii"))
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"KME not ready after {self.timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
