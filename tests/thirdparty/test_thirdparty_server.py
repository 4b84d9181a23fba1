"""The third party in its own process, over real HTTPS with mutual TLS and a real KME."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from thirdparty_helpers import HIS, B, Wallet, hospital_record

from patientkey.crypto import Argon2Params
from patientkey.keysupply.etsi014 import Etsi014Client
from patientkey.kme.server import KmeProcess
from patientkey.pki import client_ssl_context
from patientkey.protocol.messages import ShareReceipt
from patientkey.service.client import PeerClient
from patientkey.service.party import qkd_hop_end
from patientkey.thirdparty.server import ThirdPartyProcess, open_runtime
from patientkey.thirdparty.settings import create_keystore, load_thirdparty_settings

pytestmark = pytest.mark.slow

PASSPHRASE = "server test passphrase"
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
KME_P = ["platform"]
KME_X = ["{b}"]

[[links]]
a = "KME_P"
b = "KME_X"
low_watermark_bits = 16384
high_watermark_bits = 65536
[links.bb84]
pulses = 40000
"""


@pytest.fixture(scope="module")
def kme(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmeProcess]:
    config = tmp_path_factory.mktemp("kme") / "kme.toml"
    config.write_text(KME_CONFIG.format(pki=pki, b=B), encoding="utf-8")
    with KmeProcess(config, timeout=30) as process:
        yield process


def test_third_party_process_receives_shares_over_mutual_tls(kme, pki, tmp_path, monkeypatch):
    """The platform relays an HPKE then a KUB share to the process; both are accepted."""
    monkeypatch.setenv("PATIENTKEY_PASSPHRASE", PASSPHRASE)
    config = tmp_path / "pharmacy.toml"
    config.write_text(
        f'name = "{B}"\nhost = "127.0.0.1"\nport = 0\npki_dir = "{pki}"\n'
        'database = "sqlite:///pharmacy.db"\nkeystore = "pharmacy.keys"\n'
        f'kme_url = "{kme.base_url}"\n[peers.platform]\nurl = "https://localhost:1"\n',
        encoding="utf-8",
    )
    settings = load_thirdparty_settings(config)
    keys = create_keystore(settings.keystore, params=Argon2Params(time_cost=1, memory_cost=1024))
    wallet = Wallet(kbp=keys.hpke.public_key)

    with ThirdPartyProcess(config, env={"PATIENTKEY_PASSPHRASE": PASSPHRASE}) as pharmacy:
        supply = Etsi014Client.from_pki(kme.base_url, pki, "platform")
        client = PeerClient(
            qkd_hop_end("platform", [B], supply),
            B,
            pharmacy.base_url,
            ssl_context=client_ssl_context(pki, "platform"),
        )
        try:
            for p_id, version in (("p-1", 1), ("p-2", 2)):
                relay, nxt, kub = wallet.share(hospital_record(p_id))
                receipt = client.call("/v1/share/receive", relay, ShareReceipt)
                assert (receipt.accepted, receipt.kub_version) == (True, version)
                wallet.accept(receipt, nxt, kub)
            with httpx.Client(verify=client_ssl_context(pki, "platform")) as raw:
                response = raw.post(f"{pharmacy.base_url}/v1/share/receive", content=b"x")
            assert response.status_code == 400
        finally:
            client.close()
            supply.close()

    with open_runtime(settings, connect=False) as runtime:
        assert [(r.his_id, r.p_id) for r in runtime.core.received()] == [(HIS, "p-1"), (HIS, "p-2")]
