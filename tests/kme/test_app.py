"""The FastAPI adapter in-process (httpx ASGITransport): ETSI GS QKD 014 routes and errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkey.kme.app import caller_sae_id, create_app
from patientkey.kme.bb84 import LinkParams, LinkResult
from patientkey.kme.core import KmeCore, Limits
from patientkey.kme.links import LinkFeeder, LinkManager, Watermarks

Client = Callable[[FastAPI, "str | None"], httpx.Client]
API = "/api/v1/keys"


@pytest.fixture
def app(core: KmeCore) -> FastAPI:
    return create_app(core, admin_sae_ids=["operator"])


@pytest.fixture
def wallet(app: FastAPI, asgi_client: Client) -> httpx.Client:
    return asgi_client(app, "wallet")


@pytest.fixture
def platform(app: FastAPI, asgi_client: Client) -> httpx.Client:
    return asgi_client(app, "platform")


def assert_etsi_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response has ``status`` and the §6.5 Error body (message + details list)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message", "details"}
    assert isinstance(body["message"], str)
    assert isinstance(body["details"], list)
    return body


# --- the happy paths -----------------------------------------------------------------


def test_status(wallet: httpx.Client) -> None:
    """GET status answers the §6.1 fields for the caller as master."""
    body = wallet.get(f"{API}/platform/status").json()
    assert body["master_SAE_ID"] == "wallet"
    assert body["slave_SAE_ID"] == "platform"
    assert body["source_KME_ID"] == "KME_WALLET"
    assert body["stored_key_count"] > 0


def test_post_enc_then_post_dec(wallet: httpx.Client, platform: httpx.Client) -> None:
    """POST enc_keys by the master, POST dec_keys by the slave: the same keys."""
    issued = wallet.post(f"{API}/platform/enc_keys", json={"number": 2, "size": 128}).json()
    assert len(issued["keys"]) == 2
    key_ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in issued["keys"]]}
    fetched = platform.post(f"{API}/wallet/dec_keys", json=key_ids).json()
    assert fetched == issued


def test_get_enc_then_get_dec(wallet: httpx.Client, platform: httpx.Client) -> None:
    """The GET forms (?number=&size=, ?key_ID=) behave like the POST forms."""
    issued = wallet.get(f"{API}/platform/enc_keys", params={"number": 1, "size": 64}).json()
    (key,) = issued["keys"]
    fetched = platform.get(f"{API}/wallet/dec_keys", params={"key_ID": key["key_ID"]})
    assert fetched.json() == issued


def test_post_enc_keys_without_body_uses_defaults(wallet: httpx.Client) -> None:
    """POST enc_keys with no body yields one key of the default size."""
    response = wallet.post(f"{API}/platform/enc_keys")
    assert response.status_code == 200
    assert len(response.json()["keys"]) == 1


def test_openapi_lists_the_etsi_routes_without_422(wallet: httpx.Client) -> None:
    """The OpenAPI document has all five ETSI operations and no 422 responses."""
    doc = wallet.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths[f"{API}/{{slave_SAE_ID}}/enc_keys"]) == {"get", "post"}
    assert set(paths[f"{API}/{{master_SAE_ID}}/dec_keys"]) == {"get", "post"}
    assert "get" in paths[f"{API}/{{slave_SAE_ID}}/status"]
    assert "422" not in json.dumps(doc)


# --- identity ------------------------------------------------------------------------


def test_no_client_certificate_is_unauthorized(app: FastAPI, asgi_client: Client) -> None:
    """Without the TLS extension (no certificate) every ETSI route is 401."""
    anonymous = asgi_client(app, None)
    assert_etsi_error(anonymous.get(f"{API}/platform/status"), 401)


def test_certificate_of_no_sae_is_unauthorized(app: FastAPI, asgi_client: Client) -> None:
    """A valid certificate whose CN is no registered SAE is 401."""
    stranger = asgi_client(app, "stranger")
    assert_etsi_error(stranger.post(f"{API}/platform/enc_keys", json={}), 401)


def test_identity_headers_are_ignored(app: FastAPI, asgi_client: Client) -> None:
    """A header naming an SAE proves nothing: identity comes only from the certificate."""
    anonymous = asgi_client(app, None)
    response = anonymous.get(f"{API}/platform/status", headers={"X-SAE-ID": "wallet"})
    assert_etsi_error(response, 401)


def test_identity_can_be_injected_by_dependency_override(app: FastAPI, asgi_client: Client) -> None:
    """Tests may override caller_sae_id instead of presenting a certificate."""
    app.dependency_overrides[caller_sae_id] = lambda: "wallet"
    response = asgi_client(app, None).get(f"{API}/platform/status")
    assert response.json()["master_SAE_ID"] == "wallet"


def test_wrong_sae_gets_401_for_a_key(
    app: FastAPI, asgi_client: Client, wallet: httpx.Client
) -> None:
    """A key is served only to its slave; another SAE gets 401."""
    (key,) = wallet.post(f"{API}/platform/enc_keys", json={}).json()["keys"]
    hospital = asgi_client(app, "hospital")
    response = hospital.get(f"{API}/wallet/dec_keys", params={"key_ID": key["key_ID"]})
    assert_etsi_error(response, 401)


# --- errors: semantic ----------------------------------------------------------------


def test_consumed_key_is_400(wallet: httpx.Client, platform: httpx.Client) -> None:
    """The second fetch of a key is 400."""
    (key,) = wallet.post(f"{API}/platform/enc_keys", json={}).json()["keys"]
    url = f"{API}/wallet/dec_keys"
    assert platform.get(url, params={"key_ID": key["key_ID"]}).status_code == 200
    assert_etsi_error(platform.get(url, params={"key_ID": key["key_ID"]}), 400)


def test_empty_pool_is_503(empty_core: KmeCore, asgi_client: Client) -> None:
    """No key material: 503 with the ETSI error body."""
    client = asgi_client(create_app(empty_core), "wallet")
    assert_etsi_error(client.post(f"{API}/platform/enc_keys", json={}), 503)


def test_unsupported_extension_is_400(wallet: httpx.Client) -> None:
    """extension_mandatory the KME does not support is 400 naming it."""
    body = {"extension_mandatory": [{"abc_route_type": "direct"}]}
    error = assert_etsi_error(wallet.post(f"{API}/platform/enc_keys", json=body), 400)
    assert error["details"] == [{"extension_mandatory_unsupported": "abc_route_type"}]


def test_unknown_route_is_404_in_etsi_shape(wallet: httpx.Client) -> None:
    """Even a 404 carries the {message, details} body."""
    assert_etsi_error(wallet.get("/api/v1/keys/platform/nothing"), 404)


def test_wrong_method_is_405_in_etsi_shape(wallet: httpx.Client) -> None:
    """DELETE on an ETSI route is 405 with the ETSI body."""
    assert_etsi_error(wallet.delete(f"{API}/platform/status"), 405)


# --- errors: malformed input never 500, never 422 ------------------------------------


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("platform/enc_keys", b"{"),
        ("platform/enc_keys", b"\xff\xfe"),
        ("platform/enc_keys", b"[]"),
        ("platform/enc_keys", b'"number"'),
        ("platform/enc_keys", b'{"number": "2"}'),
        ("platform/enc_keys", b'{"number": 2.5}'),
        ("platform/enc_keys", b'{"number": true}'),
        ("platform/enc_keys", b'{"number": 1' + b"0" * 5000 + b"}"),
        ("platform/enc_keys", b'{"additional_slave_SAE_IDs": [1]}'),
        ("platform/enc_keys", b'{"unknown": 1}'),
        ("platform/enc_keys", b'{"number": NaN}'),
        ("wallet/dec_keys", b"{}"),
        ("wallet/dec_keys", b'{"key_IDs": [{"key_ID": "1234"}]}'),
        ("wallet/dec_keys", b'{"key_IDs": "x"}'),
        ("wallet/dec_keys", b""),
    ],
)
def test_malformed_bodies_are_400(platform: httpx.Client, path: str, content: bytes) -> None:
    """Bad JSON, wrong types, unknown fields and bad UUIDs are 400 with the ETSI body."""
    response = platform.post(
        f"{API}/{path}", content=content, headers={"content-type": "application/json"}
    )
    assert_etsi_error(response, 400)


def test_non_json_content_type_is_400(wallet: httpx.Client) -> None:
    """A body that is not declared JSON is not guessed at."""
    response = wallet.post(
        f"{API}/platform/enc_keys", content=b"{}", headers={"content-type": "text/plain"}
    )
    assert_etsi_error(response, 400)


@pytest.mark.parametrize(
    "params",
    [
        {"number": "abc"},
        {"number": "0"},
        {"number": "1000"},
        {"size": "12"},
        {"size": "4096"},
        {"size": "1e3"},
    ],
)
def test_out_of_range_query_is_400(wallet: httpx.Client, params: dict[str, str]) -> None:
    """GET enc_keys with non-integer or out-of-range number/size is 400."""
    assert_etsi_error(wallet.get(f"{API}/platform/enc_keys", params=params), 400)


@pytest.mark.parametrize("key_id", ["", "nope", "123e4567-e89b-12d3-a456-42661417400"])
def test_bad_uuid_in_query_is_400(platform: httpx.Client, key_id: str) -> None:
    """GET dec_keys with a key_ID that is no UUID is 400."""
    assert_etsi_error(platform.get(f"{API}/wallet/dec_keys", params={"key_ID": key_id}), 400)


def test_missing_key_id_is_400(platform: httpx.Client) -> None:
    """GET dec_keys without key_ID is 400, not FastAPI's 422."""
    assert_etsi_error(platform.get(f"{API}/wallet/dec_keys"), 400)


