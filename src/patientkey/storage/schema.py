"""The tables of the three party databases, as SQLAlchemy 2 typed declarative models.

Each party owns its database and never reads another's, so each has its own
declarative base and :class:`~sqlalchemy.MetaData` (:data:`METADATA`). Mapped classes
end in ``Row`` (the repositories hand out frozen values, never these); two parties have
a ``records`` table, so those two classes carry the party in their name.

* **platform** — accounts, bindings ``(User_ID, HIS_ID) → Patient_ID``, ciphertext
  records ("blind storage": ``sealed`` is whatever the HIS sealed for the patient),
  third parties, shares, the dispense claim of a prescription, rate-limit buckets and
  the event log (metadata only, never health data); for the wallet hop (KUE) the
  platform's half of each wallet's pre-charged key pool, the public init messages of
  post-quantum exchanges and a replay guard shared by worker processes
  (``platform_0002``); for the authorization unit (OAuth/CIBA, ``platform_0004``) the
  CIBA authorization requests, grants with their FHIR Consent, registered OAuth
  clients, the patients' enrolled identity proofs (password hash, device keys,
  certificate, contacts, TOTP, one-time code challenges, lockout counters) and the
  token ledgers (revoked ``jti``, seen client-assertion ``jti``); the transparency log
  over the event log: each event's salt and leaf index, and the Merkle nodes
  (``platform_0006``);
* **hospital** — patients, KUH versions (wrapped by the hospital's own storage key;
  this layer stores bytes and never sees a KUH), FHIR records (bytes, possibly
  encrypted at rest by the caller);
* **thirdparty** — KUB versions per patient account, received sealed records, the
  third party's own view of its dispense claims.

Timestamps are timezone-aware UTC on every backend (:class:`UtcDateTime`). Enumerated
columns are strings with a named CHECK constraint rather than database enum types, so
that PostgreSQL has no extra type objects and SQLite and PostgreSQL enforce the same
values. Constraint names follow :data:`NAMING_CONVENTION`, and the migrations in
``storage/migrations/versions`` spell out the same names.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AUTH_REQUEST_STATES",
    "DEVICE_ALGORITHMS",
    "ID_LENGTH",
    "METADATA",
    "NAMING_CONVENTION",
    "OTP_CHANNELS",
    "TOTP_ALGORITHMS",
    "AccountRow",
    "AuditNodeRow",
    "AuthRequestRow",
    "BindingRow",
    "ClaimRow",
    "ClaimState",
    "ClientAssertionRow",
    "CredentialRow",
    "DeviceKeyRow",
    "DispenseRow",
    "DispenseState",
    "EventRow",
    "GrantRow",
    "HospitalBase",
    "HospitalRecordRow",
    "KeyState",
    "KubKeyRow",
    "KueDirection",
    "KueKeyRow",
    "KuhKeyRow",
    "LockoutRow",
    "OAuthClientRow",
    "OtpChallengeRow",
    "Party",
    "PatientRow",
    "PlatformBase",
    "PlatformRecordRow",
    "PqExchangeRow",
    "RateLimitRow",
    "ReceivedRow",
    "ReplayRow",
    "RevokedTokenRow",
    "ShareKind",
    "ShareRow",
    "ThirdPartyBase",
    "ThirdPartyRow",
    "TotpRow",
    "UtcDateTime",
    "WebAuthnChallengeRow",
    "WebAuthnCredentialRow",
]


class Party(enum.StrEnum):
    """Whose database: each party has its own schema, migrations and version table."""

    PLATFORM = "platform"
    HOSPITAL = "hospital"
    THIRDPARTY = "thirdparty"


ID_LENGTH: Final = 128
"""Longest identifier (User_ID, HIS_ID, Patient_ID, B_ID, P_ID, share id) accepted."""

NAMING_CONVENTION: Final[dict[str, str]] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC ``datetime`` in and out, on every backend.

    SQLite has no time zone type and hands back naive values; PostgreSQL's
    ``timestamptz`` hands back the session's zone. Naive input is refused rather than
    guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime refused: timestamps are timezone-aware UTC")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # Stored as ISO text without offset; it is UTC by the rule above.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _id(*args: Any, **kwargs: Any) -> Any:
    # ``Any``: the caller's annotation (``Mapped[str]`` or ``Mapped[str | None]``) rules.
    return mapped_column(String(ID_LENGTH), *args, **kwargs)


def _stamp(*, nullable: bool = False) -> Any:
    return mapped_column(UtcDateTime(), nullable=nullable)


def _in(column: str, values: Iterable[str]) -> str:
    """``column IN ('a', 'b')``: ``values`` is a StrEnum class or a tuple of strings."""
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


def _unix(*, nullable: bool = False) -> Any:
    """Unix seconds: the authorization core's time (JWT ``exp``/``iat``, CIBA expiry)."""
    return mapped_column(BigInteger(), nullable=nullable)


