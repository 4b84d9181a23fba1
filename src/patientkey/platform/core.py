"""The platform (EPP) as sans-IO domain logic: message in, message out.

The platform is the hub: it authenticates who calls (the hop envelope's sender,
checked against the client certificate by the HTTP adapter), checks bindings and
ownership, relays what hospitals and third parties must see, and keeps
ciphertext, identifiers and states. It never holds KUH, KUB, a DEK or plaintext,
and nothing it stores or logs is health data ("blind storage"; protocol.md,
"What each party stores").

Operations (``docs/protocol.md``) and who may call them:

==================  ============  ==============================================
method              caller        does
==================  ============  ==============================================
bind                wallet        rate limits, HIS verifies the proof, binding
rotate_prepare      wallet        forwards ``{KUH_new}KUH`` with the Patient_ID
rotate_commit       wallet        forwards the commit proof with the Patient_ID
announce            hospital      notes record ids and types of a patient
list_records        wallet        metadata of the records of its bindings
fetch               wallet        stored ciphertext, else from the HIS (kept)
share_offer         wallet        ciphertext + the third party's certified KBP
share_deliver       wallet        checks the re-sealed record, relays, receipt
dispense            third party   claim / complete / release
==================  ============  ==============================================

Every share and every dispense step passes the live-grant gate (:class:`GrantGate`,
the authorization unit, DESIGN.md seed 1): the patient shares a record only with a
third party holding a live grant that lets it ``view`` the record, and a third party
claims, completes or releases only with an access token whose live grant lets it
``use`` the prescription. The gate reads the grant on every call: a revocation counts
from the very next request.

Each operation's state changes happen in one store transaction, and only after
the checks (and the peer's cryptographic answer) succeeded; where a peer must be
asked, nothing is held open during the call: a read transaction checks, the peer
answers, a second transaction writes (first writer wins). Every successful
operation appends an event with identifiers and counts only; those events are the
leaves of the transparency log (``platform.audit``), so a patient's wallet can keep
an accounting of disclosures: each share and dispense event names the third party
(``b_id``), the record (``his_id``, ``p_id``) and the ``grant_id`` it happened under.

Peers are reached through :class:`PeerPort` (``PeerClient`` in production,
in-process clients in tests); a peer's error arrives as the same exception class
(a hospital's 403 stays a 403).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, Literal, Protocol, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from patientkey.authz.rar import Action, RecordRef
from patientkey.crypto import ALG_A256KW, ALG_HPKE, HpkePublicKey, SealedRecord
from patientkey.crypto.certkey import verify_hpke_public
from patientkey.errors import (
    Conflict,
    CryptoError,
    Forbidden,
    InvalidInput,
    NotFound,
    PatientKeyError,
    PeerUnavailable,
)
from patientkey.pki import peer_name_from_cert, valid_party_name
from patientkey.protocol.messages import (
    BindReply,
    BindRequest,
    BindVerify,
    DispenseRequest,
    DispenseState,
    FetchRequest,
    ListRequest,
    Message,
    RecordEntry,
    RecordList,
    RecordReply,
    RecordRequest,
    RecordsAnnounce,
    RotateAck,
    RotateCommit,
    RotatePrepare,
    ShareDelivery,
    ShareOffer,
    ShareReceipt,
    ShareRelay,
    ShareRequest,
)
from patientkey.protocol.routes import (
    HIS_BIND_VERIFY,
    HIS_RECORD_GET,
    HIS_ROTATE_COMMIT,
    HIS_ROTATE_PREPARE,
    TP_SHARE_RECEIVE,
)
from patientkey.protocol.states import Dispense, DispenseEvent, dispense_next
from patientkey.storage.repos import Dispense as StoredClaim
from patientkey.storage.repos import PlatformRecord, PlatformRepository, Store, ThirdParty
from patientkey.storage.schema import DispenseState as StoredDispense

__all__ = [
    "NOT_YOURS",
    "BindLimits",
    "PeerPort",
    "PlatformCore",
    "register_third_party",
]

M = TypeVar("M", bound=Message)

#: One text for "not yours" and "absent" (protocol.md, fetch step 2): no oracle.
NOT_YOURS: Final = "no such record for this account"
_NOT_SHARED: Final = "no such prescription shared with this third party"
_UNKNOWN_THIRD_PARTY: Final = "unknown third party"
_PRESCRIPTION: Final = "prescription"
#: What a share lets the third party do with the record (the grant must allow it).
_SHARE_ACTION: Final = "view"


class PeerPort(Protocol):
    """How the core reaches a hospital or third party (``PeerClient`` has this shape)."""

    def call(self, path: str, message: Message, reply: type[M]) -> M: ...


class GrantRef(Protocol):
    """The grant a share or a use happened under (``authz.grants.Grant`` has this shape)."""

    @property
    def grant_id(self) -> str: ...


class UseRef(Protocol):
    """An accepted use of an access token (``authz.grants.Use`` has this shape)."""

    @property
    def grant(self) -> GrantRef: ...


class GrantGate(Protocol):
    """The authorization unit's live checks (``platform.authorization``)."""

    def require_grant(
        self, *, user_id: str, client_id: str, action: Action, record: RecordRef
    ) -> GrantRef: ...

    def check_use(
        self, token: str | None, *, client_id: str, action: Action, record: RecordRef, owner: str
    ) -> UseRef: ...


