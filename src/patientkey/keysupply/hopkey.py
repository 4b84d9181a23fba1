"""Hop keys: which sources feed the key of one hop, and the policy over them.

Where both a QKD key and a post-quantum agreement exist the hop key is
``HKDF-SHA256(QKD key ‖ ML-KEM secret ‖ X25519 secret, info=context)``
(RFC 5869); every hop key records which sources fed it. A :class:`QkdPolicy`
says whether QKD is required (fail closed without it), preferred (fall back to
the PQ agreement), or not used.

Key IDs name their inputs so the receiver can rebuild the key:
``q.<key_ID>|p.<exchange_id>|n.<counter>`` — parts absent when unused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from patientkey.errors import InvalidInput, KeyUnavailable
from patientkey.keysupply._types import QKey
from patientkey.keysupply.pq import PqSecrets

__all__ = [
    "HopKey",
    "KeyId",
    "QkdPolicy",
    "Source",
    "derive_hop_key",
    "derive_message_key",
]

_INFO = b"patientkey/hop-key/v1\x00"
_MSG_INFO = b"patientkey/message-key/v1\x00"
KEY_BYTES = 32


class Source(StrEnum):
    QKD = "qkd"
    MLKEM = "ml-kem-768"
    X25519 = "x25519"


class QkdPolicy(StrEnum):
    REQUIRED = "required"
    PREFERRED = "preferred"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class KeyId:
    """The parsed form of a hop key ID."""

    qkd: uuid.UUID | None = None
    pq: str | None = None
    counter: int | None = None

    def __str__(self) -> str:
        parts = []
        if self.qkd is not None:
            parts.append(f"q.{self.qkd}")
        if self.pq is not None:
            parts.append(f"p.{self.pq}")
        if self.counter is not None:
            parts.append(f"n.{self.counter}")
        return "|".join(parts)

    @classmethod
    def parse(cls, text: str) -> KeyId:
        if len(text) > 200:
            raise InvalidInput("key id too long")
        qkd: uuid.UUID | None = None
        pq: str | None = None
        counter: int | None = None
        try:
            for part in text.split("|"):
                tag, _, value = part.partition(".")
                if tag == "q" and qkd is None:
                    qkd = uuid.UUID(value)
                elif tag == "p" and pq is None and value.isalnum() and len(value) <= 64:
                    pq = value
                elif tag == "n" and counter is None and value.isdigit() and len(value) <= 12:
                    counter = int(value)
                else:
                    raise InvalidInput(f"malformed key id part {part!r}")
        except ValueError as exc:
            raise InvalidInput("malformed key id") from exc
        if qkd is None and pq is None:
            raise InvalidInput("key id names no key source")
        return cls(qkd, pq, counter)


@dataclass(frozen=True, slots=True)
class HopKey:
    """A 256-bit key for one hop (or one hop session), with its provenance."""

    kid: KeyId
    key: bytes = field(repr=False)
    sources: tuple[Source, ...]
    qkd_bits: int = 0  # quantum key bits consumed to make it

    @property
    def kid_text(self) -> str:
        return str(self.kid)


def derive_hop_key(
    *,
    context: bytes,
    qkd: QKey | None,
    pq: PqSecrets | None,
    policy: QkdPolicy,
) -> HopKey:
    """Combine the available sources under ``policy``; fail closed if it cannot be met."""
    if policy is QkdPolicy.NONE:
        qkd = None
    if policy is QkdPolicy.REQUIRED and qkd is None:
        raise KeyUnavailable("QKD key required by policy but none available")
    if qkd is None and pq is None:
        raise KeyUnavailable("no key source available for this hop")
    ikm = b""
    sources: list[Source] = []
    if qkd is not None:
        ikm += qkd.key
        sources.append(Source.QKD)
    if pq is not None:
        ikm += pq.mlkem_secret + pq.x25519_secret
        sources += [Source.MLKEM, Source.X25519]
    kid = KeyId(qkd.key_id if qkd else None, pq.exchange_id if pq else None)
    info = _INFO + context + b"\x00" + str(kid).encode() + b"\x00" + ",".join(sources).encode()
    key = HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(ikm)
    return HopKey(kid, key, tuple(sources), qkd.bits if qkd else 0)


def derive_message_key(session: HopKey, counter: int) -> HopKey:
    """Per-message key number ``counter`` of a re-keyed session (HKDF-Expand-like, RFC 5869)."""
    if counter < 0:
        raise InvalidInput("negative message counter")
    kid = KeyId(session.kid.qkd, session.kid.pq, counter)
    info = _MSG_INFO + str(kid).encode()
    key = HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(session.key)
    return HopKey(kid, key, session.sources, 0)
