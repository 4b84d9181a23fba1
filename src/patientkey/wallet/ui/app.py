"""The wallet's local web UI: a JSON API and a static page, served by the wallet process.

Keys never leave the process: the page only ever sees what the CLI prints (record
summaries decrypted here, request and grant metadata, the audit timeline). The
routes are thin: each takes the wallet lock, calls one :class:`WalletCore` /
:class:`~patientkey.wallet.authz.WalletAuthz` operation and turns its answer
into JSON; errors leave as RFC 9457 problem+json through the project's handlers.

Security model of a UI on loopback (docs/wallet-ui.md)::

    browser ── http://localhost:PORT ──► _Guard ──► routes ──► WalletAccess (lock) ──► WalletCore

* **Bound to 127.0.0.1 only** (:mod:`.server`); nothing else on the network reaches it.
* **Host check** (DNS rebinding): a page of another site whose name was re-pointed to
  127.0.0.1 sends its own name as ``Host``; only ``localhost:PORT`` and
  ``127.0.0.1:PORT`` are served.
* **A session token**, printed once in the URL (``/?t=TOKEN``, as Jupyter does), is
  exchanged for an ``HttpOnly; SameSite=Strict`` cookie and the browser is redirected
  to ``/`` so the token leaves the address bar. Other local users and other sites
  know neither.
* **CSRF**: every ``/api`` call needs the cookie *and* ``X-PatientKey-UI: 1``. A
  cross-site form or image cannot set a custom header, and a cross-site ``fetch``
  that sets one needs a CORS preflight this server never grants. An ``Origin``
  header, when sent, must be this origin.
* **No injection**: a strict Content-Security-Policy (scripts and styles only from
  ``/static``, no inline code, no framing), ``X-Frame-Options: DENY``; the page
  inserts every server string as text, never as HTML (request texts come from apps).
* **No caching** of API answers (``Cache-Control: no-store``): they hold health data.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from patientkey.audit import LogRewritten, ProofInvalid
from patientkey.errors import (
    ConfigError,
    Forbidden,
    InvalidInput,
    PatientKeyError,
    Unauthenticated,
)
from patientkey.protocol.messages import PendingRequest
from patientkey.service.http import BodyLimit, install_problem_handlers, problem_response
from patientkey.wallet.audit import AuditReport
from patientkey.wallet.authz import chosen_details, request_choices
from patientkey.wallet.core import WalletCore
from patientkey.wallet.disclosures import disclosures, disclosures_csv, disclosures_pdf

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "MAX_UI_INBOX_WAIT",
    "Opener",
    "WalletAccess",
    "create_ui_app",
    "wallet_access",
]

COOKIE: Final = "patientkey_ui"
CSRF_HEADER: Final = "X-PatientKey-UI"
MAX_UI_INBOX_WAIT: Final = 5
"""An inbox long poll holds the wallet lock: kept short so a click waits at most this long."""
MAX_BODY: Final = 128 * 1024  # a WebAuthn response is the largest body (a few KiB)
STATIC: Final = Path(__file__).resolve().parent / "static"

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the token never reaches another site
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)

Opener = Callable[[], AbstractContextManager[WalletCore]]


class WalletAccess:
    """The wallet, one caller at a time.

    :class:`WalletCore` is not thread-safe (it draws pool keys and rewrites the
    keystore), and FastAPI runs sync routes in a thread pool: every route, and
    anything else in the process that uses the same wallet (the demo, tests),
    goes through :meth:`use`. An ``Opener`` (such as a ``functools.partial`` of
    :func:`~patientkey.wallet.client.open_wallet`) is entered once per use.
    """

    def __init__(self, wallet: WalletCore | Opener) -> None:
        self._wallet = wallet
        self._lock = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[WalletCore]:
        with self._lock:
            if isinstance(self._wallet, WalletCore):
                yield self._wallet
            else:
                with self._wallet() as core:
                    yield core


def wallet_access(app: FastAPI) -> WalletAccess:
    """The :class:`WalletAccess` of an app made by :func:`create_ui_app`."""
    access = app.state.wallet
    assert isinstance(access, WalletAccess)
    return access


# ── the guard ─────────────────────────────────────────────────────────────────────


def _allowed_hosts(origin: str) -> tuple[frozenset[str], frozenset[str]]:
    parts = urlsplit(origin)
    if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1") or not parts.port:
        raise ConfigError(f"the UI origin must be http://localhost:PORT, not {origin!r}")
    hosts = frozenset({f"localhost:{parts.port}", f"127.0.0.1:{parts.port}"})
    return hosts, frozenset(f"http://{host}" for host in hosts)


class _Guard:
    """ASGI middleware: Host, session cookie, CSRF header and Origin; security headers."""

    def __init__(self, app: ASGIApp, *, origin: str, session: str) -> None:
        self.app = app
        self.hosts, self.origins = _allowed_hosts(origin)
        self.session = session

    def _refusal(self, scope: Scope) -> PatientKeyError | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if headers.get("host", "").lower() not in self.hosts:
            return Forbidden("this page is served only as localhost or 127.0.0.1")
        if not str(scope["path"]).startswith("/api/"):
            return None
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return Forbidden("cross-origin requests are refused")
        if headers.get(CSRF_HEADER.lower()) != "1":
            return Forbidden(f"API calls need the {CSRF_HEADER} header")
        cookie = Request(scope).cookies.get(COOKIE, "")
        if not hmac.compare_digest(cookie.encode(), self.session.encode()):
            return Unauthenticated("open the address printed by `patientkey wallet ui`")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = str(scope["path"]).startswith("/api/")

        async def secured(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                extra = list(_SECURITY_HEADERS)
                if api:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        refused = self._refusal(scope)
        if refused is not None:
            await problem_response(refused, scope["path"])(scope, receive, secured)
            return
        await self.app(scope, receive, secured)


# ── JSON shapes ───────────────────────────────────────────────────────────────────


def _jsonable(value: Any) -> Any:  # noqa: PLR0911 - one return per JSON kind
    """Dataclasses, pydantic models, enums and datetimes as JSON values (bytes as hex)."""
    if isinstance(value, BaseModel):
        return _jsonable(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def _request_json(request: PendingRequest) -> dict[str, Any]:
    """A pending request as the page shows it; ``choices`` are what it may narrow."""
    body = request.model_dump(mode="json", exclude={"nonce"})
    body["choices"] = request_choices(request)
    return body


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Choices(_Strict):
    """What the patient keeps of a request; None: everything asked."""

    actions: list[str] | None = Field(default=None, max_length=16)
    records: list[str] | None = Field(default=None, max_length=1000)
    duration: int | str | None = None


class ApproveBody(Choices):
    password: str | None = Field(default=None, max_length=1024)
    totp: str | None = Field(default=None, max_length=16)
    otp_challenge: str | None = Field(default=None, max_length=64)
    otp_code: str | None = Field(default=None, max_length=16)
    webauthn: str | None = Field(default=None, max_length=64 * 1024)  # assertion JSON


class OtpBody(_Strict):
    channel: Literal["sms", "email"]


class EnrollCodeBody(_Strict):
    code: str = Field(min_length=1, max_length=8192)


class IdentityBody(_Strict):
    password: str | None = Field(default=None, max_length=1024)
    current_password: str | None = Field(default=None, max_length=1024)
    totp: bool = False
    sms: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=254)


class CredentialBody(_Strict):
    credential: dict[str, Any]  # the browser's PublicKeyCredential, JSON form


def _blank(value: str | None) -> str | None:
    return value or None  # an empty form field is no proof


def _choices(request: PendingRequest, body: Choices) -> list[dict[str, Any]] | None:
    return chosen_details(
        request, actions=body.actions, records=body.records, duration=body.duration
    )


def _qr_data_uri(text: str) -> str:
    import segno  # pure Python; only needed when a TOTP secret is enrolled

    # An <img> data URI: the page needs no innerHTML for it, and CSP allows img data:.
    uri: str = segno.make(text, error="m", micro=False).svg_data_uri(scale=4, border=2)
    return uri


def _audit_json(
    report: AuditReport, state: str | None = None, problem: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The audit tab's data; ``state`` "rewritten" whenever evidence of a rewrite is held."""
    if state is None:
        state = "rewritten" if report.tampered else "verified"
    return {
        "state": state,
        "problem": problem,
        "head": _jsonable(report.head),
        "events": [e.to_json() for e in report.events],
        "evidence": _jsonable(report.evidence),
        "new_events": report.new_events,
        "disclosures": _jsonable(disclosures(report.events)),
    }


