"""Storage of the patients' WebAuthn passkeys and of registration challenges.

Part of :class:`~patientkey.storage.authz.AuthzRepository` (``repo.webauthn``), with
its in-memory twin in :mod:`patientkey.storage.memory`; both refuse the same input
with the checks below. Tables ``webauthn_credentials`` and ``webauthn_challenges``
(migration ``platform_0007``).

- A credential id is unique across all users (WebAuthn L2 §7.1 step 22): adding a
  known id is ``Conflict``, whoever holds it.
- The sign count moves by compare-and-set (``UPDATE … WHERE sign_count = :expected``):
  of two approvals that verified against the same counter, one records its count and
  the other is told it lost, so a replayed or cloned assertion never wins silently.
- A registration challenge is one row per user, replaced by a new ``begin`` and taken
  (deleted) by the registration that uses it — one statement, ``DELETE … RETURNING`` —
  so it can be used at most once, expired or not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

from sqlalchemy import Connection, Table, bindparam, delete, select, update

from patientkey.errors import Conflict, InvalidInput
from patientkey.identity.webauthn import (
    MAX_CREDENTIAL_ID_BYTES,
    WebAuthnCredential,
    b64url,
    b64url_decode,
)
from patientkey.storage.repos import (
    _check_id,
    _check_seconds,
    _insert_new_statement,
    _rowcount,
    _upsert_statement,
)
from patientkey.storage.schema import WebAuthnChallengeRow, WebAuthnCredentialRow

__all__ = [
    "MAX_CHALLENGE_BYTES",
    "EnrolledWebAuthnCredential",
    "SqlWebAuthnCredentials",
    "WebAuthnCredentials",
]

MAX_CHALLENGE_BYTES: Final = 64
_MAX_SIGN_COUNT: Final = 2**32 - 1


@dataclass(frozen=True, slots=True)
class EnrolledWebAuthnCredential(WebAuthnCredential):
    """A stored passkey and when it was registered (unix seconds)."""

    created_at: int = field(kw_only=True)

    def credential(self) -> WebAuthnCredential:
        """The plain credential, without the registration time."""
        return WebAuthnCredential(
            self.credential_id, self.public_key, self.sign_count, self.transports
        )


class WebAuthnCredentials(Protocol):
    """A patient's passkeys and the challenge of a registration under way."""

    def add(
        self, user_id: str, credential: WebAuthnCredential, created_at: int
    ) -> EnrolledWebAuthnCredential:
        """Store a new passkey; ``Conflict`` if its credential id is known (any user)."""
        ...

    def for_user(self, user_id: str) -> list[EnrolledWebAuthnCredential]:
        """The user's passkeys, oldest first (ties by credential id)."""
        ...

    def get(self, user_id: str, credential_id: bytes) -> EnrolledWebAuthnCredential | None:
        """The user's passkey with this id; None if absent or another user's."""
        ...

    def swap_sign_count(self, user_id: str, credential_id: bytes, expected: int, new: int) -> bool:
        """Set the sign count to ``new`` if it still is ``expected``; False otherwise."""
        ...

    def remove(self, user_id: str, credential_id: bytes) -> bool:
        """Remove one passkey; False if the user had no such passkey."""
        ...

    def put_challenge(self, user_id: str, challenge: bytes, expires_at: int) -> None:
        """Store the user's registration challenge, replacing any earlier one."""
        ...

    def take_challenge(self, user_id: str, now: int) -> bytes | None:
        """Remove the user's registration challenge; it if still valid at ``now``, else None."""
        ...


# ─────────────────────────────────────────────────────────────── input checks
# Shared with the in-memory twin so that both refuse exactly the same input.


def _check_credential(credential: object) -> WebAuthnCredential:
    if not isinstance(credential, WebAuthnCredential):
        raise InvalidInput("a passkey must be a WebAuthnCredential")
    return credential


def _check_credential_id(value: object) -> str:
    """The stored key of a credential id: its base64url spelling."""
    if not isinstance(value, bytes) or not 0 < len(value) <= MAX_CREDENTIAL_ID_BYTES:
        raise InvalidInput(f"a credential id is 1 to {MAX_CREDENTIAL_ID_BYTES} bytes")
    return b64url(value)


def _check_sign_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SIGN_COUNT:
        raise InvalidInput(f"{name} must be an unsigned 32-bit integer")
    return value


def _check_registration_challenge(value: object) -> bytes:
    if not isinstance(value, bytes) or not 16 <= len(value) <= MAX_CHALLENGE_BYTES:
        raise InvalidInput(f"a registration challenge is 16 to {MAX_CHALLENGE_BYTES} bytes")
    return value


def _enrolled(credential: WebAuthnCredential, created_at: int) -> EnrolledWebAuthnCredential:
    return EnrolledWebAuthnCredential(
        credential.credential_id,
        credential.public_key,
        credential.sign_count,
        credential.transports,
        created_at=created_at,
    )


# ─────────────────────────────────────────────────────────────── SQL implementation

