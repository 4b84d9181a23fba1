"""The platform's authorization unit as the wallet sees it — real signature and code checks.

:class:`FakeAuthz` answers the six wallet routes of patient-approved authorization and
records every message it receives. It verifies proofs the way
``platform.authorization.AuthorizationServer.decide`` does: the challenge is rebuilt
from *its own* copy of the request and nonce, ``ApprovalChallenge.create(request_id,
dump_details(narrow(requested, approved)), nonce)``, and checked with
``identity.verify_device_approval`` / ``CertificateSignatureVerifier``; TOTP with
``identity.check_totp``. It is used directly as a sans-IO port (:meth:`FakeAuthz.call`)
and mounted on ``wallet_fakes.FakePlatform`` (:meth:`FakeAuthz.mount`) for the CLI.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from wallet_fakes import USER, FakePlatform

from patientkey.authz.rar import dump_details, narrow, parse_authorization_details
from patientkey.errors import Conflict, Forbidden, NotFound, PeerUnavailable
from patientkey.identity import (
    ApprovalChallenge,
    CertificateBinding,
    CertificateSignatureVerifier,
    DeviceKey,
    ProofRejected,
    TotpEnrollment,
    check_totp,
    new_totp_enrollment,
    provisioning_uri,
    verify_device_approval,
)
from patientkey.identity.x509sig import parse_certificate
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
    PendingMethod,
    PendingRequest,
)
from patientkey.protocol.routes import (
    AUTHZ_DECIDE,
    AUTHZ_INBOX,
    AUTHZ_OTP,
    GRANTS_LIST,
    GRANTS_REVOKE,
    IDENTITY_ENROLL,
)

M = TypeVar("M", bound=Message)

HIS = "his-1"
DETAILS: list[dict[str, Any]] = [
    {
        "type": "health_record_access",
        "record_types": ["prescription"],
        "records": {"his_id": HIS, "ids": ["rx-1", "rx-2", "rx-3"]},
        "actions": ["view", "fetch", "use"],
        "purpose": "pharmacy_dispense",
        "duration": "P30D",
    }
]
METHOD = PendingMethod(
    acr="urn:patientkey:acr:substantial",
    min_factors=2,
    one_of=[],
    description="substantial: 2 factors",
)
START = 1_700_000_000
_PEM = Encoding.PEM


@dataclass
class FakeAuthz:
    """Enrolled proofs, pending requests and grants of one patient; every message kept."""

    user: str = USER
    anchors: Sequence[x509.Certificate] = ()
    now: float = START
    messages: list[tuple[str, Message]] = field(default_factory=list)
    faults: set[str] = field(default_factory=set)
    device_keys: dict[str, DeviceKey] = field(default_factory=dict)
    password: str | None = None
    totp: TotpEnrollment | None = None
    contacts: dict[str, str] = field(default_factory=dict)
    certificate: str | None = None
    environments: list[Environment] = field(default_factory=list)
    pending: dict[str, PendingRequest] = field(default_factory=dict)
    decided: dict[str, PendingRequest] = field(default_factory=dict)
    nonces: dict[str, bytes] = field(default_factory=dict)  # the platform's own copy
    grants: dict[str, GrantView] = field(default_factory=dict)
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # challenge -> request, code
    sent: list[tuple[str, str, str]] = field(default_factory=list)  # channel, destination, code
    slept: list[float] = field(default_factory=list)
    next_code: str | None = None  # the next one-time code (a CLI test types it at the prompt)

    # --- test side

    def ask(
        self,
        details: Sequence[Mapping[str, Any]] = tuple(DETAILS),
        *,
        client_id: str = "pharmacy-app",
        binding_message: str | None = "BLUE-FOX-7",
    ) -> PendingRequest:
        """An app's request, as the platform puts it in the inbox (scope canonicalised)."""
        request_id = f"req-{len(self.nonces) + 1}"
        nonce = os.urandom(32)
        self.nonces[request_id] = nonce
        request = PendingRequest(
            request_id=request_id,
            client_id=client_id,
            client_name="Apotheke am Markt",
            scenario="pharmacy_dispense",
            purpose="dispense a prescription",
            binding_message=binding_message,
            authorization_details=dump_details(parse_authorization_details(list(details))),
            method=METHOD,
            expires_at=int(self.now) + 300,
            nonce=nonce,
        )
        self.pending[request_id] = request
        return request

    def challenge(
        self, request_id: str, approved: Sequence[Mapping[str, Any]] | None
    ) -> ApprovalChallenge:
        """The challenge the platform verifies signatures against (its own nonce)."""
        request = self.pending.get(request_id) or self.decided[request_id]
        chosen = None if approved is None else parse_authorization_details(list(approved))
        granted = narrow(parse_authorization_details(request.authorization_details), chosen)
        return ApprovalChallenge.create(request_id, dump_details(granted), self.nonces[request_id])

    def of(self, kind: type[M]) -> list[M]:
        """Every received message of type ``kind``, in order."""
        return [m for _, m in self.messages if isinstance(m, kind)]

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    # --- transport

    def routes(self) -> dict[str, tuple[type[Message], Callable[[str, Any], Message]]]:
        return {
            IDENTITY_ENROLL: (IdentityEnroll, self._enroll),
            AUTHZ_INBOX: (InboxRequest, self._inbox),
            AUTHZ_OTP: (OtpSend, self._send_otp),
            AUTHZ_DECIDE: (AuthzDecision, self._decide),
            GRANTS_LIST: (GrantsRequest, self._grants),
            GRANTS_REVOKE: (GrantRevoke, self._revoke),
        }

    def call(self, path: str, message: Message, reply: type[M], /) -> M:
        """The sans-IO port: one message in, one reply out (sender = this patient)."""
        expected, handler = self.routes()[path]
        assert isinstance(message, expected)
        # Round-trip through JSON as the hop does: what the wallet sends is what arrives.
        wire = expected.model_validate_json(message.model_dump_json())
        answer = self._handle(path, handler, self.user, wire)
        assert isinstance(answer, reply)
        return reply.model_validate_json(answer.model_dump_json())

    def mount(self, platform: FakePlatform) -> None:
        """Serve the routes on the wallet tests' HTTP platform (real hop envelopes)."""
        for path, (expected, handler) in self.routes().items():
            platform.route(
                path,
                expected,
                lambda sender, msg, p=path, h=handler: self._handle(p, h, sender, msg),
            )

    def _handle(
        self, path: str, handler: Callable[[str, Any], Message], sender: str, message: Message
    ) -> Message:
        self.messages.append((path, message))
        if sender != self.user or getattr(message, "user_id", self.user) != self.user:
            raise Forbidden("user_id does not match the client certificate")
        return handler(sender, message)

    # --- routes

    def _state(self, totp_uri: str | None = None) -> IdentityState:
        proofs: list[Any] = []
        if self.password is not None:
            proofs.append("password")
        if self.totp is not None:
            proofs.append("totp")
        proofs += [f"otp_{c}" for c in ("sms", "email") if c in self.contacts]
        if self.device_keys:
            proofs.append("device_signature")
        if self.certificate is not None:
            proofs.append("x509_signature")
        return IdentityState(
            user_id=self.user,
            proofs=proofs,
            device_key_ids=list(self.device_keys),
            totp_uri=totp_uri,
        )

    def _enroll(self, _sender: str, msg: IdentityEnroll) -> IdentityState:
        self.environments.append(msg.environment)
        if msg.device_key_pem is not None:
            key = DeviceKey.from_pem(msg.device_key_pem.encode())
            if key.key_id in self.device_keys:
                raise Conflict("this device key is enrolled already")
            self.device_keys[key.key_id] = key
        if msg.password is not None:
            if self.password is not None and not hmac.compare_digest(
                (msg.current_password or "").encode(), self.password.encode()
            ):
                raise ProofRejected()
            self.password = msg.password
        if msg.certificate_pem is not None:
            self.certificate = msg.certificate_pem
        for channel in ("sms", "email"):
            address = getattr(msg, channel)
            if address is not None:
                self.contacts[channel] = address
        uri = None
        if msg.totp:
            self.totp = new_totp_enrollment()
            uri = provisioning_uri(self.totp, self.user, "PatientKey")
        state = self._state(uri)
        if "lose-enroll-reply" in self.faults:
            self.faults.discard("lose-enroll-reply")
            raise PeerUnavailable("simulated: the answer was lost (the state is kept)")
        if "forget-device" in self.faults:
            return state.model_copy(update={"device_key_ids": []})
        return state

    def _inbox(self, _sender: str, msg: InboxRequest) -> Inbox:
        if not self.pending and "no-long-poll" not in self.faults:
            self.now += msg.wait  # the long poll ran out
        return Inbox(requests=list(self.pending.values()))

    def _send_otp(self, _sender: str, msg: OtpSend) -> OtpSent:
        if msg.request_id not in self.pending:
            raise NotFound("no such authorization request")
        destination = self.contacts.get(msg.channel)
        if destination is None:
            raise Conflict(f"no {msg.channel} contact is enrolled")
        challenge_id = f"otp-{len(self.codes) + 1}"
        code = self.next_code or f"{int.from_bytes(os.urandom(4), 'big') % 10**6:06d}"
        self.codes[challenge_id] = (msg.request_id, code)
        self.sent.append((msg.channel, destination, code))
        return OtpSent(
            challenge_id=challenge_id, channel=msg.channel, expires_at=int(self.now) + 300
        )

    def _decide(self, _sender: str, msg: AuthzDecision) -> AuthzOutcome:
        request = self.pending.get(msg.request_id)
        if request is None:
            raise NotFound("no such authorization request")
        if msg.decision == "deny":
            self.decided[msg.request_id] = self.pending.pop(msg.request_id)
            return AuthzOutcome(request_id=msg.request_id, state="denied")
        challenge = self.challenge(msg.request_id, msg.authorization_details)
        kinds = self._verify(msg, challenge)
        self.decided[msg.request_id] = self.pending.pop(msg.request_id)
        grant_id = f"g-{len(self.grants) + 1}"
        details = challenge.authorization_details
        if "grant-more" in self.faults:
            details = request.authorization_details
        self.grants[grant_id] = GrantView(
            grant_id=grant_id,
            client_id=request.client_id,
            scenario=request.scenario,
            status="active",
            authorization_details=details,
            acr=METHOD.acr,
            proofs=sorted(kinds),  # type: ignore[arg-type]
            created_at=int(self.now),
            expires_at=int(self.now) + 30 * 86400,
        )
        return AuthzOutcome(
            request_id=msg.request_id if "other-request" not in self.faults else "req-other",
            state="approved",
            grant_id=grant_id,
            acr=METHOD.acr,
            authorization_details=details,
        )

    def _verify(self, msg: AuthzDecision, challenge: ApprovalChallenge) -> set[str]:
        proofs = msg.proofs
        kinds: set[str] = set()
        if proofs.password is not None:
            if self.password is None or not hmac.compare_digest(
                proofs.password.encode(), self.password.encode()
            ):
                raise ProofRejected()
            kinds.add("password")
        if proofs.totp is not None:
            if self.totp is None:
                raise ProofRejected()
            self.totp = check_totp(self.totp, proofs.totp, self.now)
            kinds.add("totp")
        if proofs.otp_challenge_id is not None:
            expected = self.codes.pop(proofs.otp_challenge_id, None)
            if expected != (msg.request_id, proofs.otp_code):
                raise ProofRejected()
            kinds.add("otp_sms")
        if proofs.device_signature is not None:
            key = self.device_keys.get(proofs.device_key_id or "")
            if key is None:
                raise ProofRejected()
            verify_device_approval(key, challenge, proofs.device_signature)
            kinds.add("device_signature")
        if proofs.x509_signature is not None:
            assert self.certificate is not None
            assert proofs.certificate_chain_pem is not None
            chain = x509.load_pem_x509_certificates(proofs.certificate_chain_pem.encode())
            CertificateSignatureVerifier(self.anchors).verify(
                binding=CertificateBinding.from_certificate(
                    parse_certificate(self.certificate.encode())
                ),
                challenge=challenge,
                signature=proofs.x509_signature,
                certificate=chain[0].public_bytes(_PEM),
                intermediates=[c.public_bytes(_PEM) for c in chain[1:]],
            )
            kinds.add("x509_signature")
        if not kinds:
            raise ProofRejected()
        return kinds

    def _grants(self, _sender: str, _msg: GrantsRequest) -> GrantList:
        return GrantList(grants=list(self.grants.values()))

    def _revoke(self, _sender: str, msg: GrantRevoke) -> GrantList:
        grant = self.grants.get(msg.grant_id)
        if grant is None:
            raise NotFound("no such grant")
        if grant.status == "revoked":
            raise Conflict("already revoked")
        revoked = grant.model_copy(
            update={"status": "revoked", "revoked_at": int(self.now), "revoked_by": "patient"}
        )
        self.grants[msg.grant_id] = revoked
        if "revoke-other" in self.faults:
            return GrantList(grants=[])
        return GrantList(grants=[revoked])
