"""Contract of the platform's wallet-hop storage, listing and counts, on every backend."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import pytest

from patientkey.errors import Conflict, InvalidInput, NotFound
from patientkey.storage.repos import KueKey
from patientkey.storage.schema import DispenseState, KueDirection

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
TO, FROM = KueDirection.TO_WALLET, KueDirection.FROM_WALLET


def _keys(n: int) -> list[KueKey]:
    return [KueKey(str(uuid.uuid4()), os.urandom(32)) for _ in range(n)]


def _account(platform, user: str = "u1") -> None:
    with platform.transaction() as repo:
        repo.create_account(user)


def test_kue_keys_are_taken_once_in_order(platform, clock):
    """Keys come out by (created_at, key ID), each once; the count follows."""
    _account(platform)
    first, second = _keys(3), _keys(2)
    with platform.transaction() as repo:
        assert repo.add_kue_keys("u1", TO, first) == 3
    clock.advance(timedelta(seconds=1))
    with platform.transaction() as repo:
        repo.add_kue_keys("u1", TO, second)
        assert repo.kue_key_count("u1", TO) == 5
        assert repo.kue_key_count("u1", FROM) == 0
    with platform.transaction() as repo:
        taken = repo.take_kue_keys("u1", TO, 4)
    by_id = sorted(first, key=lambda k: k.key_id)
    assert taken == [*by_id, min(second, key=lambda k: k.key_id)]
    with platform.transaction() as repo:
        assert repo.kue_key_count("u1", TO) == 1


def test_take_kue_keys_is_all_or_nothing(platform):
    """Asking for more keys than are left is NotFound and takes none."""
    _account(platform)
    with platform.transaction() as repo:
        repo.add_kue_keys("u1", TO, _keys(2))
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.take_kue_keys("u1", TO, 3)
    with platform.transaction() as repo:
        assert repo.kue_key_count("u1", TO) == 2


def test_take_kue_keys_by_id(platform):
    """Keys taken by ID come back in the order named and are gone afterwards."""
    _account(platform)
    keys = _keys(3)
    with platform.transaction() as repo:
        repo.add_kue_keys("u1", FROM, keys)
    with platform.transaction() as repo:
        got = repo.take_kue_keys_by_id("u1", FROM, [keys[2].key_id, keys[0].key_id])
    assert got == [keys[2], keys[0]]
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.take_kue_keys_by_id("u1", FROM, [keys[0].key_id])
    with platform.transaction() as repo:
        assert repo.take_kue_keys_by_id("u1", FROM, [keys[1].key_id]) == [keys[1]]


def test_take_by_id_refuses_other_accounts_and_directions(platform):
    """A key of another account or direction is NotFound, and nothing named is taken."""
    _account(platform, "u1")
    _account(platform, "u2")
    mine, theirs = _keys(1), _keys(1)
    with platform.transaction() as repo:
        repo.add_kue_keys("u1", FROM, mine)
        repo.add_kue_keys("u2", FROM, theirs)
    for user, direction, ids in (
        ("u1", FROM, [mine[0].key_id, theirs[0].key_id]),
        ("u1", TO, [mine[0].key_id]),
        ("u2", FROM, [mine[0].key_id]),
        ("u1", FROM, [str(uuid.uuid4())]),
    ):
        with pytest.raises(NotFound), platform.transaction() as repo:
            repo.take_kue_keys_by_id(user, direction, ids)
    with platform.transaction() as repo:
        assert repo.kue_key_count("u1", FROM) == 1
        assert repo.kue_key_count("u2", FROM) == 1


def test_add_kue_keys_checks_input(platform):
    """Unknown account, duplicate or malformed key IDs, bad keys and directions are refused."""
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.add_kue_keys("nobody", TO, _keys(1))
    _account(platform)
    keys = _keys(2)
    with platform.transaction() as repo:
        repo.add_kue_keys("u1", TO, keys[:1])
    with pytest.raises(Conflict), platform.transaction() as repo:
        repo.add_kue_keys("u1", FROM, keys)  # keys[0] already stored
    bad_batches = [
        [],
        [keys[1], keys[1]],
        [KueKey("not-a-uuid", b"k" * 32)],
        [KueKey(str(uuid.uuid4()).upper(), b"k" * 32)],
        [KueKey(str(uuid.uuid4()), b"")],
        [KueKey(str(uuid.uuid4()), b"k" * 513)],
    ]
    for batch in bad_batches:
        with pytest.raises(InvalidInput), platform.transaction() as repo:
            repo.add_kue_keys("u1", TO, batch)
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.add_kue_keys("u1", "sideways", keys[1:])
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.take_kue_keys_by_id("u1", TO, [keys[0].key_id, keys[0].key_id])
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.take_kue_keys("u1", TO, 0)
    with platform.transaction() as repo:
        assert repo.kue_key_count("u1", TO) == 1
        assert repo.kue_key_count("u1", FROM) == 0


def test_pq_exchanges_are_kept_per_account(platform, clock):
    """An init message is stored once per (account, exchange); another init is a Conflict."""
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.add_pq_exchange("u1", "abc123", b"init")
    _account(platform)
    with platform.transaction() as repo:
        stored = repo.add_pq_exchange("u1", "abc123", b"init")
    assert (stored.init, stored.created_at) == (b"init", clock.now)
    with platform.transaction() as repo:
        assert repo.add_pq_exchange("u1", "abc123", b"init") == stored
        assert repo.get_pq_exchange("u1", "abc123") == stored
    with pytest.raises(Conflict), platform.transaction() as repo:
        repo.add_pq_exchange("u1", "abc123", b"other")
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.get_pq_exchange("u1", "zzz")
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.get_pq_exchange("u1", "has-dash")


def test_replay_guard_accepts_once_until_expiry(platform, clock):
    """A (sender, jti) is accepted once; after its expiry it may be accepted again."""
    until = clock.now + timedelta(seconds=300)
    with platform.transaction() as repo:
        assert repo.guard_replay("u1", "jti-1", until) is True
    with platform.transaction() as repo:
        assert repo.guard_replay("u1", "jti-1", until) is False
        assert repo.guard_replay("u2", "jti-1", until) is True
    clock.advance(timedelta(seconds=301))
    with platform.transaction() as repo:
        assert repo.guard_replay("u1", "jti-1", clock.now + timedelta(seconds=300)) is True
        assert repo.purge_replay() == 1  # u2's entry expired
        assert repo.purge_replay() == 0
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.guard_replay("u1", "jti-2", until.replace(tzinfo=None))


def test_listing_shows_metadata_of_bound_records(platform):
    """The listing covers the account's bound patients, with fetch, dispense and share state."""
    with platform.transaction() as repo:
        repo.create_account("u1")
        repo.create_account("u2")
        repo.register_third_party("pharm-1", "P1", b"kbp", PEM)
        repo.register_third_party("pharm-2", "P2", b"kbp", PEM)
        repo.bind("u1", "his-a", "pat-1")
        repo.bind("u2", "his-a", "pat-2")
        repo.announce_record("his-a", "rx-2", "pat-1", "prescription", 1)
        repo.announce_record("his-a", "rx-1", "pat-1", "report", 1)
        repo.announce_record("his-a", "rx-9", "pat-2", "prescription", 1)
        repo.announce_record("his-b", "rx-3", "pat-1", "prescription", 1)  # another HIS
        repo.store_sealed("his-a", "rx-2", b"ct")
        repo.open_dispense("his-a", "rx-2")
        repo.claim("his-a", "rx-2", "pharm-2")
        for share_id, b_id in (("s1", "pharm-2"), ("s2", "pharm-1"), ("s3", "pharm-2")):
            repo.add_share(
                share_id,
                his_id="his-a",
                p_id="rx-2",
                user_id="u1",
                b_id=b_id,
                kind="kub",
                kub_version=1,
            )
            if share_id != "s2":
                repo.mark_delivered(share_id)
    with platform.transaction() as repo:
        listed = repo.listing("u1")
        assert repo.listing("nobody") == []
    assert [(r.his_id, r.p_id) for r in listed] == [("his-a", "rx-1"), ("his-a", "rx-2")]
    report, prescription = listed
    assert (report.record_type, report.fetched, report.dispense, report.shared_with) == (
        "report",
        False,
        None,
        (),
    )
    assert (prescription.fetched, prescription.dispense, prescription.shared_with) == (
        True,
        DispenseState.CLAIMED,
        ("pharm-2",),
    )


def test_counts(platform):
    """counts() reports the number of rows per kind."""
    _account(platform)
    with platform.transaction() as repo:
        repo.add_kue_keys("u1", TO, _keys(2))
        repo.add_kue_keys("u1", FROM, _keys(3))
        repo.announce_record("his-a", "rx-1", "pat-1", "prescription", 1)
        repo.log_event("test", None, {})
    with platform.transaction() as repo:
        counts = repo.counts()
    assert counts["accounts"] == 1
    assert counts["records"] == 1
    assert counts["records_fetched"] == 0
    assert counts["kue_keys_to_wallet"] == 2
    assert counts["kue_keys_from_wallet"] == 3
    assert counts["dispense_open"] == 0
    assert counts["events"] == 1
