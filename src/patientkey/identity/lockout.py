"""Failed identity proofs are rate-limited with a growing lockout; every outcome is audited.

Policy (:class:`LockoutPolicy`), per user id *and* proof kind::

    the first ``free_failures - 1`` consecutive failures cost nothing;
    failure number n >= free_failures locks that proof kind for
        min(cap, base · 2**(n - free_failures)) seconds;
    a success resets the count; so does ``forget_after`` seconds without an attempt.

While locked, a proof of that kind is not even checked: :class:`LockedOut`
with the seconds left (``retry_after``). Why per kind: a success resets only
its own kind, so knowing the password does not reset the count of TOTP
guesses. Why per user id as given: an unknown user id is counted and locked
like a known one, so a lock reveals nothing about who exists.

Concurrency: an attempt is charged as a failure *before* the proof is checked
(one atomic :meth:`LockoutStore.update`), and only a success gives it back by
resetting. A burst of parallel guesses therefore meets the lock at guess
number ``free_failures``, not after all of them ran.

:meth:`Lockout.attempt` wraps a verifier and always returns an
:class:`Attempt`: the :class:`AuditEvent` (kind, user id, proof kind,
outcome, time, failures, lock end — never a secret, never the reason) and
either the verifier's value or the error to raise.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final, Generic, Protocol, TypeVar, cast

from patientkey.errors import InvalidInput, PatientKeyError
from patientkey.identity._errors import LockedOut, ProofRejected
from patientkey.identity._util import Clock, check_id, check_now, system_clock
from patientkey.identity.assurance import ProofKind

__all__ = [
    "AUDIT_KIND",
    "Attempt",
    "AuditEvent",
    "Lockout",
    "LockoutChange",
    "LockoutPolicy",
    "LockoutState",
    "LockoutStore",
    "MemoryLockoutStore",
    "Outcome",
]

T = TypeVar("T")

AUDIT_KIND: Final = "identity.proof"
_MAX_SHIFT: Final = 62


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """When failures start to lock, for how long, and when they are forgotten."""

    free_failures: int = 5
    base_seconds: float = 30.0
    cap_seconds: float = 3600.0
    forget_after_seconds: float = 86400.0

    def __post_init__(self) -> None:
        if isinstance(self.free_failures, bool) or self.free_failures not in range(1, 101):
            raise InvalidInput("free_failures must be 1 to 100")
        for name in ("base_seconds", "cap_seconds", "forget_after_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidInput(f"{name} must be a positive number of seconds")
            if not math.isfinite(value):
                raise InvalidInput(f"{name} must be finite")
        if self.cap_seconds < self.base_seconds:
            raise InvalidInput("cap_seconds must be at least base_seconds")

    def lock_seconds(self, failures: int) -> float:
        """How long failure number ``failures`` locks (0: not at all)."""
        if failures < self.free_failures:
            return 0.0
        shift = min(failures - self.free_failures, _MAX_SHIFT)
        return float(min(self.cap_seconds, self.base_seconds * (1 << shift)))


@dataclass(frozen=True, slots=True)
class LockoutState:
    """Consecutive failures of one proof kind for one user id, and the lock they caused."""

    failures: int
    last_attempt_at: float
    locked_until: float = 0.0

    def locked_at(self, now: float) -> bool:
        return now < self.locked_until


LockoutChange = Callable[[LockoutState | None], LockoutState | None]
"""A pure step from the stored state to the next one (None: no state / forget it)."""


class LockoutStore(Protocol):
    """Where lockout states live, keyed by (user id, proof kind)."""

    def update(
        self,
        user_id: str,
        proof: ProofKind,
        change: LockoutChange,
    ) -> LockoutState | None:
        """Atomically replace the state by ``change(state)`` (None: forget it); return it.

        ``change`` is pure and may be called more than once (a database retrying
        a serialization failure).
        """
        ...


class MemoryLockoutStore:
    """The in-memory :class:`LockoutStore` (tests, demo, single process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, ProofKind], LockoutState] = {}

    def update(
        self,
        user_id: str,
        proof: ProofKind,
        change: LockoutChange,
    ) -> LockoutState | None:
        with self._lock:
            new = change(self._items.get((user_id, proof)))
            if new is None:
                self._items.pop((user_id, proof), None)
            else:
                self._items[user_id, proof] = new
            return new

    def get(self, user_id: str, proof: ProofKind) -> LockoutState | None:
        with self._lock:
            return self._items.get((user_id, proof))


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    LOCKED = "locked"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """The record of one proof attempt. Holds no secret and no failure reason."""

    kind: str = AUDIT_KIND
    user_id: str
    proof: ProofKind
    outcome: Outcome
    at: float
    failures: int
    locked_until: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "user_id": self.user_id,
            "proof": str(self.proof),
            "outcome": str(self.outcome),
            "at": self.at,
            "failures": self.failures,
            "locked_until": self.locked_until,
        }


