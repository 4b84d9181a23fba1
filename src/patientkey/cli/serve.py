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
