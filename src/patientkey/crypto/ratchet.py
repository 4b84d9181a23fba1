"""Key-change recipes: KUH rotation (DESIGN.md op 2) and the KUB ratchet (op 4).

KUH rotation, two-phase (see ``patientkey.protocol.states``):

* ``wrap_rotation_key``: ``{KUH_new}KUH_cur`` — AES key wrap (RFC 3394) of the
  new key under ``HKDF(KUH_cur, label ‖ ids ‖ versions ‖ nonce)``, so the
  wrapped key only unwraps for this patient, hospital, user and version step.
* ``rotation_ack``: the HIS's proof that it holds KUH_new,
  ``HMAC(KUH_new, "ack" ‖ ids ‖ version ‖ nonce)``.
* ``rotation_commit``: the wallet's instruction to switch, a MAC under KUH_new
  with a distinct label (an ack can never pass as a commit).

KUB ratchet: each share carries the *next* KUB wrapped for the third party —
by HPKE to its public key the first time (or after a reset), then by AES key
wrap under ``HKDF(KUB_v, label ‖ ids ‖ v)``.

Every check failure is the one opaque :class:`~patientkey.errors.CryptoError`.
"""

from __future__ import annotations

import hmac
import logging
from typing import Final

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from patientkey.crypto._util import check_id, check_key, crypto_failure, hkdf_sha256, lp
from patientkey.crypto.hpke import HpkeKeyPair, HpkePublicKey, hpke_unwrap, hpke_wrap
from patientkey.errors import InvalidInput

__all__ = [
    "ROTATION_WRAP_LEN",
    "RotationContext",
    "ShareContext",
    "rotation_ack",
    "rotation_commit",
    "unwrap_next_kub",
    "unwrap_rotation_key",
    "verify_rotation_ack",
    "verify_rotation_commit",
    "wrap_next_kub",
    "wrap_rotation_key",
]

_log = logging.getLogger(__name__)

ROTATION_WRAP_LEN: Final = 40  # RFC 3394 output for a 32-byte key
_WRAP_LABEL: Final = b"patientkey/rotate/v1/wrap"
_ACK_LABEL: Final = b"patientkey/rotate/v1/ack"
_COMMIT_LABEL: Final = b"patientkey/rotate/v1/commit"
_KUB_WRAP_LABEL: Final = b"patientkey/kub/v1/next"


class RotationContext:
    """What a rotation is bound to: patient, hospital, user, version step, nonce."""

    __slots__ = ("_bytes", "new_version")

    def __init__(
        self,
        *,
        patient_id: str,
        his_id: str,
        user_id: str,
        current_version: int,
        new_version: int,
        nonce: bytes,
    ) -> None:
        if not 1 <= current_version < new_version < 2**31:
            raise InvalidInput("rotation needs 1 <= current_version < new_version")
        if not isinstance(nonce, bytes) or len(nonce) != 32:
            raise InvalidInput("rotation nonce must be 32 bytes")
        self.new_version = new_version
        self._bytes = lp(
            check_id(patient_id, "Patient_ID").encode(),
            check_id(his_id, "HIS_ID").encode(),
            check_id(user_id, "User_ID").encode(),
            current_version.to_bytes(4, "big"),
            new_version.to_bytes(4, "big"),
            nonce,
        )

    def __bytes__(self) -> bytes:
        return self._bytes


def _key(key: bytes, what: str) -> bytes:
    return check_key(key, what, min_len=32, max_len=32)


def wrap_rotation_key(kuh_current: bytes, kuh_new: bytes, ctx: RotationContext) -> bytes:
    """``{KUH_new}KUH_cur``, 40 bytes (wallet side)."""
    kek = hkdf_sha256(_key(kuh_current, "KUH"), lp(_WRAP_LABEL, bytes(ctx)))
    return aes_key_wrap(kek, _key(kuh_new, "new KUH"))


