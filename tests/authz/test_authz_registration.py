"""Client registration documents (RFC 7591 §2, CIBA §4, RFC 9396 §10) ⇄ RegisteredClient."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from authlib.oauth2.rfc7591 import ClientMetadataClaims
from authz_helpers import ISSUER, PHARMACY, PING_APP
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from patientkey.authz.catalog import Catalog
from patientkey.authz.clientauth import (
    CLIENT_ASSERTION_TYPE,
    InMemoryAssertionReplay,
    authenticate_client,
    client_assertion,
)
from patientkey.authz.clients import CIBA_GRANT_TYPE, RegisteredClient
from patientkey.authz.errors import OAuthError
from patientkey.authz.metadata import server_metadata
from patientkey.authz.registration import (
    InvalidClientMetadata,
    parse_registration,
    registration_document,
)
from patientkey.errors import InvalidInput, error_classes

ED_KEY = OKPKey.generate_key("Ed25519")
EC_KEY = ECKey.generate_key("P-256")
RSA_KEY = RSAKey.generate_key(2048)
NOW = 1_800_000_000


def pub(key: Any, kid: str = "k1", **members: Any) -> dict[str, Any]:
    return {**key.as_dict(private=False), "kid": kid, **members}


def doc(**changes: Any) -> dict[str, Any]:
    """A valid poll-mode registration; a value of ... removes the member."""
    base: dict[str, Any] = {
        "client_id": "pharmacy-1",
        "client_name": "Apotheke am Markt",
        "grant_types": [CIBA_GRANT_TYPE],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [pub(ED_KEY)]},
        "backchannel_token_delivery_mode": "poll",
        "patientkey_scenarios": ["pharmacy_dispense"],
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not ...}


def with_jwks(*keys: Any) -> dict[str, Any]:
    return doc(jwks={"keys": list(keys)})


def test_a_poll_client_is_registered(catalog):
    """A complete poll-mode document becomes the RegisteredClient it describes."""
    client = parse_registration(doc(), catalog=catalog)
    info = client.info
    assert info.client_id == client.client_id == "pharmacy-1"
    assert info.name == "Apotheke am Markt"
    assert info.grant_types == {CIBA_GRANT_TYPE}
    assert info.delivery_mode == "poll"
    assert info.notification_endpoint is None
    assert info.scenarios == {"pharmacy_dispense"}
    assert info.authorization_details_types == {"health_record_access"}
    assert client.jwks == {"keys": [pub(ED_KEY)]}


def test_a_ping_client_is_registered(catalog):
    """Ping mode with an https notification endpoint (CIBA §4)."""
    client = parse_registration(
        doc(
            backchannel_token_delivery_mode="ping",
            backchannel_client_notification_endpoint="https://app.example:8443/ciba/notify",
            patientkey_scenarios=["personal_app_sync", "research"],
        ),
        catalog=catalog,
    )
    assert client.info.delivery_mode == "ping"
    assert client.info.notification_endpoint == "https://app.example:8443/ciba/notify"
    assert client.info.scenarios == {"personal_app_sync", "research"}


def test_a_notification_endpoint_may_carry_a_query(catalog):
    """Unlike the issuer (RFC 8414 §2), a client's callback URL may have a query."""
    endpoint = "https://app.example/ciba?tenant=7"
    client = parse_registration(
        doc(
            backchannel_token_delivery_mode="ping",
            backchannel_client_notification_endpoint=endpoint,
        ),
        catalog=catalog,
    )
    assert client.info.notification_endpoint == endpoint


def test_every_supported_key_type_registers(catalog):
    """Ed25519, P-256 and RSA-2048 public keys, with use=sig and alg, are accepted."""
    keys = [pub(ED_KEY, use="sig", alg="Ed25519"), pub(EC_KEY, "k2"), pub(RSA_KEY, "k3")]
    client = parse_registration(with_jwks(*keys), catalog=catalog)
    assert [key["kid"] for key in client.jwks["keys"]] == ["k1", "k2", "k3"]


