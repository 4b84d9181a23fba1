"""Passkeys (WebAuthn) at the authorization unit: enrollment in two calls, approval with
an assertion over the derived challenge, compare-and-set sign counts, lockout charges."""

from __future__ import annotations

import importlib
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest
from platform_world import ENVIRONMENT, World

from patientkey.authz.rar import dump_details, narrow, parse_authorization_details
from patientkey.errors import Conflict, InvalidInput
from patientkey.identity import ApprovalChallenge, ProofKind, ProofRejected
from patientkey.identity.webauthn import WebAuthnPolicy, authentication_options, b64url
from patientkey.protocol.messages import (
    AuthzDecision,
    IdentityEnroll,
    IdentityState,
    InboxRequest,
    PendingRequest,
    Proofs,
)
from patientkey.storage.authz import authz_store, totp_vault
from patientkey.storage.memory import platform_store

# The software authenticator lives with the identity tests (one copy for every layer).
sys.path.insert(0, str(Path(__file__).parents[1] / "identity"))
soft = importlib.import_module("soft_authenticator")

USER = "u-alice"
NETWORK = "127.0.0.1"


@pytest.fixture(params=["memory", "sqlite"])
def world(request: pytest.FixtureRequest, pki: Path) -> World:
    """The platform with its authorization unit on an in-memory or a SQLite store."""
    store = None
    if request.param == "sqlite":
        db = request.getfixturevalue("sqlite_db")
        store = authz_store(db, vault=totp_vault(secrets.token_bytes(32)))
    world = World(platform_store(), pki, authz_store=store)
    world.register()
    return world


def _enroll(world: World, user: str = USER, **fields: Any) -> IdentityState:
    message = IdentityEnroll(user_id=user, environment=ENVIRONMENT, **fields)
    return world.authz.enroll(user, message, network=NETWORK)


def _passkey(world: World, user: str = USER) -> Any:
    """Register a new software passkey for ``user`` through begin and register."""
    authenticator = soft.SoftAuthenticator()
    options = _enroll(world, user, webauthn_begin=True).webauthn_options
    assert options is not None
    _enroll(world, user, webauthn_registration=authenticator.create(options))
    return authenticator


def _pending(world: World, user: str = USER) -> list[PendingRequest]:
    return list(world.authz.inbox(user, InboxRequest(user_id=user)).requests)


def _request_options(pending: PendingRequest) -> str:
    """What the wallet computes: request options over the challenge of the full grant."""
    granted = dump_details(narrow(parse_authorization_details(pending.authorization_details), None))
    challenge = ApprovalChallenge.create(pending.request_id, granted, pending.nonce)
    return authentication_options(WebAuthnPolicy(), credential_ids=[], challenge=challenge)


def _decide(world: World, pending: PendingRequest, assertion: str, user: str = USER) -> Any:
    decision = AuthzDecision(
        user_id=user,
        request_id=pending.request_id,
        decision="approve",
        environment=ENVIRONMENT,
        proofs=Proofs(webauthn=assertion),
    )
    return world.authz.decide(user, decision, network=NETWORK)


def test_a_passkey_is_enrolled_by_begin_and_register(world):
    """begin answers creation options; register stores the passkey and lists it."""
    world.identity(USER)
    begun = _enroll(world, webauthn_begin=True)
    options = json.loads(begun.webauthn_options or "")
    assert options["rp"]["id"] == "localhost"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert "webauthn" not in begun.proofs
    authenticator = soft.SoftAuthenticator()
    state = _enroll(world, webauthn_registration=authenticator.create(json.dumps(options)))
    assert "webauthn" in state.proofs
    assert state.webauthn_credential_ids == [b64url(authenticator.credential_id)]
    assert state.webauthn_options is None
    # The next registration excludes the passkey the device holds already.
    again = json.loads(_enroll(world, webauthn_begin=True).webauthn_options or "")
    assert [c["id"] for c in again["excludeCredentials"]] == state.webauthn_credential_ids
    with world.authz_store.transaction() as repo:
        (stored,) = repo.webauthn.for_user(USER)
    assert stored.public_key == authenticator.cose_public_key()


