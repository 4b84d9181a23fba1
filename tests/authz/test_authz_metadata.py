"""Authorization server metadata (RFC 8414 §2) as OpenID Provider metadata (OIDC Discovery §3,
CIBA Core §4, RFC 9396 §10)."""

from __future__ import annotations

import contextlib
import json

import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata
from authz_helpers import ISSUER
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey

from patientkey.authz.catalog import Catalog
from patientkey.authz.clientauth import (
    ASSERTION_ALGS,
    CLIENT_ASSERTION_TYPE,
    InMemoryAssertionReplay,
    authenticate_client,
)
from patientkey.authz.clients import CIBA_GRANT_TYPE, ClientInfo, RegisteredClient
from patientkey.authz.metadata import DEFAULT_PATHS, SCENARIOS_MEMBER, server_metadata
from patientkey.errors import ConfigError
from patientkey.identity.assurance import ACR_VALUES
from patientkey.protocol import routes

NOW = 1_800_000_000
_ED = OKPKey.generate_key("Ed25519")
_RSA = RSAKey.generate_key(2048)
KEYS = {
    "Ed25519": _ED,
    "EdDSA": _ED,
    "ES256": ECKey.generate_key("P-256"),
    "PS256": _RSA,
    "RS256": _RSA,
}


@pytest.fixture
def metadata(catalog):
    return server_metadata(ISSUER, catalog=catalog)


def test_endpoints_default_to_the_issuer_plus_paths(metadata):
    """issuer, the four endpoints and jwks_uri, under the issuer by default."""
    assert metadata["issuer"] == ISSUER
    assert metadata["backchannel_authentication_endpoint"] == f"{ISSUER}/bc-authorize"
    assert metadata["token_endpoint"] == f"{ISSUER}/token"
    assert metadata["introspection_endpoint"] == f"{ISSUER}/introspect"
    assert metadata["revocation_endpoint"] == f"{ISSUER}/revoke"
    assert metadata["jwks_uri"] == f"{ISSUER}/jwks"


def test_paths_can_be_overridden(catalog):
    """A path or an absolute https URL replaces one default; the others stay."""
    doc = server_metadata(
        ISSUER,
        catalog=catalog,
        paths={"token_endpoint": "/oauth/token", "jwks_uri": "https://keys.example/jwks.json"},
    )
    assert doc["token_endpoint"] == f"{ISSUER}/oauth/token"
    assert doc["jwks_uri"] == "https://keys.example/jwks.json"
    assert doc["revocation_endpoint"] == f"{ISSUER}/revoke"


def test_an_issuer_with_a_path_and_trailing_slash(catalog):
    """RFC 8414 §2 allows a path in the issuer; it is kept exactly, endpoints join cleanly."""
    doc = server_metadata("https://id.example/tenant/", catalog=catalog)
    assert doc["issuer"] == "https://id.example/tenant/"
    assert doc["token_endpoint"] == "https://id.example/tenant/token"


@pytest.mark.parametrize(
    "issuer",
    [
        "http://platform.example",
        "https://platform.example?tenant=1",
        "https://platform.example?",
        "https://platform.example#top",
        "https://",
        "https://user@platform.example",
        "https://platform.example:https",
        "platform.example",
        "https://platform example",
        "",
    ],
)
def test_issuer_must_be_an_https_url_without_query_or_fragment(catalog, issuer):
    """RFC 8414 §2: https scheme, no query, no fragment; anything else is a config error."""
    with pytest.raises(ConfigError):
        server_metadata(issuer, catalog=catalog)


@pytest.mark.parametrize(
    "paths",
    [
        {"authorization_endpoint": "/authorize"},
        {"token_endpoint": "token"},
        {"token_endpoint": "//evil.example/token"},
        {"token_endpoint": "http://platform.example/token"},
        {"token_endpoint": "/token?x=1"},
        {"token_endpoint": "/token#x"},
    ],
    ids=["unknown", "relative", "scheme-relative", "http", "query", "fragment"],
)
def test_bad_paths_are_config_errors(catalog, paths):
    """Unknown endpoint names and non-https or query-bearing locations are refused."""
    with pytest.raises(ConfigError):
        server_metadata(ISSUER, catalog=catalog, paths=paths)


def test_ciba_members(metadata):
    """CIBA Core §4: the grant, poll and ping, user_code; no signed-request algorithms."""
    assert metadata["grant_types_supported"] == [CIBA_GRANT_TYPE]
    assert metadata["backchannel_token_delivery_modes_supported"] == ["poll", "ping"]
    assert metadata["backchannel_user_code_parameter_supported"] is True
    assert "backchannel_authentication_request_signing_alg_values_supported" not in metadata


def test_user_code_support_is_the_callers_to_say(catalog):
    """A server whose users keep no user_code advertises none (CIBA §4)."""
    doc = server_metadata(ISSUER, catalog=catalog, user_code=False)
    assert doc["backchannel_user_code_parameter_supported"] is False


def test_default_paths_are_the_platforms_routes():
    """The advertised endpoints are the routes the platform serves them on."""
    assert DEFAULT_PATHS == {
        "backchannel_authentication_endpoint": routes.OAUTH_BC_AUTHORIZE,
        "token_endpoint": routes.OAUTH_TOKEN,
        "introspection_endpoint": routes.OAUTH_INTROSPECT,
        "revocation_endpoint": routes.OAUTH_REVOKE,
        "jwks_uri": routes.OAUTH_JWKS,
    }


def test_client_authentication_members(metadata):
    """private_key_jwt at token, introspection and revocation, with the accepted algorithms."""
    for endpoint in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        assert metadata[f"{endpoint}_auth_methods_supported"] == ["private_key_jwt"]
        algs = metadata[f"{endpoint}_auth_signing_alg_values_supported"]
        assert algs == list(ASSERTION_ALGS)
        assert "none" not in algs
        assert not [alg for alg in algs if alg.startswith("HS")]


