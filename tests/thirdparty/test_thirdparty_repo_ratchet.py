"""The repository additions the third party relies on, on the memory twin and on SQLite."""

from __future__ import annotations

import pytest

from patientkey.errors import InvalidInput, NotFound
from patientkey.storage import SqlStore, ThirdPartyRepo
from patientkey.storage.memory import thirdparty_store
from patientkey.storage.schema import KeyState


@pytest.fixture(params=["memory", "sqlite"])
def store(request, db):
    return thirdparty_store() if request.param == "memory" else SqlStore(db, ThirdPartyRepo)


def versions(store, user="u1"):
    out = {}
    with store.transaction() as repo:
        for v in range(1, 8):
            try:
                key = repo.get_kub(user, v)
                out[v] = (key.state, key.wrapped_key)
            except NotFound:
                pass
    return out


def test_reset_kub_restarts_at_one_and_drops_everything(store):
    """reset_kub(1) after versions 1..3: only the new version 1 remains, current."""
    with store.transaction() as repo:
        for v in (1, 2, 3):
            repo.add_kub("u1", v, f"k{v}".encode())
        repo.add_kub("u2", 1, b"other")
    with store.transaction() as repo:
        key = repo.reset_kub("u1", 1, b"fresh")
    assert (key.version, key.state) == (1, KeyState.CURRENT)
    assert versions(store) == {1: (KeyState.CURRENT, b"fresh")}
    assert versions(store, "u2") == {1: (KeyState.CURRENT, b"other")}


def test_reset_kub_replaces_the_step_after_a_lost_receipt(store):
    """reset_kub(v+1) with v+1 held replaces it and keeps the versions below, retired."""
    with store.transaction() as repo:
        for v in (1, 2, 3):
            repo.add_kub("u1", v, f"k{v}".encode())
        repo.reset_kub("u1", 3, b"k3-again")
    assert versions(store) == {
        1: (KeyState.RETIRED, b"k1"),
        2: (KeyState.RETIRED, b"k2"),
        3: (KeyState.CURRENT, b"k3-again"),
    }
    with store.transaction() as repo:
        repo.reset_kub("u1", 5, b"k5")  # a gap is allowed, as with add_kub
        assert repo.current_kub("u1").version == 5


def test_reset_kub_checks_its_input_and_a_failed_transaction_leaves_nothing(store):
    """Bad version or empty key: InvalidInput, nothing written."""
    with store.transaction() as repo:
        repo.add_kub("u1", 1, b"k1")
    for args in (("u1", 0, b"k"), ("u1", 2, b""), ("", 2, b"k")):
        with pytest.raises(InvalidInput), store.transaction() as repo:
            repo.reset_kub(*args)
    assert versions(store) == {1: (KeyState.CURRENT, b"k1")}


def test_list_received_lists_every_account(store):
    """list_received returns everything received, ordered by (HIS_ID, P_ID)."""
    with store.transaction() as repo:
        repo.store_received("his-b", "p-1", "u2", b"s3")
        repo.store_received("his-a", "p-2", "u1", b"s2")
        repo.store_received("his-a", "p-1", "u1", b"s1")
        listed = [(r.his_id, r.p_id, r.user_id) for r in repo.list_received()]
    assert listed == [("his-a", "p-1", "u1"), ("his-a", "p-2", "u1"), ("his-b", "p-1", "u2")]
