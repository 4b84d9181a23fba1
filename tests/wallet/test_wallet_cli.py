"""``patientkey wallet ...`` through typer's CliRunner."""

from __future__ import annotations

import functools

import pytest
from typer.testing import CliRunner
from wallet_fakes import HIS, PASSPHRASE, PATIENT, TP, USER, World, b64url

from patientkey.fhir.records import PrescriptionSummary, load_record
from patientkey.wallet import client
from patientkey.wallet.cli import app

ENV = {"PATIENTKEY_PASSPHRASE": PASSPHRASE, "COLUMNS": "200"}


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ENV if env is None else env)
    return result.exit_code, result.output


def test_init_creates_the_keystore_once(world: World) -> None:
    """init writes an encrypted keystore and the data directory; a second init refuses."""
    code, out = run("init", "--config", str(world.config))
    assert code == 0, out
    assert world.on_disk().user_id == USER
    assert world.settings().data_dir.is_dir()
    code, out = run("init", "--config", str(world.config))
    assert code == 1
    assert "already exists" in out


def test_enroll_and_status(world: World) -> None:
    """enroll stores the hospital's key; status shows versions and never the key bytes."""
    run("init", "--config", str(world.config))
    code, out = run("enroll", world.code, "--config", str(world.config))
    assert code == 0, out
    assert f"enrolled at {HIS} as patient {PATIENT}" in out
    code, out = run("status", "--config", str(world.config))
    assert code == 0, out
    assert HIS in out
    assert PATIENT in out
    assert "KUE pool: 0 sending keys (low)" in out
    kuh = world.hospital.patients[PATIENT].keys[1]
    assert b64url(kuh) not in out
    assert kuh.hex() not in out
    assert world.code not in out


def test_enroll_with_a_bad_code_fails_cleanly(world: World) -> None:
    """A malformed code is a one-line error, exit code 1."""
    run("init", "--config", str(world.config))
    code, out = run("enroll", "PKENROLL1.garbage", "--config", str(world.config))
    assert code == 1
    assert "error:" in out
    assert "Traceback" not in out


def test_passphrase_comes_only_from_the_environment(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PATIENTKEY_PASSPHRASE the CLI refuses (exit 2) and says which variable to set."""
    monkeypatch.delenv("PATIENTKEY_PASSPHRASE", raising=False)
    code, out = run("init", "--config", str(world.config), env={"COLUMNS": "200"})
    assert code == 2
    assert "PATIENTKEY_PASSPHRASE" in out
    assert not world.settings().keystore.exists()


def test_wrong_passphrase_is_a_clear_error(world: World) -> None:
    """A wrong passphrase is reported as such, exit code 1."""
    run("init", "--config", str(world.config))
    code, out = run("status", "--config", str(world.config), env={"PATIENTKEY_PASSPHRASE": "nope"})
    assert code == 1
    assert "wrong passphrase" in out


def test_missing_config_is_a_config_error(world: World) -> None:
    """An unreadable settings file exits 2 with its path."""
    code, out = run("status", "--config", str(world.directory / "none.toml"))
    assert code == 2
    assert "none.toml" in out


def test_full_session_through_the_cli(
    world: World, synthetic_bodies: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """charge, bind, prescriptions, fetch, show, rotate, share and status end to end."""
    monkeypatch.setattr(
        client, "open_wallet", functools.partial(client.open_wallet, http=world.platform.client())
    )
    world.add_record("rx-1", synthetic_bodies[0])
    cfg = ("--config", str(world.config))
    assert run("init", *cfg)[0] == 0
    assert run("enroll", world.code, *cfg)[0] == 0
    pool = world.pool_file(12, low_water=6)
    code, out = run("charge", str(pool), *cfg)
    assert code == 0, out
    assert "charged 12 keys" in out
    assert not pool.exists()
    code, out = run("bind", "--his", HIS, *cfg)
    assert code == 0, out
    code, out = run("prescriptions", *cfg)
    assert code == 0, out
    assert "rx-1" in out
    assert "open" in out
    code, out = run("fetch", "--his", HIS, "rx-1", *cfg)
    assert code == 0, out
    code, out = run("show", "rx-1", *cfg)
    assert code == 0, out
    summary = load_record(synthetic_bodies[0]).summary
    assert isinstance(summary, PrescriptionSummary)
    assert summary.medication is not None
    assert summary.medication in out
    code, out = run("rotate", "--his", HIS, *cfg)
    assert code == 0, out
    assert "version 1 -> 2" in out
    assert "1 cached record(s) re-wrapped" in out
    code, out = run("share", "--his", HIS, "rx-1", "--to", TP, *cfg)
    assert code == 0, out
    assert "HPKE" in out
    code, out = run("status", "rx-1", "--his", HIS, *cfg)
    assert code == 0, out
    assert "dispense open" in out
    assert TP in out
    code, out = run("status", *cfg)
    assert code == 0, out
    assert TP in out
    assert "(low)" in out  # 12 keys, 8 used, low-water 6
    assert "recharge" in out


def test_show_of_an_unfetched_record_is_an_error(world: World) -> None:
    """show tells the user to fetch first."""
    run("init", "--config", str(world.config))
    code, out = run("show", "rx-9", "--config", str(world.config))
    assert code == 1
    assert "fetch it first" in out
