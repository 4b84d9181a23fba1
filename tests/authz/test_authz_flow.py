"""The issue's authorization story through the sans-IO core, with in-memory stores."""

from __future__ import annotations

import json

import pytest
from authz_helpers import AUDIENCE, PHARMACY, bc_params, entry

from patientkey.authz.audit import AuditKind
from patientkey.authz.catalog import ProofKind
from patientkey.authz.ciba import (
    CibaState,
    approve,
    backchannel_authenticate,
    parse_token_request,
    poll,
    token_issued_event,
)
from patientkey.authz.clients import CIBA_GRANT_TYPE
from patientkey.authz.consent import build_consent, revoke_consent
from patientkey.authz.errors import AuthorizationPending, InvalidToken
from patientkey.authz.grants import check, create_grant, revoke_grant
from patientkey.authz.introspection import introspect
from patientkey.authz.rar import RecordRef
from patientkey.authz.tokens import token_response

NOW = 1_800_000_000
P17 = RecordRef("prescription", "HIS-1", "P-17")


def test_pharmacy_dispense_story(
    users, catalog, policy, request_store, grant_store, issuer, verifier
):
    """Ask, approve with TOTP + device signature, dispense, revoke, refused next time."""
    audit = []
    # The pharmacy asks (CIBA §7) for one prescription, to dispense it.
    params = bc_params(
        authorization_details=json.dumps([entry(actions=["view", "fetch", "use"], duration="P3D")])
    )
    accepted = backchannel_authenticate(
        params, client=PHARMACY, users=users, catalog=catalog, policy=policy, now=NOW
    )
    request_store.add(accepted.request)
    audit.append(accepted.event)
    auth_req_id = accepted.response["auth_req_id"]

    # Its first poll is pending.
    token_request = parse_token_request({"grant_type": CIBA_GRANT_TYPE, "auth_req_id": auth_req_id})
    answer = poll(
        request_store.get(auth_req_id), token_request, client=PHARMACY, policy=policy, now=NOW + 1
    )
    assert isinstance(answer.error, AuthorizationPending)
    assert request_store.replace(request_store.get(auth_req_id), answer.store)

    # The wallet shows who, what, why, how long; the patient approves with two proofs.
    (pending,) = request_store.pending_for("alice", NOW + 2)
    assert pending.wallet_view()["scenario"] == "pharmacy_dispense"
    decided = approve(
        pending,
        user_id="alice",
        proofs=[ProofKind.TOTP, ProofKind.DEVICE_SIGNATURE],
        catalog=catalog,
        now=NOW + 3,
    )
    approved = decided.request
    grant, granted_event = create_grant(
        grant_id=approved.grant_id,
        user_id=approved.user_id,
        client_id=approved.client_id,
        scenario=approved.decision.scenario.name,
        details=approved.granted,
        acr=approved.acr,
        proofs=approved.proofs,
        auth_time=approved.auth_time,
        now=NOW + 3,
    )
    consent = build_consent(
        grant,
        client_name=approved.client_name,
        purpose_of_use=approved.decision.scenario.purpose_of_use,
        consent_id=grant.grant_id,
    )
    grant_store.add(grant)
    assert request_store.replace(pending, approved)
    audit += [decided.event, granted_event]

    # The next poll (after the interval) gets the token, once.
    answer = poll(
        request_store.get(auth_req_id), token_request, client=PHARMACY, policy=policy, now=NOW + 9
    )
    assert answer.error is None
    issued = issuer.issue(
        sub=answer.store.user_id,
        audience=AUDIENCE,
        client_id=answer.store.client_id,
        grant_id=answer.store.grant_id,
        details=answer.store.granted,
        acr=answer.store.acr,
        auth_time=answer.store.auth_time,
        now=NOW + 9,
    )
    assert request_store.replace(approved, answer.store)
    audit.append(token_issued_event(answer.store, jti=issued.claims.jti, now=NOW + 9))
    body = token_response(issued)
    assert body["authorization_details"][0]["actions"] == ["view", "fetch", "use"]
    assert request_store.get(auth_req_id).state is CibaState.ISSUED

    # The pharmacy receives and dispenses: each step checks the live grant.
    claims = verifier.verify(body["access_token"], now=NOW + 10)
    for action in ("fetch", "use"):
        audit.append(
            check(
                grant_store, claims, action, P17, owner="alice", now=NOW + 10, catalog=catalog
            ).event
        )

    # The patient revokes; the pharmacy's next request is refused.
    _, revoked_event = revoke_grant(
        grant_store, grant.grant_id, by="patient", actor="alice", now=NOW + 11
    )
    audit.append(revoked_event)
    consent = revoke_consent(consent)
    with pytest.raises(InvalidToken) as refused:
        check(grant_store, claims, "view", P17, owner="alice", now=NOW + 12, catalog=catalog)
    audit.append(refused.value.audit_event)
    assert introspect(
        {"token": body["access_token"]},
        caller="pharmacy-1",
        verifier=verifier,
        store=grant_store,
        now=NOW + 12,
    ) == {"active": False}
    assert consent["status"] == "inactive"

    # Every step left a record, with metadata only.
    assert [e.kind for e in audit] == [
        AuditKind.REQUESTED,
        AuditKind.APPROVED,
        AuditKind.GRANTED,
        AuditKind.ISSUED,
        AuditKind.USED,
        AuditKind.USED,
        AuditKind.REVOKED,
        AuditKind.REFUSED,
    ]
    log = json.dumps([e.as_dict() for e in audit])
    for secret in (auth_req_id, body["access_token"], "Apotheke 4711"):
        assert secret not in log
