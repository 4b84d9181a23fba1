"""Envelope routes, problem+json errors and the peer client, in-process."""

from __future__ import annotations

import os
import uuid

import pytest
from fastapi import FastAPI

from patientkey.errors import CryptoError, Forbidden, Unauthenticated
from patientkey.keysupply import QKey
from patientkey.keysupply.pool import KeyPool
from patientkey.keysupply.rekey import HopReceiver, HopSender
from patientkey.protocol.channel import HopEnd, Incoming
from patientkey.protocol.messages import FetchRequest, RecordReply
from patientkey.service.client import PeerClient
from patientkey.service.http import BodyLimit, envelope_route, install_problem_handlers
from patientkey.service.testing import asgi_client


def _ends() -> tuple[HopEnd, HopEnd]:
    up = [QKey(uuid.uuid4(), os.urandom(32)) for _ in range(16)]
    down = [QKey(uuid.uuid4(), os.urandom(32)) for _ in range(16)]
    a = KeyPool(me="platform", peer="hospital-1", send=up, receive=down)
    b = KeyPool(me="hospital-1", peer="platform", send=down, receive=up)

    def end(me: str, peer: str, pool: KeyPool) -> HopEnd:
        return HopEnd(
            me,
            senders={peer: HopSender(peer=peer, context=b"c", supply=pool)},
            receivers={peer: HopReceiver(peer=peer, context=b"c", supply=pool)},
        )

    return end("platform", "hospital-1", a), end("hospital-1", "platform", b)


def _app(hop: HopEnd) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    def handler(incoming: Incoming[FetchRequest]) -> RecordReply:
        if incoming.message.p_id == "forbidden":
            raise Forbidden("not yours")
        return RecordReply(his_id="hospital-1", p_id=incoming.message.p_id, sealed=b"ct")

    envelope_route(
        app,
        "/v1/get",
        hop=hop,
        expected=FetchRequest,
        handler=handler,
        reply=RecordReply,
        summary="test",
    )
    app.add_middleware(BodyLimit, max_bytes=64 * 1024)
    return app


@pytest.fixture
def wired(dev_pki):
    platform, hospital = _ends()
    http = asgi_client(_app(hospital), pki_dir=dev_pki, caller="platform")
    return PeerClient(platform, "hospital-1", "https://testserver", http=http), http, platform


def test_call_round_trip(wired):
    """A call's envelope opens at the peer and the sealed reply comes back."""
    client, _, _ = wired
    reply = client.call("/v1/get", FetchRequest(user_id="u", his_id="h", p_id="P1"), RecordReply)
    assert reply.p_id == "P1"


def test_peer_error_is_raised_as_same_class(wired):
    """A peer's 403 problem is raised locally as Forbidden."""
    client, _, _ = wired
    with pytest.raises(Forbidden):
        client.call("/v1/get", FetchRequest(user_id="u", his_id="h", p_id="forbidden"), RecordReply)


def test_garbage_body_is_problem_400(wired):
    """A body that is not an envelope gets 400 problem+json with the opaque crypto title."""
    _, http, _ = wired
    response = http.post("/v1/get", content=b"garbage")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("crypto-failure")


def test_oversized_body_is_413(wired):
    """Bodies above the limit are refused with 413 before the route reads them."""
    _, http, _ = wired
    assert http.post("/v1/get", content=b"x" * 70_000).status_code == 413


def test_unknown_route_is_problem_404(wired):
    """Unknown paths answer problem+json 404."""
    _, http, _ = wired
    response = http.post("/nope", content=b"")
    assert response.status_code == 404
    assert response.json()["status"] == 404


def test_missing_client_certificate_is_401(dev_pki):
    """Without a client certificate the route answers 401."""
    platform, hospital = _ends()
    http = asgi_client(_app(hospital), pki_dir=dev_pki, caller=None)
    client = PeerClient(platform, "hospital-1", "https://testserver", http=http)
    with pytest.raises(Unauthenticated):
        client.call("/v1/get", FetchRequest(user_id="u", his_id="h", p_id="P1"), RecordReply)


def test_sender_must_match_certificate(dev_pki):
    """An envelope whose sender differs from the certificate CN is refused."""
    platform, hospital = _ends()
    http = asgi_client(_app(hospital), pki_dir=dev_pki, caller="stranger")
    client = PeerClient(platform, "hospital-1", "https://testserver", http=http)
    with pytest.raises(Unauthenticated):
        client.call("/v1/get", FetchRequest(user_id="u", his_id="h", p_id="P1"), RecordReply)


def test_replayed_request_is_refused(wired):
    """Posting the same envelope twice gives 400 the second time."""
    _, http, platform = wired
    out = platform.request("hospital-1", FetchRequest(user_id="u", his_id="h", p_id="P1"))
    assert http.post("/v1/get", content=out.token).status_code == 200
    second = http.post("/v1/get", content=out.token)
    assert second.status_code == 400
    assert second.json()["title"] == CryptoError().title
