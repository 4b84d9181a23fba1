"""In-memory twins of the repositories, for fast unit tests of the parties.

Same interface, same behaviour, same errors as the SQL repositories of
:mod:`patientkey.storage.repos` (one contract test suite runs against both). A
:class:`MemoryStore` runs each transaction on a private copy of the state and swaps it
in only when the block succeeds, so a failure leaves nothing behind; a lock makes
transactions run one at a time, as SQLite's ``BEGIN IMMEDIATE`` does::

    store = platform_store()
    with store.transaction() as repo:
        repo.create_account("u1")

The authorization unit's twin (:func:`authz_store`) keeps the authz and identity
cores' own in-memory stores as its sub-stores, behind the same input checks as
:class:`~patientkey.storage.authz.SqlAuthzRepo`.

Nothing is persisted beyond the store object.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

from patientkey.audit import MerkleLog, NodeKey, StoredNode
from patientkey.authz.ciba import AuthRequest, InMemoryAuthRequestStore
from patientkey.authz.clients import RegisteredClient
from patientkey.authz.grants import Grant, InMemoryGrantStore
from patientkey.errors import Conflict, NotFound
from patientkey.identity.assurance import ProofKind
from patientkey.identity.device import DeviceKey
from patientkey.identity.lockout import LockoutChange, LockoutState, MemoryLockoutStore
from patientkey.identity.otp import MemoryOtpStore, OtpChallenge, OtpChannel
from patientkey.identity.totp import MemoryTotpStore, TotpEnrollment
from patientkey.identity.webauthn import WebAuthnCredential
from patientkey.storage.authz import (
    MAX_CONSENT_BYTES,
    AuthzRepository,
    ContactChannel,
    EnrolledDeviceKey,
    _check_challenge,
    _check_challenge_successor,
    _check_channel,
    _check_client,
    _check_device_key,
    _check_document,
    _check_grant,
    _check_grant_successor,
    _check_instant,
    _check_jti,
    _check_key_id,
    _check_lockout,
    _check_phc,
    _check_proof,
    _check_request,
    _check_request_successor,
    _check_totp,
    _OnPlatformEventLog,
    _seconds_now,
)
from patientkey.storage.repos import (
    DISPENSE_TRANSITIONS,
    MAX_SEQUENCE_BATCH,
    Account,
    Binding,
    Claim,
    Clock,
    Dispense,
    Event,
    EventDetail,
    HospitalRecord,
    HospitalRepository,
    KeyVersion,
    KueKey,
    ListedRecord,
    NewRecord,
    Patient,
    PlatformRecord,
    PlatformRepository,
    PqExchange,
    Received,
    Share,
    ThirdParty,
    ThirdPartyRepository,
    _aware,
    _check_audited_query,
    _check_batch,
    _check_bytes,
    _check_claim_state,
    _check_date,
    _check_detail,
    _check_events_query,
    _check_exchange_id,
    _check_id,
    _check_int,
    _check_key_ids,
    _check_kue_direction,
    _check_kue_keys,
    _check_leaf_range,
    _check_nodes,
    _check_pem,
    _check_seconds,
    _check_share_kind,
    _check_stamp,
    _check_text,
    _check_window,
    _claim_step,
    _listed,
    _new_salt,
    _rate_window,
    utc_now,
)
from patientkey.storage.schema import ClaimState, DispenseState, KeyState, KueDirection, ShareKind
from patientkey.storage.webauthn import (
    EnrolledWebAuthnCredential,
    _check_credential,
    _check_credential_id,
    _check_registration_challenge,
    _check_sign_count,
    _enrolled,
)

__all__ = [
    "AuthzState",
    "HospitalState",
    "MemoryAuthzRepo",
    "MemoryHospitalRepo",
    "MemoryNodes",
    "MemoryPlatformRepo",
    "MemoryStore",
    "MemoryThirdPartyRepo",
    "PlatformState",
    "ThirdPartyState",
    "authz_store",
    "hospital_store",
    "platform_store",
    "thirdparty_store",
]

S = TypeVar("S")
R = TypeVar("R")
H = TypeVar("H")
K = TypeVar("K")
_Key = tuple[str, str]


class MemoryStore(Generic[S, R]):
    """A :class:`~patientkey.storage.repos.Store` over in-memory state ``S``."""

    def __init__(self, repo: Callable[[S, Clock], R], state: S, *, clock: Clock = utc_now) -> None:
        self._repo = repo
        self._state = state
        self._clock = clock
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[R]:
        """One transaction: changes become visible only if the block succeeds."""
        with self._lock:
            working = copy.deepcopy(self._state)
            yield self._repo(working, self._clock)
            self._state = working


# ─────────────────────────────────────────────────────────────── platform


@dataclass
class PlatformState:
    accounts: dict[str, Account] = field(default_factory=dict)
    bindings: dict[_Key, Binding] = field(default_factory=dict)
    records: dict[_Key, PlatformRecord] = field(default_factory=dict)
    third_parties: dict[str, ThirdParty] = field(default_factory=dict)
    shares: dict[str, Share] = field(default_factory=dict)
    dispense: dict[_Key, Dispense] = field(default_factory=dict)
    rate_limits: dict[str, tuple[datetime, int]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    next_seq: int = 1
    # The transparency log's nodes, (level, idx) -> hash: a dict like the other
    # tables, so a transaction's copy (and AuthzState's fork) is a real copy.
    audit_nodes: dict[tuple[int, int], bytes] = field(default_factory=dict)
    # key ID -> (user, direction, key, created_at)
    kue_keys: dict[str, tuple[str, KueDirection, bytes, datetime]] = field(default_factory=dict)
    pq_exchanges: dict[_Key, PqExchange] = field(default_factory=dict)
    replay: dict[_Key, datetime] = field(default_factory=dict)


class MemoryNodes:
    """The twin of :class:`~patientkey.storage.repos.SqlNodeStore` over a dict: the same
    write-once rule (a key already stored is ``Conflict``, the write all or none)."""

    def __init__(self, nodes: dict[tuple[int, int], bytes]) -> None:
        self._nodes = nodes

    def leaf_count(self) -> int:
        # As on SQL: leaves have no gaps, so the last index + 1 is their count.
        last = max((idx for level, idx in self._nodes if level == 0), default=-1)
        return last + 1

    def get_nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        try:
            return [self._nodes[(level, index)] for level, index in keys]
        except KeyError:
            raise KeyError("the audit log is missing a node") from None

    def put_nodes(self, nodes: Sequence[StoredNode]) -> None:
        checked = _check_nodes(nodes)
        if any((level, index) in self._nodes for level, index, _ in checked):
            raise Conflict("an audit log node is written once")
        for level, index, digest in checked:
            self._nodes[(level, index)] = digest


class MemoryPlatformRepo:
    """:class:`~patientkey.storage.repos.PlatformRepository` in memory."""

    def __init__(self, state: PlatformState, clock: Clock = utc_now) -> None:
        self._s = state
        self._clock = clock

    def _now(self) -> datetime:
        return _aware(self._clock)

    def _account(self, user_id: str) -> Account:
        try:
            return self._s.accounts[user_id]
        except KeyError:
            raise NotFound("account not found") from None

    def _third_party(self, b_id: str) -> ThirdParty:
        try:
            return self._s.third_parties[b_id]
        except KeyError:
            raise NotFound("third party not found") from None

    def _record(self, his_id: str, p_id: str) -> PlatformRecord:
        try:
            return self._s.records[his_id, p_id]
        except KeyError:
            raise NotFound("record not found") from None

    def create_account(self, user_id: str) -> Account:
        _check_id("user_id", user_id)
        if user_id in self._s.accounts:
            raise Conflict("account exists")
        account = self._s.accounts[user_id] = Account(user_id, self._now())
        return account

    def get_account(self, user_id: str) -> Account:
        _check_id("user_id", user_id)
        return self._account(user_id)

    def bind(self, user_id: str, his_id: str, patient_id: str) -> Binding:
        _check_id("user_id", user_id)
        _check_id("his_id", his_id)
        _check_id("patient_id", patient_id)
        self._account(user_id)
        mine = self._s.bindings.get((user_id, his_id))
        if mine is not None:
            if mine.patient_id != patient_id:
                raise Conflict("account already bound to another patient at this HIS")
            return mine
        if any(
            b.his_id == his_id and b.patient_id == patient_id for b in self._s.bindings.values()
        ):
            raise Conflict("patient already bound to another account")
        binding = Binding(user_id, his_id, patient_id, self._now())
        self._s.bindings[user_id, his_id] = binding
        return binding

    def get_binding(self, user_id: str, his_id: str) -> Binding:
        _check_id("user_id", user_id)
        _check_id("his_id", his_id)
        try:
            return self._s.bindings[user_id, his_id]
        except KeyError:
            raise NotFound("binding not found") from None

    def bindings_of(self, user_id: str) -> list[Binding]:
        _check_id("user_id", user_id)
        found = [b for b in self._s.bindings.values() if b.user_id == user_id]
        return sorted(found, key=lambda b: b.his_id)

    def announce_record(
        self, his_id: str, p_id: str, patient_id: str, record_type: str, size: int
    ) -> PlatformRecord:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        _check_id("patient_id", patient_id)
        _check_text("record_type", record_type, 64)
        _check_int("size", size, 0)
        old = self._s.records.get((his_id, p_id))
        if old is not None:
            if (old.patient_id, old.record_type) != (patient_id, record_type):
                raise Conflict("record announced with other metadata")
            return old
        record = PlatformRecord(
            his_id, p_id, patient_id, record_type, None, size, self._now(), None
        )
        self._s.records[his_id, p_id] = record
        return record

    def store_sealed(self, his_id: str, p_id: str, sealed: bytes) -> PlatformRecord:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        _check_bytes("sealed", sealed)
        record = self._record(his_id, p_id)
        if record.sealed is None:
            record = replace(record, sealed=sealed, fetched_at=self._now())
            self._s.records[his_id, p_id] = record
        return record

    def get_record(self, his_id: str, p_id: str) -> PlatformRecord:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        return self._record(his_id, p_id)

    def records_of_patient(self, his_id: str, patient_id: str) -> list[PlatformRecord]:
        _check_id("his_id", his_id)
        _check_id("patient_id", patient_id)
        found = [
            r for r in self._s.records.values() if r.his_id == his_id and r.patient_id == patient_id
        ]
        return sorted(found, key=lambda r: r.p_id)

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
        old = self._s.third_parties.get(b_id)
        if old is not None:
            if (old.display_name, old.hpke_public, old.certificate_pem, old.hpke_signature) != (
                display_name,
                hpke_public,
                certificate_pem,
                hpke_signature,
            ):
                raise Conflict("third party registered with other data")
            return old
        third_party = ThirdParty(
            b_id, display_name, hpke_public, certificate_pem, self._now(), hpke_signature
        )
        self._s.third_parties[b_id] = third_party
        return third_party

    def get_third_party(self, b_id: str) -> ThirdParty:
        _check_id("b_id", b_id)
        return self._third_party(b_id)

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
        self._record(his_id, p_id)
        self._account(user_id)
        self._third_party(b_id)
        if share_id in self._s.shares:
            raise Conflict("share id taken")
        share = Share(
            share_id, his_id, p_id, user_id, b_id, share_kind, kub_version, False, self._now()
        )
        self._s.shares[share_id] = share
        return share

    def mark_delivered(self, share_id: str) -> Share:
        share = replace(self.get_share(share_id), delivered=True)
        self._s.shares[share_id] = share
        return share

    def get_share(self, share_id: str) -> Share:
        _check_id("share_id", share_id)
        try:
            return self._s.shares[share_id]
        except KeyError:
            raise NotFound("share not found") from None

    def shares_of_record(self, his_id: str, p_id: str) -> list[Share]:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        found = [s for s in self._s.shares.values() if (s.his_id, s.p_id) == (his_id, p_id)]
        return sorted(found, key=lambda s: s.share_id)

    def open_dispense(self, his_id: str, p_id: str) -> Dispense:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        self._record(his_id, p_id)
        if (his_id, p_id) not in self._s.dispense:
            self._s.dispense[his_id, p_id] = Dispense(
                his_id, p_id, DispenseState.OPEN, None, 1, self._now()
            )
        return self._s.dispense[his_id, p_id]

    def get_dispense(self, his_id: str, p_id: str) -> Dispense:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        try:
            return self._s.dispense[his_id, p_id]
        except KeyError:
            raise NotFound("dispense claim not found") from None

    def _transition(self, operation: str, his_id: str, p_id: str, b_id: str) -> Dispense:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        _check_id("b_id", b_id)
        self._third_party(b_id)
        required, new = DISPENSE_TRANSITIONS[operation]
        current = self.get_dispense(his_id, p_id)
        if current.state is not required or (
            required is DispenseState.CLAIMED and current.claimed_by != b_id
        ):
            raise Conflict(f"cannot {operation}: prescription is {current.state.value}")
        updated = replace(
            current,
            state=new,
            claimed_by=None if new is DispenseState.OPEN else b_id,
            version=current.version + 1,
            updated_at=self._now(),
        )
        self._s.dispense[his_id, p_id] = updated
        return updated

    def claim(self, his_id: str, p_id: str, b_id: str) -> Dispense:
        return self._transition("claim", his_id, p_id, b_id)

    def complete(self, his_id: str, p_id: str, b_id: str) -> Dispense:
        return self._transition("complete", his_id, p_id, b_id)

    def release(self, his_id: str, p_id: str, b_id: str) -> Dispense:
        return self._transition("release", his_id, p_id, b_id)

    def hit(self, bucket: str, limit: int, window: timedelta) -> int:
        _check_text("bucket", bucket, 256)
        _check_window(limit, window)
        now = self._now()
        start, count = self._s.rate_limits.get(bucket, (now, 0))
        start, count = _rate_window(start, count, now, limit, window)
        self._s.rate_limits[bucket] = (start, count)
        return count

    def log_event(self, kind: str, user_id: str | None, detail: EventDetail) -> Event:
        _check_text("kind", kind, 64)
        if user_id is not None:
            _check_id("user_id", user_id)
        event = Event(
            self._s.next_seq, self._now(), kind, user_id, _check_detail(detail), _new_salt()
        )
        self._s.next_seq += 1
        self._s.events.append(event)
        return event

    def events(
        self, *, user_id: str | None = None, after: int = 0, limit: int = 100
    ) -> list[Event]:
        _check_events_query(user_id, after, limit)
        found = [
            e for e in self._s.events if e.seq > after and (user_id is None or e.user_id == user_id)
        ]
        return found[:limit]

    def audit_nodes(self) -> MemoryNodes:
        return MemoryNodes(self._s.audit_nodes)

    def sequence_events(self, limit: int = 1000) -> range:
        _check_int("limit", limit, 1)
        limit = min(limit, MAX_SEQUENCE_BATCH)
        waiting = [(at, e) for at, e in enumerate(self._s.events) if e.leaf_index is None]
        waiting = waiting[:limit]  # the list is in seq order
        log = MerkleLog(self.audit_nodes())
        leaves = log.append_many(e.entry().encode() for _, e in waiting)
        for (at, event), leaf in zip(waiting, leaves, strict=True):
            self._s.events[at] = replace(event, leaf_index=leaf)
        return leaves

    def audited_events(
        self, user_id: str, *, below: int, after: int = -1, limit: int | None = None
    ) -> list[Event]:
        _check_audited_query(user_id, below, after, limit)
        mine = [
            e
            for e in self._s.events
            if e.user_id == user_id and e.leaf_index is not None and after < e.leaf_index < below
        ]
        return sorted(mine, key=lambda e: e.leaf_index or 0)[:limit]

    def leaf_events(self, start: int, stop: int) -> list[Event]:
        _check_leaf_range(start, stop)
        found = [
            e for e in self._s.events if e.leaf_index is not None and start <= e.leaf_index < stop
        ]
        return sorted(found, key=lambda e: e.leaf_index or 0)

    def listing(self, user_id: str) -> list[ListedRecord]:
        _check_id("user_id", user_id)
        mine = {(b.his_id, b.patient_id) for b in self._s.bindings.values() if b.user_id == user_id}
        rows = []
        for record in self._s.records.values():
            if (record.his_id, record.patient_id) in mine:
                claim = self._s.dispense.get((record.his_id, record.p_id))
                rows.append(
                    (
                        record.his_id,
                        record.p_id,
                        record.record_type,
                        record.sealed is not None,
                        None if claim is None else claim.state.value,
                    )
                )
        shares = [
            (s.his_id, s.p_id, s.b_id)
            for s in self._s.shares.values()
            if s.user_id == user_id and s.delivered
        ]
        return _listed(rows, shares)

    def counts(self) -> dict[str, int]:
        s = self._s
        out = {
            "accounts": len(s.accounts),
            "bindings": len(s.bindings),
            "records": len(s.records),
            "records_fetched": sum(r.sealed is not None for r in s.records.values()),
            "third_parties": len(s.third_parties),
            "shares": len(s.shares),
            "shares_delivered": sum(x.delivered for x in s.shares.values()),
        }
        for state in DispenseState:
            out[f"dispense_{state.value}"] = sum(d.state is state for d in s.dispense.values())
        for direction in KueDirection:
            out[f"kue_keys_{direction.value}"] = sum(k[1] is direction for k in s.kue_keys.values())
        out["pq_exchanges"] = len(s.pq_exchanges)
        out["events"] = len(s.events)
        return out

    def add_kue_keys(
        self, user_id: str, direction: KueDirection | str, keys: Sequence[KueKey]
    ) -> int:
        _check_id("user_id", user_id)
        way = _check_kue_direction(direction)
        checked = _check_kue_keys(keys)
        self._account(user_id)
        if any(k.key_id in self._s.kue_keys for k in checked):
            raise Conflict("a KUE key ID is already stored")
        now = self._now()
        for k in checked:
            self._s.kue_keys[k.key_id] = (user_id, way, k.key, now)
        return len(checked)

    def take_kue_keys(
        self, user_id: str, direction: KueDirection | str, number: int
    ) -> list[KueKey]:
        _check_id("user_id", user_id)
        way = _check_kue_direction(direction)
        _check_int("number", number, 1)
        mine = sorted(
            (created, key_id)
            for key_id, (owner, d, _, created) in self._s.kue_keys.items()
            if owner == user_id and d is way
        )
        if len(mine) < number:
            raise NotFound("not enough KUE keys left")
        return [KueKey(key_id, self._s.kue_keys.pop(key_id)[2]) for _, key_id in mine[:number]]

    def take_kue_keys_by_id(
        self, user_id: str, direction: KueDirection | str, key_ids: Sequence[str]
    ) -> list[KueKey]:
        _check_id("user_id", user_id)
        way = _check_kue_direction(direction)
        ids = _check_key_ids(key_ids)
        for key_id in ids:
            entry = self._s.kue_keys.get(key_id)
            if entry is None or entry[0] != user_id or entry[1] is not way:
                raise NotFound("unknown or already used KUE key ID")
        return [KueKey(key_id, self._s.kue_keys.pop(key_id)[2]) for key_id in ids]

    def kue_key_count(self, user_id: str, direction: KueDirection | str) -> int:
        _check_id("user_id", user_id)
        way = _check_kue_direction(direction)
        return sum(1 for u, d, _, _ in self._s.kue_keys.values() if u == user_id and d is way)

    def add_pq_exchange(self, user_id: str, exchange_id: str, init: bytes) -> PqExchange:
        _check_id("user_id", user_id)
        _check_exchange_id(exchange_id)
        _check_bytes("init", init)
        self._account(user_id)
        old = self._s.pq_exchanges.get((user_id, exchange_id))
        if old is not None:
            if old.init != init:
                raise Conflict("exchange known with another init message")
            return old
        exchange = PqExchange(user_id, exchange_id, init, self._now())
        self._s.pq_exchanges[user_id, exchange_id] = exchange
        return exchange

    def get_pq_exchange(self, user_id: str, exchange_id: str) -> PqExchange:
        _check_id("user_id", user_id)
        _check_exchange_id(exchange_id)
        try:
            return self._s.pq_exchanges[user_id, exchange_id]
        except KeyError:
            raise NotFound("PQ exchange not found") from None

    def guard_replay(self, sender: str, jti: str, expires_at: datetime) -> bool:
        _check_id("sender", sender)
        _check_text("jti", jti, 256)
        until = _check_stamp("expires_at", expires_at)
        old = self._s.replay.get((sender, jti))
        if old is not None and old > self._now():
            return False
        self._s.replay[sender, jti] = until
        return True

    def purge_replay(self) -> int:
        now = self._now()
        expired = [key for key, until in self._s.replay.items() if until <= now]
        for key in expired:
            del self._s.replay[key]
        return len(expired)


# ─────────────────────────────────────────────────────────────── hospital


@dataclass
class HospitalState:
    patients: dict[str, Patient] = field(default_factory=dict)
    kuh: dict[tuple[str, int], KeyVersion] = field(default_factory=dict)
    records: dict[str, HospitalRecord] = field(default_factory=dict)


class MemoryHospitalRepo:
    """:class:`~patientkey.storage.repos.HospitalRepository` in memory."""

    def __init__(self, state: HospitalState, clock: Clock = utc_now) -> None:
        self._s = state
        self._clock = clock

    def _now(self) -> datetime:
        return _aware(self._clock)

    def _kuh_in(self, patient_id: str, state: KeyState) -> KeyVersion | None:
        for key in self._s.kuh.values():
            if key.owner_id == patient_id and key.state is state:
                return key
        return None

    def enroll(
        self, patient_id: str, display_name: str, birth_date: date, wrapped_kuh: bytes
    ) -> Patient:
        _check_id("patient_id", patient_id)
        _check_text("display_name", display_name, 256)
        _check_date("birth_date", birth_date)
        _check_bytes("wrapped_kuh", wrapped_kuh)
        if patient_id in self._s.patients:
            raise Conflict("patient already enrolled")
        now = self._now()
        patient = self._s.patients[patient_id] = Patient(patient_id, display_name, birth_date, now)
        self._s.kuh[patient_id, 1] = KeyVersion(patient_id, 1, wrapped_kuh, KeyState.CURRENT, now)
        return patient

    def get_patient(self, patient_id: str) -> Patient:
        _check_id("patient_id", patient_id)
        try:
            return self._s.patients[patient_id]
        except KeyError:
            raise NotFound("patient not found") from None

    def list_patients(self) -> list[Patient]:
        return sorted(self._s.patients.values(), key=lambda p: p.patient_id)

    def current_kuh(self, patient_id: str) -> KeyVersion:
        self.get_patient(patient_id)
        key = self._kuh_in(patient_id, KeyState.CURRENT)
        if key is None:  # pragma: no cover - enroll always creates version 1
            raise NotFound("no current KUH")
        return key

    def get_kuh(self, patient_id: str, version: int) -> KeyVersion:
        _check_id("patient_id", patient_id)
        _check_int("version", version, 1)
        try:
            return self._s.kuh[patient_id, version]
        except KeyError:
            raise NotFound("KUH version not found") from None

    def pending_kuh(self, patient_id: str) -> KeyVersion | None:
        self.get_patient(patient_id)
        return self._kuh_in(patient_id, KeyState.PENDING)

    def add_pending_kuh(self, patient_id: str, wrapped_key: bytes) -> KeyVersion:
        _check_id("patient_id", patient_id)
        _check_bytes("wrapped_key", wrapped_key)
        self.get_patient(patient_id)
        if self._kuh_in(patient_id, KeyState.PENDING) is not None:
            raise Conflict("a KUH rotation is already pending")
        top = max(v for (owner, v) in self._s.kuh if owner == patient_id)
        key = KeyVersion(patient_id, top + 1, wrapped_key, KeyState.PENDING, self._now())
        self._s.kuh[patient_id, key.version] = key
        return key

    def commit_pending_kuh(self, patient_id: str) -> KeyVersion:
        self.get_patient(patient_id)
        pending = self._kuh_in(patient_id, KeyState.PENDING)
        if pending is None:
            raise Conflict("no KUH rotation is pending")
        current = self._kuh_in(patient_id, KeyState.CURRENT)
        if current is not None:
            self._s.kuh[patient_id, current.version] = replace(current, state=KeyState.RETIRED)
        promoted = replace(pending, state=KeyState.CURRENT)
        self._s.kuh[patient_id, pending.version] = promoted
        return promoted

    def discard_pending_kuh(self, patient_id: str) -> bool:
        self.get_patient(patient_id)
        pending = self._kuh_in(patient_id, KeyState.PENDING)
        if pending is None:
            return False
        del self._s.kuh[patient_id, pending.version]
        return True

    def import_records(self, batch_id: str, records: Sequence[NewRecord]) -> list[HospitalRecord]:
        _check_id("batch_id", batch_id)
        _check_batch(records)
        if any(r.patient_id not in self._s.patients for r in records):
            raise NotFound("import names an unknown patient")
        if any(r.p_id in self._s.records for r in records):
            raise Conflict("a P_ID of the batch is already imported")
        now = self._now()
        imported = [
            HospitalRecord(r.p_id, r.patient_id, r.record_type, r.fhir, now, batch_id)
            for r in records
        ]
        self._s.records.update((r.p_id, r) for r in imported)
        return imported

    def get_record(self, p_id: str) -> HospitalRecord:
        _check_id("p_id", p_id)
        try:
            return self._s.records[p_id]
        except KeyError:
            raise NotFound("record not found") from None

    def records_of(self, patient_id: str) -> list[HospitalRecord]:
        self.get_patient(patient_id)
        found = [r for r in self._s.records.values() if r.patient_id == patient_id]
        return sorted(found, key=lambda r: r.p_id)


# ─────────────────────────────────────────────────────────────── third party


@dataclass
class ThirdPartyState:
    kub: dict[tuple[str, int], KeyVersion] = field(default_factory=dict)
    received: dict[_Key, Received] = field(default_factory=dict)
    claims: dict[_Key, Claim] = field(default_factory=dict)


class MemoryThirdPartyRepo:
    """:class:`~patientkey.storage.repos.ThirdPartyRepository` in memory."""

    def __init__(self, state: ThirdPartyState, clock: Clock = utc_now) -> None:
        self._s = state
        self._clock = clock

    def _now(self) -> datetime:
        return _aware(self._clock)

    def add_kub(self, user_id: str, version: int, wrapped_key: bytes) -> KeyVersion:
        _check_id("user_id", user_id)
        _check_int("version", version, 1)
        _check_bytes("wrapped_key", wrapped_key)
        held = [k for k in self._s.kub.values() if k.owner_id == user_id]
        if any(version <= k.version for k in held):
            raise Conflict("KUB version is not newer than the one held")
        for k in held:
            if k.state is KeyState.CURRENT:
                self._s.kub[user_id, k.version] = replace(k, state=KeyState.RETIRED)
        key = KeyVersion(user_id, version, wrapped_key, KeyState.CURRENT, self._now())
        self._s.kub[user_id, version] = key
        return key

    def current_kub(self, user_id: str) -> KeyVersion:
        _check_id("user_id", user_id)
        for key in self._s.kub.values():
            if key.owner_id == user_id and key.state is KeyState.CURRENT:
                return key
        raise NotFound("no KUB for this account")

    def get_kub(self, user_id: str, version: int) -> KeyVersion:
        _check_id("user_id", user_id)
        _check_int("version", version, 1)
        try:
            return self._s.kub[user_id, version]
        except KeyError:
            raise NotFound("KUB version not found") from None

    def reset_kub(self, user_id: str, version: int, wrapped_key: bytes) -> KeyVersion:
        _check_id("user_id", user_id)
        _check_int("version", version, 1)
        _check_bytes("wrapped_key", wrapped_key)
        for owner, held in list(self._s.kub):
            if owner == user_id and held >= version:
                del self._s.kub[owner, held]
        for (owner, held), key in list(self._s.kub.items()):
            if owner == user_id and key.state is KeyState.CURRENT:
                self._s.kub[owner, held] = replace(key, state=KeyState.RETIRED)
        key = KeyVersion(user_id, version, wrapped_key, KeyState.CURRENT, self._now())
        self._s.kub[user_id, version] = key
        return key

    def store_received(self, his_id: str, p_id: str, user_id: str, sealed: bytes) -> Received:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        _check_id("user_id", user_id)
        _check_bytes("sealed", sealed)
        old = self._s.received.get((his_id, p_id))
        if old is not None and old.user_id != user_id:
            raise Conflict("record was received from another account")
        received = Received(his_id, p_id, user_id, sealed, self._now())
        self._s.received[his_id, p_id] = received
        return received

    def get_received(self, his_id: str, p_id: str) -> Received:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        try:
            return self._s.received[his_id, p_id]
        except KeyError:
            raise NotFound("received record not found") from None

    def received_from(self, user_id: str) -> list[Received]:
        _check_id("user_id", user_id)
        found = [r for r in self._s.received.values() if r.user_id == user_id]
        return sorted(found, key=lambda r: (r.his_id, r.p_id))

    def list_received(self) -> list[Received]:
        return sorted(self._s.received.values(), key=lambda r: (r.his_id, r.p_id))

    def set_claim(self, his_id: str, p_id: str, state: ClaimState | str) -> Claim:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        new = _check_claim_state(state)
        now = self._now()
        old = self._s.claims.get((his_id, p_id))
        _claim_step(None if old is None else old.state, new)
        claim = Claim(his_id, p_id, new, now)
        self._s.claims[his_id, p_id] = claim
        return claim

    def get_claim(self, his_id: str, p_id: str) -> Claim:
        _check_id("his_id", his_id)
        _check_id("p_id", p_id)
        try:
            return self._s.claims[his_id, p_id]
        except KeyError:
            raise NotFound("claim not found") from None


# ─────────────────────────────────────────── platform: authorization unit (OAuth/CIBA)

_LOCK_TYPE: Final = type(threading.Lock())


@dataclass
class AuthzState:
    """The authorization unit's tables; five are the authz and identity cores' own twins."""

    requests: InMemoryAuthRequestStore = field(default_factory=InMemoryAuthRequestStore)
    grants: InMemoryGrantStore = field(default_factory=InMemoryGrantStore)
    consents: dict[str, dict[str, Any]] = field(default_factory=dict)
    clients: dict[str, RegisteredClient] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    device_keys: dict[_Key, EnrolledDeviceKey] = field(default_factory=dict)  # (user, key_id)
    certificates: dict[str, str] = field(default_factory=dict)
    contacts: dict[tuple[str, OtpChannel], str] = field(default_factory=dict)
    environments: dict[str, str] = field(default_factory=dict)
    totp: MemoryTotpStore = field(default_factory=MemoryTotpStore)
    otp: MemoryOtpStore = field(default_factory=MemoryOtpStore)
    lockout: MemoryLockoutStore = field(default_factory=MemoryLockoutStore)
    revoked: dict[str, int] = field(default_factory=dict)
    assertions: dict[tuple[str, str], int] = field(default_factory=dict)
    # Passkeys by base64url credential id (unique across users), with their owner.
    webauthn: dict[str, tuple[str, EnrolledWebAuthnCredential]] = field(default_factory=dict)
    webauthn_challenges: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    # Where log_event writes: the platform's event log, as on SQL.
    platform: PlatformState = field(default_factory=PlatformState)

    def __deepcopy__(self, memo: dict[int, Any]) -> AuthzState:
        # Every stored value is immutable (frozen dataclasses and models; documents and
        # JWKS are copied in and out), so a transaction's private copy needs new
        # containers only: a deep copy would rebuild every stored pydantic model on
        # every transaction (about 100 µs per stored request).
        copied: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            # A core's twin or the platform state: copy their containers.
            copied[f.name] = dict(value) if isinstance(value, dict) else _fork(value)
        return AuthzState(**copied)


def _fork(holder: H) -> H:
    """A copy of ``holder`` with new containers, the same (immutable) values, a new lock.

    The cores' twins guard themselves with a ``threading.Lock``, which cannot be
    copied; MemoryStore runs one transaction at a time, so each copy gets its own.
    """
    clone = copy.copy(holder)
    for name, value in vars(holder).items():
        if isinstance(value, _LOCK_TYPE):
            setattr(clone, name, threading.Lock())
        elif isinstance(value, dict | list):
            setattr(clone, name, copy.copy(value))
    return clone


class _MemoryRequests:
    def __init__(self, twin: InMemoryAuthRequestStore) -> None:
        self._twin = twin

    def add(self, request: AuthRequest) -> None:
        _check_request(request)
        # The twin indexes request_id without refusing a duplicate; the table's UNIQUE does.
        if (
            self._twin.get(request.auth_req_id) is not None
            or self._twin.by_request_id(request.request_id) is not None
        ):
            raise Conflict("duplicate auth_req_id or request_id")
        self._twin.add(request)

    def get(self, auth_req_id: str) -> AuthRequest | None:
        _check_id("auth_req_id", auth_req_id)
        return self._twin.get(auth_req_id)

    def by_request_id(self, request_id: str) -> AuthRequest | None:
        _check_id("request_id", request_id)
        return self._twin.by_request_id(request_id)

    def pending_for(self, user_id: str, now: int) -> list[AuthRequest]:
        _check_id("user_id", user_id)
        _check_seconds("now", now)
        # Ties in created_at broken by id, as the SQL query orders them.
        found = self._twin.pending_for(user_id, now)
        return sorted(found, key=lambda r: (r.created_at, r.auth_req_id))

    def replace(self, old: AuthRequest, new: AuthRequest) -> bool:
        _check_request_successor(old, new)
        return self._twin.replace(old, new)


class _MemoryGrants:
    def __init__(self, twin: InMemoryGrantStore, consents: dict[str, dict[str, Any]]) -> None:
        self._twin = twin
        self._consents = consents

    def add(self, grant: Grant) -> None:
        self._twin.add(_check_grant(grant))

    def get(self, grant_id: str) -> Grant | None:
        _check_id("grant_id", grant_id)
        return self._twin.get(grant_id)

    def for_user(self, user_id: str) -> list[Grant]:
        _check_id("user_id", user_id)
        return self._twin.for_user(user_id)

    def replace(self, old: Grant, new: Grant) -> bool:
        _check_grant_successor(old, new)
        return self._twin.replace(old, new)

    def set_consent(self, grant_id: str, document: dict[str, Any]) -> None:
        _check_id("grant_id", grant_id)
        _check_document("consent", document, MAX_CONSENT_BYTES)
        if self._twin.get(grant_id) is None:
            raise NotFound("grant not found")
        # A copy: the caller's later changes to its dict must not reach the store.
        self._consents[grant_id] = copy.deepcopy(document)

    def consent(self, grant_id: str) -> dict[str, Any] | None:
        _check_id("grant_id", grant_id)
        return copy.deepcopy(self._consents.get(grant_id))


class _MemoryClients:
    def __init__(self, clients: dict[str, RegisteredClient]) -> None:
        self._clients = clients

    def register(self, client: RegisteredClient, *, replace: bool = False) -> None:
        _check_client(client)
        if client.client_id in self._clients and not replace:
            raise Conflict("client_id is registered already")
        self._clients[client.client_id] = copy.deepcopy(client)

    def get(self, client_id: str) -> RegisteredClient | None:
        _check_id("client_id", client_id)
        # Copies out: a caller changing a client's jwks must not change the store.
        return copy.deepcopy(self._clients.get(client_id))

    def all(self) -> list[RegisteredClient]:
        return [copy.deepcopy(self._clients[k]) for k in sorted(self._clients)]


class _MemoryCredentials:
    def __init__(self, state: AuthzState, clock: Clock) -> None:
        self._s = state
        self._clock = clock

    def set_password_hash(self, user_id: str, phc: str) -> None:
        _check_id("user_id", user_id)
        self._s.passwords[user_id] = _check_phc(phc)

    def password_hash(self, user_id: str) -> str | None:
        _check_id("user_id", user_id)
        return self._s.passwords.get(user_id)

    def add_device_key(self, user_id: str, key: DeviceKey) -> EnrolledDeviceKey:
        _check_id("user_id", user_id)
        _check_device_key(key)
        if (user_id, key.key_id) in self._s.device_keys:
            raise Conflict("device key registered already")
        enrolled = EnrolledDeviceKey(key.algorithm, key.public_bytes, _seconds_now(self._clock))
        self._s.device_keys[user_id, key.key_id] = enrolled
        return enrolled

    def device_keys(self, user_id: str) -> list[EnrolledDeviceKey]:
        _check_id("user_id", user_id)
        mine = [key for (user, _), key in self._s.device_keys.items() if user == user_id]
        return sorted(mine, key=lambda k: (k.created_at, k.key_id))

    def remove_device_key(self, user_id: str, key_id: str) -> bool:
        _check_id("user_id", user_id)
        _check_key_id(key_id)
        return self._s.device_keys.pop((user_id, key_id), None) is not None

    def set_certificate(self, user_id: str, pem: str) -> None:
        _check_id("user_id", user_id)
        self._s.certificates[user_id] = _check_pem(pem)

    def certificate(self, user_id: str) -> str | None:
        _check_id("user_id", user_id)
        return self._s.certificates.get(user_id)

    def set_contact(self, user_id: str, channel: ContactChannel | OtpChannel, address: str) -> None:
        _check_id("user_id", user_id)
        checked = _check_channel(channel)
        self._s.contacts[user_id, checked] = _check_text("address", address, 320)

    def contact(self, user_id: str, channel: ContactChannel | OtpChannel) -> str | None:
        _check_id("user_id", user_id)
        return self._s.contacts.get((user_id, _check_channel(channel)))

    def set_environment(self, user_id: str, fingerprint: str) -> None:
        _check_id("user_id", user_id)
        self._s.environments[user_id] = _check_text("fingerprint", fingerprint, 256)

    def environment(self, user_id: str) -> str | None:
        _check_id("user_id", user_id)
        return self._s.environments.get(user_id)


class _MemoryTotp:
    def __init__(self, twin: MemoryTotpStore) -> None:
        self._twin = twin

    def put(self, user_id: str, enrollment: TotpEnrollment) -> None:
        _check_id("user_id", user_id)
        self._twin.put(user_id, _check_totp(enrollment))

    def get(self, user_id: str) -> TotpEnrollment | None:
        _check_id("user_id", user_id)
        return self._twin.get(user_id)

    def swap(self, user_id: str, expected: TotpEnrollment, new: TotpEnrollment) -> bool:
        _check_id("user_id", user_id)
        return self._twin.swap(user_id, _check_totp(expected), _check_totp(new))


class _MemoryOtp:
    def __init__(self, twin: MemoryOtpStore) -> None:
        self._twin = twin

    def add(self, challenge: OtpChallenge) -> None:
        _check_challenge(challenge)
        # The twin calls a duplicate InvalidInput; storage says Conflict, as for every id.
        if self._twin.get(challenge.challenge_id) is not None:
            raise Conflict("duplicate one-time code challenge id")
        self._twin.add(challenge)

    def get(self, challenge_id: str) -> OtpChallenge | None:
        _check_id("challenge_id", challenge_id)
        return self._twin.get(challenge_id)

    def swap(self, expected: OtpChallenge, new: OtpChallenge) -> bool:
        _check_challenge_successor(expected, new)
        return self._twin.swap(expected, new)

    def purge(self, now: float) -> int:
        return self._twin.purge(_check_instant("now", now))


class _MemoryLockout:
    def __init__(self, twin: MemoryLockoutStore) -> None:
        self._twin = twin

    def get(self, user_id: str, proof: ProofKind) -> LockoutState | None:
        _check_id("user_id", user_id)
        return self._twin.get(user_id, _check_proof(proof))

    def update(
        self,
        user_id: str,
        proof: ProofKind,
        change: LockoutChange,
    ) -> LockoutState | None:
        _check_id("user_id", user_id)
        return self._twin.update(
            user_id, _check_proof(proof), lambda state: _check_lockout(change(state))
        )


class _MemoryTokens:
    def __init__(self, state: AuthzState) -> None:
        self._s = state

    def revoke_jti(self, jti: str, expires_at: int) -> bool:
        _check_jti(jti)
        _check_seconds("expires_at", expires_at)
        if jti in self._s.revoked:
            return False
        self._s.revoked[jti] = expires_at
        return True

    def is_revoked(self, jti: str) -> bool:
        return _check_jti(jti) in self._s.revoked

    def use_assertion(self, client_id: str, jti: str, expires_at: int) -> bool:
        key = (_check_id("client_id", client_id), _check_jti(jti))
        _check_seconds("expires_at", expires_at)
        if key in self._s.assertions:
            return False
        self._s.assertions[key] = expires_at
        return True

    def purge(self, now: int) -> int:
        _check_seconds("now", now)
        return _drop_expired(self._s.revoked, now) + _drop_expired(self._s.assertions, now)


class _MemoryWebAuthn:
    def __init__(self, state: AuthzState) -> None:
        self._s = state

    def add(
        self, user_id: str, credential: WebAuthnCredential, created_at: int
    ) -> EnrolledWebAuthnCredential:
        _check_id("user_id", user_id)
        key = _check_credential_id(_check_credential(credential).credential_id)
        _check_seconds("created_at", created_at)
        if key in self._s.webauthn:
            raise Conflict("passkey registered already")
        enrolled = _enrolled(credential, created_at)
        self._s.webauthn[key] = (user_id, enrolled)
        return enrolled

    def for_user(self, user_id: str) -> list[EnrolledWebAuthnCredential]:
        _check_id("user_id", user_id)
        mine = [(key, c) for key, (user, c) in self._s.webauthn.items() if user == user_id]
        # As the SQL query orders: registration time, then the base64url id.
        return [c for _, c in sorted(mine, key=lambda kc: (kc[1].created_at, kc[0]))]

    def get(self, user_id: str, credential_id: bytes) -> EnrolledWebAuthnCredential | None:
        _check_id("user_id", user_id)
        found = self._s.webauthn.get(_check_credential_id(credential_id))
        return found[1] if found is not None and found[0] == user_id else None

    def swap_sign_count(self, user_id: str, credential_id: bytes, expected: int, new: int) -> bool:
        _check_id("user_id", user_id)
        key = _check_credential_id(credential_id)
        _check_sign_count("expected", expected)
        _check_sign_count("new", new)
        found = self._s.webauthn.get(key)
        if found is None or found[0] != user_id or found[1].sign_count != expected:
            return False
        self._s.webauthn[key] = (user_id, replace(found[1], sign_count=new))
        return True

    def remove(self, user_id: str, credential_id: bytes) -> bool:
        _check_id("user_id", user_id)
        key = _check_credential_id(credential_id)
        found = self._s.webauthn.get(key)
        if found is None or found[0] != user_id:
            return False
        del self._s.webauthn[key]
        return True

    def put_challenge(self, user_id: str, challenge: bytes, expires_at: int) -> None:
        _check_id("user_id", user_id)
        _check_registration_challenge(challenge)
        _check_seconds("expires_at", expires_at)
        self._s.webauthn_challenges[user_id] = (challenge, expires_at)

    def take_challenge(self, user_id: str, now: int) -> bytes | None:
        _check_id("user_id", user_id)
        _check_seconds("now", now)
        found = self._s.webauthn_challenges.pop(user_id, None)
        if found is None or found[1] <= now:
            return None
        return found[0]


def _drop_expired(ledger: dict[K, int], now: int) -> int:
    expired = [key for key, until in ledger.items() if until <= now]
    for key in expired:
        del ledger[key]
    return len(expired)


class MemoryAuthzRepo(_OnPlatformEventLog):
    """:class:`~patientkey.storage.authz.AuthzRepository` in memory."""

    def __init__(self, state: AuthzState, clock: Clock = utc_now) -> None:
        self.requests: Final = _MemoryRequests(state.requests)
        self.grants: Final = _MemoryGrants(state.grants, state.consents)
        self.clients: Final = _MemoryClients(state.clients)
        self.credentials: Final = _MemoryCredentials(state, clock)
        self.totp: Final = _MemoryTotp(state.totp)
        self.otp: Final = _MemoryOtp(state.otp)
        self.lockout: Final = _MemoryLockout(state.lockout)
        self.tokens: Final = _MemoryTokens(state)
        self.webauthn: Final = _MemoryWebAuthn(state)
        self._platform = MemoryPlatformRepo(state.platform, clock)


# ─────────────────────────────────────────────────────────────── stores


def platform_store(clock: Clock = utc_now) -> MemoryStore[PlatformState, MemoryPlatformRepo]:
    """An empty in-memory platform store."""
    return MemoryStore(MemoryPlatformRepo, PlatformState(), clock=clock)


def hospital_store(clock: Clock = utc_now) -> MemoryStore[HospitalState, MemoryHospitalRepo]:
    """An empty in-memory hospital store."""
    return MemoryStore(MemoryHospitalRepo, HospitalState(), clock=clock)


def thirdparty_store(
    clock: Clock = utc_now,
) -> MemoryStore[ThirdPartyState, MemoryThirdPartyRepo]:
    """An empty in-memory third-party store."""
    return MemoryStore(MemoryThirdPartyRepo, ThirdPartyState(), clock=clock)


def authz_store(clock: Clock = utc_now) -> MemoryStore[AuthzState, MemoryAuthzRepo]:
    """An empty in-memory store of the authorization unit."""
    return MemoryStore(MemoryAuthzRepo, AuthzState(), clock=clock)


# Static checks that the memory classes implement the protocols.
_platform: Callable[[PlatformState, Clock], PlatformRepository] = MemoryPlatformRepo
_hospital: Callable[[HospitalState, Clock], HospitalRepository] = MemoryHospitalRepo
_thirdparty: Callable[[ThirdPartyState, Clock], ThirdPartyRepository] = MemoryThirdPartyRepo
_authz: Callable[[AuthzState, Clock], AuthzRepository] = MemoryAuthzRepo
