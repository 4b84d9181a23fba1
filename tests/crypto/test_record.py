"""Sealed records: body under a per-record DEK, DEK wrapped per recipient (AES-KW or HPKE)."""

from __future__ import annotations

import base64
import json
import logging
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.crypto import (
    ALG_A256KW,
    ALG_HPKE,
    MAX_RECIPIENTS,
    HpkeKeyPair,
    PublicRecipient,
    SealedRecord,
    Suite,
    SymmetricRecipient,
    add_recipient,
    decrypt_body,
    open_record,
    remove_recipient,
    seal_record,
    unwrap_dek,
)
from patientkey.errors import CryptoError, InvalidInput, PayloadTooLarge

from ._helpers import assert_no_secret, error_texts

KUH = os.urandom(32)
KUH_NEXT = os.urandom(32)
KUB = os.urandom(32)
KBS = HpkeKeyPair.generate()
STRANGER = HpkeKeyPair.generate()
BODY = b'{"resourceType":"Bundle","id":"rx-1"}' * 20


def three_recipients():
    return [
        SymmetricRecipient("kuh:his-1", 1, KUH),
        SymmetricRecipient("kub:pharmacy-7", 4, KUB),
        PublicRecipient("pharmacy-7", KBS.public_key),
    ]


RECORD = seal_record(record_id="rx-1", owner="u-1", body=BODY, recipients=three_recipients())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def edited(record: SealedRecord, edit) -> SealedRecord:
    """Re-parse ``record`` after ``edit(outer_json, protected_header)`` changed it."""
    outer = json.loads(record.to_bytes())
    header = json.loads(unb64(outer["protected"]))
    edit(outer, header)
    outer["protected"] = b64(json.dumps(header, separators=(",", ":")).encode())
    return SealedRecord.from_bytes(json.dumps(outer).encode())


def test_three_recipients_each_open():
    """A record sealed for KUH, KUB and an HPKE key opens for each of the three."""
    assert open_record(RECORD, kid="kuh:his-1", key=KUH) == BODY
    assert open_record(RECORD, kid="kub:pharmacy-7", key=KUB) == BODY
    assert open_record(RECORD, kid="pharmacy-7", key=KBS) == BODY


def test_no_fourth_party_opens():
    """Neither an unlisted party nor a listed kid with another key can open the record."""
    with pytest.raises(CryptoError):
        open_record(RECORD, kid="stranger", key=os.urandom(32))
    with pytest.raises(CryptoError):
        open_record(RECORD, kid="kuh:his-1", key=os.urandom(32))
    with pytest.raises(CryptoError):
        open_record(RECORD, kid="pharmacy-7", key=STRANGER)
    with pytest.raises(CryptoError):
        open_record(RECORD, kid="kub:pharmacy-7", key=KUH)


def test_key_type_must_match_entry():
    """A symmetric key does not match an HPKE entry of the same kid, and vice versa."""
    with pytest.raises(CryptoError) as info:
        open_record(RECORD, kid="pharmacy-7", key=KUB)
    assert "no recipient entry" in info.value.reason
    with pytest.raises(CryptoError):
        open_record(RECORD, kid="kuh:his-1", key=KBS)


def test_body_is_encrypted_once():
    """The ciphertext is the body's size (one copy) and holds no plaintext."""
    assert len(RECORD.ciphertext) == len(BODY)
    assert b"resourceType" not in RECORD.to_bytes()
    assert [e.alg for e in RECORD.recipients] == [ALG_A256KW, ALG_A256KW, ALG_HPKE]


def test_serialization_round_trip():
    """to_bytes/from_bytes round-trips and the parsed record opens."""
    data = RECORD.to_bytes()
    again = SealedRecord.from_bytes(data)
    assert again == RECORD
    assert again.to_bytes() == data
    assert (again.record_id, again.owner, again.suite) == ("rx-1", "u-1", Suite.A256GCM)
    assert open_record(again, kid="pharmacy-7", key=KBS) == BODY
    assert SealedRecord.from_bytes(data.decode()) == RECORD


def test_add_recipient_leaves_body_identical():
    """Adding a recipient keeps protected header, IV, ciphertext and tag byte for byte."""
    dek = unwrap_dek(RECORD, kid="kuh:his-1", key=KUH)
    regulator = HpkeKeyPair.generate()
    grown = add_recipient(RECORD, dek, PublicRecipient("regulator", regulator.public_key))
    same = ("protected", "iv", "ciphertext", "tag")
    assert all(getattr(grown, f) == getattr(RECORD, f) for f in same)
    assert grown.recipients[:3] == RECORD.recipients
    assert open_record(grown, kid="regulator", key=regulator) == BODY
    assert json.loads(grown.to_bytes())["ciphertext"] == json.loads(RECORD.to_bytes())["ciphertext"]


