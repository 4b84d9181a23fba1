"""EmbeddedKeySupply: the in-process KeySupply, indistinguishable from the HTTP client."""

from __future__ import annotations

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
from patientkey.keysupply import KeySupply
from patientkey.keysupply.embedded import EmbeddedKeySupply
from patientkey.keysupply.etsi014 import Etsi014Client
from patientkey.kme.app import create_app
from patientkey.kme.core import KmeCore

Supplies = Callable[[str], KeySupply]


def test_is_a_key_supply(core: KmeCore) -> None:
    """EmbeddedKeySupply satisfies the KeySupply protocol."""
    assert isinstance(EmbeddedKeySupply(core, "wallet"), KeySupply)


def test_master_and_slave_share_keys(core: KmeCore) -> None:
    """The slave fetches by ID exactly the keys the master got."""
    wallet, platform = EmbeddedKeySupply(core, "wallet"), EmbeddedKeySupply(core, "platform")
    keys = wallet.get_keys("platform", number=2, size=128)
    assert [k.bits for k in keys] == [128, 128]
    assert platform.get_keys_by_id("wallet", [k.key_id for k in keys]) == keys


def test_status_is_the_callers_view(core: KmeCore) -> None:
    """status(peer) is Get status with this SAE as master."""
    status = EmbeddedKeySupply(core, "platform").status("hospital")
    assert (status.master_SAE_ID, status.slave_SAE_ID) == ("platform", "hospital")


def test_empty_sae_id_is_refused(core: KmeCore) -> None:
    """An embedded supply needs an identity."""
    with pytest.raises(KeySupplyBadRequest):
        EmbeddedKeySupply(core, "")


# --- same errors as over HTTP --------------------------------------------------------


@pytest.fixture(params=["embedded", "etsi014"])
def supply(
    request: pytest.FixtureRequest,
    core: KmeCore,
    asgi_transport: Callable[[Any, str], httpx.BaseTransport],
) -> Supplies:
    """Factory of key supplies for an SAE, in-process or through the HTTP app."""
    if request.param == "embedded":
        return lambda sae: EmbeddedKeySupply(core, sae)
    app = create_app(core)

    def over_http(sae: str) -> KeySupply:
        return Etsi014Client("https://kme.test", transport=asgi_transport(app, sae), max_attempts=1)

    return over_http


SCENARIOS: list[tuple[str, Callable[[Supplies], object], type[KeySupplyError]]] = [
    (
        "size not a multiple of 8",
        lambda s: s("wallet").get_keys("platform", size=100),
        KeySupplyBadRequest,
    ),
    ("size above max", lambda s: s("wallet").get_keys("platform", size=4096), KeySupplyBadRequest),
    (
        "number above max",
        lambda s: s("wallet").get_keys("platform", number=1000),
        KeySupplyBadRequest,
    ),
    ("number zero", lambda s: s("wallet").get_keys("platform", number=0), KeySupplyBadRequest),
    ("number bool", lambda s: s("wallet").get_keys("platform", number=True), KeySupplyBadRequest),
    ("unknown slave", lambda s: s("wallet").get_keys("nobody"), KeySupplyBadRequest),
    ("no link", lambda s: s("wallet").status("hospital"), KeySupplyBadRequest),
    ("not an SAE", lambda s: s("stranger").status("platform"), KeySupplyUnauthorized),
    (
        "unknown key",
        lambda s: s("platform").get_keys_by_id("wallet", [uuid.uuid4()]),
        KeySupplyBadRequest,
    ),
    ("no key IDs", lambda s: s("platform").get_keys_by_id("wallet", []), KeySupplyBadRequest),
    (
        "pool too small",
        lambda s: s("wallet").get_keys("platform", number=128, size=1024),
        KeyUnavailable,
    ),
]


@pytest.mark.parametrize(("scenario", "call", "error"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_errors_match_the_http_client(
    supply: Supplies,
    scenario: str,
    call: Callable[[Supplies], object],
    error: type[KeySupplyError],
) -> None:
    """Each failure raises the same error type in-process and over HTTP."""
    with pytest.raises(KeySupplyError) as info:
        call(supply)
    assert type(info.value) is error, scenario


def test_wrong_slave_is_unauthorized_both_ways(supply: Supplies) -> None:
    """A key fetched by an SAE it was not issued to is 401 in both supplies."""
    keys = supply("platform").get_keys("hospital")
    with pytest.raises(KeySupplyUnauthorized):
        supply("pharmacy").get_keys_by_id("platform", [k.key_id for k in keys])
    assert supply("hospital").get_keys_by_id("platform", [k.key_id for k in keys]) == keys
