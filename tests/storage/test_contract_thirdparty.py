"""Contract of ThirdPartyRepository: the same behaviour on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from patientkey.errors import Conflict, InvalidInput, NotFound
from patientkey.storage.repos import CLAIM_TRANSITIONS
from patientkey.storage.schema import ClaimState, KeyState


def test_kub_ratchet_keeps_the_newest_current(thirdparty, clock):
    """add_kub makes the new version current and retires the previous one."""
    with thirdparty.transaction() as repo:
        first = repo.add_kub("u1", 1, b"kub-1")
    assert (first.version, first.state, first.created_at) == (1, KeyState.CURRENT, clock.now)
    with thirdparty.transaction() as repo:
        second = repo.add_kub("u1", 2, b"kub-2")
        assert repo.current_kub("u1") == second
        assert repo.get_kub("u1", 1).state is KeyState.RETIRED
        assert repo.get_kub("u1", 1).wrapped_key == b"kub-1"


def test_kub_versions_only_move_forward(thirdparty):
    """A KUB version not above every held version raises Conflict."""
    with thirdparty.transaction() as repo:
        repo.add_kub("u1", 3, b"kub-3")
    for version in (1, 3):
        with pytest.raises(Conflict), thirdparty.transaction() as repo:
            repo.add_kub("u1", version, b"old")
    with thirdparty.transaction() as repo:
        assert repo.current_kub("u1").version == 3
        assert repo.add_kub("u2", 1, b"other-account").version == 1


def test_kub_lookups_of_unknown_are_not_found(thirdparty):
    """current_kub and get_kub without such a key raise NotFound; bad versions InvalidInput."""
    with pytest.raises(NotFound), thirdparty.transaction() as repo:
        repo.current_kub("u1")
    with pytest.raises(NotFound), thirdparty.transaction() as repo:
        repo.get_kub("u1", 1)
    with pytest.raises(InvalidInput), thirdparty.transaction() as repo:
        repo.add_kub("u1", 0, b"k")


def test_received_records_are_kept_per_record(thirdparty, clock):
    """store_received keeps the sealed record; a newer share from the same account replaces it."""
    with thirdparty.transaction() as repo:
        repo.store_received("his-a", "rx-1", "u1", b"sealed-1")
        repo.store_received("his-a", "rx-0", "u1", b"sealed-0")
        repo.store_received("his-b", "rx-1", "u2", b"sealed-b")
    clock.advance(timedelta(minutes=5))
    with thirdparty.transaction() as repo:
        newer = repo.store_received("his-a", "rx-1", "u1", b"sealed-1b")
        assert repo.get_received("his-a", "rx-1") == newer
        assert [(r.his_id, r.p_id) for r in repo.received_from("u1")] == [
            ("his-a", "rx-0"),
            ("his-a", "rx-1"),
        ]
    assert (newer.sealed, newer.received_at) == (b"sealed-1b", clock.now)


def test_received_record_from_another_account_is_a_conflict(thirdparty):
    """The same record arriving from another account raises Conflict."""
    with thirdparty.transaction() as repo:
        repo.store_received("his-a", "rx-1", "u1", b"sealed-1")
    with pytest.raises(Conflict), thirdparty.transaction() as repo:
        repo.store_received("his-a", "rx-1", "u2", b"sealed-x")
    with pytest.raises(NotFound), thirdparty.transaction() as repo:
        repo.get_received("his-a", "rx-404")


def test_claim_follows_the_transition_table(thirdparty):
    """Every transition in CLAIM_TRANSITIONS is allowed and every other one is a Conflict."""
    states: list[ClaimState | None] = [None, *ClaimState]
    for start in states:
        for target in ClaimState:
            key = f"rx-{start}-{target}"
            with thirdparty.transaction() as repo:
                path: list[ClaimState] = {
                    None: [],
                    ClaimState.PENDING: [ClaimState.PENDING],
                    ClaimState.CLAIMED: [ClaimState.PENDING, ClaimState.CLAIMED],
                    ClaimState.COMPLETED: [
                        ClaimState.PENDING,
                        ClaimState.CLAIMED,
                        ClaimState.COMPLETED,
                    ],
                    ClaimState.RELEASED: [ClaimState.PENDING, ClaimState.RELEASED],
                }[start]
                for step in path:
                    repo.set_claim("his-a", key, step)
            if target in CLAIM_TRANSITIONS[start]:
                with thirdparty.transaction() as repo:
                    assert repo.set_claim("his-a", key, target.value).state is target
            else:
                with pytest.raises(Conflict), thirdparty.transaction() as repo:
                    repo.set_claim("his-a", key, target)


def test_claim_state_is_checked_and_read_back(thirdparty, clock):
    """Unknown states are InvalidInput; get_claim returns the last state and its time."""
    with pytest.raises(InvalidInput), thirdparty.transaction() as repo:
        repo.set_claim("his-a", "rx-1", "stolen")
    with pytest.raises(NotFound), thirdparty.transaction() as repo:
        repo.get_claim("his-a", "rx-1")
    with thirdparty.transaction() as repo:
        repo.set_claim("his-a", "rx-1", ClaimState.PENDING)
    clock.advance(timedelta(seconds=3))
    with thirdparty.transaction() as repo:
        repo.set_claim("his-a", "rx-1", ClaimState.CLAIMED)
    with thirdparty.transaction() as repo:
        claim = repo.get_claim("his-a", "rx-1")
    assert (claim.state, claim.updated_at) == (ClaimState.CLAIMED, clock.now)
