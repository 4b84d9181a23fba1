"""The KUE hop: pool keys used once and persisted first, the PQ fallback, charging."""

from __future__ import annotations

import base64
import json
import logging
import uuid

import httpx
import pytest
from wallet_fakes import HIS, PLATFORM, USER, World

from patientkey.errors import CryptoError, InvalidInput, KeyUnavailable, PeerUnavailable
from patientkey.keysupply.hopkey import KeyId


def _send_ids(world: World) -> set[str]:
    pool = world.on_disk().pool
    assert pool is not None
    return {row[0] for row in pool.to_dict()["send"]}


def test_each_request_uses_a_fresh_pool_key(world: World) -> None:
    """Every envelope names a different pool key (q.<key_ID>|n.0); the pool shrinks by one each."""
    wallet = world.ready(keys=10)
    before = wallet.pool_remaining
    wallet.list_records()
    wallet.list_records()
    kids = [KeyId.parse(kid) for _, kid in world.platform.log]
    assert all(k.qkd is not None and k.pq is None and k.counter == 0 for k in kids)
    assert len({k.qkd for k in kids}) == len(kids)
    assert wallet.pool_remaining == before - 2
    assert len(_send_ids(world)) == before - 2


def test_consumed_key_is_persisted_before_sending(world: World) -> None:
    """On the wire, the envelope's pool key is already gone from the keystore on disk."""
    wallet = world.ready(keys=10)
    checked: list[bool] = []

    def check(request: httpx.Request) -> None:
        kid = KeyId.parse(json.loads(_header(request.content))["kid"])
        checked.append(str(kid.qkd) not in _send_ids(world))

    world.platform.on_request = check
    wallet.list_records()
    assert checked == [True]


def _header(token: bytes) -> bytes:
    head = token.split(b".", 1)[0]
    return base64.urlsafe_b64decode(head + b"=" * (-len(head) % 4))


def test_failed_send_never_reuses_the_key(world: World) -> None:
    """A send that fails after sealing burns its key, also for a restarted wallet."""
    wallet = world.ready(keys=10)
    world.platform.faults.add("send-fails")
    with pytest.raises(PeerUnavailable):
        wallet.list_records()
    lost = KeyId.parse(world.platform.log[-1][1]).qkd
    assert str(lost) not in _send_ids(world)
    restarted = world.open()
    restarted.list_records()
    used = KeyId.parse(world.platform.log[-1][1]).qkd
    assert used != lost
    assert all(
        KeyId.parse(kid).qkd != lost for path, kid in world.platform.log[:-1] if "lost" not in path
    )


def test_empty_pool_falls_back_to_pq_when_preferred(world: World) -> None:
    """kue_policy=preferred: an exhausted pool switches to ML-KEM+X25519 keys p.<id>|n.<k>."""
    world.init()
    wallet = world.open("preferred")
    wallet.charge(world.pool_file(2))
    wallet.enroll(world.code)
    wallet.bind(HIS)
    wallet.list_records()
    assert wallet.pool_remaining == 0
    assert world.platform.exchanges == 0
    wallet.list_records()
    wallet.list_records()
    assert world.platform.exchanges == 1
    assert wallet.pq_active
    kids = [KeyId.parse(kid) for _, kid in world.platform.log[-2:]]
    assert all(k.qkd is None and k.pq is not None for k in kids)
    assert [k.counter for k in kids] == [0, 1]
    assert kids[0].pq == kids[1].pq


def test_empty_pool_fails_closed_when_required(world: World) -> None:
    """With kue_policy=required an exhausted pool raises KeyUnavailable and nothing is sent."""
    world.init()
    wallet = world.open("required")
    wallet.charge(world.pool_file(2))
    wallet.enroll(world.code)
    wallet.bind(HIS)
    wallet.list_records()
    sent = len(world.platform.log)
    with pytest.raises(KeyUnavailable):
        wallet.list_records()
    assert len(world.platform.log) == sent
    assert world.platform.exchanges == 0


def test_uncharged_wallet_fails_closed_when_required(world: World) -> None:
    """No pool at all under required: KeyUnavailable before any request."""
    world.init()
    wallet = world.open("required")
    wallet.enroll(world.code)
    with pytest.raises(KeyUnavailable):
        wallet.bind(HIS)
    assert world.platform.log == []


def test_policy_none_uses_pq_from_the_start(world: World) -> None:
    """kue_policy=none never touches the pool."""
    world.init()
    wallet = world.open("none")
    wallet.charge(world.pool_file(4))
    wallet.enroll(world.code)
    wallet.bind(HIS)
    assert wallet.pool_remaining == 4
    assert KeyId.parse(world.platform.log[-1][1]).qkd is None


def test_pq_exchange_id_mismatch_is_refused(world: World) -> None:
    """A platform naming another exchange than ours is a crypto failure; nothing is sent."""
    world.init()
    wallet = world.open("none")
    wallet.enroll(world.code)
    world.platform.faults.add("pq-wrong-id")
    with pytest.raises(CryptoError):
        wallet.bind(HIS)
    assert world.platform.log == []


def test_low_pool_is_reported(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """Below the low-water mark the wallet says so (and the pool logs a warning)."""
    world.init()
    wallet = world.open()
    wallet.charge(world.pool_file(5, low_water=3))
    assert not wallet.pool_low
    wallet.enroll(world.code)
    with caplog.at_level(logging.WARNING):
        wallet.bind(HIS)
        wallet.list_records()
    assert wallet.pool_low
    assert wallet.status().pool_low
    assert any("low" in r.getMessage() for r in caplog.records)


def test_charge_moves_the_pool_and_deletes_the_file(world: World) -> None:
    """charge adds the keys to the keystore and deletes the file; a second charge adds more."""
    world.init()
    wallet = world.open()
    first = world.pool_file(3)
    assert wallet.charge(first) == 3
    assert not first.exists()
    second = world.pool_file(4)
    assert wallet.charge(second) == 4
    assert wallet.pool_remaining == 7
    assert len(_send_ids(world)) == 7
    wallet.enroll(world.code)
    wallet.bind(HIS)  # keys of both charges open at the platform


def test_charge_of_an_already_imported_file_adds_nothing(world: World) -> None:
    """A crash between saving and deleting leaves the file; charging it again is harmless."""
    world.init()
    wallet = world.open()
    path = world.pool_file(3)
    content = path.read_bytes()
    wallet.charge(path)
    path.write_bytes(content)
    assert wallet.charge(path) == 0
    assert not path.exists()
    assert wallet.pool_remaining == 3


def test_charge_refuses_another_users_pool(world: World) -> None:
    """A pool charged for another user is refused and the file is kept."""
    world.init()
    wallet = world.open()
    path = world.pool_file(3, user="u-bob")
    with pytest.raises(InvalidInput):
        wallet.charge(path)
    assert path.exists()
    assert world.on_disk().pool is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"me": "u-alice"}',
        json.dumps(
            {"me": USER, "peer": PLATFORM, "low_water": 1, "send": [["x", "y"]], "receive": []}
        ).encode(),
    ],
)
def test_charge_refuses_malformed_pool_files(world: World, content: bytes) -> None:
    """Malformed pool files are InvalidInput; nothing changes."""
    world.init()
    wallet = world.open()
    path = world.directory / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InvalidInput):
        wallet.charge(path)
    assert world.on_disk().pool is None


def test_charge_of_a_missing_file_is_invalid_input(world: World) -> None:
    """A path that does not exist is reported plainly."""
    world.init()
    wallet = world.open()
    with pytest.raises(InvalidInput):
        wallet.charge(world.directory / f"{uuid.uuid4()}.json")