def test_unknown_members_are_ignored(catalog):
    """RFC 7591 §2: members the server does not understand are ignored, not stored."""
    client = parse_registration(doc(logo_uri="https://x.example/logo.png"), catalog=catalog)
    assert "logo_uri" not in registration_document(client)


def test_the_document_is_a_copy(catalog):
    """Changing the input document afterwards does not change the registered keys."""
    original = doc()
    client = parse_registration(original, catalog=catalog)
    original["jwks"]["keys"][0]["x"] = "changed"
    assert client.jwks["keys"][0]["x"] == ED_KEY.as_dict(private=False)["x"]


# --- the inverse -----------------------------------------------------------------------


def test_registration_document_round_trips(catalog):
    """parse ∘ document is the identity on registered clients, and the JSON survives."""
    client = parse_registration(
        doc(
            backchannel_token_delivery_mode="ping",
            backchannel_client_notification_endpoint="https://app.example/cb",
        ),
        catalog=catalog,
    )
    exported = registration_document(client)
    assert parse_registration(json.loads(json.dumps(exported)), catalog=catalog) == client


@pytest.mark.parametrize("info", [PHARMACY, PING_APP], ids=["poll", "ping"])
def test_registration_document_of_the_test_clients(catalog, info):
    """The shared test clients export to documents that parse back to themselves."""
    client = RegisteredClient(info=info, jwks={"keys": [pub(ED_KEY)]})
    assert parse_registration(registration_document(client), catalog=catalog) == client


def test_registration_document_members(catalog):
    """The export names RFC 7591 / CIBA / RFC 9396 members, sorted lists, explicit []."""
    exported = registration_document(parse_registration(doc(), catalog=catalog))
    assert exported == {
        "client_id": "pharmacy-1",
        "client_name": "Apotheke am Markt",
        "grant_types": [CIBA_GRANT_TYPE],
        "response_types": [],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [pub(ED_KEY)]},
        "backchannel_token_delivery_mode": "poll",
        "authorization_details_types": ["health_record_access"],
        "patientkey_scenarios": ["pharmacy_dispense"],
    }


def test_authlib_validates_the_exported_document_against_our_metadata(catalog):
    """Authlib's RFC 7591 validator, fed our metadata, accepts the export (bar response_types)."""
    exported = registration_document(parse_registration(doc(), catalog=catalog))
    options = ClientMetadataClaims.get_claims_options(server_metadata(ISSUER, catalog=catalog))
    del options["response_types"]
    ClientMetadataClaims(exported, {}, options).validate()


def test_authlib_reads_empty_response_types_as_code(catalog):
    """Authlib reads "response_types": [] as omitted, i.e. ["code"]: a known interop gap."""
    exported = registration_document(parse_registration(doc(), catalog=catalog))
    options = ClientMetadataClaims.get_claims_options(server_metadata(ISSUER, catalog=catalog))
    with pytest.raises(JoseError, match="response_types"):
        ClientMetadataClaims(exported, {}, options).validate()


def test_a_registered_client_authenticates(catalog):
    """The keys of a parsed registration verify the client's private_key_jwt assertions."""
    client = parse_registration(doc(), catalog=catalog)
    assertion = client_assertion("pharmacy-1", ED_KEY, audience=ISSUER, now=NOW, kid="k1")
    got = authenticate_client(
        {"client_assertion_type": CLIENT_ASSERTION_TYPE, "client_assertion": assertion},
        audiences=[ISSUER],
        lookup={"pharmacy-1": client}.get,
        replay=InMemoryAssertionReplay(clock=lambda: NOW),
        now=NOW,
    )
    assert got is client


# --- refusals --------------------------------------------------------------------------

_SHORT_N = RSA_KEY.as_dict(private=False)["n"][:171]  # 1024 bits of the real modulus
_PRIVATE_ED = ED_KEY.as_dict(private=True)

