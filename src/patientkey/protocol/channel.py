"""One party's end of its hops: requests and replies as hop envelopes.

A request to ``peer`` is sealed under the next message key of that hop's
:class:`~patientkey.keysupply.rekey.HopSender` (QKD, pool or PQ, by policy).
The reply travels under ``HKDF(request key, "reply" ‖ jti)``, so one exchange
costs one hop key and the reply is bound to the very request it answers. The
receiver rebuilds a request key from its key ID alone
(:class:`~patientkey.keysupply.rekey.HopReceiver`).

Pure apart from the key supply: bytes in, bytes out, no HTTP. The same
:class:`HopEnd` runs in-process in unit tests and behind FastAPI/httpx.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from patientkey.crypto import EnvelopeOpener, ReplayCache, seal_envelope
from patientkey.errors import CryptoError, InvalidInput
from patientkey.keysupply.rekey import HopReceiver, HopSender
from patientkey.protocol.messages import Message, decode_message, encode_message

__all__ = ["HopEnd", "Incoming", "Outgoing"]

M = TypeVar("M", bound=Message)
M_co = TypeVar("M_co", bound=Message, covariant=True)

_REPLY_INFO = b"patientkey/reply-key/v1\x00"


def _reply_key(message_key: bytes, jti: str) -> bytes:
    info = _REPLY_INFO + jti.encode("ascii")
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(message_key)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A sealed request, with what is needed to open its reply."""

    peer: str
    mtype: str
    jti: str
    token: str
    qkd_bits: int
    reply_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Incoming(Generic[M_co]):
    """An authenticated request from ``sender``."""

    sender: str
    jti: str
    message: M_co
    reply_key: bytes = field(repr=False)
    #: The network address the transport saw (set by the HTTP adapter; step-up input).
    peer: str = ""


class HopEnd:
    """All the hops of party ``me``, keyed by peer."""

    def __init__(
        self,
        me: str,
        *,
        senders: Mapping[str, HopSender],
        receivers: Mapping[str, HopReceiver],
        replay_cache: ReplayCache | None = None,
        window_s: int = 300,
        peer_factory: Callable[[str], tuple[HopSender, HopReceiver] | None] | None = None,
    ) -> None:
        self.me = me
        self._factory = peer_factory
        self._senders = dict(senders)
        self._receivers = dict(receivers)
        self._window = window_s
        # The key the opener resolved, per thread: receive() derives the reply key from
        # it instead of resolving again (a one-time key is gone once its session is evicted).
        self._resolved = threading.local()
        self._opener = EnvelopeOpener(
            me, self._resolve, window_s=window_s, replay_cache=replay_cache
        )

    def add_peer(self, peer: str, sender: HopSender, receiver: HopReceiver) -> None:
        """Add (or replace) the hop to ``peer``."""
        self._senders[peer] = sender
        self._receivers[peer] = receiver

    def _peer(self, peer: str) -> tuple[HopSender, HopReceiver] | None:
        sender, receiver = self._senders.get(peer), self._receivers.get(peer)
        if sender is not None and receiver is not None:
            return sender, receiver
        made = self._factory(peer) if self._factory is not None else None
        if made is not None:
            self.add_peer(peer, *made)
        return made

    def _resolve(self, peer: str, kid: str) -> bytes | None:
        hop = self._peer(peer)
        key = None if hop is None else hop[1].resolve(kid)
        self._resolved.last = (peer, kid, key)
        return key

    @property
    def qkd_bits_used(self) -> int:
        return sum(s.qkd_bits_used for s in self._senders.values())

    def request(self, peer: str, message: Message) -> Outgoing:
        """Seal ``message`` for ``peer`` (raises KeyUnavailable: fail closed)."""
        hop = self._peer(peer)
        if hop is None:
            raise InvalidInput(f"{self.me} has no hop to {peer!r}")
        sender = hop[0]
        before = sender.qkd_bits_used
        key = sender.next_key()
        jti = uuid.uuid4().hex
        token = seal_envelope(
            key=key.key,
            kid=key.kid_text,
            sender=self.me,
            receiver=peer,
            mtype=message.MTYPE,
            payload=encode_message(message),
            jti=jti,
        )
        return Outgoing(
            peer, message.MTYPE, jti, token, sender.qkd_bits_used - before, _reply_key(key.key, jti)
        )

    def receive(self, token: str | bytes, expected: type[M]) -> Incoming[M]:
        """Open a request; CryptoError if it is not authentic, fresh and ours."""
        self._resolved.last = None
        opened = self._opener.open(token)
        if opened.mtype != expected.MTYPE:
            raise CryptoError(
                f"envelope: message type {opened.mtype!r} on a {expected.MTYPE} route"
            )
        last = self._resolved.last
        self._resolved.last = None
        if last is not None and last[:2] == (opened.sender, opened.kid):
            key = last[2]
        else:  # pragma: no cover - the opener resolves exactly this (sender, kid)
            key = self._resolve(opened.sender, opened.kid)
        if key is None:
            raise CryptoError("envelope: key vanished")
        message = decode_message(opened.payload, expected)
        return Incoming(opened.sender, opened.jti, message, _reply_key(key, opened.jti))

    def reply(self, incoming: Incoming[Message], message: Message) -> str:
        """Seal the reply to ``incoming`` under its derived reply key."""
        return seal_envelope(
            key=incoming.reply_key,
            kid=f"reply.{incoming.jti}",
            sender=self.me,
            receiver=incoming.sender,
            mtype=message.MTYPE,
            payload=encode_message(message),
        )

    def open_reply(self, outgoing: Outgoing, token: str | bytes, expected: type[M]) -> M:
        """Open the reply to ``outgoing``; it must come from its peer, once."""
        want_kid = f"reply.{outgoing.jti}"

        def resolve(peer: str, kid: str) -> bytes | None:
            return outgoing.reply_key if (peer, kid) == (outgoing.peer, want_kid) else None

        opened = EnvelopeOpener(self.me, resolve, window_s=self._window).open(token)
        if opened.mtype != expected.MTYPE:
            raise CryptoError(f"envelope: reply type {opened.mtype!r}, expected {expected.MTYPE}")
        return decode_message(opened.payload, expected)
