"""The platform's transparency log: sync, public heads and proofs, tampering, event coverage."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from platform_flows import BODY, fetch, setup_alice, share
from platform_world import ENVIRONMENT, HIS, World
from sqlalchemy import text

from patientkey.audit import (
    LogDamaged,
    LogEntry,
    ProofInvalid,
    SignedTreeHead,
    check_consistency,
    check_inclusion,
    leaf_hash,
    verify_inclusion,
    verify_tree_head,
)
from patientkey.authz.errors import InsufficientUserAuthentication
from patientkey.crypto.ratchet import RotationContext, rotation_commit, wrap_rotation_key
from patientkey.errors import Forbidden, InvalidInput
from patientkey.platform.audit import LOG_ID_PREFIX, TransparencyLog, check_log
from patientkey.protocol.messages import (
    AuditSync,
    AuditSyncRequest,
    AuthzDecision,
    DispenseRequest,
    GrantRevoke,
    GrantsRequest,
    InboxRequest,
    RotateCommit,
    RotatePrepare,
)
from patientkey.protocol.routes import AUDIT_CONSISTENCY, AUDIT_INCLUSION, AUDIT_STH, AUDIT_SYNC
from patientkey.storage.memory import platform_store

ALICE = "u-alice"


def _sync(world: World, known_size: int = 0, user: str = ALICE) -> AuditSync:
    return world.audit.sync(user, AuditSyncRequest(user_id=user, known_size=known_size))


def _head(sync: AuditSync) -> tuple[SignedTreeHead, Ed25519PublicKey]:
    return (
        SignedTreeHead.from_dict(sync.sth.model_dump(mode="json")),
        Ed25519PublicKey.from_public_bytes(sync.log_key),
    )


def _verified(sync: AuditSync) -> dict[int, LogEntry]:
    """What a wallet accepts: every served event proven in the signed head, by leaf index."""
    sth, key = _head(sync)
    verify_tree_head(key, sth)
    out = {}
    for event in sync.events:
        check_inclusion(sth, event.entry, event.index, event.proof, key)
        out[event.index] = LogEntry.decode(event.entry)
    return out


def _dispense(world: World, action: str, b_id: str = "pharmacy-1") -> None:
    token = world.tokens[(b_id, ALICE)]
    request = DispenseRequest(b_id=b_id, his_id=HIS, p_id="rx-1", action=action, access_token=token)
    world.core.dispense(b_id, request)


# ── sync ─────────────────────────────────────────────────────────────────────────


def test_sync_serves_every_event_of_the_account_with_proofs(world):
    """Sync signs a head and serves each of the account's events with a valid inclusion proof."""
    alice = setup_alice(world)
    world.register()
    share(world, alice, "rx-1", "pharmacy-1")
    synced = _sync(world)
    sth, _ = _head(synced)
    entries = _verified(synced)
    assert sth.log_id.startswith(LOG_ID_PREFIX)
    assert synced.consistency == []
    assert all(entry.user_id == ALICE for entry in entries.values())
    assert {"bind", "record.stored", "share.offer", "share.deliver"} <= {
        entry.kind for entry in entries.values()
    }
    with world.store.transaction() as repo:
        logged = repo.events(user_id=ALICE, limit=10_000)
    # Every event of the account is served; none is left out of the head.
    assert sorted(entry.seq for entry in entries.values()) == [e.seq for e in logged]
    assert max(entries) < sth.head.size


def test_later_sync_proves_the_log_only_grew(world):
    """A second sync's head is consistent with the first and keeps every earlier entry."""
    alice = setup_alice(world)
    first = _sync(world)
    before = _verified(first)
    fetch(world, alice, "rep-1")
    second = _sync(world, known_size=first.sth.tree_size)
    after = _verified(second)
    old, key = _head(first)
    new, _ = _head(second)
    assert new.head.size > old.head.size
    check_consistency(old, new, second.consistency, key)
    assert {i: e.encode() for i, e in before.items()} == {
        i: e.encode() for i, e in after.items() if i in before
    }
    assert "record.fetch" in {e.kind for e in after.values()}


