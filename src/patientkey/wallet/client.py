"""The wallet's I/O: HTTPS to the platform (mutual TLS) and the wiring of one wallet.

:class:`PlatformClient` is the production :class:`~.core.PlatformPort` and
:class:`~.hop.PqPort`: enveloped requests through
:class:`~patientkey.service.client.PeerClient`, and the two plain-JSON
post-quantum endpoints of docs/protocol.md. :func:`open_wallet` builds a
:class:`~.core.WalletCore` from a settings file's values.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx

from patientkey.errors import ConfigError, InvalidInput, PeerUnavailable
from patientkey.keysupply.pq import PQ_PUBLIC_LEN
from patientkey.pki import client_ssl_context
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import Message
from patientkey.protocol.routes import PQ_EXCHANGE, PQ_PUBLIC
from patientkey.service.client import PeerClient, error_from_response
from patientkey.wallet.core import WalletCore, wallet_hop
from patientkey.wallet.settings import WalletSettings
from patientkey.wallet.store import (
    FileRecordCache,
    MemoryRecordCache,
    MemoryStateStore,
    RecordCache,
    StateStore,
    WalletKeystore,
)
from patientkey.wallet.trust import ThirdPartyTrust

__all__ = ["PlatformClient", "open_wallet"]

M = TypeVar("M", bound=Message)
_MAX_JSON = 64 * 1024
_EXCHANGE_ID = re.compile(r"[A-Za-z0-9]{1,64}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: object) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


class PlatformClient:
    """HTTPS client of wallet ``hop.me`` towards the platform ``peer``."""

    def __init__(
        self,
        hop: HopEnd,
        peer: str,
        base_url: str,
        *,
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
        timeout_s: float = 10.0,
        http: httpx.Client | None = None,
    ) -> None:
        # The TLS context is built on first use, so offline commands need no PKI;
        # ``http`` is for in-process tests.
        self.peer = peer
        self._hop = hop
        self._base_url = base_url
        self._ssl_context = ssl_context
        self._timeout = timeout_s
        self._http = http
        self._owns_http = http is None  # an injected client belongs to the caller
        self._client: PeerClient | None = None

    def _connection(self) -> tuple[httpx.Client, PeerClient]:
        if self._http is None:
            verify: ssl.SSLContext | bool = True
            if self._ssl_context is not None:
                try:
                    verify = self._ssl_context()
                except (OSError, ssl.SSLError, ValueError) as exc:
                    raise ConfigError(f"cannot load the wallet's TLS certificate: {exc}") from exc
            self._http = httpx.Client(base_url=self._base_url, verify=verify, timeout=self._timeout)
        if self._client is None:
            self._client = PeerClient(self._hop, self.peer, self._base_url, http=self._http)
        return self._http, self._client

    def call(self, path: str, message: Message, reply: type[M]) -> M:
        return self._connection()[1].call(path, message, reply)

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self._connection()[0].request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise PeerUnavailable(f"{self.peer} unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise error_from_response(response)
        if len(response.content) > _MAX_JSON:
            raise PeerUnavailable(f"{self.peer} answered an oversized body")
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            raise PeerUnavailable(f"{self.peer} answered {path} without JSON") from exc
        if not isinstance(data, dict):
            raise PeerUnavailable(f"{self.peer} answered {path} with a non-object")
        return data

    def pq_public(self) -> bytes:
        data = self._json("GET", PQ_PUBLIC)
        try:
            public = _unb64url(data.get("public"))
        except ValueError as exc:
            raise PeerUnavailable(f"{self.peer}: malformed PQ public key") from exc
        if len(public) != PQ_PUBLIC_LEN:
            raise PeerUnavailable(f"{self.peer}: PQ public key of the wrong length")
        return public

    def pq_exchange(self, init: bytes) -> str:
        data = self._json("POST", PQ_EXCHANGE, {"init": _b64url(init)})
        exchange_id = data.get("exchange_id")
        if not isinstance(exchange_id, str) or not _EXCHANGE_ID.fullmatch(exchange_id):
            raise PeerUnavailable(f"{self.peer}: malformed PQ exchange id")
        return exchange_id

    def close(self) -> None:
        if self._http is not None and self._owns_http:
            self._http.close()


@contextmanager
def open_wallet(
    settings: WalletSettings,
    passphrase: str,
    *,
    http: httpx.Client | None = None,
    persist: bool = True,
) -> Iterator[WalletCore]:
    """The wallet of ``settings``: keystore opened, hop and platform client ready.

    ``http`` replaces the mutual-TLS HTTPS client (tests talk to an in-process
    platform through it). No connection is made until an operation needs one.

    ``persist=False`` is for load generation only (``patientkey bench rx``): the
    keystore is read once and then nothing is written — neither the keystore
    (which a real wallet rewrites and fsyncs before every message, a client-side
    cost) nor the record cache (kept in memory). Keys drawn from the pool in such a
    session are used but not marked used on disk: never use it for a real wallet.
    """
    keystore = WalletKeystore(settings.keystore, passphrase, params=settings.keystore_kdf.params())
    state = keystore.load()
    if state.user_id != settings.name:
        raise InvalidInput(
            f"the keystore belongs to {state.user_id}, the settings to {settings.name}"
        )
    store: StateStore = keystore
    records: RecordCache = FileRecordCache(settings.data_dir)
    if not persist:
        store, records = MemoryStateStore(), MemoryRecordCache()
    hop = wallet_hop(
        state,
        store,
        platform=settings.platform,
        policy=settings.kue_policy,
        rekey=settings.rekey,
    )
    client = PlatformClient(
        hop.end,
        settings.platform,
        settings.platform_url,
        ssl_context=lambda: client_ssl_context(settings.files),
        timeout_s=settings.timeout_s,
        http=http,
    )
    try:
        yield WalletCore(
            state=state,
            store=store,
            records=records,
            hop=hop,
            platform=client,
            pq=client,
            trust=ThirdPartyTrust.from_pki(settings.pki_dir),
        )
    finally:
        client.close()
