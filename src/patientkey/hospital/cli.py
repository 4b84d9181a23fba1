"""``patientkey hospital ...``: the hospital operator's commands (typer adapter).

=========================================================  ====================================
command                                                    does
=========================================================  ====================================
``init --config F``                                        create the keystore (storage key)
``enroll --config F --name N --birth-date D [--qr PNG]``   enroll; print the enrollment code
``import DIR --patient ID --config F``                     validate, store, announce (all/none)
``generate --count N --seed S --out DIR [--patients K]``   synthetic e-prescriptions
``patients --config F``                                    list enrolled patients
=========================================================  ====================================

Commands that open the keystore read its passphrase from ``PATIENTKEY_PASSPHRASE``
and refuse to run without it. ``enroll`` prints only the code on standard output (so
it can be piped); everything else goes to standard error. Errors exit with status 1
(2 for configuration errors) and never print key material.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from patientkey.errors import ConfigError, PatientKeyError

if TYPE_CHECKING:
    from patientkey.hospital.settings import HospitalSettings

__all__ = ["app"]

app = typer.Typer(
    help="The hospital gateway (HIS): enroll patients, import and announce records.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold key material
)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", exists=True, dir_okay=False, help="The hospital's TOML settings."),
]
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _err() -> Console:
    return Console(stderr=True)


def _fail(exc: PatientKeyError) -> NoReturn:
    console = _err()
    console.print(f"[bold red]error:[/] {exc.detail}", markup=True, highlight=False)
    raise typer.Exit(2 if isinstance(exc, ConfigError) else 1)


def _settings(config: Path) -> HospitalSettings:
    from patientkey.hospital.settings import load_hospital_settings

    return load_hospital_settings(config)


@app.command()
def init(config: ConfigOption) -> None:
    """Create the keystore with a fresh storage key (refuses to replace one)."""
    from patientkey.hospital.settings import create_keystore

    try:
        settings = _settings(config)
        create_keystore(settings.keystore)
    except PatientKeyError as exc:
        _fail(exc)
    _err().print(f"keystore created at {settings.keystore}")


@app.command()
def enroll(
    config: ConfigOption,
    name: Annotated[str, typer.Option("--name", help="The patient's display name.")],
    birth_date: Annotated[str, typer.Option("--birth-date", help="YYYY-MM-DD")],
    qr: Annotated[
        Path | None,
        typer.Option("--qr", dir_okay=False, help="Also write the code as a QR PNG here."),
    ] = None,
) -> None:
    """Enroll a patient and print the enrollment code (it carries the patient's KUH)."""
    from patientkey.hospital.enrollment import write_qr_png
    from patientkey.hospital.server import open_runtime

    if not _DATE.fullmatch(birth_date):
        _err().print("[bold red]error:[/] --birth-date must be YYYY-MM-DD")
        raise typer.Exit(2)
    try:
        born = date.fromisoformat(birth_date)
    except ValueError:
        _err().print("[bold red]error:[/] --birth-date is not a calendar date")
        raise typer.Exit(2) from None
    if qr is not None and qr.exists():
        _err().print(f"[bold red]error:[/] {qr} exists: not overwriting it")
        raise typer.Exit(2)
    try:
        with open_runtime(_settings(config), connect=False) as runtime:
            enrollment = runtime.core.enroll(name, born)
        if qr is not None:
            write_qr_png(enrollment.code, qr)
    except PatientKeyError as exc:
        _fail(exc)
    console = _err()
    console.print(f"enrolled patient [bold]{enrollment.patient_id}[/] (KUH version 1)")
    if qr is not None:
        console.print(f"QR code written to {qr} (key material: hand it over, then delete it)")
    console.print("enrollment code (hand it to the patient, out of band):")
    typer.echo(enrollment.code)


@app.command("import")
def import_records(
    directory: Annotated[
        Path,
        typer.Argument(exists=True, help="A directory of FHIR JSON files, or one file."),
    ],
    patient: Annotated[str, typer.Option("--patient", help="The Patient_ID.")],
    config: ConfigOption,
) -> None:
    """Validate every record (all or nothing), store them and announce them to the platform."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    from patientkey.hospital.server import open_runtime

    console = _err()
    try:
        with (
            open_runtime(_settings(config)) as runtime,
            Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=True,
            ) as progress,
        ):
            checking = progress.add_task("validating", total=None)
            loaded = runtime.core.validate(directory)
            progress.update(checking, total=len(loaded), completed=len(loaded))
            storing = progress.add_task("storing and announcing", total=len(loaded))
            imported = runtime.core.store_records(
                patient,
                loaded,
                progress=lambda done, _total: progress.update(storing, completed=done),
            )
    except PatientKeyError as exc:
        _fail(exc)
    counts: dict[str, int] = {}
    for record in imported:
        counts[record.record_type] = counts.get(record.record_type, 0) + 1
    summary = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(counts.items()))
    console.print(f"imported {summary} for {patient} and announced them to the platform")


@app.command()
def generate(
    count: Annotated[int, typer.Option("--count", min=1, help="How many bundles.")],
    seed: Annotated[int, typer.Option("--seed", help="Deterministic seed.")],
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Output directory.")],
    patients: Annotated[
        int | None,
        typer.Option("--patients", min=1, help="Spread the bundles over this many patients."),
    ] = None,
) -> None:
    """Write synthetic KBV e-prescription Bundles (valid FHIR R4) for tests and demos."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from patientkey.fhir.synthetic import write_bundles

    console = _err()
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("writing {task.fields[count]} bundles"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            progress.add_task("generate", total=None, count=count)
            written = write_bundles(out, count, seed, patients=patients)
    except PatientKeyError as exc:
        _fail(exc)
    console.print(f"wrote {len(written)} bundles to {out}")


@app.command()
def patients(config: ConfigOption) -> None:
    """List enrolled patients with their KUH version and record count."""
    from patientkey.hospital.server import open_runtime

    try:
        with open_runtime(_settings(config), connect=False) as runtime:
            rows = runtime.core.patients()
    except PatientKeyError as exc:
        _fail(exc)
    table = Table(title=f"{len(rows)} patients")
    table.add_column("Patient_ID", no_wrap=True)
    for column in ("name", "born", "KUH", "records", "enrolled"):
        table.add_column(column)
    for row in rows:
        kuh = f"v{row.kuh_version}"
        if row.pending_version is not None:
            kuh += f" (v{row.pending_version} pending)"
        table.add_row(
            row.patient_id,
            row.display_name,
            row.birth_date.isoformat(),
            kuh,
            str(row.records),
            row.enrolled_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)
