"""Differential test: the in-memory twin and SQLite answer every operation sequence alike."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkey.errors import PatientKeyError
from patientkey.storage import memory
from patientkey.storage.engine import open_database
from patientkey.storage.repos import PlatformRepo, SqlStore
from patientkey.storage.schema import Party

from .conftest import FakeClock

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
USERS = st.sampled_from(["u0", "u1", "u2"])
HIS = st.sampled_from(["h0", "h1"])
PATIENTS = st.sampled_from(["p0", "p1", "p2"])
RECORDS = st.sampled_from(["r0", "r1"])
PHARMACIES = st.sampled_from(["b0", "b1", "b2"])  # b2 is never registered

OPERATIONS = st.one_of(
    st.tuples(st.just("create_account"), USERS),
    st.tuples(st.just("bind"), USERS, HIS, PATIENTS),
    st.tuples(
        st.just("announce_record"),
        HIS,
        RECORDS,
        PATIENTS,
        st.sampled_from(["prescription", "report"]),
        st.integers(0, 9),
    ),
    st.tuples(st.just("store_sealed"), HIS, RECORDS, st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("open_dispense"), HIS, RECORDS),
    st.tuples(st.sampled_from(["claim", "complete", "release"]), HIS, RECORDS, PHARMACIES),
    st.tuples(st.just("hit"), st.sampled_from(["k0", "k1"]), st.integers(1, 3)),
    st.tuples(st.just("get_binding"), USERS, HIS),
    st.tuples(st.just("advance"), st.integers(1, 30)),
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated platform database file to copy for every example."""
    path = tmp_path_factory.mktemp("twins") / "template.db"
    with open_database(f"sqlite:///{path}", Party.PLATFORM) as db:
        db.upgrade()
    return path


def _apply(repo, op: tuple) -> object:
    name, *args = op
    if name == "hit":
        return repo.hit(args[0], args[1], timedelta(seconds=20))
    return getattr(repo, name)(*args)


_examples = count()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(OPERATIONS, min_size=1, max_size=25))
def test_memory_twin_matches_sqlite(template, tmp_path, ops):
    """For any sequence of platform operations, memory and SQLite return equal values or errors."""
    path = tmp_path / f"example-{next(_examples)}.db"
    shutil.copyfile(template, path)
    clock = FakeClock(datetime(2025, 1, 1, tzinfo=UTC))
    twin = memory.platform_store(clock)
    with open_database(f"sqlite:///{path}", Party.PLATFORM) as db:
        sql = SqlStore(db, PlatformRepo, clock=clock)
        for store in (twin, sql):
            with store.transaction() as repo:
                repo.register_third_party("b0", "Pharmacy 0", b"k0", PEM)
                repo.register_third_party("b1", "Pharmacy 1", b"k1", PEM)
        for op in ops:
            if op[0] == "advance":
                clock.advance(timedelta(seconds=op[1]))
                continue
            outcomes = []
            for store in (twin, sql):
                try:
                    with store.transaction() as repo:
                        outcomes.append(_apply(repo, op))
                except PatientKeyError as exc:
                    outcomes.append((type(exc), exc.detail))
            assert outcomes[0] == outcomes[1], op
