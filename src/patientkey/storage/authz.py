"""Durable storage of the authorization unit (OAuth/CIBA) and of the patients' identity proofs.

The pure cores (:mod:`patientkey.authz`, :mod:`patientkey.identity`) name the stores they
need as Protocols with in-memory twins. :class:`AuthzRepository` gathers them, plus
registered clients, enrolled credentials and the token ledgers, into one repository of
the platform's database, bound to ONE transaction of the caller (it never commits, like
:class:`~patientkey.storage.repos.PlatformRepo`)::

    store = authz_store(db)                   # or storage.memory.authz_store()
    with store.transaction() as repo:
        accepted = ciba.backchannel_authenticate(params, ..., now=now)
        repo.requests.add(accepted.request)
        repo.log_event("authz.requested", accepted.request.user_id, {...})

Layout: an authorization request or grant keeps what is queried in indexed columns
(ids, user, state, expiry, version) and everything else in one JSON ``body``; the
catalog's ``Scenario`` and ``Method`` are stored with ``model_dump(mode="json")`` and
authorization details with :func:`~patientkey.authz.rar.dump_details`, so a read gives
back a value equal to the one written. Times are unix seconds (the cores' ``now``),
except the one-time code and lockout times, which :mod:`patientkey.identity` keeps as
floats.

TOTP secrets are sealed at rest (:class:`~patientkey.crypto.vault.KeyVault`, row
``(user_id, "totp")``) next to ``secret_tag``, an HMAC of the secret under a key derived
apart from the sealing key; the compare-and-set matches on the tag, since a fresh seal
never equals the stored blob. A store opened without a vault refuses its ``totp`` part
(``ConfigError``); the others work (``platform register-client`` needs no keys)::

    store = authz_store(db, vault=totp_vault(keys.secret))

Concurrency: each compare-and-set is ONE conditional statement — ``UPDATE … WHERE
version = :old`` for requests and grants, ``WHERE`` every stored field equals the
expected value for one-time code challenges and lockout counters (for TOTP enrollments
the secret's tag stands for the sealed secret) —
so of two transactions that read the same row, exactly one write matches: on SQLite
because ``BEGIN IMMEDIATE`` serializes writers, on PostgreSQL because READ COMMITTED
re-checks the ``WHERE`` against the row a concurrent writer committed. A new id is
``INSERT … ON CONFLICT DO NOTHING RETURNING``: a duplicate becomes ``Conflict`` without
a database error, which on PostgreSQL would abort the caller's whole transaction.
Input is checked before anything is written (``InvalidInput``), with the same checks
as the in-memory twin in :mod:`patientkey.storage.memory`.

Hot paths run Core statements built once at import on the transaction's connection:
one round trip per read, per compare-and-set and per insert, no ORM identity map; the
dialect-specific inserts and upserts are built once per dialect.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final, Literal, Protocol, TypeVar, cast

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Row,
    Table,
    Update,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.orm import Session

from patientkey.authz.catalog import Decision, Method, Scenario
from patientkey.authz.ciba import AuthRequest, AuthRequestStore, CibaState
from patientkey.authz.clients import ClientInfo, RegisteredClient
from patientkey.authz.grants import Grant, GrantStatus, GrantStore
from patientkey.authz.rar import dump_details, parse_authorization_details
from patientkey.crypto._util import hkdf_sha256, lp
from patientkey.crypto.vault import KeyVault
from patientkey.errors import ConfigError, Conflict, CryptoError, InvalidInput, NotFound
from patientkey.identity.assurance import ProofKind
from patientkey.identity.device import DeviceAlgorithm, DeviceKey
from patientkey.identity.lockout import LockoutChange, LockoutState, LockoutStore
from patientkey.identity.otp import OtpChallenge, OtpChannel, OtpStore
from patientkey.identity.totp import TotpAlgorithm, TotpEnrollment, TotpParams, TotpStore
from patientkey.storage.engine import Database
from patientkey.storage.repos import (
    Clock,
    Event,
    EventDetail,
    PlatformRepo,
    PlatformRepository,
    SqlStore,
    Store,
    _aware,
    _check_id,
    _check_int,
    _check_pem,
    _check_seconds,
    _check_text,
    _insert_new_statement,
    _rowcount,
    _upsert_statement,
    utc_now,
)
from patientkey.storage.schema import (
    AuthRequestRow,
    ClientAssertionRow,
    CredentialRow,
    DeviceKeyRow,
    GrantRow,
    LockoutRow,
    OAuthClientRow,
    OtpChallengeRow,
    RevokedTokenRow,
    TotpRow,
)
from patientkey.storage.webauthn import SqlWebAuthnCredentials, WebAuthnCredentials

__all__ = [
    "MAX_CONSENT_BYTES",
    "MAX_JWKS_BYTES",
    "AuthzRepository",
    "ClientRegistry",
    "ContactChannel",
    "CredentialStore",
    "EnrolledDeviceKey",
    "GrantLedger",
    "LockoutCounters",
    "OtpChallenges",
    "SqlAuthzRepo",
    "TokenLedger",
    "TotpEnrollments",
    "authz_store",
    "totp_vault",
]

MAX_CONSENT_BYTES: Final = 64 * 1024
"""Largest FHIR Consent document stored with a grant (as compact JSON)."""
MAX_JWKS_BYTES: Final = 64 * 1024
"""Largest JWKS of a registered client (as compact JSON)."""

ContactChannel = Literal["sms", "email"]

_Row = Row[*tuple[Any, ...]]
_CAS_RETRIES: Final = 16
_TOTP_ROW_NAME: Final = "totp"
_TOTP_VAULT_LABEL: Final = b"patientkey/authz/totp-at-rest/v1"
_TOTP_TAG_LABEL: Final = b"patientkey/authz/totp-tag/v1"


# ─────────────────────────────────────────────────────────────── values


@dataclass(frozen=True, slots=True)
class EnrolledDeviceKey(DeviceKey):
    """A wallet's registered device key and when it was added (unix seconds).

    A :class:`~patientkey.identity.device.DeviceKey` itself, so it goes straight to
    :func:`~patientkey.identity.device.verify_device_approval`; ``key_id`` is the
    key's own (SHA-256 of its SubjectPublicKeyInfo).
    """

    created_at: int

    def device_key(self) -> DeviceKey:
        """The plain registration, without the enrollment time."""
        return DeviceKey(self.algorithm, self.public_bytes)


# ─────────────────────────────────────────────────────────────── interfaces


class GrantLedger(GrantStore, Protocol):
    """:class:`~patientkey.authz.grants.GrantStore` plus the FHIR Consent of each grant."""

    def set_consent(self, grant_id: str, document: dict[str, Any]) -> None:
        """Store (or replace) the grant's Consent JSON; ``NotFound`` if there is no grant."""
        ...

    def consent(self, grant_id: str) -> dict[str, Any] | None:
        """The grant's Consent JSON; None if the grant or its Consent is absent."""
        ...


