"""Mutual TLS under uvicorn: the caller's identity is its client certificate.

uvicorn (checked on 0.54, h11 and httptools protocols) does not fill the ASGI
TLS extension (``scope["extensions"]["tls"]``, asgiref spec "TLS" 0.2; uvicorn
issue #1118). :class:`MutualTLSH11Protocol` subclasses uvicorn's h11 protocol:
when a connection is made — after the handshake, so the peer certificate is
final and verified — it reads the DER certificate from the transport's
``ssl_object`` and wraps the ASGI app for that connection so every request
scope carries ``extensions["tls"]`` with ``client_cert_chain`` (PEM), as the
spec defines. Apps read only that standard extension (:func:`caller_name`),
so they run unchanged under a server that fills it natively. A header never
counts as identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from typing import Any

import uvicorn
from cryptography import x509
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from patientkey.errors import ConfigError, InvalidInput, Unauthenticated
from patientkey.pki import PartyFiles, peer_name_from_cert, server_ssl_context

__all__ = ["MutualTLSH11Protocol", "WithTLS", "build_server", "caller_name", "tls_extension"]

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
        # is what carries the party name.
        "client_cert_chain": chain,
        "client_cert_name": name,
        # CERT_REQUIRED/OPTIONAL: a certificate that fails verification ends the handshake.
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version) if version else None,
        "cipher_suite": None,  # the IANA number is not exposed by Python's ssl
    }


class WithTLS:
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
        _no_delay(transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = WithTLS(self.app, tls)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """Switch Nagle's algorithm off for this connection.

    asyncio sets TCP_NODELAY only on sockets whose ``proto`` is IPPROTO_TCP, and
    ``socket.create_server`` (see :func:`build_server`) makes them with proto 0, so
    accepted connections would keep Nagle: a response written as headers, then body,
    waits for the client's delayed ACK — about 40 ms on every request.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def caller_name(request: Request) -> str:
    """The CN of the verified client certificate of this request (401 without one)."""
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        raise Unauthenticated("a client certificate is required")
    try:
        return _name_of(chain[0])
    except InvalidInput as exc:
        raise Unauthenticated("client certificate carries no usable name") from exc


@functools.lru_cache(maxsize=4096)
def _name_of(certificate_pem: str) -> str:
    # Every request of a connection carries the same verified certificate: parse it once.
    return peer_name_from_cert(certificate_pem)


def build_server(
    app: ASGIApp,
    *,
    files: PartyFiles,
    host: str,
    port: int,
    workers_backlog: int = 1024,
    access_log: bool = True,
    client_certificate_required: bool = True,
) -> tuple[uvicorn.Server, socket.socket]:
    """A uvicorn server with mutual TLS for ``app`` and its bound, listening socket."""
    for path in (files.ca, files.cert, files.key):
        if not path.is_file():
            raise ConfigError(f"missing {path} (run `patientkey pki init` first)")
    # Built first: fail here, before binding, on bad TLS files.
    context = server_ssl_context(files, client_certificate_required=client_certificate_required)
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
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_certificate_required else ssl.CERT_OPTIONAL,
        server_header=False,
        timeout_graceful_shutdown=2,
        log_config=None,
        access_log=access_log,  # paths and statuses only: bodies are envelopes
    )
    try:
        sock = socket.create_server((host, port), backlog=workers_backlog)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    return uvicorn.Server(config), sock
