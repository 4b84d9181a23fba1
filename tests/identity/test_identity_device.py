"""The device e-signature over the approved details, the platform nonce and the request id."""

from __future__ import annotations

import copy

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa

from patientkey.errors import InvalidInput
from patientkey.identity import (
    ApprovalChallenge,
    DeviceAlgorithm,
    DeviceKey,
    ProofRejected,
    generate_device_key,
    new_nonce,
    sign_device_approval,
    sign_x509_approval,
    verify_device_approval,
)

DETAILS = [
    {
        "type": "health_record_access",
        "actions": ["view", "fetch", "store"],
        "records": {"hospital": "H-1"},
        "purpose": "pharmacy_dispense",
        "duration": 604800,
    }
]
ALGORITHMS = [DeviceAlgorithm.ML_DSA_65, DeviceAlgorithm.ED25519]


@pytest.fixture(scope="module", params=ALGORITHMS, ids=str)
def device(request):
    private = generate_device_key(request.param)
    return private, DeviceKey.from_public_key(private.public_key())


@pytest.fixture(scope="module")
def challenge():
    return ApprovalChallenge.create("auth-req-1", DETAILS, new_nonce())


def test_signature_verifies(device, challenge):
    """The device's signature over the challenge verifies with its registered key."""
    private, key = device
    verify_device_approval(key, challenge, sign_device_approval(private, challenge))


def test_signature_over_rebuilt_challenge_verifies(device, challenge):
    """The platform rebuilds the challenge from its own state; member order does not matter."""
    private, key = device
    signature = sign_device_approval(private, challenge)
    reordered = [dict(reversed(list(DETAILS[0].items())))]
    rebuilt = ApprovalChallenge.create(challenge.request_id, reordered, challenge.nonce)
    verify_device_approval(key, rebuilt, signature)


def _changed_details():
    fewer = copy.deepcopy(DETAILS)
    fewer[0]["actions"] = ["view"]
    more = copy.deepcopy(DETAILS)
    more[0]["actions"].append("share")
    longer = copy.deepcopy(DETAILS)
    longer[0]["duration"] += 1
    extra = [*copy.deepcopy(DETAILS), {"type": "health_record_access", "actions": ["delete"]}]
    return [fewer, more, longer, extra]


@pytest.mark.parametrize("details", _changed_details())
def test_other_details_are_refused(device, challenge, details):
    """A signature over one set of details does not approve any other set (wider or narrower)."""
    private, key = device
    signature = sign_device_approval(private, challenge)
    other = ApprovalChallenge.create(challenge.request_id, details, challenge.nonce)
    with pytest.raises(ProofRejected):
        verify_device_approval(key, other, signature)


def test_other_nonce_or_request_is_refused(device, challenge):
    """A signature made for one nonce or request id does not verify for another."""
    private, key = device
    signature = sign_device_approval(private, challenge)
    for other in (
        ApprovalChallenge.create(challenge.request_id, DETAILS, new_nonce()),
        ApprovalChallenge.create("auth-req-2", DETAILS, challenge.nonce),
    ):
        with pytest.raises(ProofRejected):
            verify_device_approval(key, other, signature)


def test_another_key_or_a_damaged_signature_is_refused(device, challenge):
    """Another device's key, a flipped bit, a truncated or a non-bytes signature fail opaquely."""
    private, key = device
    signature = sign_device_approval(private, challenge)
    other_key = DeviceKey.from_public_key(generate_device_key(key.algorithm).public_key())
    with pytest.raises(ProofRejected):
        verify_device_approval(other_key, challenge, signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    for bad in (flipped, signature[:-1], signature + b"\x00", b"", "sig", None):
        with pytest.raises(ProofRejected):
            verify_device_approval(key, challenge, bad)  # type: ignore[arg-type]


def test_certificate_approval_signature_does_not_count_as_device_signature(challenge):
    """Domain separation: the X.509 approval signature of the same key is not a device proof."""
    private = ed25519.Ed25519PrivateKey.generate()
    key = DeviceKey.from_public_key(private.public_key())
    with pytest.raises(ProofRejected):
        verify_device_approval(key, challenge, sign_x509_approval(private, challenge))


def test_ml_dsa_signature_is_bound_to_the_context(challenge):
    """An ML-DSA signature of the same message under another context string is refused."""
    private = mldsa.MLDSA65PrivateKey.generate()
    key = DeviceKey.from_public_key(private.public_key())
    message = challenge.to_be_signed(b"patientkey/identity/device-approval/v1")
    with pytest.raises(ProofRejected):
        verify_device_approval(key, challenge, private.sign(message))


# A regression vector: Ed25519 is deterministic (RFC 8032), so this pins the whole recipe —
# label, length prefixes, canonical JSON — for a fixed key, request, nonce and details.
KAT_DETAILS = (
    b'[{"actions":["view","fetch","store"],"duration":604800,"purpose":"pharmacy_dispense",'
    b'"records":{"hospital":"H-1"},"type":"health_record_access"}]'
)
KAT_SIGNATURE = bytes.fromhex(
    "a654406f078a1eafd4babad8711420189323b33ff5bb24b812cdbbbf4e17a7e7"
    "b5c9d6ab2a83642db0a80fbf0a3ee8a436e598c145ced2fdde1fdfb027e12208"
)


def test_ed25519_known_answer():
    """A fixed Ed25519 key over a fixed challenge gives the pinned signature."""
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    challenge = ApprovalChallenge.create("auth-req-kat", DETAILS, bytes(32))
    assert challenge.details == KAT_DETAILS
    assert sign_device_approval(private, challenge) == KAT_SIGNATURE
    key = DeviceKey(DeviceAlgorithm.ED25519, private.public_key().public_bytes_raw())
    verify_device_approval(key, challenge, KAT_SIGNATURE)


def test_registration_from_pem_and_key_id(device):
    """A key registers from SubjectPublicKeyInfo PEM; its key id is stable and distinct."""
    private, key = device
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    again = DeviceKey.from_pem(pem)
    assert again == key
    assert again.to_pem() == pem
    assert again.key_id == key.key_id
    assert len(key.key_id) == 43
    other = DeviceKey.from_public_key(generate_device_key(key.algorithm).public_key())
    assert other.key_id != key.key_id


def test_registration_refuses_other_keys():
    """EC keys, junk PEM and wrong-length raw keys are not device keys."""
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for pem in (ec_pem, b"-----BEGIN PUBLIC KEY-----\njunk\n-----END PUBLIC KEY-----\n", b""):
        with pytest.raises(InvalidInput):
            DeviceKey.from_pem(pem)
    for algorithm, raw in (
        (DeviceAlgorithm.ED25519, bytes(31)),
        (DeviceAlgorithm.ML_DSA_65, bytes(32)),
        ("RS256", bytes(32)),
    ):
        with pytest.raises(InvalidInput):
            DeviceKey(algorithm, raw)  # type: ignore[arg-type]


def test_default_algorithm_is_post_quantum():
    """Without a choice, a new device key is ML-DSA-65."""
    assert isinstance(generate_device_key(), mldsa.MLDSA65PrivateKey)
