"""The wallet's settings file.

Like :class:`patientkey.service.party.PartySettings` but for a client: no
server, no database. Paths are relative to the file::

    name = "u-alice"            # = User_ID = the CN of the wallet's client certificate
    pki_dir = "pki"             # ca.pem, u-alice.pem, u-alice.key
    keystore = "wallet.keystore"
    data_dir = "wallet-data"    # sealed records cached locally (ciphertext only)
    kue_policy = "preferred"    # required | preferred | none: the KUE pool, or ML-KEM+X25519
    rekey_messages = 1          # 1 = a fresh pool key per message
    rekey_seconds = 300
    [peers.platform]            # exactly one peer: the platform (its key is its party name)
    url = "https://localhost:9001"

    [keystore_kdf]              # optional: Argon2id cost (default RFC 9106 §4 option 2)
    time_cost = 3
    memory_cost = 65536         # KiB
    parallelism = 4
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patientkey.crypto import DEFAULT_ARGON2, Argon2Params
from patientkey.errors import ConfigError, InvalidInput
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.keysupply.rekey import RekeyPolicy
from patientkey.pki import PartyFiles, party_files, valid_party_name
from patientkey.service.party import PeerSettings

__all__ = ["KdfSettings", "WalletSettings", "load_wallet_settings"]

_MODEL = ConfigDict(extra="forbid", frozen=True)


class KdfSettings(BaseModel):
    """Argon2id cost of the keystore passphrase (see :class:`patientkey.crypto.Argon2Params`)."""

    model_config = _MODEL

    time_cost: int = DEFAULT_ARGON2.time_cost
    memory_cost: int = DEFAULT_ARGON2.memory_cost
    parallelism: int = DEFAULT_ARGON2.parallelism

    @model_validator(mode="after")
    def _valid(self) -> Self:
        self.params()
        return self

    def params(self) -> Argon2Params:
        try:
            return Argon2Params(
                time_cost=self.time_cost,
                memory_cost=self.memory_cost,
                parallelism=self.parallelism,
            )
        except InvalidInput as exc:
            raise ValueError(exc.detail) from exc


class WalletSettings(BaseModel):
    """Settings of one patient's wallet."""

    model_config = _MODEL

    name: str
    pki_dir: Path
    keystore: Path
    data_dir: Path
    kue_policy: QkdPolicy = QkdPolicy.PREFERRED
    rekey_messages: int = Field(1, ge=1, le=1_000_000)
    rekey_seconds: float = Field(300.0, gt=0, le=86_400)
    timeout_s: float = Field(10.0, gt=0, le=600)
    keystore_kdf: KdfSettings = Field(default_factory=KdfSettings)
    peers: dict[str, PeerSettings]

    @model_validator(mode="after")
    def _check(self) -> Self:
        for name in (self.name, *self.peers):
            if not valid_party_name(name):
                raise ValueError(f"invalid party name {name!r}")
        if len(self.peers) != 1:
            raise ValueError("a wallet has exactly one peer, the platform ([peers.<name>] url)")
        return self

    @property
    def platform(self) -> str:
        """The platform's party name (its certificate CN)."""
        return next(iter(self.peers))

    @property
    def platform_url(self) -> str:
        return self.peers[self.platform].url

    @property
    def files(self) -> PartyFiles:
        return party_files(self.pki_dir, self.name)

    @property
    def rekey(self) -> RekeyPolicy:
        return RekeyPolicy(messages=self.rekey_messages, seconds=self.rekey_seconds)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)
    for key in ("pki_dir", "keystore", "data_dir"):
        if key in out and not Path(str(out[key])).is_absolute():
            out[key] = str(base / str(out[key]))
    return out


def load_wallet_settings(path: Path) -> WalletSettings:
    """Read and validate a wallet's TOML file; ConfigError on anything wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        return WalletSettings.model_validate(_resolve_paths(data, path.resolve().parent))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ConfigError(f"{path}: {where}: {first.get('msg')}") from exc
