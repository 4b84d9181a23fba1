"""Signed tree heads (RFC 9162 §4.10) and the client's checks of them.

Encoding
--------
A tree head is encoded as RFC 9162's ``TreeHeadDataV2`` (TLS presentation
language, big-endian), with no extensions::

    struct {
        uint64 timestamp;                      /* ms since the Unix epoch */
        uint64 tree_size;
        NodeHash root_hash;                    /* opaque<32..2^8-1>: 0x20 then 32 bytes */
        Extension sth_extensions<0..2^16-1>;   /* always empty: 0x0000 */
    } TreeHeadDataV2;                          /* 51 bytes */

The log signs, with Ed25519 (RFC 8032, pure), the bytes::

    "patientkey/audit/v1/tree-head"  (29 ASCII bytes: purpose and version)
    || uint8 len(log_id) || log_id   (UTF-8, 1..255 bytes)
    || TreeHeadDataV2

RFC 9162 signs ``TreeHeadDataV2`` alone and names the log by its key; the
label and the log id are added so that no other object signed with the same
key, and no head of another log, verifies as one of this log's tree heads.

On the wire (JSON, base64url without padding)::

    {"log_id": "...", "tree_size": 42, "timestamp": 1700000000000,
     "root_hash": "<32 bytes>", "signature": "<64 bytes>"}

The client's rule
-----------------
The patient's wallet keeps the last tree head it accepted and takes a new one
only through :func:`check_consistency`: both heads signed by the log, and the
new tree an extension of the old one (RFC 9162 §2.1.4). When two heads the log
signed cannot both be true — a smaller tree signed later, two roots for one
size, a larger tree signed earlier than a smaller one, or a well-formed
consistency proof that fails — it raises :class:`LogRewritten`: the log
deleted, altered or forked its history. Only the log can produce the proof, and
a valid one exists exactly when it did not rewrite, so a failing proof between
two heads it signed is evidence against it, not bad luck. A forged or
corrupted head raises the opaque :class:`~patientkey.audit.ProofInvalid`;
malformed input :class:`~patientkey.errors.InvalidInput`.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from patientkey.audit._errors import ProofInvalid, proof_failure
from patientkey.audit.merkle import (
    EMPTY_ROOT,
    HASH_LEN,
    _check_u64,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from patientkey.crypto._util import b64url_decode, b64url_encode, strict_json_loads
from patientkey.errors import InvalidInput

__all__ = [
    "MAX_STH_JSON_BYTES",
    "SIGNATURE_LEN",
    "STH_LABEL",
    "TREE_HEAD_LEN",
    "LogRewritten",
    "SignedTreeHead",
    "TreeHead",
    "check_consistency",
    "check_inclusion",
    "sign_tree_head",
    "signing_input",
    "verify_tree_head",
]

_log = logging.getLogger(__name__)

STH_LABEL: Final = b"patientkey/audit/v1/tree-head"
TREE_HEAD_LEN: Final = 8 + 8 + 1 + HASH_LEN + 2
SIGNATURE_LEN: Final = 64
MAX_LOG_ID_BYTES: Final = 255
#: A signed tree head in JSON is about 200 bytes; anything far larger is refused unread.
MAX_STH_JSON_BYTES: Final = 4096
_HEAD: Final = struct.Struct(">QQB32sH")
_JSON_KEYS: Final = frozenset({"log_id", "tree_size", "timestamp", "root_hash", "signature"})


class LogRewritten(ProofInvalid):
    """The log signed two tree heads that cannot both be true: its history was rewritten.

    Not opaque on purpose: the detail says what contradicts what, and ``old``
    and ``new`` are the two signed heads — the evidence to show the patient and
    to hand to an auditor. Nothing in them is secret.
    """

    problem = "audit-log-rewritten"
    title = "The audit log was rewritten"
    status = 502  # the log (a party we depend on) misbehaved

    def __init__(self, reason: str, *, old: SignedTreeHead, new: SignedTreeHead) -> None:
        super().__init__(reason)
        self.old = old
        self.new = new
        self.detail = (
            f"{self.title}: {reason} (accepted tree size {old.head.size}, "
            f"new tree size {new.head.size}, log {old.log_id!r})"
        )
        self.args = (self.detail,)
        self.extensions = {"old_tree_head": old.to_dict(), "new_tree_head": new.to_dict()}


def _log_id(value: object) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidInput("log id must be a non-empty string")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput("log id must be valid Unicode") from exc
    if len(raw) > MAX_LOG_ID_BYTES:
        raise InvalidInput(f"log id must be at most {MAX_LOG_ID_BYTES} bytes in UTF-8")
    return value


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A tree size, its root hash and when the log computed it (ms since the epoch)."""

    size: int
    root_hash: bytes
    timestamp_ms: int

    def __post_init__(self) -> None:
        _check_u64(self.size, "tree size")
        _check_u64(self.timestamp_ms, "timestamp")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_LEN:
            raise InvalidInput("root hash must be 32 bytes")
        if self.size == 0 and self.root_hash != EMPTY_ROOT:
            raise InvalidInput("the empty tree's root is SHA-256 of nothing")

    def encode(self) -> bytes:
        """``TreeHeadDataV2`` (51 bytes; see the module docstring)."""
        return _HEAD.pack(self.timestamp_ms, self.size, HASH_LEN, self.root_hash, 0)

    @classmethod
    def decode(cls, data: bytes) -> TreeHead:
        """Parse ``TreeHeadDataV2``; only the canonical encoding (no extensions) is accepted."""
        if not isinstance(data, bytes) or len(data) != TREE_HEAD_LEN:
            raise InvalidInput(f"a tree head is {TREE_HEAD_LEN} bytes")
        timestamp, size, hash_len, root, extensions = _HEAD.unpack(data)
        if hash_len != HASH_LEN or extensions != 0:
            raise InvalidInput("tree head: 32-byte root and no extensions expected")
        return cls(size=size, root_hash=root, timestamp_ms=timestamp)


