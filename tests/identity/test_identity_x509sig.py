"""The X.509 certificate signature: chain to the configured CA, validity, key usage, signature."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa

from patientkey.errors import ConfigError, InvalidInput
from patientkey.identity import (
    ApprovalChallenge,
    CertificateBinding,
    CertificateSignatureVerifier,
    ProofRejected,
    new_nonce,
    sign_device_approval,
    sign_x509_approval,
)
from patientkey.identity.x509sig import load_certificate_private_key
from patientkey.pki import init_pki, party_files

DETAILS = [{"type": "health_record_access", "actions": ["view"], "purpose": "insurer_claim"}]
START = 1_750_000_000.0


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def patient(root_ca):
    key = ec.generate_private_key(ec.SECP256R1())
    return key, root_ca.issue(key.public_key())


@pytest.fixture
def verifier(root_ca, clock):
    return CertificateSignatureVerifier([root_ca.cert], clock=clock)


@pytest.fixture
def challenge():
    return ApprovalChallenge.create("auth-req-9", DETAILS, new_nonce())


def _verify(verifier, cert, signature, challenge, *, binding=None, intermediates=()):
    return verifier.verify(
        binding=binding or CertificateBinding.from_certificate(cert),
        challenge=challenge,
        signature=signature,
        certificate=_pem(cert),
        intermediates=[_pem(c) for c in intermediates],
    )


def test_signature_with_certificate_key_verifies(verifier, patient, challenge):
    """A patient certificate from the CA and its key's signature verify; the result names it."""
    key, cert = patient
    result = _verify(verifier, cert, sign_x509_approval(key, challenge), challenge)
    assert result.subject == "CN=Erika Mustermann"
    assert result.issuer == "CN=PatientKey Test Citizen CA"
    assert result.serial_number == cert.serial_number
    assert len(result.fingerprint_sha256) == 64
    assert result.not_valid_after == cert.not_valid_after_utc


def test_der_certificate_is_accepted(verifier, patient, challenge):
    """The certificate may come as DER as well as PEM."""
    key, cert = patient
    verifier.verify(
        binding=CertificateBinding.from_certificate(cert),
        challenge=challenge,
        signature=sign_x509_approval(key, challenge),
        certificate=_der(cert),
    )


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate,
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        mldsa.MLDSA65PrivateKey.generate,
    ],
    ids=["p384", "ed25519", "rsa-pss", "ml-dsa-65"],
)
def test_every_accepted_key_type(verifier, root_ca, challenge, make_key):
    """ECDSA P-384, Ed25519, RSA-PSS and ML-DSA-65 certificate keys all verify."""
    key = make_key()
    cert = root_ca.issue(key.public_key())
    _verify(verifier, cert, sign_x509_approval(key, challenge), challenge)


def test_chain_through_an_intermediate(verifier, root_ca, challenge):
    """A certificate from an intermediate CA verifies when the intermediate is offered."""
    intermediate = root_ca.intermediate("PatientKey Test Issuing CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = intermediate.issue(key.public_key())
    signature = sign_x509_approval(key, challenge)
    _verify(verifier, cert, signature, challenge, intermediates=[intermediate.cert])
    with pytest.raises(ProofRejected):
        _verify(verifier, cert, signature, challenge)  # the intermediate is needed


def test_foreign_ca_is_refused(verifier, foreign_ca, challenge):
    """A certificate of a CA that is not configured is refused, whatever its signature."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = foreign_ca.issue(key.public_key())
    with pytest.raises(ProofRejected) as info:
        _verify(verifier, cert, sign_x509_approval(key, challenge), challenge)
    assert info.value.reason == "x509: certificate path does not validate"


def test_expired_or_not_yet_valid_certificate_is_refused(root_ca, challenge, clock):
    """Outside its validity period a certificate is refused (the injected clock decides)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.fromtimestamp(START, dt.UTC)
    cert = root_ca.issue(
        key.public_key(), not_before=now - dt.timedelta(days=10), not_after=now + dt.timedelta(1)
    )
    signature = sign_x509_approval(key, challenge)
    verifier = CertificateSignatureVerifier([root_ca.cert], clock=clock)
    _verify(verifier, cert, signature, challenge)
    clock.advance(2 * 86400)
    with pytest.raises(ProofRejected):
        _verify(verifier, cert, signature, challenge)
    clock.advance(-13 * 86400)
    with pytest.raises(ProofRejected):
        _verify(verifier, cert, signature, challenge)


def test_wrong_key_is_refused(verifier, patient, challenge):
    """A signature by any key other than the certificate's is refused."""
    _key, cert = patient
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ProofRejected) as info:
        _verify(verifier, cert, sign_x509_approval(stranger, challenge), challenge)
    assert info.value.reason == "x509: signature does not verify"


def test_changed_challenge_is_refused(verifier, patient, challenge):
    """A signature over one challenge does not verify for another request, nonce or details."""
    key, cert = patient
    signature = sign_x509_approval(key, challenge)
    wider = [{**DETAILS[0], "actions": ["view", "share"]}]
    for other in (
        ApprovalChallenge.create("auth-req-10", DETAILS, challenge.nonce),
        ApprovalChallenge.create(challenge.request_id, DETAILS, new_nonce()),
        ApprovalChallenge.create(challenge.request_id, wider, challenge.nonce),
    ):
        with pytest.raises(ProofRejected):
            _verify(verifier, cert, signature, other)


def test_device_signature_does_not_count_as_certificate_signature(verifier, root_ca, challenge):
    """Domain separation: a device approval signature by the certificate key is refused."""
    key = ed25519.Ed25519PrivateKey.generate()
    cert = root_ca.issue(key.public_key())
    with pytest.raises(ProofRejected):
        _verify(verifier, cert, sign_device_approval(key, challenge), challenge)


