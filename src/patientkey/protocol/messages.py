"""Every message the parties exchange, as frozen, self-checking pydantic models.

A message travels as the UTF-8 JSON payload of a hop envelope whose ``mty``
header is the model's ``MTYPE``; binary fields are base64url without padding.
Each model refuses unknown fields and out-of-range values on creation, so a
handler only ever sees well-formed input (limits on by default).

Who sends what (DESIGN.md, "The four prescription operations"):

========================  ==================  =========================================
message                   hop                 purpose
========================  ==================  =========================================
BindRequest               wallet → platform   User_ID, HIS_ID, Patient_ID, nonce, proof
BindVerify                platform → HIS      Patient_ID, User_ID, nonce, proof
BindReply                 HIS → platform →    {f(n)}KUH, the mutual-authentication reply
                          wallet
RotatePrepare             wallet → platform   {KUH_new}KUH_cur, new version
  (+ Patient_ID)          platform → HIS
RotateAck                 HIS → … → wallet    MAC(KUH_new, …): the HIS holds the new key
RotateCommit              wallet → … → HIS    MAC(KUH_new, …): switch to the new key
RecordsAnnounce           HIS → platform      metadata only: P_ID and record type
ListRequest / RecordList  wallet ↔ platform   what the wallet may fetch, dispense state
FetchRequest              wallet → platform   User_ID, HIS_ID, P_ID
RecordRequest             platform → HIS      Patient_ID, P_ID
RecordReply               … → wallet          the sealed record (ciphertext)
ShareRequest / ShareOffer wallet ↔ platform   ciphertext + third party's HPKE key
ShareDelivery             wallet → platform   the record + one entry for B, next KUB wrapped
ShareRelay                platform → third    the sealed record with that entry
ShareReceipt              third → … → wallet  which KUB version it now holds
DispenseRequest           third → platform    claim / complete / release (+ access token)
DispenseState             platform → third    the state after it
========================  ==================  =========================================

Patient-approved authorization (DESIGN.md seed 1; docs/protocol.md "Authorization"):
the app's side is standard OAuth/CIBA over HTTPS; the patient's side travels in hop
envelopes like every other wallet message:

========================  ==================  =========================================
IdentityEnroll            wallet → platform   set password, device key, TOTP, contacts
IdentityState             platform → wallet   enrolled proof kinds (+ TOTP URI once)
InboxRequest / Inbox      wallet ↔ platform   pending requests (long poll): who, what,
                                              why, how long, which proofs, the nonce
OtpSend / OtpSent         wallet ↔ platform   send a one-time code by SMS or email
AuthzDecision             wallet → platform   approve (all or part, with proofs) or deny
AuthzOutcome              platform → wallet   the grant (or the denial)
GrantsRequest / GrantList wallet ↔ platform   the patient's grants
GrantRevoke               wallet → platform   revoke one (answered with GrantList)
AuditSyncRequest / AuditSync  wallet ↔ platform   the transparency log: signed head, consistency
                          proof, every event of the account with its inclusion proof
========================  ==================  =========================================
"""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, ValidationError
from pydantic.functional_validators import BeforeValidator

from patientkey.errors import InvalidInput, PayloadTooLarge

