"""Time-based one-time passwords (RFC 6238) with pyotp, a ±1 step window and replay refusal.

Enrollment: :func:`new_totp_enrollment` makes a secret as long as the HMAC's
output (RFC 4226 §4 R6 asks for at least 128 bits, recommends 160: SHA-1
gets 20 bytes, SHA-256 32, SHA-512 64) and :func:`provisioning_uri` the
``otpauth://`` URI an authenticator app scans. The enrollment is confirmed by
verifying a first code, like any other.

Verification (:func:`check_totp`, pure; :class:`TotpVerifier` over a
:class:`TotpStore`):

- the code must be exactly ``digits`` ASCII digits;
- it is compared, in constant time, with the codes of the time steps T-1, T
  and T+1 (RFC 6238 §5.2: "at most one time step is allowed as the network
  delay"), all three computed every time;
- only a step *after* the last accepted one counts (RFC 6238 §5.2: "the
  verifier MUST NOT accept the second attempt of the OTP after the successful
  validation has been issued for the first OTP"): a code accepted once, or an
  older one, is refused;
- the accepted step is stored with a compare-and-swap, so two concurrent
  submissions of one code cannot both succeed.

The secret is stored (by the caller's encrypted storage) and never appears in
``repr``, logs or errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final, Protocol

import pyotp

from patientkey.errors import InvalidInput
from patientkey.identity._util import Clock, check_id, check_now, proof_failure, system_clock

__all__ = [
    "MIN_SECRET_BYTES",
    "MemoryTotpStore",
    "TotpAlgorithm",
    "TotpEnrollment",
    "TotpParams",
    "TotpStore",
    "TotpVerifier",
    "check_totp",
    "new_totp_enrollment",
    "provisioning_uri",
]

_log = logging.getLogger(__name__)

MIN_SECRET_BYTES: Final = 16
_WINDOW: Final = 1


class TotpAlgorithm(StrEnum):
    """The HMAC of RFC 6238 (names as in the ``otpauth://`` URI ``algorithm`` parameter)."""

    SHA1 = "SHA1"
    SHA256 = "SHA256"
    SHA512 = "SHA512"


_DIGEST: Final[dict[TotpAlgorithm, Callable[..., Any]]] = {
    TotpAlgorithm.SHA1: hashlib.sha1,
    TotpAlgorithm.SHA256: hashlib.sha256,
    TotpAlgorithm.SHA512: hashlib.sha512,
}
_SECRET_BYTES: Final = {TotpAlgorithm.SHA1: 20, TotpAlgorithm.SHA256: 32, TotpAlgorithm.SHA512: 64}


@dataclass(frozen=True, slots=True)
class TotpParams:
    """Code length, time step and HMAC; the defaults are what every authenticator app supports."""

    digits: int = 6
    period: int = 30
    algorithm: TotpAlgorithm = TotpAlgorithm.SHA1

    def __post_init__(self) -> None:
        if isinstance(self.digits, bool) or self.digits not in range(6, 9):
            raise InvalidInput("TOTP codes must have 6 to 8 digits")
        # NIST SP 800-63B: a new code at least every two minutes (pyotp enforces it too).
        if isinstance(self.period, bool) or self.period not in range(15, 121):
            raise InvalidInput("the TOTP period must be 15 to 120 seconds")
        if not isinstance(self.algorithm, TotpAlgorithm):
            raise InvalidInput("unsupported TOTP algorithm")


@dataclass(frozen=True, slots=True)
class TotpEnrollment:
    """One user's TOTP authenticator: the base32 secret, its parameters, the last step accepted."""

    secret: str = field(repr=False)
    params: TotpParams = field(default_factory=TotpParams)
    last_step: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.secret, str):
            raise InvalidInput("the TOTP secret must be base32 text")
        try:
            raw = base64.b32decode(self.secret + "=" * (-len(self.secret) % 8), casefold=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput("the TOTP secret must be base32 text") from exc
        if len(raw) < MIN_SECRET_BYTES:
            raise InvalidInput(f"the TOTP secret must have at least {MIN_SECRET_BYTES} bytes")
        if self.last_step is not None and (
            isinstance(self.last_step, bool) or not isinstance(self.last_step, int)
        ):
            raise InvalidInput("last_step must be an integer")


def new_totp_enrollment(params: TotpParams | None = None) -> TotpEnrollment:
    """A fresh secret (as long as the HMAC output) for a new authenticator."""
    chosen = params or TotpParams()
    raw = secrets.token_bytes(_SECRET_BYTES[chosen.algorithm])
    return TotpEnrollment(base64.b32encode(raw).decode("ascii").rstrip("="), chosen)


def provisioning_uri(enrollment: TotpEnrollment, account_name: str, issuer: str) -> str:
    """The ``otpauth://totp/…`` URI (Key Uri Format) an authenticator app scans as a QR code."""
    check_id(account_name, "account name")
    check_id(issuer, "issuer")
    otp = pyotp.TOTP(
        enrollment.secret,
        digits=enrollment.params.digits,
        digest=_DIGEST[enrollment.params.algorithm],
        interval=enrollment.params.period,
        name=account_name,
        issuer=issuer,
    )
    return otp.provisioning_uri()


def check_totp(enrollment: TotpEnrollment, code: str, now: float) -> TotpEnrollment:
    """The enrollment with ``code``'s step recorded as used; ProofRejected if it does not verify.

    Pure: the caller stores the returned enrollment (compare-and-swap) before
    treating the proof as given.
    """
    well_formed, fresh, seen = _match(enrollment, code, check_now(now))
    if not well_formed:
        raise proof_failure(_log, "totp: malformed code")
    if fresh is None:
        raise proof_failure(_log, "totp: replayed code" if seen else "totp: wrong code")
    return replace(enrollment, last_step=fresh)


def _match(enrollment: TotpEnrollment, code: object, now: float) -> tuple[bool, int | None, bool]:
    """(well formed, first fresh matching step, whether any step matched)."""
    params = enrollment.params
    current = int(now) // params.period
    well_formed = (
        isinstance(code, str) and len(code) == params.digits and code.isascii() and code.isdigit()
    )
    candidate = code.encode("ascii") if isinstance(code, str) and well_formed else b""
    otp = pyotp.TOTP(
        enrollment.secret,
        digits=params.digits,
        digest=_DIGEST[params.algorithm],
        interval=params.period,
    )
    last = enrollment.last_step
    fresh: int | None = None
    seen = False
    for step in range(max(current - _WINDOW, 0), current + _WINDOW + 1):
        # Every candidate is computed and compared: the time taken says nothing.
        same = hmac.compare_digest(otp.generate_otp(step).encode("ascii"), candidate)
        seen |= same
        if same and fresh is None and (last is None or step > last):
            fresh = step
    return well_formed, fresh, seen


class TotpStore(Protocol):
    """Where TOTP enrollments live (the platform's encrypted user store)."""

    def get(self, user_id: str) -> TotpEnrollment | None:
        """The user's enrollment, or None."""
        ...

    def swap(self, user_id: str, expected: TotpEnrollment, new: TotpEnrollment) -> bool:
        """Store ``new`` if the user's enrollment still equals ``expected``; say whether it did."""
        ...


class MemoryTotpStore:
    """The in-memory :class:`TotpStore` (tests, demo)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, TotpEnrollment] = {}

    def put(self, user_id: str, enrollment: TotpEnrollment) -> None:
        with self._lock:
            self._items[user_id] = enrollment

    def get(self, user_id: str) -> TotpEnrollment | None:
        with self._lock:
            return self._items.get(user_id)

    def swap(self, user_id: str, expected: TotpEnrollment, new: TotpEnrollment) -> bool:
        with self._lock:
            if self._items.get(user_id) != expected:
                return False
            self._items[user_id] = new
            return True


class TotpVerifier:
    """Verifies a user's TOTP code against the store, recording the step it used."""

    def __init__(self, store: TotpStore, *, clock: Clock = system_clock) -> None:
        self._store = store
        self._clock = clock
        # Checked for unknown users so they cost what known users cost.
        self._dummy = new_totp_enrollment()

    def verify(self, user_id: str, code: str) -> None:
        """ProofRejected unless ``code`` is a fresh valid code of ``user_id``'s authenticator."""
        check_id(user_id, "user id")
        now = self._clock()
        enrollment = self._store.get(user_id)
        if enrollment is None:
            _match(self._dummy, code, check_now(now))  # the same work as for a known user
            raise proof_failure(_log, "totp: unknown user or no authenticator")
        updated = check_totp(enrollment, code, now)
        if not self._store.swap(user_id, enrollment, updated):
            raise proof_failure(_log, "totp: concurrent use of the authenticator")
