"""OpenID CIBA Core 1.0: the request lifecycle table and every error where the spec puts it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from authz_helpers import (
    NO_RAR,
    NOT_CIBA,
    PHARMACY,
    PING_APP,
    PUSH_APP,
    bc_params,
    details,
    entry,
)

from patientkey.authz import errors as oauth
from patientkey.authz.catalog import ProofKind
from patientkey.authz.ciba import (
    CIBA_TRANSITIONS,
    CibaEvent,
    CibaState,
    TokenRequest,
    approve,
    backchannel_authenticate,
    ciba_next,
    deny,
    parse_token_request,
    poll,
)
from patientkey.authz.clients import CIBA_GRANT_TYPE
from patientkey.errors import Conflict, NotFound

NOW = 1_800_000_000
TOTP_AND_DEVICE = [ProofKind.TOTP, ProofKind.DEVICE_SIGNATURE]


@pytest.fixture
def start(users, catalog, policy):
    """Make a backchannel request: ``start(params=None, client=PHARMACY, now=NOW)``."""

    def make(params=None, client=PHARMACY, now=NOW):
        return backchannel_authenticate(
            bc_params() if params is None else params,
            client=client,
            users=users,
            catalog=catalog,
            policy=policy,
            now=now,
        )

    return make


def _poll(request, client=PHARMACY, now=NOW, policy=None, details=None):
    from patientkey.authz.ciba import CibaPolicy

    token_request = TokenRequest(request.auth_req_id if request else "x", details)
    return poll(request, token_request, client=client, policy=policy or CibaPolicy(), now=now)


# --- the table ---------------------------------------------------------------------------


def test_table_lifecycle():
    """pending → approved → issued; pending → denied; expiry from every open state."""
    assert ciba_next(CibaState.PENDING, CibaEvent.APPROVE) is CibaState.APPROVED
    assert ciba_next(CibaState.APPROVED, CibaEvent.ISSUE) is CibaState.ISSUED
    assert ciba_next(CibaState.PENDING, CibaEvent.DENY) is CibaState.DENIED
    for state in (CibaState.PENDING, CibaState.APPROVED, CibaState.DENIED):
        assert ciba_next(state, CibaEvent.EXPIRE) is CibaState.EXPIRED


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (state, event)
        for state in CibaState
        for event in CibaEvent
        if (state, event) not in CIBA_TRANSITIONS
    ],
)
def test_events_the_table_does_not_list_conflict(state, event):
    """Approve twice, issue twice, issue before approval...: Conflict, nothing changes."""
    with pytest.raises(Conflict):
        ciba_next(state, event)


def test_issued_and_expired_are_final():
    """No event leaves ISSUED or EXPIRED: a token is issued once."""
    assert not [key for key in CIBA_TRANSITIONS if key[0] in {CibaState.ISSUED, CibaState.EXPIRED}]


# --- the backchannel authentication endpoint (§7) --------------------------------------


def test_accepted_request(start, catalog):
    """§7.3: auth_req_id, expires_in, interval; the stored request holds the decision."""
    accepted = start()
    request = accepted.request
    assert accepted.response == {
        "auth_req_id": request.auth_req_id,
        "expires_in": 300,
        "interval": 5,
    }
    assert len(request.auth_req_id) >= 43  # 256 random bits, base64url
    assert request.state is CibaState.PENDING
    assert request.user_id == "alice"
    assert request.decision.scenario.name == "pharmacy_dispense"
    assert request.decision.method == catalog.method(request.decision.method.level)
    view = request.wallet_view()
    assert view["client_name"] == "Apotheke am Markt"
    assert view["binding_message"] == "Apotheke 4711: W7X2"
    assert view["method"]["description"].startswith("substantial")
    event = accepted.event.as_dict()
    assert event["kind"] == "authz.requested"
    assert request.auth_req_id not in json.dumps(event)
    assert "binding" not in json.dumps(event)


@pytest.mark.parametrize(("asked", "granted"), [(None, 300), ("60", 60), ("99999", 1800)])
def test_requested_expiry_is_honoured_up_to_the_maximum(start, asked, granted):
    """requested_expiry (§7.1) sets expires_in, capped by policy."""
    accepted = start(bc_params(requested_expiry=asked))
    assert accepted.response["expires_in"] == granted
    assert accepted.request.expires_at == NOW + granted


def test_unknown_parameters_and_empty_values_are_ignored(start):
    """§7.2 ignores unknown parameters; RFC 6749 §3.1 treats empty values as omitted."""
    accepted = start({**bc_params(), "colour": "blue", "user_code": "", "scope": "openid"})
    assert accepted.request.scope == ("openid",)


def test_ping_client_notification_token_is_kept(start):
    """A ping-mode client's client_notification_token is stored for the callback."""
    body = entry(purpose="personal_app_sync", records={"ids": ["P-1"]}, actions=["view"])
    params = bc_params(
        authorization_details=json.dumps([body]), client_notification_token="8d67dc78-7faa-4d41"
    )
    request = start(params, client=PING_APP).request
    assert request.delivery_mode == "ping"
    assert request.notification_token == "8d67dc78-7faa-4d41"


