"""WebAuthn passkeys (W3C Web Authentication Level 2, Level 3 where noted): face or fingerprint.

The patient approves in the wallet's web page with a passkey; the authenticator on
their device verifies them (biometrics or device PIN) and signs. Because we demand
*user verification* (UV, L2 §6.1 flag bit 2; ``userVerification: "required"``,
§5.4.6 and §5.5), one assertion proves possession of the authenticator *and* the
user's inherence or knowledge: :mod:`~patientkey.identity.assurance` counts it as
two factors (amr ``hwk``, ``user``). A response without the UV flag is refused.

Registration (L2 §7.1): the platform picks REGISTRATION_CHALLENGE_LEN random bytes,
keeps them (briefly, once), and :func:`registration_options` returns the
``PublicKeyCredentialCreationOptions`` JSON for ``navigator.credentials.create``;
:func:`verify_registration` checks the browser's ``PublicKeyCredential`` JSON (client
data type, challenge, origin, RP ID hash, UP and UV flags, algorithm) and returns the
:class:`WebAuthnCredential` to store. Attestation ``"none"`` is asked for and accepted
(§8.7): the platform trusts the passkey for what it proves on every use, not for a
make or model.

Authentication (L2 §7.2): the challenge of an approval is *derived*, never stored.
It is the SHA-256 digest of the same :class:`~patientkey.identity.challenge.ApprovalChallenge`
encoding the device key signs, under this proof's own label::

    webauthn_challenge = SHA-256(lp(WEBAUTHN_LABEL) ‖ lp(request_id) ‖ lp(nonce) ‖ lp(details))

with ``WEBAUTHN_LABEL = "patientkey/identity/webauthn-approval/v1"`` and ``lp`` the
32-bit big-endian length prefix of :mod:`~patientkey.identity.challenge`. The browser
puts it (base64url) into ``clientDataJSON.challenge`` and the authenticator signs
``authenticatorData ‖ SHA-256(clientDataJSON)``, so the assertion covers the request
id, the platform's inbox nonce and exactly the granted ``authorization_details``.
The label keeps a passkey assertion from ever standing for a device signature.

Origins (L2 §13.4.9): ``clientDataJSON.origin`` must be in ``WebAuthnPolicy.origins``;
if that list is empty, any ``https://<rp_id>[:port]`` origin, and (for the default RP
ID ``localhost`` only) any ``http://localhost[:port]`` origin is accepted. The wallet
UI runs on ``http://localhost:<port>`` (a secure context, so WebAuthn works there) and
picks its port at run time, so the port cannot be configured in advance; that is
safe because the RP ID hash in ``authenticatorData`` is checked as well, and a browser
only lets pages whose effective domain is the RP ID (or a subdomain of it) use these
credentials: another site cannot ask for them.

Sign counter (L2 §6.1.1, L3 §6.1.1): a non-zero counter that does not increase means
the authenticator may be cloned, and the assertion is refused. Synced passkeys always
report 0, which is accepted while the stored counter is 0 too.

Every failure is the identity package's one opaque :class:`ProofRejected`; the reason
goes to the local log only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from patientkey.errors import InvalidInput
from patientkey.identity._util import check_id, proof_failure
from patientkey.identity.challenge import ApprovalChallenge

__all__ = [
    "MAX_CREDENTIAL_ID_BYTES",
    "MAX_PUBLIC_KEY_BYTES",
    "MAX_RESPONSE_CHARS",
    "REGISTRATION_CHALLENGE_LEN",
    "WEBAUTHN_LABEL",
    "WebAuthnCredential",
    "WebAuthnPolicy",
    "approval_webauthn_challenge",
    "assertion_credential_id",
    "authentication_options",
    "b64url",
    "b64url_decode",
    "registration_options",
    "user_handle",
    "verify_assertion",
    "verify_registration",
]

_log = logging.getLogger(__name__)

WEBAUTHN_LABEL: Final = b"patientkey/identity/webauthn-approval/v1"
_USER_HANDLE_LABEL: Final = b"patientkey/identity/webauthn-user-handle/v1"
REGISTRATION_CHALLENGE_LEN: Final = 32
MAX_CREDENTIAL_ID_BYTES: Final = 1023  # L3 §5.8.3 "at most 1023 bytes"
MAX_PUBLIC_KEY_BYTES: Final = 2048  # a COSE RSA-4096 key is ~550 bytes
MAX_RESPONSE_CHARS: Final = 16 * 1024  # the protocol's limit on the JSON fields
_MAX_SIGN_COUNT: Final = 2**32 - 1  # signCount is 32 bits (L2 §6.1)
_MAX_TRANSPORTS: Final = 8
_TIMEOUT_MS: Final = 120_000
# ES256 first: what platform authenticators (Touch ID, Windows Hello, Android) make.
_ALGORITHMS: Final = [
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.EDDSA,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
]
_HOST: Final = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_ORIGIN: Final = re.compile(r"^(https?)://([a-z0-9.-]+)(?::([0-9]{1,5}))?$")


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 §5), WebAuthn's JSON encoding of bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The bytes of unpadded base64url ``text``; InvalidInput for anything else."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise InvalidInput("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("not base64url") from exc


@dataclass(frozen=True, slots=True)
class WebAuthnPolicy:
    """The relying party: its RP ID (a host name), display name and accepted origins.

    ``origins`` empty means the run-time rule of the module docstring.
    """

    rp_id: str = "localhost"
    rp_name: str = "PatientKey"
    origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.rp_id, str) or not _HOST.fullmatch(self.rp_id):
            raise InvalidInput("the WebAuthn RP ID must be a lower-case host name")
        if not isinstance(self.rp_name, str) or not 0 < len(self.rp_name) <= 64:
            raise InvalidInput("the WebAuthn RP name must be 1 to 64 characters")
        if not isinstance(self.origins, tuple):
            raise InvalidInput("WebAuthn origins must be a tuple of strings")
        for origin in self.origins:
            if not isinstance(origin, str) or _parse_origin(origin) is None:
                raise InvalidInput(f"not a WebAuthn origin (scheme://host[:port]): {origin!r}")

    def allows_origin(self, origin: str) -> bool:
        """Whether ``clientDataJSON.origin`` may come from this page (exact string)."""
        if self.origins:
            return origin in self.origins
        parsed = _parse_origin(origin)
        if parsed is None:
            return False
        scheme, host = parsed
        if host != self.rp_id:
            return False
        # http only for localhost: the one plain-http origin browsers count as secure.
        return scheme == "https" or host == "localhost"


def _parse_origin(origin: str) -> tuple[str, str] | None:
    found = _ORIGIN.fullmatch(origin) if isinstance(origin, str) else None
    if found is None or not _HOST.fullmatch(found.group(2)):
        return None
    port = found.group(3)
    if port is not None and (not 0 < int(port) <= 65535 or port.startswith("0")):
        return None
    return found.group(1), found.group(2)


@dataclass(frozen=True, slots=True)
class WebAuthnCredential:
    """A registered passkey: credential id, COSE public key, last sign count, transports."""

    credential_id: bytes
    public_key: bytes
    sign_count: int = 0
    transports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (
            not isinstance(self.credential_id, bytes)
            or not 0 < len(self.credential_id) <= MAX_CREDENTIAL_ID_BYTES
        ):
            raise InvalidInput(f"a credential id is 1 to {MAX_CREDENTIAL_ID_BYTES} bytes")
        if (
            not isinstance(self.public_key, bytes)
            or not 0 < len(self.public_key) <= MAX_PUBLIC_KEY_BYTES
        ):
            raise InvalidInput(f"a credential public key is 1 to {MAX_PUBLIC_KEY_BYTES} bytes")
        if (
            isinstance(self.sign_count, bool)
            or not isinstance(self.sign_count, int)
            or not 0 <= self.sign_count <= _MAX_SIGN_COUNT
        ):
            raise InvalidInput("a sign count is an unsigned 32-bit integer")
        if (
            not isinstance(self.transports, tuple)
            or len(self.transports) > _MAX_TRANSPORTS
            or not all(
                isinstance(t, str) and re.fullmatch(r"[a-z-]{1,32}", t) for t in self.transports
            )
        ):
            raise InvalidInput("transports are at most 8 short lower-case names")

    @property
    def credential_id_b64(self) -> str:
        """The credential id as WebAuthn's JSON spells it (``id``, base64url)."""
        return b64url(self.credential_id)


