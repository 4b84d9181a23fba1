"""What the wallet keeps on disk: the encrypted keystore and the cache of sealed records.

The keystore (:mod:`patientkey.crypto.keystore`, one secret named ``wallet``)
holds the whole wallet state as one JSON document, so every change is one
atomic file replacement::

    {"format": "patientkey-wallet", "v": 1, "user_id": "u-alice",
     "hospitals": {"<HIS_ID>": {"patient_id", "current": v, "keys": {"<v>": b64url(KUH_v)},
                                "bound": bool,
                                "rotation": null | {"state": "prepared" | "acked",
                                    "current_version", "new_version", "nonce", "key"}}},
     "third_parties": {"<B_ID>": {"current": v, "keys": {"<v-1>": ..., "<v>": ...},
                                  "pending": null | {"version", "key"}}},
     "pool": KeyPool.to_dict() | null,
     "install_id": null | "<random id>",
     "device": null | {"algorithm": "ML-DSA-65" | "Ed25519", "seed": b64url(32 bytes),
                       "enrolled": bool},
     "audit": null | {"log_key": b64url(Ed25519 raw public key, pinned on first sync),
                      "tree_head": SignedTreeHead.to_dict() (the last head accepted),
                      "events": {"<leaf index>": "<canonical LogEntry JSON>"},
                      "evidence": [{"problem", "reason", "index": int | null,
                                    "detected_at": ms, "old_tree_head", "new_tree_head"}]}}

``install_id`` and ``device`` came with patient-approved authorization
(:mod:`.authz`); a keystore written before them has neither and opens as it
is: the install id is drawn and the device key generated (both saved before
anything is sent) on first use. ``audit`` came with the transparency log
(:mod:`.audit`): absent until the first ``wallet audit``; ``events`` keep every
event of the account the wallet verified, so the timeline shows offline and a
later deletion or alteration is caught; ``evidence`` keeps each proof of a
rewritten log the wallet met. ``device.seed`` is the private key (the
Ed25519 private key, or the ML-DSA-65 FIPS 204 seed ξ): it exists only in this
encrypted document and in memory, never in a repr, a log line or a message.

Sealed records are cached under ``<data_dir>/records/<HIS_ID>/<P_ID>.sealed``:
ciphertext only (the body stays under its DEK, the DEK under KUH), written
atomically with mode 0600.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol, Self

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patientkey.audit import SignedTreeHead
from patientkey.crypto import DEFAULT_ARGON2, Argon2Params, Keystore
from patientkey.errors import Conflict, CryptoError, InvalidInput, NotFound, Unauthenticated
from patientkey.fsutil import write_private
from patientkey.identity.device import (
    DeviceAlgorithm,
    DeviceKey,
    DevicePrivateKey,
    generate_device_key,
)
from patientkey.keysupply.pool import KeyPool
from patientkey.protocol.messages import B64Bytes, Ident
from patientkey.protocol.states import Rotation

__all__ = [
    "AuditEvidence",
    "AuditState",
    "DeviceSecret",
    "FileRecordCache",
    "HospitalKeys",
    "MemoryRecordCache",
    "MemoryStateStore",
    "PendingKub",
    "PendingRotation",
    "RecordCache",
    "StateStore",
    "ThirdPartyKeys",
    "WalletKeystore",
    "WalletState",
    "new_install_id",
]

_FORMAT: Final = "patientkey-wallet"
_ENTRY: Final = "wallet"
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_MODEL = ConfigDict(extra="forbid", frozen=True)
Key32 = B64Bytes
Version = int


class PendingRotation(BaseModel):
    """A KUH rotation under way (``protocol.states``: PREPARED or ACKED)."""

    model_config = _MODEL

    state: Literal[Rotation.PREPARED, Rotation.ACKED]
    current_version: Version = Field(ge=1)
    new_version: Version = Field(ge=2)
    nonce: B64Bytes = Field(min_length=32, max_length=32, repr=False)
    key: Key32 = Field(min_length=32, max_length=32, repr=False)

    @model_validator(mode="after")
    def _step(self) -> Self:
        if self.new_version != self.current_version + 1:
            raise ValueError("a rotation moves one version up")
        return self


class HospitalKeys(BaseModel):
    """The patient's keys at one hospital: Patient_ID and every KUH version."""

    model_config = _MODEL

    patient_id: Ident
    current: Version = Field(ge=1)
    keys: dict[Version, Key32] = Field(repr=False)
    bound: bool = False
    rotation: PendingRotation | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.current not in self.keys:
            raise ValueError("the current KUH version is missing")
        if any(len(k) != 32 for k in self.keys.values()):
            raise ValueError("a KUH is 32 bytes")
        rot = self.rotation
        if rot is not None:
            # PREPARED: still on the old key; ACKED: committed locally, commit not yet delivered.
            on = rot.current_version if rot.state is Rotation.PREPARED else rot.new_version
            if self.current != on:
                raise ValueError("pending rotation does not match the current version")
        return self

    @property
    def kuh(self) -> bytes:
        return self.keys[self.current]


