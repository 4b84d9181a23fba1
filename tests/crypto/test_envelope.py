"""Hop envelope: JWE compact, alg=dir, enc=A256GCM, with receiver, freshness and replay checks."""

from __future__ import annotations

import base64
import json
import logging
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwe
from joserfc.jwk import OctKey
from joserfc.registry import HeaderParameter

from patientkey.crypto import (
    MAX_ENVELOPE_PAYLOAD,
    EnvelopeOpener,
    OpenedEnvelope,
    ReplayCache,
    seal_envelope,
)
from patientkey.errors import CryptoError, InvalidInput, PayloadTooLarge

from ._helpers import assert_no_secret, error_texts

KEY = bytes.fromhex("8f" * 16 + "3c" * 16)
OTHER_KEY = os.urandom(32)
KID = "q.6d1f5a2c-3b4e-4f60-8a71-9c0d2e3f4a5b"
NOW = 1_767_225_600.0
PAYLOAD = os.urandom(4096)


def resolver(peer: str, kid: str) -> bytes | None:
    keys = {("wallet", KID): KEY, ("hospital", "h-kid"): OTHER_KEY}
    return keys.get((peer, kid))


def opener(**kwargs) -> EnvelopeOpener:
    return EnvelopeOpener("platform", resolver, **kwargs)


def seal(**overrides) -> str:
    args = {
        "key": KEY,
        "kid": KID,
        "sender": "wallet",
        "receiver": "platform",
        "mtype": "bind.request",
        "payload": PAYLOAD,
        "now": NOW,
    }
    args.update(overrides)
    return seal_envelope(**args)


def reason_of(token, op=None, now=NOW) -> str:
    with pytest.raises(CryptoError) as info:
        (op or opener()).open(token, now=now)
    return info.value.reason


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_round_trip():
    """A sealed envelope opens to the same payload and header fields."""
    token = seal()
    got = opener().open(token, now=NOW)
    assert got.payload == PAYLOAD
    assert (got.sender, got.receiver, got.mtype, got.kid) == (
        "wallet",
        "platform",
        "bind.request",
        KID,
    )
    assert got.iat == int(NOW)
    assert len(got.jti) == 32
    assert int(got.jti, 16) >= 0


def test_token_is_standard_jwe_compact():
    """The token is a JWE compact serialization that joserfc opens with the hop key."""
    token = seal()
    header_seg, ek, iv, _ct, tag = token.split(".")
    assert ek == ""
    header = json.loads(base64.urlsafe_b64decode(header_seg + "=" * (-len(header_seg) % 4)))
    assert list(header) == ["alg", "enc", "kid", "snd", "rcv", "mty", "jti", "iat"]
    assert (header["alg"], header["enc"]) == ("dir", "A256GCM")
    assert len(iv) == 16
    assert len(tag) == 22
    registry = jwe.JWERegistry(
        header_registry={
            name: HeaderParameter(name, kind, True)
            for name, kind in [
                ("snd", "str"),
                ("rcv", "str"),
                ("mty", "str"),
                ("jti", "str"),
                ("iat", "int"),
            ]
        },
        algorithms=["dir", "A256GCM"],
    )
    assert (
        jwe.decrypt_compact(token, OctKey.import_key(KEY), registry=registry).plaintext == PAYLOAD
    )


def test_bytes_token_is_accepted():
    """``open`` accepts the token as ASCII bytes as well as str."""
    assert opener().open(seal().encode(), now=NOW).payload == PAYLOAD


def test_each_message_gets_fresh_jti_and_iv():
    """Two seals of the same payload differ (fresh jti and IV)."""
    a, b = seal(), seal()
    assert a != b
    assert a.split(".")[2] != b.split(".")[2]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_changed_byte_is_rejected(data):
    """Changing any byte anywhere in the token raises CryptoError and nothing else."""
    token = seal(payload=b"short payload").encode()
    pos = data.draw(st.integers(0, len(token) - 1), label="position")
    delta = data.draw(st.integers(1, 255), label="xor")
    bad = bytearray(token)
    bad[pos] ^= delta
    with pytest.raises(CryptoError):
        opener().open(bytes(bad), now=NOW)


