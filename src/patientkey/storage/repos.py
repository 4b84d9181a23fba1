"""Repositories: each party's narrow, durable store.

A repository is bound to ONE transaction of its caller and never commits itself::

    with db.transaction() as session:        # commit on success, rollback on error
        repo = PlatformRepo(session)
        binding = repo.get_binding(user_id, his_id)
        ...                                  # verify the cryptography first,
        repo.store_sealed(his_id, p_id, ct)  # then write: all or nothing

The same shape without SQLAlchemy, for code that should not care about the backend
(and for unit tests with the in-memory twins of :mod:`patientkey.storage.memory`)::

    store: Store[PlatformRepository] = SqlStore(db, PlatformRepo)   # or memory.platform_store()
    with store.transaction() as repo:
        repo.claim(his_id, p_id, b_id)

The protocols :class:`PlatformRepository`, :class:`HospitalRepository` and
:class:`ThirdPartyRepository` are the interface and say what each operation means;
the SQL classes here and the memory classes implement them with the same behaviour,
checked by one contract test suite against memory, SQLite and PostgreSQL.

Rules every implementation keeps:

* values in and out are plain, frozen dataclasses (never ORM objects);
* input is checked before anything is written (``InvalidInput``); a missing row is
  ``NotFound``; a state that does not allow the operation is ``Conflict``; no failing
  method leaves a partial write behind, even if the caller swallows the exception;
* state transitions (dispense claim, key versions, third-party claims) are conditional
  updates (``UPDATE … WHERE state = …``) or guarded by unique constraints, so two
  concurrent transactions cannot both win — on SQLite (writers serialized by
  ``BEGIN IMMEDIATE``) and on PostgreSQL (row locks, READ COMMITTED re-check);
* timestamps come from an injectable clock and are aware UTC.
"""

from __future__ import annotations

import functools
import json
import math
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Generic, Protocol, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Result,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from patientkey.audit import HASH_LEN, SALT_LEN, LogEntry, MerkleLog, NodeKey, NodeStore, StoredNode
from patientkey.audit import datetime_ms as _datetime_ms
from patientkey.errors import Conflict, InvalidInput, NotFound, RateLimited
from patientkey.protocol import states
from patientkey.storage.engine import Database
from patientkey.storage.schema import (
    ID_LENGTH,
    AccountRow,
    AuditNodeRow,
    BindingRow,
    ClaimRow,
    ClaimState,
    DispenseRow,
    DispenseState,
    EventRow,
    HospitalRecordRow,
    KeyState,
    KubKeyRow,
    KueDirection,
    KueKeyRow,
    KuhKeyRow,
    PatientRow,
    PlatformBase,
    PlatformRecordRow,
    PqExchangeRow,
    RateLimitRow,
    ReceivedRow,
    ReplayRow,
    ShareKind,
    ShareRow,
    ThirdPartyRow,
)

__all__ = [
    "CLAIM_TRANSITIONS",
    "DISPENSE_TRANSITIONS",
    "Account",
    "Binding",
    "Claim",
    "Clock",
    "Dispense",
    "Event",
    "EventDetail",
    "HospitalRecord",
    "HospitalRepo",
    "HospitalRepository",
    "KeyVersion",
    "KueKey",
    "ListedRecord",
    "NewRecord",
    "Patient",
    "PlatformRecord",
    "PlatformRepo",
    "PlatformRepository",
    "PqExchange",
    "Received",
    "Share",
    "SqlNodeStore",
    "SqlStore",
    "Store",
    "ThirdParty",
    "ThirdPartyRepo",
    "ThirdPartyRepository",
    "utc_now",
]

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware."""

EventDetail = Mapping[str, str | int | float | bool | None]
"""Event metadata: a flat map of scalars (identifiers, counts, outcomes — no health data)."""

MAX_EVENT_DETAIL_BYTES: Final = 4_096
MAX_KUE_KEY_BYTES: Final = 512
MAX_KUE_KEYS_PER_CALL: Final = 100_000
_MAX_SQL_INT: Final = 2**31 - 1
_MAX_U63: Final = 2**63 - 1
#: The most events one :meth:`PlatformRepository.sequence_events` call makes leaves.
MAX_SEQUENCE_BATCH: Final = 10_000
#: ``pg_advisory_xact_lock`` key of the transparency log's sequencer (any fixed
#: 64-bit value no other code of this database uses: the ASCII of "pk-audit").
_AUDIT_LOCK: Final = int.from_bytes(b"pk-audit", "big")


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


# ─────────────────────────────────────────────────────────────── state machines

DISPENSE_TRANSITIONS: Final[Mapping[str, tuple[DispenseState, DispenseState]]] = {
    # operation: (required state, new state), read off the one table in protocol.states
    # so storage's conditional UPDATEs enforce exactly the protocol's machine.
    event.value: (DispenseState(before.value), DispenseState(after.value))
    for (before, event), after in states.DISPENSE_TRANSITIONS.items()
}
"""The platform's dispense claim; ``completed`` is final. Only the claimant completes/releases."""

CLAIM_TRANSITIONS: Final[Mapping[ClaimState | None, frozenset[ClaimState]]] = {
    None: frozenset({ClaimState.PENDING}),
    ClaimState.PENDING: frozenset({ClaimState.CLAIMED, ClaimState.RELEASED}),
    ClaimState.CLAIMED: frozenset({ClaimState.COMPLETED, ClaimState.RELEASED}),
    ClaimState.RELEASED: frozenset({ClaimState.PENDING}),
    ClaimState.COMPLETED: frozenset(),
}
"""A third party's own claim record: from state (``None`` = no record) to allowed states."""


# ─────────────────────────────────────────────────────────────── values


@dataclass(frozen=True, slots=True)
class Account:
    user_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Binding:
    """``(User_ID, HIS_ID) → Patient_ID``."""

    user_id: str
    his_id: str
    patient_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PlatformRecord:
    """A record as the platform knows it; ``sealed`` is ciphertext, ``None`` until fetched."""

    his_id: str
    p_id: str
    patient_id: str
    record_type: str
    sealed: bytes | None
    size: int
    announced_at: datetime
    fetched_at: datetime | None


@dataclass(frozen=True, slots=True)
class ThirdParty:
    b_id: str
    display_name: str
    hpke_public: bytes
    certificate_pem: str
    registered_at: datetime
    hpke_signature: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Share:
    share_id: str
    his_id: str
    p_id: str
    user_id: str
    b_id: str
    kind: ShareKind
    kub_version: int
    delivered: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Dispense:
    his_id: str
    p_id: str
    state: DispenseState
    claimed_by: str | None
    version: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Event:
    """One event-log row; ``leaf_index`` is its leaf in the transparency log once sequenced."""

    seq: int
    at: datetime
    kind: str
    user_id: str | None
    detail: EventDetail
    salt: bytes = field(default=b"", repr=False)
    leaf_index: int | None = None

    def entry(self) -> LogEntry:
        """The event as the transparency log commits to it (``audit.entry``)."""
        return LogEntry(
            seq=self.seq,
            at_ms=_datetime_ms(self.at),
            kind=self.kind,
            user_id=self.user_id,
            detail=self.detail,
            salt=self.salt,
        )


@dataclass(frozen=True, slots=True)
class KueKey:
    """One key of a wallet's KUE pool: a canonical UUID key ID and the key bytes."""

    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PqExchange:
    """A wallet's post-quantum exchange: its public init message (no secret)."""

    user_id: str
    exchange_id: str
    init: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ListedRecord:
    """What an account's record list shows: metadata only, no ciphertext."""

    his_id: str
    p_id: str
    record_type: str
    fetched: bool
    dispense: DispenseState | None
    shared_with: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Patient:
    patient_id: str
    display_name: str
    birth_date: date
    enrolled_at: datetime


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of a KUH (owner = Patient_ID) or KUB (owner = User_ID), still wrapped."""

    owner_id: str
    version: int
    wrapped_key: bytes = field(repr=False)
    state: KeyState
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to import at the hospital; checks itself on creation."""

    p_id: str
    patient_id: str
    record_type: str
    fhir: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_id("p_id", self.p_id)
        _check_id("patient_id", self.patient_id)
        _check_text("record_type", self.record_type, 64)
        _check_bytes("fhir", self.fhir)


@dataclass(frozen=True, slots=True)
class HospitalRecord:
    p_id: str
    patient_id: str
    record_type: str
    fhir: bytes = field(repr=False)
    imported_at: datetime
    import_batch: str


@dataclass(frozen=True, slots=True)
class Received:
    his_id: str
    p_id: str
    user_id: str
    sealed: bytes = field(repr=False)
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    his_id: str
    p_id: str
    state: ClaimState
    updated_at: datetime


# ─────────────────────────────────────────────────────────────── interfaces