@dataclass(frozen=True, slots=True)
class BindLimits:
    """Bind attempts allowed per (HIS_ID, Patient_ID) and per User_ID in a fixed window."""

    per_patient: int = 5
    per_user: int = 20
    window: timedelta = field(default=timedelta(minutes=15))

    def __post_init__(self) -> None:
        if self.per_patient < 1 or self.per_user < 1 or self.window <= timedelta(0):
            raise InvalidInput("bind limits must be positive")


class PlatformCore:
    """The platform's operations over a store and its peers' ports."""

    def __init__(
        self,
        store: Store[PlatformRepository],
        *,
        hospitals: Mapping[str, PeerPort],
        third_parties: Mapping[str, PeerPort],
        grants: GrantGate,
        limits: BindLimits | None = None,
        ca_certificate: x509.Certificate | None = None,
    ) -> None:
        overlap = set(hospitals) & set(third_parties)
        if overlap:
            raise InvalidInput(f"{sorted(overlap)} cannot be hospital and third party")
        self._store = store
        self._hospitals = dict(hospitals)
        self._third_parties = dict(third_parties)
        self._limits = limits or BindLimits()
        self._ca = ca_certificate
        self._grants = grants

    @property
    def hospitals(self) -> frozenset[str]:
        return frozenset(self._hospitals)

    @property
    def third_parties(self) -> frozenset[str]:
        return frozenset(self._third_parties)

    # ── who is calling ────────────────────────────────────────────────────────

    def is_wallet(self, caller: str) -> bool:
        """Every authenticated caller that is no configured hospital or third party."""
        return caller not in self._hospitals and caller not in self._third_parties

    def _wallet(self, caller: str, user_id: str) -> None:
        if not self.is_wallet(caller):
            raise Forbidden("this operation is for wallets")
        if user_id != caller:
            raise Forbidden("user_id does not match the client certificate")

    def _hospital(self, his_id: str) -> PeerPort:
        port = self._hospitals.get(his_id)
        if port is None:
            raise NotFound("unknown hospital")
        return port

    # ── 1. bind ────────────────────────────────────────────────────────────────

    def bind(self, caller: str, request: BindRequest) -> BindReply:
        """Bind ``User_ID`` to a HIS patient once the HIS accepted the proof."""
        self._wallet(caller, request.user_id)
        user, his, patient = request.user_id, request.his_id, request.patient_id
        port = self._hospital(his)
        limits = self._limits
        # Counted in a transaction of their own: a refused proof still counts.
        with self._store.transaction() as repo:
            repo.get_account(user)
            repo.hit(_patient_bucket(his, patient), limits.per_patient, limits.window)
            repo.hit(f"bind:user:{user}", limits.per_user, limits.window)
            repo.log_event("bind.attempt", user, {"his_id": his})
        verify = BindVerify(
            user_id=user, patient_id=patient, nonce=request.nonce, proof=request.proof
        )
        try:
            reply = port.call(HIS_BIND_VERIFY, verify, BindReply)
        except PatientKeyError as exc:
            with self._store.transaction() as repo:
                repo.log_event("bind.refused", user, {"his_id": his, "status": exc.status})
            raise
        if (reply.his_id, reply.patient_id) != (his, patient):
            raise PeerUnavailable("the hospital answered for another patient")
        with self._store.transaction() as repo:
            repo.bind(user, his, patient)
            repo.log_event("bind", user, {"his_id": his})
        return reply

    # ── 2. rotate KUH ─────────────────────────────────────────────────────────

    def rotate_prepare(self, caller: str, request: RotatePrepare) -> RotateAck:
        """Forward the wrapped new KUH to the HIS with the bound Patient_ID."""
        self._wallet(caller, request.user_id)
        patient = self._bound_patient(request.user_id, request.his_id)
        forward = request.model_copy(update={"patient_id": patient})
        ack = self._hospital(request.his_id).call(HIS_ROTATE_PREPARE, forward, RotateAck)
        self._check_ack(ack, request.his_id, request.new_version)
        self._log("rotate.prepare", request.user_id, his_id=request.his_id, v=request.new_version)
        return ack

    def rotate_commit(self, caller: str, request: RotateCommit) -> RotateAck:
        """Forward the commit proof to the HIS with the bound Patient_ID."""
        self._wallet(caller, request.user_id)
        patient = self._bound_patient(request.user_id, request.his_id)
        forward = request.model_copy(update={"patient_id": patient})
        ack = self._hospital(request.his_id).call(HIS_ROTATE_COMMIT, forward, RotateAck)
        self._check_ack(ack, request.his_id, request.new_version)
        self._log("rotate.commit", request.user_id, his_id=request.his_id, v=request.new_version)
        return ack

    def _bound_patient(self, user: str, his: str) -> str:
        self._hospital(his)
        try:
            with self._store.transaction() as repo:
                return repo.get_binding(user, his).patient_id
        except NotFound:
            raise NotFound("no binding at this hospital") from None

    @staticmethod
    def _check_ack(ack: RotateAck, his: str, version: int) -> None:
        if (ack.his_id, ack.new_version) != (his, version):
            raise PeerUnavailable("the hospital acknowledged another rotation")

    # ── records announced by a hospital ──────────────────────────────────────

    def announce(self, caller: str, request: RecordsAnnounce) -> RecordList:
        """Note that the HIS holds these records for a patient (metadata only)."""
        if caller not in self._hospitals:
            raise Forbidden("only hospitals announce records")
        with self._store.transaction() as repo:
            for record in request.records:
                repo.announce_record(caller, record.p_id, request.patient_id, record.record_type, 0)
            repo.log_event(
                "records.announce", None, {"his_id": caller, "count": len(request.records)}
            )
        return RecordList(records=[])

    # ── 3. list and fetch ─────────────────────────────────────────────────────

    def list_records(self, caller: str, request: ListRequest) -> RecordList:
        """What the caller's bindings give it: ids, types, fetch/dispense/share state."""
        self._wallet(caller, request.user_id)
        with self._store.transaction() as repo:
            listed = repo.listing(request.user_id)
            repo.log_event("records.list", request.user_id, {"count": len(listed)})
        return RecordList(
            records=[
                RecordEntry(
                    his_id=r.his_id,
                    p_id=r.p_id,
                    record_type=_RECORD_TYPES[r.record_type],
                    fetched=r.fetched,
                    dispense=None if r.dispense is None else _STATES[r.dispense.value],
                    shared_with=list(r.shared_with),
                )
                for r in listed
            ]
        )

    def fetch(self, caller: str, request: FetchRequest) -> RecordReply:
        """The sealed record; asks the HIS only if the platform holds no ciphertext yet."""
        self._wallet(caller, request.user_id)
        record = self._sealed(
            request.user_id, his=request.his_id, p_id=request.p_id, event="record.fetch", detail={}
        )
        assert record.sealed is not None  # for mypy: _sealed returns a fetched record
        return RecordReply(his_id=record.his_id, p_id=record.p_id, sealed=record.sealed)

    def _owned(self, repo: PlatformRepository, user: str, his: str, p_id: str) -> PlatformRecord:
        """The record if ``user`` is bound to its patient; else NotFound with one text."""
        try:
            patient = repo.get_binding(user, his).patient_id
            record = repo.get_record(his, p_id)
        except NotFound:
            raise NotFound(NOT_YOURS) from None
        if record.patient_id != patient:
            raise NotFound(NOT_YOURS)
        return record

    def _sealed(
        self,
        user: str,
        *,
        his: str,
        p_id: str,
        event: str,
        detail: Mapping[str, str | int | bool],
        check: Callable[[PlatformRepository, PlatformRecord], None] | None = None,
    ) -> PlatformRecord:
        """Ownership (+ ``check``), then the stored ciphertext, fetched from the HIS once."""
        with self._store.transaction() as repo:
            record = self._owned(repo, user, his, p_id)
            if check is not None:
                check(repo, record)
            if record.sealed is not None:
                repo.log_event(event, user, {"his_id": his, "p_id": p_id, **detail})
                return record
        port = self._hospitals.get(his)
        if port is None:
            raise PeerUnavailable("the record's hospital is not configured")
        reply = port.call(
            HIS_RECORD_GET, RecordRequest(patient_id=record.patient_id, p_id=p_id), RecordReply
        )
        _check_sealed(reply, his, record.patient_id, p_id)
        with self._store.transaction() as repo:
            if check is not None:
                check(repo, record)
            stored = repo.store_sealed(his, p_id, reply.sealed)  # first writer wins
            repo.log_event("record.stored", user, {"his_id": his, "p_id": p_id})
            repo.log_event(event, user, {"his_id": his, "p_id": p_id, "from_his": True, **detail})
        return stored

    # ── 4. share with a third party ───────────────────────────────────────────

    def share_offer(self, caller: str, request: ShareRequest) -> ShareOffer:
        """The stored ciphertext and the third party's certified HPKE key."""
        self._wallet(caller, request.user_id)
        with self._store.transaction() as repo:
            third_party = self._registered(repo, request.b_id)
            ref = _ref(self._owned(repo, request.user_id, request.his_id, request.p_id))
        # Before the HIS is asked for anything; the gate has its own transaction, never
        # nested in one of ours (SQLite's write lock).
        grant = self._grants.require_grant(
            user_id=request.user_id, client_id=request.b_id, action=_SHARE_ACTION, record=ref
        )
        record = self._sealed(
            request.user_id,
            his=request.his_id,
            p_id=request.p_id,
            event="share.offer",
            detail={"b_id": request.b_id, "grant_id": grant.grant_id},
            check=_not_completed,
        )
        assert record.sealed is not None
        if not third_party.hpke_signature:
            raise Conflict(f"{third_party.b_id} has no certified HPKE key: re-register it")
        return ShareOffer(
            his_id=record.his_id,
            p_id=record.p_id,
            b_id=third_party.b_id,
            sealed=record.sealed,
            hpke_public=third_party.hpke_public,
            certificate_pem=third_party.certificate_pem,
            hpke_signature=third_party.hpke_signature,
        )

    def share_deliver(self, caller: str, request: ShareDelivery) -> ShareReceipt:
        """Check the re-sealed record against the stored one, relay it, keep the receipt."""
        self._wallet(caller, request.user_id)
        if (request.kind == "hpke") != (request.kub_version == 0):
            raise InvalidInput("kub_version is 0 exactly for kind=hpke")
        user, his, p_id, b_id = request.user_id, request.his_id, request.p_id, request.b_id
        with self._store.transaction() as repo:
            record = self._owned(repo, user, his, p_id)
            self._registered(repo, b_id)
            _not_completed(repo, record)
        if record.sealed is None:
            raise Conflict("ask for a share offer first")
        # Checked again at delivery: a grant revoked since the offer stops the share.
        grant = self._grants.require_grant(
            user_id=user, client_id=b_id, action=_SHARE_ACTION, record=_ref(record)
        )
        _check_delivery(record.sealed, request)
        relay = ShareRelay(
            user_id=user,
            his_id=his,
            p_id=p_id,
            kind=request.kind,
            kub_version=request.kub_version,
            sealed=request.sealed,
            next_kub=request.next_kub,
        )
        receipt = self._third_parties[b_id].call(TP_SHARE_RECEIVE, relay, ShareReceipt)
        if (receipt.b_id, receipt.p_id) != (b_id, p_id) or (
            receipt.accepted and receipt.kub_version < 1
        ):
            raise PeerUnavailable("the third party's receipt does not answer this share")
        detail: dict[str, str | int | bool] = {
            "his_id": his,
            "p_id": p_id,
            "b_id": b_id,
            "grant_id": grant.grant_id,
            "kind": request.kind,
            "kub_version": receipt.kub_version,
            "accepted": receipt.accepted,
        }
        with self._store.transaction() as repo:
            if receipt.accepted:
                share = repo.add_share(
                    uuid.uuid4().hex,
                    his_id=his,
                    p_id=p_id,
                    user_id=user,
                    b_id=b_id,
                    kind=request.kind,
                    kub_version=receipt.kub_version,
                )
                repo.mark_delivered(share.share_id)
                if record.record_type == _PRESCRIPTION:
                    repo.open_dispense(his, p_id)
                repo.log_event("share.deliver", user, detail)
            else:
                repo.log_event("share.refused", user, {**detail, "reason": receipt.reason})
        return receipt

    def _registered(self, repo: PlatformRepository, b_id: str) -> ThirdParty:
        if b_id not in self._third_parties:
            raise NotFound(_UNKNOWN_THIRD_PARTY)
        try:
            return repo.get_third_party(b_id)
        except NotFound:
            raise NotFound(_UNKNOWN_THIRD_PARTY) from None

    # ── dispense ──────────────────────────────────────────────────────────────

    def dispense(self, caller: str, request: DispenseRequest) -> DispenseState:
        """Move the prescription's exclusive dispense claim (protocol.states table)."""
        if caller not in self._third_parties or request.b_id != caller:
            raise Forbidden("only the third party itself may dispense")
        his, p_id, b_id = request.his_id, request.p_id, request.b_id
        with self._store.transaction() as repo:
            _, owners = _shared_claim(repo, his, p_id, b_id)
        use = self._grants.check_use(
            request.access_token,
            client_id=b_id,
            action="use",
            record=RecordRef(record_type=_PRESCRIPTION, his_id=his, p_id=p_id),
            owner=owners[0],
        )
        with self._store.transaction() as repo:
            current, owners = _shared_claim(repo, his, p_id, b_id)
            event = DispenseEvent(request.action)
            # The table decides (and words the 409); the repository re-checks atomically.
            dispense_next(
                Dispense(current.state.value), event, actor=b_id, claimed_by=current.claimed_by
            )
            step = {
                DispenseEvent.CLAIM: repo.claim,
                DispenseEvent.COMPLETE: repo.complete,
                DispenseEvent.RELEASE: repo.release,
            }[event]
            new = step(his, p_id, b_id)
            repo.log_event(
                f"dispense.{event.value}",
                owners[0],
                {
                    "his_id": his,
                    "p_id": p_id,
                    "b_id": b_id,
                    "grant_id": use.grant.grant_id,
                    "state": new.state.value,
                },
            )
        return DispenseState(
            his_id=his, p_id=p_id, state=_STATES[new.state.value], claimed_by=new.claimed_by
        )

    # ── operator operations ───────────────────────────────────────────────────

    def register_third_party(self, export: Mapping[str, Any]) -> ThirdParty:
        """Register a third party from its export (see :func:`register_third_party`)."""
        return register_third_party(self._store, export, ca_certificate=self._ca)

    def _log(self, kind: str, user: str | None, **detail: str | int | bool) -> None:
        with self._store.transaction() as repo:
            repo.log_event(kind, user, detail)


