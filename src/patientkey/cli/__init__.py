"""The ``patientkey`` command: a thin typer adapter over the library.

Each command group lives in its own module and imports the heavy parts of the
library lazily, inside the command, so ``patientkey --help`` stays fast.
"""

from __future__ import annotations

import logging

import typer

from patientkey import __version__
from patientkey.cli import bench, demo, pki, qkd, serve
from patientkey.hospital.cli import app as hospital_app
from patientkey.platform.cli import app as platform_app
from patientkey.thirdparty.cli import app as thirdparty_app
from patientkey.wallet.cli import app as wallet_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="patientkey",
    help="Patient-approved, platform-blind health data under quantum-distributed keys.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold key material
)
qkd.app.command("demo")(demo.keysupply_demo)
app.add_typer(qkd.app, name="qkd")
app.add_typer(pki.app, name="pki")
app.add_typer(serve.app, name="serve")
app.add_typer(bench.app, name="bench")
app.add_typer(hospital_app, name="hospital", help="The hospital (HIS gateway).")
app.add_typer(platform_app, name="platform", help="The platform (EPP) operator's commands.")
app.add_typer(thirdparty_app, name="thirdparty", help="A third party (pharmacy).")
app.add_typer(wallet_app, name="wallet", help="The patient's wallet.")
app.command("demo")(demo.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    app()