@settings(max_examples=100, deadline=None)
@given(junk=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_malformed_tokens_raise_only_crypto_error(junk):
    """Arbitrary bytes or text as a token raise CryptoError, never another exception."""
    with pytest.raises(CryptoError):
        opener().open(junk, now=NOW)


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.text(alphabet="ABCabc019-_=", max_size=40), min_size=5, max_size=5))
def test_five_part_junk_raises_only_crypto_error(parts):
    """Five dot-separated base64url-looking parts that are not a valid JWE raise CryptoError."""
    with pytest.raises(CryptoError):
        opener().open(".".join(parts), now=NOW)


def test_rewritten_header_is_rejected():
    """A re-encoded header (another receiver) with the original ciphertext fails authentication."""
    token = seal()
    header_seg, *rest = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_seg + "=" * (-len(header_seg) % 4)))
    header["mty"] = "grant.issue"
    assert reason_of(".".join([b64(header), *rest])) == "envelope: authentication failed"


def test_replay_is_rejected():
    """The same token opened twice within the window is rejected the second time."""
    op = opener()
    token = seal()
    op.open(token, now=NOW)
    with pytest.raises(CryptoError) as info:
        op.open(token, now=NOW + 10)
    assert info.value.reason == "envelope: replayed jti"


def test_same_jti_from_another_sender_is_not_a_replay():
    """The replay cache is keyed by (sender, jti)."""
    op = EnvelopeOpener("platform", resolver)
    op.open(seal(jti="same"), now=NOW)
    op.open(seal(jti="same", key=OTHER_KEY, kid="h-kid", sender="hospital"), now=NOW)


def test_failed_open_does_not_record_jti():
    """A forged token does not consume its jti: the genuine one still opens afterwards."""
    op = opener()
    good = seal(jti="fixed-jti")
    forged = seal(jti="fixed-jti", key=os.urandom(32))
    with pytest.raises(CryptoError):
        op.open(forged, now=NOW)
    assert op.open(good, now=NOW).jti == "fixed-jti"


def test_wrong_receiver_is_rejected():
    """A message addressed to another party is rejected."""
    assert reason_of(seal(receiver="hospital")) == "envelope: addressed to another receiver"


def test_stale_iat_is_rejected_and_window_edge_accepted():
    """iat older than the window is rejected; exactly at the window edge it is accepted."""
    assert reason_of(seal(), now=NOW + 301) == "envelope: iat older than the window"
    assert opener().open(seal(), now=NOW + 300).payload == PAYLOAD


def test_future_iat_is_rejected_and_skew_edge_accepted():
    """iat further in the future than the allowed skew is rejected; at the skew it is accepted."""
    assert reason_of(seal(), now=NOW - 31) == (
        "envelope: iat in the future beyond the allowed skew"
    )
    assert opener().open(seal(), now=NOW - 30).payload == PAYLOAD


def test_unknown_kid_is_rejected():
    """A key ID the resolver does not know is rejected."""
    assert reason_of(seal(kid="q.unknown")) == "envelope: unknown key id"


def test_peer_cannot_use_its_key_in_another_peers_name():
    """A hospital's key does not open a token claiming to come from the wallet."""
    token = seal(key=OTHER_KEY, kid="h-kid", sender="wallet")
    assert reason_of(token) == "envelope: unknown key id"


def test_wrong_key_is_rejected():
    """A token sealed under another key with a known kid fails authentication."""
    assert reason_of(seal(key=OTHER_KEY)) == "envelope: authentication failed"


def test_resolver_returning_bad_key_is_rejected():
    """A resolver returning a key of the wrong length yields CryptoError, not a crash."""
    op = EnvelopeOpener("platform", lambda _peer, _kid: b"short")
    assert reason_of(seal(), op=op) == "envelope: resolved key is not 32 bytes"


@pytest.mark.parametrize(
    ("alg", "enc"), [("A256KW", "A256GCM"), ("dir", "A128GCM"), ("dir", "A256CBC-HS512")]
)
def test_other_algorithms_are_rejected(alg, enc):
    """Only alg=dir with enc=A256GCM is accepted, even when correctly encrypted."""
    header = {"alg": alg, "enc": enc, "kid": KID, "snd": "wallet", "rcv": "platform"}
    header |= {"mty": "m", "jti": "j", "iat": int(NOW)}
    key = KEY[:16] if enc == "A128GCM" else (KEY + KEY if enc == "A256CBC-HS512" else KEY)
    registry = jwe.JWERegistry(algorithms=[alg, enc], strict_check_header=False)
    token = jwe.encrypt_compact(header, b"x", OctKey.import_key(key), registry=registry)
    assert reason_of(token) == "envelope: algorithm not allowed"