# Every §13 error, produced where the spec says. Each row: (parameters, client, error class).
LONG = "x" * 65
BC_ERRORS = [
    ("no authenticated client", bc_params(), None, oauth.InvalidClient),
    ("client without the CIBA grant", bc_params(), NOT_CIBA, oauth.UnauthorizedClient),
    ("push-mode client", bc_params(), PUSH_APP, oauth.UnauthorizedClient),
    ("no hint", bc_params(login_hint=None), PHARMACY, oauth.InvalidRequest),
    ("two hints", bc_params(id_token_hint="e.y.z"), PHARMACY, oauth.InvalidRequest),
    (
        "login_hint_token",
        bc_params(login_hint=None, login_hint_token="e.y.z"),
        PHARMACY,
        oauth.InvalidRequest,
    ),
    ("request object", bc_params(request="e.y.z"), PHARMACY, oauth.InvalidRequest),
    ("malformed login_hint", bc_params(login_hint="al ice"), PHARMACY, oauth.InvalidRequest),
    ("no binding_message", bc_params(binding_message=None), PHARMACY, oauth.InvalidRequest),
    ("no details", bc_params(authorization_details=None), PHARMACY, oauth.InvalidRequest),
    ("expiry zero", bc_params(requested_expiry="0"), PHARMACY, oauth.InvalidRequest),
    ("expiry negative", bc_params(requested_expiry="-5"), PHARMACY, oauth.InvalidRequest),
    ("expiry fraction", bc_params(requested_expiry="1.5"), PHARMACY, oauth.InvalidRequest),
    ("ping without token", None, PING_APP, oauth.InvalidRequest),
    (
        "bad notification token",
        bc_params(client_notification_token="not a token"),
        PHARMACY,
        oauth.InvalidRequest,
    ),
    ("long user_code", bc_params(user_code="9" * 200), PHARMACY, oauth.InvalidRequest),
    ("unknown scope", bc_params(scope="openid profile"), PHARMACY, oauth.InvalidScope),
    ("malformed scope", bc_params(scope='op"enid'), PHARMACY, oauth.InvalidScope),
    (
        "long binding message",
        bc_params(binding_message=LONG),
        PHARMACY,
        oauth.InvalidBindingMessage,
    ),
    (
        "binding message on two lines",
        bc_params(binding_message="a\nb"),
        PHARMACY,
        oauth.InvalidBindingMessage,
    ),
    (
        "binding message padded",
        bc_params(binding_message=" W7X2"),
        PHARMACY,
        oauth.InvalidBindingMessage,
    ),
    (
        "malformed details",
        bc_params(authorization_details="[{"),
        PHARMACY,
        oauth.InvalidAuthorizationDetails,
    ),
    (
        "details beyond the scenario",
        bc_params(authorization_details=json.dumps([entry(actions=["view", "delete"])])),
        PHARMACY,
        oauth.InvalidAuthorizationDetails,
    ),
    (
        "purpose not registered for the client",
        bc_params(authorization_details=json.dumps([entry(purpose="research", actions=["view"])])),
        PHARMACY,
        oauth.InvalidAuthorizationDetails,
    ),
    ("type not registered for the client", bc_params(), NO_RAR, oauth.InvalidAuthorizationDetails),
    ("unknown user", bc_params(login_hint="mallory"), PHARMACY, oauth.UnknownUserId),
    ("locked account", bc_params(login_hint="carol"), PHARMACY, oauth.AccessDenied),
    ("client blocked by the patient", bc_params(login_hint="dave"), PHARMACY, oauth.AccessDenied),
    ("user code missing", bc_params(login_hint="bob"), PHARMACY, oauth.MissingUserCode),
    (
        "user code wrong",
        bc_params(login_hint="bob", user_code="1357"),
        PHARMACY,
        oauth.InvalidUserCode,
    ),
]


