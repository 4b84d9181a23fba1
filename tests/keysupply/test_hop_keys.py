"""Hop keys, rekey policy, the pre-charged pool and the post-quantum fallback."""

from __future__ import annotations

import logging
import os
import uuid

import pytest

from patientkey.errors import CryptoError, InvalidInput, KeySupplyBadRequest, KeyUnavailable
from patientkey.keysupply import QKey
from patientkey.keysupply.hopkey import KeyId, QkdPolicy, Source, derive_hop_key
from patientkey.keysupply.pool import KeyPool, charge_pair
from patientkey.keysupply.pq import PQ_INIT_LEN, PqResponder, pq_initiate
from patientkey.keysupply.rekey import HopReceiver, HopSender, RekeyPolicy, budget_row


def _keys(n: int) -> list[QKey]:
    return [QKey(uuid.uuid4(), os.urandom(32)) for _ in range(n)]


def _pools(n: int = 8, low_water: int = 2) -> tuple[KeyPool, KeyPool]:
    up, down = _keys(n), _keys(n)
    a = KeyPool(me="wallet", peer="platform", send=up, receive=down, low_water=low_water)
    b = KeyPool(me="platform", peer="wallet", send=down, receive=up, low_water=low_water)
    return a, b


def test_pq_agreement_both_sides_derive_same_secrets():
    """Initiator and responder of the ML-KEM-768+X25519 exchange agree on both secrets."""
    responder = PqResponder()
    message, mine = pq_initiate(responder.public_bytes())
    theirs = responder.respond(message)
    assert len(message) == PQ_INIT_LEN
    assert (mine.mlkem_secret, mine.x25519_secret) == (theirs.mlkem_secret, theirs.x25519_secret)
    assert mine.exchange_id == theirs.exchange_id


def test_pq_rejects_malformed_messages():
    """Wrong-length public keys and init messages are refused as input errors."""
    with pytest.raises(InvalidInput):
        pq_initiate(b"short")
    with pytest.raises(InvalidInput):
        PqResponder().respond(b"x" * 10)


def test_pq_tampered_init_gives_different_secret():
    """A modified ML-KEM ciphertext yields a different (implicitly rejected) secret."""
    responder = PqResponder()
    message, mine = pq_initiate(responder.public_bytes())
    bad = bytes([message[0] ^ 1]) + message[1:]
    try:
        theirs = responder.respond(bad)
    except CryptoError:
        return
    assert theirs.mlkem_secret != mine.mlkem_secret


def test_hop_key_records_its_sources():
    """A hybrid hop key lists QKD, ML-KEM and X25519; a QKD-only one lists only QKD."""
    _, pq = pq_initiate(PqResponder().public_bytes())
    q = _keys(1)[0]
    hybrid = derive_hop_key(context=b"c", qkd=q, pq=pq, policy=QkdPolicy.PREFERRED)
    assert hybrid.sources == (Source.QKD, Source.MLKEM, Source.X25519)
    only = derive_hop_key(context=b"c", qkd=q, pq=None, policy=QkdPolicy.REQUIRED)
    assert only.sources == (Source.QKD,)
    assert hybrid.key != only.key
    assert only.qkd_bits == 256


def test_policy_required_fails_closed_without_qkd():
    """With QKD required and no QKD key, no hop key is made (nothing is sent in clear)."""
    _, pq = pq_initiate(PqResponder().public_bytes())
    with pytest.raises(KeyUnavailable):
        derive_hop_key(context=b"c", qkd=None, pq=pq, policy=QkdPolicy.REQUIRED)
    with pytest.raises(KeyUnavailable):
        derive_hop_key(context=b"c", qkd=None, pq=None, policy=QkdPolicy.PREFERRED)


def test_policy_none_ignores_qkd():
    """With QKD not used, a supplied QKD key does not feed the hop key."""
    _, pq = pq_initiate(PqResponder().public_bytes())
    key = derive_hop_key(context=b"c", qkd=_keys(1)[0], pq=pq, policy=QkdPolicy.NONE)
    assert Source.QKD not in key.sources
    assert key.kid.qkd is None