class PlatformRepository(Protocol):
    """The platform's store: bindings, ciphertext, third parties, shares, claims, limits, log."""

    def create_account(self, user_id: str) -> Account:
        """Create an account; ``Conflict`` if it exists."""
        ...

    def get_account(self, user_id: str) -> Account:
        """The account; ``NotFound`` if absent."""
        ...

    def bind(self, user_id: str, his_id: str, patient_id: str) -> Binding:
        """Bind the account to a HIS patient (idempotent for the same triple).

        ``NotFound`` without the account; ``Conflict`` if the account is bound to another
        patient at that HIS, or the patient to another account.
        """
        ...

    def get_binding(self, user_id: str, his_id: str) -> Binding:
        """The binding; ``NotFound`` if absent."""
        ...

    def bindings_of(self, user_id: str) -> list[Binding]:
        """Every binding of the account, by HIS_ID."""
        ...

    def announce_record(
        self, his_id: str, p_id: str, patient_id: str, record_type: str, size: int
    ) -> PlatformRecord:
        """Note a record the HIS holds (idempotent for the same patient and type).

        ``Conflict`` if the P_ID is known with another patient or type.
        """
        ...

    def store_sealed(self, his_id: str, p_id: str, sealed: bytes) -> PlatformRecord:
        """Keep the record's ciphertext unless one is already stored; return what is stored.

        The first stored ciphertext stays: a second fetch never overwrites it.
        ``NotFound`` if the record was never announced.
        """
        ...

    def get_record(self, his_id: str, p_id: str) -> PlatformRecord:
        """The record; ``NotFound`` if absent."""
        ...

    def records_of_patient(self, his_id: str, patient_id: str) -> list[PlatformRecord]:
        """The records of a HIS patient, by P_ID."""
        ...

    def register_third_party(
        self,
        b_id: str,
        display_name: str,
        hpke_public: bytes,
        certificate_pem: str,
        hpke_signature: bytes = b"",
    ) -> ThirdParty:
        """Register a third party (idempotent for identical data; ``Conflict`` otherwise)."""
        ...

    def get_third_party(self, b_id: str) -> ThirdParty:
        """The third party; ``NotFound`` if absent."""
        ...

    def add_share(
        self,
        share_id: str,
        *,
        his_id: str,
        p_id: str,
        user_id: str,
        b_id: str,
        kind: ShareKind | str,
        kub_version: int,
    ) -> Share:
        """Record a share of a record with a third party, not yet delivered.

        ``NotFound`` without the record, account or third party; ``Conflict`` if the
        share id is taken.
        """
        ...

    def mark_delivered(self, share_id: str) -> Share:
        """Mark a share delivered (idempotent); ``NotFound`` if absent."""
        ...

    def get_share(self, share_id: str) -> Share:
        """The share; ``NotFound`` if absent."""
        ...

    def shares_of_record(self, his_id: str, p_id: str) -> list[Share]:
        """The shares of a record, by share id."""
        ...

    def open_dispense(self, his_id: str, p_id: str) -> Dispense:
        """Open the record for dispensing (returns the existing claim if there is one).

        ``NotFound`` if the record is unknown.
        """
        ...

    def get_dispense(self, his_id: str, p_id: str) -> Dispense:
        """The dispense claim; ``NotFound`` if absent."""
        ...

    def claim(self, his_id: str, p_id: str, b_id: str) -> Dispense:
        """Claim an open prescription for ``b_id`` exclusively.

        ``NotFound`` without the dispense row or third party; ``Conflict`` unless open.
        """
        ...

    def complete(self, his_id: str, p_id: str, b_id: str) -> Dispense:
        """Mark dispensed; ``Conflict`` unless claimed by ``b_id``."""
        ...

    def release(self, his_id: str, p_id: str, b_id: str) -> Dispense:
        """Give a claim up (back to open); ``Conflict`` unless claimed by ``b_id``."""
        ...

    def hit(self, bucket: str, limit: int, window: timedelta) -> int:
        """Count one request in a fixed window; return the count including this one.

        Over ``limit`` raises ``RateLimited`` (with ``retry_after`` seconds) and the
        refused request is not counted.
        """
        ...

    def log_event(self, kind: str, user_id: str | None, detail: EventDetail) -> Event:
        """Append to the event log (metadata only)."""
        ...

    def events(
        self, *, user_id: str | None = None, after: int = 0, limit: int = 100
    ) -> list[Event]:
        """Events with ``seq > after``, oldest first, optionally of one account."""
        ...

    # the transparency log over the event log (audit, RFC 9162)

    def audit_nodes(self) -> NodeStore:
        """The transparency log's write-once hashes, read and written in this transaction."""
        ...

    def sequence_events(self, limit: int = 1000) -> range:
        """Make the oldest events not yet in the log (by ``seq``, at most ``limit``) its
        next leaves, in order: each gets ``leaf_index`` = the tree size at its turn, its
        :meth:`Event.entry` is appended with :class:`~patientkey.audit.MerkleLog`. Returns
        the leaf indices assigned (empty when nothing waited). Concurrent sequencers run
        one after the other (PostgreSQL: ``pg_advisory_xact_lock``; SQLite: one writer)."""
        ...

    def audited_events(
        self, user_id: str, *, below: int, after: int = -1, limit: int | None = None
    ) -> list[Event]:
        """The account's events with a leaf index in ``(after, below)``, by leaf index,
        at most ``limit`` of them."""
        ...

    def leaf_events(self, start: int, stop: int) -> list[Event]:
        """The events that are leaves ``start`` to ``stop - 1``, by leaf index (a leaf
        whose row is gone is simply absent; at most 100,000 leaves per call)."""
        ...

    def listing(self, user_id: str) -> list[ListedRecord]:
        """The records of every patient bound to the account, by (HIS_ID, P_ID).

        ``shared_with`` names the third parties with a delivered share by this account
        (sorted, once each); ``dispense`` is the claim state, ``None`` before one exists.
        """
        ...

    def counts(self) -> dict[str, int]:
        """Row counts for operators (``accounts``, ``bindings``, ``records``, ...)."""
        ...

    # the wallet hop (KUE)

    def add_kue_keys(
        self, user_id: str, direction: KueDirection | str, keys: Sequence[KueKey]
    ) -> int:
        """Store keys of the account's half of its KUE pool; return how many.

        ``NotFound`` without the account; ``InvalidInput`` for a malformed or repeated
        key ID or a bad key; ``Conflict`` if a key ID is already stored.
        """
        ...

    def take_kue_keys(
        self, user_id: str, direction: KueDirection | str, number: int
    ) -> list[KueKey]:
        """Take (delete and return) ``number`` keys, by (created_at, key ID).

        All or nothing: ``NotFound`` if fewer are left, and then none is taken.
        """
        ...

    def take_kue_keys_by_id(
        self, user_id: str, direction: KueDirection | str, key_ids: Sequence[str]
    ) -> list[KueKey]:
        """Take (delete and return) the named keys, in the order named.

        All or nothing: ``NotFound`` if any is unknown, used, or of another account or
        direction; ``InvalidInput`` for a malformed or repeated key ID.
        """
        ...

    def kue_key_count(self, user_id: str, direction: KueDirection | str) -> int:
        """How many keys of the direction are left for the account."""
        ...

    def add_pq_exchange(self, user_id: str, exchange_id: str, init: bytes) -> PqExchange:
        """Keep a wallet's PQ init message (idempotent for identical data).

        ``NotFound`` without the account; ``Conflict`` if the exchange ID is known with
        another init message.
        """
        ...

    def get_pq_exchange(self, user_id: str, exchange_id: str) -> PqExchange:
        """The exchange; ``NotFound`` if absent."""
        ...

    def guard_replay(self, sender: str, jti: str, expires_at: datetime) -> bool:
        """Remember ``(sender, jti)`` until ``expires_at``.

        ``True`` the first time (or once an earlier entry expired), ``False`` for a
        replay of an unexpired entry — also when a concurrent transaction won.
        """
        ...

    def purge_replay(self) -> int:
        """Forget expired replay-guard entries; return how many."""
        ...


class HospitalRepository(Protocol):
    """A hospital gateway's store: patients, KUH versions, FHIR records."""

    def enroll(
        self, patient_id: str, display_name: str, birth_date: date, wrapped_kuh: bytes
    ) -> Patient:
        """Enroll a patient with KUH version 1 as current; ``Conflict`` if enrolled."""
        ...

    def get_patient(self, patient_id: str) -> Patient:
        """The patient; ``NotFound`` if absent."""
        ...

    def list_patients(self) -> list[Patient]:
        """Every enrolled patient, by Patient_ID."""
        ...

    def current_kuh(self, patient_id: str) -> KeyVersion:
        """The current KUH; ``NotFound`` if the patient is unknown."""
        ...

    def get_kuh(self, patient_id: str, version: int) -> KeyVersion:
        """One KUH version in any state; ``NotFound`` if absent."""
        ...

    def pending_kuh(self, patient_id: str) -> KeyVersion | None:
        """The KUH waiting for the rotation to commit, if any."""
        ...

    def add_pending_kuh(self, patient_id: str, wrapped_key: bytes) -> KeyVersion:
        """Stage the next KUH version; ``Conflict`` if one is already pending."""
        ...

    def commit_pending_kuh(self, patient_id: str) -> KeyVersion:
        """Make the pending KUH current and retire the old one, atomically.

        ``Conflict`` if nothing is pending.
        """
        ...

    def discard_pending_kuh(self, patient_id: str) -> bool:
        """Drop the pending KUH; ``True`` if there was one."""
        ...

    def import_records(self, batch_id: str, records: Sequence[NewRecord]) -> list[HospitalRecord]:
        """Import every record or none.

        ``InvalidInput`` for a P_ID twice in the batch, ``NotFound`` for an unknown
        patient, ``Conflict`` for a P_ID already imported.
        """
        ...

    def get_record(self, p_id: str) -> HospitalRecord:
        """The record; ``NotFound`` if absent."""
        ...

    def records_of(self, patient_id: str) -> list[HospitalRecord]:
        """The patient's records, by P_ID; ``NotFound`` if the patient is unknown."""
        ...


