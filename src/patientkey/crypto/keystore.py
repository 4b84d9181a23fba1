"""Local encrypted keystore: named secrets (wallet keys, party keys) under a passphrase.

File (UTF-8 JSON, one object)::

    {"format": "patientkey-keystore", "v": 1,
     "kdf": {"alg": "argon2id", "t": 3, "m": 65536, "p": 4, "salt": b64url(16..64 bytes)},
     "iv": b64url(12 bytes), "ciphertext": b64url(ct || tag)}

``key = Argon2id(passphrase (UTF-8, NFC), salt, t, m KiB, p, 32 bytes)`` (RFC 9106),
``ciphertext = AES-256-GCM(key, iv, JSON {name: b64url(secret)}, aad)`` with
``aad`` the compact JSON of ``format``, ``v`` and ``kdf`` (so the parameters
cannot be swapped). Written atomically (temporary file in the same directory,
fsync, rename), mode 0600. A wrong passphrase, like any tampering, is the
opaque :class:`~patientkey.errors.CryptoError`.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from patientkey.crypto._util import (
    b64url_decode,
    b64url_encode,
    check_bytes,
    check_id,
    compact_json,
    crypto_failure,
    strict_json_loads,
)
from patientkey.errors import InvalidInput, PayloadTooLarge
from patientkey.fsutil import write_private

__all__ = [
    "DEFAULT_ARGON2",
    "MAX_KEYSTORE_BYTES",
    "Argon2Params",
    "Keystore",
    "read_keystore",
    "write_keystore",
]

_log = logging.getLogger(__name__)

_FORMAT: Final = "patientkey-keystore"
_VERSION: Final = 1
_IV_LEN: Final = 12
MAX_KEYSTORE_BYTES: Final = 16 * 1024 * 1024
_MAX_NAME: Final = 128
_MAX_MEMORY_KIB: Final = 4 * 1024 * 1024  # 4 GiB
_MAX_TIME: Final = 64
_MAX_PARALLELISM: Final = 64


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost parameters; ``memory_cost`` in KiB. Defaults: RFC 9106 §4 option 2."""

    time_cost: int = 3
    memory_cost: int = 64 * 1024
    parallelism: int = 4
    salt_len: int = 16

    def __post_init__(self) -> None:
        for name in ("time_cost", "memory_cost", "parallelism", "salt_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidInput(f"argon2 {name} must be an integer")
        if not 1 <= self.time_cost <= _MAX_TIME:
            raise InvalidInput(f"argon2 time_cost must be 1 to {_MAX_TIME}")
        if not 1 <= self.parallelism <= _MAX_PARALLELISM:
            raise InvalidInput(f"argon2 parallelism must be 1 to {_MAX_PARALLELISM}")
        if not 8 * self.parallelism <= self.memory_cost <= _MAX_MEMORY_KIB:
            raise InvalidInput(f"argon2 memory_cost must be 8*parallelism to {_MAX_MEMORY_KIB} KiB")
        if not 16 <= self.salt_len <= 64:
            raise InvalidInput("argon2 salt length must be 16 to 64 bytes")


DEFAULT_ARGON2: Final = Argon2Params()


def _passphrase(passphrase: str | bytes) -> bytes:
    if isinstance(passphrase, str):
        raw = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    elif isinstance(passphrase, bytes):
        raw = passphrase
    else:
        raise InvalidInput("passphrase must be str or bytes")
    if not raw:
        raise InvalidInput("empty passphrase")
    return raw


def _derive(passphrase: bytes, salt: bytes, params: Argon2Params) -> bytes:
    try:
        return hash_secret_raw(
            secret=passphrase,
            salt=salt,
            time_cost=params.time_cost,
            memory_cost=params.memory_cost,
            parallelism=params.parallelism,
            hash_len=32,
            type=Type.ID,
        )
    except HashingError as exc:
        raise InvalidInput("argon2 parameters rejected") from exc


def _kdf_header(params: Argon2Params, salt: bytes) -> dict[str, Any]:
    return {
        "alg": "argon2id",
        "t": params.time_cost,
        "m": params.memory_cost,
        "p": params.parallelism,
        "salt": b64url_encode(salt),
    }


def _aad(kdf: dict[str, Any]) -> bytes:
    return compact_json({"format": _FORMAT, "v": _VERSION, "kdf": kdf})


def _plain(secrets: Mapping[str, bytes]) -> dict[str, str]:
    if not isinstance(secrets, Mapping):
        raise InvalidInput("secrets must be a mapping of names to bytes")
    return {
        check_id(name, "secret name", _MAX_NAME): b64url_encode(check_bytes(value, name))
        for name, value in secrets.items()
    }


def _document(key: bytes, kdf: dict[str, Any], secrets: Mapping[str, bytes]) -> bytes:
    """The file's bytes: ``secrets`` under ``key`` with a fresh IV (AES-256-GCM)."""
    iv = os.urandom(_IV_LEN)
    ciphertext = AESGCM(key).encrypt(iv, compact_json(_plain(secrets)), _aad(kdf))
    document = compact_json(
        {
            "format": _FORMAT,
            "v": _VERSION,
            "kdf": kdf,
            "iv": b64url_encode(iv),
            "ciphertext": b64url_encode(ciphertext),
        }
    )
    if len(document) > MAX_KEYSTORE_BYTES:
        raise PayloadTooLarge("keystore too large")
    return document


def write_keystore(
    path: str | os.PathLike[str],
    passphrase: str | bytes,
    secrets: Mapping[str, bytes],
    *,
    params: Argon2Params = DEFAULT_ARGON2,
) -> None:
    """Encrypt ``secrets`` under ``passphrase`` and replace ``path`` atomically (mode 0600)."""
    Keystore.create(path, passphrase, secrets, params=params)


def _parse(document: bytes) -> tuple[Argon2Params, bytes, dict[str, Any], bytes, bytes]:
    try:
        obj = strict_json_loads(document)
    except ValueError as exc:
        raise InvalidInput("keystore is not JSON") from exc
    if not isinstance(obj, dict) or obj.keys() != {"format", "v", "kdf", "iv", "ciphertext"}:
        raise InvalidInput("not a keystore file")
    if obj["format"] != _FORMAT or type(obj["v"]) is not int or obj["v"] != _VERSION:
        raise InvalidInput("unsupported keystore format")
    kdf = obj["kdf"]
    if (
        not isinstance(kdf, dict)
        or kdf.keys() != {"alg", "t", "m", "p", "salt"}
        or kdf["alg"] != "argon2id"
        or not isinstance(kdf["salt"], str)
        or not isinstance(obj["iv"], str)
        or not isinstance(obj["ciphertext"], str)
    ):
        raise InvalidInput("malformed keystore kdf parameters")
    try:
        salt = b64url_decode(kdf["salt"])
        iv = b64url_decode(obj["iv"])
        ciphertext = b64url_decode(obj["ciphertext"])
    except ValueError as exc:
        raise InvalidInput("malformed keystore encoding") from exc
    params = Argon2Params(
        time_cost=kdf["t"], memory_cost=kdf["m"], parallelism=kdf["p"], salt_len=len(salt)
    )
    if len(iv) != _IV_LEN:
        raise InvalidInput("malformed keystore iv")
    return params, salt, kdf, iv, ciphertext


def read_keystore(path: str | os.PathLike[str], passphrase: str | bytes) -> dict[str, bytes]:
    """Decrypt the keystore at ``path``; :class:`CryptoError` for a wrong passphrase."""
    return Keystore.open(path, passphrase)[1]


def _read_document(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            document = handle.read(MAX_KEYSTORE_BYTES + 1)
    except FileNotFoundError as exc:
        raise InvalidInput("no keystore at this path") from exc
    if len(document) > MAX_KEYSTORE_BYTES:
        raise PayloadTooLarge("keystore too large")
    return document


def _decrypt(key: bytes, kdf: dict[str, Any], iv: bytes, ciphertext: bytes) -> dict[str, bytes]:
    try:
        plain = AESGCM(key).decrypt(iv, ciphertext, _aad(kdf))
    except InvalidTag as exc:
        raise crypto_failure(_log, "keystore: wrong passphrase or modified file") from exc
    try:
        obj = strict_json_loads(plain)
        if not isinstance(obj, dict):
            raise TypeError("keystore content is not an object")  # noqa: TRY301
        return {
            check_id(name, "secret name", _MAX_NAME): b64url_decode(value)
            for name, value in obj.items()
        }
    except (ValueError, TypeError, AttributeError, InvalidInput) as exc:
        # Authenticated but unreadable: only a bug of ours could write that.
        raise InvalidInput("keystore content is malformed") from exc


class Keystore:
    """An open keystore: Argon2id runs once, at open or create; every save re-seals the
    secrets under the derived key with a fresh IV and replaces the file atomically.

    A client that persists state before each message (the wallet) would otherwise
    pay a full Argon2id derivation per message.
    """

    __slots__ = ("_kdf", "_key", "path")

    def __init__(self, path: Path, key: bytes, kdf: dict[str, Any]) -> None:
        self.path = path
        self._key = key
        self._kdf = kdf

    def __repr__(self) -> str:
        return f"Keystore({str(self.path)!r})"

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        passphrase: str | bytes,
        secrets: Mapping[str, bytes],
        *,
        params: Argon2Params = DEFAULT_ARGON2,
    ) -> Keystore:
        """Write ``secrets`` to a new (or replaced) file with a fresh salt."""
        if not isinstance(params, Argon2Params):
            raise InvalidInput("params must be Argon2Params")
        _plain(secrets)  # refuse bad input before the costly derivation
        salt = os.urandom(params.salt_len)
        store = cls(
            Path(path), _derive(_passphrase(passphrase), salt, params), _kdf_header(params, salt)
        )
        store.save(secrets)
        return store

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], passphrase: str | bytes
    ) -> tuple[Keystore, dict[str, bytes]]:
        """The open keystore and its secrets; :class:`CryptoError` for a wrong passphrase."""
        file = Path(path)
        params, salt, kdf, iv, ciphertext = _parse(_read_document(file))
        key = _derive(_passphrase(passphrase), salt, params)
        return cls(file, key, kdf), _decrypt(key, kdf, iv, ciphertext)

    def save(self, secrets: Mapping[str, bytes]) -> None:
        """Replace the file with ``secrets`` (same passphrase and salt, fresh IV)."""
        write_private(self.path, _document(self._key, self._kdf, secrets))
