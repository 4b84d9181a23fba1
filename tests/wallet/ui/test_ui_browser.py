"""The wallet UI in a real browser (Debian's headless Chromium driven by Playwright) against
the real services: KME, platform, hospital and pharmacy as separate HTTPS processes.

One deployment, one wallet and one page per module (per xdist worker). Each test makes
the state it needs (its own request, its own grant), so the tests pass in any split:
with pytest 9.2, xdist 3.8's ``loadgroup`` does not keep a group on one worker. The
test that alters the platform's log comes last. The wallet is shared with the UI
server, so this module touches it only through the UI's lock (``server.wallet.use()``).
With ``PATIENTKEY_SCREENSHOTS=1`` each tab is saved to ``docs/screenshots/``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from patientkey.demo.network import PATIENT_PASSWORD, Network
from patientkey.fhir.records import load_record
from patientkey.fhir.synthetic import write_bundles
from patientkey.wallet.ui import UiServer

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wallet-ui-browser")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The UI listens on 127.0.0.1 only; "localhost" must not try ::1 first.
    "--host-resolver-rules=MAP localhost 127.0.0.1",
]
SHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
TIMEOUT_MS = 30_000


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require_chromium() -> None:
    if CHROMIUM.is_file():
        return
    if _in_ci():
        pytest.fail(f"CI is set and {CHROMIUM} is missing (.ci/run installs Debian's chromium)")
    pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium); no download")


def shot(page: Page, name: str) -> None:
    """Save the page as docs/screenshots/NAME.png when PATIENTKEY_SCREENSHOTS=1."""
    if os.environ.get("PATIENTKEY_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


@dataclass
class Setup:
    net: Network
    server: UiServer
    page: Page
    authenticator: Any  # pyotp.TOTP of the patient's authenticator app
    p_ids: list[str]
    medications: set[str]

    @property
    def his(self) -> str:
        return self.net.names.hospital

    def ask(self, p_ids: list[str], message: str) -> str:
        """The pharmacy asks for these records (CIBA, --no-wait), showing binding ``message``
        (it tells the requests apart on the page); its auth_req_id."""
        out = self.net.cli(
            "thirdparty", "authorize", "--config", str(self.net.config(self.net.names.pharmacy)),
            "--user", self.net.names.user,
            *(arg for p in p_ids for arg in ("--record", f"{self.his}:{p}")),
            "--purpose", "pharmacy_dispense", "--record-type", "prescription",
            "--binding-message", message, "--no-wait",
        )  # fmt: skip
        return next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("auth_req_id")
        )

    def token(self, auth_req_id: str) -> str:
        """The pharmacy collects the token the patient's decision gave it."""
        config = str(self.net.config(self.net.names.pharmacy))
        return self.net.cli("thirdparty", "token", "--config", config, "--wait", "--", auth_req_id)

    def grant_ids(self) -> set[str]:
        with self.server.wallet.use() as core:
            return {g.grant_id for g in core.authz.grants() if g.status == "active"}

    def approved_in_the_wallet(self, p_ids: list[str], message: str) -> str:
        """A request approved through the wallet library (password + device): its grant."""
        self.ask(p_ids, message)
        with self.server.wallet.use() as core:
            (request,) = [r for r in core.authz.inbox(wait=10) if r.binding_message == message]
            outcome = core.authz.approve(request, password=PATIENT_PASSWORD)
        assert outcome.grant_id is not None
        return outcome.grant_id

    def tab(self, name: str) -> None:
        """Show tab ``name`` and wait until its data loaded without an error."""
        self.page.click(f"nav [data-tab={name}]")
        expect(self.page.locator(f"#tab-{name}")).to_have_attribute("aria-busy", "false")
        expect(self.page.locator("#notice .error")).to_have_count(0)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _require_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def setup(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A deployment, the patient's bound wallet with 3 prescriptions, its UI open in a page."""
    workdir = tmp_path_factory.mktemp("wallet-ui")
    with Network(workdir) as net:
        patient_id, code = net.enroll("Alice Example", "1980-02-03")
        write_bundles(workdir / "import", 3, seed=7)
        net.import_records(workdir / "import", patient_id)
        medications = {
            str(load_record(p).summary.as_dict().get("medication"))
            for p in (workdir / "import").glob("*.json")
        }
        with net.wallet() as wallet:
            wallet.enroll(code)
            wallet.bind(net.names.hospital)
            p_ids = sorted(r.p_id for r in wallet.list_records().records)
            authenticator = net.patient_identity(wallet)  # password, TOTP, device key
            with UiServer(wallet) as server:
                context = browser.new_context(
                    locale="en-US", viewport={"width": 1200, "height": 900}
                )
                page = context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                expect.set_options(timeout=TIMEOUT_MS)
                page.goto(server.url)
                expect(page.locator("body")).to_have_attribute("data-ready", "true")
                yield Setup(net, server, page, authenticator, p_ids, medications)
                context.close()


def test_the_token_link_logs_in_and_leaves_the_address_bar(setup: Setup):
    """After the token link the page is at / (no token in the URL) and shows the patient."""
    page = setup.page
    assert page.url == f"{setup.server.origin}/"
    expect(page.locator("#who")).to_contain_text(setup.net.names.user)
    expect(page.locator("#locked")).to_be_hidden()


def test_approve_part_of_a_request_with_totp(setup: Setup):
    """A pharmacy's request appears by itself; approving one of its two records with TOTP works."""
    page = setup.page
    setup.tab("inbox")
    before = setup.grant_ids()
    auth_req_id = setup.ask(setup.p_ids[:2], "counter 3")
    card = page.locator("article.request", has_text="counter 3")
    expect(card).to_have_count(1)  # the page's long poll brought it in
    shot(page, "inbox")
    card.locator(f"input[name=record][value='{setup.p_ids[1]}']").uncheck()
    card.locator("input[name=totp]").fill(setup.authenticator.now())
    card.locator("button.approve").click()
    expect(page.locator("#notice")).to_contain_text("Approved less than was asked")
    expect(card).to_have_count(0)
    token = setup.token(auth_req_id)  # the pharmacy sees what was granted, no more
    assert token.startswith("granted:")
    assert setup.p_ids[0] in token
    assert setup.p_ids[1] not in token
    (grant_id,) = setup.grant_ids() - before
    with setup.server.wallet.use() as core:
        (grant,) = [g for g in core.authz.grants() if g.grant_id == grant_id]
    assert grant.authorization_details[0]["records"]["ids"] == [setup.p_ids[0]]
    assert {"totp", "device_signature"} <= set(grant.proofs)


def test_open_a_prescription_decrypted_in_the_wallet(setup: Setup):
    """The list shows the records; opening one shows its medication, decrypted locally."""
    page = setup.page
    setup.tab("prescriptions")
    rows = page.locator("table.records tbody tr")
    expect(rows).to_have_count(len(setup.p_ids))
    shot(page, "prescriptions")
    rows.filter(has_text=setup.p_ids[0]).locator("button.open").click()
    detail = page.locator("#record-detail article")
    expect(detail).to_contain_text(setup.p_ids[0])
    expect(detail).to_contain_text("Decrypted here")
    expect(detail.locator("dt").first).to_have_text("Medication")  # the summary comes first
    assert detail.locator("dd[data-field=medication]").inner_text() in setup.medications
    shot(page, "prescription-detail")
    expect(rows.filter(has_text=setup.p_ids[0]).locator("td").nth(3)).to_have_text("yes")


def test_revoke_a_grant(setup: Setup):
    """An active grant is listed; Revoke moves it to the past grants, revoked at the platform."""
    page = setup.page
    grant_id = setup.approved_in_the_wallet(setup.p_ids[1:2], "counter 5")
    setup.tab("grants")
    card = page.locator(f".grants.active article.grant[data-grant-id='{grant_id}']")
    expect(card).to_have_count(1)
    shot(page, "grants")
    card.locator("button.revoke").click()
    expect(page.locator("#notice")).to_contain_text("Revoked the grant")
    expect(
        page.locator(f".grants.past article.grant.revoked[data-grant-id='{grant_id}']")
    ).to_have_count(1)
    with setup.server.wallet.use() as core:
        assert [g.status for g in core.authz.grants() if g.grant_id == grant_id] == ["revoked"]


def test_register_a_passkey_and_approve_with_it(setup: Setup):
    """Chromium's virtual authenticator: register a passkey, then approve a request with it."""
    page = setup.page
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    setup.tab("hospitals")
    page.click("button.register-passkey")
    expect(page.locator("#notice")).to_contain_text("Passkey registered")
    expect(page.locator(".proofs-enrolled")).to_contain_text("passkey")
    shot(page, "hospitals")
    before = setup.grant_ids()
    auth_req_id = setup.ask(setup.p_ids[2:3], "counter 7")
    setup.tab("inbox")
    card = page.locator("article.request", has_text="counter 7")
    expect(card).to_have_count(1)
    card.locator("button.passkey").click()
    expect(page.locator("#notice")).to_contain_text("Approved for")
    assert setup.token(auth_req_id).startswith("granted:")
    (grant_id,) = setup.grant_ids() - before
    with setup.server.wallet.use() as core:
        (grant,) = [g for g in core.authz.grants() if g.grant_id == grant_id]
    assert "webauthn" in grant.proofs


def test_switch_to_chinese_and_back(setup: Setup):
    """中文 relabels the page from zh-CN.json and is remembered across a reload."""
    page = setup.page
    page.click("button[data-lang='zh-CN']")
    expect(page.locator("nav [data-tab=inbox]")).to_have_text("待办请求")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    setup.tab("grants")
    expect(page.locator("#tab-grants h2").first).to_have_text("有效授权")
    shot(page, "zh-CN")
    page.reload()
    expect(page.locator("nav [data-tab=grants]")).to_have_text("授权")
    page.click("button[data-lang='en']")
    expect(page.locator("nav [data-tab=grants]")).to_have_text("Grants")


def test_audit_timeline_is_verified(setup: Setup):
    """The audit tab syncs the log: every event of the patient carries the verified mark."""
    page = setup.page
    setup.tab("audit")
    expect(page.locator("#notice")).to_contain_text("Log checked again")
    marks = page.locator("table.timeline td.mark")
    assert marks.count() > 3
    assert set(marks.all_inner_texts()) == {"✔"}
    expect(page.locator("#audit-banner")).to_have_count(0)
    expect(page.locator("table.timeline")).to_contain_text("account bound to a hospital")
    shot(page, "audit")


def test_a_tampered_log_is_flagged(setup: Setup):
    """One of the patient's events altered in the platform's database: a red banner."""
    with setup.server.wallet.use() as core:
        core.audit.sync()  # the wallet holds the bind event as verified before it is altered
    database = setup.net.db_url("platform").removeprefix("sqlite:///")
    with sqlite3.connect(database, timeout=30) as db:
        (seq,) = db.execute(
            "SELECT seq FROM event_log WHERE user_id = ? AND kind = 'bind' ORDER BY seq LIMIT 1",
            (setup.net.names.user,),
        ).fetchone()
        db.execute(
            "UPDATE event_log SET detail = ? WHERE seq = ?",
            (json.dumps({"his_id": "hospital-evil"}), seq),
        )
    db.close()
    page = setup.page
    setup.tab("audit")
    banner = page.locator("#audit-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("rewritten")
    with setup.server.wallet.use() as core:
        report = core.audit.report()
    (evidence,) = report.evidence
    # The wallet names the altered leaf: the bind event, which it still holds as verified.
    assert [e.kind for e in report.events if e.index == evidence.index] == ["bind"]
    expect(page.locator(f"tr.altered[data-index='{evidence.index}']")).to_have_count(1)
    shot(page, "audit-tampered")
    page.click("button.sync")  # a later sync keeps showing it: the evidence is kept
    expect(banner).to_be_visible()
