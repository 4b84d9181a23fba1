"""The third party as an OAuth 2.0 / OpenID CIBA client of the platform (poll mode).

The pharmacy asks the patient for access (CIBA Core 1.0 §7), waits while the patient
decides on their wallet (§7.3 ``interval``, §11 ``authorization_pending`` /
``slow_down``), and collects an RFC 9068 access token (§10.1) whose
``authorization_details`` (RFC 9396 §7) say what was actually granted. It can ask the
platform about a token (RFC 7662) and give it up (RFC 7009). Every call authenticates
with ``private_key_jwt`` (RFC 7523 §2.2): an ES256 assertion signed with the key of
the third party's TLS client certificate, whose public key is the client's registered
JWKS (:func:`client_registration`, filed by ``patientkey thirdparty export``).

Sans-IO first (STYLE.md 1): the forms are built by :func:`authentication_form`,
:func:`record_details`, :func:`backchannel_form`, :func:`token_form` and
:func:`token_hint_form`; the answers are read by :func:`parse_metadata`,
:func:`parse_backchannel_response`, :func:`parse_token_response`,
:func:`parse_introspection_response` and :func:`error_from_response`; polling is the one
transition :func:`after_poll`; :func:`narrowed` compares what was granted with what was
asked. All are pure functions of their arguments. :class:`OAuthClient` only adds httpx,
the clock and the sleeping.

Errors: an OAuth error answer is raised as the class of
:mod:`patientkey.authz.errors` that carries its ``error`` code (``access_denied`` is
:class:`~patientkey.authz.errors.AccessDenied` at the backchannel endpoint, 403, and
:class:`~patientkey.authz.errors.DeniedByUser` at the token endpoint, 400 — told apart
by the status, as CIBA §11 and §13 give them). An answer that is not an OAuth error, an
unknown code, or an unreachable platform is :class:`~patientkey.errors.PeerUnavailable`.

Polling (CIBA §7.3, §11): never sooner than ``interval`` seconds after the previous
poll (plus :data:`POLL_MARGIN`: the platform measures the gap between *arrivals* in
whole seconds, so a poll sent exactly on time can arrive a fraction early); after
``slow_down`` the interval grows by :data:`SLOW_DOWN_STEP` "for this and all subsequent
requests"; once the request's ``expires_in`` has passed, :class:`ExpiredToken` is raised
without asking.

Access tokens are bearer secrets: never logged, never in a ``repr``; only
:meth:`TokenSet.redacted` is ever shown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

import httpx
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.jwk import ECKey

from patientkey.authz.clientauth import CLIENT_ASSERTION_TYPE, client_assertion
from patientkey.authz.clients import CIBA_GRANT_TYPE, ClientInfo, RegisteredClient
from patientkey.authz.errors import (
    AuthorizationPending,
    ExpiredToken,
    InsufficientUserAuthentication,
    InvalidToken,
    OAuthError,
    SlowDown,
    oauth_errors,
)
from patientkey.authz.metadata import is_https_url
from patientkey.authz.rar import (
    DETAILS_TYPE,
    Action,
    AuthorizationDetails,
    RecordRef,
    allows,
    covers,
    dump_details,
    parse_authorization_details,
)
from patientkey.authz.registration import AUTH_METHOD, registration_document
from patientkey.errors import ConfigError, InvalidInput, PatientKeyError, PeerUnavailable
from patientkey.pki import client_ssl_context, party_files
from patientkey.protocol.routes import OAUTH_METADATA

if TYPE_CHECKING:
    from patientkey.thirdparty.settings import ThirdPartySettings

__all__ = [
    "ASSERTION_ALG",
    "ASSERTION_LIFETIME",
    "DEFAULT_INTERVAL",
    "POLL_MARGIN",
    "SLOW_DOWN_STEP",
    "BackchannelTicket",
    "ClientKey",
    "OAuthClient",
    "PollOutcome",
    "ServerMetadata",
    "TokenSet",
    "after_poll",
    "authentication_form",
    "backchannel_form",
    "client_jwks",
    "client_registration",
    "error_from_response",
    "metadata_url",
    "narrowed",
    "parse_backchannel_response",
    "parse_introspection_response",
    "parse_metadata",
    "parse_token_response",
    "record_details",
    "token_form",
    "token_hint_form",
]

log = logging.getLogger(__name__)

ASSERTION_ALG: Final = "ES256"
#: Seconds an assertion is valid; well under the platform's 300 s ceiling.
ASSERTION_LIFETIME: Final = 60
#: CIBA §7.3: "If no value is provided, clients MUST use 5 as the default value."
DEFAULT_INTERVAL: Final = 5
#: CIBA §11: on slow_down "the interval MUST be increased by at least 5 seconds".
SLOW_DOWN_STEP: Final = 5
POLL_MARGIN: Final = 0.5
# A token with less than this many seconds left is not sent: it could expire in transit.
_EXPIRY_MARGIN: Final = 5
_MAX_INTERVAL: Final = 3600
_MAX_EXPIRES_IN: Final = 86400
_MAX_DESCRIPTION: Final = 300
# protocol.messages.AccessToken: what a DispenseRequest can carry.
_ACCESS_TOKEN = re.compile(r"[A-Za-z0-9_.-]{16,16384}")
_AUTH_REQ_ID = re.compile(r"[\x21-\x7e]{1,1024}")
_ACCEPT_JSON: Final = {"Accept": "application/json"}
_EXPIRED: Final = "the authorization request expired before the patient decided"


# ── the client's key ───────────────────────────────────────────────────────────────


def _ec_jwk(public_key: EllipticCurvePublicKey) -> dict[str, Any]:
    if not isinstance(public_key.curve, SECP256R1):
        raise ConfigError("the client key must be an EC P-256 key (ES256)")
    return dict(ECKey.import_key(public_key).as_dict(private=False))


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    # RFC 7638 over the required members only, so "kid"/"use"/"alg" never change it.
    return str(ECKey.import_key({k: jwk[k] for k in ("kty", "crv", "x", "y")}).thumbprint())


def client_jwks(public_key: EllipticCurvePublicKey) -> dict[str, Any]:
    """The client's JWK Set (RFC 7517 §5): one ES256 signing key, ``kid`` its RFC 7638
    thumbprint."""
    jwk = _ec_jwk(public_key)
    return {"keys": [{**jwk, "kid": _thumbprint(jwk), "use": "sig", "alg": ASSERTION_ALG}]}


@dataclass(frozen=True, slots=True)
class ClientKey:
    """The client_id and the private key its ``private_key_jwt`` assertions are signed with."""

    client_id: str
    private_key: EllipticCurvePrivateKey = field(repr=False)
    kid: str

    @classmethod
    def from_private_key(cls, client_id: str, key: EllipticCurvePrivateKey) -> Self:
        return cls(client_id, key, _thumbprint(_ec_jwk(key.public_key())))

    @classmethod
    def from_pem(cls, client_id: str, pem: bytes) -> Self:
        """The key of a PEM file (unencrypted, as the dev PKI writes it)."""
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError("the client key is not an unencrypted PEM private key") from exc
        if not isinstance(key, EllipticCurvePrivateKey):
            raise ConfigError("the client key must be an EC P-256 key (ES256)")
        return cls.from_private_key(client_id, key)

    @classmethod
    def from_pki(cls, pki_dir: Path, name: str) -> Self:
        """The key of ``name``'s TLS client certificate in the dev PKI."""
        path = party_files(pki_dir, name).key
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        return cls.from_pem(name, pem)

    def jwks(self) -> dict[str, Any]:
        return client_jwks(self.private_key.public_key())


