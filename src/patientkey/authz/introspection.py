"""Token introspection (RFC 7662): the live state of an access token.

A protected resource (or the client the token was issued to) posts ``token`` and
optionally ``token_type_hint`` (§2.1; the hint is only a hint and is ignored: there is
one kind of token). The answer (§2.2) is ``{"active": false}`` and nothing else for a
token that is malformed, not ours, expired, whose grant is revoked, expired or gone,
or that the caller may not see (§4: the server should not let a caller probe for
others' tokens). An active token is described with the registered fields ``active``,
``client_id``, ``token_type``, ``exp``, ``iat``, ``sub``, ``aud``, ``iss``, ``jti``,
plus ``authorization_details`` as granted (RFC 9396 §9.2), ``acr`` and ``auth_time``
(RFC 9470 §6.2) and PatientKey's ``grant_id``.

"Live" means the grant is read from the store on every call, as ``grants.check`` does:
introspection after a revocation says inactive at once.
"""

from __future__ import annotations

from typing import Any

from patientkey.authz.errors import InvalidClient, InvalidRequest, InvalidToken
from patientkey.authz.form import Params, single_params
from patientkey.authz.grants import GrantStore
from patientkey.authz.rar import dump_details
from patientkey.authz.tokens import AccessTokenVerifier

__all__ = ["introspect"]


def _inactive() -> dict[str, Any]:
    """§2.2: an inactive token is described by ``active`` alone."""
    return {"active": False}


def introspect(
    params: Params,
    *,
    caller: str | None,
    verifier: AccessTokenVerifier,
    store: GrantStore,
    now: int,
    resource_servers: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The introspection response for an authenticated ``caller`` (client or resource
    server id; None if authentication failed → ``invalid_client``)."""
    if caller is None:
        raise InvalidClient("introspection requires an authenticated caller")
    p = single_params(params)
    if "token" not in p:
        raise InvalidRequest("token is required")
    try:
        claims = verifier.verify_issued(p["token"])
    except InvalidToken:
        return _inactive()
    if caller not in resource_servers and caller != claims.client_id:
        return _inactive()
    if claims.exp <= now:
        return _inactive()
    grant = store.get(claims.grant_id)
    if (
        grant is None
        or grant.client_id != claims.client_id
        or grant.user_id != claims.sub
        or grant.live_status(now) != "active"
    ):
        return _inactive()
    return {
        "active": True,
        "client_id": claims.client_id,
        "token_type": "Bearer",
        "exp": claims.exp,
        "iat": claims.iat,
        "sub": claims.sub,
        "aud": claims.aud,
        "iss": claims.iss,
        "jti": claims.jti,
        "authorization_details": dump_details(claims.authorization_details),
        "acr": claims.acr,
        "auth_time": claims.auth_time,
        "grant_id": claims.grant_id,
    }
