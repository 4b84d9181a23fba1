"""OpenID Client-Initiated Backchannel Authentication (CIBA Core 1.0), poll and ping modes.

An app asks (``POST /bc-authorize``, §7), the patient decides on their wallet, the app
collects its token (``POST /token``, §10.1) — by polling (§5, poll mode) or after a
ping to its notification endpoint (§10.2, ping mode; it may poll as well). Push mode is
not offered: a push-mode client is ``unauthorized_client`` at both endpoints (§11, §13).

Theory of operation (after h11's ``_state.py``): an authorization request is in exactly
one state; events move it along the one table below; an event the table does not list
raises :class:`~patientkey.errors.Conflict` and changes nothing::

    PENDING  --approve-->  APPROVED  --issue-->  ISSUED     (a token left, once)
    PENDING  --deny----->  DENIED
    PENDING / APPROVED / DENIED  --expire-->  EXPIRED

ISSUED and EXPIRED are final. Expiry is a matter of time, so it is applied when a
request is read (:meth:`AuthRequest.effective_state`), not by a timer.

Everything here is pure: functions take the stored :class:`AuthRequest`, the parsed
parameters, the authenticated client (or None) and ``now``; they return the new
request to store (compare-and-set on ``version``), the effects to perform (a
:class:`Ping`), the audit event, or the error to answer — nothing is written here. The
token endpoint's outcome is a value, :class:`PollAnswer`: store first, then answer the
error or mint the token; storing ISSUED with compare-and-set *after* minting is what
makes "token issued once" hold under concurrent polls (STYLE.md 3).

Errors, where the spec puts them
--------------------------------
Backchannel authentication endpoint (§13, :func:`backchannel_authenticate`):
``invalid_client`` (401: no authenticated client), ``unauthorized_client`` (client not
registered for the CIBA grant, or in push mode), ``invalid_request`` (missing or
repeated parameter, no hint or several, unsupported hint or request object, malformed
``requested_expiry``, missing ``client_notification_token`` in ping mode),
``invalid_scope`` (a scope value other than ``openid``), ``invalid_binding_message``,
``unknown_user_id`` (the login_hint, a User_ID, names nobody), ``missing_user_code`` /
``invalid_user_code`` (for users who require one), ``access_denied`` (403: the account
is locked or the patient blocked this client), and RFC 9396 §5
``invalid_authorization_details`` (malformed, a type or scenario the client may not use,
or beyond what the scenario allows). ``expired_login_hint_token`` cannot arise: only
``login_hint`` is accepted, a ``login_hint_token`` is ``invalid_request``.

Token endpoint (§11, :func:`poll`): ``authorization_pending``, ``slow_down`` (polled
sooner than ``interval`` after the last poll: the interval grows by 5 s for this and
every later request), ``expired_token``, ``access_denied`` (the patient denied), and
the RFC 6749 §5.2 errors: ``invalid_request``, ``invalid_client``, ``invalid_grant``
(unknown ``auth_req_id``, one issued to another client, or one already used),
``unauthorized_client``, ``unsupported_grant_type``.

Deliberate choices: ``authorization_details`` is required and ``scope`` optional
(RFC 9396 §3 lets authorization details replace scope; ``openid`` is accepted but no ID
token is issued, the platform issues access tokens only); ``binding_message`` is
required by default (it is what lets the patient match the wallet prompt to the
pharmacy counter). Unknown parameters are ignored (§7.2).
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final, Protocol

from patientkey.authz.audit import AuditEvent, AuditKind
from patientkey.authz.catalog import Catalog, Decision, ProofKind
from patientkey.authz.clients import CIBA_GRANT_TYPE, ClientInfo, DeliveryMode
from patientkey.authz.errors import (
    AccessDenied,
    AuthorizationPending,
    DeniedByUser,
    ExpiredToken,
    InsufficientUserAuthentication,
    InvalidAuthorizationDetails,
    InvalidBindingMessage,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidUserCode,
    MissingUserCode,
    OAuthError,
    SlowDown,
    UnauthorizedClient,
    UnknownUserId,
    UnsupportedGrantType,
)
from patientkey.authz.form import Params, single_params
from patientkey.authz.rar import (
    DETAILS_TYPE,
    AuthorizationDetails,
    dump_details,
    narrow,
    parse_authorization_details,
)
from patientkey.errors import ConfigError, Conflict, NotFound

__all__ = [
    "CIBA_TRANSITIONS",
    "Accepted",
    "AuthRequest",
    "AuthRequestStore",
    "BackchannelRequest",
    "CibaEvent",
    "CibaPolicy",
    "CibaState",
    "Decided",
    "InMemoryAuthRequestStore",
    "Ping",
    "PollAnswer",
    "TokenRequest",
    "UserDirectory",
    "UserEntry",
    "approve",
    "backchannel_authenticate",
    "ciba_next",
    "deny",
    "parse_backchannel_request",
    "parse_token_request",
    "poll",
    "token_issued_event",
]

# --- the transition table ------------------------------------------------------------


class CibaState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    ISSUED = "issued"


class CibaEvent(StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    EXPIRE = "expire"
    ISSUE = "issue"


CIBA_TRANSITIONS: Final[dict[tuple[CibaState, CibaEvent], CibaState]] = {
    (CibaState.PENDING, CibaEvent.APPROVE): CibaState.APPROVED,
    (CibaState.PENDING, CibaEvent.DENY): CibaState.DENIED,
    (CibaState.PENDING, CibaEvent.EXPIRE): CibaState.EXPIRED,
    (CibaState.APPROVED, CibaEvent.ISSUE): CibaState.ISSUED,
    (CibaState.APPROVED, CibaEvent.EXPIRE): CibaState.EXPIRED,
    (CibaState.DENIED, CibaEvent.EXPIRE): CibaState.EXPIRED,
}


def ciba_next(state: CibaState, event: CibaEvent) -> CibaState:
    """The state after ``event``; Conflict if the table forbids it."""
    try:
        return CIBA_TRANSITIONS[(state, event)]
    except KeyError:
        raise Conflict(f"authorization request: cannot {event} while {state}") from None


# --- policy, users ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CibaPolicy:
    """Limits of the backchannel flow (seconds)."""

    default_expiry: int = 300
    max_expiry: int = 1800
    interval: int = 5
    slow_down_step: int = 5  # CIBA §11: "increased by at least 5 seconds"
    max_interval: int = 60
    binding_message_max: int = 64
    require_binding_message: bool = True
    scopes: frozenset[str] = frozenset({"openid"})

    def __post_init__(self) -> None:
        if not 1 <= self.default_expiry <= self.max_expiry <= 86400:
            raise ConfigError("CIBA: need 1 <= default_expiry <= max_expiry <= 86400")
        if not 1 <= self.interval <= self.max_interval or self.slow_down_step < 5:
            raise ConfigError("CIBA: need 1 <= interval <= max_interval and slow_down_step >= 5")
        if not 1 <= self.binding_message_max <= 256:
            raise ConfigError("CIBA: binding_message_max must be 1..256")


@dataclass(frozen=True, slots=True, kw_only=True)
class UserEntry:
    """What the backchannel endpoint needs to know about a patient account."""

    user_id: str
    requires_user_code: bool = False
    locked: bool = False
    blocked_clients: frozenset[str] = frozenset()


class UserDirectory(Protocol):
    """Patient accounts, as the platform's storage answers for them."""

    def lookup(self, user_id: str) -> UserEntry | None: ...

    def check_user_code(self, user_id: str, code: str) -> bool:
        """Constant-time check of the user's CIBA user_code (CIBA §7.1)."""
        ...