# ── operator operations without a running platform ────────────────────────────


def register_third_party(
    store: Store[PlatformRepository],
    export: Mapping[str, Any],
    *,
    ca_certificate: x509.Certificate | None,
) -> ThirdParty:
    """Register a third party from its ``patientkey thirdparty export`` JSON.

    Checks: the HPKE public key is a valid 1216-byte ML-KEM-768+X25519 key; the
    certificate names ``b_id`` as its CN (and was issued by our CA, when known); the
    certificate's key signed the HPKE key (``crypto.certkey``), so wallets can check
    that the platform hands out the third party's own key.
    """
    b_id = export.get("b_id")
    if not isinstance(b_id, str) or not valid_party_name(b_id):
        raise InvalidInput("b_id must be a valid party name")
    hpke_public = _b64url(export.get("hpke_public"), "hpke_public")
    HpkePublicKey.from_bytes(hpke_public)
    pem = export.get("certificate_pem")
    if not isinstance(pem, str):
        raise InvalidInput("certificate_pem must be PEM text")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidInput("certificate_pem is not a PEM certificate") from exc
    if peer_name_from_cert(cert) != b_id:
        raise InvalidInput("the certificate does not name this b_id")
    if ca_certificate is not None:
        try:
            cert.verify_directly_issued_by(ca_certificate)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise InvalidInput("the certificate was not issued by our CA") from exc
    signature = _b64url(export.get("hpke_signature"), "hpke_signature")
    try:
        verify_hpke_public(pem, b_id, hpke_public, signature)
    except CryptoError as exc:
        raise InvalidInput("hpke_signature is not the certificate key's signature") from exc
    name = export.get("display_name", b_id)
    if not isinstance(name, str):
        raise InvalidInput("display_name must be text")
    with store.transaction() as repo:
        third_party = repo.register_third_party(b_id, name, hpke_public, pem, signature)
        repo.log_event("thirdparty.register", None, {"b_id": b_id})
    return third_party