def _identity_json(core: WalletCore, state: Any) -> dict[str, Any]:
    return {
        "proofs": list(state.proofs),
        "device_key_id": core.authz.device_key_id,
        "device_enrolled": core.authz.device_enrolled,
        "webauthn_credentials": len(state.webauthn_credential_ids),
        "totp_uri": state.totp_uri,
        "totp_qr": None if state.totp_uri is None else _qr_data_uri(state.totp_uri),
    }


# ── the app ───────────────────────────────────────────────────────────────────────


def create_ui_app(wallet: WalletCore | Opener, *, token: str, origin: str) -> FastAPI:
    """The UI for ``wallet`` at ``origin`` (``http://localhost:PORT``), opened by ``token``."""
    if len(token) < 16:
        raise ConfigError("the UI token must be at least 16 characters")
    access = WalletAccess(wallet)
    session = secrets.token_urlsafe(32)  # the cookie: never the URL token itself
    app = FastAPI(title="PatientKey wallet UI", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.wallet = access
    install_problem_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _routes(app, access, token=token, session=session)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY)
    app.add_middleware(_Guard, origin=origin, session=session)
    return app


def _routes(app: FastAPI, access: WalletAccess, *, token: str, session: str) -> None:  # noqa: PLR0915 - a flat list of thin routes
    @app.get("/", include_in_schema=False)
    def index(t: Annotated[str | None, Query(max_length=256)] = None) -> Response:
        if t is None:
            return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})
        if not hmac.compare_digest(t.encode(), token.encode()):
            raise Unauthenticated("this link's token is not valid (see `patientkey wallet ui`)")
        # 303 to "/": the token leaves the address bar and history at once.
        redirect = RedirectResponse("/", status_code=303, headers={"cache-control": "no-store"})
        redirect.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
        return redirect

    # -- status and hospitals

    @app.get("/api/status")
    def status() -> dict[str, Any]:
        with access.use() as core:
            state = core.status()
            return {
                **_jsonable(state),
                "device_key_id": core.authz.device_key_id,
                "device_enrolled": core.authz.device_enrolled,
            }

    @app.post("/api/hospitals/enroll")
    def enroll(body: EnrollCodeBody) -> dict[str, Any]:
        with access.use() as core:
            done = core.enroll(body.code)
        return {"his_id": done.his_id, "patient_id": done.patient_id, "version": done.version}

    @app.post("/api/hospitals/{his_id}/bind")
    def bind(his_id: str) -> dict[str, Any]:
        with access.use() as core:
            core.bind(his_id)
        return {"his_id": his_id, "bound": True}

    @app.post("/api/hospitals/{his_id}/rotate")
    def rotate(his_id: str) -> dict[str, Any]:
        with access.use() as core:
            done = core.rotate(his_id)
        result: dict[str, Any] = _jsonable(done)
        return result

    # -- records

    @app.get("/api/records")
    def records() -> dict[str, Any]:
        with access.use() as core:
            listed = core.list_records()
            local = set(core.cached())
        return {
            "records": [
                {**e.model_dump(mode="json"), "in_wallet": (e.his_id, e.p_id) in local}
                for e in listed.records
            ]
        }

    @app.post("/api/records/{his_id}/{p_id}/fetch")
    def fetch(his_id: str, p_id: str) -> dict[str, Any]:
        with access.use() as core:
            core.fetch(his_id, p_id)
        return {"his_id": his_id, "p_id": p_id, "in_wallet": True}

    @app.get("/api/records/{his_id}/{p_id}")
    def record(his_id: str, p_id: str) -> dict[str, Any]:
        with access.use() as core:
            entry = core.record_status(his_id, p_id)
            if (his_id, p_id) not in set(core.cached()):
                core.fetch(his_id, p_id)  # opening a record fetches it, as `wallet show` needs
            view = core.show(p_id, his_id)
        return {
            "his_id": view.his_id,
            "p_id": view.p_id,
            "record_type": view.record_type,
            "summary": view.summary.as_dict(),
            "dispense": entry.dispense,
            "shared_with": entry.shared_with,
        }

    # -- authorization requests

    @app.get("/api/inbox")
    def inbox(wait: Annotated[int, Query(ge=0, le=MAX_UI_INBOX_WAIT)] = 0) -> dict[str, Any]:
        with access.use() as core:
            pending = core.authz.inbox(wait, per_call=max(1, wait))
            enrolled = core.authz.device_enrolled
        return {"requests": [_request_json(r) for r in pending], "device_enrolled": enrolled}

    @app.post("/api/inbox/{request_id}/otp")
    def otp(request_id: str, body: OtpBody) -> dict[str, Any]:
        with access.use() as core:
            sent = core.authz.send_otp(request_id, body.channel)
        return sent.model_dump(mode="json")

    @app.post("/api/inbox/{request_id}/approve")
    def approve(request_id: str, body: ApproveBody) -> dict[str, Any]:
        if (body.otp_challenge is None) != (body.otp_code is None):
            raise InvalidInput("a one-time code needs its challenge (send the code first)")
        with access.use() as core:
            request = core.authz.pending(request_id)
            approved = _choices(request, body)
            outcome = core.authz.approve(
                request,
                approved_details=approved,
                password=_blank(body.password),
                totp=_blank(body.totp),
                otp=None
                if body.otp_challenge is None or body.otp_code is None
                else (body.otp_challenge, body.otp_code),
                # The device key signs whenever it is enrolled: one more factor, no typing.
                device=core.authz.device_enrolled,
                webauthn=_blank(body.webauthn),
            )
        return {**outcome.model_dump(mode="json"), "narrowed": approved is not None}

    @app.post("/api/inbox/{request_id}/deny")
    def deny(request_id: str) -> dict[str, Any]:
        with access.use() as core:
            outcome = core.authz.deny(request_id)
        return outcome.model_dump(mode="json")

    @app.post("/api/inbox/{request_id}/webauthn")
    def webauthn_options(request_id: str, body: Choices) -> dict[str, Any]:
        with access.use() as core:
            request = core.authz.pending(request_id)
            text = core.authz.webauthn_request_options(request, _choices(request, body))
        return {"options": _json_object(text)}

    # -- grants

    @app.get("/api/grants")
    def grants() -> dict[str, Any]:
        with access.use() as core:
            listed = core.authz.grants()
        return {"grants": [g.model_dump(mode="json") for g in listed]}

    @app.post("/api/grants/{grant_id}/revoke")
    def revoke(grant_id: str) -> dict[str, Any]:
        with access.use() as core:
            grant = core.authz.revoke(grant_id)
        return grant.model_dump(mode="json")

    # -- identity proofs

    @app.get("/api/identity")
    def identity() -> dict[str, Any]:
        with access.use() as core:  # local only: what this wallet holds
            return {
                "device_key_id": core.authz.device_key_id,
                "device_enrolled": core.authz.device_enrolled,
            }

    @app.post("/api/identity")
    def enroll_identity(body: IdentityBody) -> dict[str, Any]:
        with access.use() as core:
            state = core.authz.enroll_identity(
                password=_blank(body.password),
                current_password=_blank(body.current_password),
                totp=body.totp,
                sms=_blank(body.sms),
                email=_blank(body.email),
            )
            return _identity_json(core, state)

    @app.post("/api/identity/webauthn/begin")
    def webauthn_begin() -> dict[str, Any]:
        with access.use() as core:
            text = core.authz.webauthn_begin()
        return {"options": _json_object(text)}

    @app.post("/api/identity/webauthn/finish")
    def webauthn_finish(body: CredentialBody) -> dict[str, Any]:
        with access.use() as core:
            state = core.authz.webauthn_register(json.dumps(body.credential))
            return _identity_json(core, state)

    # -- audit

    @app.get("/api/audit")
    def audit_held() -> dict[str, Any]:
        with access.use() as core:  # offline: what the wallet verified before
            return _audit_json(core.audit.report())

    @app.post("/api/audit/sync")
    def audit_sync() -> dict[str, Any]:
        with access.use() as core:
            try:
                return _audit_json(core.audit.sync())
            except ProofInvalid as exc:
                # Not an error of this UI but the verdict the patient must see, with the
                # evidence; the timeline verified before stays valid and is shown with it.
                held = core.audit.report()
                rewritten = isinstance(exc, LogRewritten) or held.tampered
                return _audit_json(
                    held, "rewritten" if rewritten else "unverified", exc.to_problem()
                )

    @app.get("/api/audit/disclosures.csv")
    def download_csv() -> Response:
        with access.use() as core:
            rows = disclosures(core.audit.timeline())
        text = disclosures_csv(rows)
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="disclosures.csv"'},
        )

    @app.get("/api/audit/disclosures.pdf")
    def download_pdf() -> Response:
        with access.use() as core:
            user = core.user_id
            rows = disclosures(core.audit.timeline())
        pdf = disclosures_pdf(
            rows, title=f"Accounting of disclosures: {user}", generated_at=datetime.now(UTC)
        )
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"content-disposition": 'attachment; filename="disclosures.pdf"'},
        )

    @app.get("/api/audit/fhir")
    def audit_fhir() -> Response:
        with access.use() as core:
            bundle = core.audit.fhir_bundle()
        return Response(
            json.dumps(bundle, ensure_ascii=False),
            media_type="application/fhir+json",
            headers={"content-disposition": 'attachment; filename="audit-bundle.json"'},
        )


def _json_object(text: object) -> dict[str, Any]:
    value = json.loads(text) if isinstance(text, str | bytes) else text
    if not isinstance(value, dict):
        raise ConfigError("the wallet produced WebAuthn options that are not a JSON object")
    return value
