"""The patient's side of the transparency log (issue 5, RFC 9162 §8.1.2-§8.1.4 as a client).

Every sync asks the platform for its latest signed tree head, a consistency proof
from the head the wallet accepted last, and every event of the account, each with an
inclusion proof (``AuditSyncRequest`` / ``AuditSync``, in pages against one head). The
wallet accepts the answer only when all of this holds, in this order:

1. the log key is the one pinned on the first sync (trust on first use; a different
   key is refused loudly: :class:`LogKeyChanged`);
2. the new head is signed by that key;
3. the new head extends the accepted one (:func:`~patientkey.audit.check_consistency`):
   a smaller tree, another root at the same size, a failing proof all mean the log
   was rewritten;
4. every served event is canonical, belongs to this account, is the same bytes as
   when the wallet accepted it before (if it did), and is included in the new head;
5. every event the wallet accepted before is still served.

A failure of 3, 4 (an accepted event served changed) or 5 is evidence that the platform
rewrote the history it signed: :class:`LogTampered` (a
:class:`~patientkey.audit.LogRewritten`) names the leaf when it can. The accepted head
and events stay as they were (STYLE habit 3: save only after the checks succeed); the
evidence alone is saved, so the timeline keeps showing it. Other failures (a bad
signature or proof, an event of another account) raise the opaque
:class:`~patientkey.audit.ProofInvalid` and change nothing.

:func:`accept_sync` is the whole check, without I/O; :class:`WalletAudit` sends the
request over the wallet's hop (``WalletCore._call``), keeps the result in the keystore
and gives the timeline (:meth:`WalletAudit.timeline`, :meth:`WalletAudit.report`) and
the FHIR export offline.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from patientkey.audit import (
    LogEntry,
    LogRewritten,
    ProofInvalid,
    SignedTreeHead,
    TreeHead,
    check_consistency,
    leaf_hash,
    verify_inclusion,
    verify_tree_head,
)
from patientkey.audit.entry import DetailValue
from patientkey.errors import InvalidInput
from patientkey.protocol.messages import AuditSync, AuditSyncRequest
from patientkey.protocol.routes import AUDIT_SYNC
from patientkey.wallet.authz import PlatformCall
from patientkey.wallet.store import AuditEvidence, AuditState, WalletState

__all__ = [
    "MAX_EVIDENCE",
    "AuditHead",
    "AuditReport",
    "LogKeyChanged",
    "LogTampered",
    "TimelineEvent",
    "WalletAudit",
    "accept_sync",
]

log = logging.getLogger(__name__)

#: Distinct pieces of evidence kept; a log that keeps misbehaving must not grow the keystore.
MAX_EVIDENCE: Final = 100


class LogTampered(LogRewritten):
    """The platform's log no longer holds what it signed: an event deleted, altered or the
    tree rewritten. Not opaque: the detail names the leaf, ``old``/``new`` are the signed
    heads (evidence for the patient and an auditor)."""

    problem = "audit-log-tampered"
    title = "The platform's audit log was rewritten"

    def __init__(
        self, reason: str, *, old: SignedTreeHead, new: SignedTreeHead, index: int | None = None
    ) -> None:
        super().__init__(reason, old=old, new=new)
        self.index = index
        if index is not None:
            self.detail = f"{self.detail}; event #{index}"
            self.args = (self.detail,)
            self.extensions = {**self.extensions, "index": index}


class LogKeyChanged(ProofInvalid):
    """The platform signs with another log key than the one pinned on the first sync.

    Not opaque: a new key means a new (or a forged) log, and the patient must know.
    Nothing is accepted under it.
    """

    problem = "audit-log-key-changed"
    title = "The platform's audit log key changed"
    status = 502

    def __init__(self, pinned: bytes, served: bytes) -> None:
        super().__init__("the log key differs from the pinned one")
        self.detail = (
            f"{self.title}: pinned {pinned.hex()[:16]}…, served {served.hex()[:16]}…; "
            "nothing was accepted"
        )
        self.args = (self.detail,)
        self.extensions = {"pinned_key": pinned.hex(), "served_key": served.hex()}


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The signed tree head the wallet holds."""

    log_id: str
    size: int
    timestamp: datetime
    root_hash: str  # hex

    @classmethod
    def of(cls, sth: SignedTreeHead) -> AuditHead:
        return cls(
            log_id=sth.log_id,
            size=sth.head.size,
            timestamp=_at(sth.head.timestamp_ms),
            root_hash=sth.head.root_hash.hex(),
        )


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One event of the account. ``verified``: its inclusion in a tree head the log signed
    and the wallet accepted was proven (every event the wallet holds has been)."""

    index: int
    at: datetime
    kind: str
    detail: Mapping[str, DetailValue]
    verified: bool

    def to_json(self) -> dict[str, Any]:
        """The event as JSON, ``at`` in ISO 8601: ``wallet audit --json`` and the UI alike."""
        return {
            "index": self.index,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "detail": dict(self.detail),
            "verified": self.verified,
        }


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The accepted head (None before the first sync), the timeline and any evidence."""

    head: AuditHead | None
    events: tuple[TimelineEvent, ...]
    evidence: tuple[AuditEvidence, ...]
    new_events: int = 0  # accepted by this sync (0 for the offline timeline)

    @property
    def tampered(self) -> bool:
        return bool(self.evidence)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _served_head(answer: AuditSync) -> SignedTreeHead:
    view = answer.sth
    head = TreeHead(size=view.tree_size, root_hash=view.root_hash, timestamp_ms=view.timestamp)
    return SignedTreeHead(log_id=view.log_id, head=head, signature=view.signature)


