"""Contract of HospitalRepository: the same behaviour on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from patientkey.errors import Conflict, InvalidInput, NotFound
from patientkey.storage.repos import NewRecord
from patientkey.storage.schema import KeyState

BORN = date(1980, 5, 17)


def _enroll(hospital, patient_id: str = "pat-1") -> None:
    with hospital.transaction() as repo:
        repo.enroll(patient_id, "Erika Mustermann", BORN, b"wrapped-kuh-1")


def test_enroll_creates_patient_with_current_kuh_v1(hospital, clock):
    """Enrollment stores the patient and KUH version 1 as the current key."""
    with hospital.transaction() as repo:
        patient = repo.enroll("pat-1", "Erika Mustermann", BORN, b"wrapped-kuh-1")
    assert (patient.display_name, patient.birth_date, patient.enrolled_at) == (
        "Erika Mustermann",
        BORN,
        clock.now,
    )
    with hospital.transaction() as repo:
        assert repo.get_patient("pat-1") == patient
        key = repo.current_kuh("pat-1")
        assert repo.pending_kuh("pat-1") is None
    assert (key.owner_id, key.version, key.wrapped_key, key.state) == (
        "pat-1",
        1,
        b"wrapped-kuh-1",
        KeyState.CURRENT,
    )


def test_enroll_twice_is_a_conflict(hospital):
    """Enrolling an enrolled patient raises Conflict."""
    _enroll(hospital)
    with pytest.raises(Conflict), hospital.transaction() as repo:
        repo.enroll("pat-1", "Someone Else", BORN, b"k")


@pytest.mark.parametrize(
    "args",
    [
        ("pat-1", "", BORN, b"k"),
        ("pat-1", "Name", datetime(1980, 1, 1), b"k"),  # noqa: DTZ001 - a datetime is refused
        ("pat-1", "Name", "1980-01-01", b"k"),
        ("pat-1", "Name", BORN, b""),
        ("pat-1", "Name", BORN, "text"),
    ],
)
def test_enroll_checks_its_input(hospital, args):
    """Empty names, non-date birth dates and empty or non-bytes keys are InvalidInput."""
    with pytest.raises(InvalidInput), hospital.transaction() as repo:
        repo.enroll(*args)


def test_unknown_patient_is_not_found_everywhere(hospital):
    """Every per-patient operation on an unknown patient raises NotFound."""
    for call in (
        lambda r: r.get_patient("ghost"),
        lambda r: r.current_kuh("ghost"),
        lambda r: r.pending_kuh("ghost"),
        lambda r: r.get_kuh("ghost", 1),
        lambda r: r.add_pending_kuh("ghost", b"k"),
        lambda r: r.commit_pending_kuh("ghost"),
        lambda r: r.discard_pending_kuh("ghost"),
        lambda r: r.records_of("ghost"),
    ):
        with pytest.raises(NotFound), hospital.transaction() as repo:
            call(repo)


def test_kuh_rotation_commits_atomically(hospital, clock):
    """commit_pending makes the pending KUH current and retires the old one together."""
    _enroll(hospital)
    clock.advance(timedelta(days=1))
    with hospital.transaction() as repo:
        pending = repo.add_pending_kuh("pat-1", b"wrapped-kuh-2")
        assert (pending.version, pending.state, pending.created_at) == (
            2,
            KeyState.PENDING,
            clock.now,
        )
        assert repo.current_kuh("pat-1").version == 1
        assert repo.pending_kuh("pat-1") == pending
    with hospital.transaction() as repo:
        current = repo.commit_pending_kuh("pat-1")
    assert (current.version, current.state, current.wrapped_key) == (
        2,
        KeyState.CURRENT,
        b"wrapped-kuh-2",
    )
    with hospital.transaction() as repo:
        assert repo.current_kuh("pat-1") == current
        assert repo.pending_kuh("pat-1") is None
        old = repo.get_kuh("pat-1", 1)
    assert (old.state, old.wrapped_key) == (KeyState.RETIRED, b"wrapped-kuh-1")


def test_only_one_rotation_may_be_pending(hospital):
    """A second add_pending while one is pending raises Conflict."""
    _enroll(hospital)
    with hospital.transaction() as repo:
        repo.add_pending_kuh("pat-1", b"k2")
    with pytest.raises(Conflict), hospital.transaction() as repo:
        repo.add_pending_kuh("pat-1", b"k3")


def test_commit_without_pending_is_a_conflict(hospital):
    """commit_pending with nothing pending raises Conflict and keeps the current key."""
    _enroll(hospital)
    with pytest.raises(Conflict), hospital.transaction() as repo:
        repo.commit_pending_kuh("pat-1")
    with hospital.transaction() as repo:
        assert repo.current_kuh("pat-1").version == 1


def test_discarded_rotation_leaves_the_old_key(hospital):
    """discard_pending drops the pending KUH (True), the current stays; a retry numbers on."""
    _enroll(hospital)
    with hospital.transaction() as repo:
        repo.add_pending_kuh("pat-1", b"k2")
        assert repo.discard_pending_kuh("pat-1") is True
        assert repo.discard_pending_kuh("pat-1") is False
        assert repo.pending_kuh("pat-1") is None
        assert repo.current_kuh("pat-1").version == 1
        with pytest.raises(NotFound):
            repo.get_kuh("pat-1", 2)
        assert repo.add_pending_kuh("pat-1", b"k2b").version == 2


def test_versions_keep_counting_across_rotations(hospital):
    """Each rotation gets the next version; every old version stays readable."""
    _enroll(hospital)
    for n in range(2, 5):
        with hospital.transaction() as repo:
            repo.add_pending_kuh("pat-1", f"k{n}".encode())
            repo.commit_pending_kuh("pat-1")
    with hospital.transaction() as repo:
        assert repo.current_kuh("pat-1").version == 4
        assert [repo.get_kuh("pat-1", v).state for v in (1, 2, 3)] == [KeyState.RETIRED] * 3
        assert repo.get_kuh("pat-1", 2).wrapped_key == b"k2"


def test_import_records_stores_the_batch(hospital, clock):
    """import_records stores every record with the batch id and the import time."""
    _enroll(hospital)
    _enroll(hospital, "pat-2")
    batch = [
        NewRecord("rx-2", "pat-1", "prescription", b'{"resourceType":"Bundle"}'),
        NewRecord("rx-1", "pat-1", "prescription", b"{}"),
        NewRecord("dr-1", "pat-2", "report", b"{}"),
    ]
    with hospital.transaction() as repo:
        imported = repo.import_records("batch-1", batch)
    assert [r.p_id for r in imported] == ["rx-2", "rx-1", "dr-1"]
    assert {(r.import_batch, r.imported_at) for r in imported} == {("batch-1", clock.now)}
    with hospital.transaction() as repo:
        assert [r.p_id for r in repo.records_of("pat-1")] == ["rx-1", "rx-2"]
        assert repo.get_record("rx-2").fhir == b'{"resourceType":"Bundle"}'
        assert repo.import_records("batch-empty", []) == []


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (NewRecord("rx-9", "ghost", "prescription", b"{}"), NotFound),
        (NewRecord("rx-0", "pat-1", "prescription", b"{}"), Conflict),
        (NewRecord("rx-1", "pat-1", "prescription", b"{}"), InvalidInput),
    ],
    ids=["unknown-patient", "already-imported", "twice-in-batch"],
)
def test_import_is_all_or_nothing(hospital, bad, error):
    """One bad record fails the whole batch; none of it is stored even if the error is caught."""
    _enroll(hospital)
    with hospital.transaction() as repo:
        repo.import_records("batch-0", [NewRecord("rx-0", "pat-1", "prescription", b"{}")])
    batch = [NewRecord("rx-1", "pat-1", "prescription", b"{}"), bad]
    with hospital.transaction() as repo, pytest.raises(error):
        repo.import_records("batch-1", batch)
    with hospital.transaction() as repo:
        assert [r.p_id for r in repo.records_of("pat-1")] == ["rx-0"]


def test_new_record_checks_itself():
    """NewRecord refuses empty ids, over-long types and empty bodies on creation."""
    for args in (
        ("", "pat-1", "prescription", b"{}"),
        ("rx-1", "pat-1", "t" * 65, b"{}"),
        ("rx-1", "pat-1", "prescription", b""),
    ):
        with pytest.raises(InvalidInput):
            NewRecord(*args)


def test_failed_enrollment_transaction_leaves_nothing(hospital):
    """An exception after enroll inside the transaction leaves neither patient nor key."""

    def enroll_then_fail() -> None:
        with hospital.transaction() as repo:
            repo.enroll("pat-1", "Name", BORN, b"k")
            repo.add_pending_kuh("pat-1", b"k2")
            raise RuntimeError("HIS refused")

    with pytest.raises(RuntimeError):
        enroll_then_fail()
    with pytest.raises(NotFound), hospital.transaction() as repo:
        repo.get_patient("pat-1")
