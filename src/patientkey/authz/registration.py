"""Client registration documents: RFC 7591 §2 client metadata ⇄ :class:`RegisteredClient`.

A registration document is the JSON an operator files for an app or third party: the
RFC 7591 §2 client metadata plus the ``client_id`` (as in the §3.2.1 registration
response). PatientKey registers clients out of band, not at a registration endpoint,
so ``client_id`` is chosen by the operator. Members, and what is required of them:

* ``client_id`` — required; 1 to 128 visible ASCII characters, no spaces.
* ``client_name`` — required (optional in RFC 7591): the patient reads it on the wallet
  before approving.
* ``grant_types`` — must include ``urn:openid:params:grant-type:ciba`` and nothing else:
  the platform offers no other grant (RFC 7591 §2's default, ``authorization_code``, is
  refused too).
* ``response_types`` — ``[]`` if present: there is no authorization endpoint, so no
  response type. RFC 7591 §2 reads an omitted value as ``["code"]``; omission is
  tolerated on input, and :func:`registration_document` writes ``[]`` explicitly so
  that a generic RFC 7591 validator does not assume ``code``.
* ``token_endpoint_auth_method`` — must be ``private_key_jwt`` (RFC 7523 §2.2);
  RFC 7591's default ``client_secret_basic`` is refused.
* ``jwks`` — required, by value (RFC 7517 §5): the keys its assertions are signed with;
  ``jwks_uri`` is refused (the platform fetches nothing).
* ``backchannel_token_delivery_mode`` — required (CIBA §4): ``poll`` or ``ping``;
  ``push`` is not offered.
* ``backchannel_client_notification_endpoint`` — an https URL, required for ``ping``
  (CIBA §4).
* ``backchannel_authentication_request_signing_alg`` — refused: signed authentication
  requests are not offered (CIBA §4, §7.1.1).
* ``authorization_details_types`` — RFC 9396 §10; default ``["health_record_access"]``,
  the only type supported.
* ``patientkey_scenarios`` — PatientKey's own, required: the catalog scenarios the
  client may ask for.

Every key in ``jwks`` must be a public signing key that can verify an assertion
(:func:`patientkey.authz.clientauth.verification_key`: Ed25519, P-256 or RSA of at least
2048 bits). A private member (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``, ``oth``,
``k``) or a symmetric ``oct`` key is refused with its own message: it means the
operator is about to file a secret where only public keys belong. Encryption keys are
refused too: the platform never encrypts to a client (it issues no ID tokens).

Other members are ignored, as RFC 7591 §2 asks of a server that does not understand
them. Every refusal is :class:`InvalidClientMetadata` (RFC 7591 §3.2.2
``invalid_client_metadata``) naming the member at fault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from patientkey.authz.catalog import Catalog
from patientkey.authz.clientauth import verification_key
from patientkey.authz.clients import CIBA_GRANT_TYPE, ClientInfo, DeliveryMode, RegisteredClient
from patientkey.authz.errors import InvalidClientMetadata
from patientkey.authz.metadata import is_https_url
from patientkey.authz.rar import DETAILS_TYPE
from patientkey.errors import ConfigError

__all__ = [
    "AUTH_METHOD",
    "MAX_KEYS",
    "PRIVATE_JWK_MEMBERS",
    "InvalidClientMetadata",
    "parse_registration",
    "registration_document",
]

AUTH_METHOD: Final = "private_key_jwt"
MAX_KEYS: Final = 10
#: RFC 7518 §6.2.2 (EC), §6.3.2 (RSA), §6.4.1 (oct), RFC 8037 §2 (OKP).
PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9][\x21-\x7e]{0,127}")
_MAX_NAME: Final = 200
_SUPPORTED_DETAILS_TYPES: Final = frozenset({DETAILS_TYPE})
_DELIVERY_MODES: Final[Mapping[str, DeliveryMode]] = {"poll": "poll", "ping": "ping"}


def parse_registration(doc: Mapping[str, Any], *, catalog: Catalog) -> RegisteredClient:
    """The registered client a registration document describes; InvalidClientMetadata if not."""
    if not isinstance(doc, Mapping):
        raise InvalidClientMetadata("a registration document is a JSON object")
    client_id = doc.get("client_id")
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise InvalidClientMetadata("client_id: 1-128 visible ASCII characters, no spaces")
    name = doc.get("client_name")
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > _MAX_NAME
        or not name.isprintable()
    ):
        raise InvalidClientMetadata(
            f"client_name: required, 1-{_MAX_NAME} printable characters (the patient reads it)"
        )
    grant_types = _strings(doc, "grant_types", default=["authorization_code"])
    if CIBA_GRANT_TYPE not in grant_types:
        raise InvalidClientMetadata(f"grant_types: must include {CIBA_GRANT_TYPE}")
    if grant_types != {CIBA_GRANT_TYPE}:
        raise InvalidClientMetadata(f"grant_types: only {CIBA_GRANT_TYPE} is offered")
    if doc.get("response_types", []) != []:
        raise InvalidClientMetadata(
            "response_types: must be [] (there is no authorization endpoint)"
        )
    method = doc.get("token_endpoint_auth_method", "client_secret_basic")
    if method != AUTH_METHOD:
        raise InvalidClientMetadata(f"token_endpoint_auth_method: must be {AUTH_METHOD}")
    jwks = _jwks(doc)
    delivery_mode, endpoint = _delivery(doc)
    details_types = _strings(doc, "authorization_details_types", default=[DETAILS_TYPE])
    unsupported = sorted(details_types - _SUPPORTED_DETAILS_TYPES)
    if unsupported or not details_types:
        raise InvalidClientMetadata(
            f"authorization_details_types: only {DETAILS_TYPE} is supported, not {unsupported}"
        )
    scenarios = _strings(doc, "patientkey_scenarios", default=None)
    if not scenarios:
        raise InvalidClientMetadata("patientkey_scenarios: required, at least one scenario")
    unknown = sorted(scenarios - set(catalog.scenarios))
    if unknown:
        raise InvalidClientMetadata(f"patientkey_scenarios: not in the catalog: {unknown}")
    try:
        info = ClientInfo(
            client_id=client_id,
            name=name,
            grant_types=frozenset(grant_types),
            delivery_mode=delivery_mode,
            notification_endpoint=endpoint,
            scenarios=frozenset(scenarios),
            authorization_details_types=frozenset(details_types),
        )
    except ConfigError as exc:  # the checks above should make this unreachable
        raise InvalidClientMetadata(str(exc.detail)) from exc
    return RegisteredClient(info=info, jwks=jwks)


def registration_document(client: RegisteredClient) -> dict[str, Any]:
    """The registration document of ``client`` (the inverse of :func:`parse_registration`)."""
    info = client.info
    doc: dict[str, Any] = {
        "client_id": info.client_id,
        "client_name": info.name,
        "grant_types": sorted(info.grant_types),
        "response_types": [],
        "token_endpoint_auth_method": AUTH_METHOD,
        "jwks": {"keys": [dict(key) for key in client.jwks.get("keys", [])]},
    }
    if info.delivery_mode is not None:
        doc["backchannel_token_delivery_mode"] = info.delivery_mode
    if info.notification_endpoint is not None:
        doc["backchannel_client_notification_endpoint"] = info.notification_endpoint
    doc["authorization_details_types"] = sorted(info.authorization_details_types)
    doc["patientkey_scenarios"] = sorted(info.scenarios)
    return doc


def _strings(doc: Mapping[str, Any], name: str, *, default: Sequence[str] | None) -> set[str]:
    value = doc.get(name, default)
    if value is None:
        return set()
    if (
        not isinstance(value, list | tuple)
        or len(value) > 32
        or not all(isinstance(item, str) and 0 < len(item) <= 256 for item in value)
    ):
        raise InvalidClientMetadata(f"{name}: must be an array of strings")
    return set(value)


def _jwks(doc: Mapping[str, Any]) -> dict[str, Any]:
    if "jwks_uri" in doc:
        raise InvalidClientMetadata("jwks_uri: not supported, register the keys as jwks")
    jwks = doc.get("jwks")
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list) or not keys:
        raise InvalidClientMetadata('jwks: required, a JWK Set {"keys": [...]} of public keys')
    if len(keys) > MAX_KEYS:
        raise InvalidClientMetadata(f"jwks: at most {MAX_KEYS} keys")
    kids: list[str] = []
    for index, jwk in enumerate(keys):
        where = f"jwks.keys[{index}]"
        if not isinstance(jwk, Mapping):
            raise InvalidClientMetadata(f"{where}: must be a JSON object")
        if jwk.get("kty") == "oct":
            raise InvalidClientMetadata(f"{where}: symmetric (oct) keys are refused")
        private = sorted(PRIVATE_JWK_MEMBERS & set(jwk))
        if private:
            raise InvalidClientMetadata(
                f"{where}: private key members {private}: register the public key only"
            )
        try:
            verification_key(jwk)
        except (ValueError, TypeError) as exc:
            raise InvalidClientMetadata(f"{where}: {exc}") from None
        if "kid" in jwk:
            kids.append(jwk["kid"])
    if len(set(kids)) != len(kids):
        raise InvalidClientMetadata("jwks: kid values must be unique")
    return {"keys": [dict(jwk) for jwk in keys]}


def _delivery(doc: Mapping[str, Any]) -> tuple[DeliveryMode, str | None]:
    if "backchannel_authentication_request_signing_alg" in doc:
        raise InvalidClientMetadata(
            "backchannel_authentication_request_signing_alg: signed requests are not offered"
        )
    mode = doc.get("backchannel_token_delivery_mode")
    if mode == "push":
        raise InvalidClientMetadata("backchannel_token_delivery_mode: push is not offered")
    if not isinstance(mode, str) or mode not in _DELIVERY_MODES:
        raise InvalidClientMetadata("backchannel_token_delivery_mode: required, poll or ping")
    endpoint = doc.get("backchannel_client_notification_endpoint")
    if endpoint is None:
        if mode == "ping":
            raise InvalidClientMetadata(
                "backchannel_client_notification_endpoint: required in ping mode"
            )
        return _DELIVERY_MODES[mode], None
    if not is_https_url(endpoint, allow_query=True):
        raise InvalidClientMetadata(
            "backchannel_client_notification_endpoint: an https URL without fragment"
        )
    return _DELIVERY_MODES[mode], endpoint
