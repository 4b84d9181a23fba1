"""Etsi014Client: ETSI GS QKD 014 §5 over HTTP, error mapping, retries, validation, cache."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from patientkey.errors import (
    KeySupplyBadRequest,
    KeySupplyError,
    KeySupplyUnauthorized,
    KeyUnavailable,
)
from patientkey.keysupply import KeyStatus, KeySupply, QKey
from patientkey.keysupply.etsi014 import Etsi014Client
from patientkey.kme.app import create_app
from patientkey.kme.core import KmeCore

Handler = Callable[[httpx.Request], httpx.Response]
STATUS = {
    "source_KME_ID": "KME_A",
    "target_KME_ID": "KME_B",
    "master_SAE_ID": "a",
    "slave_SAE_ID": "b",
    "key_size": 256,
    "stored_key_count": 10,
    "max_key_count": 100,
    "max_key_per_request": 128,
    "max_key_size": 1024,
    "min_key_size": 64,
    "max_SAE_ID_count": 0,
    "status_extension": {"ignored": True},
}


def container(*keys: QKey) -> dict[str, Any]:
    return {
        "keys": [{"key_ID": str(k.key_id), "key": base64.b64encode(k.key).decode()} for k in keys]
    }


def key(n: int, size: int = 32) -> QKey:
    return QKey(uuid.UUID(int=n), bytes([n]) * size)


class Recorder:
    """A MockTransport handler that answers from a list and records the requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def body(self, i: int) -> Any:
        return json.loads(self.requests[i].content)


def client(handler: Handler, **kwargs: Any) -> tuple[Etsi014Client, list[float]]:
    sleeps: list[float] = []
    kme = Etsi014Client(
        "https://kme.test",
        transport=httpx.MockTransport(handler),
        sleep=sleeps.append,
        **kwargs,
    )
    return kme, sleeps


def error(status: int, message: str = "nope") -> httpx.Response:
    return httpx.Response(status, json={"message": message, "details": [{"why": 1}]})


# --- the three methods ---------------------------------------------------------------


def test_is_a_key_supply() -> None:
    """Etsi014Client satisfies the KeySupply protocol."""
    kme, _ = client(Recorder())
    assert isinstance(kme, KeySupply)


def test_status_parses_the_status_format() -> None:
    """GET .../status is parsed into KeyStatus (extensions ignored)."""
    recorder = Recorder(httpx.Response(200, json=STATUS))
    kme, _ = client(recorder)
    status = kme.status("b")
    assert status == KeyStatus(**{k: v for k, v in STATUS.items() if k != "status_extension"})
    assert recorder.requests[0].url.path == "/api/v1/keys/b/status"


def test_get_keys_posts_a_key_request() -> None:
    """get_keys POSTs {number, size} to enc_keys and decodes the key container."""
    keys = [key(1), key(2)]
    recorder = Recorder(httpx.Response(200, json=container(*keys)))
    kme, _ = client(recorder)
    assert kme.get_keys("b", number=2, size=256) == keys
    request = recorder.requests[0]
    assert (request.method, request.url.path) == ("POST", "/api/v1/keys/b/enc_keys")
    assert recorder.body(0) == {"number": 2, "size": 256}


def test_get_keys_by_id_posts_key_ids() -> None:
    """get_keys_by_id POSTs Key IDs to dec_keys and returns keys in the asked order."""
    keys = [key(1), key(2)]
    recorder = Recorder(httpx.Response(200, json=container(keys[1], keys[0])))
    kme, _ = client(recorder)
    assert kme.get_keys_by_id("a", [k.key_id for k in keys]) == keys
    assert recorder.requests[0].url.path == "/api/v1/keys/a/dec_keys"
    assert recorder.body(0) == {"key_IDs": [{"key_ID": str(k.key_id)} for k in keys]}


def test_sae_ids_are_quoted_in_the_path() -> None:
    """An SAE_ID with URL metacharacters cannot change the route."""
    recorder = Recorder(httpx.Response(200, json=STATUS))
    kme, _ = client(recorder)
    kme.status("b/../x?y")
    assert recorder.requests[0].url.raw_path == b"/api/v1/keys/b%2F..%2Fx%3Fy/status"


