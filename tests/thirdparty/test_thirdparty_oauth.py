"""The third party's OAuth / CIBA client: the sans-IO pieces, then the client against a
faithful fake of the platform's endpoints (``ciba_fake``)."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest
from ciba_fake import CibaFake, FakeClock
from joserfc import jwt
from joserfc.jwk import KeySet
from thirdparty_helpers import HIS, USER, B

from patientkey.authz import ciba
from patientkey.authz.catalog import default_catalog
from patientkey.authz.clientauth import CLIENT_ASSERTION_TYPE
from patientkey.authz.errors import (
    AccessDenied,
    AuthorizationPending,
    DeniedByUser,
    ExpiredToken,
    InsufficientUserAuthentication,
    InvalidAuthorizationDetails,
    InvalidClient,
    InvalidGrant,
    InvalidToken,
    OAuthError,
    SlowDown,
    UnknownUserId,
    oauth_errors,
)
from patientkey.authz.metadata import server_metadata
from patientkey.authz.rar import RecordRef, parse_authorization_details
from patientkey.authz.registration import parse_registration
from patientkey.errors import ConfigError, InvalidInput, PeerUnavailable
from patientkey.thirdparty.oauth import (
    DEFAULT_INTERVAL,
    POLL_MARGIN,
    SLOW_DOWN_STEP,
    BackchannelTicket,
    ClientKey,
    OAuthClient,
    after_poll,
    authentication_form,
    backchannel_form,
    client_registration,
    error_from_response,
    metadata_url,
    narrowed,
    parse_backchannel_response,
    parse_metadata,
    parse_token_response,
    record_details,
    token_form,
    token_hint_form,
)

ISSUER = "https://platform.test:9001"
T0 = 1_750_000_000.0


@pytest.fixture(scope="module")
def key(pki) -> ClientKey:
    """The pharmacy's certificate key, as its assertions are signed with."""
    return ClientKey.from_pki(pki, B)


