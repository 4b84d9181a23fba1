"""Values and the one interface every key source implements.

The interface mirrors ETSI GS QKD 014 V1.1.1 (§5): the *master* SAE asks its
KME for keys shared with a *slave* SAE (``get_keys`` = "Get key", enc_keys),
and the slave fetches the same keys by ID (``get_keys_by_id`` = "Get key with
key IDs", dec_keys). ``status`` is "Get status".
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from patientkey.errors import InvalidInput

__all__ = ["KeyStatus", "KeySupply", "QKey"]


@dataclass(frozen=True, slots=True)
class QKey:
    """One key from the supply: a UUID key ID and the raw key bytes.

    ``repr`` never shows the key (keys must never reach a log).
    """

    key_id: uuid.UUID
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, uuid.UUID):
            raise InvalidInput("key_id must be a UUID")
        if not self.key:
            raise InvalidInput("empty key")

    @property
    def bits(self) -> int:
        return len(self.key) * 8


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """ETSI GS QKD 014 §6.1 Status data format."""

    source_KME_ID: str  # noqa: N815 - field names are the spec's
    target_KME_ID: str  # noqa: N815
    master_SAE_ID: str  # noqa: N815
    slave_SAE_ID: str  # noqa: N815
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_SAE_ID_count: int  # noqa: N815


@runtime_checkable
class KeySupply(Protocol):
    """A source of keys shared with a peer SAE (QKD KME, key pool, ...)."""

    def status(self, peer: str) -> KeyStatus:
        """Status of the link to ``peer``; raises KeySupplyError subclasses."""
        ...

    def get_keys(self, peer: str, number: int = 1, size: int = 256) -> list[QKey]:
        """Master role: ``number`` fresh keys of ``size`` bits shared with ``peer``."""
        ...

    def get_keys_by_id(self, peer: str, key_ids: Sequence[uuid.UUID]) -> list[QKey]:
        """Slave role: the keys ``peer`` (the master) obtained, by ID, each usable once."""
        ...
