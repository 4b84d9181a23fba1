"""The two failures an identity proof can end in (private; re-exported by the package).

::

    Unauthenticated (401)
    └── ProofRejected        any proof that does not verify, for whatever reason
    RateLimited (429)
    └── LockedOut            too many failed proofs of one kind; retry after a delay

``ProofRejected`` is opaque like :class:`~patientkey.errors.CryptoError`: its
text is always the same, whether the user is unknown, the password wrong, the
code replayed or the signature forged. The precise reason is kept in
``reason`` for the local log and never reaches the wire.
"""

from __future__ import annotations

from typing import Any

from patientkey.errors import RateLimited, Unauthenticated

__all__ = ["LockedOut", "ProofRejected"]


class ProofRejected(Unauthenticated):
    """The single opaque failure of every identity proof (no oracle)."""

    problem = "identity-proof-rejected"
    title = "Identity proof rejected"
    status = 401

    def __init__(self, reason: str = "unspecified") -> None:
        super().__init__(None)
        self.reason = reason

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        # ``reason`` deliberately omitted: it is for the local log only.
        return super().to_problem(instance)


class LockedOut(RateLimited):
    """Too many failed proofs of this kind: no proof is even checked before ``retry_after``.

    The lock is kept per user id *as given*, known or not, so a lock says
    nothing about whether the user exists.
    """

    problem = "identity-locked-out"
    title = "Too many failed identity proofs"
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(None, retry_after=retry_after)
        self.retry_after = retry_after
