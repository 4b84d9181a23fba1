"""The hospital gateway in its own process, over real HTTPS with mutual TLS and a real KME."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest
from hospital_helpers import HIS, USER, bind_verify

from patientkey.crypto import Argon2Params, check_bind_reply
from patientkey.errors import Forbidden
from patientkey.hospital.server import HospitalProcess, open_runtime
from patientkey.hospital.settings import create_keystore, load_hospital_settings
from patientkey.keysupply.etsi014 import Etsi014Client
from patientkey.kme.server import KmeProcess
from patientkey.pki import client_ssl_context
from patientkey.protocol.messages import BindReply
from patientkey.service.client import PeerClient
from patientkey.service.party import qkd_hop_end

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
KME_H = ["{his}"]

[[links]]
a = "KME_P"
b = "KME_H"
low_watermark_bits = 16384
high_watermark_bits = 65536
[links.bb84]
pulses = 40000
"""


@pytest.fixture(scope="module")
def kme(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmeProcess]:
    config = tmp_path_factory.mktemp("kme") / "kme.toml"
    config.write_text(KME_CONFIG.format(pki=pki, his=HIS), encoding="utf-8")
    with KmeProcess(config, timeout=30) as process:
        yield process


def test_hospital_process_answers_the_platform_over_mutual_tls(kme, pki, tmp_path, monkeypatch):
    """A bind proof travels platform → HIS process under a QKD hop key and is answered."""
    monkeypatch.setenv("PATIENTKEY_PASSPHRASE", PASSPHRASE)
    config = tmp_path / "hospital.toml"
    config.write_text(
        f'name = "{HIS}"\nhost = "127.0.0.1"\nport = 0\npki_dir = "{pki}"\n'
        'database = "sqlite:///hospital.db"\nkeystore = "hospital.keys"\n'
        f'kme_url = "{kme.base_url}"\n[peers.platform]\nurl = "https://localhost:1"\n',
        encoding="utf-8",
    )
    settings = load_hospital_settings(config)
    create_keystore(settings.keystore, params=Argon2Params(time_cost=1, memory_cost=1024))
    with open_runtime(settings, connect=False) as runtime:
        enrollment = runtime.core.enroll("Erika Mustermann", date(1964, 8, 12))

    with HospitalProcess(config, env={"PATIENTKEY_PASSPHRASE": PASSPHRASE}) as his:
        supply = Etsi014Client.from_pki(kme.base_url, pki, "platform")
        hop = qkd_hop_end("platform", [HIS], supply)
        client = PeerClient(hop, HIS, his.base_url, ssl_context=client_ssl_context(pki, "platform"))
        try:
            msg = bind_verify(enrollment.kuh, enrollment.patient_id)
            reply = client.call("/v1/bind/verify", msg, BindReply)
            check_bind_reply(
                enrollment.kuh,
                reply.reply,
                patient_id=enrollment.patient_id,
                his_id=HIS,
                user_id=USER,
                nonce=msg.nonce,
            )
            with pytest.raises(Forbidden):
                client.call(
                    "/v1/bind/verify", bind_verify(b"\x01" * 32, enrollment.patient_id), BindReply
                )
            with httpx.Client(verify=client_ssl_context(pki, "platform")) as raw:
                response = raw.post(f"{his.base_url}/v1/records/get", content=b"garbage")
            assert response.status_code == 400
            assert response.headers["content-type"] == "application/problem+json"
        finally:
            client.close()
            supply.close()
