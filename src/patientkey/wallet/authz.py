"""The patient's side of patient-approved authorization (issue 4, DESIGN.md seed 1).

An app asks the platform for access (OpenID CIBA, RFC 9396 ``authorization_details``);
the request waits in the patient's inbox; the patient approves all or part of it with
proofs of identity, or denies it; later they list and revoke their grants. The
platform decides and enforces; the wallet's part is to show the request, to compute
exactly what is granted, and to sign it.

What the platform verifies a signature proof against (``identity.challenge``)::

    granted   = dump_details(narrow(parse(request.authorization_details), parse(approved)))
    challenge = ApprovalChallenge.create(request_id, granted, nonce)   # nonce from the inbox

:func:`granted_details` and :func:`approval_challenge` compute the same, so the device
key (``identity.device``, enrolled by :meth:`WalletAuthz.enroll_identity`) and an
X.509 certificate key (``identity.x509sig``) sign exactly the grant the platform
stores; a widening is refused here, before anything is sent.

:func:`narrowed_details` turns the patient's choices (fewer actions, fewer records, a
shorter duration) into an approved ``authorization_details`` array that ``narrow``
accepts; it refuses anything the request did not ask for.

:class:`WalletAuthz` does the messages over the wallet's platform hop (``WalletCore``
hands it its ``_call``) and keeps the device key and the install id in the keystore,
saved before the first message that depends on them leaves.
"""

from __future__ import annotations

import json
import logging
import math
import platform as _host
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, Literal, Protocol, TypeVar

from pydantic import ValidationError

from patientkey import __version__
from patientkey.authz.rar import (
    ACTIONS,
    HealthRecordAccess,
    dump_details,
    narrow,
    parse_authorization_details,
    parse_duration,
)
from patientkey.errors import Conflict, CryptoError, InvalidInput, NotFound
from patientkey.identity.challenge import ApprovalChallenge, canonical_json
from patientkey.identity.device import DeviceAlgorithm, sign_device_approval
from patientkey.identity.webauthn import WebAuthnPolicy, authentication_options, b64url_decode
from patientkey.identity.x509sig import CertificatePrivateKey, sign_x509_approval
from patientkey.protocol.messages import (
    AuthzDecision,
    AuthzOutcome,
    Environment,
    GrantList,
    GrantRevoke,
    GrantsRequest,
    GrantView,
    IdentityEnroll,
    IdentityState,
    Inbox,
    InboxRequest,
    Message,
    OtpSend,
    OtpSent,
    PendingRequest,
    Proofs,
)
from patientkey.protocol.routes import (
    AUTHZ_DECIDE,
    AUTHZ_INBOX,
    AUTHZ_OTP,
    GRANTS_LIST,
    GRANTS_REVOKE,
    IDENTITY_ENROLL,
)
from patientkey.wallet.store import DeviceSecret, WalletState, new_install_id