@pytest.fixture(scope="module")
def registration(pki) -> dict:
    """The pharmacy's RFC 7591 document, built from its certificate as export builds it."""
    return client_registration(
        B,
        certificate_pem=(pki / f"{B}.pem").read_text(encoding="ascii"),
        client_name="Apotheke am Markt",
        scenarios=["pharmacy_dispense"],
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(registration, clock) -> CibaFake:
    return CibaFake(registration, issuer=ISSUER, clock=clock, users=(USER, "u-bob"))


@pytest.fixture
def client(key, fake, clock) -> OAuthClient:
    return OAuthClient(key, ISSUER, http=fake.http(), clock=clock, sleep=clock.sleep)


def details(ids=("p-1",), actions=("view", "fetch", "store", "use"), **extra) -> list[dict]:
    records = [f"{HIS}:{i}" for i in ids]
    return record_details(records, purpose="pharmacy_dispense", actions=list(actions), **extra)


def ticket(**overrides) -> BackchannelTicket:
    base = {
        "auth_req_id": "req-1",
        "expires_at": T0 + 300,
        "interval": 5,
        "user_id": USER,
        "binding_message": "pharmacy-1 A1B2C3",
        "requested": parse_authorization_details(details()),
        "created_at": T0,
    }
    base.update(overrides)
    return BackchannelTicket(**base)


# ── the client's key and registration ───────────────────────────────────────────────


def test_the_registration_is_one_the_platform_accepts(registration, key):
    """The exported document parses as a CIBA poll client with the certificate key as JWKS."""
    client = parse_registration(registration, catalog=default_catalog())
    assert client.client_id == B
    assert client.info.delivery_mode == "poll"
    assert client.info.scenarios == {"pharmacy_dispense"}
    assert registration["token_endpoint_auth_method"] == "private_key_jwt"
    assert registration["jwks"] == key.jwks()
    (jwk,) = registration["jwks"]["keys"]
    assert jwk["kid"] == key.kid
    assert {"d"} & set(jwk) == set()


def test_a_certificate_that_is_not_pem_is_a_configuration_error():
    """client_registration refuses a certificate it cannot read."""
    with pytest.raises(ConfigError):
        client_registration(B, certificate_pem="nope", client_name="x", scenarios=["a"])


def test_client_key_refuses_a_key_that_is_not_p256():
    """Only an EC P-256 key can make the ES256 assertions the export registers."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    with pytest.raises(ConfigError):
        ClientKey.from_pem(B, pem)
    with pytest.raises(ConfigError):
        ClientKey.from_pem(B, b"not a key")


def test_the_key_never_appears_in_its_repr(key):
    """ClientKey's repr names the client and kid, not the private key."""
    assert "private_key" not in repr(key)
    assert key.kid in repr(key)


# ── sans-IO: building requests ─────────────────────────────────────────────────────


def test_authentication_form_carries_a_fresh_valid_assertion(key, registration):
    """Each form has the RFC 7523 type and an ES256 JWT for the audience with a new jti."""
    keys = KeySet.import_key_set(registration["jwks"])
    seen = set()
    for _ in range(3):
        form = authentication_form(key, audience=ISSUER + "/token", now=int(T0))
        assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
        assert form["client_id"] == B
        token = jwt.decode(form["client_assertion"], keys, algorithms=["ES256"])
        assert token.header["kid"] == key.kid
        claims = token.claims
        assert (claims["iss"], claims["sub"], claims["aud"]) == (B, B, ISSUER + "/token")
        assert claims["exp"] - claims["iat"] == 60
        seen.add(claims["jti"])
    assert len(seen) == 3


def test_backchannel_form_sends_compact_checked_details():
    """login_hint, binding_message and the details as compact JSON; expiry only if asked."""
    form, parsed = backchannel_form(USER, details(), "pharmacy-1 A1B2C3", 120)
    assert form["login_hint"] == USER
    assert form["binding_message"] == "pharmacy-1 A1B2C3"
    assert form["requested_expiry"] == "120"
    sent = json.loads(form["authorization_details"])
    assert sent[0]["records"] == {"his_id": HIS, "ids": ["p-1"]}
    assert " " not in form["authorization_details"]
    assert parse_authorization_details(sent) == parsed
    assert "requested_expiry" not in backchannel_form(USER, parsed, "m")[0]


def test_backchannel_form_refuses_bad_input_before_sending():
    """Malformed details, no binding message or a bad expiry never leave the client."""
    with pytest.raises(InvalidAuthorizationDetails):
        backchannel_form(USER, details(actions=("view", "teleport")), "m")
    with pytest.raises(InvalidInput):
        backchannel_form(USER, details(), "")
    with pytest.raises(InvalidInput):
        backchannel_form(USER, details(), " padded ")
    with pytest.raises(InvalidInput):
        backchannel_form(USER, details(), "m", 0)
    with pytest.raises(InvalidInput):
        backchannel_form("", details(), "m")


def test_record_details_groups_records_by_hospital():
    """One object per hospital; HIS:* asks for all of it; P_IDs may hold colons."""
    out = record_details(
        ["his-b:p-2", "his-a:p-1", "his-a:x:9", "his-c:*", "his-c:p-7"],
        purpose="pharmacy_dispense",
        actions=["view", "use"],
        duration=3600,
    )
    assert [o["records"] for o in out] == [
        {"his_id": "his-a", "ids": ["p-1", "x:9"]},
        {"his_id": "his-b", "ids": ["p-2"]},
        {"his_id": "his-c"},
    ]
    assert all(o["duration"] == 3600 and o["actions"] == ["view", "use"] for o in out)
    for bad in ([], ["p-1"], [":p-1"], ["his-a:"]):
        with pytest.raises(InvalidInput):
            record_details(bad, purpose="pharmacy_dispense", actions=["use"])


def test_token_and_hint_forms():
    """The CIBA grant with the auth_req_id; RFC 7662/7009 forms name an access token."""
    assert token_form(ticket()) == {
        "grant_type": "urn:openid:params:grant-type:ciba",
        "auth_req_id": "req-1",
    }
    assert token_hint_form("abc") == {"token": "abc", "token_type_hint": "access_token"}


def test_metadata_url_puts_the_well_known_segment_after_the_host():
    """RFC 8414 §3.1, with and without a path in the issuer."""
    assert metadata_url(ISSUER) == ISSUER + "/.well-known/oauth-authorization-server"
    assert (
        metadata_url("https://as.test/tenant/")
        == "https://as.test/.well-known/oauth-authorization-server/tenant"
    )


# ── sans-IO: reading answers ─────────────────────────────────────────────────────────


def test_parse_metadata_reads_the_platforms_document():
    """The platform's own metadata gives the four endpoints under the issuer."""
    meta = parse_metadata(server_metadata(ISSUER, catalog=default_catalog()), issuer=ISSUER)
    assert meta.backchannel_authentication_endpoint == ISSUER + "/bc-authorize"
    assert meta.token_endpoint == ISSUER + "/token"
    assert meta.introspection_endpoint == ISSUER + "/introspect"
    assert meta.revocation_endpoint == ISSUER + "/revoke"


def test_parse_metadata_refuses_another_issuer():
    """RFC 8414 §3.3: a document naming another issuer is not used (ConfigError)."""
    doc = server_metadata("https://elsewhere.test", catalog=default_catalog())
    with pytest.raises(ConfigError, match="RFC 8414"):
        parse_metadata(doc, issuer=ISSUER)


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("backchannel_token_delivery_modes_supported", ["ping"]),
        ("token_endpoint_auth_methods_supported", ["client_secret_basic"]),
        ("grant_types_supported", ["authorization_code"]),
        ("token_endpoint_auth_signing_alg_values_supported", ["RS256"]),
        ("token_endpoint", "http://platform.test/token"),
        ("token_endpoint", None),
    ],
)
def test_parse_metadata_refuses_a_server_this_client_cannot_use(member, value):
    """No poll mode, no private_key_jwt/ES256, no CIBA grant, a non-https endpoint: refused."""
    doc = server_metadata(ISSUER, catalog=default_catalog())
    doc[member] = value
    with pytest.raises(PeerUnavailable):
        parse_metadata(doc, issuer=ISSUER)
    with pytest.raises(PeerUnavailable):
        parse_metadata(["not", "an", "object"], issuer=ISSUER)


