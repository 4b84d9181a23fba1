"""The wallet UI's HTTP layer: its guard (token, cookie, CSRF header, Host, Origin) and API shapes.

The wallet behind it is a real :class:`WalletCore` on disk talking to the in-process
``wallet_fakes.FakePlatform`` with ``authz_fakes.FakeAuthz`` mounted, so approvals are
checked by real verifiers (TOTP, device signature over the narrowed details).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pyotp
import pytest
from authz_fakes import FakeAuthz
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner
from wallet_fakes import HIS, PASSPHRASE, World

from patientkey.audit import EMPTY_ROOT, LogRewritten, ProofInvalid, TreeHead, sign_tree_head
from patientkey.fhir.records import load_record
from patientkey.protocol.messages import AuthzDecision
from patientkey.wallet import cli as wallet_cli
from patientkey.wallet import client
from patientkey.wallet.audit import AuditHead, AuditReport, TimelineEvent
from patientkey.wallet.store import AuditEvidence
from patientkey.wallet.ui import UiServer, WalletAccess, create_ui_app, wallet_access
from patientkey.wallet.ui.app import COOKIE, CSP, MAX_BODY, STATIC

PORT = 8765
ORIGIN = f"http://localhost:{PORT}"
TOKEN = "t" * 12 + "-0123456789abcdef"
HEADER = {"X-PatientKey-UI": "1"}
PASSWORD = "a long enough password"


class Ui:
    """Alice's bound wallet, served by the UI app; ``client`` is logged in."""

    def __init__(
        self, world: World, bodies: list[bytes], make: Callable[..., httpx.Client]
    ) -> None:
        self.world = world
        self.make = make
        self.fake = FakeAuthz()
        self.fake.mount(world.platform)
        self.wallet = world.ready(keys=80)
        self.bodies = bodies
        for i, body in enumerate(bodies[:2], start=1):
            world.add_record(f"rx-{i}", body)
        self.app = create_ui_app(self.wallet, token=TOKEN, origin=ORIGIN)
        self.client = self.connect()
        assert self.client.get(f"/?t={TOKEN}").status_code == 303
        self.client.headers.update(HEADER)

    def connect(self, host: str = f"localhost:{PORT}") -> httpx.Client:
        """An in-process browser at ``http://host`` (no TLS: the UI is plain loopback HTTP)."""
        client = self.make(self.app, None)
        client.base_url = httpx.URL(f"http://{host}")
        return client

    def totp(self) -> str:
        assert self.fake.totp is not None
        return pyotp.TOTP(self.fake.totp.secret).at(self.fake.now)

    def enroll(self) -> dict[str, Any]:
        answer = self.client.post("/api/identity", json={"password": PASSWORD, "totp": True})
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


@pytest.fixture
def ui(world: World, synthetic_bodies: list[bytes], asgi_client: Callable[..., httpx.Client]) -> Ui:
    return Ui(world, synthetic_bodies, asgi_client)


def anonymous(ui: Ui, host: str = f"localhost:{PORT}") -> httpx.Client:
    return ui.connect(host)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


# ── the guard ─────────────────────────────────────────────────────────────────────


def test_the_url_token_becomes_a_strict_httponly_cookie_and_leaves_the_address_bar(ui: Ui):
    """/?t=TOKEN answers 303 to / with an HttpOnly SameSite=Strict cookie that is not the token."""
    answer = anonymous(ui).get(f"/?t={TOKEN}")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert TOKEN not in cookie


def test_a_wrong_token_is_refused_with_401_problem_json(ui: Ui):
    """A guessed token gets 401 problem+json and no cookie."""
    answer = anonymous(ui).get("/?t=" + "x" * 30)
    problem(answer, 401)
    assert "set-cookie" not in answer.headers


def test_the_api_needs_the_session_cookie(ui: Ui):
    """With the CSRF header but no cookie, an API call is 401 and reaches no route."""
    problem(anonymous(ui).get("/api/status", headers=HEADER), 401)
    client = anonymous(ui)
    client.cookies.set(COOKIE, "forged-session")
    problem(client.get("/api/grants", headers=HEADER), 401)


def test_the_api_needs_the_csrf_header_even_with_the_cookie(ui: Ui):
    """A logged-in browser's cross-site form post (no custom header) is 403."""
    del ui.client.headers["X-PatientKey-UI"]
    problem(ui.client.post("/api/grants/g-1/revoke"), 403)
    problem(ui.client.get("/api/status", headers={"X-PatientKey-UI": "0"}), 403)


