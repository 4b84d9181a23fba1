"""FastAPI glue shared by the party services.

* :func:`install_problem_handlers`: every error leaves as RFC 9457
  ``application/problem+json`` with the status its class carries; anything
  unexpected is logged and answered 500 without detail (a 500 is a bug).
* :class:`BodyLimit`: refuses oversized request bodies (413) before a route
  reads them.
* :func:`envelope_route`: a POST route whose body is one hop envelope; it
  checks the envelope's sender against the client certificate, runs the
  handler in a worker thread (key-supply and database calls block), and seals
  the reply. The handler is plain sans-IO code: message in, message out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from patientkey.errors import (
    InvalidInput,
    NotFound,
    PatientKeyError,
    PayloadTooLarge,
    Unauthenticated,
)
from patientkey.protocol.channel import HopEnd, Incoming
from patientkey.protocol.messages import Message
from patientkey.service.tls import caller_name

__all__ = [
    "JOSE",
    "PROBLEM_JSON",
    "BodyLimit",
    "envelope_route",
    "install_problem_handlers",
    "problem_response",
]

log = logging.getLogger(__name__)

JOSE = "application/jose"
PROBLEM_JSON = "application/problem+json"
M = TypeVar("M", bound=Message)


def problem_response(exc: PatientKeyError, instance: str | None = None) -> JSONResponse:
    return JSONResponse(exc.to_problem(instance), status_code=exc.status, media_type=PROBLEM_JSON)


def install_problem_handlers(app: FastAPI) -> None:
    """The one place where errors become HTTP statuses and problem bodies."""

    async def known(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PatientKeyError)
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.detail)
        return problem_response(exc, request.url.path)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return problem_response(InvalidInput(f"{where}: {first.get('msg', 'invalid')}"))

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error: PatientKeyError = (
            NotFound() if exc.status_code == 404 else InvalidInput(str(exc.detail))
        )
        response = problem_response(error, request.url.path)
        if exc.status_code != 404:
            response.status_code = exc.status_code
        return response

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(PatientKeyError(), request.url.path)

    app.add_exception_handler(PatientKeyError, known)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, unexpected)


class BodyLimit:
    """ASGI middleware: 413 problem+json for bodies above ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or ():
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._refuse(scope, receive, send)
                return
        seen = 0

        async def limited() -> AsgiMessage:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"body exceeds {self.max_bytes} bytes")
        await problem_response(error, scope.get("path"))(scope, receive, send)


Handler = Callable[[Incoming[M]], Message]


def envelope_route(
    router: APIRouter | FastAPI,
    path: str,
    *,
    hop: HopEnd,
    expected: type[M],
    handler: Handler[M],
    reply: type[Message],
    summary: str,
) -> None:
    """Register ``POST path``: envelope(expected) in, envelope(reply) out."""

    def run(body: bytes, caller: str, peer: str) -> str:
        incoming = hop.receive(body, expected)
        if incoming.sender != caller:
            raise Unauthenticated("envelope sender does not match the client certificate")
        return hop.reply(incoming, handler(dataclasses.replace(incoming, peer=peer)))

    async def endpoint(request: Request) -> Response:
        caller = caller_name(request)
        body = await request.body()
        peer = request.client.host if request.client is not None else ""
        token = await run_in_threadpool(run, body, caller, peer)
        return Response(token, media_type=JOSE)

    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {JOSE: {}}, "description": f"a `{reply.MTYPE}` envelope"},
        **{
            code: {"content": {PROBLEM_JSON: {}}, "description": text}
            for code, text in (
                (400, "malformed, unauthentic, stale or replayed envelope"),
                (401, "no client certificate, or sender mismatch"),
                (403, "not allowed"),
                (404, "unknown or not yours"),
                (409, "state does not allow it"),
                (413, "body too large"),
                (429, "rate limited"),
                (502, "a party this depends on is unavailable"),
                (503, "no quantum key available"),
            )
        },
    }
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        summary=summary,
        description=f"Body: a `{expected.MTYPE}` hop envelope (`{JOSE}`).",
        responses=responses,
        openapi_extra={
            "requestBody": {"required": True, "content": {JOSE: {"schema": {"type": "string"}}}}
        },
        response_class=Response,
    )
