"""The KME in its own process over real HTTPS with mutual TLS, driven by Etsi014Client."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from patientkey.errors import KeySupplyBadRequest, KeySupplyUnauthorized, KeyUnavailable
from patientkey.keysupply.etsi014 import Etsi014Client
from patientkey.kme.server import KmeProcess
from patientkey.pki import client_ssl_context, init_pki

pytestmark = pytest.mark.slow

CONFIG = """
host = "127.0.0.1"
port = 0
pki_dir = "{pki}"
server_name = "kme"
admin_sae_ids = ["operator"]
refill_interval_s = 0.05
retry_interval_s = 0.1

[limits]
max_pool_bits = 32768

[sites]
KME_WALLET = ["wallet"]
KME_PLATFORM = ["platform"]
KME_HOSPITAL = ["hospital"]

[[links]]
a = "KME_WALLET"
b = "KME_PLATFORM"
low_watermark_bits = 8192
high_watermark_bits = 32768
[links.bb84]
pulses = 40000

[[links]]
a = "KME_PLATFORM"
b = "KME_HOSPITAL"
low_watermark_bits = 8192
high_watermark_bits = 32768
[links.bb84]
pulses = 40000
"""


@pytest.fixture(scope="module")
def kme(dev_pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmeProcess]:
    """The KME server in a subprocess on a free loopback port."""
    config = tmp_path_factory.mktemp("kme") / "kme.toml"
    config.write_text(CONFIG.format(pki=dev_pki), encoding="utf-8")
    with KmeProcess(config, timeout=30) as process:
        yield process


@pytest.fixture(scope="module")
def sae(kme: KmeProcess, dev_pki: Path) -> Iterator[Callable[..., Etsi014Client]]:
    """Factory: an Etsi014Client presenting ``name``'s certificate."""
    clients: list[Etsi014Client] = []

    def make(name: str, **kwargs: Any) -> Etsi014Client:
        kwargs.setdefault("backoff_s", 0.05)
        client = Etsi014Client.from_pki(kme.base_url, dev_pki, name, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_status_over_mutual_tls(sae: Callable[..., Etsi014Client]) -> None:
    """Get status works over HTTPS and names the caller (from its certificate) as master."""
    status = sae("wallet").status("platform")
    assert (status.master_SAE_ID, status.slave_SAE_ID) == ("wallet", "platform")
    assert (status.source_KME_ID, status.target_KME_ID) == ("KME_WALLET", "KME_PLATFORM")
    assert status.stored_key_count > 0


def test_master_and_slave_get_the_same_key(sae: Callable[..., Etsi014Client]) -> None:
    """enc_keys by the master and dec_keys by the slave, in two TLS sessions, agree."""
    keys = sae("wallet").get_keys("platform", number=4, size=256)
    fetched = sae("platform").get_keys_by_id("wallet", [k.key_id for k in keys])
    assert fetched == keys
    assert len({k.key for k in keys}) == 4


def test_wrong_sae_is_401(sae: Callable[..., Etsi014Client]) -> None:
    """Another SAE's certificate cannot fetch the key (401); a non-SAE cannot even ask."""
    (key,) = sae("wallet").get_keys("platform")
    with pytest.raises(KeySupplyUnauthorized):
        sae("hospital").get_keys_by_id("wallet", [key.key_id])
    with pytest.raises(KeySupplyUnauthorized):
        sae("stranger").status("platform")
    assert sae("platform").get_keys_by_id("wallet", [key.key_id]) == [key]


def test_consumed_key_is_400(sae: Callable[..., Etsi014Client]) -> None:
    """A key fetched once cannot be fetched again (400)."""
    (key,) = sae("platform").get_keys("wallet")
    wallet = sae("wallet")
    assert wallet.get_keys_by_id("platform", [key.key_id]) == [key]
    with pytest.raises(KeySupplyBadRequest):
        wallet.get_keys_by_id("platform", [key.key_id])


def test_client_without_certificate_is_refused_at_tls(kme: KmeProcess, dev_pki: Path) -> None:
    """No client certificate: the TLS handshake fails, no HTTP answer at all."""
    with (
        httpx.Client(verify=client_ssl_context(dev_pki)) as anonymous,
        pytest.raises(httpx.TransportError),
    ):
        anonymous.get(f"{kme.base_url}/api/v1/keys/platform/status")
    with (
        Etsi014Client(kme.base_url, ssl_context=client_ssl_context(dev_pki)) as anonymous_sae,
        pytest.raises(KeyUnavailable) as info,
    ):
        anonymous_sae.status("platform")
    assert isinstance(info.value.__cause__, httpx.TransportError)


def test_certificate_of_another_ca_is_refused(
    kme: KmeProcess, dev_pki: Path, tmp_path: Path
) -> None:
    """A certificate named 'wallet' but issued by another CA fails the handshake."""
    forged = init_pki(tmp_path, ["wallet"])["wallet"]
    context = client_ssl_context(dev_pki)  # trusts the real KME ...
    context.load_cert_chain(forged.cert, forged.key)  # ... but presents the forged identity
    with httpx.Client(verify=context) as client, pytest.raises(httpx.TransportError):
        client.get(f"{kme.base_url}/api/v1/keys/platform/status")


@pytest.fixture(scope="module")
def https(kme: KmeProcess, dev_pki: Path) -> Iterator[Callable[[str], httpx.Client]]:
    """Factory: a raw httpx.Client with ``name``'s certificate (for /admin)."""
    clients: list[httpx.Client] = []

    def make(name: str) -> httpx.Client:
        client = httpx.Client(base_url=kme.base_url, verify=client_ssl_context(dev_pki, name))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_eve_drains_the_link_to_503_and_recovers(
    sae: Callable[..., Etsi014Client], https: Callable[[str], httpx.Client]
) -> None:
    """With the eavesdropper on, rounds abort, the pool empties and senders get 503."""
    admin = https("operator")
    link = "/admin/links/KME_PLATFORM/KME_HOSPITAL"
    assert admin.put(f"{link}/eve", json={"eve": 1.0}).status_code == 200
    # A round started before the switch may still land: flush until an aborted round is seen.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = admin.post(f"{link}/flush").json()
        if state["aborted_rounds"] and state["last_round"]["aborted"]:
            break
        time.sleep(0.05)
    admin.post(f"{link}/flush")
    platform = sae("platform", max_attempts=3, backoff_s=0.05)
    assert platform.status("hospital").stored_key_count == 0
    with pytest.raises(KeyUnavailable):
        platform.get_keys("hospital")
    # The other link is untouched.
    assert len(sae("wallet").get_keys("platform")) == 1
    # Eve off: the refill thread fills the pool again.
    assert admin.put(f"{link}/eve", json={"eve": 0.0}).status_code == 200
    deadline = time.monotonic() + 10
    while platform.status("hospital").stored_key_count == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(platform.get_keys("hospital")) == 1


def test_admin_routes_refuse_saes(https: Callable[[str], httpx.Client]) -> None:
    """An SAE certificate gets 403 on /admin."""
    assert https("wallet").get("/admin/links").status_code == 403


def test_server_log_holds_no_key_material(
    kme: KmeProcess, sae: Callable[..., Etsi014Client]
) -> None:
    """Keys served over HTTPS never appear in the server's log."""
    keys = sae("wallet").get_keys("platform", number=2)
    sae("platform").get_keys_by_id("wallet", [k.key_id for k in keys])
    time.sleep(0.1)
    log = kme.log()
    assert "POST /api/v1/keys/platform/enc_keys" in log
    for k in keys:
        assert k.key.hex() not in log
        assert k.key.hex()[:16] not in log
        assert base64.b64encode(k.key).decode() not in log
