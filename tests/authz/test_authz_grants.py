"""Grants: live checks, revocation by the patient and by the app (RFC 7009), RFC 7662."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import date

import pytest
from authz_helpers import PHARMACY, details, entry

from patientkey.authz.audit import AuditKind
from patientkey.authz.catalog import ProofKind
from patientkey.authz.errors import (
    InsufficientScope,
    InsufficientUserAuthentication,
    InvalidAuthorizationDetails,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidToken,
    UnsupportedTokenType,
)
from patientkey.authz.grants import (
    GrantStatus,
    check,
    create_grant,
    find_use,
    grant_next,
    revoke_grant,
)
from patientkey.authz.introspection import introspect
from patientkey.authz.rar import RecordRef
from patientkey.authz.revocation import revoke_token
from patientkey.errors import Conflict, NotFound

NOW = 1_800_000_000
HIGH = "http://eidas.europa.eu/LoA/high"
SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"
P17 = RecordRef("prescription", "HIS-1", "P-17")


def _grant(store, grant_details=None, *, grant_id="g-1", client_id="pharmacy-1", acr=HIGH):
    grant, event = create_grant(
        grant_id=grant_id,
        user_id="alice",
        client_id=client_id,
        scenario=(grant_details or details())[0].purpose,
        details=grant_details or details(),
        acr=acr,
        proofs=[ProofKind.TOTP, ProofKind.DEVICE_SIGNATURE],
        auth_time=NOW,
        now=NOW,
    )
    store.add(grant)
    return grant, event


def _token(issuer, grant, *, now=NOW, token_details=None, acr=None, auth_time=NOW):
    return issuer.issue(
        sub=grant.user_id,
        audience="https://platform.patientkey.test/records",
        client_id=grant.client_id,
        grant_id=grant.grant_id,
        details=token_details or grant.details,
        acr=acr or grant.acr,
        auth_time=auth_time,
        now=now,
    )


# --- grants -------------------------------------------------------------------------------


def test_create_grant_expires_with_its_longest_object(grant_store):
    """expires_at follows the longest duration; the event is metadata only."""
    grant, event = _grant(
        grant_store, details(entry(duration="P1D"), entry(duration="P7D", actions=["view"]))
    )
    assert grant.expires_at == NOW + 7 * 86400
    assert grant.status is GrantStatus.ACTIVE
    assert event.kind is AuditKind.GRANTED
    assert event.as_dict() == {
        "kind": "authz.granted",
        "at": NOW,
        "user_id": "alice",
        "client_id": "pharmacy-1",
        "grant_id": "g-1",
        "scenario": "pharmacy_dispense",
        "actor": "alice",
        "acr": HIGH,
    }


def test_granted_details_need_a_duration():
    """A grant never runs without an end."""
    body = entry()
    del body["duration"]
    with pytest.raises(InvalidAuthorizationDetails):
        create_grant(
            grant_id="g",
            user_id="alice",
            client_id="c",
            scenario="pharmacy_dispense",
            details=details(body),
            acr=HIGH,
            proofs=[],
            auth_time=NOW,
            now=NOW,
        )


def test_check_accepts_a_granted_use(grant_store, issuer, verifier):
    """A covered action on a covered record of the patient passes and is recorded."""
    grant, _ = _grant(grant_store)
    claims = verifier.verify(_token(issuer, grant).token, now=NOW)
    use = check(grant_store, claims, "fetch", P17, owner="alice", now=NOW + 1)
    assert use.grant == grant
    assert use.event.kind is AuditKind.USED
    assert (use.event.action, use.event.his_id, use.event.p_id) == ("fetch", "HIS-1", "P-17")


def test_find_use_takes_only_a_live_grant_to_that_client(grant_store):
    """The share gate: a live grant covering the action, to that client; else None."""
    grant, _ = _grant(grant_store)
    gate = {"user_id": "alice", "client_id": "pharmacy-1", "record": P17}
    use = find_use(grant_store, action="view", now=NOW + 1, **gate)
    assert use is not None
    assert use.grant == grant
    assert use.event.kind is AuditKind.USED
    assert (use.event.actor, use.event.action, use.event.p_id) == ("alice", "view", "P-17")
    assert find_use(grant_store, action="download", now=NOW + 1, **gate) is None
    assert find_use(grant_store, action="view", now=NOW + 1, **{**gate, "client_id": "x"}) is None
    assert find_use(grant_store, action="view", now=NOW + 8 * 86400, **gate) is None
    revoke_grant(grant_store, "g-1", by="patient", actor="alice", now=NOW + 2)
    assert find_use(grant_store, action="view", now=NOW + 3, **gate) is None


def test_revocation_is_effective_on_the_very_next_check(grant_store, issuer, verifier, catalog):
    """Accepted, revoked by the patient, refused at once: no cached acceptance."""
    grant, _ = _grant(grant_store)
    claims = verifier.verify(_token(issuer, grant).token, now=NOW)
    check(grant_store, claims, "use", P17, owner="alice", now=NOW + 1, catalog=catalog)
    revoked, event = revoke_grant(grant_store, "g-1", by="patient", actor="alice", now=NOW + 2)
    assert revoked.status is GrantStatus.REVOKED
    assert (event.kind, event.detail) == (AuditKind.REVOKED, "by patient")
    with pytest.raises(InvalidToken) as caught:
        check(grant_store, claims, "use", P17, owner="alice", now=NOW + 3, catalog=catalog)
    assert caught.value.audit_event.kind is AuditKind.REFUSED
    assert caught.value.audit_event.detail == "grant revoked"


def test_revocation_is_for_the_owner_and_once(grant_store):
    """Another patient cannot revoke (NotFound); revoking twice is a Conflict."""
    _grant(grant_store)
    with pytest.raises(NotFound):
        revoke_grant(grant_store, "g-1", by="patient", actor="bob", now=NOW)
    with pytest.raises(NotFound):
        revoke_grant(grant_store, "nope", by="patient", actor="alice", now=NOW)
    revoke_grant(grant_store, "g-1", by="patient", actor="alice", now=NOW)
    with pytest.raises(Conflict):
        revoke_grant(grant_store, "g-1", by="patient", actor="alice", now=NOW)
    with pytest.raises(Conflict):
        grant_next(GrantStatus.REVOKED, "revoke")


def test_concurrent_revocations_revoke_once(grant_store):
    """Compare-and-set: of many concurrent revocations exactly one succeeds."""
    _grant(grant_store)
    results = []

    def attempt():
        try:
            revoke_grant(grant_store, "g-1", by="patient", actor="alice", now=NOW)
            results.append("revoked")
        except Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("revoked") == 1
    assert grant_store.get("g-1").version == 2


@pytest.mark.parametrize(
    ("action", "record", "owner"),
    [
        ("share", P17, "alice"),
        ("fetch", RecordRef("prescription", "HIS-1", "P-18"), "alice"),
        ("fetch", RecordRef("prescription", "HIS-2", "P-17"), "alice"),
        ("fetch", RecordRef("report", "HIS-1", "P-17"), "alice"),
        ("fetch", P17, "bob"),
    ],
    ids=["action", "record", "hospital", "record type", "another patient"],
)
def test_check_refuses_what_the_grant_does_not_cover(
    grant_store, issuer, verifier, action, record, owner
):
    """Anything outside the grant is insufficient_scope (403) with a REFUSED record."""
    grant, _ = _grant(grant_store)
    claims = verifier.verify(_token(issuer, grant).token, now=NOW)
    with pytest.raises(InsufficientScope) as caught:
        check(grant_store, claims, action, record, owner=owner, now=NOW)
    assert caught.value.status == 403
    assert caught.value.audit_event.kind is AuditKind.REFUSED


def test_token_narrower_than_grant_limits_the_use(grant_store, issuer, verifier):
    """The token's own (narrowed) details apply as well as the grant's."""
    grant, _ = _grant(grant_store)
    narrower = details(entry(actions=["view"]))
    claims = verifier.verify(_token(issuer, grant, token_details=narrower).token, now=NOW)
    check(grant_store, claims, "view", P17, owner="alice", now=NOW)
    with pytest.raises(InsufficientScope):
        check(grant_store, claims, "fetch", P17, owner="alice", now=NOW)


def test_each_object_runs_out_on_its_own(grant_store, issuer, verifier):
    """A one-day object ends after a day while a week-long one goes on."""
    grant, _ = _grant(
        grant_store,
        details(
            entry(duration="P1D", actions=["fetch"]),
            entry(duration="P7D", actions=["view"]),
        ),
    )
    claims = verifier.verify(_token(issuer, grant).token, now=NOW)
    later = NOW + 2 * 86400
    check(grant_store, claims, "view", P17, owner="alice", now=later)
    with pytest.raises(InsufficientScope):
        check(grant_store, claims, "fetch", P17, owner="alice", now=later)
    with pytest.raises(InvalidToken):
        check(grant_store, claims, "view", P17, owner="alice", now=NOW + 7 * 86400)


def test_token_for_another_client_or_patient_is_invalid(grant_store, issuer, verifier):
    """A token whose client or subject differ from its grant is invalid_token."""
    grant, _ = _grant(grant_store)
    claims = verifier.verify(_token(issuer, grant).token, now=NOW)
    for forged in (replace(claims, client_id="pharmacy-2"), replace(claims, sub="bob")):
        with pytest.raises(InvalidToken):
            check(grant_store, forged, "fetch", P17, owner="alice", now=NOW)
    with pytest.raises(InvalidToken):
        check(grant_store, replace(claims, grant_id="g-x"), "fetch", P17, owner="alice", now=NOW)


def test_report_fetch_demands_fresh_verification(grant_store, issuer, verifier, catalog):
    """Step-up (c) at use: a stale verification gets insufficient_user_authentication."""
    report = details(
        entry(
            purpose="insurer_claim",
            record_types=["report"],
            actions=["view", "fetch"],
            records={"ids": ["R-1"]},
        )
    )
    grant, _ = _grant(grant_store, report, acr=SUBSTANTIAL)
    record = RecordRef("report", "HIS-1", "R-1", date(2024, 1, 1))
    claims = verifier.verify(_token(issuer, grant, now=NOW + 400).token, now=NOW + 400)
    check(grant_store, claims, "view", record, owner="alice", now=NOW + 400, catalog=catalog)
    with pytest.raises(InsufficientUserAuthentication) as caught:
        check(grant_store, claims, "fetch", record, owner="alice", now=NOW + 400, catalog=catalog)
    assert caught.value.max_age == 300
    assert caught.value.audit_event.kind is AuditKind.STEP_UP
    fresh = verifier.verify(
        _token(issuer, grant, now=NOW + 400, auth_time=NOW + 390).token, now=NOW + 400
    )
    check(grant_store, fresh, "fetch", record, owner="alice", now=NOW + 400, catalog=catalog)


def test_changed_environment_demands_reverification(grant_store, issuer, verifier, catalog):
    """Step-up (a): the session layer reports a new device/network; the use waits."""
    grant, _ = _grant(grant_store)
    claims = verifier.verify(_token(issuer, grant).token, now=NOW)
    with pytest.raises(InsufficientUserAuthentication):
        check(
            grant_store,
            claims,
            "view",
            P17,
            owner="alice",
            now=NOW,
            catalog=catalog,
            environment_changed=True,
        )


def test_wallet_view_lists_live_status(grant_store):
    """The patient's list shows each grant's live status, metadata only."""
    _grant(grant_store)
    _grant(grant_store, grant_id="g-2")
    revoke_grant(grant_store, "g-2", by="patient", actor="alice", now=NOW + 5)
    views = [g.view(NOW + 10) for g in grant_store.for_user("alice")]
    assert [(v["grant_id"], v["status"]) for v in views] == [("g-1", "active"), ("g-2", "revoked")]
    assert views[0]["proofs"] == ["device_signature", "totp"]
    assert grant_store.for_user("bob") == []
    assert grant_store.get("g-1").view(NOW + 8 * 86400)["status"] == "expired"


# --- RFC 7009 -----------------------------------------------------------------------------


def test_app_revokes_its_token_and_so_the_grant(grant_store, issuer, verifier):
    """§2.1: the owning client's revocation ends the grant; the next check is refused."""
    grant, _ = _grant(grant_store)
    token = _token(issuer, grant).token
    event = revoke_token(
        {"token": token, "token_type_hint": "access_token"},
        client=PHARMACY,
        verifier=verifier,
        store=grant_store,
        now=NOW + 1,
    )
    assert event is not None
    assert (event.kind, event.actor, event.detail) == (AuditKind.REVOKED, "pharmacy-1", "by client")
    assert grant_store.get("g-1").revoked_by == "client"
    with pytest.raises(InvalidToken):
        check(
            grant_store, verifier.verify(token, now=NOW + 2), "use", P17, owner="alice", now=NOW + 2
        )


