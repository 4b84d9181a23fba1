"""Client authentication with ``private_key_jwt`` (RFC 7523 §2.2, §3; RFC 7521 §4.2; OIDC Core §9).

Every call of the token, introspection and revocation endpoints carries, in its form::

    client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
    client_assertion=<a JWT the client signed with one of its registered keys>
    client_id=<optional; RFC 7521 §4.2: if present it must name the same client>

:func:`authenticate_client` answers the :class:`~patientkey.authz.clients.RegisteredClient`
or raises :class:`~patientkey.authz.errors.InvalidClient`, always with the one text
:data:`FAILURE` (STYLE.md 7): a client learns that it failed, never which check — the
precise reason goes to this module's logger at debug level, without key material or the
assertion's contents.

What is checked
---------------
* RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each
  request" — a ``client_secret`` in the form is refused (PatientKey registers no secrets).
  An ``Authorization`` header is the HTTP adapter's to refuse; it never reaches here.
* RFC 7521 §4.2: ``client_assertion_type`` is the JWT bearer URN; ``client_assertion``
  is one JWT (RFC 7523 §2.2).
* RFC 7515 §5.2: a compact JWS (three base64url segments), ``alg`` one of
  :data:`ASSERTION_ALGS` — never ``none``, never an HMAC (a public key used as an HMAC
  secret is the classic algorithm confusion) — no ``crit`` (we understand no extension,
  §4.1.11), no unencoded payload (RFC 7797 ``b64``); ``typ``, if present, ``JWT`` or
  ``client-authentication+jwt``. The signature verifies under a key of the client's
  registered JWKS (RFC 7591 ``jwks``) whose type fits ``alg`` and whose ``kid``, if the
  header names one, is that ``kid``.
* RFC 7523 §3: ``iss`` and ``sub`` are the client_id (1, 2); ``aud`` — a string or an
  array — contains one of the given audiences, the endpoint's URL or the issuer (3;
  OIDC Core §9: "the URL of the Token Endpoint"); ``exp`` is present and not past, with
  ``leeway`` seconds for clock skew (4); ``nbf`` and ``iat``, if present, not in the
  future beyond ``leeway`` (5, 6); ``jti`` is present (OIDC Core §9 makes it REQUIRED)
  and never seen before for this client (7, "the authorization server MAY ensure that
  JWTs are not replayed").
* A lifetime bound, RFC 7523 §3 (4): "The authorization server MAY reject JWTs with an
  "exp" claim value that is unreasonably far in the future" — ``exp - iat``, or
  ``exp - now`` when there is no ``iat``, at most ``max_lifetime`` seconds. Without it a
  stolen assertion with a year-long ``exp`` would be a password in all but name, and the
  replay store would have to remember its ``jti`` for a year.

The replay store records a ``jti`` only once everything else has passed (STYLE.md 3):
recording earlier would let anyone who can guess a client's next ``jti`` lock it out.

Performance: this runs on every token, introspection and revocation call. Keys are
imported into joserfc once per client and JWKS: a small LRU keyed by client_id holds the
imported keys with a JSON copy of the JWKS they came from, so a re-registered JWKS is
noticed on the next call and a call costs one dict comparison and one signature
verification.

Interoperability: Authlib's ``private_key_jwt_sign`` and ``PrivateKeyJWT`` make these
assertions; note that both default to a one-hour ``exp`` (``expires_in=3600``), which
the default ``max_lifetime`` of 300 s refuses — pass ``expires_in`` (or use
:func:`client_assertion`). The JWS ``alg`` ``EdDSA`` is accepted for Ed25519 keys as a
synonym of the fully-specified ``Ed25519`` (RFC 9864 §2.2 deprecates it, but the
signature bytes are the same, and older clients still send it).
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode

from patientkey.authz.clients import RegisteredClient
from patientkey.authz.errors import InvalidClient
from patientkey.errors import ConfigError

__all__ = [
    "ASSERTION_ALGS",
    "CLIENT_ASSERTION_TYPE",
    "FAILURE",
    "MAX_ASSERTION_CHARS",
    "MIN_RSA_BITS",
    "AssertionReplay",
    "InMemoryAssertionReplay",
    "VerificationKey",
    "authenticate_client",
    "client_assertion",
    "verification_key",
    "verification_keys",
]

_log = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: The one text of every refusal.
FAILURE: Final = "client authentication failed"
#: JWS algorithms an assertion may use, as metadata advertises them (RFC 8414 §2).
ASSERTION_ALGS: Final = ("Ed25519", "EdDSA", "ES256", "PS256", "RS256")
MAX_ASSERTION_CHARS: Final = 8 * 1024
#: NIST SP 800-57 Part 1 and RFC 7518 §3.3 ("a key of size 2048 bits or larger MUST be used").
MIN_RSA_BITS: Final = 2048
_MAX_JTI_CHARS: Final = 256
_MAX_LIFETIME_LIMIT: Final = 3600
_MAX_LEEWAY: Final = 300
_KEY_CACHE_SIZE: Final = 4096

# Each accepted ``alg`` → the joserfc model that verifies it. "EdDSA" is verified by the
# Ed25519 model: the same RFC 8032 signature, and Ed448 keys are never imported here, so
# the polymorphic name cannot select another curve. Going through this registry also
# keeps joserfc's deprecation warning for "EdDSA" out of every request.
_REGISTRY: Final = JWSRegistry(algorithms=["Ed25519", "ES256", "PS256", "RS256"])
_MODELS: Final[Mapping[str, JWSAlgModel]] = {
    "Ed25519": _REGISTRY.get_alg("Ed25519"),
    "EdDSA": _REGISTRY.get_alg("Ed25519"),
    "ES256": _REGISTRY.get_alg("ES256"),
    "PS256": _REGISTRY.get_alg("PS256"),
    "RS256": _REGISTRY.get_alg("RS256"),
}
# The algorithms each kind of registered key can verify.
_OKP_ALGS: Final = frozenset({"Ed25519", "EdDSA"})
_EC_ALGS: Final = frozenset({"ES256"})
_RSA_ALGS: Final = frozenset({"PS256", "RS256"})
_PUBLIC_MEMBERS: Final = {
    "OKP": ("kty", "crv", "x"),
    "EC": ("kty", "crv", "x", "y"),
    "RSA": ("kty", "n", "e"),
}
_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_TYPES: Final = frozenset({"jwt", "client-authentication+jwt"})


# --- the replay store --------------------------------------------------------------------


class AssertionReplay(Protocol):
    """Remembers the ``jti`` of every accepted assertion until it can no longer be used."""

    def use_assertion(self, client_id: str, jti: str, expires_at: int) -> bool:
        """Record ``jti`` for ``client_id`` until ``expires_at``; False if already recorded.

        Must be atomic: of two concurrent calls with the same pair, one gets False.
        """
        ...


class InMemoryAssertionReplay:
    """The in-memory twin of the replay store (one process; tests, demo).

    Thread-safe; an entry is forgotten once ``expires_at`` has passed on ``clock``.
    ``max_entries`` bounds memory: when it is reached, new assertions are refused
    (fail closed) until entries expire. Only assertions that verified reach the store,
    so only a registered client can fill it.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, max_entries: int = 1_000_000
    ) -> None:
        if max_entries < 1:
            raise ConfigError("the replay store needs room for at least one entry")
        self._clock = clock
        self._max_entries = max_entries
        self._seen: dict[tuple[str, str], int] = {}
        self._expiries: list[tuple[int, str, str]] = []
        self._lock = threading.Lock()

    def use_assertion(self, client_id: str, jti: str, expires_at: int) -> bool:
        now = self._clock()
        key = (client_id, jti)
        with self._lock:
            self._purge(now)
            if key in self._seen:
                return False
            if len(self._seen) >= self._max_entries:
                _log.warning("assertion replay store full: refusing new assertions")
                return False
            self._seen[key] = expires_at
            heapq.heappush(self._expiries, (expires_at, client_id, jti))
            return True

    def remembered(self) -> int:
        """How many jti values are held (expired ones may linger until the next use).

        Not ``__len__``: an empty store would be falsy, and ``store or default`` would
        silently swap it for another one.
        """
        with self._lock:
            return len(self._seen)

    def _purge(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            expires_at, client_id, jti = heapq.heappop(self._expiries)
            if self._seen.get((client_id, jti)) == expires_at:
                del self._seen[(client_id, jti)]


# --- registered keys ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key of a client, imported, with the ``alg`` values it may verify."""

    kid: str | None
    algorithms: frozenset[str]
    key: OKPKey | ECKey | RSAKey


def _import_jwk(members: dict[str, Any]) -> OKPKey | ECKey | RSAKey:
    """The one place keys are imported (counted by the cache tests)."""
    kty = members["kty"]
    if kty == "OKP":
        return OKPKey.import_key(members)
    if kty == "EC":
        return ECKey.import_key(members)
    return RSAKey.import_key(members)


def verification_key(jwk: Mapping[str, Any]) -> VerificationKey:
    """Import one public JWK (RFC 7517) for verifying assertions.

    Raises ValueError (TypeError for a non-object), saying why, for a key that cannot
    serve: not a public Ed25519, P-256 or RSA (≥ :data:`MIN_RSA_BITS` bits) signing key,
    or malformed. Only the public members are imported, so no private material is ever
    held here.
    """
    if not isinstance(jwk, Mapping):
        raise TypeError("a key must be a JSON object")
    kty = jwk.get("kty")
    if kty not in _PUBLIC_MEMBERS:
        raise ValueError("kty must be OKP, EC or RSA")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError('use must be "sig"')
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError('key_ops must include "verify"')
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise ValueError("kid must be a non-empty string")
    algorithms = _key_algorithms(kty, jwk)
    members = {name: jwk.get(name) for name in _PUBLIC_MEMBERS[kty]}
    if not all(isinstance(value, str) for value in members.values()):
        raise ValueError(f"{kty} key members {list(members)} must be strings")
    try:
        key = _import_jwk(members)
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"malformed {kty} key ({type(exc).__name__})") from None
    return VerificationKey(kid, algorithms, key)


