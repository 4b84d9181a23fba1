"""The key-supply demo: two sites, a BB84 link, keys over ETSI GS QKD 014, then Eve.

Runs the embedded KME as a separate process serving ETSI GS QKD 014 over
mutual TLS. The platform (master SAE at site A) and the hospital (slave SAE at
site B) each talk to it with their own client certificate, exactly as they
would to a hardware KME. The platform seals a message under a QKD-derived hop
key; the hospital fetches the same key by ID and opens it. Then an
intercept-resend eavesdropper is switched on: every BB84 round sees a QBER
near 25 %, aborts, and the pool drains, so the platform gets no key and
refuses to send — nothing ever goes out unencrypted.

Returns a process exit code: 0 only if every step behaved as it must.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from patientkey.crypto import EnvelopeOpener, seal_envelope
from patientkey.demo import workdir as open_workdir
from patientkey.errors import CryptoError, KeyUnavailable
from patientkey.keysupply.etsi014 import Etsi014Client
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.keysupply.rekey import HopReceiver, HopSender, RekeyPolicy
from patientkey.kme.server import KmeProcess
from patientkey.pki import client_ssl_context, init_pki

__all__ = ["run"]

SITE_A, SITE_B = "KME_SITE_A", "KME_SITE_B"
PLATFORM, HOSPITAL, OPERATOR = "platform", "hospital-1", "operator"

_CONFIG = """\
host = "127.0.0.1"
port = 0
pki_dir = "pki"
server_name = "kme"
key_size = 256
admin_sae_ids = ["{operator}"]
refill_interval_s = 0.1
retry_interval_s = 0.2

[sites]
{a} = ["{platform}"]
{b} = ["{hospital}"]

