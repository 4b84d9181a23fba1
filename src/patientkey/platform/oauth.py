"""FastAPI glue of the OAuth 2 / OpenID CIBA endpoints (the authorization unit's HTTP face).

Plain HTTPS (no hop envelope: apps speak standard OAuth, so an existing client library
works unchanged); the client authenticates with ``private_key_jwt`` (RFC 7523) in the
form. Every answer comes from :class:`~patientkey.platform.authorization.AuthorizationServer`
as ``(status, body, headers)``; this module only decodes forms and encodes JSON.

Error bodies are RFC 9457 problem documents that also carry the RFC 6749 §5.2 members
``error`` and ``error_description`` (problem+json allows extension members), so OAuth
clients and problem-aware clients both read them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from patientkey.authz.errors import InvalidRequest, OAuthError
from patientkey.authz.form import single_params
from patientkey.platform.authorization import AuthorizationServer, OAuthAnswer, error_answer
from patientkey.protocol.routes import (
    OAUTH_BC_AUTHORIZE,
    OAUTH_INTROSPECT,
    OAUTH_JWKS,
    OAUTH_METADATA,
    OAUTH_REVOKE,
    OAUTH_TOKEN,
    OIDC_METADATA,
)
from patientkey.service.http import PROBLEM_JSON

__all__ = ["install_oauth_routes"]

_FORM: Final = "application/x-www-form-urlencoded"
_MAX_FORM: Final = 64 * 1024

Endpoint = Callable[..., OAuthAnswer]


def _form(body: bytes, content_type: str | None) -> list[tuple[str, str]]:
    if (content_type or "").split(";")[0].strip().lower() != _FORM:
        raise InvalidRequest(f"the body must be {_FORM}")
    if len(body) > _MAX_FORM:
        raise InvalidRequest("the form is too large")
    try:
        return parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("the form is not url-encoded ASCII") from exc


def _answer(answer: OAuthAnswer) -> Response:
    media = "application/json" if answer.status < 400 else PROBLEM_JSON
    return Response(
        json.dumps(answer.body, separators=(",", ":")),
        status_code=answer.status,
        headers=dict(answer.headers),
        media_type=media,
    )


def install_oauth_routes(app: FastAPI, server: AuthorizationServer) -> None:
    """Discovery, JWKS and the four form endpoints on ``app``."""

    def form_route(path: str, summary: str, method: Endpoint) -> None:
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            try:
                if "authorization" in request.headers:
                    # RFC 6749 §2.3: one authentication method per request; ours is the form.
                    raise InvalidRequest("authenticate with private_key_jwt only")
                form = single_params(_form(body, request.headers.get("content-type")))
                answer = await run_in_threadpool(method, form, endpoint=path)
            except OAuthError as exc:
                return _answer(error_answer(exc, path))
            return _answer(answer)

        app.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            summary=summary,
            response_class=Response,
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {_FORM: {"schema": {"type": "object"}}},
                }
            },
        )

    metadata = server.metadata()
    jwks = server.jwks()

    async def discovery() -> JSONResponse:
        return JSONResponse(metadata)

    for path in (OAUTH_METADATA, OIDC_METADATA):
        app.add_api_route(path, discovery, methods=["GET"], summary="Server metadata")

    @app.get(OAUTH_JWKS, summary="The access-token signing keys (JWK Set)")
    async def keys() -> JSONResponse:
        return JSONResponse(jwks)

    form_route(OAUTH_BC_AUTHORIZE, "CIBA backchannel authentication request", server.backchannel)
    form_route(OAUTH_TOKEN, "Token endpoint (CIBA grant)", server.token)
    form_route(OAUTH_INTROSPECT, "Token introspection (RFC 7662)", server.introspect)
    form_route(OAUTH_REVOKE, "Token revocation (RFC 7009)", server.revoke)