def _every_oauth_error() -> list[type[OAuthError]]:
    return sorted(
        {cls for classes in oauth_errors().values() for cls in classes}, key=lambda c: c.__name__
    )


@pytest.mark.parametrize("cls", _every_oauth_error(), ids=lambda c: c.__name__)
def test_every_oauth_error_maps_back_to_its_class(cls):
    """Each error code at its status is raised as the very class the platform raised."""
    error = error_from_response(cls.status, {"error": cls.error, "error_description": "why"})
    assert type(error) is cls
    if cls is not InvalidToken:
        assert error.detail == "why"


def test_access_denied_is_told_apart_by_status():
    """access_denied is AccessDenied at 403 (CIBA §13) and DeniedByUser at 400 (§11)."""
    assert type(error_from_response(403, {"error": "access_denied"})) is AccessDenied
    assert type(error_from_response(400, {"error": "access_denied"})) is DeniedByUser


def test_error_answers_that_are_not_oauth_errors_are_peer_failures():
    """Unknown codes, no body, non-object bodies: PeerUnavailable, text sanitised."""
    unknown = error_from_response(500, {"error": "server_error", "error_description": "a\nb"})
    assert isinstance(unknown, PeerUnavailable)
    assert "\n" not in unknown.detail
    assert isinstance(error_from_response(502, None), PeerUnavailable)
    assert isinstance(error_from_response(400, ["error"]), PeerUnavailable)
    assert isinstance(error_from_response(400, {"error": 7}), PeerUnavailable)


def test_step_up_errors_keep_their_challenge():
    """insufficient_user_authentication keeps acr_values and max_age (RFC 9470 §3)."""
    error = error_from_response(
        401,
        {
            "error": "insufficient_user_authentication",
            "acr_values": "urn:a urn:b",
            "max_age": 300,
        },
    )
    assert isinstance(error, InsufficientUserAuthentication)
    assert error.acr_values == ("urn:a", "urn:b")
    assert error.max_age == 300


def test_parse_backchannel_response_makes_a_ticket():
    """auth_req_id, expiry on the client's clock, the interval (5 when absent, CIBA §7.3)."""
    requested = parse_authorization_details(details())
    args = {"user_id": USER, "binding_message": "m", "requested": requested, "now": T0}
    made = parse_backchannel_response(
        200, {"auth_req_id": "abc", "expires_in": 120, "interval": 7}, **args
    )
    assert (made.auth_req_id, made.expires_at, made.interval) == ("abc", T0 + 120, 7)
    assert made.next_poll_at() == T0
    default = parse_backchannel_response(200, {"auth_req_id": "abc", "expires_in": 120}, **args)
    assert default.interval == DEFAULT_INTERVAL
    for bad in ({"expires_in": 120}, {"auth_req_id": "a b", "expires_in": 1}, {"auth_req_id": "a"}):
        with pytest.raises(PeerUnavailable):
            parse_backchannel_response(200, bad, **args)
    with pytest.raises(UnknownUserId):
        parse_backchannel_response(400, {"error": "unknown_user_id"}, **args)