def unwrap_rotation_key(kuh_current: bytes, wrapped: bytes, ctx: RotationContext) -> bytes:
    """The new KUH (HIS side); CryptoError if the wrap does not verify."""
    kek = hkdf_sha256(_key(kuh_current, "KUH"), lp(_WRAP_LABEL, bytes(ctx)))
    if not isinstance(wrapped, bytes) or len(wrapped) != ROTATION_WRAP_LEN:
        raise crypto_failure(_log, "rotate: wrapped key has the wrong length")
    try:
        return aes_key_unwrap(kek, wrapped)
    except InvalidUnwrap as exc:
        raise crypto_failure(_log, "rotate: wrapped key does not unwrap") from exc


def _mac(label: bytes, kuh_new: bytes, ctx: RotationContext) -> bytes:
    return hmac.digest(_key(kuh_new, "new KUH"), lp(label, bytes(ctx)), "sha256")


def rotation_ack(kuh_new: bytes, ctx: RotationContext) -> bytes:
    """HIS → wallet: proof of holding KUH_new (32 bytes)."""
    return _mac(_ACK_LABEL, kuh_new, ctx)


def verify_rotation_ack(kuh_new: bytes, ack: bytes, ctx: RotationContext) -> None:
    if not isinstance(ack, bytes) or not hmac.compare_digest(_mac(_ACK_LABEL, kuh_new, ctx), ack):
        raise crypto_failure(_log, "rotate: ack does not verify")


def rotation_commit(kuh_new: bytes, ctx: RotationContext) -> bytes:
    """Wallet → HIS: switch to KUH_new (32 bytes)."""
    return _mac(_COMMIT_LABEL, kuh_new, ctx)


def verify_rotation_commit(kuh_new: bytes, proof: bytes, ctx: RotationContext) -> None:
    expected = _mac(_COMMIT_LABEL, kuh_new, ctx)
    if not isinstance(proof, bytes) or not hmac.compare_digest(expected, proof):
        raise crypto_failure(_log, "rotate: commit does not verify")


class ShareContext:
    """What a KUB hand-over is bound to: user, third party, the record, the version step."""

    __slots__ = ("_bytes",)

    def __init__(
        self, *, user_id: str, b_id: str, his_id: str, p_id: str, next_version: int
    ) -> None:
        if not 1 <= next_version < 2**31:
            raise InvalidInput("KUB version out of range")
        self._bytes = lp(
            check_id(user_id, "User_ID").encode(),
            check_id(b_id, "B_ID").encode(),
            check_id(his_id, "HIS_ID").encode(),
            check_id(p_id, "P_ID").encode(),
            next_version.to_bytes(4, "big"),
        )

    def __bytes__(self) -> bytes:
        return self._bytes


def wrap_next_kub(wrapping: bytes | HpkePublicKey, next_kub: bytes, ctx: ShareContext) -> bytes:
    """KUB_{v+1} for the third party: HPKE to its public key, or AES-KW under KUB_v."""
    kub = _key(next_kub, "next KUB")
    info = lp(_KUB_WRAP_LABEL, bytes(ctx))
    if isinstance(wrapping, HpkePublicKey):
        return hpke_wrap(wrapping, kub, info)
    return aes_key_wrap(hkdf_sha256(_key(wrapping, "KUB"), info), kub)


def unwrap_next_kub(unwrapping: bytes | HpkeKeyPair, blob: bytes, ctx: ShareContext) -> bytes:
    """Third-party side of :func:`wrap_next_kub`; CryptoError on any failure."""
    info = lp(_KUB_WRAP_LABEL, bytes(ctx))
    if isinstance(unwrapping, HpkeKeyPair):
        kub = hpke_unwrap(unwrapping, blob, info)
    else:
        if not isinstance(blob, bytes) or len(blob) != ROTATION_WRAP_LEN:
            raise crypto_failure(_log, "kub: wrapped key has the wrong length")
        try:
            kub = aes_key_unwrap(hkdf_sha256(_key(unwrapping, "KUB"), info), blob)
        except InvalidUnwrap as exc:
            raise crypto_failure(_log, "kub: wrapped key does not unwrap") from exc
    if len(kub) != 32:
        raise crypto_failure(_log, "kub: unwrapped key has the wrong length")
    return kub
