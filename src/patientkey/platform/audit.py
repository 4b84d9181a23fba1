"""The platform's transparency log (RFC 9162) over its event log: sequence, sign, prove.

Every platform event (``log_event``: bindings, rotations, fetches, shares, dispense
steps, the authorization unit's requests, decisions, tokens, uses and revocations) is
a row of the event log; :class:`TransparencyLog` turns the rows into leaves of an
append-only Merkle log (``audit.log``) and answers with signed tree heads and proofs:

=================  =========================  ===============================================
method             route                      answers
=================  =========================  ===============================================
``sync``           ``POST /v1/audit/sync``    the wallet's own events, each with an inclusion
                   (hop envelope)             proof, a signed head and the consistency proof
                                              from the head the wallet accepted last
``sth``            ``GET /v1/audit/sth``      the latest signed tree head and the log's key
``inclusion``      ``GET /v1/audit/proof/     the audit path of a leaf in a tree size
                   inclusion``
``consistency``    ``GET /v1/audit/proof/     the consistency proof between two tree sizes
                   consistency``
=================  =========================  ===============================================

The GET answers are hashes only: an entry (with its salt) goes to its own account
alone, through ``sync``. Sizes outside the log are :class:`~patientkey.errors.InvalidInput`
(400), never a server error.

Sequencing happens when a head is asked for (``integrate``), not on every event: the
event log's hot path stays one insert. A head is signed in the transaction that
sequenced, under the sequencer's lock (``PlatformRepository.sequence_events``), so the
heads of concurrent workers grow in size and time together — a wallet's
``check_consistency`` refuses a larger tree signed earlier than a smaller one.

No I/O of its own: the store, the key and the clock are given.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from patientkey.audit import (
    LogDamaged,
    MerkleLog,
    NodeKey,
    NodeStore,
    SignedTreeHead,
    TreeHead,
    node_hash,
    sign_tree_head,
)
from patientkey.crypto._util import b64url_encode
from patientkey.errors import Forbidden, InvalidInput
from patientkey.protocol.messages import AuditedEvent, AuditSync, AuditSyncRequest, TreeHeadView
from patientkey.storage.repos import MAX_LEAF_RANGE, PlatformRepository, Store, _check_u63

__all__ = [
    "LOG_ID_PREFIX",
    "SYNC_PAGE",
    "LogCheck",
    "LogProblem",
    "TransparencyLog",
    "check_log",
    "log_id_of",
]

LOG_ID_PREFIX: Final = "patientkey-platform:"
#: Events per sync answer: about 1.5 KB each with a 20-hash proof, well under a message.
SYNC_PAGE: Final = 500
#: How long ``GET /v1/audit/sth`` serves the same head (a wallet's sync always integrates).
PUBLIC_HEAD_MAX_AGE_MS: Final = 1000


def log_id_of(signing_key: Ed25519PrivateKey) -> str:
    """``patientkey-platform:<hex SHA-256 of the raw public key>``: the log is its key."""
    raw = signing_key.public_key().public_bytes_raw()
    return LOG_ID_PREFIX + hashlib.sha256(raw).hexdigest()


@contextmanager
def _intact() -> Iterator[None]:
    """A node missing from the store (``KeyError`` by the NodeStore contract) is LogDamaged."""
    try:
        yield
    except KeyError as exc:
        raise LogDamaged(
            "the audit log's store lacks a node; run `patientkey platform audit-check`"
        ) from exc


class TransparencyLog:
    """The platform's signed, append-only log of its events (see the module docstring)."""

    def __init__(
        self,
        store: Store[PlatformRepository],
        signing_key: Ed25519PrivateKey,
        *,
        is_wallet: Callable[[str], bool],
        log_id: str | None = None,
        clock: Callable[[], float] = time.time,
        batch: int = 1000,
    ) -> None:
        if batch < 1:
            raise InvalidInput("the sequencing batch is at least one event")
        self._store = store
        self._key = signing_key
        self._is_wallet = is_wallet
        self.log_id: Final = log_id or log_id_of(signing_key)
        self._clock = clock
        self._batch = batch
        # Heads of this process never go back in time, even if the wall clock does.
        self._last_ms = 0
        self._time_lock = threading.Lock()
        self._public_head: SignedTreeHead | None = None

    @property
    def public_key(self) -> bytes:
        """The log's Ed25519 public key (32 bytes raw): what wallets pin."""
        return self._key.public_key().public_bytes_raw()

    # ── sequencing and signing ───────────────────────────────────────────────────

    def integrate(self) -> SignedTreeHead:
        """Make every waiting event a leaf, then sign the head of the whole log."""
        while True:
            with _intact(), self._store.transaction() as repo:
                added = repo.sequence_events(self._batch)
                if len(added) < self._batch:
                    # Still under the sequencer's lock: see the module docstring.
                    return self._sign(repo)

    def _sign(self, repo: PlatformRepository) -> SignedTreeHead:
        log = MerkleLog(repo.audit_nodes())
        return self._head(log, log.size)

    def _head(self, log: MerkleLog, size: int) -> SignedTreeHead:
        with self._time_lock:
            now = max(int(self._clock() * 1000), self._last_ms)
            self._last_ms = now
        head = TreeHead(size=size, root_hash=log.root(size), timestamp_ms=now)
        return sign_tree_head(self._key, head, self.log_id)

    # ── the wallet's sync ────────────────────────────────────────────────────────

    def sync(self, caller: str, request: AuditSyncRequest) -> AuditSync:
        """The account's events with inclusion proofs against a fresh signed head, and
        that head's consistency with the one of ``known_size`` the wallet holds.

        Events come in pages of :data:`SYNC_PAGE` by leaf index (``more``: ask again
        with ``tree_size`` = this head's size and ``after`` = the last index): a
        patient's history outgrows one message. A later page proves against the first
        page's tree size and carries a head of that size signed again, no consistency.
        """
        if not self._is_wallet(caller):
            raise Forbidden("this operation is for wallets")
        if request.user_id != caller:
            raise Forbidden("user_id does not match the client certificate")
        known = request.known_size
        if request.tree_size is None:
            sth = self.integrate()
            size = sth.head.size
        else:
            size = request.tree_size
        # A second transaction: the nodes of a tree size never change (write once), so
        # proofs against ``size`` hold whatever was appended since, and the sequencer's
        # lock is not held while the proofs are read.
        with _intact(), self._store.transaction() as repo:
            log = MerkleLog(repo.audit_nodes())
            if request.tree_size is not None:
                if size > log.size:
                    raise InvalidInput("tree_size exceeds the log's size")
                sth = self._head(log, size)
            # A wallet that accepted a larger head than the log now has was shown a
            # longer history: the log was truncated. Serve the signed smaller head anyway
            # (no proof can exist): signed by the log, it is the wallet's evidence.
            first_page = request.tree_size is None
            consistency = (
                log.consistency_proof(known, size) if first_page and 0 < known < size else []
            )
            found = repo.audited_events(
                request.user_id, below=size, after=request.after, limit=SYNC_PAGE + 1
            )
            events = []
            for event in found[:SYNC_PAGE]:
                assert event.leaf_index is not None  # audited_events returns leaves only
                events.append(
                    AuditedEvent(
                        index=event.leaf_index,
                        entry=event.entry().encode(),
                        proof=log.inclusion_proof(event.leaf_index, size),
                    )
                )
        return AuditSync(
            sth=TreeHeadView.model_validate(sth.to_dict()),
            log_key=self.public_key,
            consistency=consistency,
            events=events,
            more=len(found) > SYNC_PAGE,
        )

    # ── public reads: hashes only ────────────────────────────────────────────────

    def sth(self) -> dict[str, Any]:
        """The latest signed tree head as JSON (``SignedTreeHead.to_dict``) + ``log_key``.

        The route needs no certificate, so a head integrated within the last
        :data:`PUBLIC_HEAD_MAX_AGE_MS` is served again: a flood of anonymous GETs must
        not queue write transactions (and signatures) behind the platform's traffic.
        A wallet's sync always integrates.
        """
        now_ms = int(self._clock() * 1000)
        with self._time_lock:
            cached = self._public_head
        if cached is None or not 0 <= now_ms - cached.head.timestamp_ms < PUBLIC_HEAD_MAX_AGE_MS:
            cached = self.integrate()
            with self._time_lock:
                self._public_head = cached
        return {**cached.to_dict(), "log_key": b64url_encode(self.public_key)}

    def inclusion(self, index: int, tree_size: int) -> dict[str, Any]:
        """The audit path of leaf ``index`` in the tree of ``tree_size`` leaves."""
        _check_u63("index", index)
        _check_u63("tree_size", tree_size)
        with _intact(), self._store.transaction() as repo:
            log = MerkleLog(repo.audit_nodes())
            if tree_size > log.size:
                raise InvalidInput("tree_size exceeds the log's size")
            if index >= tree_size:
                raise InvalidInput("index must be below tree_size")
            proof = log.inclusion_proof(index, tree_size)
        return {
            "leaf_index": index,
            "tree_size": tree_size,
            "proof": [b64url_encode(h) for h in proof],
        }

    def consistency(self, first: int, second: int) -> dict[str, Any]:
        """The proof that the tree of ``second`` leaves extends the one of ``first``."""
        _check_u63("first", first)
        _check_u63("second", second)
        with _intact(), self._store.transaction() as repo:
            log = MerkleLog(repo.audit_nodes())
            if second > log.size:
                raise InvalidInput("second exceeds the log's size")
            if first > second:
                raise InvalidInput("first must not exceed second")
            proof = [] if first in (0, second) else log.consistency_proof(first, second)
        return {"first": first, "second": second, "proof": [b64url_encode(h) for h in proof]}


