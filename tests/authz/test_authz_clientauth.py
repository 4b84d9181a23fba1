"""private_key_jwt client authentication (RFC 7523 §2.2, §3; RFC 7521 §4.2; OIDC Core §9).

Assertions come from Authlib's real client code (``private_key_jwt_sign``,
``PrivateKeyJWT``) where it can make them, and are crafted by hand for the refusals.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import parse_qsl

import pytest
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from authz_helpers import ISSUER
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws, jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from patientkey.authz import clientauth
from patientkey.authz.clientauth import (
    ASSERTION_ALGS,
    CLIENT_ASSERTION_TYPE,
    FAILURE,
    InMemoryAssertionReplay,
    authenticate_client,
    client_assertion,
    verification_key,
)
from patientkey.authz.clients import ClientInfo, RegisteredClient
from patientkey.authz.errors import InvalidClient
from patientkey.authz.form import single_params
from patientkey.errors import ConfigError

ENDPOINT = f"{ISSUER}/token"
AUDIENCES = (ENDPOINT, ISSUER)
NOW = 1_800_000_000
CIBA_BODY = "grant_type=urn%3Aopenid%3Aparams%3Agrant-type%3Aciba&auth_req_id=abc"

ED_KEY = OKPKey.generate_key("Ed25519")
EC_KEY = ECKey.generate_key("P-256")
RSA_KEY = RSAKey.generate_key(2048)
OTHER_KEY = OKPKey.generate_key("Ed25519")
KEYS = {"Ed25519": ED_KEY, "ES256": EC_KEY, "PS256": RSA_KEY, "RS256": RSA_KEY}
# Signing with anything but the accepted algorithms needs a registry that allows them.
ANY_ALG = JWSRegistry(algorithms=["Ed25519", "ES256", "PS256", "RS256", "ES384"])


def public(key: Any, kid: str = "k1", **members: Any) -> dict[str, Any]:
    return {**key.as_dict(private=False), "kid": kid, **members}


def registered(client_id: str, *jwks: dict[str, Any]) -> RegisteredClient:
    info = ClientInfo(client_id=client_id, name=client_id, scenarios=frozenset({"research"}))
    return RegisteredClient(info=info, jwks={"keys": list(jwks)})


CLIENTS = {
    "ed-app": registered("ed-app", public(ED_KEY)),
    "ec-app": registered("ec-app", public(EC_KEY)),
    "rsa-app": registered("rsa-app", public(RSA_KEY)),
    "rs256-only": registered("rs256-only", public(RSA_KEY, alg="RS256")),
    "other-app": registered("other-app", public(OTHER_KEY)),
}
APP_OF = {"Ed25519": "ed-app", "ES256": "ec-app", "PS256": "rsa-app", "RS256": "rsa-app"}


def form(assertion: str, **extra: str) -> dict[str, str]:
    return {"client_assertion_type": CLIENT_ASSERTION_TYPE, "client_assertion": assertion, **extra}


def authenticate(
    params: dict[str, str],
    *,
    replay: InMemoryAssertionReplay | None = None,
    now: int = NOW,
    clients: dict[str, RegisteredClient] | None = None,
    **options: int,
) -> RegisteredClient:
    return authenticate_client(
        params,
        audiences=AUDIENCES,
        lookup=(clients or CLIENTS).get,
        replay=InMemoryAssertionReplay(clock=lambda: now) if replay is None else replay,
        now=now,
        **options,
    )


def claims(client_id: str = "ed-app", **changes: Any) -> dict[str, Any]:
    """Valid claims for ``client_id`` at NOW; a value of ... removes the claim."""
    base: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": ENDPOINT,
        "iat": NOW,
        "exp": NOW + 60,
        "jti": "jti-" + hashlib.sha256(repr(sorted(changes.items())).encode()).hexdigest()[:16],
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not ...}


def sign(payload: dict[str, Any], key: Any = ED_KEY, **header: Any) -> str:
    alg = header.setdefault("alg", "Ed25519")
    header.setdefault("kid", "k1")
    header = {name: value for name, value in header.items() if value is not None}
    return jwt.encode(header, payload, key, algorithms=[alg], registry=ANY_ALG)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"
    )


def raw_sign(header: dict[str, Any], payload: dict[str, Any] | bytes) -> str:
    """An Ed25519 JWS over any header and payload, without a library's checks."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    return f"{signing_input}.{b64(ED_KEY.get_op_key('sign').sign(signing_input.encode()))}"