def test_revocation_of_expired_authentic_token_still_ends_the_grant(grant_store, issuer, verifier):
    """The app proves it held the grant even after the short token lifetime."""
    grant, _ = _grant(grant_store)
    token = _token(issuer, grant).token
    assert revoke_token(
        {"token": token}, client=PHARMACY, verifier=verifier, store=grant_store, now=NOW + 3600
    )
    assert grant_store.get("g-1").status is GrantStatus.REVOKED


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 100])
def test_invalid_tokens_are_a_silent_success(grant_store, verifier, token):
    """§2.2: invalid tokens do not cause an error response; nothing changes."""
    _grant(grant_store)
    assert (
        revoke_token(
            {"token": token}, client=PHARMACY, verifier=verifier, store=grant_store, now=NOW
        )
        is None
    )
    assert grant_store.get("g-1").status is GrantStatus.ACTIVE


def test_revoking_again_is_a_silent_success(grant_store, issuer, verifier):
    """A second revocation of the same token changes nothing and raises nothing."""
    grant, _ = _grant(grant_store)
    token = _token(issuer, grant).token
    params = {"token": token}
    assert revoke_token(params, client=PHARMACY, verifier=verifier, store=grant_store, now=NOW)
    assert (
        revoke_token(params, client=PHARMACY, verifier=verifier, store=grant_store, now=NOW) is None
    )