def test_key_id_round_trip_and_rejects_garbage():
    """Key IDs print and parse back; malformed ones are input errors."""
    kid = KeyId(uuid.uuid4(), "abc123", 7)
    assert KeyId.parse(str(kid)) == kid
    for bad in ["", "x.1", "q.not-a-uuid", "n.5", f"q.{uuid.uuid4()}|q.{uuid.uuid4()}"]:
        with pytest.raises(InvalidInput):
            KeyId.parse(bad)


def test_sender_and_receiver_agree_per_message():
    """Per-message policy: each message uses a new QKD key and the receiver rebuilds it by ID."""
    wallet, platform = _pools()
    sender = HopSender(peer="platform", context=b"kue", supply=wallet)
    receiver = HopReceiver(peer="wallet", context=b"kue", supply=platform)
    keys = [sender.next_key() for _ in range(3)]
    assert len({k.kid.qkd for k in keys}) == 3
    assert [receiver.resolve(k.kid_text) for k in keys] == [k.key for k in keys]
    assert sender.qkd_bits_used == 3 * 256


def test_session_policy_rekeys_every_n_messages():
    """Session policy: one QKD key serves N messages, each with its own derived key."""
    wallet, platform = _pools()
    sender = HopSender(
        peer="platform", context=b"kue", supply=wallet, rekey=RekeyPolicy(messages=4)
    )
    receiver = HopReceiver(peer="wallet", context=b"kue", supply=platform)
    keys = [sender.next_key() for _ in range(8)]
    assert len({k.kid.qkd for k in keys}) == 2
    assert len({k.key for k in keys}) == 8
    assert all(receiver.resolve(k.kid_text) == k.key for k in keys)
    assert sender.qkd_bits_used == 2 * 256


def test_session_policy_rekeys_after_t_seconds():
    """Session policy: a session older than T seconds is replaced on the next message."""
    now = [0.0]
    wallet, _ = _pools()
    sender = HopSender(
        peer="platform",
        context=b"kue",
        supply=wallet,
        rekey=RekeyPolicy(messages=100, seconds=10),
        clock=lambda: now[0],
    )
    first = sender.next_key()
    now[0] = 11.0
    assert sender.next_key().kid.qkd != first.kid.qkd


def test_preferred_falls_back_to_pq_when_pool_runs_dry():
    """QKD preferred: with the pool exhausted the hop continues on the PQ agreement alone."""
    wallet, platform = _pools(n=1)
    responder = PqResponder()
    message, pq = pq_initiate(responder.public_bytes())
    theirs = responder.respond(message)
    sender = HopSender(
        peer="platform", context=b"kue", supply=wallet, policy=QkdPolicy.PREFERRED, pq=pq
    )
    receiver = HopReceiver(
        peer="wallet",
        context=b"kue",
        supply=platform,
        policy=QkdPolicy.PREFERRED,
        pq_lookup=lambda i: theirs if i == theirs.exchange_id else None,
    )
    keys = [sender.next_key() for _ in range(3)]
    assert Source.QKD in keys[0].sources
    assert keys[1].sources == keys[2].sources == (Source.MLKEM, Source.X25519)
    assert keys[1].key != keys[2].key  # PQ-only keys never repeat
    assert all(receiver.resolve(k.kid_text) == k.key for k in keys)


def test_required_sender_fails_closed_when_pool_empty():
    """QKD required: an empty pool raises KeyUnavailable instead of producing a key."""
    wallet, _ = _pools(n=1)
    sender = HopSender(peer="platform", context=b"kue", supply=wallet)
    sender.next_key()
    with pytest.raises(KeyUnavailable):
        sender.next_key()


def test_receiver_refuses_what_policy_forbids():
    """A QKD-required receiver refuses PQ-only key IDs; unknown QKD IDs resolve to nothing."""
    _, platform = _pools()
    receiver = HopReceiver(peer="wallet", context=b"kue", supply=platform)
    assert receiver.resolve("p.abcdef|n.0") is None
    assert receiver.resolve(f"q.{uuid.uuid4()}|n.0") is None
    assert receiver.resolve("garbage") is None
    assert receiver.resolve(f"q.{uuid.uuid4()}") is None  # no counter