def hs256_with_public_key() -> str:
    """The algorithm-confusion attack: HMAC keyed with the client's public key bytes."""
    secret = ED_KEY.get_op_key("verify").public_bytes(Encoding.Raw, PublicFormat.Raw)
    head = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    body = b64(json.dumps(claims()).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


class AlwaysNew:
    """A replay store that has never seen anything."""

    def use_assertion(self, client_id: str, jti: str, expires_at: int) -> bool:
        return True


def refused(params: dict[str, str], **kwargs: Any) -> InvalidClient:
    with pytest.raises(InvalidClient) as caught:
        authenticate(params, **kwargs)
    return caught.value


# --- accepted: Authlib's client code ----------------------------------------------------


@pytest.mark.parametrize("alg", ["Ed25519", "ES256", "PS256", "RS256"])
def test_authlib_private_key_jwt_sign_is_accepted(alg):
    """An assertion from Authlib's private_key_jwt_sign authenticates its client, per key type."""
    now = int(time.time())
    assertion = private_key_jwt_sign(KEYS[alg], APP_OF[alg], ENDPOINT, alg=alg, expires_in=60)
    assert authenticate(form(assertion), now=now).client_id == APP_OF[alg]


def test_authlib_assertion_with_the_issuer_as_audience_is_accepted():
    """aud may name the issuer instead of the endpoint (RFC 7523 §3 item 3)."""
    now = int(time.time())
    assertion = private_key_jwt_sign(ED_KEY, "ed-app", ISSUER, alg="Ed25519", expires_in=60)
    assert authenticate(form(assertion, client_id="ed-app"), now=now).client_id == "ed-app"


def test_authlib_eddsa_alg_is_accepted_for_ed25519_keys():
    """The deprecated polymorphic "EdDSA" still verifies on an Ed25519 key (RFC 9864 §2.2)."""
    now = int(time.time())
    with pytest.warns(SecurityWarning):  # joserfc warns the signer, not us
        assertion = private_key_jwt_sign(ED_KEY, "ed-app", ENDPOINT, alg="EdDSA", expires_in=60)
    assert authenticate(form(assertion), now=now).client_id == "ed-app"


def test_authlib_private_key_jwt_auth_method_form_is_accepted():
    """Authlib's PrivateKeyJWT form authenticates once max_lifetime allows its 1 h exp."""
    now = int(time.time())
    auth = ClientAuth("ed-app", ED_KEY, PrivateKeyJWT(ENDPOINT, alg="Ed25519"))
    _, _, body = auth.prepare("POST", ENDPOINT, {}, CIBA_BODY)
    params = single_params(parse_qsl(body, keep_blank_values=True))
    assert authenticate(params, now=now, max_lifetime=3600).client_id == "ed-app"


def test_authlib_default_one_hour_assertion_is_too_long_lived():
    """PrivateKeyJWT's default exp (iat + 3600) is refused under the default 300 s bound."""
    now = int(time.time())
    auth = ClientAuth("ed-app", ED_KEY, PrivateKeyJWT(ENDPOINT, alg="Ed25519"))
    _, _, body = auth.prepare("POST", ENDPOINT, {}, CIBA_BODY)
    params = single_params(parse_qsl(body, keep_blank_values=True))
    assert refused(params, now=now).detail == FAILURE


def test_authlib_private_key_jwt_with_fixed_claims_replays_its_jti():
    """Authlib's PrivateKeyJWT(claims=...) resends its first jti: the second is a replay."""
    # _sign() writes the generated jti into the caller's claims dict (Authlib 1.9.9).
    now = int(time.time())
    auth = ClientAuth(
        "ed-app", ED_KEY, PrivateKeyJWT(ENDPOINT, claims={"exp": now + 60}, alg="Ed25519")
    )
    replay = InMemoryAssertionReplay(clock=lambda: now)
    first = single_params(parse_qsl(auth.prepare("POST", ENDPOINT, {}, CIBA_BODY)[2]))
    second = single_params(parse_qsl(auth.prepare("POST", ENDPOINT, {}, CIBA_BODY)[2]))
    assert authenticate(first, now=now, replay=replay).client_id == "ed-app"
    assert refused(second, now=now, replay=replay).detail == FAILURE


# --- accepted: our own helper -----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "client_id", "alg"),
    [
        (ed25519.Ed25519PrivateKey.generate(), "ed-helper", "Ed25519"),
        (ec.generate_private_key(ec.SECP256R1()), "ec-helper", "ES256"),
        (RSA_KEY.get_op_key("sign"), "rsa-helper", "PS256"),
        (ED_KEY, "ed-helper-jwk", "Ed25519"),
        (EC_KEY, "ec-helper-jwk", "ES256"),
        (RSA_KEY, "rsa-helper-jwk", "PS256"),
    ],
)
def test_client_assertion_helper_round_trips(key, client_id, alg):
    """client_assertion signs with the key's algorithm, and the result authenticates."""
    jwk = OKPKey if alg == "Ed25519" else ECKey if alg == "ES256" else RSAKey
    imported = key if isinstance(key, OKPKey | ECKey | RSAKey) else jwk.import_key(key)
    client = registered(client_id, public(imported, kid="helper"))
    assertion = client_assertion(client_id, key, audience=ENDPOINT, now=NOW, kid="helper")
    header = jws.extract_compact(assertion.encode()).headers()
    assert header["alg"] == alg
    assert header["kid"] == "helper"
    got = authenticate(form(assertion), clients={client_id: client})
    assert got is client


