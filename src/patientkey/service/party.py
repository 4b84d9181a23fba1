"""What every party service shares: its settings file and its hops.

A party's TOML file (paths relative to the file)::

    name = "hospital-1"        # = its certificate CN = its SAE_ID at the KME
    host = "127.0.0.1"
    port = 9002                # 0: any free port (with --port-file)
    pki_dir = "pki"
    database = "sqlite:///hospital-1.db"
    kme_url = "https://localhost:8443"
    qkd_policy = "required"    # required | preferred | none
    rekey_messages = 1         # 1 = a fresh QKD key per message
    rekey_seconds = 300
    [peers.platform]
    url = "https://localhost:9001"

Each party adds its own keys in a subclass of :class:`PartySettings`.
:func:`qkd_hop_end` builds the party's :class:`~patientkey.protocol.channel.HopEnd`
over its key supply: one sender and one receiver per peer, both with the hop
context ``hop:<a>|<b>`` (the two names sorted, so both ends agree).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patientkey.crypto import ReplayCache
from patientkey.errors import ConfigError
from patientkey.keysupply import KeySupply
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.keysupply.rekey import HopReceiver, HopSender, RekeyPolicy
from patientkey.pki import PartyFiles, party_files, valid_party_name
from patientkey.protocol.channel import HopEnd

__all__ = [
    "PASSPHRASE_ENV",
    "PartySettings",
    "PeerSettings",
    "hop_context",
    "load_settings",
    "passphrase_from_env",
    "qkd_hop_end",
]

PASSPHRASE_ENV = "PATIENTKEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


def passphrase_from_env() -> str:
    """The keystore passphrase, only ever from ``PATIENTKEY_PASSPHRASE``; ConfigError without."""
    value = os.environ.get(PASSPHRASE_ENV, "")
    if not value:
        raise ConfigError(f"set {PASSPHRASE_ENV} to the keystore passphrase")
    return value


S = TypeVar("S", bound="PartySettings")


class PeerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = Field(pattern=r"^https://")


class PartySettings(BaseModel):
    """Settings every party has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    pki_dir: Path
    database: str
    kme_url: str | None = Field(None, pattern=r"^https://")
    qkd_policy: QkdPolicy = QkdPolicy.REQUIRED
    rekey_messages: int = Field(1, ge=1, le=1_000_000)
    rekey_seconds: float = Field(300.0, gt=0, le=86_400)
    # QKD keys drawn per enc_keys call (each still keys one message or session):
    # one KME round trip per this many messages instead of one per message.
    qkd_prefetch: int = Field(16, ge=1, le=128)
    replay_cache_entries: int = Field(2_000_000, ge=1000)
    peers: dict[str, PeerSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names(self) -> Self:
        for name in (self.name, *self.peers):
            if not valid_party_name(name):
                raise ValueError(f"invalid party name {name!r}")
        return self

    @property
    def files(self) -> PartyFiles:
        return party_files(self.pki_dir, self.name)

    @property
    def rekey(self) -> RekeyPolicy:
        return RekeyPolicy(messages=self.rekey_messages, seconds=self.rekey_seconds)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)
    for key in ("pki_dir",):
        if key in out and not Path(str(out[key])).is_absolute():
            out[key] = str(base / str(out[key]))
    db = out.get("database")
    if isinstance(db, str) and db.startswith("sqlite:///") and not db.startswith("sqlite:////"):
        rel = db.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            out["database"] = f"sqlite:///{base / rel}"
    return out


def load_settings(path: Path, cls: type[S]) -> S:
    """Read and validate a party's TOML file; ConfigError on anything wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        return cls.model_validate(_resolve_paths(data, path.resolve().parent))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ConfigError(f"{path}: {where}: {first.get('msg')}") from exc


def hop_context(a: str, b: str) -> bytes:
    """The HKDF context of the hop between ``a`` and ``b`` (same at both ends)."""
    return ("hop:" + "|".join(sorted((a, b)))).encode("utf-8")


def qkd_hop_end(
    me: str,
    peers: Iterable[str],
    supply: KeySupply | None,
    *,
    policy: QkdPolicy = QkdPolicy.REQUIRED,
    rekey: RekeyPolicy | None = None,
    replay_cache_entries: int = 2_000_000,
    replay_cache: ReplayCache | None = None,
    prefetch: int = 1,
    receiver: type[HopReceiver] = HopReceiver,
    peer_factory: Callable[[str], tuple[HopSender, HopReceiver] | None] | None = None,
) -> HopEnd:
    """``me``'s hop end towards each of ``peers`` over one key supply.

    ``receiver`` and ``peer_factory`` let a party refine how keys are resolved and add
    peers met at run time (the platform: wallets, each over its own pre-charged pool).
    """
    senders: dict[str, HopSender] = {}
    receivers: dict[str, HopReceiver] = {}
    for peer in peers:
        context = hop_context(me, peer)
        senders[peer] = HopSender(
            peer=peer, context=context, supply=supply, policy=policy, rekey=rekey, prefetch=prefetch
        )
        receivers[peer] = receiver(peer=peer, context=context, supply=supply, policy=policy)
    return HopEnd(
        me,
        senders=senders,
        receivers=receivers,
        replay_cache=(
            replay_cache if replay_cache is not None else ReplayCache(replay_cache_entries)
        ),
        peer_factory=peer_factory,
    )
