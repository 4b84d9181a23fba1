"""FastAPI adapter of the platform: envelope routes over :class:`PlatformCore`.

Every operation route is ``POST`` with one hop envelope in and one out
(:func:`~patientkey.service.http.envelope_route`: the envelope's sender must be
the client certificate's CN, the handler runs in a worker thread). Outside the
envelopes, and never carrying private data:

* ``GET /v1/ping`` — liveness, no database, no crypto (the benchmark's bare rate);
* ``GET /v1/pq/public`` and ``POST /v1/pq/exchange`` — the wallets' post-quantum
  fallback, plain JSON over mutual TLS (``docs/protocol.md``);
* the OAuth 2 / OpenID CIBA endpoints of the authorization unit (``platform.oauth``):
  discovery, JWKS, ``/bc-authorize``, ``/token``, ``/introspect``, ``/revoke`` — plain
  HTTPS with ``private_key_jwt``, the one part of the API apps without a PatientKey
  certificate reach;
* the transparency log's signed tree head and proofs (``platform.audit``): plain GETs
  of hashes only, for anyone to check; a wallet's own events come in the
  ``/v1/audit/sync`` envelope.

The patient's side of authorization (enrollment of proofs, the inbox, decisions,
grants) travels in hop envelopes like every other wallet operation.

Errors are RFC 9457 problem+json; bodies above ``max_body_bytes`` get 413 first.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any, Final, TypeVar

from fastapi import Depends, FastAPI, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from patientkey import __version__
from patientkey.errors import Forbidden
from patientkey.keysupply.pq import PQ_INIT_LEN
from patientkey.platform.audit import TransparencyLog
from patientkey.platform.authorization import AuthorizationServer
from patientkey.platform.core import PlatformCore
from patientkey.platform.kue import PqExchanges
from patientkey.platform.oauth import install_oauth_routes
from patientkey.protocol.channel import HopEnd, Incoming
from patientkey.protocol.messages import (
    AuditSync,
    AuditSyncRequest,
    AuthzDecision,
    AuthzOutcome,
    B64Bytes,
    BindReply,
    BindRequest,
    DispenseRequest,
    DispenseState,
    FetchRequest,
    GrantList,
    GrantRevoke,
    GrantsRequest,
    IdentityEnroll,
    IdentityState,
    Inbox,
    InboxRequest,
    ListRequest,
    Message,
    OtpSend,
    OtpSent,
    RecordList,
    RecordReply,
    RecordsAnnounce,
    RotateAck,
    RotateCommit,
    RotatePrepare,
    ShareDelivery,
    ShareOffer,
    ShareReceipt,
    ShareRequest,
)
from patientkey.protocol.routes import (
    AUDIT_CONSISTENCY,
    AUDIT_INCLUSION,
    AUDIT_STH,
    AUDIT_SYNC,
    AUTHZ_DECIDE,
    AUTHZ_INBOX,
    AUTHZ_OTP,
    BIND,
    DISPENSE,
    GRANTS_LIST,
    GRANTS_REVOKE,
    IDENTITY_ENROLL,
    PING,
    PQ_EXCHANGE,
    PQ_PUBLIC,
    RECORDS_ANNOUNCE,
    RECORDS_FETCH,
    RECORDS_LIST,
    ROTATE_COMMIT,
    ROTATE_PREPARE,
    SHARE_DELIVER,
    SHARE_OFFER,
)
from patientkey.service.http import (
    PROBLEM_JSON,
    BodyLimit,
    envelope_route,
    install_problem_handlers,
)
from patientkey.service.tls import caller_name

__all__ = [
    "AuditConsistencyProof",
    "AuditInclusionProof",
    "AuditTreeHead",
    "PqExchangeReply",
    "PqInit",
    "PqPublic",
    "create_app",
]

M = TypeVar("M", bound=Message)

DESCRIPTION: Final = """\
The e-prescription platform (EPP): the hub between wallets, hospitals (HIS gateways)
and third parties. It binds accounts to hospital patients, stores and relays sealed
records, relays shares and tracks dispensing — and never sees a prescription: every
record is ciphertext for the patient (and the third parties the patient chose).

