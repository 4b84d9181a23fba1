"""JWT access tokens (RFC 9068), signed with EdDSA over Ed25519 by joserfc.

The token is short-lived proof of a grant; the grant is what lasts and what every use
consults (``grants.check``), so a revoked grant stops a token that has not expired yet.

Format (RFC 9068 §2)
--------------------
Header ``{"typ": "at+jwt", "alg": "Ed25519", "kid": <RFC 7638 thumbprint>}`` (§2.1).
``alg`` is the fully-specified JOSE identifier of EdDSA with Ed25519 (RFC 9864 §2.2);
the older polymorphic ``"EdDSA"`` is deprecated by RFC 9864 (joserfc warns on it), and
the signature bytes are the same RFC 8032 Ed25519 signature either way.

Claims: ``iss``, ``exp``, ``aud``, ``sub`` (the patient's User_ID), ``client_id``,
``iat``, ``jti`` (§2.2, all required); ``acr`` and ``auth_time`` of the patient's
verification (§2.2.1, RFC 9470 §6.1); ``authorization_details`` as granted (RFC 9396
§9.1); and ``grant_id``, the live grant this token stands for.

Validation (§4)
---------------
:meth:`AccessTokenVerifier.verify` refuses a token whose ``typ`` is not ``at+jwt`` (or
``application/at+jwt``), whose ``alg`` is not Ed25519, whose ``kid`` is unknown, whose
signature does not verify, whose ``iss`` or ``aud`` is not ours, that has expired or was
issued in the future, or that lacks a claim or holds one of the wrong type. Every
refusal is the one opaque :class:`~patientkey.authz.errors.InvalidToken`.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry

from patientkey.authz.errors import InvalidAuthorizationDetails, InvalidToken
from patientkey.authz.rar import AuthorizationDetails, dump_details, parse_authorization_details
from patientkey.errors import ConfigError

__all__ = [
    "AT_JWT_TYP",
    "DEFAULT_LIFETIME",
    "MAX_TOKEN_CHARS",
    "SIGNING_ALG",
    "AccessTokenClaims",
    "AccessTokenIssuer",
    "AccessTokenVerifier",
    "IssuedToken",
    "key_id",
    "token_response",
]

AT_JWT_TYP: Final = "at+jwt"
SIGNING_ALG: Final = "Ed25519"
DEFAULT_LIFETIME: Final = 300
MAX_LIFETIME: Final = 3600
MAX_TOKEN_CHARS: Final = 24 * 1024
_REGISTRY: Final = JWSRegistry(algorithms=[SIGNING_ALG])
_TYPES: Final = frozenset({"at+jwt", "application/at+jwt"})


def key_id(public_key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of an Ed25519 public key (the ``kid``)."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return str(OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": x}).thumbprint())


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessTokenClaims:
    """The claims of a PatientKey access token, typed and checked."""

    iss: str
    sub: str
    aud: str
    exp: int
    iat: int
    jti: str
    client_id: str
    grant_id: str
    authorization_details: AuthorizationDetails
    acr: str
    auth_time: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "iss": self.iss,
            "sub": self.sub,
            "aud": self.aud,
            "exp": self.exp,
            "iat": self.iat,
            "jti": self.jti,
            "client_id": self.client_id,
            "grant_id": self.grant_id,
            "authorization_details": dump_details(self.authorization_details),
            "acr": self.acr,
            "auth_time": self.auth_time,
        }

    @classmethod
    def from_dict(cls, claims: Mapping[str, Any]) -> AccessTokenClaims:
        """Check presence and type of every claim; InvalidToken otherwise."""
        strings = ("iss", "sub", "jti", "client_id", "grant_id", "acr")
        numbers = ("exp", "iat", "auth_time")
        for name in strings:
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise InvalidToken(f"claim {name} missing or not a string")
        for name in numbers:
            value = claims.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidToken(f"claim {name} missing or not an integer")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if not isinstance(aud, str):
            raise InvalidToken("claim aud must name exactly one audience")
        try:
            details = parse_authorization_details(claims.get("authorization_details"))
        except InvalidAuthorizationDetails as exc:
            raise InvalidToken(f"claim authorization_details: {exc.detail}") from None
        return cls(
            iss=claims["iss"],
            sub=claims["sub"],
            aud=aud,
            exp=claims["exp"],
            iat=claims["iat"],
            jti=claims["jti"],
            client_id=claims["client_id"],
            grant_id=claims["grant_id"],
            authorization_details=details,
            acr=claims["acr"],
            auth_time=claims["auth_time"],
        )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: AccessTokenClaims

    @property
    def expires_in(self) -> int:
        return self.claims.exp - self.claims.iat


def token_response(issued: IssuedToken) -> dict[str, Any]:
    """The token endpoint's success body (RFC 6749 §5.1, CIBA §10.1.1).

    It carries ``authorization_details`` as granted (RFC 9396 §7): this is how the
    client learns that the patient approved less than it asked for.
    """
    return {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "authorization_details": dump_details(issued.claims.authorization_details),
    }


class AccessTokenIssuer:
    """Signs access tokens with the platform's Ed25519 key."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        issuer: str,
        lifetime: int = DEFAULT_LIFETIME,
    ) -> None:
        if not 1 <= lifetime <= MAX_LIFETIME:
            raise ConfigError(f"access token lifetime must be 1..{MAX_LIFETIME} seconds")
        self._key = OKPKey.import_key(key)
        self.kid = key_id(key.public_key())
        self.issuer = issuer
        self.lifetime = lifetime
        self.public_key = key.public_key()

    def issue(
        self,
        *,
        sub: str,
        audience: str,
        client_id: str,
        grant_id: str,
        details: AuthorizationDetails,
        acr: str,
        auth_time: int,
        now: int,
        jti: str | None = None,
    ) -> IssuedToken:
        claims = AccessTokenClaims(
            iss=self.issuer,
            sub=sub,
            aud=audience,
            exp=now + self.lifetime,
            iat=now,
            jti=jti or secrets.token_urlsafe(16),
            client_id=client_id,
            grant_id=grant_id,
            authorization_details=details,
            acr=acr,
            auth_time=auth_time,
        )
        header = {"typ": AT_JWT_TYP, "alg": SIGNING_ALG, "kid": self.kid}
        token = jwt.encode(
            header, claims.to_dict(), self._key, algorithms=[SIGNING_ALG], registry=_REGISTRY
        )
        return IssuedToken(token, claims)

    def public_jwks(self) -> dict[str, Any]:
        """The JWK Set resource servers verify with (``jwks_uri``)."""
        jwk = OKPKey.import_key(self.public_key).as_dict(private=False)
        return {"keys": [{**jwk, "kid": self.kid, "alg": SIGNING_ALG, "use": "sig"}]}


