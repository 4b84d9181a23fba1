"""Small shared helpers of the crypto recipes (private).

Nothing here is a cryptographic primitive: encodings, strict parsing, length
prefixing, the one place that turns a precise failure reason into the opaque
:class:`~patientkey.errors.CryptoError`, and HKDF-SHA256 (RFC 5869) from
``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import struct
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from patientkey.errors import CryptoError, InvalidInput

_B64URL_RE = re.compile(rb"[A-Za-z0-9_-]*")
_U32 = struct.Struct(">I")
MAX_ID_CHARS = 256


def crypto_failure(log: logging.Logger, reason: str) -> CryptoError:
    """Log ``reason`` locally and return the opaque error to raise.

    ``reason`` must never contain key material; callers pass fixed strings.
    """
    log.warning("crypto failure: %s", reason, stacklevel=2)
    return CryptoError(reason=reason)


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2, RFC 4648 §5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Strict, canonical base64url without padding.

    Raises ``ValueError`` on any character outside the alphabet, on padding,
    on an impossible length and on non-zero unused trailing bits (so each byte
    string has exactly one accepted encoding).
    """
    if isinstance(text, str):
        if not text.isascii():
            raise ValueError("not base64url")
        raw = text.encode("ascii")
    elif isinstance(text, bytes):
        raw = text
    else:
        raise ValueError("not a base64url string")  # noqa: TRY004 - callers catch ValueError
    if _B64URL_RE.fullmatch(raw) is None:
        raise ValueError("not base64url")
    if len(raw) % 4 == 1:
        raise ValueError("impossible base64url length")
    try:
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
    if base64.urlsafe_b64encode(data).rstrip(b"=") != raw:
        raise ValueError("non-canonical base64url")
    return data


def lp(*parts: bytes) -> bytes:
    """Concatenate ``parts``, each preceded by its length as a 32-bit big-endian integer."""
    return b"".join(_U32.pack(len(p)) + p for p in parts)


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) with an all-zero salt (§2.2: salt not provided)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate JSON member")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} not allowed")


def strict_json_loads(data: str | bytes) -> Any:
    """``json.loads`` that rejects duplicate members and NaN/Infinity (RFC 8259 §4)."""
    try:
        return json.loads(
            data,
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as exc:
        # json.JSONDecodeError, UnicodeDecodeError and int-too-long are ValueErrors
        raise ValueError("malformed JSON") from exc


def compact_json(obj: Any) -> bytes:
    """The one JSON encoding we emit: no whitespace, ASCII only, member order as given."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def check_id(value: object, what: str, max_chars: int = MAX_ID_CHARS) -> str:
    """An identifier: a non-empty ``str`` of at most ``max_chars`` characters, no NUL."""
    if not isinstance(value, str) or not value or len(value) > max_chars or "\x00" in value:
        raise InvalidInput(f"{what} must be a non-empty string of at most {max_chars} characters")
    return value


def check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidInput(f"{what} must be bytes")
    return bytes(value)


def check_key(value: object, what: str, *, min_len: int = 32, max_len: int = 32) -> bytes:
    """A secret key of an accepted length. The message names the length, never the key."""
    key = check_bytes(value, what)
    if not min_len <= len(key) <= max_len:
        if min_len == max_len:
            raise InvalidInput(f"{what} must be {min_len} bytes")
        raise InvalidInput(f"{what} must be {min_len} to {max_len} bytes")
    return key


def random_or(value: bytes | None, length: int, what: str) -> bytes:
    """``value`` if injected (known-answer tests only), else ``length`` fresh random bytes."""
    if value is None:
        return os.urandom(length)
    if not isinstance(value, bytes) or len(value) != length:
        raise InvalidInput(f"injected {what} must be {length} bytes")
    return value
