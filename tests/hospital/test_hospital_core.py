"""The hospital core: enrollment, import and announce, bind, two-phase KUH rotation, sealing."""

from __future__ import annotations

import json
import re
import shutil
from datetime import date
from pathlib import Path

import pytest
from hospital_helpers import HIS, USER, bind_verify, decode_code, rotation

from patientkey.crypto import SealedRecord, check_bind_reply, open_record
from patientkey.crypto.ratchet import verify_rotation_ack
from patientkey.errors import (
    ConfigError,
    Conflict,
    CryptoError,
    Forbidden,
    InvalidInput,
    NotFound,
    PeerUnavailable,
)
from patientkey.fhir.records import load_record, size_bucket
from patientkey.fhir.synthetic import write_bundles
from patientkey.hospital.core import DENIED, NOT_FOUND, HospitalCore
from patientkey.protocol.messages import RecordRequest
from patientkey.storage.memory import hospital_store
from patientkey.storage.schema import KeyState

IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
DATA = Path(__file__).resolve().parents[3] / "shared/data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared example data absent at {DATA}")


def enroll(core: HospitalCore, name: str = "Erika Mustermann"):
    return core.enroll(name, date(1964, 8, 12))


def bundles(directory: Path, count: int = 3, seed: int = 7) -> Path:
    write_bundles(directory, count, seed)
    return directory


def kuh_state(core: HospitalCore, patient_id: str) -> dict[int, KeyState]:
    states: dict[int, KeyState] = {}
    with core._store.transaction() as repo:
        for version in range(1, 10):
            try:
                states[version] = repo.get_kuh(patient_id, version).state
            except NotFound:
                break
    return states


# --- enrollment -------------------------------------------------------------------


def test_enroll_returns_a_code_that_parses(memory_core):
    """The enrollment code is PKENROLL1.b64url(JSON) naming this HIS, the patient, KUH v1."""
    enrollment = enroll(memory_core)
    code = decode_code(enrollment.code)
    assert (code.his_id, code.patient_id, code.kv) == (HIS, enrollment.patient_id, 1)
    assert code.kuh == enrollment.kuh
    assert len(code.kuh) == 32
    assert IDENT.fullmatch(enrollment.patient_id)
    assert enrollment.kuh.hex() not in repr(enrollment)
    assert enrollment.code not in repr(enrollment)


def test_enroll_draws_fresh_ids_and_keys(memory_core):
    """Two enrollments never share a Patient_ID or a KUH."""
    a, b = enroll(memory_core), enroll(memory_core, "Max Mustermann")
    assert a.patient_id != b.patient_id
    assert a.kuh != b.kuh


def test_kuh_is_never_stored_in_clear(sql_core, db):
    """The database holds KUH only wrapped: neither the key nor the code appears in a dump."""
    enrollment = enroll(sql_core)
    dump = db.dump_bytes()
    assert enrollment.patient_id.encode() in dump
    assert enrollment.kuh not in dump
    assert enrollment.kuh.hex().encode() not in dump
    assert enrollment.code.encode() not in dump


def test_a_stored_kuh_moved_to_another_patient_does_not_open(sql_core, db):
    """A wrapped KUH is bound to its row: copied to another patient it fails, bind is denied."""
    from sqlalchemy import text

    a, b = enroll(sql_core), enroll(sql_core, "Other")
    with db.transaction() as session:
        wrapped = session.execute(
            text("SELECT wrapped_key FROM kuh_keys WHERE patient_id = :p"), {"p": a.patient_id}
        ).scalar_one()
        session.execute(
            text("UPDATE kuh_keys SET wrapped_key = :w WHERE patient_id = :p"),
            {"w": wrapped, "p": b.patient_id},
        )
    with pytest.raises(CryptoError):
        sql_core.bind_verify(bind_verify(a.kuh, b.patient_id))


def test_patients_lists_enrolled_patients(memory_core, tmp_path):
    """patients() shows each patient with KUH version, pending version and record count."""
    a = enroll(memory_core)
    memory_core.import_records(a.patient_id, bundles(tmp_path / "in", 2))
    memory_core.rotate_prepare(rotation(a.kuh, a.patient_id, 1).prepare)
    enroll(memory_core, "Max")
    rows = {r.patient_id: r for r in memory_core.patients()}
    assert len(rows) == 2
    row = rows[a.patient_id]
    assert (row.kuh_version, row.pending_version, row.records) == (1, 2, 2)
    assert row.display_name == "Erika Mustermann"


