"""Keystore state, record cache, settings and enrollment codes."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wallet_fakes import HIS, PASSPHRASE, USER, World, b64url, enrollment_code, write_config

from patientkey.crypto import Argon2Params
from patientkey.errors import ConfigError, Conflict, InvalidInput, NotFound, Unauthenticated
from patientkey.protocol.enrollment import parse_enrollment_code
from patientkey.protocol.states import Rotation
from patientkey.wallet.settings import load_wallet_settings
from patientkey.wallet.store import (
    FileRecordCache,
    HospitalKeys,
    PendingRotation,
    ThirdPartyKeys,
    WalletKeystore,
    WalletState,
)

CHEAP = Argon2Params(time_cost=1, memory_cost=64, parallelism=1)


# --------------------------------------------------------------------------- keystore


def test_keystore_round_trip(tmp_path: Path, world: World) -> None:
    """Every part of the state survives a save and a load."""
    pool = json.loads(world.pool_file(3).read_text())
    from patientkey.keysupply.pool import KeyPool

    state = WalletState(
        user_id=USER,
        hospitals={
            HIS: HospitalKeys(
                patient_id="pat-1",
                current=2,
                keys={1: b"\x01" * 32, 2: b"\x02" * 32},
                bound=True,
                rotation=PendingRotation(
                    state=Rotation.ACKED,
                    current_version=1,
                    new_version=2,
                    nonce=b"\x03" * 32,
                    key=b"\x02" * 32,
                ),
            )
        },
        third_parties={"pharmacy-1": ThirdPartyKeys(current=1, keys={1: b"\x04" * 32})},
        pool=KeyPool.from_dict(pool),
    )
    store = WalletKeystore(tmp_path / "w.keystore", PASSPHRASE, params=CHEAP)
    store.create(state)
    loaded = store.load()
    assert loaded.hospitals == state.hospitals
    assert loaded.third_parties == state.third_parties
    assert loaded.pool is not None
    assert loaded.pool.to_dict() == pool
    assert (tmp_path / "w.keystore").stat().st_mode & 0o777 == 0o600
    raw = (tmp_path / "w.keystore").read_bytes()
    assert b64url(b"\x01" * 32).encode() not in raw


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    """A wrong passphrase says so (Unauthenticated), without a crypto oracle's details."""
    WalletKeystore(tmp_path / "w", PASSPHRASE, params=CHEAP).create(WalletState(user_id=USER))
    with pytest.raises(Unauthenticated, match="wrong passphrase"):
        WalletKeystore(tmp_path / "w", "not the passphrase", params=CHEAP).load()


def test_tampered_keystore_is_refused(tmp_path: Path) -> None:
    """A modified keystore file does not open."""
    path = tmp_path / "w"
    WalletKeystore(path, PASSPHRASE, params=CHEAP).create(WalletState(user_id=USER))
    doc = json.loads(path.read_text())
    doc["ciphertext"] = doc["ciphertext"][:-4] + (
        "AAAA" if doc["ciphertext"][-4:] != "AAAA" else "BBBB"
    )
    path.write_text(json.dumps(doc))
    with pytest.raises(Unauthenticated):
        WalletKeystore(path, PASSPHRASE, params=CHEAP).load()


def test_keystore_create_refuses_to_overwrite(tmp_path: Path) -> None:
    """init never replaces an existing keystore (it would lose every key)."""
    store = WalletKeystore(tmp_path / "w", PASSPHRASE, params=CHEAP)
    store.create(WalletState(user_id=USER))
    with pytest.raises(Conflict):
        store.create(WalletState(user_id=USER))


def test_missing_keystore_and_empty_passphrase(tmp_path: Path) -> None:
    """No keystore is NotFound; an empty passphrase is refused outright."""
    with pytest.raises(NotFound):
        WalletKeystore(tmp_path / "none", PASSPHRASE, params=CHEAP).load()
    with pytest.raises(InvalidInput):
        WalletKeystore(tmp_path / "none", "", params=CHEAP)


def test_inconsistent_state_is_refused() -> None:
    """A state whose current version has no key, or a half-rotation off its version, is refused."""
    with pytest.raises(ValueError, match="current KUH"):
        HospitalKeys(patient_id="p", current=2, keys={1: b"\x01" * 32})
    with pytest.raises(ValueError, match="pending rotation"):
        HospitalKeys(
            patient_id="p",
            current=1,
            keys={1: b"\x01" * 32},
            rotation=PendingRotation(
                state=Rotation.ACKED,
                current_version=1,
                new_version=2,
                nonce=b"n" * 32,
                key=b"k" * 32,
            ),
        )
    with pytest.raises(InvalidInput):
        WalletState.from_bytes(b'{"format": "patientkey-wallet", "v": 2}')


def test_state_repr_has_no_keys() -> None:
    """Reprs of the stored models never show key bytes."""
    keys = HospitalKeys(patient_id="p", current=1, keys={1: b"\x07" * 32})
    assert "\\x07" not in repr(keys)
    assert "keys" not in repr(keys)


# --------------------------------------------------------------------------- record cache