def test_kuh_rotation_rewraps_without_touching_body():
    """Rotating KUH (wrap under kv+1, drop kv) leaves the body bytes and other entries intact."""
    dek = unwrap_dek(RECORD, kid="kuh:his-1", key=KUH, version=1)
    both = add_recipient(RECORD, dek, SymmetricRecipient("kuh:his-1", 2, KUH_NEXT))
    assert open_record(both, kid="kuh:his-1", key=KUH) == BODY  # old still works mid-rotation
    assert open_record(both, kid="kuh:his-1", key=KUH_NEXT) == BODY
    rotated = remove_recipient(both, "kuh:his-1", version=1)
    assert (rotated.protected, rotated.iv, rotated.ciphertext, rotated.tag) == (
        RECORD.protected,
        RECORD.iv,
        RECORD.ciphertext,
        RECORD.tag,
    )
    assert open_record(rotated, kid="kuh:his-1", key=KUH_NEXT, version=2) == BODY
    with pytest.raises(CryptoError):
        open_record(rotated, kid="kuh:his-1", key=KUH)
    assert [(e.kid, e.version) for e in rotated.recipients] == [
        ("kub:pharmacy-7", 4),
        ("pharmacy-7", None),
        ("kuh:his-1", 2),
    ]


def test_version_selects_entry():
    """With an explicit version only that entry is tried."""
    with pytest.raises(CryptoError):
        open_record(RECORD, kid="kuh:his-1", key=KUH, version=2)
    assert open_record(RECORD, kid="kuh:his-1", key=KUH, version=1) == BODY


def test_add_recipient_with_wrong_dek_is_refused():
    """add_recipient refuses a DEK that does not match the record's key commitment."""
    with pytest.raises(CryptoError) as info:
        add_recipient(RECORD, os.urandom(32), SymmetricRecipient("x", 1, KUB))
    assert info.value.reason == "record: DEK does not match the key commitment"


def test_add_duplicate_and_remove_last_are_refused():
    """A duplicate (kid, version) cannot be added; the last recipient cannot be removed."""
    dek = unwrap_dek(RECORD, kid="kuh:his-1", key=KUH)
    with pytest.raises(InvalidInput):
        add_recipient(RECORD, dek, SymmetricRecipient("kuh:his-1", 1, KUH_NEXT))
    single = seal_record(
        record_id="r", owner="o", body=b"x", recipients=[SymmetricRecipient("k", 1, KUH)]
    )
    with pytest.raises(InvalidInput):
        remove_recipient(single, "k")
    with pytest.raises(InvalidInput):
        remove_recipient(RECORD, "nobody")


@pytest.mark.parametrize(
    ("member", "value"),
    [("rid", "rx-2"), ("own", "u-2"), ("enc", "SM4GCM-SM3"), ("kc", b64(bytes(32)))],
)
def test_header_fields_are_bound(member, value):
    """Changing record id, owner, suite or key commitment in the header breaks every open."""
    changed = edited(RECORD, lambda _outer, header: header.__setitem__(member, value))
    for kid, key in [("kuh:his-1", KUH), ("kub:pharmacy-7", KUB), ("pharmacy-7", KBS)]:
        with pytest.raises(CryptoError):
            open_record(changed, kid=kid, key=key)


def test_key_version_is_bound():
    """Changing a recipient's kv in the stored record makes its entry unwrap-proof."""

    def bump(outer, _header):
        outer["recipients"][0]["header"]["kv"] = 2

    changed = edited(RECORD, bump)
    with pytest.raises(CryptoError):
        open_record(changed, kid="kuh:his-1", key=KUH)
    with pytest.raises(CryptoError):
        open_record(changed, kid="kuh:his-1", key=KUH, version=2)


def test_recipient_kid_is_bound():
    """Renaming a recipient's kid makes its entry fail even with the right key."""

    def rename(outer, _header):
        outer["recipients"][1]["header"]["kid"] = "kub:other"
        outer["recipients"][2]["header"]["kid"] = "other"

    changed = edited(RECORD, rename)
    with pytest.raises(CryptoError):
        open_record(changed, kid="kub:other", key=KUB)
    with pytest.raises(CryptoError):
        open_record(changed, kid="other", key=KBS)