[[links]]
a = "{a}"
b = "{b}"
low_watermark_bits = 16384
high_watermark_bits = 65536
[links.bb84]
pulses = 200000
noise = 0.02
"""


def run(workdir: Path | None = None) -> int:
    console = Console()
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        console.print(("[green]✔[/] " if ok else "[bold red]✘[/] ") + what)
        if not ok:
            failures.append(what)

    with open_workdir(workdir) as wd:
        pki = wd / "pki"
        init_pki(pki, ["kme", PLATFORM, HOSPITAL, OPERATOR])
        config = wd / "kme.toml"
        config.write_text(
            _CONFIG.format(
                a=SITE_A, b=SITE_B, platform=PLATFORM, hospital=HOSPITAL, operator=OPERATOR
            ),
            encoding="utf-8",
        )
        console.print(
            Panel.fit(
                "[bold]PatientKey key supply[/]\n"
                f"site A ({SITE_A}): SAE [cyan]{PLATFORM}[/]   ⟷ BB84 link ⟷   "
                f"site B ({SITE_B}): SAE [cyan]{HOSPITAL}[/]\n"
                "ETSI GS QKD 014 over HTTPS with client certificates from a fresh dev CA"
            )
        )
        with console.status("starting the KME and filling its pools with BB84 rounds"):
            kme = KmeProcess(config, timeout=60.0)
            kme.start()
        try:
            _story(console, kme, pki, check)
        finally:
            kme.stop()
            if workdir is not None:
                shutil.copyfile(kme.log_path, wd / "kme.log")
            kme.close()
    if failures:
        console.print(f"[bold red]demo failed: {len(failures)} step(s) did not behave[/]")
        return 1
    console.print("[bold green]demo complete: every step behaved as it must[/]")
    return 0


def _story(console: Console, kme: KmeProcess, pki: Path, check: object) -> None:
    assert callable(check)
    url = kme.base_url
    platform = Etsi014Client(url, ssl_context=client_ssl_context(pki, PLATFORM), max_attempts=3)
    hospital = Etsi014Client(url, ssl_context=client_ssl_context(pki, HOSPITAL), max_attempts=3)
    admin = httpx.Client(base_url=url, verify=client_ssl_context(pki, OPERATOR), timeout=10)
    link_path = f"/admin/links/{SITE_A}/{SITE_B}"

    def link() -> dict[str, object]:
        rows: list[dict[str, object]] = admin.get("/admin/links").json()
        return rows[0]

    # 1. The link and the ETSI status seen by the master SAE.
    info = link()
    last = info.get("last_round") or {}
    assert isinstance(last, dict)
    status = platform.status(HOSPITAL)
    table = Table(title="1. BB84 link and ETSI GS QKD 014 status (platform's view)")
    table.add_column("field")
    table.add_column("value", justify="right")
    for name in ("qber", "sifted_bits", "leaked_bits", "secret_bits", "aborted"):
        table.add_row(f"last BB84 round: {name}", str(last.get(name)))
    for name in ("source_KME_ID", "target_KME_ID", "stored_key_count", "key_size"):
        table.add_row(f"status: {name}", str(getattr(status, name)))
    console.print(table)
    check(status.stored_key_count > 0 and not last.get("aborted"), "link produces key")

    # 2. One message platform → hospital under a fresh QKD key.
    sender = HopSender(peer=HOSPITAL, context=b"KEH", supply=platform, policy=QkdPolicy.REQUIRED)
    receiver = HopReceiver(peer=PLATFORM, context=b"KEH", supply=hospital)
    opener = EnvelopeOpener(
        HOSPITAL, lambda peer, kid: receiver.resolve(kid) if peer == PLATFORM else None
    )
    message = b"KEH hop check: hello hospital-1"
    hop = sender.next_key()
    token = seal_envelope(
        key=hop.key,
        kid=hop.kid_text,
        sender=PLATFORM,
        receiver=HOSPITAL,
        mtype="demo.hello",
        payload=message,
    )
    console.print(
        f"\n2. platform got key [cyan]{hop.kid.qkd}[/] (enc_keys, {sender.qkd_bits_used} bits) "
        f"and sent a {len(token)}-byte JWE; on the wire: [dim]{token[:60]}…[/]"
    )
    opened = opener.open(token)
    console.print(f"   hospital fetched the key by ID (dec_keys) and read: {opened.payload!r}")
    check(opened.payload == message, "hospital opens what the platform sealed")

    # 3. The same envelope again is a replay.
    try:
        opener.open(token)
        check(False, "replayed envelope refused")
    except CryptoError:
        check(True, "replayed envelope refused (one opaque error to the peer)")

    # 4. A re-keyed session: 200 messages, 1 QKD key per 100 messages.
    session = HopSender(
        peer=HOSPITAL, context=b"KEH", supply=platform, rekey=RekeyPolicy(messages=100, seconds=60)
    )
    start = time.perf_counter()
    for i in range(200):
        k = session.next_key()
        tok = seal_envelope(
            key=k.key,
            kid=k.kid_text,
            sender=PLATFORM,
            receiver=HOSPITAL,
            mtype="demo.batch",
            payload=f"message {i}".encode(),
        )
        opener.open(tok)
    took = time.perf_counter() - start
    console.print(
        f"\n4. session policy: 200 messages used {session.qkd_bits_used} QKD bits "
        f"({session.qkd_bits_used / 200:g} bits/message) in {took:.2f} s"
    )
    check(session.qkd_bits_used == 512, "session re-keys every 100 messages")

    # 5. Eve intercepts every pulse: rounds abort, the pool drains, senders fail closed.
    admin.put(f"{link_path}/eve", json={"eve": 1.0}).raise_for_status()
    admin.post(f"{link_path}/flush").raise_for_status()
    deadline = time.monotonic() + 30
    info = link()
    while time.monotonic() < deadline and not int(str(info.get("aborted_rounds") or 0)):
        time.sleep(0.2)
        info = link()
    last = info.get("last_round") or {}
    assert isinstance(last, dict)
    console.print(
        f"\n5. Eve on every pulse: last round QBER {last.get('qber')}, "
        f"aborted={last.get('aborted')}, secret bits {last.get('secret_bits')}"
    )
    check(
        bool(last.get("aborted")) and float(str(last.get("qber"))) > 0.2,
        "QBER above 11 %: the link aborts and yields no key",
    )
    try:
        sender.next_key()
        check(False, "platform refuses to send without a key")
    except KeyUnavailable:
        check(True, "KME answers 503; the platform refuses to send (fails closed)")

    # 6. Eve gone: the link recovers by itself.
    admin.put(f"{link_path}/eve", json={"eve": 0.0}).raise_for_status()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and platform.status(HOSPITAL).stored_key_count == 0:
        time.sleep(0.2)
    check(platform.status(HOSPITAL).stored_key_count > 0, "without Eve the link produces key again")
    for client in (platform, hospital):
        client.close()
    admin.close()