@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{PORT}", "localhost:1", "[::1]"])
def test_a_foreign_host_header_is_refused_everywhere(ui: Ui, host: str):
    """DNS rebinding: any Host but localhost:PORT / 127.0.0.1:PORT is 403, page and API alike."""
    for path in ("/", "/static/app.js", "/api/status"):
        problem(ui.client.get(path, headers={"host": host}), 403)


def test_127_0_0_1_is_served_like_localhost(ui: Ui):
    """The numeric loopback name passes the Host check."""
    assert anonymous(ui, f"127.0.0.1:{PORT}").get("/").status_code == 200


def test_a_cross_origin_request_is_refused(ui: Ui):
    """An Origin other than this UI's is 403 even with cookie and header."""
    problem(ui.client.get("/api/status", headers={"origin": "http://evil.example"}), 403)
    assert ui.client.get("/api/status", headers={"origin": ORIGIN}).status_code == 200


def test_every_response_carries_the_security_headers(ui: Ui):
    """CSP without inline code, no framing, nosniff; API answers are never cached."""
    for path in ("/", "/static/app.css", "/api/status"):
        answer = ui.client.get(path)
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    assert ui.client.get("/api/status").headers["cache-control"] == "no-store"
    assert "'unsafe-inline'" not in CSP
    assert "frame-ancestors 'none'" in CSP


def test_an_oversized_body_is_refused_with_413(ui: Ui):
    """A body above the UI's limit is refused before a route reads it."""
    problem(ui.client.post("/api/hospitals/enroll", content=b"x" * (MAX_BODY + 1)), 413)