def test_a_registration_challenge_is_used_once_even_when_refused(world):
    """A refused answer consumes the challenge; answering again needs a new begin."""
    authenticator = soft.SoftAuthenticator()
    options = _enroll(world, webauthn_begin=True).webauthn_options or ""
    with pytest.raises(ProofRejected):
        _enroll(
            world,
            webauthn_registration=authenticator.create(options, origin="https://evil.example"),
        )
    with pytest.raises(Conflict):
        _enroll(world, webauthn_registration=authenticator.create(options))
    with pytest.raises(Conflict):  # no begin at all
        _enroll(world, user="u-bob", webauthn_registration=authenticator.create(options))
    with pytest.raises(InvalidInput):
        _enroll(world, webauthn_begin=True, webauthn_registration=authenticator.create(options))


def test_a_passkey_alone_approves_a_substantial_request(world):
    """One user-verified assertion is two factors: pharmacy_dispense (substantial) is met."""
    world.ask(USER, "pharmacy-1", ("rx-1",))
    authenticator = _passkey(world)
    pending = _pending(world)[0]
    outcome = _decide(world, pending, authenticator.get(_request_options(pending)))
    assert outcome.state == "approved"
    assert outcome.acr is not None
    assert outcome.acr.endswith("/substantial")
    with world.authz_store.transaction() as repo:
        (grant,) = repo.grants.for_user(USER)
        assert grant.proofs == frozenset({ProofKind.WEBAUTHN})
        assert [c.sign_count for c in repo.webauthn.for_user(USER)] == [1]


def test_an_assertion_for_another_request_is_refused_and_charged(world):
    """A genuine assertion over another request's challenge fails, is charged and recorded."""
    world.ask(USER, "pharmacy-1", ("rx-1",))
    world.ask(USER, "pharmacy-2", ("rx-1",))
    authenticator = _passkey(world)
    first, second = _pending(world)
    with pytest.raises(ProofRejected):
        _decide(world, first, authenticator.get(_request_options(second)))
    assert len(_pending(world)) == 2  # nothing decided
    with world.authz_store.transaction() as repo:
        assert repo.lockout.get(USER, ProofKind.WEBAUTHN).failures == 1
        events = [e for e in repo.events(user_id=USER) if e.kind == "identity.proof"]
        assert (events[-1].detail["proof"], events[-1].detail["outcome"]) == (
            "webauthn",
            "rejected",
        )
        # The refused assertion recorded no count.
        assert [c.sign_count for c in repo.webauthn.for_user(USER)] == [0]


def test_a_cloned_authenticators_counter_is_refused(world):
    """After a use at count 1, an assertion that reports 1 again is refused."""
    world.ask(USER, "pharmacy-1", ("rx-1",))
    world.ask(USER, "pharmacy-2", ("rx-1",))
    authenticator = _passkey(world)
    first, second = _pending(world)
    _decide(world, first, authenticator.get(_request_options(first)))
    with pytest.raises(ProofRejected):
        _decide(world, second, authenticator.get(_request_options(second), sign_count=1))
    assert [p.request_id for p in _pending(world)] == [second.request_id]


def test_another_users_passkey_does_not_approve(world):
    """Bob's passkey is no proof for Alice, though it verifies for Bob."""
    world.ask(USER, "pharmacy-1", ("rx-1",))
    bobs = _passkey(world, "u-bob")
    pending = _pending(world)[0]
    with pytest.raises(ProofRejected):
        _decide(world, pending, bobs.get(_request_options(pending)))


def test_a_patient_with_only_a_passkey_can_be_asked(world):
    """The CIBA user directory knows a patient who enrolled nothing but a passkey."""
    _passkey(world, "u-carol")
    form = {
        "login_hint": "u-carol",
        "binding_message": "counter 1",
        "authorization_details": json.dumps(
            [
                {
                    "type": "health_record_access",
                    "record_types": ["prescription"],
                    "records": {"ids": ["rx-9"], "his_id": "hospital-1"},
                    "actions": ["view"],
                    "purpose": "pharmacy_dispense",
                }
            ]
        ),
        **world.assertion("pharmacy-1", "/bc-authorize"),
    }
    assert world.authz.backchannel(form, endpoint="/bc-authorize").status == 200
    assert len(_pending(world, "u-carol")) == 1
