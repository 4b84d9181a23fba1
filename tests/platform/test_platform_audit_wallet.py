"""The wallet's log checks against the platform's real transparency log on a real database.

``tests/wallet/test_wallet_audit.py`` drives :class:`WalletAudit` against a faithful
in-test log it can falsify at will; here the answers come from the platform's own
:class:`~patientkey.platform.audit.TransparencyLog` over a migrated SQLite database
(every message round-tripped through JSON as on the hop), and the tampering is what an
attacker with the database — or a careless operator — does: plain SQL on ``event_log``
and ``audit_nodes``. The wallet must notice each change on its next sync.
"""

from __future__ import annotations

from typing import Any

import pytest
from platform_flows import fetch, setup_alice
from platform_world import World
from sqlalchemy import text

from patientkey.audit import LogEntry, TreeHead, sign_tree_head
from patientkey.platform import audit as platform_audit
from patientkey.protocol.messages import AuditSync, AuditSyncRequest, Message, TreeHeadView
from patientkey.protocol.routes import AUDIT_SYNC
from patientkey.wallet.audit import LogTampered, WalletAudit
from patientkey.wallet.store import WalletState

ALICE = "u-alice"


class _Wallet:
    """Alice's audit view, its messages reaching the platform's log as the envelope route does."""

    def __init__(self, world: World) -> None:
        self.state = WalletState(user_id=ALICE)
        self.saves = 0

        def call(path: str, message: Message, reply: type[Any]) -> Any:
            assert path == AUDIT_SYNC
            request = AuditSyncRequest.model_validate_json(message.model_dump_json())
            answer = world.audit.sync(ALICE, request)
            return reply.model_validate_json(answer.model_dump_json())

        def save() -> None:
            self.saves += 1

        self.audit = WalletAudit(state=self.state, save=save, call=call)


def _seq_of(wallet: _Wallet, kind: str) -> int:
    """The platform's row number (``event_log.seq``) of the wallet's first ``kind`` event."""
    audit = wallet.state.audit
    assert audit is not None
    entries = (LogEntry.decode(text.encode("utf-8")) for text in audit.events.values())
    return next(entry.seq for entry in entries if entry.kind == kind)


def test_wallet_accepts_the_real_log_and_sees_it_grow(sql_world):
    """Two syncs verify: the first pins the key, the second proves the log only grew."""
    alice = setup_alice(sql_world)
    wallet = _Wallet(sql_world)
    first = wallet.audit.sync()
    assert first.head is not None
    assert not first.tampered
    assert {"bind"} <= {e.kind for e in first.events}
    assert all(e.verified for e in first.events)
    fetch(sql_world, alice, "rx-1")
    second = wallet.audit.sync()
    assert second.head is not None
    assert second.head.size > first.head.size
    assert second.new_events >= 1
    assert "record.fetch" in {e.kind for e in second.events}


def test_wallet_detects_an_event_row_altered_in_the_database(sql_world, sqlite_db):
    """An UPDATE of one of the patient's event rows is reported as a rewritten log."""
    setup_alice(sql_world)
    wallet = _Wallet(sql_world)
    wallet.audit.sync()
    seq = _seq_of(wallet, "bind")
    with sqlite_db.engine.begin() as conn:
        conn.execute(
            text("UPDATE event_log SET detail = :d WHERE seq = :s"),
            {"d": '{"his_id": "another-hospital"}', "s": seq},
        )
    with pytest.raises(LogTampered):
        wallet.audit.sync()
    assert wallet.audit.report().tampered


def test_wallet_detects_an_event_row_deleted_from_the_database(sql_world, sqlite_db):
    """A DELETE of one of the patient's event rows is reported as a rewritten log."""
    setup_alice(sql_world)
    wallet = _Wallet(sql_world)
    wallet.audit.sync()
    accepted = len(wallet.audit.timeline())
    seq = _seq_of(wallet, "bind")
    with sqlite_db.engine.begin() as conn:
        conn.execute(text("DELETE FROM event_log WHERE seq = :s"), {"s": seq})
    with pytest.raises(LogTampered):
        wallet.audit.sync()
    # Nothing was accepted from the tampered answer; the evidence is kept.
    assert len(wallet.audit.timeline()) == accepted
    assert wallet.audit.report().tampered