def test_the_page_has_no_inline_script_style_or_handler():
    """index.html loads its code and style from /static only (what the CSP allows)."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert "<style" not in html
    assert re.search(r"\s(on[a-z]+|style)=", html) is None
    assert "://" not in html  # no CDN: a closed network


def test_the_static_code_never_parses_server_text_as_html():
    """app.js builds the DOM from text nodes: no innerHTML, outerHTML, insertAdjacentHTML, eval."""
    js = (STATIC / "app.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js


# ── i18n ──────────────────────────────────────────────────────────────────────────


def _strings(lang: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((STATIC / "i18n" / f"{lang}.json").read_text("utf-8"))
    return data


def test_english_and_chinese_have_the_same_keys_and_placeholders():
    """Every key exists in both files, non-empty, with the same {placeholders}."""
    en, zh = _strings("en"), _strings("zh-CN")
    assert sorted(en) == sorted(zh)
    for key in en:
        assert en[key].strip(), key
        assert zh[key].strip(), key
        assert set(re.findall(r"\{(\w+)\}", en[key])) == set(re.findall(r"\{(\w+)\}", zh[key])), key


def test_every_string_the_page_uses_is_in_the_files():
    """Each t("key") in app.js and each data-i18n key in index.html has an entry."""
    en = _strings("en")
    js = (STATIC / "app.js").read_text(encoding="utf-8")
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    used = set(re.findall(r'\bt\("([^"]+)"', js))
    used |= set(re.findall(r'data-i18n(?:-label)?="([^"]+)"', html))
    used |= set(re.findall(r'"((?:records|hospitals|audit)\.[A-Za-z]+)"', js))  # column lists
    assert len(used) > 60
    assert sorted(k for k in used if k not in en) == []
    assert _strings("zh-CN")["tab.inbox"] != en["tab.inbox"]


# ── API shapes ────────────────────────────────────────────────────────────────────


def test_status_shows_bindings_and_pool_but_never_key_bytes(ui: Ui):
    """/api/status: user, pool, hospitals with versions; nothing that looks like a key."""
    body = ui.client.get("/api/status").json()
    assert body["user_id"] == ui.wallet.user_id
    assert body["hospitals"][0]["his_id"] == HIS
    assert body["hospitals"][0]["bound"] is True
    assert body["pool_remaining"] > 0
    assert not re.search(r"[0-9a-f]{64}|[A-Za-z0-9_-]{43}=?", json.dumps(body))


def test_records_list_and_an_opened_record_is_decrypted_locally(ui: Ui):
    """The list shows both records; opening one fetches it and shows its medication."""
    listed = ui.client.get("/api/records").json()["records"]
    assert {(r["his_id"], r["p_id"], r["in_wallet"]) for r in listed} == {
        (HIS, "rx-1", False),
        (HIS, "rx-2", False),
    }
    detail = ui.client.get(f"/api/records/{HIS}/rx-1").json()
    expected = load_record(ui.bodies[0], name="rx-1").summary.as_dict()
    assert detail["summary"] == expected
    assert detail["summary"]["medication"]
    assert detail["record_type"] == "prescription"
    again = ui.client.get("/api/records").json()["records"]
    assert {r["p_id"] for r in again if r["in_wallet"]} == {"rx-1"}


def test_a_record_of_another_hospital_is_a_404_problem(ui: Ui):
    """An unknown record is reported as problem+json, not a 500."""
    problem(ui.client.get("/api/records/his-9/rx-1"), 404)


def test_identity_enrollment_shows_the_totp_secret_once_as_a_qr_image(ui: Ui):
    """POST /api/identity enrolls password + TOTP + device key; the QR is an SVG data URI."""
    body = ui.enroll()
    assert {"password", "totp", "device_signature"} <= set(body["proofs"])
    assert body["device_enrolled"] is True
    assert body["totp_uri"].startswith("otpauth://totp/")
    assert body["totp_qr"].startswith("data:image/svg+xml")
    assert PASSWORD not in json.dumps(body)
    local = ui.client.get("/api/identity").json()
    assert local == {"device_key_id": body["device_key_id"], "device_enrolled": True}


def test_the_inbox_shows_who_what_why_and_the_choices(ui: Ui):
    """A pending request comes with its choices (actions, records, longest duration), no nonce."""
    ui.fake.ask()
    body = ui.client.get("/api/inbox").json()
    (request,) = body["requests"]
    assert request["client_name"] == "Apotheke am Markt"
    assert request["binding_message"] == "BLUE-FOX-7"
    assert request["choices"] == {
        "actions": ["view", "fetch", "use"],
        "records": ["rx-1", "rx-2", "rx-3"],
        "duration": 30 * 86400,
    }
    assert "nonce" not in request
    problem(ui.client.get("/api/inbox?wait=60"), 400)  # the lock is never held that long


def test_a_request_the_wallet_cannot_parse_is_listed_without_choices(ui: Ui):
    """Odd authorization_details from the platform do not turn the inbox into a 500."""
    request = ui.fake.ask()
    odd = [{"type": "health_record_access", "records": "all", "actions": "view"}]
    ui.fake.pending[request.request_id] = request.model_copy(update={"authorization_details": odd})
    answer = ui.client.get("/api/inbox")
    assert answer.status_code == 200, answer.text
    (listed,) = answer.json()["requests"]
    assert listed["choices"] == {"actions": [], "records": [], "duration": None}


def test_approving_part_of_a_request_with_totp_signs_the_narrowed_grant(ui: Ui):
    """Fewer actions and records and a shorter duration, TOTP + device signature: verified."""
    ui.enroll()
    request = ui.fake.ask()
    answer = ui.client.post(
        f"/api/inbox/{request.request_id}/approve",
        json={"actions": ["view"], "records": ["rx-2"], "duration": 86400, "totp": ui.totp()},
    )
    assert answer.status_code == 200, answer.text
    outcome = answer.json()
    assert outcome["state"] == "approved"
    assert outcome["narrowed"] is True
    (granted,) = outcome["authorization_details"]
    assert (granted["actions"], granted["records"]["ids"], granted["duration"]) == (
        ["view"],
        ["rx-2"],
        86400,
    )
    (decision,) = ui.fake.of(AuthzDecision)[-1:]
    assert decision.proofs.totp is not None
    assert decision.proofs.device_signature is not None  # the enrolled device key signed
    assert ui.fake.grants[outcome["grant_id"]].proofs == ["device_signature", "totp"]


def test_approving_everything_sends_no_narrowed_details(ui: Ui):
    """No choices: the request is approved as asked (authorization_details None on the wire)."""
    ui.enroll()
    request = ui.fake.ask()
    answer = ui.client.post(
        f"/api/inbox/{request.request_id}/approve", json={"password": PASSWORD, "totp": ""}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["narrowed"] is False
    assert ui.fake.of(AuthzDecision)[-1].authorization_details is None


def test_a_choice_outside_the_request_is_refused_before_anything_is_sent(ui: Ui):
    """Asking for a record the app did not ask for is 400; no decision reaches the platform."""
    ui.enroll()
    request = ui.fake.ask()
    body = problem(
        ui.client.post(
            f"/api/inbox/{request.request_id}/approve",
            json={"records": ["rx-9"], "totp": ui.totp()},
        ),
        400,
    )
    assert "rx-9" in body["detail"]
    assert ui.fake.of(AuthzDecision) == []


def test_a_one_time_code_needs_its_challenge(ui: Ui):
    """otp_code without otp_challenge is 400 (the page sends the code first)."""
    request = ui.fake.ask()
    problem(
        ui.client.post(f"/api/inbox/{request.request_id}/approve", json={"otp_code": "123456"}),
        400,
    )


def test_an_sms_code_is_sent_and_approves(ui: Ui):
    """/otp sends a code to the enrolled phone; approving with it passes the platform's check."""
    ui.client.post("/api/identity", json={"password": PASSWORD, "sms": "+4915112345678"})
    request = ui.fake.ask()
    sent = ui.client.post(f"/api/inbox/{request.request_id}/otp", json={"channel": "sms"}).json()
    code = ui.fake.sent[-1][2]
    answer = ui.client.post(
        f"/api/inbox/{request.request_id}/approve",
        json={"otp_challenge": sent["challenge_id"], "otp_code": code, "password": PASSWORD},
    )
    assert answer.status_code == 200, answer.text
    assert "otp_sms" in ui.fake.grants[answer.json()["grant_id"]].proofs