def _key_algorithms(kty: str, jwk: Mapping[str, Any]) -> frozenset[str]:
    """The assertion algorithms a key of this type, curve, size and ``alg`` may verify."""
    if kty == "OKP":
        if jwk.get("crv") != "Ed25519":
            raise ValueError("an OKP key must be on Ed25519")
        algorithms = _OKP_ALGS
    elif kty == "EC":
        if jwk.get("crv") != "P-256":
            raise ValueError("an EC key must be on P-256")
        algorithms = _EC_ALGS
    else:
        n = jwk.get("n")
        if not isinstance(n, str) or _bit_length(n) < MIN_RSA_BITS:
            raise ValueError(f"an RSA key must have at least {MIN_RSA_BITS} bits")
        algorithms = _RSA_ALGS
    alg = jwk.get("alg")
    if alg is not None:
        # RFC 7517 §4.4: the key is for this algorithm only ("EdDSA" and "Ed25519" are
        # one signature on an Ed25519 key, so either name admits both).
        named = _OKP_ALGS if alg in _OKP_ALGS else frozenset({alg})
        algorithms = algorithms & named
        if not algorithms:
            raise ValueError(f"alg must be one of {sorted(ASSERTION_ALGS)} and fit the key")
    return algorithms


def verification_keys(jwks: Mapping[str, Any]) -> tuple[VerificationKey, ...]:
    """The usable keys of a JWK Set; keys that cannot serve are skipped (and logged)."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        return ()
    usable: list[VerificationKey] = []
    for index, jwk in enumerate(keys):
        try:
            usable.append(verification_key(jwk))
        except (ValueError, TypeError) as exc:
            _log.debug("client key %d skipped: %s", index, exc)
    return tuple(usable)


def _bit_length(b64: str) -> int:
    try:
        return int.from_bytes(urlsafe_b64decode(b64.encode("ascii")), "big").bit_length()
    except (ValueError, TypeError, UnicodeError):
        return 0


class _KeyCache:
    """Imported keys per client, valid while the client's JWKS is unchanged."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._entries: OrderedDict[str, tuple[Any, tuple[VerificationKey, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def keys_for(self, client: RegisteredClient) -> tuple[VerificationKey, ...]:
        with self._lock:
            hit = self._entries.get(client.client_id)
            # Compared with a JSON copy taken on the miss: an equal JWKS in a new object
            # (each lookup may build one) hits, a JWKS changed in place does not.
            if hit is not None and hit[0] == client.jwks:
                self._entries.move_to_end(client.client_id)
                return hit[1]
        try:
            snapshot = json.loads(json.dumps(client.jwks))
        except (TypeError, ValueError, RecursionError):
            return ()  # not a JSON document: it registers no usable key
        # Imported outside the lock: two threads may both import on a miss, which is
        # harmless, while one slow import never stalls every other client.
        keys = verification_keys(snapshot)
        with self._lock:
            self._entries[client.client_id] = (snapshot, keys)
            self._entries.move_to_end(client.client_id)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)
        return keys


