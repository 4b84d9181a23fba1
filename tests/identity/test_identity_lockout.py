"""Growing lockout of failed proofs, reset on success, and the audit event of every attempt."""

from __future__ import annotations

import json

import pytest

from patientkey.errors import InvalidInput, PeerUnavailable
from patientkey.identity import (
    LockedOut,
    Lockout,
    LockoutPolicy,
    MemoryLockoutStore,
    Outcome,
    ProofKind,
    ProofRejected,
)

POLICY = LockoutPolicy(free_failures=3, base_seconds=30, cap_seconds=240, forget_after_seconds=3600)
USER = "patient-1"


def fail():
    raise ProofRejected("test: wrong")


def succeed():
    return "verified"


class Counting:
    """A verifier that counts its calls."""

    def __init__(self, result=fail):
        self.calls = 0
        self.result = result

    def __call__(self):
        self.calls += 1
        return self.result()


@pytest.fixture
def store():
    return MemoryLockoutStore()


@pytest.fixture
def lockout(store, clock):
    return Lockout(store, POLICY, clock=clock)


def test_lock_grows_then_caps(lockout, clock):
    """Failure n >= 3 locks for 30·2^(n-3) s up to 240 s; a locked attempt runs no verifier."""
    for _ in range(2):
        attempt = lockout.attempt(USER, ProofKind.PASSWORD, fail)
        assert attempt.event.outcome is Outcome.REJECTED
        assert attempt.event.locked_until is None
    expected = [30, 60, 120, 240, 240]
    for n, seconds in enumerate(expected, start=3):
        attempt = lockout.attempt(USER, ProofKind.PASSWORD, fail)
        assert attempt.event.outcome is Outcome.REJECTED
        assert attempt.event.failures == n
        assert attempt.event.locked_until == clock() + seconds
        verifier = Counting(succeed)
        clock.advance(seconds - 1)
        locked = lockout.attempt(USER, ProofKind.PASSWORD, verifier)
        assert locked.event.outcome is Outcome.LOCKED
        assert verifier.calls == 0
        assert isinstance(locked.error, LockedOut)
        assert locked.error.retry_after == 1
        clock.advance(1)


def test_knocking_while_locked_does_not_extend_the_lock(lockout, clock):
    """Attempts during a lock are refused without counting as failures."""
    for _ in range(3):
        lockout.attempt(USER, ProofKind.PASSWORD, fail)
    for _ in range(10):
        assert lockout.attempt(USER, ProofKind.PASSWORD, succeed).event.outcome is Outcome.LOCKED
        clock.advance(1)
    clock.advance(20)
    attempt = lockout.attempt(USER, ProofKind.PASSWORD, fail)
    assert attempt.event.failures == 4
    assert attempt.event.locked_until == clock() + 60


def test_success_resets(lockout, store, clock):
    """A success clears the count: the next failures start from one again."""
    for _ in range(3):
        lockout.attempt(USER, ProofKind.TOTP, fail)
    clock.advance(30)
    attempt = lockout.attempt(USER, ProofKind.TOTP, succeed)
    assert attempt.accepted
    assert attempt.unwrap() == "verified"
    assert attempt.event.failures == 0
    assert store.get(USER, ProofKind.TOTP) is None
    again = lockout.attempt(USER, ProofKind.TOTP, fail)
    assert again.event.failures == 1
    assert again.event.locked_until is None


def test_kinds_are_counted_apart(lockout):
    """Knowing the password neither unlocks nor resets the count of TOTP guesses."""
    for _ in range(2):
        lockout.attempt(USER, ProofKind.TOTP, fail)
    assert lockout.attempt(USER, ProofKind.PASSWORD, succeed).accepted
    third = lockout.attempt(USER, ProofKind.TOTP, fail)
    assert third.event.failures == 3
    assert third.event.locked_until is not None
    assert lockout.attempt(USER, ProofKind.PASSWORD, succeed).accepted


def test_unknown_user_is_locked_like_a_known_one(lockout):
    """A user id nobody has is counted and locked the same way (no enumeration by lockout)."""
    for _ in range(3):
        lockout.attempt("nobody", ProofKind.PASSWORD, fail)
    assert lockout.attempt("nobody", ProofKind.PASSWORD, fail).event.outcome is Outcome.LOCKED


