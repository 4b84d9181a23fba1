"""``patientkey pki``: the development PKI every mutual-TLS link uses."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Development PKI (a CA and one certificate per party).")


@app.command()
def init(
    names: list[str] = typer.Argument(..., help="Party names (certificate CN = SAE / party ID)."),
    directory: Path = typer.Option(..., "--dir", help="Where to write ca.pem, NAME.pem, NAME.key."),
    _names_flag: bool = typer.Option(
        False, "--names", help="Optional marker before the names: `--names kme platform ...`."
    ),
) -> None:
    """Create the CA (once) and a certificate for each missing party name."""
    from patientkey.pki import init_pki

    init_pki(directory, names)
    typer.echo(f"PKI in {directory}: CA and certificates for {', '.join(names)}")
