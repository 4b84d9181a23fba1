"""Known-answer vectors in tests/vectors/: re-derived byte for byte and opened.

Besides comparing the library's output with the stored values, each test
re-derives the values straight from ``cryptography`` primitives as
docs/formats.md specifies them, so the document, the vectors and the code
cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from patientkey.crypto import (
    EnvelopeOpener,
    HpkeKeyPair,
    SealedRecord,
    Suite,
    SymmetricRecipient,
    check_bind_reply,
    hpke_unwrap,
    make_bind_proof,
    make_bind_reply,
    open_record,
    seal_envelope,
    seal_record,
    verify_bind_proof,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def lp(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def hkdf(ikm: bytes, info: bytes, length: int = 32, algorithm=None) -> bytes:
    return HKDF(algorithm or hashes.SHA256(), length, None, info).derive(ikm)


ENVELOPE = load("envelope")["cases"]
RECORD = load("record")
BIND = load("bindproof")["cases"]
HPKE = load("hpke")["cases"]


@pytest.mark.parametrize("case", ENVELOPE, ids=lambda c: c["name"])
def test_envelope_vector_reproduced(case):
    """seal_envelope with the vector's IV, jti and time yields the stored token exactly."""
    token = seal_envelope(
        key=bytes.fromhex(case["key_hex"]),
        kid=case["kid"],
        sender=case["sender"],
        receiver=case["receiver"],
        mtype=case["mtype"],
        payload=bytes.fromhex(case["payload_hex"]),
        now=case["iat"],
        jti=case["jti"],
        _iv=bytes.fromhex(case["iv_hex"]),
    )
    assert token == case["token"]


@pytest.mark.parametrize("case", ENVELOPE, ids=lambda c: c["name"])
def test_envelope_vector_matches_rfc7516_construction(case):
    """Token = b64u(header) '.' '' '.' b64u(iv) '.' b64u(ct) '.' b64u(tag); AAD = b64u(header)."""
    header_seg = b64(case["protected_header_json"].encode())
    iv = bytes.fromhex(case["iv_hex"])
    sealed = AESGCM(bytes.fromhex(case["key_hex"])).encrypt(
        iv, bytes.fromhex(case["payload_hex"]), header_seg.encode("ascii")
    )
    expected = ".".join([header_seg, "", b64(iv), b64(sealed[:-16]), b64(sealed[-16:])])
    assert expected == case["token"]


@pytest.mark.parametrize("case", ENVELOPE, ids=lambda c: c["name"])
def test_envelope_vector_opens(case):
    """The stored token opens at its iat with the vector key."""
    key = bytes.fromhex(case["key_hex"])
    opener = EnvelopeOpener(
        case["receiver"],
        lambda peer, kid: key if (peer, kid) == (case["sender"], case["kid"]) else None,
    )
    got = opener.open(case["token"], now=case["iat"])
    assert got.payload == bytes.fromhex(case["payload_hex"])
    assert got.jti == case["jti"]


@pytest.mark.parametrize("case", RECORD["cases"], ids=lambda c: c["name"])
def test_record_vector_reproduced(case):
    """seal_record with the vector's DEK and IV yields the stored record bytes exactly."""
    record = seal_record(
        record_id=case["record_id"],
        owner=case["owner"],
        body=bytes.fromhex(case["body_hex"]),
        recipients=[
            SymmetricRecipient(r["kid"], r["kv"], bytes.fromhex(r["key_hex"]))
            for r in case["recipients"]
        ],
        suite=Suite(case["suite"]),
        _dek=bytes.fromhex(case["dek_hex"]),
        _iv=bytes.fromhex(case["iv_hex"]),
    )
    assert record.to_bytes().decode("ascii") == case["record"]


@pytest.mark.parametrize("case", RECORD["cases"], ids=lambda c: c["name"])
def test_record_vector_matches_spec(case):
    """The stored record follows docs/formats.md: header, key schedule, AES-KW and body AEAD."""
    rid, own, suite = case["record_id"], case["owner"], case["suite"]
    dek, iv = bytes.fromhex(case["dek_hex"]), bytes.fromhex(case["iv_hex"])
    inter = case["intermediates"]
    stored = json.loads(case["record"])
    assert list(stored) == ["protected", "recipients", "iv", "ciphertext", "tag"]

    commitment = hkdf(dek, b"patientkey/record/v1/key-commitment")
    assert commitment.hex() == inter["key_commitment_hex"]
    header = {"v": 1, "enc": suite, "rid": rid, "own": own, "kc": b64(commitment)}
    protected = b64(json.dumps(header, separators=(",", ":")).encode())
    assert stored["protected"] == protected

    body_key = hkdf(dek, b"patientkey/record/v1/body-key")
    assert body_key.hex() == inter["body_key_hex"]
    body = bytes.fromhex(case["body_hex"])
    if suite == "A256GCM":
        sealed = AESGCM(body_key).encrypt(iv, body, protected.encode("ascii"))
    else:
        sm4_key = hkdf(body_key, b"patientkey/sm4gcm-sm3", 16, hashes.SM3())
        assert sm4_key.hex() == inter["sm4_key_hex"]
        enc = Cipher(algorithms.SM4(sm4_key), modes.GCM(iv)).encryptor()
        enc.authenticate_additional_data(protected.encode("ascii"))
        sealed = enc.update(body) + enc.finalize() + enc.tag
    assert (stored["iv"], stored["ciphertext"], stored["tag"]) == (
        b64(iv),
        b64(sealed[:-16]),
        b64(sealed[-16:]),
    )

    for entry, recipient, expect in zip(
        stored["recipients"], case["recipients"], inter["recipients"], strict=True
    ):
        kid, kv = recipient["kid"], recipient["kv"]
        assert entry["header"] == {"alg": "A256KW", "kid": kid, "kv": kv}
        binding = lp(
            b"patientkey/record/v1/dek-wrap",
            b"1",
            b"A256KW",
            suite.encode(),
            rid.encode(),
            own.encode(),
            kid.encode(),
            str(kv).encode(),
        )
        assert binding.hex() == expect["binding_hex"]
        kek = hkdf(bytes.fromhex(recipient["key_hex"]), binding)
        assert kek.hex() == expect["kek_hex"]
        assert unb64(entry["encrypted_key"]) == aes_key_wrap(kek, dek)
        assert aes_key_unwrap(kek, unb64(entry["encrypted_key"])) == dek


