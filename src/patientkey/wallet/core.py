"""The wallet's operations (docs/protocol.md), sans-IO over a platform port.

:class:`WalletCore` turns each operation into messages for a
:class:`PlatformPort` (``call(path, message, reply_type)``:
:class:`~patientkey.service.client.PeerClient` in production, an in-process
platform in tests) and keeps its state in a :class:`~.store.StateStore` and a
:class:`~.store.RecordCache`. Patient-approved authorization (identity proofs,
requests, decisions, grants) is :attr:`WalletCore.authz`, in :mod:`.authz`; the
transparency log (verified timeline, tamper evidence) is :attr:`WalletCore.audit`,
in :mod:`.audit`.

Rules every operation follows:

* **Persist before send.** Anything a message depends on is in the keystore
  before the message leaves: a rotation's KUH_new (state PREPARED) before
  RotatePrepare, the next KUB before ShareDelivery, a consumed pool key before
  the envelope it seals (:class:`~.hop.PoolSupply`).
* **Verify before store.** A reply changes local state only after its
  cryptographic check passed: the bind reply (mutual authentication), the
  rotation ack, a record's authenticity, the third party's certificate.
* **Either both move or both stay.** KUH rotation follows the table of
  :mod:`patientkey.protocol.states`: a lost or bad ack aborts (both stay on
  the old key); once acked the wallet is on the new key and re-sends the
  commit on every later contact until it is delivered (or the HIS shows that
  it committed implicitly). Old versions are kept: nothing becomes unreadable.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

from pydantic import BaseModel

from patientkey.crypto import (
    HpkePublicKey,
    PublicRecipient,
    SealedRecord,
    SymmetricRecipient,
    add_recipient,
    check_bind_reply,
    decrypt_body,
    make_bind_proof,
    new_bind_nonce,
    remove_recipient,
    unwrap_dek,
)
from patientkey.crypto.certkey import verify_hpke_public
from patientkey.crypto.ratchet import (
    RotationContext,
    ShareContext,
    rotation_commit,
    verify_rotation_ack,
    wrap_next_kub,
    wrap_rotation_key,
)
from patientkey.errors import (
    ConfigError,
    Conflict,
    CryptoError,
    InvalidInput,
    NotFound,
    PatientKeyError,
    PayloadTooLarge,
)
from patientkey.fhir.records import PrescriptionSummary, ReportSummary, load_record
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.keysupply.pool import KeyPool
from patientkey.keysupply.rekey import RekeyPolicy
from patientkey.protocol.enrollment import Enrollment, parse_enrollment_code
from patientkey.protocol.messages import (
    BindReply,
    BindRequest,
    FetchRequest,
    ListRequest,
    Message,
    RecordEntry,
    RecordList,
    RecordReply,
    RotateAck,
    RotateCommit,
    RotatePrepare,
    ShareDelivery,
    ShareOffer,
    ShareReceipt,
    ShareRequest,
)
from patientkey.protocol.routes import (
    BIND,
    RECORDS_FETCH,
    RECORDS_LIST,
    ROTATE_COMMIT,
    ROTATE_PREPARE,
    SHARE_DELIVER,
    SHARE_OFFER,
)
from patientkey.protocol.states import Rotation, RotationEvent, rotation_next
from patientkey.wallet.audit import WalletAudit
from patientkey.wallet.authz import WalletAuthz
from patientkey.wallet.hop import PoolSupply, PqPort, WalletHop
from patientkey.wallet.store import (
    HospitalKeys,
    PendingKub,
    PendingRotation,
    RecordCache,
    StateStore,
    ThirdPartyKeys,
    WalletState,
)
from patientkey.wallet.trust import ThirdPartyTrust

__all__ = [
    "COMMIT_REPLY",
    "HospitalStatus",
    "PlatformPort",
    "RecordView",
    "RotationResult",
    "ShareResult",
    "ThirdPartyStatus",
    "WalletCore",
    "WalletStatus",
    "wallet_hop",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
B = TypeVar("B", bound=BaseModel)

#: docs/protocol.md names no reply for RotateCommit; the HIS answers with the
#: RotateAck of the version it now holds as current.
COMMIT_REPLY: Final = RotateAck
MAX_POOL_FILE_BYTES: Final = 64 * 1024 * 1024


class PlatformPort(Protocol):
    """The platform as the wallet sees it: one enveloped request, one reply."""

    def call(self, path: str, message: Message, reply: type[M]) -> M: ...


@dataclass(frozen=True, slots=True)
class RotationResult:
    his_id: str
    old_version: int
    new_version: int
    committed: bool  # False: the commit is pending and is re-sent on the next contact
    rewrapped: int  # locally cached records moved to the new key


@dataclass(frozen=True, slots=True)
class ShareResult:
    b_id: str
    p_id: str
    kind: Literal["hpke", "kub"]
    kub_version: int  # the KUB version wallet and third party now share
    reset: bool  # True: the third party had lost its KUB, the wallet started over with HPKE


@dataclass(frozen=True, slots=True, repr=False)
class RecordView:
    """A decrypted record's display fields. Health data: show, never log."""

    his_id: str
    p_id: str
    record_type: Literal["prescription", "report"]
    summary: PrescriptionSummary | ReportSummary

    def __repr__(self) -> str:
        return f"RecordView({self.his_id!r}, {self.p_id!r}, {self.record_type!r})"