def test_another_clients_token_is_refused_and_kept(grant_store, issuer, verifier):
    """§2.1: a token issued to another client is refused (invalid_grant); grant untouched."""
    grant, _ = _grant(grant_store)
    token = _token(issuer, grant).token
    other = replace(PHARMACY, client_id="pharmacy-2")
    with pytest.raises(InvalidGrant):
        revoke_token({"token": token}, client=other, verifier=verifier, store=grant_store, now=NOW)
    assert grant_store.get("g-1").status is GrantStatus.ACTIVE


@pytest.mark.parametrize(
    ("params", "client", "error"),
    [
        ({"token": "x"}, None, InvalidClient),
        ({}, PHARMACY, InvalidRequest),
        ({"token": "x", "token_type_hint": "id_token"}, PHARMACY, UnsupportedTokenType),
        ([("token", "x"), ("token", "y")], PHARMACY, InvalidRequest),
    ],
)
def test_revocation_request_errors(grant_store, verifier, params, client, error):
    """invalid_client, invalid_request, unsupported_token_type (§2.2.1)."""
    with pytest.raises(error):
        revoke_token(params, client=client, verifier=verifier, store=grant_store, now=NOW)


# --- RFC 7662 -----------------------------------------------------------------------------


def _introspect(grant_store, verifier, token, *, caller="pharmacy-1", now=NOW + 1, **extra):
    return introspect(
        {"token": token}, caller=caller, verifier=verifier, store=grant_store, now=now, **extra
    )