def _issued(fake: CibaFake, *, sub: str = USER) -> dict:
    issued = fake.tokens.issue(
        sub=sub,
        audience=ISSUER,
        client_id=B,
        grant_id="g-42",
        details=parse_authorization_details(details()),
        acr="urn:acr",
        auth_time=int(T0),
        now=int(T0),
    )
    from patientkey.authz.tokens import token_response

    return token_response(issued)


def test_parse_token_response_files_the_token_under_its_grant(fake):
    """The token, its expiry, the granted details and the grant_id from the JWT payload."""
    token = parse_token_response(200, _issued(fake), ticket=ticket(), now=T0)
    assert token.grant_id == "g-42"
    assert token.ref == "g-42"
    assert token.user_id == USER
    assert token.expires_at == int(T0) + 300
    assert token.allows("use", RecordRef("prescription", HIS, "p-1"))
    assert not token.allows("use", RecordRef("prescription", HIS, "p-2"))
    assert token.access_token not in repr(token)
    assert token.redacted() == token.access_token[:12] + "…"


def test_parse_token_response_refuses_what_it_cannot_use(fake):
    """Another patient's token, a non-Bearer type or missing details: PeerUnavailable."""
    with pytest.raises(PeerUnavailable, match="another patient"):
        parse_token_response(200, _issued(fake, sub="u-bob"), ticket=ticket(), now=T0)
    for change in (
        {"token_type": "DPoP"},
        {"authorization_details": None},
        {"authorization_details": [{"type": "x"}]},
        {"access_token": "short"},
        {"expires_in": 0},
    ):
        body = {**_issued(fake), **change}
        if change.get("authorization_details", 1) is None:
            del body["authorization_details"]
        with pytest.raises(PeerUnavailable):
            parse_token_response(200, body, ticket=ticket(), now=T0)
    with pytest.raises(AuthorizationPending):
        parse_token_response(400, {"error": "authorization_pending"}, ticket=ticket(), now=T0)


def test_a_token_without_a_readable_payload_is_named_by_its_digest(fake):
    """An opaque token still works: its ref is a digest, never the token itself."""
    body = {**_issued(fake), "access_token": "opaque-token-value-0123456789"}
    token = parse_token_response(200, body, ticket=ticket(), now=T0)
    assert token.grant_id is None
    assert token.ref.startswith("token-")
    assert "opaque" not in token.ref


def test_narrowed_ignores_a_duration_the_platform_filled_in():
    """A duration left open and set by the catalog is no narrowing; fewer ids or actions are."""
    asked = parse_authorization_details(details(ids=("p-1", "p-2")))
    same = parse_authorization_details(details(ids=("p-1", "p-2"), duration=2592000))
    assert not narrowed(asked, same)
    assert narrowed(asked, parse_authorization_details(details(ids=("p-1",), duration=60)))
    fewer = parse_authorization_details(details(ids=("p-1", "p-2"), actions=("view",)))
    assert narrowed(asked, fewer)
    capped = parse_authorization_details(details(duration=3600))
    assert narrowed(capped, parse_authorization_details(details(duration=60)))
    assert not narrowed(capped, capped)


def test_after_poll_keeps_or_grows_the_interval_and_raises_the_rest():
    """pending keeps the interval, slow_down adds 5 s for good, anything else is final."""
    pending = after_poll(ticket(), AuthorizationPending(), polled_at=T0 + 1)
    assert (pending.interval, pending.last_polled_at) == (5, T0 + 1)
    assert pending.next_poll_at() == T0 + 1 + 5 + POLL_MARGIN
    slower = after_poll(pending, SlowDown(), polled_at=T0 + 7)
    assert slower.interval == 5 + SLOW_DOWN_STEP
    assert after_poll(slower, AuthorizationPending(), polled_at=T0 + 20).interval == 10
    for final in (DeniedByUser(), ExpiredToken(), InvalidGrant()):
        with pytest.raises(type(final)):
            after_poll(slower, final, polled_at=T0 + 30)