# --- parameters ------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
# RFC 6750 §2.1 b64token; CIBA §7.1: at most 1024 characters.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{1,1024}=*")
# RFC 6749 §3.3 scope-token.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
_DIGITS = re.compile(r"[0-9]{1,9}")
_HINTS: Final = ("login_hint", "login_hint_token", "id_token_hint")


@dataclass(frozen=True, slots=True, kw_only=True)
class BackchannelRequest:
    """The validated parameters of a backchannel authentication request (CIBA §7.1)."""

    login_hint: str
    authorization_details: AuthorizationDetails
    binding_message: str | None = None
    requested_expiry: int | None = None
    scope: tuple[str, ...] = ()
    acr_values: tuple[str, ...] = ()
    client_notification_token: str | None = None
    user_code: str | None = None


def _check_client(client: ClientInfo | None) -> ClientInfo:
    if client is None:
        raise InvalidClient("client authentication failed")
    if not client.uses_ciba:
        raise UnauthorizedClient("client is not registered for the CIBA grant")
    if client.delivery_mode not in {"poll", "ping"}:
        raise UnauthorizedClient("only poll and ping token delivery modes are offered")
    return client


def parse_backchannel_request(
    params: Params, *, client: ClientInfo | None, policy: CibaPolicy
) -> BackchannelRequest:
    """Check the client and the parameters' syntax (CIBA §7.1, §7.2)."""
    client = _check_client(client)
    p = single_params(params)
    if "request" in p or "request_uri" in p:
        raise InvalidRequest("signed authentication requests (request objects) are not supported")
    login_hint = _login_hint(p)
    scope = _scope(p, policy)
    notification_token = p.get("client_notification_token")
    if client.delivery_mode == "ping" and notification_token is None:
        raise InvalidRequest("client_notification_token is required in ping mode")
    if notification_token is not None and not _B64TOKEN.fullmatch(notification_token):
        raise InvalidRequest("client_notification_token must be a bearer token of 1024 characters")
    requested_expiry: int | None = None
    if "requested_expiry" in p:
        if not _DIGITS.fullmatch(p["requested_expiry"]) or int(p["requested_expiry"]) < 1:
            raise InvalidRequest("requested_expiry must be a positive integer")
        requested_expiry = int(p["requested_expiry"])
    binding_message = _binding_message(p, policy)
    if "authorization_details" not in p:
        raise InvalidRequest("authorization_details is required")
    details = parse_authorization_details(p["authorization_details"])
    acr_values = tuple(p.get("acr_values", "").split())
    if len(acr_values) > 8 or any(len(value) > 256 for value in acr_values):
        raise InvalidRequest("acr_values is too long")
    user_code = p.get("user_code")
    if user_code is not None and len(user_code) > 128:
        raise InvalidRequest("user_code is too long")
    return BackchannelRequest(
        login_hint=login_hint,
        authorization_details=details,
        binding_message=binding_message,
        requested_expiry=requested_expiry,
        scope=scope,
        acr_values=acr_values,
        client_notification_token=notification_token,
        user_code=user_code,
    )