def test_extra_header_member_is_rejected():
    """Any header member beyond the eight defined ones (e.g. zip) is rejected."""
    token = seal()
    header_seg, *rest = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_seg + "=" * (-len(header_seg) % 4)))
    header["zip"] = "DEF"
    assert reason_of(".".join([b64(header), *rest])) == (
        "envelope: unexpected or missing header members"
    )


def test_too_large_token_is_rejected():
    """A token above max_token_bytes is rejected before any parsing."""
    op = opener(max_token_bytes=1024)
    assert reason_of(seal(payload=b"x" * 2000), op=op) == "envelope: token too large"
    assert op.open(seal(payload=b"x" * 100), now=NOW).payload == b"x" * 100


def test_large_payload_round_trip():
    """A payload far above joserfc's 64 KiB default still opens (our limit is the token)."""
    big = os.urandom(1 << 20)
    assert opener().open(seal(payload=big), now=NOW).payload == big


def test_sender_rejects_bad_inputs():
    """The sender refuses a key that is not 32 bytes, empty ids and oversized payloads."""
    with pytest.raises(InvalidInput):
        seal(key=KEY[:16])
    with pytest.raises(InvalidInput):
        seal(kid="")
    with pytest.raises(InvalidInput):
        seal(receiver="x" * 300)
    with pytest.raises(PayloadTooLarge):
        seal(payload=bytes(MAX_ENVELOPE_PAYLOAD + 1))
    with pytest.raises(InvalidInput):
        seal(_iv=b"short")


def test_replay_cache_expires_entries():
    """Entries leave the replay cache once their window has passed."""
    cache = ReplayCache()
    op = opener(replay_cache=cache)
    for _ in range(5):
        op.open(seal(), now=NOW)
    assert len(cache) == 5
    op.open(seal(now=NOW + 400), now=NOW + 400)
    assert len(cache) == 1


def test_replay_cache_is_bounded_and_fails_closed():
    """A full replay cache refuses new messages rather than forgetting old ones."""
    op = opener(replay_cache=ReplayCache(max_entries=2))
    op.open(seal(), now=NOW)
    op.open(seal(), now=NOW)
    assert reason_of(seal(), op=op) == "envelope: replay cache full"


def test_opened_envelope_repr_hides_payload():
    """The repr of an opened envelope never shows the payload (health data)."""
    got = opener().open(seal(payload=b"SECRET-DIAGNOSIS"), now=NOW)
    assert isinstance(got, OpenedEnvelope)
    assert "SECRET-DIAGNOSIS" not in repr(got)


def test_errors_and_logs_never_contain_keys(caplog):
    """Failure texts, problem details and log records contain no encoding of the hop key."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for token, now in [(seal(receiver="x"), NOW), (seal(), NOW + 999), (seal()[:-3], NOW)]:
        with pytest.raises(CryptoError) as info:
            opener().open(token, now=now)
        texts += error_texts(info.value)
    with pytest.raises(InvalidInput) as bad:
        seal(key=KEY[:31])
    texts += error_texts(bad.value)
    texts.append(caplog.text)
    assert_no_secret(texts, KEY, KEY[:31])
    assert all(str(CryptoError()) == t for t in texts[:1])


@pytest.mark.parametrize("now", [float("nan"), float("inf"), "1767225600", True])
def test_clock_override_must_be_finite(now):
    """A non-finite or non-numeric ``now`` is InvalidInput on both sides, never a silent pass."""
    with pytest.raises(InvalidInput):
        seal(now=now)
    with pytest.raises(InvalidInput):
        opener().open(seal(), now=now)


def test_opener_rejects_bad_configuration():
    """An opener needs positive window, skew >= 0 and a positive size limit."""
    with pytest.raises(InvalidInput):
        EnvelopeOpener("platform", resolver, window_s=0)
    with pytest.raises(InvalidInput):
        EnvelopeOpener("", resolver)
    with pytest.raises(InvalidInput):
        ReplayCache(max_entries=0)
