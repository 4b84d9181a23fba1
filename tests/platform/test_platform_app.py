"""The platform's HTTP routes in-process: envelopes, problem+json, PQ fallback, ping."""

from __future__ import annotations

import base64
import os

import pytest
from platform_flows import BODY, delivery, setup_alice, share, snapshot
from platform_world import HIS, World
from sqlalchemy import text

from patientkey.crypto import ReplayCache
from patientkey.crypto.ratchet import RotationContext, rotation_commit, wrap_rotation_key
from patientkey.errors import Forbidden, NotFound
from patientkey.keysupply.pq import PQ_INIT_LEN, PQ_PUBLIC_LEN, PqResponder, pq_initiate
from patientkey.platform.kue import StoreReplayCache
from patientkey.protocol.messages import (
    BindReply,
    DispenseRequest,
    DispenseState,
    FetchRequest,
    ListRequest,
    RecordList,
    RecordReply,
    RecordsAnnounce,
    RotateCommit,
    RotatePrepare,
    ShareOffer,
    ShareReceipt,
    ShareRequest,
)
from patientkey.service.client import PeerClient
from patientkey.service.http import JOSE
from patientkey.storage import PlatformRepo, SqlStore

ROUTES = [
    "/v1/bind",
    "/v1/rotate/prepare",
    "/v1/rotate/commit",
    "/v1/records/announce",
    "/v1/records/list",
    "/v1/records/fetch",
    "/v1/share/offer",
    "/v1/share/deliver",
    "/v1/dispense",
]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def ready(memory_world: World):
    """Alice bound with rx-1 fetched, shared with pharmacy-1; Bob charged, unbound."""
    world = memory_world
    alice = setup_alice(world)
    world.wallet("u-bob")
    world.register()
    share(world, alice, "rx-1", "pharmacy-1")
    return world, alice


def _valid(world: World, alice, path: str):
    """(hop end, certificate name, message) of a well-formed request on ``path``."""
    nonce = os.urandom(32)
    ctx = RotationContext(
        patient_id="pat-alice",
        his_id=HIS,
        user_id="u-alice",
        current_version=1,
        new_version=2,
        nonce=nonce,
    )
    new = os.urandom(32)
    wallet = {
        "/v1/bind": world.bind_request(alice, "pat-alice"),
        "/v1/rotate/prepare": RotatePrepare(
            user_id="u-alice",
            his_id=HIS,
            current_version=1,
            new_version=2,
            wrapped_key=wrap_rotation_key(alice.kuh[1], new, ctx),
            nonce=nonce,
        ),
        "/v1/rotate/commit": RotateCommit(
            user_id="u-alice",
            his_id=HIS,
            new_version=2,
            nonce=nonce,
            proof=rotation_commit(new, ctx),
        ),
        "/v1/records/list": ListRequest(user_id="u-alice"),
        "/v1/records/fetch": FetchRequest(user_id="u-alice", his_id=HIS, p_id="rx-1"),
        "/v1/share/offer": ShareRequest(
            user_id="u-alice", his_id=HIS, p_id="rx-1", b_id="pharmacy-2"
        ),
    }
    if path in wallet:
        return alice.hop, "u-alice", wallet[path]
    if path == "/v1/share/deliver":
        world.grant("u-alice", "pharmacy-2", "rx-1")
        offered = world.core.share_offer(
            "u-alice", ShareRequest(user_id="u-alice", his_id=HIS, p_id="rx-1", b_id="pharmacy-2")
        )
        return alice.hop, "u-alice", delivery(alice, offered)[0]
    if path == "/v1/records/announce":
        message = RecordsAnnounce.model_validate(
            {"patient_id": "pat-alice", "records": [{"p_id": "rx-5", "record_type": "report"}]}
        )
        return world.hospital.hop, HIS, message
    assert path == "/v1/dispense"
    token = world.tokens[("pharmacy-1", "u-alice")]
    message = DispenseRequest(
        b_id="pharmacy-1", his_id=HIS, p_id="rx-1", action="claim", access_token=token
    )
    return world.pharmacies["pharmacy-1"].hop, "pharmacy-1", message


