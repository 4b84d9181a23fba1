"""The one exception tree of PatientKey.

Every failure the system can report is a subclass of :class:`PatientKeyError`.
Each class carries, as class attributes, the RFC 9457 problem ``type`` URI
suffix, a short ``title`` and the HTTP ``status`` an adapter answers with, so
the HTTP layer never decides a status code on its own::

    PatientKeyError                       500  (a bug if it ever reaches a peer)
    ├── InvalidInput                      400  malformed or out-of-range input
    │   └── PayloadTooLarge               413
    ├── Unauthenticated                   401  no or wrong credentials
    ├── Forbidden                         403  authenticated but not allowed
    ├── NotFound                          404
    ├── Conflict                          409  state does not allow the operation
    ├── RateLimited                       429
    ├── CryptoError                       400  ONE opaque error for every crypto failure
    │   └── ProofInvalid                  400  an audit log proof or tree head did not verify
    │       ├── LogRewritten              502  the audit log contradicts a head it signed
    │       │   └── LogTampered           502  (wallet) an accepted event deleted or altered
    │       └── LogKeyChanged             502  (wallet) the log signs with another key
    ├── LogDamaged                        503  the audit log's store lacks a node it must hold
    ├── ConfigError                       500  local mis-configuration (refuses to start)
    ├── PeerUnavailable                   502  a party we depend on did not answer
    ├── StoreBusy                         503  the database stayed locked / pool exhausted
    └── KeySupplyError                    503  the quantum key supply failed
        ├── KeySupplyBadRequest           400  the KME refused the request (ETSI 014 §5)
        ├── KeySupplyUnauthorized         401  the KME does not know us / key not ours
        └── KeyUnavailable                503  no key material (pool empty, link aborted)

``ProofInvalid``, ``LogRewritten`` and ``LogDamaged`` are defined in
:mod:`patientkey.audit`; ``LogTampered`` and ``LogKeyChanged`` in
:mod:`patientkey.wallet.audit`.

Rules: messages never contain key material or health data; crypto failures
never say *why* (the precise reason goes only to the local log, see
``patientkey.crypto``); errors are translated at layer boundaries with
``raise NewError(...) from exc``.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "PROBLEM_BASE",
    "ConfigError",
    "Conflict",
    "CryptoError",
    "Forbidden",
    "InvalidInput",
    "KeySupplyBadRequest",
    "KeySupplyError",
    "KeySupplyUnauthorized",
    "KeyUnavailable",
    "NotFound",
    "PatientKeyError",
    "PayloadTooLarge",
    "PeerUnavailable",
    "RateLimited",
    "StoreBusy",
    "Unauthenticated",
    "error_classes",
]

PROBLEM_BASE = "https://patientkey.dev/problems/"


def error_classes() -> dict[str, type[PatientKeyError]]:
    """Every error class by its problem name (for mapping a peer's problem+json back)."""
    found: dict[str, type[PatientKeyError]] = {}
    todo: list[type[PatientKeyError]] = [PatientKeyError]
    while todo:
        cls = todo.pop()
        # A subclass that inherits its parent's problem name (KeyStateError, say) must
        # not take the name over: a peer's 500 would come back as that subclass.
        if "problem" in vars(cls):
            found[cls.problem] = cls
        todo.extend(cls.__subclasses__())
    return found


class PatientKeyError(Exception):
    """Root of every error PatientKey raises on purpose."""

    problem: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"
    status: ClassVar[int] = 500

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        self.detail = detail or self.title
        self.extensions = extensions
        super().__init__(self.detail)

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.problem

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """RFC 9457 problem details object for this error."""
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extensions)
        return body


class InvalidInput(PatientKeyError):
    problem = "invalid-input"
    title = "Invalid input"
    status = 400


class PayloadTooLarge(InvalidInput):
    problem = "payload-too-large"
    title = "Payload too large"
    status = 413


class Unauthenticated(PatientKeyError):
    problem = "unauthenticated"
    title = "Authentication required"
    status = 401


class Forbidden(PatientKeyError):
    problem = "forbidden"
    title = "Forbidden"
    status = 403


class NotFound(PatientKeyError):
    problem = "not-found"
    title = "Not found"
    status = 404


class Conflict(PatientKeyError):
    problem = "conflict"
    title = "Conflict"
    status = 409


class RateLimited(PatientKeyError):
    problem = "rate-limited"
    title = "Too many requests"
    status = 429


class CryptoError(PatientKeyError):
    """The single opaque failure of every open/verify/unwrap (no oracle).

    Its text is always the same; callers that need the precise reason for the
    local log pass it as ``reason``, which is kept off the wire.
    """

    problem = "crypto-failure"
    title = "Message could not be authenticated"
    status = 400

    def __init__(self, reason: str = "unspecified") -> None:
        super().__init__(None)
        self.reason = reason

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        # ``reason`` deliberately omitted: it is for the local log only.
        return super().to_problem(instance)


class ConfigError(PatientKeyError):
    problem = "configuration-error"
    title = "Configuration error"
    status = 500


class PeerUnavailable(PatientKeyError):
    problem = "peer-unavailable"
    title = "A party this operation depends on is unavailable"
    status = 502


class StoreBusy(PatientKeyError):
    """The database did not let this transaction through in time (a lock held past the
    busy timeout, a pool with no free connection, a deadlock victim): nothing was
    written; the caller may retry."""

    problem = "store-busy"
    title = "The store is busy; try again"
    status = 503


class KeySupplyError(PatientKeyError):
    problem = "key-supply-unavailable"
    title = "Quantum key supply unavailable"
    status = 503


class KeySupplyBadRequest(KeySupplyError):
    problem = "key-supply-bad-request"
    title = "Key supply refused the request"
    status = 400


class KeySupplyUnauthorized(KeySupplyError):
    problem = "key-supply-unauthorized"
    title = "Key supply refused the caller"
    status = 401


class KeyUnavailable(KeySupplyError):
    problem = "key-unavailable"
    title = "No key material available"
    status = 503
