"""The audit log's verification failure (private; re-exported by the package).

::

    CryptoError (400)
    └── ProofInvalid             a proof or a tree head signature did not verify
        └── LogRewritten (502)   the log contradicts a tree head it signed before
                                 (defined in :mod:`patientkey.audit.sth`)
    LogDamaged (503)             the log's own store lacks a node it must hold

``ProofInvalid`` is opaque like every :class:`~patientkey.errors.CryptoError`:
its text is the same whatever failed; the precise reason is kept in
``reason`` for the local log (``patientkey.audit.*`` loggers) and never
reaches the wire.
"""

from __future__ import annotations

import logging

from patientkey.errors import CryptoError, PatientKeyError

__all__ = ["LogDamaged", "ProofInvalid", "proof_failure"]


class ProofInvalid(CryptoError):
    """The single opaque failure of every Merkle proof or tree head check."""

    problem = "audit-proof-invalid"
    title = "Audit log proof could not be verified"


def proof_failure(log: logging.Logger, reason: str) -> ProofInvalid:
    """Log ``reason`` locally and return the opaque error to raise.

    ``reason`` is a fixed string chosen by the caller, never data from the proof.
    """
    log.warning("audit proof refused: %s", reason, stacklevel=2)
    return ProofInvalid(reason)


class LogDamaged(PatientKeyError):
    """The log's store lacks a hash it must hold (rows deleted under it).

    Not the caller's fault and not a transient lock: the log cannot prove anything
    until an operator looks (``patientkey platform audit-check``). 503 rather than a
    bare 500 so the answer says what is wrong.
    """

    problem = "audit-log-damaged"
    title = "The audit log's store is damaged"
    status = 503