def test_certificate_of_another_patient_is_refused(verifier, root_ca, patient, challenge):
    """A valid certificate for another subject does not speak for this patient."""
    _key, cert = patient
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = root_ca.issue(other_key.public_key(), "Max Mustermann")
    with pytest.raises(ProofRejected) as info:
        _verify(
            verifier,
            other,
            sign_x509_approval(other_key, challenge),
            challenge,
            binding=CertificateBinding.from_certificate(cert),
        )
    assert info.value.reason == "x509: certificate names another patient"


def test_renewed_certificate_keeps_the_binding(verifier, root_ca, patient, challenge):
    """A renewed certificate (new key, same issuer and subject) matches the old binding."""
    _key, cert = patient
    new_key = ec.generate_private_key(ec.SECP256R1())
    renewed = root_ca.issue(new_key.public_key())
    _verify(
        verifier,
        renewed,
        sign_x509_approval(new_key, challenge),
        challenge,
        binding=CertificateBinding.from_certificate(cert),
    )


def test_key_usage_must_allow_signatures(verifier, root_ca, challenge, key_usage, eku_oids):
    """No KeyUsage, encipherment-only KeyUsage or a server-only EKU are refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    signature = sign_x509_approval(key, challenge)
    bad = [
        root_ca.issue(key.public_key(), usage=key_usage(encipher=True)),
        root_ca.issue(key.public_key(), eku=[eku_oids.SERVER_AUTH]),
        root_ca.issue(key.public_key(), ca=True),
    ]
    for cert in bad:
        with pytest.raises(ProofRejected):
            _verify(verifier, cert, signature, challenge)
    good = [
        root_ca.issue(key.public_key(), usage=key_usage(commit=True)),
        root_ca.issue(key.public_key(), eku=[eku_oids.EMAIL_PROTECTION]),
        root_ca.issue(key.public_key(), eku=[x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")]),
    ]
    for cert in good:
        _verify(verifier, cert, signature, challenge)


def test_missing_key_usage_is_refused(root_ca, challenge, clock):
    """A certificate without a KeyUsage extension is refused."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.fromtimestamp(START, dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "No Usage")]))
        .issuer_name(root_ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_ca.key.public_key()),
            critical=False,
        )
        .sign(root_ca.key, hashes.SHA256())
    )
    verifier = CertificateSignatureVerifier([root_ca.cert], clock=clock)
    with pytest.raises(ProofRejected):
        _verify(verifier, cert, sign_x509_approval(key, challenge), challenge)


def test_short_rsa_key_is_refused(verifier, root_ca, challenge):
    """RSA certificate keys under 2048 bits are refused (and cannot be used to sign)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert = root_ca.issue(key.public_key())
    with pytest.raises(InvalidInput):
        sign_x509_approval(key, challenge)
    with pytest.raises(ProofRejected):
        _verify(verifier, cert, b"\x00" * 128, challenge)


def test_malformed_input_is_a_rejected_proof(verifier, patient, challenge):
    """Junk certificates, too many intermediates or bad signatures are the opaque rejection."""
    key, cert = patient
    binding = CertificateBinding.from_certificate(cert)
    signature = sign_x509_approval(key, challenge)
    cases = [
        {"certificate": b"junk", "signature": signature},
        {"certificate": b"", "signature": signature},
        {"certificate": b"x" * 20000, "signature": signature},
        {"certificate": _pem(cert), "signature": b""},
        {"certificate": _pem(cert), "signature": b"x" * 10000},
        {"certificate": _pem(cert), "signature": signature, "intermediates": [b"junk"]},
        {"certificate": _pem(cert), "signature": signature, "intermediates": [_pem(cert)] * 5},
    ]
    for case in cases:
        with pytest.raises(ProofRejected):
            verifier.verify(binding=binding, challenge=challenge, **case)


def test_dev_pki_certificate_is_accepted(tmp_path, challenge):
    """A certificate of the project's dev PKI (ECDSA P-256, clientAuth) works as a signing proof."""
    init_pki(tmp_path, ["patient-7"])
    files = party_files(tmp_path, "patient-7")
    verifier = CertificateSignatureVerifier.from_pem(files.ca.read_bytes())
    key = load_certificate_private_key(files.key.read_bytes())
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    result = _verify(verifier, cert, sign_x509_approval(key, challenge), challenge)
    assert result.subject == "CN=patient-7"


def test_configuration_is_checked():
    """A verifier without trust anchors, or with junk PEM, refuses to start."""
    with pytest.raises(ConfigError):
        CertificateSignatureVerifier([])
    with pytest.raises(ConfigError):
        CertificateSignatureVerifier.from_pem(b"junk")
    with pytest.raises(InvalidInput):
        load_certificate_private_key(b"junk")


def test_rejection_is_opaque(verifier, foreign_ca, patient, challenge):
    """Every refusal has the same text and problem document, without the reason."""
    key, cert = patient
    stranger = ec.generate_private_key(ec.SECP256R1())
    foreign = foreign_ca.issue(key.public_key())
    errors = []
    for args in (
        (cert, sign_x509_approval(stranger, challenge)),
        (foreign, sign_x509_approval(key, challenge)),
    ):
        with pytest.raises(ProofRejected) as info:
            _verify(verifier, *args, challenge)
        errors.append(info.value)
    assert errors[0].reason != errors[1].reason
    assert str(errors[0]) == str(errors[1])
    assert errors[0].to_problem() == errors[1].to_problem()