# ── the client against the fake platform ─────────────────────────────────────────────


def test_discover_checks_the_issuer_once(client, fake):
    """discover reads the metadata once and caches it."""
    meta = client.discover()
    assert meta.token_endpoint == ISSUER + "/token"
    client.discover()
    assert fake.answers == []  # GETs of the metadata are not OAuth answers


def test_a_client_configured_for_another_issuer_refuses_the_metadata(key, fake, clock):
    """The platform's document names another issuer: ConfigError, nothing is sent."""
    other = OAuthClient(key, "https://other.test", http=fake.http(), clock=clock)
    with pytest.raises(ConfigError):
        other.request_authorization(USER, details(), "m")
    assert fake.answers == []


def test_pending_slow_down_then_approved(client, fake, clock):
    """Polls wait the interval; slow_down adds 5 s; the token comes once the patient approves."""
    made = client.request_authorization(USER, details(), "pharmacy-1 A1B2C3")
    assert made.interval == DEFAULT_INTERVAL

    def script(n: int) -> None:
        if n == 2:
            fake.touch()  # a second poller of the same client got in just before
        if n == 3:
            fake.approve()

    fake.on_poll = script
    pendings: list[BackchannelTicket] = []
    token = client.poll_token(made, wait=True, on_pending=pendings.append)
    assert fake.errors() == ["authorization_pending", "slow_down", None]
    assert [t.interval for t in pendings] == [5, 10]
    gaps = [b - a for a, b in zip(fake.poll_times, fake.poll_times[1:], strict=False)]
    assert gaps[0] >= 5
    assert gaps[1] >= 10
    assert token.user_id == USER
    assert token.grant_id is not None
    assert token.allows("use", RecordRef("prescription", HIS, "p-1"))
    assert fake.refused == []
    assert fake.assertions_verified == 4  # bc-authorize + three polls


def test_a_well_behaved_client_is_never_told_to_slow_down(client, fake):
    """Alone, the client's polls are spaced so the platform never answers slow_down."""
    made = client.request_authorization(USER, details(), "m")
    fake.on_poll = lambda n: fake.approve() if n == 6 else None
    client.poll_token(made, wait=True)
    assert fake.errors() == ["authorization_pending"] * 5 + [None]


def test_poll_without_wait_raises_pending_and_keeps_the_interval(client, fake, clock):
    """Without wait: one poll; AuthorizationPending, then a later call gets the token."""
    made = client.request_authorization(USER, details(), "m")
    kept: list[BackchannelTicket] = []
    with pytest.raises(AuthorizationPending):
        client.poll_token(made, wait=False, on_pending=kept.append)
    fake.approve()
    token = client.poll_token(kept[-1], wait=False)
    assert token.user_id == USER
    assert clock.sleeps
    assert clock.sleeps[-1] == pytest.approx(5 + POLL_MARGIN)


def test_poll_without_wait_reports_slow_down(client, fake):
    """A slow_down answer is raised as SlowDown and the kept ticket polls 5 s slower."""
    made = client.request_authorization(USER, details(), "m")
    kept: list[BackchannelTicket] = []
    with pytest.raises(AuthorizationPending):
        client.poll_token(made, wait=False, on_pending=kept.append)
    fake.on_poll = lambda n: fake.touch()
    with pytest.raises(SlowDown):
        client.poll_token(kept[-1], wait=False, on_pending=kept.append)
    assert kept[-1].interval == 10


def test_the_patient_denies(client, fake):
    """access_denied at the token endpoint is DeniedByUser (the patient said no)."""
    made = client.request_authorization(USER, details(), "m")
    fake.on_poll = lambda n: fake.deny() if n == 2 else None
    with pytest.raises(DeniedByUser):
        client.poll_token(made, wait=True)
    assert fake.errors() == ["authorization_pending", "access_denied"]


def test_an_undecided_request_expires_locally(client, fake, clock):
    """Nobody decides: polling stops at the request's expiry with ExpiredToken."""
    made = client.request_authorization(USER, details(), "m", requested_expiry=20)
    with pytest.raises(ExpiredToken):
        client.poll_token(made, wait=True)
    assert clock.now <= made.expires_at + 1
    assert all(error == "authorization_pending" for error in fake.errors())