def _one_per_owner(table: str, owner: str, state: str) -> Index:
    """At most one key version in ``state`` per owner, enforced by the database."""
    where = text(f"state = '{state}'")
    return Index(
        f"uq_{table}_{owner}_{state}",
        owner,
        unique=True,
        sqlite_where=where,
        postgresql_where=where,
    )


class KeyState(enum.StrEnum):
    """Life cycle of a KUH or KUB version: ``pending`` → ``current`` → ``retired``."""

    PENDING = "pending"
    CURRENT = "current"
    RETIRED = "retired"


class ShareKind(enum.StrEnum):
    """How a share was sealed for the third party: HPKE to its KBP (first) or under a KUB."""

    HPKE = "hpke"
    KUB = "kub"


class DispenseState(enum.StrEnum):
    """The platform's dispense claim of a prescription (one pharmacy at a time)."""

    OPEN = "open"
    CLAIMED = "claimed"
    COMPLETED = "completed"


class KueDirection(enum.StrEnum):
    """Which way a wallet-hop (KUE) pool key carries messages."""

    TO_WALLET = "to_wallet"
    FROM_WALLET = "from_wallet"


class ClaimState(enum.StrEnum):
    """A third party's own view of its claim on a prescription."""

    PENDING = "pending"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    RELEASED = "released"


# ─────────────────────────────────────────────────────────────── platform