def test_sync_at_the_same_size_needs_no_consistency_proof(world):
    """Syncing again with nothing new gives the same tree and an empty consistency proof."""
    setup_alice(world)
    first = _sync(world)
    again = _sync(world, known_size=first.sth.tree_size)
    assert again.consistency == []
    assert (again.sth.tree_size, again.sth.root_hash) == (first.sth.tree_size, first.sth.root_hash)
    new, key = _head(again)
    check_consistency(_head(first)[0], new, again.consistency, key)


def test_only_the_wallet_itself_may_sync(world):
    """Another account's user_id, or a hospital or third party, is Forbidden."""
    setup_alice(world)
    with pytest.raises(Forbidden):
        world.audit.sync("u-bob", AuditSyncRequest(user_id=ALICE))
    with pytest.raises(Forbidden):
        world.audit.sync(HIS, AuditSyncRequest(user_id=HIS))
    with pytest.raises(Forbidden):
        world.audit.sync("pharmacy-1", AuditSyncRequest(user_id="pharmacy-1"))


def test_known_size_beyond_the_log_gets_the_signed_smaller_head(world):
    """A wallet holding a larger head than the log gets the signed smaller head: evidence."""
    setup_alice(world)
    size = _sync(world).sth.tree_size
    answer = _sync(world, known_size=size + 1)
    assert answer.sth.tree_size == size
    assert answer.consistency == []
    _verified(answer)


# ── over the app ─────────────────────────────────────────────────────────────────


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def test_sync_over_the_envelope_route(memory_world):
    """The wallet syncs in a hop envelope; another account's user_id crosses as 403."""
    alice = setup_alice(memory_world)
    synced = memory_world.peer_client(alice).call(
        AUDIT_SYNC, AuditSyncRequest(user_id=ALICE), AuditSync
    )
    assert {e.kind for e in _verified(synced).values()} >= {"bind"}
    bob = memory_world.wallet("u-bob")
    with pytest.raises(Forbidden):
        memory_world.peer_client(bob).call(AUDIT_SYNC, AuditSyncRequest(user_id=ALICE), AuditSync)


def test_public_heads_and_proofs_verify(memory_world):
    """GET sth, inclusion and consistency answer hashes that check against the signed heads."""
    world = memory_world
    alice = setup_alice(world)
    http = world.client(None)  # no certificate needed: hashes only
    first = SignedTreeHead.from_dict(
        {k: v for k, v in http.get(AUDIT_STH).json().items() if k != "log_key"}
    )
    synced = _sync(world)
    fetch(world, alice, "rep-1")
    body = http.get(AUDIT_STH).json()
    key = Ed25519PublicKey.from_public_bytes(synced.log_key)
    assert _unb64(body["log_key"]) == synced.log_key
    second = SignedTreeHead.from_dict({k: v for k, v in body.items() if k != "log_key"})
    verify_tree_head(key, second)
    consistency = http.get(
        AUDIT_CONSISTENCY, params={"first": first.head.size, "second": second.head.size}
    ).json()
    proof = [_unb64(h) for h in consistency["proof"]]
    check_consistency(first, second, proof, key)
    event = synced.events[0]
    found = http.get(
        AUDIT_INCLUSION, params={"index": event.index, "tree_size": second.head.size}
    ).json()
    assert (found["leaf_index"], found["tree_size"]) == (event.index, second.head.size)
    verify_inclusion(
        leaf_hash(event.entry),
        event.index,
        second.head.size,
        [_unb64(h) for h in found["proof"]],
        second.head.root_hash,
    )