def test_wallet_detects_a_rebuilt_history(sql_world, sqlite_db):
    """An event altered and the whole tree rebuilt to match fails the consistency check."""
    alice = setup_alice(sql_world)
    wallet = _Wallet(sql_world)
    wallet.audit.sync()
    seq = _seq_of(wallet, "bind")
    fetch(sql_world, alice, "rx-1")
    # A self-consistent forgery: the row changed, every node dropped, every event re-sequenced
    # so the platform signs a tree in which the altered event verifies.
    with sqlite_db.engine.begin() as conn:
        conn.execute(
            text("UPDATE event_log SET detail = :d WHERE seq = :s"),
            {"d": '{"his_id": "another-hospital"}', "s": seq},
        )
        conn.execute(text("DELETE FROM audit_nodes"))
        conn.execute(text("UPDATE event_log SET leaf_index = NULL"))
    with pytest.raises(LogTampered):
        wallet.audit.sync()
    assert wallet.audit.report().tampered


def test_wallet_detects_a_truncated_log(sql_world, sqlite_db):
    """Dropping the newest leaves makes the platform sign a smaller head; the wallet flags it."""
    alice = setup_alice(sql_world)
    wallet = _Wallet(sql_world)
    fetch(sql_world, alice, "rx-1")
    before = wallet.audit.sync().head
    assert before is not None
    with sqlite_db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_nodes WHERE level = 0 AND idx >= 2"))
        conn.execute(text("DELETE FROM audit_nodes WHERE level > 0 AND idx > 0"))
    with pytest.raises(LogTampered):
        wallet.audit.sync()
    assert wallet.audit.report().tampered


def test_answer_shape_is_the_protocol_message(sql_world):
    """The platform's answer is an AuditSync the wallet's own decoder accepts."""
    setup_alice(sql_world)
    answer = sql_world.audit.sync(ALICE, AuditSyncRequest(user_id=ALICE))
    assert AuditSync.model_validate_json(answer.model_dump_json()) == answer


def test_wallet_syncs_a_history_longer_than_one_page(sql_world, sqlite_db, monkeypatch):
    """Pages of 3 events: the wallet gathers every page against one head and still
    detects a deleted row behind the first page."""
    monkeypatch.setattr(platform_audit, "SYNC_PAGE", 3)
    alice = setup_alice(sql_world)
    fetch(sql_world, alice, "rx-1")
    wallet = _Wallet(sql_world)
    report = wallet.audit.sync()
    served = sql_world.audit.sync(ALICE, AuditSyncRequest(user_id=ALICE))
    assert served.more
    assert len(served.events) == 3
    assert len(report.events) > 3
    assert [e.index for e in report.events] == sorted(e.index for e in report.events)
    last = report.events[-1]
    with sqlite_db.engine.begin() as conn:
        conn.execute(
            text("DELETE FROM event_log WHERE seq = :s"),
            {"s": LogEntry.decode(wallet.state.audit.events[last.index].encode()).seq},
        )
    with pytest.raises(LogTampered):
        wallet.audit.sync()


def test_a_later_page_against_another_root_is_a_fork(sql_world, monkeypatch):
    """A later page whose head has the same size but another root is kept as evidence."""
    monkeypatch.setattr(platform_audit, "SYNC_PAGE", 2)
    setup_alice(sql_world)
    wallet = _Wallet(sql_world)
    wallet.audit.sync()
    log = sql_world.audit
    real = log.sync

    def forked(caller: str, request: AuditSyncRequest) -> AuditSync:
        answer = real(caller, request)
        if request.tree_size is None:
            return answer
        # The same key signs a head of the same size over another root.
        head = TreeHead(request.tree_size, bytes(32), answer.sth.timestamp)
        sth = sign_tree_head(log._key, head, log.log_id)
        return answer.model_copy(update={"sth": TreeHeadView.model_validate(sth.to_dict())})

    monkeypatch.setattr(log, "sync", forked)
    with pytest.raises(LogTampered):
        wallet.audit.sync()
    assert wallet.audit.report().tampered