def client_registration(
    client_id: str,
    *,
    certificate_pem: str,
    client_name: str,
    scenarios: Sequence[str],
) -> dict[str, Any]:
    """The RFC 7591 registration document of this third party as an OAuth client.

    Poll mode (no notification endpoint to expose), ``private_key_jwt`` with the
    certificate's public key, the CIBA grant, ``health_record_access`` details.
    """
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
    except (ValueError, UnicodeError) as exc:
        raise ConfigError("the client certificate is not PEM") from exc
    public_key = certificate.public_key()
    if not isinstance(public_key, EllipticCurvePublicKey):
        raise ConfigError("the client certificate's key must be EC P-256 (ES256)")
    if not scenarios:
        raise ConfigError("a client registration needs at least one scenario")
    info = ClientInfo(
        client_id=client_id,
        name=client_name,
        grant_types=frozenset({CIBA_GRANT_TYPE}),
        delivery_mode="poll",
        scenarios=frozenset(scenarios),
        authorization_details_types=frozenset({DETAILS_TYPE}),
    )
    return registration_document(RegisteredClient(info=info, jwks=client_jwks(public_key)))


# ── values ─────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """The endpoints of the authorization server, as its RFC 8414 document gives them."""

    issuer: str
    backchannel_authentication_endpoint: str
    token_endpoint: str
    introspection_endpoint: str | None = None
    revocation_endpoint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BackchannelTicket:
    """An accepted backchannel authentication request (CIBA §7.3), to poll for.

    ``auth_req_id`` is the handle only this client can redeem (with its assertion);
    ``expires_at`` and ``last_polled_at`` are Unix times on the client's clock.
    """

    auth_req_id: str = field(repr=False)
    expires_at: float
    interval: int
    user_id: str
    binding_message: str
    requested: AuthorizationDetails
    created_at: float
    last_polled_at: float | None = None

    def next_poll_at(self) -> float:
        """The earliest time the next poll may be sent (CIBA §7.3)."""
        if self.last_polled_at is None:
            return self.created_at
        return self.last_polled_at + self.interval + POLL_MARGIN

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSet:
    """An access token the platform issued (CIBA §10.1.1) and what it is good for.

    ``grant_id`` is read from the token's payload *without* verifying it — only to file
    the token under its grant; the platform verifies the token on every use.
    """

    access_token: str = field(repr=False)
    token_type: str
    user_id: str
    expires_at: int
    obtained_at: int
    authorization_details: AuthorizationDetails
    grant_id: str | None = None

    @property
    def ref(self) -> str:
        """How the operator names this token: its grant, else a digest of the token."""
        if self.grant_id is not None:
            return self.grant_id
        digest = hashlib.sha256(self.access_token.encode("ascii")).hexdigest()
        return f"token-{digest[:16]}"

    def usable(self, now: float) -> bool:
        """Not expired, with a margin for the time the request takes."""
        return now + _EXPIRY_MARGIN < self.expires_at

    def allows(self, action: Action, record: RecordRef) -> bool:
        """True if the granted authorization_details allow ``action`` on ``record``."""
        return allows(self.authorization_details, action, record)

    def redacted(self) -> str:
        """The first characters of the token, for display: never the whole bearer secret."""
        return self.access_token[:12] + "…"


