"""A software WebAuthn authenticator plus browser: real CBOR, real ES256 signatures.

It plays ``navigator.credentials.create`` / ``.get`` for a test: reads the options JSON
the relying party produced, builds ``clientDataJSON`` (type, challenge, origin),
``authenticatorData`` (RP ID hash, flags, sign count, attested credential data) and a
``"none"`` attestation object or an ES256 assertion signature, and answers with the
browser's ``PublicKeyCredential`` JSON (``toJSON()`` shape, base64url fields).

Every knob a test needs to forge a bad answer is a keyword: another origin, RP ID,
challenge or counter, no UV flag, a flipped signature bit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP = 0x01  # user present
UV = 0x04  # user verified
AT = 0x40  # attested credential data included
ORIGIN = "http://localhost:8765"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftAuthenticator:
    """One P-256 passkey; ``sign_count`` rises by ``step`` per assertion (0: a synced passkey)."""

    def __init__(self, *, origin: str = ORIGIN, step: int = 1) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        self.origin = origin
        self.step = step
        self.sign_count = 0
        self.user_handle: bytes | None = None

    def cose_public_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        # RFC 9053 §7.1.1 EC2 key: kty 2, alg -7 (ES256), crv 1 (P-256), x, y.
        return cbor2.dumps(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps(
            {
                "type": kind,
                "challenge": challenge,
                "origin": origin or self.origin,
                "crossOrigin": False,
            },
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def _auth_data(rp_id: str, flags: int, count: int, attested: bytes = b"") -> bytes:
        return (
            hashlib.sha256(rp_id.encode()).digest()
            + bytes([flags])
            + struct.pack(">I", count)
            + attested
        )

    def create(
        self,
        options_json: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        uv: bool = True,
        challenge: str | None = None,
    ) -> str:
        """``navigator.credentials.create(options)`` as JSON: a "none" attestation."""
        options = json.loads(options_json)
        self.user_handle = unb64url(options["user"]["id"])
        client_data = self._client_data(
            "webauthn.create", challenge or options["challenge"], origin
        )
        attested = (
            bytes(16)  # AAGUID: all zero, as "none" attestation reports it
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + self.cose_public_key()
        )
        flags = UP | AT | (UV if uv else 0)
        auth_data = self._auth_data(rp_id or options["rp"]["id"], flags, self.sign_count, attested)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return json.dumps(
            {
                "id": b64url(self.credential_id),
                "rawId": b64url(self.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client_data),
                    "attestationObject": b64url(attestation),
                    "transports": ["internal", "hybrid"],
                },
                "authenticatorAttachment": "platform",
                "clientExtensionResults": {},
            }
        )

    def get(
        self,
        options_json: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        uv: bool = True,
        challenge: str | None = None,
        sign_count: int | None = None,
        tamper: bool = False,
        user_handle: bytes | None = None,
    ) -> str:
        """``navigator.credentials.get(options)`` as JSON: an ES256 assertion."""
        options = json.loads(options_json)
        allowed = [c["id"] for c in options.get("allowCredentials", [])]
        assert not allowed or b64url(self.credential_id) in allowed, "not an allowed credential"
        if sign_count is None:
            self.sign_count += self.step
            sign_count = self.sign_count
        client_data = self._client_data("webauthn.get", challenge or options["challenge"], origin)
        flags = UP | (UV if uv else 0)
        auth_data = self._auth_data(rp_id or options["rpId"], flags, sign_count)
        signature = self.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        if tamper:
            signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
        handle = user_handle if user_handle is not None else self.user_handle
        response: dict[str, Any] = {
            "clientDataJSON": b64url(client_data),
            "authenticatorData": b64url(auth_data),
            "signature": b64url(signature),
        }
        if handle is not None:
            response["userHandle"] = b64url(handle)
        return json.dumps(
            {
                "id": b64url(self.credential_id),
                "rawId": b64url(self.credential_id),
                "type": "public-key",
                "response": response,
                "authenticatorAttachment": "platform",
                "clientExtensionResults": {},
            }
        )