def test_deny_then_the_request_is_gone(ui: Ui):
    """Denying needs no proof; the inbox is empty afterwards."""
    request = ui.fake.ask()
    assert ui.client.post(f"/api/inbox/{request.request_id}/deny").json()["state"] == "denied"
    assert ui.client.get("/api/inbox").json()["requests"] == []
    problem(ui.client.post(f"/api/inbox/{request.request_id}/deny"), 404)


def test_grants_are_listed_and_revoked(ui: Ui):
    """An approved grant is listed active; revoking it shows it revoked."""
    ui.enroll()
    request = ui.fake.ask()
    grant_id = ui.client.post(
        f"/api/inbox/{request.request_id}/approve", json={"totp": ui.totp()}
    ).json()["grant_id"]
    (listed,) = ui.client.get("/api/grants").json()["grants"]
    assert (listed["grant_id"], listed["status"]) == (grant_id, "active")
    revoked = ui.client.post(f"/api/grants/{grant_id}/revoke").json()
    assert revoked["status"] == "revoked"
    assert ui.client.get("/api/grants").json()["grants"][0]["status"] == "revoked"


def test_rotate_moves_the_hospital_key_to_version_2(ui: Ui):
    """The Hospitals tab's rotate button: KUH v1 -> v2, committed."""
    body = ui.client.post(f"/api/hospitals/{HIS}/rotate").json()
    assert (body["old_version"], body["new_version"], body["committed"]) == (1, 2, True)
    status = ui.client.get("/api/status").json()
    assert status["hospitals"][0]["versions"] == [1, 2]


def test_a_bad_enrollment_code_is_a_400_problem(ui: Ui):
    """Garbage in the enrollment box is refused as invalid input."""
    problem(ui.client.post("/api/hospitals/enroll", json={"code": "PKENROLL1.nope"}), 400)


def test_passkey_routes_return_the_wallets_options_as_json(ui: Ui, monkeypatch: pytest.MonkeyPatch):
    """begin/options answer the wallet's WebAuthn JSON as objects; finish passes the credential."""
    authz = ui.wallet.authz
    seen: list[Any] = []
    monkeypatch.setattr(authz, "webauthn_begin", lambda: '{"challenge": "abc", "rp": {}}')

    def register(text: str) -> Any:
        seen.append(json.loads(text))
        return SimpleNamespace(proofs=["webauthn"], totp_uri=None, webauthn_credential_ids=["c"])

    monkeypatch.setattr(authz, "webauthn_register", register)
    monkeypatch.setattr(
        authz,
        "webauthn_request_options",
        lambda request, approved_details=None: json.dumps(
            {"challenge": request.request_id, "narrowed": approved_details is not None}
        ),
    )
    begin = ui.client.post("/api/identity/webauthn/begin").json()
    assert begin["options"] == {"challenge": "abc", "rp": {}}
    finish = ui.client.post("/api/identity/webauthn/finish", json={"credential": {"id": "c"}})
    assert finish.json()["proofs"] == ["webauthn"]
    assert seen == [{"id": "c"}]
    request = ui.fake.ask()
    options = ui.client.post(
        f"/api/inbox/{request.request_id}/webauthn", json={"actions": ["view"]}
    ).json()
    assert options["options"] == {"challenge": request.request_id, "narrowed": True}