def test_client_assertion_claims():
    """The helper's claims: iss = sub = client_id, aud, iat, exp = iat + lifetime, random jti."""
    a = client_assertion("ed-app", ED_KEY, audience=ENDPOINT, now=NOW, lifetime=30)
    b = client_assertion("ed-app", ED_KEY, audience=ENDPOINT, now=NOW, lifetime=30)
    decoded = jwt.decode(a, ED_KEY, algorithms=["Ed25519"])
    assert decoded.claims["iss"] == decoded.claims["sub"] == "ed-app"
    assert decoded.claims["aud"] == ENDPOINT
    assert decoded.claims["exp"] - decoded.claims["iat"] == 30
    assert decoded.claims["jti"] != jwt.decode(b, ED_KEY, algorithms=["Ed25519"]).claims["jti"]


@pytest.mark.parametrize(
    ("key", "lifetime"),
    [
        (ED_KEY, 0),
        (ED_KEY, 3601),
        (OKPKey.import_key(ED_KEY.as_dict(private=False)), 60),
        (ECKey.generate_key("P-384"), 60),
        (ec.generate_private_key(ec.SECP384R1()), 60),
    ],
    ids=["zero-lifetime", "long-lifetime", "public-key", "p384-jwk", "p384"],
)
def test_client_assertion_helper_refuses_bad_settings(key, lifetime):
    """The helper refuses a lifetime out of range, a public key and an unsupported curve."""
    with pytest.raises(ConfigError):
        client_assertion("ed-app", key, audience=ENDPOINT, now=NOW, lifetime=lifetime)


# --- refused: one text for every failure --------------------------------------------------


def _tampered() -> str:
    head, _, sig = sign(claims()).split(".")
    return f"{head}.{b64(json.dumps(claims(sub='ed-app', jti='other')).encode())}.{sig}"


