"""AEAD suites: AES-256-GCM and the GM/T SM4-GCM/SM3 suite."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from patientkey.crypto import Suite
from patientkey.crypto._suites import aead_decrypt, aead_encrypt

KEY = bytes(range(32))
NONCE = bytes(range(12))


def test_suite_names_are_the_header_values():
    """Suite values are the strings written in a record header's ``enc``."""
    assert Suite.A256GCM.value == "A256GCM"
    assert Suite.SM4GCM_SM3.value == "SM4GCM-SM3"
    assert Suite("SM4GCM-SM3") is Suite.SM4GCM_SM3


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096])
def test_round_trip(suite, size):
    """Every suite decrypts what it encrypted, for any length, output = ciphertext ‖ 16-byte tag."""
    plaintext = os.urandom(size)
    sealed = aead_encrypt(suite, KEY, NONCE, plaintext, b"aad")
    assert len(sealed) == size + 16
    assert aead_decrypt(suite, KEY, NONCE, sealed, b"aad") == plaintext


@pytest.mark.parametrize("suite", list(Suite))
def test_any_change_is_rejected(suite):
    """A changed ciphertext, tag, AAD, nonce or key fails authentication."""
    sealed = aead_encrypt(suite, KEY, NONCE, b"prescription", b"aad")
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        with pytest.raises(InvalidTag):
            aead_decrypt(suite, KEY, NONCE, bytes(bad), b"aad")
    with pytest.raises(InvalidTag):
        aead_decrypt(suite, KEY, NONCE, sealed, b"aaD")
    with pytest.raises(InvalidTag):
        aead_decrypt(suite, KEY, bytes(12), sealed, b"aad")
    with pytest.raises(InvalidTag):
        aead_decrypt(suite, bytes(32), NONCE, sealed, b"aad")
    with pytest.raises(InvalidTag):
        aead_decrypt(suite, KEY, NONCE, sealed[:15], b"aad")


def test_a256gcm_is_plain_aes_gcm():
    """A256GCM is exactly AES-256-GCM with the 32-byte key."""
    assert aead_encrypt(Suite.A256GCM, KEY, NONCE, b"m", b"a") == AESGCM(KEY).encrypt(
        NONCE, b"m", b"a"
    )


def test_sm4_suite_matches_its_definition():
    """SM4GCM-SM3 is SM4-GCM under HKDF-SM3(key, info="patientkey/sm4gcm-sm3")[:16]."""
    sm4_key = HKDF(hashes.SM3(), 16, None, b"patientkey/sm4gcm-sm3").derive(KEY)
    enc = Cipher(algorithms.SM4(sm4_key), modes.GCM(NONCE)).encryptor()
    enc.authenticate_additional_data(b"a")
    expected = enc.update(b"message") + enc.finalize() + enc.tag
    assert aead_encrypt(Suite.SM4GCM_SM3, KEY, NONCE, b"message", b"a") == expected
    assert expected != aead_encrypt(Suite.A256GCM, KEY, NONCE, b"message", b"a")


def test_wrong_key_or_nonce_length_is_a_programming_error():
    """The private suite layer refuses keys other than 32 bytes and nonces other than 12."""
    with pytest.raises(ValueError, match="32 bytes"):
        aead_encrypt(Suite.A256GCM, KEY[:16], NONCE, b"", b"")
    with pytest.raises(ValueError, match="12 bytes"):
        aead_decrypt(Suite.SM4GCM_SM3, KEY, NONCE[:8], bytes(16), b"")