def test_wrapped_key_does_not_move_between_records():
    """An entry copied from another record (same recipient key) does not open this one."""
    other = seal_record(record_id="rx-2", owner="u-1", body=b"other", recipients=three_recipients())

    def transplant(outer, _header):
        outer["recipients"] = json.loads(other.to_bytes())["recipients"]

    moved = edited(RECORD, transplant)
    for kid, key in [("kuh:his-1", KUH), ("kub:pharmacy-7", KUB), ("pharmacy-7", KBS)]:
        with pytest.raises(CryptoError):
            open_record(moved, kid=kid, key=key)


def test_key_commitment_catches_a_different_dek():
    """An entry that unwraps to another DEK under the same binding is caught by the commitment."""
    twin = seal_record(record_id="rx-1", owner="u-1", body=b"evil", recipients=three_recipients())

    def swap(outer, _header):
        outer["recipients"] = json.loads(twin.to_bytes())["recipients"]

    swapped = edited(RECORD, swap)
    with pytest.raises(CryptoError) as info:
        open_record(swapped, kid="kuh:his-1", key=KUH)
    assert info.value.reason == "record: DEK does not match the key commitment"


@pytest.mark.parametrize("suite", list(Suite))
def test_suite_round_trip(suite):
    """Records open under both suites, including SM4-GCM/SM3, for all recipient kinds."""
    record = seal_record(
        record_id="rx-9", owner="u-1", body=BODY, recipients=three_recipients(), suite=suite
    )
    assert record.suite is suite
    again = SealedRecord.from_bytes(record.to_bytes())
    for kid, key in [("kuh:his-1", KUH), ("kub:pharmacy-7", KUB), ("pharmacy-7", KBS)]:
        assert open_record(again, kid=kid, key=key) == BODY


def test_sm4_and_aes_bodies_differ():
    """The same DEK and IV give different ciphertexts under the two suites."""
    args = {
        "record_id": "r",
        "owner": "o",
        "body": BODY,
        "recipients": [SymmetricRecipient("k", 1, KUH)],
        "_dek": bytes(32),
        "_iv": bytes(12),
    }
    aes = seal_record(**args, suite=Suite.A256GCM)
    sm4 = seal_record(**args, suite=Suite.SM4GCM_SM3)
    assert aes.ciphertext != sm4.ciphertext


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("part", ["iv", "ciphertext", "tag"])
def test_body_tampering_fails(part, index):
    """Any changed byte of IV, ciphertext or tag fails authentication."""

    def flip(outer, _header):
        raw = bytearray(unb64(outer[part]))
        raw[index] ^= 0x80
        outer[part] = b64(bytes(raw))

    with pytest.raises(CryptoError) as info:
        open_record(edited(RECORD, flip), kid="kuh:his-1", key=KUH)
    assert info.value.reason == "record: body authentication failed"


def test_decrypt_body_with_wrong_dek_fails():
    """decrypt_body with a DEK that is not the record's raises CryptoError."""
    with pytest.raises(CryptoError):
        decrypt_body(RECORD, os.urandom(32))


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_any_changed_byte_of_stored_record(data):
    """A changed byte in the stored bytes raises InvalidInput or CryptoError, nothing else."""
    stored = seal_record(
        record_id="rx-1",
        owner="u-1",
        body=b"short",
        recipients=[SymmetricRecipient("kuh", 1, KUH), SymmetricRecipient("kub", 1, KUB)],
    ).to_bytes()
    pos = data.draw(st.integers(0, len(stored) - 1))
    bad = bytearray(stored)
    bad[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises((InvalidInput, CryptoError)):
        _parse_and_open_both(bytes(bad))


def _parse_and_open_both(data: bytes) -> None:
    record = SealedRecord.from_bytes(data)
    open_record(record, kid="kuh", key=KUH)
    open_record(record, kid="kub", key=KUB)


@settings(max_examples=100, deadline=None)
@given(
    junk=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        ["protected", "recipients", "iv", "ciphertext", "tag", "header"]
                    ),
                    inner,
                    max_size=6,
                )
            ),
            max_leaves=12,
        ).map(lambda obj: json.dumps(obj).encode()),
    )
)
def test_malformed_records_raise_invalid_input(junk):
    """Arbitrary bytes, text or JSON as a record raise InvalidInput, never anything else."""
    with pytest.raises(InvalidInput):
        SealedRecord.from_bytes(junk)