def _bad_signature() -> str:
    head, body, sig = sign(claims()).split(".")
    flipped = "A" if sig[0] != "A" else "B"
    return f"{head}.{body}.{flipped}{sig[1:]}"


REFUSALS: dict[str, Any] = {
    "wrong assertion type": lambda: {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        "client_assertion": sign(claims()),
    },
    "no assertion type": lambda: {"client_assertion": sign(claims())},
    "no assertion": lambda: {"client_assertion_type": CLIENT_ASSERTION_TYPE},
    "not a JWS": lambda: form("not-a-jwt"),
    "JWE-shaped": lambda: form("a.b.c.d.e"),
    "oversized": lambda: form(sign(claims(pad="x" * 9000))),
    "payload not an object": lambda: form(raw_sign({"alg": "Ed25519"}, b"[1, 2]")),
    "bad signature": lambda: form(_bad_signature()),
    "tampered payload": lambda: form(_tampered()),
    "other client's key": lambda: form(sign(claims(), OTHER_KEY)),
    "key of another registered client": lambda: form(sign(claims("other-app"), ED_KEY)),
    "wrong iss": lambda: form(sign(claims(iss="other-app"))),
    "no iss": lambda: form(sign(claims(iss=...))),
    "wrong sub": lambda: form(sign(claims(sub="other-app"))),
    "sub is another client, signed by it": lambda: form(sign(claims(sub="other-app"), OTHER_KEY)),
    "no sub": lambda: form(sign(claims(sub=...)), client_id="ed-app"),
    "client_id param differs": lambda: form(sign(claims()), client_id="other-app"),
    "wrong aud": lambda: form(sign(claims(aud="https://elsewhere.example/token"))),
    "aud list without us": lambda: form(sign(claims(aud=["https://a.example", "x"]))),
    "aud not a string": lambda: form(sign(claims(aud={"url": ENDPOINT}))),
    "no aud": lambda: form(sign(claims(aud=...))),
    "expired": lambda: form(sign(claims(iat=NOW - 120, exp=NOW - 31))),
    "no exp": lambda: form(sign(claims(exp=...))),
    "exp not a number": lambda: form(sign(claims(exp="soon"))),
    "exp a boolean": lambda: form(sign(claims(exp=True))),
    "exp an integer beyond a float": lambda: form(sign(claims(exp=10**400))),
    "iat an integer below a float": lambda: form(sign(claims(iat=-(10**400)))),
    "too long-lived": lambda: form(sign(claims(iat=NOW - 10, exp=NOW + 291))),
    "too long-lived without iat": lambda: form(sign(claims(iat=..., exp=NOW + 331))),
    "iat in the future": lambda: form(sign(claims(iat=NOW + 31, exp=NOW + 90))),
    "nbf in the future": lambda: form(sign(claims(nbf=NOW + 31))),
    "no jti": lambda: form(sign(claims(jti=...))),
    "empty jti": lambda: form(sign(claims(jti=""))),
    "jti not a string": lambda: form(sign(claims(jti=12345))),
    "unknown client": lambda: form(sign(claims("nobody"))),
    "client_secret present": lambda: form(sign(claims()), client_secret="hunter2"),
    "alg a list": lambda: form(raw_sign({"alg": ["Ed25519"]}, claims())),
    "alg missing": lambda: form(raw_sign({"kid": "k1"}, claims())),
    "alg none": lambda: form(unsigned({"alg": "none"}, claims()) + "AA"),
    "alg none, empty signature": lambda: form(unsigned({"alg": "none"}, claims())),
    "HS256 keyed with the public key": lambda: form(hs256_with_public_key()),
    "kid mismatch": lambda: form(sign(claims(), kid="k2")),
    "ES256 header on an Ed25519 client": lambda: form(sign(claims("ed-app"), EC_KEY, alg="ES256")),
    "ES384": lambda: form(sign(claims("ec-app"), ECKey.generate_key("P-384"), alg="ES384")),
    "alg the key's JWK forbids": lambda: form(sign(claims("rs256-only"), RSA_KEY, alg="PS256")),
    "crit header": lambda: form(raw_sign({"alg": "Ed25519", "crit": ["x"], "x": 1}, claims())),
    "unencoded payload (RFC 7797)": lambda: form(
        raw_sign({"alg": "Ed25519", "b64": False, "crit": ["b64"]}, claims())
    ),
    "typ of an access token": lambda: form(sign(claims(), typ="at+jwt")),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_every_refusal_is_the_same_invalid_client(case):
    """Each failure raises invalid_client (401) with one and the same description."""
    error = refused(REFUSALS[case]())
    assert error.detail == FAILURE
    assert error.status == 401
    assert error.to_oauth() == {"error": "invalid_client", "error_description": FAILURE}


def test_the_refusal_table_controls_pass():
    """The baseline the refusals mutate is itself accepted (so each refusal tests one thing)."""
    assert authenticate(form(sign(claims()))).client_id == "ed-app"
    assert authenticate(form(sign(claims("rs256-only"), RSA_KEY, alg="RS256"))).client_id
    assert authenticate(form(sign(claims(iat=..., exp=NOW + 330)))).client_id == "ed-app"
    assert authenticate(form(sign(claims(iat=NOW + 30, exp=NOW + 90)))).client_id == "ed-app"
    assert authenticate(form(sign(claims(aud=["x", ISSUER]), kid=None))).client_id
    assert authenticate(form(sign(claims(), typ="client-authentication+jwt"))).client_id


def test_a_replayed_assertion_is_refused():
    """The second use of one jti by one client is refused, even with a fresh signature."""
    replay = InMemoryAssertionReplay(clock=lambda: NOW)
    payload = claims(jti="once")
    assert authenticate(form(sign(payload)), replay=replay).client_id == "ed-app"
    assert refused(form(sign(payload)), replay=replay).detail == FAILURE
    # The same jti from another client is that client's own.
    other = claims("other-app", jti="once")
    assert authenticate(form(sign(other, OTHER_KEY)), replay=replay).client_id == "other-app"


def test_a_refused_assertion_does_not_burn_its_jti():
    """A jti is recorded only after every other check passed (STYLE.md 3)."""
    replay = InMemoryAssertionReplay(clock=lambda: NOW)
    refused(form(sign(claims(jti="j", aud="https://elsewhere.example"))), replay=replay)
    refused(form(sign(claims(jti="j"), OTHER_KEY)), replay=replay)
    assert replay.remembered() == 0
    assert authenticate(form(sign(claims(jti="j"))), replay=replay).client_id == "ed-app"


def test_the_jti_is_remembered_until_exp_plus_leeway():
    """The store is asked to keep a jti until the assertion could no longer pass."""
    seen: list[tuple[str, str, int]] = []

    class Spy:
        def use_assertion(self, client_id: str, jti: str, expires_at: int) -> bool:
            seen.append((client_id, jti, expires_at))
            return True

    authenticate_client(
        form(sign(claims(jti="spy"))),
        audiences=AUDIENCES,
        lookup=CLIENTS.get,
        replay=Spy(),
        now=NOW,
        leeway=10,
    )
    assert seen == [("ed-app", "spy", NOW + 60 + 10)]


@pytest.mark.parametrize(
    "options",
    [{"max_lifetime": 0}, {"max_lifetime": 3601}, {"leeway": -1}, {"leeway": 301}],
)
def test_bad_settings_are_config_errors(options):
    """Out-of-range lifetime or leeway is a local misconfiguration, not a client failure."""
    with pytest.raises(ConfigError):
        authenticate(form(sign(claims())), **options)


def test_no_audience_is_a_config_error():
    """Without an audience nothing could be accepted: refuse to run."""
    with pytest.raises(ConfigError):
        authenticate_client(
            form(sign(claims())), audiences=(), lookup=CLIENTS.get, replay=AlwaysNew(), now=NOW
        )


# --- the log ----------------------------------------------------------------------------


def test_the_precise_reason_goes_to_the_debug_log_only(caplog):
    """The module logger says why at debug level, without the assertion or key material."""
    assertion = sign(claims(aud="https://elsewhere.example"))
    with caplog.at_level(logging.DEBUG, logger="patientkey.authz.clientauth"):
        error = refused(form(assertion))
    assert "aud" not in error.detail
    records = [r for r in caplog.records if r.name == "patientkey.authz.clientauth"]
    assert [r.levelno for r in records] == [logging.DEBUG]
    text = records[0].getMessage()
    assert "aud names none of our audiences" in text
    assert "ed-app" in text
    assert assertion not in text
    assert assertion.split(".")[1] not in text
    assert ED_KEY.as_dict(private=False)["x"] not in text


def test_an_unknown_client_id_stays_out_of_the_log(caplog):
    """An unregistered id is an attacker's text: the log says only "unknown client"."""
    with caplog.at_level(logging.DEBUG, logger="patientkey.authz.clientauth"):
        refused(form(sign(claims("evil\nFAKE LOG LINE"))))
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "unknown client" in text
    assert "evil" not in text


# --- the key cache ----------------------------------------------------------------------


@pytest.fixture
def imports(monkeypatch):
    """Counts key imports."""
    counted: list[str] = []
    real = clientauth._import_jwk

    def counting(members: dict[str, Any]) -> Any:
        counted.append(members["kty"])
        return real(members)

    monkeypatch.setattr(clientauth, "_import_jwk", counting)
    return counted


def test_keys_are_imported_once_per_client_and_jwks(imports):
    """Repeated authentications of one client reuse its imported keys."""
    client = registered("cache-1", public(ED_KEY), public(EC_KEY, kid="k2"))
    for index in range(5):
        payload = claims("cache-1", jti=f"c{index}")
        authenticate(form(sign(payload)), clients={"cache-1": client})
    assert imports == ["OKP", "EC"]


def test_an_equal_jwks_in_a_new_object_is_not_imported_again(imports):
    """The cache keys on the JWKS content, not on the dict's identity."""
    first = registered("cache-2", public(ED_KEY))
    again = registered("cache-2", json.loads(json.dumps(public(ED_KEY))))
    authenticate(form(sign(claims("cache-2", jti="a"))), clients={"cache-2": first})
    authenticate(form(sign(claims("cache-2", jti="b"))), clients={"cache-2": again})
    assert imports == ["OKP"]


def test_a_re_registered_jwks_is_noticed(imports):
    """After key rotation the old key is refused and the new one accepted at once."""
    old = registered("cache-3", public(ED_KEY))
    new = registered("cache-3", public(OTHER_KEY))
    authenticate(form(sign(claims("cache-3", jti="1"))), clients={"cache-3": old})
    refused(form(sign(claims("cache-3", jti="2"))), clients={"cache-3": new})
    payload = claims("cache-3", jti="3")
    assert authenticate(form(sign(payload, OTHER_KEY)), clients={"cache-3": new}) is new
    assert imports == ["OKP", "OKP"]


def test_a_jwks_changed_in_place_is_noticed(imports):
    """A registration whose JWKS dict is edited in place is not served from the cache."""
    client = registered("cache-4", public(ED_KEY))
    authenticate(form(sign(claims("cache-4", jti="1"))), clients={"cache-4": client})
    client.jwks["keys"][0] = public(OTHER_KEY)
    refused(form(sign(claims("cache-4", jti="2"))), clients={"cache-4": client})
    payload = claims("cache-4", jti="3")
    assert authenticate(form(sign(payload, OTHER_KEY)), clients={"cache-4": client}) is client
    assert imports == ["OKP", "OKP"]


def test_the_key_cache_evicts_the_least_recently_used():
    """The LRU holds at most maxsize clients and drops the one unused longest."""
    cache = clientauth._KeyCache(2)
    a, b, c = (registered(name, public(ED_KEY)) for name in "abc")
    cache.keys_for(a)
    cache.keys_for(b)
    cache.keys_for(a)
    cache.keys_for(c)
    assert list(cache._entries) == ["a", "c"]


def test_unusable_keys_are_skipped_not_fatal():
    """A JWKS with an encryption key and a short RSA key still verifies with its good key."""
    numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    # Built by hand: importing a short RSA key into joserfc would (rightly) warn.
    short = {"kty": "RSA", "n": b64(numbers.n.to_bytes(128, "big")), "e": "AQAB"}
    client = registered(
        "mixed",
        {**public(OTHER_KEY, kid="enc"), "use": "enc"},
        {**short, "kid": "short"},
        {"kty": "OKP", "crv": "X25519", "x": public(ED_KEY)["x"], "kid": "x"},
        public(ED_KEY, kid="good"),
    )
    got = authenticate(form(sign(claims("mixed"), kid="good")), clients={"mixed": client})
    assert got is client
    payload = claims("mixed", jti="enc")
    refused(form(sign(payload, OTHER_KEY, kid="enc")), clients={"mixed": client})


def test_a_jwks_that_is_not_json_is_refused_not_crashed():
    """A registration holding something unserializable authenticates nobody."""
    client = RegisteredClient(
        info=ClientInfo(client_id="odd", name="odd", scenarios=frozenset({"research"})),
        jwks={"keys": [public(ED_KEY)], "when": object()},
    )
    refused(form(sign(claims("odd"))), clients={"odd": client})


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ({"kty": "oct", "k": "c2VjcmV0"}, "kty"),
        ({"kty": "OKP", "crv": "Ed448", "x": "AA"}, "Ed25519"),
        ({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}, "P-256"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, "malformed"),
        ({"kty": "EC", "crv": "P-256", "x": 1, "y": 2}, "strings"),
        ({**public(ED_KEY), "alg": "ES256"}, "alg"),
        ({**public(ED_KEY), "key_ops": ["encrypt"]}, "key_ops"),
        ({**public(ED_KEY), "kid": 7}, "kid"),
    ],
)
def test_verification_key_says_why_a_key_cannot_serve(jwk, message):
    """verification_key raises ValueError naming the fault."""
    with pytest.raises(ValueError, match=message):
        verification_key(jwk)