@dataclass(frozen=True, slots=True)
class HospitalStatus:
    his_id: str
    patient_id: str
    bound: bool
    current_version: int
    versions: tuple[int, ...]
    rotation: str | None  # "prepared" / "acked" (commit pending) / None


@dataclass(frozen=True, slots=True)
class ThirdPartyStatus:
    b_id: str
    kub_version: int | None
    versions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WalletStatus:
    user_id: str
    pool_remaining: int
    pool_low: bool
    pq_active: bool
    policy: str
    hospitals: tuple[HospitalStatus, ...]
    third_parties: tuple[ThirdPartyStatus, ...]
    cached_records: int


def _replace(model: B, **changes: Any) -> B:
    """A validated copy of a frozen model with ``changes``."""
    # Not dict(model): a model with a field named ``keys`` looks like a mapping to dict().
    fields = {name: getattr(model, name) for name in type(model).model_fields}
    return type(model).model_validate({**fields, **changes})


def _refuse(reason: str) -> CryptoError:
    log.warning("refused a reply: %s", reason, stacklevel=2)
    return CryptoError(reason=reason)


def _kuh_kid(his_id: str) -> str:
    return f"kuh:{his_id}"


def wallet_hop(
    state: WalletState,
    store: StateStore,
    *,
    platform: str,
    policy: QkdPolicy = QkdPolicy.PREFERRED,
    rekey: RekeyPolicy | None = None,
) -> WalletHop:
    """The KUE hop over ``state``'s pool, saving ``state`` whenever a key is drawn."""
    supply = PoolSupply(lambda: state.pool, lambda: store.save(state))
    return WalletHop(me=state.user_id, platform=platform, supply=supply, policy=policy, rekey=rekey)


