"""Shared fixtures: a session dev PKI, a small KME network, in-process HTTP clients."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from patientkey.kme.core import KmeCore, Limits
from patientkey.pki import init_pki

# One site per party, as in DESIGN.md: wallet-platform, platform-hospital,
# platform-pharmacy are QKD links; wallet-hospital is not.
SITES = {
    "KME_WALLET": ["wallet"],
    "KME_PLATFORM": ["platform"],
    "KME_HOSPITAL": ["hospital"],
    "KME_PHARMACY": ["pharmacy"],
}
LINKS = [
    ("KME_WALLET", "KME_PLATFORM"),
    ("KME_PLATFORM", "KME_HOSPITAL"),
    ("KME_PLATFORM", "KME_PHARMACY"),
]
# "stranger" holds a valid certificate of the CA but is no SAE; "operator" is the admin.
PARTIES = ["kme", "wallet", "platform", "hospital", "pharmacy", "operator", "stranger"]
POOL_BYTES = 4096


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev PKI with a certificate for every test party."""
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, PARTIES)
    return directory


@pytest.fixture(scope="session")
def cert_pem(dev_pki: Path) -> Callable[[str], str]:
    """PEM text of a party's certificate."""

    def read(name: str) -> str:
        return (dev_pki / f"{name}.pem").read_text(encoding="ascii")

    return read


def fill(core: KmeCore, nbytes: int = POOL_BYTES) -> None:
    """Give every link of ``core`` ``nbytes`` of identical random material."""
    for link in core.link_ids:
        material = os.urandom(nbytes)
        core.add_material(link, material, material)


@pytest.fixture
def fill_pools() -> Callable[..., None]:
    """The ``fill(core, nbytes)`` helper, for tests that top pools up again."""
    return fill


@pytest.fixture
def limits() -> Limits:
    return Limits(max_pool_bits=POOL_BYTES * 8 * 2, max_issued_keys=1000)


@pytest.fixture
def core(limits: Limits) -> KmeCore:
    """The four-party network with every pool holding POOL_BYTES of key material."""
    kme = KmeCore(SITES, LINKS, limits)
    fill(kme)
    return kme


@pytest.fixture
def empty_core(limits: Limits) -> KmeCore:
    """The four-party network with empty pools."""
    return KmeCore(SITES, LINKS, limits)


# --- in-process HTTP ---------------------------------------------------------------


def tls_scope(pem: str) -> dict[str, Any]:
    """The ASGI TLS extension a mutual-TLS server gives a request from ``pem``'s holder."""
    return {
        "server_cert": None,
        "client_cert_chain": [pem],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": None,
    }


class _WithTLS:
    def __init__(self, app: Any, tls: dict[str, Any] | None) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.tls is not None and scope["type"] == "http":
            scope = {**scope, "extensions": {**scope.get("extensions", {}), "tls": self.tls}}
        await self.app(scope, receive, send)


class _ChunkStream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class SyncASGITransport(httpx.BaseTransport):
    """A synchronous httpx transport over ``httpx.ASGITransport`` (one event loop per call).

    Lets sync code (Etsi014Client, hypothesis tests) talk to the ASGI app in-process.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            # A generator body (chunked upload): replay its chunks one by one.
            request.stream = _ChunkStream(list(request.stream))  # type: ignore[arg-type]

        async def call() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            transport = httpx.ASGITransport(app=self.app)
            response = await transport.handle_async_request(request)
            content = await response.aread()
            return response.status_code, response.headers.raw, content

        status, headers, content = anyio.run(call)
        return httpx.Response(status, headers=headers, content=content, request=request)


@pytest.fixture
def asgi_client(cert_pem: Callable[[str], str]) -> Iterator[Callable[..., httpx.Client]]:
    """Factory: an httpx.Client on an ASGI app, calling as SAE ``sae`` (None: no certificate)."""
    clients: list[httpx.Client] = []

    def make(app: Any, sae: str | None) -> httpx.Client:
        tls = tls_scope(cert_pem(sae)) if sae is not None else None
        client = httpx.Client(
            base_url="https://kme.test", transport=SyncASGITransport(_WithTLS(app, tls))
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def asgi_transport(cert_pem: Callable[[str], str]) -> Callable[[Any, str], httpx.BaseTransport]:
    """Factory: a sync transport to an ASGI app, as SAE ``sae`` (for Etsi014Client)."""

    def make(app: Any, sae: str) -> httpx.BaseTransport:
        return SyncASGITransport(_WithTLS(app, tls_scope(cert_pem(sae))))

    return make