REFUSALS: dict[str, tuple[Any, str]] = {
    "not an object": (["client_id"], "JSON object"),
    "no client_id": (doc(client_id=...), "client_id"),
    "client_id with a space": (doc(client_id="my app"), "client_id"),
    "client_id too long": (doc(client_id="a" * 129), "client_id"),
    "no client_name": (doc(client_name=...), "client_name"),
    "blank client_name": (doc(client_name="  "), "client_name"),
    "client_name with a newline": (doc(client_name="Apotheke\nFake"), "client_name"),
    "no grant_types (default authorization_code)": (doc(grant_types=...), "grant_types"),
    "grant_types without CIBA": (doc(grant_types=["client_credentials"]), "grant_types"),
    "another grant besides CIBA": (
        doc(grant_types=[CIBA_GRANT_TYPE, "authorization_code"]),
        "grant_types",
    ),
    "grant_types not a list": (doc(grant_types=CIBA_GRANT_TYPE), "grant_types"),
    "response types": (doc(response_types=["code"]), "response_types"),
    "no auth method (default client_secret_basic)": (
        doc(token_endpoint_auth_method=...),
        "token_endpoint_auth_method",
    ),
    "client_secret_post": (
        doc(token_endpoint_auth_method="client_secret_post"),
        "token_endpoint_auth_method",
    ),
    "no jwks": (doc(jwks=...), "jwks"),
    "jwks_uri": (doc(jwks=..., jwks_uri="https://app.example/jwks"), "jwks_uri"),
    "jwks and jwks_uri": (doc(jwks_uri="https://app.example/jwks"), "jwks_uri"),
    "jwks not a set": (doc(jwks=[pub(ED_KEY)]), "jwks"),
    "empty jwks": (with_jwks(), "jwks"),
    "eleven keys": (with_jwks(*(pub(ED_KEY, f"k{i}") for i in range(11))), "at most"),
    "key not an object": (with_jwks("key"), r"jwks.keys\[0\]"),
    "private OKP key": (with_jwks({**_PRIVATE_ED, "kid": "k1"}), r"private key members \['d'\]"),
    "private RSA key": (
        with_jwks({**RSA_KEY.as_dict(private=True), "kid": "k1"}),
        "private key members",
    ),
    "symmetric key": (with_jwks({"kty": "oct", "k": "c2VjcmV0c2VjcmV0"}), "symmetric"),
    "encryption key": (with_jwks(pub(ED_KEY, use="enc")), "use"),
    "X25519 key": (with_jwks({"kty": "OKP", "crv": "X25519", "x": pub(ED_KEY)["x"]}), "Ed25519"),
    "P-384 key": (with_jwks(pub(ECKey.generate_key("P-384"))), "P-256"),
    "short RSA key": (
        with_jwks({"kty": "RSA", "n": _SHORT_N, "e": "AQAB", "kid": "k1"}),
        "2048",
    ),
    "malformed key": (with_jwks({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}), "malformed"),
    "alg unfit for the key": (with_jwks(pub(ED_KEY, alg="RS256")), "alg"),
    "HMAC alg": (with_jwks(pub(ED_KEY, alg="HS256")), "alg"),
    "duplicate kid": (with_jwks(pub(ED_KEY), pub(EC_KEY)), "unique"),
    "one bad key among good ones": (with_jwks(pub(ED_KEY), pub(ED_KEY, "k2", use="enc")), "use"),
    "no delivery mode": (doc(backchannel_token_delivery_mode=...), "delivery_mode"),
    "push mode": (doc(backchannel_token_delivery_mode="push"), "push"),
    "unknown mode": (doc(backchannel_token_delivery_mode="carrier-pigeon"), "delivery_mode"),
    "ping without endpoint": (doc(backchannel_token_delivery_mode="ping"), "required in ping"),
    "http endpoint": (
        doc(backchannel_client_notification_endpoint="http://app.example/cb"),
        "https",
    ),
    "endpoint with a fragment": (
        doc(backchannel_client_notification_endpoint="https://app.example/cb#x"),
        "https",
    ),
    "endpoint with an empty fragment": (
        doc(backchannel_client_notification_endpoint="https://app.example/cb#"),
        "https",
    ),
    "endpoint with a password only": (
        doc(backchannel_client_notification_endpoint="https://:p@app.example/cb"),
        "https",
    ),
    "endpoint too long": (
        doc(backchannel_client_notification_endpoint="https://app.example/" + "a" * 2048),
        "https",
    ),
    "endpoint with credentials": (
        doc(backchannel_client_notification_endpoint="https://u:p@app.example/cb"),
        "https",
    ),
    "endpoint with a bad port": (
        doc(backchannel_client_notification_endpoint="https://app.example:99999/cb"),
        "https",
    ),
    "endpoint without host": (doc(backchannel_client_notification_endpoint="https:///cb"), "https"),
    "signed requests": (
        doc(backchannel_authentication_request_signing_alg="ES256"),
        "signed requests",
    ),
    "unsupported details type": (
        doc(authorization_details_types=["payment_initiation"]),
        "authorization_details_types",
    ),
    "no details type": (doc(authorization_details_types=[]), "authorization_details_types"),
    "no scenarios": (doc(patientkey_scenarios=...), "patientkey_scenarios"),
    "empty scenarios": (doc(patientkey_scenarios=[]), "patientkey_scenarios"),
    "unknown scenario": (doc(patientkey_scenarios=["mind_reading"]), "mind_reading"),
    "scenarios not strings": (doc(patientkey_scenarios=[1]), "patientkey_scenarios"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusals_are_invalid_client_metadata(catalog, case):
    """Each invalid document raises invalid_client_metadata naming the member at fault."""
    document, message = REFUSALS[case]
    with pytest.raises(InvalidClientMetadata, match=message) as caught:
        parse_registration(copy.deepcopy(document), catalog=catalog)
    assert caught.value.to_oauth()["error"] == "invalid_client_metadata"
    assert caught.value.status == 400


def test_a_disabled_scenario_cannot_be_registered(catalog):
    """A scenario the deployment switched off is unknown to registration."""
    smaller = Catalog.from_mapping(
        {
            "scenarios": {
                name: {**s.model_dump(exclude={"name"}), "enabled": name != "research"}
                for name, s in catalog.scenarios.items()
            },
            "assurance": {
                level: m.model_dump(exclude={"level"}) for level, m in catalog.assurance.items()
            },
        }
    )
    with pytest.raises(InvalidClientMetadata, match="research"):
        parse_registration(doc(patientkey_scenarios=["research"]), catalog=smaller)
    assert parse_registration(doc(), catalog=smaller).info.scenarios == {"pharmacy_dispense"}


def test_private_key_refusal_does_not_echo_the_secret(catalog):
    """The message names the private members, never their values."""
    with pytest.raises(InvalidClientMetadata) as caught:
        parse_registration(with_jwks({**_PRIVATE_ED, "kid": "k1"}), catalog=catalog)
    assert _PRIVATE_ED["d"] not in caught.value.detail
    assert _PRIVATE_ED["d"] not in json.dumps(caught.value.to_problem())


def test_invalid_client_metadata_in_the_exception_tree():
    """RFC 7591 §3.2.2 error: an OAuthError and an InvalidInput, problem name unique."""
    assert issubclass(InvalidClientMetadata, OAuthError)
    assert issubclass(InvalidClientMetadata, InvalidInput)
    assert InvalidClientMetadata.error == "invalid_client_metadata"
    assert error_classes()["oauth-invalid-client-metadata"] is InvalidClientMetadata


# --- fuzz ------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
MEMBERS = [
    "client_id",
    "client_name",
    "grant_types",
    "response_types",
    "token_endpoint_auth_method",
    "jwks",
    "jwks_uri",
    "backchannel_token_delivery_mode",
    "backchannel_client_notification_endpoint",
    "authorization_details_types",
    "patientkey_scenarios",
]


@settings(max_examples=200, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(MEMBERS), JSON | st.just(...), max_size=4))
def test_any_document_registers_or_raises_invalid_client_metadata(catalog, changes):
    """Fuzz invariant: a mutated document parses or raises InvalidClientMetadata, nothing else."""
    try:
        client = parse_registration(doc(**changes), catalog=catalog)
    except InvalidClientMetadata:
        return
    assert parse_registration(registration_document(client), catalog=catalog) == client
