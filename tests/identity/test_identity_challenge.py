"""The approval challenge and its canonical JSON (RFC 8785 without non-integer numbers)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.errors import InvalidInput, PayloadTooLarge
from patientkey.identity import ApprovalChallenge, canonical_json, new_nonce
from patientkey.identity.challenge import MAX_CANONICAL_BYTES, MAX_DEPTH, NONCE_LEN

DETAILS = [
    {
        "type": "health_record_access",
        "actions": ["view", "fetch"],
        "record_types": ["prescription"],
        "purpose": "pharmacy_dispense",
        "duration": 86400,
    }
]


def test_rfc8785_sorting_vector():
    """RFC 8785 §3.2.3: members sorted by UTF-16 code units (the emoji before U+FB33)."""
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical_json(value) == expected.encode("utf-8")


def test_string_escapes_follow_rfc8785():
    """Only quote, backslash and C0 controls are escaped; short forms where JSON has them."""
    value = ['"\\/\b\f\n\r\t\x00\x1f\x7f\u2028é']
    expected = '["\\"\\\\/\\b\\f\\n\\r\\t\\u0000\\u001f\x7f\u2028é"]'
    assert canonical_json(value) == expected.encode("utf-8")


def test_literals_integers_and_nesting():
    """true/false/null, integers in decimal, nested containers, no whitespace."""
    value = {"b": [True, False, None, 0, -1, 2**53 - 1], "a": {"z": [], "y": {}}}
    assert (
        canonical_json(value)
        == b'{"a":{"y":{},"z":[]},"b":[true,false,null,0,-1,9007199254740991]}'
    )


@pytest.mark.parametrize(
    "value",
    [
        [1.5],
        [1.0],
        [float("nan")],
        [2**53],
        [-(2**53)],
        {1: "non-string name"},
        ["\ud800"],
        {"\udc00": 1},
        [b"bytes"],
        [{1, 2}],
    ],
)
def test_values_outside_the_subset_are_refused(value):
    """Floats, unsafe integers, non-string names, lone surrogates and other types are refused."""
    with pytest.raises(InvalidInput):
        canonical_json(value)


def test_depth_and_size_limits():
    """Nesting beyond MAX_DEPTH and output beyond MAX_CANONICAL_BYTES are refused."""
    deep: list[object] = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(InvalidInput):
        canonical_json(deep)
    with pytest.raises(PayloadTooLarge):
        canonical_json(["x" * MAX_CANONICAL_BYTES])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
@settings(deadline=None)  # timing under a loaded parallel run is not the behaviour
def test_canonical_json_is_stable(value):
    """Parsing canonical JSON and canonicalizing again gives the same bytes."""
    data = canonical_json(value)
    assert canonical_json(json.loads(data)) == data


@given(st.dictionaries(st.text(max_size=8), st.integers(0, 9), max_size=8), st.randoms())
@settings(deadline=None)  # timing under a loaded parallel run is not the behaviour
def test_member_order_does_not_matter(value, rnd):
    """Whatever order the members arrive in, the canonical bytes are the same."""
    items = list(value.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(value)


def test_to_be_signed_layout():
    """to_be_signed is lp(label) ‖ lp(request id) ‖ lp(nonce) ‖ lp(canonical details)."""
    nonce = bytes(range(NONCE_LEN))
    challenge = ApprovalChallenge.create("req-1", DETAILS, nonce)
    details = canonical_json(DETAILS)
    expected = b"".join(
        struct.pack(">I", len(part)) + part for part in (b"label/v1", b"req-1", nonce, details)
    )
    assert challenge.to_be_signed(b"label/v1") == expected
    assert challenge.details == details
    assert challenge.authorization_details == DETAILS


def test_direct_construction_requires_canonical_details():
    """Details given as bytes must already be canonical RFC 9396 JSON."""
    nonce = new_nonce()
    good = canonical_json(DETAILS)
    assert ApprovalChallenge("req-1", nonce, good).details == good
    for bad in (
        json.dumps(DETAILS).encode(),  # whitespace
        b'[{"type":"a","type":"b"}]',  # duplicate member
        b'[{"type":"a","n":1.5}]',  # float
        b"not json",
        b'{"type":"a"}',  # not an array
        b"[]",  # empty
        b'[{"no_type":1}]',
    ):
        with pytest.raises(InvalidInput):
            ApprovalChallenge("req-1", nonce, bad)


def test_challenge_fields_are_checked():
    """Request id, nonce length and details shape are checked on creation."""
    for request_id in ("", "x" * 300, "a\x00b", 7):
        with pytest.raises(InvalidInput):
            ApprovalChallenge.create(request_id, DETAILS, new_nonce())  # type: ignore[arg-type]
    for nonce in (b"", b"x" * (NONCE_LEN - 1), "x" * NONCE_LEN):
        with pytest.raises(InvalidInput):
            ApprovalChallenge.create("req-1", DETAILS, nonce)  # type: ignore[arg-type]
    for details in ([], {"type": "x"}, [{"actions": []}], ["x"]):
        with pytest.raises(InvalidInput):
            ApprovalChallenge.create("req-1", details, new_nonce())  # type: ignore[arg-type]


def test_nonces_are_fresh():
    """Each nonce is NONCE_LEN random bytes, different every time."""
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == NONCE_LEN for n in nonces)