def test_the_platforms_expired_token_answer_is_raised(client, fake):
    """If the platform says expired_token (its clock ran ahead), ExpiredToken is raised."""
    made = client.request_authorization(USER, details(), "m", requested_expiry=10)
    late = replace(made, expires_at=made.expires_at + 600, last_polled_at=made.created_at + 10)
    with pytest.raises(ExpiredToken):
        client.poll_token(late, wait=True)
    assert fake.errors() == ["expired_token"]


def test_a_used_auth_req_id_is_invalid_grant(client, fake):
    """The token is issued once; polling the same auth_req_id again is invalid_grant."""
    made = client.request_authorization(USER, details(), "m")
    fake.approve()
    client.poll_token(made, wait=False)
    with pytest.raises(InvalidGrant):
        client.poll_token(replace(made, last_polled_at=None), wait=False)


def test_backchannel_errors_are_the_spec_classes(client, fake):
    """Unknown patient, a scenario not registered, actions beyond the scenario: spec errors."""
    with pytest.raises(UnknownUserId):
        client.request_authorization("u-nobody", details(), "m")
    with pytest.raises(InvalidAuthorizationDetails):
        client.request_authorization(USER, details(actions=("view", "delete")), "m")
    research = record_details([f"{HIS}:*"], purpose="research", actions=["analyze"])
    with pytest.raises(InvalidAuthorizationDetails):
        client.request_authorization(USER, research, "m")
    fake.users.blocked.add(USER)
    with pytest.raises(AccessDenied):
        client.request_authorization(USER, details(), "m")
    assert fake.refused == []


def test_the_patient_may_grant_less_and_the_token_says_so(client, fake):
    """Narrowed approval (fewer actions): the token's details are what was granted."""
    made = client.request_authorization(USER, details(ids=("p-1", "p-2")), "m")
    narrower = parse_authorization_details(
        details(ids=("p-1",), actions=("view", "use"), duration=86400)
    )
    fake.approve(approved=narrower)
    token = client.poll_token(made, wait=False)
    assert token.authorization_details == narrower
    assert narrowed(made.requested, token.authorization_details)
    assert not token.allows("use", RecordRef("prescription", HIS, "p-2"))


def test_introspect_and_revoke(client, fake):
    """Introspection says active with the grant; after revocation (RFC 7009) inactive."""
    made = client.request_authorization(USER, details(), "m")
    grant_id = fake.approve()
    token = client.poll_token(made, wait=False)
    state = client.introspect(token.access_token)
    assert state["active"] is True
    assert state["grant_id"] == grant_id == token.grant_id
    client.revoke(token.access_token)
    assert client.introspect(token.access_token) == {"active": False}
    assert fake.grants.get(grant_id).status == "revoked"
    client.revoke(token.access_token)  # §2.2: revoking again is still 200
    assert fake.refused == []


def test_a_client_with_another_key_is_refused(fake, clock):
    """An assertion the registered JWKS does not verify: invalid_client (401)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    stranger = ClientKey.from_private_key(B, ec.generate_private_key(ec.SECP256R1()))
    client = OAuthClient(stranger, ISSUER, http=fake.http(), clock=clock, sleep=clock.sleep)
    with pytest.raises(InvalidClient):
        client.request_authorization(USER, details(), "m")
    assert len(fake.refused) == 1


def test_an_unreachable_platform_is_peer_unavailable(key, clock):
    """Transport failures become PeerUnavailable, naming the failure type only."""

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = OAuthClient(
        key, ISSUER, http=httpx.Client(transport=httpx.MockTransport(down)), clock=clock
    )
    with pytest.raises(PeerUnavailable, match="ConnectError"):
        client.discover()


def test_a_platform_answering_html_is_peer_unavailable(key, clock):
    """A metadata answer that is not JSON, or not 200, is PeerUnavailable."""
    client = OAuthClient(
        key,
        ISSUER,
        http=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<"))),
        clock=clock,
    )
    with pytest.raises(PeerUnavailable):
        client.discover()
    client = OAuthClient(
        key,
        ISSUER,
        http=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404))),
        clock=clock,
    )
    with pytest.raises(PeerUnavailable, match="404"):
        client.discover()


def test_the_fake_platform_applies_the_real_ciba_policy(fake):
    """Sanity: the fake's limits are the platform's defaults (interval 5 s, +5 on slow_down)."""
    assert fake.policy == ciba.CibaPolicy()
    assert fake.policy.slow_down_step == SLOW_DOWN_STEP
