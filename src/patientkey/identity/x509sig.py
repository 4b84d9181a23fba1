"""An X.509 certificate signature: the patient signs the approval with a certificate key.

The patient holds a signing certificate (a national eID, a health
professional card, a qualified certificate) issued by a CA the platform is
configured to trust. To approve an authorization request the patient signs
the same :class:`ApprovalChallenge` as the device signature, under its own
label::

    signature = Sign(certificate key, lp(LABEL) ‖ lp(request_id) ‖ lp(nonce) ‖ lp(details))
    LABEL = "patientkey/identity/x509-approval/v1"

:class:`CertificateSignatureVerifier` checks, in this order, and answers any
failure with the one opaque :class:`ProofRejected`:

1. the path from the certificate (plus the intermediates offered) to a
   configured trust anchor, with ``cryptography.x509.verification`` (RFC 5280
   path validation with the WebPKI CA rules): signatures along the chain,
   validity periods at the injected clock's time, basic constraints, CA key
   usage, chain depth;
2. the end-entity certificate: KeyUsage present with digitalSignature or
   nonRepudiation (contentCommitment); an ExtendedKeyUsage, if present, must
   allow clientAuth, emailProtection, documentSigning (RFC 9336) or any;
   no SubjectAltName is needed (personal certificates often have none);
3. that it names the patient: issuer and subject equal to the
   :class:`CertificateBinding` recorded at enrollment (a renewed certificate
   from the same CA for the same subject keeps working);
4. the signature over the challenge with the certificate's key: ECDSA P-256 /
   P-384 / P-521 with SHA-256 / 384 / 512, Ed25519, RSA-PSS (≥ 2048 bits,
   SHA-256, MGF1-SHA-256, salt = 32 bytes) or ML-DSA-65 (context = LABEL).

Not checked: revocation (CRL/OCSP) — ``cryptography`` does not fetch it, and
the platform makes no outbound calls while a patient approves.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from patientkey.errors import ConfigError, InvalidInput
from patientkey.identity._util import Clock, proof_failure, system_clock
from patientkey.identity.challenge import ApprovalChallenge

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "MAX_INTERMEDIATES",
    "X509_LABEL",
    "CertificateBinding",
    "CertificatePrivateKey",
    "CertificateSignatureVerifier",
    "VerifiedCertificate",
    "load_certificate_private_key",
    "parse_certificate",
    "sign_x509_approval",
]

_log = logging.getLogger(__name__)

X509_LABEL: Final = b"patientkey/identity/x509-approval/v1"
MAX_CERTIFICATE_BYTES: Final = 16 * 1024
MAX_INTERMEDIATES: Final = 4
_MAX_SIGNATURE_LEN: Final = 8 * 1024
_MIN_RSA_BITS: Final = 2048
_EC_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
# RFC 9336 id-kp-documentSigning; not (yet) a named constant in every cryptography release.
_DOCUMENT_SIGNING: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
_SIGNING_EKUS: Final = frozenset(
    {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
        _DOCUMENT_SIGNING,
    }
)

CertificatePrivateKey = (
    ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | rsa.RSAPrivateKey
    | mldsa.MLDSA65PrivateKey
)


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


@dataclass(frozen=True, slots=True)
class CertificateBinding:
    """Which certificates speak for one patient: issuer and subject names (DER), from enrollment."""

    issuer: bytes
    subject: bytes

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> CertificateBinding:
        return cls(certificate.issuer.public_bytes(), certificate.subject.public_bytes())

    def matches(self, certificate: x509.Certificate) -> bool:
        return (
            certificate.issuer.public_bytes() == self.issuer
            and certificate.subject.public_bytes() == self.subject
        )


@dataclass(frozen=True, slots=True)
class VerifiedCertificate:
    """What a verified certificate signature tells the platform (for the audit and the Consent)."""

    subject: str
    issuer: str
    serial_number: int
    fingerprint_sha256: str
    not_valid_after: dt.datetime


def parse_certificate(data: bytes) -> x509.Certificate:
    """One certificate from PEM or DER bytes; InvalidInput if it is none or too large."""
    if not isinstance(data, bytes) or not 0 < len(data) <= MAX_CERTIFICATE_BYTES:
        raise InvalidInput(f"a certificate must be 1 to {MAX_CERTIFICATE_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise InvalidInput("unparseable certificate") from exc


def _check_key_usage(_policy: Policy, _cert: x509.Certificate, usage: x509.KeyUsage) -> None:
    if not (usage.digital_signature or usage.content_commitment):
        raise ValueError("key usage allows no signatures")


def _check_eku(
    _policy: Policy, _cert: x509.Certificate, usage: x509.ExtendedKeyUsage | None
) -> None:
    if usage is not None and not _SIGNING_EKUS.intersection(usage):
        raise ValueError("extended key usage allows no client or document signatures")


def _ee_policy() -> ExtensionPolicy:
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _check_key_usage)
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _check_eku)
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    )


class CertificateSignatureVerifier:
    """Verifies certificate signatures over approval challenges against configured trust anchors."""

    def __init__(
        self,
        trust_anchors: Sequence[x509.Certificate],
        *,
        clock: Clock = system_clock,
        max_chain_depth: int = 4,
    ) -> None:
        anchors = list(trust_anchors)
        if not anchors or not all(isinstance(c, x509.Certificate) for c in anchors):
            raise ConfigError("at least one trust anchor certificate is needed")
        self._store = Store(anchors)
        self._clock = clock
        self._max_chain_depth = max_chain_depth

    @classmethod
    def from_pem(cls, pem: bytes, *, clock: Clock = system_clock) -> CertificateSignatureVerifier:
        """Trust the CA certificates in ``pem`` (a bundle of one or more)."""
        try:
            anchors = x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            raise ConfigError("the trust anchors are not PEM certificates") from exc
        return cls(anchors, clock=clock)

    def verify(
        self,
        *,
        binding: CertificateBinding,
        challenge: ApprovalChallenge,
        signature: bytes,
        certificate: bytes,
        intermediates: Sequence[bytes] = (),
    ) -> VerifiedCertificate:
        """ProofRejected unless the patient bound by ``binding`` signed ``challenge``.

        ``certificate`` and ``intermediates`` are PEM or DER, as the wallet sent
        them; ``challenge`` is built from the platform's own request id and nonce.
        """
        if len(intermediates) > MAX_INTERMEDIATES:
            raise proof_failure(_log, "x509: too many intermediate certificates")
        try:
            leaf = parse_certificate(certificate)
            chain = [parse_certificate(c) for c in intermediates]
        except InvalidInput as exc:
            raise proof_failure(_log, "x509: certificate unreadable") from exc
        if not isinstance(signature, bytes) or not 0 < len(signature) <= _MAX_SIGNATURE_LEN:
            raise proof_failure(_log, "x509: signature missing or oversized")
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now)
            .max_chain_depth(self._max_chain_depth)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy()
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, chain)
        except VerificationError as exc:
            raise proof_failure(_log, "x509: certificate path does not validate") from exc
        if not binding.matches(leaf):
            raise proof_failure(_log, "x509: certificate names another patient")
        _verify_signature(leaf, signature, challenge.to_be_signed(X509_LABEL))
        return VerifiedCertificate(
            subject=leaf.subject.rfc4514_string(),
            issuer=leaf.issuer.rfc4514_string(),
            serial_number=leaf.serial_number,
            fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
            not_valid_after=leaf.not_valid_after_utc,
        )


def _verify_signature(leaf: x509.Certificate, signature: bytes, message: bytes) -> None:
    try:
        public = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise proof_failure(_log, "x509: certificate key unreadable") from exc
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            digest = _EC_HASHES.get(public.curve.name)
            if digest is None:
                raise proof_failure(_log, "x509: curve not accepted")
            public.verify(signature, message, ec.ECDSA(digest()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
        elif isinstance(public, rsa.RSAPublicKey):
            if public.key_size < _MIN_RSA_BITS:
                raise proof_failure(_log, "x509: RSA key too short")
            public.verify(signature, message, _pss(), hashes.SHA256())
        elif isinstance(public, mldsa.MLDSA65PublicKey):
            public.verify(signature, message, X509_LABEL)
        else:
            raise proof_failure(_log, "x509: certificate key type not accepted")
    except InvalidSignature as exc:
        raise proof_failure(_log, "x509: signature does not verify") from exc


def sign_x509_approval(private_key: CertificatePrivateKey, challenge: ApprovalChallenge) -> bytes:
    """The patient's signature over ``challenge`` with its certificate's private key."""
    message = challenge.to_be_signed(X509_LABEL)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        digest = _EC_HASHES.get(private_key.curve.name)
        if digest is None:
            raise InvalidInput("certificate curve not accepted")
        return private_key.sign(message, ec.ECDSA(digest()))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    if isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < _MIN_RSA_BITS:
            raise InvalidInput(f"RSA certificate keys must have at least {_MIN_RSA_BITS} bits")
        return private_key.sign(message, _pss(), hashes.SHA256())
    if isinstance(private_key, mldsa.MLDSA65PrivateKey):
        return private_key.sign(message, X509_LABEL)
    raise InvalidInput("certificate keys must be ECDSA, Ed25519, RSA or ML-DSA-65")


def load_certificate_private_key(pem: bytes) -> CertificatePrivateKey:
    """The patient's certificate private key from unencrypted PKCS#8 PEM (wallet side)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInput("not a PEM private key") from exc
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | rsa.RSAPrivateKey
        | mldsa.MLDSA65PrivateKey,
    ):
        raise InvalidInput("certificate keys must be ECDSA, Ed25519, RSA or ML-DSA-65")
    return key
