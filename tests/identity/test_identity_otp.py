"""One-time codes by SMS or email: single use, expiry, attempts, gateways."""

from __future__ import annotations

import io
import json
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.errors import ConfigError, InvalidInput
from patientkey.identity import (
    ConsoleSink,
    FileSink,
    MemoryOtpStore,
    MemorySink,
    OneTimeCodes,
    OtpChannel,
    OtpParams,
    ProofRejected,
)
from patientkey.identity.otp import OtpMessage, new_code

KEY = bytes(range(32))
PHONE = "+4915112345678"


@pytest.fixture
def sink():
    return MemorySink()


@pytest.fixture
def store():
    return MemoryOtpStore()


@pytest.fixture
def codes(store, sink, clock):
    return OneTimeCodes(KEY, store, sink, clock=clock)


def _send(codes, sink, *, user="patient-1", request="req-1", channel=OtpChannel.SMS, to=PHONE):
    challenge = codes.send(user_id=user, request_id=request, channel=channel, destination=to)
    return challenge, sink.messages[-1].code


def test_code_is_delivered_and_only_its_mac_is_kept(codes, sink, store):
    """The gateway gets the code; the stored challenge holds a MAC, never the code."""
    challenge, code = _send(codes, sink)
    message = sink.messages[-1]
    assert message.destination == PHONE
    assert message.channel is OtpChannel.SMS
    assert code in message.text
    assert len(code) == 6
    assert code.isdigit()
    stored = store.get(challenge.challenge_id)
    assert stored == challenge
    assert code.encode() not in stored.code_mac
    assert code not in repr(stored)
    assert code not in repr(message)


def test_right_code_verifies_once(codes, sink):
    """The code verifies once; the same code again is refused (single use)."""
    challenge, code = _send(codes, sink)
    ids = {"challenge_id": challenge.challenge_id, "user_id": "patient-1", "request_id": "req-1"}
    codes.verify(**ids, code=code)
    with pytest.raises(ProofRejected) as info:
        codes.verify(**ids, code=code)
    assert info.value.reason == "otp: code already used"


def test_attempts_are_limited(codes, sink):
    """Wrong codes spend attempts; once spent, even the right code is refused."""
    challenge, code = _send(codes, sink)
    ids = {"challenge_id": challenge.challenge_id, "user_id": "patient-1", "request_id": "req-1"}
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(codes.params.max_attempts):
        with pytest.raises(ProofRejected):
            codes.verify(**ids, code=wrong)
    with pytest.raises(ProofRejected) as info:
        codes.verify(**ids, code=code)
    assert info.value.reason == "otp: attempts spent"


def test_malformed_code_spends_an_attempt(codes, sink, store):
    """A malformed code is a rejected attempt like a wrong one."""
    challenge, _code = _send(codes, sink)
    ids = {"challenge_id": challenge.challenge_id, "user_id": "patient-1", "request_id": "req-1"}
    for bad in ("12345", "1234567", "12345a", "١٢٣٤٥٦", None):
        with pytest.raises(ProofRejected):
            codes.verify(**ids, code=bad)
    assert store.get(challenge.challenge_id).attempts == 5


def test_expired_code_is_refused(codes, sink, clock):
    """At the end of its lifetime the code is refused."""
    challenge, code = _send(codes, sink)
    clock.advance(codes.params.ttl_seconds)
    with pytest.raises(ProofRejected) as info:
        codes.verify(
            challenge_id=challenge.challenge_id, user_id="patient-1", request_id="req-1", code=code
        )
    assert info.value.reason == "otp: code expired"


def test_code_just_before_expiry_verifies(codes, sink, clock):
    """One second before the end of its lifetime the code still verifies."""
    challenge, code = _send(codes, sink)
    clock.advance(codes.params.ttl_seconds - 1)
    codes.verify(
        challenge_id=challenge.challenge_id, user_id="patient-1", request_id="req-1", code=code
    )


def test_code_is_bound_to_user_request_and_challenge(codes, sink):
    """The code of one user, request or challenge is refused for another."""
    challenge, code = _send(codes, sink)
    other, _ = _send(codes, sink, request="req-2")
    for ids in (
        {"challenge_id": challenge.challenge_id, "user_id": "patient-2", "request_id": "req-1"},
        {"challenge_id": challenge.challenge_id, "user_id": "patient-1", "request_id": "req-2"},
        {"challenge_id": other.challenge_id, "user_id": "patient-1", "request_id": "req-2"},
        {"challenge_id": "no-such-challenge", "user_id": "patient-1", "request_id": "req-1"},
        {"challenge_id": "x" * 1000, "user_id": "patient-1", "request_id": "req-1"},
    ):
        with pytest.raises(ProofRejected):
            codes.verify(**ids, code=code)


