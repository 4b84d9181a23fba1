"""The platform's authorization unit (DESIGN.md seed 1) over the sans-IO ``authz`` core.

An app asks, the patient decides with proofs of identity, the platform issues, stores,
enforces and revokes. This module wires the pure pieces to the platform's store, keys
and clock; it does no HTTP (``platform.oauth`` and ``platform.app`` are the adapters):

===========================  ==============================================================
method                       what
===========================  ==============================================================
``backchannel``              ``POST /bc-authorize`` (CIBA §7): client authentication
                             (RFC 7523), request → scenario → scope → method, stored
``token``                    ``POST /token`` (CIBA §10.1): poll answers, then an RFC 9068
                             access token, issued once
``introspect`` / ``revoke``  RFC 7662 / RFC 7009
``enroll``                   the patient enrolls proofs: password, device key, TOTP,
                             certificate, SMS/email contacts, passkeys (wallet hop)
``inbox``                    pending requests for the wallet, long-polled
``send_otp``                 a one-time code through the SMS/email gateway
``decide``                   the patient approves (all or part, with proofs) or denies
``grants`` / ``revoke_grant``  the patient's grants; revocation by the patient
``check_use``                the live-grant gate of every third-party action (token)
``require_grant``            the live-grant gate of a share (no token: the wallet asks)
===========================  ==============================================================

Transactions: each call is one store transaction, except where a proof is checked
(``decide``, a password change) or a code is sent. There every store call of the proof
verifiers is its own short transaction: the lockout charge commits before the proof is
checked, no database lock is held during Argon2id (~0.2 s) or a signature check or the
gateway call, and failed proofs stay charged and recorded although the decision is
refused. ``decide`` then decides in one transaction (compare-and-set on the request, so
a proof can never approve twice).

Step-up (RFC 9470): a decision whose login environment (the wallet's user agent and
install id, and the network the platform sees) differs from the one last accepted
needs one assurance level more than the request's method; uses of a grant are judged by
``catalog.step_up_required`` in ``authz.grants.check`` (limits, sensitive actions,
fetch/download/share of a report).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from patientkey.authz import ciba
from patientkey.authz.audit import AuditEvent, AuditKind
from patientkey.authz.catalog import Catalog
from patientkey.authz.clientauth import authenticate_client
from patientkey.authz.clients import RegisteredClient
from patientkey.authz.consent import build_consent, revoke_consent
from patientkey.authz.errors import (
    InsufficientUserAuthentication,
    InvalidGrant,
    InvalidToken,
    OAuthError,
)
from patientkey.authz.grants import Grant, Use, check, create_grant, find_use, revoke_grant
from patientkey.authz.introspection import introspect
from patientkey.authz.metadata import server_metadata
from patientkey.authz.rar import (
    Action,
    RecordRef,
    dump_details,
    narrow,
    parse_authorization_details,
)
from patientkey.authz.revocation import revoke_token
from patientkey.authz.tokens import AccessTokenIssuer, AccessTokenVerifier, token_response
from patientkey.errors import Conflict, Forbidden, InvalidInput, NotFound
from patientkey.identity import (
    ApprovalChallenge,
    CertificateBinding,
    CertificateSignatureVerifier,
    DeviceKey,
    Gateway,
    Lockout,
    LockoutPolicy,
    OneTimeCodes,
    OtpChannel,
    PasswordVerifier,
    ProofKind,
    ProofRejected,
    TotpVerifier,
    new_totp_enrollment,
    provisioning_uri,
    verify_device_approval,
)
from patientkey.identity.lockout import AUDIT_KIND, LockoutChange, LockoutState
from patientkey.identity.otp import OtpChallenge, check_destination
from patientkey.identity.totp import TotpEnrollment
from patientkey.identity.webauthn import (
    REGISTRATION_CHALLENGE_LEN,
    WebAuthnCredential,
    WebAuthnPolicy,
    assertion_credential_id,
    registration_options,
    verify_assertion,
    verify_registration,
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
    OtpSend,
    OtpSent,
    PendingMethod,
    PendingRequest,
    Proofs,
)
from patientkey.protocol.routes import OAUTH_TOKEN
from patientkey.storage.authz import AuthzRepository
from patientkey.storage.repos import Store

__all__ = ["AuthorizationServer", "AuthzKeys", "OAuthAnswer", "error_answer"]

_log = logging.getLogger(__name__)
T = TypeVar("T")

_NONCE_LABEL: Final = b"patientkey/authz/approval-nonce/v1"
_ENV_LABEL: Final = b"patientkey/authz/environment/v1"
_ISSUER_NAME: Final = "PatientKey"
# A passkey registration's challenge is good for this long (the browser's own timeout
# is 120 s; the rest is for the patient reading the prompt), and for one use.
_WEBAUTHN_REGISTRATION_TTL: Final = 300
_LONG_POLL_SLICE: Final = 0.5  # re-read the store this often (other workers' requests)
# A held long poll occupies one of the 40 threads of the server's pool: at most this many
# wait at once, the others answer at once (the wallet polls again).
_MAX_LONG_POLLS: Final = 16


@dataclass(frozen=True, slots=True)
class AuthzKeys:
    """The authorization unit's secrets: the token signing key and a 32-byte MAC key
    (approval nonces, one-time code MACs). Never logged, never on the wire."""

    signing_key: Ed25519PrivateKey
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < 32:
            raise InvalidInput("the authorization secret must be at least 32 bytes")

    @classmethod
    def generate(cls) -> AuthzKeys:
        return cls(Ed25519PrivateKey.generate(), secrets.token_bytes(32))


@dataclass(frozen=True, slots=True)
class OAuthAnswer:
    """An OAuth endpoint's answer: status, JSON body, headers (authlib's triple)."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]


