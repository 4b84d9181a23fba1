"""An append-only Merkle log over a narrow node store: O(1) amortized appends, O(log n) proofs.

What is stored
--------------
Only hashes that never change once written: every leaf hash and the root of
every *complete* subtree, keyed ``(level, index)`` — subtree ``(level, index)``
holds leaves ``[index * 2**level, (index + 1) * 2**level)``, its root is
``node_hash((level - 1, 2 * index), (level - 1, 2 * index + 1))``. Appending
leaf ``n`` writes ``(0, n)`` and one node per trailing one-bit of ``n``
(the subtrees it completes): two writes per leaf on average, each written once.
Any other hash — the root of an earlier tree size, the right-hand sibling of
an unbalanced tree — is folded from O(log n) stored complete subtrees
(:func:`~patientkey.audit.merkle.perfect_subtrees`), so a root, an inclusion
or a consistency proof reads O(log n) nodes, in one :meth:`NodeStore.get_nodes`
call.

The log keeps the roots of the complete subtrees covering ``[0, size)``
(the *frontier*, one per one-bit of ``size``) in memory: appends read nothing
and the current root is a fold of at most 64 hashes.

One writer
----------
:class:`MerkleLog` holds no lock; the caller serializes appends. A store shared
between processes refuses a second write of a key (the write-once rule), so
two writers cannot silently fork the log; :meth:`MerkleLog.refresh` re-reads
the size and frontier after another process appended.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from patientkey.audit.merkle import (
    EMPTY_ROOT,
    HASH_LEN,
    _check_u64,
    consistency_ranges,
    fold_subtrees,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    perfect_subtrees,
)
from patientkey.errors import Conflict, InvalidInput

__all__ = ["MemoryNodeStore", "MerkleLog", "NodeKey", "NodeStore", "StoredNode"]

NodeKey = tuple[int, int]
"""``(level, index)`` of a complete subtree; level 0 is the leaves."""
StoredNode = tuple[int, int, bytes]
"""``(level, index, hash)`` as written by :meth:`NodeStore.put_nodes`."""
#: The root of a tree of 2**64 leaves, the most RFC 9162's uint64 sizes allow.
_MAX_LEVEL = 64


class NodeStore(Protocol):
    """Where a :class:`MerkleLog` keeps its hashes (a database table, or :class:`MemoryNodeStore`).

    A SQL implementation is one table ``(level, idx, hash)`` with primary key
    ``(level, idx)``: :meth:`leaf_count` is ``count(*) where level = 0``,
    :meth:`get_nodes` one ``select … where (level, idx) in (…)``,
    :meth:`put_nodes` one ``insert`` in one transaction.
    """

    def leaf_count(self) -> int:
        """How many leaves (level-0 nodes) are stored."""
        ...

    def get_nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        """The hashes at ``keys``, in the same order; every key must be stored."""
        ...

    def put_nodes(self, nodes: Sequence[StoredNode]) -> None:
        """Store ``nodes`` all or none; a key already stored is refused (write once)."""
        ...


class MemoryNodeStore:
    """The in-memory twin of :class:`NodeStore`: one contiguous byte array per level.

    Each level is written left to right (a subtree completes only after the
    ones to its left), so a node's position is ``index * 32`` and the store
    refuses any write that is not the next index of its level.
    """

    def __init__(self) -> None:
        self._levels: list[bytearray] = []

    def leaf_count(self) -> int:
        return len(self._levels[0]) // HASH_LEN if self._levels else 0

    def get_nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        out: list[bytes] = []
        for level, index in keys:
            row = self._levels[level] if 0 <= level < len(self._levels) else b""
            at = index * HASH_LEN
            if index < 0 or at + HASH_LEN > len(row):
                raise KeyError((level, index))
            out.append(bytes(row[at : at + HASH_LEN]))
        return out

    def put_nodes(self, nodes: Sequence[StoredNode]) -> None:
        levels = self._levels
        # Check the whole batch before writing any of it (all or none).
        next_index: dict[int, int] = {}
        for level, index, digest in nodes:
            expected = next_index.get(level)
            if expected is None:
                if not 0 <= level <= _MAX_LEVEL:
                    raise InvalidInput(f"a node's level is 0..{_MAX_LEVEL}")
                expected = len(levels[level]) // HASH_LEN if level < len(levels) else 0
            if len(digest) != HASH_LEN:
                raise InvalidInput("a node's hash is 32 bytes")
            if index != expected:
                raise Conflict(f"node ({level}, {index}) is not the next of its level")
            next_index[level] = expected + 1
        for level, _index, digest in nodes:
            while len(levels) <= level:
                levels.append(bytearray())
            levels[level] += digest

    @property
    def nbytes(self) -> int:
        """Bytes of hashes held (about 64 per leaf)."""
        return sum(len(row) for row in self._levels)


class MerkleLog:
    """An append-only RFC 9162 log whose nodes live in a :class:`NodeStore`."""

    def __init__(self, store: NodeStore) -> None:
        self._store = store
        self._size = 0
        self._frontier: list[bytes] = []
        self.refresh()

    def refresh(self) -> None:
        """Re-read the size and the frontier from the store (after another writer appended)."""
        size = self._store.leaf_count()
        self._frontier = self._store.get_nodes(perfect_subtrees(0, size))
        self._size = size

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def _extend(self, hashes: Iterable[bytes]) -> tuple[list[StoredNode], list[bytes], int]:
        """The nodes that appending ``hashes`` completes, and the frontier and size after it."""
        frontier = list(self._frontier)
        n = self._size
        nodes: list[StoredNode] = []
        for digest in hashes:
            nodes.append((0, n, digest))
            acc, level, index = digest, 0, n
            while index & 1:  # each trailing one-bit of n: a subtree completes
                acc = node_hash(frontier.pop(), acc)
                level += 1
                index >>= 1
                nodes.append((level, index, acc))
            frontier.append(acc)
            n += 1
        return nodes, frontier, n

    def append(self, entry: bytes) -> int:
        """Append one entry (its leaf hash is ``SHA-256(0x00 || entry)``); return its index."""
        if not isinstance(entry, bytes):
            raise InvalidInput("log entries are bytes")
        return self._commit((leaf_hash(entry),)).start

    def append_many(self, entries: Iterable[bytes]) -> range:
        """Append entries in order with one store write; return their indices."""
        hashes = []
        for entry in entries:
            if not isinstance(entry, bytes):
                raise InvalidInput("log entries are bytes")
            hashes.append(leaf_hash(entry))
        return self._commit(hashes)

    def _commit(self, hashes: Sequence[bytes]) -> range:
        first = self._size
        nodes, frontier, size = self._extend(hashes)
        if nodes:
            self._store.put_nodes(nodes)
        # Only once the store took the nodes: a refused write leaves the log as it was.
        self._frontier, self._size = frontier, size
        return range(first, size)

    def _checked(self, size: int | None, what: str = "tree size") -> int:
        if size is None:
            return self._size
        if _check_u64(size, what) > self._size:
            raise InvalidInput(f"{what} exceeds the log's size")
        return size

    def _hashes(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """MTH of each range, read from the store in one call."""
        plans = [perfect_subtrees(start, end) for start, end in ranges]
        found = self._store.get_nodes([key for plan in plans for key in plan])
        out: list[bytes] = []
        at = 0
        for plan in plans:
            out.append(fold_subtrees(found[at : at + len(plan)]))
            at += len(plan)
        return out

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all of them)."""
        n = self._checked(size)
        if n == 0:
            return EMPTY_ROOT
        if n == self._size:
            return fold_subtrees(self._frontier)
        return self._hashes([(0, n)])[0]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162 §2.1.3.1 (default size: the log's)."""
        n = self._checked(size)
        return self._hashes(inclusion_ranges(index, n))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[new_size]) of RFC 9162 §2.1.4.1 (default new size: the log's)."""
        n = self._checked(new_size, "new tree size")
        return self._hashes(consistency_ranges(old_size, n))
