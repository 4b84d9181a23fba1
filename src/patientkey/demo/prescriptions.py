"""The main demo (``make demo``): the four e-prescription operations, platform-blind.

Starts the KME, platform, hospital and pharmacy as separate processes on
loopback with mutual TLS (:class:`~patientkey.demo.network.Network`), enrolls a
patient, imports prescriptions (generated ones, or the valid bundles of
``--data DIR``), then runs bind → list → fetch → fetch again → rotate → share →
claim → dispense, saying what each party saw and how many quantum key bits each
step used. It ends by scanning the platform's database for anything it must
never hold. Returns a process exit code: 0 only if every step behaved.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from patientkey.authz.rar import RecordRef
from patientkey.crypto import SealedRecord, unwrap_dek
from patientkey.demo import workdir as open_workdir
from patientkey.demo.blindness import find_leaks, health_needles, key_needles
from patientkey.demo.network import Network
from patientkey.errors import Conflict, InvalidInput, PatientKeyError
from patientkey.fhir.records import ClinicalRecord, load_record
from patientkey.fhir.synthetic import write_bundles
from patientkey.thirdparty.settings import load_thirdparty_settings
from patientkey.thirdparty.tokens import NoAccessToken, TokenFile

__all__ = ["run"]


def _prescriptions(data: Path | None, into: Path, console: Console) -> list[ClinicalRecord]:
    """Valid prescription bundles copied to ``into``; refused files are reported, not imported."""
    into.mkdir()
    if data is None:
        write_bundles(into, 4, seed=7)
    else:
        for path in sorted(data.rglob("*.json")):
            try:
                record = load_record(path)
            except InvalidInput as exc:
                console.print(f"   [yellow]skipped[/] {path.name}: {exc.detail}")
                continue
            if record.record_type == "prescription":
                shutil.copyfile(path, into / path.name)
    records = [load_record(p) for p in sorted(into.glob("*.json"))]
    if not records:
        raise InvalidInput(f"no valid prescription bundle under {data}")
    return records


def run(data: Path | None = None, workdir: Path | None = None, *, ui: bool = False) -> int:
    console = Console()
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        console.print(("   [green]✔[/] " if ok else "   [bold red]✘[/] ") + what)
        if not ok:
            failures.append(what)

    with open_workdir(workdir) as wd:
        net = Network(wd)
        with console.status("starting KME, platform, hospital and pharmacy (mutual TLS)"):
            started = time.perf_counter()
            net.start()
        try:
            console.print(
                Panel.fit(
                    "[bold]PatientKey[/] — deployment up in "
                    f"{time.perf_counter() - started:.1f} s\n"
                    + "\n".join(f"{party:<11} {url}" for party, url in net.urls.items())
                    + f"\nKME         {net.processes['kme'].base_url}"
                    + "  (ETSI GS QKD 014, BB84 links)"
                    + f"\nworkdir     {wd}"
                )
            )
            _story(console, net, data, check)
            if ui:
                _serve_ui(console, net)
        except PatientKeyError as exc:
            failures.append(f"{type(exc).__name__}: {exc.detail}")
            console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc.detail}")
        finally:
            net.stop()
    if failures:
        console.print(f"[bold red]demo failed: {len(failures)} step(s) did not behave[/]")
        return 1
    console.print("[bold green]demo complete: every step behaved as it must[/]")
    return 0


class _Meter:
    """Quantum key bits per link and wallet pool keys consumed by each step."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.rows: list[tuple[str, dict[str, int], int]] = []
        self._bits = net.consumed_bits()
        self._pool: int | None = None

    def step(self, name: str, wallet: Any) -> None:
        bits = self.net.consumed_bits()
        pool = wallet.pool_remaining
        delta = {k: bits[k] - self._bits.get(k, 0) for k in bits}
        used = 0 if self._pool is None else self._pool - pool
        self.rows.append((name, delta, used))
        self._bits, self._pool = bits, pool

    def table(self) -> Table:
        links = [p for p in self.net.names.sites if p != self.net.names.platform]
        table = Table(title="Quantum key used per step")
        table.add_column("step")
        for link in links:
            table.add_column(f"QKD bits platform↔{link}", justify="right")
        table.add_column("wallet pool keys (KUE)", justify="right")
        for name, delta, used in self.rows:
            table.add_row(name, *(f"{delta.get(link, 0):,}" for link in links), str(used))
        return table