@dataclass(frozen=True, slots=True)
class Attempt(Generic[T]):
    """The result of a guarded proof: always an audit event, then a value or an error."""

    event: AuditEvent
    value: T | None = None
    error: PatientKeyError | None = None

    @property
    def accepted(self) -> bool:
        return self.event.outcome is Outcome.ACCEPTED

    def unwrap(self) -> T:
        """The verifier's value; raises the ProofRejected or LockedOut otherwise."""
        if self.error is not None:
            raise self.error
        return cast("T", self.value)  # T may itself include None


class Lockout:
    """Guards identity proofs with the lockout policy; sans-IO over a store and a clock."""

    def __init__(
        self,
        store: LockoutStore,
        policy: LockoutPolicy | None = None,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self._store = store
        self.policy = policy or LockoutPolicy()
        self._clock = clock

    def attempt(self, user_id: str, proof: ProofKind, verify: Callable[[], T]) -> Attempt[T]:
        """Run ``verify`` unless locked; charge failures, reset on success; audit the outcome.

        ``verify`` signals failure by raising :class:`ProofRejected`; anything
        else it raises is a bug or an outage and propagates (the attempt stays
        charged, as a failure would).
        """
        check_id(user_id, "user id")
        if not isinstance(proof, ProofKind):
            raise InvalidInput("unknown proof kind")
        now = check_now(self._clock())
        seen: list[LockoutState | None] = []

        def charge(state: LockoutState | None) -> LockoutState | None:
            seen.append(state)
            return self._charge(state, now)

        charged = self._store.update(user_id, proof, charge)
        before = seen[-1]
        if before is not None and before.locked_at(now):
            retry_after = max(1, math.ceil(before.locked_until - now))
            event = self._event(user_id, proof, Outcome.LOCKED, now, before)
            return Attempt(event, error=LockedOut(retry_after))
        try:
            value = verify()
        except ProofRejected as exc:
            return Attempt(self._event(user_id, proof, Outcome.REJECTED, now, charged), error=exc)
        self._store.update(user_id, proof, lambda _state: None)
        return Attempt(self._event(user_id, proof, Outcome.ACCEPTED, now, None), value=value)

    def _charge(self, state: LockoutState | None, now: float) -> LockoutState:
        if state is not None and state.locked_at(now):
            return state  # refused without counting: a lock is not extended by knocking
        if state is None or now - state.last_attempt_at >= self.policy.forget_after_seconds:
            state = LockoutState(failures=0, last_attempt_at=now)
        failures = state.failures + 1
        lock = self.policy.lock_seconds(failures)
        return replace(
            state,
            failures=failures,
            last_attempt_at=now,
            locked_until=now + lock if lock else state.locked_until,
        )

    @staticmethod
    def _event(
        user_id: str, proof: ProofKind, outcome: Outcome, now: float, state: LockoutState | None
    ) -> AuditEvent:
        locked = state is not None and state.locked_at(now)
        return AuditEvent(
            user_id=user_id,
            proof=proof,
            outcome=outcome,
            at=now,
            failures=state.failures if state is not None else 0,
            locked_until=state.locked_until if state is not None and locked else None,
        )
