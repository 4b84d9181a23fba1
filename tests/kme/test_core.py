"""The sans-IO KME against ETSI GS QKD 014 V1.1.1 §5 (status, enc_keys, dec_keys)."""

from __future__ import annotations

import itertools
import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.errors import (
    ConfigError,
    KeySupplyBadRequest,
    KeySupplyUnauthorized,
    KeyUnavailable,
    PatientKeyError,
    PayloadTooLarge,
)
from patientkey.keysupply import QKey
from patientkey.kme.core import (
    KEY_TRANSITIONS,
    KeyEvent,
    KeyIDsRequest,
    KeyRequest,
    KeyState,
    KeyStateError,
    KmeCore,
    Limits,
    error_body,
    key_container,
    next_state,
    parse_key_ids,
    parse_key_request,
    status_body,
)

WP = ("KME_WALLET", "KME_PLATFORM")
PH = ("KME_PLATFORM", "KME_HOSPITAL")
PX = ("KME_PLATFORM", "KME_PHARMACY")


def ids(*keys: QKey) -> KeyIDsRequest:
    return parse_key_ids({"key_IDs": [{"key_ID": str(k.key_id)} for k in keys]})


def req(**fields: object) -> KeyRequest:
    return parse_key_request(fields)


# --- Get status (§5.1, §6.1) -------------------------------------------------------


def test_status_reports_every_field(core: KmeCore) -> None:
    """Get status names both KMEs and SAEs and reports counts in keys of key_size."""
    status = core.status("wallet", "platform")
    assert status_body(status) == {
        "source_KME_ID": "KME_WALLET",
        "target_KME_ID": "KME_PLATFORM",
        "master_SAE_ID": "wallet",
        "slave_SAE_ID": "platform",
        "key_size": 256,
        "stored_key_count": 4096 * 8 // 256,
        "max_key_count": core.limits.max_pool_bits // 256,
        "max_key_per_request": core.limits.max_key_per_request,
        "max_key_size": core.limits.max_key_size,
        "min_key_size": core.limits.min_key_size,
        "max_SAE_ID_count": core.limits.max_SAE_ID_count,
    }


def test_status_from_bobs_side_swaps_the_kmes(core: KmeCore) -> None:
    """A master at Bob's site sees its own KME as source."""
    status = core.status("platform", "wallet")
    assert (status.source_KME_ID, status.target_KME_ID) == ("KME_PLATFORM", "KME_WALLET")


def test_status_counts_down_as_keys_are_issued(core: KmeCore) -> None:
    """stored_key_count drops by the keys taken."""
    before = core.status("wallet", "platform").stored_key_count
    core.enc_keys("wallet", "platform", req(number=3))
    assert core.status("wallet", "platform").stored_key_count == before - 3


def test_link_info_counts_consumed_key_bits(core: KmeCore) -> None:
    """consumed_bits grows by exactly the key bits handed out (the key budget)."""
    link = ("KME_WALLET", "KME_PLATFORM")
    before = core.link_info(link).consumed_bits
    core.enc_keys("wallet", "platform", req(number=2, size=512))
    assert core.link_info(link).consumed_bits == before + 1024


@pytest.mark.parametrize(
    ("caller", "slave", "error"),
    [
        ("nobody", "platform", KeySupplyUnauthorized),
        ("wallet", "nobody", KeySupplyBadRequest),
        ("wallet", "wallet", KeySupplyBadRequest),
        ("wallet", "hospital", KeySupplyBadRequest),  # no QKD link wallet-hospital
    ],
)
def test_status_refuses_unknown_or_unlinked_pairs(
    core: KmeCore, caller: str, slave: str, error: type[Exception]
) -> None:
    """Unknown callers are 401; unknown, self or unlinked slaves are 400."""
    with pytest.raises(error):
        core.status(caller, slave)


# --- Get key / Get key with key IDs (§5.2, §5.3) -------------------------------------


