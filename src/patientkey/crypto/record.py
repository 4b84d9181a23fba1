"""Sealed record: what the platform stores (blind storage).

The body is encrypted once, under a random 32-byte per-record DEK, with the
record's :class:`~patientkey.crypto.Suite`; the DEK is wrapped separately for
each recipient:

* symmetric recipients (KUH, KUB; ``alg`` ``A256KW``): AES Key Wrap
  (RFC 3394) under ``KEK = HKDF-SHA256(recipient key, info=binding)``;
* public-key recipients (a third party's KBP; ``alg``
  ``HPKE-MLKEM768X25519-SHA256-A256GCM``): HPKE (RFC 9180) with
  ``info = SHA-256(binding)``;

where ``binding`` length-prefixes the format version, ``alg``, suite, record
id, owner, recipient ``kid`` and key version, so a wrapped key moved to
another record, owner, recipient or key version does not unwrap. The
protected header (format version, suite, record id, owner, key commitment)
is the body's AEAD associated data. The header's key commitment ``kc`` makes
every recipient see the same DEK, hence the same body.

Adding or removing a recipient, or re-wrapping for a rotated key, never
touches the body bytes. The layout follows JWE General JSON Serialization
(RFC 7516 §7.2.1) but is not JWE: joserfc has neither ML-KEM HPKE nor SM4.
Byte-level spec: ``docs/formats.md``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from patientkey.crypto._suites import NONCE_LEN, TAG_LEN, Suite, aead_decrypt, aead_encrypt
from patientkey.crypto._util import (
    b64url_decode,
    b64url_encode,
    check_bytes,
    check_id,
    check_key,
    compact_json,
    crypto_failure,
    hkdf_sha256,
    lp,
    random_or,
    strict_json_loads,
)
from patientkey.crypto.hpke import (
    HPKE_OVERHEAD,
    HPKE_SUITE_NAME,
    HpkeKeyPair,
    HpkePublicKey,
    hpke_unwrap,
    hpke_wrap,
)
from patientkey.errors import CryptoError, InvalidInput, PayloadTooLarge

__all__ = [
    "ALG_A256KW",
    "ALG_HPKE",
    "DEK_LEN",
    "MAX_BODY_BYTES",
    "MAX_RECIPIENTS",
    "MAX_RECORD_BYTES",
    "RECORD_FORMAT_VERSION",
    "PublicRecipient",
    "Recipient",
    "RecipientEntry",
    "RecordHeader",
    "SealedRecord",
    "SymmetricRecipient",
    "add_recipient",
    "decrypt_body",
    "open_record",
    "remove_recipient",
    "seal_record",
    "unwrap_dek",
]

_log = logging.getLogger(__name__)

RECORD_FORMAT_VERSION: Final = 1
ALG_A256KW: Final = "A256KW"
ALG_HPKE: Final = HPKE_SUITE_NAME
DEK_LEN: Final = 32
MAX_BODY_BYTES: Final = 32 * 1024 * 1024
MAX_RECORD_BYTES: Final = 48 * 1024 * 1024
MAX_RECIPIENTS: Final = 64
MAX_KEY_VERSION: Final = 2**31 - 1
MIN_SYMMETRIC_KEY: Final = 32
MAX_SYMMETRIC_KEY: Final = 64
_MAX_PROTECTED_CHARS: Final = 4096
_A256KW_LEN: Final = DEK_LEN + 8
_HPKE_WRAPPED_LEN: Final = HPKE_OVERHEAD + DEK_LEN
_HEADER_KEYS: Final = ("v", "enc", "rid", "own", "kc")
_RECORD_KEYS: Final = frozenset({"protected", "recipients", "iv", "ciphertext", "tag"})
_WRAP_LABEL: Final = b"patientkey/record/v1/dek-wrap"
_BODY_KEY_INFO: Final = b"patientkey/record/v1/body-key"
_COMMIT_INFO: Final = b"patientkey/record/v1/key-commitment"


# --------------------------------------------------------------------------- recipients


@dataclass(frozen=True, slots=True)
class SymmetricRecipient:
    """A recipient holding a symmetric key (KUH or KUB) of version ``version``."""

    kid: str
    version: int
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_id(self.kid, "kid")
        _check_version(self.version)
        check_key(self.key, "recipient key", min_len=MIN_SYMMETRIC_KEY, max_len=MAX_SYMMETRIC_KEY)


@dataclass(frozen=True, slots=True)
class PublicRecipient:
    """A recipient with an HPKE public key (a third party's KBP)."""

    kid: str
    public_key: HpkePublicKey

    def __post_init__(self) -> None:
        check_id(self.kid, "kid")
        if not isinstance(self.public_key, HpkePublicKey):
            raise InvalidInput("public_key must be an HpkePublicKey")


Recipient = SymmetricRecipient | PublicRecipient


@dataclass(frozen=True, slots=True)
class RecipientEntry:
    """One wrapped copy of the DEK: ``alg``, ``kid``, key version (``None`` for HPKE)."""

    alg: str
    kid: str
    version: int | None
    encrypted_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_id(self.kid, "kid")
        if self.alg == ALG_A256KW:
            if self.version is None:
                raise InvalidInput("A256KW recipient needs a key version")
            _check_version(self.version)
            expected = _A256KW_LEN
        elif self.alg == ALG_HPKE:
            if self.version is not None:
                raise InvalidInput("HPKE recipient has no key version")
            expected = _HPKE_WRAPPED_LEN
        else:
            raise InvalidInput("unknown recipient alg")
        if not isinstance(self.encrypted_key, bytes) or len(self.encrypted_key) != expected:
            raise InvalidInput(f"{self.alg} encrypted_key must be {expected} bytes")

    def _to_json(self) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": self.alg, "kid": self.kid}
        if self.version is not None:
            header["kv"] = self.version
        return {"header": header, "encrypted_key": b64url_encode(self.encrypted_key)}


def _check_version(version: object) -> int:
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidInput("key version must be an integer")
    if not 0 <= version <= MAX_KEY_VERSION:
        raise InvalidInput(f"key version must be 0 to {MAX_KEY_VERSION}")
    return version


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """The decoded protected header."""

    version: int
    suite: Suite
    record_id: str
    owner: str
    commitment: bytes = field(repr=False)


def _decode_protected(protected: str) -> RecordHeader:
    if not isinstance(protected, str) or len(protected) > _MAX_PROTECTED_CHARS:
        raise InvalidInput("record protected header missing or too large")
    try:
        obj = strict_json_loads(b64url_decode(protected))
    except ValueError as exc:
        raise InvalidInput("record protected header is not base64url JSON") from exc
    if not isinstance(obj, dict) or tuple(sorted(obj)) != tuple(sorted(_HEADER_KEYS)):
        raise InvalidInput("record protected header members are not v, enc, rid, own, kc")
    if type(obj["v"]) is not int or obj["v"] != RECORD_FORMAT_VERSION:
        raise InvalidInput("unsupported record format version")
    try:
        suite = Suite(obj["enc"])
    except ValueError as exc:
        raise InvalidInput("unknown record suite") from exc
    try:
        commitment = b64url_decode(obj["kc"]) if isinstance(obj["kc"], str) else b""
    except ValueError as exc:
        raise InvalidInput("record key commitment is not base64url") from exc
    if len(commitment) != 32:
        raise InvalidInput("record key commitment must be 32 bytes")
    return RecordHeader(
        version=RECORD_FORMAT_VERSION,
        suite=suite,
        record_id=check_id(obj["rid"], "record id"),
        owner=check_id(obj["own"], "owner"),
        commitment=commitment,
    )


def _encode_protected(suite: Suite, record_id: str, owner: str, commitment: bytes) -> str:
    header = {
        "v": RECORD_FORMAT_VERSION,
        "enc": suite.value,
        "rid": record_id,
        "own": owner,
        "kc": b64url_encode(commitment),
    }
    return b64url_encode(compact_json(header))


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """An encrypted record with its recipients. Immutable; validated on construction.

    ``protected`` is the base64url protected header exactly as authenticated;
    ``header`` is its decoded form (``record_id``, ``owner``, ``suite`` are
    shortcuts to it).
    """

    protected: str
    iv: bytes
    ciphertext: bytes = field(repr=False)
    tag: bytes
    recipients: tuple[RecipientEntry, ...]
    header: RecordHeader = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "header", _decode_protected(self.protected))
        if not isinstance(self.iv, bytes) or len(self.iv) != NONCE_LEN:
            raise InvalidInput(f"record iv must be {NONCE_LEN} bytes")
        if not isinstance(self.tag, bytes) or len(self.tag) != TAG_LEN:
            raise InvalidInput(f"record tag must be {TAG_LEN} bytes")
        if not isinstance(self.ciphertext, bytes) or len(self.ciphertext) > MAX_BODY_BYTES:
            raise InvalidInput(f"record ciphertext must be bytes of at most {MAX_BODY_BYTES}")
        if not isinstance(self.recipients, tuple) or not all(
            isinstance(r, RecipientEntry) for r in self.recipients
        ):
            raise InvalidInput("recipients must be a tuple of RecipientEntry")
        if not 1 <= len(self.recipients) <= MAX_RECIPIENTS:
            raise InvalidInput(f"a record has 1 to {MAX_RECIPIENTS} recipients")
        names = {(r.kid, r.version) for r in self.recipients}
        if len(names) != len(self.recipients):
            raise InvalidInput("duplicate recipient (kid, key version)")

    @property
    def record_id(self) -> str:
        return self.header.record_id

    @property
    def owner(self) -> str:
        return self.header.owner

    @property
    def suite(self) -> Suite:
        return self.header.suite

    def entries_for(self, kid: str, version: int | None = None) -> tuple[RecipientEntry, ...]:
        """The recipient entries for ``kid`` (and ``version`` if given)."""
        return tuple(
            r for r in self.recipients if r.kid == kid and (version is None or r.version == version)
        )

    def to_bytes(self) -> bytes:
        """Compact JSON, UTF-8 (ASCII): see ``docs/formats.md``."""
        return compact_json(
            {
                "protected": self.protected,
                "recipients": [r._to_json() for r in self.recipients],
                "iv": b64url_encode(self.iv),
                "ciphertext": b64url_encode(self.ciphertext),
                "tag": b64url_encode(self.tag),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes | str) -> SealedRecord:
        """Strict, bounded parse; :class:`InvalidInput` for anything malformed."""
        if not isinstance(data, bytes | bytearray | str):
            raise InvalidInput("record must be bytes")
        if len(data) > MAX_RECORD_BYTES:
            raise PayloadTooLarge(f"record exceeds {MAX_RECORD_BYTES} bytes")
        try:
            obj = strict_json_loads(data)
        except ValueError as exc:
            raise InvalidInput("record is not JSON") from exc
        if not isinstance(obj, dict) or obj.keys() != _RECORD_KEYS:
            raise InvalidInput("record members must be protected, recipients, iv, ciphertext, tag")
        raw_recipients = obj["recipients"]
        if not isinstance(raw_recipients, list) or not 1 <= len(raw_recipients) <= MAX_RECIPIENTS:
            raise InvalidInput(f"record recipients must be a list of 1 to {MAX_RECIPIENTS}")
        return cls(
            protected=obj["protected"],
            iv=_field_bytes(obj, "iv"),
            ciphertext=_field_bytes(obj, "ciphertext"),
            tag=_field_bytes(obj, "tag"),
            recipients=tuple(_parse_entry(r) for r in raw_recipients),
        )


def _field_bytes(obj: dict[str, Any], name: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str):
        raise InvalidInput(f"record member {name} must be a base64url string")
    try:
        return b64url_decode(value)
    except ValueError as exc:
        raise InvalidInput(f"record member {name} is not base64url") from exc


def _parse_entry(raw: object) -> RecipientEntry:
    if not isinstance(raw, dict) or raw.keys() != {"header", "encrypted_key"}:
        raise InvalidInput("recipient members must be header, encrypted_key")
    header = raw["header"]
    if not isinstance(header, dict):
        raise InvalidInput("recipient header must be an object")
    alg = header.get("alg")
    expected = {"alg", "kid", "kv"} if alg == ALG_A256KW else {"alg", "kid"}
    if header.keys() != expected:
        raise InvalidInput("recipient header members must be alg, kid (and kv for A256KW)")
    return RecipientEntry(
        alg=check_id(alg, "recipient alg", 64),
        kid=check_id(header["kid"], "kid"),
        version=_check_version(header["kv"]) if "kv" in header else None,
        encrypted_key=_field_bytes(raw, "encrypted_key"),
    )


# --------------------------------------------------------------------------- key schedule


def _binding(alg: str, header: RecordHeader, kid: str, version: int | None) -> bytes:
    return lp(
        _WRAP_LABEL,
        str(header.version).encode("ascii"),
        alg.encode("utf-8"),
        header.suite.value.encode("utf-8"),
        header.record_id.encode("utf-8"),
        header.owner.encode("utf-8"),
        kid.encode("utf-8"),
        b"" if version is None else str(version).encode("ascii"),
    )


def _hpke_info(binding: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(binding)
    return digest.finalize()


def _body_key(dek: bytes) -> bytes:
    return hkdf_sha256(dek, _BODY_KEY_INFO)


def _commitment(dek: bytes) -> bytes:
    return hkdf_sha256(dek, _COMMIT_INFO)


def _wrap(header: RecordHeader, dek: bytes, recipient: Recipient) -> RecipientEntry:
    if isinstance(recipient, SymmetricRecipient):
        binding = _binding(ALG_A256KW, header, recipient.kid, recipient.version)
        kek = hkdf_sha256(recipient.key, binding)
        return RecipientEntry(ALG_A256KW, recipient.kid, recipient.version, aes_key_wrap(kek, dek))
    if isinstance(recipient, PublicRecipient):
        binding = _binding(ALG_HPKE, header, recipient.kid, None)
        blob = hpke_wrap(recipient.public_key, dek, _hpke_info(binding))
        return RecipientEntry(ALG_HPKE, recipient.kid, None, blob)
    raise InvalidInput("recipient must be a SymmetricRecipient or PublicRecipient")


def _check_record(record: object) -> SealedRecord:
    if not isinstance(record, SealedRecord):
        raise InvalidInput("record must be a SealedRecord")
    return record


def _check_dek(record: SealedRecord, dek: bytes) -> None:
    if not hmac.compare_digest(_commitment(dek), record.header.commitment):
        raise crypto_failure(_log, "record: DEK does not match the key commitment")


# --------------------------------------------------------------------------- public API


def seal_record(
    *,
    record_id: str,
    owner: str,
    body: bytes,
    recipients: Sequence[Recipient],
    suite: Suite = Suite.A256GCM,
    _dek: bytes | None = None,
    _iv: bytes | None = None,
) -> SealedRecord:
    """Encrypt ``body`` once under a fresh DEK and wrap the DEK for each recipient.

    ``_dek`` and ``_iv`` are for known-answer vectors only.
    """
    check_id(record_id, "record id")
    check_id(owner, "owner")
    plaintext = check_bytes(body, "body")
    if len(plaintext) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"record body exceeds {MAX_BODY_BYTES} bytes")
    if not isinstance(suite, Suite):
        raise InvalidInput("suite must be a Suite")
    recipient_list = list(recipients)
    if not 1 <= len(recipient_list) <= MAX_RECIPIENTS:
        raise InvalidInput(f"a record has 1 to {MAX_RECIPIENTS} recipients")
    dek = random_or(_dek, DEK_LEN, "dek")
    iv = random_or(_iv, NONCE_LEN, "iv")
    protected = _encode_protected(suite, record_id, owner, _commitment(dek))
    header = _decode_protected(protected)
    sealed = aead_encrypt(suite, _body_key(dek), iv, plaintext, protected.encode("ascii"))
    return SealedRecord(
        protected=protected,
        iv=iv,
        ciphertext=sealed[:-TAG_LEN],
        tag=sealed[-TAG_LEN:],
        recipients=tuple(_wrap(header, dek, r) for r in recipient_list),
    )


def unwrap_dek(
    record: SealedRecord,
    *,
    kid: str,
    key: bytes | HpkeKeyPair,
    version: int | None = None,
) -> bytes:
    """Recover the record's DEK as recipient ``kid`` (key version ``version`` if given).

    ``key`` is the symmetric key (KUH/KUB) or the HPKE key pair (KBS). With
    ``version=None`` every entry for ``kid`` is tried. :class:`CryptoError` if
    no entry opens.
    """
    record = _check_record(record)
    check_id(kid, "kid")
    if isinstance(key, HpkeKeyPair):
        alg = ALG_HPKE
    else:
        check_key(key, "recipient key", min_len=MIN_SYMMETRIC_KEY, max_len=MAX_SYMMETRIC_KEY)
        alg = ALG_A256KW
    entries = [e for e in record.entries_for(kid, version) if e.alg == alg]
    if not entries:
        raise crypto_failure(_log, "record: no recipient entry for this kid, version and key type")
    for entry in entries:
        binding = _binding(alg, record.header, entry.kid, entry.version)
        try:
            if isinstance(key, HpkeKeyPair):
                dek = hpke_unwrap(key, entry.encrypted_key, _hpke_info(binding))
            else:
                dek = aes_key_unwrap(hkdf_sha256(key, binding), entry.encrypted_key)
        except (CryptoError, InvalidUnwrap, ValueError):
            continue
        if len(dek) == DEK_LEN:
            _check_dek(record, dek)
            return dek
    raise crypto_failure(_log, "record: DEK unwrap failed")


def decrypt_body(record: SealedRecord, dek: bytes) -> bytes:
    """Decrypt the body with an already unwrapped DEK; :class:`CryptoError` on failure."""
    record = _check_record(record)
    dek = check_key(dek, "DEK")
    _check_dek(record, dek)
    try:
        return aead_decrypt(
            record.suite,
            _body_key(dek),
            record.iv,
            record.ciphertext + record.tag,
            record.protected.encode("ascii"),
        )
    except InvalidTag as exc:
        raise crypto_failure(_log, "record: body authentication failed") from exc


def open_record(
    record: SealedRecord,
    *,
    kid: str,
    key: bytes | HpkeKeyPair,
    version: int | None = None,
) -> bytes:
    """Unwrap the DEK as recipient ``kid`` and decrypt the body."""
    return decrypt_body(record, unwrap_dek(record, kid=kid, key=key, version=version))


def add_recipient(record: SealedRecord, dek: bytes, recipient: Recipient) -> SealedRecord:
    """A copy of ``record`` with the DEK also wrapped for ``recipient``; body untouched.

    ``dek`` must be this record's DEK (checked against the key commitment).
    """
    record = _check_record(record)
    dek = check_key(dek, "DEK")
    _check_dek(record, dek)
    entry = _wrap(record.header, dek, recipient)
    if record.entries_for(entry.kid, entry.version):
        raise InvalidInput("record already has this recipient (kid, key version)")
    return SealedRecord(
        protected=record.protected,
        iv=record.iv,
        ciphertext=record.ciphertext,
        tag=record.tag,
        recipients=(*record.recipients, entry),
    )


def remove_recipient(record: SealedRecord, kid: str, version: int | None = None) -> SealedRecord:
    """A copy of ``record`` without ``kid``'s entries (of ``version`` if given); body as is."""
    record = _check_record(record)
    remove = set(record.entries_for(kid, version))
    if not remove:
        raise InvalidInput("record has no such recipient")
    kept = tuple(r for r in record.recipients if r not in remove)
    if not kept:
        raise InvalidInput("a record keeps at least one recipient")
    return SealedRecord(
        protected=record.protected,
        iv=record.iv,
        ciphertext=record.ciphertext,
        tag=record.tag,
        recipients=kept,
    )
