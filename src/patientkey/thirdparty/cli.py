"""``patientkey thirdparty ...``: the pharmacist's commands (typer adapter).

================================================  ==========================================
command                                           does
================================================  ==========================================
``init --config F``                               create the keystore (HPKE pair, storage key)
``export --config F --out FILE``                  registry entry for the platform operator
``received --config F``                           list received records (decrypted summary)
``show --config F --his H P_ID``                  one record: medication, dosage, ...
``claim|complete|release --config F --his H P``   dispense through the platform
================================================  ==========================================

Commands that open the keystore read its passphrase from ``PATIENTKEY_PASSPHRASE``
and refuse to run without it. Errors exit with status 1 (2 for configuration errors).
The decrypted records are shown on the terminal only; nothing is logged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from patientkey.errors import ConfigError, PatientKeyError

if TYPE_CHECKING:
    from patientkey.thirdparty.core import DispenseAction
    from patientkey.thirdparty.settings import ThirdPartySettings

__all__ = ["app"]

app = typer.Typer(
    help="A third party (pharmacy): receive shared prescriptions, dispense them.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold key material
)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", exists=True, dir_okay=False, help="The third party's TOML settings."),
]
HisOption = Annotated[str, typer.Option("--his", help="The HIS_ID the record comes from.")]
PidArgument = Annotated[str, typer.Argument(help="The record's P_ID.")]


def _err() -> Console:
    return Console(stderr=True)


def _fail(exc: PatientKeyError) -> NoReturn:
    _err().print(f"[bold red]error:[/] {exc.detail}", highlight=False)
    raise typer.Exit(2 if isinstance(exc, ConfigError) else 1)


def _settings(config: Path) -> ThirdPartySettings:
    from patientkey.thirdparty.settings import load_thirdparty_settings

    return load_thirdparty_settings(config)


@app.command()
def init(config: ConfigOption) -> None:
    """Create the keystore: a fresh HPKE key pair and storage key (refuses to replace one)."""
    from patientkey.thirdparty.settings import create_keystore

    try:
        settings = _settings(config)
        keys = create_keystore(settings.keystore)
    except PatientKeyError as exc:
        _fail(exc)
    _err().print(
        f"keystore created at {settings.keystore}; "
        f"HPKE public key thumbprint {keys.hpke.public_key.thumbprint()}"
    )


@app.command()
def export(
    config: ConfigOption,
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Where to write the JSON.")],
) -> None:
    """Write {"b_id", "hpke_public", "certificate_pem", "hpke_signature"} for the registry.

    The signature over the HPKE public key is made with the certificate's private key,
    so wallets can tell the platform hands out this party's own key.
    """
    import base64

    from patientkey.thirdparty.settings import load_keys

    try:
        settings = _settings(config)
        keys = load_keys(settings.keystore)
        try:
            certificate = settings.files.cert.read_text(encoding="ascii")
            cert_key = settings.files.key.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    except PatientKeyError as exc:
        _fail(exc)
    from patientkey.crypto.certkey import sign_hpke_public

    kbp = keys.hpke.public_key.to_bytes()
    signature = sign_hpke_public(cert_key, settings.name, kbp)
    document = {
        "b_id": settings.name,
        "hpke_public": base64.urlsafe_b64encode(kbp).rstrip(b"=").decode(),
        "certificate_pem": certificate,
        "hpke_signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode(),
    }
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="ascii")
    _err().print(f"wrote the registry entry of {settings.name} to {out}")


def _claim_text(claim: object) -> str:
    return "-" if claim is None else str(claim)


@app.command()
def received(config: ConfigOption) -> None:
    """List every received record with its medication and claim state."""
    from patientkey.fhir.records import PrescriptionSummary
    from patientkey.thirdparty.server import open_runtime

    try:
        with open_runtime(_settings(config), connect=False) as runtime:
            opened = [runtime.core.show(i.his_id, i.p_id) for i in runtime.core.received()]
    except PatientKeyError as exc:
        _fail(exc)
    table = Table(title=f"{len(opened)} received records")
    for column in ("HIS", "P_ID"):
        table.add_column(column, no_wrap=True)
    for column in ("type", "medication / title", "from", "received", "claim"):
        table.add_column(column)
    for item in opened:
        summary = item.record.summary
        what = summary.medication if isinstance(summary, PrescriptionSummary) else summary.title
        table.add_row(
            item.info.his_id,
            item.info.p_id,
            item.record.record_type,
            what or "-",
            item.info.user_id,
            item.info.received_at.strftime("%Y-%m-%d %H:%M"),
            _claim_text(item.info.claim),
        )
    Console().print(table)


@app.command()
def show(config: ConfigOption, his: HisOption, p_id: PidArgument) -> None:
    """Decrypt and show one received record."""
    from patientkey.thirdparty.server import open_runtime

    try:
        with open_runtime(_settings(config), connect=False) as runtime:
            opened = runtime.core.show(his, p_id)
    except PatientKeyError as exc:
        _fail(exc)
    table = Table(title=f"{his}/{p_id} ({opened.record.record_type})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in opened.record.summary.as_dict().items():
        table.add_row(name.replace("_", " "), str(value))
    table.add_row("shared by", opened.info.user_id)
    table.add_row("claim", _claim_text(opened.info.claim))
    Console().print(table)


def _dispense(action: DispenseAction, config: Path, his: str, p_id: str) -> None:
    from patientkey.thirdparty.server import open_runtime

    try:
        with open_runtime(_settings(config)) as runtime:
            state = runtime.core.dispense(action, his, p_id)
    except PatientKeyError as exc:
        _fail(exc)
    holder = f" by {state.claimed_by}" if state.claimed_by else ""
    Console().print(f"{his}/{p_id}: {state.state}{holder}")


@app.command()
def claim(config: ConfigOption, his: HisOption, p_id: PidArgument) -> None:
    """Claim a shared prescription for dispensing (exclusive)."""
    _dispense("claim", config, his, p_id)


@app.command()
def complete(config: ConfigOption, his: HisOption, p_id: PidArgument) -> None:
    """Mark a prescription this party claimed as dispensed (final)."""
    _dispense("complete", config, his, p_id)


@app.command()
def release(config: ConfigOption, his: HisOption, p_id: PidArgument) -> None:
    """Give up a claim: the prescription is open again."""
    _dispense("release", config, his, p_id)
