"""FastAPI adapter: the ETSI GS QKD 014 V1.1.1 REST API over :class:`KmeCore`.

Routes (§5, all under ``/api/v1/keys``):

- ``GET  /{slave_SAE_ID}/status``    Get status (§5.1)
- ``GET|POST /{slave_SAE_ID}/enc_keys``  Get key (§5.2; GET ``?number=&size=``,
  POST a Key request §6.2)
- ``GET|POST /{master_SAE_ID}/dec_keys`` Get key with key IDs (§5.3; GET
  ``?key_ID=``, POST Key IDs §6.4)

plus ``/admin/...`` (outside the ETSI API, for the configured admin identities
only) to inspect links and switch the simulated eavesdropper.

The caller's SAE_ID is the CN of its TLS client certificate, read from
the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``).
Uvicorn does not fill that extension itself; :mod:`patientkey.kme.server`
runs uvicorn with a protocol class that does. In-process tests either inject
the extension or override the :func:`caller_sae_id` dependency — never a
header, which any client could forge.

Every error leaves as the Error data format (§6.5, ``{"message", "details"}``)
with the status the error class carries; the mapping lives in
:func:`_install_error_handlers` only. Request-shape errors that FastAPI would
answer with 422 are 400 here, as §5 defines no 422. Bodies above
``max_body_bytes`` get 413 before any parsing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from patientkey import __version__
from patientkey.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    KeySupplyUnauthorized,
    NotFound,
    PatientKeyError,
    PayloadTooLarge,
)
from patientkey.keysupply._types import KeyStatus
from patientkey.kme.core import (
    ErrorBody,
    KeyContainerBody,
    KeyIDsRequest,
    KeyRequest,
    KmeCore,
    LinkId,
    error_body,
    key_container,
    parse_key_ids,
    parse_key_request,
    status_body,
)
from patientkey.kme.links import LinkManager
from patientkey.pki import peer_name_from_cert

__all__ = ["BodySizeLimit", "EveSetting", "caller_sae_id", "create_app"]

ETSI_PREFIX = "/api/v1/keys"


class EveSetting(BaseModel):
    """Admin: fraction of pulses the simulated intercept-resend attacker touches."""

    model_config = ConfigDict(strict=True, extra="forbid")

    eve: float = Field(ge=0.0, le=1.0)


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad request format (§5)"},
    401: {"model": ErrorBody, "description": "Unauthorized (§5)"},
    413: {"model": ErrorBody, "description": "Request body too large"},
    503: {"model": ErrorBody, "description": "Error on the server side, e.g. no key (§5)"},
}


# --- identity ------------------------------------------------------------------------


def caller_sae_id(request: Request) -> str:
    """The caller's SAE_ID: the CN of the verified TLS client certificate.

    The TLS layer (uvicorn with CERT_REQUIRED against our CA) has verified the
    certificate before the request exists; an absent or unusable one is 401.
    """
    extensions: Mapping[str, Any] = request.scope.get("extensions") or {}
    tls = extensions.get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    if not chain:
        raise KeySupplyUnauthorized("no client certificate")
    try:
        return peer_name_from_cert(chain[0])
    except InvalidInput as exc:
        raise KeySupplyUnauthorized("client certificate names no SAE") from exc


CallerId = Annotated[str, Depends(caller_sae_id)]


def _single_valued_query(request: Request) -> None:
    # §5 defines each query parameter once; a repeated one is ambiguous, not "the last".
    keys = [key for key, _ in request.query_params.multi_items()]
    if len(keys) != len(set(keys)):
        raise InvalidInput("repeated query parameter", details=[{"parameter": "query"}])


# --- body size ----------------------------------------------------------------------


class BodySizeLimit:
    """ASGI middleware: buffer at most ``max_bytes`` of request body, else 413.

    It runs before FastAPI parses anything, so an oversized body never reaches
    JSON decoding; the declared Content-Length is checked first, the bytes
    actually received second (a chunked or lying client gets the same 413).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit():
                    await self._reply(scope, receive, send, InvalidInput("bad Content-Length"))
                    return
                if int(value) > self.max_bytes:
                    await self._reply(scope, receive, send, self._too_large())
                    return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._reply(scope, receive, send, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            "request body too large", details=[{"max_body_bytes": self.max_bytes}]
        )

    @staticmethod
    async def _reply(scope: Scope, receive: Receive, send: Send, exc: PatientKeyError) -> None:
        response = JSONResponse(error_body(exc), status_code=exc.status)
        await response(scope, receive, send)


# --- the application ---------------------------------------------------------------


def create_app(
    core: KmeCore,
    *,
    links: LinkManager | None = None,
    admin_sae_ids: Collection[str] = (),
    max_body_bytes: int | None = None,
) -> FastAPI:
    """The KME's ASGI application over ``core`` (every core call holds ``core.lock``)."""
    app = FastAPI(
        title="PatientKey KME",
        version=__version__,
        summary="ETSI GS QKD 014 V1.1.1 key delivery over simulated BB84 links",
    )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=core.limits.max_body_bytes if max_body_bytes is None else max_body_bytes,
    )
    _install_error_handlers(app)
    app.include_router(_etsi_routes(core))
    app.include_router(_admin_routes(core, links, frozenset(admin_sae_ids)))
    app.openapi = _openapi_without_422(app)  # type: ignore[method-assign]
    return app


