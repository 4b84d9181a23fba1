"""HopEnd: requests and replies over hop envelopes, in-process."""

from __future__ import annotations

import os
import uuid

import pytest

from patientkey.errors import CryptoError, InvalidInput, KeyUnavailable
from patientkey.keysupply import QKey
from patientkey.keysupply.pool import KeyPool
from patientkey.keysupply.rekey import HopReceiver, HopSender
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import BindReply, FetchRequest, RecordRequest


def _pair(n: int = 8) -> tuple[HopEnd, HopEnd]:
    up = [QKey(uuid.uuid4(), os.urandom(32)) for _ in range(n)]
    down = [QKey(uuid.uuid4(), os.urandom(32)) for _ in range(n)]
    wallet_pool = KeyPool(me="wallet", peer="platform", send=up, receive=down)
    platform_pool = KeyPool(me="platform", peer="wallet", send=down, receive=up)
    wallet = HopEnd(
        "wallet",
        senders={"platform": HopSender(peer="platform", context=b"KUE", supply=wallet_pool)},
        receivers={"platform": HopReceiver(peer="platform", context=b"KUE", supply=wallet_pool)},
    )
    platform = HopEnd(
        "platform",
        senders={"wallet": HopSender(peer="wallet", context=b"KUE", supply=platform_pool)},
        receivers={"wallet": HopReceiver(peer="wallet", context=b"KUE", supply=platform_pool)},
    )
    return wallet, platform


def _fetch() -> FetchRequest:
    return FetchRequest(user_id="u1", his_id="his-1", p_id="P1")


def test_request_and_reply_round_trip():
    """A request opens at the peer and its reply opens at the requester."""
    wallet, platform = _pair()
    out = wallet.request("platform", _fetch())
    incoming = platform.receive(out.token, FetchRequest)
    assert incoming.message == _fetch()
    assert incoming.sender == "wallet"
    reply = platform.reply(incoming, BindReply(his_id="his-1", patient_id="P1", reply=b"r"))
    assert wallet.open_reply(out, reply, BindReply).reply == b"r"
    assert out.qkd_bits == 256


def test_wrong_message_type_for_route_is_refused():
    """A request opened as another message type fails as a crypto error."""
    wallet, platform = _pair()
    out = wallet.request("platform", _fetch())
    with pytest.raises(CryptoError):
        platform.receive(out.token, RecordRequest)


def test_replayed_request_is_refused():
    """The same request token is accepted once."""
    wallet, platform = _pair()
    out = wallet.request("platform", _fetch())
    platform.receive(out.token, FetchRequest)
    with pytest.raises(CryptoError):
        platform.receive(out.token, FetchRequest)


def test_reply_is_bound_to_its_request():
    """A reply to one request does not open as the reply to another."""
    wallet, platform = _pair()
    first = wallet.request("platform", _fetch())
    second = wallet.request("platform", _fetch())
    incoming = platform.receive(first.token, FetchRequest)
    reply = platform.reply(incoming, BindReply(his_id="h", patient_id="p", reply=b"r"))
    with pytest.raises(CryptoError):
        wallet.open_reply(second, reply, BindReply)


def test_unknown_peer_and_exhausted_keys():
    """No hop to a peer is an input error; no key left fails closed."""
    wallet, _ = _pair(n=1)
    with pytest.raises(InvalidInput):
        wallet.request("hospital", _fetch())
    wallet.request("platform", _fetch())
    with pytest.raises(KeyUnavailable):
        wallet.request("platform", _fetch())