Callers authenticate with TLS client certificates (CN = party name; a wallet's CN is
its User_ID). Operation bodies are hop envelopes (JWE compact, `application/jose`);
see `docs/protocol.md`."""

_PING: Final = b'{"status":"ok"}'


class PqPublic(BaseModel):
    """``GET /v1/pq/public``: ML-KEM-768 encapsulation key ‖ X25519 public key."""

    public: str = Field(description="base64url, 1216 bytes")


class PqInit(BaseModel):
    """``POST /v1/pq/exchange`` body: the wallet's ML-KEM ciphertext ‖ X25519 key."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    init: B64Bytes = Field(min_length=PQ_INIT_LEN, max_length=PQ_INIT_LEN)


class PqExchangeReply(BaseModel):
    """The exchange ID the wallet's key IDs name (``p.<exchange_id>|n.<counter>``)."""

    exchange_id: str


_U63: Final = 2**63 - 1


class AuditTreeHead(BaseModel):
    """``GET /v1/audit/sth``: the latest signed tree head (RFC 9162 §4.10, signed with
    Ed25519 as ``audit.sth`` describes) and the log's public key."""

    log_id: str
    tree_size: int = Field(ge=0)
    timestamp: int = Field(ge=0, description="ms since the epoch")
    root_hash: str = Field(description="base64url, 32 bytes")
    signature: str = Field(description="base64url, 64 bytes (Ed25519)")
    log_key: str = Field(description="base64url, the log's raw Ed25519 public key (32 bytes)")


class AuditInclusionProof(BaseModel):
    """``GET /v1/audit/proof/inclusion``: PATH(leaf_index, D[tree_size]) (RFC 9162 §2.1.3)."""

    leaf_index: int = Field(ge=0)
    tree_size: int = Field(ge=1)
    proof: list[str] = Field(description="base64url hashes, leaf to root")


class AuditConsistencyProof(BaseModel):
    """``GET /v1/audit/proof/consistency``: PROOF(first, D[second]) (RFC 9162 §2.1.4)."""

    first: int = Field(ge=0)
    second: int = Field(ge=0)
    proof: list[str] = Field(description="base64url hashes")


Caller = Annotated[str, Depends(caller_name)]
Size = Annotated[int, Query(ge=0, le=_U63)]


def create_app(
    core: PlatformCore,
    hop: HopEnd,
    *,
    authz: AuthorizationServer,
    pq: PqExchanges | None = None,
    audit: TransparencyLog | None = None,
    max_body_bytes: int = 8 * 1024 * 1024,
) -> FastAPI:
    """The platform's ASGI application."""
    app = FastAPI(
        title="PatientKey platform (EPP)",
        version=__version__,
        description=DESCRIPTION,
    )
    install_problem_handlers(app)

    def route(
        path: str,
        expected: type[M],
        reply: type[Message],
        method: Callable[[str, M], Message],
        summary: str,
    ) -> None:
        def handler(incoming: Incoming[M]) -> Message:
            return method(incoming.sender, incoming.message)

        envelope_route(
            app, path, hop=hop, expected=expected, handler=handler, reply=reply, summary=summary
        )

    route(BIND, BindRequest, BindReply, core.bind, "Bind the account to a HIS patient")
    route(ROTATE_PREPARE, RotatePrepare, RotateAck, core.rotate_prepare, "Rotate KUH: prepare")
    route(ROTATE_COMMIT, RotateCommit, RotateAck, core.rotate_commit, "Rotate KUH: commit")
    route(
        RECORDS_ANNOUNCE,
        RecordsAnnounce,
        RecordList,
        core.announce,
        "A hospital announces records (metadata only)",
    )
    route(RECORDS_LIST, ListRequest, RecordList, core.list_records, "List my records")
    route(RECORDS_FETCH, FetchRequest, RecordReply, core.fetch, "Fetch a sealed record")
    route(SHARE_OFFER, ShareRequest, ShareOffer, core.share_offer, "Start a share")
    route(
        SHARE_DELIVER,
        ShareDelivery,
        ShareReceipt,
        core.share_deliver,
        "Deliver a re-sealed record to a third party",
    )
    route(DISPENSE, DispenseRequest, DispenseState, core.dispense, "Claim/complete/release")
    _authz_routes(app, hop, authz)
    install_oauth_routes(app, authz)

    @app.get(PING, summary="Liveness (no database, no crypto)")
    async def ping() -> Response:
        return Response(_PING, media_type="application/json")

    if pq is not None:
        _pq_routes(app, core, pq)
    if audit is not None:
        _audit_routes(app, hop, audit)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


