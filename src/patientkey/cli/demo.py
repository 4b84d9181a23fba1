"""``patientkey demo``: the main demo (``make demo``)."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    workdir: Path | None = typer.Option(None, help="Keep PKI, config and logs here."),
) -> None:
    """Two sites, a BB84 link, keys over ETSI GS QKD 014, then an eavesdropper."""
    from patientkey.demo.keysupply import run

    raise typer.Exit(run(workdir))
