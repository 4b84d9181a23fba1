"""``patientkey thirdparty export|authorize|token|tokens|revoke-token`` and the OAuth
settings, against the fake platform of ``ciba_fake`` (typer's CliRunner)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from ciba_fake import CibaFake, FakeClock
from thirdparty_helpers import HIS, USER, B, Wallet, hospital_record
from typer.testing import CliRunner

from patientkey.authz.catalog import default_catalog
from patientkey.authz.registration import parse_registration
from patientkey.errors import ConfigError
from patientkey.storage import Party, SqlStore, ThirdPartyRepo, open_database
from patientkey.thirdparty import server
from patientkey.thirdparty.cli import app
from patientkey.thirdparty.core import ThirdPartyCore
from patientkey.thirdparty.oauth import ClientKey, OAuthClient
from patientkey.thirdparty.server import ThirdPartyRuntime
from patientkey.thirdparty.settings import load_keys, load_thirdparty_settings
from patientkey.thirdparty.tokens import TokenFile

runner = CliRunner()
PLATFORM_URL = "https://localhost:1"


def write_config(path: Path, pki: Path, extra: str = "") -> Path:
    path.write_text(
        f'name = "{B}"\npki_dir = "{pki}"\ndatabase = "sqlite:///pharmacy.db"\n'
        f'keystore = "pharmacy.keys"\n{extra}[peers.platform]\nurl = "{PLATFORM_URL}/"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def config(tmp_path, pki, monkeypatch) -> Path:
    """An initialised third party (keystore made) with the passphrase in the environment."""
    monkeypatch.setenv("PATIENTKEY_PASSPHRASE", "pharmacy passphrase")
    monkeypatch.setenv("COLUMNS", "250")
    path = write_config(tmp_path / "pharmacy.toml", pki)
    result = runner.invoke(app, ["init", "--config", str(path)])
    assert result.exit_code == 0, result.output
    return path


def export(config: Path, *args: str) -> dict:
    out = config.parent / "registry.json"
    result = runner.invoke(app, ["export", "--config", str(config), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text(encoding="ascii"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now=float(int(time.time())))


@pytest.fixture
def fake(config, clock, pki, monkeypatch) -> CibaFake:
    """The platform, registering the client from the export; the CLI's client speaks to it."""
    platform = CibaFake(export(config)["oauth_client"], issuer=PLATFORM_URL, clock=clock)

    def from_settings(cls, settings, **_: object) -> OAuthClient:
        key = ClientKey.from_pki(settings.pki_dir, settings.name)
        return cls(key, settings.oauth_issuer, http=platform.http(), clock=clock, sleep=clock.sleep)

    monkeypatch.setattr(OAuthClient, "from_settings", classmethod(from_settings))
    return platform


def store(config: Path) -> TokenFile:
    return TokenFile(load_thirdparty_settings(config).token_path)


def auth_req_id(output: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith("auth_req_id: ")]
    return line.removeprefix("auth_req_id: ")


def authorize(config: Path, *extra: str):
    return runner.invoke(
        app,
        [
            "authorize",
            "--config",
            str(config),
            "--user",
            USER,
            "--purpose",
            "pharmacy_dispense",
            "--record",
            f"{HIS}:p-1",
            *extra,
        ],
    )


# ── export ───────────────────────────────────────────────────────────────────────────


def test_export_emits_the_oauth_client_registration(config, pki):
    """oauth_client is an RFC 7591 document the platform accepts: B_ID, poll, the cert key."""
    document = export(config)["oauth_client"]
    client = parse_registration(document, catalog=default_catalog())
    assert client.client_id == B
    assert client.info.name == B
    assert client.info.delivery_mode == "poll"
    assert client.info.scenarios == {"pharmacy_dispense"}
    assert document["grant_types"] == ["urn:openid:params:grant-type:ciba"]
    assert document["token_endpoint_auth_method"] == "private_key_jwt"
    assert document["jwks"] == ClientKey.from_pki(pki, B).jwks()
    assert document["jwks"]["keys"][0]["kid"]


def test_export_takes_scenarios_and_name_from_options_and_settings(tmp_path, pki, monkeypatch):
    """--scenario overrides the settings' scenarios; client_name is what the patient reads."""
    monkeypatch.setenv("PATIENTKEY_PASSPHRASE", "pharmacy passphrase")
    path = write_config(
        tmp_path / "p.toml",
        pki,
        'client_name = "Apotheke am Markt"\nscenarios = ["pharmacy_dispense", "insurer_claim"]\n',
    )
    assert runner.invoke(app, ["init", "--config", str(path)]).exit_code == 0
    document = export(path)["oauth_client"]
    assert document["client_name"] == "Apotheke am Markt"
    assert document["patientkey_scenarios"] == ["insurer_claim", "pharmacy_dispense"]
    assert export(path, "--scenario", "research")["oauth_client"]["patientkey_scenarios"] == [
        "research"
    ]


