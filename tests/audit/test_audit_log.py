"""MerkleLog over a NodeStore: RFC 9162 roots and proofs from O(log n) stored nodes."""

from __future__ import annotations

import inspect
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkey.audit import (
    EMPTY_ROOT,
    MemoryNodeStore,
    MerkleLog,
    NodeStore,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from patientkey.errors import Conflict, InvalidInput

from . import _spec
from ._vectors import CONSISTENCY, INCLUSION, LEAVES, NODES, ROOTS


class CountingStore:
    """A NodeStore that counts reads and can be told to fail the next write."""

    def __init__(self) -> None:
        self.inner = MemoryNodeStore()
        self.reads = 0
        self.read_calls = 0
        self.fail_next_put = False

    def leaf_count(self) -> int:
        return self.inner.leaf_count()

    def get_nodes(self, keys):
        self.reads += len(keys)
        self.read_calls += 1
        return self.inner.get_nodes(keys)

    def put_nodes(self, nodes):
        if self.fail_next_put:
            self.fail_next_put = False
            raise OSError("disk full")
        self.inner.put_nodes(nodes)


def reference_log() -> tuple[MerkleLog, MemoryNodeStore]:
    store = MemoryNodeStore()
    log = MerkleLog(store)
    for entry in LEAVES:
        log.append(entry)
    return log, store


def test_memory_store_is_a_node_store():
    """The in-memory twin satisfies the NodeStore protocol the log is typed against."""
    store: NodeStore = MemoryNodeStore()
    assert store.leaf_count() == 0
    # The annotation above is not checked at run time (mypy reads src only): compare the
    # methods' signatures with the protocol's, so the twin cannot drift from it unseen.
    for name in ("leaf_count", "get_nodes", "put_nodes"):
        assert inspect.signature(getattr(MemoryNodeStore, name)) == inspect.signature(
            getattr(NodeStore, name)
        ), name


def test_log_matches_the_reference_tree_at_every_size():
    """Appending the reference leaves gives the published root after each one."""
    store = MemoryNodeStore()
    log = MerkleLog(store)
    assert log.size == 0
    assert log.root() == EMPTY_ROOT
    for n, entry in enumerate(LEAVES, start=1):
        assert log.append(entry) == n - 1
        assert log.size == n
        assert log.root() == ROOTS[n]


def test_roots_of_earlier_sizes_come_from_the_store():
    """root(size) of any earlier size is that size's published root."""
    log, _ = reference_log()
    assert [log.root(n) for n in range(9)] == ROOTS


def test_store_holds_exactly_the_complete_subtrees():
    """The stored nodes are the reference tree's complete subtrees, keyed (level, index)."""
    _, store = reference_log()
    for level, row in enumerate(NODES):
        assert store.get_nodes([(level, i) for i in range(len(row))]) == row
    with pytest.raises(KeyError):
        store.get_nodes([(4, 0)])
    assert store.nbytes == 15 * 32


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION)
def test_log_inclusion_proofs_match_the_published_vectors(index, size, expected):
    """MerkleLog.inclusion_proof gives the published proofs, for earlier sizes too."""
    log, _ = reference_log()
    assert log.inclusion_proof(index, size) == expected


@pytest.mark.parametrize(("old", "new", "expected"), CONSISTENCY)
def test_log_consistency_proofs_match_the_published_vectors(old, new, expected):
    """MerkleLog.consistency_proof gives the published proofs."""
    log, _ = reference_log()
    assert log.consistency_proof(old, new) == expected


def test_sizes_default_to_the_whole_log():
    """Without a size, proofs and the root are about the log as it is now."""
    log, _ = reference_log()
    assert log.inclusion_proof(5) == log.inclusion_proof(5, 8)
    assert log.consistency_proof(6) == log.consistency_proof(6, 8)
    assert log.consistency_proof(0) == log.consistency_proof(8) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40), max_size=90))
