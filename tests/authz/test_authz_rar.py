"""RFC 9396 authorization_details of type health_record_access: parsing and narrowing."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from authz_helpers import details, entry
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from patientkey.authz.errors import InvalidAuthorizationDetails
from patientkey.authz.rar import (
    ACTIONS,
    MAX_DETAILS,
    MAX_DURATION,
    MAX_RECORD_IDS,
    RECORD_TYPES,
    HealthRecordAccess,
    RecordRef,
    allows,
    covers,
    dump_details,
    narrow,
    parse_authorization_details,
    parse_duration,
)

# --- parsing -----------------------------------------------------------------------------


def test_parse_puts_values_in_canonical_order():
    """Actions, record types and ids come back in one canonical order."""
    (parsed,) = details(
        entry(
            actions=["use", "view"],
            record_types=["report", "prescription"],
            records={"ids": ["b", "a"]},
        )
    )
    assert parsed.actions == ("view", "use")
    assert parsed.record_types == ("prescription", "report")
    assert parsed.records.ids == ("a", "b")


def test_json_text_and_decoded_json_parse_alike_and_round_trip():
    """The JSON parameter text and its decoded value give equal details; dump parses back."""
    raw = [entry(records={"his_id": "HIS-1", "from": "2024-01-01", "to": "2024-06-30"})]
    from_text = parse_authorization_details(json.dumps(raw))
    assert from_text == parse_authorization_details(raw)
    assert parse_authorization_details(dump_details(from_text)) == from_text
    assert dump_details(from_text)[0]["records"] == {
        "his_id": "HIS-1",
        "from": "2024-01-01",
        "to": "2024-06-30",
    }


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (3600, 3600),
        ("PT1H", 3600),
        ("P30D", 30 * 86400),
        ("P2W", 14 * 86400),
        ("P1DT2H3M4S", 93784),
    ],
)
def test_duration_accepts_seconds_and_iso8601(value, seconds):
    """Duration is seconds or an ISO 8601 duration of weeks/days/hours/minutes/seconds."""
    assert parse_duration(value) == seconds
    assert details(entry(duration=value))[0].duration == seconds


@pytest.mark.parametrize(
    "value", [0, -5, True, 1.5, "3600", "P1M", "P1Y", "P", "PT", "P1DT", "PT0S", MAX_DURATION + 1]
)
def test_duration_refuses_ambiguous_or_out_of_range(value):
    """Months and years (variable length), zero, floats, bare numbers in strings are refused."""
    with pytest.raises(InvalidAuthorizationDetails):
        details(entry(duration=value))


def _without(key: str) -> dict:
    body = entry()
    del body[key]
    return body


BAD = {
    "not JSON": "{not json",
    "NaN": "NaN",
    "an object": json.dumps(entry()),
    "empty array": "[]",
    "too many": json.dumps([entry()] * (MAX_DETAILS + 1)),
    "not an object": json.dumps([1]),
    "type missing": json.dumps([_without("type")]),
    "unknown type": json.dumps([entry(type="payment_initiation")]),
    "unknown field": json.dumps([entry(locations=["https://x"])]),
    "unknown records field": json.dumps([entry(records={"ids": ["a"], "all": True})]),
    "no selection": json.dumps([entry(records={})]),
    "unknown action": json.dumps([entry(actions=["view", "sell"])]),
    "repeated action": json.dumps([entry(actions=["view", "view"])]),
    "no action": json.dumps([entry(actions=[])]),
    "unknown record type": json.dumps([entry(record_types=["imaging"])]),
    "actions not a list": json.dumps([entry(actions="view")]),
    "from after to": json.dumps([entry(records={"from": "2024-02-01", "to": "2024-01-01"})]),
    "impossible date": json.dumps([entry(records={"from": "2024-02-30"})]),
    "date as number": json.dumps([entry(records={"from": 20240101})]),
    "repeated id": json.dumps([entry(records={"ids": ["a", "a"]})]),
    "too many ids": json.dumps(
        [entry(records={"ids": [f"P{i}" for i in range(MAX_RECORD_IDS + 1)]})]
    ),
    "bad id": json.dumps([entry(records={"ids": ["../etc"]})]),
    "purpose missing": json.dumps([_without("purpose")]),
    "purpose malformed": json.dumps([entry(purpose="Pharmacy Dispense")]),
    "two purposes": json.dumps([entry(), entry(purpose="research")]),
    "too large": json.dumps([entry(records={"ids": ["x" * 100] * 200})]),
    "deep": "[" * 5000 + "]" * 5000,
}


@pytest.mark.parametrize("raw", BAD.values(), ids=BAD.keys())
def test_malformed_details_raise_the_rfc9396_error(raw):
    """Anything but a valid array of one purpose is invalid_authorization_details (§5)."""
    with pytest.raises(InvalidAuthorizationDetails) as caught:
        parse_authorization_details(raw)
    assert caught.value.error == "invalid_authorization_details"
    assert caught.value.status == 400


def test_error_text_does_not_echo_input():
    """The error names the place and the rule, not the value sent."""
    with pytest.raises(InvalidAuthorizationDetails) as caught:
        parse_authorization_details([entry(purpose="<script>" * 10)])
    assert "<script>" not in caught.value.detail


# --- selection -------------------------------------------------------------------------


def test_selector_requires_every_constraint():
    """A record is selected when it meets ids, hospital and date range together."""
    (grant,) = details(
        entry(records={"his_id": "HIS-1", "ids": ["P-1"], "from": "2024-01-01", "to": "2024-12-31"})
    )
    record = RecordRef("prescription", "HIS-1", "P-1", date(2024, 5, 1))
    assert grant.allows("view", record)
    assert not grant.allows("view", RecordRef("prescription", "HIS-2", "P-1", date(2024, 5, 1)))
    assert not grant.allows("view", RecordRef("prescription", "HIS-1", "P-2", date(2024, 5, 1)))
    assert not grant.allows("view", RecordRef("prescription", "HIS-1", "P-1", date(2025, 1, 1)))
    assert not grant.allows("view", RecordRef("report", "HIS-1", "P-1", date(2024, 5, 1)))
    assert not grant.allows("share", record)


def test_date_range_never_selects_a_record_of_unknown_date():
    """The platform does not store dates: a date-range grant fails closed without one."""
    (grant,) = details(entry(records={"from": "2024-01-01"}))
    assert not grant.allows("view", RecordRef("prescription", "HIS-1", "P-1", None))
    assert grant.allows("view", RecordRef("prescription", "HIS-1", "P-1", date(2024, 1, 1)))


# --- narrowing ---------------------------------------------------------------------------


def _sel(ids=("P-1",), start="2024-01-01", end="2024-12-31", his="HIS-1"):
    body = {"his_id": his, "ids": list(ids), "from": start, "to": end}
    return {key: value for key, value in body.items() if value is not None}


REQUESTED = details(
    entry(
        record_types=["prescription", "report"],
        records={
            "his_id": "HIS-1",
            "ids": ["P-1", "P-2"],
            "from": "2024-01-01",
            "to": "2024-12-31",
        },
        actions=["view", "fetch", "download", "use"],
        purpose="insurer_claim",
        duration="P30D",
    )
)
NARROWER = {
    "fewer actions": {"actions": ["view"]},
    "fewer record types": {"record_types": ["report"]},
    "fewer ids": {
        "records": {"his_id": "HIS-1", "ids": ["P-2"], "from": "2024-01-01", "to": "2024-12-31"}
    },
    "narrower range": {
        "records": {"his_id": "HIS-1", "ids": ["P-1"], "from": "2024-03-01", "to": "2024-03-31"}
    },
    "shorter": {"duration": "P1D"},
}
BROADER = {
    "another action": {"actions": ["view", "share"]},
    "another record type": {"record_types": ["prescription", "report"], "purpose": "research"},
    "another id": {
        "records": {
            "his_id": "HIS-1",
            "ids": ["P-1", "P-3"],
            "from": "2024-01-01",
            "to": "2024-12-31",
        }
    },
    "any hospital": {"records": _sel(his=None)},
    "wider range": {
        "records": {"his_id": "HIS-1", "ids": ["P-1"], "from": "2023-01-01", "to": "2024-12-31"}
    },
    "open range": {"records": _sel(end=None)},
    "longer": {"duration": "P31D"},
    "no duration": {"duration": None},
}


def _variant(changes: dict) -> tuple[HealthRecordAccess, ...]:
    body = REQUESTED[0].to_json()
    body.update(changes)
    body = {key: value for key, value in body.items() if value is not None}
    return parse_authorization_details([body])


@pytest.mark.parametrize("changes", NARROWER.values(), ids=NARROWER.keys())
def test_narrower_approval_is_granted_as_approved(changes):
    """Fewer actions, types, records or a shorter period: granted as the patient approved."""
    approved = _variant(changes)
    assert narrow(REQUESTED, approved) == approved


@pytest.mark.parametrize("changes", BROADER.values(), ids=BROADER.keys())
def test_broader_approval_is_refused(changes):
    """Anything the request did not ask for is invalid_authorization_details."""
    with pytest.raises(InvalidAuthorizationDetails):
        narrow(REQUESTED, _variant(changes))


def test_approving_everything_and_dropping_objects():
    """None approves the request as is; an approval may drop whole objects, not all."""
    two = details(entry(), entry(actions=["view"], records={"his_id": "HIS-2"}))
    assert narrow(two, None) == two
    assert narrow(two, two[1:]) == two[1:]
    with pytest.raises(InvalidAuthorizationDetails):
        narrow(two, ())


# --- properties ------------------------------------------------------------------------

IDS = ["P-1", "P-2", "P-3", "P-4"]
HOSPITALS = ["HIS-1", "HIS-2"]
DAYS = [date(2024, 1, 1) + timedelta(days=n) for n in range(0, 60, 7)]


@st.composite
def selectors(draw):
    body = {}
    if draw(st.booleans()):
        body["ids"] = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=4, unique=True))
    if draw(st.booleans()):
        body["his_id"] = draw(st.sampled_from(HOSPITALS))
    if draw(st.booleans()) or not body:
        start, end = sorted(draw(st.lists(st.sampled_from(DAYS), min_size=2, max_size=2)))
        if draw(st.booleans()):
            body["from"] = start.isoformat()
        if draw(st.booleans()) or "from" not in body:
            body["to"] = end.isoformat()
    return body


@st.composite
def access(draw):
    return entry(
        record_types=draw(st.lists(st.sampled_from(RECORD_TYPES), min_size=1, unique=True)),
        records=draw(selectors()),
        actions=draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=4, unique=True)),
        duration=draw(st.one_of(st.none(), st.integers(1, 10**6))),
    )


records = st.builds(
    RecordRef,
    st.sampled_from(RECORD_TYPES),
    st.sampled_from(HOSPITALS),
    st.sampled_from(IDS),
    st.one_of(st.none(), st.sampled_from(DAYS)),
)


def _clean(body):
    return {key: value for key, value in body.items() if value is not None}


@st.composite
def mutated(draw, body):
    """A copy of ``body`` with one constraint replaced at random (narrower or broader)."""
    body = {**body, "records": dict(body["records"])}
    other = draw(access())
    field = draw(st.sampled_from(["actions", "record_types", "duration", "records", "ids"]))
    if field == "ids":
        if "ids" in other["records"]:
            body["records"]["ids"] = other["records"]["ids"]
        else:
            body["records"].pop("ids", None)
        if not body["records"]:
            body["records"] = other["records"]
    else:
        body[field] = other[field]
    return body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(access(), min_size=1, max_size=3),
    st.data(),
    st.lists(st.tuples(st.sampled_from(ACTIONS), records), min_size=1, max_size=20),
)
def test_narrowing_never_widens(requested_raw, data, uses):
    """If narrow() accepts an approval, every use it allows the request allowed too."""
    requested = parse_authorization_details([_clean(b) for b in requested_raw])
    approved_raw = data.draw(
        st.lists(
            st.one_of(access(), st.sampled_from(requested_raw).flatmap(mutated)),
            min_size=1,
            max_size=3,
        )
    )
    approved = parse_authorization_details([_clean(b) for b in approved_raw])
    try:
        granted = narrow(requested, approved)
    except InvalidAuthorizationDetails:
        event("refused")
        return
    event("granted")
    for action, record in uses:
        if allows(granted, action, record):
            assert allows(requested, action, record)
    for approved_entry in granted:
        durations = [r.duration for r in requested if covers(r, approved_entry)]
        assert durations
        if all(d is not None for d in durations):
            assert approved_entry.duration is not None
            assert approved_entry.duration <= max(d for d in durations if d is not None)


@settings(max_examples=200, deadline=None)
@given(access(), st.data())
def test_narrowing_by_removal_is_always_accepted(requested_raw, data):
    """Dropping actions, types or ids, or shortening the duration, is always grantable."""
    requested = parse_authorization_details([_clean(requested_raw)])
    body = requested[0].to_json()
    body["actions"] = data.draw(st.lists(st.sampled_from(body["actions"]), min_size=1, unique=True))
    body["record_types"] = data.draw(
        st.lists(st.sampled_from(body["record_types"]), min_size=1, unique=True)
    )
    if "ids" in body["records"]:
        body["records"]["ids"] = data.draw(
            st.lists(st.sampled_from(body["records"]["ids"]), min_size=1, unique=True)
        )
    if "his_id" not in body["records"]:
        body["records"]["his_id"] = data.draw(st.sampled_from(HOSPITALS))
    if "duration" in body:
        body["duration"] = data.draw(st.integers(1, body["duration"]))
    approved = parse_authorization_details([body])
    assert narrow(requested, approved) == approved


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
near_miss = st.fixed_dictionaries(
    {"type": st.sampled_from(["health_record_access", "x"])},
    optional={
        "record_types": st.lists(st.sampled_from([*RECORD_TYPES, "x", 1]), max_size=3),
        "records": st.dictionaries(
            st.sampled_from(["ids", "his_id", "from", "to", "x"]),
            st.one_of(
                json_values,
                st.lists(st.sampled_from(IDS)),
                st.sampled_from(["2024-01-01", "HIS-1"]),
            ),
            max_size=4,
        ),
        "actions": st.lists(st.sampled_from([*ACTIONS, "x"]), max_size=4),
        "purpose": st.sampled_from(["pharmacy_dispense", "", "X", 3]),
        "duration": st.one_of(json_values, st.sampled_from(["P1D", "PT1H", "P1M"])),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.lists(near_miss, max_size=3), st.text(max_size=50)))
def test_any_json_parses_or_raises_the_spec_error(value):
    """Any input gives details or invalid_authorization_details, never another exception."""
    for raw in (value, json.dumps(value, allow_nan=True) if not isinstance(value, str) else value):
        try:
            result = parse_authorization_details(raw)
        except InvalidAuthorizationDetails:
            continue
        assert isinstance(result, tuple)
        assert all(isinstance(item, HealthRecordAccess) for item in result)