# --- import and announce ----------------------------------------------------------


@needs_data
def test_import_of_real_prescriptions_stores_and_announces_metadata_only(
    sql_core, db, platform_port, tmp_path
):
    """Every gematik example is stored; the platform hears P_ID and record type, nothing else."""
    source = DATA / "erezept/1.2.0"
    patient = enroll(sql_core).patient_id
    imported = sql_core.import_records(patient, source)
    assert len(imported) == len(list(source.glob("*.json")))
    assert all(IDENT.fullmatch(r.p_id) and r.p_id.startswith("p-") for r in imported)
    assert len({r.p_id for r in imported}) == len(imported)
    assert platform_port.announced == [(r.p_id, r.record_type) for r in imported]
    path, message = platform_port.calls[0]
    assert path == "/v1/records/announce"
    assert json.loads(message.model_dump_json()).keys() == {"patient_id", "records"}
    assert message.patient_id == patient
    wire = b"".join(m.model_dump_json().encode() for _, m in platform_port.calls)
    first = load_record(source / "Beispiel_1.json")
    assert first.summary.prescription_id.encode() not in wire
    assert b"Januvia" not in wire
    assert first.canonical in db.dump_bytes()


@needs_data
def test_reimporting_the_same_document_is_a_conflict(memory_core, platform_port):
    """P_IDs are keyed hashes of the document: importing it again is refused, by file name."""
    patient = enroll(memory_core).patient_id
    one = DATA / "erezept/1.2.0/Beispiel_1.json"
    first = memory_core.import_records(patient, one)
    with pytest.raises(Conflict, match=r"Beispiel_1\.json: already imported"):
        memory_core.import_records(patient, [one])
    assert len(platform_port.calls) == 1
    assert memory_core.p_id_for(patient, load_record(one)) == first[0].p_id
    other = enroll(memory_core, "Other").patient_id
    assert memory_core.import_records(other, one)[0].p_id != first[0].p_id


@needs_data
def test_import_refuses_a_directory_with_one_broken_file_and_stores_nothing(
    sql_core, db, platform_port, tmp_path
):
    """One invalid file: InvalidInput naming the file and JSON path; nothing stored or announced."""
    source = tmp_path / "batch"
    shutil.copytree(DATA / "erezept/1.2.0", source)
    broken = json.loads((source / "Beispiel_2.json").read_text(encoding="utf-8"))
    broken["entry"][0]["resource"]["status"] = 42
    broken["entry"][1]["fullUrl"] = 17
    (source / "Beispiel_2.json").write_text(json.dumps(broken), encoding="utf-8")
    patient = enroll(sql_core).patient_id
    before = db.dump_bytes()
    with pytest.raises(InvalidInput) as info:
        sql_core.import_records(patient, source)
    assert "Beispiel_2.json" in info.value.detail
    assert "nothing was imported" in info.value.detail
    errors = info.value.extensions["errors"]
    assert {e["file"].rsplit("/", 1)[-1] for e in errors} == {"Beispiel_2.json"}
    assert any(e["path"].startswith("entry[") for e in errors)
    assert db.dump_bytes() == before
    assert platform_port.calls == []


@needs_data
def test_import_of_us_core_files_accepts_reports_and_refuses_invalid_ones(
    memory_core, platform_port
):
    """Reports and standalone MedicationRequests import; an invalid US Core file is named."""
    patient = enroll(memory_core).patient_id
    good = [
        DATA / "us-core/DiagnosticReport-chest-xray-report.json",
        DATA / "us-core/medicationrequest-coded-oral-axid.json",
    ]
    imported = memory_core.import_records(patient, good)
    assert [r.record_type for r in imported] == ["report", "prescription"]
    with pytest.raises(InvalidInput, match=r"diagnosticreport-cbc\.json") as info:
        memory_core.import_records(patient, [*good, DATA / "us-core/diagnosticreport-cbc.json"])
    assert "text.div" in info.value.detail
    assert len(platform_port.calls) == 1


def test_failed_announce_rolls_the_import_back(sql_core, db, platform_port, tmp_path):
    """If the platform cannot be told, the import is undone: the records are not stored."""
    patient = enroll(sql_core).patient_id
    before = db.dump_bytes()
    platform_port.fail = PeerUnavailable("platform down")
    with pytest.raises(PeerUnavailable):
        sql_core.import_records(patient, bundles(tmp_path / "in"))
    assert db.dump_bytes() == before
    platform_port.fail = None
    assert len(sql_core.import_records(patient, tmp_path / "in")) == 3