def signing_input(log_id: str, head: TreeHead) -> bytes:
    """The bytes the log signs for ``head`` (see the module docstring)."""
    raw_id = _log_id(log_id).encode("utf-8")
    return STH_LABEL + bytes([len(raw_id)]) + raw_id + head.encode()


def _unb64url(value: object, what: str, length: int) -> bytes:
    """Strict base64url without padding, of exactly ``length`` bytes, canonical only."""
    malformed = f"{what} must be base64url without padding"
    if not isinstance(value, str):
        raise InvalidInput(malformed)
    try:
        data = b64url_decode(value)
    except ValueError as exc:
        raise InvalidInput(malformed) from exc
    if len(data) != length:
        raise InvalidInput(f"{what} must be {length} bytes in canonical base64url")
    return data


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A :class:`TreeHead` of log ``log_id`` and the log's Ed25519 signature over it."""

    log_id: str
    head: TreeHead
    signature: bytes

    def __post_init__(self) -> None:
        _log_id(self.log_id)
        if not isinstance(self.head, TreeHead):
            raise InvalidInput("head must be a TreeHead")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_LEN:
            raise InvalidInput(f"signature must be {SIGNATURE_LEN} bytes")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (see the module docstring)."""
        return {
            "log_id": self.log_id,
            "tree_size": self.head.size,
            "timestamp": self.head.timestamp_ms,
            "root_hash": b64url_encode(self.head.root_hash),
            "signature": b64url_encode(self.signature),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedTreeHead:
        """Parse the JSON object strictly: exactly the five fields, canonical encodings."""
        if not isinstance(data, Mapping) or set(data) != _JSON_KEYS:
            raise InvalidInput(f"a signed tree head has exactly the fields {sorted(_JSON_KEYS)}")
        head = TreeHead(
            size=_check_u64(data["tree_size"], "tree_size"),
            root_hash=_unb64url(data["root_hash"], "root_hash", HASH_LEN),
            timestamp_ms=_check_u64(data["timestamp"], "timestamp"),
        )
        signature = _unb64url(data["signature"], "signature", SIGNATURE_LEN)
        return cls(log_id=_log_id(data["log_id"]), head=head, signature=signature)

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedTreeHead:
        if not isinstance(text, str | bytes) or len(text) > MAX_STH_JSON_BYTES:
            raise InvalidInput(f"a signed tree head is JSON of at most {MAX_STH_JSON_BYTES} bytes")
        try:
            # Duplicate members would let two parsers read two different heads.
            data = strict_json_loads(text)
        except ValueError as exc:
            raise InvalidInput("a signed tree head must be JSON") from exc
        return cls.from_dict(data)


def sign_tree_head(key: Ed25519PrivateKey, head: TreeHead, log_id: str) -> SignedTreeHead:
    """The log signs ``head`` as log ``log_id``."""
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput("tree heads are signed with an Ed25519 key")
    if not isinstance(head, TreeHead):
        raise InvalidInput("head must be a TreeHead")
    signature = key.sign(signing_input(log_id, head))
    return SignedTreeHead(log_id=log_id, head=head, signature=signature)


def verify_tree_head(public_key: Ed25519PublicKey, sth: SignedTreeHead) -> None:
    """Check the log's signature on ``sth``; raise :class:`ProofInvalid` unless it holds."""
    if not isinstance(public_key, Ed25519PublicKey):
        raise InvalidInput("tree heads are verified with an Ed25519 public key")
    if not isinstance(sth, SignedTreeHead):
        raise InvalidInput("sth must be a SignedTreeHead")
    try:
        public_key.verify(sth.signature, signing_input(sth.log_id, sth.head))
    except InvalidSignature as exc:
        raise proof_failure(_log, "tree head: bad signature") from exc


