"""The wallet's side of the transparency log (wallet.audit) against a real Merkle log.

:class:`audit_fakes.FakeAuditLog` signs real tree heads over a real ``MerkleLog`` and
serves real proofs; tampering rebuilds that log from changed entries, as a platform
rewriting its history would have to.
"""

from __future__ import annotations

import logging

import pytest
from audit_fakes import LOG_ID, T0, FakeAuditLog, realistic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from wallet_fakes import USER, Saved

from patientkey.audit import LogEntry, LogRewritten, ProofInvalid
from patientkey.errors import InvalidInput, PatientKeyError, error_classes
from patientkey.wallet import audit as audit_module
from patientkey.wallet.audit import (
    AuditReport,
    LogKeyChanged,
    LogTampered,
    WalletAudit,
    accept_sync,
)
from patientkey.wallet.store import WalletState


def make(log: FakeAuditLog, state: WalletState | None = None) -> tuple[WalletAudit, Saved]:
    state = state or WalletState(user_id=USER)
    saved = Saved(state)
    return WalletAudit(state=state, save=saved.save, call=log.call, clock=lambda: 1.7e9), saved


def synced(count: int = 3) -> tuple[FakeAuditLog, WalletAudit, Saved, AuditReport]:
    log = FakeAuditLog()
    for i in range(count):
        log.record("record.fetch", his_id="his-1", p_id=f"rx-{i}")
    wallet, saved = make(log)
    return log, wallet, saved, wallet.sync()


def test_first_sync_pins_the_key_and_accepts_a_signed_head():
    """The first sync pins the log key, stores the head and every event, and reports them."""
    log, _wallet, saved, report = synced(3)
    assert report.head is not None
    assert (report.head.log_id, report.head.size) == (LOG_ID, 3)
    assert report.head.timestamp.timestamp() * 1000 == log.now
    assert [e.index for e in report.events] == [0, 1, 2]
    assert all(e.verified for e in report.events)
    assert report.events[1].kind == "record.fetch"
    assert report.events[1].detail == {"his_id": "his-1", "p_id": "rx-1"}
    assert report.events[0].at.timestamp() * 1000 == T0 + 1000
    assert report.new_events == 3
    assert not report.tampered
    stored = saved.last().audit
    assert stored is not None
    assert stored.log_key == log.public_raw
    assert stored.sth.head.size == 3
    assert set(stored.events) == {0, 1, 2}
    assert log.requests[0].known_size == 0
    # Offline, from the keystore alone: the same timeline, no platform contact.
    reopened = make(log, saved.last())[0]
    assert reopened.timeline() == list(report.events)
    assert reopened.report().head == report.head
    assert len(log.requests) == 1


def test_first_sync_of_an_empty_account_checks_the_signature():
    """With no event to prove, a head signed by another key than the one served is refused."""
    log = FakeAuditLog()
    honest = log.answer
    forger = Ed25519PrivateKey.generate()

    def forged(request):
        answer = honest(request)
        bad = FakeAuditLog(key=forger)
        bad.now = log.now
        wrong = bad.answer(request).sth.signature
        return answer.model_copy(update={"sth": answer.sth.model_copy(update={"signature": wrong})})

    log.answer = forged  # type: ignore[method-assign]
    wallet, saved = make(log)
    with pytest.raises(ProofInvalid):
        wallet.sync()
    assert saved.versions == []


def test_growth_is_accepted_with_a_consistency_proof():
    """A later sync sends the accepted size, checks consistency and adds only new events."""
    log, wallet, saved, _ = synced(3)
    for i in range(5):
        log.record("record.fetch", his_id="his-1", p_id=f"rx-new-{i}")
    log.record("bind", "u-bob", his_id="his-1")
    report = wallet.sync()
    assert log.requests[-1].known_size == 3
    assert report.head is not None
    assert report.head.size == 9
    assert report.new_events == 5
    assert [e.index for e in report.events] == list(range(8))
    assert saved.last().audit.sth.head.size == 9  # type: ignore[union-attr]
    again = wallet.sync()  # same size: no proof, same root
    assert again.new_events == 0
    assert log.requests[-1].known_size == 9


