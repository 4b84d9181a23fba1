"""WebAuthn passkeys (W3C WebAuthn L2 §7.1 registration, §7.2 authentication) against a
software authenticator that builds real CBOR and ES256 signatures."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from soft_authenticator import ORIGIN, SoftAuthenticator, b64url

from patientkey.errors import InvalidInput
from patientkey.identity import ProofRejected
from patientkey.identity.challenge import ApprovalChallenge, new_nonce
from patientkey.identity.webauthn import (
    WEBAUTHN_LABEL,
    WebAuthnCredential,
    WebAuthnPolicy,
    approval_webauthn_challenge,
    assertion_credential_id,
    authentication_options,
    registration_options,
    user_handle,
    verify_assertion,
    verify_registration,
)

POLICY = WebAuthnPolicy()
USER = "u-alice"
DETAILS = [{"type": "health_record_access", "actions": ["view"], "records": {"ids": ["rx-1"]}}]
REG_CHALLENGE = bytes(range(32))


def _register(authenticator: SoftAuthenticator, **forge) -> WebAuthnCredential:
    options = registration_options(
        POLICY, user_id=USER, user_name=USER, exclude_ids=[], challenge=REG_CHALLENGE
    )
    return verify_registration(POLICY, authenticator.create(options, **forge), REG_CHALLENGE)


def _challenge(request_id: str = "req-1") -> ApprovalChallenge:
    return ApprovalChallenge.create(request_id, DETAILS, new_nonce())


def _options(credential: WebAuthnCredential, challenge: ApprovalChallenge) -> str:
    return authentication_options(
        POLICY, credential_ids=[credential.credential_id], challenge=challenge
    )


@pytest.fixture
def enrolled() -> tuple[SoftAuthenticator, WebAuthnCredential]:
    authenticator = SoftAuthenticator()
    return authenticator, _register(authenticator)


def test_registration_options_require_user_verification_and_no_attestation():
    """Creation options carry the challenge, RP ID, a hashed user handle, UV required."""
    options = json.loads(
        registration_options(
            POLICY,
            user_id=USER,
            user_name=USER,
            exclude_ids=[b"old-credential"],
            challenge=REG_CHALLENGE,
        )
    )
    assert options["challenge"] == b64url(REG_CHALLENGE)
    assert options["rp"] == {"id": "localhost", "name": "PatientKey"}
    assert options["user"]["id"] == b64url(
        hashlib.sha256(b"patientkey/identity/webauthn-user-handle/v1u-alice").digest()
    )
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["attestation"] == "none"
    assert options["excludeCredentials"] == [
        {"id": b64url(b"old-credential"), "type": "public-key"}
    ]
    assert options["pubKeyCredParams"][0] == {"type": "public-key", "alg": -7}


def test_registration_verifies_and_returns_the_credential():
    """A "none" attestation from an allowed origin gives the credential id, COSE key, count."""
    authenticator = SoftAuthenticator()
    credential = _register(authenticator)
    assert credential.credential_id == authenticator.credential_id
    assert credential.public_key == authenticator.cose_public_key()
    assert credential.sign_count == 0
    assert credential.transports == ("internal", "hybrid")


@pytest.mark.parametrize(
    "forge",
    [
        {"origin": "http://evil.example:8765"},
        {"rp_id": "evil.example"},
        {"uv": False},
        {"challenge": b64url(bytes(32))},
    ],
    ids=["origin", "rp-id-hash", "no-uv", "challenge"],
)
def test_forged_registrations_are_refused_opaquely(forge):
    """Wrong origin, RP ID hash, missing UV or another challenge: the one opaque error."""
    with pytest.raises(ProofRejected) as refused:
        _register(SoftAuthenticator(), **forge)
    assert str(refused.value) == "Identity proof rejected"


def test_approval_challenge_is_the_digest_of_the_labelled_encoding():
    """The WebAuthn challenge is SHA-256(lp(label) ‖ lp(request id) ‖ lp(nonce) ‖ lp(details))."""
    challenge = _challenge()
    parts = (WEBAUTHN_LABEL, b"req-1", challenge.nonce, challenge.details)
    expected = hashlib.sha256(b"".join(struct.pack(">I", len(p)) + p for p in parts)).digest()
    assert approval_webauthn_challenge(challenge) == expected
    options = json.loads(authentication_options(POLICY, credential_ids=[], challenge=challenge))
    assert options["challenge"] == b64url(expected)
    assert options["userVerification"] == "required"
    assert options["rpId"] == "localhost"
    assert options["allowCredentials"] == []  # discoverable: the browser offers the passkeys


def test_assertion_verifies_and_returns_the_new_count(enrolled):
    """A user-verified assertion over the derived challenge verifies; the count rises."""
    authenticator, credential = enrolled
    challenge = _challenge()
    response = authenticator.get(_options(credential, challenge))
    assert assertion_credential_id(response) == credential.credential_id
    assert verify_assertion(POLICY, response, challenge, credential, user_id=USER) == 1


def test_synced_passkey_without_counter_is_accepted(enrolled):
    """A passkey that always reports 0 (synced) verifies while the stored count is 0 too."""
    _, credential = enrolled
    synced = SoftAuthenticator(step=0)
    synced.key, synced.credential_id = enrolled[0].key, credential.credential_id
    synced.user_handle = enrolled[0].user_handle
    challenge = _challenge()
    for _ in range(2):
        response = synced.get(_options(credential, challenge))
        assert verify_assertion(POLICY, response, challenge, credential, user_id=USER) == 0


@pytest.mark.parametrize(
    "forge",
    [
        {"origin": "https://evil.example"},
        {"rp_id": "evil.example"},
        {"uv": False},
        {"challenge": "other-request"},
        {"sign_count": 5},  # the stored count is 5: not increasing
        {"sign_count": 3},  # below it: a regression
        {"tamper": True},
        {"user_handle": b"someone else"},
    ],
    ids=[
        "origin",
        "rp-id-hash",
        "no-uv",
        "other-request",
        "replayed-count",
        "regressed-count",
        "signature",
        "user-handle",
    ],
)
def test_forged_assertions_are_refused_opaquely(enrolled, forge):
    """Every forged assertion ends in the one ProofRejected with the same text."""
    authenticator, registered = enrolled
    credential = WebAuthnCredential(
        registered.credential_id, registered.public_key, 5, registered.transports
    )
    challenge = _challenge()
    if forge.get("challenge") == "other-request":
        # A genuine assertion, but for another request: its derived challenge differs.
        forge["challenge"] = b64url(approval_webauthn_challenge(_challenge("req-2")))
    elif "sign_count" not in forge:
        authenticator.sign_count = 5
    response = authenticator.get(_options(credential, challenge), **forge)
    with pytest.raises(ProofRejected) as refused:
        verify_assertion(POLICY, response, challenge, credential, user_id=USER)
    assert str(refused.value) == "Identity proof rejected"
    assert refused.value.to_problem() == ProofRejected("x").to_problem()


def test_assertion_by_another_credential_is_refused(enrolled):
    """An assertion by another passkey does not verify against this credential."""
    _, credential = enrolled
    other = SoftAuthenticator()
    _register(other)
    challenge = _challenge()
    response = other.get(authentication_options(POLICY, credential_ids=[], challenge=challenge))
    with pytest.raises(ProofRejected):
        verify_assertion(POLICY, response, challenge, credential, user_id=USER)


@pytest.mark.parametrize(
    "response",
    ["", "not json", "[]", '{"response": 1}', json.dumps({"response": {}, "x": "a" * 17000})],
)
def test_malformed_responses_are_rejected_proofs(enrolled, response):
    """Unparseable, wrongly shaped or oversized answers are rejected proofs, not crashes."""
    _, credential = enrolled
    with pytest.raises(ProofRejected):
        verify_assertion(POLICY, response, _challenge(), credential, user_id=USER)
    with pytest.raises(ProofRejected):
        verify_registration(POLICY, response, REG_CHALLENGE)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:8765", True),
        ("http://localhost:1", True),
        ("http://localhost", True),
        ("https://localhost:8443", True),
        ("http://localhost.evil.example:8765", False),
        ("http://127.0.0.1:8765", False),
        ("http://localhost:99999", False),
        ("http://localhost:8765/", False),
        ("null", False),
    ],
)
def test_default_origin_rule_takes_any_localhost_port(origin, allowed):
    """With no configured origins, any localhost port is accepted and nothing else."""
    assert POLICY.allows_origin(origin) is allowed


def test_configured_origins_are_matched_exactly():
    """A configured list is matched exactly; plain http is only ever localhost's."""
    policy = WebAuthnPolicy(rp_id="wallet.example", origins=("https://wallet.example",))
    assert policy.allows_origin("https://wallet.example")
    assert not policy.allows_origin("https://wallet.example:444")
    assert not policy.allows_origin(ORIGIN)
    open_policy = WebAuthnPolicy(rp_id="wallet.example")
    assert open_policy.allows_origin("https://wallet.example:444")
    assert not open_policy.allows_origin("http://wallet.example")


@pytest.mark.parametrize(
    "kwargs",
    [{"rp_id": "https://localhost"}, {"rp_id": "Local Host"}, {"origins": ("localhost",)}],
)
def test_bad_policies_are_invalid_input(kwargs):
    """An RP ID that is no host name or an origin without scheme is refused at start."""
    with pytest.raises(InvalidInput):
        WebAuthnPolicy(**kwargs)


def test_user_handle_is_a_labelled_digest_of_the_user_id():
    """The user handle is 32 bytes and differs per user."""
    assert len(user_handle(USER)) == 32
    assert user_handle(USER) != user_handle("u-bob")