def _story(
    console: Console, net: Network, data: Path | None, check: Callable[[bool, str], None]
) -> None:
    his, pharmacy = net.names.hospital, net.names.pharmacy

    console.rule("hospital: enroll a patient and import prescriptions")
    patient_id, code = net.enroll("Alice Example", "1980-02-03")
    console.print(
        f"   Patient_ID {patient_id}; enrollment code handed over out of band "
        f"({len(code)} characters, carries KUH v1)"
    )
    records = _prescriptions(data, net.workdir / "import", console)
    out = net.import_records(net.workdir / "import", patient_id)
    console.print(f"   {out.strip().splitlines()[-1] if out.strip() else 'imported'}")
    console.print(
        f"   the platform was told: {len(records)} record ids and their type — nothing else"
    )

    with net.wallet() as wallet:
        meter = _Meter(net)
        meter.step("(start)", wallet)
        wallet.enroll(code)

        console.rule("1. bind the platform account to the hospital patient")
        wallet.bind(his)
        meter.step("bind", wallet)
        console.print("   platform saw: User_ID, HIS_ID, Patient_ID, a nonce, a 32-byte MAC")
        console.print("   hospital recomputed the MAC under KUH and answered {f(n)}KUH")
        check(True, "wallet verified the hospital's mutual-authentication reply")

        console.rule("list what may be fetched")
        listed = wallet.list_records().records
        meter.step("list", wallet)
        check(len(listed) == len(records), f"{len(listed)} records listed (metadata only)")
        first = listed[0]

        console.rule("3. fetch a prescription")
        wallet.fetch(first.his_id, first.p_id)
        meter.step("fetch (cold: via hospital)", wallet)
        view = wallet.show(first.p_id, first.his_id)
        summary = view.summary.as_dict()
        sealed = (net.workdir / "wallet-data").rglob(f"{first.p_id}*")
        size = sum(p.stat().st_size for p in sealed)
        console.print(f"   platform stored and relayed {size:,} bytes of ciphertext")
        console.print(
            "   wallet decrypted: "
            + ", ".join(
                f"{k}={summary[k]}" for k in ("medication", "dosage", "authored_on") if k in summary
            )
        )
        wallet.fetch(first.his_id, first.p_id)
        meter.step("fetch again (platform cache)", wallet)
        check(meter.rows[-1][1].get(his, 0) == 0, "second fetch served by the platform alone")

        console.rule("2. rotate the patient-hospital key KUH")
        rotation = wallet.rotate(his)
        meter.step("rotate KUH", wallet)
        check(
            rotation.committed and rotation.new_version == 2,
            f"KUH v{rotation.old_version} → v{rotation.new_version} on both sides; "
            f"{rotation.rewrapped} cached record key(s) re-wrapped, bodies untouched",
        )
        check(
            wallet.show(first.p_id, first.his_id).summary == view.summary,
            "the record sealed under KUH v1 still opens",
        )

        granted = [r.p_id for r in listed[:2]]
        _authorization_story(
            console, net, wallet=wallet, his=first.his_id, p_ids=granted, check=check
        )
        meter.step("authorize (CIBA, TOTP + device)", wallet)

        console.rule("4. share the prescription with the pharmacy")
        shared = wallet.share(first.his_id, first.p_id, pharmacy)
        meter.step(f"share ({shared.kind})", wallet)
        console.print(
            f"   first share: DEK and a fresh KUB sealed to {pharmacy}'s "
            "ML-KEM-768+X25519 key (HPKE); the platform relayed ciphertext"
        )
        check(shared.kub_version == 1, f"{pharmacy} now holds KUB v{shared.kub_version}")
        state = _pharmacy_story(console, net, first, check)
        meter.step("claim + complete", wallet)
        status = wallet.record_status(first.his_id, first.p_id)
        check(
            status.dispense == state == "completed", f"wallet sees dispense state {status.dispense}"
        )
        if len(listed) > 1:
            second = listed[1]
            wallet.fetch(second.his_id, second.p_id)
            again = wallet.share(second.his_id, second.p_id, pharmacy)
            meter.step(f"share ({again.kind})", wallet)
            check(
                again.kind == "kub" and again.kub_version == 2,
                "second share rides the KUB ratchet (KUB v1 → v2), no public-key operation",
            )
        try:
            wallet.share(first.his_id, first.p_id, pharmacy)
            check(False, "a completed prescription cannot be shared again")
        except Conflict:
            check(True, "a completed prescription cannot be shared again (409)")
        _revocation_story(console, net, wallet=wallet, listed=listed, check=check)
        _audit_story(console, net, wallet=wallet, check=check)

        console.print(meter.table())
        _blindness(console, net, records, check)


