"""The platform as processes: CLI against a real KME over HTTPS, the server with workers."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from platform_world import PARTIES, FakeThirdParty
from sqlalchemy import text
from typer.testing import CliRunner

from patientkey.audit import SignedTreeHead, check_consistency, verify_tree_head
from patientkey.crypto import read_keystore, write_keystore
from patientkey.errors import ConfigError
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.keysupply.pool import KeyPool
from patientkey.keysupply.pq import PqResponder
from patientkey.keysupply.rekey import HopReceiver, HopSender
from patientkey.kme.server import KmeProcess
from patientkey.pki import client_ssl_context, init_pki
from patientkey.platform.cli import app as cli
from patientkey.platform.server import PlatformProcess, load_keys
from patientkey.platform.settings import load_platform_settings
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import ListRequest, RecordList
from patientkey.service.client import PeerClient
from patientkey.service.party import hop_context, qkd_hop_end
from patientkey.storage import KueDirection, Party, PlatformRepo, open_database

KME_CONFIG = """
host = "127.0.0.1"
port = 0
pki_dir = "{pki}"
server_name = "kme"
refill_interval_s = 0.05
retry_interval_s = 0.1

[limits]
max_pool_bits = 65536

[sites]
KME_PLATFORM = ["platform"]
KME_CHARGER = ["charger"]