_KEYS: Final = _KeyCache(_KEY_CACHE_SIZE)


# --- authentication ----------------------------------------------------------------------


class _Refused(Exception):
    """A precise reason, for the local log only; never leaves this module."""


def authenticate_client(
    params: Mapping[str, str],
    *,
    audiences: Collection[str],
    lookup: Callable[[str], RegisteredClient | None],
    replay: AssertionReplay,
    now: int,
    max_lifetime: int = 300,
    leeway: int = 30,
) -> RegisteredClient:
    """The client whose ``private_key_jwt`` assertion in ``params`` is valid at ``now``.

    ``params`` is the endpoint's form, one value per name (``form.single_params``);
    ``audiences`` are the values ``aud`` may name (the endpoint's URL and the issuer).
    Raises InvalidClient with :data:`FAILURE` for every failure.
    """
    if not audiences or not all(isinstance(a, str) and a for a in audiences):
        raise ConfigError("client authentication needs at least one audience")
    if not 1 <= max_lifetime <= _MAX_LIFETIME_LIMIT:
        raise ConfigError(f"assertion max_lifetime must be 1..{_MAX_LIFETIME_LIMIT} seconds")
    if not 0 <= leeway <= _MAX_LEEWAY:
        raise ConfigError(f"assertion leeway must be 0..{_MAX_LEEWAY} seconds")
    # Logged only once it names a registered client: an unknown id is an attacker's text.
    registered: str | None = None
    try:
        header, claims, signing_input, signature = _parse(_form(params))
        client_id = _client_id(params, claims)
        client = _registered(lookup, client_id)
        registered = client_id
        _verify_signature(client, header, signing_input, signature)
        jti, exp = _check_claims(
            claims, client_id, audiences, now=now, max_lifetime=max_lifetime, leeway=leeway
        )
        # Remembered until the last moment the assertion could still be accepted.
        _record(replay, client_id, jti, exp + leeway)
    except _Refused as refused:
        _log.debug("client authentication refused (client %s): %s", registered or "?", refused)
        raise InvalidClient(FAILURE) from None
    return client


