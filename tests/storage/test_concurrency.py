"""Races: concurrent transactions on one row have exactly one winner, on every backend."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import pytest

from patientkey.errors import Conflict, PatientKeyError, RateLimited
from patientkey.storage.repos import PlatformRepo, SqlStore
from patientkey.storage.schema import DispenseState, Party

THREADS = 8
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _race(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in ``n`` threads released together; errors become results."""
    start = threading.Barrier(n, timeout=10)

    def run(i: int) -> object:
        start.wait()
        try:
            return work(i)
        except PatientKeyError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def _seed_pharmacies(platform) -> None:
    with platform.transaction() as repo:
        repo.announce_record("his-a", "rx-1", "pat-1", "prescription", 10)
        repo.open_dispense("his-a", "rx-1")
        for i in range(THREADS):
            repo.register_third_party(f"pharm-{i}", f"Pharmacy {i}", b"kbp", PEM)


def test_concurrent_claims_have_one_winner(platform):
    """Eight pharmacies claiming one prescription at once: exactly one wins, seven Conflict."""
    _seed_pharmacies(platform)

    def claim(i: int) -> object:
        with platform.transaction() as repo:
            return repo.claim("his-a", "rx-1", f"pharm-{i}")

    results = _race(THREADS, claim)
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, Conflict) for r in results if r not in winners)
    with platform.transaction() as repo:
        final = repo.get_dispense("his-a", "rx-1")
    assert final == winners[0]
    assert (final.state, final.version) == (DispenseState.CLAIMED, 2)


@pytest.mark.postgres
def test_postgres_claims_that_all_saw_open_still_have_one_winner(postgres_db):
    """On PostgreSQL, claimers that all read 'open' first still get one winner."""
    db = postgres_db(Party.PLATFORM)
    _seed_pharmacies(SqlStore(db, PlatformRepo))
    n = 4  # below the pool size: every thread holds a connection while it waits
    seen_open = threading.Barrier(n, timeout=10)

    def claim(i: int) -> object:
        with db.transaction() as session:
            repo = PlatformRepo(session)
            assert repo.get_dispense("his-a", "rx-1").state is DispenseState.OPEN
            seen_open.wait()
            return repo.claim("his-a", "rx-1", f"pharm-{i}")

    results = _race(n, claim)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == n - 1


def test_concurrent_fetches_store_one_ciphertext(platform):
    """Concurrent store_sealed calls all return the one ciphertext that was stored first."""
    _seed_pharmacies(platform)

    def store(i: int) -> object:
        with platform.transaction() as repo:
            return repo.store_sealed("his-a", "rx-1", f"ct-{i}".encode()).sealed

    results = _race(THREADS, store)
    assert len(set(results)) == 1
    with platform.transaction() as repo:
        assert repo.get_record("his-a", "rx-1").sealed == results[0]


def test_concurrent_binds_of_one_patient_have_one_winner(platform):
    """Eight accounts binding the same HIS patient at once: one binding, seven Conflicts."""
    with platform.transaction() as repo:
        for i in range(THREADS):
            repo.create_account(f"u{i}")

    def bind(i: int) -> object:
        with platform.transaction() as repo:
            return repo.bind(f"u{i}", "his-a", "pat-1")

    results = _race(THREADS, bind)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == THREADS - 1


def test_concurrent_hits_respect_the_limit(platform):
    """Eight simultaneous hits on a bucket limited to three: three pass, five RateLimited."""

    def hit(_: int) -> object:
        with platform.transaction() as repo:
            return repo.hit("fetch:u1", 3, timedelta(minutes=1))

    results = _race(THREADS, hit)
    assert sorted(r for r in results if isinstance(r, int)) == [1, 2, 3]
    assert sum(isinstance(r, RateLimited) for r in results) == THREADS - 3


def test_concurrent_rotations_stage_one_pending_kuh(hospital):
    """Concurrent add_pending_kuh for one patient: exactly one rotation is staged."""
    with hospital.transaction() as repo:
        repo.enroll("pat-1", "Name", date(1990, 1, 1), b"k1")

    def stage(i: int) -> object:
        with hospital.transaction() as repo:
            return repo.add_pending_kuh("pat-1", f"k2-{i}".encode())

    results = _race(4, stage)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == 3