def test_pool_uses_each_key_once_and_warns_low(caplog):
    """Pool keys are consumed once by ID, and crossing low water logs a warning once."""
    wallet, platform = _pools(n=4, low_water=2)
    caplog.set_level(logging.WARNING)
    first = wallet.get_keys("platform", 2)
    assert wallet.low
    assert wallet.remaining == 2
    assert "low" in caplog.text
    assert platform.get_keys_by_id("wallet", [first[0].key_id])[0].key == first[0].key
    with pytest.raises(KeySupplyBadRequest):
        platform.get_keys_by_id("wallet", [first[0].key_id])
    assert all(first[0].key.hex() not in r.getMessage() for r in caplog.records)


def test_pool_lookup_is_all_or_nothing():
    """A by-ID request naming one unknown key consumes none of the known ones."""
    wallet, platform = _pools()
    key = wallet.get_keys("platform")[0]
    with pytest.raises(KeySupplyBadRequest):
        platform.get_keys_by_id("wallet", [key.key_id, uuid.uuid4()])
    assert platform.get_keys_by_id("wallet", [key.key_id])[0] == key


def test_pool_refuses_other_peer_and_wrong_size():
    """A pool serves only its peer and only its key size."""
    wallet, _ = _pools()
    with pytest.raises(KeySupplyBadRequest):
        wallet.get_keys("someone-else")
    with pytest.raises(KeySupplyBadRequest):
        wallet.get_keys("platform", 1, 128)


def test_pool_serialization_round_trip():
    """A pool saved to a dict and loaded back serves the same keys."""
    wallet, _ = _pools()
    again = KeyPool.from_dict(wallet.to_dict())
    assert again.get_keys("platform", 3) == wallet.get_keys("platform", 3)
    with pytest.raises(InvalidInput):
        KeyPool.from_dict({"me": "x"})


def test_charge_pair_splits_directions():
    """Charging from a key supply gives two pools whose directions mirror each other."""
    source, _ = _pools(n=20)
    source.peer = "wallet"  # the pool stands in for the platform's QKD link here
    wallet, platform = charge_pair(source, client="wallet", server="platform", count=5)
    up = wallet.get_keys("platform", 5)
    down = platform.get_keys("wallet", 5)
    assert platform.get_keys_by_id("wallet", [k.key_id for k in up]) == up
    assert wallet.get_keys_by_id("platform", [k.key_id for k in down]) == down


def test_budget_figures():
    """Budget: per-message costs the key size per message; sessions divide it by N."""
    per_msg = RekeyPolicy.per_message()
    session = RekeyPolicy(messages=100, seconds=60)
    assert per_msg.qkd_bits_per_message(10) == 256
    assert session.qkd_bits_per_message(1000) == pytest.approx(2.56)
    assert session.qkd_bits_per_message(1) == pytest.approx(256 / 60)
    assert per_msg.sustainable_rate(25_600) == pytest.approx(100)
    assert session.sustainable_rate(25_600) == pytest.approx(10_000)
    assert RekeyPolicy(messages=10, seconds=1).sustainable_rate(100) == 0
    assert budget_row(session, 25_600, 1000)["sustainable_msgs_per_s"] == 10_000


def test_prefetch_draws_keys_in_batches_and_uses_each_once():
    """With prefetch, one supply call serves several messages, each under its own QKD key."""
    wallet, platform = _pools(n=10)
    calls = []
    real = wallet.get_keys

    def counting(peer, number=1, size=256):
        calls.append(number)
        return real(peer, number, size)

    wallet.get_keys = counting
    sender = HopSender(peer="platform", context=b"c", supply=wallet, prefetch=4)
    receiver = HopReceiver(peer="wallet", context=b"c", supply=platform)
    keys = [sender.next_key() for _ in range(6)]
    assert calls == [4, 4]
    assert len({k.kid.qkd for k in keys}) == 6
    assert all(receiver.resolve(k.kid_text) == k.key for k in keys)
    assert sender.qkd_bits_used == 6 * 256


def test_prefetch_falls_back_to_single_keys_when_a_batch_is_unavailable():
    """Fewer keys left than a batch: the sender takes them one by one, then fails closed."""
    wallet, _ = _pools(n=2)
    sender = HopSender(peer="platform", context=b"c", supply=wallet, prefetch=8)
    sender.next_key()
    sender.next_key()
    with pytest.raises(KeyUnavailable):
        sender.next_key()
    with pytest.raises(InvalidInput):
        HopSender(peer="platform", context=b"c", supply=wallet, prefetch=0)