def _login_hint(p: Mapping[str, str]) -> str:
    hints = [name for name in _HINTS if name in p]
    if len(hints) != 1:
        raise InvalidRequest("exactly one of login_hint, login_hint_token, id_token_hint")
    if hints[0] != "login_hint":
        raise InvalidRequest(f"{hints[0]} is not supported: send the User_ID as login_hint")
    if not _IDENT.fullmatch(p["login_hint"]):
        raise InvalidRequest("login_hint must be a User_ID")
    return p["login_hint"]


def _scope(p: Mapping[str, str], policy: CibaPolicy) -> tuple[str, ...]:
    scope = tuple(p.get("scope", "").split())
    if any(not _SCOPE_TOKEN.fullmatch(token) for token in scope):
        raise InvalidScope("malformed scope")
    unknown = sorted(set(scope) - policy.scopes)
    if unknown:
        raise InvalidScope(f"unsupported scope values {unknown}")
    return scope


def _binding_message(p: Mapping[str, str], policy: CibaPolicy) -> str | None:
    message = p.get("binding_message")
    if message is None:
        if policy.require_binding_message:
            raise InvalidRequest("binding_message is required")
        return None
    if (
        len(message) > policy.binding_message_max
        or not message.isprintable()
        or message.strip() != message
    ):
        raise InvalidBindingMessage(
            f"binding_message must be 1-{policy.binding_message_max} printable characters "
            "on one line"
        )
    return message