def _unb64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (AUDIT_INCLUSION, {"index": 5, "tree_size": 5}),
        (AUDIT_INCLUSION, {"index": 0, "tree_size": 10**6}),
        (AUDIT_INCLUSION, {"index": -1, "tree_size": 1}),
        (AUDIT_INCLUSION, {"index": "x", "tree_size": 1}),
        (AUDIT_INCLUSION, {"index": 0, "tree_size": 2**64}),
        (AUDIT_INCLUSION, {"index": 0}),
        (AUDIT_INCLUSION, {"index": 0, "tree_size": 0}),
        (AUDIT_CONSISTENCY, {"first": 3, "second": 2}),
        (AUDIT_CONSISTENCY, {"first": 0, "second": 10**6}),
        (AUDIT_CONSISTENCY, {"first": -1, "second": 0}),
        (AUDIT_CONSISTENCY, {"first": 2**63, "second": 2**63}),
    ],
)
def test_bad_sizes_are_400_problems(memory_world, path, params):
    """An index or size outside the log, or not a size at all, is a 400 problem, never a 500."""
    setup_alice(memory_world)
    http = memory_world.client(None)
    http.get(AUDIT_STH)  # the log holds a few leaves
    _problem(http.get(path, params=params), 400)


def test_openapi_documents_the_audit_routes(memory_world):
    """The OpenAPI document names the audit routes with their response models."""
    doc = memory_world.client(None).get("/openapi.json").json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    assert "post" in paths[AUDIT_SYNC]
    for path, model in (
        (AUDIT_STH, "AuditTreeHead"),
        (AUDIT_INCLUSION, "AuditInclusionProof"),
        (AUDIT_CONSISTENCY, "AuditConsistencyProof"),
    ):
        content = paths[path]["get"]["responses"]["200"]["content"]["application/json"]
        assert content["schema"]["$ref"].endswith(f"/{model}")
        assert model in schemas
    assert "400" in paths[AUDIT_INCLUSION]["get"]["responses"]


# ── tampering with the platform database ─────────────────────────────────────────


def test_editing_an_event_row_breaks_its_inclusion_proof(sql_world, sqlite_db):
    """An event's detail changed with SQL no longer matches its leaf: the proof fails."""
    setup_alice(sql_world)
    kept = {e.index: e.entry for e in _sync(sql_world).events}
    target = next(i for i, entry in kept.items() if LogEntry.decode(entry).kind == "bind")
    seq = LogEntry.decode(kept[target]).seq
    with sqlite_db.engine.begin() as conn:
        conn.execute(
            text("UPDATE event_log SET detail = :d WHERE seq = :s"),
            {"d": '{"his_id": "another-hospital"}', "s": seq},
        )
    after = _sync(sql_world)
    sth, key = _head(after)
    served = {e.index: e for e in after.events}
    assert served[target].entry != kept[target]
    assert LogEntry.decode(served[target].entry).detail == {"his_id": "another-hospital"}
    with pytest.raises(ProofInvalid):
        check_inclusion(sth, served[target].entry, target, served[target].proof, key)
    # The untouched events still verify: the tree itself was not changed.
    for index, event in served.items():
        if index != target:
            check_inclusion(sth, event.entry, index, event.proof, key)


def test_deleting_an_event_row_drops_it_from_what_sync_serves(sql_world, sqlite_db):
    """A deleted event row is no longer served, though its leaf stays in the signed tree."""
    setup_alice(sql_world)
    first = _sync(sql_world)
    kept = {e.index: LogEntry.decode(e.entry) for e in first.events}
    target = next(i for i, entry in kept.items() if entry.kind == "bind")
    with sqlite_db.engine.begin() as conn:
        conn.execute(text("DELETE FROM event_log WHERE seq = :s"), {"s": kept[target].seq})
    after = _sync(sql_world, known_size=first.sth.tree_size)
    served = _verified(after)
    assert target not in served
    assert set(served) == set(kept) - {target}
    # The log still proves it only grew, so the gap is the platform's own doing.
    old, key = _head(first)
    new, _ = _head(after)
    check_consistency(old, new, after.consistency, key)
    assert target < new.head.size


# ── every event the issue lists ──────────────────────────────────────────────────

REQUIRED_KINDS = {
    "bind",
    "rotate.prepare",
    "rotate.commit",
    "record.stored",
    "record.fetch",
    "share.offer",
    "share.deliver",
    "dispense.claim",
    "dispense.release",
    "dispense.complete",
    "authz.requested",
    "authz.approved",
    "authz.denied",
    "authz.step_up",
    "authz.granted",
    "authz.token_issued",
    "authz.used",
    "authz.revoked",
}