def _serve_ui(console: Console, net: Network) -> None:
    """``demo --ui``: the patient's wallet UI on loopback, while the deployment keeps running."""
    from patientkey.wallet.ui import UiServer

    console.rule("the patient's wallet UI")
    with net.wallet() as wallet:
        server = UiServer(wallet)
        console.print(
            "   open this address in a browser on this computer (it carries the session token):"
        )
        console.print(f"   [bold]{server.url}[/]", highlight=False, soft_wrap=True)
        console.print("   serving until Ctrl-C", highlight=False)
        server.serve()


def _authorization_story(
    console: Console,
    net: Network,
    *,
    wallet: Any,
    his: str,
    p_ids: list[str],
    check: Callable[[bool, str], None],
) -> None:
    """The pharmacy asks (CIBA), the patient approves with TOTP + device signature."""
    console.rule("authorization: the pharmacy asks, the patient decides (seed 1)")
    records = [f"{his}:{p_id}" for p_id in p_ids]
    _, request, outcome = net.authorize(wallet, records, totp=True)
    console.print("   patient enrolled at the platform: password, TOTP authenticator, device key")
    console.print(
        f"   wallet showed at once (long poll): {request.client_name} asks for "
        f"{request.scenario} ({request.purpose}); binding message "
        f"{request.binding_message!r}; proofs: {request.method.description}"
    )
    check(outcome.state == "approved", f"patient approved: TOTP + device signature, {outcome.acr}")
    settings = load_thirdparty_settings(net.config(net.names.pharmacy))
    held = TokenFile(settings.token_path).tokens_for(wallet.user_id)
    now = time.time()
    check(
        all(
            any(t.usable(now) and t.allows("use", RecordRef("prescription", his, p)) for t in held)
            for p in p_ids
        ),
        "the pharmacy's token poll returned an RFC 9068 access token allowing use of both",
    )


def _revocation_story(
    console: Console,
    net: Network,
    *,
    wallet: Any,
    listed: list[Any],
    check: Callable[[bool, str], None],
) -> None:
    """The patient revokes; the pharmacy's very next request is refused."""
    console.rule("revocation: the patient withdraws the grant")
    grants = [g for g in wallet.authz.grants() if g.status == "active"]
    check(len(grants) == 1, "the wallet lists one active grant")
    revoked = wallet.authz.revoke(grants[0].grant_id)
    check(revoked.status == "revoked", f"grant {revoked.grant_id[:8]}… revoked by the patient")
    if len(listed) < 2:
        return
    second = listed[1]
    with net.pharmacy() as desk:
        try:
            desk.dispense("claim", second.his_id, second.p_id)
            check(False, "the pharmacy's next request is refused")
        except PatientKeyError as exc:
            # Refused by the platform, not for want of a token here (also a 401).
            check(
                exc.status == 401 and not isinstance(exc, NoAccessToken),
                f"the pharmacy's next request is refused ({exc.status})",
            )