class ClientRegistry(Protocol):
    """Registered OAuth clients (apps and third parties) with their JWKS."""

    def register(self, client: RegisteredClient, *, replace: bool = False) -> None:
        """Add ``client``; ``Conflict`` if its id is taken, unless ``replace``."""
        ...

    def get(self, client_id: str) -> RegisteredClient | None: ...

    def all(self) -> list[RegisteredClient]:
        """Every client, by client_id."""
        ...


class CredentialStore(Protocol):
    """A patient's enrolled proofs and contacts, per User_ID."""

    def set_password_hash(self, user_id: str, phc: str) -> None:
        """Store the password's PHC string (``$argon2id$…``), replacing any."""
        ...

    def password_hash(self, user_id: str) -> str | None: ...

    def add_device_key(self, user_id: str, key: DeviceKey) -> EnrolledDeviceKey:
        """Register a device public key; ``Conflict`` if this user has it already."""
        ...

    def device_keys(self, user_id: str) -> list[EnrolledDeviceKey]:
        """The user's device keys, oldest first."""
        ...

    def remove_device_key(self, user_id: str, key_id: str) -> bool:
        """Remove one device key; False if the user had no such key."""
        ...

    def set_certificate(self, user_id: str, pem: str) -> None: ...

    def certificate(self, user_id: str) -> str | None: ...

    def set_contact(
        self, user_id: str, channel: ContactChannel | OtpChannel, address: str
    ) -> None: ...

    def contact(self, user_id: str, channel: ContactChannel | OtpChannel) -> str | None: ...

    def set_environment(self, user_id: str, fingerprint: str) -> None:
        """Record the wallet's last seen login environment (an opaque hash)."""
        ...

    def environment(self, user_id: str) -> str | None: ...


class TokenLedger(Protocol):
    """Revoked access tokens and seen client assertions, each until it expires."""

    def revoke_jti(self, jti: str, expires_at: int) -> bool:
        """Record an access token's ``jti`` as revoked; False if it already was."""
        ...

    def is_revoked(self, jti: str) -> bool: ...

    def use_assertion(self, client_id: str, jti: str, expires_at: int) -> bool:
        """Record a private_key_jwt assertion ``jti`` (RFC 7523 §3 item 7); False if
        ``(client_id, jti)`` was seen before: a replay."""
        ...

    def purge(self, now: int) -> int:
        """Drop the entries whose ``expires_at`` is at or before ``now``; say how many."""
        ...


class TotpEnrollments(TotpStore, Protocol):
    """:class:`~patientkey.identity.totp.TotpStore` plus enrollment."""

    def put(self, user_id: str, enrollment: TotpEnrollment) -> None:
        """Store the user's authenticator, replacing any."""
        ...


class OtpChallenges(OtpStore, Protocol):
    """:class:`~patientkey.identity.otp.OtpStore` plus clean-up."""

    def purge(self, now: float) -> int:
        """Drop challenges expired at ``now``; say how many."""
        ...


class LockoutCounters(LockoutStore, Protocol):
    """:class:`~patientkey.identity.lockout.LockoutStore` plus a plain read."""

    def get(self, user_id: str, proof: ProofKind) -> LockoutState | None: ...


class AuthzRepository(Protocol):
    """The authorization unit's storage, bound to one transaction."""

    @property
    def requests(self) -> AuthRequestStore: ...

    @property
    def grants(self) -> GrantLedger: ...

    @property
    def clients(self) -> ClientRegistry: ...

    @property
    def credentials(self) -> CredentialStore: ...

    @property
    def totp(self) -> TotpEnrollments: ...

    @property
    def otp(self) -> OtpChallenges: ...

    @property
    def lockout(self) -> LockoutCounters: ...

    @property
    def tokens(self) -> TokenLedger: ...

    @property
    def webauthn(self) -> WebAuthnCredentials: ...

    def log_event(self, kind: str, user_id: str | None, detail: EventDetail) -> None:
        """Append to the platform's event log (metadata only, never health data)."""
        ...


# ─────────────────────────────────────────────────────────────── input checks
# Shared with the in-memory twin so that both refuse exactly the same input.


