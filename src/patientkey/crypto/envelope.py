"""Hop envelope: every message on a hop (KUE, KEH, KEB) as a JWE (RFC 7516).

JWE Compact Serialization (RFC 7516 §7.1), ``alg=dir`` (RFC 7518 §4.5) with
the hop key from the key supply as the content-encryption key,
``enc=A256GCM`` (RFC 7518 §5.3). The protected header carries::

    alg  "dir"            enc  "A256GCM"        kid  key ID from the key supply
    snd  sender id        rcv  receiver id      mty  message type
    jti  unique message id (uuid4 hex)          iat  issued-at, integer seconds

All of it is authenticated: the encoded protected header is the AEAD
associated data (RFC 7516 §5.1 step 14). See ``docs/formats.md``.

The receiver (:class:`EnvelopeOpener`) rejects, always with the one opaque
:class:`~patientkey.errors.CryptoError` (the precise reason goes to the local
log only): malformed or oversized tokens, any other ``alg``/``enc`` or header
member, an unknown key, any modified byte, another receiver, a stale or future
``iat``, and a replayed ``jti``. A ``jti`` is remembered only after the
message authenticated, so forgeries cannot fill the replay cache.
"""

from __future__ import annotations

import copy
import heapq
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from joserfc.registry import HeaderParameter

from patientkey.crypto._util import (
    b64url_decode,
    check_bytes,
    check_id,
    check_key,
    crypto_failure,
    random_or,
    strict_json_loads,
)
from patientkey.errors import InvalidInput, PayloadTooLarge

__all__ = [
    "ENVELOPE_ALG",
    "ENVELOPE_ENC",
    "MAX_ENVELOPE_PAYLOAD",
    "MAX_TOKEN_BYTES",
    "EnvelopeOpener",
    "KeyResolver",
    "OpenedEnvelope",
    "ReplayCache",
    "seal_envelope",
]

_log = logging.getLogger(__name__)

ENVELOPE_ALG: Final = "dir"
ENVELOPE_ENC: Final = "A256GCM"
MAX_TOKEN_BYTES: Final = 8 * 1024 * 1024
#: Largest payload whose token stays under :data:`MAX_TOKEN_BYTES` (base64url grows 4/3).
MAX_ENVELOPE_PAYLOAD: Final = 6 * 1024 * 1024
MAX_JTI_CHARS: Final = 128
_MAX_HEADER_SEGMENT: Final = 4096
_IV_LEN: Final = 12
_TAG_LEN: Final = 16
_HEADER_KEYS: Final = frozenset({"alg", "enc", "kid", "snd", "rcv", "mty", "jti", "iat"})
_STR_MEMBERS: Final = ("kid", "snd", "rcv", "mty", "jti")

#: ``resolve_key(peer, kid)``: the hop key with ID ``kid`` shared with ``peer``
#: (the claimed sender), or ``None``. Mirrors ETSI GS QKD 014 "Get key with key IDs".
KeyResolver = Callable[[str, str], bytes | None]


def _registry(max_token_bytes: int) -> jwe.JWERegistry:
    registry = jwe.JWERegistry(
        header_registry={
            "snd": HeaderParameter("Sender", "str", True),
            "rcv": HeaderParameter("Receiver", "str", True),
            "mty": HeaderParameter("Message type", "str", True),
            "jti": HeaderParameter("Message ID", "str", True),
            "iat": HeaderParameter("Issued at", "int", True),
        },
        algorithms=[ENVELOPE_ALG, ENVELOPE_ENC],
    )
    # joserfc bounds ciphertext at 64 KiB by default; our bound is the whole token.
    registry.max_ciphertext_length = max_token_bytes
    return registry


_SEAL_REGISTRY: Final = _registry(MAX_TOKEN_BYTES)


class _FixedIVRegistry(jwe.JWERegistry):
    """Known-answer vectors only: a registry whose content encryption uses a given IV."""

    def __init__(self, iv: bytes) -> None:
        super().__init__(
            header_registry=_SEAL_REGISTRY.header_registry,
            algorithms=[ENVELOPE_ALG, ENVELOPE_ENC],
        )
        self.max_ciphertext_length = MAX_TOKEN_BYTES
        self._iv = iv

    def get_enc(self, name: str) -> Any:
        enc = copy.copy(super().get_enc(name))
        fixed = self._iv
        enc.generate_iv = lambda: fixed  # type: ignore[method-assign]
        return enc