@pytest.mark.parametrize(
    "edit",
    [
        lambda o, h: o.__setitem__("extra", 1),
        lambda o, h: o.__setitem__("recipients", []),
        lambda o, h: o.__setitem__("recipients", [o["recipients"][0]] * 2),
        lambda o, h: o.__setitem__("recipients", o["recipients"] * 30),
        lambda o, h: o.__setitem__("iv", b64(bytes(11))),
        lambda o, h: o.__setitem__("tag", b64(bytes(15))),
        lambda o, h: o.__setitem__("iv", "AAAAAAAAAAAAAAA="),
        lambda o, h: o.__setitem__("tag", 5),
        lambda o, h: h.__setitem__("v", 2),
        lambda o, h: h.__setitem__("v", True),
        lambda o, h: h.__setitem__("v", 1.0),
        lambda o, h: h.__setitem__("enc", "A128GCM"),
        lambda o, h: h.__setitem__("rid", ""),
        lambda o, h: h.__setitem__("own", 7),
        lambda o, h: h.__setitem__("kc", b64(bytes(31))),
        lambda o, h: h.__setitem__("zip", "DEF"),
        lambda o, h: h.pop("kc"),
        lambda o, h: o["recipients"][0]["header"].__setitem__("kv", -1),
        lambda o, h: o["recipients"][0]["header"].__setitem__("kv", True),
        lambda o, h: o["recipients"][0]["header"].__setitem__("kv", "1"),
        lambda o, h: o["recipients"][0]["header"].pop("kv"),
        lambda o, h: o["recipients"][0]["header"].__setitem__("alg", "A128KW"),
        lambda o, h: o["recipients"][2]["header"].__setitem__("kv", 1),
        lambda o, h: o["recipients"][0].__setitem__("encrypted_key", b64(bytes(39))),
        lambda o, h: o["recipients"][2].__setitem__("encrypted_key", b64(bytes(40))),
        lambda o, h: o["recipients"][0].__setitem__("x", 1),
    ],
)
def test_malformed_fields_raise_invalid_input(edit):
    """Each structural violation of the format is InvalidInput at parse time."""
    with pytest.raises(InvalidInput):
        edited(RECORD, edit)


def test_parser_rejects_duplicate_members_and_oversize():
    """Duplicate JSON members and records above the size limit are refused."""
    data = RECORD.to_bytes()
    dup = data[:-1] + b',"tag":"' + json.loads(data)["tag"].encode() + b'"}'
    with pytest.raises(InvalidInput):
        SealedRecord.from_bytes(dup)
    with pytest.raises(PayloadTooLarge):
        SealedRecord.from_bytes(b" " * (48 * 1024 * 1024 + 1))


def test_seal_rejects_bad_arguments():
    """Sealing validates ids, recipients, key lengths, versions and suite."""
    ok = {"record_id": "r", "owner": "o", "body": b"x", "recipients": three_recipients()}
    for change in [
        {"record_id": ""},
        {"owner": "o" * 300},
        {"body": "text"},
        {"recipients": []},
        {"recipients": [SymmetricRecipient("k", 1, KUH)] * (MAX_RECIPIENTS + 1)},
        {"suite": "A256GCM"},
        {"_dek": bytes(16)},
    ]:
        with pytest.raises(InvalidInput):
            seal_record(**(ok | change))
    with pytest.raises(InvalidInput):
        SymmetricRecipient("k", 1, bytes(16))
    with pytest.raises(InvalidInput):
        SymmetricRecipient("k", -1, KUH)
    with pytest.raises(InvalidInput):
        PublicRecipient("k", KBS)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        open_record(RECORD, kid="kuh:his-1", key=bytes(8))


def test_reprs_errors_and_logs_never_contain_keys(caplog):
    """Recipients' reprs, errors and log lines contain no encoding of KUH, KUB, DEK or KBS."""
    caplog.set_level(logging.DEBUG)
    dek = unwrap_dek(RECORD, kid="kuh:his-1", key=KUH)
    texts = [repr(r) for r in three_recipients()] + [repr(RECORD), repr(RECORD.header)]
    for call in [
        lambda: open_record(RECORD, kid="kuh:his-1", key=KUB),
        lambda: add_recipient(RECORD, KUB, SymmetricRecipient("x", 1, KUH)),
        lambda: decrypt_body(RECORD, KUH),
        lambda: SymmetricRecipient("k", 1, KUH[:20]),
    ]:
        with pytest.raises((CryptoError, InvalidInput)) as info:
            call()
        texts += error_texts(info.value)
    texts.append(caplog.text)
    assert_no_secret(texts, KUH, KUB, dek, KUH[:20], KBS.private_bytes())
