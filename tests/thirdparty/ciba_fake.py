"""A faithful fake of the platform's OAuth endpoints, for the third party's client tests.

It answers over ``httpx.MockTransport`` what ``platform.oauth`` answers over HTTPS: the
RFC 8414 metadata, ``/bc-authorize``, ``/token``, ``/introspect`` and ``/revoke``, driven
by the real sans-IO core (``authz.ciba``, ``authz.grants``, ``authz.tokens``,
``authz.introspection``, ``authz.revocation``), with error bodies shaped as the platform
shapes them (problem+json carrying ``error`` / ``error_description``).

Client authentication is checked independently of ``authz.clientauth``: every POST must
carry an RFC 7523 assertion that joserfc verifies against the JWKS of the registration
document the third party exported, with ``iss`` = ``sub`` = client_id, ``aud`` = the
endpoint's URL, a short lifetime and a ``jti`` never seen before. Each verified
assertion is counted; each refusal is recorded with its reason.

Time is a :class:`FakeClock` shared with the client: ``sleep`` advances it, so the
platform's interval rule (whole seconds between arrivals) is applied exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from patientkey.authz import ciba
from patientkey.authz.catalog import default_catalog
from patientkey.authz.clientauth import CLIENT_ASSERTION_TYPE
from patientkey.authz.errors import InvalidClient, OAuthError
from patientkey.authz.grants import InMemoryGrantStore, create_grant
from patientkey.authz.introspection import introspect
from patientkey.authz.metadata import server_metadata
from patientkey.authz.rar import AuthorizationDetails
from patientkey.authz.registration import parse_registration
from patientkey.authz.revocation import revoke_token
from patientkey.authz.tokens import AccessTokenIssuer, AccessTokenVerifier, token_response
from patientkey.identity import ProofKind
from patientkey.protocol.routes import (
    OAUTH_BC_AUTHORIZE,
    OAUTH_INTROSPECT,
    OAUTH_METADATA,
    OAUTH_REVOKE,
    OAUTH_TOKEN,
)

START = 1_750_000_000.0


@dataclass
class FakeClock:
    """Seconds since the epoch; ``sleep`` advances it and records how long was asked."""

    now: float = START
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class _Users:
    def __init__(self, known: set[str], blocked: set[str]) -> None:
        self.known = known
        self.blocked = blocked

    def lookup(self, user_id: str) -> ciba.UserEntry | None:
        if user_id not in self.known:
            return None
        return ciba.UserEntry(user_id=user_id, locked=user_id in self.blocked)

    def check_user_code(self, user_id: str, code: str) -> bool:
        return False


class CibaFake:
    """The platform's OAuth face, for one registered client (its export document)."""

    def __init__(
        self,
        registration: dict[str, Any],
        *,
        issuer: str,
        clock: FakeClock,
        users: tuple[str, ...] = ("u-alice",),
        policy: ciba.CibaPolicy | None = None,
    ) -> None:
        self.issuer = issuer
        self.clock = clock
        self.catalog = default_catalog()
        self.registration = registration
        self.client = parse_registration(registration, catalog=self.catalog)
        self.keys = KeySet.import_key_set(registration["jwks"])
        self.users = _Users(set(users), set())
        self.policy = policy or ciba.CibaPolicy()
        self.requests = ciba.InMemoryAuthRequestStore()
        self.grants = InMemoryGrantStore()
        signing = Ed25519PrivateKey.generate()
        self.tokens = AccessTokenIssuer(signing, issuer=issuer, lifetime=300)
        self.verifier = AccessTokenVerifier(signing.public_key(), issuer=issuer, audience=issuer)
        self.assertions_verified = 0
        self.refused: list[str] = []
        self.seen_jti: set[str] = set()
        self.answers: list[tuple[str, int, str | None]] = []  # (path, status, error)
        self.poll_times: list[float] = []
        #: Called with the poll's number (1, 2, ...) before each token request is handled.
        self.on_poll: Callable[[int], None] | None = None
        self.last_auth_req_id: str | None = None

    # ── the patient's side (what the wallet does through the platform) ──

    def _request(self, auth_req_id: str | None = None) -> ciba.AuthRequest:
        key = auth_req_id or self.last_auth_req_id
        assert key is not None
        request = self.requests.get(key)
        assert request is not None
        return request

    def approve(
        self, auth_req_id: str | None = None, *, approved: AuthorizationDetails | None = None
    ) -> str:
        """The patient approves (password + TOTP: substantial); the new grant_id."""
        request = self._request(auth_req_id)
        now = int(self.clock())
        decided = ciba.approve(
            request,
            user_id=request.user_id,
            proofs={ProofKind.PASSWORD, ProofKind.TOTP},
            catalog=self.catalog,
            now=now,
            approved=approved,
        )
        new = decided.request
        assert self.requests.replace(request, new)
        assert new.grant_id is not None
        assert new.granted is not None
        assert new.acr is not None
        grant, _ = create_grant(
            grant_id=new.grant_id,
            user_id=new.user_id,
            client_id=new.client_id,
            scenario=new.decision.scenario.name,
            details=new.granted,
            acr=new.acr,
            proofs=new.proofs,
            auth_time=new.auth_time or now,
            now=now,
        )
        self.grants.add(grant)
        return grant.grant_id

    def deny(self, auth_req_id: str | None = None) -> None:
        request = self._request(auth_req_id)
        decided = ciba.deny(request, user_id=request.user_id, now=int(self.clock()))
        assert self.requests.replace(request, decided.request)

    def touch(self, auth_req_id: str | None = None) -> None:
        """Another poll of the same client arrives now (e.g. from a second terminal)."""
        request = self._request(auth_req_id)
        moved = replace(request, last_polled_at=int(self.clock()), version=request.version + 1)
        assert self.requests.replace(request, moved)

    # ── HTTP ──

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def http(self) -> httpx.Client:
        return httpx.Client(transport=self.transport())

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path == OAUTH_METADATA:
            return httpx.Response(200, json=server_metadata(self.issuer, catalog=self.catalog))
        if request.method != "POST" or path not in {
            OAUTH_BC_AUTHORIZE,
            OAUTH_TOKEN,
            OAUTH_INTROSPECT,
            OAUTH_REVOKE,
        }:
            return httpx.Response(404, json={"title": "Not found"})
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        pairs = parse_qsl(request.content.decode("ascii"), keep_blank_values=True)
        form = dict(pairs)
        assert len(form) == len(pairs), "a parameter was repeated"
        now = int(self.clock())
        try:
            self._authenticate(form, audience=str(request.url), now=now)
            status, body = self._endpoint(path, form, now)
        except OAuthError as exc:
            status, body = exc.status, {**exc.to_problem(path), **exc.to_oauth()}
        self.answers.append((path, status, body.get("error")))
        return httpx.Response(
            status,
            content=json.dumps(body).encode(),
            headers={
                "content-type": "application/json" if status < 400 else "application/problem+json",
                "cache-control": "no-store",
            },
        )

    def _authenticate(self, form: dict[str, str], *, audience: str, now: int) -> None:
        """RFC 7523 §3, checked with joserfc against the exported JWKS."""

        def refuse(reason: str) -> InvalidClient:
            self.refused.append(reason)
            return InvalidClient("client authentication failed")

        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise refuse("no assertion type")
        try:
            token = jwt.decode(form.get("client_assertion", ""), self.keys, algorithms=["ES256"])
        except (JoseError, ValueError) as exc:
            raise refuse(f"signature: {type(exc).__name__}") from None
        client_id = self.client.client_id
        kids = {key["kid"] for key in self.registration["jwks"]["keys"]}
        claims = token.claims
        checks = {
            "kid": token.header.get("kid") in kids,
            "alg": token.header.get("alg") == "ES256",
            "client_id": form.get("client_id", client_id) == client_id,
            "iss": claims.get("iss") == client_id,
            "sub": claims.get("sub") == client_id,
            "aud": claims.get("aud") == audience,
            "exp": isinstance(claims.get("exp"), int) and claims["exp"] > now,
            "iat": isinstance(claims.get("iat"), int) and claims["iat"] <= now,
            "lifetime": claims.get("exp", 0) - claims.get("iat", 0) <= 300,
            "jti": isinstance(claims.get("jti"), str) and claims["jti"] not in self.seen_jti,
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise refuse(f"claims: {failed}")
        self.seen_jti.add(claims["jti"])
        self.assertions_verified += 1

    def _endpoint(self, path: str, form: dict[str, str], now: int) -> tuple[int, dict[str, Any]]:
        info = self.client.info
        if path == OAUTH_BC_AUTHORIZE:
            accepted = ciba.backchannel_authenticate(
                form,
                client=info,
                users=self.users,
                catalog=self.catalog,
                policy=self.policy,
                now=now,
            )
            self.requests.add(accepted.request)
            self.last_auth_req_id = accepted.request.auth_req_id
            return 200, accepted.response
        if path == OAUTH_TOKEN:
            return self._token(form, now)
        if path == OAUTH_INTROSPECT:
            return 200, introspect(
                form, caller=info.client_id, verifier=self.verifier, store=self.grants, now=now
            )
        revoke_token(form, client=info, verifier=self.verifier, store=self.grants, now=now)
        return 200, {}

    def _token(self, form: dict[str, str], now: int) -> tuple[int, dict[str, Any]]:
        self.poll_times.append(self.clock())
        if self.on_poll is not None:
            self.on_poll(len(self.poll_times))
        token_request = ciba.parse_token_request(form)
        stored = self.requests.get(token_request.auth_req_id)
        answer = ciba.poll(
            stored, token_request, client=self.client.info, policy=self.policy, now=now
        )
        if answer.error is not None:
            if answer.store is not None and stored is not None:
                self.requests.replace(stored, answer.store)
            raise answer.error
        issued_for = answer.store
        assert issued_for is not None
        assert stored is not None
        assert issued_for.grant_id
        assert issued_for.granted
        assert issued_for.acr
        issued = self.tokens.issue(
            sub=issued_for.user_id,
            audience=self.issuer,
            client_id=self.client.client_id,
            grant_id=issued_for.grant_id,
            details=issued_for.granted,
            acr=issued_for.acr,
            auth_time=issued_for.auth_time or now,
            now=now,
        )
        assert self.requests.replace(stored, issued_for)
        return 200, token_response(issued)

    def errors(self, path: str = OAUTH_TOKEN) -> list[str | None]:
        """The ``error`` of each answer at ``path`` (None for a success)."""
        return [error for p, _, error in self.answers if p == path]
