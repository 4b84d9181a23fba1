"""A third party's HPKE public key (KBP), certified by its X.509 certificate key.

The platform's registry hands the wallet a third party's KBP next to its
certificate. The certificate chains to the CA, but says nothing about KBP; a
dishonest platform could swap in a key of its own and read every first share.
So the third party signs its KBP with its certificate's private key at export::

    signature = Sign(cert key, "patientkey/kbp/v1" ‖ len ‖ B_ID ‖ len ‖ KBP)

(ECDSA P-256 with SHA-256, or Ed25519, by the key's type; ``lp`` length
prefixes as everywhere). The wallet verifies the certificate's chain and name
first, then this signature, before it wraps anything to KBP.
"""

from __future__ import annotations

import logging
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from patientkey.crypto._util import check_bytes, check_id, crypto_failure, lp
from patientkey.errors import InvalidInput

__all__ = ["MAX_SIGNATURE_LEN", "sign_hpke_public", "verify_hpke_public"]

_log = logging.getLogger(__name__)

_LABEL: Final = b"patientkey/kbp/v1"
MAX_SIGNATURE_LEN: Final = 512


def _message(b_id: str, hpke_public: bytes) -> bytes:
    return lp(_LABEL, check_id(b_id, "B_ID").encode(), check_bytes(hpke_public, "KBP"))


def sign_hpke_public(private_key_pem: bytes, b_id: str, hpke_public: bytes) -> bytes:
    """The third party's signature over its KBP, with its certificate's private key."""
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("not a PEM private key") from exc
    message = _message(b_id, hpke_public)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    raise InvalidInput("certificate keys must be ECDSA or Ed25519")


def verify_hpke_public(
    certificate_pem: str, b_id: str, hpke_public: bytes, signature: bytes
) -> None:
    """CryptoError unless ``signature`` is the certificate key's signature over KBP.

    The caller has already verified the certificate's chain and that it names ``b_id``.
    """
    message = _message(b_id, hpke_public)
    if not isinstance(signature, bytes) or not 0 < len(signature) <= MAX_SIGNATURE_LEN:
        raise crypto_failure(_log, "kbp: signature missing or oversized")
    try:
        public = x509.load_pem_x509_certificate(certificate_pem.encode("ascii")).public_key()
    except (ValueError, UnicodeEncodeError) as exc:
        raise crypto_failure(_log, "kbp: certificate unreadable") from exc
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
        else:
            raise crypto_failure(_log, "kbp: certificate key type not accepted")
    except InvalidSignature as exc:
        raise crypto_failure(_log, "kbp: signature does not verify") from exc
