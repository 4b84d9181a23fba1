"""One leaf of the transparency log: an event's canonical bytes.

The platform's event log (metadata only, never health data) is what the Merkle
log commits to. Each event becomes one leaf whose ``MerkleTreeLeaf`` input
(RFC 9162 §2.1.1: ``leaf_hash = SHA-256(0x00 ‖ entry)``) is the event's
canonical JSON::

    {"at":1763877600123,"detail":{"his_id":"his-a","p_id":"rx-1"},"kind":"fetch",
     "salt":"<22 chars: base64url of 16 random bytes>","seq":42,"user_id":"u-alice","v":1}

keys sorted, no whitespace, UTF-8 (``ensure_ascii=False``), ``at`` in integer
milliseconds since the epoch (UTC), ``user_id`` ``null`` for events of no
account. The **salt** keeps a leaf hash from confirming a guess: an inclusion
proof shows a patient the leaf hashes of other patients' events, and without
16 random bytes an event as guessable as ``{"kind": "bind", "user_id": ...,
"at": ...}`` could be tested against them. Only the event's own account is
served the entry (and so the salt).

:meth:`LogEntry.decode` accepts only the canonical form (re-encoding must give
the same bytes), so one event has exactly one leaf hash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from patientkey.audit.merkle import leaf_hash
from patientkey.crypto._util import b64url_decode, b64url_encode, strict_json_loads
from patientkey.errors import InvalidInput

__all__ = ["MAX_ENTRY_BYTES", "SALT_LEN", "DetailValue", "LogEntry", "datetime_ms"]

SALT_LEN: Final = 16
MAX_ENTRY_BYTES: Final = 16 * 1024
_KEYS: Final = frozenset({"v", "seq", "at", "kind", "user_id", "detail", "salt"})
_MAX_U63: Final = 2**63 - 1

DetailValue = str | int | float | bool | None


def datetime_ms(at: datetime) -> int:
    """``at`` as integer milliseconds since the epoch (a naive value is taken as UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _check_detail(detail: object) -> dict[str, DetailValue]:
    if not isinstance(detail, Mapping):
        raise InvalidInput("an entry's detail is an object")
    out: dict[str, DetailValue] = {}
    for key, value in detail.items():
        if not isinstance(key, str) or not key:
            raise InvalidInput("an entry's detail keys are non-empty strings")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput("an entry's detail numbers are finite")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise InvalidInput("an entry's detail values are strings, numbers, booleans or null")
        out[key] = value
    return out


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U63:
        raise InvalidInput(f"an entry's {what} is a non-negative integer")
    return value


@dataclass(frozen=True, slots=True)
class LogEntry:
    """An event as the log commits to it (see the module docstring)."""

    seq: int
    at_ms: int
    kind: str
    user_id: str | None
    detail: Mapping[str, DetailValue] = field(hash=False)
    salt: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_int(self.seq, "seq")
        _check_int(self.at_ms, "time")
        if not isinstance(self.kind, str) or not 0 < len(self.kind) <= 64:
            raise InvalidInput("an entry's kind is 1-64 characters")
        if self.user_id is not None and (
            not isinstance(self.user_id, str) or not 0 < len(self.user_id) <= 128
        ):
            raise InvalidInput("an entry's user_id is 1-128 characters or null")
        object.__setattr__(self, "detail", _check_detail(self.detail))
        if not isinstance(self.salt, bytes) or len(self.salt) != SALT_LEN:
            raise InvalidInput(f"an entry's salt is {SALT_LEN} bytes")

    @property
    def at(self) -> datetime:
        """When the event happened (UTC, millisecond precision)."""
        return datetime.fromtimestamp(self.at_ms / 1000, tz=UTC)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "seq": self.seq,
            "at": self.at_ms,
            "kind": self.kind,
            "user_id": self.user_id,
            "detail": dict(self.detail),
            "salt": b64url_encode(self.salt),
        }

    def encode(self) -> bytes:
        """The canonical JSON bytes (the Merkle leaf's input)."""
        data = json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        if len(data) > MAX_ENTRY_BYTES:
            raise InvalidInput(f"a log entry is at most {MAX_ENTRY_BYTES} bytes")
        return data

    def leaf_hash(self) -> bytes:
        """RFC 9162 §2.1.1 ``SHA-256(0x00 ‖ entry)``."""
        return leaf_hash(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> LogEntry:
        """Parse canonical entry bytes; anything else is ``InvalidInput``."""
        if not isinstance(data, bytes) or len(data) > MAX_ENTRY_BYTES:
            raise InvalidInput(f"a log entry is at most {MAX_ENTRY_BYTES} bytes")
        try:
            raw = strict_json_loads(data)
        except ValueError as exc:
            raise InvalidInput("a log entry is JSON") from exc
        if not isinstance(raw, dict) or set(raw) != _KEYS or raw["v"] != 1:
            raise InvalidInput(f"a log entry has exactly the fields {sorted(_KEYS)}, v = 1")
        salt = raw["salt"]
        try:
            salt_bytes = b64url_decode(salt) if isinstance(salt, str) else b""
        except ValueError as exc:
            raise InvalidInput("an entry's salt is base64url") from exc
        entry = cls(
            seq=raw["seq"],
            at_ms=raw["at"],
            kind=raw["kind"],
            user_id=raw["user_id"],
            detail=raw["detail"],
            salt=salt_bytes,
        )
        if entry.encode() != data:
            raise InvalidInput("a log entry must be in canonical form")
        return entry
