"""The platform client's plain-JSON post-quantum endpoints and the package's exports."""

from __future__ import annotations

import importlib
import json

import httpx
import pytest

from patientkey.errors import ConfigError, NotFound, PeerUnavailable
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import ListRequest, RecordList
from patientkey.wallet.client import PlatformClient

MODULES = [
    "patientkey.wallet",
    "patientkey.wallet.cli",
    "patientkey.wallet.client",
    "patientkey.wallet.core",
    "patientkey.protocol.enrollment",
    "patientkey.wallet.hop",
    "patientkey.wallet.settings",
    "patientkey.wallet.store",
    "patientkey.wallet.trust",
]


def _client(handler) -> PlatformClient:
    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="https://p.test")
    return PlatformClient(HopEnd("u-alice", senders={}, receivers={}), "platform", "", http=http)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"not json"),
        httpx.Response(200, json=[1]),
        httpx.Response(200, json={"public": "!!"}),
        httpx.Response(200, json={"public": "AAAA"}),
        httpx.Response(200, json={}),
        httpx.Response(200, content=b"{" + b" " * 70_000 + b"}"),
        httpx.Response(500, content=b"oops"),
    ],
)
def test_malformed_pq_public_is_peer_unavailable(response: httpx.Response) -> None:
    """Anything but a 1216-byte base64url key is the platform's fault: PeerUnavailable."""
    with pytest.raises(PeerUnavailable):
        _client(lambda request: response).pq_public()


@pytest.mark.parametrize(
    "answer", [{}, {"exchange_id": 5}, {"exchange_id": "a/b"}, {"exchange_id": ""}]
)
def test_malformed_exchange_id_is_peer_unavailable(answer: object) -> None:
    """The exchange id must be a short alphanumeric name."""
    with pytest.raises(PeerUnavailable):
        _client(lambda request: httpx.Response(200, json=answer)).pq_exchange(b"x" * 1120)


def test_problem_json_maps_back_to_the_error_class() -> None:
    """A platform's 404 problem arrives as NotFound."""
    problem = {"type": "https://patientkey.dev/problems/not-found", "status": 404, "detail": "x"}
    client = _client(lambda request: httpx.Response(404, content=json.dumps(problem).encode()))
    with pytest.raises(NotFound):
        client.pq_exchange(b"x" * 1120)


def test_unreachable_platform_is_peer_unavailable() -> None:
    """A transport error is PeerUnavailable (502), never a raw httpx error."""

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(PeerUnavailable):
        _client(down).pq_public()


def test_missing_tls_files_are_a_config_error(tmp_path) -> None:
    """Without the wallet's certificate the first request is a ConfigError, not a crash."""
    from patientkey.pki import client_ssl_context

    client = PlatformClient(
        HopEnd("u-alice", senders={}, receivers={}),
        "platform",
        "https://p.test",
        ssl_context=lambda: client_ssl_context(tmp_path, "u-alice"),
    )
    with pytest.raises(ConfigError):
        client.call("/v1/records/list", ListRequest(user_id="u-alice"), RecordList)
    client.close()


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    """Every name in a wallet module's __all__ exists and __all__ has no duplicates."""
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported)
    assert [n for n in exported if not hasattr(module, n)] == []
