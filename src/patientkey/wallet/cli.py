"""``patientkey wallet``: the patient's client on the command line.

Every command reads the wallet's TOML settings (``--config``) and opens the
encrypted keystore with the passphrase from ``PATIENTKEY_PASSPHRASE`` (never
an argument: arguments end up in shell history and process lists). Output
never contains key bytes; record contents are shown only by ``show``.

Patient-approved authorization: ``identity`` (enroll proofs), ``requests``,
``approve`` / ``deny``, ``otp``, ``grants``, ``revoke``. The platform password
comes from ``PATIENTKEY_PASSWORD`` (a new one from ``PATIENTKEY_NEW_PASSWORD``)
or a hidden prompt; one-time codes (TOTP, SMS/email) may be options, as they
are worthless once used.

The transparency log: ``audit`` (verify and show the history, ``--fhir`` export) and
``disclosures`` (CSV or PDF); both exit with status 3 when the platform's log was
found rewritten, now or on an earlier sync.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from patientkey.errors import ConfigError, CryptoError, PatientKeyError
from patientkey.service.party import passphrase_from_env

if TYPE_CHECKING:
    from patientkey.wallet.audit import AuditReport
    from patientkey.wallet.core import RecordView, WalletCore
    from patientkey.wallet.settings import WalletSettings

__all__ = ["app"]


app = typer.Typer(
    help="The patient's wallet: keys per hospital and third party, records, sharing.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals hold key material
)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The wallet's TOML settings file.")
]
HisOption = Annotated[str, typer.Option("--his", help="The hospital (HIS_ID).")]
PidArgument = Annotated[str, typer.Argument(help="The record (P_ID).")]

_out = Console()
_err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _passphrase() -> str:
    try:
        return passphrase_from_env()
    except ConfigError as exc:
        _fail(exc.detail, 2)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except CryptoError:
        _fail("a reply or record did not verify; nothing was changed")
    except ConfigError as exc:
        _fail(exc.detail, 2)
    except PatientKeyError as exc:
        _fail(exc.detail)


def _settings(config: Path) -> WalletSettings:
    from patientkey.wallet.settings import load_wallet_settings

    return load_wallet_settings(config)


def _pool_notice(core: WalletCore) -> None:
    if core.pq_active:
        _err.print(
            "[yellow]notice:[/] the KUE key pool is empty; this session used the "
            "ML-KEM-768+X25519 fallback."
        )
    if core.pool_low:
        _err.print(
            f"[yellow]warning:[/] KUE key pool low ({core.pool_remaining} keys left): "
            "recharge with `patientkey platform charge-wallet` and `patientkey wallet charge`."
        )


@contextmanager
def _wallet(config: Path) -> Iterator[WalletCore]:
    from patientkey.wallet import client

    with _errors():
        settings = _settings(config)
        with client.open_wallet(settings, _passphrase()) as core:
            try:
                yield core
            finally:
                _pool_notice(core)


@app.command()
def init(config: ConfigOption) -> None:
    """Create the wallet's encrypted keystore (User_ID = the settings' name)."""
    from patientkey.wallet.store import WalletKeystore, WalletState

    with _errors():
        settings = _settings(config)
        keystore = WalletKeystore(
            settings.keystore, _passphrase(), params=settings.keystore_kdf.params()
        )
        keystore.create(WalletState(user_id=settings.name))
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _out.print(f"wallet {settings.name}: keystore created at {settings.keystore}")


@app.command()
def enroll(
    code: Annotated[str, typer.Argument(help="The hospital's PKENROLL1. code.")],
    config: ConfigOption,
) -> None:
    """Store the Patient_ID and KUH from a hospital's enrollment code."""
    with _wallet(config) as core:
        done = core.enroll(code)
    _out.print(
        f"enrolled at {done.his_id} as patient {done.patient_id} (KUH version {done.version}); "
        f"next: patientkey wallet bind --his {done.his_id}"
    )


@app.command()
def charge(
    file: Annotated[Path, typer.Argument(help="Pool file from `platform charge-wallet`.")],
    config: ConfigOption,
) -> None:
    """Move a pre-charged KUE key pool into the keystore (the file is then deleted)."""
    with _wallet(config) as core:
        added = core.charge(file)
        remaining = core.pool_remaining
    _out.print(f"charged {added} keys; {remaining} sending keys in the pool; {file} deleted")


