"""``patientkey thirdparty ...``: the pharmacist's commands (typer adapter).

================================================  ==========================================
command                                           does
================================================  ==========================================
``init --config F``                               create the keystore (HPKE pair, storage key)
``export --config F --out FILE``                  registry entry for the platform operator,
                                                  with the OAuth client registration
``received --config F``                           list received records (decrypted summary)
``show --config F --his H P_ID``                  one record: medication, dosage, ...
``authorize --config F --user U --record H:P``    ask the patient (CIBA), wait for the token
``token --config F AUTH_REQ_ID``                  poll for a pending request's token
``tokens --config F``                             the tokens held (redacted) and pending asks
``revoke-token --config F GRANT``                 give a token and its grant up (RFC 7009)
``claim|complete|release --config F --his H P``   dispense through the platform (needs a
                                                  token allowing ``use`` on the prescription)
================================================  ==========================================

Commands that open the keystore read its passphrase from ``PATIENTKEY_PASSPHRASE``
and refuse to run without it. Errors exit with status 1 (2 for configuration errors).
The decrypted records are shown on the terminal only; nothing is logged. Access tokens
are bearer secrets: they stay in the token file (mode 0600) and are only ever shown
cut short.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from patientkey.errors import ConfigError, NotFound, PatientKeyError

if TYPE_CHECKING:
    from patientkey.authz.rar import AuthorizationDetails
    from patientkey.thirdparty.core import DispenseAction
    from patientkey.thirdparty.oauth import BackchannelTicket, OAuthClient, TokenSet
    from patientkey.thirdparty.settings import ThirdPartySettings
    from patientkey.thirdparty.tokens import TokenFile

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
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            help="A scenario this client may ask for (repeatable; default: the settings').",
        ),
    ] = None,
) -> None:
    """Write {"b_id", "hpke_public", "certificate_pem", "hpke_signature", "oauth_client"}.

    The signature over the HPKE public key is made with the certificate's private key,
    so wallets can tell the platform hands out this party's own key. ``oauth_client`` is
    the RFC 7591 registration of this party as an OAuth client: CIBA poll mode,
    ``private_key_jwt`` with the certificate's key (ES256) as its JWKS.
    """
    import base64

    from patientkey.thirdparty.oauth import client_registration
    from patientkey.thirdparty.settings import load_keys

    try:
        settings = _settings(config)
        keys = load_keys(settings.keystore)
        try:
            certificate = settings.files.cert.read_text(encoding="ascii")
            cert_key = settings.files.key.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        registration = client_registration(
            settings.name,
            certificate_pem=certificate,
            client_name=settings.oauth_client_name,
            scenarios=scenario or settings.scenarios,
        )
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
        "oauth_client": registration,
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


# ── OAuth / CIBA: asking the patient, the tokens held ─────────────────────────────


def _oauth(settings: ThirdPartySettings) -> tuple[OAuthClient, TokenFile]:
    from patientkey.thirdparty.oauth import OAuthClient
    from patientkey.thirdparty.tokens import TokenFile

    return OAuthClient.from_settings(settings), TokenFile(settings.token_path)


def _when(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _describe(details: AuthorizationDetails) -> str:
    """One line per authorization details object: what, of which records, how long."""
    lines = []
    for entry in details:
        records = entry.records
        which = ",".join(records.ids) if records.ids is not None else "*"
        where = f"{records.his_id or '*'}:{which}"
        if records.from_ is not None or records.to is not None:
            where += f" ({records.from_ or '…'} to {records.to or '…'})"
        period = f" for {entry.duration} s" if entry.duration is not None else ""
        lines.append(
            f"{entry.purpose}: {','.join(entry.actions)} on "
            f"{','.join(entry.record_types)} {where}{period}"
        )
    return "\n".join(lines)


def _granted(token: TokenSet, requested: AuthorizationDetails | None) -> None:
    """Print what the patient granted (RFC 9396 §7: compare with what was asked)."""
    Console().print(
        f"granted: {token.ref} for {token.user_id}, token {token.redacted()} "
        f"(expires {_when(token.expires_at)})",
        highlight=False,
    )
    Console().print(_describe(token.authorization_details), highlight=False)
    from patientkey.thirdparty.oauth import narrowed

    if requested is not None and narrowed(requested, token.authorization_details):
        _err().print("note: the patient approved less than was asked", highlight=False)


def _wait_for_token(
    client: OAuthClient, store: TokenFile, ticket: BackchannelTicket, *, wait: bool
) -> TokenSet | None:
    """Poll for ``ticket``'s token; the token (stored), or None while undecided.

    A final answer (denied, expired, unknown or used auth_req_id) drops the pending
    request, then raises; a transport or configuration failure keeps it for a retry.
    """
    from patientkey.authz.errors import (
        AuthorizationPending,
        DeniedByUser,
        ExpiredToken,
        InvalidGrant,
        SlowDown,
    )

    if wait:
        _err().print(
            f"waiting for {ticket.user_id} to decide (polling every {ticket.interval} s, "
            f"until {_when(ticket.expires_at)}) ...",
            highlight=False,
        )
    try:
        token = client.poll_token(ticket, wait=wait, on_pending=store.put_pending)
    except (AuthorizationPending, SlowDown) as exc:
        latest = store.get_pending(ticket.auth_req_id)
        _err().print(
            f"pending: {exc.detail}; poll again in {latest.interval} s "
            f"(patientkey thirdparty token {ticket.auth_req_id})",
            highlight=False,
        )
        return None
    except (DeniedByUser, ExpiredToken, InvalidGrant):
        store.forget_pending(ticket.auth_req_id)
        raise
    store.redeem(ticket.auth_req_id, token)
    return token


RecordOption = Annotated[
    list[str],
    typer.Option(
        "--record",
        help="A record to ask for: HIS_ID:P_ID, or HIS_ID:* for all of a hospital (repeatable).",
    ),
]


@app.command()
def authorize(  # noqa: PLR0917 - typer maps each parameter to an option; never positional
    config: ConfigOption,
    user: Annotated[str, typer.Option("--user", help="The patient's User_ID (login_hint).")],
    record: RecordOption,
    purpose: Annotated[
        str | None,
        typer.Option("--purpose", help="The scenario (default: the first of the settings')."),
    ] = None,
    actions: Annotated[
        str, typer.Option("--actions", help="Comma-separated actions to ask for.")
    ] = "view,fetch,store,use",
    record_type: Annotated[
        str, typer.Option("--record-type", help="prescription or report.")
    ] = "prescription",
    duration: Annotated[
        int | None, typer.Option("--duration", min=1, help="Seconds the grant should last.")
    ] = None,
    binding_message: Annotated[
        str | None,
        typer.Option(
            "--binding-message",
            help="Shown on the patient's wallet and here, so both can match (default: a code).",
        ),
    ] = None,
    expiry: Annotated[
        int | None,
        typer.Option("--expiry", min=1, help="Seconds the patient has to decide."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Poll until the patient decides.")
    ] = True,
) -> None:
    """Ask a patient for access (OpenID CIBA); with --wait, keep the token they grant."""
    import secrets

    from patientkey.thirdparty.oauth import record_details

    try:
        settings = _settings(config)
        details = record_details(
            record,
            purpose=purpose or settings.scenarios[0],
            actions=[a.strip() for a in actions.split(",") if a.strip()],
            record_type=record_type,
            duration=duration,
        )
        message = binding_message or f"{settings.name} {secrets.token_hex(3).upper()}"
        client, store = _oauth(settings)
        with client:
            ticket = client.request_authorization(user, details, message, expiry)
            store.put_pending(ticket)
            Console().print(f"auth_req_id: {ticket.auth_req_id}", highlight=False, soft_wrap=True)
            _err().print(
                f"asked {user}; binding message: {message!r}; expires {_when(ticket.expires_at)}",
                highlight=False,
            )
            if not wait:
                return
            token = _wait_for_token(client, store, ticket, wait=True)
    except PatientKeyError as exc:
        _fail(exc)
    if token is not None:
        _granted(token, ticket.requested)


@app.command()
def token(
    config: ConfigOption,
    auth_req_id: Annotated[str, typer.Argument(help="The auth_req_id authorize printed.")],
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Poll until the patient decides.")
    ] = False,
) -> None:
    """Poll for the token of a pending authorization request (once, or until decided)."""
    try:
        settings = _settings(config)
        client, store = _oauth(settings)
        with client:
            ticket = store.get_pending(auth_req_id)
            token = _wait_for_token(client, store, ticket, wait=wait)
    except PatientKeyError as exc:
        _fail(exc)
    if token is not None:
        _granted(token, ticket.requested)


@app.command()
def tokens(
    config: ConfigOption,
    live: Annotated[
        bool, typer.Option("--live", help="Ask the platform whether each is active (RFC 7662).")
    ] = False,
) -> None:
    """List the access tokens held (cut short) and the requests still pending."""
    import time

    from patientkey.thirdparty.tokens import TokenFile

    try:
        settings = _settings(config)
        store = TokenFile(settings.token_path)
        held = sorted(store.tokens(), key=lambda t: (t.user_id, t.expires_at))
        pending = store.pending()
        states: dict[str, str] = {}
        if live and held:
            from patientkey.thirdparty.oauth import OAuthClient

            with OAuthClient.from_settings(settings) as client:
                for item in held:
                    answer = client.introspect(item.access_token)
                    states[item.ref] = "active" if answer["active"] else "inactive"
    except PatientKeyError as exc:
        _fail(exc)
    now = time.time()
    table = Table(title=f"{len(held)} access tokens")
    for column in ("grant", "patient", "token", "expires", "granted"):
        table.add_column(column)
    if live:
        table.add_column("platform says")
    for item in held:
        expires = _when(item.expires_at) + ("" if item.usable(now) else " (expired)")
        row = [
            item.ref,
            item.user_id,
            item.redacted(),
            expires,
            _describe(item.authorization_details),
        ]
        if live:
            row.append(states.get(item.ref, "-"))
        table.add_row(*row)
    Console().print(table)
    if pending:
        waiting = Table(title=f"{len(pending)} pending requests")
        for column in ("auth_req_id", "patient", "binding message", "expires", "asked"):
            waiting.add_column(column)
        for ticket in pending:
            waiting.add_row(
                ticket.auth_req_id,
                ticket.user_id,
                ticket.binding_message,
                _when(ticket.expires_at) + (" (expired)" if ticket.expired(now) else ""),
                _describe(ticket.requested),
            )
        Console().print(waiting)


@app.command("revoke-token")
def revoke_token(
    config: ConfigOption,
    grant: Annotated[str, typer.Argument(help="The token's grant, as `tokens` lists it.")],
) -> None:
    """Give a token up at the platform (RFC 7009: its grant ends), then forget it."""
    try:
        settings = _settings(config)
        client, store = _oauth(settings)
        with client:
            held = {item.ref: item for item in store.tokens()}
            if grant not in held:
                raise NotFound(f"no token {grant!r} is held (see `patientkey thirdparty tokens`)")
            client.revoke(held[grant].access_token)
        store.forget_token(grant)
    except PatientKeyError as exc:
        _fail(exc)
    Console().print(f"revoked {grant} at the platform and forgot its token", highlight=False)