# ── helpers ──────────────────────────────────────────────────────────────────


def _ref(record: PlatformRecord) -> RecordRef:
    return RecordRef(
        record_type=_RECORD_TYPES[record.record_type], his_id=record.his_id, p_id=record.p_id
    )


def _patient_bucket(his: str, patient: str) -> str:
    # Hashed: bounded length, and the bucket table needs no patient identifiers.
    digest = hashlib.sha256(f"{his}\x00{patient}".encode()).hexdigest()[:32]
    return f"bind:patient:{digest}"


# The store keeps what the message models accepted; these give the models' literals back.
_RECORD_TYPES: Final[dict[str, Literal["prescription", "report"]]] = {
    "prescription": "prescription",
    "report": "report",
}
_STATES: Final[dict[str, Literal["open", "claimed", "completed"]]] = {
    "open": "open",
    "claimed": "claimed",
    "completed": "completed",
}


def _not_completed(repo: PlatformRepository, record: PlatformRecord) -> None:
    try:
        state = repo.get_dispense(record.his_id, record.p_id).state
    except NotFound:
        return
    if state is StoredDispense.COMPLETED:
        raise Conflict("the prescription is completed: no more shares")


def _shared_claim(
    repo: PlatformRepository, his: str, p_id: str, b_id: str
) -> tuple[StoredClaim, list[str]]:
    """The prescription's claim and the accounts that shared it with ``b_id`` (else 404)."""
    try:
        record = repo.get_record(his, p_id)
        shares = repo.shares_of_record(his, p_id)
        claim = repo.get_dispense(his, p_id)
    except NotFound:
        raise NotFound(_NOT_SHARED) from None
    owners = [s.user_id for s in shares if s.b_id == b_id and s.delivered]
    if record.record_type != _PRESCRIPTION or not owners:
        raise NotFound(_NOT_SHARED)
    return claim, owners


