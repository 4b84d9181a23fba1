"""In-process key supply over the embedded KME core (no HTTP, no TLS).

:class:`EmbeddedKeySupply` is the :class:`patientkey.keysupply.KeySupply` a
party uses when the KME runs in the same process (demos, tests). It calls
:class:`patientkey.kme.core.KmeCore` exactly as the HTTP adapter does — same
request parsing, same limits, same ETSI GS QKD 014 §5 errors
(KeySupplyBadRequest / KeySupplyUnauthorized / KeyUnavailable) — so a caller
cannot tell it from :class:`patientkey.keysupply.etsi014.Etsi014Client`
except by speed. The SAE identity is fixed at construction, standing in for
the TLS client certificate.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from patientkey.errors import KeySupplyBadRequest
from patientkey.keysupply._types import KeyStatus, QKey
from patientkey.kme.core import KmeCore, parse_key_ids, parse_key_request

__all__ = ["EmbeddedKeySupply"]


class EmbeddedKeySupply:
    """Key supply of SAE ``sae_id`` from an in-process :class:`KmeCore`."""

    def __init__(self, core: KmeCore, sae_id: str) -> None:
        if not sae_id:
            raise KeySupplyBadRequest("empty SAE_ID")
        self.core = core
        self.sae_id = sae_id

    def status(self, peer: str) -> KeyStatus:
        """Get status (§5.1) of the link to slave ``peer``."""
        with self.core.lock:
            return self.core.status(self.sae_id, peer)

    def get_keys(self, peer: str, number: int = 1, size: int = 256) -> list[QKey]:
        """Get key (§5.2): ``number`` keys of ``size`` bits shared with slave ``peer``."""
        request = parse_key_request({"number": number, "size": size})
        with self.core.lock:
            return self.core.enc_keys(self.sae_id, peer, request)

    def get_keys_by_id(self, peer: str, key_ids: Sequence[uuid.UUID]) -> list[QKey]:
        """Get key with key IDs (§5.3): the keys master ``peer`` obtained for us."""
        ids = list(key_ids)
        if not all(isinstance(i, uuid.UUID) for i in ids):
            raise KeySupplyBadRequest("key_IDs must be UUIDs")
        request = parse_key_ids({"key_IDs": [{"key_ID": str(i)} for i in ids]})
        with self.core.lock:
            return self.core.dec_keys(self.sae_id, peer, request)