def test_import_for_an_unknown_patient_is_refused(memory_core, platform_port, tmp_path):
    """Records for a Patient_ID never enrolled: NotFound, nothing announced."""
    with pytest.raises(NotFound):
        memory_core.import_records("pat-nobody", bundles(tmp_path / "in"))
    assert platform_port.calls == []


def test_the_same_document_twice_in_one_batch_is_refused(memory_core, tmp_path):
    """Two copies of one document in a batch are refused, naming both files."""
    source = bundles(tmp_path / "in", 1)
    shutil.copyfile(source / "erp-000000.json", source / "erp-copy.json")
    patient = enroll(memory_core).patient_id
    with pytest.raises(InvalidInput, match=r"erp-copy\.json.*erp-000000\.json"):
        memory_core.import_records(patient, source)


def test_announces_are_chunked_inside_the_one_import(storage_key, platform_port, tmp_path):
    """A large import is announced in chunks, with progress, all inside one transaction."""
    core = HospitalCore(
        HIS, hospital_store(), storage_key, platform=platform_port, announce_chunk=2
    )
    patient = enroll(core).patient_id
    seen: list[tuple[int, int]] = []
    core.import_records(
        patient, bundles(tmp_path / "in", 5), progress=lambda d, t: seen.append((d, t))
    )
    assert [len(m.records) for _, m in platform_port.calls] == [2, 2, 1]
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_import_without_a_platform_connection_is_a_config_error(storage_key, tmp_path):
    """A core without a platform port cannot import: records must be announced."""
    core = HospitalCore(HIS, hospital_store(), storage_key)
    patient = enroll(core).patient_id
    with pytest.raises(ConfigError):
        core.import_records(patient, bundles(tmp_path / "in", 1))


def test_empty_or_missing_sources_are_refused(memory_core, tmp_path):
    """A directory without JSON files, a missing path or an empty list is InvalidInput."""
    patient = enroll(memory_core).patient_id
    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "empty", tmp_path / "missing.json", []):
        with pytest.raises(InvalidInput):
            memory_core.import_records(patient, source)


# --- op 1: bind -------------------------------------------------------------------


def test_bind_proof_under_current_kuh_gets_the_mutual_auth_reply(memory_core):
    """A proof under KUH is accepted and the reply checks under KUH for the same nonce."""
    enrollment = enroll(memory_core)
    msg = bind_verify(enrollment.kuh, enrollment.patient_id)
    reply = memory_core.bind_verify(msg)
    assert (reply.his_id, reply.patient_id) == (HIS, enrollment.patient_id)
    check_bind_reply(
        enrollment.kuh,
        reply.reply,
        patient_id=enrollment.patient_id,
        his_id=HIS,
        user_id=USER,
        nonce=msg.nonce,
    )


def test_wrong_proof_and_unknown_patient_get_the_same_403(memory_core):
    """A proof under another key and an unknown Patient_ID are one indistinguishable 403."""
    enrollment = enroll(memory_core)
    with pytest.raises(Forbidden) as wrong:
        memory_core.bind_verify(bind_verify(b"\x01" * 32, enrollment.patient_id))
    with pytest.raises(Forbidden) as unknown:
        memory_core.bind_verify(bind_verify(enrollment.kuh, "pat-unknown"))
    assert wrong.value.detail == unknown.value.detail == DENIED


def test_a_proof_for_another_user_is_refused(memory_core):
    """The proof binds the User_ID: the platform cannot reuse it for another account."""
    enrollment = enroll(memory_core)
    msg = bind_verify(enrollment.kuh, enrollment.patient_id, user="u-alice")
    forged = msg.model_copy(update={"user_id": "u-mallory"})
    with pytest.raises(Forbidden):
        memory_core.bind_verify(forged)


# --- op 2: rotation ---------------------------------------------------------------


def test_rotation_prepare_then_commit_keeps_every_version(memory_core):
    """Prepare stores v2 pending (ack verifies); commit makes it current, v1 retired and kept."""
    enrollment = enroll(memory_core)
    pid = enrollment.patient_id
    step = rotation(enrollment.kuh, pid, 1)
    ack = memory_core.rotate_prepare(step.prepare)
    verify_rotation_ack(step.new_kuh, ack.ack, step.ctx)
    assert (ack.his_id, ack.new_version) == (HIS, 2)
    assert kuh_state(memory_core, pid) == {1: KeyState.CURRENT, 2: KeyState.PENDING}
    memory_core.bind_verify(bind_verify(enrollment.kuh, pid))  # v1 still current
    assert kuh_state(memory_core, pid)[2] is KeyState.PENDING
    done = memory_core.rotate_commit(step.commit)
    verify_rotation_ack(step.new_kuh, done.ack, step.ctx)
    assert kuh_state(memory_core, pid) == {1: KeyState.RETIRED, 2: KeyState.CURRENT}
    memory_core.bind_verify(bind_verify(step.new_kuh, pid))
    with pytest.raises(Forbidden):
        memory_core.bind_verify(bind_verify(enrollment.kuh, pid))