def _check_instant(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidInput(f"{name} must be a finite, non-negative number of seconds")
    return float(value)


def _check_seconds_or_none(name: str, value: object) -> int | None:
    return None if value is None else _check_seconds(name, value)


def _check_proofs(proofs: object) -> frozenset[ProofKind]:
    if not isinstance(proofs, frozenset) or not all(isinstance(p, ProofKind) for p in proofs):
        raise InvalidInput("proofs must be a frozenset of ProofKind")
    return proofs


def _check_request(request: object) -> AuthRequest:
    if not isinstance(request, AuthRequest):
        raise InvalidInput("an authorization request must be an AuthRequest")
    _check_id("auth_req_id", request.auth_req_id)
    _check_id("request_id", request.request_id)
    _check_id("user_id", request.user_id)
    _check_id("client_id", request.client_id)
    if not isinstance(request.state, CibaState):
        raise InvalidInput("state must be a CibaState")
    _check_proofs(request.proofs)
    _check_seconds("created_at", request.created_at)
    _check_seconds("expires_at", request.expires_at)
    # Times kept in the JSON body: PostgreSQL's json refuses NaN and infinities.
    _check_seconds("interval", request.interval)
    _check_seconds_or_none("last_polled_at", request.last_polled_at)
    _check_seconds_or_none("auth_time", request.auth_time)
    _check_seconds_or_none("decided_at", request.decided_at)
    _check_int("version", request.version, 1)
    return request


def _check_grant(grant: object) -> Grant:
    if not isinstance(grant, Grant):
        raise InvalidInput("a grant must be a Grant")
    _check_id("grant_id", grant.grant_id)
    _check_id("user_id", grant.user_id)
    _check_id("client_id", grant.client_id)
    if not isinstance(grant.status, GrantStatus):
        raise InvalidInput("status must be a GrantStatus")
    _check_proofs(grant.proofs)
    _check_seconds("created_at", grant.created_at)
    _check_seconds("auth_time", grant.auth_time)
    _check_seconds("expires_at", grant.expires_at)
    _check_seconds_or_none("revoked_at", grant.revoked_at)
    _check_int("version", grant.version, 1)
    return grant


_Versioned = TypeVar("_Versioned", AuthRequest, Grant)
_REQUEST_IDENTITY: Final = attrgetter("auth_req_id", "request_id", "user_id", "client_id")
_GRANT_IDENTITY: Final = attrgetter("grant_id", "user_id", "client_id")


def _check_successor(
    old: object, new: _Versioned, identity: Callable[[_Versioned], object], what: str
) -> None:
    """``new`` may replace ``old``: the same ids and a higher version.

    A successor keeps its identity and moves its version on, or compare-and-set could
    not tell two writers apart. ``new`` is checked whole; of ``old`` (read back from
    the store) only its version, as its ids must equal the checked ones of ``new``.
    """
    if (
        not isinstance(old, type(new))
        or identity(old) != identity(new)
        or _check_int("version", old.version, 1) >= new.version
    ):
        raise InvalidInput(f"replace: the same {what}, a higher version")


def _check_request_successor(old: object, new: AuthRequest) -> None:
    _check_successor(old, _check_request(new), _REQUEST_IDENTITY, "request")


def _check_grant_successor(old: object, new: Grant) -> None:
    _check_successor(old, _check_grant(new), _GRANT_IDENTITY, "grant")


def _check_document(name: str, value: object, max_bytes: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be a JSON object")
    try:
        size = len(json.dumps(value, allow_nan=False, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError):
        raise InvalidInput(f"{name} must hold JSON values only") from None
    if size > max_bytes:
        raise InvalidInput(f"{name} exceeds {max_bytes} bytes")
    return value


def _check_client(client: object) -> RegisteredClient:
    if not isinstance(client, RegisteredClient) or not isinstance(client.info, ClientInfo):
        raise InvalidInput("a client must be a RegisteredClient")
    _check_id("client_id", client.client_id)
    _check_text("client name", client.info.name, 256)
    _check_document("jwks", client.jwks, MAX_JWKS_BYTES)
    return client


def _check_phc(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("$"):
        raise InvalidInput("a password hash must be a PHC string")
    return _check_text("password hash", value, 512)


def _check_channel(channel: object) -> OtpChannel:
    try:
        return OtpChannel(channel if isinstance(channel, str) else "")
    except ValueError:
        raise InvalidInput("contact channel must be 'sms' or 'email'") from None


def _check_device_key(key: object) -> DeviceKey:
    if not isinstance(key, DeviceKey):
        raise InvalidInput("a device key must be a DeviceKey")
    return key


def _check_key_id(value: object) -> str:
    return _check_text("key_id", value, 64)


def _check_totp(enrollment: object) -> TotpEnrollment:
    if not isinstance(enrollment, TotpEnrollment) or not isinstance(enrollment.params, TotpParams):
        raise InvalidInput("a TOTP enrollment must be a TotpEnrollment")
    if len(enrollment.secret) > 128:
        raise InvalidInput("the TOTP secret must be at most 128 base32 characters")
    if enrollment.last_step is not None:
        _check_seconds("last_step", enrollment.last_step)
    return enrollment


def _check_challenge(challenge: object) -> OtpChallenge:
    if not isinstance(challenge, OtpChallenge):
        raise InvalidInput("a one-time code challenge must be an OtpChallenge")
    _check_id("challenge_id", challenge.challenge_id)
    _check_id("user_id", challenge.user_id)
    _check_id("request_id", challenge.request_id)
    _check_channel(challenge.channel)
    if not isinstance(challenge.code_mac, bytes) or not challenge.code_mac:
        raise InvalidInput("code_mac must be non-empty bytes")
    _check_instant("expires_at", challenge.expires_at)
    _check_int("attempts", challenge.attempts, 0)
    if not isinstance(challenge.used, bool):
        raise InvalidInput("used must be a bool")
    return challenge


def _check_challenge_successor(expected: OtpChallenge, new: OtpChallenge) -> None:
    _check_challenge(expected)
    _check_challenge(new)
    if new.challenge_id != expected.challenge_id:
        raise InvalidInput("swap: the same challenge id")


def _check_proof(proof: object) -> ProofKind:
    if not isinstance(proof, ProofKind):
        raise InvalidInput("unknown proof kind")
    return proof


def _check_lockout(state: object) -> LockoutState | None:
    if state is None:
        return None
    if not isinstance(state, LockoutState):
        raise InvalidInput("a lockout state must be a LockoutState or None")
    _check_int("failures", state.failures, 0)
    _check_instant("last_attempt_at", state.last_attempt_at)
    _check_instant("locked_until", state.locked_until)
    return state


def _check_jti(value: object) -> str:
    return _check_text("jti", value, 256)


def _seconds_now(clock: Clock) -> int:
    return int(_aware(clock).timestamp())


# ─────────────────────────────────────────────────────────────── (de)serialization


def _decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "scenario": decision.scenario.model_dump(mode="json"),
        "scope": dump_details(decision.scope),
        "method": decision.method.model_dump(mode="json"),
        "reasons": list(decision.reasons),
    }


def _decision(data: Mapping[str, Any]) -> Decision:
    return Decision(
        Scenario.model_validate(data["scenario"]),
        parse_authorization_details(data["scope"]),
        Method.model_validate(data["method"]),
        tuple(data["reasons"]),
    )


def _proofs(values: Sequence[str]) -> frozenset[ProofKind]:
    return frozenset(ProofKind(value) for value in values)


def _request_values(request: AuthRequest) -> dict[str, Any]:
    return {
        "auth_req_id": request.auth_req_id,
        "request_id": request.request_id,
        "user_id": request.user_id,
        "state": request.state.value,
        "created_at": request.created_at,
        "expires_at": request.expires_at,
        "version": request.version,
        "body": {
            "client_id": request.client_id,
            "client_name": request.client_name,
            "delivery_mode": request.delivery_mode,
            "notification_endpoint": request.notification_endpoint,
            "notification_token": request.notification_token,
            "binding_message": request.binding_message,
            "scope": list(request.scope),
            "acr_values": list(request.acr_values),
            "decision": _decision_json(request.decision),
            "interval": request.interval,
            "last_polled_at": request.last_polled_at,
            "grant_id": request.grant_id,
            "granted": None if request.granted is None else dump_details(request.granted),
            "proofs": sorted(proof.value for proof in request.proofs),
            "acr": request.acr,
            "auth_time": request.auth_time,
            "decided_at": request.decided_at,
        },
    }


def _request(row: _Row) -> AuthRequest:
    body: dict[str, Any] = row.body
    decision = _decision(body["decision"])
    granted = body["granted"]
    if granted is not None:
        # Approving everything asked is the common case: reuse the parsed (immutable) scope.
        same = granted == body["decision"]["scope"]
        granted = decision.scope if same else parse_authorization_details(granted)
    return AuthRequest(
        auth_req_id=row.auth_req_id,
        request_id=row.request_id,
        client_id=body["client_id"],
        client_name=body["client_name"],
        user_id=row.user_id,
        delivery_mode=body["delivery_mode"],
        notification_endpoint=body["notification_endpoint"],
        notification_token=body["notification_token"],
        binding_message=body["binding_message"],
        scope=tuple(body["scope"]),
        acr_values=tuple(body["acr_values"]),
        decision=decision,
        created_at=row.created_at,
        expires_at=row.expires_at,
        interval=body["interval"],
        last_polled_at=body["last_polled_at"],
        state=CibaState(row.state),
        grant_id=body["grant_id"],
        granted=granted,
        proofs=_proofs(body["proofs"]),
        acr=body["acr"],
        auth_time=body["auth_time"],
        decided_at=body["decided_at"],
        version=row.version,
    )


def _grant_values(grant: Grant) -> dict[str, Any]:
    return {
        "grant_id": grant.grant_id,
        "user_id": grant.user_id,
        "client_id": grant.client_id,
        "created_at": grant.created_at,
        "version": grant.version,
        "body": {
            "scenario": grant.scenario,
            "details": dump_details(grant.details),
            "acr": grant.acr,
            "proofs": sorted(proof.value for proof in grant.proofs),
            "auth_time": grant.auth_time,
            "expires_at": grant.expires_at,
            "status": grant.status.value,
            "revoked_at": grant.revoked_at,
            "revoked_by": grant.revoked_by,
        },
    }


def _grant(row: _Row) -> Grant:
    body: dict[str, Any] = row.body
    return Grant(
        grant_id=row.grant_id,
        user_id=row.user_id,
        client_id=row.client_id,
        scenario=body["scenario"],
        details=parse_authorization_details(body["details"]),
        acr=body["acr"],
        proofs=_proofs(body["proofs"]),
        auth_time=body["auth_time"],
        created_at=row.created_at,
        expires_at=body["expires_at"],
        status=GrantStatus(body["status"]),
        revoked_at=body["revoked_at"],
        revoked_by=body["revoked_by"],
        version=row.version,
    )


def _client_body(client: RegisteredClient) -> dict[str, Any]:
    info = client.info
    return {
        "name": info.name,
        "grant_types": sorted(info.grant_types),
        "delivery_mode": info.delivery_mode,
        "notification_endpoint": info.notification_endpoint,
        "scenarios": sorted(info.scenarios),
        "authorization_details_types": sorted(info.authorization_details_types),
        "jwks": client.jwks,
    }


def _client(client_id: str, body: Mapping[str, Any]) -> RegisteredClient:
    info = ClientInfo(
        client_id=client_id,
        name=body["name"],
        grant_types=frozenset(body["grant_types"]),
        delivery_mode=body["delivery_mode"],
        notification_endpoint=body["notification_endpoint"],
        scenarios=frozenset(body["scenarios"]),
        authorization_details_types=frozenset(body["authorization_details_types"]),
    )
    return RegisteredClient(info=info, jwks=body["jwks"])


def _totp_values(enrollment: TotpEnrollment) -> dict[str, Any]:
    """The enrollment's columns but the secret's (sealed by :class:`_TotpSealer`)."""
    params = enrollment.params
    return {
        "digits": params.digits,
        "period": params.period,
        "algorithm": params.algorithm.value,
        "last_step": enrollment.last_step,
    }


def _challenge_values(challenge: OtpChallenge) -> dict[str, Any]:
    """The challenge's columns but its id."""
    return {
        "user_id": challenge.user_id,
        "request_id": challenge.request_id,
        "channel": OtpChannel(challenge.channel).value,
        "code_mac": challenge.code_mac,
        "expires_at": float(challenge.expires_at),
        "attempts": challenge.attempts,
        "used": challenge.used,
    }


def _challenge(row: _Row) -> OtpChallenge:
    return OtpChallenge(
        challenge_id=row.challenge_id,
        user_id=row.user_id,
        request_id=row.request_id,
        channel=OtpChannel(row.channel),
        code_mac=bytes(row.code_mac),
        expires_at=row.expires_at,
        attempts=row.attempts,
        used=bool(row.used),
    )


# ─────────────────────────────────────────────────────────────── statements

_REQUESTS = cast(Table, AuthRequestRow.__table__)
_GRANTS = cast(Table, GrantRow.__table__)
_CLIENTS = cast(Table, OAuthClientRow.__table__)
_CREDENTIALS = cast(Table, CredentialRow.__table__)
_DEVICE_KEYS = cast(Table, DeviceKeyRow.__table__)
_TOTP = cast(Table, TotpRow.__table__)
_OTP = cast(Table, OtpChallengeRow.__table__)
_LOCKOUTS = cast(Table, LockoutRow.__table__)
_REVOKED = cast(Table, RevokedTokenRow.__table__)
_ASSERTIONS = cast(Table, ClientAssertionRow.__table__)

_REQUEST_COLUMNS: Final = (
    _REQUESTS.c.auth_req_id,
    _REQUESTS.c.request_id,
    _REQUESTS.c.user_id,
    _REQUESTS.c.state,
    _REQUESTS.c.created_at,
    _REQUESTS.c.expires_at,
    _REQUESTS.c.version,
    _REQUESTS.c.body,
)
_GET_REQUEST: Final = select(*_REQUEST_COLUMNS).where(_REQUESTS.c.auth_req_id == bindparam("key"))
_GET_REQUEST_BY_ID: Final = select(*_REQUEST_COLUMNS).where(
    _REQUESTS.c.request_id == bindparam("key")
)
_PENDING_FOR: Final = (
    select(*_REQUEST_COLUMNS)
    .where(
        _REQUESTS.c.user_id == bindparam("user_id"),
        _REQUESTS.c.state == CibaState.PENDING.value,
        _REQUESTS.c.expires_at > bindparam("now"),
    )
    .order_by(_REQUESTS.c.created_at, _REQUESTS.c.auth_req_id)
)
_REPLACE_REQUEST: Final = (
    update(_REQUESTS)
    .where(
        _REQUESTS.c.auth_req_id == bindparam("key"),
        _REQUESTS.c.version == bindparam("old_version"),
    )
    .values(
        state=bindparam("v_state"),
        created_at=bindparam("v_created_at"),
        expires_at=bindparam("v_expires_at"),
        version=bindparam("v_version"),
        body=bindparam("v_body"),
    )
)

_GRANT_COLUMNS: Final = (
    _GRANTS.c.grant_id,
    _GRANTS.c.user_id,
    _GRANTS.c.client_id,
    _GRANTS.c.created_at,
    _GRANTS.c.version,
    _GRANTS.c.body,
)
_GET_GRANT: Final = select(*_GRANT_COLUMNS).where(_GRANTS.c.grant_id == bindparam("key"))
_GRANTS_FOR: Final = (
    select(*_GRANT_COLUMNS)
    .where(_GRANTS.c.user_id == bindparam("user_id"))
    .order_by(_GRANTS.c.created_at, _GRANTS.c.grant_id)
)
_REPLACE_GRANT: Final = (
    update(_GRANTS)
    .where(_GRANTS.c.grant_id == bindparam("key"), _GRANTS.c.version == bindparam("old_version"))
    .values(
        created_at=bindparam("v_created_at"),
        version=bindparam("v_version"),
        body=bindparam("v_body"),
    )
)
_SET_CONSENT: Final = (
    update(_GRANTS)
    .where(_GRANTS.c.grant_id == bindparam("key"))
    .values(consent=bindparam("v_consent"))
)
_GET_CONSENT: Final = select(_GRANTS.c.consent).where(_GRANTS.c.grant_id == bindparam("key"))

_GET_CLIENT: Final = select(_CLIENTS.c.body).where(_CLIENTS.c.client_id == bindparam("key"))
_ALL_CLIENTS: Final = select(_CLIENTS.c.client_id, _CLIENTS.c.body).order_by(_CLIENTS.c.client_id)

_DEVICE_KEY_COLUMNS: Final = (
    _DEVICE_KEYS.c.algorithm,
    _DEVICE_KEYS.c.public_bytes,
    _DEVICE_KEYS.c.created_at,
)
_DEVICE_KEYS_OF: Final = (
    select(*_DEVICE_KEY_COLUMNS)
    .where(_DEVICE_KEYS.c.user_id == bindparam("user_id"))
    .order_by(_DEVICE_KEYS.c.created_at, _DEVICE_KEYS.c.key_id)
)
_REMOVE_DEVICE_KEY: Final = delete(_DEVICE_KEYS).where(
    _DEVICE_KEYS.c.user_id == bindparam("user_id"),
    _DEVICE_KEYS.c.key_id == bindparam("key_id"),
)


def _key(table: Table, prefix: str = "") -> list[ColumnElement[bool]]:
    """``<column> = :<prefix><column>`` for each column of ``table``'s primary key."""
    return [column == bindparam(prefix + column.name) for column in table.primary_key.columns]


def _fields(table: Table) -> list[Column[Any]]:
    """The columns of ``table`` outside its primary key."""
    return [column for column in table.columns if not column.primary_key]


def _cas_where(
    table: Table, compared: Sequence[Column[Any]] | None = None
) -> list[ColumnElement[bool]]:
    """Compare-and-set on a row: the key is ``:k_<column>`` and every other column (or
    each of ``compared``) still holds its expected value ``:e_<column>``.

    Parameters are named apart from the columns: an UPDATE reserves the column names.
    A nullable column compares with IS NOT DISTINCT FROM, so that NULL (a TOTP's
    ``last_step`` before its first use) matches NULL.
    """
    expected = [
        column.is_not_distinct_from(bindparam(f"e_{column.name}"))
        if column.nullable
        else column == bindparam(f"e_{column.name}")
        for column in (_fields(table) if compared is None else compared)
    ]
    return [*_key(table, "k_"), *expected]


def _cas_update(
    table: Table,
    compared: Sequence[Column[Any]] | None = None,
    updated: Sequence[Column[Any]] | None = None,
) -> Update:
    """``UPDATE`` of every non-key column (or each of ``updated``) to ``:v_<column>``
    where :func:`_cas_where` holds."""
    columns = _fields(table) if updated is None else updated
    values: dict[str, Any] = {c.name: bindparam(f"v_{c.name}") for c in columns}
    return update(table).where(*_cas_where(table, compared)).values(values)


def _cas_params(
    key: Mapping[str, Any], expected: Mapping[str, Any], new: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The parameters of :func:`_cas_where` and :func:`_cas_update`."""
    params = {f"k_{name}": value for name, value in key.items()}
    params.update({f"e_{name}": value for name, value in expected.items()})
    if new is not None:
        params.update({f"v_{name}": value for name, value in new.items()})
    return params


_GET_TOTP: Final = select(*_fields(_TOTP)).where(*_key(_TOTP))
# Compared on the tag, not the sealed blob: a fresh seal of the same secret differs.
_TOTP_COMPARED: Final = [c for c in _fields(_TOTP) if c.name != "secret_sealed"]
_TOTP_KEEP_SECRET: Final = [c for c in _TOTP_COMPARED if c.name != "secret_tag"]
_SWAP_TOTP: Final = _cas_update(_TOTP, _TOTP_COMPARED)
# The secret unchanged (a code accepted): the blob stays byte for byte, nothing re-sealed.
_SWAP_TOTP_STEP: Final = _cas_update(_TOTP, _TOTP_COMPARED, _TOTP_KEEP_SECRET)

_GET_OTP: Final = select(_OTP).where(*_key(_OTP))
_SWAP_OTP: Final = _cas_update(_OTP)
_PURGE_OTP: Final = delete(_OTP).where(_OTP.c.expires_at <= bindparam("now"))

_GET_LOCKOUT: Final = select(*_fields(_LOCKOUTS)).where(*_key(_LOCKOUTS))
# FOR UPDATE: concurrent attempts on PostgreSQL queue on the row instead of retrying;
# SQLite ignores it (its writers are serialized already).
_LOCK_LOCKOUT: Final = _GET_LOCKOUT.with_for_update()
_UPDATE_LOCKOUT: Final = _cas_update(_LOCKOUTS)
_DELETE_LOCKOUT: Final = delete(_LOCKOUTS).where(*_cas_where(_LOCKOUTS))

_IS_REVOKED: Final = select(_REVOKED.c.jti).where(_REVOKED.c.jti == bindparam("jti"))
_PURGE_REVOKED: Final = delete(_REVOKED).where(_REVOKED.c.expires_at <= bindparam("now"))
_PURGE_ASSERTIONS: Final = delete(_ASSERTIONS).where(_ASSERTIONS.c.expires_at <= bindparam("now"))


# ─────────────────────────────────────────────────────────────── SQL implementation


class _Part:
    """One sub-store over the connection of the caller's transaction."""

    def __init__(self, connection: Connection) -> None:
        # Core statements straight on the connection: the session's ORM execution path
        # adds a fifth to every statement and these tables have no mapped objects to flush.
        self._db = connection
        self._dialect = connection.dialect.name

    def _insert_new(self, table: str, values: Mapping[str, Any]) -> bool:
        """Insert a row with a new key; False (and nothing written) if the key exists."""
        statement = _insert_new_statement(self._dialect, table)
        return self._db.execute(statement, values).first() is not None

    def _upsert(self, table: str, values: Mapping[str, Any], columns: tuple[str, ...]) -> None:
        self._db.execute(_upsert_statement(self._dialect, table, columns), values)


class _SqlRequests(_Part):
    """:class:`~patientkey.authz.ciba.AuthRequestStore` on the ``auth_requests`` table."""

    def add(self, request: AuthRequest) -> None:
        _check_request(request)
        if not self._insert_new("auth_requests", _request_values(request)):
            raise Conflict("duplicate auth_req_id or request_id")

    def get(self, auth_req_id: str) -> AuthRequest | None:
        _check_id("auth_req_id", auth_req_id)
        row = self._db.execute(_GET_REQUEST, {"key": auth_req_id}).first()
        return None if row is None else _request(row)

    def by_request_id(self, request_id: str) -> AuthRequest | None:
        _check_id("request_id", request_id)
        row = self._db.execute(_GET_REQUEST_BY_ID, {"key": request_id}).first()
        return None if row is None else _request(row)

    def pending_for(self, user_id: str, now: int) -> list[AuthRequest]:
        _check_id("user_id", user_id)
        _check_seconds("now", now)
        rows = self._db.execute(_PENDING_FOR, {"user_id": user_id, "now": now})
        return [_request(row) for row in rows]

    def replace(self, old: AuthRequest, new: AuthRequest) -> bool:
        _check_request_successor(old, new)
        values = _request_values(new)
        result = self._db.execute(
            _REPLACE_REQUEST,
            {
                "key": old.auth_req_id,
                "old_version": old.version,
                "v_state": values["state"],
                "v_created_at": values["created_at"],
                "v_expires_at": values["expires_at"],
                "v_version": values["version"],
                "v_body": values["body"],
            },
        )
        return _rowcount(result) == 1


class _SqlGrants(_Part):
    """:class:`GrantLedger` on the ``grants`` table."""

    def add(self, grant: Grant) -> None:
        _check_grant(grant)
        if not self._insert_new("grants", _grant_values(grant)):
            raise Conflict("duplicate grant_id")

    def get(self, grant_id: str) -> Grant | None:
        _check_id("grant_id", grant_id)
        row = self._db.execute(_GET_GRANT, {"key": grant_id}).first()
        return None if row is None else _grant(row)

    def for_user(self, user_id: str) -> list[Grant]:
        _check_id("user_id", user_id)
        return [_grant(row) for row in self._db.execute(_GRANTS_FOR, {"user_id": user_id})]

    def replace(self, old: Grant, new: Grant) -> bool:
        _check_grant_successor(old, new)
        values = _grant_values(new)
        result = self._db.execute(
            _REPLACE_GRANT,
            {
                "key": old.grant_id,
                "old_version": old.version,
                "v_created_at": values["created_at"],
                "v_version": values["version"],
                "v_body": values["body"],
            },
        )
        return _rowcount(result) == 1

    def set_consent(self, grant_id: str, document: dict[str, Any]) -> None:
        _check_id("grant_id", grant_id)
        _check_document("consent", document, MAX_CONSENT_BYTES)
        result = self._db.execute(_SET_CONSENT, {"key": grant_id, "v_consent": document})
        if _rowcount(result) != 1:
            raise NotFound("grant not found")

    def consent(self, grant_id: str) -> dict[str, Any] | None:
        _check_id("grant_id", grant_id)
        document: dict[str, Any] | None = self._db.execute(_GET_CONSENT, {"key": grant_id}).scalar()
        return document


class _SqlClients(_Part):
    """:class:`ClientRegistry` on the ``oauth_clients`` table."""

    def register(self, client: RegisteredClient, *, replace: bool = False) -> None:
        _check_client(client)
        values = {"client_id": client.client_id, "body": _client_body(client)}
        if replace:
            self._upsert("oauth_clients", values, ("body",))
        elif not self._insert_new("oauth_clients", values):
            raise Conflict("client_id is registered already")

    def get(self, client_id: str) -> RegisteredClient | None:
        _check_id("client_id", client_id)
        body = self._db.execute(_GET_CLIENT, {"key": client_id}).scalar()
        return None if body is None else _client(client_id, body)

    def all(self) -> list[RegisteredClient]:
        return [_client(row.client_id, row.body) for row in self._db.execute(_ALL_CLIENTS)]


_CREDENTIAL_READS: Final = {
    name: select(_CREDENTIALS.c[name]).where(_CREDENTIALS.c.user_id == bindparam("user_id"))
    for name in ("password_hash", "certificate_pem", "sms", "email", "environment")
}


class _SqlCredentials(_Part):
    """:class:`CredentialStore` on the ``credentials`` and ``device_keys`` tables."""

    def __init__(self, connection: Connection, clock: Clock) -> None:
        super().__init__(connection)
        self._clock = clock

    def _set(self, user_id: str, column: str, value: str) -> None:
        self._upsert("credentials", {"user_id": user_id, column: value}, (column,))

    def _read(self, user_id: str, column: str) -> str | None:
        _check_id("user_id", user_id)
        value: str | None = self._db.execute(
            _CREDENTIAL_READS[column], {"user_id": user_id}
        ).scalar()
        return value

    def set_password_hash(self, user_id: str, phc: str) -> None:
        _check_id("user_id", user_id)
        self._set(user_id, "password_hash", _check_phc(phc))

    def password_hash(self, user_id: str) -> str | None:
        return self._read(user_id, "password_hash")

    def add_device_key(self, user_id: str, key: DeviceKey) -> EnrolledDeviceKey:
        _check_id("user_id", user_id)
        _check_device_key(key)
        enrolled = EnrolledDeviceKey(key.algorithm, key.public_bytes, _seconds_now(self._clock))
        values = {
            "user_id": user_id,
            "key_id": enrolled.key_id,
            "algorithm": enrolled.algorithm.value,
            "public_bytes": enrolled.public_bytes,
            "created_at": enrolled.created_at,
        }
        if not self._insert_new("device_keys", values):
            raise Conflict("device key registered already")
        return enrolled

    def device_keys(self, user_id: str) -> list[EnrolledDeviceKey]:
        _check_id("user_id", user_id)
        rows = self._db.execute(_DEVICE_KEYS_OF, {"user_id": user_id})
        return [
            EnrolledDeviceKey(
                DeviceAlgorithm(row.algorithm), bytes(row.public_bytes), row.created_at
            )
            for row in rows
        ]

    def remove_device_key(self, user_id: str, key_id: str) -> bool:
        _check_id("user_id", user_id)
        _check_key_id(key_id)
        result = self._db.execute(_REMOVE_DEVICE_KEY, {"user_id": user_id, "key_id": key_id})
        return _rowcount(result) == 1

    def set_certificate(self, user_id: str, pem: str) -> None:
        _check_id("user_id", user_id)
        self._set(user_id, "certificate_pem", _check_pem(pem))

    def certificate(self, user_id: str) -> str | None:
        return self._read(user_id, "certificate_pem")

    def set_contact(self, user_id: str, channel: ContactChannel | OtpChannel, address: str) -> None:
        _check_id("user_id", user_id)
        column = _check_channel(channel).value
        self._set(user_id, column, _check_text("address", address, 320))

    def contact(self, user_id: str, channel: ContactChannel | OtpChannel) -> str | None:
        return self._read(user_id, _check_channel(channel).value)

    def set_environment(self, user_id: str, fingerprint: str) -> None:
        _check_id("user_id", user_id)
        self._set(user_id, "environment", _check_text("fingerprint", fingerprint, 256))

    def environment(self, user_id: str) -> str | None:
        return self._read(user_id, "environment")


class _TotpSealer:
    """A TOTP secret at rest: sealed in the vault's row ``(user_id, "totp")``, plus its tag.

    The tag is ``HMAC-SHA256(mac key, lp(user_id, secret))``: what the compare-and-set
    matches, and a check that a row's blob and tag belong together. KeyVault offers no
    MAC, so the MAC key is derived here from the vault's key material with HKDF under
    its own label: the storage key itself never keys anything but the vault's own HKDF.
    The user id inside the tag keeps equal secrets of two users from showing as equal.
    """

    __slots__ = ("_mac_key", "_vault")

    def __init__(self, vault: KeyVault) -> None:
        if not isinstance(vault, KeyVault):
            raise InvalidInput("the TOTP at-rest key must be a KeyVault")
        self._vault = vault
        self._mac_key = hkdf_sha256(vault.recipient.key, _TOTP_TAG_LABEL)

    def seal(self, user_id: str, secret: str) -> bytes:
        return self._vault.wrap(user_id, _TOTP_ROW_NAME, secret.encode("ascii"))

    def tag(self, user_id: str, secret: str) -> bytes:
        message = lp(user_id.encode(), secret.encode("ascii"))
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    def open(self, user_id: str, blob: bytes, tag: bytes) -> str:
        """The secret sealed in ``blob`` for ``user_id``; CryptoError if it is not theirs."""
        body = self._vault.unwrap(user_id, _TOTP_ROW_NAME, blob)
        try:
            secret = body.decode("ascii")
        except UnicodeDecodeError as exc:
            raise CryptoError(reason="stored TOTP secret is not base32 text") from exc
        if not hmac.compare_digest(self.tag(user_id, secret), tag):
            raise CryptoError(reason="stored TOTP tag does not match its secret")
        return secret


def totp_vault(secret: bytes) -> KeyVault:
    """The vault of the TOTP secrets at rest, from the authorization unit's secret
    (:class:`~patientkey.platform.authorization.AuthzKeys` ``.secret``) by HKDF, so the
    one-time code MAC key is never the sealing key."""
    if not isinstance(secret, bytes) or len(secret) < 32:
        raise InvalidInput("the authorization secret must be at least 32 bytes")
    return KeyVault("platform", hkdf_sha256(secret, _TOTP_VAULT_LABEL))


class _SqlTotp(_Part):
    """:class:`TotpEnrollments` on the ``totp_enrollments`` table, secrets sealed."""

    def __init__(self, connection: Connection, sealer: _TotpSealer) -> None:
        super().__init__(connection)
        self._sealer = sealer

    def put(self, user_id: str, enrollment: TotpEnrollment) -> None:
        _check_id("user_id", user_id)
        _check_totp(enrollment)
        fields = {
            "secret_sealed": self._sealer.seal(user_id, enrollment.secret),
            "secret_tag": self._sealer.tag(user_id, enrollment.secret),
            **_totp_values(enrollment),
        }
        self._upsert("totp_enrollments", {"user_id": user_id, **fields}, tuple(fields))

    def get(self, user_id: str) -> TotpEnrollment | None:
        _check_id("user_id", user_id)
        row = self._db.execute(_GET_TOTP, {"user_id": user_id}).first()
        if row is None:
            return None
        secret = self._sealer.open(user_id, bytes(row.secret_sealed), bytes(row.secret_tag))
        params = TotpParams(row.digits, row.period, TotpAlgorithm(row.algorithm))
        return TotpEnrollment(secret, params, row.last_step)

    def swap(self, user_id: str, expected: TotpEnrollment, new: TotpEnrollment) -> bool:
        _check_id("user_id", user_id)
        _check_totp(expected)
        _check_totp(new)
        was = {"secret_tag": self._sealer.tag(user_id, expected.secret)}
        was.update(_totp_values(expected))
        if new.secret == expected.secret:
            statement = _SWAP_TOTP_STEP
            values = _totp_values(new)
        else:
            statement = _SWAP_TOTP
            values = {
                "secret_sealed": self._sealer.seal(user_id, new.secret),
                "secret_tag": self._sealer.tag(user_id, new.secret),
                **_totp_values(new),
            }
        params = _cas_params({"user_id": user_id}, was, values)
        return _rowcount(self._db.execute(statement, params)) == 1


class _SqlOtp(_Part):
    """:class:`OtpChallenges` on the ``otp_challenges`` table."""

    def add(self, challenge: OtpChallenge) -> None:
        fields = _challenge_values(_check_challenge(challenge))
        if not self._insert_new(
            "otp_challenges", {"challenge_id": challenge.challenge_id, **fields}
        ):
            raise Conflict("duplicate one-time code challenge id")

    def get(self, challenge_id: str) -> OtpChallenge | None:
        _check_id("challenge_id", challenge_id)
        row = self._db.execute(_GET_OTP, {"challenge_id": challenge_id}).first()
        return None if row is None else _challenge(row)

    def swap(self, expected: OtpChallenge, new: OtpChallenge) -> bool:
        _check_challenge_successor(expected, new)
        key = {"challenge_id": expected.challenge_id}
        params = _cas_params(key, _challenge_values(expected), _challenge_values(new))
        return _rowcount(self._db.execute(_SWAP_OTP, params)) == 1

    def purge(self, now: float) -> int:
        _check_instant("now", now)
        return _rowcount(self._db.execute(_PURGE_OTP, {"now": float(now)}))


class _SqlLockout(_Part):
    """:class:`LockoutCounters` on the ``lockouts`` table."""

    def get(self, user_id: str, proof: ProofKind) -> LockoutState | None:
        _check_id("user_id", user_id)
        key = {"user_id": user_id, "proof": _check_proof(proof).value}
        row = self._db.execute(_GET_LOCKOUT, key).first()
        return None if row is None else LockoutState(**row._mapping)

    def update(
        self,
        user_id: str,
        proof: ProofKind,
        change: LockoutChange,
    ) -> LockoutState | None:
        _check_id("user_id", user_id)
        key = {"user_id": user_id, "proof": _check_proof(proof).value}
        # Compare-and-set, retried: a first failure of a user races with another
        # transaction's insert of the same row (FOR UPDATE cannot lock a missing row).
        for _ in range(_CAS_RETRIES):
            row = self._db.execute(_LOCK_LOCKOUT, key).first()
            old = None if row is None else LockoutState(**row._mapping)
            new = _check_lockout(change(old))
            if self._write(key, old, new):
                return new
        raise Conflict("lockout state changed concurrently; try again")

    def _write(
        self, key: dict[str, str], old: LockoutState | None, new: LockoutState | None
    ) -> bool:
        if old is None:
            return new is None or self._insert_new("lockouts", {**key, **_lockout_values(new)})
        if new is None:
            params = _cas_params(key, _lockout_values(old))
            return _rowcount(self._db.execute(_DELETE_LOCKOUT, params)) == 1
        params = _cas_params(key, _lockout_values(old), _lockout_values(new))
        return _rowcount(self._db.execute(_UPDATE_LOCKOUT, params)) == 1


def _lockout_values(state: LockoutState) -> dict[str, Any]:
    return {
        "failures": state.failures,
        "last_attempt_at": float(state.last_attempt_at),
        "locked_until": float(state.locked_until),
    }


class _SqlTokens(_Part):
    """:class:`TokenLedger` on the ``revoked_tokens`` and ``client_assertions`` tables."""

    def revoke_jti(self, jti: str, expires_at: int) -> bool:
        values = {"jti": _check_jti(jti), "expires_at": _check_seconds("expires_at", expires_at)}
        return self._insert_new("revoked_tokens", values)

    def is_revoked(self, jti: str) -> bool:
        _check_jti(jti)
        return self._db.execute(_IS_REVOKED, {"jti": jti}).first() is not None

    def use_assertion(self, client_id: str, jti: str, expires_at: int) -> bool:
        values = {
            "client_id": _check_id("client_id", client_id),
            "jti": _check_jti(jti),
            "expires_at": _check_seconds("expires_at", expires_at),
        }
        return self._insert_new("client_assertions", values)

    def purge(self, now: int) -> int:
        params = {"now": _check_seconds("now", now)}
        revoked = _rowcount(self._db.execute(_PURGE_REVOKED, params))
        return revoked + _rowcount(self._db.execute(_PURGE_ASSERTIONS, params))


class _OnPlatformEventLog:
    """``log_event`` and ``events`` on the platform's event log, for the SQL repository
    and its in-memory twin: each sets ``_platform`` to its platform repository."""

    _platform: PlatformRepository

    def log_event(self, kind: str, user_id: str | None, detail: EventDetail) -> None:
        self._platform.log_event(kind, user_id, detail)

    def events(
        self, *, user_id: str | None = None, after: int = 0, limit: int = 100
    ) -> list[Event]:
        """The platform's event log (what :meth:`log_event` wrote, among the rest)."""
        return self._platform.events(user_id=user_id, after=after, limit=limit)


class SqlAuthzRepo(_OnPlatformEventLog):
    """:class:`AuthzRepository` on SQLAlchemy; runs inside the caller's transaction.

    ``vault`` seals the TOTP secrets; without it, :attr:`totp` raises ``ConfigError``.
    """

    def __init__(
        self, session: Session, clock: Clock = utc_now, vault: KeyVault | None = None
    ) -> None:
        connection = session.connection()
        self.requests: Final = _SqlRequests(connection)
        self.grants: Final = _SqlGrants(connection)
        self.clients: Final = _SqlClients(connection)
        self.credentials: Final = _SqlCredentials(connection, clock)
        self._connection = connection
        self._vault = vault
        self._totp: _SqlTotp | None = None
        self.otp: Final = _SqlOtp(connection)
        self.lockout: Final = _SqlLockout(connection)
        self.tokens: Final = _SqlTokens(connection)
        self.webauthn: Final = SqlWebAuthnCredentials(connection)
        self._platform = PlatformRepo(session, clock)

    @property
    def totp(self) -> TotpEnrollments:
        # Built on first use: most transactions never touch TOTP, and the MAC key's
        # derivation need not run for them.
        if self._totp is None:
            if self._vault is None:
                raise ConfigError("the TOTP store needs an at-rest key")
            self._totp = _SqlTotp(self._connection, _TotpSealer(self._vault))
        return self._totp


def authz_store(
    db: Database, *, clock: Clock = utc_now, vault: KeyVault | None = None
) -> Store[AuthzRepository]:
    """The authorization unit's store on the platform's database (migrated to head).

    ``vault`` (:func:`totp_vault`) seals the TOTP secrets; without it the store's
    ``totp`` part refuses to be used.
    """
    if vault is None:
        return SqlStore(db, SqlAuthzRepo, clock=clock)
    if not isinstance(vault, KeyVault):
        raise InvalidInput("the TOTP at-rest key must be a KeyVault")
    return SqlStore(db, functools.partial(SqlAuthzRepo, vault=vault), clock=clock)


# Static check that the SQL class implements the protocol.
_sql: Callable[[Session, Clock], AuthzRepository] = SqlAuthzRepo
