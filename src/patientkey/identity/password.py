"""Passwords: Argon2id (RFC 9106) with explicit parameters, rehash on login, no user oracle.

- :meth:`PasswordVerifier.hash` (enrollment) applies the policy — 8 to 1024
  characters (NIST SP 800-63B §3.1.1.2: at least 8, at least 64 allowed) —
  and hashes the NFC form (RFC 8265 OpaqueString, as the keystore does) with
  argon2-cffi's ``PasswordHasher`` in Argon2id mode, salt fresh per hash.
- :meth:`PasswordVerifier.verify` (login) runs exactly one Argon2id
  verification whatever happens: against the stored hash, or — for an unknown
  user, a user without a password, or an over-long input — against a dummy
  hash made at start-up with the current parameters. Wrong password and
  unknown user take the same path and the same time, and end in the same
  opaque :class:`ProofRejected`.
- On success, if the stored hash was made with other parameters, ``verify``
  returns a new hash for the caller to store (rehash on login: the only moment
  the cleartext is available).
"""

from __future__ import annotations

import logging
import secrets
import unicodedata
from typing import Final

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from patientkey.crypto.keystore import DEFAULT_ARGON2, Argon2Params
from patientkey.errors import InvalidInput
from patientkey.identity._util import proof_failure

__all__ = [
    "DEFAULT_ARGON2",
    "HASH_LEN",
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "Argon2Params",
    "PasswordVerifier",
]

_log = logging.getLogger(__name__)

MIN_PASSWORD_CHARS: Final = 8
MAX_PASSWORD_CHARS: Final = 1024
HASH_LEN: Final = 32


def _normalize(password: str) -> str:
    return unicodedata.normalize("NFC", password)


class PasswordVerifier:
    """Hashes and verifies passwords with Argon2id under one explicit parameter set."""

    def __init__(self, params: Argon2Params = DEFAULT_ARGON2) -> None:
        if not isinstance(params, Argon2Params):
            raise InvalidInput("params must be Argon2Params")
        self.params = params
        self._hasher = PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_cost,
            parallelism=params.parallelism,
            hash_len=HASH_LEN,
            salt_len=params.salt_len,
            type=Type.ID,
        )
        # Verified instead of a real hash when there is none: same cost, never matches
        # (nobody knows the random password it was made from).
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))

    def hash(self, password: str) -> str:
        """The Argon2id hash to store for a new password; InvalidInput if the policy refuses it."""
        if not isinstance(password, str):
            raise InvalidInput("the password must be text")
        normalized = _normalize(password)
        if not MIN_PASSWORD_CHARS <= len(normalized) <= MAX_PASSWORD_CHARS:
            raise InvalidInput(
                f"a password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
            )
        return self._hasher.hash(normalized)

    def verify(self, stored_hash: str | None, password: str) -> str | None:
        """Check ``password`` against ``stored_hash`` (None: unknown user or no password).

        Returns a new hash to store when ``stored_hash`` was made with other
        parameters, else None. Any failure is the opaque ProofRejected, after
        the same single Argon2id verification.
        """
        usable = isinstance(password, str) and len(password) <= MAX_PASSWORD_CHARS
        candidate = _normalize(password) if usable else ""
        known = isinstance(stored_hash, str)
        target = stored_hash if isinstance(stored_hash, str) else self._dummy_hash
        readable = True
        try:
            self._hasher.verify(target, candidate)
            matched = True
        except VerifyMismatchError:
            matched = False
        except (VerificationError, InvalidHashError):
            matched, readable = False, False
        if not known:
            raise proof_failure(_log, "password: unknown user or no password")
        if not readable:
            _log.error("password: a stored hash is not a readable Argon2 hash")
            raise proof_failure(_log, "password: stored hash unreadable")
        if not usable or not matched:
            raise proof_failure(_log, "password: wrong password")
        if self._hasher.check_needs_rehash(target):
            return self._hasher.hash(candidate)
        return None
