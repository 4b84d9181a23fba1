"""The patient's identity proofs: safe recipes, sans-IO, one opaque failure.

When a patient answers an authorization request (DESIGN.md, "Authorization
(seed 1)"; issue 4, "The patient decides"), the platform verifies one or more
identity proofs and derives the assurance level they reach:

* :mod:`~patientkey.identity.password` — Argon2id, rehash on login, a dummy
  hash for unknown users;
* :mod:`~patientkey.identity.totp` — RFC 6238 codes, ±1 step, no replay;
* :mod:`~patientkey.identity.otp` — one-time codes by SMS or email through a
  :class:`~patientkey.identity.otp.Gateway`, single use, limited attempts;
* :mod:`~patientkey.identity.device` — the enrolled device key (ML-DSA-65 or
  Ed25519) signs the approved ``authorization_details``, the platform's nonce
  and the request id (:mod:`~patientkey.identity.challenge`);
* :mod:`~patientkey.identity.x509sig` — the same challenge signed with an
  X.509 certificate key, the certificate validated to a configured CA;
* :mod:`~patientkey.identity.webauthn` — passkeys (WebAuthn): face or fingerprint
  on the patient's device, user verification required, the assertion over a digest
  of the same challenge;
* :mod:`~patientkey.identity.assurance` — proof kinds, levels low /
  substantial / high and their ``acr`` values;
* :mod:`~patientkey.identity.lockout` — growing lockout of failed proofs and
  the audit event of every attempt.

Every verifier fails with the one opaque :class:`ProofRejected` (its
``reason`` goes only to the local log, ``patientkey.identity.*`` loggers);
a locked proof kind with :class:`LockedOut`. Malformed *non-secret* input
(ids, parameters) is :class:`~patientkey.errors.InvalidInput`; a malformed
code, password or signature is a rejected proof like any wrong one.
Nothing here does network or database I/O: stores and gateways are
Protocols with in-memory twins; clocks are injected.
"""

from patientkey.identity._errors import LockedOut, ProofRejected
from patientkey.identity.assurance import (
    ACR_VALUES,
    AssuranceLevel,
    ProofKind,
    acr_for,
    amr_for,
    level_for_acr,
    level_of_acr,
)
from patientkey.identity.challenge import ApprovalChallenge, canonical_json, new_nonce
from patientkey.identity.device import (
    DeviceAlgorithm,
    DeviceKey,
    generate_device_key,
    sign_device_approval,
    verify_device_approval,
)
from patientkey.identity.lockout import (
    Attempt,
    AuditEvent,
    Lockout,
    LockoutPolicy,
    LockoutStore,
    MemoryLockoutStore,
    Outcome,
)
from patientkey.identity.otp import (
    ConsoleSink,
    FileSink,
    Gateway,
    MemoryOtpStore,
    MemorySink,
    OneTimeCodes,
    OtpChannel,
    OtpParams,
    OtpStore,
)
from patientkey.identity.password import PasswordVerifier
from patientkey.identity.totp import (
    MemoryTotpStore,
    TotpEnrollment,
    TotpParams,
    TotpStore,
    TotpVerifier,
    check_totp,
    new_totp_enrollment,
    provisioning_uri,
)
from patientkey.identity.webauthn import WebAuthnCredential, WebAuthnPolicy
from patientkey.identity.x509sig import (
    CertificateBinding,
    CertificateSignatureVerifier,
    VerifiedCertificate,
    sign_x509_approval,
)

__all__ = [
    "ACR_VALUES",
    "ApprovalChallenge",
    "AssuranceLevel",
    "Attempt",
    "AuditEvent",
    "CertificateBinding",
    "CertificateSignatureVerifier",
    "ConsoleSink",
    "DeviceAlgorithm",
    "DeviceKey",
    "FileSink",
    "Gateway",
    "LockedOut",
    "Lockout",
    "LockoutPolicy",
    "LockoutStore",
    "MemoryLockoutStore",
    "MemoryOtpStore",
    "MemorySink",
    "MemoryTotpStore",
    "OneTimeCodes",
    "OtpChannel",
    "OtpParams",
    "OtpStore",
    "Outcome",
    "PasswordVerifier",
    "ProofKind",
    "ProofRejected",
    "TotpEnrollment",
    "TotpParams",
    "TotpStore",
    "TotpVerifier",
    "VerifiedCertificate",
    "WebAuthnCredential",
    "WebAuthnPolicy",
    "acr_for",
    "amr_for",
    "canonical_json",
    "check_totp",
    "generate_device_key",
    "level_for_acr",
    "level_of_acr",
    "new_nonce",
    "new_totp_enrollment",
    "provisioning_uri",
    "sign_device_approval",
    "sign_x509_approval",
    "verify_device_approval",
]