# ── audit (WalletAudit faked here to reach every verdict; the browser test runs the real one) ──


def _head(size: int, key: Ed25519PrivateKey) -> Any:
    root = EMPTY_ROOT if size == 0 else bytes([size]) * 32
    head = TreeHead(size=size, root_hash=root, timestamp_ms=1_700_000_000_000)
    return sign_tree_head(key, head, "log")


EVENT = TimelineEvent(
    index=3,
    at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    kind="share.deliver",
    detail={"his_id": HIS, "p_id": "rx-1", "b_id": "pharmacy-1"},
    verified=True,
)
HEAD = AuditHead(
    log_id="log", size=4, timestamp=datetime(2026, 1, 2, tzinfo=UTC), root_hash="ab" * 32
)


class FakeAudit:
    """``sync`` raises ``error`` if given; ``report`` is what the wallet verified before."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.held = AuditReport(head=HEAD, events=(EVENT,), evidence=())

    def sync(self) -> AuditReport:
        if self.error is not None:
            raise self.error
        return AuditReport(head=HEAD, events=(EVENT,), evidence=(), new_events=1)

    def report(self) -> AuditReport:
        return self.held


@pytest.fixture
def audited(ui: Ui, monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeAudit], None]:
    def install(audit: FakeAudit) -> None:
        monkeypatch.setattr(type(ui.wallet), "audit", property(lambda _self: audit))

    return install


def test_audit_sync_lists_verified_events_and_disclosures(ui: Ui, audited: Any):
    """A verified sync: each event with its verified flag, times as ISO 8601, head, disclosures."""
    audited(FakeAudit())
    body = ui.client.post("/api/audit/sync").json()
    assert body["state"] == "verified"
    assert body["events"] == [
        {
            "index": 3,
            "at": "2026-01-02T03:04:05+00:00",
            "kind": "share.deliver",
            "detail": {"his_id": HIS, "p_id": "rx-1", "b_id": "pharmacy-1"},
            "verified": True,
        }
    ]
    assert body["head"]["size"] == 4
    assert body["head"]["timestamp"] == "2026-01-02T00:00:00+00:00"
    assert body["new_events"] == 1
    (row,) = body["disclosures"]
    assert row["recipient"] == "pharmacy-1"
    assert row["index"] == 3


def test_a_rewritten_log_is_reported_with_both_signed_heads_and_the_old_timeline(
    ui: Ui, audited: Any
):
    """LogRewritten becomes state "rewritten" with the evidence; verified events stay shown."""
    key = Ed25519PrivateKey.generate()
    audited(FakeAudit(LogRewritten("root differs", old=_head(5, key), new=_head(5, key))))
    body = ui.client.post("/api/audit/sync").json()
    assert body["state"] == "rewritten"
    assert body["problem"]["type"].endswith("audit-log-rewritten")
    assert {"old_tree_head", "new_tree_head"} <= set(body["problem"])
    assert [e["index"] for e in body["events"]] == [3]


def test_a_proof_that_does_not_verify_is_reported_unverified(ui: Ui, audited: Any):
    """Any other ProofInvalid is state "unverified" (opaque detail), still not a 500."""
    audited(FakeAudit(ProofInvalid("bad inclusion proof")))
    body = ui.client.post("/api/audit/sync").json()
    assert body["state"] == "unverified"
    assert "inclusion" not in json.dumps(body["problem"])  # the reason stays in the local log


def test_a_failed_sync_while_evidence_is_held_still_reports_rewritten(ui: Ui, audited: Any):
    """A sync refused for any reason (e.g. a changed log key) keeps the held evidence's verdict."""
    audit = FakeAudit(ProofInvalid("the log key differs"))
    evidence = AuditEvidence(
        problem="audit-log-key-changed", reason="key changed", detected_at=1_700_000_000_000
    )
    audit.held = AuditReport(head=HEAD, events=(EVENT,), evidence=(evidence,))
    audited(audit)
    body = ui.client.post("/api/audit/sync").json()
    assert body["state"] == "rewritten"
    assert body["evidence"][0]["problem"] == "audit-log-key-changed"
    assert ui.client.get("/api/audit").json()["state"] == "rewritten"