def test_record_cache_round_trip(tmp_path: Path) -> None:
    """Records are stored per hospital with mode 0600 and listed back."""
    cache = FileRecordCache(tmp_path)
    cache.put(HIS, "rx-1", b"sealed-1")
    cache.put("his-2", "rx-2", b"sealed-2")
    cache.put(HIS, "rx-1", b"sealed-1b")
    assert cache.get(HIS, "rx-1") == b"sealed-1b"
    assert cache.get(HIS, "rx-9") is None
    assert list(cache.items()) == [(HIS, "rx-1"), ("his-2", "rx-2")]
    assert (tmp_path / "records" / HIS / "rx-1.sealed").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "records" / HIS).iterdir()] == ["rx-1.sealed"]


@pytest.mark.parametrize("p_id", ["../x", "a/b", "", ".hidden", "x" * 200])
def test_record_cache_refuses_path_like_ids(tmp_path: Path, p_id: str) -> None:
    """Identifiers become file names: anything outside the protocol's alphabet is refused."""
    cache = FileRecordCache(tmp_path)
    with pytest.raises(InvalidInput):
        cache.put(HIS, p_id, b"x")
    assert not (tmp_path / "records").exists() or list(cache.items()) == []


# --------------------------------------------------------------------------- settings


def test_settings_resolve_paths_relative_to_the_file(tmp_path: Path, wallet_pki: Path) -> None:
    """keystore and data_dir are relative to the settings file; the peer is the platform."""
    settings = load_wallet_settings(write_config(tmp_path, wallet_pki))
    assert settings.keystore == tmp_path / f"{USER}.keystore"
    assert settings.data_dir == tmp_path / f"{USER}-data"
    assert (settings.platform, settings.platform_url) == ("platform", "https://platform.test")
    assert settings.kue_policy == "preferred"


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda t: t.replace('kue_policy = "preferred"', 'kue_policy = "maybe"'), "kue_policy"),
        (lambda t: t + '[peers.other]\nurl = "https://x"\n', "exactly one peer"),
        (lambda t: t.replace("https://platform.test", "http://platform.test"), "url"),
        (lambda t: t.replace("memory_cost = 64", "memory_cost = 1"), "memory_cost"),
        (lambda t: t.replace(f'name = "{USER}"', 'name = "../evil"'), "invalid party name"),
        (lambda t: t + "database = 'sqlite://'\n", "database"),
        (lambda t: t + "[[[", "cannot read"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, wallet_pki: Path, edit, where: str) -> None:
    """Every malformed settings file is a ConfigError naming the problem."""
    path = write_config(tmp_path, wallet_pki)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError, match=where):
        load_wallet_settings(path)


# --------------------------------------------------------------------------- enrollment codes


def test_enrollment_code_round_trip() -> None:
    """A hospital's code gives back its HIS_ID, Patient_ID, KUH and version."""
    kuh = os.urandom(32)
    parsed = parse_enrollment_code(enrollment_code(HIS, "pat-1", kuh, 3))
    assert (parsed.his_id, parsed.patient_id, parsed.kuh, parsed.version) == (HIS, "pat-1", kuh, 3)
    assert kuh.hex() not in repr(parsed)


def _code(obj: object) -> str:
    return "PKENROLL1." + b64url(json.dumps(obj).encode())


GOOD = {"his_id": HIS, "patient_id": "pat-1", "kuh": b64url(b"k" * 32), "kv": 1}


@pytest.mark.parametrize(
    "code",
    [
        "",
        "PKENROLL2." + b64url(json.dumps(GOOD).encode()),
        "PKENROLL1.",
        "PKENROLL1.@@@",
        "PKENROLL1." + b64url(json.dumps(GOOD).encode()) + "=",
        _code([1, 2]),
        _code({**GOOD, "extra": 1}),
        _code({k: v for k, v in GOOD.items() if k != "kv"}),
        _code({**GOOD, "kuh": b64url(b"k" * 16)}),
        _code({**GOOD, "kuh": 5}),
        _code({**GOOD, "kv": 0}),
        _code({**GOOD, "kv": True}),
        _code({**GOOD, "kv": "1"}),
        _code({**GOOD, "his_id": "his/1"}),
        _code({**GOOD, "patient_id": ""}),
        "PKENROLL1." + b64url(b'{"his_id":"a","his_id":"b","patient_id":"p","kuh":"x","kv":1}'),
        "PKENROLL1." + "A" * 3000,
    ],
)
def test_malformed_enrollment_codes_are_invalid_input(code: str) -> None:
    """Every malformed code is InvalidInput, and the error never echoes the key."""
    with pytest.raises(InvalidInput) as info:
        parse_enrollment_code(code)
    assert b64url(b"k" * 32) not in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_enrollment_parser_never_crashes(text: str) -> None:
    """Any text parses or raises InvalidInput."""
    with contextlib.suppress(InvalidInput):
        parse_enrollment_code("PKENROLL1." + text)


def test_enrollment_in_the_state_rejects_a_rotation_of_another_step() -> None:
    """A rotation record must move exactly one version up."""
    with pytest.raises(ValueError, match="one version"):
        PendingRotation(
            state=Rotation.PREPARED,
            current_version=1,
            new_version=3,
            nonce=b"n" * 32,
            key=b"k" * 32,
        )
