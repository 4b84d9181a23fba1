"""The device e-signature: the wallet's enrolled key signs exactly what the patient approves.

At enrollment the wallet generates a key pair on the patient's device and
registers the public key (:class:`DeviceKey`): ML-DSA-65 (FIPS 204) by
default, or Ed25519 (RFC 8032) for devices without post-quantum support. To
approve an authorization request it signs the :class:`ApprovalChallenge`
(request id, platform nonce, approved ``authorization_details``; see
:mod:`~patientkey.identity.challenge`)::

    signature = Sign(device key, lp(LABEL) ‖ lp(request_id) ‖ lp(nonce) ‖ lp(details))

with ``LABEL = "patientkey/identity/device-approval/v1"``; ML-DSA also takes
LABEL as its FIPS 204 context string. :func:`verify_device_approval` rebuilds
the message from the platform's own request id and nonce and the approved
details, so a signature over other details, another nonce or another request
fails — with the one opaque :class:`ProofRejected`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from patientkey.errors import InvalidInput
from patientkey.identity._util import proof_failure
from patientkey.identity.challenge import ApprovalChallenge

__all__ = [
    "DEVICE_LABEL",
    "DeviceAlgorithm",
    "DeviceKey",
    "DevicePrivateKey",
    "DevicePublicKey",
    "generate_device_key",
    "sign_device_approval",
    "verify_device_approval",
]

_log = logging.getLogger(__name__)

DEVICE_LABEL: Final = b"patientkey/identity/device-approval/v1"

DevicePrivateKey = ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey
DevicePublicKey = ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey


class DeviceAlgorithm(StrEnum):
    """The signature algorithms a device key may use (names as in JOSE / FIPS 204)."""

    ED25519 = "Ed25519"
    ML_DSA_65 = "ML-DSA-65"


_PUBLIC_LEN: Final = {DeviceAlgorithm.ED25519: 32, DeviceAlgorithm.ML_DSA_65: 1952}
_SIGNATURE_LEN: Final = {DeviceAlgorithm.ED25519: 64, DeviceAlgorithm.ML_DSA_65: 3309}


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """A device's public key as registered at enrollment (raw public key bytes)."""

    algorithm: DeviceAlgorithm
    public_bytes: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.algorithm, DeviceAlgorithm):
            raise InvalidInput("unsupported device key algorithm")
        if not isinstance(self.public_bytes, bytes) or len(self.public_bytes) != _PUBLIC_LEN.get(
            self.algorithm
        ):
            raise InvalidInput(f"an {self.algorithm} public key has the wrong length")
        self.public_key()  # refuses bytes that are no valid key

    @classmethod
    def from_public_key(cls, key: DevicePublicKey) -> DeviceKey:
        """The registration of a public key object."""
        if isinstance(key, ed25519.Ed25519PublicKey):
            return cls(DeviceAlgorithm.ED25519, key.public_bytes_raw())
        if isinstance(key, mldsa.MLDSA65PublicKey):
            return cls(DeviceAlgorithm.ML_DSA_65, key.public_bytes_raw())
        raise InvalidInput("device keys must be Ed25519 or ML-DSA-65")

    @classmethod
    def from_pem(cls, pem: bytes) -> DeviceKey:
        """The registration of a SubjectPublicKeyInfo PEM (what a wallet uploads at enrollment)."""
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise InvalidInput("not a PEM public key") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey):
            raise InvalidInput("device keys must be Ed25519 or ML-DSA-65")
        return cls.from_public_key(key)

    def to_pem(self) -> bytes:
        return self.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def key_id(self) -> str:
        """SHA-256 of the SubjectPublicKeyInfo, base64url: names the key (step-up on a new one)."""
        der = self.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")

    def public_key(self) -> DevicePublicKey:
        """The key as a ``cryptography`` public key object."""
        try:
            if self.algorithm is DeviceAlgorithm.ED25519:
                return ed25519.Ed25519PublicKey.from_public_bytes(self.public_bytes)
            return mldsa.MLDSA65PublicKey.from_public_bytes(self.public_bytes)
        except ValueError as exc:
            raise InvalidInput(f"not a valid {self.algorithm} public key") from exc


def generate_device_key(algorithm: DeviceAlgorithm = DeviceAlgorithm.ML_DSA_65) -> DevicePrivateKey:
    """A fresh device key pair (the wallet's side of enrollment)."""
    if algorithm is DeviceAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm is DeviceAlgorithm.ML_DSA_65:
        return mldsa.MLDSA65PrivateKey.generate()
    raise InvalidInput("unsupported device key algorithm")


def sign_device_approval(private_key: DevicePrivateKey, challenge: ApprovalChallenge) -> bytes:
    """The wallet's signature over ``challenge`` with its device key."""
    message = challenge.to_be_signed(DEVICE_LABEL)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    if isinstance(private_key, mldsa.MLDSA65PrivateKey):
        return private_key.sign(message, DEVICE_LABEL)
    raise InvalidInput("device keys must be Ed25519 or ML-DSA-65")


def verify_device_approval(
    device_key: DeviceKey, challenge: ApprovalChallenge, signature: bytes
) -> None:
    """ProofRejected unless ``signature`` is ``device_key``'s signature over ``challenge``.

    ``challenge`` must be built from the platform's own request id and nonce.
    """
    if not isinstance(signature, bytes) or len(signature) != _SIGNATURE_LEN[device_key.algorithm]:
        raise proof_failure(_log, "device: signature missing or of the wrong length")
    message = challenge.to_be_signed(DEVICE_LABEL)
    public = device_key.public_key()
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
        else:
            public.verify(signature, message, DEVICE_LABEL)
    except InvalidSignature as exc:
        raise proof_failure(_log, "device: signature does not verify") from exc