# --- the stored request ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthRequest:
    """One authorization request, as stored.

    ``auth_req_id`` is the client's handle (CIBA §7.3; 256 random bits) and stays
    between the platform and that client; ``request_id`` is the public handle the
    wallet and the audit log use. ``version`` grows with every change (for
    compare-and-set).
    """

    auth_req_id: str
    request_id: str
    client_id: str
    client_name: str
    user_id: str
    delivery_mode: DeliveryMode
    notification_endpoint: str | None
    notification_token: str | None
    binding_message: str | None
    scope: tuple[str, ...]
    acr_values: tuple[str, ...]
    decision: Decision
    created_at: int
    expires_at: int
    interval: int
    last_polled_at: int | None = None
    state: CibaState = CibaState.PENDING
    grant_id: str | None = None
    granted: AuthorizationDetails | None = None
    proofs: frozenset[ProofKind] = frozenset()
    acr: str | None = None
    auth_time: int | None = None
    decided_at: int | None = None
    version: int = 1

    def effective_state(self, now: int) -> CibaState:
        """The state at ``now``: expiry applied (the table's ``expire`` event)."""
        if now >= self.expires_at and (self.state, CibaEvent.EXPIRE) in CIBA_TRANSITIONS:
            return ciba_next(self.state, CibaEvent.EXPIRE)
        return self.state

    def moved(self, event: CibaEvent, **changes: Any) -> AuthRequest:
        """A copy after ``event`` (Conflict if the table forbids it), one version on."""
        return replace(
            self, state=ciba_next(self.state, event), version=self.version + 1, **changes
        )

    def wallet_view(self) -> dict[str, Any]:
        """Who asks, what, why, for how long, and which proofs it takes: for the wallet."""
        return {
            "request_id": self.request_id,
            "client_id": self.client_id,
            "client_name": self.client_name,
            "scenario": self.decision.scenario.name,
            "purpose": self.decision.scenario.description,
            "binding_message": self.binding_message,
            "authorization_details": dump_details(self.decision.scope),
            "method": {
                "acr": self.decision.method.acr,
                "min_factors": self.decision.method.min_factors,
                "one_of": sorted(self.decision.method.one_of),
                "description": self.decision.method.describe(),
            },
            "expires_at": self.expires_at,
        }

    def _event(self, kind: AuditKind, at: int, **extra: Any) -> AuditEvent:
        return AuditEvent(
            kind=kind,
            at=at,
            user_id=self.user_id,
            client_id=self.client_id,
            request_id=self.request_id,
            scenario=self.decision.scenario.name,
            **extra,
        )


@dataclass(frozen=True, slots=True)
class Ping:
    """The ping-mode callback to perform (CIBA §10.2): POST, bearer, ``auth_req_id``."""

    endpoint: str
    token: str
    auth_req_id: str

    def body(self) -> dict[str, str]:
        return {"auth_req_id": self.auth_req_id}

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Accepted:
    """A new request to store, the §7.3 response body and the audit event."""

    request: AuthRequest
    response: dict[str, Any]
    event: AuditEvent


@dataclass(frozen=True, slots=True)
class Decided:
    """The request after the patient's decision, the ping to send (ping mode), the event."""

    request: AuthRequest
    ping: Ping | None
    event: AuditEvent


