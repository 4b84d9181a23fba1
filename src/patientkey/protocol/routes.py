"""The HTTP routes of docs/protocol.md, in one place for the party that serves each
route and the party that calls it."""

from __future__ import annotations

from typing import Final

__all__ = [
    "AUDIT_CONSISTENCY",
    "AUDIT_INCLUSION",
    "AUDIT_STH",
    "AUDIT_SYNC",
    "AUTHZ_DECIDE",
    "AUTHZ_INBOX",
    "AUTHZ_OTP",
    "BIND",
    "DISPENSE",
    "GRANTS_LIST",
    "GRANTS_REVOKE",
    "HIS_BIND_VERIFY",
    "HIS_RECORD_GET",
    "HIS_ROTATE_COMMIT",
    "HIS_ROTATE_PREPARE",
    "IDENTITY_ENROLL",
    "OAUTH_BC_AUTHORIZE",
    "OAUTH_INTROSPECT",
    "OAUTH_JWKS",
    "OAUTH_METADATA",
    "OAUTH_REVOKE",
    "OAUTH_TOKEN",
    "OIDC_METADATA",
    "PING",
    "PQ_EXCHANGE",
    "PQ_PUBLIC",
    "RECORDS_ANNOUNCE",
    "RECORDS_FETCH",
    "RECORDS_LIST",
    "ROTATE_COMMIT",
    "ROTATE_PREPARE",
    "SHARE_DELIVER",
    "SHARE_OFFER",
    "TP_SHARE_RECEIVE",
]

# Served by the platform.
BIND: Final = "/v1/bind"
ROTATE_PREPARE: Final = "/v1/rotate/prepare"
ROTATE_COMMIT: Final = "/v1/rotate/commit"
RECORDS_ANNOUNCE: Final = "/v1/records/announce"
RECORDS_LIST: Final = "/v1/records/list"
RECORDS_FETCH: Final = "/v1/records/fetch"
SHARE_OFFER: Final = "/v1/share/offer"
SHARE_DELIVER: Final = "/v1/share/deliver"
DISPENSE: Final = "/v1/dispense"
PING: Final = "/v1/ping"
IDENTITY_ENROLL: Final = "/v1/identity/enroll"
AUTHZ_INBOX: Final = "/v1/authz/inbox"
AUTHZ_OTP: Final = "/v1/authz/otp"
AUTHZ_DECIDE: Final = "/v1/authz/decide"
GRANTS_LIST: Final = "/v1/grants/list"
GRANTS_REVOKE: Final = "/v1/grants/revoke"
# The transparency log: the account's events in a hop envelope; heads and proofs
# (hashes only, no event content) as plain GETs any party may check.
AUDIT_SYNC: Final = "/v1/audit/sync"
AUDIT_STH: Final = "/v1/audit/sth"
AUDIT_INCLUSION: Final = "/v1/audit/proof/inclusion"
AUDIT_CONSISTENCY: Final = "/v1/audit/proof/consistency"
# OAuth 2 / OpenID CIBA endpoints (plain HTTPS, client authentication private_key_jwt).
OAUTH_METADATA: Final = "/.well-known/oauth-authorization-server"
OIDC_METADATA: Final = "/.well-known/openid-configuration"
OAUTH_JWKS: Final = "/jwks"
OAUTH_BC_AUTHORIZE: Final = "/bc-authorize"
OAUTH_TOKEN: Final = "/token"  # noqa: S105 - a path, not a secret
OAUTH_INTROSPECT: Final = "/introspect"
OAUTH_REVOKE: Final = "/revoke"
PQ_PUBLIC: Final = "/v1/pq/public"
PQ_EXCHANGE: Final = "/v1/pq/exchange"

# Served by a hospital gateway.
HIS_BIND_VERIFY: Final = "/v1/bind/verify"
HIS_ROTATE_PREPARE: Final = "/v1/rotate/prepare"
HIS_ROTATE_COMMIT: Final = "/v1/rotate/commit"
HIS_RECORD_GET: Final = "/v1/records/get"

# Served by a third party.
TP_SHARE_RECEIVE: Final = "/v1/share/receive"