def test_an_altered_entry_is_detected_and_named():
    """Rewriting an accepted event in the log is LogTampered naming its index; state kept."""
    log, wallet, saved, _ = synced(4)
    before = saved.versions[-1]
    log.alter(2, p_id="rx-elsewhere")
    log.record("record.fetch", his_id="his-1", p_id="rx-9")
    with pytest.raises(LogTampered) as caught:
        wallet.sync()
    assert caught.value.index == 2
    assert "event #2" in caught.value.detail
    assert "rewritten" in caught.value.detail
    assert isinstance(caught.value, LogRewritten)
    _assert_only_evidence_added(before, saved, index=2)


def test_an_altered_entry_at_the_same_size_is_detected():
    """Two roots for one tree size: the same-size rewrite is caught and names the index."""
    log, wallet, _saved, _ = synced(3)
    log.alter(0, his_id="his-2")
    with pytest.raises(LogTampered) as caught:
        wallet.sync()
    assert caught.value.index == 0
    assert "same size" in caught.value.reason


def test_an_entry_served_altered_while_the_log_is_intact_is_detected():
    """Serving other bytes for an accepted index (log unchanged) is LogTampered too."""
    log, wallet, saved, _ = synced(3)
    before = saved.versions[-1]
    original = LogEntry.decode(log.entries[1])
    log.served_instead[1] = LogEntry(
        seq=original.seq,
        at_ms=original.at_ms,
        kind=original.kind,
        user_id=original.user_id,
        detail={"his_id": "his-1", "p_id": "rx-other"},
        salt=original.salt,
    ).encode()
    with pytest.raises(LogTampered) as caught:
        wallet.sync()
    assert caught.value.index == 1
    assert "altered" in caught.value.reason
    _assert_only_evidence_added(before, saved, index=1)


def test_a_deleted_entry_is_detected():
    """Deleting an accepted event from the log (and growing it again) is LogTampered."""
    log, wallet, saved, _ = synced(4)
    before = saved.versions[-1]
    log.delete(1)
    log.record("record.fetch", his_id="his-1", p_id="rx-9")
    log.record("record.fetch", his_id="his-1", p_id="rx-10")
    with pytest.raises(LogTampered) as caught:
        wallet.sync()
    assert caught.value.index == 1  # leaf 1 now holds what was leaf 2
    _assert_only_evidence_added(before, saved, index=1)


def test_an_accepted_event_no_longer_served_is_detected():
    """Leaving an accepted event out of the answer (log intact) is reported as deleted."""
    log, wallet, _saved, _ = synced(3)
    log.hidden.add(2)
    with pytest.raises(LogTampered) as caught:
        wallet.sync()
    assert caught.value.index == 2
    assert "deleted" in caught.value.reason


def test_a_truncated_log_is_detected():
    """A smaller tree signed later is LogTampered; the missing event is named."""
    log, wallet, saved, _ = synced(5)
    before = saved.versions[-1]
    log.truncate(3)
    with pytest.raises(LogTampered) as caught:
        wallet.sync()
    assert "smaller tree" in caught.value.reason
    assert caught.value.index == 3
    assert caught.value.old.head.size == 5
    assert caught.value.new.head.size == 3
    _assert_only_evidence_added(before, saved, index=3)


def test_evidence_stays_and_is_not_duplicated():
    """The same contradiction met again adds no second record; the timeline keeps showing it."""
    log, wallet, saved, _ = synced(3)
    log.truncate(1)
    for _ in range(3):
        with pytest.raises(LogTampered):
            wallet.sync()
    stored = saved.last().audit
    assert stored is not None
    assert len(stored.evidence) == 1
    assert stored.evidence[0].detected_at == 1_700_000_000_000
    offline = make(log, saved.last())[0].report()
    assert offline.tampered
    assert offline.evidence[0].problem == "audit-log-tampered"
    assert offline.evidence[0].old_tree_head is not None
    assert len(offline.events) == 3