@pytest.mark.parametrize(
    ("params", "client", "error"),
    [row[1:] for row in BC_ERRORS],
    ids=[row[0] for row in BC_ERRORS],
)
def test_backchannel_errors(start, params, client, error):
    """Each refusal raises the §13 error with the §13 status; nothing is returned to store."""
    if params is None:
        body = entry(purpose="personal_app_sync", records={"ids": ["P-1"]}, actions=["view"])
        params = bc_params(authorization_details=json.dumps([body]))
    with pytest.raises(error) as caught:
        start(params, client=client)
    expected_status = {"invalid_client": 401, "access_denied": 403}.get(error.error, 400)
    assert caught.value.status == expected_status
    assert caught.value.to_oauth()["error"] == error.error


def test_repeated_parameter_is_invalid_request(start):
    """RFC 6749 §3.1: a parameter sent twice is invalid_request."""
    pairs = [*bc_params().items(), ("login_hint", "bob")]
    with pytest.raises(oauth.InvalidRequest):
        start(pairs)


def test_user_code_accepted_when_right(start):
    """A patient who requires a user_code gets requests that carry it."""
    assert start(bc_params(login_hint="bob", user_code="2468")).request.user_id == "bob"


# --- the patient decides ------------------------------------------------------------------


def test_approve_in_part_reports_granted_details(start, catalog):
    """The patient approves fewer actions; the request keeps what was granted."""
    request = start().request
    approved = details(entry(actions=["view"], duration="P1D"))
    decided = approve(
        request,
        user_id="alice",
        proofs=TOTP_AND_DEVICE,
        catalog=catalog,
        now=NOW + 5,
        approved=approved,
    )
    new = decided.request
    assert new.state is CibaState.APPROVED
    assert new.granted == approved
    assert new.acr == "http://eidas.europa.eu/LoA/high"
    assert new.auth_time == NOW + 5
    assert new.grant_id is not None
    assert new.version == request.version + 1
    assert decided.ping is None
    assert decided.event.detail == "proofs device_signature,totp; narrowed"


def test_approve_refuses_a_broader_approval(start, catalog):
    """An approval beyond the request is invalid_authorization_details; nothing changes."""
    request = start().request
    with pytest.raises(oauth.InvalidAuthorizationDetails):
        approve(
            request,
            user_id="alice",
            proofs=TOTP_AND_DEVICE,
            catalog=catalog,
            now=NOW,
            approved=details(entry(actions=["view", "store", "use", "fetch"], duration="P8D")),
        )


def test_approve_needs_the_methods_proofs(start, catalog):
    """Proofs below the method's level: insufficient_user_authentication with acr_values."""
    request = start().request
    with pytest.raises(oauth.InsufficientUserAuthentication) as caught:
        approve(request, user_id="alice", proofs=[ProofKind.PASSWORD], catalog=catalog, now=NOW)
    assert caught.value.acr_values == (
        "http://eidas.europa.eu/LoA/substantial",
        "http://eidas.europa.eu/LoA/high",
    )


def test_only_the_patient_decides_and_only_once(start, catalog):
    """Another user gets NotFound; a decided or expired request is a Conflict."""
    request = start().request
    with pytest.raises(NotFound):
        deny(request, user_id="bob", now=NOW)
    denied = deny(request, user_id="alice", now=NOW).request
    with pytest.raises(Conflict):
        approve(denied, user_id="alice", proofs=TOTP_AND_DEVICE, catalog=catalog, now=NOW)
    with pytest.raises(Conflict):
        deny(request, user_id="alice", now=request.expires_at)


def test_ping_mode_notifies_on_decision(start, catalog):
    """Ping mode (§10.2): approval and denial each give a bearer POST with auth_req_id."""
    body = entry(purpose="personal_app_sync", records={"ids": ["P-1"]}, actions=["view"])
    params = bc_params(authorization_details=json.dumps([body]), client_notification_token="tok-1")
    request = start(params, client=PING_APP).request
    ping = approve(request, user_id="alice", proofs=TOTP_AND_DEVICE, catalog=catalog, now=NOW).ping
    assert ping is not None
    assert ping.endpoint == "https://app.example/ciba/notify"
    assert ping.headers()["Authorization"] == "Bearer tok-1"
    assert ping.body() == {"auth_req_id": request.auth_req_id}
    assert deny(request, user_id="alice", now=NOW).ping == ping


# --- the token endpoint (§10.1, §11) ------------------------------------------------------


def _approved(start, catalog, now=NOW):
    request = start().request
    return approve(request, user_id="alice", proofs=TOTP_AND_DEVICE, catalog=catalog, now=now)


