"""The wallet's side of the hospital operations, for the tests (messages and checks)."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

from patientkey.crypto import make_bind_proof, new_bind_nonce
from patientkey.crypto.ratchet import (
    RotationContext,
    rotation_commit,
    wrap_rotation_key,
)
from patientkey.keysupply.embedded import EmbeddedKeySupply
from patientkey.keysupply.rekey import HopReceiver, HopSender
from patientkey.kme.core import KmeCore
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import BindVerify, RotateCommit, RotatePrepare
from patientkey.service.party import hop_context, qkd_hop_end

HIS = "hospital-1"
USER = "u-alice"


def hop(kme: KmeCore, me: str, *peers: str) -> HopEnd:
    """``me``'s hop end towards ``peers`` over the in-process KME."""
    return qkd_hop_end(me, peers, EmbeddedKeySupply(kme, me))


def hop_pair(kme: KmeCore, me: str, peer: str) -> tuple[HopSender, HopReceiver]:
    """One more hop of ``me`` (for HopEnd.add_peer)."""
    supply = EmbeddedKeySupply(kme, me)
    context = hop_context(me, peer)
    return (
        HopSender(peer=peer, context=context, supply=supply),
        HopReceiver(peer=peer, context=context, supply=supply),
    )


@dataclass(frozen=True)
class Code:
    his_id: str
    patient_id: str
    kuh: bytes
    kv: int


def decode_code(code: str) -> Code:
    """Parse an enrollment code strictly as protocol.md defines it."""
    assert code.startswith("PKENROLL1.")
    raw = code.removeprefix("PKENROLL1.")
    assert "=" not in raw
    document = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    assert list(document) == ["his_id", "patient_id", "kuh", "kv"]
    kuh = base64.urlsafe_b64decode(document["kuh"] + "=" * (-len(document["kuh"]) % 4))
    return Code(document["his_id"], document["patient_id"], kuh, document["kv"])


def bind_verify(kuh: bytes, patient_id: str, *, user: str = USER) -> BindVerify:
    nonce = new_bind_nonce()
    proof = make_bind_proof(kuh, patient_id=patient_id, his_id=HIS, user_id=user, nonce=nonce)
    return BindVerify(user_id=user, patient_id=patient_id, nonce=nonce, proof=proof)


@dataclass(frozen=True)
class Rotation:
    prepare: RotatePrepare
    commit: RotateCommit
    ctx: RotationContext
    new_kuh: bytes


def rotation(
    kuh: bytes, patient_id: str, current: int, *, user: str = USER, new_kuh: bytes | None = None
) -> Rotation:
    """A prepare (as the platform forwards it, with patient_id) and its commit."""
    new = new_kuh or os.urandom(32)
    nonce = os.urandom(32)
    ctx = RotationContext(
        patient_id=patient_id,
        his_id=HIS,
        user_id=user,
        current_version=current,
        new_version=current + 1,
        nonce=nonce,
    )
    prepare = RotatePrepare(
        user_id=user,
        his_id=HIS,
        patient_id=patient_id,
        current_version=current,
        new_version=current + 1,
        wrapped_key=wrap_rotation_key(kuh, new, ctx),
        nonce=nonce,
    )
    commit = RotateCommit(
        user_id=user,
        his_id=HIS,
        patient_id=patient_id,
        new_version=current + 1,
        nonce=nonce,
        proof=rotation_commit(new, ctx),
    )
    return Rotation(prepare, commit, ctx, new)