def test_slave_gets_the_masters_key(core: KmeCore) -> None:
    """dec_keys by the slave returns byte-identical keys for the master's key_IDs."""
    keys = core.enc_keys("wallet", "platform", req(number=3, size=512))
    assert len(keys) == 3
    assert all(k.bits == 512 for k in keys)
    assert len({k.key_id for k in keys}) == 3
    assert core.dec_keys("platform", "wallet", ids(*keys)) == keys


def test_defaults_are_one_key_of_key_size(core: KmeCore) -> None:
    """An empty Key request yields one key of the default key_size."""
    (key,) = core.enc_keys("wallet", "platform", KeyRequest())
    assert key.bits == core.limits.key_size


def test_master_at_bobs_site_works_too(core: KmeCore) -> None:
    """The platform may be master towards the wallet on the same link."""
    keys = core.enc_keys("platform", "wallet", req(number=2))
    assert core.dec_keys("wallet", "platform", ids(*keys)) == keys


def test_keys_come_from_the_pool_in_order(empty_core: KmeCore) -> None:
    """Keys are cut from the link's material front to back, nothing reused."""
    material = os.urandom(64)
    empty_core.add_material(WP, material, material)
    keys = empty_core.enc_keys("wallet", "platform", req(number=2, size=256))
    assert b"".join(k.key for k in keys) == material
    with pytest.raises(KeyUnavailable):
        empty_core.enc_keys("wallet", "platform", req(number=1, size=64))


def test_wrong_sae_is_unauthorized(core: KmeCore) -> None:
    """A registered SAE that is not the key's slave gets 401, and the slave still can fetch."""
    keys = core.enc_keys("platform", "hospital", req())
    with pytest.raises(KeySupplyUnauthorized):
        core.dec_keys("pharmacy", "platform", ids(*keys))
    with pytest.raises(KeySupplyUnauthorized):
        core.dec_keys("platform", "platform", ids(*keys))
    assert core.dec_keys("hospital", "platform", ids(*keys)) == keys


def test_unregistered_caller_is_unauthorized(core: KmeCore) -> None:
    """A caller that is no SAE of this KME gets 401 on every method."""
    keys = core.enc_keys("wallet", "platform", req())
    with pytest.raises(KeySupplyUnauthorized):
        core.enc_keys("stranger", "platform", req())
    with pytest.raises(KeySupplyUnauthorized):
        core.dec_keys("stranger", "wallet", ids(*keys))


def test_consumed_key_is_bad_request(core: KmeCore) -> None:
    """A key fetched once is gone: fetching it again is 400."""
    keys = core.enc_keys("wallet", "platform", req())
    core.dec_keys("platform", "wallet", ids(*keys))
    with pytest.raises(KeySupplyBadRequest, match="unknown or already delivered"):
        core.dec_keys("platform", "wallet", ids(*keys))


def test_unknown_key_is_bad_request(core: KmeCore) -> None:
    """A key_ID that was never issued is 400."""
    ghost = QKey(uuid.uuid4(), b"x")
    with pytest.raises(KeySupplyBadRequest):
        core.dec_keys("platform", "wallet", ids(ghost))


def test_key_of_another_master_is_bad_request(core: KmeCore) -> None:
    """The (master, key_ID) pair must match: naming the wrong master is 400."""
    keys = core.enc_keys("platform", "hospital", req())
    with pytest.raises(KeySupplyBadRequest):
        core.dec_keys("hospital", "pharmacy", ids(*keys))
    with pytest.raises(KeySupplyBadRequest, match="unknown master"):
        core.dec_keys("hospital", "nobody", ids(*keys))


def test_dec_keys_is_all_or_nothing(core: KmeCore) -> None:
    """One bad key_ID in a request releases none of the good ones."""
    keys = core.enc_keys("wallet", "platform", req(number=2))
    ghost = QKey(uuid.uuid4(), b"x")
    with pytest.raises(KeySupplyBadRequest):
        core.dec_keys("platform", "wallet", ids(keys[0], ghost))
    assert core.dec_keys("platform", "wallet", ids(*keys)) == keys