def test_a_different_log_key_is_refused_loudly():
    """A head signed by another key after pinning is LogKeyChanged; nothing is accepted."""
    log, wallet, saved, _ = synced(2)
    before = saved.last().audit
    log.key = Ed25519PrivateKey.generate()
    log.record("record.fetch", his_id="his-1", p_id="rx-2")
    with pytest.raises(LogKeyChanged) as caught:
        wallet.sync()
    assert "key changed" in caught.value.detail
    assert caught.value.status == 502
    after = saved.last().audit
    assert after is not None
    assert before is not None
    assert (after.log_key, after.tree_head, after.events) == (
        before.log_key,
        before.tree_head,
        before.events,
    )
    assert [e.problem for e in after.evidence] == ["audit-log-key-changed"]


def test_an_event_of_another_account_is_refused():
    """An event whose user_id is not ours is refused, and the first sync stores nothing."""
    log = FakeAuditLog()
    log.record("bind", his_id="his-1")
    log.record("bind", "u-bob", his_id="his-1")
    honest = log.answer

    def leaky(request):
        answer = honest(request)
        theirs = honest(request.model_copy(update={"user_id": "u-bob"})).events
        return answer.model_copy(update={"events": [*answer.events, *theirs]})

    log.answer = leaky  # type: ignore[method-assign]
    wallet, saved = make(log)
    with pytest.raises(ProofInvalid) as caught:
        wallet.sync()
    assert not isinstance(caught.value, LogRewritten)
    assert saved.versions == []
    assert wallet.report().head is None
    assert wallet.timeline() == []


def test_a_bad_inclusion_proof_is_refused_and_nothing_changes():
    """A new event whose proof does not hold is the opaque ProofInvalid; state untouched."""
    log, wallet, saved, _ = synced(2)
    log.record("record.fetch", his_id="his-1", p_id="rx-2")
    honest = log.answer

    def broken(request):
        answer = honest(request)
        last = answer.events[-1]
        proof = [bytes(32), *last.proof[1:]]
        events = [*answer.events[:-1], last.model_copy(update={"proof": proof})]
        return answer.model_copy(update={"events": events})

    log.answer = broken  # type: ignore[method-assign]
    versions = list(saved.versions)
    with pytest.raises(ProofInvalid) as caught:
        wallet.sync()
    assert not isinstance(caught.value, LogRewritten)
    assert saved.versions == versions
    assert wallet.report().head.size == 2  # type: ignore[union-attr]
    assert [e.index for e in wallet.timeline()] == [0, 1]


def test_a_non_canonical_entry_is_refused():
    """Entry bytes that are not canonical JSON are InvalidInput (one event, one leaf hash)."""
    log = FakeAuditLog()
    log.record("bind", his_id="his-1")
    log.served_instead[0] = log.entries[0].replace(b'{"at"', b'{ "at"')
    wallet, saved = make(log)
    with pytest.raises(InvalidInput):
        wallet.sync()
    assert saved.versions == []


def test_a_stale_head_is_not_accepted_and_is_no_evidence():
    """A head older than the accepted one is InvalidInput: a stale view, not a rewrite."""
    log, wallet, saved, _ = synced(3)
    before = saved.versions[-1]
    log.truncate(2)
    log.now = T0  # signed "before" the accepted head
    with pytest.raises(InvalidInput):
        wallet.sync()
    assert saved.versions[-1] == before


def test_events_held_back_then_served_are_accepted_with_a_warning(caplog):
    """An event inside the accepted tree that was not served before is logged as held back."""
    log, wallet, _saved, _ = synced(0)
    log.record("bind", his_id="his-1")
    log.record("record.fetch", his_id="his-1", p_id="rx-1")
    log.hidden.add(1)
    wallet.sync()
    log.hidden.clear()
    with caplog.at_level(logging.WARNING, logger=audit_module.__name__):
        report = wallet.sync()
    assert [e.index for e in report.events] == [0, 1]
    assert "held back" in caplog.text