def _auth_req_id() -> str:
    # Never with a leading "-": the handle is pasted into shells and commands
    # (`patientkey thirdparty token <auth_req_id>`), where it would read as an option.
    while (handle := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return handle


def _public_id() -> str:
    return secrets.token_hex(16)


def backchannel_authenticate(
    params: Params,
    *,
    client: ClientInfo | None,
    users: UserDirectory,
    catalog: Catalog,
    policy: CibaPolicy,
    now: int,
    new_auth_req_id: Callable[[], str] = _auth_req_id,
    new_request_id: Callable[[], str] = _public_id,
) -> Accepted:
    """The backchannel authentication endpoint (CIBA §7): request → scenario → scope → method.

    Raises the §13 error for a request it refuses; nothing is stored then.
    """
    request = parse_backchannel_request(params, client=client, policy=policy)
    assert client is not None  # checked by parse_backchannel_request
    if DETAILS_TYPE not in client.authorization_details_types:
        raise InvalidAuthorizationDetails(f"client may not use type {DETAILS_TYPE}")
    purpose = request.authorization_details[0].purpose
    if purpose not in client.scenarios:
        raise InvalidAuthorizationDetails(f"client may not ask for purpose {purpose!r}")
    decision = catalog.derive(request.authorization_details, acr_values=request.acr_values)
    user = users.lookup(request.login_hint)
    if user is None:
        raise UnknownUserId("login_hint names no patient")
    if user.locked or client.client_id in user.blocked_clients:
        raise AccessDenied("the patient does not accept requests from this client")
    if user.requires_user_code:
        if request.user_code is None:
            raise MissingUserCode("this patient requires a user_code")
        if not users.check_user_code(user.user_id, request.user_code):
            raise InvalidUserCode("user_code does not match")
    lifetime = min(request.requested_expiry or policy.default_expiry, policy.max_expiry)
    stored = AuthRequest(
        auth_req_id=new_auth_req_id(),
        request_id=new_request_id(),
        client_id=client.client_id,
        client_name=client.name,
        user_id=user.user_id,
        delivery_mode=client.delivery_mode or "poll",
        notification_endpoint=client.notification_endpoint,
        notification_token=request.client_notification_token,
        binding_message=request.binding_message,
        scope=request.scope,
        acr_values=request.acr_values,
        decision=decision,
        created_at=now,
        expires_at=now + lifetime,
        interval=policy.interval,
    )
    response = {
        "auth_req_id": stored.auth_req_id,
        "expires_in": lifetime,
        "interval": stored.interval,
    }
    event = stored._event(
        AuditKind.REQUESTED,
        now,
        actor=client.client_id,
        acr=decision.method.acr,
        detail="; ".join(decision.reasons) or None,
    )
    return Accepted(stored, response, event)


# --- the patient decides ----------------------------------------------------------------


def _open_for(request: AuthRequest, user_id: str, now: int) -> None:
    if request.user_id != user_id:
        # The same answer as for an unknown id: a wallet learns nothing of others' requests.
        raise NotFound("no such authorization request")
    state = request.effective_state(now)
    if state is not CibaState.PENDING:
        raise Conflict(f"authorization request is {state}")


def _ping(request: AuthRequest) -> Ping | None:
    if request.delivery_mode != "ping":
        return None
    assert request.notification_endpoint is not None
    assert request.notification_token is not None
    return Ping(request.notification_endpoint, request.notification_token, request.auth_req_id)


def approve(
    request: AuthRequest,
    *,
    user_id: str,
    proofs: Iterable[ProofKind],
    catalog: Catalog,
    now: int,
    approved: AuthorizationDetails | None = None,
    auth_time: int | None = None,
    new_grant_id: Callable[[], str] = _public_id,
) -> Decided:
    """The patient approves all (``approved`` None) or part of the request.

    ``proofs`` are the identity proofs already verified for this approval; they must
    reach the method's assurance level (else ``insufficient_user_authentication`` with
    the acr values that would do). Part approval is proven narrower by
    :func:`~patientkey.authz.rar.narrow`. Nothing changes on any error.
    """
    _open_for(request, user_id, now)
    granted = narrow(request.decision.scope, approved)
    kinds = frozenset(ProofKind(kind) for kind in proofs)
    required = request.decision.method.level
    reached = catalog.level_reached(kinds)
    if reached is None or reached.rank < required.rank:
        raise InsufficientUserAuthentication(
            f"the proofs given do not meet {request.decision.method.describe()}",
            acr_values=tuple(level.acr for level in required.at_least()),
        )
    new = request.moved(
        CibaEvent.APPROVE,
        grant_id=new_grant_id(),
        granted=granted,
        proofs=kinds,
        acr=reached.acr,
        auth_time=now if auth_time is None else auth_time,
        decided_at=now,
    )
    narrowed = granted != request.decision.scope
    event = new._event(
        AuditKind.APPROVED,
        now,
        actor=user_id,
        grant_id=new.grant_id,
        acr=new.acr,
        detail=f"proofs {','.join(sorted(kinds))}" + ("; narrowed" if narrowed else ""),
    )
    return Decided(new, _ping(new), event)


def deny(request: AuthRequest, *, user_id: str, now: int) -> Decided:
    """The patient denies the request."""
    _open_for(request, user_id, now)
    new = request.moved(CibaEvent.DENY, decided_at=now)
    return Decided(new, _ping(new), new._event(AuditKind.DENIED, now, actor=user_id))


# --- the token endpoint --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A CIBA token request (§10.1), optionally narrowing the details further (RFC 9396 §6)."""

    auth_req_id: str
    authorization_details: AuthorizationDetails | None = None


def parse_token_request(params: Params) -> TokenRequest:
    p = single_params(params)
    grant_type = p.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required")
    if grant_type != CIBA_GRANT_TYPE:
        raise UnsupportedGrantType(f"grant_type must be {CIBA_GRANT_TYPE}")
    if "auth_req_id" not in p:
        raise InvalidRequest("auth_req_id is required")
    details = p.get("authorization_details")
    return TokenRequest(
        auth_req_id=p["auth_req_id"],
        authorization_details=None if details is None else parse_authorization_details(details),
    )


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """The token endpoint's outcome: store ``store`` (if any), then answer ``error``,
    or — when ``error`` is None — mint the access token for ``store`` (state ISSUED,
    ``store.granted`` the details to put in it) and store it with compare-and-set."""

    store: AuthRequest | None = None
    error: OAuthError | None = None


def poll(  # noqa: PLR0911 - one answer per state of the table reads best as a ladder
    request: AuthRequest | None,
    token_request: TokenRequest,
    *,
    client: ClientInfo | None,
    policy: CibaPolicy,
    now: int,
) -> PollAnswer:
    """What a token request (CIBA §10.1) for ``request`` gets; ``request`` is what the
    store holds under ``token_request.auth_req_id`` (None if nothing)."""
    try:
        client = _check_client(client)
    except OAuthError as exc:
        return PollAnswer(error=exc)
    if request is None or request.client_id != client.client_id:
        # §11: "If the auth_req_id is invalid or was issued to another Client".
        return PollAnswer(error=InvalidGrant("unknown auth_req_id"))
    state = request.effective_state(now)
    if state is CibaState.EXPIRED:
        return PollAnswer(error=ExpiredToken("the authorization request expired"))
    if state is CibaState.ISSUED:
        return PollAnswer(error=InvalidGrant("auth_req_id was already used"))
    if state is CibaState.DENIED:
        return PollAnswer(error=DeniedByUser("the patient denied the request"))
    if state is CibaState.PENDING:
        if request.last_polled_at is not None and now - request.last_polled_at < request.interval:
            slower = min(request.interval + policy.slow_down_step, policy.max_interval)
            return PollAnswer(
                store=replace(
                    request, last_polled_at=now, interval=slower, version=request.version + 1
                ),
                error=SlowDown(f"wait {slower} seconds between polls"),
            )
        return PollAnswer(
            store=replace(request, last_polled_at=now, version=request.version + 1),
            error=AuthorizationPending("the patient has not decided yet"),
        )
    assert request.granted is not None
    granted = request.granted
    if token_request.authorization_details is not None:
        try:
            granted = narrow(request.granted, token_request.authorization_details)
        except InvalidAuthorizationDetails as exc:
            return PollAnswer(error=exc)
    return PollAnswer(store=request.moved(CibaEvent.ISSUE, granted=granted, last_polled_at=now))


def token_issued_event(request: AuthRequest, *, jti: str, now: int) -> AuditEvent:
    """The audit record of an access token leaving the token endpoint (metadata only)."""
    return request._event(
        AuditKind.ISSUED,
        now,
        actor=request.client_id,
        grant_id=request.grant_id,
        acr=request.acr,
        detail=f"jti {jti}",
    )


# --- store ------------------------------------------------------------------------------------


class AuthRequestStore(Protocol):
    """Where authorization requests live; ``replace`` is a compare-and-set on version."""

    def add(self, request: AuthRequest) -> None: ...

    def get(self, auth_req_id: str) -> AuthRequest | None: ...

    def by_request_id(self, request_id: str) -> AuthRequest | None: ...

    def pending_for(self, user_id: str, now: int) -> list[AuthRequest]: ...

    def replace(self, old: AuthRequest, new: AuthRequest) -> bool:
        """Store ``new`` if the stored version is still ``old.version``."""
        ...


@dataclass
class InMemoryAuthRequestStore:
    """The in-memory twin of the durable store (tests, demo)."""

    _by_auth_req_id: dict[str, AuthRequest] = field(default_factory=dict)
    _by_request_id: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: AuthRequest) -> None:
        with self._lock:
            if request.auth_req_id in self._by_auth_req_id:
                raise Conflict("duplicate auth_req_id")
            self._by_auth_req_id[request.auth_req_id] = request
            self._by_request_id[request.request_id] = request.auth_req_id

    def get(self, auth_req_id: str) -> AuthRequest | None:
        return self._by_auth_req_id.get(auth_req_id)

    def by_request_id(self, request_id: str) -> AuthRequest | None:
        key = self._by_request_id.get(request_id)
        return None if key is None else self._by_auth_req_id.get(key)

    def pending_for(self, user_id: str, now: int) -> list[AuthRequest]:
        return sorted(
            (
                r
                for r in list(self._by_auth_req_id.values())
                if r.user_id == user_id and r.effective_state(now) is CibaState.PENDING
            ),
            key=lambda r: r.created_at,
        )

    def replace(self, old: AuthRequest, new: AuthRequest) -> bool:
        with self._lock:
            current = self._by_auth_req_id.get(old.auth_req_id)
            if current is None or current.version != old.version:
                return False
            self._by_auth_req_id[old.auth_req_id] = new
            return True
