"""Generate the known-answer vectors in tests/vectors/ (run by hand, not collected by pytest).

    .venv/bin/python tests/crypto/make_vectors.py

Every value comes from fixed inputs through the library's injected-randomness
keywords (``_iv=``, ``_dek=``), except HPKE, whose encryption is randomized:
its vectors are a fixed key pair and a stored ciphertext. The intermediate
values (KEKs, bindings, derived keys) are computed here straight from the
primitives, following docs/formats.md, so the files double as a specification
check. Re-running rewrites the deterministic parts identically; the HPKE
ciphertexts change (they are fresh encryptions) and remain valid.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from patientkey.crypto import (
    HpkeKeyPair,
    PublicRecipient,
    Suite,
    SymmetricRecipient,
    hpke_wrap,
    make_bind_proof,
    make_bind_reply,
    seal_envelope,
    seal_record,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def fixed(label: str, n: int) -> bytes:
    """Deterministic test bytes: SHA-256 expansion of a label (never a real key)."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"patientkey-test-vector/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


def lp(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def hkdf(ikm: bytes, info: bytes, length: int = 32, algorithm: Any = None) -> bytes:
    algo = algorithm or hashes.SHA256()
    return HKDF(algorithm=algo, length=length, salt=None, info=info).derive(ikm)


def envelope_vectors() -> dict[str, Any]:
    cases = []
    for name, payload in [
        ("short text", b"hello, hop"),
        ("bind request JSON", b'{"User_ID":"u-1","HIS_ID":"his-1","Patient_ID":"p-42"}'),
        ("empty payload", b""),
    ]:
        key = fixed(f"envelope/{name}/key", 32)
        iv = fixed(f"envelope/{name}/iv", 12)
        inputs = {
            "kid": "q.6d1f5a2c-3b4e-4f60-8a71-9c0d2e3f4a5b|n.7",
            "sender": "wallet:u-1",
            "receiver": "platform",
            "mtype": "bind.request",
            "jti": fixed(f"envelope/{name}/jti", 16).hex(),
            "iat": 1767225600,
        }
        token = seal_envelope(
            key=key,
            kid=inputs["kid"],
            sender=inputs["sender"],
            receiver=inputs["receiver"],
            mtype=inputs["mtype"],
            payload=payload,
            now=inputs["iat"],
            jti=inputs["jti"],
            _iv=iv,
        )
        header_json = json.dumps(
            {
                "alg": "dir",
                "enc": "A256GCM",
                "kid": inputs["kid"],
                "snd": inputs["sender"],
                "rcv": inputs["receiver"],
                "mty": inputs["mtype"],
                "jti": inputs["jti"],
                "iat": inputs["iat"],
            },
            separators=(",", ":"),
        )
        cases.append(
            {
                "name": name,
                "key_hex": key.hex(),
                "iv_hex": iv.hex(),
                **inputs,
                "payload_hex": payload.hex(),
                "protected_header_json": header_json,
                "token": token,
            }
        )
    return {
        "description": "Hop envelope: JWE compact, dir + A256GCM (docs/formats.md section 2).",
        "generator": "tests/crypto/make_vectors.py",
        "cases": cases,
    }


def record_binding(alg: str, suite: str, rid: str, own: str, kid: str, kv: int | None) -> bytes:
    return lp(
        b"patientkey/record/v1/dek-wrap",
        b"1",
        alg.encode(),
        suite.encode(),
        rid.encode(),
        own.encode(),
        kid.encode(),
        b"" if kv is None else str(kv).encode(),
    )


def record_vectors() -> dict[str, Any]:
    cases = []
    specs: list[tuple[str, Suite, list[tuple[str, int]]]] = [
        ("A256GCM, KUH and KUB", Suite.A256GCM, [("kuh:his-1", 1), ("kub:pharmacy-7", 3)]),
        ("SM4GCM-SM3, KUH", Suite.SM4GCM_SM3, [("kuh:his-1", 2)]),
    ]
    for name, suite, recips in specs:
        rid, own = "rx-2026-000123", "u-1"
        body = b'{"resourceType":"Bundle","id":"rx-2026-000123","type":"document"}'
        dek = fixed(f"record/{name}/dek", 32)
        iv = fixed(f"record/{name}/iv", 12)
        keys = {kid: fixed(f"record/{name}/{kid}/key", 32) for kid, _ in recips}
        record = seal_record(
            record_id=rid,
            owner=own,
            body=body,
            recipients=[SymmetricRecipient(kid, kv, keys[kid]) for kid, kv in recips],
            suite=suite,
            _dek=dek,
            _iv=iv,
        )
        body_key = hkdf(dek, b"patientkey/record/v1/body-key")
        intermediates: dict[str, Any] = {
            "body_key_hex": body_key.hex(),
            "key_commitment_hex": hkdf(dek, b"patientkey/record/v1/key-commitment").hex(),
            "recipients": [],
        }
        if suite is Suite.SM4GCM_SM3:
            sm4_key = hkdf(body_key, b"patientkey/sm4gcm-sm3", 16, hashes.SM3())
            intermediates["sm4_key_hex"] = sm4_key.hex()
        for kid, kv in recips:
            binding = record_binding("A256KW", suite.value, rid, own, kid, kv)
            kek = hkdf(keys[kid], binding)
            intermediates["recipients"].append(
                {
                    "kid": kid,
                    "kv": kv,
                    "binding_hex": binding.hex(),
                    "kek_hex": kek.hex(),
                    "encrypted_key_hex": aes_key_wrap(kek, dek).hex(),
                }
            )
        cases.append(
            {
                "name": name,
                "record_id": rid,
                "owner": own,
                "suite": suite.value,
                "body_hex": body.hex(),
                "dek_hex": dek.hex(),
                "iv_hex": iv.hex(),
                "recipients": [
                    {"kid": kid, "kv": kv, "key_hex": keys[kid].hex()} for kid, kv in recips
                ],
                "intermediates": intermediates,
                "record": record.to_bytes().decode("ascii"),
            }
        )

    # HPKE recipient: randomized, so stored for opening only.
    pair = HpkeKeyPair.from_private_bytes(fixed("record/hpke/private", 96))
    rid, own, kid = "report-2026-42", "u-1", "pharmacy-7"
    body = b'{"resourceType":"DiagnosticReport","id":"report-2026-42"}'
    record = seal_record(
        record_id=rid,
        owner=own,
        body=body,
        recipients=[
            PublicRecipient(kid, pair.public_key),
            SymmetricRecipient("kuh:his-1", 1, fixed("record/hpke/kuh", 32)),
        ],
    )
    hpke_case = {
        "name": "A256GCM, HPKE recipient (open only)",
        "record_id": rid,
        "owner": own,
        "body_hex": body.hex(),
        "hpke_kid": kid,
        "hpke_private_hex": pair.private_bytes().hex(),
        "hpke_info_hex": hashlib.sha256(
            record_binding("HPKE-MLKEM768X25519-SHA256-A256GCM", "A256GCM", rid, own, kid, None)
        ).hexdigest(),
        "kuh_hex": fixed("record/hpke/kuh", 32).hex(),
        "record": record.to_bytes().decode("ascii"),
    }
    return {
        "description": "Sealed records (docs/formats.md section 3). Deterministic cases must be "
        "reproduced byte for byte; the HPKE case must open.",
        "generator": "tests/crypto/make_vectors.py",
        "cases": cases,
        "open_only": [hpke_case],
    }


def hpke_vectors() -> dict[str, Any]:
    pair = HpkeKeyPair.from_private_bytes(fixed("hpke/private", 96))
    info = b"patientkey/test-vector/hpke"
    plaintext = b"a 32-byte DEK or a share message"
    blob = hpke_wrap(pair.public_key, plaintext, info)
    return {
        "description": "HPKE MLKEM768-X25519 / HKDF-SHA256 / AES-256-GCM, Base mode "
        "(docs/formats.md section 4). Encryption is randomized: decrypt only.",
        "generator": "tests/crypto/make_vectors.py",
        "cases": [
            {
                "private_key_hex": pair.private_bytes().hex(),
                "public_key_hex": pair.public_key.to_bytes().hex(),
                "info_hex": info.hex(),
                "plaintext_hex": plaintext.hex(),
                "blob_hex": blob.hex(),
            }
        ],
    }


def bindproof_vectors() -> dict[str, Any]:
    cases = []
    for name in ("first bind", "second bind"):
        kuh = fixed(f"bind/{name}/kuh", 32)
        nonce = fixed(f"bind/{name}/nonce", 32)
        iv = fixed(f"bind/{name}/iv", 12)
        ids = {"patient_id": "p-42", "his_id": "his-1", "user_id": "u-1"}
        proof = make_bind_proof(kuh, nonce=nonce, **ids)
        reply = make_bind_reply(kuh, nonce=nonce, _iv=iv, **ids)
        message = lp(b"patientkey/bind/v1/proof", b"p-42", nonce, b"his-1", b"u-1")
        assert hmac.digest(kuh, message, "sha256") == proof
        cases.append(
            {
                "name": name,
                "kuh_hex": kuh.hex(),
                "nonce_hex": nonce.hex(),
                **ids,
                "proof_message_hex": message.hex(),
                "proof_hex": proof.hex(),
                "f_n_hex": hashlib.sha256(lp(b"patientkey/bind/v1/f", nonce)).hexdigest(),
                "reply_key_hex": hkdf(kuh, b"patientkey/bind/v1/reply-key").hex(),
                "reply_aad_hex": lp(
                    b"patientkey/bind/v1/reply", b"p-42", b"his-1", b"u-1", nonce
                ).hex(),
                "reply_iv_hex": iv.hex(),
                "reply_hex": reply.hex(),
            }
        )
    return {
        "description": "Bind proof and reply {f(n)}KUH (docs/formats.md section 5).",
        "generator": "tests/crypto/make_vectors.py",
        "cases": cases,
    }


def main() -> None:
    VECTORS.mkdir(parents=True, exist_ok=True)
    for name, make in [
        ("envelope", envelope_vectors),
        ("record", record_vectors),
        ("hpke", hpke_vectors),
        ("bindproof", bindproof_vectors),
    ]:
        path = VECTORS / f"{name}.json"
        path.write_text(json.dumps(make(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