def test_introspection_of_an_active_token(grant_store, issuer, verifier):
    """§2.2 fields, authorization_details (RFC 9396 §9.2), acr and auth_time."""
    grant, _ = _grant(grant_store)
    issued = _token(issuer, grant)
    answer = _introspect(grant_store, verifier, issued.token)
    assert answer == {
        "active": True,
        "client_id": "pharmacy-1",
        "token_type": "Bearer",
        "exp": NOW + 300,
        "iat": NOW,
        "sub": "alice",
        "aud": "https://platform.patientkey.test/records",
        "iss": "https://platform.patientkey.test",
        "jti": issued.claims.jti,
        "authorization_details": [grant.details[0].to_json()],
        "acr": HIGH,
        "auth_time": NOW,
        "grant_id": "g-1",
    }
    assert _introspect(
        grant_store, verifier, issued.token, caller="rs-1", resource_servers=frozenset({"rs-1"})
    )["active"]


def test_introspection_of_revoked_and_expired(grant_store, issuer, verifier):
    """Revoked grant, expired token, expired grant: {"active": false} and nothing else."""
    grant, _ = _grant(grant_store, details(entry(duration=600)))
    token = _token(issuer, grant).token
    assert _introspect(grant_store, verifier, token, now=NOW + 300) == {"active": False}
    late = _token(issuer, grant, now=NOW + 500).token
    assert _introspect(grant_store, verifier, late, now=NOW + 550)["active"]
    assert _introspect(grant_store, verifier, late, now=NOW + 600) == {"active": False}
    revoke_grant(grant_store, "g-1", by="patient", actor="alice", now=NOW + 2)
    assert _introspect(grant_store, verifier, token, now=NOW + 3) == {"active": False}


def test_introspection_hides_others_tokens(grant_store, issuer, verifier):
    """A caller that is neither the token's client nor a resource server learns nothing."""
    grant, _ = _grant(grant_store)
    token = _token(issuer, grant).token
    assert _introspect(grant_store, verifier, token, caller="pharmacy-2") == {"active": False}
    assert _introspect(grant_store, verifier, "garbage") == {"active": False}


def test_introspection_errors(grant_store, verifier):
    """No authenticated caller: invalid_client; no token: invalid_request."""
    with pytest.raises(InvalidClient):
        introspect({"token": "x"}, caller=None, verifier=verifier, store=grant_store, now=NOW)
    with pytest.raises(InvalidRequest):
        introspect({}, caller="rs", verifier=verifier, store=grant_store, now=NOW)
