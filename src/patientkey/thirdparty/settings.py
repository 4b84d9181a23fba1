"""The third party's settings file and its keystore.

On top of :class:`~patientkey.service.party.PartySettings`::

    keystore = "pharmacy-1.keys"   # HPKE key pair (KBS/KBP) and the storage key
    platform = "platform"          # the platform's party name ([peers.platform] url)

The keystore (``patientkey.crypto`` keystore file, passphrase from the environment
variable ``PATIENTKEY_PASSPHRASE``) holds the HPKE private key (96 bytes, ML-KEM-768
seed ‖ X25519) and a 32-byte storage key that wraps every KUB and every received
record's key at rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

from pydantic import model_validator

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
STORAGE_KEY_NAME: Final = "thirdparty-storage-key"


class ThirdPartySettings(PartySettings):
    """A third party (pharmacy, regulator, health app): ``name`` is its B_ID."""

    keystore: Path
    platform: str = "platform"

    @model_validator(mode="after")
    def _platform_name(self) -> Self:
        if not valid_party_name(self.platform):
            raise ValueError(f"invalid platform party name {self.platform!r}")
        return self


@dataclass(frozen=True, slots=True)
class ThirdPartyKeys:
    """The third party's secrets: its HPKE key pair and its storage key."""

    hpke: HpkeKeyPair
    storage_key: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> ThirdPartyKeys:
        return cls(hpke=HpkeKeyPair.generate(), storage_key=os.urandom(32))


def load_thirdparty_settings(path: Path) -> ThirdPartySettings:
    """Read ``path``; a relative ``keystore`` is relative to the file, like ``pki_dir``."""
    settings = load_settings(path, ThirdPartySettings)
    if not settings.keystore.is_absolute():
        keystore = path.resolve().parent / settings.keystore
        settings = settings.model_copy(update={"keystore": keystore})
    return settings


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
