"""PatientKey's crypto layer: safe recipes over ``cryptography`` and ``joserfc`` primitives.

The rest of PatientKey calls these recipes, never raw ciphers:

* :mod:`~patientkey.crypto.envelope` — hop envelopes (JWE ``dir``/``A256GCM``) with
  receiver, freshness and replay checks;
* :mod:`~patientkey.crypto.record` — sealed records: body under a per-record DEK,
  DEK wrapped per recipient (AES-KW under an HKDF-bound KEK, or HPKE);
* :mod:`~patientkey.crypto.hpke` — HPKE with ML-KEM-768 + X25519 (third-party keys);
* :mod:`~patientkey.crypto.bindproof` — the bind proof and mutual-authentication reply;
* :mod:`~patientkey.crypto.keystore` — passphrase-protected local key storage;
* :mod:`~patientkey.crypto.ratchet` — KUH rotation (wrap, ack, commit) and the KUB ratchet;
* :mod:`~patientkey.crypto.vault` — a party's keys at rest under its storage key.

Every authentication failure raises the one opaque
:class:`~patientkey.errors.CryptoError`; the precise reason is in
``CryptoError.reason`` and in the local log (``patientkey.crypto.*`` loggers),
never in the message. Malformed non-secret input raises
:class:`~patientkey.errors.InvalidInput`. Formats: ``docs/formats.md``.
"""

from patientkey.crypto._suites import Suite
from patientkey.crypto.bindproof import (
    BIND_NONCE_LEN,
    BIND_PROOF_LEN,
    BIND_REPLY_LEN,
    check_bind_reply,
    make_bind_proof,
    make_bind_reply,
    new_bind_nonce,
    verify_bind_proof,
)
from patientkey.crypto.envelope import (
    MAX_ENVELOPE_PAYLOAD,
    MAX_TOKEN_BYTES,
    EnvelopeOpener,
    KeyResolver,
    OpenedEnvelope,
    ReplayCache,
    seal_envelope,
)
from patientkey.crypto.hpke import (
    HPKE_SUITE_NAME,
    HpkeKeyPair,
    HpkePublicKey,
    hpke_unwrap,
    hpke_wrap,
)
from patientkey.crypto.keystore import (
    DEFAULT_ARGON2,
    Argon2Params,
    Keystore,
    read_keystore,
    write_keystore,
)
from patientkey.crypto.record import (
    ALG_A256KW,
    ALG_HPKE,
    MAX_BODY_BYTES,
    MAX_RECIPIENTS,
    MAX_RECORD_BYTES,
    PublicRecipient,
    Recipient,
    RecipientEntry,
    RecordHeader,
    SealedRecord,
    SymmetricRecipient,
    add_recipient,
    decrypt_body,
    open_record,
    remove_recipient,
    seal_record,
    unwrap_dek,
)

__all__ = [
    "ALG_A256KW",
    "ALG_HPKE",
    "BIND_NONCE_LEN",
    "BIND_PROOF_LEN",
    "BIND_REPLY_LEN",
    "DEFAULT_ARGON2",
    "HPKE_SUITE_NAME",
    "MAX_BODY_BYTES",
    "MAX_ENVELOPE_PAYLOAD",
    "MAX_RECIPIENTS",
    "MAX_RECORD_BYTES",
    "MAX_TOKEN_BYTES",
    "Argon2Params",
    "EnvelopeOpener",
    "HpkeKeyPair",
    "HpkePublicKey",
    "KeyResolver",
    "Keystore",
    "OpenedEnvelope",
    "PublicRecipient",
    "Recipient",
    "RecipientEntry",
    "RecordHeader",
    "ReplayCache",
    "SealedRecord",
    "Suite",
    "SymmetricRecipient",
    "add_recipient",
    "check_bind_reply",
    "decrypt_body",
    "hpke_unwrap",
    "hpke_wrap",
    "make_bind_proof",
    "make_bind_reply",
    "new_bind_nonce",
    "open_record",
    "read_keystore",
    "remove_recipient",
    "seal_envelope",
    "seal_record",
    "unwrap_dek",
    "verify_bind_proof",
    "write_keystore",
]
