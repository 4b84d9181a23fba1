"""Key supply from any ETSI GS QKD 014 V1.1.1 KME over HTTPS with mutual TLS.

:class:`Etsi014Client` implements :class:`patientkey.keysupply.KeySupply`:

- ``status(peer)``          → GET  ``/api/v1/keys/{peer}/status``   (§5.1, §6.1)
- ``get_keys(peer, n, s)``  → POST ``/api/v1/keys/{peer}/enc_keys`` (§5.2, §6.2, §6.3)
- ``get_keys_by_id(peer, ids)`` → POST ``/api/v1/keys/{peer}/dec_keys`` (§5.3, §6.4)

Status codes (§5) map to the key-supply errors: 400 → KeySupplyBadRequest,
401 → KeySupplyUnauthorized, 503 → retried with exponential backoff, then
KeyUnavailable; a transport failure or an answer that does not follow §6 is
KeyUnavailable too. Only 503 is retried: the KME said it released nothing,
whereas after a lost connection a dec_keys call may already have consumed
the keys, and repeating it would turn a transport error into a 400.

A KME deletes a key once it has delivered it (§5.3), so a key the client
received but could not hand to its caller — returned without having been
asked for, or fetched in a batch that failed on another key — would be lost.
Such keys wait in a bounded cache, keyed by (master SAE, key_ID), and
``get_keys_by_id`` serves from it first; a cached key is handed out once.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import ssl
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import httpx

from patientkey.errors import (
    KeySupplyBadRequest,
    KeySupplyError,
    KeySupplyUnauthorized,
    KeyUnavailable,
)
from patientkey.keysupply._types import KeyStatus, QKey
from patientkey.pki import client_ssl_context

__all__ = ["API_PREFIX", "Etsi014Client"]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/keys"
_UUID_RE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)
_STATUS_STR = ("source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID")
_STATUS_INT = (
    "key_size",
    "stored_key_count",
    "max_key_count",
    "max_key_per_request",
    "max_key_size",
    "min_key_size",
    "max_SAE_ID_count",
)
_MESSAGE_MAX = 200  # KME error text kept in our exceptions


class Etsi014Client:
    """:class:`KeySupply` client of one KME, acting as the SAE its certificate names."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 4,
        backoff_s: float = 0.1,
        backoff_max_s: float = 2.0,
        cache_size: int = 1024,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1 or backoff_s < 0 or backoff_max_s < 0 or cache_size < 0:
            raise ValueError("max_attempts >= 1 and non-negative backoff and cache size needed")
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.cache_size = cache_size
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url,
            verify=ssl_context if ssl_context is not None else True,
            transport=transport,
            timeout=timeout_s,
            follow_redirects=False,
            headers={"accept": "application/json"},
        )
        self._cache: OrderedDict[tuple[str, uuid.UUID], QKey] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def from_pki(cls, base_url: str, pki_dir: Path, sae_id: str, **kwargs: Any) -> Self:
        """A client presenting ``sae_id``'s certificate from a dev PKI directory."""
        return cls(base_url, ssl_context=client_ssl_context(pki_dir, sae_id), **kwargs)

    # -- KeySupply -------------------------------------------------------------------

    def status(self, peer: str) -> KeyStatus:
        """Get status (§5.1) of the link to slave ``peer``."""
        return _parse_status(self._call("GET", _path(peer, "status")))

    def get_keys(self, peer: str, number: int = 1, size: int = 256) -> list[QKey]:
        """Get key (§5.2): ``number`` keys of ``size`` bits shared with slave ``peer``."""
        for name, value in (("number", number), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KeySupplyBadRequest(f"{name} must be a positive integer")
        if size % 8:
            raise KeySupplyBadRequest("size must be a multiple of 8")
        data = self._call("POST", _path(peer, "enc_keys"), {"number": number, "size": size})
        keys = _parse_container(data)
        if len(keys) != number or any(k.bits != size for k in keys):
            raise KeyUnavailable("KME answered with a different number or size of keys")
        return keys

    def get_keys_by_id(self, peer: str, key_ids: Sequence[uuid.UUID]) -> list[QKey]:
        """Get key with key IDs (§5.3): the keys master ``peer`` obtained, cache first."""
        ids = list(key_ids)
        if not ids:
            raise KeySupplyBadRequest("no key_IDs given")
        if not all(isinstance(i, uuid.UUID) for i in ids):
            raise KeySupplyBadRequest("key_IDs must be UUIDs")
        if len(set(ids)) != len(ids):
            raise KeySupplyBadRequest("duplicate key_ID")
        with self._cache_lock:
            missing = [i for i in ids if (peer, i) not in self._cache]
        fetched: dict[uuid.UUID, QKey] = {}
        if missing:
            body = {"key_IDs": [{"key_ID": str(i)} for i in missing]}
            received = _parse_container(self._call("POST", _path(peer, "dec_keys"), body))
            wanted = set(missing)
            for key in received:
                if key.key_id in wanted:
                    fetched[key.key_id] = key
                else:
                    self._keep(peer, key)  # released to us by the KME: do not lose it
            absent = wanted - fetched.keys()
            if absent:
                for key in fetched.values():
                    self._keep(peer, key)
                raise KeyUnavailable(f"KME did not return {len(absent)} requested key(s)")
        out: list[QKey] = []
        with self._cache_lock:
            for i in ids:
                found = fetched.get(i)
                if found is None:
                    found = self._cache.pop((peer, i), None)
                if found is None:  # evicted by a concurrent call's _keep: the KME has no copy
                    raise KeyUnavailable("a cached key was evicted before use")
                out.append(found)
        return out

    @property
    def cached_keys(self) -> int:
        """How many fetched keys wait in the cache for their caller."""
        with self._cache_lock:
            return len(self._cache)

    # -- plumbing --------------------------------------------------------------------

    def _keep(self, peer: str, key: QKey) -> None:
        with self._cache_lock:
            self._cache[(peer, key.key_id)] = key
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
                log.warning("key cache full: the oldest unused key was dropped")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self._http.request(method, path, json=body)
            except httpx.HTTPError as exc:
                raise KeyUnavailable(f"KME unreachable ({type(exc).__name__})") from exc
            if response.status_code == 503 and attempt < self.max_attempts:
                pause = min(delay, self.backoff_max_s)
                log.info("KME answered 503, retry %d in %.2fs", attempt, pause)
                self._sleep(pause)
                delay *= 2
                continue
            return _answer(response)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _path(peer: str, operation: str) -> str:
    if not isinstance(peer, str) or not peer:
        raise KeySupplyBadRequest("peer SAE_ID must be a non-empty string")
    return f"{API_PREFIX}/{quote(peer, safe='')}/{operation}"


def _answer(response: httpx.Response) -> Any:
    status = response.status_code
    if status == 200:
        try:
            return response.json()
        except ValueError as exc:
            raise KeyUnavailable("KME answer is not JSON") from exc
    message, details = _error(response)
    error: type[KeySupplyError]
    if status == 400:
        error = KeySupplyBadRequest
    elif status == 401:
        error = KeySupplyUnauthorized
    else:
        error = KeyUnavailable
        message = f"KME answered HTTP {status}: {message}"
    raise error(message, details=details)


def _error(response: httpx.Response) -> tuple[str, list[Any]]:
    """Message and details of an Error data format (§6.5) body, tolerating others."""
    try:
        data = response.json()
    except ValueError:
        return response.reason_phrase or "error", []
    if not isinstance(data, dict):
        return "error", []
    message = data.get("message")
    details = data.get("details")
    return (
        str(message)[:_MESSAGE_MAX] if message is not None else "error",
        details if isinstance(details, list) else [],
    )


def _malformed(what: str) -> KeyUnavailable:
    return KeyUnavailable(f"KME answer does not follow ETSI GS QKD 014: {what}")


def _parse_container(data: Any) -> list[QKey]:
    """Key container (§6.3) → QKeys; any deviation is KeyUnavailable."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise _malformed("no keys array")
    keys: list[QKey] = []
    for item in data["keys"]:
        if not isinstance(item, dict):
            raise _malformed("key entry is not an object")
        key_id, key = item.get("key_ID"), item.get("key")
        if not isinstance(key_id, str) or not _UUID_RE.fullmatch(key_id):
            raise _malformed("key_ID is not a UUID")
        if not isinstance(key, str):
            raise _malformed("key is not a string")
        try:
            raw = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _malformed("key is not base64") from exc
        if not raw:
            raise _malformed("empty key")
        keys.append(QKey(uuid.UUID(key_id), raw))
    if len({k.key_id for k in keys}) != len(keys):
        raise _malformed("duplicate key_ID")
    return keys


def _parse_status(data: Any) -> KeyStatus:
    """Status (§6.1) → KeyStatus; any deviation is KeyUnavailable."""
    if not isinstance(data, dict):
        raise _malformed("status is not an object")
    for name in _STATUS_STR:
        if not isinstance(data.get(name), str):
            raise _malformed(f"{name} missing or not a string")
    for name in _STATUS_INT:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _malformed(f"{name} missing or not a non-negative integer")
    return KeyStatus(**{name: data[name] for name in (*_STATUS_STR, *_STATUS_INT)})
