"""The hospital routes through HTTP in-process: happy paths and bad input at every route."""

from __future__ import annotations

from datetime import date

import pytest
from fastapi import FastAPI
from hospital_helpers import HIS, USER, bind_verify, hop, hop_pair, rotation

from patientkey.crypto import SealedRecord, check_bind_reply, open_record
from patientkey.crypto.ratchet import verify_rotation_ack
from patientkey.errors import CryptoError, Forbidden, NotFound, Unauthenticated
from patientkey.fhir.synthetic import write_bundles
from patientkey.hospital.core import DENIED, NOT_FOUND, HospitalCore
from patientkey.protocol.channel import Incoming
from patientkey.protocol.messages import (
    BindReply,
    BindVerify,
    Message,
    RecordList,
    RecordReply,
    RecordRequest,
    RecordsAnnounce,
    RotateAck,
    RotateCommit,
    RotatePrepare,
)
from patientkey.service.client import PeerClient
from patientkey.service.http import envelope_route, install_problem_handlers
from patientkey.service.testing import asgi_client
from patientkey.storage import HospitalRepo, SqlStore

ROUTES = {
    "/v1/bind/verify": (BindVerify, BindReply),
    "/v1/rotate/prepare": (RotatePrepare, RotateAck),
    "/v1/rotate/commit": (RotateCommit, RotateAck),
    "/v1/records/get": (RecordRequest, RecordReply),
}


class LooseRecordRequest(Message):
    """A record.request whose fields skip the Ident check (what a buggy peer might send)."""

    MTYPE = "record.request"
    patient_id: str
    p_id: str


@pytest.fixture
def patient(wired, tmp_path):
    """An enrolled patient with one imported prescription: (enrollment, P_ID)."""
    enrollment = wired.core.enroll("Erika Mustermann", date(1964, 8, 12))
    write_bundles(tmp_path / "in", 1, 3)
    [item] = wired.core.import_records(enrollment.patient_id, tmp_path / "in")
    return enrollment, item.p_id


def valid_messages(enrollment, p_id) -> dict[str, Message]:
    step = rotation(enrollment.kuh, enrollment.patient_id, 1)
    return {
        "/v1/bind/verify": bind_verify(enrollment.kuh, enrollment.patient_id),
        "/v1/rotate/prepare": step.prepare,
        "/v1/rotate/commit": step.commit,
        "/v1/records/get": RecordRequest(patient_id=enrollment.patient_id, p_id=p_id),
    }