# ── the operator's check ────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class LogProblem:
    """One place where the stored log contradicts itself."""

    level: int  # 0: a leaf (an event row), above: an internal node
    index: int
    what: Literal["row altered", "row deleted", "node altered", "node missing"]


@dataclass(frozen=True, slots=True)
class LogCheck:
    """What :func:`check_log` read and found (``problems`` capped at ``max_problems``)."""

    size: int  # leaves
    nodes: int  # stored hashes checked, leaves included
    problems: tuple[LogProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_nodes(nodes: NodeStore, keys: list[NodeKey]) -> list[bytes | None]:
    try:
        return list(nodes.get_nodes(keys))
    except KeyError:
        # Some node of the chunk is gone: find which, one by one (only on a damaged log).
        out: list[bytes | None] = []
        for key in keys:
            try:
                out.append(nodes.get_nodes([key])[0])
            except KeyError:
                out.append(None)
        return out


def _leaf_problems(store: Store[PlatformRepository], start: int, stop: int) -> Iterator[LogProblem]:
    with store.transaction() as repo:
        rows = {e.leaf_index: e for e in repo.leaf_events(start, stop)}
        stored = _read_nodes(repo.audit_nodes(), [(0, i) for i in range(start, stop)])
    for index, digest in zip(range(start, stop), stored, strict=True):
        event = rows.get(index)
        if digest is None:
            yield LogProblem(0, index, "node missing")
        elif event is None:
            yield LogProblem(0, index, "row deleted")
        elif event.entry().leaf_hash() != digest:
            yield LogProblem(0, index, "row altered")


def _node_problems(
    store: Store[PlatformRepository], level: int, start: int, stop: int
) -> Iterator[LogProblem]:
    keys = [(level, i) for i in range(start, stop)]
    children = [(level - 1, j) for i in range(start, stop) for j in (2 * i, 2 * i + 1)]
    with store.transaction() as repo:
        nodes = repo.audit_nodes()
        parents, kids = _read_nodes(nodes, keys), _read_nodes(nodes, children)
    for offset, parent in enumerate(parents):
        left, right = kids[2 * offset], kids[2 * offset + 1]
        if parent is None:
            yield LogProblem(level, start + offset, "node missing")
        elif left is not None and right is not None and parent != node_hash(left, right):
            yield LogProblem(level, start + offset, "node altered")


def check_log(
    store: Store[PlatformRepository],
    *,
    chunk: int = 10_000,
    max_problems: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> LogCheck:
    """Re-derive the whole stored log from the event rows: the operator's own audit.

    A wallet notices a rewrite of its own events on its next sync; this finds any
    row altered or deleted since it was sequenced (its leaf hash no longer matches),
    and any stored internal node that is not the hash of its two stored children (so
    an altered node shows at its parent too) — without waiting for a patient.
    ``progress(done, total)`` is called after each chunk of leaves or nodes; each
    chunk is read in its own short transaction.
    """
    if not 1 <= chunk <= MAX_LEAF_RANGE:
        raise InvalidInput(f"chunk must be 1..{MAX_LEAF_RANGE:,}")
    with store.transaction() as repo:
        size = MerkleLog(repo.audit_nodes()).size
    # Level 0 holds every leaf, level L the size >> L complete subtrees of 2**L leaves.
    chunks = [
        (level, start, min(start + chunk, size >> level))
        for level in range(size.bit_length())
        for start in range(0, size >> level, chunk)
    ]
    total = sum(stop - start for _, start, stop in chunks)
    problems: list[LogProblem] = []
    done = 0
    for level, start, stop in chunks:
        found = (
            _leaf_problems(store, start, stop)
            if level == 0
            else _node_problems(store, level, start, stop)
        )
        problems.extend(found)
        done += stop - start
        if progress is not None:
            progress(done, total)
    return LogCheck(size=size, nodes=total, problems=tuple(problems[:max_problems]))