_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _Users:
    """CIBA's user directory: a patient is known once they enrolled a proof."""

    def __init__(self, repo: AuthzRepository) -> None:
        self._repo = repo

    def lookup(self, user_id: str) -> ciba.UserEntry | None:
        known = (
            self._repo.credentials.password_hash(user_id) is not None
            or bool(self._repo.credentials.device_keys(user_id))
            or bool(self._repo.webauthn.for_user(user_id))
        )
        return ciba.UserEntry(user_id=user_id) if known else None

    def check_user_code(self, user_id: str, code: str) -> bool:
        # No patient requires a user_code; metadata says so (user_code=False).
        return False


class AuthorizationServer:
    """The authorization unit: OAuth/CIBA endpoints, the patient's side, the live gates."""

    def __init__(
        self,
        store: Store[AuthzRepository],
        *,
        issuer: str,
        keys: AuthzKeys,
        catalog: Catalog,
        gateway: Gateway,
        policy: ciba.CibaPolicy | None = None,
        token_lifetime: int = 300,
        lockout: LockoutPolicy | None = None,
        x509_trust: CertificateSignatureVerifier | None = None,
        pinger: Callable[[ciba.Ping], None] | None = None,
        assertion_max_lifetime: int = 3600,
        webauthn: WebAuthnPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.issuer = issuer.rstrip("/")
        self._keys = keys
        self.catalog = catalog
        self._gateway = gateway
        self.policy = policy or ciba.CibaPolicy()
        self._issuer = AccessTokenIssuer(
            keys.signing_key, issuer=self.issuer, lifetime=token_lifetime
        )
        # The platform itself is the resource server of its tokens: audience = issuer.
        self._verifier = AccessTokenVerifier(
            keys.signing_key.public_key(), issuer=self.issuer, audience=self.issuer
        )
        self._lockout_policy = lockout or LockoutPolicy()
        self._x509 = x509_trust
        self._webauthn = webauthn or WebAuthnPolicy()
        self._pinger = pinger
        # One hour: common client libraries (Authlib) sign assertions that long; the
        # jti is remembered until exp, so a longer life never means a replay.
        self._assertion_max_lifetime = assertion_max_lifetime
        self._clock = clock
        self._passwords = PasswordVerifier()
        self._calls = _Calls(store)
        self._lockout = Lockout(self._calls.lockout, self._lockout_policy, clock=clock)
        self._totp = TotpVerifier(self._calls.totp, clock=clock)
        self._codes = OneTimeCodes(keys.secret, self._calls.otp, gateway, clock=clock)
        self._arrived = threading.Condition()
        self._long_polls = threading.BoundedSemaphore(_MAX_LONG_POLLS)

    def _now(self) -> int:
        return int(self._clock())

    # ── discovery ────────────────────────────────────────────────────────────────

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 / OpenID Discovery metadata (``authz.metadata``)."""
        # No patient can set a CIBA user_code here (``_Users.check_user_code``): a
        # user_code a client sent would be ignored, so none is advertised.
        return server_metadata(self.issuer, catalog=self.catalog, user_code=False)

    def jwks(self) -> dict[str, Any]:
        """The public keys access tokens are verified with."""
        return self._issuer.public_jwks()

    # ── client authentication ──────────────────────────────────────────────────────

    def _client(
        self, repo: AuthzRepository, form: Mapping[str, str], endpoint: str
    ) -> RegisteredClient:
        return authenticate_client(
            form,
            # The issuer, this endpoint, or the token endpoint: OIDC Core §9 names the token
            # endpoint as aud, and client libraries reuse it for introspection/revocation.
            audiences=(self.issuer, self.issuer + endpoint, self.issuer + OAUTH_TOKEN),
            lookup=repo.clients.get,
            replay=repo.tokens,
            now=self._now(),
            max_lifetime=self._assertion_max_lifetime,
        )

    # ── CIBA: the app asks ─────────────────────────────────────────────────────────

    def backchannel(self, form: Mapping[str, str], *, endpoint: str) -> OAuthAnswer:
        """``POST /bc-authorize``: accept a request and push it to the patient's wallet."""
        now = self._now()
        with self._store.transaction() as repo:
            client = self._client(repo, form, endpoint)
            accepted = ciba.backchannel_authenticate(
                form,
                client=client.info,
                users=_Users(repo),
                catalog=self.catalog,
                policy=self.policy,
                now=now,
            )
            repo.requests.add(accepted.request)
            _record(repo, accepted.event)
        with self._arrived:
            self._arrived.notify_all()
        return OAuthAnswer(200, accepted.response, _NO_STORE)

    def token(self, form: Mapping[str, str], *, endpoint: str) -> OAuthAnswer:
        """``POST /token``: the CIBA poll; the access token once the patient approved."""
        now = self._now()
        with self._store.transaction() as repo:
            client = self._client(repo, form, endpoint)
            try:
                token_request = ciba.parse_token_request(form)
            except OAuthError as exc:
                return error_answer(exc)
            stored = repo.requests.get(token_request.auth_req_id)
            answer = ciba.poll(
                stored, token_request, client=client.info, policy=self.policy, now=now
            )
            # Stored first, committed with the answer: the slow_down interval and the
            # client's assertion jti stay recorded although the client hears an error.
            won = answer.store is None or (
                stored is not None and repo.requests.replace(stored, answer.store)
            )
            if answer.error is not None:
                return error_answer(answer.error)
            if not won:
                # A concurrent poll issued the one token for this request (CIBA §11).
                return error_answer(InvalidGrant("auth_req_id was already used"))
            assert answer.store is not None
            issued_for = answer.store
            assert issued_for.grant_id is not None
            assert issued_for.granted is not None
            assert issued_for.acr is not None
            assert issued_for.auth_time is not None
            issued = self._issuer.issue(
                sub=issued_for.user_id,
                audience=self.issuer,
                client_id=client.client_id,
                grant_id=issued_for.grant_id,
                details=issued_for.granted,
                acr=issued_for.acr,
                auth_time=issued_for.auth_time,
                now=now,
            )
            _record(repo, ciba.token_issued_event(issued_for, jti=issued.claims.jti, now=now))
        return OAuthAnswer(200, token_response(issued), _NO_STORE)

    def introspect(self, form: Mapping[str, str], *, endpoint: str) -> OAuthAnswer:
        """``POST /introspect`` (RFC 7662): the live state of a token."""
        with self._store.transaction() as repo:
            client = self._client(repo, form, endpoint)
            body = introspect(
                form,
                caller=client.client_id,
                verifier=self._verifier,
                store=repo.grants,
                now=self._now(),
            )
            if body.get("active") is True:
                # Every use of a credential is on the patient's record: a resource server
                # acting on a token asks here first (RFC 7662 §2.1).
                _record(
                    repo,
                    AuditEvent(
                        kind=AuditKind.INTROSPECTED,
                        at=self._now(),
                        user_id=body.get("sub"),
                        client_id=body.get("client_id"),
                        grant_id=body.get("grant_id"),
                        actor=client.client_id,
                    ),
                )
        return OAuthAnswer(200, body, _NO_STORE)

    def revoke(self, form: Mapping[str, str], *, endpoint: str) -> OAuthAnswer:
        """``POST /revoke`` (RFC 7009): the app gives up its grant; 200 whatever it was."""
        now = self._now()
        with self._store.transaction() as repo:
            client = self._client(repo, form, endpoint)
            event = revoke_token(
                form, client=client.info, verifier=self._verifier, store=repo.grants, now=now
            )
            if event is not None:
                assert event.grant_id is not None
                self._consent_revoked(repo, event.grant_id)
                _record(repo, event)
        return OAuthAnswer(200, {}, _NO_STORE)

    # ── the patient: enrollment ─────────────────────────────────────────────────────

    def enroll(self, caller: str, request: IdentityEnroll, *, network: str) -> IdentityState:
        """Enroll (or add) the patient's proofs. Replacing a password needs the current one.

        Passkeys take two calls: ``webauthn_begin`` answers the creation options (a fresh
        challenge, kept briefly), ``webauthn_registration`` brings the browser's answer.
        Like a device key, a passkey is added on the wallet's authenticated hop alone.
        """
        user = _own(caller, request.user_id)
        device = (
            DeviceKey.from_pem(request.device_key_pem.encode()) if request.device_key_pem else None
        )
        certificate = (
            parse_certificate(request.certificate_pem.encode()) if request.certificate_pem else None
        )
        for channel, address in (("sms", request.sms), ("email", request.email)):
            if address is not None:
                check_destination(OtpChannel(channel), address)
        if request.password is not None and self._calls.run(
            lambda repo: repo.credentials.password_hash(user) is not None
        ):
            # Changing a password is a proof in itself: the current one, lockout-guarded.
            current = request.current_password or ""
            check = [(ProofKind.PASSWORD, lambda: self._password(user, current))]
            self._attempts(user, check, request_id=None)
        passkey = self._passkey_registration(user, request)
        new_hash = self._passwords.hash(request.password) if request.password else None
        totp_uri: str | None = None
        now = self._now()
        with self._store.transaction() as repo:
            creds = repo.credentials
            if new_hash is not None:
                creds.set_password_hash(user, new_hash)
            if device is not None:
                creds.add_device_key(user, device)
            if certificate is not None:
                creds.set_certificate(user, request.certificate_pem or "")
            if request.sms is not None:
                creds.set_contact(user, "sms", request.sms)
            if request.email is not None:
                creds.set_contact(user, "email", request.email)
            if request.totp:
                enrollment = new_totp_enrollment()
                repo.totp.put(user, enrollment)
                totp_uri = provisioning_uri(enrollment, user, _ISSUER_NAME)
            webauthn_options = self._passkey_enroll(repo, user, passkey, request, now)
            if creds.environment(user) is None:
                creds.set_environment(user, self._fingerprint(request.environment, network))
            state = self._identity(repo, user, totp_uri, webauthn_options)
            repo.log_event(
                "identity.enroll",
                user,
                {"proofs": ",".join(state.proofs), "at": now},
            )
        return state

    def _passkey_registration(
        self, user: str, request: IdentityEnroll
    ) -> WebAuthnCredential | None:
        """The passkey of a registration answer, checked against the challenge kept for it
        (taken, so used once, even when the answer is refused); None without an answer."""
        response = request.webauthn_registration
        if response is None:
            return None
        if request.webauthn_begin:
            raise InvalidInput("begin a passkey registration or complete one, not both")
        challenge = self._calls.run(lambda repo: repo.webauthn.take_challenge(user, self._now()))
        if challenge is None:
            raise Conflict("no passkey registration under way (or it expired): begin again")
        # Verified with no transaction open, like every proof.
        return verify_registration(self._webauthn, response, challenge)

    def _passkey_enroll(
        self,
        repo: AuthzRepository,
        user: str,
        passkey: WebAuthnCredential | None,
        request: IdentityEnroll,
        now: int,
    ) -> str | None:
        """Store a verified passkey; for ``webauthn_begin``, creation options with a fresh
        challenge, kept for one registration."""
        if passkey is not None:
            repo.webauthn.add(user, passkey, now)
        if not request.webauthn_begin:
            return None
        challenge = secrets.token_bytes(REGISTRATION_CHALLENGE_LEN)
        repo.webauthn.put_challenge(user, challenge, now + _WEBAUTHN_REGISTRATION_TTL)
        return registration_options(
            self._webauthn,
            user_id=user,
            user_name=user,
            exclude_ids=[c.credential_id for c in repo.webauthn.for_user(user)],
            challenge=challenge,
        )

    @staticmethod
    def _identity(
        repo: AuthzRepository,
        user: str,
        totp_uri: str | None,
        webauthn_options: str | None = None,
    ) -> IdentityState:
        creds = repo.credentials
        kinds: list[Any] = []
        if creds.password_hash(user) is not None:
            kinds.append(ProofKind.PASSWORD.value)
        if repo.totp.get(user) is not None:
            kinds.append(ProofKind.TOTP.value)
        if creds.contact(user, "sms") is not None:
            kinds.append(ProofKind.OTP_SMS.value)
        if creds.contact(user, "email") is not None:
            kinds.append(ProofKind.OTP_EMAIL.value)
        keys = creds.device_keys(user)
        if keys:
            kinds.append(ProofKind.DEVICE_SIGNATURE.value)
        if creds.certificate(user) is not None:
            kinds.append(ProofKind.X509_SIGNATURE.value)
        passkeys = repo.webauthn.for_user(user)
        if passkeys:
            kinds.append(ProofKind.WEBAUTHN.value)
        return IdentityState(
            user_id=user,
            proofs=kinds,
            device_key_ids=[key.key_id for key in keys],
            totp_uri=totp_uri,
            webauthn_options=webauthn_options,
            webauthn_credential_ids=[c.credential_id_b64 for c in passkeys],
        )

    # ── the patient: inbox ───────────────────────────────────────────────────────────

    def nonce(self, request_id: str) -> bytes:
        """The approval nonce of a request: a MAC of its id under the platform's secret —
        unpredictable to anyone else, the same in every worker, never stored."""
        return hmac.new(
            self._keys.secret, _NONCE_LABEL + request_id.encode(), hashlib.sha256
        ).digest()

    def inbox(self, caller: str, request: InboxRequest) -> Inbox:
        """The patient's pending requests; with ``wait``, held until one arrives."""
        user = _own(caller, request.user_id)
        deadline = time.monotonic() + request.wait
        waiting = request.wait > 0 and self._long_polls.acquire(blocking=False)
        try:
            while True:
                with self._store.transaction() as repo:
                    pending = repo.requests.pending_for(user, self._now())
                left = deadline - time.monotonic()
                if pending or not waiting or left <= 0:
                    return Inbox(requests=[self._pending_view(r) for r in pending])
                with self._arrived:
                    self._arrived.wait(min(left, _LONG_POLL_SLICE))
        finally:
            if waiting:
                self._long_polls.release()

    def _pending_view(self, request: ciba.AuthRequest) -> PendingRequest:
        view = request.wallet_view()
        return PendingRequest(
            request_id=view["request_id"],
            client_id=view["client_id"],
            client_name=view["client_name"],
            scenario=view["scenario"],
            purpose=view["purpose"],
            binding_message=view["binding_message"],
            authorization_details=view["authorization_details"],
            method=PendingMethod(**view["method"]),
            expires_at=view["expires_at"],
            nonce=self.nonce(request.request_id),
        )

    def send_otp(self, caller: str, request: OtpSend) -> OtpSent:
        """Send a one-time code for a pending request to the patient's enrolled contact."""
        user = _own(caller, request.user_id)
        channel = OtpChannel(request.channel)
        with self._store.transaction() as repo:
            found = repo.requests.by_request_id(request.request_id)
            if found is None or found.user_id != user:
                raise NotFound("no such authorization request")
            if found.effective_state(self._now()) is not ciba.CibaState.PENDING:
                raise Conflict("the authorization request is no longer pending")
            destination = repo.credentials.contact(user, request.channel)
        if destination is None:
            raise Conflict(f"no {request.channel} contact is enrolled")
        # The gateway (an SMS or mail service) is called with no transaction open.
        challenge = self._codes.send(
            user_id=user, request_id=request.request_id, channel=channel, destination=destination
        )
        with self._store.transaction() as repo:
            repo.log_event(
                "identity.otp_sent",
                user,
                {"request_id": request.request_id, "channel": request.channel},
            )
        return OtpSent(
            challenge_id=challenge.challenge_id,
            channel=request.channel,
            expires_at=int(challenge.expires_at),
        )

    # ── the patient decides ──────────────────────────────────────────────────────────

    def decide(self, caller: str, request: AuthzDecision, *, network: str) -> AuthzOutcome:
        """Approve (all or part, with proofs) or deny a pending request."""
        user = _own(caller, request.user_id)
        now = self._now()
        with self._store.transaction() as repo:
            pending = repo.requests.by_request_id(request.request_id)
        if pending is None or pending.user_id != user:
            raise NotFound("no such authorization request")
        state = pending.effective_state(now)
        if state is not ciba.CibaState.PENDING:
            # Before any proof is checked: a decided request costs no Argon2id, no lockout.
            raise Conflict(f"authorization request is {state}")
        if request.decision == "deny":
            return self._deny(pending, user, now)
        try:
            return self._approve(pending, user, request, network=network, now=now)
        except InsufficientUserAuthentication as exc:
            # The demand for more proof is an event of its own (RFC 9470 step-up); the
            # approval's transaction was rolled back, so it is recorded in a new one.
            with self._store.transaction() as repo:
                _record(
                    repo,
                    AuditEvent(
                        kind=AuditKind.STEP_UP,
                        at=now,
                        user_id=user,
                        client_id=pending.client_id,
                        request_id=pending.request_id,
                        scenario=pending.decision.scenario.name,
                        actor=user,
                        acr=exc.acr_values[0] if exc.acr_values else None,
                        detail=exc.detail,
                    ),
                )
            raise

    def _approve(
        self,
        pending: ciba.AuthRequest,
        user: str,
        request: AuthzDecision,
        *,
        network: str,
        now: int,
    ) -> AuthzOutcome:
        approved = (
            None
            if request.authorization_details is None
            else parse_authorization_details(request.authorization_details)
        )
        granted = narrow(pending.decision.scope, approved)
        challenge = ApprovalChallenge.create(
            pending.request_id, dump_details(granted), self.nonce(pending.request_id)
        )
        fingerprint = self._fingerprint(request.environment, network)
        kinds = self._verify_proofs(user, pending, request.proofs, challenge)
        with self._store.transaction() as repo:
            current = repo.requests.by_request_id(request.request_id)
            assert current is not None
            changed = repo.credentials.environment(user) not in (None, fingerprint)
            self._check_environment(current, kinds, changed)
            decided = ciba.approve(
                current,
                user_id=user,
                proofs=kinds,
                catalog=self.catalog,
                now=now,
                approved=approved,
            )
            new = decided.request
            assert new.grant_id is not None
            assert new.granted is not None
            assert new.acr is not None
            if not repo.requests.replace(current, new):
                raise Conflict("the authorization request changed meanwhile; look again")
            grant, granted_event = create_grant(
                grant_id=new.grant_id,
                user_id=user,
                client_id=new.client_id,
                scenario=new.decision.scenario.name,
                details=new.granted,
                acr=new.acr,
                proofs=kinds,
                auth_time=new.auth_time or now,
                now=now,
            )
            repo.grants.add(grant)
            repo.grants.set_consent(
                grant.grant_id,
                build_consent(
                    grant,
                    client_name=new.client_name,
                    purpose_of_use=new.decision.scenario.purpose_of_use,
                ),
            )
            repo.credentials.set_environment(user, fingerprint)
            _record(repo, decided.event)
            _record(repo, granted_event)
        self._ping(decided.ping)
        return AuthzOutcome(
            request_id=new.request_id,
            state="approved",
            grant_id=grant.grant_id,
            acr=grant.acr,
            authorization_details=dump_details(grant.details),
        )

    def _deny(self, pending: ciba.AuthRequest, user: str, now: int) -> AuthzOutcome:
        with self._store.transaction() as repo:
            current = repo.requests.by_request_id(pending.request_id)
            assert current is not None
            decided = ciba.deny(current, user_id=user, now=now)
            if not repo.requests.replace(current, decided.request):
                raise Conflict("the authorization request changed meanwhile; look again")
            _record(repo, decided.event)
        self._ping(decided.ping)
        return AuthzOutcome(request_id=pending.request_id, state="denied")

    def _check_environment(
        self, request: ciba.AuthRequest, kinds: frozenset[ProofKind], changed: bool
    ) -> None:
        """RFC 9470 trigger (a): a new login environment needs one level more."""
        if not changed:
            return
        needed = request.decision.method.level
        stronger = needed.at_least()[1:]
        raised = stronger[0] if stronger else needed
        reached = self.catalog.level_reached(kinds)
        if reached is None or reached.rank < raised.rank:
            raise InsufficientUserAuthentication(
                "the login environment changed: give one more proof",
                acr_values=tuple(level.acr for level in raised.at_least()),
                max_age=self.catalog.step_up.max_age,
            )

    def _verify_proofs(
        self,
        user: str,
        request: ciba.AuthRequest,
        proofs: Proofs,
        challenge: ApprovalChallenge,
    ) -> frozenset[ProofKind]:
        """The proof kinds given for ``request`` that verified; the first failure raised."""
        verified = self._attempts(
            user, self._verifiers(user, request, proofs, challenge), request_id=request.request_id
        )
        if not verified:
            raise InsufficientUserAuthentication(
                f"no proof given: {request.decision.method.describe()}",
                acr_values=tuple(lvl.acr for lvl in request.decision.method.level.at_least()),
            )
        return verified

    def _attempts(
        self,
        user: str,
        verifiers: Sequence[tuple[ProofKind, Callable[[], object]]],
        *,
        request_id: str | None,
    ) -> frozenset[ProofKind]:
        """Run each proof lockout-guarded: every store call is its own short transaction
        (``_Calls``), so a charge commits before its proof is checked and no lock is held
        while Argon2id or a signature check runs. Every attempt is recorded; then the
        first failure is raised."""
        verified: set[ProofKind] = set()
        attempts = [self._lockout.attempt(user, kind, verify) for kind, verify in verifiers]
        with self._store.transaction() as repo:
            for attempt in attempts:
                detail = _flat(attempt.event.to_dict())
                if request_id is not None:
                    detail["request_id"] = request_id
                repo.log_event(AUDIT_KIND, user, detail)
        for attempt in attempts:
            attempt.unwrap()  # raises the first failure
            verified.add(attempt.event.proof)
        return frozenset(verified)

    def _verifiers(
        self,
        user: str,
        request: ciba.AuthRequest,
        proofs: Proofs,
        challenge: ApprovalChallenge,
    ) -> list[tuple[ProofKind, Callable[[], object]]]:
        out: list[tuple[ProofKind, Callable[[], object]]] = []
        if proofs.password is not None:
            out.append((ProofKind.PASSWORD, lambda: self._password(user, proofs.password or "")))
        if proofs.totp is not None:
            out.append((ProofKind.TOTP, lambda: self._totp.verify(user, proofs.totp or "")))
        if proofs.otp_challenge_id is not None:
            sent = self._calls.otp.get(proofs.otp_challenge_id)
            email = sent is not None and sent.channel is OtpChannel.EMAIL
            out.append(
                (
                    ProofKind.OTP_EMAIL if email else ProofKind.OTP_SMS,
                    lambda: self._codes.verify(
                        challenge_id=proofs.otp_challenge_id or "",
                        user_id=user,
                        request_id=request.request_id,
                        code=proofs.otp_code or "",
                    ),
                )
            )
        if proofs.device_signature is not None:
            out.append((ProofKind.DEVICE_SIGNATURE, lambda: self._device(user, proofs, challenge)))
        if proofs.x509_signature is not None:
            out.append(
                (ProofKind.X509_SIGNATURE, lambda: self._certificate(user, proofs, challenge))
            )
        if proofs.webauthn is not None:
            assertion = proofs.webauthn
            out.append((ProofKind.WEBAUTHN, lambda: self._passkey(user, assertion, challenge)))
        return out

    def _password(self, user: str, password: str) -> None:
        stored = self._calls.run(lambda repo: repo.credentials.password_hash(user))
        rehash = self._passwords.verify(stored, password)  # ~0.2 s, no transaction open
        if rehash is not None:
            self._calls.run(lambda repo: repo.credentials.set_password_hash(user, rehash))

    def _device(self, user: str, proofs: Proofs, challenge: ApprovalChallenge) -> None:
        keys = self._calls.run(lambda repo: repo.credentials.device_keys(user))
        key = next((k for k in keys if k.key_id == proofs.device_key_id), None)
        if key is None:
            raise ProofRejected("device: no such enrolled key")
        verify_device_approval(key, challenge, proofs.device_signature or b"")

    def _passkey(self, user: str, assertion: str, challenge: ApprovalChallenge) -> None:
        """A passkey assertion over the derived challenge (``identity.webauthn``); its new
        sign count recorded by compare-and-set, so of two uses of one counter value only
        one counts. (A counter of 0 stays 0: a replay is then stopped by the request's own
        compare-and-set, since the challenge names the request.)"""
        credential_id = assertion_credential_id(assertion)
        stored = self._calls.run(lambda repo: repo.webauthn.get(user, credential_id))
        if stored is None:
            raise ProofRejected("webauthn: no such passkey of this user")
        count = verify_assertion(self._webauthn, assertion, challenge, stored, user_id=user)
        if not self._calls.run(
            lambda repo: repo.webauthn.swap_sign_count(
                user, credential_id, stored.sign_count, count
            )
        ):
            raise ProofRejected("webauthn: the sign count moved meanwhile")

    def _certificate(self, user: str, proofs: Proofs, challenge: ApprovalChallenge) -> None:
        enrolled = self._calls.run(lambda repo: repo.credentials.certificate(user))
        if self._x509 is None or enrolled is None or not proofs.certificate_chain_pem:
            raise ProofRejected("x509: no trust anchors or no enrolled certificate")
        try:
            chain = x509.load_pem_x509_certificates(proofs.certificate_chain_pem.encode())
        except ValueError as exc:
            raise ProofRejected("x509: the chain is not PEM certificates") from exc
        binding = CertificateBinding.from_certificate(parse_certificate(enrolled.encode()))
        self._x509.verify(
            binding=binding,
            challenge=challenge,
            signature=proofs.x509_signature or b"",
            certificate=chain[0].public_bytes(_PEM),
            intermediates=[c.public_bytes(_PEM) for c in chain[1:]],
        )

    def _fingerprint(self, environment: Environment, network: str) -> str:
        data = b"\x00".join(
            (
                _ENV_LABEL,
                environment.user_agent.encode(),
                environment.device.encode(),
                network.encode(),
            )
        )
        return hmac.new(self._keys.secret, data, hashlib.sha256).hexdigest()

    def _ping(self, ping: ciba.Ping | None) -> None:
        with self._arrived:
            self._arrived.notify_all()
        if ping is not None and self._pinger is not None:
            self._pinger(ping)

    # ── the patient's grants ─────────────────────────────────────────────────────────

    def grants(self, caller: str, request: GrantsRequest) -> GrantList:
        user = _own(caller, request.user_id)
        now = self._now()
        with self._store.transaction() as repo:
            return GrantList(grants=[_grant_view(g, now) for g in repo.grants.for_user(user)])

    def revoke_grant(self, caller: str, request: GrantRevoke) -> GrantList:
        """Revoke a grant for the patient; effective for the very next use."""
        user = _own(caller, request.user_id)
        now = self._now()
        with self._store.transaction() as repo:
            grant, event = revoke_grant(
                repo.grants, request.grant_id, by="patient", actor=user, now=now
            )
            self._consent_revoked(repo, grant.grant_id)
            _record(repo, event)
            return GrantList(grants=[_grant_view(grant, now)])

    @staticmethod
    def _consent_revoked(repo: AuthzRepository, grant_id: str) -> None:
        document = repo.grants.consent(grant_id)
        if document is not None:
            repo.grants.set_consent(grant_id, revoke_consent(document))

    # ── the live gates ───────────────────────────────────────────────────────────────

    def check_use(
        self,
        token: str | None,
        *,
        client_id: str,
        action: Action,
        record: RecordRef,
        owner: str,
    ) -> Use:
        """Allow a third party's ``action`` on ``record`` (of patient ``owner``) for its
        token? Reads the live grant: a revocation counts from the very next call."""
        if token is None:
            raise InvalidToken("an access token is required")
        now = self._now()
        claims = self._verifier.verify(token, now=now)
        if claims.client_id != client_id:
            raise InvalidToken("the token was issued to another client")
        with self._store.transaction() as repo:
            try:
                use = check(
                    repo.grants, claims, action, record, owner=owner, now=now, catalog=self.catalog
                )
            except OAuthError as exc:
                if exc.audit_event is not None:
                    _record(repo, exc.audit_event)
                refusal = exc
            else:
                _record(repo, use.event)
                return use
        raise refusal

    def require_grant(
        self, *, user_id: str, client_id: str, action: Action, record: RecordRef
    ) -> Grant:
        """A live grant of ``user_id`` to ``client_id`` allowing ``action`` on ``record``
        (the share gate: the patient shares only with whom they granted)."""
        with self._store.transaction() as repo:
            use = find_use(
                repo.grants,
                user_id=user_id,
                client_id=client_id,
                action=action,
                record=record,
                now=self._now(),
            )
            if use is not None:
                _record(repo, use.event)
                return use.grant
        raise Forbidden(f"no live grant lets {client_id} {action} this record")


# ── helpers ───────────────────────────────────────────────────────────────────────


class _Calls:
    """The store for the proof verifiers: every call its own short transaction."""

    def __init__(self, store: Store[AuthzRepository]) -> None:
        self._store = store
        self.lockout = _LockoutCalls(self)
        self.totp = _TotpCalls(self)
        self.otp = _OtpCalls(self)

    def run(self, work: Callable[[AuthzRepository], T]) -> T:
        with self._store.transaction() as repo:
            return work(repo)


class _LockoutCalls:
    def __init__(self, calls: _Calls) -> None:
        self._run = calls.run

    def update(
        self,
        user_id: str,
        proof: ProofKind,
        change: LockoutChange,
    ) -> LockoutState | None:
        return self._run(lambda repo: repo.lockout.update(user_id, proof, change))


class _TotpCalls:
    def __init__(self, calls: _Calls) -> None:
        self._run = calls.run

    def get(self, user_id: str) -> TotpEnrollment | None:
        return self._run(lambda repo: repo.totp.get(user_id))

    def swap(self, user_id: str, expected: TotpEnrollment, new: TotpEnrollment) -> bool:
        return self._run(lambda repo: repo.totp.swap(user_id, expected, new))


class _OtpCalls:
    def __init__(self, calls: _Calls) -> None:
        self._run = calls.run

    def add(self, challenge: OtpChallenge) -> None:
        self._run(lambda repo: repo.otp.add(challenge))

    def get(self, challenge_id: str) -> OtpChallenge | None:
        return self._run(lambda repo: repo.otp.get(challenge_id))

    def swap(self, expected: OtpChallenge, new: OtpChallenge) -> bool:
        return self._run(lambda repo: repo.otp.swap(expected, new))


_PEM: Final = Encoding.PEM


def _own(caller: str, user_id: str) -> str:
    if caller != user_id:
        raise Forbidden("user_id does not match the client certificate")
    return user_id


def error_answer(exc: OAuthError, instance: str | None = None) -> OAuthAnswer:
    """An OAuth error as RFC 9457 problem members plus the RFC 6749 §5.2 ``error`` ones."""
    return OAuthAnswer(exc.status, {**exc.to_problem(instance), **exc.to_oauth()}, exc.headers())


def _flat(values: Mapping[str, Any]) -> dict[str, str | int | bool | None]:
    return {
        key: value if isinstance(value, str | int | bool) or value is None else str(value)
        for key, value in values.items()
    }


def _record(repo: AuthzRepository, event: AuditEvent) -> None:
    data = event.as_dict()
    kind = str(data.pop("kind"))
    repo.log_event(kind, event.user_id, _flat(data))


def _grant_view(grant: Grant, now: int) -> GrantView:
    return GrantView(**grant.view(now))
