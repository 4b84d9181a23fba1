"""In-process wiring of party apps, for tests: the same cores and routes, no sockets.

:func:`asgi_client` gives a synchronous ``httpx.Client`` that calls an ASGI app
directly (httpx's own ``ASGITransport``, one event loop per request so it also
works from a worker thread of another app), with the ASGI TLS extension set
from a real client certificate, so the app's identity check runs exactly as
under uvicorn.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from starlette.types import ASGIApp

from patientkey.pki import party_files
from patientkey.service.tls import WithTLS

__all__ = ["asgi_client", "asgi_transport"]


class _SyncASGITransport(httpx.BaseTransport):
    def __init__(self, app: ASGIApp) -> None:
        self._transport = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def run() -> httpx.Response:
            inner = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self._transport.handle_async_request(inner)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content)

        return asyncio.run(run())


def asgi_transport(
    app: ASGIApp, *, pki_dir: Path | None, caller: str | None
) -> httpx.BaseTransport:
    """A transport calling ``app`` in-process as party ``caller`` (None: no certificate),
    for clients that build their own ``httpx.Client`` (an OAuth library's, say)."""
    chain: list[str] = []
    if caller is not None and pki_dir is not None:
        chain.append(party_files(pki_dir, caller).cert.read_text(encoding="ascii"))
    tls = {"client_cert_chain": chain, "client_cert_name": caller}
    return _SyncASGITransport(WithTLS(app, tls))


def asgi_client(app: ASGIApp, *, pki_dir: Path | None, caller: str | None) -> httpx.Client:
    """A client calling ``app`` in-process as party ``caller`` (None: no certificate)."""
    return httpx.Client(
        transport=asgi_transport(app, pki_dir=pki_dir, caller=caller),
        base_url="https://testserver",
    )