__all__ = [
    "MAX_INBOX_WAIT",
    "PlatformCall",
    "WalletAuthz",
    "approval_challenge",
    "chosen_details",
    "granted_details",
    "narrowed_details",
    "request_choices",
    "user_agent",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

MAX_INBOX_WAIT: Final = 30
"""The platform holds one inbox long poll for at most this many seconds (InboxRequest)."""
_MIN_PASSWORD: Final = 8


class PlatformCall(Protocol):
    """One enveloped request to the platform and its reply (``WalletCore._call``)."""

    def __call__(self, path: str, message: Message, reply: type[M], /) -> M: ...


# ── pure helpers ──────────────────────────────────────────────────────────────────


def user_agent() -> str:
    """What the wallet says it is (``Environment.user_agent``): version and OS, no more."""
    return f"patientkey-wallet/{__version__} ({_host.system() or 'unknown'})"


def granted_details(
    request: PendingRequest, approved: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """What the platform grants when the patient approves ``approved`` (None: all asked).

    The platform's own computation (``narrow`` of the parsed request), so a signature
    over it verifies there; InvalidAuthorizationDetails if ``approved`` is broader.
    """
    requested = parse_authorization_details(list(request.authorization_details))
    chosen = None if approved is None else parse_authorization_details(list(approved))
    return dump_details(narrow(requested, chosen))


def approval_challenge(
    request: PendingRequest, granted: Sequence[Mapping[str, Any]]
) -> ApprovalChallenge:
    """The challenge a signature proof covers: request id, the inbox's nonce, ``granted``."""
    return ApprovalChallenge.create(request.request_id, granted, request.nonce)


def narrowed_details(
    requested: Sequence[Mapping[str, Any]],
    *,
    actions: Collection[str] | None = None,
    records: Collection[str] | None = None,
    duration: str | int | None = None,
) -> list[dict[str, Any]]:
    """The requested ``authorization_details`` cut down to the patient's choices.

    ``actions`` keeps only these actions, ``records`` only these record ids (P_IDs),
    ``duration`` (seconds or ISO 8601, e.g. ``P7D``) caps every object's duration.
    Objects left with no action or no record are dropped. Raises InvalidInput for a
    choice the request did not ask for (an action, a record outside its selection, a
    longer duration) or one that leaves nothing to approve; the result is checked
    with ``narrow``, so it can only be within the request.
    """
    asked = parse_authorization_details(list(requested))
    wanted_actions = _chosen_actions(asked, actions)
    wanted_ids = _chosen_ids(asked, records)
    seconds = _chosen_duration(asked, duration)
    kept: list[HealthRecordAccess] = []
    for entry in asked:
        changed = entry.to_json()
        if wanted_actions is not None:
            left = [a for a in entry.actions if a in wanted_actions]
            if not left:
                continue
            changed["actions"] = left
        if wanted_ids is not None:
            within = entry.records.ids
            ids = [i for i in sorted(wanted_ids) if within is None or i in within]
            if not ids:
                continue
            # Adding ids to a hospital or date selector keeps its other constraints: narrower.
            changed["records"] = {**changed["records"], "ids": ids}
        if seconds is not None:
            # A cap: an object asked for less keeps its own duration.
            own = entry.duration
            changed["duration"] = seconds if own is None else min(seconds, own)
        kept.append(HealthRecordAccess.model_validate(changed))
    if not kept:
        raise InvalidInput("these choices leave nothing to approve: deny the request instead")
    # narrow() proves it once more: the result can only be within the request.
    return dump_details(narrow(asked, tuple(kept)))


def chosen_details(
    request: PendingRequest,
    *,
    actions: Collection[str] | None = None,
    records: Collection[str] | None = None,
    duration: str | int | None = None,
) -> list[dict[str, Any]] | None:
    """The ``approved_details`` for :meth:`WalletAuthz.approve` from the patient's choices.

    None (approve everything asked) when no choice narrows anything; otherwise
    :func:`narrowed_details`. One rule for ``wallet approve`` and the wallet UI.
    """
    if actions is None and records is None and duration is None:
        return None
    return narrowed_details(
        request.authorization_details, actions=actions, records=records, duration=duration
    )


def request_choices(request: PendingRequest) -> dict[str, Any]:
    """What the patient may narrow ``request`` to: its actions, named records, longest duration.

    Read from the parsed details, the view :func:`narrowed_details` checks choices
    against (``duration`` None: some object asks for no limit). Details the wallet
    cannot parse offer no choice: approving such a request fails anyway.
    """
    try:
        asked = parse_authorization_details(list(request.authorization_details))
    except InvalidInput:
        return {"actions": [], "records": [], "duration": None}
    durations = [entry.duration for entry in asked]
    return {
        "actions": list(dict.fromkeys(a for entry in asked for a in entry.actions)),
        "records": list(dict.fromkeys(i for entry in asked for i in entry.records.ids or ())),
        "duration": None if None in durations else max(d for d in durations if d is not None),
    }


def _chosen_actions(
    asked: Sequence[HealthRecordAccess], actions: Collection[str] | None
) -> set[str] | None:
    if actions is None:
        return None
    chosen = set(actions)
    if not chosen:
        raise InvalidInput("choose at least one action")
    unknown = sorted(chosen - set(ACTIONS))
    if unknown:
        raise InvalidInput(f"unknown action(s): {', '.join(unknown)}")
    offered = {a for entry in asked for a in entry.actions}
    extra = sorted(chosen - offered)
    if extra:
        raise InvalidInput(f"the request does not ask for: {', '.join(extra)}")
    return chosen


def _chosen_ids(
    asked: Sequence[HealthRecordAccess], records: Collection[str] | None
) -> set[str] | None:
    if records is None:
        return None
    chosen = set(records)
    if not chosen:
        raise InvalidInput("choose at least one record")
    outside = sorted(
        i
        for i in chosen
        if not any(entry.records.ids is None or i in entry.records.ids for entry in asked)
    )
    if outside:
        raise InvalidInput(f"the request does not cover record(s): {', '.join(outside)}")
    return chosen


def _chosen_duration(asked: Sequence[HealthRecordAccess], duration: str | int | None) -> int | None:
    if duration is None:
        return None
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    asked_for = [entry.duration for entry in asked]
    if None not in asked_for and seconds > max(d for d in asked_for if d is not None):
        raise InvalidInput("the chosen duration is longer than the request asks for")
    return seconds


def _build(cls: type[M], **fields: Any) -> M:
    """``cls(**fields)``; InvalidInput naming the field (never its value: it may be secret)."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or cls.__name__
        raise InvalidInput(f"{where}: {first.get('msg', 'invalid')}") from None


def _refuse(reason: str) -> CryptoError:
    log.warning("refused a reply: %s", reason, stacklevel=2)
    return CryptoError(reason=reason)


# ── the wallet's operations ───────────────────────────────────────────────────────


class WalletAuthz:
    """The patient's authorization operations over the wallet's platform hop.

    ``state`` is the wallet's live state and ``save`` persists it (the keystore);
    ``call`` sends one enveloped message to the platform.
    """

    def __init__(
        self,
        *,
        state: WalletState,
        save: Callable[[], None],
        call: PlatformCall,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        webauthn_rp_id: str = "localhost",
    ) -> None:
        self._state = state
        self._save = save
        self._call = call
        self._clock = clock
        self._sleep = sleep
        self._webauthn = WebAuthnPolicy(rp_id=webauthn_rp_id)
        # The passkeys of the last IdentityState seen (base64url ids; empty: discoverable).
        self._passkeys: list[str] = []

    def __repr__(self) -> str:
        return f"WalletAuthz({self._state.user_id!r})"

    @property
    def user_id(self) -> str:
        return self._state.user_id

    @property
    def device_key_id(self) -> str | None:
        """The ``key_id`` of the device key, None before the first identity enrollment."""
        device = self._state.device
        return None if device is None else device.public.key_id

    @property
    def device_enrolled(self) -> bool:
        """True when the platform holds the device key: approvals can carry its signature."""
        device = self._state.device
        return device is not None and device.enrolled

    def environment(self) -> Environment:
        """The login environment the platform compares (step-up on change, RFC 9470)."""
        if self._state.install_id is None:
            # Drawn once and saved before it is sent: it must stay the same.
            self._state.install_id = new_install_id()
            self._save()
        return Environment(user_agent=user_agent(), device=self._state.install_id)

    # ------------------------------------------------------------------ enrollment

    def enroll_identity(
        self,
        *,
        password: str | None = None,
        totp: bool = False,
        sms: str | None = None,
        email: str | None = None,
        certificate_pem: str | None = None,
        current_password: str | None = None,
        algorithm: DeviceAlgorithm = DeviceAlgorithm.ML_DSA_65,
    ) -> IdentityState:
        """Enroll proofs at the platform; the device key is created and sent the first time.

        ``algorithm`` applies only when the wallet has no device key yet. Replacing an
        enrolled password needs ``current_password``. The TOTP URI of the answer (with
        ``totp``) holds the shared secret: show it once, never store or log it.
        """
        if password is not None and len(password) < _MIN_PASSWORD:
            raise InvalidInput(f"a password has at least {_MIN_PASSWORD} characters")
        device = self._state.device
        if device is None:
            device = DeviceSecret.generate(algorithm)
            self._state.device = device
            self._save()  # the key exists on disk before its public half leaves
            log.info("generated a %s device key %s", device.algorithm, device.public.key_id)
        fields: dict[str, Any] = {
            "user_id": self.user_id,
            "environment": self.environment(),
            "password": password,
            "current_password": current_password,
            "certificate_pem": certificate_pem,
            "totp": totp,
            "sms": sms,
            "email": email,
        }
        key = device.public
        pem = None if device.enrolled else key.to_pem().decode("ascii")
        try:
            state = self._call(
                IDENTITY_ENROLL, _build(IdentityEnroll, **fields, device_key_pem=pem), IdentityState
            )
        except Conflict:
            if pem is None:
                raise
            # The platform holds this key already: an earlier answer was lost on the way.
            log.info("device key %s was enrolled already", key.key_id)
            state = self._call(IDENTITY_ENROLL, _build(IdentityEnroll, **fields), IdentityState)
        if state.user_id != self.user_id:
            raise _refuse("identity: answer for another user")
        self._passkeys = list(state.webauthn_credential_ids)
        enrolled = key.key_id in state.device_key_ids
        if enrolled != device.enrolled:
            # Not enrolled (any more) at the platform: the next enrollment sends it again.
            self._state.device = device.model_copy(update={"enrolled": enrolled})
            self._save()
        return state

    # ------------------------------------------------------------------ passkeys

    def webauthn_begin(self) -> str:
        """Start a passkey registration: the platform's ``PublicKeyCredentialCreationOptions``
        JSON, for the web page's ``navigator.credentials.create``. Its challenge is good
        for one :meth:`webauthn_register` within a few minutes."""
        fields = {"user_id": self.user_id, "environment": self.environment()}
        state = self._call(
            IDENTITY_ENROLL, _build(IdentityEnroll, **fields, webauthn_begin=True), IdentityState
        )
        if state.user_id != self.user_id or state.webauthn_options is None:
            raise _refuse("webauthn: answer for another user or without options")
        try:
            rp_id = json.loads(state.webauthn_options)["rp"]["id"]
            # Assertions must name the RP ID the passkeys are registered for.
            self._webauthn = WebAuthnPolicy(rp_id=rp_id)
        except (ValueError, TypeError, KeyError, InvalidInput) as exc:
            raise _refuse("webauthn: the creation options name no valid RP ID") from exc
        self._passkeys = list(state.webauthn_credential_ids)
        return state.webauthn_options

    def webauthn_register(self, response_json: str) -> IdentityState:
        """Complete a passkey registration with the browser's ``PublicKeyCredential`` JSON
        (``navigator.credentials.create``'s answer); the platform verifies and stores it."""
        fields = {"user_id": self.user_id, "environment": self.environment()}
        state = self._call(
            IDENTITY_ENROLL,
            _build(IdentityEnroll, **fields, webauthn_registration=response_json),
            IdentityState,
        )
        if state.user_id != self.user_id:
            raise _refuse("webauthn: answer for another user")
        try:
            credential_id = json.loads(response_json)["id"]
        except (ValueError, TypeError, KeyError):
            credential_id = None
        if credential_id not in state.webauthn_credential_ids:
            raise _refuse("webauthn: the platform does not list the registered passkey")
        self._passkeys = list(state.webauthn_credential_ids)
        return state

    def webauthn_request_options(
        self,
        request: PendingRequest,
        approved_details: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """``PublicKeyCredentialRequestOptions`` JSON for approving ``request`` (or the
        narrower ``approved_details``) with a passkey: its challenge is derived from the
        same :func:`approval_challenge` the device key signs (``identity.webauthn``), so
        the assertion covers the request id, the inbox nonce and exactly what is granted.
        Pass the same ``approved_details`` to :meth:`approve`."""
        challenge = approval_challenge(request, granted_details(request, approved_details))
        return authentication_options(
            self._webauthn,
            credential_ids=[b64url_decode(i) for i in self._passkeys],
            challenge=challenge,
        )

    # ------------------------------------------------------------------ inbox

    def inbox(self, wait: int = 0, *, per_call: int = MAX_INBOX_WAIT) -> list[PendingRequest]:
        """The pending requests; with ``wait`` seconds, held until one arrives.

        A wait longer than ``per_call`` (keep it below the HTTP timeout) is split into
        several long polls.
        """
        if wait < 0 or not 1 <= per_call <= MAX_INBOX_WAIT:
            raise InvalidInput(f"wait must be >= 0 and per_call within 1..{MAX_INBOX_WAIT}")
        deadline = self._clock() + wait
        while True:
            started = self._clock()
            left = max(0, math.ceil(deadline - started))
            asked = min(left, per_call)
            box = self._call(AUTHZ_INBOX, InboxRequest(user_id=self.user_id, wait=asked), Inbox)
            if box.requests or left <= per_call:
                return list(box.requests)
            # A platform that did not hold the poll (all its long-poll slots busy) is
            # asked again only when this poll would have ended: no busy loop.
            early = asked - (self._clock() - started)
            if early > 0:
                self._sleep(early)

    def pending(self, request_id: str) -> PendingRequest:
        """One pending request by id; NotFound if it is not (or no longer) pending."""
        for request in self.inbox():
            if request.request_id == request_id:
                return request
        raise NotFound(f"no pending authorization request {request_id}")

    # ------------------------------------------------------------------ decide

    def send_otp(self, request_id: str, channel: Literal["sms", "email"]) -> OtpSent:
        """Have the platform send a one-time code for ``request_id`` to the enrolled contact."""
        sent = self._call(
            AUTHZ_OTP,
            _build(OtpSend, user_id=self.user_id, request_id=request_id, channel=channel),
            OtpSent,
        )
        if sent.channel != channel:
            raise _refuse("otp: answer for another channel")
        return sent

    def approve(
        self,
        request: PendingRequest,
        *,
        approved_details: Sequence[Mapping[str, Any]] | None = None,
        password: str | None = None,
        totp: str | None = None,
        otp: tuple[str, str] | None = None,
        device: bool = True,
        x509: tuple[str, CertificatePrivateKey] | None = None,
        webauthn: str | None = None,
    ) -> AuthzOutcome:
        """Approve ``request`` (or the narrower ``approved_details``) with these proofs.

        ``otp`` is (challenge_id from :meth:`send_otp`, code); ``x509`` is (certificate
        chain PEM, leaf first; its private key); ``webauthn`` is the browser's assertion
        JSON over :meth:`webauthn_request_options` (with ``device=False`` for a passkey
        alone). The device key (unless ``device`` is False) and the certificate key sign
        the granted details, the request id and the inbox's nonce. Nothing is sent if
        the details widen the request or no proof is given (InvalidAuthorizationDetails,
        an InvalidInput, for a widening).
        """
        granted = granted_details(request, approved_details)
        challenge = approval_challenge(request, granted)
        proofs: dict[str, Any] = {"password": password, "totp": totp, "webauthn": webauthn}
        if otp is not None:
            proofs["otp_challenge_id"], proofs["otp_code"] = otp
        if device:
            secret = self._state.device
            if secret is None or not secret.enrolled:
                raise Conflict(
                    "no enrolled device key: run `patientkey wallet identity` first "
                    "(or approve without the device signature)"
                )
            proofs["device_key_id"] = secret.public.key_id
            proofs["device_signature"] = sign_device_approval(secret.private_key(), challenge)
        if x509 is not None:
            chain, key = x509
            proofs["certificate_chain_pem"] = chain
            proofs["x509_signature"] = sign_x509_approval(key, challenge)
        if all(value is None for value in proofs.values()):
            raise InvalidInput(f"give at least one proof ({request.method.description})")
        decision = _build(
            AuthzDecision,
            user_id=self.user_id,
            request_id=request.request_id,
            decision="approve",
            environment=self.environment(),
            authorization_details=None if approved_details is None else granted,
            proofs=_build(Proofs, **proofs),
        )
        outcome = self._call(AUTHZ_DECIDE, decision, AuthzOutcome)
        if outcome.request_id != request.request_id or outcome.state != "approved":
            raise _refuse("decide: answer for another request or decision")
        issued = outcome.authorization_details
        if issued is None or canonical_json(issued) != challenge.details:
            # The grant exists, but not as signed: say so rather than report success.
            raise Conflict(
                f"the platform recorded grant {outcome.grant_id} with other details than "
                "approved; revoke it with `patientkey wallet revoke`"
            )
        return outcome

    def deny(self, request_id: str) -> AuthzOutcome:
        """Deny a pending request (no proof needed: saying no is always allowed)."""
        decision = _build(
            AuthzDecision,
            user_id=self.user_id,
            request_id=request_id,
            decision="deny",
            environment=self.environment(),
        )
        outcome = self._call(AUTHZ_DECIDE, decision, AuthzOutcome)
        if outcome.request_id != request_id or outcome.state != "denied":
            raise _refuse("decide: answer for another request or decision")
        return outcome

    # ------------------------------------------------------------------ grants

    def grants(self) -> list[GrantView]:
        """Every grant of the patient (active, revoked, expired)."""
        return list(self._call(GRANTS_LIST, GrantsRequest(user_id=self.user_id), GrantList).grants)

    def revoke(self, grant_id: str) -> GrantView:
        """Revoke a grant; the platform refuses its very next use."""
        listed = self._call(
            GRANTS_REVOKE, _build(GrantRevoke, user_id=self.user_id, grant_id=grant_id), GrantList
        )
        for grant in listed.grants:
            if grant.grant_id == grant_id:
                if grant.status != "revoked":
                    raise _refuse("revoke: the grant is not reported revoked")
                return grant
        raise _refuse("revoke: answer for another grant")
