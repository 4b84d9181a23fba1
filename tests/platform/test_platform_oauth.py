"""The OAuth/CIBA endpoints driven by a real OAuth client library (Authlib, private_key_jwt).

The app side is Authlib's httpx ``OAuth2Client`` with its ``PrivateKeyJWT`` client
authentication, unchanged, against the platform's routes in-process; the patient's side
is the platform world's wallet stand-in (password + device signature).
"""

from __future__ import annotations

import json

import pytest
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from platform_flows import setup_alice
from platform_world import ENVIRONMENT, HIS, ISSUER, World

from patientkey.authz.ciba import CIBA_GRANT_TYPE
from patientkey.authz.errors import InvalidToken
from patientkey.authz.rar import RecordRef
from patientkey.protocol.messages import AuthzDecision, InboxRequest
from patientkey.service.testing import asgi_transport

PHARMACY = "pharmacy-1"
DETAILS = [
    {
        "type": "health_record_access",
        "record_types": ["prescription"],
        "records": {"ids": ["rx-1"], "his_id": HIS},
        "actions": ["view", "fetch", "store", "use"],
        "purpose": "pharmacy_dispense",
    }
]


@pytest.fixture
def ready(memory_world: World):
    world = memory_world
    setup_alice(world)
    world.register()
    world.identity("u-alice")
    return world


def _client(world: World, name: str = PHARMACY) -> OAuth2Client:
    key = ECKey.import_key((world.pki / f"{name}.key").read_bytes())
    client = OAuth2Client(
        name,
        key,
        token_endpoint_auth_method="private_key_jwt",
        revocation_endpoint_auth_method="private_key_jwt",
        transport=asgi_transport(world.app, pki_dir=None, caller=None),
        base_url=ISSUER,
    )
    client.register_client_auth_method(PrivateKeyJWT(ISSUER + "/token", alg="ES256"))
    return client


def _bc_authorize(world: World, client: OAuth2Client, **extra: str):
    form = {
        "login_hint": "u-alice",
        "binding_message": "counter 1",
        "authorization_details": json.dumps(DETAILS),
        **extra,
    }
    # Authlib signs client authentication for any endpoint through the same auth object.
    auth = client.client_auth(client.token_endpoint_auth_method)
    auth.auth_method.token_endpoint = ISSUER + "/bc-authorize"
    return client.request(
        "POST", ISSUER + "/bc-authorize", data=form, auth=auth, withhold_token=True
    )


def _poll(client: OAuth2Client, auth_req_id: str):
    auth = client.client_auth(client.token_endpoint_auth_method)
    auth.auth_method.token_endpoint = ISSUER + "/token"
    return client.request(
        "POST",
        ISSUER + "/token",
        data={"grant_type": CIBA_GRANT_TYPE, "auth_req_id": auth_req_id},
        auth=auth,
        withhold_token=True,
    )


def test_discovery_documents_advertise_ciba_and_rar(ready):
    """Both well-known documents name the endpoints, CIBA poll/ping and health_record_access."""
    http = _client(ready)
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        meta = http.request("GET", ISSUER + path, withhold_token=True).json()
        assert meta["issuer"] == ISSUER
        assert meta["backchannel_authentication_endpoint"] == ISSUER + "/bc-authorize"
        assert set(meta["backchannel_token_delivery_modes_supported"]) == {"poll", "ping"}
        assert meta["authorization_details_types_supported"] == ["health_record_access"]
        assert CIBA_GRANT_TYPE in meta["grant_types_supported"]


def test_discovery_advertises_no_user_code(ready):
    """No patient can set a CIBA user_code, so the platform does not offer the parameter."""
    http = _client(ready)
    meta = http.request("GET", ISSUER + "/.well-known/openid-configuration", withhold_token=True)
    assert meta.json()["backchannel_user_code_parameter_supported"] is False


