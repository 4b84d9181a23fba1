"""The approval challenge a patient signs, and the canonical JSON it is built on.

When the patient approves an authorization request (OpenID CIBA), a signature
proof (device key, :mod:`~patientkey.identity.device`; certificate key,
:mod:`~patientkey.identity.x509sig`) covers exactly three things::

    to_be_signed = lp(label) ‖ lp(request_id) ‖ lp(nonce) ‖ lp(canonical_json(details))

- ``label`` names the proof kind (``patientkey/identity/device-approval/v1``,
  ``…/x509-approval/v1``), so one signature never counts as two proofs;
- ``request_id`` is the CIBA ``auth_req_id`` the patient answers;
- ``nonce`` is NONCE_LEN fresh random bytes the *platform* chose for this
  request and kept; the verifier takes it from its own state, never from the
  wallet's answer;
- ``details`` is the ``authorization_details`` (RFC 9396 §2: a JSON array of
  objects) the patient *approves* — the requested ones or a narrower subset.
  The platform checks the narrowing separately; the signature then binds the
  patient to exactly what is granted.

``lp`` prefixes each part with its length as a 32-bit big-endian integer.

Canonical JSON
--------------
``canonical_json`` is RFC 8785 (JSON Canonicalization Scheme) restricted to
documents without non-integer numbers:

- object members sorted by their names compared as UTF-16 code units
  (RFC 8785 §3.2.3), no whitespace anywhere, ``,`` and ``:`` as separators;
- strings as in RFC 8785 §3.2.2.2: UTF-8, only ``"``, ``\\`` and U+0000..U+001F
  escaped (``\\b \\t \\n \\f \\r`` in short form, the rest as ``\\u00xx``);
- ``true``, ``false``, ``null``; integers in decimal, and only within
  ±(2**53 - 1) so every JCS implementation (which reads numbers as IEEE
  doubles) produces the same bytes;
- refused with :class:`~patientkey.errors.InvalidInput`: floats (1.5 and 1.0
  alike: authorization details carry dates as strings and durations as
  integers), non-string member names, lone surrogates, any other type,
  nesting deeper than MAX_DEPTH, output over MAX_CANONICAL_BYTES.
"""

from __future__ import annotations

import json
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from patientkey.errors import InvalidInput, PayloadTooLarge
from patientkey.identity._util import check_id

__all__ = [
    "MAX_CANONICAL_BYTES",
    "MAX_DEPTH",
    "NONCE_LEN",
    "ApprovalChallenge",
    "canonical_json",
    "new_nonce",
]

NONCE_LEN: Final = 32
MAX_DEPTH: Final = 16
MAX_CANONICAL_BYTES: Final = 64 * 1024
_MAX_SAFE_INT: Final = 2**53 - 1
_U32: Final = struct.Struct(">I")


def new_nonce() -> bytes:
    """NONCE_LEN fresh random bytes: the platform's nonce for one authorization request."""
    return secrets.token_bytes(NONCE_LEN)


def canonical_json(value: object) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value`` (integers only; see the module doc)."""
    parts: list[str] = []
    _emit(value, parts, 0)
    try:
        data = "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput("signed JSON must not contain lone surrogates") from exc
    if len(data) > MAX_CANONICAL_BYTES:
        raise PayloadTooLarge(f"signed JSON is limited to {MAX_CANONICAL_BYTES} bytes")
    return data


def _utf16_order(name: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly as the code units do (RFC 8785 §3.2.3).
    return name.encode("utf-16-be", "surrogatepass")


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            raise InvalidInput("signed JSON integers must be within ±(2**53 - 1)")
        return str(int(value))
    if isinstance(value, str):
        # json.dumps without ensure_ascii escapes exactly what RFC 8785 §3.2.2.2 escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        raise InvalidInput("signed JSON must not contain non-integer numbers")
    raise InvalidInput(f"signed JSON cannot hold a {type(value).__name__}")


def _emit(value: object, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidInput(f"signed JSON is limited to {MAX_DEPTH} levels of nesting")
    if isinstance(value, Mapping):
        names = list(value)
        if not all(isinstance(name, str) for name in names):
            raise InvalidInput("signed JSON member names must be strings")
        out.append("{")
        for i, name in enumerate(sorted(names, key=_utf16_order)):
            if i:
                out.append(",")
            out.append(json.dumps(name, ensure_ascii=False))
            out.append(":")
            _emit(value[name], out, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _emit(item, out, depth + 1)
        out.append("]")
    else:
        out.append(_scalar(value))


def _lp(*parts: bytes) -> bytes:
    return b"".join(_U32.pack(len(p)) + p for p in parts)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, item in pairs:
        if name in out:
            raise ValueError("duplicate JSON member")
        out[name] = item
    return out


def _reject_number(text: str) -> Any:
    raise ValueError("non-integer number")


@dataclass(frozen=True, slots=True)
class ApprovalChallenge:
    """What a signature proof covers: request id, platform nonce, approved details (canonical).

    Build it with :meth:`create` from the JSON value of the approved
    ``authorization_details``; direct construction checks that ``details``
    already is the canonical encoding of an RFC 9396 array of objects.
    """

    request_id: str
    nonce: bytes
    details: bytes

    def __post_init__(self) -> None:
        check_id(self.request_id, "request id")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_LEN:
            raise InvalidInput(f"the approval nonce must be {NONCE_LEN} bytes")
        if not isinstance(self.details, bytes):
            raise InvalidInput("approved authorization_details must be canonical JSON bytes")
        if len(self.details) > MAX_CANONICAL_BYTES:
            raise PayloadTooLarge(f"signed JSON is limited to {MAX_CANONICAL_BYTES} bytes")
        try:
            parsed = json.loads(
                self.details,
                object_pairs_hook=_reject_duplicates,
                parse_float=_reject_number,
                parse_constant=_reject_number,
            )
        except (ValueError, RecursionError) as exc:
            raise InvalidInput("approved authorization_details are not JSON") from exc
        _check_details_shape(parsed)
        if canonical_json(parsed) != self.details:
            raise InvalidInput("approved authorization_details are not in canonical form")

    @classmethod
    def create(
        cls, request_id: str, authorization_details: Sequence[Mapping[str, Any]], nonce: bytes
    ) -> ApprovalChallenge:
        """The challenge for ``request_id`` over the approved details and the platform's nonce."""
        _check_details_shape(authorization_details)
        return cls(request_id, nonce, canonical_json(authorization_details))

    @property
    def authorization_details(self) -> list[dict[str, Any]]:
        """A fresh copy of the approved details as JSON values."""
        parsed: list[dict[str, Any]] = json.loads(self.details)
        return parsed

    def to_be_signed(self, label: bytes) -> bytes:
        """The exact bytes a signature proof of kind ``label`` covers."""
        return _lp(label, self.request_id.encode("utf-8"), self.nonce, self.details)


def _check_details_shape(value: object) -> None:
    # RFC 9396 §2: "a JSON array of JSON objects", each with a string "type".
    if not isinstance(value, list | tuple) or not value:
        raise InvalidInput("authorization_details must be a non-empty JSON array")
    for item in value:
        if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
            raise InvalidInput("each authorization_details entry must be an object with a type")
