"""Bind proof of DESIGN op 1: binding a platform account to a HIS patient.

Wallet → platform → HIS: ``Patient_ID, HIS_ID, User_ID, n, proof`` with::

    proof = HMAC-SHA256(KUH, lp("patientkey/bind/v1/proof", Patient_ID, n, HIS_ID, User_ID))

(``lp`` = each part preceded by its 4-byte big-endian length; RFC 2104 HMAC.)
The HIS recomputes it and compares in constant time, then answers with the
mutual-authentication reply ``{f(n)}KUH``::

    f(n)  = SHA-256(lp("patientkey/bind/v1/f", n))
    K_r   = HKDF-SHA256(KUH, salt=none, info="patientkey/bind/v1/reply-key", L=32)
    reply = iv (12) || AES-256-GCM(K_r, iv, f(n), aad = lp("patientkey/bind/v1/reply",
                                                      Patient_ID, HIS_ID, User_ID, n))

which the wallet checks. The platform relays both and sees ``n``, the proof
and the reply, i.e. known MAC and AEAD outputs under KUH; the only protection
against testing KUH guesses offline is KUH's entropy, so KUH must be at least
256 bits from a CSPRNG (enforced: 32 to 64 bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from patientkey.crypto._util import (
    check_bytes,
    check_id,
    check_key,
    crypto_failure,
    hkdf_sha256,
    lp,
    random_or,
)
from patientkey.errors import InvalidInput

__all__ = [
    "BIND_NONCE_LEN",
    "BIND_PROOF_LEN",
    "BIND_REPLY_LEN",
    "check_bind_reply",
    "make_bind_proof",
    "make_bind_reply",
    "new_bind_nonce",
    "verify_bind_proof",
]

_log = logging.getLogger(__name__)

BIND_NONCE_LEN: Final = 32
BIND_PROOF_LEN: Final = 32
_IV_LEN: Final = 12
BIND_REPLY_LEN: Final = _IV_LEN + 32 + 16
_PROOF_LABEL: Final = b"patientkey/bind/v1/proof"
_F_LABEL: Final = b"patientkey/bind/v1/f"
_REPLY_KEY_INFO: Final = b"patientkey/bind/v1/reply-key"
_REPLY_AAD_LABEL: Final = b"patientkey/bind/v1/reply"


def new_bind_nonce() -> bytes:
    """A fresh 32-byte nonce ``n`` from the operating system's CSPRNG."""
    return os.urandom(BIND_NONCE_LEN)


def _kuh(kuh: bytes) -> bytes:
    return check_key(kuh, "KUH", min_len=32, max_len=64)


def _nonce(nonce: bytes) -> bytes:
    raw = check_bytes(nonce, "nonce")
    if len(raw) != BIND_NONCE_LEN:
        raise InvalidInput(f"bind nonce must be {BIND_NONCE_LEN} bytes")
    return raw


def _ids(patient_id: str, his_id: str, user_id: str) -> tuple[bytes, bytes, bytes]:
    return (
        check_id(patient_id, "Patient_ID").encode("utf-8"),
        check_id(his_id, "HIS_ID").encode("utf-8"),
        check_id(user_id, "User_ID").encode("utf-8"),
    )


def make_bind_proof(
    kuh: bytes, *, patient_id: str, his_id: str, user_id: str, nonce: bytes
) -> bytes:
    """The 32-byte proof ``MAC(KUH, Patient_ID ‖ n ‖ HIS_ID ‖ User_ID)`` (wallet side)."""
    pid, his, user = _ids(patient_id, his_id, user_id)
    message = lp(_PROOF_LABEL, pid, _nonce(nonce), his, user)
    return hmac.digest(_kuh(kuh), message, "sha256")


def verify_bind_proof(
    kuh: bytes, proof: bytes, *, patient_id: str, his_id: str, user_id: str, nonce: bytes
) -> None:
    """Recompute and compare in constant time (HIS side); :class:`CryptoError` on mismatch."""
    expected = make_bind_proof(
        kuh, patient_id=patient_id, his_id=his_id, user_id=user_id, nonce=nonce
    )
    if not isinstance(proof, bytes) or not hmac.compare_digest(expected, proof):
        raise crypto_failure(_log, "bind: proof mismatch")


def _f(nonce: bytes) -> bytes:
    return hashlib.sha256(lp(_F_LABEL, nonce)).digest()


def _reply_parts(
    kuh: bytes, patient_id: str, his_id: str, user_id: str, nonce: bytes
) -> tuple[AESGCM, bytes, bytes]:
    pid, his, user = _ids(patient_id, his_id, user_id)
    n = _nonce(nonce)
    aead = AESGCM(hkdf_sha256(_kuh(kuh), _REPLY_KEY_INFO))
    return aead, _f(n), lp(_REPLY_AAD_LABEL, pid, his, user, n)


def make_bind_reply(
    kuh: bytes,
    *,
    patient_id: str,
    his_id: str,
    user_id: str,
    nonce: bytes,
    _iv: bytes | None = None,
) -> bytes:
    """The HIS's 60-byte reply ``{f(n)}KUH``. ``_iv`` is for known-answer vectors only."""
    aead, fn, aad = _reply_parts(kuh, patient_id, his_id, user_id, nonce)
    iv = random_or(_iv, _IV_LEN, "iv")
    return iv + aead.encrypt(iv, fn, aad)


def check_bind_reply(
    kuh: bytes, reply: bytes, *, patient_id: str, his_id: str, user_id: str, nonce: bytes
) -> None:
    """The wallet's check of the reply; :class:`CryptoError` unless it is ``{f(n)}KUH``."""
    aead, fn, aad = _reply_parts(kuh, patient_id, his_id, user_id, nonce)
    if not isinstance(reply, bytes) or len(reply) != BIND_REPLY_LEN:
        raise crypto_failure(_log, "bind: reply has the wrong length")
    try:
        got = aead.decrypt(reply[:_IV_LEN], reply[_IV_LEN:], aad)
    except InvalidTag as exc:
        raise crypto_failure(_log, "bind: reply authentication failed") from exc
    if not hmac.compare_digest(got, fn):
        raise crypto_failure(_log, "bind: reply does not answer this nonce")