# --- error mapping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, KeySupplyBadRequest),
        (401, KeySupplyUnauthorized),
        (404, KeyUnavailable),
        (500, KeyUnavailable),
    ],
)
def test_status_codes_map_to_key_supply_errors(
    status: int, exception: type[KeySupplyError]
) -> None:
    """400 / 401 map to their errors, anything else non-200 to KeyUnavailable."""
    kme, _ = client(Recorder(error(status, "refused")))
    with pytest.raises(exception, match="refused") as info:
        kme.get_keys("b")
    assert type(info.value) is exception
    assert info.value.extensions["details"] == [{"why": 1}]


def test_non_json_error_body_is_tolerated() -> None:
    """An error page that is not the ETSI format still maps by status."""
    kme, _ = client(Recorder(httpx.Response(401, text="<html>no</html>")))
    with pytest.raises(KeySupplyUnauthorized):
        kme.status("b")


def test_503_is_retried_with_exponential_backoff() -> None:
    """503 is retried; pauses double and are capped; success ends the retries."""
    answers = [error(503)] * 4 + [httpx.Response(200, json=container(key(1)))]
    recorder = Recorder(*answers)
    kme, sleeps = client(recorder, max_attempts=5, backoff_s=0.1, backoff_max_s=0.5)
    assert kme.get_keys("b", size=256) == [key(1)]
    assert sleeps == [0.1, 0.2, 0.4, 0.5]


def test_503_gives_up_after_max_attempts() -> None:
    """After max_attempts 503s the client raises KeyUnavailable."""
    recorder = Recorder(*[error(503, "pool empty")] * 3)
    kme, sleeps = client(recorder, max_attempts=3, backoff_s=0.01)
    with pytest.raises(KeyUnavailable, match="pool empty"):
        kme.get_keys("b")
    assert len(recorder.requests) == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("status", [400, 401])
def test_client_errors_are_not_retried(status: int) -> None:
    """400 and 401 are final: one request only."""
    recorder = Recorder(error(status))
    kme, sleeps = client(recorder)
    with pytest.raises(KeySupplyError):
        kme.status("b")
    assert (len(recorder.requests), sleeps) == (1, [])


def test_transport_errors_become_key_unavailable() -> None:
    """A connection failure is KeyUnavailable, chained to the httpx error, not retried."""
    recorder = Recorder(httpx.ConnectError("refused"))
    kme, _ = client(recorder)
    with pytest.raises(KeyUnavailable) as info:
        kme.get_keys_by_id("a", [uuid.uuid4()])
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(recorder.requests) == 1


# --- answers that do not follow the spec ---------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"keys": "x"},
        {"keys": [{"key_ID": "nope", "key": "AAAA"}]},
        {"keys": [{"key_ID": str(uuid.UUID(int=1)), "key": "not base64!"}]},
        {"keys": [{"key_ID": str(uuid.UUID(int=1)), "key": ""}]},
        {"keys": [{"key_ID": str(uuid.UUID(int=1)), "key": 5}]},
        {"keys": [container(key(1))["keys"][0]] * 2},
        {"keys": ["x"]},
    ],
)
def test_malformed_key_containers_are_key_unavailable(body: Any) -> None:
    """Bad UUIDs, bad base64, empty keys, duplicates or wrong shapes are refused."""
    kme, _ = client(Recorder(httpx.Response(200, json=body)))
    with pytest.raises(KeyUnavailable):
        kme.get_keys_by_id("a", [uuid.UUID(int=1)])


@pytest.mark.parametrize(
    "keys",
    [[key(1)], [key(1, size=16), key(2, size=16)], [key(1), key(2), key(3)]],
)
def test_wrong_number_or_size_of_keys_is_refused(keys: list[QKey]) -> None:
    """get_keys checks it got exactly number keys of size bits."""
    kme, _ = client(Recorder(httpx.Response(200, json=container(*keys))))
    with pytest.raises(KeyUnavailable):
        kme.get_keys("b", number=2, size=256)


@pytest.mark.parametrize(
    "body",
    [
        {**STATUS, "key_size": "256"},
        {**STATUS, "stored_key_count": True},
        {**STATUS, "max_key_count": -1},
        {k: v for k, v in STATUS.items() if k != "slave_SAE_ID"},
        ["status"],
    ],
)
def test_malformed_status_is_key_unavailable(body: Any) -> None:
    """A status missing fields or with wrong types is refused."""
    kme, _ = client(Recorder(httpx.Response(200, json=body)))
    with pytest.raises(KeyUnavailable):
        kme.status("b")