class AccessTokenVerifier:
    """Validates access tokens as RFC 9068 §4 asks (resource server side)."""

    def __init__(
        self,
        keys: Mapping[str, Ed25519PublicKey] | Ed25519PublicKey,
        *,
        issuer: str,
        audience: str,
        leeway: int = 0,
    ) -> None:
        if isinstance(keys, Ed25519PublicKey):
            keys = {key_id(keys): keys}
        self._keys = {kid: OKPKey.import_key(key) for kid, key in keys.items()}
        self.issuer = issuer
        self.audience = audience
        if not 0 <= leeway <= 60:
            raise ConfigError("token leeway must be 0..60 seconds")
        self.leeway = leeway

    def verify(self, token: str, *, now: int) -> AccessTokenClaims:
        """The claims of a valid token for our audience at ``now``; InvalidToken otherwise."""
        claims = self.verify_issued(token)
        if claims.aud != self.audience:
            raise InvalidToken("wrong audience")
        if claims.exp <= now - self.leeway:
            raise InvalidToken("expired")
        if claims.iat > now + self.leeway:
            raise InvalidToken("issued in the future")
        return claims

    def verify_issued(self, token: str) -> AccessTokenClaims:
        """The claims of a token this issuer signed, whatever its audience and expiry.

        For revocation (RFC 7009) and introspection (RFC 7662), which judge expiry and
        the grant themselves.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("not a token")
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, TypeError, UnicodeError) as exc:
            raise InvalidToken(f"malformed: {type(exc).__name__}") from None
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _TYPES:
            raise InvalidToken("typ is not at+jwt")
        if header.get("alg") != SIGNING_ALG:
            raise InvalidToken("alg is not Ed25519")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown kid")
        try:
            decoded = jwt.decode(token, key, algorithms=[SIGNING_ALG], registry=_REGISTRY)
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidToken(f"signature or payload: {type(exc).__name__}") from None
        claims = AccessTokenClaims.from_dict(decoded.claims)
        if claims.iss != self.issuer:
            raise InvalidToken("wrong issuer")
        return claims
