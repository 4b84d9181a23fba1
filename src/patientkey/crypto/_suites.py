"""AEAD suites of sealed records (private; :class:`Suite` is re-exported).

Both suites take a 32-byte key, a 12-byte nonce and associated data and
produce ``ciphertext || 16-byte tag``:

``A256GCM``
    AES-256-GCM (NIST SP 800-38D) via ``cryptography``'s ``AESGCM``.
``SM4GCM-SM3``
    The GM/T suite: SM4 (GB/T 32907) in GCM mode with a 128-bit SM4 key
    derived from the 32-byte suite key by HKDF (RFC 5869) with SM3
    (GB/T 32905), empty salt, info ``b"patientkey/sm4gcm-sm3"``.
"""

from __future__ import annotations

import enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KEY_LEN", "NONCE_LEN", "TAG_LEN", "Suite", "aead_decrypt", "aead_encrypt"]

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
_SM4_INFO = b"patientkey/sm4gcm-sm3"


class Suite(enum.StrEnum):
    """Content-encryption suite of a sealed record (the header's ``enc`` value)."""

    A256GCM = "A256GCM"
    SM4GCM_SM3 = "SM4GCM-SM3"


def _sm4_key(key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SM3(), length=16, salt=None, info=_SM4_INFO).derive(key)


def _check(key: bytes, nonce: bytes) -> None:
    # Programming errors of the recipes, never reachable from wire input.
    if len(key) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("suite key must be 32 bytes and nonce 12 bytes")


def aead_encrypt(suite: Suite, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate; returns ``ciphertext || tag``."""
    _check(key, nonce)
    if suite is Suite.A256GCM:
        return AESGCM(key).encrypt(nonce, plaintext, aad)
    encryptor = Cipher(algorithms.SM4(_sm4_key(key)), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    return ciphertext + encryptor.tag


def aead_decrypt(suite: Suite, key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """Verify and decrypt ``ciphertext || tag``; raises ``InvalidTag`` on any failure."""
    _check(key, nonce)
    if len(data) < TAG_LEN:
        raise InvalidTag
    if suite is Suite.A256GCM:
        return AESGCM(key).decrypt(nonce, data, aad)
    ciphertext, tag = data[:-TAG_LEN], data[-TAG_LEN:]
    decryptor = Cipher(algorithms.SM4(_sm4_key(key)), modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(aad)
    return decryptor.update(ciphertext) + decryptor.finalize()