class PendingKub(BaseModel):
    """The next KUB offered to a third party, kept until its receipt arrives."""

    model_config = _MODEL

    version: Version = Field(ge=1)
    key: Key32 = Field(min_length=32, max_length=32, repr=False)


class ThirdPartyKeys(BaseModel):
    """The KUB ratchet towards one third party: the current and the previous version."""

    model_config = _MODEL

    current: Version | None = Field(None, ge=1)
    keys: dict[Version, Key32] = Field(default_factory=dict, repr=False)
    pending: PendingKub | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.current is not None and self.current not in self.keys:
            raise ValueError("the current KUB version is missing")
        return self

    @property
    def kub(self) -> bytes | None:
        return None if self.current is None else self.keys[self.current]


class DeviceSecret(BaseModel):
    """The patient's device signing key (:mod:`patientkey.identity.device`), private part.

    ``enrolled`` is True once the platform confirmed it holds the public key; until
    then every identity enrollment sends it again.
    """

    model_config = _MODEL

    algorithm: DeviceAlgorithm
    seed: B64Bytes = Field(min_length=32, max_length=32, repr=False)
    enrolled: bool = False

    @classmethod
    def generate(cls, algorithm: DeviceAlgorithm = DeviceAlgorithm.ML_DSA_65) -> DeviceSecret:
        key = generate_device_key(algorithm)
        return cls(algorithm=algorithm, seed=key.private_bytes_raw())

    def private_key(self) -> DevicePrivateKey:
        if self.algorithm is DeviceAlgorithm.ED25519:
            return ed25519.Ed25519PrivateKey.from_private_bytes(self.seed)
        return mldsa.MLDSA65PrivateKey.from_seed_bytes(self.seed)

    @property
    def public(self) -> DeviceKey:
        """The registration the platform holds (public key, ``key_id``)."""
        return DeviceKey.from_public_key(self.private_key().public_key())


class AuditEvidence(BaseModel):
    """What the wallet saw when the platform's log contradicted itself (:mod:`.audit`).

    Kept even though the sync that found it changed nothing else: the patient (and an
    auditor) must keep seeing it. The tree heads are signed by the log: evidence
    against it, not the wallet's word.
    """

    model_config = _MODEL

    problem: str = Field(min_length=1, max_length=64)  # the error's problem name
    reason: str = Field(min_length=1, max_length=1000)
    index: int | None = Field(None, ge=0)  # the leaf concerned, when known
    detected_at: int = Field(ge=0)  # ms since the epoch
    old_tree_head: dict[str, Any] | None = None
    new_tree_head: dict[str, Any] | None = None


class AuditState(BaseModel):
    """The wallet's view of the transparency log: pinned key, last head, verified events."""

    model_config = _MODEL

    log_key: Key32 = Field(min_length=32, max_length=32)
    tree_head: dict[str, Any]
    events: dict[int, str] = Field(default_factory=dict)
    evidence: tuple[AuditEvidence, ...] = ()

    @model_validator(mode="after")
    def _head(self) -> Self:
        # Parsed once here so a malformed head fails when the keystore opens.
        head = SignedTreeHead.from_dict(self.tree_head)
        if any(not 0 <= index < head.head.size for index in self.events):
            raise ValueError("an accepted event lies outside the accepted tree")
        return self

    @property
    def sth(self) -> SignedTreeHead:
        return SignedTreeHead.from_dict(self.tree_head)


def new_install_id() -> str:
    """A random install id (``Environment.device``): names this wallet, says nothing else."""
    return "w-" + secrets.token_hex(16)


class _Stored(BaseModel):
    model_config = _MODEL

    format: Literal["patientkey-wallet"]
    v: Literal[1]
    user_id: Ident
    hospitals: dict[Ident, HospitalKeys]
    third_parties: dict[Ident, ThirdPartyKeys]
    pool: dict[str, Any] | None
    # Optional: keystores written before patient-approved authorization lack them.
    install_id: Ident | None = None
    device: DeviceSecret | None = None
    # Optional: keystores written before the transparency log lack it.
    audit: AuditState | None = None


@dataclass
class WalletState:
    """Everything the keystore holds, in memory. ``pool`` is the live KUE pool."""

    user_id: str
    hospitals: dict[str, HospitalKeys] = field(default_factory=dict)
    third_parties: dict[str, ThirdPartyKeys] = field(default_factory=dict, repr=False)
    pool: KeyPool | None = field(default=None, repr=False)
    install_id: str | None = None
    device: DeviceSecret | None = field(default=None, repr=False)
    audit: AuditState | None = field(default=None, repr=False)

    def to_bytes(self) -> bytes:
        stored = _Stored(
            format=_FORMAT,
            v=1,
            user_id=self.user_id,
            hospitals=self.hospitals,
            third_parties=self.third_parties,
            pool=None if self.pool is None else self.pool.to_dict(),
            install_id=self.install_id,
            device=self.device,
            audit=self.audit,
        )
        return stored.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> WalletState:
        try:
            stored = _Stored.model_validate_json(data)
        except ValidationError as exc:
            raise InvalidInput("wallet keystore content is malformed") from exc
        return cls(
            user_id=stored.user_id,
            hospitals=dict(stored.hospitals),
            third_parties=dict(stored.third_parties),
            pool=None if stored.pool is None else KeyPool.from_dict(stored.pool),
            install_id=stored.install_id,
            device=stored.device,
            audit=stored.audit,
        )