def _audit_story(
    console: Console, net: Network, *, wallet: Any, check: Callable[[bool, str], None]
) -> None:
    """The patient checks the platform's transparency log and prints who got what."""
    from patientkey.wallet.disclosures import disclosures, disclosures_pdf

    console.rule("audit: the patient verifies the platform's log (RFC 9162)")
    report = wallet.audit.sync()
    head = report.head
    check(
        head is not None and not report.tampered and all(e.verified for e in report.events),
        f"{len(report.events)} events of this account, each proven in the signed tree head "
        f"of {head.size if head else 0} entries (Ed25519, key pinned)",
    )
    again = wallet.audit.sync()
    check(not again.tampered, "a second sync proves the log only grew (consistency proof)")
    rows = disclosures(again.events)
    table = Table(title="accounting of disclosures (from the verified log)")
    for column in ("when", "who", "what", "record", "grant"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.at.strftime("%H:%M:%S"),
            row.recipient,
            row.action,
            (row.record or "-")[-24:],
            (row.grant_id or "-")[:8],
        )
    console.print(table)
    shared = [r for r in rows if r.kind == "share.deliver"]
    check(
        bool(shared) and all(r.grant_id for r in shared),
        f"{len(shared)} share(s) to {net.names.pharmacy}, each under a named grant",
    )
    pdf = net.workdir / "disclosures.pdf"
    pdf.write_bytes(disclosures_pdf(rows, title="Disclosures", generated_at=again.events[-1].at))
    bundle = wallet.audit.fhir_bundle()
    check(
        pdf.read_bytes().startswith(b"%PDF") and len(bundle.get("entry", [])) == len(again.events),
        f"disclosures PDF and {len(bundle.get('entry', []))} FHIR R4 AuditEvents exported",
    )


def _pharmacy_story(
    console: Console, net: Network, record: Any, check: Callable[[bool, str], None]
) -> str:
    with net.pharmacy() as desk:
        opened = desk.show(record.his_id, record.p_id)
        medication = getattr(opened.record.summary, "medication", None)
        console.print(f"   pharmacy decrypted: medication={medication}")
        desk.dispense("claim", record.his_id, record.p_id)
        check(True, "pharmacy claimed the prescription (exclusive)")
        try:
            desk.dispense("claim", record.his_id, record.p_id)
            check(False, "a second claim is refused")
        except Conflict:
            check(True, "a second claim is refused (409)")
        state = desk.dispense("complete", record.his_id, record.p_id)
        check(state.state == "completed", "pharmacy dispensed: completed")
        return str(state.state)


def _blindness(
    console: Console,
    net: Network,
    records: list[ClinicalRecord],
    check: Callable[[bool, str], None],
) -> None:
    console.rule("what the platform holds")
    keys: dict[str, bytes] = {}
    state = net.wallet_state()  # the patient audits with their own keys
    for his_id, hospital in state.hospitals.items():
        for version, kuh in hospital.keys.items():
            keys[f"KUH {his_id} v{version}"] = kuh
            for path in (net.workdir / "wallet-data").rglob("*.sealed"):
                record = SealedRecord.from_bytes(path.read_bytes())
                if record.entries_for(f"kuh:{his_id}", version):
                    keys[f"DEK {record.record_id}"] = unwrap_dek(
                        record, kid=f"kuh:{his_id}", key=kuh, version=version
                    )
    for b_id, third in state.third_parties.items():
        for version, kub in third.keys.items():
            keys[f"KUB {b_id} v{version}"] = kub
    database = net.workdir / "platform.db"
    dump = b"".join(p.read_bytes() for p in net.workdir.glob("platform.db*") if p.is_file())
    leaks = find_leaks(dump, texts=health_needles(records), keys=key_needles(keys))
    console.print(
        f"   scanned {database.name} (+WAL): {len(dump):,} bytes against "
        f"{len(health_needles(records))} health-data strings and {len(keys)} keys"
    )
    check(
        not leaks,
        "the platform database holds no names, birth dates, insurance numbers, "
        "medications, PZNs, KUH, KUB or DEK" + (f" — found: {leaks}" if leaks else ""),
    )
