"""RFC 9068 JWT access tokens signed with Ed25519: known answers and every refusal."""

from __future__ import annotations

import base64
import json

import pytest
from authz_helpers import (
    AUDIENCE,
    ISSUER,
    RFC8037_X,
    b64url_decode,
    details,
    entry,
    rfc8037_key,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import OctKey, OKPKey
from joserfc.jws import JWSRegistry

from patientkey.authz.errors import InvalidToken
from patientkey.authz.tokens import (
    AccessTokenIssuer,
    AccessTokenVerifier,
    key_id,
    token_response,
)
from patientkey.errors import ConfigError

NOW = 1_800_000_000
HIGH = "http://eidas.europa.eu/LoA/high"
# Known answer: the RFC 8037 A.1 key signing fixed claims (Ed25519 is deterministic).
KAT_TOKEN = (
    "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFZDI1NTE5Iiwia2lkIjoia1ByS19xbXhWV2FZVkE5d3dCRjZJdW8zdlZ6ejd"
    "UeEhDVHdYQnlnclM0ayJ9.eyJpc3MiOiJodHRwczovL3BsYXRmb3JtLnBhdGllbnRrZXkudGVzdCIsInN1YiI6ImFsaW"
    "NlIiwiYXVkIjoiaHR0cHM6Ly9wbGF0Zm9ybS5wYXRpZW50a2V5LnRlc3QvcmVjb3JkcyIsImV4cCI6MTgwMDAwMDMwMC"
    "wiaWF0IjoxODAwMDAwMDAwLCJqdGkiOiJqdGktMDAwMSIsImNsaWVudF9pZCI6InBoYXJtYWN5LTEiLCJncmFudF9pZC"
    "I6ImctMDAwMSIsImF1dGhvcml6YXRpb25fZGV0YWlscyI6W3sidHlwZSI6ImhlYWx0aF9yZWNvcmRfYWNjZXNzIiwicm"
    "Vjb3JkX3R5cGVzIjpbInByZXNjcmlwdGlvbiJdLCJyZWNvcmRzIjp7ImlkcyI6WyJQLTE3Il0sImhpc19pZCI6IkhJUy"
    "0xIn0sImFjdGlvbnMiOlsidmlldyIsImZldGNoIiwidXNlIl0sInB1cnBvc2UiOiJwaGFybWFjeV9kaXNwZW5zZSIsIm"
    "R1cmF0aW9uIjo2MDQ4MDB9XSwiYWNyIjoiaHR0cDovL2VpZGFzLmV1cm9wYS5ldS9Mb0EvaGlnaCIsImF1dGhfdGltZS"
    "I6MTgwMDAwMDAwMH0.9rutk5kKDeVwnjV7rygvMSNk-EicpFDm4AIdwPwNkjfC0h0tTjbPmDzYPyn5MkBLrNJi5MzTy3e"
    "nHzBWiO6ECQ"
)


def _issue(issuer, **overrides):
    args = {
        "sub": "alice",
        "audience": AUDIENCE,
        "client_id": "pharmacy-1",
        "grant_id": "g-0001",
        "details": details(),
        "acr": HIGH,
        "auth_time": NOW,
        "now": NOW,
        "jti": "jti-0001",
    }
    args.update(overrides)
    return issuer.issue(**args)


def _segments(token):
    header, payload, signature = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload)), signature