def test_bind_under_the_pending_kuh_commits_it(memory_core):
    """Lost commit: a bind proof under the pending KUH makes it current (implicit commit)."""
    enrollment = enroll(memory_core)
    step = rotation(enrollment.kuh, enrollment.patient_id, 1)
    memory_core.rotate_prepare(step.prepare)
    memory_core.bind_verify(bind_verify(step.new_kuh, enrollment.patient_id))
    assert kuh_state(memory_core, enrollment.patient_id) == {
        1: KeyState.RETIRED,
        2: KeyState.CURRENT,
    }
    again = memory_core.rotate_commit(step.commit)  # the late commit is answered, no change
    assert again.new_version == 2
    assert kuh_state(memory_core, enrollment.patient_id)[2] is KeyState.CURRENT


def test_a_second_prepare_replaces_the_pending_key(memory_core):
    """Lost ack: the next prepare replaces the pending KUH; the first one never commits."""
    enrollment = enroll(memory_core)
    pid = enrollment.patient_id
    first = rotation(enrollment.kuh, pid, 1)
    second = rotation(enrollment.kuh, pid, 1)
    memory_core.rotate_prepare(first.prepare)
    memory_core.rotate_prepare(second.prepare)
    assert kuh_state(memory_core, pid) == {1: KeyState.CURRENT, 2: KeyState.PENDING}
    with pytest.raises(Forbidden):
        memory_core.bind_verify(bind_verify(first.new_kuh, pid))
    with pytest.raises(Forbidden):
        memory_core.rotate_commit(first.commit)
    memory_core.rotate_commit(second.commit)
    memory_core.bind_verify(bind_verify(second.new_kuh, pid))


def test_a_prepare_under_the_pending_key_commits_it_first(memory_core):
    """Lost commit, then the next rotation (v2→v3) arrives: v2 commits, v3 is pending."""
    enrollment = enroll(memory_core)
    pid = enrollment.patient_id
    first = rotation(enrollment.kuh, pid, 1)
    memory_core.rotate_prepare(first.prepare)
    second = rotation(first.new_kuh, pid, 2)
    ack = memory_core.rotate_prepare(second.prepare)
    verify_rotation_ack(second.new_kuh, ack.ack, second.ctx)
    assert kuh_state(memory_core, pid) == {
        1: KeyState.RETIRED,
        2: KeyState.CURRENT,
        3: KeyState.PENDING,
    }


def test_a_prepare_not_wrapped_under_the_current_kuh_changes_nothing(sql_core, db):
    """A wrapped key that does not unwrap under KUH: the same 403, no pending key."""
    enrollment = enroll(sql_core)
    before = db.dump_bytes()
    step = rotation(b"\x02" * 32, enrollment.patient_id, 1)
    with pytest.raises(Forbidden) as info:
        sql_core.rotate_prepare(step.prepare)
    assert info.value.detail == DENIED
    unknown = rotation(enrollment.kuh, "pat-unknown", 1)
    with pytest.raises(Forbidden) as info:
        sql_core.rotate_prepare(unknown.prepare)
    assert info.value.detail == DENIED
    assert db.dump_bytes() == before


def test_prepare_and_commit_check_their_versions_and_addressing(memory_core):
    """Wrong version step, stale version, missing patient_id or another HIS are refused."""
    enrollment = enroll(memory_core)
    pid = enrollment.patient_id
    step = rotation(enrollment.kuh, pid, 1)
    with pytest.raises(InvalidInput):
        memory_core.rotate_prepare(step.prepare.model_copy(update={"new_version": 3}))
    with pytest.raises(InvalidInput, match="patient_id"):
        memory_core.rotate_prepare(step.prepare.model_copy(update={"patient_id": None}))
    with pytest.raises(InvalidInput, match="another HIS"):
        memory_core.rotate_prepare(step.prepare.model_copy(update={"his_id": "hospital-2"}))
    with pytest.raises(Conflict):
        memory_core.rotate_prepare(rotation(enrollment.kuh, pid, 4).prepare)
    with pytest.raises(Conflict):
        memory_core.rotate_commit(step.commit)  # nothing pending
    with pytest.raises(InvalidInput):
        memory_core.rotate_commit(step.commit.model_copy(update={"new_version": 1}))
    assert kuh_state(memory_core, pid) == {1: KeyState.CURRENT}