def assert_problem(response, status: int, problem: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    if problem is not None:
        assert body["type"].endswith("/" + problem)
    return body


# --- happy paths over HTTP ----------------------------------------------------------


def test_bind_round_trip_over_http(wired, patient):
    """The platform's PeerClient gets a BindReply the wallet can check."""
    enrollment, _ = patient
    msg = bind_verify(enrollment.kuh, enrollment.patient_id)
    reply = wired.call("/v1/bind/verify", msg, BindReply)
    check_bind_reply(
        enrollment.kuh,
        reply.reply,
        patient_id=enrollment.patient_id,
        his_id=HIS,
        user_id=USER,
        nonce=msg.nonce,
    )


def test_rotation_and_fetch_over_http(wired, patient):
    """Prepare, commit and a record fetch work through the routes; the record opens under v2."""
    enrollment, p_id = patient
    step = rotation(enrollment.kuh, enrollment.patient_id, 1)
    ack = wired.call("/v1/rotate/prepare", step.prepare, RotateAck)
    verify_rotation_ack(step.new_kuh, ack.ack, step.ctx)
    wired.call("/v1/rotate/commit", step.commit, RotateAck)
    request = RecordRequest(patient_id=enrollment.patient_id, p_id=p_id)
    sealed = SealedRecord.from_bytes(wired.call("/v1/records/get", request, RecordReply).sealed)
    assert b"MedicationRequest" in open_record(sealed, kid=f"kuh:{HIS}", key=step.new_kuh)


def test_errors_cross_the_hop_as_the_same_class(wired, patient):
    """The hospital's 403 and 404 reach the platform's PeerClient as Forbidden and NotFound."""
    enrollment, p_id = patient
    with pytest.raises(Forbidden, match=DENIED):
        wired.call("/v1/bind/verify", bind_verify(b"\x07" * 32, enrollment.patient_id), BindReply)
    with pytest.raises(NotFound, match=NOT_FOUND):
        wired.call("/v1/records/get", RecordRequest(patient_id="pat-x", p_id=p_id), RecordReply)


def test_openapi_documents_the_four_routes(wired):
    """The OpenAPI document lists every HIS route with its envelope body and problem answers."""
    schema = wired.app.openapi()
    assert set(ROUTES) <= set(schema["paths"])
    for path in ROUTES:
        operation = schema["paths"][path]["post"]
        assert "application/jose" in operation["requestBody"]["content"]
        assert {"400", "403", "413"} <= set(operation["responses"])


# --- bad input at every route ---------------------------------------------------------


@pytest.mark.parametrize("path", list(ROUTES))
def test_garbage_body_is_400_and_changes_nothing(wired, patient, path):
    """A body that is not an envelope: 400 crypto-failure, nothing stored."""
    before = wired.db.dump_bytes()
    body = assert_problem(wired.http.post(path, content=b"not an envelope"), 400, "crypto-failure")
    assert body["detail"] == CryptoError().detail
    assert wired.db.dump_bytes() == before


@pytest.mark.parametrize("path", list(ROUTES))
def test_oversized_body_is_413(wired, path):
    """Bodies above the HIS limit (64 KiB) are refused before anything reads them."""
    assert_problem(wired.http.post(path, content=b"x" * (65 * 1024)), 413, "payload-too-large")


@pytest.mark.parametrize("path", list(ROUTES))
def test_replayed_envelope_is_400_and_changes_nothing(wired, patient, path):
    """The same envelope posted twice: the second is a replay, 400, and changes nothing."""
    message = valid_messages(*patient)[path]
    out = wired.platform_hop.request(HIS, message)
    first = wired.http.post(path, content=out.token)
    assert first.status_code in (200, 409), first.text  # commit before prepare is a 409
    before = wired.db.dump_bytes()
    assert_problem(wired.http.post(path, content=out.token), 400, "crypto-failure")
    assert wired.db.dump_bytes() == before


@pytest.mark.parametrize("path", list(ROUTES))
def test_envelope_for_another_route_is_refused(wired, patient, path):
    """An envelope of another message type posted to a route: 400, nothing changed."""
    messages = valid_messages(*patient)
    other = next(m for p, m in messages.items() if type(m) is not ROUTES[path][0])
    before = wired.db.dump_bytes()
    token = wired.platform_hop.request(HIS, other).token
    assert_problem(wired.http.post(path, content=token), 400, "crypto-failure")
    assert wired.db.dump_bytes() == before


@pytest.mark.parametrize("path", list(ROUTES))
def test_no_client_certificate_is_401(wired, patient, path):
    """Without a client certificate every route answers 401."""
    token = wired.platform_hop.request(HIS, valid_messages(*patient)[path]).token
    with wired.as_caller(None) as http:
        assert_problem(http.post(path, content=token), 401, "unauthenticated")


@pytest.mark.parametrize("path", list(ROUTES))
def test_platform_envelope_from_another_certificate_is_401(wired, patient, path):
    """The platform's envelope presented with a stranger's certificate: 401, nothing changed."""
    token = wired.platform_hop.request(HIS, valid_messages(*patient)[path]).token
    before = wired.db.dump_bytes()
    with wired.as_caller("stranger") as http:
        assert_problem(http.post(path, content=token), 401)
    assert wired.db.dump_bytes() == before


@pytest.mark.parametrize("path", list(ROUTES))
def test_envelope_from_a_party_without_a_hop_is_400(wired, patient, path):
    """A stranger's own envelope (no hop key shared with the HIS) does not open: 400."""
    stranger = hop(wired.kme, "pharmacy-1", HIS)  # the HIS has no hop to pharmacy-1
    token = stranger.request(HIS, valid_messages(*patient)[path]).token
    with wired.as_caller("pharmacy-1") as http:
        assert_problem(http.post(path, content=token), 400, "crypto-failure")


@pytest.mark.parametrize("path", list(ROUTES))
def test_authentic_envelope_from_a_party_other_than_the_platform_is_403(wired, patient, path):
    """Even with a hop key, only the platform may call the HIS: 403, nothing changed."""
    pharmacy = hop(wired.kme, "pharmacy-1", HIS)
    wired.hospital_hop.add_peer("pharmacy-1", *hop_pair(wired.kme, HIS, "pharmacy-1"))
    token = pharmacy.request(HIS, valid_messages(*patient)[path]).token
    before = wired.db.dump_bytes()
    with wired.as_caller("pharmacy-1") as http:
        assert_problem(http.post(path, content=token), 403, "forbidden")
    assert wired.db.dump_bytes() == before


def test_malformed_message_in_an_authentic_envelope_is_400(wired, patient):
    """A record.request whose P_ID breaks the identifier rule: 400 naming the field."""
    enrollment, _ = patient
    bad = LooseRecordRequest(patient_id=enrollment.patient_id, p_id="../../etc/passwd")
    token = wired.platform_hop.request(HIS, bad).token
    body = assert_problem(wired.http.post("/v1/records/get", content=token), 400, "invalid-input")
    assert "p_id" in body["detail"]


def test_wrong_proof_and_unknown_patient_are_one_403_over_http(wired, patient):
    """Over HTTP too, a wrong proof and an unknown patient give the same 403 and change nothing."""
    enrollment, _ = patient
    before = wired.db.dump_bytes()
    details = set()
    for message in (
        bind_verify(b"\x09" * 32, enrollment.patient_id),
        bind_verify(enrollment.kuh, "pat-unknown"),
        rotation(b"\x09" * 32, enrollment.patient_id, 1).prepare,
    ):
        path = "/v1/bind/verify" if isinstance(message, BindVerify) else "/v1/rotate/prepare"
        token = wired.platform_hop.request(HIS, message).token
        details.add(
            assert_problem(wired.http.post(path, content=token), 403, "forbidden")["detail"]
        )
    assert details == {DENIED}
    assert wired.db.dump_bytes() == before


def test_another_patients_record_is_the_same_404_as_an_absent_one(wired, patient):
    """Asking for patient B's record under patient A, or for no record: one 404 text."""
    enrollment, p_id = patient
    other = wired.core.enroll("Max Mustermann", date(1970, 1, 1))
    details = set()
    for request in (
        RecordRequest(patient_id=other.patient_id, p_id=p_id),
        RecordRequest(patient_id=enrollment.patient_id, p_id="p-absent"),
    ):
        token = wired.platform_hop.request(HIS, request).token
        response = wired.http.post("/v1/records/get", content=token)
        details.add(assert_problem(response, 404, "not-found")["detail"])
    assert details == {NOT_FOUND}


def test_unknown_route_is_404_problem(wired):
    """Paths the HIS does not serve answer problem+json 404."""
    assert_problem(wired.http.post("/v1/share/receive", content=b""), 404)


# --- announcing through a real platform hop -------------------------------------------


def test_import_announces_through_the_platform_hop(wired, db, storage_key, tmp_path, pki):
    """The hospital's PeerClient announces over its own hop; the platform sees metadata only."""
    seen: list[RecordsAnnounce] = []
    platform_app = FastAPI()
    install_problem_handlers(platform_app)

    def announce(incoming: Incoming[RecordsAnnounce]) -> RecordList:
        assert incoming.sender == HIS
        seen.append(incoming.message)
        return RecordList(records=[])

    platform_hop = hop(wired.kme, "platform", HIS)
    envelope_route(
        platform_app,
        "/v1/records/announce",
        hop=platform_hop,
        expected=RecordsAnnounce,
        handler=announce,
        reply=RecordList,
        summary="stub",
    )
    hospital_hop = hop(wired.kme, HIS, "platform")
    http = asgi_client(platform_app, pki_dir=pki, caller=HIS)
    client = PeerClient(hospital_hop, "platform", "https://testserver", http=http)
    core = HospitalCore(HIS, SqlStore(db, HospitalRepo), storage_key, platform=client)
    patient_id = core.enroll("Erika", date(1964, 8, 12)).patient_id
    write_bundles(tmp_path / "more", 2, 11)
    imported = core.import_records(patient_id, tmp_path / "more")
    assert [(r.p_id, r.record_type) for m in seen for r in m.records] == [
        (i.p_id, i.record_type) for i in imported
    ]
    with pytest.raises(Unauthenticated):  # the platform checks who calls, too
        PeerClient(
            hospital_hop,
            "platform",
            "https://testserver",
            http=asgi_client(platform_app, pki_dir=pki, caller="stranger"),
        ).call("/v1/records/announce", seen[0], RecordList)
