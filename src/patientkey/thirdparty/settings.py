"""The third party's settings file and its keystore.

On top of :class:`~patientkey.service.party.PartySettings`::

    keystore = "pharmacy-1.keys"   # HPKE key pair (KBS/KBP) and the storage key
    platform = "platform"          # the platform's party name ([peers.platform] url)
    # As an OAuth client of the platform (CIBA, private_key_jwt with the TLS key):
    issuer = "https://localhost:9001"   # the platform's OAuth issuer (default: its peer url)
    client_name = "Apotheke am Markt"   # shown to the patient (default: the name)
    scenarios = ["pharmacy_dispense"]   # what it registers to ask for
    token_store = "pharmacy-1.tokens.json"  # access tokens (default: beside the keystore)

The keystore (``patientkey.crypto`` keystore file, passphrase from the environment
variable ``PATIENTKEY_PASSPHRASE``) holds the HPKE private key (96 bytes, ML-KEM-768
seed ‖ X25519) and a 32-byte storage key that wraps every KUB and every received
record's key at rest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

from pydantic import Field, model_validator

from patientkey.crypto import (
    DEFAULT_ARGON2,
    Argon2Params,
    HpkeKeyPair,
    read_keystore,
    write_keystore,
)
from patientkey.errors import ConfigError, InvalidInput
from patientkey.pki import valid_party_name
from patientkey.service.party import (
    PASSPHRASE_ENV,
    PartySettings,
    load_settings,
    passphrase_from_env,
)

__all__ = [
    "HPKE_KEY_NAME",
    "PASSPHRASE_ENV",
    "STORAGE_KEY_NAME",
    "ThirdPartyKeys",
    "ThirdPartySettings",
    "create_keystore",
    "load_keys",
    "load_thirdparty_settings",
]

HPKE_KEY_NAME: Final = "thirdparty-hpke-private"
_SCENARIO: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
STORAGE_KEY_NAME: Final = "thirdparty-storage-key"


class ThirdPartySettings(PartySettings):
    """A third party (pharmacy, regulator, health app): ``name`` is its B_ID."""

    keystore: Path
    platform: str = "platform"
    issuer: str | None = Field(None, pattern=r"^https://[^?#\s]+$")
    client_name: str | None = Field(None, min_length=1, max_length=200)
    scenarios: tuple[str, ...] = Field(("pharmacy_dispense",), min_length=1, max_length=32)
    token_store: Path | None = None

    @model_validator(mode="after")
    def _platform_name(self) -> Self:
        if not valid_party_name(self.platform):
            raise ValueError(f"invalid platform party name {self.platform!r}")
        if len(set(self.scenarios)) != len(self.scenarios) or not all(
            _SCENARIO.fullmatch(name) for name in self.scenarios
        ):
            raise ValueError("scenarios must be distinct scenario names (a-z, 0-9, _)")
        return self

    @property
    def oauth_issuer(self) -> str:
        """The platform's OAuth issuer: ``issuer``, else the platform's peer URL."""
        if self.issuer is not None:
            return self.issuer.rstrip("/")
        peer = self.peers.get(self.platform)
        if peer is None:
            raise ConfigError(
                f"no OAuth issuer: set issuer or [peers.{self.platform}] url in the settings"
            )
        return peer.url.rstrip("/")

    @property
    def oauth_client_name(self) -> str:
        """The name the patient sees on their wallet when this party asks."""
        return self.client_name or self.name

    @property
    def token_path(self) -> Path:
        """Where the access tokens are kept: ``token_store``, else beside the keystore."""
        if self.token_store is not None:
            return self.token_store
        return self.keystore.with_name(self.keystore.stem + ".tokens.json")


@dataclass(frozen=True, slots=True)
class ThirdPartyKeys:
    """The third party's secrets: its HPKE key pair and its storage key."""

    hpke: HpkeKeyPair
    storage_key: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> ThirdPartyKeys:
        return cls(hpke=HpkeKeyPair.generate(), storage_key=os.urandom(32))


def load_thirdparty_settings(path: Path) -> ThirdPartySettings:
    """Read ``path``; a relative ``keystore`` or ``token_store`` is relative to the file,
    like ``pki_dir``."""
    settings = load_settings(path, ThirdPartySettings)
    base = path.resolve().parent
    update: dict[str, Path] = {}
    if not settings.keystore.is_absolute():
        update["keystore"] = base / settings.keystore
    if settings.token_store is not None and not settings.token_store.is_absolute():
        update["token_store"] = base / settings.token_store
    return settings.model_copy(update=update) if update else settings


def create_keystore(path: Path, *, params: Argon2Params = DEFAULT_ARGON2) -> ThirdPartyKeys:
    """Write a keystore with a fresh key pair and storage key; ConfigError if one exists."""
    if path.exists():
        raise ConfigError(f"{path} exists: refusing to replace a keystore (its keys would be lost)")
    keys = ThirdPartyKeys.generate()
    secrets = {HPKE_KEY_NAME: keys.hpke.private_bytes(), STORAGE_KEY_NAME: keys.storage_key}
    write_keystore(path, passphrase_from_env(), secrets, params=params)
    return keys


def load_keys(path: Path) -> ThirdPartyKeys:
    """The keys in the keystore at ``path`` (CryptoError for a wrong passphrase)."""
    if not path.is_file():
        raise ConfigError(f"no keystore at {path} (run `patientkey thirdparty init` first)")
    secrets = read_keystore(path, passphrase_from_env())
    private, storage = secrets.get(HPKE_KEY_NAME), secrets.get(STORAGE_KEY_NAME)
    if private is None or storage is None or len(storage) != 32:
        raise ConfigError(f"{path} is not a third-party keystore")
    try:
        return ThirdPartyKeys(hpke=HpkeKeyPair.from_private_bytes(private), storage_key=storage)
    except InvalidInput as exc:
        raise ConfigError(f"{path} holds a malformed HPKE key") from exc
