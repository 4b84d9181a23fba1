"""The wallet's end of the KUE hop (wallet → platform).

Keys come from the pre-charged pool in the keystore (the "quantum key SIM").
Two rules make that safe:

* **A drawn key is persisted as used before anything is sealed with it.**
  :class:`PoolSupply` saves the keystore inside ``get_keys``, i.e. before
  :meth:`HopEnd.request` seals the envelope, so a crash or a failed send
  after that point can never lead to the same key being used twice.
* **No key, no message.** With ``kue_policy = "required"`` an empty pool is
  :class:`~patientkey.errors.KeyUnavailable` and nothing is sent. With
  ``"preferred"`` the wallet runs the ML-KEM-768 + X25519 exchange of
  docs/protocol.md (``GET /v1/pq/public``, ``POST /v1/pq/exchange``) and keeps
  its :class:`~patientkey.keysupply.pq.PqSecrets` for this session; the
  envelopes then carry key IDs ``p.<exchange_id>|n.<counter>``. With
  ``"none"`` every session uses the exchange.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from patientkey.errors import CryptoError, KeySupplyBadRequest, KeyUnavailable
from patientkey.keysupply import KeyStatus, QKey
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.keysupply.pool import KeyPool
from patientkey.keysupply.pq import PqSecrets, pq_initiate
from patientkey.keysupply.rekey import HopReceiver, HopSender, RekeyPolicy
from patientkey.protocol.channel import HopEnd
from patientkey.service.party import hop_context

__all__ = ["PoolSupply", "PqPort", "WalletHop"]

log = logging.getLogger(__name__)


class PqPort(Protocol):
    """The platform's post-quantum key-agreement endpoints (not enveloped: no private data)."""

    def pq_public(self) -> bytes:
        """``GET /v1/pq/public``: ML-KEM-768 encapsulation key ‖ X25519 public key."""
        ...

    def pq_exchange(self, init: bytes) -> str:
        """``POST /v1/pq/exchange``: the platform's exchange id for ``init``."""
        ...


class PoolSupply:
    """A :class:`~patientkey.keysupply.KeySupply` over the keystore's pool that persists use.

    ``pool`` returns the current pool (it is replaced when the wallet is
    charged); ``persist`` saves the keystore. A key leaves ``get_keys`` only
    after ``persist`` returned: if saving fails, the key is dropped unused.
    """

    def __init__(self, pool: Callable[[], KeyPool | None], persist: Callable[[], None]) -> None:
        self._pool = pool
        self._persist = persist

    def _get(self) -> KeyPool:
        pool = self._pool()
        if pool is None:
            raise KeyUnavailable("the wallet's KUE key pool is not charged")
        return pool

    def status(self, peer: str) -> KeyStatus:
        return self._get().status(peer)

    def get_keys(self, peer: str, number: int = 1, size: int = 256) -> list[QKey]:
        keys = self._get().get_keys(peer, number, size)
        self._persist()
        return keys

    def get_keys_by_id(self, peer: str, key_ids: Sequence[uuid.UUID]) -> list[QKey]:
        # The platform never opens a request of its own on this hop (replies use
        # request-bound keys), so the wallet never fetches by ID.
        raise KeySupplyBadRequest("the wallet does not receive requests")

    @property
    def remaining(self) -> int:
        pool = self._pool()
        return 0 if pool is None else pool.remaining

    @property
    def low(self) -> bool:
        pool = self._pool()
        return pool is None or pool.low


class WalletHop:
    """The :class:`HopEnd` of wallet ``me`` towards ``platform``, with the PQ fallback."""

    def __init__(
        self,
        *,
        me: str,
        platform: str,
        supply: PoolSupply,
        policy: QkdPolicy = QkdPolicy.PREFERRED,
        rekey: RekeyPolicy | None = None,
    ) -> None:
        self.me = me
        self.platform = platform
        self.supply = supply
        self.policy = policy
        self._rekey = rekey
        self._context = hop_context(me, platform)
        self._pq: PqSecrets | None = None
        self.end = HopEnd(me, senders={}, receivers={})
        self.end.add_peer(platform, self._sender(None), self._receiver())

    def _sender(self, pq: PqSecrets | None) -> HopSender:
        # The PQ sender is made only once the pool is empty (or unused by policy):
        # without a supply it does not try the pool before every message.
        return HopSender(
            peer=self.platform,
            context=self._context,
            supply=self.supply if pq is None else None,
            policy=self.policy,
            rekey=self._rekey,
            pq=pq,
        )

    def _receiver(self) -> HopReceiver:
        # Replies are opened with request-bound keys; this receiver only makes
        # the hop complete and would refuse any request (no supply, no PQ lookup).
        return HopReceiver(
            peer=self.platform, context=self._context, supply=None, policy=self.policy
        )

    @property
    def pq_active(self) -> bool:
        """True once this session runs on the post-quantum agreement."""
        return self._pq is not None

    def needs_pq(self) -> bool:
        """Whether the next request needs the PQ agreement (policy and pool level)."""
        if self._pq is not None:
            return False
        if self.policy is QkdPolicy.NONE:
            return True
        return self.policy is QkdPolicy.PREFERRED and self.supply.remaining == 0

    def prepare(self, pq_port: PqPort | None) -> None:
        """Make sure the next request has a key source, or raise KeyUnavailable.

        Runs the ML-KEM-768 + X25519 exchange with the platform when the
        policy calls for it. Under ``required`` nothing happens here: an empty
        pool makes the sender raise KeyUnavailable before anything is sealed.
        """
        if not self.needs_pq():
            return
        if pq_port is None:
            raise KeyUnavailable("KUE key pool empty and no post-quantum fallback configured")
        message, secrets = pq_initiate(pq_port.pq_public())
        exchange_id = pq_port.pq_exchange(message)
        if exchange_id != secrets.exchange_id:
            # Both ends derive the id from the init message: a mismatch means the
            # platform answered another exchange than ours.
            raise CryptoError(reason="pq: exchange id mismatch")
        log.info(
            "KUE pool empty or unused: %s -> %s runs on the ML-KEM-768+X25519 fallback",
            self.me,
            self.platform,
        )
        self._pq = secrets
        self.end.add_peer(self.platform, self._sender(secrets), self._receiver())
