"""Protocol messages: strict parsing, round trips, limits."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.errors import InvalidInput, PayloadTooLarge
from patientkey.protocol import messages
from patientkey.protocol.messages import (
    MESSAGE_TYPES,
    BindRequest,
    DispenseRequest,
    FetchRequest,
    decode_message,
    encode_message,
)


def _bind() -> BindRequest:
    return BindRequest(
        user_id="u-1", his_id="his-1", patient_id="P-1", nonce=os.urandom(32), proof=os.urandom(32)
    )


def test_round_trip():
    """A message encodes to JSON and decodes back equal."""
    message = _bind()
    assert decode_message(encode_message(message), BindRequest) == message


def test_binary_fields_are_base64url_without_padding():
    """Bytes travel as unpadded base64url strings."""
    body = json.loads(encode_message(_bind()))
    assert isinstance(body["nonce"], str)
    assert "=" not in body["nonce"]
    assert len(body["nonce"]) == 43


def test_message_types_are_unique_and_complete():
    """Every message type name maps to exactly one model."""
    assert all(name == cls.MTYPE for name, cls in MESSAGE_TYPES.items())
    assert len(MESSAGE_TYPES) == len({cls.MTYPE for cls in MESSAGE_TYPES.values()}) == 32
    documented = messages.__doc__ or ""
    assert all(cls.__name__ in documented for cls in MESSAGE_TYPES.values())


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": "a b"}, "user_id"),
        ({"user_id": "x" * 200}, "user_id"),
        ({"nonce": "AAAA"}, "nonce"),
        ({"nonce": "not base64!"}, "nonce"),
        ({"proof": 5}, "proof"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(patch, where):
    """A malformed field gives InvalidInput that names it."""
    body = json.loads(encode_message(_bind()))
    body.update(patch)
    with pytest.raises(InvalidInput, match=where):
        decode_message(json.dumps(body).encode(), BindRequest)


def test_wrong_literal_is_refused():
    """Only the listed dispense actions are accepted."""
    with pytest.raises(InvalidInput, match="action"):
        decode_message(b'{"b_id":"b","his_id":"h","p_id":"p","action":"steal"}', DispenseRequest)


def test_oversized_payload_is_refused():
    """Payloads above the message limit are refused before parsing."""
    with pytest.raises(PayloadTooLarge):
        decode_message(b" " * (5 * 1024 * 1024), FetchRequest)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_invalid_input(payload):
    """Arbitrary bytes either parse or raise InvalidInput, nothing else."""
    with contextlib.suppress(InvalidInput):
        decode_message(payload, FetchRequest)
