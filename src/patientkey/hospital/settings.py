"""The hospital gateway's settings file and its keystore.

On top of :class:`~patientkey.service.party.PartySettings`::

    keystore = "hospital-1.keys"   # the storage key wrapping every KUH version
    platform = "platform"          # the platform's party name ([peers.platform] url)

The keystore (``patientkey.crypto`` keystore file, passphrase from the environment
variable ``PATIENTKEY_PASSPHRASE``) holds one secret, the 32-byte storage key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Self

from pydantic import model_validator

from patientkey.crypto import DEFAULT_ARGON2, Argon2Params, read_keystore, write_keystore
from patientkey.errors import ConfigError
from patientkey.pki import valid_party_name
from patientkey.service.party import (
    PASSPHRASE_ENV,
    PartySettings,
    load_settings,
    passphrase_from_env,
)

__all__ = [
    "PASSPHRASE_ENV",
    "STORAGE_KEY_NAME",
    "HospitalSettings",
    "create_keystore",
    "load_hospital_settings",
    "load_storage_key",
]

STORAGE_KEY_NAME: Final = "hospital-storage-key"


class HospitalSettings(PartySettings):
    """A hospital gateway: ``name`` is its HIS_ID."""

    keystore: Path
    platform: str = "platform"

    @model_validator(mode="after")
    def _platform_name(self) -> Self:
        if not valid_party_name(self.platform):
            raise ValueError(f"invalid platform party name {self.platform!r}")
        return self


def load_hospital_settings(path: Path) -> HospitalSettings:
    """Read ``path``; a relative ``keystore`` is relative to the file, like ``pki_dir``."""
    settings = load_settings(path, HospitalSettings)
    if not settings.keystore.is_absolute():
        keystore = path.resolve().parent / settings.keystore
        settings = settings.model_copy(update={"keystore": keystore})
    return settings


def create_keystore(path: Path, *, params: Argon2Params = DEFAULT_ARGON2) -> None:
    """Write a keystore with a fresh storage key; ConfigError if one exists already."""
    if path.exists():
        raise ConfigError(f"{path} exists: refusing to replace a keystore (its keys would be lost)")
    write_keystore(path, passphrase_from_env(), {STORAGE_KEY_NAME: os.urandom(32)}, params=params)


def load_storage_key(path: Path) -> bytes:
    """The storage key from the keystore at ``path`` (CryptoError for a wrong passphrase)."""
    if not path.is_file():
        raise ConfigError(f"no keystore at {path} (run `patientkey hospital init` first)")
    key = read_keystore(path, passphrase_from_env()).get(STORAGE_KEY_NAME)
    if key is None or len(key) != 32:
        raise ConfigError(f"{path} holds no hospital storage key")
    return key
