"""OAuth 2.0 and OpenID CIBA error responses, as members of PatientKey's one exception tree.

Each class carries the specification's ``error`` code next to the problem type and HTTP
status every :class:`~patientkey.errors.PatientKeyError` carries, and subclasses the
PatientKey base that names the same kind of fault (bad input, unauthenticated,
forbidden, wrong state), so ``except InvalidInput`` keeps working across layers. OAuth
endpoints answer :meth:`OAuthError.to_oauth` (RFC 6749 §5.2 body) with
:meth:`OAuthError.headers`; every other API answers RFC 9457 problem+json as usual::

    OAuthError                                  status  error
    ├── InvalidRequest         (InvalidInput)     400   invalid_request        RFC 6749 §5.2
    ├── InvalidScope           (InvalidInput)     400   invalid_scope          RFC 6749 §5.2
    ├── InvalidGrant           (InvalidInput)     400   invalid_grant          RFC 6749 §5.2
    ├── UnsupportedGrantType   (InvalidInput)     400   unsupported_grant_type RFC 6749 §5.2
    ├── UnauthorizedClient     (Forbidden)        400   unauthorized_client    RFC 6749 §5.2
    ├── InvalidClient          (Unauthenticated)  401   invalid_client         RFC 6749 §5.2
    ├── InvalidAuthorizationDetails (InvalidInput) 400  invalid_authorization_details
    │                                                                          RFC 9396 §5
    ├── InvalidClientMetadata  (InvalidInput)     400   invalid_client_metadata RFC 7591 §3.2.2
    ├── UnsupportedTokenType   (InvalidInput)     400   unsupported_token_type RFC 7009 §2.2.1
    ├── UnknownUserId          (InvalidInput)     400   unknown_user_id        CIBA §13
    ├── ExpiredLoginHintToken  (InvalidInput)     400   expired_login_hint_token CIBA §13
    ├── MissingUserCode        (InvalidInput)     400   missing_user_code      CIBA §13
    ├── InvalidUserCode        (InvalidInput)     400   invalid_user_code      CIBA §13
    ├── InvalidBindingMessage  (InvalidInput)     400   invalid_binding_message CIBA §13
    ├── AccessDenied           (Forbidden)        403   access_denied          CIBA §13
    ├── AuthorizationPending   (Conflict)         400   authorization_pending  CIBA §11
    ├── SlowDown               (RateLimited)      400   slow_down              CIBA §11
    ├── ExpiredToken           (Conflict)         400   expired_token          CIBA §11
    ├── DeniedByUser           (Forbidden)        400   access_denied          CIBA §11
    ├── InvalidToken           (Unauthenticated)  401   invalid_token          RFC 6750 §3.1
    ├── InsufficientScope      (Forbidden)        403   insufficient_scope     RFC 6750 §3.1
    └── InsufficientUserAuthentication
                               (Unauthenticated)  401   insufficient_user_authentication
                                                                               RFC 9470 §3

``access_denied`` appears twice because CIBA gives it two statuses: 403 when the OP
refuses the backchannel request itself (§13), 400 when the end-user denied and the
client learns it at the token endpoint (§11).

The CIBA §12 push-mode errors (``transaction_failed``) have no class: PatientKey does
not offer push mode, and a push-mode client is refused with ``unauthorized_client``.

:class:`InvalidToken` is the one opaque failure of a bearer token (STYLE.md 7): its text
never says whether the signature, the audience, the expiry or the grant was wrong; the
precise reason is kept in ``reason`` for the local log only.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from patientkey.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    PatientKeyError,
    RateLimited,
    Unauthenticated,
)

if TYPE_CHECKING:
    from patientkey.authz.audit import AuditEvent

__all__ = [
    "AccessDenied",
    "AuthorizationPending",
    "DeniedByUser",
    "ExpiredLoginHintToken",
    "ExpiredToken",
    "InsufficientScope",
    "InsufficientUserAuthentication",
    "InvalidAuthorizationDetails",
    "InvalidBindingMessage",
    "InvalidClient",
    "InvalidClientMetadata",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidToken",
    "InvalidUserCode",
    "MissingUserCode",
    "OAuthError",
    "SlowDown",
    "UnauthorizedClient",
    "UnknownUserId",
    "UnsupportedGrantType",
    "UnsupportedTokenType",
    "oauth_errors",
]

# RFC 6749 §5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
_NOT_DESCRIPTION = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
_MAX_DESCRIPTION = 200


def _description(text: str) -> str:
    cleaned = _NOT_DESCRIPTION.sub("?", text)
    return cleaned if len(cleaned) <= _MAX_DESCRIPTION else cleaned[: _MAX_DESCRIPTION - 3] + "..."


def oauth_errors() -> dict[str, list[type[OAuthError]]]:
    """Every concrete OAuth error class by its ``error`` code (for completeness tests)."""
    found: dict[str, list[type[OAuthError]]] = {}
    seen: set[type[OAuthError]] = set()
    todo: list[type[OAuthError]] = list(OAuthError.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            found.setdefault(cls.error, []).append(cls)
            todo.extend(cls.__subclasses__())
    return found


class OAuthError(PatientKeyError):
    """Base of the errors an OAuth/OIDC endpoint answers with ``{"error": ...}``."""

    problem = "oauth-error"
    title = "OAuth error"
    status = 400
    error: ClassVar[str] = "server_error"
    #: Bearer-token errors (RFC 6750 §3) answer with a ``WWW-Authenticate`` challenge.
    bearer_challenge: ClassVar[bool] = False

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        #: The audit record of a refusal that deserves one (a refused use, a step-up).
        self.audit_event: AuditEvent | None = None

    def challenge_params(self) -> dict[str, str]:
        """Extra ``WWW-Authenticate`` parameters (RFC 9470 adds acr_values, max_age)."""
        return {}

    def to_oauth(self) -> dict[str, str]:
        """The RFC 6749 §5.2 error body."""
        return {"error": self.error, "error_description": _description(self.detail)}

    def headers(self) -> dict[str, str]:
        """Response headers: never cached (RFC 6749 §5.1); a Bearer challenge if due."""
        out = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if self.bearer_challenge:
            params = {
                "error": self.error,
                "error_description": _description(self.detail),
                **self.challenge_params(),
            }
            out["WWW-Authenticate"] = "Bearer " + ", ".join(
                f'{name}="{value}"' for name, value in params.items()
            )
        return out


# --- RFC 6749 §5.2 ------------------------------------------------------------------


class InvalidRequest(OAuthError, InvalidInput):
    """A required parameter is missing or repeated, a value is malformed (RFC 6749 §5.2)."""

    problem = "oauth-invalid-request"
    title = "Invalid request"
    status = 400
    error = "invalid_request"


class InvalidScope(OAuthError, InvalidInput):
    """The requested scope is invalid, unknown or malformed (RFC 6749 §5.2)."""

    problem = "oauth-invalid-scope"
    title = "Invalid scope"
    status = 400
    error = "invalid_scope"


class InvalidGrant(OAuthError, InvalidInput):
    """The grant (auth_req_id, token) is invalid, used, or was issued to another client."""

    problem = "oauth-invalid-grant"
    title = "Invalid grant"
    status = 400
    error = "invalid_grant"


class UnsupportedGrantType(OAuthError, InvalidInput):
    """The token endpoint does not offer this grant_type (RFC 6749 §5.2)."""

    problem = "oauth-unsupported-grant-type"
    title = "Unsupported grant type"
    status = 400
    error = "unsupported_grant_type"


class UnauthorizedClient(OAuthError, Forbidden):
    """The client is not registered for this grant or delivery mode (RFC 6749 §5.2)."""

    problem = "oauth-unauthorized-client"
    title = "Client not authorized for this request"
    status = 400
    error = "unauthorized_client"


class InvalidClient(OAuthError, Unauthenticated):
    """Client authentication failed or the client is unknown (RFC 6749 §5.2, CIBA §13)."""

    problem = "oauth-invalid-client"
    title = "Client authentication failed"
    status = 401
    error = "invalid_client"


# --- RFC 9396 §5, RFC 7009 §2.2.1 ----------------------------------------------------


class InvalidAuthorizationDetails(OAuthError, InvalidInput):
    """authorization_details malformed, of an unknown type, or not allowed (RFC 9396 §5)."""

    problem = "oauth-invalid-authorization-details"
    title = "Invalid authorization details"
    status = 400
    error = "invalid_authorization_details"


class InvalidClientMetadata(OAuthError, InvalidInput):
    """A client metadata value is invalid or not supported (RFC 7591 §3.2.2)."""

    problem = "oauth-invalid-client-metadata"
    title = "Invalid client metadata"
    status = 400
    error = "invalid_client_metadata"


class UnsupportedTokenType(OAuthError, InvalidInput):
    """The server cannot revoke this type of token (RFC 7009 §2.2.1)."""

    problem = "oauth-unsupported-token-type"
    title = "Unsupported token type"
    status = 400
    error = "unsupported_token_type"


# --- CIBA Core §13: backchannel authentication endpoint -----------------------------


class UnknownUserId(OAuthError, InvalidInput):
    """The login_hint names no user the OP knows (CIBA §13)."""

    problem = "ciba-unknown-user-id"
    title = "Unknown user"
    status = 400
    error = "unknown_user_id"


class ExpiredLoginHintToken(OAuthError, InvalidInput):
    """The login_hint_token has expired (CIBA §13)."""

    problem = "ciba-expired-login-hint-token"
    title = "Expired login hint token"
    status = 400
    error = "expired_login_hint_token"


class MissingUserCode(OAuthError, InvalidInput):
    """The user requires a user_code and none was sent (CIBA §13)."""

    problem = "ciba-missing-user-code"
    title = "User code required"
    status = 400
    error = "missing_user_code"


class InvalidUserCode(OAuthError, InvalidInput):
    """The user_code is wrong (CIBA §13)."""

    problem = "ciba-invalid-user-code"
    title = "Invalid user code"
    status = 400
    error = "invalid_user_code"


class InvalidBindingMessage(OAuthError, InvalidInput):
    """The binding_message is invalid or unacceptable (CIBA §13)."""

    problem = "ciba-invalid-binding-message"
    title = "Invalid binding message"
    status = 400
    error = "invalid_binding_message"


class AccessDenied(OAuthError, Forbidden):
    """The OP refuses the backchannel request (CIBA §13: 403)."""

    problem = "ciba-access-denied"
    title = "Access denied"
    status = 403
    error = "access_denied"


# --- CIBA Core §11: token endpoint -------------------------------------------------


class AuthorizationPending(OAuthError, Conflict):
    """The end-user has not decided yet; poll again after the interval (CIBA §11)."""

    problem = "ciba-authorization-pending"
    title = "Authorization pending"
    status = 400
    error = "authorization_pending"


class SlowDown(OAuthError, RateLimited):
    """Still pending, and the client polled too fast: the interval grew (CIBA §11)."""

    problem = "ciba-slow-down"
    title = "Polling too fast"
    status = 400
    error = "slow_down"


class ExpiredToken(OAuthError, Conflict):
    """The auth_req_id has expired; start a new request (CIBA §11)."""

    problem = "ciba-expired-token"
    title = "Authorization request expired"
    status = 400
    error = "expired_token"


class DeniedByUser(OAuthError, Forbidden):
    """The end-user denied the request (CIBA §11: access_denied at the token endpoint)."""

    problem = "ciba-denied-by-user"
    title = "The patient denied the request"
    status = 400
    error = "access_denied"


# --- RFC 6750 §3.1, RFC 9470 §3: resource access ------------------------------------


class InvalidToken(OAuthError, Unauthenticated):
    """The access token is malformed, tampered, expired, revoked (RFC 6750 §3.1).

    One text for every cause; ``reason`` is for the local log only.
    """

    problem = "oauth-invalid-token"
    title = "The access token is invalid"
    status = 401
    error = "invalid_token"
    bearer_challenge = True

    def __init__(self, reason: str = "unspecified") -> None:
        super().__init__(None)
        self.reason = reason


class InsufficientScope(OAuthError, Forbidden):
    """The grant does not cover this action on this record (RFC 6750 §3.1)."""

    problem = "oauth-insufficient-scope"
    title = "Not covered by the grant"
    status = 403
    error = "insufficient_scope"
    bearer_challenge = True


class InsufficientUserAuthentication(OAuthError, Unauthenticated):
    """Fresh or stronger patient verification needed (RFC 9470 §3).

    ``acr_values`` lists acceptable authentication context classes in order of
    preference; ``max_age`` is the allowable elapsed time in seconds since the patient
    last verified. The client obtains a new token with these and retries.
    """

    problem = "oauth-insufficient-user-authentication"
    title = "Stronger or fresher patient verification required"
    status = 401
    error = "insufficient_user_authentication"
    bearer_challenge = True

    def __init__(
        self,
        detail: str | None = None,
        *,
        acr_values: tuple[str, ...] = (),
        max_age: int | None = None,
    ) -> None:
        extensions: dict[str, Any] = {}
        if acr_values:
            extensions["acr_values"] = " ".join(acr_values)
        if max_age is not None:
            extensions["max_age"] = max_age
        super().__init__(detail, **extensions)
        self.acr_values = acr_values
        self.max_age = max_age

    def challenge_params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.acr_values:
            params["acr_values"] = " ".join(self.acr_values)
        if self.max_age is not None:
            params["max_age"] = str(self.max_age)
        return params

    def to_oauth(self) -> dict[str, str]:
        return {**super().to_oauth(), **self.challenge_params()}