# ── settings ─────────────────────────────────────────────────────────────────────────


def test_oauth_settings_defaults(config, tmp_path):
    """The issuer defaults to the platform's peer URL; tokens live beside the keystore."""
    settings = load_thirdparty_settings(config)
    assert settings.oauth_issuer == PLATFORM_URL
    assert settings.token_path == tmp_path / "pharmacy.tokens.json"
    assert settings.scenarios == ("pharmacy_dispense",)
    assert settings.oauth_client_name == B


def test_oauth_settings_explicit(tmp_path, pki):
    """issuer and a relative token_store (resolved beside the settings file) are honoured."""
    path = write_config(
        tmp_path / "p.toml",
        pki,
        'issuer = "https://auth.test/"\ntoken_store = "state/t.json"\n',
    )
    settings = load_thirdparty_settings(path)
    assert settings.oauth_issuer == "https://auth.test"
    assert settings.token_path == tmp_path / "state" / "t.json"


@pytest.mark.parametrize(
    "extra",
    ['issuer = "http://plain.test"\n', "scenarios = []\n", 'scenarios = ["A b"]\n'],
)
def test_bad_oauth_settings_are_configuration_errors(tmp_path, pki, extra):
    """A non-https issuer or bad scenario names are refused when the settings load."""
    with pytest.raises(ConfigError):
        load_thirdparty_settings(write_config(tmp_path / "p.toml", pki, extra))


