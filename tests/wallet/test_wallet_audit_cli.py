"""``patientkey wallet audit|disclosures`` through CliRunner.

The wallet runs as in production (keystore on disk, hop envelopes over the KUE pool)
against ``wallet_fakes.FakePlatform`` with :class:`audit_fakes.FakeAuditLog` serving
``AUDIT_SYNC``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path

import pytest
from audit_fakes import FakeAuditLog, realistic
from click.testing import Result
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner
from wallet_fakes import PASSPHRASE, World

from patientkey.wallet import cli as wallet_cli
from patientkey.wallet import client
from patientkey.wallet.cli import TAMPER_EXIT, app

ENV = {"PATIENTKEY_PASSPHRASE": PASSPHRASE, "COLUMNS": "200"}


class Cli:
    def __init__(self, world: World) -> None:
        self.world = world
        self.log = FakeAuditLog()
        self.log.mount(world.platform)
        self.cfg = ("--config", str(world.config))

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(app, [*args, *self.cfg], env=ENV)


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setattr(
        client, "open_wallet", functools.partial(client.open_wallet, http=world.platform.client())
    )
    monkeypatch.setattr(wallet_cli._out, "width", 200)
    setup = Cli(world)
    assert setup.run("init").exit_code == 0
    charged = setup.run("charge", str(world.pool_file(40)))
    assert charged.exit_code == 0, charged.output
    realistic(setup.log)
    return setup


def test_audit_prints_the_verified_timeline(cli: Cli):
    """audit syncs over the hop and lists every event with a verified mark."""
    result = cli.run("audit")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("✔ verified") == len(cli.log.entries) - 1
    for shown in ("share.deliver", "b_id=pharmacy-1", "kme.drift", "ratio=1.5"):
        assert shown in out
    assert "append-only" in out
    assert cli.world.on_disk().audit is not None


def test_audit_json_and_fhir_export(cli: Cli, tmp_path: Path):
    """--json prints the head and events; --fhir writes a valid R4 Bundle of AuditEvents."""
    target = tmp_path / "audit.json"
    result = cli.run("audit", "--json", "--fhir", str(target))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["head"]["tree_size"] == len(cli.log.entries)
    assert [e["kind"] for e in data["events"]][:2] == ["bind", "records.list"]
    assert all(e["verified"] for e in data["events"])
    assert data["evidence"] == []
    bundle = Bundle.model_validate_json(target.read_text())
    assert len(bundle.entry) == len(data["events"])
    assert target.stat().st_mode & 0o777 == 0o600


def test_audit_fails_loudly_on_a_rewritten_log_and_keeps_saying_so(cli: Cli):
    """After a rewrite, audit exits 3 with a red alarm naming the event, every time."""
    assert cli.run("audit").exit_code == 0
    cli.log.alter(4, b_id="someone-else")
    first = cli.run("audit")
    assert first.exit_code == TAMPER_EXIT
    assert "AUDIT LOG TAMPERING" in first.stderr
    assert "event #4" in first.stderr
    again = cli.run("audit", "--json")
    assert again.exit_code == TAMPER_EXIT
    problem = json.loads(again.stdout)
    assert problem["error"]["type"].endswith("audit-log-tampered")
    assert problem["evidence"][0]["index"] == 4
    held = cli.world.on_disk().audit
    assert held is not None
    assert len(held.evidence) == 1


def test_disclosures_csv_to_stdout(cli: Cli):
    """disclosures prints CSV by default: one row per share, dispense step, app use."""
    result = cli.run("disclosures")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["recipient"] for r in rows] == [
        "pharmacy-1",
        "pharmacy-1",
        "pharmacy-1",
        "app-diary",
        "app-diary",
        "app-diary",
    ]
    assert rows[0]["grant"] == "g-share-1"


def test_disclosures_pdf_to_a_file(cli: Cli, tmp_path: Path):
    """--format pdf --output writes a PDF (mode 0600); without --output it refuses."""
    target = tmp_path / "disclosures.pdf"
    result = cli.run("disclosures", "--format", "pdf", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes().startswith(b"%PDF-")
    assert target.stat().st_mode & 0o777 == 0o600
    assert "6 disclosure(s)" in result.stderr
    refused = cli.run("disclosures", "--format", "pdf")
    assert refused.exit_code == 2
    assert "--output" in refused.stderr


def test_disclosures_refuse_a_truncated_log(cli: Cli):
    """disclosures syncs first: a truncated log exits 3 and prints no rows."""
    assert cli.run("disclosures").exit_code == 0
    cli.log.truncate(5)
    result = cli.run("disclosures")
    assert result.exit_code == TAMPER_EXIT
    assert result.stdout == ""
    assert "AUDIT LOG TAMPERING" in result.stderr
