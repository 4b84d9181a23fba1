"""The wallet's passkey calls against the platform's real ``AuthorizationServer``: the
web page's sequence (begin → create → register; request options → get → approve)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from test_wallet_authz_platform import RealPlatform, wallet_of
from wallet_fakes import USER

from patientkey.errors import CryptoError
from patientkey.identity import ProofKind, ProofRejected
from patientkey.identity.webauthn import b64url
from patientkey.wallet.authz import WalletAuthz, narrowed_details
from patientkey.wallet.store import WalletState

# The software authenticator lives with the identity tests (one copy for every layer).
sys.path.insert(0, str(Path(__file__).parents[1] / "identity"))
soft = importlib.import_module("soft_authenticator")


@pytest.fixture
def platform() -> RealPlatform:
    return RealPlatform()


def test_register_then_approve_with_a_passkey_alone(platform):
    """A passkey registered through the wallet approves a narrowed request by itself."""
    wallet = wallet_of(platform)
    authenticator = soft.SoftAuthenticator()
    options = wallet.webauthn_begin()
    state = wallet.webauthn_register(authenticator.create(options))
    assert "webauthn" in state.proofs
    assert state.webauthn_credential_ids == [b64url(authenticator.credential_id)]
    platform.ask(("rx-1", "rx-2"))
    (request,) = wallet.inbox()
    approved = narrowed_details(request.authorization_details, records=["rx-1"])
    request_options = json.loads(wallet.webauthn_request_options(request, approved))
    # allowCredentials from the last IdentityState: the passkey just registered.
    assert [c["id"] for c in request_options["allowCredentials"]] == state.webauthn_credential_ids
    assertion = authenticator.get(json.dumps(request_options))
    outcome = wallet.approve(request, approved_details=approved, device=False, webauthn=assertion)
    assert outcome.state == "approved"
    assert outcome.authorization_details == approved
    with platform.store.transaction() as repo:
        (grant,) = repo.grants.for_user(wallet.user_id)
        assert grant.proofs == frozenset({ProofKind.WEBAUTHN})


def test_options_for_all_details_do_not_approve_a_narrowed_grant(platform):
    """An assertion over the full request does not cover a narrower approval: refused."""
    wallet = wallet_of(platform)
    authenticator = soft.SoftAuthenticator()
    wallet.webauthn_register(authenticator.create(wallet.webauthn_begin()))
    platform.ask(("rx-1", "rx-2"))
    (request,) = wallet.inbox()
    assertion = authenticator.get(wallet.webauthn_request_options(request))
    approved = narrowed_details(request.authorization_details, records=["rx-1"])
    with pytest.raises(ProofRejected):
        wallet.approve(request, approved_details=approved, device=False, webauthn=assertion)
    assert len(wallet.inbox()) == 1


def test_a_fresh_wallet_asks_for_a_discoverable_passkey(platform):
    """A wallet that has seen no IdentityState sends empty allowCredentials."""
    state = WalletState(user_id=USER)
    first = WalletAuthz(state=state, save=lambda: None, call=platform.call)
    authenticator = soft.SoftAuthenticator()
    first.webauthn_register(authenticator.create(first.webauthn_begin()))
    platform.ask()
    # After a restart: the same keystore (install id), but no IdentityState remembered.
    later = WalletAuthz(state=state, save=lambda: None, call=platform.call)
    (request,) = later.inbox()
    options = later.webauthn_request_options(request)
    assert json.loads(options)["allowCredentials"] == []
    assert later.approve(request, device=False, webauthn=authenticator.get(options)).grant_id


def test_a_registration_the_platform_does_not_list_is_refused(platform):
    """If the answer does not list the registered credential, the wallet does not trust it."""
    wallet = wallet_of(platform)
    authenticator = soft.SoftAuthenticator()
    response = json.loads(authenticator.create(wallet.webauthn_begin()))
    real_call = platform.call

    def hiding(path, message, reply, /):
        state = real_call(path, message, reply)
        return state.model_copy(update={"webauthn_credential_ids": []})

    wallet._call = hiding
    with pytest.raises(CryptoError):
        wallet.webauthn_register(json.dumps(response))
