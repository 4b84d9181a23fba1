"""``patientkey demo``: the main demo (``make demo``)."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    data: Path | None = typer.Option(
        None,
        exists=True,
        file_okay=False,
        help="Import the valid bundles of DIR instead of "
        "generated ones (e.g. ../shared/data/erezept/1.2.0).",
    ),
    workdir: Path | None = typer.Option(
        None, file_okay=False, help="Keep every party's database, config and log here."
    ),
    ui: bool = typer.Option(
        False, "--ui", help="Then serve the patient's wallet UI (address printed) until Ctrl-C."
    ),
) -> None:
    """Bind, fetch, rotate, share and dispense across four processes, platform-blind."""
    from patientkey.demo.prescriptions import run

    raise typer.Exit(run(data, workdir, ui=ui))


def keysupply_demo(
    workdir: Path | None = typer.Option(None, file_okay=False, help="Keep PKI, config, logs."),
) -> None:
    """Two sites, a BB84 link, keys over ETSI GS QKD 014, then an eavesdropper."""
    from patientkey.demo.keysupply import run

    raise typer.Exit(run(workdir))