def _authz_routes(app: FastAPI, hop: HopEnd, authz: AuthorizationServer) -> None:
    """The patient's side of authorization, in hop envelopes (wallet → platform)."""

    def route(
        path: str,
        expected: type[M],
        reply: type[Message],
        handler: Callable[[Incoming[M]], Message],
        summary: str,
    ) -> None:
        envelope_route(
            app, path, hop=hop, expected=expected, handler=handler, reply=reply, summary=summary
        )

    def enroll(incoming: Incoming[IdentityEnroll]) -> Message:
        return authz.enroll(incoming.sender, incoming.message, network=incoming.peer)

    def decide(incoming: Incoming[AuthzDecision]) -> Message:
        return authz.decide(incoming.sender, incoming.message, network=incoming.peer)

    def inbox(incoming: Incoming[InboxRequest]) -> Message:
        return authz.inbox(incoming.sender, incoming.message)

    def otp(incoming: Incoming[OtpSend]) -> Message:
        return authz.send_otp(incoming.sender, incoming.message)

    def grants(incoming: Incoming[GrantsRequest]) -> Message:
        return authz.grants(incoming.sender, incoming.message)

    def revoke(incoming: Incoming[GrantRevoke]) -> Message:
        return authz.revoke_grant(incoming.sender, incoming.message)

    route(IDENTITY_ENROLL, IdentityEnroll, IdentityState, enroll, "Enroll identity proofs")
    route(AUTHZ_INBOX, InboxRequest, Inbox, inbox, "Pending authorization requests (long poll)")
    route(AUTHZ_OTP, OtpSend, OtpSent, otp, "Send a one-time code for a pending request")
    route(AUTHZ_DECIDE, AuthzDecision, AuthzOutcome, decide, "Approve (with proofs) or deny")
    route(GRANTS_LIST, GrantsRequest, GrantList, grants, "The patient's grants")
    route(GRANTS_REVOKE, GrantRevoke, GrantList, revoke, "Revoke a grant")


def _audit_routes(app: FastAPI, hop: HopEnd, audit: TransparencyLog) -> None:
    """The transparency log: the wallet's sync in an envelope, heads and proofs in GETs."""

    def sync(incoming: Incoming[AuditSyncRequest]) -> Message:
        return audit.sync(incoming.sender, incoming.message)

    envelope_route(
        app,
        AUDIT_SYNC,
        hop=hop,
        expected=AuditSyncRequest,
        handler=sync,
        reply=AuditSync,
        summary="My events in the transparency log, with a signed head and proofs",
    )
    bad_size: dict[int | str, dict[str, Any]] = {
        400: {"content": {PROBLEM_JSON: {}}, "description": "a size or index outside the log"}
    }

    @app.get(AUDIT_STH, summary="The transparency log's latest signed tree head")
    async def audit_sth() -> AuditTreeHead:
        return AuditTreeHead.model_validate(await run_in_threadpool(audit.sth))

    @app.get(AUDIT_INCLUSION, summary="Inclusion proof of a leaf", responses=bad_size)
    async def audit_inclusion(index: Size, tree_size: Size) -> AuditInclusionProof:
        found = await run_in_threadpool(audit.inclusion, index, tree_size)
        return AuditInclusionProof.model_validate(found)

    @app.get(AUDIT_CONSISTENCY, summary="Consistency proof of two tree sizes", responses=bad_size)
    async def audit_consistency(first: Size, second: Size) -> AuditConsistencyProof:
        found = await run_in_threadpool(audit.consistency, first, second)
        return AuditConsistencyProof.model_validate(found)


def _pq_routes(app: FastAPI, core: PlatformCore, pq: PqExchanges) -> None:
    public = PqPublic(public=base64.urlsafe_b64encode(pq.public).rstrip(b"=").decode("ascii"))
    problems: dict[int | str, dict[str, Any]] = {
        code: {"content": {PROBLEM_JSON: {}}, "description": text}
        for code, text in (
            (400, "malformed init message"),
            (401, "no client certificate"),
            (403, "not a wallet"),
            (404, "unknown account"),
        )
    }

    @app.get(PQ_PUBLIC, summary="The platform's ML-KEM-768 + X25519 public key")
    async def pq_public() -> PqPublic:
        return public

    @app.post(
        PQ_EXCHANGE,
        summary="Answer a wallet's post-quantum key exchange",
        responses=problems,
    )
    async def pq_exchange(body: PqInit, caller: Caller) -> JSONResponse:
        if not core.is_wallet(caller):
            raise Forbidden("the post-quantum fallback is for wallets")
        exchange_id = await run_in_threadpool(pq.exchange, caller, body.init)
        return JSONResponse(PqExchangeReply(exchange_id=exchange_id).model_dump())
