"""One-time codes by SMS or email, sent through a :class:`Gateway`.

:meth:`OneTimeCodes.send` makes a code of ``digits`` decimal digits with
:mod:`secrets` (uniform: ``randbelow(10**digits)``), keeps only its MAC, and
hands the message to the gateway; the code itself is never stored::

    code_mac = HMAC-SHA256(key, lp(LABEL) ‖ lp(challenge_id) ‖ lp(user_id)
                                ‖ lp(request_id) ‖ lp(code))

A MAC under a platform key instead of a plain hash: a 6-digit code has 20
bits of entropy, so a hash read from the database would give the code away
after a million guesses; without the key it gives nothing.

:meth:`OneTimeCodes.verify` refuses, with the one opaque
:class:`ProofRejected`: an unknown challenge, a challenge of another user or
another request, an expired one, one already used, one whose attempts are
spent, and a wrong code. Each submission spends an attempt *before* the code
is compared, and the challenge is marked used on success — both by
compare-and-swap on the :class:`OtpStore`, so concurrent submissions can
neither exceed the attempts nor use one code twice. Codes are compared in
constant time.

Gateways: :class:`ConsoleSink` and :class:`FileSink` for development (they
*print the code*: never configure them in production), :class:`MemorySink`
for tests. A real SMS or email gateway implements :class:`Gateway`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import threading
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Final, Protocol, TextIO

from patientkey.errors import ConfigError, InvalidInput
from patientkey.identity._util import Clock, check_id, check_now, proof_failure, system_clock

__all__ = [
    "MIN_KEY_BYTES",
    "ConsoleSink",
    "FileSink",
    "Gateway",
    "MemoryOtpStore",
    "MemorySink",
    "OneTimeCodes",
    "OtpChallenge",
    "OtpChannel",
    "OtpMessage",
    "OtpParams",
    "OtpStore",
    "check_destination",
    "new_code",
]

_log = logging.getLogger(__name__)

_LABEL: Final = b"patientkey/identity/otp/v1"
MIN_KEY_BYTES: Final = 32
_E164_RE: Final = re.compile(r"\+[1-9][0-9]{6,14}")
# Deliberately loose: the mail system decides what an address is; this only keeps junk out.
_EMAIL_RE: Final = re.compile(r"[^@\s]{1,64}@[^@\s]{1,253}")


class OtpChannel(StrEnum):
    SMS = "sms"
    EMAIL = "email"


@dataclass(frozen=True, slots=True)
class OtpParams:
    """Code length, lifetime and attempts per code."""

    digits: int = 6
    ttl_seconds: int = 300
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.digits, bool) or self.digits not in range(6, 9):
            raise InvalidInput("one-time codes must have 6 to 8 digits")
        if isinstance(self.ttl_seconds, bool) or self.ttl_seconds not in range(30, 3601):
            raise InvalidInput("a one-time code must live 30 to 3600 seconds")
        if isinstance(self.max_attempts, bool) or self.max_attempts not in range(1, 11):
            raise InvalidInput("a one-time code allows 1 to 10 attempts")


@dataclass(frozen=True, slots=True)
class OtpChallenge:
    """A sent code as the platform keeps it: its MAC, expiry, attempts spent, whether used."""

    challenge_id: str
    user_id: str
    request_id: str
    channel: OtpChannel
    code_mac: bytes = field(repr=False)
    expires_at: float
    attempts: int = 0
    used: bool = False


@dataclass(frozen=True, slots=True)
class OtpMessage:
    """What a gateway delivers. ``code`` is secret: it never appears in ``repr``."""

    channel: OtpChannel
    destination: str
    code: str = field(repr=False)
    expires_in: int

    @property
    def text(self) -> str:
        minutes = max(1, self.expires_in // 60)
        return (
            f"Your PatientKey code is {self.code}. It expires in {minutes} min. "
            "Never share it: PatientKey will never ask you for it."
        )


class Gateway(Protocol):
    """Delivers a one-time code by SMS or email (raises PeerUnavailable if it cannot)."""

    def send(self, message: OtpMessage) -> None: ...


class OtpStore(Protocol):
    """Where sent codes' challenges live until they are used or expire."""

    def add(self, challenge: OtpChallenge) -> None:
        """Store a new challenge (its id is fresh and random)."""
        ...

    def get(self, challenge_id: str) -> OtpChallenge | None: ...

    def swap(self, expected: OtpChallenge, new: OtpChallenge) -> bool:
        """Store ``new`` if the challenge still equals ``expected``; say whether it did."""
        ...