def test_non_json_success_is_key_unavailable() -> None:
    """A 200 that is not JSON is refused."""
    kme, _ = client(Recorder(httpx.Response(200, text="ok")))
    with pytest.raises(KeyUnavailable):
        kme.status("b")


@pytest.mark.parametrize(
    "call",
    [
        lambda k: k.get_keys("b", number=0),
        lambda k: k.get_keys("b", size=100),
        lambda k: k.get_keys("b", number=True),
        lambda k: k.get_keys("", number=1),
        lambda k: k.get_keys_by_id("a", []),
        lambda k: k.get_keys_by_id("a", ["not-a-uuid"]),
        lambda k: k.get_keys_by_id("a", [uuid.UUID(int=1)] * 2),
    ],
)
def test_bad_arguments_are_refused_locally(call: Callable[[Etsi014Client], object]) -> None:
    """Arguments the KME would refuse are KeySupplyBadRequest without a request."""
    recorder = Recorder()
    kme, _ = client(recorder)
    with pytest.raises(KeySupplyBadRequest):
        call(kme)
    assert recorder.requests == []


# --- the cache of released-but-unused keys -------------------------------------------


def test_unrequested_keys_are_cached_and_served_once() -> None:
    """A key the KME returned without being asked is kept and served once, offline."""
    recorder = Recorder(httpx.Response(200, json=container(key(1), key(2))))
    kme, _ = client(recorder)
    assert kme.get_keys_by_id("a", [key(1).key_id]) == [key(1)]
    assert kme.cached_keys == 1
    assert kme.get_keys_by_id("a", [key(2).key_id]) == [key(2)]
    assert len(recorder.requests) == 1
    assert kme.cached_keys == 0


def test_partial_answer_keeps_the_delivered_keys() -> None:
    """If the KME omits a requested key, the ones it did release are not lost."""
    recorder = Recorder(
        httpx.Response(200, json=container(key(1))),
        httpx.Response(200, json=container(key(2))),
    )
    kme, _ = client(recorder)
    with pytest.raises(KeyUnavailable):
        kme.get_keys_by_id("a", [key(1).key_id, key(2).key_id])
    assert kme.get_keys_by_id("a", [key(1).key_id, key(2).key_id]) == [key(1), key(2)]
    assert recorder.body(1) == {"key_IDs": [{"key_ID": str(key(2).key_id)}]}


def test_cache_is_per_master() -> None:
    """A key cached for master 'a' is not served to a call naming master 'c'."""
    recorder = Recorder(
        httpx.Response(200, json=container(key(1), key(2))),
        error(400, "unknown"),
    )
    kme, _ = client(recorder)
    kme.get_keys_by_id("a", [key(1).key_id])
    with pytest.raises(KeySupplyBadRequest):
        kme.get_keys_by_id("c", [key(2).key_id])


def test_cache_is_bounded() -> None:
    """Beyond cache_size the oldest unused key is dropped."""
    recorder = Recorder(httpx.Response(200, json=container(key(1), key(2), key(3), key(4))))
    kme, _ = client(recorder, cache_size=2)
    kme.get_keys_by_id("a", [key(1).key_id])
    assert kme.cached_keys == 2


# --- against the real application, in-process ---------------------------------------


def test_against_the_kme_app_in_process(
    core: KmeCore, asgi_transport: Callable[[Any, str], httpx.BaseTransport]
) -> None:
    """Client and KME app agree on the wire format: status, enc_keys, dec_keys, 400/401."""
    app = create_app(core)
    wallet = Etsi014Client("https://kme.test", transport=asgi_transport(app, "wallet"))
    platform = Etsi014Client("https://kme.test", transport=asgi_transport(app, "platform"))
    hospital = Etsi014Client("https://kme.test", transport=asgi_transport(app, "hospital"))
    assert wallet.status("platform").stored_key_count > 0
    keys = wallet.get_keys("platform", number=3, size=512)
    ids = [k.key_id for k in keys]
    with pytest.raises(KeySupplyUnauthorized):
        hospital.get_keys_by_id("wallet", ids)
    assert platform.get_keys_by_id("wallet", ids) == keys
    with pytest.raises(KeySupplyBadRequest):
        platform.get_keys_by_id("wallet", ids[:1])