def _clock(now: float | None) -> float:
    """``now`` if given (tests, replays of logs), else the system clock; never NaN/inf."""
    if now is None:
        return time.time()
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise InvalidInput("now must be a finite number of seconds")
    return float(now)


def seal_envelope(
    *,
    key: bytes,
    kid: str,
    sender: str,
    receiver: str,
    mtype: str,
    payload: bytes,
    now: float | None = None,
    jti: str | None = None,
    _iv: bytes | None = None,
) -> str:
    """Encrypt ``payload`` for one hop; returns the JWE compact token.

    ``key`` is the 32-byte hop key whose ID is ``kid``. ``jti`` defaults to a
    fresh uuid4 hex, ``now`` to the current time. ``_iv`` is for known-answer
    vectors only.
    """
    hop_key = check_key(key, "hop key")
    data = check_bytes(payload, "payload")
    if len(data) > MAX_ENVELOPE_PAYLOAD:
        raise PayloadTooLarge(f"envelope payload exceeds {MAX_ENVELOPE_PAYLOAD} bytes")
    message_id = uuid.uuid4().hex if jti is None else check_id(jti, "jti", MAX_JTI_CHARS)
    issued = int(_clock(now))
    header = {
        "alg": ENVELOPE_ALG,
        "enc": ENVELOPE_ENC,
        "kid": check_id(kid, "kid"),
        "snd": check_id(sender, "sender"),
        "rcv": check_id(receiver, "receiver"),
        "mty": check_id(mtype, "mtype"),
        "jti": message_id,
        "iat": issued,
    }
    registry = _SEAL_REGISTRY if _iv is None else _FixedIVRegistry(random_or(_iv, _IV_LEN, "iv"))
    token: str = jwe.encrypt_compact(header, data, OctKey.import_key(hop_key), registry=registry)
    return token


@dataclass(frozen=True, slots=True)
class OpenedEnvelope:
    """An authenticated, fresh, first-seen message addressed to us."""

    sender: str
    receiver: str
    mtype: str
    jti: str
    iat: int
    kid: str
    payload: bytes = field(repr=False)


