"""The repository addition the hospital relies on, on the memory twin and on SQLite."""

from __future__ import annotations

from datetime import date

import pytest

from patientkey.storage import HospitalRepo, SqlStore
from patientkey.storage.memory import hospital_store


@pytest.fixture(params=["memory", "sqlite"])
def store(request, db):
    return hospital_store() if request.param == "memory" else SqlStore(db, HospitalRepo)


def test_list_patients_returns_every_patient_by_id(store):
    """list_patients lists enrolled patients ordered by Patient_ID (empty at first)."""
    with store.transaction() as repo:
        assert repo.list_patients() == []
        repo.enroll("pat-b", "B", date(1980, 1, 1), b"w")
        repo.enroll("pat-a", "A", date(1990, 1, 1), b"w")
    with store.transaction() as repo:
        assert [p.patient_id for p in repo.list_patients()] == ["pat-a", "pat-b"]
