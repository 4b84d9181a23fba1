"""Wallet-side steps of the protocol flows, for the platform tests (the real recipes)."""

from __future__ import annotations

import os
from typing import Any

from platform_world import HIS, Wallet, World

from patientkey.crypto import (
    HpkePublicKey,
    PublicRecipient,
    SealedRecord,
    SymmetricRecipient,
    add_recipient,
    check_bind_reply,
    open_record,
    unwrap_dek,
)
from patientkey.crypto.ratchet import ShareContext, wrap_next_kub
from patientkey.protocol.messages import (
    BindReply,
    FetchRequest,
    RecordsAnnounce,
    ShareDelivery,
    ShareOffer,
    ShareReceipt,
    ShareRequest,
)
from patientkey.storage import SqlStore

BODY = b'{"resourceType":"Bundle","id":"example","type":"document"}'


def announce(world: World, patient_id: str, *records: tuple[str, str]) -> None:
    """The hospital announces ``(p_id, record_type)`` records of a patient."""
    message = RecordsAnnounce.model_validate(
        {"patient_id": patient_id, "records": [{"p_id": p, "record_type": t} for p, t in records]}
    )
    world.core.announce(HIS, message)


def setup_alice(world: World, *, bind: bool = True) -> Wallet:
    """Alice: charged wallet, enrolled as pat-alice with rx-1 and rep-1, bound if asked."""
    alice = world.wallet("u-alice")
    world.enroll(alice, "pat-alice")
    world.hospital.add_record("pat-alice", "rx-1", BODY)
    world.hospital.add_record("pat-alice", "rep-1", BODY.replace(b"example", b"report"))
    announce(world, "pat-alice", ("rx-1", "prescription"), ("rep-1", "report"))
    if bind:
        checked_bind(world, alice, "pat-alice")
    return alice


def checked_bind(world: World, wallet: Wallet, patient_id: str) -> BindReply:
    """Bind and verify the mutual-authentication reply as the wallet does."""
    request = world.bind_request(wallet, patient_id)
    reply = world.core.bind(wallet.user, request)
    check_bind_reply(
        wallet.kuh[max(wallet.kuh)],
        reply.reply,
        patient_id=patient_id,
        his_id=HIS,
        user_id=wallet.user,
        nonce=request.nonce,
    )
    return reply


def open_fetched(wallet: Wallet, sealed: bytes) -> bytes:
    record = SealedRecord.from_bytes(sealed)
    entry = record.entries_for(f"kuh:{HIS}")[0]
    assert entry.version is not None
    return open_record(record, kid=f"kuh:{HIS}", key=wallet.kuh[entry.version])


def fetch(world: World, wallet: Wallet, p_id: str) -> bytes:
    reply = world.core.fetch(wallet.user, FetchRequest(user_id=wallet.user, his_id=HIS, p_id=p_id))
    return reply.sealed


def offer(world: World, wallet: Wallet, p_id: str, b_id: str, *, grant: bool = True) -> ShareOffer:
    """The share offer; first, unless ``grant=False``, the patient grants ``b_id`` the record."""
    if grant and (b_id, wallet.user, p_id) not in world.granted and b_id in world.pharmacies:
        world.grant(wallet.user, b_id, p_id)
    request = ShareRequest(user_id=wallet.user, his_id=HIS, p_id=p_id, b_id=b_id)
    return world.core.share_offer(wallet.user, request)


def delivery(
    wallet: Wallet, offered: ShareOffer, *, force_hpke: bool = False
) -> tuple[ShareDelivery, bytes]:
    """The wallet's re-sealing for the third party; returns the delivery and the new KUB."""
    record = SealedRecord.from_bytes(offered.sealed)
    entry = record.entries_for(f"kuh:{HIS}")[0]
    assert entry.version is not None
    dek = unwrap_dek(record, kid=f"kuh:{HIS}", key=wallet.kuh[entry.version])
    b_id, p_id = offered.b_id, offered.p_id
    held = wallet.kub.get(b_id, {})
    new = os.urandom(32)
    if not held or force_hpke:
        public = HpkePublicKey.from_bytes(offered.hpke_public)
        sealed = add_recipient(record, dek, PublicRecipient(f"kbp:{b_id}", public))
        ctx = ShareContext(user_id=wallet.user, b_id=b_id, his_id=HIS, p_id=p_id, next_version=1)
        kind, version, next_kub = "hpke", 0, wrap_next_kub(public, new, ctx)
    else:
        version = max(held)
        sealed = add_recipient(
            record, dek, SymmetricRecipient(f"kub:{b_id}", version, held[version])
        )
        ctx = ShareContext(
            user_id=wallet.user, b_id=b_id, his_id=HIS, p_id=p_id, next_version=version + 1
        )
        kind, next_kub = "kub", wrap_next_kub(held[version], new, ctx)
    message = ShareDelivery(
        user_id=wallet.user,
        his_id=HIS,
        p_id=p_id,
        b_id=b_id,
        kind=kind,
        kub_version=version,
        sealed=sealed.to_bytes(),
        next_kub=next_kub,
    )
    return message, new


def share(world: World, wallet: Wallet, p_id: str, b_id: str, **kw: Any) -> ShareReceipt:
    """Offer, re-seal, deliver; the wallet advances its KUB only on an accepted receipt."""
    message, new = delivery(wallet, offer(world, wallet, p_id, b_id), **kw)
    receipt = world.core.share_deliver(wallet.user, message)
    if receipt.accepted:
        wallet.kub.setdefault(b_id, {})[receipt.kub_version] = new
    return receipt


def snapshot(store: Any, users: tuple[str, ...] = ("u-alice", "u-bob")) -> object:
    """Everything an operation may change, except the KUE pool (hop keys are spent)."""
    with store.transaction() as repo:
        counts = {k: v for k, v in repo.counts().items() if not k.startswith("kue_keys")}
        return (
            counts,
            [repo.listing(u) for u in users],
            [repo.bindings_of(u) for u in users],
            repo.events(limit=100_000),
        )


def dump(store: Any) -> bytes:
    """The SQLite store's full dump (for byte-level checks)."""
    assert isinstance(store, SqlStore)
    return store.db.dump_bytes()