def test_duplicate_key_ids_are_bad_request(core: KmeCore) -> None:
    """The same key_ID twice in one request is 400."""
    (key,) = core.enc_keys("wallet", "platform", req())
    with pytest.raises(KeySupplyBadRequest, match="duplicate"):
        core.dec_keys("platform", "wallet", ids(key, key))


def test_empty_pool_is_unavailable(empty_core: KmeCore) -> None:
    """No key material means 503."""
    with pytest.raises(KeyUnavailable):
        empty_core.enc_keys("wallet", "platform", req())


def test_enc_keys_is_all_or_nothing(core: KmeCore) -> None:
    """Asking for more than the pool holds is 503 and takes nothing."""
    before = core.available_bits(WP)
    with pytest.raises(KeyUnavailable):
        core.enc_keys("wallet", "platform", req(number=100, size=1024))
    assert core.available_bits(WP) == before


# --- multicast (additional_slave_SAE_IDs) --------------------------------------------


def test_multicast_gives_every_slave_the_same_key(core: KmeCore) -> None:
    """Each named slave, even at another site, receives the master's key."""
    keys = core.enc_keys(
        "platform", "hospital", req(number=2, additional_slave_SAE_IDs=["pharmacy"])
    )
    assert core.dec_keys("hospital", "platform", ids(*keys)) == keys
    assert core.dec_keys("pharmacy", "platform", ids(*keys)) == keys


def test_multicast_uses_material_of_every_link(core: KmeCore) -> None:
    """Key relay to a further site consumes a pad of the same size on that link."""
    before = core.available_bits(PH), core.available_bits(PX)
    core.enc_keys("platform", "hospital", req(size=256, additional_slave_SAE_IDs=["pharmacy"]))
    assert (core.available_bits(PH), core.available_bits(PX)) == (before[0] - 256, before[1] - 256)


def test_multicast_key_lives_until_every_slave_fetched(core: KmeCore) -> None:
    """A slave cannot fetch twice, the other slave still can, then the key is gone."""
    keys = core.enc_keys("platform", "hospital", req(additional_slave_SAE_IDs=["pharmacy"]))
    core.dec_keys("hospital", "platform", ids(*keys))
    with pytest.raises(KeySupplyBadRequest):
        core.dec_keys("hospital", "platform", ids(*keys))
    assert core.link_info(PH).outstanding_keys == 1
    core.dec_keys("pharmacy", "platform", ids(*keys))
    assert core.link_info(PH).outstanding_keys == 0
    with pytest.raises(KeySupplyBadRequest):
        core.dec_keys("pharmacy", "platform", ids(*keys))


@pytest.mark.parametrize(
    "additional",
    [
        ["hospital"],  # the primary slave again
        ["pharmacy", "pharmacy"],
        ["platform"],  # the master
        ["nobody"],
        ["wallet", "hospital", "pharmacy", "x", "y"],  # above max_SAE_ID_count
    ],
)
def test_bad_additional_slaves_are_bad_request(core: KmeCore, additional: list[str]) -> None:
    """Repeated, self, unknown or too many additional slaves are 400."""
    with pytest.raises(KeySupplyBadRequest):
        core.enc_keys("platform", "hospital", req(additional_slave_SAE_IDs=additional))


def test_multicast_can_be_disabled() -> None:
    """max_SAE_ID_count = 0 refuses every additional slave and says so in status."""
    kme = KmeCore({"A": ["a"], "B": ["b", "c"]}, [("A", "B")], Limits(max_SAE_ID_count=0))
    kme.add_material(("A", "B"), bytes(64), bytes(64))
    assert kme.status("a", "b").max_SAE_ID_count == 0
    with pytest.raises(KeySupplyBadRequest, match="too many"):
        kme.enc_keys("a", "b", req(additional_slave_SAE_IDs=["c"]))


