"""``patientkey serve``: run one party as a service."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Run a PatientKey service.")


@app.command()
def kme(
    config: Path = typer.Option(..., "--config", exists=True, dir_okay=False, help="KME TOML."),
    port_file: Path | None = typer.Option(
        None, help="Write the bound port here once ready (use with port = 0)."
    ),
) -> None:
    """The embedded KME: ETSI GS QKD 014 over mutual TLS, pools filled by simulated BB84."""
    from patientkey.kme.server import serve

    serve(config, port_file=port_file)


_CONFIG = typer.Option(..., "--config", exists=True, dir_okay=False, help="The party's TOML.")
_PORT_FILE = typer.Option(None, help="Write the bound port here once ready (use with port = 0).")


@app.command()
def platform(
    config: Path = _CONFIG,
    port_file: Path | None = _PORT_FILE,
    workers: int | None = typer.Option(None, min=1, help="Worker processes (default: config)."),
) -> None:
    """The platform (EPP): bindings, ciphertext records, shares, dispensing."""
    from patientkey.platform.server import serve as run

    run(config, port_file=port_file, workers=workers)


@app.command()
def hospital(config: Path = _CONFIG, port_file: Path | None = _PORT_FILE) -> None:
    """A hospital gateway in front of its HIS."""
    from patientkey.hospital.server import serve as run

    run(config, port_file=port_file)


@app.command()
def thirdparty(config: Path = _CONFIG, port_file: Path | None = _PORT_FILE) -> None:
    """A third party (pharmacy) receiving shared prescriptions."""
    from patientkey.thirdparty.server import serve as run

    run(config, port_file=port_file)