@pytest.mark.parametrize("case", RECORD["cases"], ids=lambda c: c["name"])
def test_record_vector_opens(case):
    """Each stored deterministic record opens for each of its recipients."""
    record = SealedRecord.from_bytes(case["record"].encode())
    for r in case["recipients"]:
        body = open_record(record, kid=r["kid"], key=bytes.fromhex(r["key_hex"]), version=r["kv"])
        assert body == bytes.fromhex(case["body_hex"])


@pytest.mark.parametrize("case", RECORD["open_only"], ids=lambda c: c["name"])
def test_record_vector_with_hpke_recipient_opens(case):
    """The stored record with an HPKE recipient opens with the fixed key pair and with KUH."""
    record = SealedRecord.from_bytes(case["record"].encode())
    pair = HpkeKeyPair.from_private_bytes(bytes.fromhex(case["hpke_private_hex"]))
    body = bytes.fromhex(case["body_hex"])
    assert open_record(record, kid=case["hpke_kid"], key=pair) == body
    assert open_record(record, kid="kuh:his-1", key=bytes.fromhex(case["kuh_hex"])) == body
    entry = json.loads(case["record"])["recipients"][0]
    dek = hpke_unwrap(pair, unb64(entry["encrypted_key"]), bytes.fromhex(case["hpke_info_hex"]))
    assert len(dek) == 32


@pytest.mark.parametrize("case", HPKE)
def test_hpke_vector_decrypts(case):
    """The fixed key pair reproduces its public key and decrypts the stored blob."""
    pair = HpkeKeyPair.from_private_bytes(bytes.fromhex(case["private_key_hex"]))
    assert pair.public_key.to_bytes().hex() == case["public_key_hex"]
    plaintext = hpke_unwrap(pair, bytes.fromhex(case["blob_hex"]), bytes.fromhex(case["info_hex"]))
    assert plaintext.hex() == case["plaintext_hex"]


@pytest.mark.parametrize("case", BIND, ids=lambda c: c["name"])
def test_bindproof_vector_reproduced(case):
    """Proof and reply (with the vector IV) equal the stored bytes and the spec construction."""
    kuh, nonce = bytes.fromhex(case["kuh_hex"]), bytes.fromhex(case["nonce_hex"])
    ids = {k: case[k] for k in ("patient_id", "his_id", "user_id")}
    pid, his, user = (case[k].encode() for k in ("patient_id", "his_id", "user_id"))

    message = lp(b"patientkey/bind/v1/proof", pid, nonce, his, user)
    assert message.hex() == case["proof_message_hex"]
    assert hmac.digest(kuh, message, "sha256").hex() == case["proof_hex"]
    assert make_bind_proof(kuh, nonce=nonce, **ids).hex() == case["proof_hex"]
    verify_bind_proof(kuh, bytes.fromhex(case["proof_hex"]), nonce=nonce, **ids)

    f_n = hashlib.sha256(lp(b"patientkey/bind/v1/f", nonce)).digest()
    assert f_n.hex() == case["f_n_hex"]
    reply_key = hkdf(kuh, b"patientkey/bind/v1/reply-key")
    assert reply_key.hex() == case["reply_key_hex"]
    aad = lp(b"patientkey/bind/v1/reply", pid, his, user, nonce)
    assert aad.hex() == case["reply_aad_hex"]
    iv = bytes.fromhex(case["reply_iv_hex"])
    assert (iv + AESGCM(reply_key).encrypt(iv, f_n, aad)).hex() == case["reply_hex"]
    assert make_bind_reply(kuh, nonce=nonce, _iv=iv, **ids).hex() == case["reply_hex"]
    check_bind_reply(kuh, bytes.fromhex(case["reply_hex"]), nonce=nonce, **ids)