def new_code(digits: int) -> str:
    """A uniformly random code of ``digits`` decimal digits."""
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def _lp(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def check_destination(channel: OtpChannel, destination: str) -> str:
    if not isinstance(destination, str):
        raise InvalidInput("the destination must be text")
    if channel is OtpChannel.SMS and not _E164_RE.fullmatch(destination):
        raise InvalidInput("an SMS destination must be an E.164 phone number")
    if channel is OtpChannel.EMAIL and not _EMAIL_RE.fullmatch(destination):
        raise InvalidInput("an email destination must be an email address")
    return destination


class OneTimeCodes:
    """Sends one-time codes through a gateway and verifies them, single use, against a store."""

    def __init__(
        self,
        key: bytes,
        store: OtpStore,
        gateway: Gateway,
        *,
        params: OtpParams | None = None,
        clock: Clock = system_clock,
    ) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"the one-time code key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._store = store
        self._gateway = gateway
        self.params = params or OtpParams()
        self._clock = clock

    def _mac(self, challenge_id: str, user_id: str, request_id: str, code: bytes) -> bytes:
        message = _lp(_LABEL, challenge_id.encode(), user_id.encode(), request_id.encode(), code)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def send(
        self, *, user_id: str, request_id: str, channel: OtpChannel, destination: str
    ) -> OtpChallenge:
        """Send a fresh code for ``request_id`` to ``destination``; return its stored challenge."""
        check_id(user_id, "user id")
        check_id(request_id, "request id")
        if not isinstance(channel, OtpChannel):
            raise InvalidInput("unsupported one-time code channel")
        check_destination(channel, destination)
        now = check_now(self._clock())
        code = new_code(self.params.digits)
        challenge_id = secrets.token_urlsafe(16)
        challenge = OtpChallenge(
            challenge_id=challenge_id,
            user_id=user_id,
            request_id=request_id,
            channel=channel,
            code_mac=self._mac(challenge_id, user_id, request_id, code.encode("ascii")),
            expires_at=now + self.params.ttl_seconds,
        )
        # Stored first: a code the gateway delivered always has a challenge to check against.
        self._store.add(challenge)
        self._gateway.send(OtpMessage(channel, destination, code, self.params.ttl_seconds))
        return challenge

    def verify(self, *, challenge_id: str, user_id: str, request_id: str, code: str) -> None:
        """ProofRejected unless ``code`` is the live, unused code sent for this user and request."""
        check_id(user_id, "user id")
        check_id(request_id, "request id")
        now = check_now(self._clock())
        well_formed = (
            isinstance(code, str)
            and len(code) == self.params.digits
            and code.isascii()
            and code.isdigit()
        )
        candidate = code.encode("ascii") if isinstance(code, str) and well_formed else b""
        challenge = (
            self._store.get(challenge_id)
            if isinstance(challenge_id, str) and 0 < len(challenge_id) <= 64
            else None
        )
        if challenge is None or challenge.user_id != user_id or challenge.request_id != request_id:
            raise proof_failure(_log, "otp: unknown challenge")
        if challenge.used:
            raise proof_failure(_log, "otp: code already used")
        if now >= challenge.expires_at:
            raise proof_failure(_log, "otp: code expired")
        if challenge.attempts >= self.params.max_attempts:
            raise proof_failure(_log, "otp: attempts spent")
        spent = replace(challenge, attempts=challenge.attempts + 1)
        if not self._store.swap(challenge, spent):
            raise proof_failure(_log, "otp: concurrent attempt")
        expected = self._mac(challenge.challenge_id, user_id, request_id, candidate)
        if not (well_formed and hmac.compare_digest(expected, challenge.code_mac)):
            raise proof_failure(_log, "otp: wrong code")
        if not self._store.swap(spent, replace(spent, used=True)):
            raise proof_failure(_log, "otp: concurrent use")


class MemoryOtpStore:
    """The in-memory :class:`OtpStore` (tests, demo); :meth:`purge` drops expired challenges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, OtpChallenge] = {}

    def add(self, challenge: OtpChallenge) -> None:
        with self._lock:
            if challenge.challenge_id in self._items:
                raise InvalidInput("duplicate one-time code challenge id")
            self._items[challenge.challenge_id] = challenge

    def get(self, challenge_id: str) -> OtpChallenge | None:
        with self._lock:
            return self._items.get(challenge_id)

    def swap(self, expected: OtpChallenge, new: OtpChallenge) -> bool:
        with self._lock:
            if self._items.get(expected.challenge_id) != expected:
                return False
            self._items[expected.challenge_id] = new
            return True

    def purge(self, now: float) -> int:
        """Drop challenges expired at ``now``; return how many."""
        with self._lock:
            dead = [k for k, c in self._items.items() if c.expires_at <= now]
            for k in dead:
                del self._items[k]
            return len(dead)


class MemorySink:
    """A gateway that keeps the messages (tests)."""

    def __init__(self) -> None:
        self.messages: list[OtpMessage] = []

    def send(self, message: OtpMessage) -> None:
        self.messages.append(message)


class ConsoleSink:
    """Development gateway: writes each message to a text stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def send(self, message: OtpMessage) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(f"[dev {message.channel} to {message.destination}] {message.text}\n")
        stream.flush()


class FileSink:
    """Development gateway: appends each message as one JSON line to a private file (0600)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def send(self, message: OtpMessage) -> None:
        line = json.dumps(
            {
                "channel": str(message.channel),
                "to": message.destination,
                "code": message.code,
                "text": message.text,
            },
            ensure_ascii=True,
        )
        with self._lock:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
