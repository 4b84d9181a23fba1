"""Post-quantum fallback: hybrid ML-KEM-768 + X25519 key agreement.

Used where no QKD key exists for a hop (a wallet whose pre-charged pool ran
dry, a site without QKD). The responder publishes an ML-KEM-768 encapsulation
key and an X25519 public key; the initiator encapsulates to the first and runs
an ephemeral-static X25519 with the second. Both shared secrets go into the
hop-key KDF (:mod:`patientkey.keysupply.hopkey`), so the hop stays secret while
*either* ML-KEM (FIPS 203) or X25519 (RFC 7748) holds — the same "hybrid"
argument as X25519MLKEM768 in TLS.

Pure functions over bytes; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from patientkey.errors import CryptoError, InvalidInput

__all__ = [
    "PQ_INIT_LEN",
    "PQ_PRIVATE_LEN",
    "PQ_PUBLIC_LEN",
    "PqResponder",
    "PqSecrets",
    "pq_initiate",
]

_MLKEM_PK = 1184
_MLKEM_CT = 1088
_X25519 = 32
_MLKEM_SEED = 64
PQ_PUBLIC_LEN = _MLKEM_PK + _X25519
PQ_PRIVATE_LEN = _MLKEM_SEED + _X25519
PQ_INIT_LEN = _MLKEM_CT + _X25519


@dataclass(frozen=True, slots=True)
class PqSecrets:
    """The two shared secrets of one exchange and its public identifier.

    ``exchange_id`` is a hash of the initiator's message: both sides compute
    it, and it names the exchange in key IDs without revealing anything.
    """

    exchange_id: str
    mlkem_secret: bytes = field(repr=False)
    x25519_secret: bytes = field(repr=False)


def _exchange_id(init_message: bytes) -> str:
    return hashlib.sha256(b"patientkey/pq-exchange\x00" + init_message).hexdigest()[:32]


class PqResponder:
    """The side that publishes a public key (the platform, or a wallet).

    A fresh key pair by default; :meth:`private_bytes` / :meth:`from_private_bytes`
    keep one across restarts (inside an encrypted keystore: it is a secret).
    """

    def __init__(
        self,
        mlkem_key: mlkem.MLKEM768PrivateKey | None = None,
        x25519_key: x25519.X25519PrivateKey | None = None,
    ) -> None:
        self._mlkem = mlkem_key or mlkem.MLKEM768PrivateKey.generate()
        self._x25519 = x25519_key or x25519.X25519PrivateKey.generate()

    @classmethod
    def from_private_bytes(cls, data: bytes) -> PqResponder:
        """Load :meth:`private_bytes` output; :class:`InvalidInput` if malformed."""
        if not isinstance(data, bytes) or len(data) != PQ_PRIVATE_LEN:
            raise InvalidInput(f"PQ private key must be {PQ_PRIVATE_LEN} bytes")
        try:
            return cls(
                mlkem.MLKEM768PrivateKey.from_seed_bytes(data[:_MLKEM_SEED]),
                x25519.X25519PrivateKey.from_private_bytes(data[_MLKEM_SEED:]),
            )
        except ValueError as exc:
            raise InvalidInput("malformed PQ private key") from exc

    def private_bytes(self) -> bytes:
        """ML-KEM-768 seed (64 B) ‖ X25519 private key (32 B). Secret!"""
        return self._mlkem.private_bytes_raw() + self._x25519.private_bytes_raw()

    def public_bytes(self) -> bytes:
        """ML-KEM-768 encapsulation key (1184 B) ‖ X25519 public key (32 B)."""
        return (
            self._mlkem.public_key().public_bytes_raw()
            + self._x25519.public_key().public_bytes_raw()
        )

    def respond(self, init_message: bytes) -> PqSecrets:
        """Derive the shared secrets from the initiator's message."""
        if len(init_message) != PQ_INIT_LEN:
            raise InvalidInput(f"PQ init message must be {PQ_INIT_LEN} bytes")
        ct, eph = init_message[:_MLKEM_CT], init_message[_MLKEM_CT:]
        try:
            mlkem_ss = self._mlkem.decapsulate(ct)
            x_ss = self._x25519.exchange(x25519.X25519PublicKey.from_public_bytes(eph))
        except (ValueError, InvalidKey) as exc:
            raise CryptoError("pq: decapsulation or exchange failed") from exc
        return PqSecrets(_exchange_id(init_message), mlkem_ss, x_ss)


def pq_initiate(responder_public: bytes) -> tuple[bytes, PqSecrets]:
    """Initiator: return (message to send, shared secrets)."""
    if len(responder_public) != PQ_PUBLIC_LEN:
        raise InvalidInput(f"PQ public key must be {PQ_PUBLIC_LEN} bytes")
    try:
        kem_pk = mlkem.MLKEM768PublicKey.from_public_bytes(responder_public[:_MLKEM_PK])
        x_pk = x25519.X25519PublicKey.from_public_bytes(responder_public[_MLKEM_PK:])
    except ValueError as exc:
        raise InvalidInput("malformed PQ public key") from exc
    mlkem_ss, ct = kem_pk.encapsulate()
    eph = x25519.X25519PrivateKey.generate()
    try:
        x_ss = eph.exchange(x_pk)
    except ValueError as exc:  # low-order point: all-zero shared secret refused
        raise CryptoError("pq: x25519 exchange failed") from exc
    message = ct + eph.public_key().public_bytes_raw()
    return message, PqSecrets(_exchange_id(message), mlkem_ss, x_ss)
