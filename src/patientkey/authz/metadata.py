"""Authorization server metadata (RFC 8414 §2), served as OpenID Provider metadata too.

One document answers ``/.well-known/oauth-authorization-server`` (RFC 8414 §3) and
``/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4): the RFC 8414
members, the CIBA Core 1.0 §4 members, RFC 9396 §10's
``authorization_details_types_supported``, and ``patientkey_scenarios_supported``, an
extension (RFC 8414 §2 allows additional members) listing the catalog's enabled
scenarios so an app can see what it may ask for before it asks.

What is advertised, and where it comes from:

* ``issuer`` — RFC 8414 §2: an https URL with no query or fragment (checked here).
* the endpoints, each the issuer plus a path (:data:`DEFAULT_PATHS`, overridable):
  ``backchannel_authentication_endpoint`` (CIBA §4), ``token_endpoint``,
  ``introspection_endpoint`` (RFC 8414 §2 / RFC 7662), ``revocation_endpoint``
  (RFC 7009), ``jwks_uri`` — the keys access tokens are signed with.
* ``grant_types_supported``: the CIBA grant only.
* ``*_endpoint_auth_methods_supported``: ``private_key_jwt`` at the token, introspection
  and revocation endpoints, with ``*_auth_signing_alg_values_supported`` the algorithms
  :mod:`patientkey.authz.clientauth` accepts (RFC 8414 §2: required when
  ``private_key_jwt`` is listed; ``none`` never appears).
* ``backchannel_token_delivery_modes_supported``: poll and ping (push is not offered);
  ``backchannel_user_code_parameter_supported``: what the caller says (``user_code``;
  true by default: CIBA §7.1 ``user_code`` is checked for patients who set one; a server
  whose user directory keeps no user codes says false).
  ``backchannel_authentication_request_signing_alg_values_supported`` is omitted: CIBA
  §4 says omitting it means signed authentication requests are not supported, which is
  the case.
* ``acr_values_supported``: the eIDAS LoA URIs (low, substantial, high), the ``acr``
  values of tokens and of RFC 9470 step-up challenges.
* ``scopes_supported``: ``openid`` only; what is authorized travels in
  ``authorization_details`` (RFC 9396), not in scope.
* ``claims_parameter_supported``, ``request_parameter_supported`` and
  ``request_uri_parameter_supported``: false. The last must be said: OIDC Discovery §3
  defaults it to *true*.

OpenID Connect Discovery 1.0 §3 requires members that mean nothing on a CIBA-only server
that issues access tokens and never an ID token. What is sent, honestly:

* ``authorization_endpoint`` (REQUIRED there) is omitted: there is none. RFC 8414 §2
  requires it only "unless no grant types are supported that use the authorization
  endpoint", which is this server.
* ``response_types_supported`` (REQUIRED in both) is ``[]``: ``response_type`` is a
  parameter of the authorization endpoint, so none is supported. Validators that
  insist on a non-empty array (Authlib's does) complain; advertising ``code`` would be
  a lie a client could act on.
* ``id_token_signing_alg_values_supported`` (REQUIRED, and "RS256 MUST be included") is
  ``[]``: no ID token is ever issued, even when ``scope`` holds ``openid`` (see
  :mod:`patientkey.authz.ciba`).
* ``subject_types_supported`` (REQUIRED) is ``["public"]``: the ``sub`` of access tokens
  and introspection answers is the patient's User_ID, the same for every client.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from patientkey.authz.catalog import Catalog
from patientkey.authz.clientauth import ASSERTION_ALGS
from patientkey.authz.clients import CIBA_GRANT_TYPE
from patientkey.authz.rar import DETAILS_TYPE
from patientkey.errors import ConfigError
from patientkey.identity.assurance import ACR_VALUES, AssuranceLevel
from patientkey.protocol.routes import (
    OAUTH_BC_AUTHORIZE,
    OAUTH_INTROSPECT,
    OAUTH_JWKS,
    OAUTH_REVOKE,
    OAUTH_TOKEN,
)

__all__ = [
    "AUTH_METHODS",
    "DEFAULT_PATHS",
    "MAX_URL_CHARS",
    "SCENARIOS_MEMBER",
    "is_https_url",
    "server_metadata",
]

#: Where each endpoint lives, relative to the issuer (or an absolute https URL): the
#: routes the platform serves them on.
DEFAULT_PATHS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "backchannel_authentication_endpoint": OAUTH_BC_AUTHORIZE,
        "token_endpoint": OAUTH_TOKEN,
        "introspection_endpoint": OAUTH_INTROSPECT,
        "revocation_endpoint": OAUTH_REVOKE,
        "jwks_uri": OAUTH_JWKS,
    }
)
AUTH_METHODS: Final = ("private_key_jwt",)
#: The PatientKey extension member (RFC 8414 §2: "Additional authorization server
#: metadata parameters MAY also be used").
SCENARIOS_MEMBER: Final = "patientkey_scenarios_supported"
MAX_URL_CHARS: Final = 2048


def server_metadata(
    issuer: str,
    *,
    catalog: Catalog,
    paths: Mapping[str, str] | None = None,
    user_code: bool = True,
) -> dict[str, Any]:
    """The metadata document of the authorization server ``issuer``.

    ``paths`` overrides entries of :data:`DEFAULT_PATHS` by member name; ``user_code``
    says whether any user may require a CIBA ``user_code`` (CIBA §4). Raises
    ConfigError for an issuer that is not an https URL without query and fragment, or
    for an unknown or malformed path.
    """
    _check_issuer(issuer)
    chosen = dict(DEFAULT_PATHS)
    if paths is not None:
        unknown = sorted(set(paths) - set(DEFAULT_PATHS))
        if unknown:
            raise ConfigError(f"server metadata: unknown endpoints {unknown}")
        chosen.update(paths)
    endpoints = {name: _endpoint(issuer, name, path) for name, path in chosen.items()}
    return {
        "issuer": issuer,
        **endpoints,
        "grant_types_supported": [CIBA_GRANT_TYPE],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "introspection_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "backchannel_token_delivery_modes_supported": ["poll", "ping"],
        "backchannel_user_code_parameter_supported": user_code,
        "authorization_details_types_supported": [DETAILS_TYPE],
        "acr_values_supported": [ACR_VALUES[level] for level in AssuranceLevel],
        "scopes_supported": ["openid"],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        SCENARIOS_MEMBER: _scenarios(catalog),
    }


def is_https_url(value: object, *, allow_query: bool = False) -> bool:
    """An absolute https URL with a host: no user info, no fragment, no query unless allowed.

    At most :data:`MAX_URL_CHARS` visible ASCII characters; a port, if any, must be valid.
    An empty ``?`` or ``#`` counts as a query or fragment.
    """
    if (
        not isinstance(value, str)
        or len(value) > MAX_URL_CHARS
        or not value.isascii()
        or not value.isprintable()
        or " " in value
        or "#" in value
        or ("?" in value and not allow_query)
    ):
        return False
    try:
        parts = urlsplit(value)
        _port = parts.port  # urlsplit checks the port only when it is read
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and bool(parts.hostname)
        and parts.username is None
        and parts.password is None
    )


def _check_issuer(issuer: str) -> None:
    # RFC 8414 §2: "a case-sensitive URL that uses the "https" scheme and has no query
    # or fragment components".
    if not is_https_url(issuer):
        raise ConfigError(
            "issuer must be an https URL with a host and no query or fragment (RFC 8414 §2)"
        )


def _endpoint(issuer: str, name: str, path: str) -> str:
    if not isinstance(path, str):
        raise ConfigError(f"server metadata: {name} must be a path or an https URL")
    relative = path.startswith("/") and not path.startswith("//")
    url = issuer.rstrip("/") + path if relative else path
    if not is_https_url(url):
        raise ConfigError(
            f"server metadata: {name} must be a path (/...) or an https URL without query"
        )
    return url


def _scenarios(catalog: Catalog) -> list[dict[str, Any]]:
    return [
        {
            "name": scenario.name,
            "description": scenario.description,
            "record_types": list(scenario.record_types),
            "actions": list(scenario.actions),
            "max_duration": scenario.max_duration,
            "assurance": scenario.assurance.value,
            "acr": ACR_VALUES[scenario.assurance],
        }
        for scenario in sorted(catalog.scenarios.values(), key=lambda s: s.name)
        if scenario.enabled
    ]