# ── building requests ──────────────────────────────────────────────────────────────


def metadata_url(issuer: str) -> str:
    """Where the issuer's metadata is (RFC 8414 §3.1: the well-known segment goes
    between the host and any path of the issuer)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, OAUTH_METADATA + path, "", ""))


def authentication_form(key: ClientKey, *, audience: str, now: int) -> dict[str, str]:
    """RFC 7523 §2.2 client authentication: a fresh assertion for ``audience``."""
    assertion = client_assertion(
        key.client_id,
        key.private_key,
        audience=audience,
        now=now,
        lifetime=ASSERTION_LIFETIME,
        kid=key.kid,
    )
    return {
        "client_id": key.client_id,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }


def backchannel_form(
    user_id: str,
    details: Sequence[Mapping[str, Any]] | AuthorizationDetails,
    binding_message: str,
    requested_expiry: int | None = None,
) -> tuple[dict[str, str], AuthorizationDetails]:
    """The CIBA §7.1 request parameters, and the details as parsed.

    The details are checked here (RFC 9396 §5 syntax) so a malformed request never
    leaves; what a scenario allows is the platform's to judge.
    """
    if not user_id:
        raise InvalidInput("login_hint: the patient's User_ID is required")
    if not binding_message or binding_message.strip() != binding_message:
        raise InvalidInput("binding_message: required, on one line, without outer spaces")
    if requested_expiry is not None and requested_expiry < 1:
        raise InvalidInput("requested_expiry must be a positive number of seconds")
    raw: object = [
        entry.to_json() if not isinstance(entry, Mapping) else dict(entry) for entry in details
    ]
    parsed = parse_authorization_details(raw)
    form = {
        "login_hint": user_id,
        "binding_message": binding_message,
        "authorization_details": json.dumps(dump_details(parsed), separators=(",", ":")),
    }
    if requested_expiry is not None:
        form["requested_expiry"] = str(requested_expiry)
    return form, parsed


def record_details(
    records: Sequence[str],
    *,
    purpose: str,
    actions: Sequence[str],
    record_type: str = "prescription",
    duration: int | None = None,
) -> list[dict[str, Any]]:
    """``health_record_access`` objects for ``HIS_ID:P_ID`` references, one per hospital
    (``HIS_ID:*`` asks for every record of that hospital)."""
    if not records:
        raise InvalidInput("name at least one record (HIS_ID:P_ID)")
    by_hospital: dict[str, set[str]] = {}
    for reference in records:
        # A HIS_ID is a party name (no colon); a P_ID may hold colons.
        his_id, sep, p_id = reference.partition(":")
        if not sep or not his_id or not p_id:
            raise InvalidInput(f"{reference!r}: a record is HIS_ID:P_ID (or HIS_ID:*)")
        by_hospital.setdefault(his_id, set()).add(p_id)
    details: list[dict[str, Any]] = []
    for his_id, ids in sorted(by_hospital.items()):
        selector: dict[str, Any] = {"his_id": his_id}
        if "*" not in ids:
            selector["ids"] = sorted(ids)
        entry: dict[str, Any] = {
            "type": DETAILS_TYPE,
            "record_types": [record_type],
            "records": selector,
            "actions": list(actions),
            "purpose": purpose,
        }
        if duration is not None:
            entry["duration"] = duration
        details.append(entry)
    return details


def token_form(ticket: BackchannelTicket) -> dict[str, str]:
    """The CIBA §10.1 token request."""
    return {"grant_type": CIBA_GRANT_TYPE, "auth_req_id": ticket.auth_req_id}


def token_hint_form(token: str) -> dict[str, str]:
    """An RFC 7662 §2.1 introspection or RFC 7009 §2.1 revocation request."""
    return {"token": token, "token_type_hint": "access_token"}


# ── reading answers ────────────────────────────────────────────────────────────────


def parse_metadata(doc: object, *, issuer: str) -> ServerMetadata:
    """The endpoints of an RFC 8414 document, once it is proven to be ``issuer``'s own
    and to offer what this client needs (CIBA poll mode, ``private_key_jwt``)."""
    if not isinstance(doc, Mapping):
        raise PeerUnavailable("the platform's metadata is not a JSON object")
    # RFC 8414 §3.3: the issuer "MUST be identical" to the one the URL was built from;
    # otherwise the document must not be used (a mix-up or impersonation).
    if doc.get("issuer") != issuer:
        raise ConfigError(
            f"the platform's metadata names issuer {str(doc.get('issuer'))[:200]!r}, "
            f"not the configured {issuer!r}: refusing it (RFC 8414 §3.3)"
        )
    needs: dict[str, str] = {
        "grant_types_supported": CIBA_GRANT_TYPE,
        "backchannel_token_delivery_modes_supported": "poll",
        "token_endpoint_auth_methods_supported": AUTH_METHOD,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALG,
        "authorization_details_types_supported": DETAILS_TYPE,
    }
    for member, needed in needs.items():
        offered = doc.get(member)
        if not isinstance(offered, list) or needed not in offered:
            raise PeerUnavailable(f"the platform does not offer {needed} ({member})")
    endpoints: dict[str, str | None] = {}
    for member in (
        "backchannel_authentication_endpoint",
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
    ):
        value = doc.get(member)
        if value is not None and not is_https_url(value, allow_query=True):
            raise PeerUnavailable(f"the platform's {member} is not an https URL")
        endpoints[member] = value
    bc, token = endpoints["backchannel_authentication_endpoint"], endpoints["token_endpoint"]
    if bc is None or token is None:
        raise PeerUnavailable("the platform's metadata lacks the CIBA or token endpoint")
    return ServerMetadata(
        issuer=issuer,
        backchannel_authentication_endpoint=bc,
        token_endpoint=token,
        introspection_endpoint=endpoints["introspection_endpoint"],
        revocation_endpoint=endpoints["revocation_endpoint"],
    )


def _text(value: object, limit: int = _MAX_DESCRIPTION) -> str:
    # Only visible ASCII of bounded length reaches an exception text (and a terminal).
    text = value if isinstance(value, str) else ""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


def error_from_response(status: int, body: object) -> PatientKeyError:
    """The exception an error answer stands for: the OAuth class of its ``error`` code
    (the one whose status matches when a code has two), else PeerUnavailable."""
    code = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(code, str):
        return PeerUnavailable(f"the platform answered {status} without an OAuth error")
    description = _text(body.get("error_description")) if isinstance(body, Mapping) else ""
    # Looked up per call: modules imported later add their error classes.
    candidates = sorted(oauth_errors().get(code, []), key=lambda cls: cls.__name__)
    if not candidates:
        return PeerUnavailable(f"the platform answered {status} {_text(code, 64)}: {description}")
    cls = next((c for c in candidates if c.status == status), candidates[0])
    if issubclass(cls, InvalidToken):
        return cls(description or "unspecified")
    if issubclass(cls, InsufficientUserAuthentication):
        assert isinstance(body, Mapping)
        acr = body.get("acr_values")
        max_age = body.get("max_age")
        return cls(
            description or None,
            acr_values=tuple(_text(acr).split()) if isinstance(acr, str) else (),
            max_age=max_age if isinstance(max_age, int) and not isinstance(max_age, bool) else None,
        )
    return cls(description or None)


def _success(status: int, body: object) -> Mapping[str, Any]:
    if status != 200 or not isinstance(body, Mapping):
        raise error_from_response(status, body)
    return body


def _positive_int(body: Mapping[str, Any], name: str, limit: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise PeerUnavailable(f"the platform's answer has no valid {name}")
    return value


def parse_backchannel_response(
    status: int,
    body: object,
    *,
    user_id: str,
    binding_message: str,
    requested: AuthorizationDetails,
    now: float,
) -> BackchannelTicket:
    """The ticket of a CIBA §7.3 answer; the §13 error it stands for otherwise."""
    ok = _success(status, body)
    auth_req_id = ok.get("auth_req_id")
    if not isinstance(auth_req_id, str) or not _AUTH_REQ_ID.fullmatch(auth_req_id):
        raise PeerUnavailable("the platform's answer has no valid auth_req_id")
    expires_in = _positive_int(ok, "expires_in", _MAX_EXPIRES_IN)
    interval = (
        _positive_int(ok, "interval", _MAX_INTERVAL)
        if ok.get("interval") is not None
        else DEFAULT_INTERVAL
    )
    return BackchannelTicket(
        auth_req_id=auth_req_id,
        expires_at=now + expires_in,
        interval=interval,
        user_id=user_id,
        binding_message=binding_message,
        requested=requested,
        created_at=now,
    )


def _b64url_json(segment: str) -> object:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _unverified_claims(token: str) -> Mapping[str, Any]:
    """The payload of a compact JWS, unverified (bookkeeping only, see TokenSet)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = _b64url_json(parts[1])
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        return {}
    return claims if isinstance(claims, Mapping) else {}


