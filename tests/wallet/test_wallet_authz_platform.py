"""The wallet's side of authorization against the platform's real ``AuthorizationServer``.

``authz_fakes.FakeAuthz`` rebuilds the platform's checks by hand, which is what lets the
other tests inject faults; here the wallet's messages reach
``platform.authorization.AuthorizationServer`` itself (in-memory store, dispatched as
``platform.app``'s authorization routes dispatch them, each message round-tripped through
JSON as on the hop). So a drift between the challenge the wallet signs and the one the
platform verifies, or between ``narrowed_details`` and the platform's ``narrow``, fails
here and not only in the multi-process integration run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey
from wallet_fakes import USER

from patientkey.authz.catalog import default_catalog
from patientkey.authz.clientauth import CLIENT_ASSERTION_TYPE, client_assertion
from patientkey.authz.clients import ClientInfo, RegisteredClient
from patientkey.identity import DeviceAlgorithm, MemorySink
from patientkey.platform.authorization import AuthorizationServer, AuthzKeys
from patientkey.protocol.messages import Message
from patientkey.protocol.routes import (
    AUTHZ_DECIDE,
    AUTHZ_INBOX,
    AUTHZ_OTP,
    GRANTS_LIST,
    GRANTS_REVOKE,
    IDENTITY_ENROLL,
    OAUTH_BC_AUTHORIZE,
)
from patientkey.storage.memory import authz_store
from patientkey.wallet.authz import WalletAuthz, narrowed_details
from patientkey.wallet.store import WalletState

ISSUER = "https://platform.test"
APP = "pharmacy-app"
NETWORK = "127.0.0.1"
PASSWORD = "a long enough password"


class RealPlatform:
    """The authorization unit with one registered app, reached as the wallet's port."""

    def __init__(self) -> None:
        self.sink = MemorySink()
        self.store = authz_store()
        self.server = AuthorizationServer(
            self.store,
            issuer=ISSUER,
            keys=AuthzKeys.generate(),
            catalog=default_catalog(),
            gateway=self.sink,
        )
        self._app_key = Ed25519PrivateKey.generate()
        jwk = OKPKey.import_key(self._app_key.public_key()).as_dict(private=False)
        app = RegisteredClient(
            info=ClientInfo(
                client_id=APP, name="Apotheke am Markt", scenarios=frozenset({"pharmacy_dispense"})
            ),
            jwks={"keys": [jwk]},
        )
        with self.store.transaction() as repo:
            repo.clients.register(app)
        server = self.server
        # platform.app._authz_routes: the sender is the wallet's certificate name.
        self._routes: dict[str, Callable[[Any], Message]] = {
            IDENTITY_ENROLL: lambda m: server.enroll(USER, m, network=NETWORK),
            AUTHZ_INBOX: lambda m: server.inbox(USER, m),
            AUTHZ_OTP: lambda m: server.send_otp(USER, m),
            AUTHZ_DECIDE: lambda m: server.decide(USER, m, network=NETWORK),
            GRANTS_LIST: lambda m: server.grants(USER, m),
            GRANTS_REVOKE: lambda m: server.revoke_grant(USER, m),
        }

    def call(self, path: str, message: Message, reply: type[Any], /) -> Any:
        wire = type(message).model_validate_json(message.model_dump_json())
        answer = self._routes[path](wire)
        return reply.model_validate_json(answer.model_dump_json())

    def ask(self, p_ids: tuple[str, ...] = ("rx-1", "rx-2")) -> None:
        """The app asks (CIBA backchannel, private_key_jwt) for these prescriptions."""
        details = [
            {
                "type": "health_record_access",
                "record_types": ["prescription"],
                "records": {"his_id": "his-1", "ids": list(p_ids)},
                "actions": ["view", "fetch", "use"],
                "purpose": "pharmacy_dispense",
            }
        ]
        assertion = client_assertion(
            APP, self._app_key, audience=ISSUER + OAUTH_BC_AUTHORIZE, now=int(time.time())
        )
        form = {
            "login_hint": USER,
            "binding_message": "BLUE-FOX-7",
            "authorization_details": json.dumps(details),
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        answer = self.server.backchannel(form, endpoint=OAUTH_BC_AUTHORIZE)
        assert answer.status == 200, answer.body


@pytest.fixture
def platform() -> RealPlatform:
    return RealPlatform()


def wallet_of(platform: RealPlatform) -> WalletAuthz:
    return WalletAuthz(state=WalletState(user_id=USER), save=lambda: None, call=platform.call)


@pytest.mark.parametrize("algorithm", list(DeviceAlgorithm))
def test_a_narrowed_approval_is_verified_and_granted_by_the_platform(
    platform: RealPlatform, algorithm: DeviceAlgorithm
) -> None:
    """Password + device signature over narrowed details: the platform grants exactly them."""
    wallet = wallet_of(platform)
    state = wallet.enroll_identity(password=PASSWORD, algorithm=algorithm)
    assert state.device_key_ids == [wallet.device_key_id]
    platform.ask()
    (request,) = wallet.inbox()
    approved = narrowed_details(
        request.authorization_details, actions=["view"], records=["rx-2"], duration="P7D"
    )
    outcome = wallet.approve(request, approved_details=approved, password=PASSWORD)
    assert outcome.state == "approved"
    assert outcome.authorization_details == approved
    (grant,) = wallet.grants()
    assert grant.grant_id == outcome.grant_id
    assert set(grant.proofs) == {"password", "device_signature"}
    assert grant.authorization_details == approved
    revoked = wallet.revoke(grant.grant_id)
    assert (revoked.status, revoked.revoked_by) == ("revoked", "patient")


def test_a_one_time_code_and_the_device_key_approve_everything_asked(
    platform: RealPlatform,
) -> None:
    """An SMS code sent by the platform plus the device signature approve the whole request."""
    wallet = wallet_of(platform)
    wallet.enroll_identity(sms="+4915112345678", algorithm=DeviceAlgorithm.ED25519)
    platform.ask()
    platform.ask(("rx-3",))
    (request,) = [
        r for r in wallet.inbox() if r.authorization_details[0]["records"]["ids"] == ["rx-3"]
    ]
    sent = wallet.send_otp(request.request_id, "sms")
    code = platform.sink.messages[-1].code
    outcome = wallet.approve(request, otp=(sent.challenge_id, code))
    assert outcome.authorization_details == request.authorization_details
    assert len(wallet.inbox()) == 1  # the other request still waits


def test_a_denial_leaves_no_grant(platform: RealPlatform) -> None:
    """deny answers denied; the request leaves the inbox and no grant exists."""
    wallet = wallet_of(platform)
    wallet.enroll_identity(algorithm=DeviceAlgorithm.ED25519)  # the device key makes a patient
    platform.ask()
    (request,) = wallet.inbox()
    assert wallet.deny(request.request_id).state == "denied"
    assert wallet.inbox() == []
    assert wallet.grants() == []
