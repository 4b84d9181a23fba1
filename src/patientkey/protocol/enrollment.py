"""The enrollment code a hospital hands its patient out of band (docs/protocol.md).

Both halves live here, the hospital's encoder and the wallet's strict parser,
so the format has one definition.

Text ``PKENROLL1.`` + base64url (no padding) of the compact JSON
``{"his_id", "patient_id", "kuh": b64url(32 bytes), "kv": 1}``. It carries KUH,
so it is parsed strictly and never logged; a malformed code is
:class:`~patientkey.errors.InvalidInput` whose text never repeats the code.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from patientkey.errors import InvalidInput

__all__ = ["ENROLL_PREFIX", "Enrollment", "encode_enrollment_code", "parse_enrollment_code"]

ENROLL_PREFIX: Final = "PKENROLL1."
MAX_CODE_CHARS: Final = 2048
KUH_LEN: Final = 32
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_KEYS: Final = frozenset({"his_id", "patient_id", "kuh", "kv"})


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What an enrollment code says: this patient at this hospital holds this KUH version."""

    his_id: str
    patient_id: str
    version: int
    kuh: bytes = field(repr=False)


def _b64url(text: str) -> bytes:
    """Strict base64url without padding: one accepted encoding per byte string."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != text:
        raise ValueError("non-canonical base64url")
    return data


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_enrollment_code(his_id: str, patient_id: str, kuh: bytes, version: int = 1) -> str:
    """The code text for ``patient_id`` at ``his_id`` holding KUH version ``version``."""
    if not isinstance(kuh, bytes) or len(kuh) != KUH_LEN:
        raise InvalidInput("KUH must be 32 bytes")
    document = {
        "his_id": his_id,
        "patient_id": patient_id,
        "kuh": _b64url_encode(kuh),
        "kv": version,
    }
    compact = json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return ENROLL_PREFIX + _b64url_encode(compact)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate member")
        out[key] = value
    return out


def parse_enrollment_code(code: str) -> Enrollment:
    """Parse and check an enrollment code; InvalidInput (without the code's text) if malformed."""
    text = code.strip() if isinstance(code, str) else ""
    if not text.startswith(ENROLL_PREFIX) or len(text) > MAX_CODE_CHARS:
        raise InvalidInput(f"an enrollment code starts with {ENROLL_PREFIX}")
    try:
        obj = json.loads(
            _b64url(text.removeprefix(ENROLL_PREFIX)), object_pairs_hook=_no_duplicates
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("enrollment code is not base64url JSON") from exc
    if not isinstance(obj, dict) or obj.keys() != _KEYS:
        raise InvalidInput("enrollment code members must be his_id, patient_id, kuh, kv")
    his_id, patient_id, kuh, kv = obj["his_id"], obj["patient_id"], obj["kuh"], obj["kv"]
    for name, value in (("his_id", his_id), ("patient_id", patient_id)):
        if not isinstance(value, str) or not _IDENT.fullmatch(value):
            raise InvalidInput(f"enrollment code: malformed {name}")
    if type(kv) is not int or not 1 <= kv < 2**31:
        raise InvalidInput("enrollment code: kv must be a positive integer")
    try:
        key = _b64url(kuh) if isinstance(kuh, str) else b""
    except ValueError:
        key = b""
    if len(key) != KUH_LEN:
        raise InvalidInput(f"enrollment code: kuh must be {KUH_LEN} bytes, base64url")
    return Enrollment(his_id=his_id, patient_id=patient_id, version=kv, kuh=key)