def user_handle(user_id: str) -> bytes:
    """The WebAuthn user handle of ``user_id``: SHA-256 under a label, 32 bytes.

    L2 §14.6.1: the handle must not carry personal information; a digest of the
    account id is stable (re-registering replaces the passkey on the device) and
    does not show the id itself.
    """
    check_id(user_id, "user id")
    return hashlib.sha256(_USER_HANDLE_LABEL + user_id.encode("utf-8")).digest()


def approval_webauthn_challenge(challenge: ApprovalChallenge) -> bytes:
    """The WebAuthn challenge of an approval: SHA-256 of its WEBAUTHN_LABEL encoding."""
    return hashlib.sha256(challenge.to_be_signed(WEBAUTHN_LABEL)).digest()


# ── registration (L2 §7.1) ────────────────────────────────────────────────────────


def registration_options(
    policy: WebAuthnPolicy,
    *,
    user_id: str,
    user_name: str,
    exclude_ids: Sequence[bytes],
    challenge: bytes,
) -> str:
    """``PublicKeyCredentialCreationOptions`` JSON: UV required, attestation "none"."""
    if not isinstance(challenge, bytes) or len(challenge) < 16:
        raise InvalidInput("a registration challenge has at least 16 random bytes")
    check_id(user_name, "user name")
    options = generate_registration_options(
        rp_id=policy.rp_id,
        rp_name=policy.rp_name,
        user_id=user_handle(user_id),
        user_name=user_name,
        challenge=challenge,
        timeout=_TIMEOUT_MS,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            # Discoverable when the authenticator can: approval then works without
            # the wallet knowing the credential id (empty allowCredentials).
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=cid) for cid in exclude_ids],
        supported_pub_key_algs=list(_ALGORITHMS),
    )
    return options_to_json(options)


