"""Contract of the transparency log's storage (event salts, sequencer, write-once nodes):
the same behaviour on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import text

from patientkey.audit import SALT_LEN, MerkleLog, leaf_hash, merkle_tree_hash
from patientkey.errors import Conflict, InvalidInput
from patientkey.storage.engine import open_database
from patientkey.storage.repos import PlatformRepo, SqlStore
from patientkey.storage.schema import Party

from .conftest import FakeClock

H = bytes(range(32))


def _log_events(platform, *users: str | None) -> list:
    with platform.transaction() as repo:
        return [
            repo.log_event("bind", user, {"his_id": "his-a", "n": i})
            for i, user in enumerate(users)
        ]


def test_log_event_draws_a_fresh_salt_and_leaves_the_event_unsequenced(platform):
    """Each event gets its own 16 random salt bytes, stored, and no leaf index yet."""
    logged = _log_events(platform, "u1", "u1", None)
    with platform.transaction() as repo:
        stored = repo.events()
    assert stored == logged
    assert all(len(e.salt) == SALT_LEN for e in stored)
    assert len({e.salt for e in stored}) == 3
    assert all(e.leaf_index is None for e in stored)


def test_sequencing_appends_events_as_consecutive_leaves_in_seq_order(platform, clock):
    """sequence_events makes waiting events the next leaves, oldest first, batch by batch."""
    first = _log_events(platform, "u1", "u2", None)
    with platform.transaction() as repo:
        assert repo.sequence_events() == range(3)
    clock.advance(timedelta(seconds=1))
    later = _log_events(platform, "u1", "u2")
    with platform.transaction() as repo:
        assert repo.sequence_events(limit=1) == range(3, 4)
    with platform.transaction() as repo:
        assert repo.sequence_events(limit=5) == range(4, 5)
        assert repo.sequence_events() == range(5, 5)  # nothing waits
        events = repo.events()
        log = MerkleLog(repo.audit_nodes())
        assert log.size == 5
        entries = [e.entry().encode() for e in events]
        # The stored tree is the RFC 9162 tree of the events' canonical entries.
        assert log.root() == merkle_tree_hash(entries)
    assert [e.seq for e in events] == [e.seq for e in first + later]
    assert [e.leaf_index for e in events] == [0, 1, 2, 3, 4]


def test_sequenced_leaf_is_the_stored_event_entry(platform):
    """Leaf i of the tree is the hash of leaf_events' i-th event's canonical entry, salt too."""
    _log_events(platform, "u1", "u2")
    with platform.transaction() as repo:
        repo.sequence_events()
        events = repo.leaf_events(0, 10)
        assert [e.leaf_index for e in events] == [0, 1]
        for index, event in enumerate(events):
            assert repo.audit_nodes().get_nodes([(0, index)]) == [event.entry().leaf_hash()]
            assert event.entry().salt == event.salt
        assert [e.leaf_index for e in repo.leaf_events(1, 2)] == [1]
        assert repo.leaf_events(2, 2) == []


@pytest.mark.parametrize("bounds", [(-1, 2), (3, 2), (0, 100_001), (True, 3)])
def test_leaf_ranges_are_checked(platform, bounds):
    """A negative, inverted or over-long leaf range is InvalidInput on every backend."""
    with platform.transaction() as repo, pytest.raises(InvalidInput):
        repo.leaf_events(*bounds)


def test_audited_events_are_the_accounts_leaves_below_a_size(platform):
    """audited_events gives one account's sequenced events under a tree size, by leaf."""
    _log_events(platform, "u1", "u2", "u1")
    with platform.transaction() as repo:
        repo.sequence_events()
    _log_events(platform, "u1")  # logged, not yet a leaf
    with platform.transaction() as repo:
        assert [e.leaf_index for e in repo.audited_events("u1", below=3)] == [0, 2]
        assert [e.leaf_index for e in repo.audited_events("u1", below=2)] == [0]
        assert repo.audited_events("u3", below=3) == []
        with pytest.raises(InvalidInput):
            repo.audited_events("u1", below=-1)


def test_failed_transaction_undoes_sequencing(platform):
    """A sequencing whose transaction fails leaves no node and no leaf index behind."""
    _log_events(platform, "u1", "u2")

    def sequence_then_fail() -> None:
        with platform.transaction() as repo:
            repo.sequence_events()
            raise RuntimeError("signing failed")

    with pytest.raises(RuntimeError):
        sequence_then_fail()
    with platform.transaction() as repo:
        assert repo.audit_nodes().leaf_count() == 0
        assert all(e.leaf_index is None for e in repo.events())
        assert repo.sequence_events() == range(2)


