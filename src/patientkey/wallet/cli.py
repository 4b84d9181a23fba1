"""``patientkey wallet``: the patient's client on the command line.

Every command reads the wallet's TOML settings (``--config``) and opens the
encrypted keystore with the passphrase from ``PATIENTKEY_PASSPHRASE`` (never
an argument: arguments end up in shell history and process lists). Output
never contains key bytes; record contents are shown only by ``show``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from patientkey.errors import ConfigError, CryptoError, PatientKeyError
from patientkey.service.party import passphrase_from_env

if TYPE_CHECKING:
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
