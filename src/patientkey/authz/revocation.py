"""Token revocation by the app (RFC 7009).

The client (authenticated in the HTTP adapter) posts ``token`` and optionally
``token_type_hint`` (§2.1). PatientKey issues one kind of token, an access token that
stands for a grant, and no refresh tokens; revoking the access token revokes its grant
(the app says it is done), so the patient sees the grant end and every later use is
refused at once (``grants.check`` reads the grant live).

Answers (§2.2): 200 with an empty body whether or not the token was valid — "invalid
tokens do not cause an error response" — so an unknown, malformed or foreign-issuer
token, or one whose grant is already revoked, changes nothing and returns ``None``. An
authentic but expired token still revokes its grant: the app proves it held it.
Errors: ``invalid_client`` (no authenticated client), ``invalid_request`` (no token),
``unsupported_token_type`` (a hint other than the registered ``access_token`` and
``refresh_token``, §2.2.1), and ``invalid_grant`` when the token was issued to another
client (§2.1: the server "verifies whether the token was issued to the client making the
revocation request. If this validation fails, the request is refused"; RFC 6749 §5.2:
invalid_grant covers a grant "issued to another client").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from patientkey.authz.audit import AuditEvent
from patientkey.authz.clients import ClientInfo
from patientkey.authz.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidToken,
    UnsupportedTokenType,
)
from patientkey.authz.form import Params, single_params
from patientkey.authz.grants import GrantStatus, GrantStore, revoke_grant
from patientkey.authz.tokens import AccessTokenVerifier

__all__ = ["TOKEN_TYPE_HINTS", "RevocationRequest", "parse_revocation_request", "revoke_token"]

TOKEN_TYPE_HINTS: Final = frozenset({"access_token", "refresh_token"})


@dataclass(frozen=True, slots=True)
class RevocationRequest:
    token: str
    token_type_hint: str | None = None


def parse_revocation_request(params: Params) -> RevocationRequest:
    p = single_params(params)
    if "token" not in p:
        raise InvalidRequest("token is required")
    hint = p.get("token_type_hint")
    if hint is not None and hint not in TOKEN_TYPE_HINTS:
        raise UnsupportedTokenType(f"cannot revoke tokens of type {hint!r}")
    return RevocationRequest(p["token"], hint)


def revoke_token(
    params: Params,
    *,
    client: ClientInfo | None,
    verifier: AccessTokenVerifier,
    store: GrantStore,
    now: int,
) -> AuditEvent | None:
    """Handle a revocation request; the audit event if a grant was revoked, else None.

    The adapter answers 200 with an empty body unless this raises.
    """
    if client is None:
        raise InvalidClient("client authentication failed")
    request = parse_revocation_request(params)
    try:
        claims = verifier.verify_issued(request.token)
    except InvalidToken:
        return None
    if claims.client_id != client.client_id:
        raise InvalidGrant("the token was not issued to this client")
    grant = store.get(claims.grant_id)
    if grant is None or grant.client_id != client.client_id:
        return None
    if grant.status is GrantStatus.REVOKED:
        return None
    _, event = revoke_grant(store, grant.grant_id, by="client", actor=client.client_id, now=now)
    return event