def test_a_commit_with_a_wrong_proof_leaves_the_key_pending(sql_core, db):
    """A commit MAC that does not verify under the pending KUH: 403, still pending."""
    enrollment = enroll(sql_core)
    step = rotation(enrollment.kuh, enrollment.patient_id, 1)
    sql_core.rotate_prepare(step.prepare)
    before = db.dump_bytes()
    with pytest.raises(Forbidden):
        sql_core.rotate_commit(step.commit.model_copy(update={"proof": b"\x00" * 32}))
    assert db.dump_bytes() == before


# --- op 3: records ----------------------------------------------------------------


def test_a_record_is_sealed_for_the_current_kuh_and_padded(memory_core, tmp_path):
    """The reply is a sealed record: rid P_ID, owner HIS/patient, kuh entry, padded FHIR body."""
    enrollment = enroll(memory_core)
    pid = enrollment.patient_id
    [item] = memory_core.import_records(pid, bundles(tmp_path / "in", 1))
    reply = memory_core.record_request(RecordRequest(patient_id=pid, p_id=item.p_id))
    sealed = SealedRecord.from_bytes(reply.sealed)
    assert (reply.his_id, reply.p_id) == (HIS, item.p_id)
    assert (sealed.record_id, sealed.owner) == (item.p_id, f"{HIS}/{pid}")
    assert [(r.kid, r.version) for r in sealed.recipients] == [(f"kuh:{HIS}", 1)]
    body = open_record(sealed, kid=f"kuh:{HIS}", key=enrollment.kuh, version=1)
    original = load_record(tmp_path / "in/erp-000000.json")
    assert len(body) == size_bucket(len(original.canonical))
    assert load_record(body).canonical == original.canonical


def test_records_sealed_before_a_rotation_stay_readable(memory_core, tmp_path):
    """After rotating, new replies use v2; a reply sealed under v1 still opens with v1."""
    enrollment = enroll(memory_core)
    pid = enrollment.patient_id
    [item] = memory_core.import_records(pid, bundles(tmp_path / "in", 1))
    request = RecordRequest(patient_id=pid, p_id=item.p_id)
    old = SealedRecord.from_bytes(memory_core.record_request(request).sealed)
    step = rotation(enrollment.kuh, pid, 1)
    memory_core.rotate_prepare(step.prepare)
    still_v1 = SealedRecord.from_bytes(memory_core.record_request(request).sealed)
    assert still_v1.recipients[0].version == 1
    memory_core.rotate_commit(step.commit)
    new = SealedRecord.from_bytes(memory_core.record_request(request).sealed)
    assert new.recipients[0].version == 2
    kid = f"kuh:{HIS}"
    assert open_record(old, kid=kid, key=enrollment.kuh, version=1) == open_record(
        new, kid=kid, key=step.new_kuh, version=2
    )


def test_absent_and_other_patients_records_are_the_same_404(memory_core, tmp_path):
    """Another patient's P_ID, an unknown P_ID and an unknown patient: one 404 text."""
    a, b = enroll(memory_core), enroll(memory_core, "Other")
    [item] = memory_core.import_records(a.patient_id, bundles(tmp_path / "in", 1))
    details = set()
    for patient, p_id in (
        (b.patient_id, item.p_id),
        (a.patient_id, "p-none"),
        ("pat-x", item.p_id),
    ):
        with pytest.raises(NotFound) as info:
            memory_core.record_request(RecordRequest(patient_id=patient, p_id=p_id))
        details.add(info.value.detail)
    assert details == {NOT_FOUND}


def test_the_core_refuses_a_bad_configuration(storage_key):
    """An invalid HIS_ID, a short storage key or an oversized announce chunk are refused."""
    with pytest.raises(ConfigError):
        HospitalCore("bad name", hospital_store(), storage_key)
    with pytest.raises(InvalidInput):
        HospitalCore(HIS, hospital_store(), b"short")
    with pytest.raises(ConfigError):
        HospitalCore(HIS, hospital_store(), storage_key, announce_chunk=20_000)