def test_log_roots_equal_the_recursive_definition(entries):
    """After each append, the log's root (now and for every earlier size) is MTH of §2.1.1."""
    log = MerkleLog(MemoryNodeStore())
    for n, entry in enumerate(entries, start=1):
        log.append(entry)
        assert log.root() == _spec.mth(entries[:n])
    for n in range(len(entries) + 1):
        assert log.root(n) == _spec.mth(entries[:n])


def test_log_proofs_equal_the_rfc_for_every_pair_of_sizes():
    """For n ≤ 40: every PATH and PROOF from stored nodes equals the RFC's, and verifies."""
    entries = [b"e%d" % i for i in range(40)]
    log = MerkleLog(MemoryNodeStore())
    log.append_many(entries)
    for n in range(1, 41):
        root = _spec.mth(entries[:n])
        for m in range(n):
            got = log.inclusion_proof(m, n)
            assert got == _spec.path(m, entries[:n])
            verify_inclusion(leaf_hash(entries[m]), m, n, got, root)
        for m in range(1, n + 1):
            got = log.consistency_proof(m, n)
            assert got == _spec.proof(m, entries[:n])
            verify_consistency(m, n, log.root(m), root, got)


@st.composite
def big_log_case(draw):
    size = draw(st.integers(min_value=1, max_value=2500))
    index = draw(st.integers(min_value=0, max_value=size - 1))
    old = draw(st.integers(min_value=0, max_value=size))
    return size, index, old


BIG = [b"big-%d" % i for i in range(2500)]
BIG_HASHES = [leaf_hash(e) for e in BIG]
BIG_LOG = MerkleLog(MemoryNodeStore())
BIG_LOG.append_many(BIG)


@settings(max_examples=150, deadline=None)
@given(big_log_case())
def test_log_proofs_in_larger_trees_equal_the_reference(case):
    """In trees up to 2,500 leaves, stored-node proofs equal the O(n) reference and verify."""
    size, index, old = case
    root = BIG_LOG.root(size)
    proof = BIG_LOG.inclusion_proof(index, size)
    assert proof == inclusion_proof(index, BIG_HASHES[:size])
    verify_inclusion(BIG_HASHES[index], index, size, proof, root)
    cproof = BIG_LOG.consistency_proof(old, size)
    assert cproof == consistency_proof(old, BIG_HASHES[:size])
    verify_consistency(old, size, BIG_LOG.root(old), root, cproof)


def test_append_many_equals_appending_one_by_one():
    """A batch gives the same nodes and root as single appends, and returns its indices."""
    one, many = MemoryNodeStore(), MemoryNodeStore()
    single, batch = MerkleLog(one), MerkleLog(many)
    for i in range(37):
        single.append(b"%d" % i)
    assert batch.append_many(b"%d" % i for i in range(20)) == range(20)
    assert batch.append_many([]) == range(20, 20)
    assert batch.append_many(b"%d" % i for i in range(20, 37)) == range(20, 37)
    assert batch.root() == single.root()
    assert many.nbytes == one.nbytes


@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 257, 1000, 4096])
def test_appends_store_two_nodes_per_leaf_and_read_nothing(n):
    """n appends write 2n - popcount(n) nodes (amortized O(1)) and read no node."""
    store = CountingStore()
    log = MerkleLog(store)
    reads_at_start = store.reads
    for i in range(n):
        log.append(b"%d" % i)
    assert store.reads == reads_at_start
    assert store.inner.nbytes == (2 * n - bin(n).count("1")) * 32
    if n <= 300:
        assert log.root() == _spec.mth([b"%d" % i for i in range(n)])


def test_proofs_read_a_logarithmic_number_of_nodes_in_one_call():
    """Inclusion and consistency proofs read O(log n) nodes, in one store call each."""
    store = CountingStore()
    log = MerkleLog(store)
    n = (1 << 16) + 12345
    log.append_many(b"%d" % i for i in range(n))
    bound = 2 * math.ceil(math.log2(n)) + 2
    rng = random.Random(7)
    for _ in range(200):
        for make in (
            lambda: log.inclusion_proof(rng.randrange(n)),
            lambda: log.consistency_proof(rng.randrange(1, n)),
            lambda: log.root(rng.randrange(1, n)),
        ):
            before, calls = store.reads, store.read_calls
            make()
            assert store.reads - before <= bound
            assert store.read_calls - calls == 1