def parse_token_response(
    status: int, body: object, *, ticket: BackchannelTicket, now: float
) -> TokenSet:
    """The tokens of a CIBA §10.1.1 answer; the §11 error it stands for otherwise."""
    ok = _success(status, body)
    token = ok.get("access_token")
    if not isinstance(token, str) or not _ACCESS_TOKEN.fullmatch(token):
        raise PeerUnavailable("the platform's answer has no usable access_token")
    token_type = ok.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise PeerUnavailable("the platform issued a token that is not a Bearer token")
    expires_in = _positive_int(ok, "expires_in", _MAX_EXPIRES_IN)
    if "authorization_details" not in ok:
        raise PeerUnavailable("the token answer lacks authorization_details (RFC 9396 §7)")
    try:
        granted = parse_authorization_details(ok["authorization_details"])
    except OAuthError as exc:
        raise PeerUnavailable(f"the granted authorization_details are invalid: {exc}") from exc
    claims = _unverified_claims(token)
    sub = claims.get("sub")
    if sub is not None and sub != ticket.user_id:
        raise PeerUnavailable("the token was issued for another patient than the one asked")
    grant_id = claims.get("grant_id")
    return TokenSet(
        access_token=token,
        token_type="Bearer",  # noqa: S106 - the RFC 6750 token type, not a secret
        user_id=ticket.user_id,
        expires_at=int(now) + expires_in,
        obtained_at=int(now),
        authorization_details=granted,
        grant_id=grant_id if isinstance(grant_id, str) and grant_id else None,
    )