def _etsi_routes(core: KmeCore) -> APIRouter:
    """ETSI GS QKD 014 §5: each route parses, calls the core under its lock, encodes."""
    router = APIRouter(
        prefix=ETSI_PREFIX,
        tags=["ETSI GS QKD 014"],
        responses=_ERRORS,
        dependencies=[Depends(_single_valued_query)],
    )
    guard = core.lock

    @router.get("/{slave_SAE_ID}/status", response_model=KeyStatus)
    def get_status(slave_SAE_ID: str, caller: CallerId) -> JSONResponse:  # noqa: N803
        """Get status (§5.1) of the link from the caller (master) to ``slave_SAE_ID``."""
        with guard:
            status = core.status(caller, slave_SAE_ID)
        return JSONResponse(status_body(status))

    @router.get("/{slave_SAE_ID}/enc_keys", response_model=KeyContainerBody)
    def get_enc_keys(
        slave_SAE_ID: str,  # noqa: N803
        caller: CallerId,
        number: int | None = None,
        size: int | None = None,
    ) -> JSONResponse:
        """Get key (§5.2) with ``number`` and ``size`` as query parameters."""
        request = parse_key_request({"number": number, "size": size})
        with guard:
            keys = core.enc_keys(caller, slave_SAE_ID, request)
        return JSONResponse(key_container(keys))

    @router.post("/{slave_SAE_ID}/enc_keys", response_model=KeyContainerBody)
    def post_enc_keys(
        slave_SAE_ID: str,  # noqa: N803
        caller: CallerId,
        body: Annotated[KeyRequest | None, Body()] = None,
    ) -> JSONResponse:
        """Get key (§5.2) with a Key request (§6.2); an absent body means all defaults."""
        with guard:
            keys = core.enc_keys(caller, slave_SAE_ID, body or KeyRequest())
        return JSONResponse(key_container(keys))

    @router.get("/{master_SAE_ID}/dec_keys", response_model=KeyContainerBody)
    def get_dec_keys(
        master_SAE_ID: str,  # noqa: N803
        key_ID: str,  # noqa: N803
        caller: CallerId,
    ) -> JSONResponse:
        """Get key with key IDs (§5.3) for a single ``key_ID``."""
        request = parse_key_ids({"key_IDs": [{"key_ID": key_ID}]})
        with guard:
            keys = core.dec_keys(caller, master_SAE_ID, request)
        return JSONResponse(key_container(keys))

    @router.post("/{master_SAE_ID}/dec_keys", response_model=KeyContainerBody)
    def post_dec_keys(
        master_SAE_ID: str,  # noqa: N803
        caller: CallerId,
        body: Annotated[KeyIDsRequest, Body()],
    ) -> JSONResponse:
        """Get key with key IDs (§5.3) with Key IDs (§6.4)."""
        with guard:
            keys = core.dec_keys(caller, master_SAE_ID, body)
        return JSONResponse(key_container(keys))

    return router


def _admin_routes(core: KmeCore, links: LinkManager | None, admins: frozenset[str]) -> APIRouter:
    """Outside the ETSI API: link state and the eavesdropper switch, for admins only."""

    def admin(caller: CallerId) -> str:
        if caller not in admins:
            raise Forbidden("admin identity required")
        return caller

    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin)])
    guard = core.lock

    def link_id(a: str, b: str) -> LinkId:
        if (a, b) not in core.link_ids:
            raise NotFound("no such link", details=[{"a": a[:64], "b": b[:64]}])
        return (a, b)

    def link_view(lid: LinkId) -> dict[str, Any]:
        if links is not None:
            return links.info(lid)
        with guard:
            return dataclasses.asdict(core.link_info(lid))

    @router.get("/links")
    def admin_links() -> list[dict[str, Any]]:
        """State of every link: pool level, rounds, last QBER, Eve (never key material)."""
        return [link_view(lid) for lid in core.link_ids]

    @router.put("/links/{a}/{b}/eve")
    def admin_set_eve(a: str, b: str, setting: EveSetting) -> dict[str, Any]:
        """Set the simulated eavesdropper on link a-b (0 = off; from ~0.45 rounds abort)."""
        lid = link_id(a, b)
        if links is None:
            raise Conflict("this KME has no simulated links to attack")
        links.set_eve(lid, setting.eve)
        return link_view(lid)

    @router.post("/links/{a}/{b}/flush")
    def admin_flush(a: str, b: str) -> dict[str, Any]:
        """Discard the pool of link a-b now (keys already issued stay fetchable)."""
        lid = link_id(a, b)
        with guard:
            core.flush(lid)
        return link_view(lid)

    return router


def _install_error_handlers(app: FastAPI) -> None:
    """The one place where errors become HTTP statuses and §6.5 bodies."""

    async def patientkey_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PatientKeyError)
        return JSONResponse(error_body(exc), status_code=exc.status)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [
            {
                "parameter": ".".join(str(p) for p in err.get("loc", ())) or "request",
                "reason": str(err.get("msg", "invalid")),
            }
            for err in exc.errors()
        ]
        return JSONResponse({"message": "bad request format", "details": details}, status_code=400)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(
            {"message": str(exc.detail), "details": []},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    app.add_exception_handler(PatientKeyError, patientkey_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _openapi_without_422(app: FastAPI) -> Any:
    """OpenAPI generator that drops FastAPI's automatic 422 responses (we answer 400)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
