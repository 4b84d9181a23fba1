"""``patientkey qkd``: the simulated BB84 link and the key budget."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Quantum key distribution: simulate a BB84 link, report key budgets.")


@app.command()
def simulate(
    pulses: int = typer.Option(1_000_000, min=1, help="Photons Alice sends."),
    eve: float = typer.Option(0.0, min=0.0, max=1.0, help="Fraction intercepted by Eve."),
    noise: float = typer.Option(0.01, min=0.0, max=0.5, help="Channel bit-flip probability."),
    loss: float = typer.Option(0.0, min=0.0, max=0.999, help="Probability a pulse is lost."),
    seed: int | None = typer.Option(None, help="Random seed (repeatable runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run one BB84 round: sifting, QBER estimate, Cascade, privacy amplification."""
    from patientkey.kme.bb84 import LinkParams, simulate

    result = simulate(LinkParams(pulses=pulses, eve=eve, noise=noise, loss=loss), seed=seed)
    summary = result.summary()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table(title=f"BB84 link, {pulses:,} pulses, eve={eve}, noise={noise}, loss={loss}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in summary.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    if result.aborted:
        Console().print("[bold red]QBER above 11 %: the link aborts and yields no key.[/]")


@app.command()
def budget(
    link_bps: float = typer.Option(
        None, help="Secret key rate of the link in bit/s (default: measured from a simulation)."
    ),
    pulse_rate: float = typer.Option(
        1e9, help="Source pulse rate in Hz, used to turn a simulation into bit/s."
    ),
    loss: float = typer.Option(
        0.99,
        min=0.0,
        max=0.9999,
        help="Channel + detector loss of the simulated link (0.99 = 20 dB).",
    ),
    message_rate: float = typer.Option(1770.0, help="Messages per second on the hop."),
    messages: list[int] = typer.Option([100, 1000], help="Session rekey after N messages."),
    seconds: float = typer.Option(60.0, help="Session rekey after T seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print rows as JSON."),
) -> None:
    """QKD key bits per message under each rekey policy, and the message rate a link sustains."""
    from patientkey.keysupply.rekey import RekeyPolicy, budget_row

    source = "given"
    if link_bps is None:
        from patientkey.kme.bb84 import LinkParams, simulate

        pulses = 5_000_000
        result = simulate(LinkParams(pulses=pulses, noise=0.02, loss=loss), seed=1)
        link_bps = result.secret_bits / pulses * pulse_rate
        source = f"simulated BB84, 2 % noise, loss {loss:g}, {pulse_rate:g} pulses/s"
    policies = [RekeyPolicy.per_message()] + [
        RekeyPolicy(messages=n, seconds=seconds) for n in messages
    ]
    rows = [budget_row(p, link_bps, message_rate) for p in policies]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(
        title=f"Key budget: link {link_bps:,.0f} bit/s ({source}), {message_rate:g} msg/s"
    )
    for col in ("policy", "QKD bits / message", "sustainable msg/s"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for row in rows:
        table.add_row(
            str(row["policy"]),
            f"{row['qkd_bits_per_message']:g}",
            f"{row['sustainable_msgs_per_s']:,}",
        )
    Console().print(table)