def test_an_eddsa_alg_jwk_admits_both_names():
    """A JWK registered with "alg": "EdDSA" verifies "Ed25519" assertions and the reverse."""
    assert verification_key({**public(ED_KEY), "alg": "EdDSA"}).algorithms == {
        "EdDSA",
        "Ed25519",
    }


def test_the_advertised_algorithms_are_exactly_the_verified_ones():
    """ASSERTION_ALGS (what metadata advertises) has no none, no HMAC."""
    assert set(ASSERTION_ALGS) == {"Ed25519", "EdDSA", "ES256", "PS256", "RS256"}


# --- the replay store -------------------------------------------------------------------


def test_the_replay_store_forgets_after_expiry():
    """An entry is purged once its expiry has passed on the store's clock."""
    clock = [1000.0]
    store = InMemoryAssertionReplay(clock=lambda: clock[0])
    assert store.use_assertion("c", "j", 1010)
    assert not store.use_assertion("c", "j", 1010)
    clock[0] = 1010.0
    assert not store.use_assertion("c", "j", 1010)  # still within its life
    clock[0] = 1011.0
    assert store.use_assertion("c", "other", 1100)
    assert store.remembered() == 1
    assert store.use_assertion("c", "j", 1100)


def test_the_replay_store_is_atomic_under_threads():
    """Of many threads presenting one jti at once, exactly one wins."""
    store = InMemoryAssertionReplay(clock=lambda: 0)
    barrier = threading.Barrier(16)
    results: list[bool] = []

    def worker() -> None:
        barrier.wait()
        results.append(store.use_assertion("c", "same", 100))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 15 + [True]