def test_pending_then_slow_down_then_pending(start):
    """authorization_pending; polling sooner than interval is slow_down, interval + 5."""
    request = start().request
    first = _poll(request, now=NOW + 5)
    assert isinstance(first.error, oauth.AuthorizationPending)
    assert first.store.last_polled_at == NOW + 5
    fast = _poll(first.store, now=NOW + 6)
    assert isinstance(fast.error, oauth.SlowDown)
    assert fast.store.interval == 10
    again = _poll(fast.store, now=NOW + 12)
    assert isinstance(again.error, oauth.SlowDown)
    assert again.store.interval == 15
    patient = _poll(again.store, now=NOW + 27)
    assert isinstance(patient.error, oauth.AuthorizationPending)
    assert patient.store.interval == 15


def test_approved_request_issues_once(start, catalog):
    """The first poll after approval issues; the auth_req_id is then invalid_grant."""
    approved = _approved(start, catalog).request
    answer = _poll(approved, now=NOW + 1)
    assert answer.error is None
    assert answer.store.state is CibaState.ISSUED
    assert answer.store.granted == approved.granted
    again = _poll(answer.store, now=NOW + 30)
    assert isinstance(again.error, oauth.InvalidGrant)
    assert again.store is None


def test_issue_is_compare_and_set(start, catalog, request_store):
    """Two concurrent polls of one approved request: only one may store ISSUED."""
    approved = _approved(start, catalog).request
    request_store.add(approved)
    first, second = _poll(approved), _poll(approved)
    assert request_store.replace(approved, first.store)
    assert not request_store.replace(approved, second.store)
    assert request_store.get(approved.auth_req_id).state is CibaState.ISSUED


def test_token_request_may_narrow_further(start, catalog):
    """RFC 9396 §6: authorization_details at the token endpoint narrow the token."""
    approved = _approved(start, catalog).request
    fewer = details(entry(actions=["view"], duration="P1D"))
    assert _poll(approved, details=fewer).store.granted == fewer
    broader = details(entry(actions=["view", "fetch", "use", "store"]))
    answer = _poll(approved, details=broader)
    assert isinstance(answer.error, oauth.InvalidAuthorizationDetails)
    assert answer.store is None


def test_denied_expired_foreign_unknown(start, catalog):
    """access_denied after denial; expired_token after expiry; invalid_grant otherwise."""
    request = start().request
    denied = deny(request, user_id="alice", now=NOW).request
    assert isinstance(_poll(denied).error, oauth.DeniedByUser)
    assert _poll(denied).error.status == 400
    assert isinstance(_poll(request, now=request.expires_at).error, oauth.ExpiredToken)
    approved = _approved(start, catalog).request
    assert isinstance(_poll(approved, now=approved.expires_at).error, oauth.ExpiredToken)
    other = replace(PHARMACY, client_id="pharmacy-2")
    foreign = _poll(request, client=other)
    assert isinstance(foreign.error, oauth.InvalidGrant)
    assert foreign.store is None
    assert isinstance(_poll(None).error, oauth.InvalidGrant)


@pytest.mark.parametrize(
    ("client", "error"),
    [
        (None, oauth.InvalidClient),
        (NOT_CIBA, oauth.UnauthorizedClient),
        (PUSH_APP, oauth.UnauthorizedClient),
    ],
)
def test_token_endpoint_client_errors(start, client, error):
    """Unauthenticated: invalid_client (401); no CIBA grant or push mode: unauthorized_client."""
    answer = _poll(start().request, client=client)
    assert isinstance(answer.error, error)
    assert answer.store is None


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"auth_req_id": "x"}, oauth.InvalidRequest),
        ({"grant_type": "authorization_code", "auth_req_id": "x"}, oauth.UnsupportedGrantType),
        ({"grant_type": CIBA_GRANT_TYPE}, oauth.InvalidRequest),
        (
            [("grant_type", CIBA_GRANT_TYPE), ("auth_req_id", "a"), ("auth_req_id", "b")],
            oauth.InvalidRequest,
        ),
        (
            {"grant_type": CIBA_GRANT_TYPE, "auth_req_id": "x", "authorization_details": "[]"},
            oauth.InvalidAuthorizationDetails,
        ),
    ],
)
def test_token_request_parameters(params, error):
    """grant_type and auth_req_id are required, once; the grant type must be CIBA's."""
    with pytest.raises(error):
        parse_token_request(params)


