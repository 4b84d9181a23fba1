"""The third party's core (pharmacy, regulator, health app): receiving shares, dispensing.

Sans-IO over a :class:`~patientkey.storage.repos.Store` of
:class:`~patientkey.storage.repos.ThirdPartyRepository` and, for dispensing, a
:class:`PlatformPort` (``PeerClient`` in a service, an in-process client in tests).

Receiving a share (docs/protocol.md op 4, step 4), in one transaction: read the keys
held, open the DEK (``kbp:<B_ID>`` with the HPKE key pair, or ``kub:<B_ID>`` with
KUB_v), unwrap the next KUB, decrypt the body and check it is a valid FHIR record;
only when all of that succeeded are the record and KUB_{v+1} written (STYLE.md 3).
Anything failing before leaves the store untouched.

Decisions beyond the letter of docs/protocol.md:

* **Ratchet bookkeeping** (``ThirdPartyRepository.reset_kub``): an HPKE share
  restarts the ratchet at version 1 (older KUBs of that account are dropped); a KUB
  share under v stores KUB_{v+1}, replacing a KUB_{v+1} left by an earlier share
  under v whose receipt was lost; versions below stay. So the third party always holds
  the version the wallet last saw accepted, and a reset never needs the old ones.
* **"kub-unknown"** is answered when no KUB_v is held *or* the KUB_v held does not open
  the share's ``kub:<B_ID>`` entry (the two ends disagree about KUB_v, e.g. after a
  reset whose receipt was lost): either way the wallet's answer is a fresh HPKE share,
  so a desynchronised ratchet heals instead of failing for ever. Nothing is stored.
* **Reason "completed"**: a share of a prescription this third party dispensed
  (its own claim is ``completed``) is not accepted; nothing is stored.
* **Received records are kept re-wrapped**: the stored copy has one recipient,
  ``store:<B_ID>`` (AES-KW under the storage key, version 1), instead of the entries
  the share came with. Reading a received record never depends on KUB versions or the
  HPKE key, which the ratchet drops or rotates.

Dispensing follows the platform: the local claim record (``claims`` table, states of
``CLAIM_TRANSITIONS``) is moved to what the platform answered; a claim is marked
``pending`` before the request goes out, so an unanswered request is visible.

Every dispense request carries an RFC 9068 access token: the platform lets a third
party claim, complete or release only under a live grant of the patient allowing
``use`` on that prescription. The token comes from an injected
:class:`~patientkey.thirdparty.tokens.TokenSource` (the CLI's CIBA flow fills it,
``patientkey thirdparty authorize``); :func:`~patientkey.thirdparty.tokens.choose_token`
picks it. Without one the dispense fails with
:class:`~patientkey.thirdparty.tokens.NoAccessToken` before anything changes or leaves.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, Protocol, TypeVar

from patientkey.authz.rar import RecordRef
from patientkey.crypto import (
    SealedRecord,
    SymmetricRecipient,
    add_recipient,
    decrypt_body,
    open_record,
    unwrap_dek,
)
from patientkey.crypto.ratchet import ShareContext, unwrap_next_kub
from patientkey.crypto.vault import KeyVault
from patientkey.errors import (
    ConfigError,
    Conflict,
    CryptoError,
    InvalidInput,
    NotFound,
    PeerUnavailable,
)
from patientkey.fhir.records import ClinicalRecord, load_record
from patientkey.pki import valid_party_name
from patientkey.protocol.messages import (
    DispenseRequest,
    DispenseState,
    Message,
    ShareReceipt,
    ShareRelay,
)
from patientkey.protocol.routes import DISPENSE
from patientkey.storage.repos import CLAIM_TRANSITIONS, Store, ThirdPartyRepository
from patientkey.storage.schema import ClaimState
from patientkey.thirdparty.settings import ThirdPartyKeys
from patientkey.thirdparty.tokens import TokenSource, choose_token

__all__ = [
    "NOT_RECEIVED",
    "DispenseAction",
    "OpenedRecord",
    "PlatformPort",
    "ReceivedInfo",
    "ThirdPartyCore",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

NOT_RECEIVED: Final = "no such received record"
MAX_KUB_VERSION: Final = 2**31 - 1
DispenseAction = Literal["claim", "complete", "release"]
#: The platform checks this action of the grant for claim, complete and release alike.
_DISPENSE_ACTION: Final = "use"


class PlatformPort(Protocol):
    """How the third party reaches the platform (``PeerClient.call``)."""

    def call(self, path: str, message: Message, reply: type[M]) -> M: ...


@dataclass(frozen=True, slots=True)
class ReceivedInfo:
    """A received record without its content."""

    his_id: str
    p_id: str
    user_id: str
    received_at: datetime
    claim: ClaimState | None


@dataclass(frozen=True, slots=True)
class OpenedRecord:
    """A received record, decrypted for the pharmacist (health data: never log it)."""

    info: ReceivedInfo
    record: ClinicalRecord = field(repr=False)


def _kub_name(version: int) -> str:
    return f"kub.{version}"


def _claim_path(current: ClaimState | None, target: ClaimState) -> list[ClaimState]:
    """The shortest run of allowed claim transitions from ``current`` to ``target``."""
    queue: deque[tuple[ClaimState | None, list[ClaimState]]] = deque([(current, [])])
    seen: set[ClaimState | None] = {current}
    while queue:
        state, path = queue.popleft()
        if state is target:
            return path
        for nxt in sorted(CLAIM_TRANSITIONS[state]):
            if nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, [*path, nxt]))
    return []


class ThirdPartyCore:
    """One third party, B_ID ``b_id``."""

    def __init__(
        self,
        b_id: str,
        store: Store[ThirdPartyRepository],
        keys: ThirdPartyKeys,
        *,
        platform: PlatformPort | None = None,
        tokens: TokenSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not valid_party_name(b_id):
            raise ConfigError(f"invalid B_ID {b_id!r}")
        self.b_id = b_id
        self._store = store
        self._hpke = keys.hpke
        self._storage_key = keys.storage_key
        self._vault = KeyVault(b_id, keys.storage_key)
        self._store_kid = f"store:{b_id}"
        self._platform = platform
        self._tokens = tokens
        self._clock = clock

    # ------------------------------------------------------------------ op 4: share

    def _receipt(
        self,
        repo: ThirdPartyRepository,
        relay: ShareRelay,
        reason: Literal["kub-unknown", "completed"],
    ) -> ShareReceipt:
        try:
            held = repo.current_kub(relay.user_id).version
        except NotFound:
            held = 0
        log.info(
            "share of %s/%s from %s not accepted: %s",
            relay.his_id,
            relay.p_id,
            relay.user_id,
            reason,
        )
        return ShareReceipt(
            b_id=self.b_id, p_id=relay.p_id, accepted=False, kub_version=held, reason=reason
        )

    def _for_storage(self, record: SealedRecord, dek: bytes) -> SealedRecord:
        """The record with one recipient: this party's storage key (body untouched)."""
        others = tuple(r for r in record.recipients if r.kid != self._store_kid)
        base = SealedRecord(record.protected, record.iv, record.ciphertext, record.tag, others)
        recipient = SymmetricRecipient(self._store_kid, 1, self._storage_key)
        ours = add_recipient(base, dek, recipient).entries_for(self._store_kid)
        return SealedRecord(record.protected, record.iv, record.ciphertext, record.tag, ours)

    def receive_share(self, relay: ShareRelay) -> ShareReceipt:
        """Open a relayed share, keep the record and the next KUB; see the module docstring."""
        if relay.kind == "hpke":
            if relay.kub_version != 0:
                raise InvalidInput("an HPKE share carries kub_version 0")
            next_version = 1
        else:
            if not 1 <= relay.kub_version < MAX_KUB_VERSION:
                raise InvalidInput(f"a KUB share carries kub_version 1 to {MAX_KUB_VERSION - 1}")
            next_version = relay.kub_version + 1
        record = SealedRecord.from_bytes(relay.sealed)
        his_id, _, _patient = record.owner.partition("/")
        if record.record_id != relay.p_id or his_id != relay.his_id:
            raise InvalidInput("the sealed record is not the record the share names")
        ctx = ShareContext(
            user_id=relay.user_id,
            b_id=self.b_id,
            his_id=relay.his_id,
            p_id=relay.p_id,
            next_version=next_version,
        )
        with self._store.transaction() as repo:
            try:
                if repo.get_claim(relay.his_id, relay.p_id).state is ClaimState.COMPLETED:
                    return self._receipt(repo, relay, "completed")
            except NotFound:
                pass
            if relay.kind == "hpke":
                dek = unwrap_dek(record, kid=f"kbp:{self.b_id}", key=self._hpke)
                next_kub = unwrap_next_kub(self._hpke, relay.next_kub, ctx)
            else:
                try:
                    held = repo.get_kub(relay.user_id, relay.kub_version)
                except NotFound:
                    return self._receipt(repo, relay, "kub-unknown")
                kub = self._vault.unwrap(relay.user_id, _kub_name(held.version), held.wrapped_key)
                try:
                    dek = unwrap_dek(
                        record, kid=f"kub:{self.b_id}", key=kub, version=relay.kub_version
                    )
                except CryptoError:
                    return self._receipt(repo, relay, "kub-unknown")
                next_kub = unwrap_next_kub(kub, relay.next_kub, ctx)
            body = decrypt_body(record, dek)
            load_record(body, name=f"{relay.his_id}/{relay.p_id}")
            # Every check passed: now, and only now, change state.
            kept = self._for_storage(record, dek)
            repo.store_received(relay.his_id, relay.p_id, relay.user_id, kept.to_bytes())
            wrapped = self._vault.wrap(relay.user_id, _kub_name(next_version), next_kub)
            repo.reset_kub(relay.user_id, next_version, wrapped)
        log.info(
            "received %s/%s from %s (%s share); KUB v%d held",
            relay.his_id,
            relay.p_id,
            relay.user_id,
            relay.kind,
            next_version,
        )
        return ShareReceipt(
            b_id=self.b_id, p_id=relay.p_id, accepted=True, kub_version=next_version
        )

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _claim(repo: ThirdPartyRepository, his_id: str, p_id: str) -> ClaimState | None:
        try:
            return repo.get_claim(his_id, p_id).state
        except NotFound:
            return None

    def received(self) -> list[ReceivedInfo]:
        """Every received record (metadata and claim state), by (HIS_ID, P_ID)."""
        with self._store.transaction() as repo:
            return [
                ReceivedInfo(
                    r.his_id, r.p_id, r.user_id, r.received_at, self._claim(repo, r.his_id, r.p_id)
                )
                for r in repo.list_received()
            ]

    def show(self, his_id: str, p_id: str) -> OpenedRecord:
        """Decrypt a received record for display; NotFound if there is none."""
        with self._store.transaction() as repo:
            try:
                received = repo.get_received(his_id, p_id)
            except NotFound:
                raise NotFound(NOT_RECEIVED) from None
            claim = self._claim(repo, his_id, p_id)
        record = SealedRecord.from_bytes(received.sealed)
        body = open_record(record, kid=self._store_kid, key=self._storage_key, version=1)
        info = ReceivedInfo(his_id, p_id, received.user_id, received.received_at, claim)
        return OpenedRecord(info=info, record=load_record(body, name=f"{his_id}/{p_id}"))

    # ------------------------------------------------------------------ dispensing

    def _move_claim(self, his_id: str, p_id: str, target: ClaimState) -> None:
        with self._store.transaction() as repo:
            for state in _claim_path(self._claim(repo, his_id, p_id), target):
                repo.set_claim(his_id, p_id, state)

    def _access_token(self, user_id: str, his_id: str, p_id: str) -> str:
        """The token to dispense under; NoAccessToken (saying what to run) if none."""
        held = self._tokens.tokens_for(user_id) if self._tokens is not None else ()
        record = RecordRef(record_type="prescription", his_id=his_id, p_id=p_id)
        token = choose_token(
            held, user_id=user_id, action=_DISPENSE_ACTION, record=record, now=self._clock()
        )
        return token.access_token

    def dispense(self, action: DispenseAction, his_id: str, p_id: str) -> DispenseState:
        """Ask the platform to claim / complete / release; keep its answer as the claim state.

        The request carries the access token of the patient's grant for this
        prescription; without one nothing changes and nothing is sent.
        """
        if self._platform is None:
            raise ConfigError("no platform connection: cannot dispense")
        with self._store.transaction() as repo:
            try:
                received = repo.get_received(his_id, p_id)
            except NotFound:
                raise NotFound(NOT_RECEIVED) from None
            claim = self._claim(repo, his_id, p_id)
            if claim is ClaimState.COMPLETED:
                raise Conflict("this prescription has been dispensed already")
            token = self._access_token(received.user_id, his_id, p_id)
            if action == "claim" and claim in (None, ClaimState.RELEASED):
                repo.set_claim(his_id, p_id, ClaimState.PENDING)
                claim = ClaimState.PENDING
        request = DispenseRequest(
            b_id=self.b_id, his_id=his_id, p_id=p_id, action=action, access_token=token
        )
        try:
            state = self._platform.call(DISPENSE, request, DispenseState)
        except Conflict:
            if claim is ClaimState.PENDING:  # our claim was refused: another holds it
                self._move_claim(his_id, p_id, ClaimState.RELEASED)
            raise
        if (state.his_id, state.p_id) != (his_id, p_id):
            raise PeerUnavailable("the platform answered for another prescription")
        if state.state == "completed":
            target = ClaimState.COMPLETED
        elif state.state == "claimed" and state.claimed_by == self.b_id:
            target = ClaimState.CLAIMED
        else:
            target = ClaimState.RELEASED
        self._move_claim(his_id, p_id, target)
        log.info("dispense %s of %s/%s: %s", action, his_id, p_id, state.state)
        return state
