"""Bind proof MAC(KUH, Patient_ID ‖ n ‖ HIS_ID ‖ User_ID) and mutual-authentication reply."""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.crypto import (
    BIND_NONCE_LEN,
    BIND_PROOF_LEN,
    BIND_REPLY_LEN,
    check_bind_reply,
    make_bind_proof,
    make_bind_reply,
    new_bind_nonce,
    verify_bind_proof,
)
from patientkey.errors import CryptoError, InvalidInput

from ._helpers import assert_no_secret, error_texts

KUH = os.urandom(32)
NONCE = new_bind_nonce()
IDS = {"patient_id": "p-42", "his_id": "his-1", "user_id": "u-1"}
PROOF = make_bind_proof(KUH, nonce=NONCE, **IDS)
REPLY = make_bind_reply(KUH, nonce=NONCE, **IDS)


def test_nonce_is_fresh_32_bytes():
    """new_bind_nonce returns 32 random bytes, different each time."""
    assert len(NONCE) == BIND_NONCE_LEN
    assert new_bind_nonce() != new_bind_nonce()


def test_right_proof_verifies():
    """The proof made with KUH verifies with KUH and the same ids and nonce."""
    assert len(PROOF) == BIND_PROOF_LEN
    verify_bind_proof(KUH, PROOF, nonce=NONCE, **IDS)


def test_proof_is_deterministic():
    """Same inputs, same proof (the HIS recomputes it)."""
    assert make_bind_proof(KUH, nonce=NONCE, **IDS) == PROOF


@pytest.mark.parametrize(
    "change",
    [
        {"kuh": os.urandom(32)},
        {"nonce": new_bind_nonce()},
        {"patient_id": "p-43"},
        {"his_id": "his-2"},
        {"user_id": "u-2"},
    ],
)
def test_wrong_input_fails_verification(change):
    """A different KUH, nonce, Patient_ID, HIS_ID or User_ID makes verification fail."""
    args = {"kuh": KUH, "nonce": NONCE, **IDS} | change
    kuh = args.pop("kuh")
    with pytest.raises(CryptoError) as info:
        verify_bind_proof(kuh, PROOF, **args)
    assert info.value.reason == "bind: proof mismatch"


def test_fields_are_length_prefixed():
    """Moving characters between ids changes the proof (no concatenation ambiguity)."""
    shifted = make_bind_proof(KUH, nonce=NONCE, patient_id="p-4", his_id="2his-1", user_id="u-1")
    assert shifted != PROOF


@settings(max_examples=50, deadline=None)
@given(proof=st.binary(max_size=64))
def test_forged_proofs_fail(proof):
    """Any other byte string as proof raises CryptoError."""
    if proof != PROOF:
        with pytest.raises(CryptoError):
            verify_bind_proof(KUH, proof, nonce=NONCE, **IDS)


def test_non_bytes_proof_fails_as_crypto_error():
    """A proof of the wrong type is a failed verification, not a TypeError."""
    with pytest.raises(CryptoError):
        verify_bind_proof(KUH, PROOF.hex(), nonce=NONCE, **IDS)  # type: ignore[arg-type]


def test_reply_checks():
    """The HIS's reply {f(n)}KUH passes the wallet's check."""
    assert len(REPLY) == BIND_REPLY_LEN
    check_bind_reply(KUH, REPLY, nonce=NONCE, **IDS)


def test_reply_is_randomized():
    """Two replies for the same nonce differ (fresh IV) and both check."""
    other = make_bind_reply(KUH, nonce=NONCE, **IDS)
    assert other != REPLY
    check_bind_reply(KUH, other, nonce=NONCE, **IDS)


@pytest.mark.parametrize(
    "change",
    [
        {"kuh": os.urandom(32)},
        {"nonce": new_bind_nonce()},
        {"patient_id": "p-43"},
        {"his_id": "his-2"},
        {"user_id": "u-2"},
    ],
)
def test_wrong_reply_context_fails(change):
    """A reply checked with another KUH, nonce or id fails."""
    args = {"kuh": KUH, "nonce": NONCE, **IDS} | change
    kuh = args.pop("kuh")
    with pytest.raises(CryptoError):
        check_bind_reply(kuh, REPLY, **args)


@settings(max_examples=60, deadline=None)
@given(pos=st.integers(0, BIND_REPLY_LEN - 1), delta=st.integers(1, 255))
def test_tampered_reply_fails(pos, delta):
    """Any changed byte of the reply raises CryptoError."""
    bad = bytearray(REPLY)
    bad[pos] ^= delta
    with pytest.raises(CryptoError):
        check_bind_reply(KUH, bytes(bad), nonce=NONCE, **IDS)


def test_reply_of_wrong_length_fails():
    """Replies that are too short or too long raise CryptoError."""
    for reply in (b"", REPLY[:-1], REPLY + b"\x00"):
        with pytest.raises(CryptoError):
            check_bind_reply(KUH, reply, nonce=NONCE, **IDS)


def test_proof_is_not_a_valid_reply():
    """The proof and the reply are domain separated: one never passes as the other."""
    with pytest.raises(CryptoError):
        check_bind_reply(KUH, PROOF + bytes(28), nonce=NONCE, **IDS)


@pytest.mark.parametrize("kuh", [b"", bytes(16), bytes(31), bytes(65), "k" * 32])
def test_short_or_wrong_kuh_is_refused(kuh):
    """KUH must be 32 to 64 bytes (256-bit random), else InvalidInput."""
    with pytest.raises(InvalidInput):
        make_bind_proof(kuh, nonce=NONCE, **IDS)
    with pytest.raises(InvalidInput):
        make_bind_reply(kuh, nonce=NONCE, **IDS)


def test_bad_nonce_and_ids_are_refused():
    """Nonces other than 32 bytes and empty ids are InvalidInput."""
    with pytest.raises(InvalidInput):
        make_bind_proof(KUH, nonce=NONCE[:16], **IDS)
    with pytest.raises(InvalidInput):
        make_bind_proof(KUH, nonce=NONCE, **(IDS | {"patient_id": ""}))
    with pytest.raises(InvalidInput):
        check_bind_reply(KUH, REPLY, nonce=b"", **IDS)


def test_errors_and_logs_never_contain_kuh(caplog):
    """Failures and log lines contain no encoding of KUH."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for call in [
        lambda: verify_bind_proof(KUH, bytes(32), nonce=NONCE, **IDS),
        lambda: check_bind_reply(KUH, bytes(60), nonce=NONCE, **IDS),
        lambda: make_bind_proof(KUH[:31], nonce=NONCE, **IDS),
    ]:
        with pytest.raises((CryptoError, InvalidInput)) as info:
            call()
        texts += error_texts(info.value)
    texts.append(caplog.text)
    assert_no_secret(texts, KUH, KUH[:31])