def test_slaves_at_one_site_share_one_relay() -> None:
    """Two slaves at the same site cost the pool one key, not two."""
    kme = KmeCore({"A": ["a"], "B": ["b", "c"]}, [("A", "B")])
    kme.add_material(("A", "B"), bytes(64), bytes(64))
    keys = kme.enc_keys("a", "b", req(size=256, additional_slave_SAE_IDs=["c"]))
    assert kme.available_bits(("A", "B")) == 256
    assert kme.dec_keys("c", "a", ids(*keys)) == keys


# --- extensions and limits ----------------------------------------------------------


def test_unsupported_mandatory_extension_is_bad_request(core: KmeCore) -> None:
    """extension_mandatory with an unknown name is 400 with the spec's details."""
    with pytest.raises(KeySupplyBadRequest) as info:
        core.enc_keys("wallet", "platform", req(extension_mandatory=[{"abc_route_type": "direct"}]))
    assert error_body(info.value) == {
        "message": "not all extension_mandatory parameters are supported",
        "details": [{"extension_mandatory_unsupported": "abc_route_type"}],
    }


def test_unknown_optional_extension_is_ignored(core: KmeCore) -> None:
    """extension_optional names the KME does not know change nothing."""
    keys = core.enc_keys("wallet", "platform", req(extension_optional=[{"abc_qos": 1}]))
    assert len(keys) == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"number": 0},
        {"number": -1},
        {"number": 129},  # max_key_per_request
        {"number": 10**30},
        {"size": 255},  # not a multiple of 8
        {"size": 56},  # below min_key_size
        {"size": 2048},  # above max_key_size
        {"size": 0},
    ],
)
def test_number_and_size_limits(core: KmeCore, fields: dict[str, int]) -> None:
    """number within [1, max_key_per_request], size a multiple of 8 within [min, max]."""
    with pytest.raises(KeySupplyBadRequest):
        core.enc_keys("wallet", "platform", req(**fields))


def test_too_many_key_ids_is_bad_request(limits: Limits) -> None:
    """More key_IDs than max_key_ids_per_request is 400."""
    kme = KmeCore({"A": ["a"], "B": ["b"]}, [("A", "B")], Limits(max_key_ids_per_request=2))
    many = KeyIDsRequest.model_validate({"key_IDs": [{"key_ID": str(uuid.uuid4())}] * 3})
    with pytest.raises(KeySupplyBadRequest, match="too many"):
        kme.dec_keys("b", "a", many)


def test_outstanding_keys_are_bounded(fill_pools: object) -> None:
    """Beyond max_issued_keys the oldest unfetched key is evicted (then unknown, 400)."""
    kme = KmeCore({"A": ["a"], "B": ["b"]}, [("A", "B")], Limits(max_issued_keys=2))
    kme.add_material(("A", "B"), bytes(256), bytes(256))
    first, second, third = (kme.enc_keys("a", "b", req())[0] for _ in range(3))
    with pytest.raises(KeySupplyBadRequest):
        kme.dec_keys("b", "a", ids(first))
    assert kme.dec_keys("b", "a", ids(second, third)) == [second, third]


@pytest.mark.parametrize(
    "data",
    [
        {"number": True},
        {"number": "1"},
        {"number": 1.0},
        {"size": None, "numbr": 1},
        {"additional_slave_SAE_IDs": "hospital"},
        {"extension_mandatory": {"a": 1}},
        [],
        "x",
    ],
)
def test_malformed_key_request_is_bad_request(data: object) -> None:
    """Wrong types, unknown fields and non-objects are 400, never coerced."""
    with pytest.raises(KeySupplyBadRequest) as info:
        parse_key_request(data)
    assert error_body(info.value)["details"]


