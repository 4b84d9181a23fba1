"""HPKE (RFC 9180) with the hybrid post-quantum KEM ML-KEM-768 + X25519.

Suite: KEM ``MLKEM768-X25519`` (HPKE KEM id 0x647A, the X-Wing combiner of
draft-connolly-cfrg-xwing-kem / draft-ietf-hpke-pq), KDF HKDF-SHA256
(0x0001), AEAD AES-256-GCM (0x0002), Base mode, single shot
(RFC 9180 §6.1 ``SealBase``/``OpenBase``). Only ``info`` binds context.

This is the KBP/KBS key pair of a third party. Serialization (see
``docs/formats.md``):

* private key, 96 bytes: ML-KEM-768 seed ``d || z`` (64, FIPS 203) ‖ X25519 private (32)
* public key, 1216 bytes: ML-KEM-768 encapsulation key (1184) ‖ X25519 public (32)
* wrapped blob: ``enc`` (1120 = ML-KEM ciphertext 1088 ‖ X25519 ephemeral 32) ‖ AEAD ciphertext
"""

from __future__ import annotations

import hashlib
import logging

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke as _hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from patientkey.crypto._util import b64url_encode, check_bytes, crypto_failure
from patientkey.errors import InvalidInput

__all__ = [
    "HPKE_ENC_LEN",
    "HPKE_OVERHEAD",
    "HPKE_PRIVATE_KEY_LEN",
    "HPKE_PUBLIC_KEY_LEN",
    "HPKE_SUITE_NAME",
    "MAX_HPKE_PLAINTEXT",
    "HpkeKeyPair",
    "HpkePublicKey",
    "hpke_unwrap",
    "hpke_wrap",
]

_log = logging.getLogger(__name__)

HPKE_SUITE_NAME = "HPKE-MLKEM768X25519-SHA256-A256GCM"
_SUITE = _hpke.Suite(_hpke.KEM.MLKEM768_X25519, _hpke.KDF.HKDF_SHA256, _hpke.AEAD.AES_256_GCM)
_MLKEM_SEED_LEN = 64
_MLKEM_PUBLIC_LEN = 1184
_X25519_LEN = 32
HPKE_PRIVATE_KEY_LEN = _MLKEM_SEED_LEN + _X25519_LEN  # 96
HPKE_PUBLIC_KEY_LEN = _MLKEM_PUBLIC_LEN + _X25519_LEN  # 1216
HPKE_ENC_LEN = 1120
HPKE_OVERHEAD = HPKE_ENC_LEN + 16  # enc + AES-GCM tag
#: HPKE here wraps keys and short messages, not documents.
MAX_HPKE_PLAINTEXT = 1 << 20
MAX_HPKE_INFO = 1024


class HpkePublicKey:
    """A third party's public key (KBP). Immutable; equal when the bytes are equal."""

    __slots__ = ("_key", "_raw")

    def __init__(
        self, mlkem_key: mlkem.MLKEM768PublicKey, x25519_key: x25519.X25519PublicKey
    ) -> None:
        self._raw = mlkem_key.public_bytes_raw() + x25519_key.public_bytes_raw()
        self._key = _hpke.MLKEM768X25519PublicKey(mlkem_key, x25519_key)

    @classmethod
    def from_bytes(cls, data: bytes) -> HpkePublicKey:
        """Load the 1216-byte encoding; :class:`InvalidInput` if it is not one."""
        raw = check_bytes(data, "HPKE public key")
        if len(raw) != HPKE_PUBLIC_KEY_LEN:
            raise InvalidInput(f"HPKE public key must be {HPKE_PUBLIC_KEY_LEN} bytes")
        try:
            m = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUBLIC_LEN])
            x = x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUBLIC_LEN:])
        except ValueError as exc:
            raise InvalidInput("malformed HPKE public key") from exc
        return cls(m, x)

    def to_bytes(self) -> bytes:
        """The 1216-byte encoding: ML-KEM-768 encapsulation key ‖ X25519 public key."""
        return self._raw

    def thumbprint(self) -> str:
        """base64url(SHA-256(encoding)): a stable short name for logs and key IDs."""
        return b64url_encode(hashlib.sha256(self._raw).digest())

    @property
    def _hpke_key(self) -> _hpke.MLKEM768X25519PublicKey:
        return self._key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HpkePublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"HpkePublicKey({self.thumbprint()})"