class PlatformBase(DeclarativeBase):
    """Declarative base of the platform database."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AccountRow(PlatformBase):
    __tablename__ = "accounts"

    user_id: Mapped[str] = _id(primary_key=True)
    created_at: Mapped[datetime] = _stamp()


class BindingRow(PlatformBase):
    """``(User_ID, HIS_ID) → Patient_ID``; a HIS patient belongs to one account."""

    __tablename__ = "bindings"
    __table_args__ = (UniqueConstraint("his_id", "patient_id"),)

    user_id: Mapped[str] = _id(ForeignKey("accounts.user_id"), primary_key=True)
    his_id: Mapped[str] = _id(primary_key=True)
    patient_id: Mapped[str] = _id()
    created_at: Mapped[datetime] = _stamp()


class PlatformRecordRow(PlatformBase):
    """A record the HIS announced; ``sealed`` holds its ciphertext once fetched."""

    __tablename__ = "records"
    __table_args__ = (Index(None, "his_id", "patient_id"),)

    his_id: Mapped[str] = _id(primary_key=True)
    p_id: Mapped[str] = _id(primary_key=True)
    patient_id: Mapped[str] = _id()
    record_type: Mapped[str] = mapped_column(String(64))
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary())
    size: Mapped[int] = mapped_column(Integer)
    announced_at: Mapped[datetime] = _stamp()
    fetched_at: Mapped[datetime | None] = _stamp(nullable=True)


class ThirdPartyRow(PlatformBase):
    __tablename__ = "third_parties"

    b_id: Mapped[str] = _id(primary_key=True)
    display_name: Mapped[str] = mapped_column(String(256))
    hpke_public: Mapped[bytes] = mapped_column(LargeBinary())
    certificate_pem: Mapped[str] = mapped_column(Text)
    registered_at: Mapped[datetime] = _stamp()
    # The third party's signature over hpke_public with its certificate key (crypto.certkey);
    # NULL for rows registered before platform_0003: such a key is not certified.
    hpke_signature: Mapped[bytes | None] = mapped_column(LargeBinary(), nullable=True)


class ShareRow(PlatformBase):
    """One re-sealed record key relayed to a third party (``kind`` says how it was sealed)."""

    __tablename__ = "shares"
    __table_args__ = (
        ForeignKeyConstraint(["his_id", "p_id"], ["records.his_id", "records.p_id"]),
        CheckConstraint(_in("kind", ShareKind), name="kind"),
        Index(None, "his_id", "p_id"),
        Index(None, "user_id", "b_id"),
    )

    share_id: Mapped[str] = _id(primary_key=True)
    his_id: Mapped[str] = _id()
    p_id: Mapped[str] = _id()
    user_id: Mapped[str] = _id(ForeignKey("accounts.user_id"))
    b_id: Mapped[str] = _id(ForeignKey("third_parties.b_id"))
    kind: Mapped[str] = mapped_column(String(8))
    kub_version: Mapped[int] = mapped_column(Integer)
    delivered: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = _stamp()


class DispenseRow(PlatformBase):
    """The exclusive dispense claim of a prescription; ``version`` counts transitions."""

    __tablename__ = "dispense"
    __table_args__ = (
        ForeignKeyConstraint(["his_id", "p_id"], ["records.his_id", "records.p_id"]),
        CheckConstraint(_in("state", DispenseState), name="state"),
    )

    his_id: Mapped[str] = _id(primary_key=True)
    p_id: Mapped[str] = _id(primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    claimed_by: Mapped[str | None] = _id(ForeignKey("third_parties.b_id"), nullable=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = _stamp()


class RateLimitRow(PlatformBase):
    """A fixed-window counter."""

    __tablename__ = "rate_limits"

    bucket: Mapped[str] = mapped_column(String(256), primary_key=True)
    window_start: Mapped[datetime] = _stamp()
    count: Mapped[int] = mapped_column(Integer)


class EventRow(PlatformBase):
    """What happened, when, to whom: identifiers and counts only, never health data."""

    __tablename__ = "event_log"
    __table_args__ = (Index(None, "user_id"),)

    # BIGINT on PostgreSQL; INTEGER on SQLite, where only that spelling is a rowid alias
    # (and so auto-increments).
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = _stamp()
    kind: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = _id(nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON())
    # The transparency log (``platform_0006``): 16 random bytes that keep the event's
    # leaf hash from confirming a guess (audit.entry), and its leaf in the Merkle log
    # once sequenced (NULL until then; unique, so no event is two leaves).
    salt: Mapped[bytes] = mapped_column(LargeBinary(16))
    leaf_index: Mapped[int | None] = mapped_column(BigInteger(), nullable=True, unique=True)


class AuditNodeRow(PlatformBase):
    """One hash of the transparency log: a leaf (level 0) or a complete subtree's root.

    Written once, never updated (``audit.log.NodeStore``): the primary key refuses a
    second write of ``(level, idx)``.
    """

    __tablename__ = "audit_nodes"

    level: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class KueKeyRow(PlatformBase):
    """The platform's half of a wallet's pre-charged KUE pool: one hop key each.

    Hop-key material for the wallet-platform link (never KUH, KUB or a DEK). A key is
    used once: taking it deletes the row in the same transaction.
    """

    __tablename__ = "kue_keys"
    __table_args__ = (
        CheckConstraint(_in("direction", KueDirection), name="direction"),
        Index(None, "user_id", "direction"),
    )

    key_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = _id(ForeignKey("accounts.user_id"))
    direction: Mapped[str] = mapped_column(String(16))
    key: Mapped[bytes] = mapped_column(LargeBinary())
    created_at: Mapped[datetime] = _stamp()


class PqExchangeRow(PlatformBase):
    """A wallet's post-quantum key exchange: its *public* init message, nothing secret.

    Any platform process holding the responder key re-derives the shared secrets from
    it, so every worker can open the wallet's envelopes.
    """

    __tablename__ = "pq_exchanges"

    user_id: Mapped[str] = _id(ForeignKey("accounts.user_id"), primary_key=True)
    exchange_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    init: Mapped[bytes] = mapped_column(LargeBinary())
    created_at: Mapped[datetime] = _stamp()


class ReplayRow(PlatformBase):
    """An accepted envelope ``(sender, jti)`` until it expires (replay guard across workers)."""

    __tablename__ = "replay_guard"
    __table_args__ = (Index(None, "expires_at"),)

    sender: Mapped[str] = _id(primary_key=True)
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[datetime] = _stamp()


# ─────────────────────────────────────────── platform: authorization unit (OAuth/CIBA)
# Values of the enumerated columns below, spelled out rather than imported so that this
# module stays free of the authorization core; tests/storage/test_contract_authz.py checks
# them against authz.ciba.CibaState, identity.device.DeviceAlgorithm, identity.otp.OtpChannel
# and identity.totp.TotpAlgorithm.

AUTH_REQUEST_STATES: Final = ("pending", "approved", "denied", "expired", "issued")
DEVICE_ALGORITHMS: Final = ("Ed25519", "ML-DSA-65")
OTP_CHANNELS: Final = ("sms", "email")
TOTP_ALGORITHMS: Final = ("SHA1", "SHA256", "SHA512")


class AuthRequestRow(PlatformBase):
    """A CIBA authorization request: the queried fields as columns, the rest in ``body``."""

    __tablename__ = "auth_requests"
    __table_args__ = (
        UniqueConstraint("request_id"),
        CheckConstraint(_in("state", AUTH_REQUEST_STATES), name="state"),
        # The wallet's "pending for me" query: equality on user and state, range on expiry.
        Index(None, "user_id", "state", "expires_at"),
    )

    auth_req_id: Mapped[str] = _id(primary_key=True)
    request_id: Mapped[str] = _id()
    user_id: Mapped[str] = _id()
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = _unix()
    expires_at: Mapped[int] = _unix()
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON())


class GrantRow(PlatformBase):
    """A grant (``body``: details, proofs, status…) and the FHIR Consent stored with it."""

    __tablename__ = "grants"
    __table_args__ = (Index(None, "user_id", "created_at"),)

    grant_id: Mapped[str] = _id(primary_key=True)
    user_id: Mapped[str] = _id()
    client_id: Mapped[str] = _id()
    created_at: Mapped[int] = _unix()
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON())
    consent: Mapped[dict[str, Any] | None] = mapped_column(JSON(), nullable=True)


class OAuthClientRow(PlatformBase):
    """A registered OAuth client: its metadata and public keys (JWKS) as JSON."""

    __tablename__ = "oauth_clients"

    client_id: Mapped[str] = _id(primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON())


class CredentialRow(PlatformBase):
    """A patient's single-valued proofs and contacts; NULL where none is enrolled."""

    __tablename__ = "credentials"

    user_id: Mapped[str] = _id(primary_key=True)
    password_hash: Mapped[str | None] = mapped_column(String(512), nullable=True)
    certificate_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    sms: Mapped[str | None] = mapped_column(String(320), nullable=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    environment: Mapped[str | None] = mapped_column(String(256), nullable=True)


class DeviceKeyRow(PlatformBase):
    """A wallet's registered device public key (what signature verification needs)."""

    __tablename__ = "device_keys"
    __table_args__ = (CheckConstraint(_in("algorithm", DEVICE_ALGORITHMS), name="algorithm"),)

    user_id: Mapped[str] = _id(primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    public_bytes: Mapped[bytes] = mapped_column(LargeBinary())
    created_at: Mapped[int] = _unix()


class TotpRow(PlatformBase):
    """A TOTP authenticator: sealed secret and its tag, parameters, the last step accepted.

    ``secret_sealed`` is the secret under the authorization unit's at-rest key
    (:class:`~patientkey.crypto.vault.KeyVault`, bound to the row's user id);
    ``secret_tag`` an HMAC-SHA256 of it, what a compare-and-set matches.
    """

    __tablename__ = "totp_enrollments"
    __table_args__ = (CheckConstraint(_in("algorithm", TOTP_ALGORITHMS), name="algorithm"),)

    user_id: Mapped[str] = _id(primary_key=True)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary())
    secret_tag: Mapped[bytes] = mapped_column(LargeBinary(32))
    digits: Mapped[int] = mapped_column(Integer)
    period: Mapped[int] = mapped_column(Integer)
    algorithm: Mapped[str] = mapped_column(String(8))
    last_step: Mapped[int | None] = mapped_column(BigInteger(), nullable=True)


class OtpChallengeRow(PlatformBase):
    """A one-time code sent by SMS or email: its MAC (never the code), expiry, attempts."""

    __tablename__ = "otp_challenges"
    __table_args__ = (
        CheckConstraint(_in("channel", OTP_CHANNELS), name="channel"),
        Index(None, "expires_at"),
    )

    challenge_id: Mapped[str] = _id(primary_key=True)
    user_id: Mapped[str] = _id()
    request_id: Mapped[str] = _id()
    channel: Mapped[str] = mapped_column(String(8))
    code_mac: Mapped[bytes] = mapped_column(LargeBinary())
    # Double, not unix seconds: identity.otp keeps fractional expiry times.
    expires_at: Mapped[float] = mapped_column(Double())
    attempts: Mapped[int] = mapped_column(Integer)
    used: Mapped[bool] = mapped_column(Boolean)


class LockoutRow(PlatformBase):
    """Consecutive failed proofs of one kind for one user id, and the lock they caused."""

    __tablename__ = "lockouts"

    user_id: Mapped[str] = _id(primary_key=True)
    # No CHECK on the kind: a new proof kind must not need a migration of a counter table.
    proof: Mapped[str] = mapped_column(String(32), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_attempt_at: Mapped[float] = mapped_column(Double())
    locked_until: Mapped[float] = mapped_column(Double())


class RevokedTokenRow(PlatformBase):
    """A revoked access token's ``jti`` until the token would have expired anyway."""

    __tablename__ = "revoked_tokens"
    __table_args__ = (Index(None, "expires_at"),)

    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[int] = _unix()


class ClientAssertionRow(PlatformBase):
    """A seen ``private_key_jwt`` client assertion (RFC 7523 §3 ``jti``), until it expires."""

    __tablename__ = "client_assertions"
    __table_args__ = (Index(None, "expires_at"),)

    client_id: Mapped[str] = _id(primary_key=True)
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[int] = _unix()


class WebAuthnCredentialRow(PlatformBase):
    """A patient's passkey (WebAuthn): COSE public key, last sign count, transports.

    Keyed by the credential id alone (base64url; at most 1023 bytes, 1364 characters):
    an id registered to one account is refused for any other (WebAuthn L2 §7.1 step 22).
    """

    __tablename__ = "webauthn_credentials"
    __table_args__ = (Index(None, "user_id"),)

    credential_id: Mapped[str] = mapped_column(String(1364), primary_key=True)
    user_id: Mapped[str] = _id()
    public_key: Mapped[bytes] = mapped_column(LargeBinary())
    # BigInteger: the counter is an unsigned 32-bit value, beyond PostgreSQL's INTEGER.
    sign_count: Mapped[int] = mapped_column(BigInteger())
    transports: Mapped[str] = mapped_column(String(300))  # comma-separated, may be empty
    created_at: Mapped[int] = _unix()


class WebAuthnChallengeRow(PlatformBase):
    """The challenge of a passkey registration under way: one per user, used once."""

    __tablename__ = "webauthn_challenges"

    user_id: Mapped[str] = _id(primary_key=True)
    challenge: Mapped[bytes] = mapped_column(LargeBinary(64))
    expires_at: Mapped[int] = _unix()


# ─────────────────────────────────────────────────────────────── hospital


class HospitalBase(DeclarativeBase):
    """Declarative base of a hospital gateway database."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PatientRow(HospitalBase):
    __tablename__ = "patients"

    patient_id: Mapped[str] = _id(primary_key=True)
    display_name: Mapped[str] = mapped_column(String(256))
    birth_date: Mapped[date] = mapped_column(Date)
    enrolled_at: Mapped[datetime] = _stamp()


class KuhKeyRow(HospitalBase):
    """One version of a patient's KUH, wrapped by the hospital's storage key."""

    __tablename__ = "kuh_keys"
    __table_args__ = (
        CheckConstraint(_in("state", KeyState), name="state"),
        _one_per_owner("kuh_keys", "patient_id", "current"),
        _one_per_owner("kuh_keys", "patient_id", "pending"),
    )

    patient_id: Mapped[str] = _id(ForeignKey("patients.patient_id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary())
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = _stamp()


class HospitalRecordRow(HospitalBase):
    """A prescription or report as FHIR R4 bytes (the caller may encrypt them at rest)."""

    __tablename__ = "records"
    __table_args__ = (Index(None, "patient_id"), Index(None, "import_batch"))

    p_id: Mapped[str] = _id(primary_key=True)
    patient_id: Mapped[str] = _id(ForeignKey("patients.patient_id"))
    record_type: Mapped[str] = mapped_column(String(64))
    fhir: Mapped[bytes] = mapped_column(LargeBinary())
    imported_at: Mapped[datetime] = _stamp()
    import_batch: Mapped[str] = _id()


# ─────────────────────────────────────────────────────────────── third party


class ThirdPartyBase(DeclarativeBase):
    """Declarative base of a third party's database."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class KubKeyRow(ThirdPartyBase):
    """One version of the KUB shared with a patient account, wrapped by the caller."""

    __tablename__ = "kub_keys"
    __table_args__ = (
        CheckConstraint(_in("state", KeyState), name="state"),
        _one_per_owner("kub_keys", "user_id", "current"),
        _one_per_owner("kub_keys", "user_id", "pending"),
    )

    user_id: Mapped[str] = _id(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary())
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = _stamp()


class ReceivedRow(ThirdPartyBase):
    """A sealed record a patient shared with this third party."""

    __tablename__ = "received"
    __table_args__ = (Index(None, "user_id"),)

    his_id: Mapped[str] = _id(primary_key=True)
    p_id: Mapped[str] = _id(primary_key=True)
    user_id: Mapped[str] = _id()
    sealed: Mapped[bytes] = mapped_column(LargeBinary())
    received_at: Mapped[datetime] = _stamp()


class ClaimRow(ThirdPartyBase):
    """This third party's own view of its dispense claim on a prescription."""

    __tablename__ = "claims"
    __table_args__ = (CheckConstraint(_in("state", ClaimState), name="state"),)

    his_id: Mapped[str] = _id(primary_key=True)
    p_id: Mapped[str] = _id(primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = _stamp()


METADATA: Final[dict[Party, MetaData]] = {
    Party.PLATFORM: PlatformBase.metadata,
    Party.HOSPITAL: HospitalBase.metadata,
    Party.THIRDPARTY: ThirdPartyBase.metadata,
}
"""The tables of each party's database."""