def test_token_request_parses():
    """A CIBA token request with optional narrowing details."""
    parsed = parse_token_request(
        {
            "grant_type": CIBA_GRANT_TYPE,
            "auth_req_id": "abc",
            "authorization_details": json.dumps([entry()]),
        }
    )
    assert parsed.auth_req_id == "abc"
    assert parsed.authorization_details == details()


def _pending(start, catalog):
    return _poll(start().request).error


def _slow(start, catalog):
    return _poll(_poll(start().request).store, now=NOW + 1).error


def _expired(start, catalog):
    request = start().request
    return _poll(request, now=request.expires_at).error


def _denied(start, catalog):
    return _poll(deny(start().request, user_id="alice", now=NOW).request).error


def _used(start, catalog):
    return _poll(_poll(_approved(start, catalog).request).store).error


def _foreign(start, catalog):
    return _poll(start().request, client=replace(PHARMACY, client_id="pharmacy-2")).error


def _raises(params):
    def produce(start, catalog):
        with pytest.raises(oauth.OAuthError) as caught:
            parse_token_request(params)
        return caught.value

    return produce


TOKEN_CASES = [
    ("pending", _pending, oauth.AuthorizationPending),
    ("polled too fast", _slow, oauth.SlowDown),
    ("expired", _expired, oauth.ExpiredToken),
    ("denied by the patient", _denied, oauth.DeniedByUser),
    ("already used", _used, oauth.InvalidGrant),
    ("another client's auth_req_id", _foreign, oauth.InvalidGrant),
    ("unknown auth_req_id", lambda start, catalog: _poll(None).error, oauth.InvalidGrant),
    (
        "no authenticated client",
        lambda start, catalog: _poll(start().request, client=None).error,
        oauth.InvalidClient,
    ),
    (
        "push-mode client",
        lambda start, catalog: _poll(start().request, client=PUSH_APP).error,
        oauth.UnauthorizedClient,
    ),
    ("no grant_type", _raises({"auth_req_id": "x"}), oauth.InvalidRequest),
    (
        "another grant_type",
        _raises({"grant_type": "authorization_code", "auth_req_id": "x"}),
        oauth.UnsupportedGrantType,
    ),
]


@pytest.mark.parametrize(
    ("produce", "error"), [row[1:] for row in TOKEN_CASES], ids=[row[0] for row in TOKEN_CASES]
)
def test_token_errors(start, catalog, produce, error):
    """Each §11 / RFC 6749 §5.2 situation gives its error, status 400 (401 for the client)."""
    produced = produce(start, catalog)
    assert type(produced) is error
    assert produced.status == (401 if error is oauth.InvalidClient else 400)


def test_every_ciba_error_has_a_producing_test():
    """The spec's §11 and §13 error codes all appear in this file's tables."""
    spec_13 = {
        "invalid_request",
        "invalid_scope",
        "expired_login_hint_token",
        "unknown_user_id",
        "unauthorized_client",
        "missing_user_code",
        "invalid_user_code",
        "invalid_binding_message",
        "invalid_client",
        "access_denied",
    }
    produced_13 = {row[3].error for row in BC_ERRORS}
    # login_hint_token is not accepted, so its expiry cannot be reported (ciba.py docstring).
    assert spec_13 - produced_13 == {"expired_login_hint_token"}
    spec_11 = {"authorization_pending", "slow_down", "expired_token", "access_denied"}
    rfc6749_5_2 = {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
    }
    assert spec_11 | rfc6749_5_2 == {row[2].error for row in TOKEN_CASES}


# --- store -------------------------------------------------------------------------------


def test_store_lists_pending_requests_for_the_wallet(start, request_store):
    """The wallet sees its patient's pending requests, oldest first, expired ones gone."""
    first = start(now=NOW).request
    second = start(now=NOW + 10).request
    request_store.add(second)
    request_store.add(first)
    assert [r.request_id for r in request_store.pending_for("alice", NOW + 20)] == [
        first.request_id,
        second.request_id,
    ]
    assert request_store.pending_for("alice", first.expires_at) == [second]
    assert request_store.pending_for("bob", NOW) == []
    assert request_store.by_request_id(first.request_id) == first
    with pytest.raises(Conflict):
        request_store.add(first)


def test_auth_req_ids_never_start_with_a_dash(monkeypatch):
    """A handle drawn with a leading '-' is drawn again: it is pasted into commands."""
    from patientkey.authz import ciba

    draws = iter(["-starts-with-a-dash", "ok-handle"])
    monkeypatch.setattr(ciba.secrets, "token_urlsafe", lambda _n: next(draws))
    assert ciba._auth_req_id() == "ok-handle"