class ThirdPartyRepository(Protocol):
    """A third party's store: KUB versions, received sealed records, its claims."""

    def add_kub(self, user_id: str, version: int, wrapped_key: bytes) -> KeyVersion:
        """Keep the next KUB (the ratchet): it becomes current, the previous one retired.

        ``Conflict`` unless ``version`` is above every version held for the account.
        """
        ...

    def current_kub(self, user_id: str) -> KeyVersion:
        """The current KUB; ``NotFound`` if none."""
        ...

    def get_kub(self, user_id: str, version: int) -> KeyVersion:
        """One KUB version; ``NotFound`` if absent."""
        ...

    def reset_kub(self, user_id: str, version: int, wrapped_key: bytes) -> KeyVersion:
        """Make ``version`` the current KUB, first dropping every version at or above it.

        The ratchet's two restarts: a fresh HPKE share starts over at version 1, and a
        share repeated under KUB_v (its receipt was lost) replaces the KUB_{v+1} the
        first one delivered. Versions below ``version`` are kept, retired.
        """
        ...

    def store_received(self, his_id: str, p_id: str, user_id: str, sealed: bytes) -> Received:
        """Keep a shared record (a newer share from the same account replaces it).

        ``Conflict`` if the record was received from another account.
        """
        ...

    def get_received(self, his_id: str, p_id: str) -> Received:
        """The received record; ``NotFound`` if absent."""
        ...

    def received_from(self, user_id: str) -> list[Received]:
        """Everything received from one account, by (HIS_ID, P_ID)."""
        ...

    def list_received(self) -> list[Received]:
        """Everything received, by (HIS_ID, P_ID)."""
        ...

    def set_claim(self, his_id: str, p_id: str, state: ClaimState | str) -> Claim:
        """Move the claim record along :data:`CLAIM_TRANSITIONS`; ``Conflict`` otherwise."""
        ...

    def get_claim(self, his_id: str, p_id: str) -> Claim:
        """The claim record; ``NotFound`` if absent."""
        ...


R_co = TypeVar("R_co", covariant=True)
R = TypeVar("R")
T = TypeVar("T")


class Store(Protocol[R_co]):
    """Hands out a repository bound to one transaction."""

    def transaction(self) -> AbstractContextManager[R_co]: ...


class SqlStore(Generic[R]):
    """A :class:`Store` over a :class:`Database`: ``SqlStore(db, PlatformRepo)``."""

    def __init__(
        self,
        db: Database,
        repo: Callable[[Session, Clock], R],
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.db = db
        self._repo = repo
        self._clock = clock

    @contextmanager
    def transaction(self) -> Iterator[R]:
        with self.db.transaction() as session:
            yield self._repo(session, self._clock)


# ─────────────────────────────────────────────────────────────── input checks
# Shared with the in-memory twins so that both refuse exactly the same input.


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= ID_LENGTH or not value.isprintable():
        raise InvalidInput(f"{name} must be 1 to {ID_LENGTH} printable characters")
    return value


def _check_text(name: str, value: object, max_len: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_len or not value.isprintable():
        raise InvalidInput(f"{name} must be 1 to {max_len} printable characters")
    return value


def _check_pem(value: object) -> str:
    if not isinstance(value, str) or "-----BEGIN " not in value or "\x00" in value:
        raise InvalidInput("certificate_pem must be PEM text")
    return value


def _check_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, bytes) or not value:
        raise InvalidInput(f"{name} must be non-empty bytes")
    return value


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer")
    if not minimum <= value <= _MAX_SQL_INT:
        raise InvalidInput(f"{name} must be between {minimum} and {_MAX_SQL_INT}")
    return value


def _check_date(name: str, value: object) -> date:
    if not isinstance(value, date) or isinstance(value, datetime):
        raise InvalidInput(f"{name} must be a date")
    return value


def _check_detail(detail: object) -> dict[str, str | int | float | bool | None]:
    if not isinstance(detail, Mapping):
        raise InvalidInput("event detail must be a mapping")
    out: dict[str, str | int | float | bool | None] = {}
    for key, value in detail.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool | None):
            raise InvalidInput("event detail maps names to scalars only")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput("event detail numbers must be finite")
        out[key] = value
    if len(json.dumps(out)) > MAX_EVENT_DETAIL_BYTES:
        raise InvalidInput(f"event detail exceeds {MAX_EVENT_DETAIL_BYTES} bytes")
    return out


def _check_events_query(user_id: str | None, after: int, limit: int) -> None:
    if user_id is not None:
        _check_id("user_id", user_id)
    _check_int("after", after, 0)
    _check_int("limit", limit, 1)


MAX_LEAF_RANGE: Final = 100_000


def _check_audited_query(user_id: str, below: int, after: int, limit: int | None) -> None:
    """Shared with the memory twin: the arguments of ``audited_events``."""
    _check_id("user_id", user_id)
    _check_u63("below", below)
    if isinstance(after, bool) or not isinstance(after, int) or not -1 <= after < 2**63:
        raise InvalidInput("after must be -1 or a leaf index")
    if limit is not None:
        _check_int("limit", limit, 1)


def _check_leaf_range(start: int, stop: int) -> None:
    """Shared with the memory twin: a leaf range is 0 <= start <= stop, at most 100,000."""
    _check_u63("start", start)
    _check_u63("stop", stop)
    if not start <= stop <= start + MAX_LEAF_RANGE:
        raise InvalidInput(f"a leaf range is start <= stop <= start + {MAX_LEAF_RANGE:,}")


