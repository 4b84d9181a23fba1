"""``patientkey wallet identity|requests|approve|deny|otp|grants|revoke`` through CliRunner.

The wallet runs as in production (keystore on disk, hop envelopes over the KUE pool)
against ``wallet_fakes.FakePlatform`` with :class:`authz_fakes.FakeAuthz` mounted on
the authorization routes; approvals are verified there with the real verifiers.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pyotp
import pytest
from authz_fakes import FakeAuthz
from click.testing import Result
from typer.testing import CliRunner
from wallet_fakes import PASSPHRASE, USER, World

from patientkey.identity.x509sig import parse_certificate
from patientkey.pki import party_files
from patientkey.protocol.messages import AuthzDecision, IdentityEnroll
from patientkey.wallet import cli as wallet_cli
from patientkey.wallet import client
from patientkey.wallet.cli import app

PASSWORD = "a long enough password"
ENV = {"PATIENTKEY_PASSPHRASE": PASSPHRASE, "COLUMNS": "200"}


class Cli:
    """Alice's wallet on disk, charged, talking to a platform with FakeAuthz mounted."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.fake = FakeAuthz()
        self.fake.mount(world.platform)
        self.cfg = ("--config", str(world.config))

    def run(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> Result:
        merged = {**ENV, **(env or {})}
        return CliRunner().invoke(app, [*args, *self.cfg], env=merged, input=stdin)

    def identity(self, *args: str) -> Result:
        result = self.run("identity", *args, env={"PATIENTKEY_NEW_PASSWORD": PASSWORD})
        assert result.exit_code == 0, result.output
        return result

    def totp(self) -> str:
        assert self.fake.totp is not None
        return pyotp.TOTP(self.fake.totp.secret).at(self.fake.now)


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setattr(
        client, "open_wallet", functools.partial(client.open_wallet, http=world.platform.client())
    )
    # The console is built at import: under xdist it has the worker's COLUMNS, not ENV's.
    monkeypatch.setattr(wallet_cli._out, "width", 200)
    monkeypatch.delenv("PATIENTKEY_PASSWORD", raising=False)
    monkeypatch.delenv("PATIENTKEY_NEW_PASSWORD", raising=False)
    setup = Cli(world)
    assert setup.run("init").exit_code == 0
    charged = setup.run("charge", str(world.pool_file(80)))
    assert charged.exit_code == 0, charged.output
    return setup


def test_identity_enrolls_proofs_and_shows_the_totp_uri_once(cli: Cli) -> None:
    """identity --password --totp --sms enrolls them and prints the otpauth URI and a QR code."""
    result = cli.identity("--password", "--totp", "--sms", "+4915112345678")
    out = result.output
    assert "otpauth://totp/" in out
    assert "▀" in out or "█" in out  # the terminal QR code
    assert PASSWORD not in out
    assert cli.fake.password == PASSWORD
    assert "(enrolled)" in out
    for proof in ("password", "totp", "otp_sms", "device_signature"):
        assert proof in out
    again = cli.identity()
    assert "otpauth://" not in again.output
    assert [m.device_key_pem is not None for m in cli.fake.of(IdentityEnroll)] == [True, False]


def test_identity_prompts_for_a_new_password_twice_without_echo(cli: Cli) -> None:
    """Without PATIENTKEY_NEW_PASSWORD the password is asked twice, hidden."""
    result = cli.run("identity", "--password", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert cli.fake.password == PASSWORD
    assert PASSWORD not in result.output


def test_identity_with_an_ed25519_device_key(cli: Cli) -> None:
    """--device-algorithm ed25519 makes the new device key Ed25519."""
    cli.identity("--device-algorithm", "ed25519")
    (key,) = cli.fake.device_keys.values()
    assert key.algorithm == "Ed25519"


def test_requests_show_who_what_why_how_long_and_proofs(cli: Cli) -> None:
    """The table names the app, the binding message, the details, 30 days and the method."""
    request = cli.fake.ask()
    result = cli.run("requests")
    assert result.exit_code == 0, result.output
    out = result.output
    for shown in (
        request.request_id,
        "Apotheke am Markt",
        "BLUE-FOX-7",
        "view, fetch, use",
        "rx-1, rx-2, rx-3",
        "30 days",
        "substantial: 2 factors",
        "dispense a prescription",
    ):
        assert shown in out


def test_requests_json_and_an_empty_inbox(cli: Cli) -> None:
    """--json prints the requests without the nonce; no request says so."""
    assert "no pending authorization requests" in cli.run("requests").output
    cli.fake.ask()
    result = cli.run("requests", "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert entry["request_id"] == "req-1"
    assert "nonce" not in entry


def test_approve_with_password_totp_and_narrowing(cli: Cli) -> None:
    """approve --password --totp --actions --records --duration grants exactly the narrowed set."""
    cli.identity("--password", "--totp")
    request = cli.fake.ask()
    result = cli.run(
        "approve",
        request.request_id,
        "--password",
        "--totp",
        cli.totp(),
        "--actions",
        "view,fetch",
        "--records",
        "rx-2",
        "--duration",
        "P7D",
        env={"PATIENTKEY_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 0, result.output
    assert "approved req-1" in result.output
    assert "less than was asked" in result.output
    (grant,) = cli.fake.grants.values()
    assert grant.authorization_details[0]["actions"] == ["view", "fetch"]
    assert grant.authorization_details[0]["records"]["ids"] == ["rx-2"]
    assert grant.authorization_details[0]["duration"] == 7 * 86400
    assert set(grant.proofs) == {"password", "totp", "device_signature"}
    assert PASSWORD not in result.output


def test_approve_prompts_for_the_password_when_not_in_the_environment(cli: Cli) -> None:
    """--password without PATIENTKEY_PASSWORD asks at a hidden prompt."""
    cli.identity("--password")
    request = cli.fake.ask()
    result = cli.run("approve", request.request_id, "--password", stdin=f"{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert set(cli.fake.grants["g-1"].proofs) == {"password", "device_signature"}


def test_a_password_is_never_taken_from_the_command_line(cli: Cli) -> None:
    """--password takes no value: a password on the command line is a usage error."""
    cli.identity("--password")
    request = cli.fake.ask()
    result = cli.run("approve", request.request_id, "--password", PASSWORD)
    assert result.exit_code == 2
    assert cli.fake.of(AuthzDecision) == []


def test_approve_with_a_one_time_code_sent_then_typed(cli: Cli) -> None:
    """--otp sms sends a code and reads it at the prompt; the platform accepts it."""
    cli.identity("--sms", "+4915112345678")
    request = cli.fake.ask()
    cli.fake.next_code = "424242"
    result = cli.run("approve", request.request_id, "--otp", "sms", stdin="424242\n")
    assert result.exit_code == 0, result.output
    assert "sent by sms" in result.output
    assert set(cli.fake.grants["g-1"].proofs) == {"otp_sms", "device_signature"}


def test_otp_command_then_approve_with_the_challenge(cli: Cli) -> None:
    """`wallet otp` sends a code; approve --otp-challenge --otp-code uses it."""
    cli.identity("--email", "alice@example.org")
    request = cli.fake.ask()
    sent = cli.run("otp", request.request_id, "--channel", "email")
    assert sent.exit_code == 0, sent.output
    assert "otp-1" in sent.output
    code = cli.fake.sent[-1][2]
    result = cli.run(
        "approve", request.request_id, "--otp-challenge", "otp-1", "--otp-code", code, "--json"
    )
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert (outcome["state"], outcome["grant_id"]) == ("approved", "g-1")


@pytest.mark.parametrize(
    "args",
    [
        ("--otp-code", "123456"),
        ("--otp-challenge", "otp-1"),
        ("--otp", "sms", "--otp-challenge", "otp-1", "--otp-code", "1"),
        ("--x509-chain", "chain.pem"),
    ],
)
def test_inconsistent_proof_options_are_usage_errors(cli: Cli, args: tuple[str, ...]) -> None:
    """OTP and X.509 options that do not fit together exit 2 before anything is sent."""
    cli.fake.ask()
    result = cli.run("approve", "req-1", *args)
    assert result.exit_code == 2
    assert cli.fake.of(AuthzDecision) == []


def test_approve_refuses_widening_and_unknown_requests(cli: Cli) -> None:
    """An action not asked for or an unknown request id is a one-line error; nothing decided."""
    cli.identity("--password")
    cli.fake.ask()
    env = {"PATIENTKEY_PASSWORD": PASSWORD}
    result = cli.run("approve", "req-1", "--password", "--actions", "view,share", env=env)
    assert result.exit_code == 1
    assert "does not ask for: share" in result.output
    result = cli.run("approve", "req-9", "--password", env=env)
    assert result.exit_code == 1
    assert "no pending authorization request req-9" in result.output
    assert "Traceback" not in result.output
    assert cli.fake.of(AuthzDecision) == []


def test_approve_before_identity_enrollment_says_what_to_do(cli: Cli) -> None:
    """Without an enrolled device key approve points at `wallet identity`."""
    cli.fake.ask()
    result = cli.run("approve", "req-1", "--totp", "123456")
    assert result.exit_code == 1
    assert "wallet identity" in result.output


def test_deny_grants_and_revoke(cli: Cli) -> None:
    """deny refuses one request; grants lists the approved one; revoke revokes it."""
    cli.identity("--password")
    denied, approved = cli.fake.ask(), cli.fake.ask()
    result = cli.run("deny", denied.request_id)
    assert result.exit_code == 0, result.output
    assert f"denied {denied.request_id}" in result.output
    env = {"PATIENTKEY_PASSWORD": PASSWORD}
    assert cli.run("approve", approved.request_id, "--password", env=env).exit_code == 0
    listed = cli.run("grants")
    assert listed.exit_code == 0, listed.output
    for shown in ("g-1", "pharmacy-app", "active", "device_signature, password"):
        assert shown in listed.output
    result = cli.run("revoke", "g-1")
    assert result.exit_code == 0, result.output
    assert "revoked g-1 (pharmacy-app)" in result.output
    (grant,) = json.loads(cli.run("grants", "--json").stdout)
    assert (grant["status"], grant["revoked_by"]) == ("revoked", "patient")
    assert "no grants" not in listed.output


def test_no_grants_and_an_unknown_grant(cli: Cli) -> None:
    """An empty grant list says so; revoking an unknown grant is an error."""
    assert "no grants" in cli.run("grants").output
    result = cli.run("revoke", "g-404")
    assert result.exit_code == 1
    assert "error:" in result.output


def test_identity_certificate_and_an_x509_approval(cli: Cli, wallet_pki: Path) -> None:
    """identity --certificate enrolls it; approve --x509-chain/--x509-key signs with its key."""
    files = party_files(wallet_pki, USER)
    cli.fake.anchors = [parse_certificate(files.ca.read_bytes())]
    out = cli.identity("--certificate", str(files.cert)).output
    assert re.search(r"x509_signature\s+│ yes", out)
    assert cli.fake.certificate == files.cert.read_text()
    request = cli.fake.ask()
    result = cli.run(
        "approve",
        request.request_id,
        "--x509-chain",
        str(files.cert),
        "--x509-key",
        str(files.key),
    )
    assert result.exit_code == 0, result.output
    assert set(cli.fake.grants["g-1"].proofs) == {"x509_signature", "device_signature"}
