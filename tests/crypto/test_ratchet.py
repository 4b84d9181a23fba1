"""KUH rotation and KUB ratchet recipes."""

from __future__ import annotations

import os

import pytest

from patientkey.crypto import HpkeKeyPair
from patientkey.crypto.ratchet import (
    RotationContext,
    ShareContext,
    rotation_ack,
    rotation_commit,
    unwrap_next_kub,
    unwrap_rotation_key,
    verify_rotation_ack,
    verify_rotation_commit,
    wrap_next_kub,
    wrap_rotation_key,
)
from patientkey.errors import CryptoError, InvalidInput


def _ctx(**over) -> RotationContext:
    args = {
        "patient_id": "P1",
        "his_id": "his-1",
        "user_id": "u1",
        "current_version": 1,
        "new_version": 2,
        "nonce": b"n" * 32,
    }
    args.update(over)
    return RotationContext(**args)


def test_rotation_wrap_round_trip():
    """The HIS unwraps KUH_new with KUH_cur under the same context."""
    cur, new = os.urandom(32), os.urandom(32)
    assert unwrap_rotation_key(cur, wrap_rotation_key(cur, new, _ctx()), _ctx()) == new


@pytest.mark.parametrize(
    "over", [{"patient_id": "P2"}, {"user_id": "u2"}, {"new_version": 3}, {"nonce": b"m" * 32}]
)
def test_rotation_wrap_bound_to_context(over):
    """A wrapped key does not unwrap for another patient, user, version or nonce."""
    cur, new = os.urandom(32), os.urandom(32)
    with pytest.raises(CryptoError):
        unwrap_rotation_key(cur, wrap_rotation_key(cur, new, _ctx()), _ctx(**over))


def test_rotation_wrong_current_key_fails():
    """Unwrapping under another KUH fails opaquely."""
    wrapped = wrap_rotation_key(os.urandom(32), os.urandom(32), _ctx())
    with pytest.raises(CryptoError):
        unwrap_rotation_key(os.urandom(32), wrapped, _ctx())


def test_ack_and_commit_are_distinct():
    """An ack verifies as an ack but never as a commit, and vice versa."""
    new = os.urandom(32)
    ack, commit = rotation_ack(new, _ctx()), rotation_commit(new, _ctx())
    verify_rotation_ack(new, ack, _ctx())
    verify_rotation_commit(new, commit, _ctx())
    with pytest.raises(CryptoError):
        verify_rotation_commit(new, ack, _ctx())
    with pytest.raises(CryptoError):
        verify_rotation_ack(new, commit, _ctx())


def test_rotation_context_checks():
    """Versions must increase and the nonce be 32 bytes."""
    with pytest.raises(InvalidInput):
        _ctx(new_version=1)
    with pytest.raises(InvalidInput):
        _ctx(nonce=b"short")


def _share(v: int = 1) -> ShareContext:
    return ShareContext(user_id="u1", b_id="pharmacy-1", his_id="his-1", p_id="P1", next_version=v)


def test_next_kub_by_hpke_and_by_kub():
    """The next KUB unwraps by HPKE the first time and under KUB_v later."""
    pair, nxt = HpkeKeyPair.generate(), os.urandom(32)
    assert unwrap_next_kub(pair, wrap_next_kub(pair.public_key, nxt, _share()), _share()) == nxt
    kub = os.urandom(32)
    blob = wrap_next_kub(kub, nxt, _share(2))
    assert unwrap_next_kub(kub, blob, _share(2)) == nxt
    with pytest.raises(CryptoError):
        unwrap_next_kub(kub, blob, _share(3))
    with pytest.raises(CryptoError):
        unwrap_next_kub(os.urandom(32), blob, _share(2))
    with pytest.raises(CryptoError):
        unwrap_next_kub(
            HpkeKeyPair.generate(), wrap_next_kub(pair.public_key, nxt, _share()), _share()
        )