def test_whole_flow_with_authlib_poll_token_introspect_revoke(ready):
    """Authlib asks, polls (pending, slow_down), gets the token, introspects and revokes it."""
    world = ready
    client = _client(world)
    accepted = _bc_authorize(world, client)
    assert accepted.status_code == 200, accepted.text
    auth_req_id = accepted.json()["auth_req_id"]
    pending = _poll(client, auth_req_id)
    assert (pending.status_code, pending.json()["error"]) == (400, "authorization_pending")
    too_soon = _poll(client, auth_req_id)
    assert too_soon.json()["error"] == "slow_down"
    world.approve("u-alice")
    token = client.fetch_token(
        ISSUER + "/token", grant_type=CIBA_GRANT_TYPE, auth_req_id=auth_req_id
    )
    access = token["access_token"]
    claims = jwt.decode(
        access, KeySet.import_key_set(http_jwks(client)), algorithms=["Ed25519"]
    ).claims
    assert claims["client_id"] == PHARMACY
    assert claims["sub"] == "u-alice"
    assert claims["authorization_details"][0]["records"]["ids"] == ["rx-1"]
    assert claims["acr"].startswith("http://eidas.europa.eu/LoA/")
    again = _poll(client, auth_req_id)
    assert again.json()["error"] == "invalid_grant"  # a token is issued once
    active = client.introspect_token(ISSUER + "/introspect", token=access).json()
    assert active["active"] is True
    assert active["grant_id"] == claims["grant_id"]
    with world.authz_store.transaction() as repo:
        checked = [e for e in repo.events(user_id="u-alice") if e.kind == "authz.introspected"]
    assert [(e.detail["grant_id"], e.detail["actor"]) for e in checked] == [
        (claims["grant_id"], PHARMACY)
    ]
    record = RecordRef(record_type="prescription", his_id=HIS, p_id="rx-1")
    world.authz.check_use(access, client_id=PHARMACY, action="use", record=record, owner="u-alice")
    assert client.revoke_token(ISSUER + "/revoke", token=access).status_code == 200
    after = client.introspect_token(ISSUER + "/introspect", token=access).json()
    assert after == {"active": False}
    with pytest.raises(InvalidToken):
        world.authz.check_use(
            access, client_id=PHARMACY, action="use", record=record, owner="u-alice"
        )


def http_jwks(client: OAuth2Client) -> dict:
    return client.request("GET", ISSUER + "/jwks", withhold_token=True).json()


def test_denied_request_answers_access_denied(ready):
    """The patient denies: the app's next poll is access_denied."""
    world = ready
    client = _client(world)
    auth_req_id = _bc_authorize(world, client).json()["auth_req_id"]
    pending = world.authz.inbox("u-alice", InboxRequest(user_id="u-alice")).requests[0]
    world.authz.decide(
        "u-alice",
        AuthzDecision(
            user_id="u-alice",
            request_id=pending.request_id,
            decision="deny",
            environment=ENVIRONMENT,
        ),
        network="127.0.0.1",
    )
    answer = _poll(client, auth_req_id)
    assert (answer.status_code, answer.json()["error"]) == (400, "access_denied")


def test_another_clients_auth_req_id_is_invalid_grant(ready):
    """pharmacy-2 polling pharmacy-1's auth_req_id gets invalid_grant and changes nothing."""
    world = ready
    auth_req_id = _bc_authorize(world, _client(world)).json()["auth_req_id"]
    world.approve("u-alice")
    stolen = _poll(_client(world, "pharmacy-2"), auth_req_id)
    assert stolen.json()["error"] == "invalid_grant"
    mine = _poll(_client(world), auth_req_id)
    assert mine.status_code == 200
    assert "access_token" in mine.json()


def test_bad_requests_get_the_spec_errors_and_store_nothing(ready):
    """Over-broad details, an unknown patient, a replayed assertion: spec errors, no request."""
    world = ready
    client = _client(world)
    broad = [{**DETAILS[0], "actions": ["view", "delete"]}]
    answer = _bc_authorize(world, client, authorization_details=json.dumps(broad))
    assert answer.json()["error"] == "invalid_authorization_details"
    answer = _bc_authorize(world, client, login_hint="u-nobody")
    assert answer.json()["error"] == "unknown_user_id"
    form = {
        "login_hint": "u-alice",
        "binding_message": "x",
        "authorization_details": json.dumps(DETAILS),
        **world.assertion(PHARMACY, "/bc-authorize"),
    }
    first = world.client(None).post("/bc-authorize", data=form)
    assert first.status_code == 200
    replayed = world.client(None).post("/bc-authorize", data=form)
    assert (replayed.status_code, replayed.json()["error"]) == (401, "invalid_client")
    pending = world.authz.inbox("u-alice", InboxRequest(user_id="u-alice")).requests
    assert len(pending) == 1  # only the one accepted request


def test_tampered_token_is_refused_everywhere(ready):
    """A token with one changed character introspects inactive and fails the live gate."""
    world = ready
    token = world.grant("u-alice", PHARMACY, "rx-1")
    head, body, signature = token.split(".")
    tampered = (
        f"{head}.{body}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
    )
    client = _client(world)
    assert client.introspect_token(ISSUER + "/introspect", token=tampered).json() == {
        "active": False
    }
    record = RecordRef(record_type="prescription", his_id=HIS, p_id="rx-1")
    with pytest.raises(InvalidToken):
        world.authz.check_use(
            tampered, client_id=PHARMACY, action="use", record=record, owner="u-alice"
        )