__all__ = [
    "MESSAGE_TYPES",
    "AccessToken",
    "AuditSync",
    "AuditSyncRequest",
    "AuditedEvent",
    "AuthzDecision",
    "AuthzOutcome",
    "B64Bytes",
    "BindReply",
    "BindRequest",
    "BindVerify",
    "Details",
    "DispenseRequest",
    "DispenseState",
    "Environment",
    "FetchRequest",
    "GrantList",
    "GrantRevoke",
    "GrantView",
    "GrantsRequest",
    "Ident",
    "IdentityEnroll",
    "IdentityState",
    "Inbox",
    "InboxRequest",
    "ListRequest",
    "Message",
    "OtpSend",
    "OtpSent",
    "PendingMethod",
    "PendingRequest",
    "Proofs",
    "RecordEntry",
    "RecordList",
    "RecordReply",
    "RecordRequest",
    "RecordsAnnounce",
    "RotateAck",
    "RotateCommit",
    "RotatePrepare",
    "ShareDelivery",
    "ShareOffer",
    "ShareReceipt",
    "ShareRelay",
    "ShareRequest",
    "TreeHeadView",
    "decode_message",
    "encode_message",
]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_MAX_U63 = 2**63 - 1
_WEBAUTHN_JSON = 16 * 1024
MAX_BLOB_BYTES = 3 * 1024 * 1024
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def _check_ident(value: object) -> str:
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise ValueError(
            "must be 1-128 characters of A-Z a-z 0-9 . _ : @ - (starting alphanumeric)"
        )
    return value


def _b64decode(value: object) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        if len(value) > MAX_BLOB_BYTES * 4 // 3 + 4 or not re.fullmatch(r"[A-Za-z0-9_-]*", value):
            raise ValueError("must be base64url without padding")
        try:
            data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except ValueError as exc:
            raise ValueError("must be base64url without padding") from exc
    else:
        raise ValueError("must be a base64url string")  # noqa: TRY004 - pydantic wants ValueError
    if len(data) > MAX_BLOB_BYTES:
        raise ValueError("too large")
    return data