@app.command()
def bind(his: HisOption, config: ConfigOption) -> None:
    """Bind the platform account to the patient at a hospital (mutual authentication)."""
    with _wallet(config) as core:
        core.bind(his)
    _out.print(f"bound to {his}: the hospital proved it holds the same KUH")


@app.command()
def prescriptions(config: ConfigOption) -> None:
    """List the records of every bound hospital, with dispense state."""
    with _wallet(config) as core:
        listed = core.list_records()
        local = set(core.cached())
    table = Table(title=f"records of {core.user_id}")
    for column in ("HIS", "P_ID", "type", "on platform", "in wallet", "dispense", "shared with"):
        table.add_column(column)
    for entry in listed.records:
        table.add_row(
            entry.his_id,
            entry.p_id,
            entry.record_type,
            "yes" if entry.fetched else "no",
            "yes" if (entry.his_id, entry.p_id) in local else "no",
            entry.dispense or "-",
            ", ".join(entry.shared_with) or "-",
        )
    _out.print(table)


@app.command()
def fetch(his: HisOption, p_id: PidArgument, config: ConfigOption) -> None:
    """Fetch a record (ciphertext) through the platform and keep it in the wallet."""
    with _wallet(config) as core:
        core.fetch(his, p_id)
    _out.print(f"{p_id} from {his} is in the wallet; `patientkey wallet show {p_id}` opens it")


def _print_record(view: RecordView) -> None:
    from patientkey.fhir.records import PrescriptionSummary

    table = Table(title=f"{view.record_type} {view.p_id} ({view.his_id})", show_header=False)
    table.add_column("field")
    table.add_column("value")
    summary = view.summary
    if isinstance(summary, PrescriptionSummary):
        rows = [
            ("medication", summary.medication),
            ("strength", summary.strength),
            ("dosage", summary.dosage),
            ("quantity", summary.quantity),
            ("date", summary.authored_on),
            ("prescriber", summary.prescriber),
            ("status", summary.status),
        ]
    else:
        rows = [
            ("report", summary.title),
            ("code", summary.code),
            ("conclusion", summary.conclusion),
            ("date", summary.effective or summary.issued),
            ("performer", summary.performer),
            ("status", summary.status),
        ]
    for name, value in rows:
        table.add_row(name, value or "-")
    _out.print(table)


@app.command()
def show(
    p_id: PidArgument,
    config: ConfigOption,
    his: Annotated[
        str | None, typer.Option("--his", help="The hospital, if several hold this P_ID.")
    ] = None,
) -> None:
    """Decrypt a record held in the wallet and show its summary."""
    with _wallet(config) as core:
        view = core.show(p_id, his)
    _print_record(view)


@app.command()
def rotate(his: HisOption, config: ConfigOption) -> None:
    """Replace the key shared with a hospital (KUH), two-phase; old records stay readable."""
    with _wallet(config) as core:
        done = core.rotate(his)
    _out.print(
        f"KUH at {his}: version {done.old_version} -> {done.new_version}; "
        f"{done.rewrapped} cached record(s) re-wrapped"
    )
    if not done.committed:
        _err.print(
            "[yellow]warning:[/] the commit did not reach the hospital yet; "
            "it is sent again on the next command."
        )


@app.command()
def share(
    his: HisOption,
    p_id: PidArgument,
    to: Annotated[str, typer.Option("--to", help="The third party (B_ID).")],
    config: ConfigOption,
) -> None:
    """Give a third party (pharmacy, ...) the key to one record."""
    with _wallet(config) as core:
        done = core.share(his, p_id, to)
    how = "HPKE to its certified key" if done.kind == "hpke" else "the KUB ratchet"
    _out.print(f"{p_id} shared with {to} via {how}; KUB version now {done.kub_version}")
    if done.reset:
        _err.print(f"[yellow]notice:[/] {to} had lost its KUB; the ratchet was restarted.")