class HpkeKeyPair:
    """A third party's key pair (KBS with its KBP). ``repr`` shows only the public thumbprint."""

    __slots__ = ("_mlkem", "_private", "_public", "_x25519")

    def __init__(
        self, mlkem_key: mlkem.MLKEM768PrivateKey, x25519_key: x25519.X25519PrivateKey
    ) -> None:
        self._mlkem = mlkem_key
        self._x25519 = x25519_key
        self._private = _hpke.MLKEM768X25519PrivateKey(mlkem_key, x25519_key)
        self._public = HpkePublicKey(mlkem_key.public_key(), x25519_key.public_key())

    @classmethod
    def generate(cls) -> HpkeKeyPair:
        """A fresh key pair from the operating system's CSPRNG."""
        return cls(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> HpkeKeyPair:
        """Load the 96-byte private encoding (the public key is recomputed)."""
        raw = check_bytes(data, "HPKE private key")
        if len(raw) != HPKE_PRIVATE_KEY_LEN:
            raise InvalidInput(f"HPKE private key must be {HPKE_PRIVATE_KEY_LEN} bytes")
        try:
            m = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM_SEED_LEN])
            x = x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM_SEED_LEN:])
        except ValueError as exc:
            raise InvalidInput("malformed HPKE private key") from exc
        return cls(m, x)

    def private_bytes(self) -> bytes:
        """The 96-byte private encoding: ML-KEM-768 seed ‖ X25519 private key. Secret!"""
        return self._mlkem.private_bytes_raw() + self._x25519.private_bytes_raw()

    @property
    def public_key(self) -> HpkePublicKey:
        return self._public

    @property
    def _hpke_key(self) -> _hpke.MLKEM768X25519PrivateKey:
        return self._private

    def __repr__(self) -> str:
        return f"HpkeKeyPair(public={self._public.thumbprint()})"


def _check_info(info: object) -> bytes:
    raw = check_bytes(info, "HPKE info")
    if len(raw) > MAX_HPKE_INFO:
        raise InvalidInput(f"HPKE info must be at most {MAX_HPKE_INFO} bytes")
    return raw


def hpke_wrap(public: HpkePublicKey, plaintext: bytes, info: bytes) -> bytes:
    """HPKE SealBase of ``plaintext`` to ``public`` with ``info``; returns ``enc || ct``."""
    if not isinstance(public, HpkePublicKey):
        raise InvalidInput("public must be an HpkePublicKey")
    data = check_bytes(plaintext, "plaintext")
    if len(data) > MAX_HPKE_PLAINTEXT:
        raise InvalidInput(f"HPKE plaintext must be at most {MAX_HPKE_PLAINTEXT} bytes")
    return _SUITE.encrypt(data, public._hpke_key, info=_check_info(info))


def hpke_unwrap(private: HpkeKeyPair, blob: bytes, info: bytes) -> bytes:
    """HPKE OpenBase; :class:`CryptoError` on any failure (wrong key, info, tampering)."""
    if not isinstance(private, HpkeKeyPair):
        raise InvalidInput("private must be an HpkeKeyPair")
    info_bytes = _check_info(info)
    data = check_bytes(blob, "HPKE blob")
    if not HPKE_OVERHEAD <= len(data) <= HPKE_OVERHEAD + MAX_HPKE_PLAINTEXT:
        raise crypto_failure(_log, "hpke: blob length out of range")
    try:
        return _SUITE.decrypt(data, private._hpke_key, info=info_bytes)
    except (InvalidTag, ValueError) as exc:
        raise crypto_failure(_log, "hpke: decryption failed") from exc
