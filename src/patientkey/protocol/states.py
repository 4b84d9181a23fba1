"""The protocol's state machines, each a transition table in one place.

Theory of operation (after h11's ``_state.py``): every long-lived object of
the protocol — a KUH rotation, a prescription's dispensing, a third party's
KUB ratchet — is in exactly one state; events move it along the table below;
an event the table does not list for the current state raises
:class:`~patientkey.errors.Conflict` (HTTP 409) and changes nothing. Storage
persists the state; this module decides what may happen next.

KUH rotation (two-phase, DESIGN.md op 2), the same table at wallet and HIS:

    CURRENT --prepare--> PREPARED --ack--> ACKED --commit--> CURRENT (new version)
    PREPARED --abort--> CURRENT (old version)   ACKED --abort--> CURRENT (old)

The wallet moves to the new key only after the HIS proved (RotateAck, a MAC
under the new key) that it holds it; the HIS makes the new key current only
after the wallet's RotateCommit (a MAC under the new key), or when the wallet
first uses the new version (implicit commit). Until then both read with every
version they keep, so no record becomes unreadable whichever message is lost.

Dispensing (what e-prescription services need; the seed leaves it out):

    OPEN --claim(b)--> CLAIMED(b) --complete(b)--> COMPLETED
    CLAIMED(b) --release(b)--> OPEN

COMPLETED is final: no share, no claim. Only the claimant may complete or
release.

KUB ratchet per (patient, third party): NONE --hpke share--> V1 --kub share--> V2 ...
with ``reset`` (a fresh HPKE share) allowed from any state, so a lost message
never locks a third party out.
"""

from __future__ import annotations

from enum import StrEnum

from patientkey.errors import Conflict

__all__ = [
    "DISPENSE_TRANSITIONS",
    "ROTATION_TRANSITIONS",
    "Dispense",
    "DispenseEvent",
    "Rotation",
    "RotationEvent",
    "dispense_next",
    "rotation_next",
]


class Rotation(StrEnum):
    CURRENT = "current"
    PREPARED = "prepared"
    ACKED = "acked"


class RotationEvent(StrEnum):
    PREPARE = "prepare"
    ACK = "ack"
    COMMIT = "commit"
    ABORT = "abort"


ROTATION_TRANSITIONS: dict[tuple[Rotation, RotationEvent], Rotation] = {
    (Rotation.CURRENT, RotationEvent.PREPARE): Rotation.PREPARED,
    # A new prepare replaces an unanswered one (the old pending key is dropped).
    (Rotation.PREPARED, RotationEvent.PREPARE): Rotation.PREPARED,
    (Rotation.PREPARED, RotationEvent.ACK): Rotation.ACKED,
    (Rotation.PREPARED, RotationEvent.ABORT): Rotation.CURRENT,
    (Rotation.ACKED, RotationEvent.COMMIT): Rotation.CURRENT,
    (Rotation.ACKED, RotationEvent.ABORT): Rotation.CURRENT,
    # The HIS never sees its own ack arrive: from its side PREPARED commits directly.
    (Rotation.PREPARED, RotationEvent.COMMIT): Rotation.CURRENT,
}


def rotation_next(state: Rotation, event: RotationEvent) -> Rotation:
    """The state after ``event``; Conflict if the table forbids it."""
    try:
        return ROTATION_TRANSITIONS[(state, event)]
    except KeyError:
        raise Conflict(f"key rotation: cannot {event} while {state}") from None


class Dispense(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    COMPLETED = "completed"


class DispenseEvent(StrEnum):
    CLAIM = "claim"
    COMPLETE = "complete"
    RELEASE = "release"


DISPENSE_TRANSITIONS: dict[tuple[Dispense, DispenseEvent], Dispense] = {
    (Dispense.OPEN, DispenseEvent.CLAIM): Dispense.CLAIMED,
    (Dispense.CLAIMED, DispenseEvent.COMPLETE): Dispense.COMPLETED,
    (Dispense.CLAIMED, DispenseEvent.RELEASE): Dispense.OPEN,
}


def dispense_next(
    state: Dispense, event: DispenseEvent, *, actor: str, claimed_by: str | None
) -> tuple[Dispense, str | None]:
    """(new state, new claimant); Conflict if not allowed for this actor."""
    new = DISPENSE_TRANSITIONS.get((state, event))
    if new is None:
        raise Conflict(f"prescription is {state}: cannot {event}")
    if state is Dispense.CLAIMED and claimed_by != actor:
        raise Conflict("prescription is claimed by another third party")
    return new, (actor if new is Dispense.CLAIMED else None)