@pytest.mark.parametrize("alg", ASSERTION_ALGS)
def test_every_advertised_algorithm_is_accepted(catalog, alg):
    """Each token_endpoint_auth_signing_alg value signs an assertion that authenticates."""
    metadata = server_metadata(ISSUER, catalog=catalog)
    assert alg in metadata["token_endpoint_auth_signing_alg_values_supported"]
    key = KEYS[alg]
    info = ClientInfo(client_id="c", name="c", scenarios=frozenset({"research"}))
    client = RegisteredClient(info=info, jwks={"keys": [key.as_dict(private=False)]})
    claims = {
        "iss": "c",
        "sub": "c",
        "aud": metadata["token_endpoint"],
        "iat": NOW,
        "exp": NOW + 60,
        "jti": "j",
    }
    # joserfc warns whoever signs with the deprecated "EdDSA"; the verifier stays quiet.
    signing = pytest.warns(SecurityWarning) if alg == "EdDSA" else contextlib.nullcontext()
    with signing:
        assertion = jwt.encode({"alg": alg}, claims, key, algorithms=[alg])
    got = authenticate_client(
        {"client_assertion_type": CLIENT_ASSERTION_TYPE, "client_assertion": assertion},
        audiences=[metadata["token_endpoint"], metadata["issuer"]],
        lookup={"c": client}.get,
        replay=InMemoryAssertionReplay(clock=lambda: NOW),
        now=NOW,
    )
    assert got is client


def test_authorization_and_assurance_members(metadata):
    """RFC 9396 §10 details type; eIDAS acr values weakest first; openid the only scope."""
    assert metadata["authorization_details_types_supported"] == ["health_record_access"]
    assert metadata["acr_values_supported"] == [
        "http://eidas.europa.eu/LoA/low",
        "http://eidas.europa.eu/LoA/substantial",
        "http://eidas.europa.eu/LoA/high",
    ]
    assert set(metadata["acr_values_supported"]) == set(ACR_VALUES.values())
    assert metadata["scopes_supported"] == ["openid"]


def test_oidc_members_say_what_is_not_offered(metadata):
    """No authorization endpoint, no response type, no ID token, no claims/request params."""
    assert "authorization_endpoint" not in metadata
    assert metadata["response_types_supported"] == []
    assert metadata["id_token_signing_alg_values_supported"] == []
    assert metadata["subject_types_supported"] == ["public"]
    assert metadata["claims_parameter_supported"] is False
    assert metadata["request_parameter_supported"] is False
    # OIDC Discovery §3 defaults this one to true: it must be said.
    assert metadata["request_uri_parameter_supported"] is False


def test_scenarios_extension_lists_the_catalog(metadata, catalog):
    """The PatientKey extension lists each enabled scenario with its limits, sorted by name."""
    listed = metadata[SCENARIOS_MEMBER]
    assert [s["name"] for s in listed] == sorted(catalog.scenarios)
    pharmacy = next(s for s in listed if s["name"] == "pharmacy_dispense")
    scenario = catalog.scenarios["pharmacy_dispense"]
    assert pharmacy == {
        "name": "pharmacy_dispense",
        "description": scenario.description,
        "record_types": ["prescription"],
        "actions": list(scenario.actions),
        "max_duration": 30 * 86400,
        "assurance": "substantial",
        "acr": "http://eidas.europa.eu/LoA/substantial",
    }


def test_disabled_scenarios_are_not_listed(catalog):
    """A scenario switched off by the deployment does not appear."""
    base = {
        "scenarios": {
            name: {**s.model_dump(exclude={"name"}), "enabled": name != "research"}
            for name, s in catalog.scenarios.items()
        },
        "assurance": {lvl: m.model_dump(exclude={"level"}) for lvl, m in catalog.assurance.items()},
    }
    doc = server_metadata(ISSUER, catalog=Catalog.from_mapping(base))
    assert "research" not in [s["name"] for s in doc[SCENARIOS_MEMBER]]


def test_the_document_is_json_and_fresh(catalog):
    """It survives JSON, and changing one copy changes no later one."""
    first = server_metadata(ISSUER, catalog=catalog)
    assert json.loads(json.dumps(first)) == first
    first["token_endpoint_auth_signing_alg_values_supported"].append("none")
    first["grant_types_supported"].append("implicit")
    second = server_metadata(ISSUER, catalog=catalog)
    assert "none" not in second["token_endpoint_auth_signing_alg_values_supported"]
    assert second["grant_types_supported"] == [CIBA_GRANT_TYPE]
    assert dict(DEFAULT_PATHS)["token_endpoint"] == "/token"


def _failures(metadata_class: type, document: dict) -> set[str]:
    """The members Authlib's validator rejects, checked one by one."""
    validator = metadata_class(document)
    failed = set()
    for key in metadata_class.REGISTRY_KEYS:
        try:
            getattr(validator, f"validate_{key}")()
        except ValueError:
            failed.add(key)
    return failed


def test_authlib_rfc8414_validator_rejects_only_the_empty_response_types(metadata):
    """Authlib's RFC 8414 validator objects only to the deliberate empty response types."""
    assert _failures(AuthorizationServerMetadata, metadata) == {"response_types_supported"}


def test_authlib_oidc_validator_rejects_only_the_documented_deviations(metadata):
    """Authlib's OIDC Discovery validator objects only to the two documented deviations."""
    assert _failures(OpenIDProviderMetadata, metadata) == {
        "response_types_supported",
        "id_token_signing_alg_values_supported",
    }
