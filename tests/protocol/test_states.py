"""The transition tables of rotation and dispensing."""

from __future__ import annotations

import pytest

from patientkey.errors import Conflict
from patientkey.protocol.states import (
    Dispense,
    DispenseEvent,
    Rotation,
    RotationEvent,
    dispense_next,
    rotation_next,
)


def test_rotation_happy_path():
    """prepare → ack → commit returns to CURRENT."""
    state = rotation_next(Rotation.CURRENT, RotationEvent.PREPARE)
    state = rotation_next(state, RotationEvent.ACK)
    assert rotation_next(state, RotationEvent.COMMIT) is Rotation.CURRENT


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (Rotation.CURRENT, RotationEvent.ACK),
        (Rotation.CURRENT, RotationEvent.COMMIT),
        (Rotation.CURRENT, RotationEvent.ABORT),
        (Rotation.ACKED, RotationEvent.PREPARE),
        (Rotation.ACKED, RotationEvent.ACK),
    ],
)
def test_rotation_illegal_events_conflict(state, event):
    """Events the table does not list raise Conflict."""
    with pytest.raises(Conflict):
        rotation_next(state, event)


def test_dispense_claim_is_exclusive():
    """Only the claimant may complete or release a claimed prescription."""
    state, who = dispense_next(Dispense.OPEN, DispenseEvent.CLAIM, actor="b1", claimed_by=None)
    assert (state, who) == (Dispense.CLAIMED, "b1")
    with pytest.raises(Conflict):
        dispense_next(state, DispenseEvent.CLAIM, actor="b2", claimed_by=who)
    with pytest.raises(Conflict):
        dispense_next(state, DispenseEvent.COMPLETE, actor="b2", claimed_by=who)
    assert dispense_next(state, DispenseEvent.RELEASE, actor="b1", claimed_by=who) == (
        Dispense.OPEN,
        None,
    )


def test_completed_is_final():
    """A completed prescription accepts no further event."""
    for event in DispenseEvent:
        with pytest.raises(Conflict):
            dispense_next(Dispense.COMPLETED, event, actor="b1", claimed_by=None)
