"""The hospital's and the wallet's side of a share, for the third-party tests."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from patientkey.authz.rar import parse_authorization_details
from patientkey.crypto import (
    HpkePublicKey,
    PublicRecipient,
    SealedRecord,
    SymmetricRecipient,
    add_recipient,
    seal_record,
    unwrap_dek,
)
from patientkey.crypto.ratchet import ShareContext, wrap_next_kub
from patientkey.fhir.synthetic import generate_json
from patientkey.keysupply.embedded import EmbeddedKeySupply
from patientkey.keysupply.rekey import HopReceiver, HopSender
from patientkey.kme.core import KmeCore
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import ShareReceipt, ShareRelay
from patientkey.service.party import hop_context, qkd_hop_end
from patientkey.thirdparty.oauth import TokenSet

B = "pharmacy-1"
HIS = "hospital-1"
PATIENT = "pat-1"
USER = "u-alice"
DATA = Path(__file__).resolve().parents[3] / "shared/data"


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


def granted_token(
    user: str = USER,
    *,
    his: str = HIS,
    ids: list[str] | None = None,
    actions: tuple[str, ...] = ("view", "fetch", "store", "use"),
    expires_at: float | None = None,
    grant_id: str = "grant-1",
) -> TokenSet:
    """A token as a CIBA flow would leave it: ``user``'s grant of ``actions`` on the
    prescriptions of ``his`` (all, or ``ids``); the token text is random."""
    records: dict[str, object] = {"his_id": his}
    if ids is not None:
        records["ids"] = ids
    details = parse_authorization_details(
        [
            {
                "type": "health_record_access",
                "record_types": ["prescription"],
                "records": records,
                "actions": list(actions),
                "purpose": "pharmacy_dispense",
                "duration": 86400,
            }
        ]
    )
    now = int(time.time())
    return TokenSet(
        access_token="at." + secrets.token_urlsafe(32),
        token_type="Bearer",
        user_id=user,
        expires_at=int(expires_at if expires_at is not None else now + 300),
        obtained_at=now,
        authorization_details=details,
        grant_id=grant_id,
    )


def fhir_body(seed: int = 1) -> bytes:
    """A valid prescription Bundle: a real gematik example if present, else synthetic."""
    example = DATA / "erezept/1.2.0/Beispiel_1.json"
    if seed == 1 and example.is_file():
        return example.read_bytes()
    return next(iter(generate_json(1, seed))).encode()


@dataclass
class HospitalRecord:
    """A record as the hospital sealed it for the patient (KUH v1)."""

    p_id: str
    sealed: SealedRecord
    kuh: bytes = field(repr=False)


def hospital_record(
    p_id: str = "p-1", body: bytes | None = None, *, his: str = HIS
) -> HospitalRecord:
    kuh = os.urandom(32)
    sealed = seal_record(
        record_id=p_id,
        owner=f"{his}/{PATIENT}",
        body=fhir_body() if body is None else body,
        recipients=[SymmetricRecipient(f"kuh:{his}", 1, kuh)],
    )
    return HospitalRecord(p_id, sealed, kuh)


@dataclass
class Wallet:
    """The wallet's KUB ratchet towards third party ``b_id`` (docs/protocol.md op 4)."""

    kbp: HpkePublicKey
    user: str = USER
    b_id: str = B
    kubs: dict[int, bytes] = field(default_factory=dict)
    version: int = 0

    def share(
        self, record: HospitalRecord, *, kind: str | None = None, his: str = HIS
    ) -> tuple[ShareRelay, int, bytes]:
        """The relay for ``record``; returns (relay, next version, next KUB) until accepted."""
        dek = unwrap_dek(record.sealed, kid=f"kuh:{his}", key=record.kuh)
        kind = kind or ("kub" if self.version else "hpke")
        next_kub = os.urandom(32)
        if kind == "hpke":
            nxt, used = 1, 0
            sealed = add_recipient(
                record.sealed, dek, PublicRecipient(f"kbp:{self.b_id}", self.kbp)
            )
            wrapping: bytes | HpkePublicKey = self.kbp
        else:
            nxt, used = self.version + 1, self.version
            key = self.kubs[used]
            sealed = add_recipient(
                record.sealed, dek, SymmetricRecipient(f"kub:{self.b_id}", used, key)
            )
            wrapping = key
        ctx = ShareContext(
            user_id=self.user, b_id=self.b_id, his_id=his, p_id=record.p_id, next_version=nxt
        )
        relay = ShareRelay(
            user_id=self.user,
            his_id=his,
            p_id=record.p_id,
            kind=kind,
            kub_version=used,
            sealed=sealed.to_bytes(),
            next_kub=wrap_next_kub(wrapping, next_kub, ctx),
        )
        return relay, nxt, next_kub

    def accept(self, receipt: ShareReceipt, version: int, key: bytes) -> None:
        """Advance the ratchet only on an accepted receipt (protocol op 4 step 5)."""
        if receipt.accepted:
            assert receipt.kub_version == version
            self.kubs[version] = key
            self.version = version

    def send(self, core, record: HospitalRecord, **kwargs) -> ShareReceipt:
        relay, version, key = self.share(record, **kwargs)
        receipt = core.receive_share(relay)
        self.accept(receipt, version, key)
        return receipt
