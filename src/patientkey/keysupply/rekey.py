"""Rekey policy: how often a hop draws fresh quantum key, and what that costs.

Two policies, one mechanism. A *session* is keyed from the key sources
(:func:`~patientkey.keysupply.hopkey.derive_hop_key`) and every message uses
its own key ``HKDF(session key, counter)``; a session ends after ``messages``
messages or ``seconds`` seconds, whichever comes first. "A fresh key per
message" is the session policy with ``messages=1``: every message then costs
one QKD key.

:class:`HopSender` and :class:`HopReceiver` are the two ends. The receiver
rebuilds each key from the key ID alone (fetching the QKD key by ID once per
session), so it plugs into the envelope opener as its key resolver.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from patientkey.errors import (
    InvalidInput,
    KeySupplyBadRequest,
    KeySupplyError,
    KeyUnavailable,
)
from patientkey.keysupply._types import KeySupply, QKey
from patientkey.keysupply.hopkey import (
    HopKey,
    KeyId,
    QkdPolicy,
    derive_hop_key,
    derive_message_key,
)
from patientkey.keysupply.pq import PqSecrets

__all__ = ["HopReceiver", "HopSender", "RekeyPolicy", "budget_row"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RekeyPolicy:
    """End a session after ``messages`` messages or ``seconds`` seconds."""

    messages: int = 1
    seconds: float = 300.0
    key_bits: int = 256

    def __post_init__(self) -> None:
        if self.messages < 1 or self.seconds <= 0:
            raise InvalidInput("rekey policy needs messages >= 1 and seconds > 0")
        if self.key_bits % 8 or not 128 <= self.key_bits <= 4096:
            raise InvalidInput("key_bits must be a multiple of 8 in [128, 4096]")

    @classmethod
    def per_message(cls) -> RekeyPolicy:
        return cls(messages=1)

    @property
    def name(self) -> str:
        if self.messages == 1:
            return "fresh key per message"
        return f"session, rekey every {self.messages} msgs / {self.seconds:g} s"

    def qkd_bits_per_message(self, message_rate: float) -> float:
        """Average QKD bits one message costs at ``message_rate`` messages/s."""
        per_session = self.messages
        if message_rate > 0:
            per_session = max(1, min(self.messages, math.floor(message_rate * self.seconds)))
        return self.key_bits / per_session

    def sustainable_rate(self, link_bps: float) -> float:
        """Messages/s a link producing ``link_bps`` secret bits/s sustains under this policy."""
        if self.key_bits / self.seconds > link_bps:
            return 0.0  # cannot even afford the time-based rekey
        return self.messages * link_bps / self.key_bits


def budget_row(policy: RekeyPolicy, link_bps: float, message_rate: float) -> dict[str, object]:
    """One row of ``patientkey qkd budget``."""
    return {
        "policy": policy.name,
        "qkd_bits_per_message": round(policy.qkd_bits_per_message(message_rate), 4),
        "sustainable_msgs_per_s": round(policy.sustainable_rate(link_bps), 1),
        "link_bps": link_bps,
        "message_rate": message_rate,
    }


class HopSender:
    """Sending end of one hop: hands out a fresh message key per call."""

    def __init__(
        self,
        *,
        peer: str,
        context: bytes,
        supply: KeySupply | None,
        policy: QkdPolicy = QkdPolicy.REQUIRED,
        rekey: RekeyPolicy | None = None,
        pq: PqSecrets | None = None,
        clock: Callable[[], float] = time.monotonic,
        prefetch: int = 1,
    ) -> None:
        if not 1 <= prefetch <= 1024:
            raise InvalidInput("prefetch must be 1 to 1024 keys")
        self._peer = peer
        self._context = context
        self._supply = supply
        self._policy = policy
        self._rekey = rekey or RekeyPolicy.per_message()
        self._pq = pq
        self._clock = clock
        self._session: HopKey | None = None
        self._started = 0.0
        self._counter = 0
        self._lock = threading.Lock()
        self.qkd_bits_used = 0
        # Keys drawn ahead from the KME (one enc_keys call per ``prefetch`` messages); each
        # is still used for exactly one session. A finite pool (the wallet's) keeps 1.
        self._prefetch = prefetch
        self._ahead: deque[QKey] = deque()

    def _fetch(self) -> QKey:
        assert self._supply is not None
        if not self._ahead and self._prefetch > 1:
            try:
                self._ahead.extend(
                    self._supply.get_keys(self._peer, self._prefetch, self._rekey.key_bits)
                )
            except KeySupplyBadRequest:
                # The KME allows fewer keys per request (ETSI GS QKD 014 Status,
                # max_key_per_request): asking for the batch again would cost every
                # message a second, refused round trip.
                log.warning("KME refuses batches of %d keys for %s", self._prefetch, self._peer)
                self._prefetch = 1
            except KeyUnavailable:
                pass  # fewer keys than a batch just now: one will do
        if self._ahead:
            return self._ahead.popleft()
        return self._supply.get_keys(self._peer, 1, self._rekey.key_bits)[0]

    def _draw_qkd(self) -> QKey | None:
        if self._policy is QkdPolicy.NONE or self._supply is None:
            return None
        try:
            return self._fetch()
        except KeySupplyError:
            if self._policy is QkdPolicy.PREFERRED and self._pq is not None:
                log.warning("QKD key unavailable for %s: falling back to ML-KEM+X25519", self._peer)
                return None
            raise

    def next_key(self) -> HopKey:
        """The key for the next message (fails closed: KeyUnavailable, never no key)."""
        with self._lock:
            now = self._clock()
            expired = (
                self._session is None
                or self._counter >= self._rekey.messages
                or now - self._started >= self._rekey.seconds
            )
            if expired:
                qkd = self._draw_qkd()
                session = derive_hop_key(
                    context=self._context, qkd=qkd, pq=self._pq, policy=self._policy
                )
                # A PQ-only session cannot be renewed without a new exchange: keep
                # counting so that no message key is ever derived twice.
                if self._session is None or session.kid != self._session.kid:
                    self._counter = 0
                self._session, self._started = session, now
                self.qkd_bits_used += session.qkd_bits
            assert self._session is not None
            key = derive_message_key(self._session, self._counter)
            self._counter += 1
            return key


class HopReceiver:
    """Receiving end of one hop: rebuilds message keys from their key IDs.

    ``resolve`` returns None for any key ID it will not honour (malformed, not
    allowed by policy, unknown to the key supply), which the envelope opener
    reports as its one opaque failure.
    """

    def __init__(
        self,
        *,
        peer: str,
        context: bytes,
        supply: KeySupply | None,
        policy: QkdPolicy = QkdPolicy.REQUIRED,
        pq_lookup: Callable[[str], PqSecrets | None] | None = None,
        max_sessions: int = 4096,
    ) -> None:
        self._peer = peer
        self._context = context
        self._supply = supply
        self._policy = policy
        self._pq_lookup = pq_lookup
        self._sessions: OrderedDict[tuple[object, ...], HopKey] = OrderedDict()
        self._max = max_sessions
        self._lock = threading.Lock()
        # One fetch per session: a session's QKD key is released by the supply once, so
        # two messages of a new session arriving together must not both fetch it.
        self._fetching: dict[tuple[object, ...], threading.Lock] = {}

    def _cached(self, base: tuple[object, ...]) -> HopKey | None:
        with self._lock:
            cached = self._sessions.get(base)
            if cached is not None:
                self._sessions.move_to_end(base)
            return cached

    def _session(self, kid: KeyId) -> HopKey | None:
        base = (kid.qkd, kid.pq)
        cached = self._cached(base)
        if cached is not None:
            return cached
        with self._lock:
            fetching = self._fetching.setdefault(base, threading.Lock())
        try:
            with fetching:
                return self._cached(base) or self._new_session(kid, base)
        finally:
            with self._lock:
                if self._fetching.get(base) is fetching and not fetching.locked():
                    del self._fetching[base]

    def _new_session(self, kid: KeyId, base: tuple[object, ...]) -> HopKey | None:
        pq = None
        if kid.pq is not None:
            pq = self._pq_lookup(kid.pq) if self._pq_lookup else None
            if pq is None:
                return None
        qkd = None
        if kid.qkd is not None:
            if self._supply is None:
                return None
            try:
                qkd = self._supply.get_keys_by_id(self._peer, [kid.qkd])[0]
            except KeyUnavailable:
                raise  # the supply is down: a 503, not a bad message
            except KeySupplyError:
                log.info("key %s not obtainable from the key supply", kid.qkd)
                return None
        session = derive_hop_key(context=self._context, qkd=qkd, pq=pq, policy=self._policy)
        with self._lock:
            self._sessions[base] = session
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return session

    def resolve(self, kid_text: str) -> bytes | None:
        try:
            kid = KeyId.parse(kid_text)
        except InvalidInput:
            return None
        if kid.counter is None:
            return None
        if self._policy is QkdPolicy.REQUIRED and kid.qkd is None:
            return None
        if self._policy is QkdPolicy.NONE and kid.qkd is not None:
            return None
        session = self._session(kid)
        if session is None:
            return None
        return derive_message_key(session, kid.counter).key
