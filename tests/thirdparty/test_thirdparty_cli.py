"""``patientkey thirdparty ...`` through typer's CliRunner."""

from __future__ import annotations

import base64
import json
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
from thirdparty_helpers import HIS, USER, B, Wallet, granted_token, hospital_record
from typer.testing import CliRunner

from patientkey.crypto import HpkePublicKey
from patientkey.crypto.certkey import verify_hpke_public
from patientkey.storage import Party, SqlStore, ThirdPartyRepo, open_database
from patientkey.thirdparty import server
from patientkey.thirdparty.cli import app
from patientkey.thirdparty.core import ThirdPartyCore
from patientkey.thirdparty.server import ThirdPartyRuntime
from patientkey.thirdparty.settings import load_keys, load_thirdparty_settings
from patientkey.thirdparty.tokens import TokenFile

runner = CliRunner()
PASSPHRASE = "pharmacy passphrase"


@pytest.fixture
def config(tmp_path, pki, monkeypatch) -> Path:
    """A third-party settings file and the passphrase in the environment."""
    monkeypatch.setenv("PATIENTKEY_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "pharmacy.toml"
    path.write_text(
        f'name = "{B}"\npki_dir = "{pki}"\ndatabase = "sqlite:///pharmacy.db"\n'
        'keystore = "pharmacy.keys"\n[peers.platform]\nurl = "https://localhost:1"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def initialised(config) -> Path:
    result = runner.invoke(app, ["init", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return config


@contextmanager
def local_core(config: Path, platform=None):
    """The third party's core over its own database and keystore, as the server builds it."""
    settings = load_thirdparty_settings(config)
    with open_database(settings.database, Party.THIRDPARTY) as db:
        db.upgrade()
        keys = load_keys(settings.keystore)
        tokens = TokenFile(settings.token_path)
        yield ThirdPartyCore(
            B, SqlStore(db, ThirdPartyRepo), keys, platform=platform, tokens=tokens
        )


def hold_token(config: Path) -> None:
    """Put a token of the patient's grant for every HIS prescription in the token file."""
    TokenFile(load_thirdparty_settings(config).token_path).put_token(granted_token())


def receive(config: Path, *p_ids: str) -> None:
    with local_core(config) as core:
        wallet = Wallet(kbp=core._hpke.public_key)
        for p_id in p_ids:
            assert wallet.send(core, hospital_record(p_id)).accepted


def test_init_creates_a_keystore_and_refuses_to_replace_it(initialised, tmp_path):
    """init writes a 0600 keystore with an HPKE pair and a storage key; a second init fails."""
    keystore = tmp_path / "pharmacy.keys"
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    keys = load_keys(keystore)
    assert len(keys.storage_key) == 32
    again = runner.invoke(app, ["init", "--config", str(initialised)])
    assert again.exit_code == 2
    assert "refusing to replace" in again.output
    assert load_keys(keystore).hpke.public_key == keys.hpke.public_key


def test_export_writes_the_registry_entry(initialised, tmp_path, pki):
    """export writes b_id, KBP (b64url), the certificate, its key's KBP signature, the client."""
    out = tmp_path / "registry.json"
    result = runner.invoke(app, ["export", "--config", str(initialised), "--out", str(out)])
    assert result.exit_code == 0, result.output
    entry = json.loads(out.read_text(encoding="ascii"))
    assert set(entry) == {
        "b_id",
        "hpke_public",
        "certificate_pem",
        "hpke_signature",
        "oauth_client",
    }
    assert entry["b_id"] == B
    assert "=" not in entry["hpke_public"]
    public = base64.urlsafe_b64decode(entry["hpke_public"] + "=" * (-len(entry["hpke_public"]) % 4))
    assert HpkePublicKey.from_bytes(public) == load_keys(tmp_path / "pharmacy.keys").hpke.public_key
    assert entry["certificate_pem"] == (pki / f"{B}.pem").read_text(encoding="ascii")
    signature = base64.urlsafe_b64decode(
        entry["hpke_signature"] + "=" * (-len(entry["hpke_signature"]) % 4)
    )
    verify_hpke_public(entry["certificate_pem"], B, public, signature)


def test_commands_refuse_to_run_without_the_passphrase(initialised, monkeypatch, tmp_path):
    """Without PATIENTKEY_PASSPHRASE nothing opens the keystore: exit 2, it says why."""
    monkeypatch.delenv("PATIENTKEY_PASSPHRASE")
    for args in (
        ["received", "--config", str(initialised)],
        ["export", "--config", str(initialised), "--out", str(tmp_path / "x.json")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        assert "PATIENTKEY_PASSPHRASE" in result.output
    assert not (tmp_path / "x.json").exists()


def test_received_lists_decrypted_records(initialised):
    """received lists each record with HIS, P_ID, medication, sender and claim state."""
    receive(initialised, "p-1", "p-2")
    result = runner.invoke(app, ["received", "--config", str(initialised)])
    assert result.exit_code == 0, result.output
    for text in ("2 received records", HIS, "p-1", "p-2", USER, "prescription"):
        assert text in result.stdout


def test_show_prints_medication_and_dosage(initialised):
    """show decrypts one record and prints its medication fields."""
    receive(initialised, "p-1")
    result = runner.invoke(app, ["show", "--config", str(initialised), "--his", HIS, "p-1"])
    assert result.exit_code == 0, result.output
    assert "medication" in result.stdout
    assert "shared by" in result.stdout


def test_show_of_an_unknown_record_fails_cleanly(initialised):
    """show of a record never received: exit 1 with the reason."""
    result = runner.invoke(app, ["show", "--config", str(initialised), "--his", HIS, "p-9"])
    assert result.exit_code == 1
    assert "no such received record" in result.output


def test_claim_complete_release_go_through_the_platform(initialised, monkeypatch, platform_port):
    """claim / complete print the platform's state; the local claim follows it."""

    @contextmanager
    def runtime(settings, *, connect=True):
        with local_core(initialised, platform_port) as core:
            yield ThirdPartyRuntime(settings=settings, core=core, hop=None)  # type: ignore[arg-type]

    receive(initialised, "p-1")
    hold_token(initialised)
    monkeypatch.setattr(server, "open_runtime", runtime)
    claim = runner.invoke(app, ["claim", "--config", str(initialised), "--his", HIS, "p-1"])
    assert claim.exit_code == 0, claim.output
    assert f"claimed by {B}" in claim.stdout
    release = runner.invoke(app, ["release", "--config", str(initialised), "--his", HIS, "p-1"])
    assert "open" in release.stdout
    runner.invoke(app, ["claim", "--config", str(initialised), "--his", HIS, "p-1"])
    done = runner.invoke(app, ["complete", "--config", str(initialised), "--his", HIS, "p-1"])
    assert "completed" in done.stdout
    again = runner.invoke(app, ["claim", "--config", str(initialised), "--his", HIS, "p-1"])
    assert again.exit_code == 1
    assert "dispensed already" in again.output
    assert [c.action for c in platform_port.calls] == ["claim", "release", "claim", "complete"]


def test_claim_without_a_key_source_fails_closed(initialised):
    """No KME configured: the request cannot be sealed, nothing is sent, exit 1."""
    receive(initialised, "p-1")
    hold_token(initialised)
    result = runner.invoke(app, ["claim", "--config", str(initialised), "--his", HIS, "p-1"])
    assert result.exit_code == 1
    assert "key" in result.output.lower()
    assert "authorize" not in result.output  # the token was found: the key supply failed
