"""The wallet hop (KUE) at the platform: pool keys, the post-quantum fallback, charging.

Every wallet is a peer named by its User_ID (its client certificate's CN). Its hop
keys come from two sources (``docs/protocol.md``, "Wallet keys, fallback"):

* the **pre-charged pool** ("quantum key SIM"): :func:`charge_wallet` draws keys
  from the platform's QKD supply, the platform as master and the charging terminal
  as slave SAE at another KME site; the terminal's copies become the wallet's half
  (``KeyPool.to_dict``), the platform's copies go into its database.
  :class:`WalletKeySupply` is the :class:`~patientkey.keysupply.KeySupply` over that
  half: a key is deleted in the transaction that hands it out, so it opens one
  envelope in one process, ever;
* the **ML-KEM-768 + X25519 fallback** when the pool is empty
  (``kue_policy = "preferred"``): :class:`PqExchanges` answers the wallet's init
  message with the platform's :class:`~patientkey.keysupply.pq.PqResponder` and
  stores the *public* init message, so any worker process holding the responder
  key re-derives the secrets on its first envelope of that exchange; secrets are
  cached in memory only, bounded, and expire after ``ttl``.

:func:`wallet_peer_factory` plugs both into :class:`~patientkey.protocol.channel.HopEnd`:
it makes a wallet's HopSender/HopReceiver on first contact, for accounts only.
:class:`StoreReplayCache` adds a database replay guard for several worker processes.
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from patientkey.crypto import ReplayCache
from patientkey.errors import (
    InvalidInput,
    KeySupplyBadRequest,
    KeyUnavailable,
    NotFound,
)
from patientkey.keysupply import KeyStatus, KeySupply, QKey
from patientkey.keysupply.hopkey import KeyId, QkdPolicy
from patientkey.keysupply.pool import KeyPool, charge_pair
from patientkey.keysupply.pq import PqResponder, PqSecrets
from patientkey.keysupply.rekey import HopReceiver, HopSender, RekeyPolicy
from patientkey.pki import valid_party_name
from patientkey.protocol.channel import HopEnd
from patientkey.service.party import hop_context, qkd_hop_end
from patientkey.storage.repos import KueKey, PlatformRepository, Store
from patientkey.storage.schema import KueDirection

__all__ = [
    "ChargeResult",
    "NotingReceiver",
    "PqExchanges",
    "StoreReplayCache",
    "WalletKeySupply",
    "charge_wallet",
    "platform_hop_end",
    "wallet_peer_factory",
]

log = logging.getLogger(__name__)

# A receiver's cached sessions: a pool key opens one message, a PQ session many.
_WALLET_SESSIONS = 64


class WalletKeySupply:
    """:class:`KeySupply` over the platform's halves of the wallets' pools (one per peer)."""

    def __init__(self, store: Store[PlatformRepository]) -> None:
        self._store = store

    def status(self, peer: str) -> KeyStatus:
        with self._store.transaction() as repo:
            send = repo.kue_key_count(peer, KueDirection.TO_WALLET)
            receive = repo.kue_key_count(peer, KueDirection.FROM_WALLET)
        return KeyStatus(
            source_KME_ID="pool:platform",
            target_KME_ID=f"pool:{peer}",
            master_SAE_ID="platform",
            slave_SAE_ID=peer,
            key_size=256,
            stored_key_count=send,
            max_key_count=send + receive,
            max_key_per_request=max(send, 1),
            max_key_size=256,
            min_key_size=256,
            max_SAE_ID_count=0,
        )

    def get_keys(self, peer: str, number: int = 1, size: int = 256) -> list[QKey]:
        """The next ``number`` platform→wallet keys (KeyUnavailable when the pool is dry)."""
        try:
            with self._store.transaction() as repo:
                keys = repo.take_kue_keys(peer, KueDirection.TO_WALLET, number)
                if any(len(k.key) * 8 != size for k in keys):
                    # Raised inside the transaction: the keys stay in the pool.
                    raise KeySupplyBadRequest(f"pool keys are not {size} bits")
        except NotFound as exc:
            raise KeyUnavailable("wallet key pool exhausted") from exc
        except InvalidInput as exc:
            raise KeySupplyBadRequest(exc.detail) from exc
        return [QKey(uuid.UUID(k.key_id), k.key) for k in keys]

    def get_keys_by_id(self, peer: str, key_ids: Sequence[uuid.UUID]) -> list[QKey]:
        """The wallet→platform keys named, each once (KeySupplyBadRequest otherwise)."""
        try:
            with self._store.transaction() as repo:
                keys = repo.take_kue_keys_by_id(
                    peer, KueDirection.FROM_WALLET, [str(k) for k in key_ids]
                )
        except (NotFound, InvalidInput) as exc:
            raise KeySupplyBadRequest("unknown or already used key ID") from exc
        return [QKey(uuid.UUID(k.key_id), k.key) for k in keys]


class PqExchanges:
    """The platform's side of the wallets' ML-KEM-768 + X25519 exchanges."""

    def __init__(
        self,
        responder: PqResponder,
        store: Store[PlatformRepository],
        *,
        ttl: timedelta = timedelta(days=1),
        max_entries: int = 100_000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._responder = responder
        self._public = responder.public_bytes()
        self._store = store
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[PqSecrets, datetime]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def public(self) -> bytes:
        """ML-KEM-768 encapsulation key ‖ X25519 public key (1216 bytes)."""
        return self._public

    def exchange(self, user_id: str, init: bytes) -> str:
        """Answer ``user_id``'s init message; returns the exchange ID for its key IDs.

        ``NotFound`` if the account does not exist (nothing is stored then).
        """
        secrets = self._responder.respond(init)
        with self._store.transaction() as repo:
            stored = repo.add_pq_exchange(user_id, secrets.exchange_id, init)
            repo.log_event("pq.exchange", user_id, {"exchange_id": secrets.exchange_id})
        self._remember(user_id, secrets, stored.created_at + self._ttl)
        return secrets.exchange_id

    def lookup(self, user_id: str, exchange_id: str) -> PqSecrets | None:
        """The secrets of an unexpired exchange of ``user_id``, else None."""
        now = self._clock()
        key = (user_id, exchange_id)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                if cached[1] > now:
                    self._cache.move_to_end(key)
                    return cached[0]
                del self._cache[key]
        try:
            with self._store.transaction() as repo:
                stored = repo.get_pq_exchange(user_id, exchange_id)
        except (NotFound, InvalidInput):
            return None
        expires = stored.created_at + self._ttl
        if expires <= now:
            return None
        # Another worker answered this exchange: the same responder key re-derives it.
        secrets = self._responder.respond(stored.init)
        if not hmac.compare_digest(secrets.exchange_id, exchange_id):
            return None
        self._remember(user_id, secrets, expires)
        return secrets

    def _remember(self, user_id: str, secrets: PqSecrets, expires: datetime) -> None:
        with self._lock:
            self._cache[(user_id, secrets.exchange_id)] = (secrets, expires)
            self._cache.move_to_end((user_id, secrets.exchange_id))
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)


# The key ID the receiver resolving in this thread was asked for (see StoreReplayCache).
_RESOLVING = threading.local()


class NotingReceiver(HopReceiver):
    """A :class:`HopReceiver` that notes, per thread, the key ID it resolves."""

    def resolve(self, kid_text: str) -> bytes | None:
        _RESOLVING.kid = kid_text
        return super().resolve(kid_text)


def _single_use(kid_text: str | None) -> bool:
    """Whether the key names a QKD or pool key (released once by its source)."""
    if kid_text is None:
        return False
    try:
        return KeyId.parse(kid_text).qkd is not None
    except InvalidInput:
        return False


class StoreReplayCache(ReplayCache):
    """A :class:`ReplayCache` that also records accepted envelopes in the database.

    With several worker processes each has its own in-memory cache. An envelope
    under a QKD or pool key cannot be replayed to another process: its source (the
    KME's dec_keys, the wallet-pool row) hands that key out once, so only the worker
    that consumed it can open the envelope, and that worker's in-memory cache sees
    the replay. An envelope under a post-quantum key alone (``p.<id>|n.<c>``) opens
    in every worker, so those are also recorded in the shared database table. The
    key ID comes from the :class:`NotingReceiver` that resolved it in this thread;
    when unknown, the database is asked (safe default). Expired rows are purged
    every ``purge_every`` database entries.
    """

    def __init__(
        self, store: Store[PlatformRepository], max_entries: int, *, purge_every: int = 10_000
    ) -> None:
        super().__init__(max_entries)
        self._store = store
        self._purge_every = purge_every
        self._since_purge = 0
        self._count_lock = threading.Lock()

    def add(
        self, key: tuple[str, str], expires_at: float, now: float
    ) -> Literal["ok", "replay", "full"]:
        kid, _RESOLVING.kid = getattr(_RESOLVING, "kid", None), None
        status = super().add(key, expires_at, now)
        if status != "ok" or _single_use(kid):
            return status
        until = datetime.fromtimestamp(expires_at, UTC)
        with self._store.transaction() as repo:
            fresh = repo.guard_replay(key[0], key[1], until)
        with self._count_lock:
            self._since_purge += 1
            purge = self._since_purge >= self._purge_every
            if purge:
                self._since_purge = 0
        if purge:
            with self._store.transaction() as repo:
                repo.purge_replay()
        return "ok" if fresh else "replay"


def wallet_peer_factory(
    *,
    me: str,
    reserved: Collection[str],
    store: Store[PlatformRepository],
    supply: KeySupply,
    pq: PqExchanges | None,
    policy: QkdPolicy,
    rekey: RekeyPolicy | None = None,
) -> Callable[[str], tuple[HopSender, HopReceiver] | None]:
    """HopEnd's ``peer_factory``: a wallet's hop on first contact, if it has an account.

    ``reserved`` are the configured hospitals and third parties (never wallets). The
    sender name is not yet authenticated when this runs, so nothing is kept for a
    name without an account.
    """
    closed = frozenset(reserved) | {me}

    def make(peer: str) -> tuple[HopSender, HopReceiver] | None:
        if peer in closed or not valid_party_name(peer):
            return None
        try:
            with store.transaction() as repo:
                repo.get_account(peer)
        except (NotFound, InvalidInput):
            return None
        context = hop_context(me, peer)
        lookup = None if pq is None else (lambda exchange_id: pq.lookup(peer, exchange_id))
        sender = HopSender(peer=peer, context=context, supply=supply, policy=policy, rekey=rekey)
        receiver = NotingReceiver(
            peer=peer,
            context=context,
            supply=supply,
            policy=policy,
            pq_lookup=lookup,
            max_sessions=_WALLET_SESSIONS,
        )
        return sender, receiver

    return make


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """The wallet half of a charge (key material: write it 0600 and nowhere else)."""

    user_id: str
    count: int
    wallet_pool: dict[str, Any]
    account_created: bool


def charge_wallet(
    store: Store[PlatformRepository],
    platform_supply: KeySupply,
    *,
    user_id: str,
    count: int,
    me: str = "platform",
    charger: str = "charger",
    charger_supply: KeySupply | None = None,
    size: int = 256,
    low_water: int = 16,
    chunk: int = 512,
    progress: Callable[[int], None] | None = None,
) -> ChargeResult:
    """Charge ``user_id``'s KUE pool with ``count`` keys per direction.

    The platform (master) draws ``2 * count`` keys shared with the charging terminal
    ``charger`` (a slave SAE at another KME site), ``chunk`` per direction at a
    time; the terminal fetches its copies by key ID from its own KME
    (``charger_supply``) and they become the wallet's half, while the platform keeps
    its own copies — stored in one transaction once everything was drawn. Without
    ``charger_supply`` the platform's copies are used for both halves (tests).
    Creates the account if it is new. ``progress`` gets the number of keys drawn.
    """
    if not valid_party_name(user_id):
        raise InvalidInput("user_id must be a valid party name (the wallet certificate CN)")
    if count < 1 or chunk < 1:
        raise InvalidInput("count and chunk must be positive")
    to_wallet: list[QKey] = []
    from_wallet: list[QKey] = []
    wallet_receive: list[QKey] = []
    wallet_send: list[QKey] = []
    while len(to_wallet) < count:
        n = min(chunk, count - len(to_wallet))
        _, platform_pool = charge_pair(
            platform_supply, client=charger, server=me, count=n, size=size
        )
        half = platform_pool.to_dict()
        down, up = _decode_keys(half["send"]), _decode_keys(half["receive"])
        to_wallet += down
        from_wallet += up
        wallet_receive += down if charger_supply is None else _fetch(charger_supply, me, down)
        wallet_send += up if charger_supply is None else _fetch(charger_supply, me, up)
        if progress is not None:
            progress(2 * len(to_wallet))
    wallet = KeyPool(
        me=user_id, peer=me, send=wallet_send, receive=wallet_receive, low_water=low_water
    )
    with store.transaction() as repo:
        created = False
        try:
            repo.get_account(user_id)
        except NotFound:
            repo.create_account(user_id)
            created = True
        repo.add_kue_keys(user_id, KueDirection.TO_WALLET, [_stored(k) for k in to_wallet])
        repo.add_kue_keys(user_id, KueDirection.FROM_WALLET, [_stored(k) for k in from_wallet])
        repo.log_event(
            "wallet.charge", user_id, {"count": count, "key_bits": size, "created": created}
        )
    return ChargeResult(user_id, count, wallet.to_dict(), created)


def _decode_keys(rows: list[list[str]]) -> list[QKey]:
    """Keys in ``KeyPool.to_dict`` form: ``[key_ID, base64(key)]`` pairs."""
    return [QKey(uuid.UUID(key_id), base64.b64decode(key, validate=True)) for key_id, key in rows]


def _stored(key: QKey) -> KueKey:
    return KueKey(str(key.key_id), key.key)


def _fetch(charger: KeySupply, master: str, keys: list[QKey], batch: int = 128) -> list[QKey]:
    """The charging terminal's copies of ``keys``, fetched by ID from its own KME."""
    out: list[QKey] = []
    for start in range(0, len(keys), batch):
        part = keys[start : start + batch]
        got = charger.get_keys_by_id(master, [k.key_id for k in part])
        for mine, theirs in zip(part, got, strict=True):
            if mine.key_id != theirs.key_id or not hmac.compare_digest(mine.key, theirs.key):
                raise KeyUnavailable("charging terminal and platform key copies differ")
        out += got
    return out


def platform_hop_end(
    me: str,
    peers: Collection[str],
    supply: KeySupply | None,
    *,
    policy: QkdPolicy,
    rekey: RekeyPolicy | None,
    replay_cache: ReplayCache,
    peer_factory: Callable[[str], tuple[HopSender, HopReceiver] | None] | None,
    prefetch: int = 1,
) -> HopEnd:
    """The platform's hop end: QKD hops to ``peers`` over receivers that note the key
    each message used, wallet hops made by ``peer_factory``."""
    return qkd_hop_end(
        me,
        peers,
        supply,
        policy=policy,
        rekey=rekey,
        replay_cache=replay_cache,
        prefetch=prefetch,
        receiver=NotingReceiver,
        peer_factory=peer_factory,
    )
