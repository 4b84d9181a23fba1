"""The third party's OAuth client against the platform's real OAuth routes, in-process.

Not the end-to-end run (no processes, no sockets): ``platform.oauth`` routes over the
``AuthorizationServer`` with an in-memory store, called through ``asgi_client`` with
the pharmacy's real certificate. The patient's decision is made directly on the store
(the wallet's proofs are the platform's tests' business). It checks that what this
client sends — forms, assertions, audiences — is what the platform accepts.
"""

from __future__ import annotations

import pytest
from ciba_fake import FakeClock
from fastapi import FastAPI
from thirdparty_helpers import HIS, USER, B

from patientkey.authz import ciba
from patientkey.authz.catalog import default_catalog
from patientkey.authz.errors import AuthorizationPending, DeniedByUser, InvalidClient
from patientkey.authz.grants import create_grant
from patientkey.authz.rar import RecordRef
from patientkey.authz.registration import parse_registration
from patientkey.identity import ProofKind
from patientkey.identity.password import PasswordVerifier
from patientkey.platform.authorization import AuthorizationServer, AuthzKeys
from patientkey.platform.oauth import install_oauth_routes
from patientkey.service.testing import asgi_client
from patientkey.storage.memory import authz_store
from patientkey.thirdparty.oauth import ClientKey, OAuthClient, client_registration, record_details

ISSUER = "https://testserver"


class _NoGateway:
    def send(self, message: object) -> None:
        raise AssertionError("no one-time codes in these tests")


@pytest.fixture
def world(pki):
    """The platform's authorization unit with the pharmacy registered and one patient."""
    clock = FakeClock()
    store = authz_store()
    catalog = default_catalog()
    server = AuthorizationServer(
        store,
        issuer=ISSUER,
        keys=AuthzKeys.generate(),
        catalog=catalog,
        gateway=_NoGateway(),
        clock=clock,
    )
    document = client_registration(
        B,
        certificate_pem=(pki / f"{B}.pem").read_text(encoding="ascii"),
        client_name="Apotheke am Markt",
        scenarios=["pharmacy_dispense"],
    )
    with store.transaction() as repo:
        repo.clients.register(parse_registration(document, catalog=catalog))
        repo.credentials.set_password_hash(USER, PasswordVerifier().hash("correct horse"))
    app = FastAPI()
    install_oauth_routes(app, server)
    http = asgi_client(app, pki_dir=pki, caller=B)
    client = OAuthClient(
        ClientKey.from_pki(pki, B), ISSUER, http=http, clock=clock, sleep=clock.sleep
    )
    yield store, server, client, clock
    client.close()


def decide(store, clock, *, approve: bool) -> None:
    """The patient's decision on the one pending request (password + TOTP: substantial)."""
    now = int(clock())
    with store.transaction() as repo:
        (pending,) = repo.requests.pending_for(USER, now)
        if not approve:
            assert repo.requests.replace(pending, ciba.deny(pending, user_id=USER, now=now).request)
            return
        new = ciba.approve(
            pending,
            user_id=USER,
            proofs={ProofKind.PASSWORD, ProofKind.TOTP},
            catalog=default_catalog(),
            now=now,
        ).request
        assert repo.requests.replace(pending, new)
        grant, _ = create_grant(
            grant_id=new.grant_id,
            user_id=USER,
            client_id=B,
            scenario=new.decision.scenario.name,
            details=new.granted,
            acr=new.acr,
            proofs=new.proofs,
            auth_time=now,
            now=now,
        )
        repo.grants.add(grant)


def details() -> list[dict]:
    return record_details(
        [f"{HIS}:p-1"], purpose="pharmacy_dispense", actions=["view", "fetch", "store", "use"]
    )


def test_the_platform_accepts_the_flow_and_the_token_passes_its_gate(world):
    """Request, pending, approval, token; the platform's use gate accepts the token."""
    store, server, client, clock = world
    ticket = client.request_authorization(USER, details(), "pharmacy-1 A1B2C3")
    kept = []
    with pytest.raises(AuthorizationPending):
        client.poll_token(ticket, wait=False, on_pending=kept.append)
    second = client.poll_once(kept[-1])
    assert isinstance(second.pending, AuthorizationPending)  # spaced: no slow_down
    decide(store, clock, approve=True)
    token = client.poll_token(second.ticket, wait=True)
    use = server.check_use(
        token.access_token,
        client_id=B,
        action="use",
        record=RecordRef("prescription", HIS, "p-1"),
        owner=USER,
    )
    assert use.grant.grant_id == token.grant_id
    assert client.introspect(token.access_token)["active"] is True
    client.revoke(token.access_token)
    assert client.introspect(token.access_token) == {"active": False}


def test_the_platforms_denial_reaches_the_client_as_denied_by_user(world):
    """The patient denies: the platform's access_denied (400) is DeniedByUser."""
    store, _, client, clock = world
    ticket = client.request_authorization(USER, details(), "pharmacy-1 A1B2C3")
    decide(store, clock, approve=False)
    with pytest.raises(DeniedByUser):
        client.poll_token(ticket, wait=True)


def test_the_platform_refuses_another_key(world, pki):
    """An assertion signed with a key other than the certificate's is invalid_client."""
    from cryptography.hazmat.primitives.asymmetric import ec

    _, _, client, _ = world
    client.key = ClientKey.from_private_key(B, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidClient):
        client.request_authorization(USER, details(), "m")