def test_sequence_limit_is_checked(platform):
    """A batch of fewer than one event is InvalidInput."""
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.sequence_events(limit=0)


def test_nodes_are_written_once_all_or_none(platform):
    """A second write of a stored key is Conflict and writes none of its batch."""
    with platform.transaction() as repo:
        repo.audit_nodes().put_nodes([(0, 0, H)])
    with pytest.raises(Conflict), platform.transaction() as repo:
        repo.audit_nodes().put_nodes([(0, 1, H), (0, 0, bytes(32))])
    with platform.transaction() as repo:
        nodes = repo.audit_nodes()
        assert nodes.get_nodes([(0, 0)]) == [H]
        assert nodes.leaf_count() == 1
        with pytest.raises(KeyError):
            nodes.get_nodes([(0, 1)])


def test_caught_node_conflict_leaves_earlier_writes_usable(platform):
    """A refused node write caught inside a transaction does not undo what came before."""
    with platform.transaction() as repo:
        repo.audit_nodes().put_nodes([(0, 0, H)])
        with pytest.raises(Conflict):
            repo.audit_nodes().put_nodes([(0, 0, H)])
        repo.audit_nodes().put_nodes([(0, 1, H)])
    with platform.transaction() as repo:
        assert repo.audit_nodes().leaf_count() == 2


@pytest.mark.parametrize(
    "nodes",
    [[(0, 0, b"short")], [(-1, 0, H)], [(65, 0, H)], [(0, -1, H)], [(0, 0, H), (0, 0, H)]],
)
def test_node_input_is_checked(platform, nodes):
    """A malformed node (hash length, level, index, a key twice) is InvalidInput."""
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.audit_nodes().put_nodes(nodes)


# ── one sequencer at a time (SQL backends) ────────────────────────────────────────


def test_concurrent_sequencers_run_one_after_the_other(make_db, sql_backend):
    """A second sequencer waits for the first to commit, then appends after its leaves."""
    db = make_db(Party.PLATFORM)
    store = SqlStore(db, PlatformRepo)
    _log_events(store, "u1", "u2")
    first_holds, release = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def first() -> None:
        with store.transaction() as repo:
            results["first"] = repo.sequence_events()
            if sql_backend == "postgres":
                # The advisory lock of this transaction is really held.
                held = repo._session.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND pid = pg_backend_pid() AND granted"
                    )
                ).scalar_one()
                results["advisory_locks"] = held
            first_holds.set()
            release.wait(10)

    def second() -> None:
        first_holds.wait(10)
        with store.transaction() as repo:
            repo.log_event("fetch", "u1", {})
        with store.transaction() as repo:
            results["second"] = repo.sequence_events()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_holds.wait(10)
    time.sleep(0.3)
    # On PostgreSQL the lock, on SQLite the one writer: the second has not run yet.
    assert "second" not in results
    release.set()
    for thread in threads:
        thread.join(10)
    assert results["first"] == range(2)
    assert results["second"] == range(2, 3)
    if sql_backend == "postgres":
        assert results["advisory_locks"] == 1
    with store.transaction() as repo:
        entries = [e.entry().encode() for e in repo.events()]
        assert MerkleLog(repo.audit_nodes()).root() == merkle_tree_hash(entries)
        assert repo.audit_nodes().get_nodes([(0, 2)]) == [leaf_hash(entries[2])]


# ── the migration ─────────────────────────────────────────────────────────────────


def _check_salting_migration(db) -> None:
    with db.engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "platform_0005")
    with db.engine.begin() as conn:
        for n in range(3):
            conn.execute(
                text(
                    "INSERT INTO event_log (at, kind, user_id, detail) "
                    "VALUES (CURRENT_TIMESTAMP, 'bind', :u, '{}')"
                ),
                {"u": f"u{n}"},
            )
    db.upgrade()
    store = SqlStore(db, PlatformRepo, clock=FakeClock(datetime.now(UTC)))
    with store.transaction() as repo:
        events = repo.events()
        assert len(events) == 3
        assert all(len(e.salt) == SALT_LEN and e.leaf_index is None for e in events)
        assert len({e.salt for e in events}) == 3
        assert repo.sequence_events() == range(3)


def test_sqlite_migration_salts_existing_events(tmp_path):
    """platform_0006 gives every event already logged its own salt; they sequence later."""
    with open_database(f"sqlite:///{tmp_path / 'db.sqlite'}", Party.PLATFORM) as db:
        _check_salting_migration(db)


@pytest.mark.postgres
def test_postgres_migration_salts_existing_events(fresh_pg):
    """On PostgreSQL too, platform_0006 salts the events already logged."""
    _check_salting_migration(fresh_pg(Party.PLATFORM))