_CREDENTIALS = cast(Table, WebAuthnCredentialRow.__table__)
_CHALLENGES = cast(Table, WebAuthnChallengeRow.__table__)
_COLUMNS: Final = (
    _CREDENTIALS.c.credential_id,
    _CREDENTIALS.c.public_key,
    _CREDENTIALS.c.sign_count,
    _CREDENTIALS.c.transports,
    _CREDENTIALS.c.created_at,
)
_FOR_USER: Final = (
    select(*_COLUMNS)
    .where(_CREDENTIALS.c.user_id == bindparam("user_id"))
    .order_by(_CREDENTIALS.c.created_at, _CREDENTIALS.c.credential_id)
)
_GET: Final = select(*_COLUMNS).where(
    _CREDENTIALS.c.user_id == bindparam("user_id"),
    _CREDENTIALS.c.credential_id == bindparam("credential_id"),
)
_SWAP_COUNT: Final = (
    update(_CREDENTIALS)
    .where(
        _CREDENTIALS.c.user_id == bindparam("k_user_id"),
        _CREDENTIALS.c.credential_id == bindparam("k_credential_id"),
        _CREDENTIALS.c.sign_count == bindparam("e_sign_count"),
    )
    .values(sign_count=bindparam("v_sign_count"))
)
_REMOVE: Final = delete(_CREDENTIALS).where(
    _CREDENTIALS.c.user_id == bindparam("user_id"),
    _CREDENTIALS.c.credential_id == bindparam("credential_id"),
)
_TAKE_CHALLENGE: Final = (
    delete(_CHALLENGES)
    .where(_CHALLENGES.c.user_id == bindparam("user_id"))
    .returning(_CHALLENGES.c.challenge, _CHALLENGES.c.expires_at)
)


def _row_credential(row: Any) -> EnrolledWebAuthnCredential:
    transports = tuple(t for t in row.transports.split(",") if t)
    return EnrolledWebAuthnCredential(
        b64url_decode(row.credential_id),
        bytes(row.public_key),
        row.sign_count,
        transports,
        created_at=row.created_at,
    )


class SqlWebAuthnCredentials:
    """:class:`WebAuthnCredentials` over the connection of the caller's transaction."""

    def __init__(self, connection: Connection) -> None:
        self._db = connection
        self._dialect = connection.dialect.name

    def add(
        self, user_id: str, credential: WebAuthnCredential, created_at: int
    ) -> EnrolledWebAuthnCredential:
        _check_id("user_id", user_id)
        key = _check_credential_id(_check_credential(credential).credential_id)
        _check_seconds("created_at", created_at)
        values: Mapping[str, Any] = {
            "credential_id": key,
            "user_id": user_id,
            "public_key": credential.public_key,
            "sign_count": credential.sign_count,
            "transports": ",".join(credential.transports),
            "created_at": created_at,
        }
        statement = _insert_new_statement(self._dialect, _CREDENTIALS.name)
        if self._db.execute(statement, values).first() is None:
            raise Conflict("passkey registered already")
        return _enrolled(credential, created_at)

    def for_user(self, user_id: str) -> list[EnrolledWebAuthnCredential]:
        _check_id("user_id", user_id)
        return [_row_credential(r) for r in self._db.execute(_FOR_USER, {"user_id": user_id})]

    def get(self, user_id: str, credential_id: bytes) -> EnrolledWebAuthnCredential | None:
        _check_id("user_id", user_id)
        params = {"user_id": user_id, "credential_id": _check_credential_id(credential_id)}
        row = self._db.execute(_GET, params).first()
        return None if row is None else _row_credential(row)

    def swap_sign_count(self, user_id: str, credential_id: bytes, expected: int, new: int) -> bool:
        params = {
            "k_user_id": _check_id("user_id", user_id),
            "k_credential_id": _check_credential_id(credential_id),
            "e_sign_count": _check_sign_count("expected", expected),
            "v_sign_count": _check_sign_count("new", new),
        }
        return _rowcount(self._db.execute(_SWAP_COUNT, params)) == 1

    def remove(self, user_id: str, credential_id: bytes) -> bool:
        _check_id("user_id", user_id)
        params = {"user_id": user_id, "credential_id": _check_credential_id(credential_id)}
        return _rowcount(self._db.execute(_REMOVE, params)) == 1

    def put_challenge(self, user_id: str, challenge: bytes, expires_at: int) -> None:
        values = {
            "user_id": _check_id("user_id", user_id),
            "challenge": _check_registration_challenge(challenge),
            "expires_at": _check_seconds("expires_at", expires_at),
        }
        statement = _upsert_statement(self._dialect, _CHALLENGES.name, ("challenge", "expires_at"))
        self._db.execute(statement, values)

    def take_challenge(self, user_id: str, now: int) -> bytes | None:
        _check_id("user_id", user_id)
        _check_seconds("now", now)
        row = self._db.execute(_TAKE_CHALLENGE, {"user_id": user_id}).first()
        if row is None or row.expires_at <= now:
            return None
        return bytes(row.challenge)


# Static check that the SQL class implements the protocol.
_sql: Callable[[Connection], WebAuthnCredentials] = SqlWebAuthnCredentials