def _rotate(world: World, alice: Any) -> None:
    new, nonce = os.urandom(32), os.urandom(32)
    ctx = RotationContext(
        patient_id="pat-alice",
        his_id=HIS,
        user_id=ALICE,
        current_version=1,
        new_version=2,
        nonce=nonce,
    )
    world.core.rotate_prepare(
        ALICE,
        RotatePrepare(
            user_id=ALICE,
            his_id=HIS,
            current_version=1,
            new_version=2,
            wrapped_key=wrap_rotation_key(alice.kuh[1], new, ctx),
            nonce=nonce,
        ),
    )
    world.core.rotate_commit(
        ALICE,
        RotateCommit(
            user_id=ALICE, his_id=HIS, new_version=2, nonce=nonce, proof=rotation_commit(new, ctx)
        ),
    )
    alice.kuh[2] = new


def test_platform_flows_log_every_required_event(sql_world):
    """Bind, rotation, storage, fetch, share, dispense and every authorization step are
    events of the patient, and disclosures name third party, record and grant."""
    world = sql_world
    alice = setup_alice(world)
    world.register()
    _rotate(world, alice)
    share(world, alice, "rx-1", "pharmacy-1")  # ask, approve, token; offer (stores), deliver
    fetch(world, alice, "rep-1")
    _dispense(world, "claim")
    _dispense(world, "release")
    _dispense(world, "claim")
    _dispense(world, "complete")
    world.ask(ALICE, "pharmacy-2", ("rx-1",))
    pending = world.authz.inbox(ALICE, InboxRequest(user_id=ALICE)).requests[0]
    denial = AuthzDecision(
        user_id=ALICE, request_id=pending.request_id, decision="deny", environment=ENVIRONMENT
    )
    world.authz.decide(ALICE, denial, network="127.0.0.1")
    world.ask(ALICE, "pharmacy-2", ("rx-1",))
    with pytest.raises(InsufficientUserAuthentication):
        world.approve(ALICE, password=False, device=False)  # no proof: step up
    grants = world.authz.grants(ALICE, GrantsRequest(user_id=ALICE)).grants
    grant_id = next(g.grant_id for g in grants)
    world.authz.revoke_grant(ALICE, GrantRevoke(user_id=ALICE, grant_id=grant_id))

    entries = list(_verified(_sync(world)).values())
    kinds = {e.kind for e in entries}
    assert kinds >= REQUIRED_KINDS, REQUIRED_KINDS - kinds
    assert all(e.user_id == ALICE for e in entries)
    record = {"his_id": HIS, "p_id": "rx-1", "grant_id": grant_id}
    delivered = [e.detail for e in entries if e.kind == "share.deliver"]
    assert delivered
    assert all({**d, **record, "b_id": "pharmacy-1"} == d for d in delivered)
    dispensed = [e.detail for e in entries if e.kind.startswith("dispense.")]
    assert len(dispensed) == 4
    assert all({**d, **record, "b_id": "pharmacy-1"} == d for d in dispensed)
    used = [e.detail for e in entries if e.kind == "authz.used"]
    # The share gate (offer, delivery) and the token gate (four dispense steps).
    assert len(used) >= 6
    assert all({**d, **record, "client_id": "pharmacy-1"} == d for d in used)
    # Identifiers only: no record body is in any entry.
    assert not any(BODY in e.encode() for e in entries)