def verify_registration(
    policy: WebAuthnPolicy, response_json: str, expected_challenge: bytes
) -> WebAuthnCredential:
    """The credential a ``navigator.credentials.create`` answer registers; ProofRejected
    unless it answers ``expected_challenge`` from an allowed origin, for this RP ID,
    with the user present and verified."""
    body = _response(response_json, "registration")
    _check_origin(policy, body, "registration")
    try:
        verified = verify_registration_response(
            credential=body,
            expected_challenge=expected_challenge,
            expected_rp_id=policy.rp_id,
            expected_origin=_origin_of(body),
            require_user_presence=True,
            require_user_verification=True,
            supported_pub_key_algs=list(_ALGORITHMS),
        )
        transports = body["response"].get("transports") or []
        return WebAuthnCredential(
            credential_id=verified.credential_id,
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            transports=tuple(
                t for t in transports if t in {m.value for m in AuthenticatorTransport}
            )[:_MAX_TRANSPORTS],
        )
    except (
        WebAuthnException,
        InvalidInput,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
    ) as exc:
        raise proof_failure(_log, f"webauthn: registration refused ({type(exc).__name__})") from exc


# ── authentication (L2 §7.2) ──────────────────────────────────────────────────────


def authentication_options(
    policy: WebAuthnPolicy, *, credential_ids: Sequence[bytes], challenge: ApprovalChallenge
) -> str:
    """``PublicKeyCredentialRequestOptions`` JSON for approving ``challenge``, UV required.

    An empty ``credential_ids`` leaves ``allowCredentials`` empty: the browser offers the
    user's discoverable passkeys for this RP ID.
    """
    options = generate_authentication_options(
        rp_id=policy.rp_id,
        challenge=approval_webauthn_challenge(challenge),
        timeout=_TIMEOUT_MS,
        allow_credentials=[PublicKeyCredentialDescriptor(id=cid) for cid in credential_ids],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return options_to_json(options)


def assertion_credential_id(response_json: str) -> bytes:
    """The credential id an assertion names (``rawId``), to find the stored credential."""
    body = _response(response_json, "assertion")
    raw = body.get("rawId")
    try:
        credential_id = b64url_decode(raw) if isinstance(raw, str) else b""
    except InvalidInput:
        credential_id = b""
    if not 0 < len(credential_id) <= MAX_CREDENTIAL_ID_BYTES:
        raise proof_failure(_log, "webauthn: the assertion names no credential id")
    return credential_id


def verify_assertion(
    policy: WebAuthnPolicy,
    response_json: str,
    expected_challenge: ApprovalChallenge,
    credential: WebAuthnCredential,
    *,
    user_id: str,
) -> int:
    """The authenticator's new sign count; ProofRejected unless ``response_json`` is
    ``credential``'s user-verified assertion over ``expected_challenge`` (derived, see the
    module docstring) for this RP ID from an allowed origin, its counter not regressed."""
    body = _response(response_json, "assertion")
    if not hmac.compare_digest(assertion_credential_id(response_json), credential.credential_id):
        raise proof_failure(_log, "webauthn: the assertion is by another credential")
    handle = body["response"].get("userHandle")
    # L2 §7.2 step 6: a user handle, when the authenticator returns one, names this user.
    expected_handle = b64url(user_handle(user_id))
    if handle and (not isinstance(handle, str) or not hmac.compare_digest(handle, expected_handle)):
        raise proof_failure(_log, "webauthn: the assertion's user handle is another user's")
    _check_origin(policy, body, "assertion")
    try:
        verified = verify_authentication_response(
            credential=body,
            expected_challenge=approval_webauthn_challenge(expected_challenge),
            expected_rp_id=policy.rp_id,
            expected_origin=_origin_of(body),
            credential_public_key=credential.public_key,
            credential_current_sign_count=credential.sign_count,
            # The library refuses a non-zero counter that did not increase (L2 §7.2
            # step 21): a cloned authenticator.
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise proof_failure(_log, f"webauthn: assertion refused ({type(exc).__name__})") from exc
    if not verified.user_verified or not 0 <= verified.new_sign_count <= _MAX_SIGN_COUNT:
        raise proof_failure(_log, "webauthn: user not verified or counter out of range")
    return verified.new_sign_count


# ── helpers ───────────────────────────────────────────────────────────────────────


def _response(response_json: str, what: str) -> dict[str, Any]:
    """The browser's PublicKeyCredential JSON as a dict, size-limited; ProofRejected else."""
    if not isinstance(response_json, str) or len(response_json) > MAX_RESPONSE_CHARS:
        raise proof_failure(_log, f"webauthn: {what} missing or too long")
    try:
        body = json.loads(response_json)
    except (ValueError, RecursionError) as exc:
        raise proof_failure(_log, f"webauthn: {what} is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("response"), dict):
        raise proof_failure(_log, f"webauthn: {what} is not a PublicKeyCredential")
    return body


def _origin_of(body: dict[str, Any]) -> str:
    """``clientDataJSON.origin`` of a response (empty if unreadable: then no origin matches)."""
    try:
        client_data = json.loads(b64url_decode(body["response"]["clientDataJSON"]))
        origin = client_data["origin"]
    except (InvalidInput, ValueError, TypeError, KeyError, RecursionError):
        return ""
    return origin if isinstance(origin, str) else ""


def _check_origin(policy: WebAuthnPolicy, body: dict[str, Any], what: str) -> None:
    if not policy.allows_origin(_origin_of(body)):
        raise proof_failure(_log, f"webauthn: {what} from an origin not allowed")