def _b64(data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_known_answer(issuer, verifier):
    """Fixed key and claims give these exact bytes, which verify to these claims."""
    issued = _issue(issuer)
    assert issued.token == KAT_TOKEN
    claims = verifier.verify(KAT_TOKEN, now=NOW + 10)
    assert claims == issued.claims
    assert claims.sub == "alice"
    assert claims.grant_id == "g-0001"
    assert claims.authorization_details == details()
    assert claims.exp - claims.iat == 300


def test_known_answer_verifies_with_plain_ed25519():
    """The signature is RFC 8032 Ed25519 over header.payload, by the RFC 8037 public key."""
    public = Ed25519PublicKey.from_public_bytes(b64url_decode(RFC8037_X))
    signing_input, _, signature = KAT_TOKEN.rpartition(".")
    public.verify(b64url_decode(signature), signing_input.encode("ascii"))


def test_header_and_claims_follow_rfc9068(issuer):
    """typ at+jwt, alg Ed25519, kid the RFC 7638 thumbprint (RFC 8037 A.3); §2.2 claims."""
    header, payload, _ = _segments(_issue(issuer).token)
    assert header == {
        "typ": "at+jwt",
        "alg": "Ed25519",
        "kid": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
    }
    assert set(payload) == {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "grant_id",
        "authorization_details",
        "acr",
        "auth_time",
    }
    assert key_id(rfc8037_key().public_key()) == header["kid"]


def test_random_jti_and_token_response(issuer):
    """Each token has its own jti; the token response carries the granted details (§7)."""
    one = issuer.issue(
        sub="alice",
        audience=AUDIENCE,
        client_id="pharmacy-1",
        grant_id="g",
        details=details(),
        acr=HIGH,
        auth_time=NOW,
        now=NOW,
    )
    two = issuer.issue(
        sub="alice",
        audience=AUDIENCE,
        client_id="pharmacy-1",
        grant_id="g",
        details=details(),
        acr=HIGH,
        auth_time=NOW,
        now=NOW,
    )
    assert one.claims.jti != two.claims.jti
    body = token_response(one)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["authorization_details"] == [details()[0].to_json()]


def test_jwks_publishes_only_the_public_key(issuer):
    """The JWK Set has the public key with kid, alg and use; never the private part."""
    (jwk,) = issuer.public_jwks()["keys"]
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": RFC8037_X,
        "kid": issuer.kid,
        "alg": "Ed25519",
        "use": "sig",
    }


def _tamper_payload(token, **changes):
    header, payload, signature = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims.update(changes)
    return f"{header}.{_b64(claims)}.{signature}"


def _resign(header, claims, key=None, alg="Ed25519"):
    key = key or OKPKey.import_key(rfc8037_key())
    registry = JWSRegistry(algorithms=[alg])
    return jwt.encode(header, claims, key, algorithms=[alg], registry=registry)


def _claims(token):
    return _segments(token)[1]


REFUSALS = {
    "tampered claim": lambda t: _tamper_payload(t, sub="mallory"),
    "tampered details": lambda t: _tamper_payload(
        t,
        authorization_details=[
            {**_claims(t)["authorization_details"][0], "actions": ["view", "share"]}
        ],
    ),
    "tampered signature": lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"),
    "no signature": lambda t: t.rpartition(".")[0] + ".",
    "typ JWT": lambda t: _resign(
        {"typ": "JWT", "alg": "Ed25519", "kid": _segments(t)[0]["kid"]}, _claims(t)
    ),
    "no typ": lambda t: _resign({"alg": "Ed25519", "kid": _segments(t)[0]["kid"]}, _claims(t)),
    "unknown kid": lambda t: _resign(
        {"typ": "at+jwt", "alg": "Ed25519", "kid": "other"}, _claims(t)
    ),
    "another key": lambda t: _resign(
        {"typ": "at+jwt", "alg": "Ed25519", "kid": _segments(t)[0]["kid"]},
        _claims(t),
        key=OKPKey.import_key(Ed25519PrivateKey.generate()),
    ),
    "alg HS256": lambda t: _resign(
        {"typ": "at+jwt", "alg": "HS256", "kid": _segments(t)[0]["kid"]},
        _claims(t),
        key=OctKey.import_key(b"k" * 32),
        alg="HS256",
    ),
    "alg none": lambda t: _b64({"typ": "at+jwt", "alg": "none"}) + "." + t.split(".")[1] + ".",
    "wrong issuer": lambda t: _resign(
        {"typ": "at+jwt", "alg": "Ed25519", "kid": _segments(t)[0]["kid"]},
        {**_claims(t), "iss": "https://evil.test"},
    ),
    "missing grant_id": lambda t: _resign(
        {"typ": "at+jwt", "alg": "Ed25519", "kid": _segments(t)[0]["kid"]},
        {k: v for k, v in _claims(t).items() if k != "grant_id"},
    ),
    "exp as bool": lambda t: _resign(
        {"typ": "at+jwt", "alg": "Ed25519", "kid": _segments(t)[0]["kid"]},
        {**_claims(t), "auth_time": True},
    ),
    "bad details": lambda t: _resign(
        {"typ": "at+jwt", "alg": "Ed25519", "kid": _segments(t)[0]["kid"]},
        {**_claims(t), "authorization_details": [{"type": "x"}]},
    ),
    "two audiences": lambda t: _resign(
        {"typ": "at+jwt", "alg": "Ed25519", "kid": _segments(t)[0]["kid"]},
        {**_claims(t), "aud": [AUDIENCE, "https://x"]},
    ),
    "kid not a string": lambda t: (
        _b64({"typ": "at+jwt", "alg": "Ed25519", "kid": ["k"]}) + "." + ".".join(t.split(".")[1:])
    ),
    "garbage": lambda t: "not a token",
    "empty": lambda t: "",
    "huge": lambda t: t + "A" * 30000,
    "non-ascii": lambda t: t + "é",
}


