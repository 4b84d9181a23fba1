"""Passphrase keystore: Argon2id + AES-256-GCM, atomic 0600 writes."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from patientkey.crypto import DEFAULT_ARGON2, Argon2Params, read_keystore, write_keystore
from patientkey.errors import CryptoError, InvalidInput, PayloadTooLarge

from ._helpers import assert_no_secret, error_texts

CHEAP = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)
SECRETS = {"kuh:his-1": os.urandom(32), "device-key": os.urandom(64), "empty": b""}


def test_round_trip(tmp_path):
    """Secrets written under a passphrase read back identical."""
    path = tmp_path / "wallet.keystore"
    write_keystore(path, "correct horse battery staple", SECRETS, params=CHEAP)
    assert read_keystore(path, "correct horse battery staple") == SECRETS


def test_wrong_passphrase_is_crypto_error(tmp_path):
    """A wrong passphrase raises the opaque CryptoError."""
    path = tmp_path / "ks"
    write_keystore(path, "right", SECRETS, params=CHEAP)
    with pytest.raises(CryptoError) as info:
        read_keystore(path, "wrong")
    assert info.value.reason == "keystore: wrong passphrase or modified file"


def test_file_mode_is_0600_and_no_temp_left(tmp_path):
    """The keystore is created 0600 and the temporary file is gone after the rename."""
    path = tmp_path / "ks"
    write_keystore(path, "pw", SECRETS, params=CHEAP)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["ks"]


def test_overwrite_replaces_atomically(tmp_path):
    """Writing again replaces the contents (new salt) and keeps mode 0600."""
    path = tmp_path / "ks"
    write_keystore(path, "pw", {"a": b"1"}, params=CHEAP)
    first = path.read_bytes()
    write_keystore(path, "pw2", {"b": b"2"}, params=CHEAP)
    assert path.read_bytes() != first
    assert read_keystore(path, "pw2") == {"b": b"2"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(list(tmp_path.iterdir())) == 1


def test_params_are_stored_in_file(tmp_path):
    """Argon2id parameters and salt are in the file; the secrets are not in clear."""
    path = tmp_path / "ks"
    write_keystore(path, "pw", SECRETS, params=CHEAP)
    doc = json.loads(path.read_text())
    assert doc["format"] == "patientkey-keystore"
    assert doc["kdf"] | {"salt": None} == {"alg": "argon2id", "t": 1, "m": 8, "p": 1, "salt": None}
    assert_no_secret([path.read_text()], *[v for v in SECRETS.values() if v])
    assert "kuh:his-1" not in path.read_text()


def test_changed_params_are_detected(tmp_path):
    """Editing the stored Argon2 parameters makes the keystore fail to open."""
    path = tmp_path / "ks"
    write_keystore(path, "pw", SECRETS, params=CHEAP)
    doc = json.loads(path.read_text())
    doc["kdf"]["t"] = 2
    path.write_text(json.dumps(doc))
    with pytest.raises(CryptoError):
        read_keystore(path, "pw")


def test_tampered_ciphertext_is_detected(tmp_path):
    """A modified ciphertext raises CryptoError."""
    path = tmp_path / "ks"
    write_keystore(path, "pw", SECRETS, params=CHEAP)
    doc = json.loads(path.read_text())
    doc["ciphertext"] = ("B" if doc["ciphertext"][0] == "A" else "A") + doc["ciphertext"][1:]
    path.write_text(json.dumps(doc))
    with pytest.raises(CryptoError):
        read_keystore(path, "pw")


def test_unicode_passphrase_is_normalized(tmp_path):
    """Composed and decomposed forms of the same passphrase open the same keystore (NFC)."""
    path = tmp_path / "ks"
    write_keystore(path, "caf\u00e9", {"k": b"v"}, params=CHEAP)
    assert read_keystore(path, "cafe\u0301") == {"k": b"v"}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format":"other"}',
        json.dumps(
            {"format": "patientkey-keystore", "v": 1, "kdf": {}, "iv": "", "ciphertext": ""}
        ).encode(),
        json.dumps(
            {
                "format": "patientkey-keystore",
                "v": 1,
                "kdf": {"alg": "argon2id", "t": 1, "m": 1 << 40, "p": 1, "salt": "A" * 22},
                "iv": "A" * 16,
                "ciphertext": "",
            }
        ).encode(),
        json.dumps(
            {
                "format": "patientkey-keystore",
                "v": 1,
                "kdf": {"alg": "argon2id", "t": 1, "m": 8, "p": 1, "salt": "AA"},
                "iv": "A" * 16,
                "ciphertext": "",
            }
        ).encode(),
    ],
)
def test_malformed_file_is_invalid_input(tmp_path, content):
    """Files that are not keystores (or have absurd parameters) raise InvalidInput."""
    path = tmp_path / "ks"
    path.write_bytes(content)
    with pytest.raises(InvalidInput):
        read_keystore(path, "pw")


def test_missing_file_is_invalid_input(tmp_path):
    """Reading a keystore that does not exist raises InvalidInput."""
    with pytest.raises(InvalidInput):
        read_keystore(tmp_path / "absent", "pw")


def test_oversized_file_is_refused(tmp_path):
    """A file above the size limit is refused without parsing."""
    path = tmp_path / "ks"
    path.write_bytes(b" " * (16 * 1024 * 1024 + 1))
    with pytest.raises(PayloadTooLarge):
        read_keystore(path, "pw")


def test_bad_arguments_are_invalid_input(tmp_path):
    """Empty passphrase, bad names, non-bytes values and bad params raise InvalidInput."""
    path = tmp_path / "ks"
    with pytest.raises(InvalidInput):
        write_keystore(path, "", SECRETS, params=CHEAP)
    with pytest.raises(InvalidInput):
        write_keystore(path, "pw", {"": b"x"}, params=CHEAP)
    with pytest.raises(InvalidInput):
        write_keystore(path, "pw", {"k": "text"}, params=CHEAP)  # type: ignore[dict-item]
    with pytest.raises(InvalidInput):
        Argon2Params(time_cost=0)
    with pytest.raises(InvalidInput):
        Argon2Params(memory_cost=4, parallelism=1)
    with pytest.raises(InvalidInput):
        Argon2Params(salt_len=8)
    assert not path.exists()


def test_default_params_are_rfc9106_second_option():
    """Defaults are RFC 9106 §4's second recommended option: t=3, m=64 MiB, p=4."""
    assert (DEFAULT_ARGON2.time_cost, DEFAULT_ARGON2.memory_cost, DEFAULT_ARGON2.parallelism) == (
        3,
        64 * 1024,
        4,
    )