@app.command()
def status(
    config: ConfigOption,
    p_id: Annotated[
        str | None, typer.Argument(help="A record: show its dispense state instead.")
    ] = None,
    his: Annotated[str | None, typer.Option("--his", help="The record's hospital.")] = None,
) -> None:
    """Pool level, bindings and key versions (never key bytes); or one record's state."""
    with _wallet(config) as core:
        if p_id is not None:
            if his is None:
                _fail("give the record's hospital with --his", 2)
            entry = core.record_status(his, p_id)
            _out.print(
                f"{p_id} at {his}: dispense {entry.dispense or 'not tracked'}; "
                f"shared with {', '.join(entry.shared_with) or 'nobody'}"
            )
            return
        state = core.status()
    _out.print(f"wallet [bold]{state.user_id}[/]", highlight=False)
    pq = ", PQ fallback active" if state.pq_active else ""
    _out.print(
        f"KUE pool: {state.pool_remaining} sending keys"
        f"{' (low)' if state.pool_low else ''}; policy {state.policy}{pq}",
        highlight=False,
    )
    hospitals = Table(title="hospitals")
    for column in ("HIS", "Patient_ID", "bound", "KUH current", "KUH versions", "rotation"):
        hospitals.add_column(column)
    for h in state.hospitals:
        hospitals.add_row(
            h.his_id,
            h.patient_id,
            "yes" if h.bound else "no",
            str(h.current_version),
            ", ".join(map(str, h.versions)),
            {"acked": "commit pending", "prepared": "prepared"}.get(h.rotation or "", "-"),
        )
    _out.print(hospitals)
    if state.third_parties:
        third = Table(title="third parties")
        third.add_column("B_ID")
        third.add_column("KUB current")
        third.add_column("KUB versions held")
        for t in state.third_parties:
            third.add_row(t.b_id, str(t.kub_version or "-"), ", ".join(map(str, t.versions)) or "-")
        _out.print(third)
    _out.print(f"records in the wallet: {state.cached_records}")


# ── patient-approved authorization ─────────────────────────────────────────────────

PASSWORD_ENV = "PATIENTKEY_PASSWORD"  # noqa: S105 - the variable's name, not a secret
NEW_PASSWORD_ENV = "PATIENTKEY_NEW_PASSWORD"  # noqa: S105 - the variable's name, not a secret


class Channel(StrEnum):
    SMS = "sms"
    EMAIL = "email"


class DeviceKind(StrEnum):
    ML_DSA_65 = "ml-dsa-65"
    ED25519 = "ed25519"