def _check_shape(proof: Sequence[bytes], expected: int, what: str) -> list[bytes]:
    """A proof of the length its sizes imply, of 32-byte hashes; else malformed input."""
    if isinstance(proof, bytes | str) or not isinstance(proof, Sequence):
        raise InvalidInput(f"{what} proof must be a list of hashes")
    items = list(proof)
    if len(items) != expected or not all(
        isinstance(h, bytes) and len(h) == HASH_LEN for h in items
    ):
        raise InvalidInput(f"{what} proof must be {expected} hashes of 32 bytes")
    return items


def check_consistency(
    old: SignedTreeHead,
    new: SignedTreeHead,
    proof: Sequence[bytes],
    public_key: Ed25519PublicKey,
) -> None:
    """Accept ``new`` after ``old`` only if both are signed and the log only grew.

    Raises :class:`ProofInvalid` if a signature fails, :class:`LogRewritten` if
    the two signed heads contradict each other (see the module docstring), and
    :class:`~patientkey.errors.InvalidInput` for a head of another log, a new
    head older than ``old`` (a stale view, not a rewrite) or a malformed proof.
    """
    verify_tree_head(public_key, old)
    verify_tree_head(public_key, new)
    if old.log_id != new.log_id:
        raise InvalidInput("the tree heads belong to different logs")
    a, b = old.head, new.head
    if b.size < a.size:
        if b.timestamp_ms >= a.timestamp_ms:
            raise LogRewritten(
                "a smaller tree was signed later: entries were deleted", old=old, new=new
            )
        raise InvalidInput("the new tree head is older than the accepted one")
    if b.size == a.size:
        _check_shape(proof, 0, "consistency")
        if b.root_hash != a.root_hash:
            raise LogRewritten("two different trees of the same size were signed", old=old, new=new)
        return
    if b.timestamp_ms < a.timestamp_ms:
        raise LogRewritten("a larger tree was signed before a smaller one", old=old, new=new)
    items = _check_shape(proof, len(consistency_ranges(a.size, b.size)), "consistency")
    try:
        verify_consistency(a.size, b.size, a.root_hash, b.root_hash, items)
    except ProofInvalid as exc:
        raise LogRewritten(
            "the new tree does not extend the accepted one: entries were altered or removed",
            old=old,
            new=new,
        ) from exc


def check_inclusion(
    sth: SignedTreeHead,
    entry: bytes,
    index: int,
    proof: Sequence[bytes],
    public_key: Ed25519PublicKey,
) -> None:
    """Check that ``entry`` is leaf ``index`` of the signed tree ``sth``.

    Raises :class:`ProofInvalid` if the head's signature fails,
    :class:`~patientkey.errors.InvalidInput` for an index beyond the tree or a
    malformed proof, and :class:`ProofInvalid` if a well-formed proof does not
    hold: the entry as served is not what the log holds at ``index``.
    """
    verify_tree_head(public_key, sth)
    if not isinstance(entry, bytes):
        raise InvalidInput("a log entry is bytes")
    _check_u64(index, "leaf index")
    if index >= sth.head.size:
        raise InvalidInput("leaf index beyond the signed tree")
    items = _check_shape(proof, len(inclusion_ranges(index, sth.head.size)), "inclusion")
    verify_inclusion(leaf_hash(entry), index, sth.head.size, items, sth.head.root_hash)
