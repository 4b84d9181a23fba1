"""``patientkey hospital ...`` through typer's CliRunner."""

from __future__ import annotations

import json
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
from hospital_helpers import HIS, decode_code
from typer.testing import CliRunner

from patientkey.fhir.records import load_record
from patientkey.hospital import server
from patientkey.hospital.cli import app
from patientkey.hospital.core import HospitalCore
from patientkey.hospital.server import HospitalRuntime
from patientkey.hospital.settings import load_hospital_settings, load_storage_key
from patientkey.storage import HospitalRepo, Party, SqlStore, open_database

runner = CliRunner()
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def config(tmp_path, pki, monkeypatch) -> Path:
    """A hospital settings file (no KME: the hop has no key source) and the passphrase."""
    monkeypatch.setenv("PATIENTKEY_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables and messages on one line each
    path = tmp_path / "hospital.toml"
    path.write_text(
        f'name = "{HIS}"\n'
        f'pki_dir = "{pki}"\n'
        'database = "sqlite:///hospital.db"\n'
        'keystore = "hospital.keys"\n'
        "[peers.platform]\n"
        'url = "https://localhost:1"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def initialised(config) -> Path:
    result = runner.invoke(app, ["init", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return config


def enroll(config: Path, *extra: str) -> str:
    result = runner.invoke(
        app,
        [
            "enroll",
            "--config",
            str(config),
            "--name",
            "Erika Mustermann",
            "--birth-date",
            "1964-08-12",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def stored_records(config: Path) -> int:
    settings = load_hospital_settings(config)
    with open_database(settings.database, Party.HOSPITAL) as db:
        db.upgrade()
        with db.transaction() as session:
            repo = HospitalRepo(session)
            return sum(len(repo.records_of(p.patient_id)) for p in repo.list_patients())


def test_init_creates_a_keystore_and_refuses_to_replace_it(initialised, tmp_path):
    """init writes a 0600 keystore holding a 32-byte storage key; a second init is refused."""
    keystore = tmp_path / "hospital.keys"
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert len(load_storage_key(keystore)) == 32
    again = runner.invoke(app, ["init", "--config", str(initialised)])
    assert again.exit_code == 2
    assert "refusing to replace" in again.output


def test_enroll_prints_a_code_that_parses(initialised):
    """enroll prints exactly the enrollment code on stdout; it names this HIS and KUH v1."""
    code = decode_code(enroll(initialised))
    assert (code.his_id, code.kv, len(code.kuh)) == (HIS, 1, 32)
    listing = runner.invoke(app, ["patients", "--config", str(initialised)])
    assert listing.exit_code == 0, listing.output
    assert code.patient_id in listing.stdout
    assert "Erika Mustermann" in listing.stdout


def test_enroll_writes_a_private_qr_png(initialised, tmp_path):
    """--qr writes a PNG (mode 0600: it carries KUH) and refuses to overwrite a file."""
    png = tmp_path / "code.png"
    enroll(initialised, "--qr", str(png))
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert stat.S_IMODE(png.stat().st_mode) == 0o600
    again = runner.invoke(
        app,
        [
            "enroll",
            "--config",
            str(initialised),
            "--name",
            "X",
            "--birth-date",
            "2000-01-01",
            "--qr",
            str(png),
        ],
    )
    assert again.exit_code == 2
    assert "exists" in again.output


@pytest.mark.parametrize("birth_date", ["12.08.1964", "1964-02-30", "19640812"])
def test_enroll_refuses_a_bad_birth_date(initialised, birth_date):
    """--birth-date must be a real YYYY-MM-DD date."""
    result = runner.invoke(
        app,
        ["enroll", "--config", str(initialised), "--name", "X", "--birth-date", birth_date],
    )
    assert result.exit_code == 2
    assert result.stdout == ""


def test_commands_refuse_to_run_without_the_passphrase(initialised, monkeypatch):
    """Without PATIENTKEY_PASSPHRASE the keystore is not opened: exit 2, it says why."""
    monkeypatch.delenv("PATIENTKEY_PASSPHRASE")
    result = runner.invoke(
        app,
        ["enroll", "--config", str(initialised), "--name", "X", "--birth-date", "2000-01-01"],
    )
    assert result.exit_code == 2
    assert "PATIENTKEY_PASSPHRASE" in result.output


def test_a_wrong_passphrase_is_refused(initialised, monkeypatch):
    """A wrong passphrase opens nothing: the one opaque crypto error, exit 1."""
    monkeypatch.setenv("PATIENTKEY_PASSPHRASE", "wrong")
    result = runner.invoke(app, ["patients", "--config", str(initialised)])
    assert result.exit_code == 1
    assert "could not be authenticated" in result.output


def test_generate_writes_valid_bundles(tmp_path):
    """generate needs no config and writes COUNT valid FHIR prescriptions."""
    out = tmp_path / "gen"
    result = runner.invoke(app, ["generate", "--count", "4", "--seed", "9", "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.json"))
    assert len(files) == 4
    assert {load_record(f).record_type for f in files} == {"prescription"}


def test_import_refuses_a_directory_with_one_broken_file(initialised, tmp_path):
    """One invalid file: exit 1, the output names the file and the JSON path; nothing stored."""
    patient = decode_code(enroll(initialised)).patient_id
    source = tmp_path / "batch"
    runner.invoke(app, ["generate", "--count", "3", "--seed", "1", "--out", str(source)])
    broken = json.loads((source / "erp-000001.json").read_text(encoding="utf-8"))
    broken["entry"][1]["resource"]["authoredOn"] = "yesterday"
    (source / "erp-000001.json").write_text(json.dumps(broken), encoding="utf-8")
    result = runner.invoke(
        app, ["import", str(source), "--patient", patient, "--config", str(initialised)]
    )
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "erp-000001.json" in output
    assert "authoredOn" in output
    assert "nothing was imported" in output
    assert stored_records(initialised) == 0


def test_import_without_a_key_source_stores_nothing(initialised, tmp_path):
    """No KME configured: the announce cannot be sealed (fail closed), the import rolls back."""
    patient = decode_code(enroll(initialised)).patient_id
    source = tmp_path / "batch"
    runner.invoke(app, ["generate", "--count", "2", "--seed", "1", "--out", str(source)])
    result = runner.invoke(
        app, ["import", str(source), "--patient", patient, "--config", str(initialised)]
    )
    assert result.exit_code == 1
    assert "key" in result.output.lower()
    assert stored_records(initialised) == 0


def test_import_stores_and_announces(initialised, tmp_path, monkeypatch, platform_port):
    """With a platform to announce to, import stores every record and reports the counts."""

    @contextmanager
    def runtime(settings, *, connect=True):
        with open_database(settings.database, Party.HOSPITAL) as db:
            db.upgrade()
            key = load_storage_key(settings.keystore)
            core = HospitalCore(
                settings.name, SqlStore(db, HospitalRepo), key, platform=platform_port
            )
            yield HospitalRuntime(settings=settings, core=core, hop=None)  # type: ignore[arg-type]

    monkeypatch.setattr(server, "open_runtime", runtime)
    patient = decode_code(enroll(initialised)).patient_id
    source = tmp_path / "batch"
    runner.invoke(app, ["generate", "--count", "3", "--seed", "5", "--out", str(source)])
    result = runner.invoke(
        app, ["import", str(source), "--patient", patient, "--config", str(initialised)]
    )
    assert result.exit_code == 0, result.output
    assert "imported 3 prescriptions" in result.output
    assert len(platform_port.announced) == 3
    assert stored_records(initialised) == 3