def test_a_full_replay_store_fails_closed():
    """At max_entries new assertions are refused until old ones expire."""
    clock = [0.0]
    store = InMemoryAssertionReplay(clock=lambda: clock[0], max_entries=2)
    assert store.use_assertion("c", "1", 10)
    assert store.use_assertion("c", "2", 10)
    assert not store.use_assertion("c", "3", 10)
    clock[0] = 11.0
    assert store.use_assertion("c", "3", 20)


def test_a_replay_store_needs_room():
    """A store of no entries is a misconfiguration."""
    with pytest.raises(ConfigError):
        InMemoryAssertionReplay(max_entries=0)


# --- properties -------------------------------------------------------------------------

NOT_A_DATE = st.one_of(st.text(max_size=5), st.booleans(), st.none(), st.lists(st.integers()))
MUTATIONS = st.one_of(
    st.tuples(st.sampled_from(["iss", "sub", "aud", "exp", "jti"]), st.just(...)),
    st.tuples(st.just("iss"), st.text(max_size=20).filter(lambda s: s != "ed-app")),
    st.tuples(st.just("sub"), st.text(min_size=1, max_size=20).filter(lambda s: s != "ed-app")),
    st.tuples(
        st.just("aud"),
        st.one_of(
            st.text(max_size=30).filter(lambda s: s not in AUDIENCES),
            st.lists(st.text(max_size=30).filter(lambda s: s not in AUDIENCES), max_size=3),
            st.integers(),
        ),
    ),
    st.tuples(st.just("exp"), st.one_of(st.integers(max_value=NOW - 30), NOT_A_DATE)),
    st.tuples(st.just("exp"), st.integers(min_value=NOW + 301, max_value=2**53)),
    st.tuples(st.just("iat"), st.integers(min_value=NOW + 31, max_value=NOW + 10**6)),
    st.tuples(st.just("iat"), st.integers(min_value=-(2**53), max_value=NOW + 60 - 301)),
    st.tuples(st.just("iat"), NOT_A_DATE),
    st.tuples(st.just("nbf"), st.integers(min_value=NOW + 31, max_value=2**53)),
    st.tuples(st.just("nbf"), NOT_A_DATE),
    st.tuples(
        st.just("jti"),
        st.one_of(st.just(""), st.integers(), st.none(), st.text(min_size=257, max_size=300)),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_random_claim_mutations_are_refused(mutations):
    """Signed with the right key, any claim set made invalid is refused with the one text."""
    payload = claims(**dict(mutations))
    with pytest.raises(InvalidClient) as caught:
        authenticate(form(sign(payload)))
    assert caught.value.detail == FAILURE


@settings(max_examples=200, deadline=None)
@given(
    params=st.dictionaries(
        st.sampled_from(
            ["client_assertion", "client_assertion_type", "client_id", "client_secret", "x"]
        ),
        st.one_of(
            st.text(max_size=200),
            st.just(CLIENT_ASSERTION_TYPE),
            st.from_regex(r"[A-Za-z0-9_-]{1,40}\.[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,90}"),
        ),
    )
)
def test_any_form_authenticates_or_raises_invalid_client(params):
    """Fuzz invariant: arbitrary forms never crash, they raise InvalidClient."""
    with pytest.raises(InvalidClient):
        authenticate(params)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
HEADER_NAMES = ["alg", "kid", "typ", "crit", "b64", "cty", "jku", "x5c", "zip"]


@settings(max_examples=200, deadline=None)
@given(
    header=st.dictionaries(
        st.sampled_from(HEADER_NAMES), JSON | st.sampled_from(["Ed25519", "k1", "JWT"])
    )
)
def test_any_header_authenticates_or_raises_invalid_client(header):
    """Fuzz invariant: a correctly signed assertion under any header never crashes."""
    try:
        client = authenticate(form(raw_sign(header, claims())))
    except InvalidClient:
        return
    assert header["alg"] == "Ed25519"
    assert client.client_id == "ed-app"