def _check_u63(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U63:
        raise InvalidInput(f"{name} must be an integer from 0 to 2**63 - 1")
    return value


def _check_seconds(name: str, value: object) -> int:
    """Unix seconds as the authorization unit stores them (BIGINT): 0 to 2**63 - 1."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U63:
        raise InvalidInput(f"{name} must be unix seconds (a non-negative integer)")
    return value


def _check_nodes(nodes: Sequence[StoredNode]) -> list[StoredNode]:
    """Well-formed ``(level, index, hash)`` triples with no key twice (else InvalidInput)."""
    out: list[StoredNode] = []
    for node in nodes:
        if not isinstance(node, tuple) or len(node) != 3:
            raise InvalidInput("a node is (level, index, hash)")
        level, index, digest = node
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 64:
            raise InvalidInput("a node's level is 0..64")
        _check_u63("a node's index", index)
        if not isinstance(digest, bytes) or len(digest) != HASH_LEN:
            raise InvalidInput(f"a node's hash is {HASH_LEN} bytes")
        out.append((level, index, digest))
    if len({(level, index) for level, index, _ in out}) != len(out):
        raise InvalidInput("a node key appears twice in one write")
    return out


def _new_salt() -> bytes:
    return secrets.token_bytes(SALT_LEN)


def _check_share_kind(kind: ShareKind | str) -> ShareKind:
    try:
        return ShareKind(kind)
    except ValueError:
        raise InvalidInput("share kind must be 'hpke' or 'kub'") from None


def _check_kue_direction(direction: KueDirection | str) -> KueDirection:
    try:
        return KueDirection(direction)
    except ValueError:
        raise InvalidInput("KUE direction must be 'to_wallet' or 'from_wallet'") from None


def _check_key_id(value: object) -> str:
    """A key ID in the canonical (lower-case, hyphenated) UUID form."""
    try:
        canonical = str(uuid.UUID(value)) if isinstance(value, str) else None
    except ValueError:
        canonical = None
    if canonical is None or canonical != value:
        raise InvalidInput("key IDs must be canonical UUIDs")
    return value


def _check_kue_keys(keys: object) -> list[KueKey]:
    if not isinstance(keys, Sequence) or not 0 < len(keys) <= MAX_KUE_KEYS_PER_CALL:
        raise InvalidInput(f"give 1 to {MAX_KUE_KEYS_PER_CALL} KUE keys")
    seen: set[str] = set()
    for key in keys:
        if not isinstance(key, KueKey):
            raise InvalidInput("KUE keys must be KueKey values")
        _check_key_id(key.key_id)
        if not isinstance(key.key, bytes) or not 0 < len(key.key) <= MAX_KUE_KEY_BYTES:
            raise InvalidInput(f"a KUE key is 1 to {MAX_KUE_KEY_BYTES} bytes")
        if key.key_id in seen:
            raise InvalidInput("a key ID appears twice")
        seen.add(key.key_id)
    return list(keys)


def _check_key_ids(key_ids: object) -> list[str]:
    if not isinstance(key_ids, Sequence) or isinstance(key_ids, str):
        raise InvalidInput("key IDs must be a sequence")
    if not 0 < len(key_ids) <= MAX_KUE_KEYS_PER_CALL:
        raise InvalidInput(f"give 1 to {MAX_KUE_KEYS_PER_CALL} key IDs")
    ids = [_check_key_id(k) for k in key_ids]
    if len(set(ids)) != len(ids):
        raise InvalidInput("a key ID appears twice")
    return ids


def _check_exchange_id(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isalnum():
        raise InvalidInput("exchange_id must be 1 to 64 letters and digits")
    return value


def _check_stamp(name: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def _check_claim_state(state: ClaimState | str) -> ClaimState:
    try:
        return ClaimState(state)
    except ValueError:
        raise InvalidInput("unknown claim state") from None


def _check_window(limit: object, window: object) -> None:
    _check_int("limit", limit, 1)
    if not isinstance(window, timedelta) or window <= timedelta(0):
        raise InvalidInput("window must be a positive timedelta")


def _check_batch(records: Sequence[NewRecord]) -> None:
    seen: set[str] = set()
    for record in records:
        if not isinstance(record, NewRecord):
            raise InvalidInput("records must be NewRecord values")
        if record.p_id in seen:
            raise InvalidInput("a P_ID appears twice in the import batch")
        seen.add(record.p_id)


def _aware(clock: Clock) -> datetime:
    now = clock()
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("the clock must return timezone-aware datetimes")
    return now.astimezone(UTC)


def _rate_window(
    start: datetime, count: int, now: datetime, limit: int, window: timedelta
) -> tuple[datetime, int]:
    """Fixed window: the (start, count) after one more hit, or ``RateLimited``."""
    if now >= start + window:
        start, count = now, 0
    if count >= limit:
        retry_after = max(1, math.ceil((start + window - now).total_seconds()))
        raise RateLimited("rate limit reached", retry_after=retry_after)
    return start, count + 1


def _claim_step(current: ClaimState | None, new: ClaimState) -> None:
    if new not in CLAIM_TRANSITIONS[current]:
        was = current.value if current is not None else "none"
        raise Conflict(f"claim cannot go from {was} to {new.value}")


# ─────────────────────────────────────────────────────────────── SQL helpers


@contextmanager
def _guarded(session: Session, conflict: str) -> Iterator[None]:
    """A savepoint around writes: a constraint violation (a concurrent writer won)
    becomes ``Conflict`` and leaves nothing behind, even if the caller goes on."""
    try:
        with session.begin_nested():
            yield
    except IntegrityError as exc:
        raise Conflict(conflict) from exc


def _dialect_insert(session: Session) -> Callable[..., postgresql.Insert | sqlite.Insert]:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


@functools.cache
def _insert_new_statement(dialect: str, table: str) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING <first key column>`` on ``table``.

    A known key becomes "no row returned", not a database error, which on PostgreSQL
    would abort the caller's whole transaction. RETURNING, not rowcount: psycopg
    reports no rowcount for ON CONFLICT DO NOTHING.
    """
    target = PlatformBase.metadata.tables[table]
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    key = next(iter(target.primary_key.columns))
    return insert(target).on_conflict_do_nothing().returning(key)


@functools.cache
def _upsert_statement(dialect: str, table: str, columns: tuple[str, ...]) -> Any:
    """``INSERT … ON CONFLICT (<primary key>) DO UPDATE SET <columns>`` on ``table``."""
    target = PlatformBase.metadata.tables[table]
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(target)
    return statement.on_conflict_do_update(
        index_elements=list(target.primary_key.columns),
        set_={name: statement.excluded[name] for name in columns},
    )


def _rowcount(result: Result[Any]) -> int:
    # DML without RETURNING always yields a CursorResult.
    return cast(CursorResult[Any], result).rowcount


def _account(row: AccountRow) -> Account:
    return Account(row.user_id, row.created_at)


def _binding(row: BindingRow) -> Binding:
    return Binding(row.user_id, row.his_id, row.patient_id, row.created_at)


def _platform_record(row: PlatformRecordRow) -> PlatformRecord:
    return PlatformRecord(
        row.his_id,
        row.p_id,
        row.patient_id,
        row.record_type,
        row.sealed,
        row.size,
        row.announced_at,
        row.fetched_at,
    )


def _third_party(row: ThirdPartyRow) -> ThirdParty:
    return ThirdParty(
        row.b_id,
        row.display_name,
        row.hpke_public,
        row.certificate_pem,
        row.registered_at,
        row.hpke_signature or b"",
    )


def _share(row: ShareRow) -> Share:
    return Share(
        row.share_id,
        row.his_id,
        row.p_id,
        row.user_id,
        row.b_id,
        ShareKind(row.kind),
        row.kub_version,
        row.delivered,
        row.created_at,
    )


def _dispense(row: DispenseRow) -> Dispense:
    return Dispense(
        row.his_id,
        row.p_id,
        DispenseState(row.state),
        row.claimed_by,
        row.version,
        row.updated_at,
    )


def _event(row: EventRow) -> Event:
    return Event(row.seq, row.at, row.kind, row.user_id, dict(row.detail), row.salt, row.leaf_index)


def _pq_exchange(row: PqExchangeRow) -> PqExchange:
    return PqExchange(row.user_id, row.exchange_id, row.init, row.created_at)


def _listed(
    rows: Sequence[tuple[str, str, str, bool, str | None]], shares: Sequence[tuple[str, str, str]]
) -> list[ListedRecord]:
    """Assemble the listing from (his, p_id, type, fetched, dispense) rows and delivered shares."""
    shared: dict[tuple[str, str], set[str]] = {}
    for his_id, p_id, b_id in shares:
        shared.setdefault((his_id, p_id), set()).add(b_id)
    return [
        ListedRecord(
            his_id,
            p_id,
            record_type,
            fetched,
            None if dispense is None else DispenseState(dispense),
            tuple(sorted(shared.get((his_id, p_id), ()))),
        )
        for his_id, p_id, record_type, fetched, dispense in sorted(rows, key=lambda r: r[:2])
    ]


def _patient(row: PatientRow) -> Patient:
    return Patient(row.patient_id, row.display_name, row.birth_date, row.enrolled_at)


def _kuh(row: KuhKeyRow) -> KeyVersion:
    return KeyVersion(
        row.patient_id, row.version, row.wrapped_key, KeyState(row.state), row.created_at
    )


def _kub(row: KubKeyRow) -> KeyVersion:
    return KeyVersion(
        row.user_id, row.version, row.wrapped_key, KeyState(row.state), row.created_at
    )


def _hospital_record(row: HospitalRecordRow) -> HospitalRecord:
    return HospitalRecord(
        row.p_id, row.patient_id, row.record_type, row.fhir, row.imported_at, row.import_batch
    )


def _received(row: ReceivedRow) -> Received:
    return Received(row.his_id, row.p_id, row.user_id, row.sealed, row.received_at)


def _claim(row: ClaimRow) -> Claim:
    return Claim(row.his_id, row.p_id, ClaimState(row.state), row.updated_at)


# Hot paths run prebuilt Core statements on the tables: on every request, building a
# statement (and the ORM's bulk machinery) costs more than SQLite takes to run it.
_EVENTS = cast(Table, EventRow.__table__)
_KUE = cast(Table, KueKeyRow.__table__)
_RECORDS = cast(Table, PlatformRecordRow.__table__)
_BINDINGS = cast(Table, BindingRow.__table__)
_DISPENSE = cast(Table, DispenseRow.__table__)
_SHARES = cast(Table, ShareRow.__table__)
_NODES = cast(Table, AuditNodeRow.__table__)
_INSERT_EVENT: Final = insert(_EVENTS).returning(_EVENTS.c.seq)
_UNSEQUENCED: Final = (
    select(_EVENTS)
    .where(_EVENTS.c.leaf_index.is_(None))
    .order_by(_EVENTS.c.seq)
    .limit(bindparam("limit"))
)
_SET_LEAF: Final = (
    update(_EVENTS)
    .where(_EVENTS.c.seq == bindparam("b_seq"), _EVENTS.c.leaf_index.is_(None))
    .values(leaf_index=bindparam("b_leaf"))
)
# The leaves are written in order and without gaps (MerkleLog), so the last leaf's
# index + 1 is their count: one look-up at the end of the primary key, not a scan.
_LAST_LEAF: Final = select(func.max(_NODES.c.idx)).where(_NODES.c.level == 0)
_INSERT_NODE: Final = insert(_NODES)


@functools.cache
def _get_nodes_statement(levels: int) -> Select[Any]:
    """``(level = :l0 AND idx IN :i0) OR …`` for ``levels`` levels, built once per count.

    Building the clause for every proof cost more than the query; a row-value
    ``(level, idx) IN (…)`` would be one shape, but SQLite scans the table for it,
    while an OR of per-level index ranges is an index search on both databases.
    """
    return select(_NODES.c.level, _NODES.c.idx, _NODES.c.hash).where(
        or_(
            *(
                and_(
                    _NODES.c.level == bindparam(f"l{n}"),
                    _NODES.c.idx.in_(bindparam(f"i{n}", expanding=True)),
                )
                for n in range(levels)
            )
        )
    )


_TAKE_ONE_KUE: Final = (
    delete(_KUE)
    .where(
        _KUE.c.key_id == bindparam("key_id"),
        _KUE.c.user_id == bindparam("user_id"),
        _KUE.c.direction == bindparam("direction"),
    )
    .returning(_KUE.c.key)
)
_LISTING_RECORDS: Final = (
    select(
        _RECORDS.c.his_id,
        _RECORDS.c.p_id,
        _RECORDS.c.record_type,
        _RECORDS.c.sealed.is_not(None),
        _DISPENSE.c.state,
    )
    .join(
        _BINDINGS,
        and_(
            _BINDINGS.c.his_id == _RECORDS.c.his_id,
            _BINDINGS.c.patient_id == _RECORDS.c.patient_id,
        ),
    )
    .outerjoin(
        _DISPENSE,
        and_(_DISPENSE.c.his_id == _RECORDS.c.his_id, _DISPENSE.c.p_id == _RECORDS.c.p_id),
    )
    .where(_BINDINGS.c.user_id == bindparam("user_id"))
)
_LISTING_SHARES: Final = select(_SHARES.c.his_id, _SHARES.c.p_id, _SHARES.c.b_id).where(
    _SHARES.c.user_id == bindparam("user_id"), _SHARES.c.delivered.is_(True)
)


class _SqlRepo:
    def __init__(self, session: Session, clock: Clock = utc_now) -> None:
        self._session = session
        self._clock = clock

    def _now(self) -> datetime:
        return _aware(self._clock)

    def _get(self, model: type[T], key: object, what: str) -> T:
        row = self._session.get(model, key, populate_existing=True)
        if row is None:
            raise NotFound(f"{what} not found")
        return row

    def _one_or_none(self, model: type[T], *where: ColumnElement[bool]) -> T | None:
        stmt = select(model).where(*where).execution_options(populate_existing=True)
        return self._session.scalars(stmt).one_or_none()

    def _all(self, model: type[T], *where: ColumnElement[bool], order: Sequence[Any]) -> list[T]:
        stmt = select(model).where(*where).order_by(*order)
        return list(self._session.scalars(stmt.execution_options(populate_existing=True)))


class SqlNodeStore:
    """:class:`~patientkey.audit.NodeStore` on the ``audit_nodes`` table, in the caller's
    transaction. Write once: a key already stored is refused (``Conflict``) and the
    write leaves nothing behind."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def leaf_count(self) -> int:
        last = self._session.execute(_LAST_LEAF).scalar_one_or_none()
        return 0 if last is None else int(last) + 1

    def get_nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        if not keys:
            return []
        by_level: dict[int, set[int]] = {}
        for level, index in keys:
            by_level.setdefault(level, set()).add(index)
        params: dict[str, Any] = {}
        for n, (level, indices) in enumerate(by_level.items()):
            params[f"l{n}"], params[f"i{n}"] = level, sorted(indices)
        rows = self._session.execute(_get_nodes_statement(len(by_level)), params)
        found = {(row[0], row[1]): bytes(row[2]) for row in rows}
        try:
            return [found[(level, index)] for level, index in keys]
        except KeyError:
            # As the memory twin: a missing node is a damaged log, not bad input.
            raise KeyError("the audit log is missing a node") from None

    def put_nodes(self, nodes: Sequence[StoredNode]) -> None:
        checked = _check_nodes(nodes)
        if not checked:
            return
        with _guarded(self._session, "an audit log node is written once"):
            self._session.execute(
                _INSERT_NODE, [{"level": lv, "idx": ix, "hash": h} for lv, ix, h in checked]
            )


# ─────────────────────────────────────────────────────────────── platform


class PlatformRepo(_SqlRepo):
    """:class:`PlatformRepository` on SQLAlchemy; runs inside the caller's transaction."""

    # accounts and bindings

    def create_account(self, user_id: str) -> Account:
        _check_id("user_id", user_id)
        if self._session.get(AccountRow, user_id) is not None:
            raise Conflict("account exists")
        row = AccountRow(user_id=user_id, created_at=self._now())
        with _guarded(self._session, "account exists"):
            self._session.add(row)
        return _account(row)

    def get_account(self, user_id: str) -> Account:
        _check_id("user_id", user_id)
        return _account(self._get(AccountRow, user_id, "account"))

    def bind(self, user_id: str, his_id: str, patient_id: str) -> Binding:
        _check_id("user_id", user_id)
        _check_id("his_id", his_id)
        _check_id("patient_id", patient_id)
        self._get(AccountRow, user_id, "account")
        mine = self._session.get(BindingRow, (user_id, his_id), populate_existing=True)
        if mine is not None:
            if mine.patient_id != patient_id:
                raise Conflict("account already bound to another patient at this HIS")
            return _binding(mine)
        theirs = self._one_or_none(
            BindingRow, BindingRow.his_id == his_id, BindingRow.patient_id == patient_id
        )
        if theirs is not None:
            raise Conflict("patient already bound to another account")
        row = BindingRow(
            user_id=user_id, his_id=his_id, patient_id=patient_id, created_at=self._now()
        )
        with _guarded(self._session, "binding taken concurrently"):
            self._session.add(row)
        return _binding(row)

    def get_binding(self, user_id: str, his_id: str) -> Binding:
        _check_id("user_id", user_id)
        _check_id("his_id", his_id)
        return _binding(self._get(BindingRow, (user_id, his_id), "binding"))

    def bindings_of(self, user_id: str) -> list[Binding]:
        _check_id("user_id", user_id)
        rows = self._all(BindingRow, BindingRow.user_id == user_id, order=[BindingRow.his_id])
        return [_binding(r) for r in rows]

    # records

    def announce_record(
        self, his_id: str, p_id: str, patient_id: str, record_type: str, size: int
    ) -> PlatformRecord:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        _check_id("patient_id", patient_id)
        _check_text("record_type", record_type, 64)
        _check_int("size", size, 0)
        old = self._session.get(PlatformRecordRow, (his_id, p_id), populate_existing=True)
        if old is not None:
            if (old.patient_id, old.record_type) != (patient_id, record_type):
                raise Conflict("record announced with other metadata")
            return _platform_record(old)
        row = PlatformRecordRow(
            his_id=his_id,
            p_id=p_id,
            patient_id=patient_id,
            record_type=record_type,
            sealed=None,
            size=size,
            announced_at=self._now(),
            fetched_at=None,
        )
        with _guarded(self._session, "record announced concurrently"):
            self._session.add(row)
        return _platform_record(row)

    def store_sealed(self, his_id: str, p_id: str, sealed: bytes) -> PlatformRecord:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        _check_bytes("sealed", sealed)
        # Conditional: only the first ciphertext is kept, even with concurrent fetches.
        self._session.execute(
            update(PlatformRecordRow)
            .where(
                PlatformRecordRow.his_id == his_id,
                PlatformRecordRow.p_id == p_id,
                PlatformRecordRow.sealed.is_(None),
            )
            .values(sealed=sealed, fetched_at=self._now())
            .execution_options(synchronize_session=False)
        )
        return self.get_record(his_id, p_id)

    def get_record(self, his_id: str, p_id: str) -> PlatformRecord:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        return _platform_record(self._get(PlatformRecordRow, (his_id, p_id), "record"))

    def records_of_patient(self, his_id: str, patient_id: str) -> list[PlatformRecord]:
        _check_id("his_id", his_id)
        _check_id("patient_id", patient_id)
        rows = self._all(
            PlatformRecordRow,
            PlatformRecordRow.his_id == his_id,
            PlatformRecordRow.patient_id == patient_id,
            order=[PlatformRecordRow.p_id],
        )
        return [_platform_record(r) for r in rows]

    # third parties and shares

    def register_third_party(
        self,
        b_id: str,
        display_name: str,
        hpke_public: bytes,
        certificate_pem: str,
        hpke_signature: bytes = b"",
    ) -> ThirdParty:
        _check_id("b_id", b_id)
        _check_text("display_name", display_name, 256)
        _check_bytes("hpke_public", hpke_public)
        _check_pem(certificate_pem)
        old = self._session.get(ThirdPartyRow, b_id, populate_existing=True)
        if old is not None:
            if (
                old.display_name,
                old.hpke_public,
                old.certificate_pem,
                old.hpke_signature or b"",
            ) != (
                display_name,
                hpke_public,
                certificate_pem,
                hpke_signature,
            ):
                raise Conflict("third party registered with other data")
            return _third_party(old)
        row = ThirdPartyRow(
            b_id=b_id,
            display_name=display_name,
            hpke_public=hpke_public,
            certificate_pem=certificate_pem,
            registered_at=self._now(),
            hpke_signature=hpke_signature,
        )
        with _guarded(self._session, "third party registered concurrently"):
            self._session.add(row)
        return _third_party(row)

    def get_third_party(self, b_id: str) -> ThirdParty:
        _check_id("b_id", b_id)
        return _third_party(self._get(ThirdPartyRow, b_id, "third party"))

    def add_share(
        self,
        share_id: str,
        *,
        his_id: str,
        p_id: str,
        user_id: str,
        b_id: str,
        kind: ShareKind | str,
        kub_version: int,
    ) -> Share:
        _check_id("share_id", share_id)
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        _check_id("user_id", user_id)
        _check_id("b_id", b_id)
        share_kind = _check_share_kind(kind)
        _check_int("kub_version", kub_version, 1)
        self._get(PlatformRecordRow, (his_id, p_id), "record")
        self._get(AccountRow, user_id, "account")
        self._get(ThirdPartyRow, b_id, "third party")
        if self._session.get(ShareRow, share_id) is not None:
            raise Conflict("share id taken")
        row = ShareRow(
            share_id=share_id,
            his_id=his_id,
            p_id=p_id,
            user_id=user_id,
            b_id=b_id,
            kind=share_kind.value,
            kub_version=kub_version,
            delivered=False,
            created_at=self._now(),
        )
        with _guarded(self._session, "share id taken"):
            self._session.add(row)
        return _share(row)

    def mark_delivered(self, share_id: str) -> Share:
        _check_id("share_id", share_id)
        row = self._get(ShareRow, share_id, "share")
        row.delivered = True
        self._session.flush()
        return _share(row)

    def get_share(self, share_id: str) -> Share:
        _check_id("share_id", share_id)
        return _share(self._get(ShareRow, share_id, "share"))

    def shares_of_record(self, his_id: str, p_id: str) -> list[Share]:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        rows = self._all(
            ShareRow, ShareRow.his_id == his_id, ShareRow.p_id == p_id, order=[ShareRow.share_id]
        )
        return [_share(r) for r in rows]

    # dispense claim

    def open_dispense(self, his_id: str, p_id: str) -> Dispense:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        self._get(PlatformRecordRow, (his_id, p_id), "record")
        insert = _dialect_insert(self._session)
        self._session.execute(
            insert(DispenseRow)
            .values(
                his_id=his_id,
                p_id=p_id,
                state=DispenseState.OPEN.value,
                claimed_by=None,
                version=1,
                updated_at=self._now(),
            )
            .on_conflict_do_nothing(index_elements=["his_id", "p_id"])
        )
        return self.get_dispense(his_id, p_id)

    def get_dispense(self, his_id: str, p_id: str) -> Dispense:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        return _dispense(self._get(DispenseRow, (his_id, p_id), "dispense claim"))

    def _transition(self, operation: str, his_id: str, p_id: str, b_id: str) -> Dispense:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        _check_id("b_id", b_id)
        self._get(ThirdPartyRow, b_id, "third party")
        required, new = DISPENSE_TRANSITIONS[operation]
        where = [
            DispenseRow.his_id == his_id,
            DispenseRow.p_id == p_id,
            DispenseRow.state == required.value,
        ]
        if required is DispenseState.CLAIMED:
            where.append(DispenseRow.claimed_by == b_id)
        # One conditional UPDATE: of two concurrent claims exactly one matches the row.
        result = self._session.execute(
            update(DispenseRow)
            .where(*where)
            .values(
                state=new.value,
                claimed_by=None if new is DispenseState.OPEN else b_id,
                version=DispenseRow.version + 1,
                updated_at=self._now(),
            )
            .execution_options(synchronize_session=False)
        )
        current = self.get_dispense(his_id, p_id)
        if _rowcount(result) != 1:
            raise Conflict(f"cannot {operation}: prescription is {current.state.value}")
        return current

    def claim(self, his_id: str, p_id: str, b_id: str) -> Dispense:
        return self._transition("claim", his_id, p_id, b_id)

    def complete(self, his_id: str, p_id: str, b_id: str) -> Dispense:
        return self._transition("complete", his_id, p_id, b_id)

    def release(self, his_id: str, p_id: str, b_id: str) -> Dispense:
        return self._transition("release", his_id, p_id, b_id)

    # rate limits and the event log

    def hit(self, bucket: str, limit: int, window: timedelta) -> int:
        _check_text("bucket", bucket, 256)
        _check_window(limit, window)
        now = self._now()
        insert = _dialect_insert(self._session)
        self._session.execute(
            insert(RateLimitRow)
            .values(bucket=bucket, window_start=now, count=0)
            .on_conflict_do_nothing(index_elements=["bucket"])
        )
        # FOR UPDATE serializes concurrent hits on PostgreSQL; SQLite's writers already are.
        row = self._session.scalars(
            select(RateLimitRow)
            .where(RateLimitRow.bucket == bucket)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        row.window_start, row.count = _rate_window(row.window_start, row.count, now, limit, window)
        self._session.flush()
        return row.count

    def log_event(self, kind: str, user_id: str | None, detail: EventDetail) -> Event:
        _check_text("kind", kind, 64)
        if user_id is not None:
            _check_id("user_id", user_id)
        at, checked, salt = self._now(), _check_detail(detail), _new_salt()
        values = {"at": at, "kind": kind, "user_id": user_id, "detail": checked, "salt": salt}
        seq = self._session.execute(_INSERT_EVENT, values).scalar_one()
        return Event(seq, at, kind, user_id, dict(checked), salt)

    def events(
        self, *, user_id: str | None = None, after: int = 0, limit: int = 100
    ) -> list[Event]:
        _check_events_query(user_id, after, limit)
        stmt = select(EventRow).where(EventRow.seq > after)
        if user_id is not None:
            stmt = stmt.where(EventRow.user_id == user_id)
        rows = self._session.scalars(stmt.order_by(EventRow.seq).limit(limit))
        return [_event(r) for r in rows]

    # the transparency log

    def audit_nodes(self) -> SqlNodeStore:
        return SqlNodeStore(self._session)

    def sequence_events(self, limit: int = 1000) -> range:
        _check_int("limit", limit, 1)
        limit = min(limit, MAX_SEQUENCE_BATCH)
        if self._session.get_bind().dialect.name == "postgresql":
            # Two sequencers must not both read the same tree size: the second waits
            # here until the first commits (then reads its leaves). SQLite's
            # BEGIN IMMEDIATE already lets one writer in at a time.
            self._session.execute(select(func.pg_advisory_xact_lock(_AUDIT_LOCK)))
        # The ORM may hold events this transaction logged but has not flushed.
        self._session.flush()
        rows = self._session.execute(_UNSEQUENCED, {"limit": limit}).all()
        log = MerkleLog(self.audit_nodes())
        if not rows:
            return range(log.size, log.size)
        events = [Event(r.seq, r.at, r.kind, r.user_id, dict(r.detail), r.salt) for r in rows]
        leaves = log.append_many(event.entry().encode() for event in events)
        # A sequencer that bypassed the lock would have failed above: the node keys of
        # these leaves would already be taken (write once).
        self._session.execute(
            _SET_LEAF,
            [{"b_seq": e.seq, "b_leaf": i} for e, i in zip(events, leaves, strict=True)],
        )
        return leaves

    def audited_events(
        self, user_id: str, *, below: int, after: int = -1, limit: int | None = None
    ) -> list[Event]:
        _check_audited_query(user_id, below, after, limit)
        stmt = (
            select(EventRow)
            .where(
                EventRow.user_id == user_id,
                EventRow.leaf_index.is_not(None),
                EventRow.leaf_index > after,
                EventRow.leaf_index < below,
            )
            .order_by(EventRow.leaf_index)
            .limit(limit)
        )
        return [_event(r) for r in self._session.scalars(stmt)]

    def leaf_events(self, start: int, stop: int) -> list[Event]:
        _check_leaf_range(start, stop)
        stmt = (
            select(EventRow)
            .where(EventRow.leaf_index >= start, EventRow.leaf_index < stop)
            .order_by(EventRow.leaf_index)
        )
        return [_event(r) for r in self._session.scalars(stmt)]

    # listing and counts

    def listing(self, user_id: str) -> list[ListedRecord]:
        _check_id("user_id", user_id)
        rows = self._session.execute(_LISTING_RECORDS, {"user_id": user_id}).all()
        shares = self._session.execute(_LISTING_SHARES, {"user_id": user_id}).all()
        return _listed(
            [(h, p, t, bool(f), d) for h, p, t, f, d in rows], [(h, p, b) for h, p, b in shares]
        )

    def counts(self) -> dict[str, int]:
        def count(model: type[Any], *where: ColumnElement[bool]) -> int:
            stmt = select(func.count()).select_from(model).where(*where)
            return self._session.scalar(stmt) or 0

        out = {
            "accounts": count(AccountRow),
            "bindings": count(BindingRow),
            "records": count(PlatformRecordRow),
            "records_fetched": count(PlatformRecordRow, PlatformRecordRow.sealed.is_not(None)),
            "third_parties": count(ThirdPartyRow),
            "shares": count(ShareRow),
            "shares_delivered": count(ShareRow, ShareRow.delivered.is_(True)),
        }
        for state in DispenseState:
            out[f"dispense_{state.value}"] = count(DispenseRow, DispenseRow.state == state.value)
        for direction in KueDirection:
            out[f"kue_keys_{direction.value}"] = count(
                KueKeyRow, KueKeyRow.direction == direction.value
            )
        out["pq_exchanges"] = count(PqExchangeRow)
        out["events"] = count(EventRow)
        return out

    # the wallet hop (KUE)

    def add_kue_keys(
        self, user_id: str, direction: KueDirection | str, keys: Sequence[KueKey]
    ) -> int:
        _check_id("user_id", user_id)
        way = _check_kue_direction(direction)
        checked = _check_kue_keys(keys)
        self._get(AccountRow, user_id, "account")
        ids = [k.key_id for k in checked]
        taken = self._session.scalars(
            select(KueKeyRow.key_id).where(KueKeyRow.key_id.in_(ids))
        ).first()
        if taken is not None:
            raise Conflict("a KUE key ID is already stored")
        now = self._now()
        with _guarded(self._session, "a KUE key ID was stored concurrently"):
            self._session.add_all(
                KueKeyRow(
                    key_id=k.key_id, user_id=user_id, direction=way.value, key=k.key, created_at=now
                )
                for k in checked
            )
        return len(checked)

    def _delete_kue(self, ids: Sequence[str]) -> None:
        # Conditional on the rows still being there: of two concurrent takers one loses
        # (and its savepoint leaves nothing behind).
        with self._session.begin_nested():
            result = self._session.execute(
                delete(KueKeyRow)
                .where(KueKeyRow.key_id.in_(ids))
                .execution_options(synchronize_session=False)
            )
            if _rowcount(result) != len(ids):
                raise Conflict("KUE keys taken concurrently")

    def take_kue_keys(
        self, user_id: str, direction: KueDirection | str, number: int
    ) -> list[KueKey]:
        _check_id("user_id", user_id)
        way = _check_kue_direction(direction)
        _check_int("number", number, 1)
        rows = self._session.execute(
            select(KueKeyRow.key_id, KueKeyRow.key)
            .where(KueKeyRow.user_id == user_id, KueKeyRow.direction == way.value)
            .order_by(KueKeyRow.created_at, KueKeyRow.key_id)
            .limit(number)
            # PostgreSQL: concurrent takers skip each other's rows instead of colliding.
            .with_for_update(skip_locked=True)
        ).all()
        if len(rows) < number:
            raise NotFound("not enough KUE keys left")
        self._delete_kue([key_id for key_id, _ in rows])
        return [KueKey(key_id, key) for key_id, key in rows]

    def take_kue_keys_by_id(
        self, user_id: str, direction: KueDirection | str, key_ids: Sequence[str]
    ) -> list[KueKey]:
        _check_id("user_id", user_id)
        way = _check_kue_direction(direction)
        ids = _check_key_ids(key_ids)
        if len(ids) == 1:
            # The hop's case (one key per message): one conditional DELETE, atomic by itself.
            params = {"key_id": ids[0], "user_id": user_id, "direction": way.value}
            key = self._session.execute(_TAKE_ONE_KUE, params).scalar_one_or_none()
            if key is None:
                raise NotFound("unknown or already used KUE key ID")
            return [KueKey(ids[0], key)]
        rows = self._session.execute(
            select(KueKeyRow.key_id, KueKeyRow.key)
            .where(
                KueKeyRow.key_id.in_(ids),
                KueKeyRow.user_id == user_id,
                KueKeyRow.direction == way.value,
            )
            .with_for_update()
        ).all()
        if len(rows) != len(ids):
            raise NotFound("unknown or already used KUE key ID")
        self._delete_kue(ids)
        found: dict[str, bytes] = {key_id: key for key_id, key in rows}  # noqa: C416 - Row pairs
        return [KueKey(key_id, found[key_id]) for key_id in ids]

    def kue_key_count(self, user_id: str, direction: KueDirection | str) -> int:
        _check_id("user_id", user_id)
        way = _check_kue_direction(direction)
        stmt = (
            select(func.count())
            .select_from(KueKeyRow)
            .where(KueKeyRow.user_id == user_id, KueKeyRow.direction == way.value)
        )
        return self._session.scalar(stmt) or 0

    def add_pq_exchange(self, user_id: str, exchange_id: str, init: bytes) -> PqExchange:
        _check_id("user_id", user_id)
        _check_exchange_id(exchange_id)
        _check_bytes("init", init)
        self._get(AccountRow, user_id, "account")
        old = self._session.get(PqExchangeRow, (user_id, exchange_id), populate_existing=True)
        if old is not None:
            if old.init != init:
                raise Conflict("exchange known with another init message")
            return _pq_exchange(old)
        row = PqExchangeRow(
            user_id=user_id, exchange_id=exchange_id, init=init, created_at=self._now()
        )
        with _guarded(self._session, "exchange stored concurrently"):
            self._session.add(row)
        return _pq_exchange(row)

    def get_pq_exchange(self, user_id: str, exchange_id: str) -> PqExchange:
        _check_id("user_id", user_id)
        _check_exchange_id(exchange_id)
        return _pq_exchange(self._get(PqExchangeRow, (user_id, exchange_id), "PQ exchange"))

    def guard_replay(self, sender: str, jti: str, expires_at: datetime) -> bool:
        _check_id("sender", sender)
        _check_text("jti", jti, 256)
        until = _check_stamp("expires_at", expires_at)
        now = self._now()
        insert = _dialect_insert(self._session)
        # RETURNING, not rowcount: an ORM-executed INSERT reports no rowcount on psycopg.
        fresh = self._session.execute(
            insert(ReplayRow)
            .values(sender=sender, jti=jti, expires_at=until)
            .on_conflict_do_nothing(index_elements=["sender", "jti"])
            .returning(ReplayRow.jti)
        ).first()
        if fresh is not None:
            return True
        # Known: accepted again only if the earlier entry has expired.
        renewed = self._session.execute(
            update(ReplayRow)
            .where(ReplayRow.sender == sender, ReplayRow.jti == jti, ReplayRow.expires_at <= now)
            .values(expires_at=until)
            .execution_options(synchronize_session=False)
        )
        return _rowcount(renewed) == 1

    def purge_replay(self) -> int:
        result = self._session.execute(
            delete(ReplayRow)
            .where(ReplayRow.expires_at <= self._now())
            .execution_options(synchronize_session=False)
        )
        return _rowcount(result)


# ─────────────────────────────────────────────────────────────── hospital


class HospitalRepo(_SqlRepo):
    """:class:`HospitalRepository` on SQLAlchemy; runs inside the caller's transaction."""

    def enroll(
        self, patient_id: str, display_name: str, birth_date: date, wrapped_kuh: bytes
    ) -> Patient:
        _check_id("patient_id", patient_id)
        _check_text("display_name", display_name, 256)
        _check_date("birth_date", birth_date)
        _check_bytes("wrapped_kuh", wrapped_kuh)
        if self._session.get(PatientRow, patient_id) is not None:
            raise Conflict("patient already enrolled")
        now = self._now()
        row = PatientRow(
            patient_id=patient_id, display_name=display_name, birth_date=birth_date, enrolled_at=now
        )
        with _guarded(self._session, "patient already enrolled"):
            self._session.add(row)
            self._session.flush()
            self._session.add(
                KuhKeyRow(
                    patient_id=patient_id,
                    version=1,
                    wrapped_key=wrapped_kuh,
                    state=KeyState.CURRENT.value,
                    created_at=now,
                )
            )
        return _patient(row)

    def get_patient(self, patient_id: str) -> Patient:
        _check_id("patient_id", patient_id)
        return _patient(self._get(PatientRow, patient_id, "patient"))

    def list_patients(self) -> list[Patient]:
        return [_patient(r) for r in self._all(PatientRow, order=[PatientRow.patient_id])]

    def _lock_patient(self, patient_id: str) -> None:
        """Serialize key operations per patient (row lock on PostgreSQL)."""
        _check_id("patient_id", patient_id)
        row = self._session.scalars(
            select(PatientRow.patient_id)
            .where(PatientRow.patient_id == patient_id)
            .with_for_update()
        ).one_or_none()
        if row is None:
            raise NotFound("patient not found")

    def _kuh_in(self, patient_id: str, state: KeyState) -> KuhKeyRow | None:
        return self._one_or_none(
            KuhKeyRow, KuhKeyRow.patient_id == patient_id, KuhKeyRow.state == state.value
        )

    def current_kuh(self, patient_id: str) -> KeyVersion:
        self.get_patient(patient_id)
        row = self._kuh_in(patient_id, KeyState.CURRENT)
        if row is None:  # pragma: no cover - enroll always creates version 1
            raise NotFound("no current KUH")
        return _kuh(row)

    def get_kuh(self, patient_id: str, version: int) -> KeyVersion:
        _check_id("patient_id", patient_id)
        _check_int("version", version, 1)
        return _kuh(self._get(KuhKeyRow, (patient_id, version), "KUH version"))

    def pending_kuh(self, patient_id: str) -> KeyVersion | None:
        self.get_patient(patient_id)
        row = self._kuh_in(patient_id, KeyState.PENDING)
        return None if row is None else _kuh(row)

    def add_pending_kuh(self, patient_id: str, wrapped_key: bytes) -> KeyVersion:
        _check_id("patient_id", patient_id)
        _check_bytes("wrapped_key", wrapped_key)
        self._lock_patient(patient_id)
        if self._kuh_in(patient_id, KeyState.PENDING) is not None:
            raise Conflict("a KUH rotation is already pending")
        top = self._session.scalar(
            select(func.max(KuhKeyRow.version)).where(KuhKeyRow.patient_id == patient_id)
        )
        row = KuhKeyRow(
            patient_id=patient_id,
            version=(top or 0) + 1,
            wrapped_key=wrapped_key,
            state=KeyState.PENDING.value,
            created_at=self._now(),
        )
        with _guarded(self._session, "a KUH rotation is already pending"):
            self._session.add(row)
        return _kuh(row)

    def commit_pending_kuh(self, patient_id: str) -> KeyVersion:
        self._lock_patient(patient_id)
        pending = self._kuh_in(patient_id, KeyState.PENDING)
        if pending is None:
            raise Conflict("no KUH rotation is pending")
        with _guarded(self._session, "KUH rotation raced"):
            # Retire first: at most one current version exists at any moment.
            for old, new in (
                (KeyState.CURRENT, KeyState.RETIRED),
                (KeyState.PENDING, KeyState.CURRENT),
            ):
                self._session.execute(
                    update(KuhKeyRow)
                    .where(KuhKeyRow.patient_id == patient_id, KuhKeyRow.state == old.value)
                    .values(state=new.value)
                    .execution_options(synchronize_session=False)
                )
        return self.get_kuh(patient_id, pending.version)

    def discard_pending_kuh(self, patient_id: str) -> bool:
        self._lock_patient(patient_id)
        result = self._session.execute(
            delete(KuhKeyRow)
            .where(KuhKeyRow.patient_id == patient_id, KuhKeyRow.state == KeyState.PENDING.value)
            .execution_options(synchronize_session=False)
        )
        return _rowcount(result) > 0

    def import_records(self, batch_id: str, records: Sequence[NewRecord]) -> list[HospitalRecord]:
        _check_id("batch_id", batch_id)
        _check_batch(records)
        patients = {r.patient_id for r in records}
        known = set(
            self._session.scalars(
                select(PatientRow.patient_id).where(PatientRow.patient_id.in_(patients))
            )
        )
        if patients - known:
            raise NotFound("import names an unknown patient")
        taken = self._session.scalars(
            select(HospitalRecordRow.p_id).where(
                HospitalRecordRow.p_id.in_([r.p_id for r in records])
            )
        ).first()
        if taken is not None:
            raise Conflict("a P_ID of the batch is already imported")
        now = self._now()
        rows = [
            HospitalRecordRow(
                p_id=r.p_id,
                patient_id=r.patient_id,
                record_type=r.record_type,
                fhir=r.fhir,
                imported_at=now,
                import_batch=batch_id,
            )
            for r in records
        ]
        with _guarded(self._session, "a P_ID of the batch was imported concurrently"):
            self._session.add_all(rows)
        return [_hospital_record(r) for r in rows]

    def get_record(self, p_id: str) -> HospitalRecord:
        _check_id("p_id", p_id)
        return _hospital_record(self._get(HospitalRecordRow, p_id, "record"))

    def records_of(self, patient_id: str) -> list[HospitalRecord]:
        self.get_patient(patient_id)
        rows = self._all(
            HospitalRecordRow,
            HospitalRecordRow.patient_id == patient_id,
            order=[HospitalRecordRow.p_id],
        )
        return [_hospital_record(r) for r in rows]


# ─────────────────────────────────────────────────────────────── third party


class ThirdPartyRepo(_SqlRepo):
    """:class:`ThirdPartyRepository` on SQLAlchemy; runs inside the caller's transaction."""

    def add_kub(self, user_id: str, version: int, wrapped_key: bytes) -> KeyVersion:
        _check_id("user_id", user_id)
        _check_int("version", version, 1)
        _check_bytes("wrapped_key", wrapped_key)
        top = self._session.scalar(
            select(func.max(KubKeyRow.version)).where(KubKeyRow.user_id == user_id)
        )
        if top is not None and version <= top:
            raise Conflict("KUB version is not newer than the one held")
        row = KubKeyRow(
            user_id=user_id,
            version=version,
            wrapped_key=wrapped_key,
            state=KeyState.CURRENT.value,
            created_at=self._now(),
        )
        with _guarded(self._session, "KUB replaced concurrently"):
            self._session.execute(
                update(KubKeyRow)
                .where(KubKeyRow.user_id == user_id, KubKeyRow.state == KeyState.CURRENT.value)
                .values(state=KeyState.RETIRED.value)
                .execution_options(synchronize_session=False)
            )
            self._session.add(row)
        return _kub(row)

    def current_kub(self, user_id: str) -> KeyVersion:
        _check_id("user_id", user_id)
        row = self._one_or_none(
            KubKeyRow, KubKeyRow.user_id == user_id, KubKeyRow.state == KeyState.CURRENT.value
        )
        if row is None:
            raise NotFound("no KUB for this account")
        return _kub(row)

    def get_kub(self, user_id: str, version: int) -> KeyVersion:
        _check_id("user_id", user_id)
        _check_int("version", version, 1)
        return _kub(self._get(KubKeyRow, (user_id, version), "KUB version"))

    def reset_kub(self, user_id: str, version: int, wrapped_key: bytes) -> KeyVersion:
        _check_id("user_id", user_id)
        _check_int("version", version, 1)
        _check_bytes("wrapped_key", wrapped_key)
        row = KubKeyRow(
            user_id=user_id,
            version=version,
            wrapped_key=wrapped_key,
            state=KeyState.CURRENT.value,
            created_at=self._now(),
        )
        with _guarded(self._session, "KUB replaced concurrently"):
            self._session.execute(
                delete(KubKeyRow)
                .where(KubKeyRow.user_id == user_id, KubKeyRow.version >= version)
                .execution_options(synchronize_session=False)
            )
            self._session.execute(
                update(KubKeyRow)
                .where(KubKeyRow.user_id == user_id, KubKeyRow.state == KeyState.CURRENT.value)
                .values(state=KeyState.RETIRED.value)
                .execution_options(synchronize_session=False)
            )
            self._session.add(row)
        return _kub(row)

    def store_received(self, his_id: str, p_id: str, user_id: str, sealed: bytes) -> Received:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        _check_id("user_id", user_id)
        _check_bytes("sealed", sealed)
        now = self._now()
        row = self._session.get(ReceivedRow, (his_id, p_id), populate_existing=True)
        if row is not None:
            if row.user_id != user_id:
                raise Conflict("record was received from another account")
            row.sealed, row.received_at = sealed, now
            self._session.flush()
            return _received(row)
        row = ReceivedRow(his_id=his_id, p_id=p_id, user_id=user_id, sealed=sealed, received_at=now)
        with _guarded(self._session, "record received concurrently"):
            self._session.add(row)
        return _received(row)

    def get_received(self, his_id: str, p_id: str) -> Received:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        return _received(self._get(ReceivedRow, (his_id, p_id), "received record"))

    def received_from(self, user_id: str) -> list[Received]:
        _check_id("user_id", user_id)
        rows = self._all(
            ReceivedRow,
            ReceivedRow.user_id == user_id,
            order=[ReceivedRow.his_id, ReceivedRow.p_id],
        )
        return [_received(r) for r in rows]

    def list_received(self) -> list[Received]:
        rows = self._all(ReceivedRow, order=[ReceivedRow.his_id, ReceivedRow.p_id])
        return [_received(r) for r in rows]

    def set_claim(self, his_id: str, p_id: str, state: ClaimState | str) -> Claim:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        new = _check_claim_state(state)
        now = self._now()
        row = self._session.get(ClaimRow, (his_id, p_id), populate_existing=True)
        current = None if row is None else ClaimState(row.state)
        _claim_step(current, new)
        if row is None:
            created = ClaimRow(his_id=his_id, p_id=p_id, state=new.value, updated_at=now)
            with _guarded(self._session, "claim changed concurrently"):
                self._session.add(created)
            return _claim(created)
        assert current is not None  # for mypy: row is not None here
        result = self._session.execute(
            update(ClaimRow)
            .where(
                ClaimRow.his_id == his_id, ClaimRow.p_id == p_id, ClaimRow.state == current.value
            )
            .values(state=new.value, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(result) != 1:
            raise Conflict("claim changed concurrently")
        return self.get_claim(his_id, p_id)

    def get_claim(self, his_id: str, p_id: str) -> Claim:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        return _claim(self._get(ClaimRow, (his_id, p_id), "claim"))


# Static checks that the SQL classes implement the protocols.
_platform: Callable[[Session, Clock], PlatformRepository] = PlatformRepo
_hospital: Callable[[Session, Clock], HospitalRepository] = HospitalRepo
_thirdparty: Callable[[Session, Clock], ThirdPartyRepository] = ThirdPartyRepo
