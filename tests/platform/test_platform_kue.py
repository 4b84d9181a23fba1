"""The wallet hop at the platform: pool supply, charging, PQ exchanges, hop factory, races."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from platform_world import kme_network

from patientkey.crypto import ReplayCache
from patientkey.errors import InvalidInput, KeySupplyBadRequest, KeyUnavailable
from patientkey.keysupply.embedded import EmbeddedKeySupply
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.keysupply.pool import KeyPool
from patientkey.keysupply.pq import PqResponder, pq_initiate
from patientkey.keysupply.rekey import HopReceiver, HopSender, RekeyPolicy
from patientkey.platform.kue import (
    PqExchanges,
    WalletKeySupply,
    charge_wallet,
    platform_hop_end,
    wallet_peer_factory,
)
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import ListRequest
from patientkey.service.party import hop_context
from patientkey.storage import KueDirection
from patientkey.storage.memory import platform_store


def _charged(store, user="u-alice", count=8):
    kme = kme_network(16 * 1024)
    result = charge_wallet(
        store,
        EmbeddedKeySupply(kme, "platform"),
        user_id=user,
        count=count,
        charger_supply=EmbeddedKeySupply(kme, "charger"),
        chunk=3,
    )
    return kme, result, KeyPool.from_dict(result.wallet_pool)


def test_charge_splits_matching_halves(store):
    """The wallet's sending keys are the platform's receiving keys and vice versa."""
    kme, result, wallet = _charged(store, count=7)
    assert result.account_created
    assert (wallet.me, wallet.peer, wallet.remaining) == ("u-alice", "platform", 7)
    supply = WalletKeySupply(store)
    sent = wallet.get_keys("platform", 7)
    got = supply.get_keys_by_id("u-alice", [k.key_id for k in sent])
    assert got == sent
    mine = supply.get_keys("u-alice", 7)
    assert wallet.get_keys_by_id("platform", [k.key_id for k in mine]) == mine
    with pytest.raises(KeyUnavailable):
        supply.get_keys("u-alice")
    # The charging terminal fetched its copies: nothing is left outstanding at the KME.
    assert all(kme.link_info(link).outstanding_keys == 0 for link in kme.link_ids)


def test_recharge_keeps_the_account(store):
    """Charging an existing account adds keys and creates nothing."""
    _charged(store, count=2)
    _, again, _ = _charged(store, count=3)
    assert not again.account_created
    with store.transaction() as repo:
        assert repo.kue_key_count("u-alice", KueDirection.TO_WALLET) == 5
        kinds = [e.kind for e in repo.events(user_id="u-alice")]
    assert kinds == ["wallet.charge", "wallet.charge"]


def test_charge_refuses_bad_input(store):
    """A user name that cannot be a certificate CN, or a non-positive count, is refused."""
    kme = kme_network(4096)
    for user, count in (("not a name", 1), ("u-alice", 0)):
        with pytest.raises(InvalidInput):
            charge_wallet(store, EmbeddedKeySupply(kme, "platform"), user_id=user, count=count)


def test_wallet_supply_keys_are_used_once(store):
    """A key ID opens once; unknown IDs and a dry pool are the supply's errors."""
    _, _, wallet = _charged(store, count=2)
    supply = WalletKeySupply(store)
    key = wallet.get_keys("platform", 1)[0]
    assert supply.get_keys_by_id("u-alice", [key.key_id]) == [key]
    with pytest.raises(KeySupplyBadRequest):
        supply.get_keys_by_id("u-alice", [key.key_id])
    with pytest.raises(KeySupplyBadRequest):
        supply.get_keys_by_id("u-alice", [uuid.uuid4()])
    with pytest.raises(KeySupplyBadRequest):
        supply.get_keys("u-alice", 1, size=128)
    assert supply.status("u-alice").stored_key_count == 2


def test_factory_makes_hops_for_accounts_only(store):
    """Configured peers, the platform itself, bad names and names without account get none."""
    _charged(store)
    factory = wallet_peer_factory(
        me="platform",
        reserved=["hospital-1"],
        store=store,
        supply=WalletKeySupply(store),
        pq=None,
        policy=QkdPolicy.PREFERRED,
    )
    assert factory("u-alice") is not None
    for name in ("hospital-1", "platform", "u-nobody", "bad name"):
        assert factory(name) is None


def test_pq_exchanges_expire_and_are_per_account(store):
    """Secrets are found for their account until the TTL passes, and never for another."""
    _charged(store)
    _charged(store, user="u-bob")
    now = [datetime.now(UTC)]
    responder = PqResponder()
    first = PqExchanges(responder, store, ttl=timedelta(hours=1), clock=lambda: now[0])
    init, secrets = pq_initiate(first.public)
    exchange_id = first.exchange("u-alice", init)
    assert first.lookup("u-alice", exchange_id) == secrets
    assert first.lookup("u-bob", exchange_id) is None
    second = PqExchanges(responder, store, ttl=timedelta(hours=1), clock=lambda: now[0])
    assert second.lookup("u-alice", exchange_id) == secrets  # re-derived from the stored init
    now[0] += timedelta(hours=2)
    assert first.lookup("u-alice", exchange_id) is None
    assert second.lookup("u-alice", "0" * 32) is None


def test_concurrent_messages_of_one_new_session_all_open():
    """Messages of one new session arriving at once fetch its key once and all open."""
    store = platform_store()
    _, _, pool = _charged(store, count=4)
    context = hop_context("u-alice", "platform")
    sender = HopSender(
        peer="platform",
        context=context,
        supply=pool,
        policy=QkdPolicy.PREFERRED,
        rekey=RekeyPolicy(messages=16, seconds=600),
    )
    wallet = HopEnd(
        "u-alice",
        senders={"platform": sender},
        receivers={"platform": HopReceiver(peer="platform", context=context, supply=pool)},
    )
    tokens = [wallet.request("platform", ListRequest(user_id="u-alice")).token for _ in range(16)]
    fetches: list[int] = []

    class SlowSupply(WalletKeySupply):
        def get_keys_by_id(self, peer, key_ids):
            fetches.append(len(key_ids))
            time.sleep(0.05)  # a KME round trip: wide enough for every thread to arrive
            return super().get_keys_by_id(peer, key_ids)

    factory = wallet_peer_factory(
        me="platform",
        reserved=[],
        store=store,
        supply=SlowSupply(store),
        pq=None,
        policy=QkdPolicy.PREFERRED,
    )
    platform = platform_hop_end(
        "platform",
        [],
        None,
        policy=QkdPolicy.REQUIRED,
        rekey=None,
        replay_cache=ReplayCache(1000),
        peer_factory=factory,
    )
    start = threading.Barrier(len(tokens))

    def receive(token: str) -> str:
        start.wait()
        return platform.receive(token, ListRequest).message.user_id

    with ThreadPoolExecutor(max_workers=len(tokens)) as threads:
        users = list(threads.map(receive, tokens))
    assert users == ["u-alice"] * len(tokens)
    assert fetches == [1]
