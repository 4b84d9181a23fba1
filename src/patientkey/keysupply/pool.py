"""Pre-charged key pool for a mobile client (the "quantum key SIM" model).

At enrollment the wallet is loaded with keys it shares with the platform,
drawn from the platform's QKD supply. Keys are split by direction so both
ends can send without coordinating: each side sends with the next key of its
own sending list and looks up received keys by ID. Every key is used once.
Below ``low_water`` remaining sending keys a warning is logged and
:attr:`KeyPool.low` turns true, so the client can recharge before it must
fall back to the post-quantum agreement.

The serialized pool holds key material: store it only inside an encrypted
keystore (:mod:`patientkey.crypto.keystore`).
"""

from __future__ import annotations

import base64
import logging
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import Any

from patientkey.errors import InvalidInput, KeySupplyBadRequest, KeyUnavailable
from patientkey.keysupply._types import KeyStatus, KeySupply, QKey

__all__ = ["KeyPool", "charge_pair"]

log = logging.getLogger(__name__)


class KeyPool:
    """A :class:`KeySupply` over a finite list of pre-shared keys."""

    def __init__(
        self,
        *,
        me: str,
        peer: str,
        send: Iterable[QKey],
        receive: Iterable[QKey],
        low_water: int = 16,
    ) -> None:
        self.me, self.peer = me, peer
        self._send: deque[QKey] = deque(send)
        self._receive: OrderedDict[uuid.UUID, QKey] = OrderedDict((k.key_id, k) for k in receive)
        self.low_water = low_water
        self._lock = threading.Lock()
        self._warned = False

    def _check_peer(self, peer: str) -> None:
        if peer != self.peer:
            raise KeySupplyBadRequest(f"this pool holds no keys for {peer!r}")

    @property
    def remaining(self) -> int:
        return len(self._send)

    @property
    def low(self) -> bool:
        return len(self._send) <= self.low_water

    def status(self, peer: str) -> KeyStatus:
        self._check_peer(peer)
        size = self._send[0].bits if self._send else 256
        return KeyStatus(
            source_KME_ID=f"pool:{self.me}",
            target_KME_ID=f"pool:{self.peer}",
            master_SAE_ID=self.me,
            slave_SAE_ID=self.peer,
            key_size=size,
            stored_key_count=len(self._send),
            max_key_count=len(self._send) + len(self._receive),
            max_key_per_request=len(self._send),
            max_key_size=size,
            min_key_size=size,
            max_SAE_ID_count=0,
        )

    def get_keys(self, peer: str, number: int = 1, size: int = 256) -> list[QKey]:
        self._check_peer(peer)
        if number < 1:
            raise KeySupplyBadRequest("number must be positive")
        with self._lock:
            if len(self._send) < number:
                raise KeyUnavailable("pre-charged key pool exhausted")
            if self._send[0].bits != size:
                raise KeySupplyBadRequest(f"pool keys are {self._send[0].bits} bits, not {size}")
            keys = [self._send.popleft() for _ in range(number)]
            if self.low and not self._warned:
                self._warned = True
                log.warning("key pool %s->%s low: %d keys left", self.me, self.peer, self.remaining)
            return keys

    def get_keys_by_id(self, peer: str, key_ids: Sequence[uuid.UUID]) -> list[QKey]:
        self._check_peer(peer)
        with self._lock:
            # All or nothing: a request naming one unknown key consumes none.
            if len(set(key_ids)) != len(key_ids) or any(k not in self._receive for k in key_ids):
                raise KeySupplyBadRequest("unknown or already used key ID")
            return [self._receive.pop(k) for k in key_ids]

    def to_dict(self) -> dict[str, Any]:
        def enc(keys: Iterable[QKey]) -> list[list[str]]:
            return [[str(k.key_id), base64.b64encode(k.key).decode()] for k in keys]

        with self._lock:
            return {
                "me": self.me,
                "peer": self.peer,
                "low_water": self.low_water,
                "send": enc(self._send),
                "receive": enc(self._receive.values()),
            }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyPool:
        try:

            def dec(rows: list[list[str]]) -> list[QKey]:
                return [QKey(uuid.UUID(i), base64.b64decode(k, validate=True)) for i, k in rows]

            return cls(
                me=str(data["me"]),
                peer=str(data["peer"]),
                send=dec(data["send"]),
                receive=dec(data["receive"]),
                low_water=int(data["low_water"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput("malformed key pool") from exc


def charge_pair(
    source: KeySupply,
    *,
    client: str,
    server: str,
    count: int,
    size: int = 256,
    low_water: int = 16,
) -> tuple[KeyPool, KeyPool]:
    """Draw ``2*count`` keys from ``source`` and split them into the two ends' pools.

    ``source`` is the server side's QKD supply towards the charging peer
    ``client``; the first half carries client→server messages, the second half
    server→client. Returns ``(client_pool, server_pool)``.
    """
    if count < 1:
        raise InvalidInput("count must be positive")
    batch = max(1, source.status(client).max_key_per_request)
    keys: list[QKey] = []
    while len(keys) < 2 * count:
        keys += source.get_keys(client, min(2 * count - len(keys), batch), size)
    up, down = keys[:count], keys[count:]
    client_pool = KeyPool(me=client, peer=server, send=up, receive=down, low_water=low_water)
    server_pool = KeyPool(me=server, peer=client, send=down, receive=up, low_water=low_water)
    return client_pool, server_pool