RequestArgument = Annotated[str, typer.Argument(help="The request (see `wallet requests`).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _secret(env: str, prompt: str, *, confirm: bool = False) -> str:
    """A secret from ``env`` or a hidden prompt: never from the command line."""
    value = os.environ.get(env, "")
    if value:
        return value
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _seconds(value: int | None) -> str:
    if value is None:
        return "no limit"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if value % size == 0:
            count = value // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{value} seconds"


def _what(details: list[dict[str, Any]]) -> str:
    """One line per authorization_details object: actions, data, records, duration."""
    lines = []
    for entry in details:
        records = entry.get("records", {})
        where = []
        if "ids" in records:
            where.append(", ".join(records["ids"]))
        if "his_id" in records:
            where.append(f"at {records['his_id']}")
        if "from" in records or "to" in records:
            where.append(f"{records.get('from', '…')} to {records.get('to', '…')}")
        lines.append(
            f"{', '.join(entry.get('actions', []))} · {', '.join(entry.get('record_types', []))}"
            f" · {' '.join(where) or 'records'} · {_seconds(entry.get('duration'))}"
        )
    return "\n".join(lines)


def _echo_json(value: object) -> None:
    # Plain stdout, no rich wrapping or colour: meant for programs.
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def _qr(text: str) -> str:
    import segno  # pure Python; imported here so the CLI starts fast

    buffer = io.StringIO()
    segno.make(text, error="m", micro=False).terminal(out=buffer, compact=True)
    return buffer.getvalue()


@app.command()
def identity(  # noqa: PLR0917 - typer passes every option by name
    config: ConfigOption,
    password: Annotated[
        bool,
        typer.Option(
            "--password/--no-password",
            help=f"Set or replace the password (from {NEW_PASSWORD_ENV} or a hidden prompt).",
        ),
    ] = False,
    current_password: Annotated[
        bool,
        typer.Option(
            "--current-password",
            help=f"Replacing a password: give the current one ({PASSWORD_ENV} or a prompt).",
        ),
    ] = False,
    totp: Annotated[
        bool, typer.Option("--totp", help="Enroll a (new) TOTP authenticator; shown once.")
    ] = False,
    sms: Annotated[
        str | None, typer.Option("--sms", help="Phone number for one-time codes by SMS.")
    ] = None,
    email: Annotated[
        str | None, typer.Option("--email", help="Address for one-time codes by email.")
    ] = None,
    certificate: Annotated[
        Path | None,
        typer.Option(
            "--certificate", help="A PEM signing certificate (X.509 proofs).", dir_okay=False
        ),
    ] = None,
    device_algorithm: Annotated[
        DeviceKind, typer.Option("--device-algorithm", help="For a new device key only.")
    ] = DeviceKind.ML_DSA_65,
) -> None:
    """Enroll identity proofs at the platform; the device key is created the first time."""
    from patientkey.identity.device import DeviceAlgorithm

    new = _secret(NEW_PASSWORD_ENV, "new password", confirm=True) if password else None
    current = _secret(PASSWORD_ENV, "current password") if current_password else None
    pem = None
    if certificate is not None:
        try:
            pem = certificate.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read {certificate}: {exc}", 2)
    algorithm = {
        DeviceKind.ML_DSA_65: DeviceAlgorithm.ML_DSA_65,
        DeviceKind.ED25519: DeviceAlgorithm.ED25519,
    }[device_algorithm]
    with _wallet(config) as core:
        state = core.authz.enroll_identity(
            password=new,
            totp=totp,
            sms=sms,
            email=email,
            certificate_pem=pem,
            current_password=current,
            algorithm=algorithm,
        )
        key_id = core.authz.device_key_id
    table = Table(title=f"identity proofs of {state.user_id}")
    table.add_column("proof")
    table.add_column("enrolled")
    for kind in ("password", "totp", "otp_sms", "otp_email", "device_signature", "x509_signature"):
        table.add_row(kind, "yes" if kind in state.proofs else "-")
    _out.print(table)
    mine = "enrolled" if key_id in state.device_key_ids else "NOT enrolled"
    _out.print(f"this wallet's device key: {key_id} ({mine})", highlight=False)
    if state.totp_uri is not None:
        _out.print(
            "[bold]Add this to your authenticator app now; it is shown only once:[/]",
            highlight=False,
        )
        _out.out(state.totp_uri, highlight=False)
        _out.out(_qr(state.totp_uri), highlight=False)


@app.command()
def requests(
    config: ConfigOption,
    wait: Annotated[
        int, typer.Option("--wait", min=0, max=3600, help="Wait this long for a request.")
    ] = 0,
    as_json: JsonOption = False,
) -> None:
    """Pending authorization requests: who asks, what, why, how long, which proofs."""
    from patientkey.wallet.authz import MAX_INBOX_WAIT

    with _errors():
        # Each long poll must end before the HTTP client gives up on it.
        per_call = max(1, min(MAX_INBOX_WAIT, int(_settings(config).timeout_s) - 2))
    with _wallet(config) as core:
        pending = core.authz.inbox(wait, per_call=per_call)
    if as_json:
        _echo_json([r.model_dump(mode="json", exclude={"nonce"}) for r in pending])
        return
    if not pending:
        _out.print("no pending authorization requests")
        return
    table = Table(title=f"authorization requests for {core.user_id}", show_lines=True)
    for column in ("request", "who", "why", "what · data · records · how long", "proofs"):
        table.add_column(column)
    for r in pending:
        why = f"{r.scenario}: {r.purpose}"
        if r.binding_message:
            why += f'\nbinding message: "{r.binding_message}"'
        table.add_row(
            f"{r.request_id}\nexpires {_when(r.expires_at)}",
            f"{r.client_name}\n({r.client_id})",
            why,
            _what(r.authorization_details),
            r.method.description,
        )
    _out.print(table)
    _out.print(
        "approve with `patientkey wallet approve REQUEST_ID` (narrow with --actions, "
        "--records, --duration) or refuse with `patientkey wallet deny REQUEST_ID`",
        highlight=False,
    )


@app.command()
def otp(
    request_id: RequestArgument,
    config: ConfigOption,
    channel: Annotated[Channel, typer.Option("--channel", help="sms or email.")] = Channel.SMS,
) -> None:
    """Have a one-time code sent for a request (then: approve --otp-challenge ID --otp-code)."""
    with _wallet(config) as core:
        sent = core.authz.send_otp(request_id, channel.value)
    _out.print(
        f"one-time code sent by {sent.channel}; challenge {sent.challenge_id}, "
        f"valid until {_when(sent.expires_at)}",
        highlight=False,
    )


@app.command()
def approve(  # noqa: PLR0917 - typer passes every option by name
    request_id: RequestArgument,
    config: ConfigOption,
    totp: Annotated[
        str | None, typer.Option("--totp", help="A code from the authenticator app.")
    ] = None,
    otp_channel: Annotated[
        Channel | None,
        typer.Option("--otp", help="Send a one-time code by sms or email, then ask for it."),
    ] = None,
    otp_code: Annotated[
        str | None, typer.Option("--otp-code", help="The one-time code (instead of a prompt).")
    ] = None,
    otp_challenge: Annotated[
        str | None,
        typer.Option("--otp-challenge", help="A code sent earlier by `wallet otp` (challenge id)."),
    ] = None,
    password: Annotated[
        bool,
        typer.Option("--password", help=f"Give the password ({PASSWORD_ENV} or a hidden prompt)."),
    ] = False,
    no_device: Annotated[
        bool, typer.Option("--no-device", help="Do not sign with this wallet's device key.")
    ] = False,
    actions: Annotated[
        str | None, typer.Option("--actions", help="Approve only these actions, e.g. view,fetch.")
    ] = None,
    records: Annotated[
        str | None,
        typer.Option("--records", help="Approve only these records (P_IDs), e.g. P1,P2."),
    ] = None,
    duration: Annotated[
        str | None, typer.Option("--duration", help="Approve for at most this long, e.g. P7D.")
    ] = None,
    x509_chain: Annotated[
        Path | None,
        typer.Option(
            "--x509-chain",
            help="Sign also with this certificate (PEM chain, leaf first).",
            dir_okay=False,
        ),
    ] = None,
    x509_key: Annotated[
        Path | None,
        typer.Option(
            "--x509-key", help="The certificate's private key (PKCS#8 PEM file).", dir_okay=False
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Approve a request, all of it or less, with proofs of identity."""
    from patientkey.identity.x509sig import CertificatePrivateKey, load_certificate_private_key
    from patientkey.wallet.authz import chosen_details

    if otp_channel is not None and otp_challenge is not None:
        _fail("give either --otp (send a new code) or --otp-challenge (a code sent earlier)", 2)
    if otp_challenge is not None and otp_code is None:
        _fail("--otp-challenge needs --otp-code", 2)
    if otp_code is not None and otp_channel is None and otp_challenge is None:
        _fail("--otp-code goes with --otp or --otp-challenge", 2)
    if (x509_chain is None) != (x509_key is None):
        _fail("an X.509 signature needs both --x509-chain and --x509-key", 2)
    secret = _secret(PASSWORD_ENV, "password") if password else None
    x509: tuple[str, CertificatePrivateKey] | None = None
    if x509_chain is not None and x509_key is not None:
        with _errors():
            try:
                chain, key = x509_chain.read_text(encoding="ascii"), x509_key.read_bytes()
            except (OSError, UnicodeDecodeError) as exc:
                _fail(f"cannot read the certificate or its key: {exc}", 2)
            x509 = (chain, load_certificate_private_key(key))
    with _wallet(config) as core:
        request = core.authz.pending(request_id)
        approved = chosen_details(
            request,
            actions=None if actions is None else _listed(actions),
            records=None if records is None else _listed(records),
            duration=duration,
        )
        one_time = None
        if otp_channel is not None:
            sent = core.authz.send_otp(request_id, otp_channel.value)
            _err.print(
                f"a one-time code was sent by {sent.channel}, valid until {_when(sent.expires_at)}",
                highlight=False,
            )
            code = otp_code or str(typer.prompt("one-time code"))
            one_time = (sent.challenge_id, code)
        elif otp_challenge is not None and otp_code is not None:
            one_time = (otp_challenge, otp_code)
        outcome = core.authz.approve(
            request,
            approved_details=approved,
            password=secret,
            totp=totp,
            otp=one_time,
            device=not no_device,
            x509=x509,
        )
    if as_json:
        _echo_json(outcome.model_dump(mode="json"))
        return
    _out.print(
        f"approved {request_id} for {request.client_name}: grant {outcome.grant_id} "
        f"(assurance {outcome.acr})",
        highlight=False,
    )
    _out.print(_what(outcome.authorization_details or []), highlight=False)
    if approved is not None:
        _out.print("(less than was asked: the app sees what you granted)", highlight=False)


def _listed(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@app.command()
def deny(request_id: RequestArgument, config: ConfigOption) -> None:
    """Refuse a request; the app learns access_denied."""
    with _wallet(config) as core:
        core.authz.deny(request_id)
    _out.print(f"denied {request_id}", highlight=False)


@app.command()
def grants(config: ConfigOption, as_json: JsonOption = False) -> None:
    """The access you granted: to whom, what, until when, with which proofs."""
    with _wallet(config) as core:
        listed = core.authz.grants()
    if as_json:
        _echo_json([g.model_dump(mode="json") for g in listed])
        return
    if not listed:
        _out.print("no grants")
        return
    table = Table(title=f"grants of {core.user_id}", show_lines=True)
    for column in ("grant", "to", "status", "what · data · records · how long", "until", "proofs"):
        table.add_column(column)
    for g in listed:
        status = g.status if g.revoked_by is None else f"{g.status} by {g.revoked_by}"
        table.add_row(
            g.grant_id,
            f"{g.client_id}\n({g.scenario})",
            status,
            _what(g.authorization_details),
            _when(g.expires_at),
            f"{', '.join(g.proofs)}\n{g.acr}",
        )
    _out.print(table)


@app.command()
def revoke(
    grant_id: Annotated[str, typer.Argument(help="The grant (see `wallet grants`).")],
    config: ConfigOption,
) -> None:
    """Revoke a grant: the app's very next request is refused."""
    with _wallet(config) as core:
        grant = core.authz.revoke(grant_id)
    _out.print(f"revoked {grant.grant_id} ({grant.client_id}): its next use is refused")


# ── the transparency log ───────────────────────────────────────────────────────────

#: ``audit`` and ``disclosures`` exit with this when the platform's log contradicts itself.
TAMPER_EXIT = 3


class DisclosureFormat(StrEnum):
    CSV = "csv"
    PDF = "pdf"


def _alarm(message: str) -> None:
    _err.print(
        f"[bold white on red] AUDIT LOG TAMPERING [/] [bold red]{message}[/]",
        highlight=False,
        soft_wrap=True,
    )


def _evidence_alarm(evidence: tuple[Any, ...]) -> None:
    for found in evidence:
        where = "" if found.index is None else f" (event #{found.index})"
        _alarm(f"detected {_when(found.detected_at // 1000)}: {found.reason}{where}")


def _synced(core: WalletCore, *, as_json: bool = False) -> AuditReport:
    """Sync the log; on tampering say so loudly (stderr, or problem JSON) and exit."""
    from patientkey.wallet.audit import LogKeyChanged, LogTampered

    try:
        return core.audit.sync()
    except (LogTampered, LogKeyChanged) as exc:
        if as_json:
            _echo_json({"error": exc.to_problem(), "evidence": _evidence_json(core)})
        _alarm(exc.detail)
        _alarm("the platform's audit log was rewritten or replaced; nothing new was accepted")
        raise typer.Exit(TAMPER_EXIT) from None


def _evidence_json(core: WalletCore) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json") for e in core.audit.report().evidence]


def _details(detail: Any) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(detail.items())) or "-"


@app.command()
def audit(
    config: ConfigOption,
    as_json: JsonOption = False,
    fhir: Annotated[
        Path | None,
        typer.Option("--fhir", help="Also write a FHIR R4 Bundle of AuditEvents.", dir_okay=False),
    ] = None,
) -> None:
    """Check the platform's transparency log and show your verified history."""
    from patientkey.fsutil import write_private

    with _wallet(config) as core:
        report = _synced(core, as_json=as_json)
        if fhir is not None:
            bundle = core.audit.fhir_bundle()
            write_private(fhir, json.dumps(bundle, indent=2).encode("utf-8"))
    if as_json:
        head = report.head
        _echo_json(
            {
                "head": None
                if head is None
                else {
                    "log_id": head.log_id,
                    "tree_size": head.size,
                    "timestamp": head.timestamp.isoformat(),
                    "root_hash": head.root_hash,
                },
                "events": [e.to_json() for e in report.events],
                "new_events": report.new_events,
                "evidence": [e.model_dump(mode="json") for e in report.evidence],
            }
        )
    else:
        assert report.head is not None  # a successful sync accepted a head
        table = Table(title=f"audit log of {core.user_id}")
        for column in ("#", "when (UTC)", "event", "details", "proof"):
            table.add_column(column)
        for e in report.events:
            table.add_row(
                str(e.index),
                e.at.strftime("%Y-%m-%d %H:%M:%S"),
                e.kind,
                _details(e.detail),
                "[green]✔ verified[/]" if e.verified else "[red]✘ unverified[/]",
            )
        _out.print(table)
        _out.print(
            f"log {report.head.log_id}: tree size {report.head.size}, signed "
            f"{report.head.timestamp:%Y-%m-%d %H:%M:%S} UTC; {report.new_events} new event(s); "
            "every event proven included, the log proven append-only",
            highlight=False,
        )
        if fhir is not None:
            _out.print(f"FHIR AuditEvent bundle written to {fhir}", highlight=False)
    if report.evidence:
        # Evidence found by an earlier sync stays until the patient has dealt with it.
        _evidence_alarm(report.evidence)
        raise typer.Exit(TAMPER_EXIT)


@app.command()
def disclosures(
    config: ConfigOption,
    output_format: Annotated[
        DisclosureFormat, typer.Option("--format", help="csv or pdf.")
    ] = DisclosureFormat.CSV,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here (CSV: stdout if absent).", dir_okay=False),
    ] = None,
) -> None:
    """Who received or used your records, when, under which grant (synced and verified)."""
    from patientkey.fsutil import write_private
    from patientkey.wallet import disclosures as accounting

    if output_format is DisclosureFormat.PDF and output is None:
        _fail("a PDF needs --output FILE", 2)
    with _wallet(config) as core:
        report = _synced(core)
    rows = accounting.disclosures(report.events)
    if output_format is DisclosureFormat.CSV:
        text = accounting.disclosures_csv(rows)
        if output is None:
            typer.echo(text, nl=False)
        else:
            write_private(output, text.encode("utf-8"))
    else:
        assert output is not None  # checked above
        write_private(
            output,
            accounting.disclosures_pdf(
                rows,
                title=f"Accounting of disclosures: {core.user_id}",
                generated_at=datetime.now(tz=UTC),
            ),
        )
    if output is not None:
        _err.print(f"{len(rows)} disclosure(s) written to {output}", highlight=False)
    if report.evidence:
        _evidence_alarm(report.evidence)
        raise typer.Exit(TAMPER_EXIT)


@app.command()
def ui(
    config: ConfigOption,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Local port (0: any free port).")
    ] = 0,
    no_open: Annotated[
        bool, typer.Option("--no-open", help="Do not open a browser; only print the address.")
    ] = False,
) -> None:
    """Serve the wallet's web UI on 127.0.0.1 until Ctrl-C (keys stay in this process)."""
    import webbrowser

    from patientkey.wallet.ui import UiServer

    with _wallet(config) as core:
        with _errors():
            server = UiServer(core, port=port)
        # The token is in the URL: print it to this terminal only, as Jupyter does.
        _out.print(f"wallet UI of {core.user_id}: {server.url}", highlight=False, soft_wrap=True)
        _out.print("press Ctrl-C to stop", highlight=False)
        if not no_open:
            webbrowser.open(server.url)
        server.serve()
