"""Small shared helpers of the identity proofs (private)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from patientkey.errors import InvalidInput
from patientkey.identity._errors import ProofRejected

__all__ = ["MAX_ID_CHARS", "Clock", "check_id", "check_now", "proof_failure", "system_clock"]

MAX_ID_CHARS = 256

Clock = Callable[[], float]
"""Seconds since the Unix epoch, as :func:`time.time` gives them; injected for tests."""


def system_clock() -> float:
    return time.time()


def proof_failure(log: logging.Logger, reason: str) -> ProofRejected:
    """Log ``reason`` locally and return the opaque error to raise.

    ``reason`` must never contain a secret; callers pass fixed strings.
    """
    log.info("identity proof rejected: %s", reason, stacklevel=2)
    return ProofRejected(reason)


def check_id(value: object, what: str) -> str:
    """An identifier: a non-empty ``str`` of at most MAX_ID_CHARS characters, no NUL."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS or "\x00" in value:
        raise InvalidInput(
            f"{what} must be a non-empty string of at most {MAX_ID_CHARS} characters"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} must be valid Unicode") from exc
    return value


def check_now(now: float) -> float:
    """A clock reading: a finite, non-negative number of seconds."""
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise InvalidInput("the clock must give a finite number of seconds")
    if now < 0:
        raise InvalidInput("the clock must not be before the Unix epoch")
    return float(now)
