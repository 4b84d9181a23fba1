"""Grants: what the patient approved, stored, enforced live, revoked.

A grant is created when the patient approves a request (``ciba.approve``) and stored
next to its FHIR ``Consent`` (``consent.py``). Access tokens are short-lived proofs of a
grant (``tokens.py``); the grant is what every use consults.

Live enforcement
----------------
:func:`check` is the one gate for everything a third party does at the platform —
receive a share, claim or dispense, fetch what it was granted. It reads the grant from
the store on **every** call (there is no cache, no "already accepted" shortcut), so a
revocation is effective on the very next request. It refuses:

* an unknown, revoked or expired grant, or a token whose client or patient do not match
  its grant → ``invalid_token`` (401, RFC 6750 §3.1; one opaque text);
* an action or record the token's and the grant's details do not both allow, or a
  record of another patient → ``insufficient_scope`` (403);
* a use that needs stronger or fresher verification (``catalog.step_up_required``,
  RFC 9470) → ``insufficient_user_authentication`` (401) with acr_values/max_age.

Each object of a grant's details is in force for its own ``duration`` from the grant's
creation; the grant expires with the longest.

State (one table, as in ``protocol.states``)::

    ACTIVE --revoke--> REVOKED            (expiry is a matter of time: live_status)

Every state change returns an :class:`~patientkey.authz.audit.AuditEvent`; refusals by
:func:`check` carry theirs on the exception (``audit_event``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final, Literal, Protocol

from patientkey.authz.audit import AuditEvent, AuditKind
from patientkey.authz.catalog import Catalog, ProofKind, StepUpContext
from patientkey.authz.errors import (
    InsufficientScope,
    InvalidAuthorizationDetails,
    InvalidToken,
    OAuthError,
)
from patientkey.authz.rar import (
    Action,
    AuthorizationDetails,
    HealthRecordAccess,
    RecordRef,
    dump_details,
)
from patientkey.authz.tokens import AccessTokenClaims
from patientkey.errors import Conflict, NotFound

__all__ = [
    "GRANT_TRANSITIONS",
    "Grant",
    "GrantEvent",
    "GrantStatus",
    "GrantStore",
    "InMemoryGrantStore",
    "Revoker",
    "Use",
    "check",
    "create_grant",
    "find_use",
    "grant_next",
    "revoke_grant",
]

Revoker = Literal["patient", "client"]
_CAS_RETRIES: Final = 8


class GrantStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


class GrantEvent(StrEnum):
    REVOKE = "revoke"


GRANT_TRANSITIONS: Final[dict[tuple[GrantStatus, GrantEvent], GrantStatus]] = {
    (GrantStatus.ACTIVE, GrantEvent.REVOKE): GrantStatus.REVOKED,
}


def grant_next(state: GrantStatus, event: GrantEvent) -> GrantStatus:
    """The state after ``event``; Conflict if the table forbids it."""
    try:
        return GRANT_TRANSITIONS[(state, event)]
    except KeyError:
        raise Conflict(f"grant is {state}: cannot {event}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """One stored grant: who allowed whom what, verified how, until when."""

    grant_id: str
    user_id: str
    client_id: str
    scenario: str
    details: AuthorizationDetails
    acr: str
    proofs: frozenset[ProofKind]
    auth_time: int
    created_at: int
    expires_at: int
    status: GrantStatus = GrantStatus.ACTIVE
    revoked_at: int | None = None
    revoked_by: Revoker | None = None
    version: int = 1

    def live_status(self, now: int) -> Literal["active", "revoked", "expired"]:
        if self.status is GrantStatus.REVOKED:
            return "revoked"
        return "active" if now < self.expires_at else "expired"

    def in_force(self, entry: HealthRecordAccess, now: int) -> bool:
        """True while ``entry`` (of this grant or of a token for it) has not run out."""
        assert entry.duration is not None  # every granted object carries one
        return now < self.created_at + entry.duration

    def allows(self, action: Action, record: RecordRef, now: int) -> bool:
        """True if an entry of this grant, still in force, allows ``action`` on ``record``."""
        return any(self.in_force(e, now) and e.allows(action, record) for e in self.details)

    def view(self, now: int) -> dict[str, Any]:
        """The grant as ``patientkey wallet grants`` lists it (metadata only)."""
        return {
            "grant_id": self.grant_id,
            "client_id": self.client_id,
            "scenario": self.scenario,
            "status": self.live_status(now),
            "authorization_details": dump_details(self.details),
            "acr": self.acr,
            "proofs": sorted(self.proofs),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
        }


def create_grant(
    *,
    grant_id: str,
    user_id: str,
    client_id: str,
    scenario: str,
    details: AuthorizationDetails,
    acr: str,
    proofs: Iterable[ProofKind],
    auth_time: int,
    now: int,
) -> tuple[Grant, AuditEvent]:
    """A new active grant for granted ``details`` (each with its duration)."""
    if not details or any(entry.duration is None for entry in details):
        raise InvalidAuthorizationDetails("granted details must each carry a duration")
    grant = Grant(
        grant_id=grant_id,
        user_id=user_id,
        client_id=client_id,
        scenario=scenario,
        details=details,
        acr=acr,
        proofs=frozenset(ProofKind(kind) for kind in proofs),
        auth_time=auth_time,
        created_at=now,
        expires_at=now + max(entry.duration or 0 for entry in details),
    )
    return grant, _event(grant, AuditKind.GRANTED, now, actor=user_id)


def _event(grant: Grant, kind: AuditKind, at: int, **extra: Any) -> AuditEvent:
    return AuditEvent(
        kind=kind,
        at=at,
        user_id=grant.user_id,
        client_id=grant.client_id,
        grant_id=grant.grant_id,
        scenario=grant.scenario,
        acr=extra.pop("acr", grant.acr),
        **extra,
    )


class GrantStore(Protocol):
    """Where grants live; ``replace`` is a compare-and-set on ``version``."""

    def add(self, grant: Grant) -> None: ...

    def get(self, grant_id: str) -> Grant | None: ...

    def for_user(self, user_id: str) -> list[Grant]: ...

    def replace(self, old: Grant, new: Grant) -> bool:
        """Store ``new`` if the stored version is still ``old.version``."""
        ...


@dataclass
class InMemoryGrantStore:
    """The in-memory twin of the durable grant store."""

    _grants: dict[str, Grant] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, grant: Grant) -> None:
        with self._lock:
            if grant.grant_id in self._grants:
                raise Conflict("duplicate grant_id")
            self._grants[grant.grant_id] = grant

    def get(self, grant_id: str) -> Grant | None:
        return self._grants.get(grant_id)

    def for_user(self, user_id: str) -> list[Grant]:
        grants = [g for g in list(self._grants.values()) if g.user_id == user_id]
        return sorted(grants, key=lambda g: (g.created_at, g.grant_id))

    def replace(self, old: Grant, new: Grant) -> bool:
        with self._lock:
            current = self._grants.get(old.grant_id)
            if current is None or current.version != old.version:
                return False
            self._grants[old.grant_id] = new
            return True


def revoke_grant(
    store: GrantStore, grant_id: str, *, by: Revoker, actor: str, now: int
) -> tuple[Grant, AuditEvent]:
    """Revoke a grant on behalf of its patient (``by="patient"``, ``actor`` = User_ID)
    or its client (``by="client"``, ``actor`` = client_id).

    NotFound if there is no such grant *for this actor* (no hint that it exists);
    Conflict if it is already revoked. Effective for the very next :func:`check`.
    """
    for _ in range(_CAS_RETRIES):
        grant = store.get(grant_id)
        owner = None if grant is None else (grant.user_id if by == "patient" else grant.client_id)
        if grant is None or owner != actor:
            raise NotFound("no such grant")
        new = replace(
            grant,
            status=grant_next(grant.status, GrantEvent.REVOKE),
            revoked_at=now,
            revoked_by=by,
            version=grant.version + 1,
        )
        if store.replace(grant, new):
            return new, _event(new, AuditKind.REVOKED, now, actor=actor, detail=f"by {by}")
    raise Conflict("grant changed concurrently; try again")


@dataclass(frozen=True, slots=True)
class Use:
    """An accepted use: the live grant and the audit record of the use."""

    grant: Grant
    event: AuditEvent


def _refuse(error: OAuthError, event: AuditEvent) -> OAuthError:
    error.audit_event = event
    return error


def check(
    store: GrantStore,
    claims: AccessTokenClaims,
    action: Action,
    record: RecordRef,
    *,
    owner: str,
    now: int,
    catalog: Catalog | None = None,
    environment_changed: bool = False,
) -> Use:
    """Allow ``action`` on ``record`` (owned by patient ``owner``) for a verified token?

    Consults the live grant every time. With a ``catalog``, also applies step-up
    (RFC 9470): e.g. fetch, download or share of a report needs a recent verification.
    """
    grant = store.get(claims.grant_id)
    if grant is None or grant.client_id != claims.client_id or grant.user_id != claims.sub:
        raise InvalidToken("no grant for this token")
    used = {"action": action, "his_id": record.his_id, "p_id": record.p_id}
    status = grant.live_status(now)
    if status != "active":
        event = _event(
            grant, AuditKind.REFUSED, now, actor=claims.client_id, detail=f"grant {status}", **used
        )
        raise _refuse(InvalidToken(f"grant {status}"), event)
    token_allows = any(
        grant.in_force(entry, now) and entry.allows(action, record)
        for entry in claims.authorization_details
    )
    if owner != grant.user_id or not (token_allows and grant.allows(action, record, now)):
        event = _event(
            grant, AuditKind.REFUSED, now, actor=claims.client_id, detail="not granted", **used
        )
        raise _refuse(InsufficientScope(f"the grant does not allow {action} here"), event)
    if catalog is not None:
        context = StepUpContext(
            now=now,
            acr=claims.acr,
            auth_time=claims.auth_time,
            action=action,
            record_type=record.record_type,
            environment_changed=environment_changed,
        )
        step = catalog.step_up_required(grant, context)
        if step is not None:
            event = _event(
                grant,
                AuditKind.STEP_UP,
                now,
                actor=claims.client_id,
                acr=step.level.acr,
                detail="; ".join(step.reasons),
                **used,
            )
            raise _refuse(step.error(), event)
    return Use(grant, _event(grant, AuditKind.USED, now, actor=claims.client_id, **used))


def find_use(
    store: GrantStore,
    *,
    user_id: str,
    client_id: str,
    action: Action,
    record: RecordRef,
    now: int,
) -> Use | None:
    """A use by the patient of a live grant to ``client_id`` allowing ``action`` on
    ``record``, or None (the share gate: no token, the patient's wallet asks)."""
    for grant in store.for_user(user_id):
        if (
            grant.client_id == client_id
            and grant.live_status(now) == "active"
            and grant.allows(action, record, now)
        ):
            used = {"action": action, "his_id": record.his_id, "p_id": record.p_id}
            return Use(grant, _event(grant, AuditKind.USED, now, actor=user_id, **used))
    return None