[[links]]
a = "KME_PLATFORM"
b = "KME_CHARGER"
low_watermark_bits = 16384
high_watermark_bits = 65536
[links.bb84]
pulses = 60000
"""

PLATFORM_CONFIG = """
name = "platform"
host = "127.0.0.1"
port = 0
pki_dir = "{pki}"
database = "sqlite:///platform.db"
kme_url = "{kme}"
charger_sae = "charger"
keystore = "platform.keystore"
"""


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("server-pki")
    init_pki(directory, [*PARTIES, "kme"])
    return directory


@pytest.fixture(scope="module")
def kme(pki_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmeProcess]:
    """An embedded KME server with a platform-charger link, on a free port."""
    config = tmp_path_factory.mktemp("kme") / "kme.toml"
    config.write_text(KME_CONFIG.format(pki=pki_dir), encoding="utf-8")
    with KmeProcess(config, timeout=30) as process:
        yield process


@pytest.fixture
def config(tmp_path: Path, pki_dir: Path, kme: KmeProcess, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATIENTKEY_PASSPHRASE", "correct horse battery staple")
    path = tmp_path / "platform.toml"
    path.write_text(PLATFORM_CONFIG.format(pki=pki_dir, kme=kme.base_url), encoding="utf-8")
    return path


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_charge_wallet_cli_splits_the_pool(config: Path, tmp_path: Path):
    """charge-wallet writes the wallet half (0600) and stores the matching platform half."""
    out = tmp_path / "alice.pool.json"
    text = _invoke(
        "charge-wallet",
        "--config",
        str(config),
        "--user",
        "u-alice",
        "--count",
        "16",
        "--out",
        str(out),
    )
    assert "u-alice" in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    pool = json.loads(out.read_text())
    assert (pool["me"], pool["peer"], len(pool["send"]), len(pool["receive"])) == (
        "u-alice",
        "platform",
        16,
        16,
    )
    db = open_database(f"sqlite:///{tmp_path / 'platform.db'}", Party.PLATFORM)
    with db, db.transaction() as session:
        repo = PlatformRepo(session)
        assert repo.get_account("u-alice").user_id == "u-alice"
        assert repo.kue_key_count("u-alice", KueDirection.TO_WALLET) == 16
        key_id, key = pool["send"][0]
        taken = repo.take_kue_keys_by_id("u-alice", KueDirection.FROM_WALLET, [key_id])
        assert taken[0].key == base64.b64decode(key)
    # A second charge tops the same account up; an existing file is not overwritten.
    result = CliRunner().invoke(
        cli,
        [
            "charge-wallet",
            "--config",
            str(config),
            "--user",
            "u-alice",
            "--count",
            "4",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2
    _invoke(
        "charge-wallet",
        "--config",
        str(config),
        "--user",
        "u-alice",
        "--count",
        "4",
        "--out",
        str(out),
        "--force",
    )
    stats = _invoke("stats", "--config", str(config))
    assert "kue_keys_to_wallet" in stats
    events = _invoke("events", "--config", str(config), "--user", "u-alice")
    assert "wallet.charge" in events


def test_register_thirdparty_cli(config: Path, tmp_path: Path, pki_dir: Path):
    """register-thirdparty reads the export JSON; a malformed export exits 2."""
    tp = FakeThirdParty("pharmacy-1", qkd_hop_end("pharmacy-1", ["platform"], None), pki_dir)
    export = tmp_path / "tp.json"
    export.write_text(json.dumps(tp.export()))
    text = _invoke("register-thirdparty", "--config", str(config), str(export))
    assert "pharmacy-1" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**tp.export(), "hpke_public": "AAAA"}))
    assert (
        CliRunner()
        .invoke(cli, ["register-thirdparty", "--config", str(config), str(bad)])
        .exit_code
        == 2
    )
    assert "thirdparty.register" in _invoke("events", "--config", str(config))


def _https(pki_dir: Path, name: str, base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, verify=client_ssl_context(pki_dir, name), timeout=10)


def _public(pki_dir: Path, base_url: str) -> str:
    with _https(pki_dir, "u-alice", base_url) as client:
        return str(client.get("/v1/pq/public").json()["public"])


def test_server_with_two_workers_serves_envelopes(config: Path, tmp_path: Path, pki_dir: Path):
    """Two workers on one port: one PQ key (kept across restarts), envelopes open, replays fail."""
    out = tmp_path / "bob.pool.json"
    _invoke(
        "charge-wallet",
        "--config",
        str(config),
        "--user",
        "u-bob",
        "--count",
        "8",
        "--out",
        str(out),
    )
    pool = KeyPool.from_dict(json.loads(out.read_text()))
    context = hop_context("u-bob", "platform")
    hop = HopEnd(
        "u-bob",
        senders={
            "platform": HopSender(
                peer="platform", context=context, supply=pool, policy=QkdPolicy.PREFERRED
            )
        },
        receivers={"platform": HopReceiver(peer="platform", context=context, supply=pool)},
    )
    with PlatformProcess(config, workers=2) as platform:
        with _https(pki_dir, "u-bob", platform.base_url) as http:
            assert http.get("/v1/ping").json() == {"status": "ok"}
        keys = {_public(pki_dir, platform.base_url) for _ in range(6)}
        assert len(keys) == 1
        client = PeerClient(
            hop, "platform", platform.base_url, ssl_context=client_ssl_context(pki_dir, "u-bob")
        )
        for _ in range(4):
            assert (
                client.call("/v1/records/list", ListRequest(user_id="u-bob"), RecordList).records
                == []
            )
        token = hop.request("platform", ListRequest(user_id="u-bob")).token
        headers = {"content-type": "application/jose"}
        codes = []
        for _ in range(3):
            with _https(pki_dir, "u-bob", platform.base_url) as http:  # new connections
                codes.append(
                    http.post("/v1/records/list", content=token, headers=headers).status_code
                )
        assert codes == [200, 400, 400]
        client.close()
    with PlatformProcess(config) as again:
        assert _public(pki_dir, again.base_url) == keys.pop()
    wrong = {"PATIENTKEY_PASSPHRASE": "not the passphrase"}
    with pytest.raises(RuntimeError, match="wrong passphrase"), PlatformProcess(config, env=wrong):
        pass


def test_apps_reach_oauth_without_a_certificate_but_no_envelope_route(config: Path, pki_dir: Path):
    """Over real TLS, no client certificate: discovery answers, an envelope route is 401."""
    with (
        PlatformProcess(config) as platform,
        httpx.Client(
            base_url=platform.base_url, verify=client_ssl_context(pki_dir, None), timeout=10
        ) as anonymous,
    ):
        meta = anonymous.get("/.well-known/oauth-authorization-server")
        assert meta.status_code == 200
        port = platform.base_url.rsplit(":", 1)[1]
        assert meta.json()["issuer"].endswith(f":{port}")
        assert meta.json()["token_endpoint"] == meta.json()["issuer"] + "/token"
        refused = anonymous.post(
            "/v1/records/list", content=b"x", headers={"content-type": "application/jose"}
        )
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"


def test_server_refuses_a_bad_config(tmp_path: Path, pki_dir: Path):
    """A config naming a hospital without a peer URL makes the server exit, not serve."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'name = "platform"\npki_dir = "{pki_dir}"\ndatabase = "sqlite:///p.db"\n'
        'hospitals = ["hospital-1"]\n',
        encoding="utf-8",
    )
    with pytest.raises(RuntimeError, match="exited with 2"), PlatformProcess(bad, timeout=20):
        pass