@pytest.mark.parametrize(
    "data",
    [
        {"key_IDs": []},
        {"key_IDs": [{"key_ID": "not-a-uuid"}]},
        {"key_IDs": [{"key_ID": "{12345678-1234-1234-1234-123456789abc}"}]},
        {"key_IDs": [{"key_ID": 5}]},
        {"key_IDs": [{}]},
        {"key_IDs": "x"},
        {},
        None,
    ],
)
def test_malformed_key_ids_are_bad_request(data: object) -> None:
    """Key IDs must be a non-empty list of canonical UUID strings."""
    with pytest.raises(KeySupplyBadRequest):
        parse_key_ids(data)


# --- material and the two copies -----------------------------------------------------


def test_disagreeing_copies_fail_closed(empty_core: KmeCore) -> None:
    """If Alice's and Bob's copies differ, nothing is served and the pool is discarded."""
    alice = os.urandom(256)
    bob = bytes([alice[0] ^ 1]) + alice[1:]
    empty_core.add_material(WP, alice, bob)
    with pytest.raises(KeyUnavailable, match="check failed"):
        empty_core.enc_keys("wallet", "platform", req())
    info = empty_core.link_info(WP)
    assert (info.available_bits, info.mismatches, info.outstanding_keys) == (0, 1, 0)


def test_relay_copies_are_checked_too(empty_core: KmeCore) -> None:
    """A disagreeing pad on a multicast relay link also fails closed."""
    good = os.urandom(64)
    empty_core.add_material(PH, good, good)
    empty_core.add_material(PX, good, bytes(64))
    with pytest.raises(KeyUnavailable):
        empty_core.enc_keys("platform", "hospital", req(additional_slave_SAE_IDs=["pharmacy"]))
    assert empty_core.link_info(PX).mismatches == 1


def test_material_beyond_capacity_is_dropped(empty_core: KmeCore) -> None:
    """add_material keeps at most max_pool_bits and says how much it kept."""
    capacity = empty_core.limits.max_pool_bits // 8
    assert empty_core.add_material(WP, bytes(capacity + 10), bytes(capacity + 10)) == capacity
    assert empty_core.add_material(WP, b"x", b"x") == 0


def test_copies_of_unequal_length_are_refused(empty_core: KmeCore) -> None:
    """Alice's and Bob's round outputs must have the same length."""
    with pytest.raises(KeySupplyBadRequest):
        empty_core.add_material(WP, b"ab", b"a")


def test_links_are_named_as_configured(empty_core: KmeCore) -> None:
    """A link is (Alice's site, Bob's site); the reversed pair or an unknown one is refused."""
    with pytest.raises(KeySupplyBadRequest):
        empty_core.add_material(("KME_PLATFORM", "KME_WALLET"), b"a", b"a")
    with pytest.raises(KeySupplyBadRequest):
        empty_core.available_bits(("KME_WALLET", "KME_HOSPITAL"))


def test_flush_empties_the_pool_but_keeps_issued_keys(core: KmeCore) -> None:
    """flush discards unissued material; keys already issued stay fetchable."""
    keys = core.enc_keys("wallet", "platform", req())
    core.flush(WP)
    assert core.available_bits(WP) == 0
    assert core.dec_keys("platform", "wallet", ids(*keys)) == keys


# --- the key state table -------------------------------------------------------------


def test_state_table_transitions() -> None:
    """The table walks available -> issued -> (partly fetched) -> gone."""
    issued = next_state(KeyState.AVAILABLE, KeyEvent.ISSUE)
    assert issued is KeyState.ISSUED
    partly = next_state(issued, KeyEvent.FETCH)
    assert next_state(partly, KeyEvent.FETCH_LAST) is KeyState.GONE
    assert next_state(issued, KeyEvent.FETCH_LAST) is KeyState.GONE


@pytest.mark.parametrize(
    ("state", "event"),
    [pair for pair in itertools.product(KeyState, KeyEvent) if pair not in KEY_TRANSITIONS],
)
def test_transitions_not_in_the_table_raise(state: KeyState, event: KeyEvent) -> None:
    """Every (state, event) pair missing from the table is an error, GONE is final."""
    with pytest.raises(KeyStateError):
        next_state(state, event)