class StateStore(Protocol):
    """Where the wallet state persists (atomically, whole)."""

    def save(self, state: WalletState) -> None: ...


class WalletKeystore:
    """The wallet state in a passphrase-protected :mod:`patientkey.crypto.keystore` file."""

    def __init__(
        self, path: Path, passphrase: str, *, params: Argon2Params = DEFAULT_ARGON2
    ) -> None:
        if not passphrase:
            raise InvalidInput("the keystore passphrase is empty")
        self.path = path
        self._passphrase = passphrase
        self._params = params
        # Argon2id runs once, when the file is first opened or created; saves reuse it.
        self._open: Keystore | None = None

    def __repr__(self) -> str:
        return f"WalletKeystore({str(self.path)!r})"

    def exists(self) -> bool:
        return self.path.exists()

    def create(self, state: WalletState) -> None:
        """Write a new keystore; Conflict if one exists (it would lose its keys)."""
        if self.path.exists():
            raise Conflict(f"a keystore already exists at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.save(state)

    def load(self) -> WalletState:
        """Open the keystore; Unauthenticated with a plain message for a wrong passphrase."""
        if not self.path.exists():
            raise NotFound(f"no keystore at {self.path} (run `wallet init` first)")
        try:
            self._open, secrets = Keystore.open(self.path, self._passphrase)
        except CryptoError as exc:
            raise Unauthenticated(
                "cannot open the keystore: wrong passphrase, or the file was modified"
            ) from exc
        if set(secrets) != {_ENTRY}:
            raise InvalidInput(f"{self.path} is not a wallet keystore")
        return WalletState.from_bytes(secrets[_ENTRY])

    def save(self, state: WalletState) -> None:
        """Replace the keystore file atomically with ``state``."""
        secrets = {_ENTRY: state.to_bytes()}
        if self._open is None:
            self._open = Keystore.create(self.path, self._passphrase, secrets, params=self._params)
        else:
            self._open.save(secrets)


class MemoryStateStore:
    """A :class:`StateStore` that persists nothing: the state lives in memory only.

    For load generation (``patientkey bench rx``), never for a patient's wallet: the
    real wallet writes its whole keystore, fsync'ed, before every message (a drawn
    pool key, a next KUB), and a crash would lose or reuse keys here. ``saves``
    counts the writes that were skipped.
    """

    def __init__(self) -> None:
        self.saves = 0

    def save(self, state: WalletState) -> None:
        self.saves += 1


class RecordCache(Protocol):
    """The wallet's local copies of sealed records (ciphertext), by (HIS_ID, P_ID)."""

    def get(self, his_id: str, p_id: str) -> bytes | None: ...

    def put(self, his_id: str, p_id: str, sealed: bytes) -> None: ...

    def items(self) -> Iterator[tuple[str, str]]: ...


def _ident(value: str, what: str) -> str:
    # Identifiers become path components: the protocol's alphabet has no "/" and
    # starts alphanumeric, so "." and ".." cannot occur.
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise InvalidInput(f"malformed {what}")
    return value


class MemoryRecordCache:
    """:class:`RecordCache` in a dict (load generation; see :class:`MemoryStateStore`)."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], bytes] = {}

    def get(self, his_id: str, p_id: str) -> bytes | None:
        return self._records.get((his_id, p_id))

    def put(self, his_id: str, p_id: str, sealed: bytes) -> None:
        self._records[(_ident(his_id, "HIS_ID"), _ident(p_id, "P_ID"))] = sealed

    def items(self) -> Iterator[tuple[str, str]]:
        yield from sorted(self._records)


class FileRecordCache:
    """:class:`RecordCache` in ``<data_dir>/records/<HIS_ID>/<P_ID>.sealed``."""

    SUFFIX: Final = ".sealed"

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "records"

    def _path(self, his_id: str, p_id: str) -> Path:
        return self.root / _ident(his_id, "HIS_ID") / (_ident(p_id, "P_ID") + self.SUFFIX)

    def get(self, his_id: str, p_id: str) -> bytes | None:
        try:
            return self._path(his_id, p_id).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, his_id: str, p_id: str, sealed: bytes) -> None:
        path = self._path(his_id, p_id)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, sealed)

    def items(self) -> Iterator[tuple[str, str]]:
        if not self.root.is_dir():
            return
        for his_dir in sorted(self.root.iterdir()):
            if not his_dir.is_dir() or not _IDENT.fullmatch(his_dir.name):
                continue
            for file in sorted(his_dir.glob("*" + self.SUFFIX)):
                p_id = file.name.removesuffix(self.SUFFIX)
                if _IDENT.fullmatch(p_id):
                    yield his_dir.name, p_id