def test_errors_and_logs_never_contain_secrets(tmp_path, caplog):
    """Failures and log lines contain no stored secret and no passphrase."""
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "ks"
    write_keystore(path, "hunter2-passphrase", SECRETS, params=CHEAP)
    with pytest.raises(CryptoError) as info:
        read_keystore(path, "wrong-passphrase")
    texts = [*error_texts(info.value), caplog.text]
    assert_no_secret(texts, *[v for v in SECRETS.values() if v], b"hunter2-passphrase")
    assert "hunter2" not in " ".join(texts)


def test_open_keystore_saves_without_rederiving(tmp_path):
    """An open Keystore re-seals under the same salt with a fresh IV, readable by read_keystore."""
    import json

    from patientkey.crypto import Keystore, read_keystore

    path = tmp_path / "ks"
    store = Keystore.create(path, "pw", {"a": b"1"}, params=CHEAP)
    first = json.loads(path.read_bytes())
    store.save({"a": b"2", "b": b"3"})
    second = json.loads(path.read_bytes())
    assert first["kdf"] == second["kdf"]
    assert first["iv"] != second["iv"]
    assert read_keystore(path, "pw") == {"a": b"2", "b": b"3"}
    reopened, secrets = Keystore.open(path, "pw")
    assert secrets == {"a": b"2", "b": b"3"}
    reopened.save({"c": b"4"})
    assert read_keystore(path, "pw") == {"c": b"4"}
