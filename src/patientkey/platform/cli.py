"""``patientkey platform ...``: the platform operator's commands (typer).

* ``charge-wallet`` — charge a wallet's KUE pool from the platform's QKD supply and
  write the wallet half (key material, mode 0600); creates the account;
* ``register-thirdparty`` — register a third party from its export JSON;
* ``events`` — the event log (metadata only), optionally of one account;
* ``stats`` — row counts;
* ``audit-check`` — re-derive the transparency log from the event rows (exit 1 if
  a row or node was changed after it was logged).

Every command reads the platform's TOML file and migrates its database first, so
they work before the server ever ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from patientkey.errors import ConfigError, InvalidInput, PatientKeyError
from patientkey.fsutil import write_private
from patientkey.platform.settings import PlatformSettings, load_platform_settings
from patientkey.storage import Database, Party, PlatformRepo, SqlStore, open_database

if TYPE_CHECKING:
    from patientkey.authz.clients import RegisteredClient

__all__ = ["app"]

app = typer.Typer(help="The platform (EPP): wallets, third parties, audit.", no_args_is_help=True)
console = Console()

ConfigOption = Annotated[
    Path,
    typer.Option("--config", exists=True, dir_okay=False, help="The platform's TOML file."),
]


def _open(config: Path) -> tuple[PlatformSettings, Database]:
    settings = load_platform_settings(config)
    db = open_database(settings.database, Party.PLATFORM)
    db.upgrade()
    return settings, db


def _fail(exc: PatientKeyError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc.detail}")
    return typer.Exit(2)


@app.command("charge-wallet")
def charge_wallet_command(
    config: ConfigOption,
    user: Annotated[str, typer.Option("--user", help="The wallet's User_ID (certificate CN).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the wallet half (0600).")],
    count: Annotated[
        int, typer.Option("--count", min=1, max=1_000_000, help="Keys per direction.")
    ] = 1024,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --out file.")
    ] = False,
) -> None:
    """Charge a wallet's KUE pool ("quantum key SIM") from the platform's QKD supply.

    The platform (master SAE) draws 2 x COUNT keys shared with the charging terminal
    (``charger_sae``, a slave SAE at another KME site), which fetches its copies by
    key ID: those become the wallet half, written as ``KeyPool.to_dict()`` JSON for
    ``patientkey wallet charge``; the platform keeps its own copies.
    """
    from patientkey.keysupply.etsi014 import Etsi014Client
    from patientkey.platform.kue import charge_wallet

    if out.exists() and not force:
        console.print(f"[red]error:[/red] {out} exists (use --force to replace it)")
        raise typer.Exit(2)
    if not out.parent.is_dir():
        console.print(f"[red]error:[/red] {out.parent} is not a directory")
        raise typer.Exit(2)
    try:
        settings, db = _open(config)
        if settings.kme_url is None:
            raise ConfigError("charging needs kme_url: the platform's QKD supply")
        charger_files = (settings.pki_dir / f"{settings.charger_sae}.pem",)
        if not all(p.is_file() for p in charger_files):
            raise ConfigError(
                f"no certificate for the charging terminal {settings.charger_sae!r} in "
                f"{settings.pki_dir} (patientkey pki init --names {settings.charger_sae})"
            )
        platform_supply = Etsi014Client.from_pki(settings.kme_url, settings.pki_dir, settings.name)
        charger_supply = Etsi014Client.from_pki(
            settings.charger_kme_url or settings.kme_url, settings.pki_dir, settings.charger_sae
        )
        with (
            db,
            platform_supply,
            charger_supply,
            Progress(
                TextColumn("drawing keys"), BarColumn(), MofNCompleteColumn(), console=console
            ) as progress,
        ):
            task = progress.add_task("charge", total=2 * count)
            result = charge_wallet(
                SqlStore(db, PlatformRepo),
                platform_supply,
                user_id=user,
                count=count,
                me=settings.name,
                charger=settings.charger_sae,
                charger_supply=charger_supply,
                progress=lambda done: progress.update(task, completed=done),
            )
        write_private(out, json.dumps(result.wallet_pool).encode("utf-8"))
    except PatientKeyError as exc:
        raise _fail(exc) from exc
    verb = "created and charged" if result.account_created else "charged"
    console.print(
        f"[green]{user}[/green] {verb}: {count} keys per direction; wallet half in {out} "
        "(key material: load it with `patientkey wallet charge`, which deletes it)"
    )


@app.command("register-thirdparty")
def register_thirdparty_command(
    config: ConfigOption,
    export: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="`patientkey thirdparty export` JSON."),
    ],
) -> None:
    """Register a third party (pharmacy, regulator, app) from its export file."""
    from patientkey.platform.core import register_third_party
    from patientkey.platform.settings import ca_certificate

    try:
        data = json.loads(export.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] cannot read {export}: {exc}")
        raise typer.Exit(2) from exc
    if not isinstance(data, dict):
        console.print("[red]error:[/red] the export must be a JSON object")
        raise typer.Exit(2)
    try:
        settings, db = _open(config)
        with db:
            document = data.get("oauth_client")
            client = None if document is None else _parse_client(settings, document)
            if client is not None and client.client_id != data.get("b_id"):
                raise InvalidInput("the OAuth client_id must be the third party's b_id")
            third_party = register_third_party(
                SqlStore(db, PlatformRepo), data, ca_certificate=ca_certificate(settings)
            )
            if client is not None:
                _register_client(db, client)
    except PatientKeyError as exc:
        raise _fail(exc) from exc
    console.print(f"registered third party [green]{third_party.b_id}[/green]")
    if third_party.b_id not in settings.third_parties:
        console.print(
            f"[yellow]note:[/yellow] add {third_party.b_id!r} to third_parties and "
            f"[peers.{third_party.b_id}] in {config} so the platform can relay to it"
        )


def _parse_client(settings: PlatformSettings, document: object) -> RegisteredClient:
    """An RFC 7591 client document, checked against the scenario catalog."""
    from patientkey.authz.catalog import load_catalog
    from patientkey.authz.registration import parse_registration

    if not isinstance(document, dict):
        raise InvalidInput("oauth_client must be a JSON object")
    return parse_registration(document, catalog=load_catalog(settings.scenarios))


def _register_client(db: Database, client: RegisteredClient) -> None:
    """Register (or replace) an OAuth client."""
    from patientkey.storage.authz import authz_store

    with authz_store(db).transaction() as repo:
        repo.clients.register(client, replace=True)
        repo.log_event("authz.client_registered", None, {"client_id": client.client_id})


@app.command("register-client")
def register_client_command(
    config: ConfigOption,
    document: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="RFC 7591 client metadata JSON."),
    ],
) -> None:
    """Register an app as an OAuth client (private_key_jwt, CIBA poll or ping)."""
    try:
        data = json.loads(document.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] cannot read {document}: {exc}")
        raise typer.Exit(2) from exc
    try:
        settings, db = _open(config)
        with db:
            client = _parse_client(settings, data)
            _register_client(db, client)
    except PatientKeyError as exc:
        raise _fail(exc) from exc
    console.print(
        f"registered OAuth client [green]{client.client_id}[/green] "
        f"(scenarios: {', '.join(sorted(client.info.scenarios))})"
    )


@app.command("events")
def events_command(
    config: ConfigOption,
    user: Annotated[str | None, typer.Option("--user", help="Only this account's events.")] = None,
    after: Annotated[int, typer.Option("--after", min=0, help="Events after this seq.")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 100,
) -> None:
    """Show the event log (identifiers and counts only, never health data)."""
    try:
        _, db = _open(config)
        with db, db.transaction() as session:
            events = PlatformRepo(session).events(user_id=user, after=after, limit=limit)
    except PatientKeyError as exc:
        raise _fail(exc) from exc
    table = Table("seq", "at (UTC)", "kind", "user", "detail")
    for event in events:
        detail = " ".join(f"{k}={v}" for k, v in sorted(event.detail.items()))
        table.add_row(
            str(event.seq),
            event.at.strftime("%Y-%m-%d %H:%M:%S"),
            event.kind,
            event.user_id or "",
            detail,
        )
    console.print(table)


@app.command("stats")
def stats_command(config: ConfigOption) -> None:
    """Row counts: accounts, bindings, records, shares, dispense states, KUE keys."""
    try:
        _, db = _open(config)
        with db, db.transaction() as session:
            counts = PlatformRepo(session).counts()
    except PatientKeyError as exc:
        raise _fail(exc) from exc
    table = Table("what", "count")
    for name, value in counts.items():
        table.add_row(name, str(value))
    console.print(table)


@app.command("audit-check")
def audit_check_command(
    config: ConfigOption,
    chunk: Annotated[int, typer.Option(min=1, max=100_000, help="Leaves per read.")] = 10_000,
) -> None:
    """Re-derive the transparency log from the event rows; exit 1 if anything was rewritten.

    Finds event rows altered or deleted after they were sequenced and stored tree
    nodes that are not the hash of their children (``platform.audit.check_log``).
    """
    from patientkey.platform.audit import check_log

    try:
        _, db = _open(config)
        with (
            db,
            Progress(
                TextColumn("checking the log"), BarColumn(), MofNCompleteColumn(), console=console
            ) as bar,
        ):
            task = bar.add_task("check", total=None)
            result = check_log(
                SqlStore(db, PlatformRepo),
                chunk=chunk,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except PatientKeyError as exc:
        raise _fail(exc) from exc
    if result.ok:
        console.print(
            f"[green]✔[/] the log of {result.size:,} events is intact "
            f"({result.nodes:,} stored hashes re-derived)"
        )
        return
    table = Table("level", "index", "problem", title="[bold red]the stored log was rewritten[/]")
    for problem in result.problems:
        table.add_row(str(problem.level), str(problem.index), problem.what)
    console.print(table)
    raise typer.Exit(1)