def test_gone_is_final() -> None:
    """No event leaves GONE."""
    assert not [pair for pair in KEY_TRANSITIONS if pair[0] is KeyState.GONE]


# --- values, construction ------------------------------------------------------------


def test_key_container_is_base64_with_uuid_strings() -> None:
    """Key container (§6.3): key_ID as UUID text, key as standard base64."""
    key = QKey(uuid.UUID(int=1), b"\xff\x00")
    assert key_container([key]) == {
        "keys": [{"key_ID": "00000000-0000-0000-0000-000000000001", "key": "/wA="}]
    }


def test_error_body_hides_internal_errors() -> None:
    """Internal errors leave as a bare message; client errors keep their details."""
    assert error_body(PatientKeyError("secret detail")) == {
        "message": "internal error",
        "details": [],
    }
    assert error_body(PayloadTooLarge("big", details=[{"max": 1}])) == {
        "message": "big",
        "details": [{"max": 1}],
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"key_size": 100},
        {"min_key_size": 512, "key_size": 256},
        {"max_key_per_request": 0},
        {"max_SAE_ID_count": -1},
        {"max_pool_bits": 512, "max_key_size": 1024},
        {"max_body_bytes": True},
    ],
)
def test_inconsistent_limits_are_refused(fields: dict[str, int]) -> None:
    """Limits validate themselves on creation."""
    with pytest.raises(ConfigError):
        Limits(**fields)


@pytest.mark.parametrize(
    ("sites", "links"),
    [
        ({}, []),
        ({"A": ["a"], "B": ["a"]}, []),
        ({"A": ["a"]}, [("A", "B")]),
        ({"A": ["a"]}, [("A", "A")]),
        ({"A": ["a"], "B": ["b"]}, [("A", "B"), ("B", "A")]),
    ],
)
def test_inconsistent_topology_is_refused(
    sites: dict[str, list[str]], links: list[tuple[str, str]]
) -> None:
    """No sites, an SAE at two sites, unknown, self or duplicate links are ConfigError."""
    with pytest.raises(ConfigError):
        KmeCore(sites, links)


def test_repeating_key_id_factory_is_an_internal_error() -> None:
    """key_IDs are unique; a factory that repeats one is a bug, not a silent overwrite."""
    kme = KmeCore({"A": ["a"], "B": ["b"]}, [("A", "B")], key_id_factory=lambda: uuid.UUID(int=7))
    kme.add_material(("A", "B"), bytes(128), bytes(128))
    kme.enc_keys("a", "b", req())
    with pytest.raises(PatientKeyError):
        kme.enc_keys("a", "b", req())


# --- property: whatever the request sequence, slaves get the masters' keys ------------


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [("wallet", "platform"), ("platform", "wallet"), ("platform", "hospital")]
            ),
            st.integers(1, 4),
            st.sampled_from([64, 128, 256, 512]),
        ),
        max_size=12,
    )
)
def test_every_issued_key_reaches_its_slave_once(
    requests: list[tuple[tuple[str, str], int, int]],
) -> None:
    """For any sequence of Get key calls, each slave fetches exactly the master's keys, once."""
    kme = KmeCore({"W": ["wallet"], "P": ["platform"], "H": ["hospital"]}, [("W", "P"), ("P", "H")])
    for link in kme.link_ids:
        material = os.urandom(2048)
        kme.add_material(link, material, material)
    issued: list[tuple[str, str, list[QKey]]] = []
    for (master, slave), number, size in requests:
        try:
            issued.append(
                (master, slave, kme.enc_keys(master, slave, req(number=number, size=size)))
            )
        except KeyUnavailable:
            continue
    for master, slave, keys in reversed(issued):
        assert kme.dec_keys(slave, master, ids(*keys)) == keys
        with pytest.raises(KeySupplyBadRequest):
            kme.dec_keys(slave, master, ids(keys[0]))
    assert all(kme.link_info(link).outstanding_keys == 0 for link in kme.link_ids)