@pytest.mark.parametrize("make", REFUSALS.values(), ids=REFUSALS.keys())
def test_refused_tokens(issuer, verifier, make):
    """Tampered, re-signed, wrong-typ, wrong-alg, wrong-key tokens: one opaque InvalidToken."""
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(make(_issue(issuer).token), now=NOW + 1)
    assert caught.value.detail == "The access token is invalid"
    assert caught.value.status == 401
    assert "reason" not in json.dumps(caught.value.to_problem())


def test_typ_may_be_the_full_media_type(issuer, verifier):
    """RFC 9068 §4: application/at+jwt is accepted as well."""
    token = _issue(issuer).token
    header = {"typ": "application/at+jwt", "alg": "Ed25519", "kid": _segments(token)[0]["kid"]}
    assert verifier.verify(_resign(header, _claims(token)), now=NOW).sub == "alice"


def test_expired_and_future_tokens_are_refused(issuer, verifier):
    """exp is exclusive; a token from the future is refused; leeway is configurable."""
    token = _issue(issuer).token
    verifier.verify(token, now=NOW + 299)
    for now in (NOW + 300, NOW + 10_000, NOW - 1):
        with pytest.raises(InvalidToken):
            verifier.verify(token, now=now)
    lenient = AccessTokenVerifier(
        rfc8037_key().public_key(), issuer=ISSUER, audience=AUDIENCE, leeway=30
    )
    assert lenient.verify(token, now=NOW + 320).sub == "alice"


def test_wrong_audience_is_refused(issuer, verifier):
    """A token for another resource server is not accepted here."""
    token = _issue(issuer, audience="https://other.test/api").token
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token, now=NOW)
    assert caught.value.reason == "wrong audience"


def test_verify_issued_ignores_expiry_and_audience(issuer, verifier):
    """Revocation and introspection read authentic tokens whatever their state."""
    token = _issue(issuer, audience="https://other.test/api").token
    assert verifier.verify_issued(token).aud == "https://other.test/api"


def test_lifetime_and_leeway_limits():
    """Lifetimes above an hour or leeway above a minute are configuration errors."""
    with pytest.raises(ConfigError):
        AccessTokenIssuer(rfc8037_key(), issuer=ISSUER, lifetime=7200)
    with pytest.raises(ConfigError):
        AccessTokenVerifier(rfc8037_key().public_key(), issuer=ISSUER, audience=AUDIENCE, leeway=61)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_changed_character_is_refused(data):
    """Changing one character anywhere in the token makes it invalid."""
    issuer = AccessTokenIssuer(rfc8037_key(), issuer=ISSUER)
    verifier = AccessTokenVerifier(rfc8037_key().public_key(), issuer=ISSUER, audience=AUDIENCE)
    token = _issue(issuer, details=details(entry(actions=["view"]))).token
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from("AQgw_-.xyz0"))
    if token[index] == replacement:
        return
    changed = token[:index] + replacement + token[index + 1 :]
    try:
        claims = verifier.verify(changed, now=NOW)
    except InvalidToken:
        return
    # Base64url's last character may carry unused bits: the same bytes decode either way.
    assert claims == verifier.verify(token, now=NOW)