class WalletCore:
    """One patient's wallet: keys, records and the operations of docs/protocol.md."""

    def __init__(
        self,
        *,
        state: WalletState,
        store: StateStore,
        records: RecordCache,
        hop: WalletHop,
        platform: PlatformPort | None = None,
        pq: PqPort | None = None,
        trust: ThirdPartyTrust | None = None,
    ) -> None:
        if hop.me != state.user_id:
            raise ConfigError("the hop and the keystore belong to different users")
        self._state = state
        self._store = store
        self._records = records
        self._hop = hop
        self._platform = platform
        self._pq = pq
        self._trust = trust
        self._authz = WalletAuthz(state=state, save=self._save, call=self._call)
        self._audit = WalletAudit(state=state, save=self._save, call=self._call)

    @property
    def user_id(self) -> str:
        return self._state.user_id

    @property
    def authz(self) -> WalletAuthz:
        """Patient-approved authorization: identity proofs, requests, decisions, grants."""
        return self._authz

    @property
    def audit(self) -> WalletAudit:
        """The transparency log: sync and verify, the timeline, FHIR AuditEvent export."""
        return self._audit

    @property
    def pool_remaining(self) -> int:
        return self._hop.supply.remaining

    @property
    def pool_low(self) -> bool:
        """True when the KUE pool is at or below its low-water mark: time to recharge."""
        return self._hop.supply.low

    @property
    def pq_active(self) -> bool:
        return self._hop.pq_active

    # ------------------------------------------------------------------ state helpers

    def _save(self) -> None:
        self._store.save(self._state)

    def _hospital(self, his_id: str) -> HospitalKeys:
        h = self._state.hospitals.get(his_id)
        if h is None:
            raise NotFound(f"not enrolled at {his_id} (run `wallet enroll CODE` first)")
        return h

    def _put_hospital(self, his_id: str, keys: HospitalKeys) -> None:
        self._state.hospitals[his_id] = keys
        self._save()

    def _put_third_party(self, b_id: str, keys: ThirdPartyKeys) -> None:
        self._state.third_parties[b_id] = keys
        self._save()

    def _call(self, path: str, message: Message, reply: type[M]) -> M:
        if self._platform is None:
            raise ConfigError("this wallet has no platform connection")
        self._hop.prepare(self._pq)
        return self._platform.call(path, message, reply)

    def _contact(self) -> None:
        """Before talking to the platform: settle what a crash or a lost message left."""
        for his_id, h in list(self._state.hospitals.items()):
            if h.rotation is None:
                continue
            if h.rotation.state is Rotation.PREPARED:
                # Left by a crash between prepare and ack: the wallet never moved,
                # so abort; the HIS drops its pending key on the next prepare.
                rotation_next(Rotation.PREPARED, RotationEvent.ABORT)
                self._put_hospital(his_id, _replace(h, rotation=None))
                log.info("aborted an unfinished KUH rotation at %s", his_id)
                continue
            try:
                self._send_commit(his_id)
            except PatientKeyError as exc:
                log.warning("KUH rotation commit to %s still pending: %s", his_id, exc.detail)

    # ------------------------------------------------------------------ local operations

    def enroll(self, code: str) -> Enrollment:
        """Store Patient_ID and KUH from a hospital's enrollment code."""
        enrollment = parse_enrollment_code(code)
        existing = self._state.hospitals.get(enrollment.his_id)
        if existing is not None:
            held = existing.keys.get(enrollment.version)
            if (
                existing.patient_id == enrollment.patient_id
                and held is not None
                and hmac.compare_digest(held, enrollment.kuh)
            ):
                return enrollment  # the same code twice: nothing to do
            raise Conflict(
                f"already enrolled at {enrollment.his_id} with other keys; "
                "a new enrollment would make its records unreadable"
            )
        self._put_hospital(
            enrollment.his_id,
            HospitalKeys(
                patient_id=enrollment.patient_id,
                current=enrollment.version,
                keys={enrollment.version: enrollment.kuh},
            ),
        )
        return enrollment

    def charge(self, path: Path) -> int:
        """Move a pool file from ``patientkey platform charge-wallet`` into the keystore.

        The file is deleted once the keystore holds its keys. Returns how many
        sending keys were added.
        """
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_POOL_FILE_BYTES + 1)
        except OSError as exc:
            raise InvalidInput(f"cannot read the pool file {path}") from exc
        if len(raw) > MAX_POOL_FILE_BYTES:
            raise PayloadTooLarge("pool file too large")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path} is not a key pool file") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"{path} is not a key pool file")
        added = KeyPool.from_dict(data)
        if (added.me, added.peer) != (self.user_id, self._hop.platform):
            raise InvalidInput(
                f"the pool file is for {added.me} -> {added.peer}, "
                f"not {self.user_id} -> {self._hop.platform}"
            )
        merged, count = _merge_pools(self._state.pool, added)
        if merged is not None:
            self._state.pool = merged
            self._save()
        path.unlink()
        return count

    def status(self) -> WalletStatus:
        """Pool level, bindings, key versions: never key bytes."""
        hospitals = tuple(
            HospitalStatus(
                his_id=his_id,
                patient_id=h.patient_id,
                bound=h.bound,
                current_version=h.current,
                versions=tuple(sorted(h.keys)),
                rotation=None if h.rotation is None else str(h.rotation.state),
            )
            for his_id, h in sorted(self._state.hospitals.items())
        )
        third = tuple(
            ThirdPartyStatus(b_id=b_id, kub_version=t.current, versions=tuple(sorted(t.keys)))
            for b_id, t in sorted(self._state.third_parties.items())
        )
        return WalletStatus(
            user_id=self.user_id,
            pool_remaining=self.pool_remaining,
            pool_low=self.pool_low,
            pq_active=self.pq_active,
            policy=str(self._hop.policy),
            hospitals=hospitals,
            third_parties=third,
            cached_records=sum(1 for _ in self._records.items()),
        )

    def cached(self) -> Iterator[tuple[str, str]]:
        """(HIS_ID, P_ID) of every record held locally."""
        return self._records.items()

    def show(self, p_id: str, his_id: str | None = None) -> RecordView:
        """Decrypt a locally cached record and summarize it (FHIR R4)."""
        found = [
            his
            for his, pid in self._records.items()
            if pid == p_id and (his_id is None or his == his_id)
        ]
        if not found:
            raise NotFound(f"record {p_id} is not in the wallet (fetch it first)")
        if len(found) > 1:
            raise InvalidInput(f"record {p_id} exists at {', '.join(found)}: name the hospital")
        his = found[0]
        h = self._hospital(his)
        sealed = self._records.get(his, p_id)
        if sealed is None:
            raise NotFound(f"record {p_id} is not in the wallet (fetch it first)")
        record = self._checked_record(his, p_id, sealed, h)
        body = decrypt_body(record, self._dek(his, h, record))
        clinical = load_record(body, name=p_id)
        return RecordView(his, p_id, clinical.record_type, clinical.summary)

    # ------------------------------------------------------------------ record keys

    def _checked_record(
        self, his_id: str, p_id: str, sealed: bytes, h: HospitalKeys
    ) -> SealedRecord:
        try:
            record = SealedRecord.from_bytes(sealed)
        except InvalidInput as exc:
            raise _refuse("record: malformed") from exc
        if record.record_id != p_id or record.owner != f"{his_id}/{h.patient_id}":
            raise _refuse("record: not the record that was asked for")
        return record

    def _dek(self, his_id: str, h: HospitalKeys, record: SealedRecord) -> bytes:
        """The DEK, with whichever KUH version the record is wrapped for."""
        kid = _kuh_kid(his_id)
        for entry in record.entries_for(kid):
            key = h.keys.get(entry.version) if entry.version is not None else None
            if key is None:
                continue
            try:
                return unwrap_dek(record, kid=kid, key=key, version=entry.version)
            except CryptoError:
                continue
        raise _refuse("record: no KUH version held opens it")

    def _rewrapped(
        self, his_id: str, h: HospitalKeys, record: SealedRecord, dek: bytes | None = None
    ) -> SealedRecord:
        """``record`` with its KUH entries moved to the current version; body untouched."""
        kid = _kuh_kid(his_id)
        versions = {e.version for e in record.entries_for(kid)}
        if versions == {h.current}:
            return record
        dek = dek if dek is not None else self._dek(his_id, h, record)
        out = record
        if h.current not in versions:
            out = add_recipient(out, dek, SymmetricRecipient(kid, h.current, h.kuh))
        for version in sorted(v for v in versions if v is not None and v != h.current):
            out = remove_recipient(out, kid, version)
        return out

    def _rewrap_cache(self, his_id: str) -> int:
        h = self._hospital(his_id)
        count = 0
        for his, p_id in list(self._records.items()):
            sealed = self._records.get(his, p_id) if his == his_id else None
            if sealed is None:
                continue
            record = self._checked_record(his, p_id, sealed, h)
            updated = self._rewrapped(his, h, record)
            if updated is not record:
                self._records.put(his, p_id, updated.to_bytes())
                count += 1
        return count

    # ------------------------------------------------------------------ 1. bind

    def bind(self, his_id: str) -> None:
        """Bind the platform account to the patient at ``his_id`` (mutual authentication)."""
        self._contact()
        h = self._hospital(his_id)
        nonce = new_bind_nonce()
        ids = {"patient_id": h.patient_id, "his_id": his_id, "user_id": self.user_id}
        proof = make_bind_proof(h.kuh, nonce=nonce, **ids)
        reply = self._call(
            BIND,
            BindRequest(
                user_id=self.user_id,
                his_id=his_id,
                patient_id=h.patient_id,
                nonce=nonce,
                proof=proof,
            ),
            BindReply,
        )
        if (reply.his_id, reply.patient_id) != (his_id, h.patient_id):
            raise _refuse("bind: reply for another patient")
        check_bind_reply(h.kuh, reply.reply, nonce=nonce, **ids)
        h = self._hospital(his_id)
        changes: dict[str, Any] = {"bound": True}
        if h.rotation is not None and h.rotation.state is Rotation.ACKED:
            # A bind proof under the new key commits the HIS's pending key.
            rotation_next(Rotation.ACKED, RotationEvent.COMMIT)
            changes["rotation"] = None
        self._put_hospital(his_id, _replace(h, **changes))

    # ------------------------------------------------------------------ 2. rotate

    def _rotation_context(
        self, his_id: str, h: HospitalKeys, rotation: PendingRotation
    ) -> RotationContext:
        return RotationContext(
            patient_id=h.patient_id,
            his_id=his_id,
            user_id=self.user_id,
            current_version=rotation.current_version,
            new_version=rotation.new_version,
            nonce=rotation.nonce,
        )

    def _send_commit(self, his_id: str) -> None:
        h = self._hospital(his_id)
        rotation = h.rotation
        if rotation is None or rotation.state is not Rotation.ACKED:
            raise Conflict(f"no acknowledged KUH rotation at {his_id}")
        ctx = self._rotation_context(his_id, h, rotation)
        message = RotateCommit(
            user_id=self.user_id,
            his_id=his_id,
            new_version=rotation.new_version,
            nonce=rotation.nonce,
            proof=rotation_commit(rotation.key, ctx),
        )
        try:
            reply = self._call(ROTATE_COMMIT, message, COMMIT_REPLY)
        except Conflict:
            # The HIS has nothing pending at this version although it acked it:
            # it committed already (our earlier commit arrived and its answer was
            # lost, or a bind/fetch under the new key committed it implicitly).
            log.info("KUH rotation at %s was already committed", his_id)
        else:
            if (reply.his_id, reply.new_version) != (his_id, rotation.new_version):
                raise _refuse("rotate: commit answered for another rotation")
        rotation_next(Rotation.ACKED, RotationEvent.COMMIT)
        self._put_hospital(his_id, _replace(self._hospital(his_id), rotation=None))

    def rotate(self, his_id: str) -> RotationResult:
        """Replace KUH at ``his_id`` with a fresh key, two-phase (docs/protocol.md op 2)."""
        self._contact()
        h = self._hospital(his_id)
        if not h.bound:
            raise Conflict(f"bind to {his_id} before rotating its key")
        if h.rotation is not None:
            raise Conflict(
                f"the previous key rotation at {his_id} is not committed yet; try again later"
            )
        old = h.current
        prepared = PendingRotation(
            state=rotation_next(Rotation.CURRENT, RotationEvent.PREPARE),
            current_version=old,
            new_version=old + 1,
            nonce=os.urandom(32),
            key=os.urandom(32),
        )
        ctx = self._rotation_context(his_id, h, prepared)
        wrapped = wrap_rotation_key(h.kuh, prepared.key, ctx)
        # PREPARED with KUH_new is on disk before RotatePrepare can leave.
        self._put_hospital(his_id, _replace(h, rotation=prepared))
        try:
            ack = self._call(
                ROTATE_PREPARE,
                RotatePrepare(
                    user_id=self.user_id,
                    his_id=his_id,
                    current_version=old,
                    new_version=prepared.new_version,
                    wrapped_key=wrapped,
                    nonce=prepared.nonce,
                ),
                RotateAck,
            )
            _check_ack(ack, his_id, prepared, ctx)
        except Exception:
            # Lost, refused or forged ack: stay on the old key (the HIS's pending
            # key is replaced by the next prepare and never used).
            rotation_next(Rotation.PREPARED, RotationEvent.ABORT)
            self._put_hospital(his_id, _replace(self._hospital(his_id), rotation=None))
            raise
        h = self._hospital(his_id)
        acked = _replace(prepared, state=rotation_next(Rotation.PREPARED, RotationEvent.ACK))
        self._put_hospital(
            his_id,
            _replace(
                h,
                current=acked.new_version,
                keys={**h.keys, acked.new_version: acked.key},
                rotation=acked,
            ),
        )
        committed = True
        try:
            self._send_commit(his_id)
        except PatientKeyError as exc:
            committed = False
            log.warning("KUH rotation commit to %s not delivered: %s", his_id, exc.detail)
        rewrapped = self._rewrap_cache(his_id)
        return RotationResult(his_id, old, acked.new_version, committed, rewrapped)

    # ------------------------------------------------------------------ 3. list / fetch

    def list_records(self) -> RecordList:
        """Every record of the wallet's bindings, with fetch and dispense state."""
        self._contact()
        return self._call(RECORDS_LIST, ListRequest(user_id=self.user_id), RecordList)

    def record_status(self, his_id: str, p_id: str) -> RecordEntry:
        """The platform's entry for one record (dispense state, shares)."""
        for entry in self.list_records().records:
            if (entry.his_id, entry.p_id) == (his_id, p_id):
                return entry
        raise NotFound(f"no record {p_id} at {his_id}")

    def fetch(self, his_id: str, p_id: str) -> None:
        """Fetch a record's ciphertext, check that it opens, and cache it locally."""
        self._contact()
        h = self._hospital(his_id)
        reply = self._call(
            RECORDS_FETCH, FetchRequest(user_id=self.user_id, his_id=his_id, p_id=p_id), RecordReply
        )
        if (reply.his_id, reply.p_id) != (his_id, p_id):
            raise _refuse("fetch: reply for another record")
        record = self._checked_record(his_id, p_id, reply.sealed, h)
        dek = self._dek(his_id, h, record)
        decrypt_body(record, dek)  # authentic before it is stored
        h = self._hospital(his_id)
        rotation = h.rotation
        if (
            rotation is not None
            and rotation.state is Rotation.ACKED
            and record.entries_for(_kuh_kid(his_id), rotation.new_version)
        ):
            # Sealed under the new key: the HIS has committed it.
            rotation_next(Rotation.ACKED, RotationEvent.COMMIT)
            h = _replace(h, rotation=None)
            self._put_hospital(his_id, h)
        self._records.put(his_id, p_id, self._rewrapped(his_id, h, record, dek).to_bytes())

    # ------------------------------------------------------------------ 4. share

    def share(self, his_id: str, p_id: str, b_id: str) -> ShareResult:
        """Give third party ``b_id`` the record key (HPKE first, then the KUB ratchet)."""
        if self._trust is None:
            raise ConfigError("no CA to verify third parties against")
        self._contact()
        h = self._hospital(his_id)
        offer = self._call(
            SHARE_OFFER,
            ShareRequest(user_id=self.user_id, his_id=his_id, p_id=p_id, b_id=b_id),
            ShareOffer,
        )
        if (offer.his_id, offer.p_id, offer.b_id) != (his_id, p_id, b_id):
            raise _refuse("share: offer for another record or third party")
        self._trust.verify(offer.certificate_pem, b_id)
        # The certificate's key signed KBP: the platform cannot swap in a key of its own.
        verify_hpke_public(offer.certificate_pem, b_id, offer.hpke_public, offer.hpke_signature)
        kbp = HpkePublicKey.from_bytes(offer.hpke_public)
        record = self._checked_record(his_id, p_id, offer.sealed, h)
        dek = self._dek(his_id, h, record)
        held = self._state.third_parties.get(b_id)
        kind: Literal["hpke", "kub"] = "kub" if held and held.current is not None else "hpke"
        receipt = self._deliver(
            his_id=his_id, p_id=p_id, b_id=b_id, record=record, dek=dek, kbp=kbp, kind=kind
        )
        reset = False
        if not receipt.accepted and receipt.reason == "kub-unknown" and kind == "kub":
            # The third party lost our KUB (a lost message, a restore): start over.
            log.info("%s does not hold our KUB: sharing again with HPKE", b_id)
            kind, reset = "hpke", True
            receipt = self._deliver(
                his_id=his_id, p_id=p_id, b_id=b_id, record=record, dek=dek, kbp=kbp, kind=kind
            )
        if not receipt.accepted:
            raise Conflict(f"{b_id} did not accept the record ({receipt.reason})")
        return ShareResult(b_id, p_id, kind, receipt.kub_version, reset)

    def _deliver(
        self,
        *,
        his_id: str,
        p_id: str,
        b_id: str,
        record: SealedRecord,
        dek: bytes,
        kbp: HpkePublicKey,
        kind: Literal["hpke", "kub"],
    ) -> ShareReceipt:
        held = self._state.third_parties.get(b_id) or ThirdPartyKeys()
        wrapping: bytes | HpkePublicKey
        recipient: PublicRecipient | SymmetricRecipient
        if kind == "hpke":
            used, wrapping = 0, kbp
            recipient = PublicRecipient(f"kbp:{b_id}", kbp)
        else:
            assert held.current is not None  # checked by the caller
            assert held.kub is not None
            used, wrapping = held.current, held.kub
            recipient = SymmetricRecipient(f"kub:{b_id}", used, held.kub)
        next_version, next_kub = used + 1, os.urandom(32)
        base = record
        if base.entries_for(recipient.kid):
            base = remove_recipient(base, recipient.kid)
        sealed = add_recipient(base, dek, recipient)
        ctx = ShareContext(
            user_id=self.user_id, b_id=b_id, his_id=his_id, p_id=p_id, next_version=next_version
        )
        wrapped = wrap_next_kub(wrapping, next_kub, ctx)
        # The next KUB is on disk before the message that carries it leaves.
        self._put_third_party(
            b_id, _replace(held, pending=PendingKub(version=next_version, key=next_kub))
        )
        receipt = self._call(
            SHARE_DELIVER,
            ShareDelivery(
                user_id=self.user_id,
                his_id=his_id,
                p_id=p_id,
                b_id=b_id,
                kind=kind,
                kub_version=used,
                sealed=sealed.to_bytes(),
                next_kub=wrapped,
            ),
            ShareReceipt,
        )
        if (receipt.b_id, receipt.p_id) != (b_id, p_id):
            raise _refuse("share: receipt for another record or third party")
        held = self._state.third_parties[b_id]
        if receipt.accepted and receipt.kub_version != next_version:
            raise _refuse("share: receipt names another KUB version")
        if receipt.accepted:
            # Advance only now: the third party holds KUB_{v+1} (and keeps v).
            keys = {next_version: next_kub}
            if kind == "kub" and held.kub is not None and held.current is not None:
                keys[held.current] = held.kub
            self._put_third_party(b_id, ThirdPartyKeys(current=next_version, keys=keys))
        else:
            self._put_third_party(b_id, _replace(held, pending=None))
        return receipt


def _check_ack(
    ack: RotateAck, his_id: str, rotation: PendingRotation, ctx: RotationContext
) -> None:
    """CryptoError unless ``ack`` proves the HIS holds this rotation's new key."""
    if (ack.his_id, ack.new_version) != (his_id, rotation.new_version):
        raise _refuse("rotate: ack for another rotation")
    verify_rotation_ack(rotation.key, ack.ack, ctx)


def _merge_pools(old: KeyPool | None, added: KeyPool) -> tuple[KeyPool | None, int]:
    """``old`` plus ``added``'s keys; (None, 0) if they are all there already."""
    if old is None:
        return added, added.remaining
    a, b = old.to_dict(), added.to_dict()
    have = {row[0] for row in a["send"] + a["receive"]}
    new = {row[0] for row in b["send"] + b["receive"]}
    if new <= have:
        return None, 0  # charged before (a crash between saving and deleting the file)
    if new & have:
        raise InvalidInput("the pool file overlaps keys already in the wallet")
    merged = KeyPool.from_dict(
        {
            "me": a["me"],
            "peer": a["peer"],
            "low_water": b["low_water"],
            "send": a["send"] + b["send"],
            "receive": a["receive"] + b["receive"],
        }
    )
    return merged, added.remaining