# ── the documented entry format ─────────────────────────────────────────────────

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def test_documented_entry_vector_matches_the_code():
    """docs/audit.md's LogEntry vector: its bytes, their length and leaf hash are the code's."""
    text_ = DOCS.read_text(encoding="utf-8")
    blocks = text_.split("```")[1::2]  # the fenced blocks, in order
    entry_bytes = next(b for b in blocks if b.strip().startswith('{"at"')).strip().encode()
    digest = next(b.strip() for b in blocks if len(b.strip()) == 64)
    entry = LogEntry(
        seq=42,
        at_ms=1763877600123,
        kind="record.fetch",
        user_id="u-alice",
        detail={"his_id": "his-a", "p_id": "rx-1"},
        salt=bytes(range(16)),
    )
    assert entry.encode() == entry_bytes
    assert f"entry bytes (UTF-8, {len(entry_bytes)} bytes)" in text_
    assert entry.leaf_hash().hex() == digest
    assert hashlib.sha256(b"\x00" + entry_bytes).hexdigest() == digest
    assert LogEntry.decode(entry_bytes) == entry


# ── the operator's check ─────────────────────────────────────────────────────────


def test_check_log_finds_an_intact_log_intact(sql_world):
    """A log the platform built itself re-derives without a problem, every stored hash read."""
    setup_alice(sql_world)
    size = _sync(sql_world).sth.tree_size
    seen = []
    result = check_log(sql_world.store, chunk=3, progress=lambda d, t: seen.append((d, t)))
    assert result.ok
    assert result.size == size
    assert result.nodes == sum(size >> level for level in range(size.bit_length()))
    assert seen[-1] == (result.nodes, result.nodes)


def test_check_log_names_altered_and_deleted_rows_and_nodes(sql_world, sqlite_db):
    """UPDATE and DELETE of event rows and an UPDATE of an inner node are each reported."""
    setup_alice(sql_world)
    entries = {e.index: LogEntry.decode(e.entry) for e in _sync(sql_world).events}
    altered, deleted = sorted(entries)[:2]
    with sqlite_db.engine.begin() as conn:
        conn.execute(
            text("UPDATE event_log SET detail = :d WHERE seq = :s"),
            {"d": '{"his_id": "elsewhere"}', "s": entries[altered].seq},
        )
        conn.execute(text("DELETE FROM event_log WHERE seq = :s"), {"s": entries[deleted].seq})
        conn.execute(text("UPDATE audit_nodes SET hash = :h WHERE level = 1 AND idx = 0"),
                     {"h": bytes(32)})  # fmt: skip
    result = check_log(sql_world.store)
    assert not result.ok
    assert {(p.level, p.index, p.what) for p in result.problems} == {
        (0, altered, "row altered"),
        (0, deleted, "row deleted"),
        (1, 0, "node altered"),
        (2, 0, "node altered"),  # its parent no longer hashes its stored children either
    }


def test_check_log_refuses_a_bad_chunk(memory_world):
    """A chunk outside 1..100,000 is InvalidInput."""
    with pytest.raises(InvalidInput):
        check_log(memory_world.store, chunk=0)


def test_missing_nodes_are_a_damaged_log_not_a_crash(sql_world, sqlite_db):
    """Nodes deleted under the log: proofs answer 503 audit-log-damaged, sync LogDamaged."""
    setup_alice(sql_world)
    size = _sync(sql_world).sth.tree_size
    with sqlite_db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_nodes WHERE level = 0 AND idx IN (0, 1)"))
    http = sql_world.client(None)
    body = _problem(http.get(AUDIT_INCLUSION, params={"index": 0, "tree_size": size}), 503)
    assert body["type"].endswith("/audit-log-damaged")
    with pytest.raises(LogDamaged):
        _sync(sql_world)


def test_public_head_is_reused_for_a_second_then_integrated_again():
    """GET sth within PUBLIC_HEAD_MAX_AGE_MS serves the same head; later it sequences anew."""
    store = platform_store()
    now = [1_800_000_000.0]
    log = TransparencyLog(store, Ed25519PrivateKey.generate(), is_wallet=bool, clock=lambda: now[0])
    with store.transaction() as repo:
        repo.log_event("bind", "u-alice", {"his_id": "his-1"})
    first = log.sth()
    with store.transaction() as repo:
        repo.log_event("bind", "u-alice", {"his_id": "his-2"})
    now[0] += 0.5
    assert log.sth() == first
    now[0] += 0.6
    later = log.sth()
    assert (first["tree_size"], later["tree_size"]) == (1, 2)