def _post(world: World, caller: str | None, path: str, body: bytes | str):
    return world.client(caller).post(path, content=body, headers={"content-type": JOSE})


def _problem(response, status: int, problem: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    if problem is not None:
        assert body["type"].endswith(f"/{problem}")
    return body


def test_whole_flow_over_http(memory_world):
    """Bind, list, fetch, offer, deliver and dispense through the routes with real envelopes."""
    world = memory_world
    alice = world.wallet("u-alice")
    world.enroll(alice, "pat-alice")
    world.hospital.add_record("pat-alice", "rx-1", BODY)
    world.register()
    hospital = PeerClient(world.hospital.hop, "platform", "https://t", http=world.client(HIS))
    announce = RecordsAnnounce.model_validate(
        {"patient_id": "pat-alice", "records": [{"p_id": "rx-1", "record_type": "prescription"}]}
    )
    assert hospital.call("/v1/records/announce", announce, RecordList).records == []
    client = world.peer_client(alice)
    reply = client.call("/v1/bind", world.bind_request(alice, "pat-alice"), BindReply)
    assert reply.patient_id == "pat-alice"
    listed = client.call("/v1/records/list", ListRequest(user_id="u-alice"), RecordList)
    assert [(r.p_id, r.fetched) for r in listed.records] == [("rx-1", False)]
    fetched = client.call(
        "/v1/records/fetch", FetchRequest(user_id="u-alice", his_id=HIS, p_id="rx-1"), RecordReply
    )
    token = world.grant("u-alice", "pharmacy-1", "rx-1")
    offered = client.call(
        "/v1/share/offer",
        ShareRequest(user_id="u-alice", his_id=HIS, p_id="rx-1", b_id="pharmacy-1"),
        ShareOffer,
    )
    assert offered.sealed == fetched.sealed
    message, _ = delivery(alice, offered)
    receipt = client.call("/v1/share/deliver", message, ShareReceipt)
    assert (receipt.accepted, receipt.kub_version) == (True, 1)
    pharmacy = PeerClient(
        world.pharmacies["pharmacy-1"].hop, "platform", "https://t", http=world.client("pharmacy-1")
    )
    state = pharmacy.call(
        "/v1/dispense",
        DispenseRequest(
            b_id="pharmacy-1", his_id=HIS, p_id="rx-1", action="claim", access_token=token
        ),
        DispenseState,
    )
    assert (state.state, state.claimed_by) == ("claimed", "pharmacy-1")
    assert world.pharmacies["pharmacy-1"].received[(HIS, "rx-1")] == BODY


@pytest.mark.parametrize("path", ROUTES)
def test_garbage_forged_and_oversized_bodies(ready, path):
    """Garbage, a tampered envelope and an oversized body: 400/400/413 problem+json, no change."""
    world, alice = ready
    hop, caller, message = _valid(world, alice, path)
    before = snapshot(world.store)
    _problem(_post(world, caller, path, b"garbage"), 400, "crypto-failure")
    token = hop.request("platform", message).token
    head, key, iv, ciphertext, tag = token.split(".")
    forged = ".".join([head, key, iv, ("A" if ciphertext[0] != "A" else "B") + ciphertext[1:], tag])
    _problem(_post(world, caller, path, forged), 400, "crypto-failure")
    _problem(_post(world, caller, path, b"x" * (8 * 1024 * 1024 + 1)), 413)
    assert snapshot(world.store) == before


@pytest.mark.parametrize("path", ROUTES)
def test_certificate_must_match_the_envelope(ready, path):
    """No client certificate is 401; another party's certificate for the envelope is 401."""
    world, alice = ready
    hop, caller, message = _valid(world, alice, path)
    before = snapshot(world.store)
    _problem(_post(world, None, path, hop.request("platform", message).token), 401)
    _problem(_post(world, "stranger", path, hop.request("platform", message).token), 401)
    assert snapshot(world.store) == before
    assert caller


@pytest.mark.parametrize("path", ROUTES)
def test_replayed_envelope_is_refused(ready, path):
    """The same envelope a second time is 400 crypto-failure and changes nothing more."""
    world, alice = ready
    hop, caller, message = _valid(world, alice, path)
    token = hop.request("platform", message).token
    _post(world, caller, path, token)
    after_first = snapshot(world.store)
    _problem(_post(world, caller, path, token), 400, "crypto-failure")
    assert snapshot(world.store) == after_first


@pytest.mark.parametrize("path", ROUTES)
def test_message_of_another_route_is_refused(ready, path):
    """An envelope carrying another route's message type is 400 crypto-failure."""
    world, alice = ready
    other = "/v1/records/list" if path != "/v1/records/list" else "/v1/records/fetch"
    hop, caller, message = _valid(world, alice, other)
    if path in ("/v1/records/announce", "/v1/dispense"):
        hop, caller, _ = _valid(world, alice, path)
        message = ListRequest(user_id=caller)
    before = snapshot(world.store)
    _problem(_post(world, caller, path, hop.request("platform", message).token), 400)
    assert snapshot(world.store) == before


def test_wallet_errors_cross_as_problems(ready):
    """user_id ≠ certificate is 403, another patient's record 404, as problem+json."""
    world, alice = ready
    bob = world.wallet("u-carol")
    client = world.peer_client(bob)
    with pytest.raises(Forbidden):
        client.call("/v1/records/list", ListRequest(user_id="u-alice"), RecordList)
    with pytest.raises(NotFound):
        client.call(
            "/v1/records/fetch",
            FetchRequest(user_id="u-carol", his_id=HIS, p_id="rx-1"),
            RecordReply,
        )
    # Carol's envelope presented with Alice's certificate: the sender check refuses it.
    token = bob.hop.request("platform", ListRequest(user_id="u-alice")).token
    _problem(_post(world, "u-alice", "/v1/records/list", token), 401, "unauthenticated")
    assert alice.user == "u-alice"


def test_unknown_route_and_ping(memory_world):
    """Unknown paths are problem+json 404; /v1/ping answers without a certificate."""
    client = memory_world.client(None)
    _problem(client.post("/v1/nope", content=b""), 404)
    ping = client.get("/v1/ping")
    assert (ping.status_code, ping.json()) == (200, {"status": "ok"})


def test_openapi_lists_every_route(memory_world):
    """The OpenAPI document names every route of protocol.md plus PQ and ping."""
    paths = memory_world.client(None).get("/openapi.json").json()["paths"]
    for path in [*ROUTES, "/v1/ping", "/v1/pq/public", "/v1/pq/exchange"]:
        assert path in paths


# ── the post-quantum fallback ────────────────────────────────────────────────


def test_pq_fallback_when_the_pool_is_dry(memory_world):
    """A wallet without pool keys exchanges ML-KEM+X25519 and its envelopes open (p.<id>|n.<c>)."""
    world = memory_world
    alice = world.wallet("u-alice", count=1)
    alice.pool.get_keys("platform", 1)  # spend the only key: the pool is dry
    http = world.client("u-alice")
    public = base64.urlsafe_b64decode(http.get("/v1/pq/public").json()["public"] + "==")
    assert len(public) == PQ_PUBLIC_LEN
    init, secrets = pq_initiate(public)
    answer = http.post("/v1/pq/exchange", json={"init": _b64(init)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["exchange_id"] == secrets.exchange_id
    alice.use_pq(secrets)
    client = world.peer_client(alice)
    for _ in range(3):
        assert client.call("/v1/records/list", ListRequest(user_id="u-alice"), RecordList)
    # Replays of PQ-keyed envelopes are refused as any other.
    token = alice.hop.request("platform", ListRequest(user_id="u-alice")).token
    assert _post(world, "u-alice", "/v1/records/list", token).status_code == 200
    _problem(_post(world, "u-alice", "/v1/records/list", token), 400, "crypto-failure")


def test_pq_exchange_refusals(memory_world):
    """Malformed init 400, a hospital 403, no account 404, no certificate 401."""
    world = memory_world
    world.wallet("u-alice")
    init, _ = pq_initiate(world.pq.public)
    _problem(world.client("u-alice").post("/v1/pq/exchange", json={"init": _b64(init[:-1])}), 400)
    _problem(world.client("u-alice").post("/v1/pq/exchange", json={"init": "!!"}), 400)
    _problem(world.client("u-alice").post("/v1/pq/exchange", content=b"[]"), 400)
    _problem(world.client(HIS).post("/v1/pq/exchange", json={"init": _b64(init)}), 403)
    _problem(world.client("stranger").post("/v1/pq/exchange", json={"init": _b64(init)}), 404)
    _problem(world.client(None).post("/v1/pq/exchange", json={"init": _b64(init)}), 401)
    assert len(init) == PQ_INIT_LEN


def test_envelope_under_an_unknown_exchange_is_refused(memory_world):
    """Key IDs naming an exchange the platform never answered do not open."""
    world = memory_world
    alice = world.wallet("u-alice", count=1)
    alice.pool.get_keys("platform", 1)
    _, secrets = pq_initiate(world.pq.public)  # never sent to the platform
    alice.use_pq(secrets)
    token = alice.hop.request("platform", ListRequest(user_id="u-alice")).token
    _problem(_post(world, "u-alice", "/v1/records/list", token), 400, "crypto-failure")


def test_pq_responder_round_trips_its_private_key():
    """PqResponder.private_bytes / from_private_bytes keep the same key pair."""
    responder = PqResponder()
    again = PqResponder.from_private_bytes(responder.private_bytes())
    assert again.public_bytes() == responder.public_bytes()
    init, secrets = pq_initiate(responder.public_bytes())
    assert again.respond(init) == secrets


# ── several worker processes on one database ─────────────────────────────────


def test_workers_share_replay_guard_and_pq_exchanges(sqlite_db, pki):
    """Two workers on one database: replays to the other are refused, PQ exchanges are shared."""
    store = SqlStore(sqlite_db, PlatformRepo)
    responder = PqResponder()
    kme_world = World(store, pki, replay_cache=StoreReplayCache(store, 10_000), responder=responder)
    other = World(
        store,
        pki,
        kme=kme_world.kme,
        replay_cache=StoreReplayCache(store, 10_000),
        responder=responder,
    )
    alice = kme_world.wallet("u-alice", count=4)
    token = alice.hop.request("platform", ListRequest(user_id="u-alice")).token
    assert _post(kme_world, "u-alice", "/v1/records/list", token).status_code == 200
    _problem(_post(other, "u-alice", "/v1/records/list", token), 400, "crypto-failure")
    # A pool key is released once: no database entry was needed to refuse that replay.
    assert _guard_rows(sqlite_db) == 0
    # PQ: answered by the first, used at the second.
    alice.pool.get_keys("platform", alice.pool.remaining)
    init, secrets = pq_initiate(kme_world.pq.public)
    exchanged = kme_world.client("u-alice").post("/v1/pq/exchange", json={"init": _b64(init)})
    assert exchanged.status_code == 200
    alice.use_pq(secrets)
    token = alice.hop.request("platform", ListRequest(user_id="u-alice")).token
    assert _post(other, "u-alice", "/v1/records/list", token).status_code == 200
    assert _guard_rows(sqlite_db) == 1  # a PQ-only key opens anywhere: recorded
    _problem(_post(kme_world, "u-alice", "/v1/records/list", token), 400, "crypto-failure")


def _guard_rows(db) -> int:
    with db.engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM replay_guard")).scalar_one()


def test_in_memory_replay_cache_alone_misses_other_workers(sqlite_db, pki):
    """Without the database guard a PQ-keyed replay opens at another worker (why it exists)."""
    store = SqlStore(sqlite_db, PlatformRepo)
    responder = PqResponder()
    first = World(store, pki, replay_cache=ReplayCache(1000), responder=responder)
    second = World(store, pki, kme=first.kme, replay_cache=ReplayCache(1000), responder=responder)
    alice = first.wallet("u-alice", count=1)
    alice.pool.get_keys("platform", 1)
    init, secrets = pq_initiate(first.pq.public)
    assert (
        first.client("u-alice").post("/v1/pq/exchange", json={"init": _b64(init)}).status_code
        == 200
    )
    alice.use_pq(secrets)
    token = alice.hop.request("platform", ListRequest(user_id="u-alice")).token
    assert _post(first, "u-alice", "/v1/records/list", token).status_code == 200
    assert _post(second, "u-alice", "/v1/records/list", token).status_code == 200