def parse_introspection_response(status: int, body: object) -> dict[str, Any]:
    """The RFC 7662 §2.2 answer; ``active`` must be a boolean."""
    ok = _success(status, body)
    if not isinstance(ok.get("active"), bool):
        raise PeerUnavailable("the introspection answer has no boolean 'active'")
    return dict(ok)


def narrowed(requested: AuthorizationDetails, granted: AuthorizationDetails) -> bool:
    """True if the patient granted less than was asked (RFC 9396 §7: the client
    compares the two). A duration the request left open and the platform filled in
    (the scenario's maximum) is not a narrowing; a request object granted split in
    several objects reads as narrowed (this only decides whether to say so)."""
    for asked in requested:
        if not any(
            covers(
                given,
                asked
                if asked.duration is not None
                else asked.model_copy(update={"duration": given.duration}),
            )
            for given in granted
        ):
            return True
    return False


def after_poll(
    ticket: BackchannelTicket, error: OAuthError, *, polled_at: float
) -> BackchannelTicket:
    """The ticket after a poll answered ``error``: pending keeps the interval,
    slow_down grows it (CIBA §11); any other error is final and is raised."""
    if isinstance(error, SlowDown):
        interval = min(ticket.interval + SLOW_DOWN_STEP, _MAX_INTERVAL)
        return replace(ticket, interval=interval, last_polled_at=polled_at)
    if isinstance(error, AuthorizationPending):
        return replace(ticket, last_polled_at=polled_at)
    raise error


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """One undecided or successful poll: the ticket to keep, and the token or the
    pending answer (AuthorizationPending or SlowDown)."""

    ticket: BackchannelTicket
    token: TokenSet | None = None
    pending: OAuthError | None = None