def _b64encode(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")


M = TypeVar("M", bound="Message")

Ident = Annotated[str, BeforeValidator(_check_ident)]
B64Bytes = Annotated[
    bytes, BeforeValidator(_b64decode), PlainSerializer(_b64encode, return_type=str)
]
Version = Annotated[int, Field(ge=1, le=2**31)]
RecordType = Literal["prescription", "report"]


class Message(BaseModel):
    """Base of every message: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)
    MTYPE: ClassVar[str] = ""


class BindRequest(Message):
    MTYPE = "bind.request"
    user_id: Ident
    his_id: Ident
    patient_id: Ident
    nonce: B64Bytes = Field(min_length=32, max_length=32)
    proof: B64Bytes = Field(min_length=32, max_length=32)


class BindVerify(Message):
    MTYPE = "bind.verify"
    user_id: Ident
    patient_id: Ident
    nonce: B64Bytes = Field(min_length=32, max_length=32)
    proof: B64Bytes = Field(min_length=32, max_length=32)


class BindReply(Message):
    MTYPE = "bind.reply"
    his_id: Ident
    patient_id: Ident
    reply: B64Bytes = Field(min_length=1, max_length=256)


class RotatePrepare(Message):
    MTYPE = "rotate.prepare"
    user_id: Ident
    his_id: Ident
    patient_id: Ident | None = None  # added by the platform when it forwards
    current_version: Version
    new_version: Version
    wrapped_key: B64Bytes = Field(min_length=40, max_length=128)
    nonce: B64Bytes = Field(min_length=32, max_length=32)


class RotateAck(Message):
    MTYPE = "rotate.ack"
    his_id: Ident
    new_version: Version
    ack: B64Bytes = Field(min_length=32, max_length=32)


class RotateCommit(Message):
    MTYPE = "rotate.commit"
    user_id: Ident
    his_id: Ident
    patient_id: Ident | None = None
    new_version: Version
    nonce: B64Bytes = Field(min_length=32, max_length=32)
    proof: B64Bytes = Field(min_length=32, max_length=32)


class AnnouncedRecord(Message):
    p_id: Ident
    record_type: RecordType


class RecordsAnnounce(Message):
    MTYPE = "records.announce"
    patient_id: Ident
    records: list[AnnouncedRecord] = Field(min_length=1, max_length=10_000)


class ListRequest(Message):
    MTYPE = "records.list"
    user_id: Ident


class RecordEntry(Message):
    his_id: Ident
    p_id: Ident
    record_type: RecordType
    fetched: bool
    dispense: Literal["open", "claimed", "completed"] | None = None
    shared_with: list[Ident] = Field(default_factory=list, max_length=1000)


class RecordList(Message):
    MTYPE = "records.listed"
    records: list[RecordEntry] = Field(max_length=100_000)


class FetchRequest(Message):
    MTYPE = "record.fetch"
    user_id: Ident
    his_id: Ident
    p_id: Ident


class RecordRequest(Message):
    MTYPE = "record.request"
    patient_id: Ident
    p_id: Ident


class RecordReply(Message):
    MTYPE = "record.reply"
    his_id: Ident
    p_id: Ident
    sealed: B64Bytes = Field(min_length=1)


class ShareRequest(Message):
    MTYPE = "share.request"
    user_id: Ident
    his_id: Ident
    p_id: Ident
    b_id: Ident


class ShareOffer(Message):
    MTYPE = "share.offer"
    his_id: Ident
    p_id: Ident
    b_id: Ident
    sealed: B64Bytes = Field(min_length=1)
    hpke_public: B64Bytes = Field(min_length=1216, max_length=1216)
    certificate_pem: str = Field(min_length=1, max_length=16_384)
    # The third party's signature over hpke_public with its certificate key (crypto.certkey).
    hpke_signature: B64Bytes = Field(min_length=1, max_length=512)


class ShareDelivery(Message):
    MTYPE = "share.deliver"
    user_id: Ident
    his_id: Ident
    p_id: Ident
    b_id: Ident
    kind: Literal["hpke", "kub"]
    kub_version: int = Field(ge=0, le=2**31)  # 0 with kind=hpke, else the KUB used
    # The stored record with one more recipient entry (for b_id); the platform
    # checks the body is byte-identical to what it stores before relaying it.
    sealed: B64Bytes = Field(min_length=1)
    next_kub: B64Bytes = Field(min_length=1, max_length=4096)  # wrapped KUB_{v+1}


class ShareRelay(Message):
    MTYPE = "share.relay"
    user_id: Ident
    his_id: Ident
    p_id: Ident
    kind: Literal["hpke", "kub"]
    kub_version: int = Field(ge=0, le=2**31)
    sealed: B64Bytes = Field(min_length=1)
    next_kub: B64Bytes = Field(min_length=1, max_length=4096)


class ShareReceipt(Message):
    MTYPE = "share.receipt"
    b_id: Ident
    p_id: Ident
    accepted: bool
    kub_version: int = Field(ge=0, le=2**31)  # the version the third party now holds
    reason: Literal["ok", "kub-unknown", "completed"] = "ok"


# An RFC 9068 access token (compact JWS); the platform verifies it and the live grant.
AccessToken = Annotated[str, Field(min_length=16, max_length=16_384, pattern=r"^[A-Za-z0-9_.-]+$")]


class DispenseRequest(Message):
    MTYPE = "dispense.request"
    b_id: Ident
    his_id: Ident
    p_id: Ident
    action: Literal["claim", "complete", "release"]
    access_token: AccessToken | None = None  # the platform refuses claims without one


class DispenseState(Message):
    MTYPE = "dispense.state"
    his_id: Ident
    p_id: Ident
    state: Literal["open", "claimed", "completed"]
    claimed_by: Ident | None = None


# ── patient-approved authorization (wallet ↔ platform) ──────────────────────────

Details = Annotated[list[dict[str, Any]], Field(min_length=1, max_length=32)]
"""RFC 9396 ``authorization_details`` as JSON; the platform parses them (authz.rar)."""
ProofKindName = Literal[
    "password", "totp", "otp_sms", "otp_email", "device_signature", "x509_signature", "webauthn"
]


class Environment(Message):
    """What the wallet says about where it runs; with the network the platform sees,
    a change triggers step-up (RFC 9470; DESIGN.md "login environment changed")."""

    user_agent: str = Field(min_length=1, max_length=256)
    device: Ident  # an install id the wallet keeps


class IdentityEnroll(Message):
    MTYPE = "identity.enroll"
    user_id: Ident
    environment: Environment
    password: str | None = Field(default=None, min_length=8, max_length=1024)
    current_password: str | None = Field(default=None, max_length=1024)
    device_key_pem: str | None = Field(default=None, max_length=8192)
    certificate_pem: str | None = Field(default=None, max_length=16_384)
    totp: bool = False  # ask for a (new) TOTP secret
    sms: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=254)
    # WebAuthn (passkeys): ask for registration options, then send the browser's
    # PublicKeyCredential (registration response JSON) back.
    webauthn_begin: bool = False
    webauthn_registration: str | None = Field(default=None, max_length=_WEBAUTHN_JSON)


class IdentityState(Message):
    MTYPE = "identity.state"
    user_id: Ident
    proofs: list[ProofKindName] = Field(max_length=16)
    device_key_ids: list[str] = Field(default_factory=list, max_length=64)
    totp_uri: str | None = Field(default=None, max_length=1024)  # only right after enrolling
    # PublicKeyCredentialCreationOptions JSON, only in answer to ``webauthn_begin``.
    webauthn_options: str | None = Field(default=None, max_length=_WEBAUTHN_JSON)
    webauthn_credential_ids: list[str] = Field(default_factory=list, max_length=64)


class InboxRequest(Message):
    MTYPE = "authz.inbox"
    user_id: Ident
    wait: int = Field(default=0, ge=0, le=30)  # long poll: seconds to wait for a request


class PendingMethod(Message):
    acr: str = Field(max_length=128)
    min_factors: int = Field(ge=1, le=16)
    one_of: list[ProofKindName] = Field(default_factory=list, max_length=16)
    description: str = Field(max_length=512)


class PendingRequest(Message):
    request_id: Ident
    client_id: Ident
    client_name: str = Field(max_length=256)
    scenario: Ident
    purpose: str = Field(max_length=512)
    binding_message: str | None = Field(default=None, max_length=256)
    authorization_details: Details
    method: PendingMethod
    expires_at: int
    nonce: B64Bytes = Field(min_length=32, max_length=32)  # the device/X.509 signatures cover it


class Inbox(Message):
    MTYPE = "authz.pending"
    requests: list[PendingRequest] = Field(max_length=1000)


class OtpSend(Message):
    MTYPE = "otp.send"
    user_id: Ident
    request_id: Ident
    channel: Literal["sms", "email"]


class OtpSent(Message):
    MTYPE = "otp.sent"
    challenge_id: str = Field(min_length=1, max_length=64)
    channel: Literal["sms", "email"]
    expires_at: int


class Proofs(Message):
    """The identity proofs of one decision; each present field is one proof."""

    password: str | None = Field(default=None, max_length=1024)
    totp: str | None = Field(default=None, max_length=16)
    otp_challenge_id: str | None = Field(default=None, max_length=64)
    otp_code: str | None = Field(default=None, max_length=16)
    device_key_id: str | None = Field(default=None, max_length=64)
    device_signature: B64Bytes | None = Field(default=None, max_length=8192)
    certificate_chain_pem: str | None = Field(default=None, max_length=32_768)
    x509_signature: B64Bytes | None = Field(default=None, max_length=1024)
    webauthn: str | None = Field(default=None, max_length=_WEBAUTHN_JSON)  # assertion JSON


class AuthzDecision(Message):
    MTYPE = "authz.decide"
    user_id: Ident
    request_id: Ident
    decision: Literal["approve", "deny"]
    environment: Environment
    # The approved subset (RFC 9396 narrowing); None approves everything asked.
    authorization_details: Details | None = None
    proofs: Proofs = Proofs()


class AuthzOutcome(Message):
    MTYPE = "authz.outcome"
    request_id: Ident
    state: Literal["approved", "denied"]
    grant_id: Ident | None = None
    acr: str | None = Field(default=None, max_length=128)
    authorization_details: Details | None = None


class GrantsRequest(Message):
    MTYPE = "grants.list"
    user_id: Ident


class GrantView(Message):
    grant_id: Ident
    client_id: Ident
    scenario: Ident
    status: Literal["active", "revoked", "expired"]
    authorization_details: Details
    acr: str = Field(max_length=128)
    proofs: list[ProofKindName] = Field(max_length=16)
    created_at: int
    expires_at: int
    revoked_at: int | None = None
    revoked_by: Literal["patient", "client"] | None = None


class GrantList(Message):
    MTYPE = "grants.listed"
    grants: list[GrantView] = Field(max_length=100_000)


class GrantRevoke(Message):
    MTYPE = "grants.revoke"
    user_id: Ident
    grant_id: Ident


class TreeHeadView(Message):
    """A signed tree head of the transparency log (``audit.sth.SignedTreeHead.to_dict``)."""

    log_id: str = Field(min_length=1, max_length=255)
    tree_size: int = Field(ge=0, le=_MAX_U63)
    timestamp: int = Field(ge=0, le=_MAX_U63)  # ms since the epoch
    root_hash: B64Bytes = Field(min_length=32, max_length=32)
    signature: B64Bytes = Field(min_length=64, max_length=64)


class AuditSyncRequest(Message):
    MTYPE = "audit.sync"
    user_id: Ident
    # The size of the last tree head the wallet accepted (0: none yet).
    known_size: int = Field(default=0, ge=0, le=_MAX_U63)
    # A later page: the size of the first page's head (proofs against it, no new head
    # sequenced) and the last leaf index already received.
    tree_size: int | None = Field(default=None, ge=0, le=_MAX_U63)
    after: int = Field(default=-1, ge=-1, le=_MAX_U63)


class AuditedEvent(Message):
    """One of the account's events: its leaf index, canonical entry and inclusion proof."""

    index: int = Field(ge=0, le=_MAX_U63)
    entry: B64Bytes = Field(min_length=1, max_length=16 * 1024)  # audit.entry.LogEntry bytes
    proof: list[B64Bytes] = Field(max_length=64)  # against ``AuditSync.sth``


class AuditSync(Message):
    """The latest signed head, its consistency with ``known_size`` and every event of
    the account, each with an inclusion proof against that head."""

    MTYPE = "audit.synced"
    sth: TreeHeadView
    log_key: B64Bytes = Field(min_length=32, max_length=32)  # Ed25519 public key (raw)
    consistency: list[B64Bytes] = Field(max_length=128)  # known_size -> sth.tree_size
    events: list[AuditedEvent] = Field(max_length=1000)  # a page, by leaf index
    more: bool = False  # more events: ask again with tree_size and after


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.MTYPE: cls
    for cls in (
        BindRequest,
        BindVerify,
        BindReply,
        RotatePrepare,
        RotateAck,
        RotateCommit,
        RecordsAnnounce,
        ListRequest,
        RecordList,
        FetchRequest,
        RecordRequest,
        RecordReply,
        ShareRequest,
        ShareOffer,
        ShareDelivery,
        ShareRelay,
        ShareReceipt,
        DispenseRequest,
        DispenseState,
        IdentityEnroll,
        IdentityState,
        InboxRequest,
        Inbox,
        OtpSend,
        OtpSent,
        AuthzDecision,
        AuthzOutcome,
        GrantsRequest,
        GrantList,
        GrantRevoke,
        AuditSyncRequest,
        AuditSync,
    )
}


def encode_message(message: Message) -> bytes:
    """The JSON payload of ``message`` (UTF-8, compact)."""
    return message.model_dump_json().encode("utf-8")


def decode_message(payload: bytes, expected: type[M]) -> M:
    """Parse ``payload`` as ``expected``; InvalidInput naming the first bad field."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(f"message exceeds {MAX_MESSAGE_BYTES} bytes")
    try:
        return expected.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(message)"
        raise InvalidInput(f"{expected.MTYPE}: {where}: {first.get('msg', 'invalid')}") from exc