def test_no_issuer_and_no_platform_peer_is_a_configuration_error(tmp_path, pki):
    """Without issuer or [peers.platform] there is nowhere to ask."""
    path = tmp_path / "p.toml"
    path.write_text(
        f'name = "{B}"\npki_dir = "{pki}"\ndatabase = "sqlite:///x.db"\nkeystore = "k"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="issuer"):
        _ = load_thirdparty_settings(path).oauth_issuer


def test_the_client_from_settings_uses_the_certificate_key_and_issuer(config, pki):
    """OAuthClient.from_settings: B_ID, the certificate key's kid, the configured issuer."""
    with OAuthClient.from_settings(load_thirdparty_settings(config)) as client:
        assert client.issuer == PLATFORM_URL
        assert client.key.client_id == B
        assert client.key.kid == ClientKey.from_pki(pki, B).kid


# ── authorize / token / tokens / revoke-token ───────────────────────────────────────────


def test_authorize_waits_and_keeps_the_token(config, fake):
    """authorize prints the auth_req_id, polls until approval, stores the token (0600)."""
    fake.on_poll = lambda n: fake.approve() if n == 2 else None
    result = authorize(config, "--binding-message", "Counter 3")
    assert result.exit_code == 0, result.output
    assert auth_req_id(result.stdout) == fake.last_auth_req_id
    assert "granted:" in result.stdout
    (token,) = store(config).tokens()
    assert token.access_token not in result.output
    assert token.redacted() in result.stdout
    assert store(config).pending() == []
    assert fake.requests.get(fake.last_auth_req_id).binding_message == "Counter 3"
    assert fake.errors() == ["authorization_pending", None]
    assert fake.refused == []
    path = load_thirdparty_settings(config).token_path
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_authorize_no_wait_then_token(config, fake):
    """--no-wait leaves a pending request; token polls it: pending, then the token."""
    asked = authorize(config, "--no-wait")
    assert asked.exit_code == 0, asked.output
    handle = auth_req_id(asked.stdout)
    assert [t.auth_req_id for t in store(config).pending()] == [handle]
    first = runner.invoke(app, ["token", "--config", str(config), handle])
    assert first.exit_code == 0, first.output
    assert "pending" in first.output
    fake.approve()
    second = runner.invoke(app, ["token", "--config", str(config), handle])
    assert second.exit_code == 0, second.output
    assert "granted:" in second.stdout
    assert store(config).pending() == []
    assert len(store(config).tokens()) == 1


def test_a_narrowed_grant_is_pointed_out(config, fake):
    """The patient approved fewer records than asked: the CLI says so."""
    from patientkey.authz.rar import parse_authorization_details

    def approve_one(n: int) -> None:
        asked = fake.requests.get(fake.last_auth_req_id).decision.scope
        fake.approve(
            approved=parse_authorization_details(
                [{**asked[0].to_json(), "records": {"his_id": HIS, "ids": ["p-1"]}}]
            )
        )

    fake.on_poll = approve_one
    result = authorize(config, "--record", f"{HIS}:p-2")
    assert result.exit_code == 0, result.output
    assert "approved less than was asked" in result.stderr
    assert "hospital-1:p-1 " in result.stdout


def test_token_after_a_denial_fails_and_forgets_the_request(config, fake):
    """The patient denied: exit 1 saying so; the pending request is dropped."""
    handle = auth_req_id(authorize(config, "--no-wait").stdout)
    fake.deny()
    result = runner.invoke(app, ["token", "--config", str(config), handle])
    assert result.exit_code == 1
    assert "denied" in result.output
    assert store(config).pending() == []
    assert store(config).tokens() == []


def test_an_unreachable_platform_keeps_the_pending_request(config, fake):
    """A transport failure while polling: exit 1, the request stays pending for a retry."""
    import httpx

    handle = auth_req_id(authorize(config, "--no-wait").stdout)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    fake.handle = down
    result = runner.invoke(app, ["token", "--config", str(config), handle])
    assert result.exit_code == 1
    assert "unreachable" in result.output
    assert [t.auth_req_id for t in store(config).pending()] == [handle]


def test_token_of_an_unknown_request_fails(config, fake):
    """An auth_req_id this party never asked with: exit 1, nothing sent."""
    result = runner.invoke(app, ["token", "--config", str(config), "nope"])
    assert result.exit_code == 1
    assert "no such pending" in result.output
    assert fake.answers == []


def test_authorize_refuses_a_malformed_record(config, fake):
    """--record without HIS_ID:P_ID: exit 1, nothing sent."""
    result = runner.invoke(
        app, ["authorize", "--config", str(config), "--user", USER, "--record", "p-1"]
    )
    assert result.exit_code == 1
    assert "HIS_ID:P_ID" in result.output
    assert fake.answers == []


def test_tokens_lists_redacted_tokens_and_pending_requests(config, fake):
    """tokens shows grant, patient and a cut-short token; --live asks the platform."""
    fake.on_poll = lambda n: fake.approve() if n == 1 else None
    assert authorize(config).exit_code == 0
    handle = auth_req_id(authorize(config, "--no-wait").stdout)
    (token,) = store(config).tokens()
    listed = runner.invoke(app, ["tokens", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    for text in (token.ref, USER, token.redacted(), "1 pending requests", handle):
        assert text in listed.stdout
    assert token.access_token not in listed.output
    live = runner.invoke(app, ["tokens", "--config", str(config), "--live"])
    assert live.exit_code == 0, live.output
    assert "active" in live.stdout


def test_revoke_token_revokes_at_the_platform_then_forgets(config, fake):
    """revoke-token GRANT: RFC 7009 at the platform (the grant ends), then the token is gone."""
    fake.on_poll = lambda n: fake.approve() if n == 1 else None
    assert authorize(config).exit_code == 0
    (token,) = store(config).tokens()
    result = runner.invoke(app, ["revoke-token", "--config", str(config), token.ref])
    assert result.exit_code == 0, result.output
    assert fake.grants.get(token.grant_id).status == "revoked"
    assert store(config).tokens() == []
    again = runner.invoke(app, ["revoke-token", "--config", str(config), token.ref])
    assert again.exit_code == 1
    assert "no token" in again.output


def test_claim_carries_the_token_the_patient_granted(config, fake, platform_port, monkeypatch):
    """After authorize, claim sends the token from the token file to the platform."""
    settings = load_thirdparty_settings(config)

    @contextmanager
    def runtime(settings_, *, connect=True):
        with open_database(settings.database, Party.THIRDPARTY) as db:
            db.upgrade()
            core = ThirdPartyCore(
                B,
                SqlStore(db, ThirdPartyRepo),
                load_keys(settings.keystore),
                platform=platform_port,
                tokens=TokenFile(settings.token_path),
            )
            yield ThirdPartyRuntime(settings=settings_, core=core, hop=None)  # type: ignore[arg-type]

    monkeypatch.setattr(server, "open_runtime", runtime)
    with runtime(settings) as opened:
        Wallet(kbp=opened.core._hpke.public_key).send(opened.core, hospital_record("p-1"))
    refused = runner.invoke(app, ["claim", "--config", str(config), "--his", HIS, "p-1"])
    assert refused.exit_code == 1
    assert "patientkey thirdparty authorize" in refused.output
    assert platform_port.calls == []
    fake.on_poll = lambda n: fake.approve() if n == 1 else None
    assert authorize(config).exit_code == 0
    claimed = runner.invoke(app, ["claim", "--config", str(config), "--his", HIS, "p-1"])
    assert claimed.exit_code == 0, claimed.output
    (token,) = store(config).tokens()
    assert platform_port.calls[0].access_token == token.access_token
    claims = fake.verifier.verify(token.access_token, now=int(fake.clock()))
    assert claims.sub == USER
    assert claims.client_id == B