class LosingStore(MemoryOtpStore):
    """A store where a concurrent request always changes the challenge first."""

    def swap(self, expected, new):
        return False


def test_concurrent_attempt_is_refused(sink, clock):
    """If the attempt cannot be recorded, the code is not even compared."""
    codes = OneTimeCodes(KEY, LosingStore(), sink, clock=clock)
    challenge, code = _send(codes, sink)
    with pytest.raises(ProofRejected) as info:
        codes.verify(
            challenge_id=challenge.challenge_id, user_id="patient-1", request_id="req-1", code=code
        )
    assert info.value.reason == "otp: concurrent attempt"


def test_another_key_cannot_verify(store, sink, clock):
    """The MAC depends on the platform key: a code cannot be checked under another key."""
    codes = OneTimeCodes(KEY, store, sink, clock=clock)
    challenge, code = _send(codes, sink)
    other = OneTimeCodes(bytes(32), store, sink, clock=clock)
    with pytest.raises(ProofRejected):
        other.verify(
            challenge_id=challenge.challenge_id, user_id="patient-1", request_id="req-1", code=code
        )


@given(digits=st.sampled_from([6, 7, 8]))
@settings(deadline=None)  # timing under a loaded parallel run is not the behaviour
def test_codes_have_the_configured_length(digits):
    """Codes are exactly ``digits`` ASCII digits, leading zeros kept."""
    code = new_code(digits)
    assert len(code) == digits
    assert code.isascii()
    assert code.isdigit()


def test_eight_digit_codes(store, sink, clock):
    """With 8 digits configured, 8-digit codes are sent and verified."""
    codes = OneTimeCodes(KEY, store, sink, params=OtpParams(digits=8), clock=clock)
    challenge, code = _send(codes, sink, channel=OtpChannel.EMAIL, to="erika@example.org")
    assert len(code) == 8
    codes.verify(
        challenge_id=challenge.challenge_id, user_id="patient-1", request_id="req-1", code=code
    )


def test_destinations_and_configuration_are_checked(store, sink, codes):
    """Bad destinations, short keys and out-of-range parameters are refused up front."""
    for channel, to in ((OtpChannel.SMS, "0151 123"), (OtpChannel.EMAIL, "not-an-address")):
        with pytest.raises(InvalidInput):
            codes.send(user_id="p", request_id="r", channel=channel, destination=to)
    assert sink.messages == []
    with pytest.raises(ConfigError):
        OneTimeCodes(b"short", store, sink)
    for bad in ({"digits": 5}, {"digits": 9}, {"ttl_seconds": 10}, {"max_attempts": 0}):
        with pytest.raises(InvalidInput):
            OtpParams(**bad)


def test_rejections_never_contain_the_code(codes, sink):
    """A rejection's text, repr and problem document hold neither the code nor the guess."""
    challenge, code = _send(codes, sink)
    with pytest.raises(ProofRejected) as info:
        codes.verify(
            challenge_id=challenge.challenge_id,
            user_id="patient-1",
            request_id="req-1",
            code="999999" if code != "999999" else "999998",
        )
    error = info.value
    for text in (str(error), repr(error), error.reason, json.dumps(error.to_problem())):
        assert code not in text
        assert "99999" not in text


def test_console_sink_writes_the_message():
    """The console sink writes channel, destination and text to its stream."""
    stream = io.StringIO()
    ConsoleSink(stream).send(OtpMessage(OtpChannel.SMS, PHONE, "123456", 300))
    written = stream.getvalue()
    assert PHONE in written
    assert "123456" in written
    assert written.endswith("\n")


def test_file_sink_appends_private_json_lines(tmp_path):
    """The file sink appends one JSON line per message to a 0600 file."""
    path = tmp_path / "outbox.jsonl"
    sink = FileSink(path)
    sink.send(OtpMessage(OtpChannel.SMS, PHONE, "123456", 300))
    sink.send(OtpMessage(OtpChannel.EMAIL, "erika@example.org", "654321", 300))
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(m["channel"], m["to"], m["code"]) for m in lines] == [
        ("sms", PHONE, "123456"),
        ("email", "erika@example.org", "654321"),
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_memory_store_purges_expired(codes, sink, store, clock):
    """Expired challenges can be purged from the in-memory store."""
    challenge, _ = _send(codes, sink)
    assert store.purge(clock()) == 0
    assert store.purge(challenge.expires_at) == 1
    assert store.get(challenge.challenge_id) is None