def _registered(
    lookup: Callable[[str], RegisteredClient | None], client_id: str
) -> RegisteredClient:
    client = lookup(client_id)
    if client is None or client.client_id != client_id:
        raise _Refused("unknown client")
    return client


def _record(replay: AssertionReplay, client_id: str, jti: str, until: int) -> None:
    if not replay.use_assertion(client_id, jti, until):
        raise _Refused("jti already used")


def _form(params: Mapping[str, str]) -> str:
    if "client_secret" in params:
        raise _Refused("client_secret sent: more than one method, or an unsupported one")
    if params.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
        raise _Refused("client_assertion_type missing or not the JWT bearer type")
    assertion = params.get("client_assertion")
    if not isinstance(assertion, str) or not assertion:
        raise _Refused("client_assertion missing")
    if len(assertion) > MAX_ASSERTION_CHARS or not _COMPACT_JWS.fullmatch(assertion):
        raise _Refused("client_assertion is not a compact JWS")
    return assertion


def _parse(assertion: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims (not yet trusted), signing input and signature of the assertion."""
    raw = assertion.encode("ascii")
    signing_input, _, signature_segment = raw.rpartition(b".")
    try:
        obj = jws.extract_compact(raw)
        header = obj.headers()
        claims = json.loads(obj.payload)
        signature = urlsafe_b64decode(signature_segment)
    except (JoseError, ValueError, TypeError) as exc:
        raise _Refused(f"malformed JWS ({type(exc).__name__})") from None
    if not isinstance(claims, dict):
        raise _Refused("payload is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _MODELS:  # a list would not even hash
        raise _Refused("alg not accepted")
    if "crit" in header or "b64" in header:
        raise _Refused("crit or b64 header")
    typ = header.get("typ")
    if typ is not None and (
        not isinstance(typ, str) or typ.lower().removeprefix("application/") not in _TYPES
    ):
        raise _Refused("typ is not JWT")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _Refused("kid is not a string")
    return header, claims, signing_input, signature


def _client_id(params: Mapping[str, str], claims: Mapping[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _Refused("sub missing")
    form_id = params.get("client_id")
    if form_id is not None and form_id != sub:
        raise _Refused("client_id in the form is not the assertion's sub")
    return sub


def _verify_signature(
    client: RegisteredClient, header: Mapping[str, Any], signing_input: bytes, signature: bytes
) -> None:
    alg = header["alg"]
    kid = header.get("kid")
    model = _MODELS[alg]
    candidates = [
        k for k in _KEYS.keys_for(client) if alg in k.algorithms and (kid is None or k.kid == kid)
    ]
    if not candidates:
        raise _Refused("no registered key for this alg and kid")
    for candidate in candidates:
        try:
            model.check_key(candidate.key)
            if model.verify(signing_input, signature, candidate.key):
                return
        except (JoseError, ValueError, TypeError):
            continue
    raise _Refused("signature does not verify")


def _check_claims(
    claims: Mapping[str, Any],
    client_id: str,
    audiences: Collection[str],
    *,
    now: int,
    max_lifetime: int,
    leeway: int,
) -> tuple[str, int]:
    if claims.get("iss") != client_id:
        raise _Refused("iss is not the client_id")
    aud = claims.get("aud")
    named = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in audiences for a in named):
        raise _Refused("aud names none of our audiences")
    exp = _numeric_date(claims, "exp")
    if exp is None:
        raise _Refused("exp missing")
    iat = _numeric_date(claims, "iat")
    nbf = _numeric_date(claims, "nbf")
    if now >= exp + leeway:
        raise _Refused("expired")
    if iat is not None and iat > now + leeway:
        raise _Refused("iat in the future")
    if nbf is not None and nbf > now + leeway:
        raise _Refused("not yet valid (nbf)")
    # Without iat, the client's clock may run ahead of ours by up to the leeway.
    lifetime, allowed = (
        (exp - iat, max_lifetime) if iat is not None else (exp - now, max_lifetime + leeway)
    )
    if lifetime > allowed:
        raise _Refused("lifetime too long")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI_CHARS:
        raise _Refused("jti missing or too long")
    return jti, math.ceil(exp)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """RFC 7519 §2 NumericDate: a JSON number, possibly non-integer; absent is None."""
    if name not in claims:
        return None
    value = claims[name]
    # An int is always finite; math.isfinite would overflow on one beyond a float's range.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise _Refused(f"{name} is not a NumericDate")
    return value


# --- making assertions (the client side) -------------------------------------------------


def _signing_key(
    key: OKPKey | ECKey | RSAKey | Ed25519PrivateKey | EllipticCurvePrivateKey | RSAPrivateKey,
) -> tuple[OKPKey | ECKey | RSAKey, str]:
    if isinstance(key, Ed25519PrivateKey):
        return OKPKey.import_key(key), "Ed25519"
    if isinstance(key, EllipticCurvePrivateKey):
        if not isinstance(key.curve, SECP256R1):
            raise ConfigError("client assertions need an Ed25519, P-256 or RSA key")
        return ECKey.import_key(key), "ES256"
    if isinstance(key, RSAPrivateKey):
        return RSAKey.import_key(key), "PS256"
    if isinstance(key, OKPKey) and key.curve_name == "Ed25519":
        return key, "Ed25519"
    if isinstance(key, ECKey) and key.curve_name == "P-256":
        return key, "ES256"
    if isinstance(key, RSAKey):
        return key, "PS256"
    raise ConfigError("client assertions need an Ed25519, P-256 or RSA key")


def client_assertion(
    client_id: str,
    key: OKPKey | ECKey | RSAKey | Ed25519PrivateKey | EllipticCurvePrivateKey | RSAPrivateKey,
    *,
    audience: str,
    now: int,
    lifetime: int = 60,
    kid: str | None = None,
) -> str:
    """A ``private_key_jwt`` assertion (RFC 7523 §3) for ``client_id``, signed with ``key``.

    ``alg`` follows the key: Ed25519, ES256 (P-256) or PS256 (RSA; PSS rather than
    PKCS#1 v1.5). ``audience`` is the endpoint's URL or the issuer; ``jti`` is 192
    random bits. Send it as ``client_assertion`` with ``client_assertion_type``
    :data:`CLIENT_ASSERTION_TYPE`.
    """
    if not 1 <= lifetime <= _MAX_LIFETIME_LIMIT:
        raise ConfigError(f"assertion lifetime must be 1..{_MAX_LIFETIME_LIMIT} seconds")
    signing_key, alg = _signing_key(key)
    if not signing_key.is_private:
        raise ConfigError("client assertions are signed with a private key")
    header: dict[str, Any] = {"alg": alg}
    if kid is not None:
        header["kid"] = kid
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(24),
    }
    return jwt.encode(header, claims, signing_key, algorithms=[alg], registry=_REGISTRY)