def test_evidence_held_from_an_earlier_sync_keeps_the_banner(ui: Ui, audited: Any):
    """A wallet holding evidence reports "rewritten" even offline, with the evidence."""
    audit = FakeAudit()
    evidence = AuditEvidence(
        problem="audit-log-tampered",
        reason="leaf 2 changed",
        index=2,
        detected_at=1_700_000_000_000,
    )
    audit.held = AuditReport(head=HEAD, events=(EVENT,), evidence=(evidence,))
    audited(audit)
    body = ui.client.get("/api/audit").json()
    assert body["state"] == "rewritten"
    assert body["evidence"][0]["index"] == 2


def test_fresh_wallet_audit_downloads(ui: Ui):
    """Before any sync: the offline report is empty, CSV has a header, PDF and FHIR are valid."""
    held = ui.client.get("/api/audit").json()
    assert (held["state"], held["head"], held["events"]) == ("verified", None, [])
    csv = ui.client.get("/api/audit/disclosures.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv.headers["content-disposition"]
    pdf = ui.client.get("/api/audit/disclosures.pdf")
    assert pdf.content.startswith(b"%PDF-")
    bundle = ui.client.get("/api/audit/fhir").json()
    assert bundle["resourceType"] == "Bundle"


# ── the server ────────────────────────────────────────────────────────────────────


def test_the_server_listens_on_loopback_only_and_serves_the_token_link(ui: Ui):
    """UiServer binds 127.0.0.1, prints a localhost URL with the token, and serves it."""
    server = UiServer(ui.wallet)
    with server:
        assert server._socket.getsockname()[0] == "127.0.0.1"
        assert server.url.startswith(f"http://localhost:{server.port}/?t=")
        assert "t=" not in repr(server)
        with httpx.Client(follow_redirects=False) as http:
            answer = http.get(server.url)
            assert answer.status_code == 303
            assert http.get(f"{server.origin}/api/status", headers=HEADER).status_code == 200
        with wallet_access(server.app).use() as core:
            assert core is ui.wallet


def test_package_data_ships_the_static_files():
    """pyproject's package-data patterns cover every static file of the UI."""
    text = (Path(__file__).resolve().parents[3] / "pyproject.toml").read_text(encoding="utf-8")
    (line,) = [x for x in text.splitlines() if x.startswith("patientkey = [")]
    patterns = set(re.findall(r'"\*\*/\*\.(\w+)"', line))
    suffixes = {p.suffix.lstrip(".") for p in STATIC.rglob("*") if p.is_file()}
    assert suffixes <= patterns


def test_wallet_ui_command_prints_the_token_link_and_serves(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """`patientkey wallet ui --no-open` opens the wallet, prints the localhost link, serves."""
    world.init()
    monkeypatch.setattr(
        client, "open_wallet", functools.partial(client.open_wallet, http=world.platform.client())
    )
    monkeypatch.setattr(wallet_cli._out, "width", 300)
    served: list[str] = []
    opened: list[str] = []

    def serve(self: UiServer) -> None:
        # Instead of blocking until Ctrl-C: note what would be served, then return.
        assert wallet_access(self.app) is self.wallet
        served.append(self.url)
        self.stop()  # closes the listening socket, as the real serve() does on its way out

    monkeypatch.setattr(UiServer, "serve", serve)
    monkeypatch.setattr("webbrowser.open", opened.append)
    result = CliRunner().invoke(
        wallet_cli.app,
        ["ui", "--no-open", "--config", str(world.config)],
        env={"PATIENTKEY_PASSPHRASE": PASSPHRASE},
    )
    assert result.exit_code == 0, result.output
    (url,) = served
    assert re.fullmatch(r"http://localhost:\d+/\?t=[A-Za-z0-9_-]{43}", url)
    assert url in result.output
    assert opened == []


def test_an_opener_is_entered_per_use_and_uses_are_serialized():
    """WalletAccess(opener) opens the wallet for each use; a second caller waits for the first."""
    events: list[str] = []

    @contextlib.contextmanager
    def opener() -> Iterator[Any]:
        events.append("open")
        yield object()
        events.append("close")

    access = WalletAccess(opener)
    inside = threading.Event()
    release = threading.Event()

    def first() -> None:
        with access.use():
            inside.set()
            release.wait(5)
            events.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(5)

    def later() -> None:
        with access.use():
            events.append("second")

    second = threading.Thread(target=later)
    second.start()
    second.join(0.2)
    assert second.is_alive()  # held by the first caller
    release.set()
    thread.join(5)
    second.join(5)
    assert events == ["open", "first done", "close", "open", "second", "close"]