def _check_sealed(reply: RecordReply, his: str, patient: str, p_id: str) -> None:
    """The HIS's reply is a well-formed sealed record of this patient's P_ID (no decryption)."""
    if (reply.his_id, reply.p_id) != (his, p_id):
        raise PeerUnavailable("the hospital answered with another record")
    try:
        sealed = SealedRecord.from_bytes(reply.sealed)
    except InvalidInput as exc:
        raise PeerUnavailable("the hospital answered with a malformed sealed record") from exc
    if (sealed.record_id, sealed.owner) != (p_id, f"{his}/{patient}"):
        raise PeerUnavailable("the hospital sealed the record for another owner or id")


def _check_delivery(stored_bytes: bytes, request: ShareDelivery) -> None:
    """The delivered record is the stored one plus exactly one entry for this third party.

    Protected header, iv, ciphertext and tag must be byte-identical (so the body is
    the one the HIS sealed) and every stored recipient entry must still be there.
    """
    differs = InvalidInput("the delivered record differs from the stored record")
    try:
        delivered = SealedRecord.from_bytes(request.sealed)
    except InvalidInput:
        raise differs from None
    stored = SealedRecord.from_bytes(stored_bytes)
    same_body = (delivered.protected, delivered.iv, delivered.ciphertext, delivered.tag) == (
        stored.protected,
        stored.iv,
        stored.ciphertext,
        stored.tag,
    )
    added = [e for e in delivered.recipients if e not in stored.recipients]
    kept = all(e in delivered.recipients for e in stored.recipients)
    if not same_body or not kept or len(added) != 1:
        raise differs
    entry = added[0]
    wanted: tuple[str, str, int | None] = (
        (ALG_HPKE, f"kbp:{request.b_id}", None)
        if request.kind == "hpke"
        else (ALG_A256KW, f"kub:{request.b_id}", request.kub_version)
    )
    if (entry.alg, entry.kid, entry.version) != wanted:
        raise InvalidInput("the added recipient entry is not for this third party and key")


def _b64url(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be base64url text")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError as exc:
        raise InvalidInput(f"{name} must be base64url text") from exc
