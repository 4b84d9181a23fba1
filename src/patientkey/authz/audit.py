"""Audit events of the authorization core: values, not log lines.

The issue asks that every request, decision, proof, issue, step-up, use and revocation
leave a record. The core does no I/O, so every function that changes state (or
refuses a use) returns or attaches an :class:`AuditEvent`; the caller appends it to the
audit log (the audit issue turns that log into a verifiable one).

Events hold **metadata only**: identifiers (User_ID, client id, grant id, the public
request id, P_ID, HIS_ID), the scenario, the action, the assurance class, timestamps and
a short reason. Never a token, an ``auth_req_id`` (the client's handle for collecting a
token), a proof value, a binding message or any health data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

__all__ = ["AuditEvent", "AuditKind"]


class AuditKind(StrEnum):
    REQUESTED = "authz.requested"  # an app's backchannel request was accepted
    APPROVED = "authz.approved"  # the patient approved (all or part), with proofs
    DENIED = "authz.denied"  # the patient denied
    GRANTED = "authz.granted"  # a grant was stored
    ISSUED = "authz.token_issued"  # an access token left the token endpoint
    USED = "authz.used"  # a live-grant check accepted a use
    REFUSED = "authz.refused"  # a live-grant check refused a use
    INTROSPECTED = "authz.introspected"  # a resource server was told a token is active
    STEP_UP = "authz.step_up"  # fresh or stronger verification was demanded
    REVOKED = "authz.revoked"  # a grant was revoked (by the patient or the app)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One audit record. ``at`` is seconds since the epoch (UTC)."""

    kind: AuditKind
    at: int
    user_id: str | None = None
    client_id: str | None = None
    grant_id: str | None = None
    request_id: str | None = None
    scenario: str | None = None
    actor: str | None = None
    action: str | None = None
    his_id: str | None = None
    p_id: str | None = None
    acr: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The event as a flat JSON object, unset fields left out."""
        return {key: value for key, value in asdict(self).items() if value is not None}