def test_a_log_reopened_on_its_store_continues():
    """A new MerkleLog on a filled store has its size and root, and appends after them."""
    store = MemoryNodeStore()
    MerkleLog(store).append_many(LEAVES[:5])
    reopened = MerkleLog(store)
    assert reopened.size == 5
    assert reopened.root() == ROOTS[5]
    reopened.append_many(LEAVES[5:])
    assert reopened.root() == ROOTS[8]


def test_a_failed_store_write_leaves_the_log_unchanged():
    """If the store refuses a write, size and root stay; the next append reuses the index."""
    store = CountingStore()
    log = MerkleLog(store)
    log.append_many(LEAVES[:3])
    store.fail_next_put = True
    with pytest.raises(OSError, match="disk full"):
        log.append(LEAVES[3])
    assert log.size == 3
    assert log.root() == ROOTS[3]
    assert log.append(LEAVES[3]) == 3
    assert log.root() == ROOTS[4]


def test_a_second_writer_cannot_fork_the_log():
    """A stale writer's append is refused by the write-once store; refresh catches up."""
    store = MemoryNodeStore()
    writer, stale = MerkleLog(store), MerkleLog(store)
    writer.append_many(LEAVES[:4])
    with pytest.raises(Conflict):
        stale.append(b"forked history")
    assert stale.size == 0
    stale.refresh()
    assert stale.size == 4
    assert stale.root() == ROOTS[4]
    stale.append_many(LEAVES[4:])
    assert stale.root() == ROOTS[8]


def test_memory_store_writes_all_or_nothing_and_only_once():
    """A batch with one bad node writes none of it; a key is never rewritten."""
    store = MemoryNodeStore()
    store.put_nodes([(0, 0, ROOTS[1])])
    for batch in (
        [(0, 1, ROOTS[2]), (0, 3, ROOTS[3])],  # a gap
        [(0, 1, ROOTS[2]), (0, 1, ROOTS[3])],  # the same key twice
        [(0, 0, ROOTS[2])],  # already written
        [(1, 1, ROOTS[2])],  # not the next of its level
    ):
        with pytest.raises(Conflict):
            store.put_nodes(batch)
    with pytest.raises(InvalidInput):
        store.put_nodes([(0, 1, b"short")])
    with pytest.raises(InvalidInput):
        store.put_nodes([(-1, 0, ROOTS[1])])
    assert store.leaf_count() == 1
    assert store.nbytes == 32


def test_memory_store_refuses_a_level_no_tree_has():
    """Levels run from 0 to 64 (2**64 leaves); a larger one is refused, not allocated."""
    store = MemoryNodeStore()
    with pytest.raises(InvalidInput):
        store.put_nodes([(65, 0, ROOTS[1])])
    with pytest.raises(InvalidInput):
        store.put_nodes([(10**9, 0, ROOTS[1])])
    assert store.nbytes == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda log: log.root(9),
        lambda log: log.root(-1),
        lambda log: log.root(True),
        lambda log: log.inclusion_proof(8),
        lambda log: log.inclusion_proof(0, 9),
        lambda log: log.inclusion_proof(-1),
        lambda log: log.consistency_proof(5, 4),
        lambda log: log.consistency_proof(1, 9),
        lambda log: log.append("text, not bytes"),
        lambda log: log.append_many([b"ok", None]),
    ],
)
def test_impossible_requests_are_invalid_input(call):
    """Sizes beyond the log, indices beyond a size, or non-bytes entries are refused."""
    log, _ = reference_log()
    with pytest.raises(InvalidInput):
        call(log)
    assert log.size == 8