def test_accept_sync_does_not_modify_its_input():
    """accept_sync is pure: the held state is the same object, unchanged, after a failure."""
    log, _wallet, saved, _ = synced(3)
    held = saved.last().audit
    assert held is not None
    snapshot = held.model_dump()
    log.truncate(1)
    answer = log.answer(log.requests[-1].model_copy(update={"known_size": 3}))
    with pytest.raises(LogTampered):
        accept_sync(held, USER, answer)
    assert held.model_dump() == snapshot


def test_the_audit_state_survives_the_keystore_round_trip():
    """WalletState.to_bytes/from_bytes keep the pinned key, head, events and evidence."""
    log, wallet, saved, _ = synced(2)
    log.truncate(0)
    with pytest.raises(LogTampered):
        wallet.sync()
    state = saved.last()
    again = WalletState.from_bytes(state.to_bytes())
    assert again.audit == state.audit
    old = WalletState.from_bytes(WalletState(user_id=USER).to_bytes())
    assert old.audit is None


def test_errors_are_in_the_exception_tree_with_problem_types():
    """The new errors are PatientKeyErrors, map back by problem name, and answer 502."""
    for cls in (LogTampered, LogKeyChanged):
        assert issubclass(cls, PatientKeyError)
        assert error_classes()[cls.problem] is cls
        assert cls.status == 502


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(st.booleans(), max_size=6), min_size=1, max_size=6))
def test_any_sequence_of_appends_then_syncs_verifies(batches):
    """Whatever events (ours or another account's) are appended between syncs, each verifies."""
    log = FakeAuditLog()
    wallet, _ = make(log)
    ours: list[int] = []
    for batch in batches:
        for mine in batch:
            if mine:
                ours.append(log.record("bind", his_id="his-1"))
            else:
                log.record("records.list", "u-bob", count=1)
        report = wallet.sync()
        assert [e.index for e in report.events] == ours
        assert report.head is not None
        assert report.head.size == log.log.size


def _assert_only_evidence_added(before: bytes, saved: Saved, *, index: int) -> None:
    """The accepted head and events are as before the failed sync; one evidence was added."""
    old = WalletState.from_bytes(before).audit
    new = saved.last().audit
    assert old is not None
    assert new is not None
    assert (new.log_key, new.tree_head, new.events) == (old.log_key, old.tree_head, old.events)
    assert len(new.evidence) == len(old.evidence) + 1
    assert new.evidence[-1].index == index
    assert new.evidence[-1].new_tree_head is not None


def test_realistic_events_verify():
    """A month of realistic events syncs; another account's event is not served."""
    log = FakeAuditLog()
    realistic(log)
    wallet, _ = make(log)
    report = wallet.sync()
    kinds = [e.kind for e in report.events]
    assert "bind" in kinds
    assert "kme.drift" in kinds
    assert 3 not in [e.index for e in report.events]
    assert len(report.events) == len(log.entries) - 1


def _paged(log: FakeAuditLog, replay: bool) -> None:
    """Serve ``log`` as pages of one event that always announce more (a hostile platform)."""
    honest = log.answer

    def answer(request):
        full = honest(request)
        if request.after < 0 or replay:
            events = full.events[:1]  # the same first event, again and again
        else:
            events = [e for e in full.events if e.index > request.after][:1]
        return full.model_copy(update={"events": events, "more": True})

    log.answer = answer


@pytest.mark.parametrize("replay", [True, False])
def test_pages_that_never_end_are_refused_and_nothing_is_accepted(replay: bool):
    """A page that repeats events, or "more" past the tree's end, is refused: no endless sync."""
    log = FakeAuditLog()
    for i in range(3):
        log.record("record.fetch", his_id="his-1", p_id=f"rx-{i}")
    _paged(log, replay)
    wallet, saved = make(log)
    with pytest.raises(InvalidInput):
        wallet.sync()
    assert len(log.requests) <= 3
    assert saved.versions == []
