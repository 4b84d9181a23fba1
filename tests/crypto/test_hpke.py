"""HPKE (RFC 9180) with ML-KEM-768 + X25519, HKDF-SHA256, AES-256-GCM."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.crypto import HpkeKeyPair, HpkePublicKey, hpke_unwrap, hpke_wrap
from patientkey.crypto.hpke import (
    HPKE_ENC_LEN,
    HPKE_OVERHEAD,
    HPKE_PRIVATE_KEY_LEN,
    HPKE_PUBLIC_KEY_LEN,
)
from patientkey.errors import CryptoError, InvalidInput

from ._helpers import assert_no_secret, error_texts

PAIR = HpkeKeyPair.generate()
OTHER = HpkeKeyPair.generate()
INFO = b"patientkey/test/hpke"
BLOB = hpke_wrap(PAIR.public_key, b"a 32-byte data encryption key!!!", INFO)


def test_round_trip():
    """What is wrapped to a public key unwraps with its key pair and the same info."""
    blob = hpke_wrap(PAIR.public_key, b"secret", INFO)
    assert len(blob) == HPKE_ENC_LEN + len(b"secret") + 16
    assert hpke_unwrap(PAIR, blob, INFO) == b"secret"


def test_empty_plaintext_round_trip():
    """An empty plaintext is wrapped and unwrapped."""
    assert hpke_unwrap(PAIR, hpke_wrap(PAIR.public_key, b"", INFO), INFO) == b""


def test_encryption_is_randomized():
    """Two wraps of the same plaintext differ (fresh encapsulation)."""
    assert hpke_wrap(PAIR.public_key, b"m", INFO) != hpke_wrap(PAIR.public_key, b"m", INFO)


def test_wrong_key_fails():
    """Another key pair cannot unwrap."""
    with pytest.raises(CryptoError) as info:
        hpke_unwrap(OTHER, BLOB, INFO)
    assert info.value.reason == "hpke: decryption failed"


def test_wrong_info_fails():
    """A different info (context) cannot unwrap."""
    with pytest.raises(CryptoError):
        hpke_unwrap(PAIR, BLOB, INFO + b"!")


def test_truncated_or_extended_blob_fails():
    """Blobs shorter than the overhead or with bytes appended or removed fail."""
    for blob in (b"", BLOB[: HPKE_OVERHEAD - 1], BLOB[:-1], BLOB + b"\x00"):
        with pytest.raises(CryptoError):
            hpke_unwrap(PAIR, blob, INFO)


@settings(max_examples=40, deadline=None)
@given(pos=st.integers(0, len(BLOB) - 1), delta=st.integers(1, 255))
def test_any_changed_byte_fails(pos, delta):
    """Changing any byte of encapsulated key or ciphertext raises CryptoError only."""
    bad = bytearray(BLOB)
    bad[pos] ^= delta
    with pytest.raises(CryptoError):
        hpke_unwrap(PAIR, bytes(bad), INFO)


def test_private_key_serialization_round_trip():
    """The 96-byte private encoding reloads to the same key pair and public key."""
    raw = PAIR.private_bytes()
    assert len(raw) == HPKE_PRIVATE_KEY_LEN
    again = HpkeKeyPair.from_private_bytes(raw)
    assert again.public_key == PAIR.public_key
    assert again.private_bytes() == raw
    assert hpke_unwrap(again, BLOB, INFO) == hpke_unwrap(PAIR, BLOB, INFO)


def test_public_key_serialization_round_trip():
    """The 1216-byte public encoding reloads to an equal key usable for wrapping."""
    raw = PAIR.public_key.to_bytes()
    assert len(raw) == HPKE_PUBLIC_KEY_LEN
    public = HpkePublicKey.from_bytes(raw)
    assert public == PAIR.public_key
    assert hash(public) == hash(PAIR.public_key)
    assert public != OTHER.public_key
    assert hpke_unwrap(PAIR, hpke_wrap(public, b"x", INFO), INFO) == b"x"


def test_private_encoding_layout():
    """Private = ML-KEM seed (64) ‖ X25519 private (32); the public key follows from it."""
    seed_and_x = bytes(range(96))
    pair = HpkeKeyPair.from_private_bytes(seed_and_x)
    assert pair.private_bytes() == seed_and_x
    assert HpkeKeyPair.from_private_bytes(seed_and_x).public_key == pair.public_key


@pytest.mark.parametrize("raw", [b"", bytes(95), bytes(97)])
def test_malformed_private_key_is_invalid_input(raw):
    """Wrong-length private encodings raise InvalidInput."""
    with pytest.raises(InvalidInput):
        HpkeKeyPair.from_private_bytes(raw)


@pytest.mark.parametrize("raw", [b"", bytes(1215), b"\xff" * 1216, "text"])
def test_malformed_public_key_is_invalid_input(raw):
    """Wrong-length or invalid public encodings raise InvalidInput."""
    with pytest.raises(InvalidInput):
        HpkePublicKey.from_bytes(raw)


def test_wrong_argument_types_are_invalid_input():
    """Passing a non-key or a non-bytes info raises InvalidInput, not TypeError."""
    with pytest.raises(InvalidInput):
        hpke_wrap(PAIR, b"x", INFO)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        hpke_unwrap(PAIR.public_key, BLOB, INFO)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        hpke_wrap(PAIR.public_key, b"x", "info")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        hpke_wrap(PAIR.public_key, b"x", bytes(2000))


def test_repr_and_errors_never_show_the_private_key(caplog):
    """Key pair repr shows only the public thumbprint; errors and logs show no key bytes."""
    caplog.set_level(logging.DEBUG)
    secret = PAIR.private_bytes()
    texts = [repr(PAIR), str(PAIR), repr(PAIR.public_key)]
    assert PAIR.public_key.thumbprint() in repr(PAIR)
    with pytest.raises(CryptoError) as info:
        hpke_unwrap(PAIR, BLOB[:-1], INFO)
    texts += error_texts(info.value)
    texts.append(caplog.text)
    assert_no_secret(texts, secret, secret[:64], secret[64:])