def _public_key(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidInput("the log key is not an Ed25519 public key") from exc


def _changed(held: AuditState | None, served: Mapping[int, bytes]) -> tuple[str, int] | None:
    """The first accepted event the platform no longer serves as it was, and how."""
    if held is None:
        return None
    for index, text in sorted(held.events.items()):
        now = served.get(index)
        if now is None:
            return "an accepted event is no longer served: it was deleted", index
        # Leaf hashes, not the texts: the log commits to the hash, so that is the claim.
        if not hmac.compare_digest(leaf_hash(now), leaf_hash(text.encode("utf-8"))):
            return "an accepted event is served with other content: it was altered", index
    return None


def accept_sync(held: AuditState | None, user_id: str, answer: AuditSync) -> AuditState:
    """The audit state after ``answer``, if every check of the module docstring holds.

    Raises :class:`LogKeyChanged`, :class:`LogTampered`, the opaque
    :class:`~patientkey.audit.ProofInvalid`, or :class:`~patientkey.errors.InvalidInput`
    (malformed or stale answers). Pure: ``held`` is not modified.
    """
    if held is not None and not hmac.compare_digest(held.log_key, answer.log_key):
        raise LogKeyChanged(held.log_key, answer.log_key)
    key = _public_key(answer.log_key)
    new = _served_head(answer)
    verify_tree_head(key, new)
    served: dict[int, bytes] = {}
    for event in answer.events:
        if event.index in served:
            raise InvalidInput(f"event #{event.index} is served twice")
        served[event.index] = event.entry
    if held is not None:
        old = held.sth
        try:
            check_consistency(old, new, answer.consistency, key)
        except LogRewritten as exc:
            # The heads contradict each other; name the event if the served ones show it.
            found = _changed(held, served)
            raise LogTampered(
                exc.reason, old=old, new=new, index=None if found is None else found[1]
            ) from exc
        found = _changed(held, served)
        if found is not None:
            raise LogTampered(found[0], old=old, new=new, index=found[1])
    events: dict[int, str] = {}
    for event in answer.events:
        entry = LogEntry.decode(event.entry)
        if entry.user_id != user_id:
            log.warning("audit sync refused: event #%d of another account", event.index)
            raise ProofInvalid("served an event of another account")
        # What check_inclusion does, without verifying the (already verified) head's
        # signature once per event: an account may have thousands of events.
        verify_inclusion(
            leaf_hash(event.entry), event.index, new.head.size, event.proof, new.head.root_hash
        )
        events[event.index] = event.entry.decode("utf-8")
    if held is None:
        return AuditState(log_key=answer.log_key, tree_head=new.to_dict(), events=events)
    late = sorted(i for i in events if i < held.sth.head.size and i not in held.events)
    if late:
        # Served now, inside the tree accepted before, yet not served then: it was held back.
        log.warning("the platform served %d event(s) it had held back: %s", len(late), late[:10])
    return AuditState(
        log_key=held.log_key, tree_head=new.to_dict(), events=events, evidence=held.evidence
    )


def _timeline(events: Mapping[int, str]) -> tuple[TimelineEvent, ...]:
    out = []
    for index, text in sorted(events.items()):
        entry = LogEntry.decode(text.encode("utf-8"))
        out.append(TimelineEvent(index, entry.at, entry.kind, dict(entry.detail), verified=True))
    return tuple(out)


def _evidence(exc: LogTampered | LogKeyChanged, now_ms: int) -> AuditEvidence:
    if isinstance(exc, LogTampered):
        return AuditEvidence(
            problem=exc.problem,
            reason=exc.reason,
            index=exc.index,
            detected_at=now_ms,
            old_tree_head=exc.old.to_dict(),
            new_tree_head=exc.new.to_dict(),
        )
    return AuditEvidence(problem=exc.problem, reason=exc.detail, detected_at=now_ms)


class WalletAudit:
    """The transparency log as the patient's wallet sees it.

    ``state`` is the wallet's live state and ``save`` persists it (the keystore);
    ``call`` sends one enveloped message to the platform.
    """

    def __init__(
        self,
        *,
        state: WalletState,
        save: Callable[[], None],
        call: PlatformCall,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._save = save
        self._call = call
        self._clock = clock

    def __repr__(self) -> str:
        return f"WalletAudit({self._state.user_id!r})"

    @property
    def user_id(self) -> str:
        return self._state.user_id

    def sync(self) -> AuditReport:
        """Fetch, verify and accept the log's view of this account (see the module docstring).

        On :class:`LogTampered` or :class:`LogKeyChanged` the evidence is saved and the
        error raised; the accepted head and events stay as they were.
        """
        held = self._state.audit
        known = 0 if held is None else held.sth.head.size
        try:
            answer = self._fetch(known)
            accepted = accept_sync(held, self.user_id, answer)
        except (LogTampered, LogKeyChanged) as exc:
            self._keep_evidence(exc)
            raise
        before = set() if held is None else set(held.events)
        self._state.audit = accepted
        self._save()
        new = sum(1 for index in accepted.events if index not in before)
        return AuditReport(
            head=AuditHead.of(accepted.sth),
            events=_timeline(accepted.events),
            evidence=accepted.evidence,
            new_events=new,
        )

    def _fetch(self, known: int) -> AuditSync:
        """Every page of the answer, as one ``AuditSync`` against the first page's head.

        A later page must come from the same log and prove against the same tree: a
        head of the same size signed with another root is a forked log (evidence).
        """
        first = self._call(
            AUDIT_SYNC, AuditSyncRequest(user_id=self.user_id, known_size=known), AuditSync
        )
        events, page, head = list(first.events), first, _served_head(first)
        while page.more:
            if not page.events:
                raise InvalidInput("the platform announced more events and sent none")
            # Each page must move on within the tree, or a platform could keep the wallet
            # asking forever: ``after`` grows with every page and stays below the size.
            after = page.events[-1].index
            if after >= head.head.size - 1:
                raise InvalidInput("the platform announced more events than its tree holds")
            page = self._call(
                AUDIT_SYNC,
                AuditSyncRequest(
                    user_id=self.user_id,
                    known_size=known,
                    tree_size=head.head.size,
                    after=after,
                ),
                AuditSync,
            )
            if not hmac.compare_digest(page.log_key, first.log_key):
                raise LogKeyChanged(first.log_key, page.log_key)
            again = _served_head(page)
            verify_tree_head(_public_key(first.log_key), again)
            if again.head.size != head.head.size or again.head.root_hash != head.head.root_hash:
                raise LogTampered(
                    "one log signed two trees for one sync", old=head, new=again, index=None
                )
            if any(event.index <= after for event in page.events):
                raise InvalidInput("a later page repeats events of an earlier one")
            events += page.events
        # Pages were checked as they came; the merged answer is checked as a whole.
        return first.model_copy(update={"events": events, "more": False})

    def _keep_evidence(self, exc: LogTampered | LogKeyChanged) -> None:
        held = self._state.audit
        log.error("audit log check failed: %s", exc.detail)
        if held is None:  # only a sync against an accepted state can find either
            return
        found = _evidence(exc, int(self._clock() * 1000))
        seen = {(e.problem, e.reason, e.index) for e in held.evidence}
        if (found.problem, found.reason, found.index) in seen or len(seen) >= MAX_EVIDENCE:
            return  # the same contradiction, met again on a later sync
        self._state.audit = held.model_copy(update={"evidence": (*held.evidence, found)})
        self._save()

    def timeline(self) -> list[TimelineEvent]:
        """The verified events held, oldest first, offline (no platform contact)."""
        held = self._state.audit
        return [] if held is None else list(_timeline(held.events))

    def report(self) -> AuditReport:
        """The held head, timeline and any evidence, offline (head None before a sync)."""
        held = self._state.audit
        if held is None:
            return AuditReport(head=None, events=(), evidence=())
        return AuditReport(
            head=AuditHead.of(held.sth), events=_timeline(held.events), evidence=held.evidence
        )

    def fhir_bundle(self) -> dict[str, Any]:
        """The held timeline as a FHIR R4 ``Bundle`` of ``AuditEvent`` (offline)."""
        from patientkey.wallet.disclosures import audit_bundle

        report = self.report()
        log_id = "unknown" if report.head is None else report.head.log_id
        return audit_bundle(report.events, user_id=self.user_id, log_id=log_id)