def test_a_keystore_with_one_authorization_key_of_two_is_refused(
    tmp_path: Path, pki_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """A signing key without its MAC secret is damage: refused, the keystore left as it is."""
    monkeypatch.setenv("PATIENTKEY_PASSPHRASE", "correct horse battery staple")
    path = tmp_path / "platform.toml"
    path.write_text(
        f'name = "platform"\npki_dir = "{pki_dir}"\ndatabase = "sqlite:///p.db"\n'
        'keystore = "platform.keystore"\n',
        encoding="utf-8",
    )
    settings = load_platform_settings(path)
    assert settings.keystore is not None
    stored = {
        "pq_responder": PqResponder().private_bytes(),
        "authz_signing": Ed25519PrivateKey.generate().private_bytes_raw(),
    }
    write_keystore(settings.keystore, "correct horse battery staple", stored)
    with pytest.raises(ConfigError, match="one authorization key of two"):
        load_keys(settings)
    assert read_keystore(settings.keystore, "correct horse battery staple") == stored


def _signed_head(pki_dir: Path, base_url: str) -> tuple[SignedTreeHead, str]:
    with _https(pki_dir, None, base_url) as client:  # hashes only: no certificate needed
        body = client.get("/v1/audit/sth").json()
    log_key = body.pop("log_key")
    return SignedTreeHead.from_dict(body), log_key


def test_transparency_log_key_is_kept_and_heads_verify(config: Path, tmp_path: Path, pki_dir: Path):
    """Over real TLS, every worker signs heads with the keystore's audit key, kept on restart."""
    out = str(tmp_path / "bob.pool.json")
    _invoke(
        "charge-wallet", "--config", str(config), "--user", "u-bob", "--count", "4", "--out", out
    )
    with PlatformProcess(config, workers=2) as platform:
        heads = [_signed_head(pki_dir, platform.base_url) for _ in range(4)]
    keys = {log_key for _, log_key in heads}
    assert len(keys) == 1
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(keys.pop() + "="))
    for head, _ in heads:
        verify_tree_head(public, head)
    assert heads[-1][0].head.size > 0  # the charge's events are leaves
    with PlatformProcess(config) as again:
        later, log_key = _signed_head(pki_dir, again.base_url)
        with _https(pki_dir, None, again.base_url) as client:
            sizes = {"first": heads[0][0].head.size, "second": later.head.size}
            proof = client.get("/v1/audit/proof/consistency", params=sizes).json()["proof"]
    assert (later.log_id, log_key) == (heads[0][0].log_id, heads[0][1])
    check_consistency(
        heads[0][0], later, [base64.urlsafe_b64decode(h + "=") for h in proof], public
    )


def test_audit_check_cli(config: Path, tmp_path: Path):
    """audit-check passes on an intact log and exits 1 naming a row altered by SQL."""
    db = open_database(f"sqlite:///{tmp_path / 'platform.db'}", Party.PLATFORM)
    db.upgrade()
    with db, db.transaction() as session:
        repo = PlatformRepo(session)
        for n in range(5):
            repo.log_event("bind", "u-alice", {"his_id": f"his-{n}"})
        repo.sequence_events()
    assert "intact" in _invoke("audit-check", "--config", str(config), "--chunk", "2")
    db = open_database(f"sqlite:///{tmp_path / 'platform.db'}", Party.PLATFORM)
    with db, db.engine.begin() as conn:
        conn.execute(text("UPDATE event_log SET detail = '{}' WHERE leaf_index = 3"))
    result = CliRunner().invoke(cli, ["audit-check", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "row altered" in result.output