class ReplayCache:
    """Bounded set of recently accepted ``(sender, jti)``; each entry expires on its own.

    When full of unexpired entries it refuses new ones (fail closed) instead
    of forgetting, which would re-open a replay window. Thread-safe.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise InvalidInput("max_entries must be positive")
        self._max = max_entries
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires:
                del self._expiry[key]

    def add(
        self, key: tuple[str, str], expires_at: float, now: float
    ) -> Literal["ok", "replay", "full"]:
        """Record ``key`` until ``expires_at`` unless it is already present (atomic)."""
        with self._lock:
            self._purge(now)
            if key in self._expiry:
                return "replay"
            if len(self._expiry) >= self._max:
                return "full"
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return "ok"


class EnvelopeOpener:
    """The receiving side of a hop: authenticates, checks freshness, rejects replays.

    ``me`` is our party id (the ``rcv`` we accept). ``resolve_key(peer, kid)``
    returns the key with ID ``kid`` that we share with ``peer``, or ``None``;
    because the key is looked up for the *claimed* sender, a peer cannot
    speak in another peer's name with its own key. A message is accepted if
    ``now - window_s <= iat <= now + max_skew_s``; its ``jti`` is then
    remembered until ``iat + window_s``.

    Exceptions raised by ``resolve_key`` itself (e.g. a key supply that is
    down) propagate unchanged: they are not authentication failures.
    """

    def __init__(
        self,
        me: str,
        resolve_key: KeyResolver,
        *,
        window_s: int = 300,
        max_skew_s: int = 30,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        if window_s <= 0 or max_skew_s < 0 or max_token_bytes <= 0:
            raise InvalidInput("window_s, max_skew_s and max_token_bytes must be positive")
        self.me = check_id(me, "me")
        self._resolve = resolve_key
        self.window_s = window_s
        self.max_skew_s = max_skew_s
        self.max_token_bytes = max_token_bytes
        self._registry = _registry(max_token_bytes)
        self._replay = ReplayCache() if replay_cache is None else replay_cache

    def _parse_header(self, segment: bytes) -> dict[str, Any]:
        """Decode and check the (still unauthenticated) protected header."""
        if len(segment) > _MAX_HEADER_SEGMENT:
            raise crypto_failure(_log, "envelope: protected header too large")
        try:
            header = strict_json_loads(b64url_decode(segment))
        except ValueError as exc:
            raise crypto_failure(_log, "envelope: malformed protected header") from exc
        if not isinstance(header, dict):
            raise crypto_failure(_log, "envelope: protected header is not an object")
        if header.keys() != _HEADER_KEYS:
            raise crypto_failure(_log, "envelope: unexpected or missing header members")
        if header["alg"] != ENVELOPE_ALG or header["enc"] != ENVELOPE_ENC:
            raise crypto_failure(_log, "envelope: algorithm not allowed")
        for name in _STR_MEMBERS:
            value = header[name]
            if not isinstance(value, str) or not value or len(value) > 256:
                raise crypto_failure(_log, f"envelope: header member {name} malformed")
        iat = header["iat"]
        if not isinstance(iat, int) or isinstance(iat, bool) or abs(iat) > 1 << 53:
            raise crypto_failure(_log, "envelope: header member iat malformed")
        return header

    def _split(self, token: str | bytes) -> tuple[bytes, dict[str, Any]]:
        if isinstance(token, str):
            if len(token) > self.max_token_bytes:
                raise crypto_failure(_log, "envelope: token too large")
            try:
                raw = token.encode("ascii")
            except UnicodeEncodeError as exc:
                raise crypto_failure(_log, "envelope: token is not ASCII") from exc
        elif isinstance(token, bytes | bytearray):
            raw = bytes(token)
        else:
            raise crypto_failure(_log, "envelope: token is not str or bytes")
        if len(raw) > self.max_token_bytes:
            raise crypto_failure(_log, "envelope: token too large")
        parts = raw.split(b".")
        if len(parts) != 5:
            raise crypto_failure(_log, "envelope: not a JWE compact serialization")
        header_seg, encrypted_key, iv_seg, _ciphertext, tag_seg = parts
        header = self._parse_header(header_seg)
        if encrypted_key:
            raise crypto_failure(_log, "envelope: encrypted key present with alg=dir")
        try:
            iv_len, tag_len = len(b64url_decode(iv_seg)), len(b64url_decode(tag_seg))
        except ValueError as exc:
            raise crypto_failure(_log, "envelope: malformed iv or tag") from exc
        if iv_len != _IV_LEN or tag_len != _TAG_LEN:
            raise crypto_failure(_log, "envelope: wrong iv or tag length")
        return raw, header

    def open(self, token: str | bytes, now: float | None = None) -> OpenedEnvelope:
        """Authenticate and decrypt ``token``; :class:`CryptoError` on any failure."""
        raw, header = self._split(token)
        kid, sender = header["kid"], header["snd"]
        key = self._resolve(sender, kid)
        if key is None:
            raise crypto_failure(_log, "envelope: unknown key id")
        if not isinstance(key, bytes) or len(key) != 32:
            raise crypto_failure(_log, "envelope: resolved key is not 32 bytes")
        try:
            opened = jwe.decrypt_compact(raw, OctKey.import_key(key), registry=self._registry)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise crypto_failure(_log, "envelope: authentication failed") from exc
        payload = opened.plaintext
        assert payload is not None  # decrypt_compact always sets it

        # The header is authentic from here on.
        if header["rcv"] != self.me:
            raise crypto_failure(_log, "envelope: addressed to another receiver")
        current = _clock(now)
        iat: int = header["iat"]
        if iat < current - self.window_s:
            raise crypto_failure(_log, "envelope: iat older than the window")
        if iat > current + self.max_skew_s:
            raise crypto_failure(_log, "envelope: iat in the future beyond the allowed skew")
        status = self._replay.add((sender, header["jti"]), iat + self.window_s, current)
        if status == "replay":
            raise crypto_failure(_log, "envelope: replayed jti")
        if status == "full":
            raise crypto_failure(_log, "envelope: replay cache full")
        return OpenedEnvelope(
            sender=sender,
            receiver=header["rcv"],
            mtype=header["mty"],
            jti=header["jti"],
            iat=iat,
            kid=kid,
            payload=payload,
        )