def test_repeated_query_parameter_is_400(wallet: httpx.Client) -> None:
    """number given twice is ambiguous: 400."""
    response = wallet.get(f"{API}/platform/enc_keys?number=1&number=2")
    assert_etsi_error(response, 400)


def test_oversized_body_is_413(core: KmeCore, asgi_client: Client) -> None:
    """A body above max_body_bytes is refused with 413 before parsing."""
    client = asgi_client(create_app(core, max_body_bytes=100), "wallet")
    body = {"extension_optional": [{"pad": "x" * 200}]}
    error = assert_etsi_error(client.post(f"{API}/platform/enc_keys", json=body), 413)
    assert error["details"] == [{"max_body_bytes": 100}]


def test_oversized_streamed_body_is_413(core: KmeCore, asgi_client: Client) -> None:
    """Without Content-Length (chunked), the bytes actually received are counted."""
    client = asgi_client(create_app(core, max_body_bytes=100), "wallet")

    def chunks() -> Iterator[bytes]:
        yield b'{"extension_optional": [{"pad": "'
        yield b"x" * 200
        yield b'"}]}'

    response = client.post(
        f"{API}/platform/enc_keys",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert_etsi_error(response, 413)


# --- fuzz: any JSON body is answered 200 or 4xx --------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["hospital", "pharmacy", "wallet", str(uuid.uuid4())]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
key_request_like = st.fixed_dictionaries(
    {},
    optional={
        "number": json_values | st.integers(-2, 200),
        "size": json_values | st.sampled_from([0, 8, 64, 100, 256, 1024, 1032]),
        "additional_slave_SAE_IDs": json_values
        | st.lists(st.sampled_from(["hospital", "pharmacy", "platform", "x"]), max_size=6),
        "extension_mandatory": json_values,
        "extension_optional": json_values,
    },
)
key_ids_like = st.fixed_dictionaries(
    {},
    optional={
        "key_IDs": json_values
        | st.lists(
            st.fixed_dictionaries({"key_ID": st.uuids().map(str) | json_values}), max_size=3
        ),
        "key_IDs_extension": json_values,
    },
)


FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(FUZZ, max_examples=150)
@given(body=json_values | key_request_like, master=st.sampled_from(["platform", "wallet"]))
def test_fuzz_enc_keys_never_500(
    core: KmeCore,
    app: FastAPI,
    asgi_client: Client,
    fill_pools: Callable[[KmeCore], None],
    body: Any,
    master: str,
) -> None:
    """Any JSON body to POST enc_keys gives 200 or a 4xx/503 ETSI error, never 500 or 422."""
    fill_pools(core)  # keep 200s possible across examples
    slave = "hospital" if master == "platform" else "platform"
    response = asgi_client(app, master).post(f"{API}/{slave}/enc_keys", json=body)
    if response.status_code != 200:
        assert response.status_code in {400, 401, 413, 503}
        assert_etsi_error(response, response.status_code)


@settings(FUZZ, max_examples=100)
@given(body=json_values | key_ids_like)
def test_fuzz_dec_keys_never_500(app: FastAPI, platform: httpx.Client, body: Any) -> None:
    """Any JSON body to POST dec_keys gives 200 or a 4xx ETSI error."""
    response = platform.post(f"{API}/wallet/dec_keys", json=body)
    if response.status_code != 200:
        assert response.status_code in {400, 401, 413}
        assert_etsi_error(response, response.status_code)


@settings(FUZZ, max_examples=60)
@given(number=st.text(max_size=8), size=st.text(max_size=8), slave=st.text(max_size=12))
def test_fuzz_get_enc_keys_never_500(
    wallet: httpx.Client, number: str, size: str, slave: str
) -> None:
    """Arbitrary query strings and path SAE_IDs give 200 or an ETSI 4xx/503."""
    url = f"{API}/{quote(slave, safe='')}/enc_keys"
    response = wallet.get(url, params={"number": number, "size": size})
    if response.status_code != 200:
        assert response.status_code in {400, 401, 404, 503}
        assert_etsi_error(response, response.status_code)


# --- admin ---------------------------------------------------------------------------


def _aborting_simulate(params: LinkParams, seed: int | None) -> LinkResult:
    if params.eve > 0:
        return LinkResult(0.25, 1000, 0, 0, True, b"", b"")
    return LinkResult(0.01, 1000, 100, 256, False, bytes(32), bytes(32))


@pytest.fixture
def admin_app(core: KmeCore) -> FastAPI:
    feeders = [
        LinkFeeder(lid, LinkParams(pulses=1000), Watermarks(0, 1024), simulate=_aborting_simulate)
        for lid in core.link_ids
    ]
    return create_app(core, links=LinkManager(core, feeders), admin_sae_ids=["operator"])


def test_admin_routes_need_the_admin_identity(admin_app: FastAPI, asgi_client: Client) -> None:
    """SAEs get 403 on /admin; the operator sees every link."""
    assert_etsi_error(asgi_client(admin_app, "wallet").get("/admin/links"), 403)
    links = asgi_client(admin_app, "operator").get("/admin/links").json()
    assert {(link["a"], link["b"]) for link in links} == {
        ("KME_WALLET", "KME_PLATFORM"),
        ("KME_PLATFORM", "KME_HOSPITAL"),
        ("KME_PLATFORM", "KME_PHARMACY"),
    }
    assert all("key" not in json.dumps(link).replace("_keys", "") for link in links)


def test_admin_switches_eve_and_flushes(
    admin_app: FastAPI, asgi_client: Client, core: KmeCore
) -> None:
    """PUT eve changes the link's BB84 parameters; POST flush empties its pool."""
    operator = asgi_client(admin_app, "operator")
    url = "/admin/links/KME_WALLET/KME_PLATFORM"
    assert operator.put(f"{url}/eve", json={"eve": 1.0}).json()["eve"] == 1.0
    assert operator.post(f"{url}/flush").json()["available_bits"] == 0
    wallet = asgi_client(admin_app, "wallet")
    assert_etsi_error(wallet.post(f"{API}/platform/enc_keys", json={}), 503)


@pytest.mark.parametrize("body", [{"eve": 2}, {"eve": "1"}, {}, {"eve": 0.5, "x": 1}])
def test_admin_rejects_bad_eve_values(
    admin_app: FastAPI, asgi_client: Client, body: dict[str, Any]
) -> None:
    """eve must be a number in [0, 1]: otherwise 400."""
    operator = asgi_client(admin_app, "operator")
    assert_etsi_error(operator.put("/admin/links/KME_WALLET/KME_PLATFORM/eve", json=body), 400)


def test_admin_unknown_link_is_404(admin_app: FastAPI, asgi_client: Client) -> None:
    """A link that does not exist (or reversed) is 404."""
    operator = asgi_client(admin_app, "operator")
    assert_etsi_error(operator.post("/admin/links/KME_PLATFORM/KME_WALLET/flush"), 404)


def test_admin_eve_without_simulated_links_is_409(app: FastAPI, asgi_client: Client) -> None:
    """Without a link manager there is no eavesdropper to switch: 409."""
    operator = asgi_client(app, "operator")
    response = operator.put("/admin/links/KME_WALLET/KME_PLATFORM/eve", json={"eve": 0.5})
    assert_etsi_error(response, 409)


def test_limits_come_from_the_core(asgi_client: Client) -> None:
    """The status route reports the core's configured limits."""
    kme = KmeCore({"A": ["a"], "B": ["b"]}, [("A", "B")], Limits(max_key_per_request=3))
    app = create_app(kme)
    app.dependency_overrides[caller_sae_id] = lambda: "a"
    body = asgi_client(app, None).get(f"{API}/b/status").json()
    assert body["max_key_per_request"] == 3
