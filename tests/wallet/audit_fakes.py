"""The platform's transparency log as the wallet sees it — a real Merkle log, real signatures.

:class:`FakeAuditLog` keeps every event of every account as canonical
:class:`~patientkey.audit.LogEntry` bytes in a real :class:`~patientkey.audit.MerkleLog`,
signs tree heads with Ed25519 (``sign_tree_head``) and answers ``AuditSyncRequest`` as
the platform does: the latest head, the consistency proof from ``known_size``, every
event of the account with its inclusion proof. A dishonest platform is simulated two
ways: rewriting its log (:meth:`alter`, :meth:`delete`, :meth:`truncate` rebuild the
Merkle tree from the changed entries and sign the result) and lying in its answers
(:attr:`hidden` events left out, :attr:`served_instead` other bytes served).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from wallet_fakes import USER, FakePlatform

from patientkey.audit import LogEntry, MemoryNodeStore, MerkleLog, TreeHead, sign_tree_head
from patientkey.errors import Forbidden
from patientkey.protocol.messages import (
    AuditedEvent,
    AuditSync,
    AuditSyncRequest,
    Message,
    TreeHeadView,
)
from patientkey.protocol.routes import AUDIT_SYNC

M = TypeVar("M", bound=Message)

LOG_ID = "patientkey-platform-test"
T0 = 1_763_877_600_000  # 2025-11-23T06:00:00Z, ms


class FakeAuditLog:
    """An honest log until told otherwise; time moves one second per event and per head."""

    def __init__(self, user: str = USER, key: Ed25519PrivateKey | None = None) -> None:
        self.user = user
        self.key = key or Ed25519PrivateKey.generate()
        self.entries: list[bytes] = []
        self.log = MerkleLog(MemoryNodeStore())
        self.now = T0
        self.hidden: set[int] = set()  # indices left out of the answers
        self.served_instead: dict[int, bytes] = {}  # index -> bytes served for it
        self.requests: list[AuditSyncRequest] = []

    # --- the platform writing its log

    def record(self, kind: str, user_id: str | None = None, /, **detail: Any) -> int:
        """Append one event (of ``self.user`` unless told); return its leaf index."""
        self.now += 1000
        entry = LogEntry(
            seq=len(self.entries),
            at_ms=self.now,
            kind=kind,
            user_id=self.user if user_id is None else user_id,
            detail=detail,
            salt=os.urandom(16),
        ).encode()
        self.entries.append(entry)
        return self.log.append(entry)

    def _rebuild(self) -> None:
        self.log = MerkleLog(MemoryNodeStore())
        self.log.append_many(self.entries)

    def alter(self, index: int, **detail: Any) -> None:
        """Rewrite event ``index`` in the log with other detail (same time, salt, seq)."""
        old = LogEntry.decode(self.entries[index])
        self.entries[index] = LogEntry(
            seq=old.seq,
            at_ms=old.at_ms,
            kind=old.kind,
            user_id=old.user_id,
            detail={**old.detail, **detail},
            salt=old.salt,
        ).encode()
        self._rebuild()

    def delete(self, index: int) -> None:
        """Remove event ``index`` from the log (later events move down one leaf)."""
        del self.entries[index]
        self._rebuild()

    def truncate(self, size: int) -> None:
        """Drop every event from leaf ``size`` on."""
        del self.entries[size:]
        self._rebuild()

    # --- the platform answering

    @property
    def public_raw(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def answer(self, request: AuditSyncRequest) -> AuditSync:
        """What the platform serves for ``request`` (see the module docstring)."""
        self.requests.append(request)
        self.now += 1000
        size = self.log.size
        sth = sign_tree_head(self.key, TreeHead(size, self.log.root(), self.now), LOG_ID)
        known = request.known_size
        consistency = self.log.consistency_proof(known, size) if 0 < known < size else []
        events = []
        for index, entry in enumerate(self.entries):
            if index in self.hidden or LogEntry.decode(entry).user_id != request.user_id:
                continue
            events.append(
                AuditedEvent(
                    index=index,
                    entry=self.served_instead.get(index, entry),
                    proof=self.log.inclusion_proof(index, size),
                )
            )
        return AuditSync(
            sth=TreeHeadView(
                log_id=sth.log_id,
                tree_size=size,
                timestamp=sth.head.timestamp_ms,
                root_hash=sth.head.root_hash,
                signature=sth.signature,
            ),
            log_key=self.public_raw,
            consistency=consistency,
            events=events,
        )

    def call(self, path: str, message: Message, reply: type[M], /) -> M:
        """The sans-IO port (``WalletCore._call``), through JSON as on the wire."""
        assert path == AUDIT_SYNC
        assert isinstance(message, AuditSyncRequest)
        wire = AuditSyncRequest.model_validate_json(message.model_dump_json())
        if wire.user_id != self.user:
            raise Forbidden("user_id does not match the client certificate")
        answer = self.answer(wire)
        assert reply is AuditSync
        return reply.model_validate_json(answer.model_dump_json())

    def mount(self, platform: FakePlatform) -> None:
        """Serve ``AUDIT_SYNC`` on the wallet tests' HTTP platform (real hop envelopes)."""
        handler: Callable[[str, AuditSyncRequest], Message] = self._handle
        platform.route(AUDIT_SYNC, AuditSyncRequest, handler)

    def _handle(self, sender: str, message: AuditSyncRequest) -> Message:
        if sender != message.user_id or message.user_id != self.user:
            raise Forbidden("user_id does not match the client certificate")
        return self.answer(message)


def realistic(log: FakeAuditLog, other: str = "u-bob") -> None:
    """A patient's month: bind, fetch, share, dispense, an app's grant and uses."""
    his, rx, report = "his-1", "rx-1", "rep-1"
    log.record("bind", his_id=his)
    log.record("records.list", count=2)
    log.record("record.fetch", his_id=his, p_id=rx, from_his=True)
    log.record("bind", other, his_id=his)  # another account's event, never served to us
    log.record(
        "share.deliver",
        his_id=his,
        p_id=rx,
        b_id="pharmacy-1",
        kind="hpke",
        kub_version=1,
        accepted=True,
        grant_id="g-share-1",
    )
    log.record(
        "share.refused",
        his_id=his,
        p_id=rx,
        b_id="pharmacy-2",
        kind="hpke",
        kub_version=0,
        accepted=False,
        reason="kub-unknown",
    )
    log.record(
        "dispense.claim",
        his_id=his,
        p_id=rx,
        b_id="pharmacy-1",
        state="claimed",
        grant_id="g-share-1",
    )
    log.record(
        "dispense.complete",
        his_id=his,
        p_id=rx,
        b_id="pharmacy-1",
        state="completed",
        grant_id="g-share-1",
    )
    log.record("authz.requested", client_id="app-diary", scenario="health_app", request_id="req-1")
    log.record("authz.granted", client_id="app-diary", grant_id="g-app-1", acr="substantial")
    log.record("authz.token_issued", client_id="app-diary", grant_id="g-app-1")
    log.record(
        "authz.used",
        client_id="app-diary",
        grant_id="g-app-1",
        action="fetch",
        his_id=his,
        p_id=report,
    )
    log.record(
        "authz.introspected", client_id="app-diary", grant_id="g-app-1", actor="diary-backend"
    )
    log.record("authz.refused", client_id="app-diary", grant_id="g-app-1", detail="revoked")
    log.record("pq.exchange", exchange_id="ab" * 16)
    log.record("kme.drift", ratio=1.5)  # a kind this wallet has never heard of