# ── the HTTP client ────────────────────────────────────────────────────────────────


def _json_body(response: httpx.Response) -> object:
    try:
        return response.json()
    except (ValueError, UnicodeError):
        return None


class OAuthClient:
    """A synchronous OAuth/CIBA client of one authorization server (the platform)."""

    def __init__(
        self,
        key: ClientKey,
        issuer: str,
        *,
        http: httpx.Client,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.key = key
        self.issuer = issuer.rstrip("/")
        self._http = http
        self._clock = clock
        self._sleep = sleep
        self._metadata: ServerMetadata | None = None

    @classmethod
    def from_settings(cls, settings: ThirdPartySettings, *, timeout_s: float = 10.0) -> Self:
        """The third party's client: its certificate key, TLS trusting only the PKI's CA
        (and presenting its client certificate, which the platform may check)."""
        # Everything that can fail on the settings comes before the client it would leak.
        key = ClientKey.from_pki(settings.pki_dir, settings.name)
        issuer = settings.oauth_issuer
        http = httpx.Client(
            verify=client_ssl_context(settings.pki_dir, settings.name),
            timeout=timeout_s,
            follow_redirects=False,
        )
        return cls(key, issuer, http=http)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ── transport ──

    def _send(self, url: str, form: Mapping[str, str] | None) -> httpx.Response:
        try:
            if form is None:
                return self._http.get(url, headers=_ACCEPT_JSON)
            return self._http.post(url, data=dict(form), headers=_ACCEPT_JSON)
        except httpx.HTTPError as exc:
            raise PeerUnavailable(f"the platform is unreachable: {type(exc).__name__}") from exc

    def _post(self, endpoint: str, form: Mapping[str, str], *, now: float) -> tuple[int, object]:
        auth = authentication_form(self.key, audience=endpoint, now=int(now))
        response = self._send(endpoint, {**form, **auth})
        return response.status_code, _json_body(response)

    # ── endpoints ──

    def discover(self) -> ServerMetadata:
        """Read and check the RFC 8414 metadata (once; cached for this client)."""
        if self._metadata is None:
            response = self._send(metadata_url(self.issuer), None)
            if response.status_code != 200:
                raise PeerUnavailable(f"the platform's metadata answered {response.status_code}")
            self._metadata = parse_metadata(_json_body(response), issuer=self.issuer)
        return self._metadata

    def request_authorization(
        self,
        user_id: str,
        details: Sequence[Mapping[str, Any]] | AuthorizationDetails,
        binding_message: str,
        requested_expiry: int | None = None,
    ) -> BackchannelTicket:
        """Ask patient ``user_id`` for ``details`` (CIBA §7.1); the ticket to poll with."""
        form, parsed = backchannel_form(user_id, details, binding_message, requested_expiry)
        endpoint = self.discover().backchannel_authentication_endpoint
        now = self._clock()
        status, body = self._post(endpoint, form, now=now)
        ticket = parse_backchannel_response(
            status,
            body,
            user_id=user_id,
            binding_message=binding_message,
            requested=parsed,
            now=now,
        )
        log.info(
            "authorization request to %s accepted; expires in %d s, poll every %d s",
            user_id,
            int(ticket.expires_at - now),
            ticket.interval,
        )
        return ticket

    def poll_once(self, ticket: BackchannelTicket) -> PollOutcome:
        """One token request, no sooner than the interval allows (sleeping until then).

        Raises the final errors (expired_token, access_denied, invalid_grant, ...);
        returns the ticket to keep with either the token or the pending answer.
        """
        now = self._clock()
        if ticket.expired(now):
            raise ExpiredToken(_EXPIRED)
        wait = ticket.next_poll_at() - now
        if wait > 0:
            self._sleep(min(wait, ticket.expires_at - now))
            now = self._clock()
            if ticket.expired(now):
                raise ExpiredToken(_EXPIRED)
        status, body = self._post(self.discover().token_endpoint, token_form(ticket), now=now)
        try:
            token = parse_token_response(status, body, ticket=ticket, now=self._clock())
        except (AuthorizationPending, SlowDown) as exc:
            return PollOutcome(after_poll(ticket, exc, polled_at=now), pending=exc)
        log.info("access token obtained for grant %s of %s", token.grant_id, token.user_id)
        return PollOutcome(replace(ticket, last_polled_at=now), token=token)

    def poll_token(
        self,
        ticket: BackchannelTicket,
        *,
        wait: bool,
        on_pending: Callable[[BackchannelTicket], None] | None = None,
    ) -> TokenSet:
        """The access token once the patient approved.

        With ``wait``, poll until the patient decides or the request expires; without,
        poll once and raise the AuthorizationPending / SlowDown answered. ``on_pending``
        receives the ticket after each undecided poll (to persist its interval).
        """
        while True:
            outcome = self.poll_once(ticket)
            if outcome.token is not None:
                return outcome.token
            ticket = outcome.ticket
            if on_pending is not None:
                on_pending(ticket)
            if not wait:
                assert outcome.pending is not None
                raise outcome.pending

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662: what the platform says about ``token`` now."""
        endpoint = self.discover().introspection_endpoint
        if endpoint is None:
            raise PeerUnavailable("the platform offers no introspection endpoint")
        status, body = self._post(endpoint, token_hint_form(token), now=self._clock())
        return parse_introspection_response(status, body)

    def revoke(self, token: str) -> None:
        """RFC 7009: give ``token`` (and so its grant) up. 200 whatever it was (§2.2)."""
        endpoint = self.discover().revocation_endpoint
        if endpoint is None:
            raise PeerUnavailable("the platform offers no revocation endpoint")
        status, body = self._post(endpoint, token_hint_form(token), now=self._clock())
        if status != 200:
            raise error_from_response(status, body)