def test_old_failures_are_forgotten(lockout, clock):
    """After forget_after seconds without an attempt, the count starts over."""
    for _ in range(2):
        lockout.attempt(USER, ProofKind.PASSWORD, fail)
    clock.advance(3600)
    assert lockout.attempt(USER, ProofKind.PASSWORD, fail).event.failures == 1


def test_attempts_are_charged_before_the_proof_is_checked(lockout):
    """Overlapping attempts meet the lock at the threshold, not after all of them ran."""
    outcomes = []

    def overlapping():
        # While this proof is being checked, three more arrive for the same user.
        outcomes.extend(
            lockout.attempt(USER, ProofKind.OTP_SMS, fail).event.outcome for _ in range(3)
        )
        raise ProofRejected("test: wrong")

    first = lockout.attempt(USER, ProofKind.OTP_SMS, overlapping)
    assert outcomes == [Outcome.REJECTED, Outcome.REJECTED, Outcome.LOCKED]
    assert first.event.failures == 1


def test_other_errors_propagate_and_stay_charged(lockout, store):
    """An outage in the verifier propagates; the attempt stays counted as a failure."""

    def outage():
        raise PeerUnavailable("gateway down")

    with pytest.raises(PeerUnavailable):
        lockout.attempt(USER, ProofKind.OTP_SMS, outage)
    state = store.get(USER, ProofKind.OTP_SMS)
    assert state is not None
    assert state.failures == 1


def test_unwrap_raises_the_error(lockout):
    """unwrap() gives the value of a success and raises the rejection or the lock otherwise."""
    with pytest.raises(ProofRejected):
        lockout.attempt(USER, ProofKind.PASSWORD, fail).unwrap()
    for _ in range(2):
        lockout.attempt(USER, ProofKind.PASSWORD, fail)
    with pytest.raises(LockedOut) as info:
        lockout.attempt(USER, ProofKind.PASSWORD, succeed).unwrap()
    assert info.value.status == 429
    assert info.value.to_problem()["retry_after"] == info.value.retry_after


def test_audit_events_hold_no_secrets(lockout, clock):
    """Every outcome yields an event with kind, user, proof kind and outcome, and no secret."""
    secret = "hunter2-the-password"

    def wrong_password():
        raise ProofRejected(f"test: {secret}")  # even a careless reason does not leak

    events = [
        lockout.attempt(USER, ProofKind.PASSWORD, wrong_password).event,
        lockout.attempt(USER, ProofKind.PASSWORD, lambda: secret).event,
    ]
    events.extend(lockout.attempt(USER, ProofKind.PASSWORD, wrong_password).event for _ in range(3))
    assert [e.outcome for e in events] == [
        Outcome.REJECTED,
        Outcome.ACCEPTED,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.REJECTED,
    ]
    events.append(lockout.attempt(USER, ProofKind.PASSWORD, wrong_password).event)
    assert events[-1].outcome is Outcome.LOCKED
    for event in events:
        record = event.to_dict()
        assert record["kind"] == "identity.proof"
        assert record["user_id"] == USER
        assert record["proof"] == "password"
        assert record["at"] == clock()
        assert secret not in json.dumps(record)
        assert secret not in repr(event)


def test_policy_is_checked():
    """Nonsensical policies are refused."""
    for bad in (
        {"free_failures": 0},
        {"base_seconds": 0},
        {"cap_seconds": 10, "base_seconds": 20},
        {"forget_after_seconds": float("inf")},
    ):
        with pytest.raises(InvalidInput):
            LockoutPolicy(**bad)
    with pytest.raises(InvalidInput):
        Lockout(MemoryLockoutStore()).attempt("", ProofKind.PASSWORD, succeed)
    with pytest.raises(InvalidInput):
        Lockout(MemoryLockoutStore()).attempt(USER, "password", succeed)  # type: ignore[arg-type]


def test_huge_failure_counts_stay_capped():
    """The delay formula neither overflows nor exceeds the cap for any count."""
    policy = LockoutPolicy()
    assert policy.lock_seconds(10**6) == policy.cap_seconds
    assert policy.lock_seconds(policy.free_failures - 1) == 0
