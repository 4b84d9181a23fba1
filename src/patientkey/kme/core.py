"""Sans-IO key management entity: ETSI GS QKD 014 V1.1.1 over plain values.

No HTTP, no threads, no clock, no locking (adapters hold :attr:`KmeCore.lock`):
callers pass the authenticated caller's SAE_ID (whoever its TLS client
certificate names: the API runs over mutually authenticated HTTPS) and a parsed
request; the core answers with values or raises one of three typed errors,
which every adapter maps the same way (§5, "Status codes")::

    KeySupplyBadRequest    400  malformed request or key_ID unknown/consumed
    KeySupplyUnauthorized  401  caller is not an SAE here / key not issued to it
    KeyUnavailable         503  no (trustworthy) key material right now

Methods and spec sections:

- :meth:`KmeCore.status`   — "Get status" (§5.1), Status data format (§6.1);
- :meth:`KmeCore.enc_keys` — "Get key" (§5.2), Key request (§6.2);
- :meth:`KmeCore.dec_keys` — "Get key with key IDs" (§5.3), Key IDs (§6.4);
- :func:`key_container`    — Key container (§6.3);
- :func:`error_body`       — Error data format (§6.5).

Theory of operation
-------------------
*Sites* are KMEs (a KME_ID each) with the SAEs attached to them; *links* join
two sites. A link's key material is the output of a (simulated) QKD link: the
stream Alice's site holds and the stream Bob's site holds, appended to by
:meth:`KmeCore.add_material`. A master's key is cut from the master site's
copy, the slave's from the slave site's copy at the same offset, and the two
are compared (constant time) before anything is served: a disagreement means
the link's post-processing failed, so the whole pool is discarded and the
caller gets 503 (fail closed). For multicast (``additional_slave_SAE_IDs``) a
slave at a further site receives the key by *key relay*: the master site sends
``key XOR pad`` over the classical channel, where ``pad`` is cut from the link
to that site, and the slave site XORs its own copy of ``pad`` back out.

The life of one key is the table :data:`KEY_TRANSITIONS`; any pair missing
from it is a bug and raises :class:`KeyStateError`. A key is forgotten
(GONE) once every slave fetched it, or when the bound on outstanding keys
evicts it (oldest first); both make its key_ID unknown, hence 400.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hmac
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from patientkey.errors import (
    ConfigError,
    KeySupplyBadRequest,
    KeySupplyUnauthorized,
    KeyUnavailable,
    PatientKeyError,
)
from patientkey.keysupply._types import KeyStatus, QKey

__all__ = [
    "KEY_TRANSITIONS",
    "SUPPORTED_EXTENSIONS",
    "ErrorBody",
    "KeyContainerBody",
    "KeyEvent",
    "KeyIDRef",
    "KeyIDsRequest",
    "KeyRequest",
    "KeyState",
    "KeyStateError",
    "KmeCore",
    "Limits",
    "LinkId",
    "LinkInfo",
    "error_body",
    "key_container",
    "next_state",
    "parse_key_ids",
    "parse_key_request",
    "status_body",
]

# Names of ``extension_mandatory`` parameters this KME implements (§6.2). None:
# any listed mandatory extension is refused with 400, as §6.2 requires, and
# unknown ``extension_optional`` parameters are ignored.
SUPPORTED_EXTENSIONS: Final[frozenset[str]] = frozenset()

LinkId = tuple[str, str]  # (site of Alice, site of Bob) as configured

_UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_ID_ECHO_MAX = 64  # request values echoed into error details are cut to this length


# --- the key state machine -------------------------------------------------------------


class KeyState(enum.Enum):
    """Where one key is in its life."""

    AVAILABLE = "available"  # material in the pool, no key_ID yet
    ISSUED = "issued"  # delivered to the master, no slave has fetched it
    PARTLY_FETCHED = "partly-fetched"  # multicast: some but not all slaves fetched it
    GONE = "gone"  # every slave fetched it, or evicted: forgotten


class KeyEvent(enum.Enum):
    ISSUE = "issue"  # Get key (§5.2) by the master
    FETCH = "fetch"  # Get key with key IDs (§5.3) by a slave, others still pending
    FETCH_LAST = "fetch-last"  # ... by the last pending slave
    EVICT = "evict"  # bound on outstanding keys reached, oldest key dropped


KEY_TRANSITIONS: Final[Mapping[tuple[KeyState, KeyEvent], KeyState]] = {
    (KeyState.AVAILABLE, KeyEvent.ISSUE): KeyState.ISSUED,
    (KeyState.ISSUED, KeyEvent.FETCH): KeyState.PARTLY_FETCHED,
    (KeyState.ISSUED, KeyEvent.FETCH_LAST): KeyState.GONE,
    (KeyState.PARTLY_FETCHED, KeyEvent.FETCH): KeyState.PARTLY_FETCHED,
    (KeyState.PARTLY_FETCHED, KeyEvent.FETCH_LAST): KeyState.GONE,
    (KeyState.ISSUED, KeyEvent.EVICT): KeyState.GONE,
    (KeyState.PARTLY_FETCHED, KeyEvent.EVICT): KeyState.GONE,
}


class KeyStateError(PatientKeyError):
    """A key event that the state table does not allow: a bug in the KME (500)."""


def next_state(state: KeyState, event: KeyEvent) -> KeyState:
    """The state after ``event``; raises KeyStateError for a pair not in the table."""
    try:
        return KEY_TRANSITIONS[(state, event)]
    except KeyError:
        raise KeyStateError(f"{event.value} not allowed in state {state.value}") from None


# --- limits --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Everything bounded, on by default. Sizes are in bits, as in §6.1."""

    key_size: int = 256  # default size of a key (§6.1 key_size)
    min_key_size: int = 64
    max_key_size: int = 1024
    max_key_per_request: int = 128
    max_SAE_ID_count: int = 4  # noqa: N815 - the spec's name; 0 disables multicast
    max_key_ids_per_request: int = 128  # dec_keys: key_IDs in one request
    max_pool_bits: int = 1 << 20  # per link and site; sets max_key_count
    max_issued_keys: int = 100_000  # keys awaiting their slaves, across links
    max_body_bytes: int = 64 * 1024  # enforced by the HTTP adapter

    def __post_init__(self) -> None:
        for name in (
            "key_size",
            "min_key_size",
            "max_key_size",
            "max_key_per_request",
            "max_key_ids_per_request",
            "max_pool_bits",
            "max_issued_keys",
            "max_body_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"limit {name} must be a positive integer")
        if isinstance(self.max_SAE_ID_count, bool) or not isinstance(self.max_SAE_ID_count, int):
            raise ConfigError("limit max_SAE_ID_count must be an integer")
        if self.max_SAE_ID_count < 0:
            raise ConfigError("limit max_SAE_ID_count must not be negative")
        for name in ("key_size", "min_key_size", "max_key_size", "max_pool_bits"):
            if getattr(self, name) % 8:
                raise ConfigError(f"limit {name} must be a multiple of 8")
        if not self.min_key_size <= self.key_size <= self.max_key_size:
            raise ConfigError("limits need min_key_size <= key_size <= max_key_size")
        if self.max_key_size > self.max_pool_bits:
            raise ConfigError("max_pool_bits must hold at least one key of max_key_size")


# --- wire models: input (§6.2, §6.4) -----------------------------------------------------

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)


class KeyRequest(BaseModel):
    """Key request (§6.2), the body of POST enc_keys; every field is optional."""

    model_config = _STRICT

    number: int | None = None
    size: int | None = None
    additional_slave_SAE_IDs: list[str] = Field(default_factory=list)  # noqa: N815
    extension_mandatory: list[dict[str, Any]] = Field(default_factory=list)
    extension_optional: list[dict[str, Any]] = Field(default_factory=list)


class KeyIDRef(BaseModel):
    """One entry of Key IDs (§6.4); ``key_ID`` in the canonical UUID form."""

    model_config = _STRICT

    key_ID: Annotated[str, StringConstraints(pattern=_UUID_PATTERN)]  # noqa: N815
    key_ID_extension: dict[str, Any] | None = None  # noqa: N815


class KeyIDsRequest(BaseModel):
    """Key IDs (§6.4), the body of POST dec_keys."""

    model_config = _STRICT

    key_IDs: list[KeyIDRef] = Field(min_length=1)  # noqa: N815
    key_IDs_extension: dict[str, Any] | None = None  # noqa: N815

    def uuids(self) -> list[uuid.UUID]:
        return [uuid.UUID(ref.key_ID) for ref in self.key_IDs]


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    # Only location and message: pydantic's "input" could echo large or odd values.
    return [
        {"parameter": ".".join(str(p) for p in err["loc"]) or "body", "reason": err["msg"]}
        for err in exc.errors(include_url=False)
    ]


def parse_key_request(data: object) -> KeyRequest:
    """A Key request from decoded JSON (or keyword values); 400 when malformed."""
    try:
        return KeyRequest.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise KeySupplyBadRequest(
            "malformed key request", details=_validation_details(exc)
        ) from exc


def parse_key_ids(data: object) -> KeyIDsRequest:
    """Key IDs from decoded JSON; 400 when malformed."""
    try:
        return KeyIDsRequest.model_validate(data)
    except ValidationError as exc:
        raise KeySupplyBadRequest("malformed key IDs", details=_validation_details(exc)) from exc


# --- wire models: output (§6.1, §6.3, §6.5), for adapters and OpenAPI --------------------


class KeyBody(BaseModel):
    key_ID: str  # noqa: N815
    key: str  # base64 (RFC 4648)


class KeyContainerBody(BaseModel):
    """Key container (§6.3)."""

    keys: list[KeyBody]


class ErrorBody(BaseModel):
    """Error data format (§6.5)."""

    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)


def key_container(keys: Iterable[QKey]) -> dict[str, Any]:
    """Key container (§6.3) as JSON-ready data."""
    return {
        "keys": [
            {"key_ID": str(k.key_id), "key": base64.b64encode(k.key).decode("ascii")} for k in keys
        ]
    }


def status_body(status: KeyStatus) -> dict[str, Any]:
    """Status (§6.1) as JSON-ready data (KeyStatus fields are the spec's names)."""
    return dataclasses.asdict(status)


def error_body(exc: PatientKeyError) -> dict[str, Any]:
    """Error data format (§6.5) for any PatientKey error; internal errors stay vague."""
    if exc.status >= 500 and not isinstance(exc, KeyUnavailable):
        return {"message": "internal error", "details": []}
    details = exc.extensions.get("details")
    return {"message": exc.detail, "details": list(details) if details else []}


def _bad(message: str, **detail: Any) -> KeySupplyBadRequest:
    return KeySupplyBadRequest(message, details=[detail] if detail else [])


def _echo(value: str) -> str:
    return value[:_ID_ECHO_MAX]


# --- stored state ----------------------------------------------------------------------


class _Link:
    """The two sites' copies of one link's key material (equal lengths, always)."""

    __slots__ = ("a", "b", "capacity", "consumed", "copies", "mismatches")

    def __init__(self, a: str, b: str, capacity_bytes: int) -> None:
        self.a = a
        self.b = b
        self.capacity = capacity_bytes
        self.copies: dict[str, bytearray] = {a: bytearray(), b: bytearray()}
        self.mismatches = 0
        self.consumed = 0  # bytes of key material handed out, ever (the key budget)

    @property
    def available(self) -> int:
        return len(self.copies[self.a])

    def other(self, site: str) -> str:
        return self.b if site == self.a else self.a

    def add(self, alice: bytes, bob: bytes) -> int:
        room = self.capacity - self.available
        n = min(room, len(alice))
        self.copies[self.a] += alice[:n]
        self.copies[self.b] += bob[:n]
        return n

    def take(self, site: str, n: int) -> tuple[bytes, bytes]:
        """Cut ``n`` bytes from both copies: (copy at ``site``, copy at the other end)."""
        here, there = self.copies[site], self.copies[self.other(site)]
        out = (bytes(here[:n]), bytes(there[:n]))
        self.consumed += n
        del here[:n]
        del there[:n]
        return out

    def flush(self) -> None:
        for buf in self.copies.values():
            # Overwrite before release: best effort, Python may hold other copies.
            buf[:] = bytes(len(buf))
            buf.clear()


@dataclass(slots=True)
class _IssuedKey:
    """A key delivered to its master, waiting for its slaves (stored model)."""

    key_id: uuid.UUID
    master: str
    link_ids: tuple[LinkId, ...]
    slave_copies: dict[str, bytes] = field(repr=False)  # slave SAE_ID -> its site's copy
    state: KeyState
    fetched: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """Loggable state of one link (never key material)."""

    a: str
    b: str
    available_bits: int
    capacity_bits: int
    outstanding_keys: int
    mismatches: int
    consumed_bits: int


# --- the core --------------------------------------------------------------------------


class KmeCore:
    """All sites, links, pools and outstanding keys of one (simulated) KME network.

    The methods are not thread-safe and never lock: every adapter that calls
    them from several threads (HTTP worker threads, the refill thread, an
    in-process key supply) holds :attr:`lock`, the one lock of this core.
    """

    def __init__(
        self,
        sites: Mapping[str, Collection[str]],
        links: Iterable[LinkId],
        limits: Limits | None = None,
        *,
        key_id_factory: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        self.limits = limits or Limits()
        self.lock = threading.Lock()
        self._new_key_id = key_id_factory
        self._site_of: dict[str, str] = {}
        if not sites:
            raise ConfigError("at least one site is needed")
        for kme_id, sae_ids in sites.items():
            if not kme_id:
                raise ConfigError("empty KME_ID")
            for sae in sae_ids:
                if not sae:
                    raise ConfigError(f"empty SAE_ID at {kme_id}")
                if sae in self._site_of:
                    raise ConfigError(f"SAE {sae!r} is attached to two sites")
                self._site_of[sae] = kme_id
        self._links: dict[frozenset[str], _Link] = {}
        for a, b in links:
            if a not in sites or b not in sites:
                raise ConfigError(f"link {a}-{b} names an unknown site")
            if a == b:
                raise ConfigError(f"link {a}-{b} joins a site to itself")
            pair = frozenset((a, b))
            if pair in self._links:
                raise ConfigError(f"two links between {a} and {b}")
            self._links[pair] = _Link(a, b, self.limits.max_pool_bits // 8)
        self._issued: dict[uuid.UUID, _IssuedKey] = {}

    # -- topology ---------------------------------------------------------------------

    @property
    def link_ids(self) -> list[LinkId]:
        return [(link.a, link.b) for link in self._links.values()]

    def site_of(self, sae_id: str) -> str | None:
        return self._site_of.get(sae_id)

    def _link(self, link_id: LinkId) -> _Link:
        link = self._links.get(frozenset(link_id))
        if link is None or (link.a, link.b) != tuple(link_id):
            raise KeySupplyBadRequest("unknown link", details=[{"link": list(link_id)}])
        return link

    # -- key material (the QKD side) ----------------------------------------------------

    def add_material(self, link_id: LinkId, alice: bytes, bob: bytes) -> int:
        """Append one QKD round's output (Alice's site copy, Bob's); returns bytes kept.

        The copies must have equal length; they are not compared here, that
        happens for every key served. Material beyond ``max_pool_bits`` is dropped.
        """
        if len(alice) != len(bob):
            raise KeySupplyBadRequest("Alice's and Bob's copies differ in length")
        return self._link(link_id).add(alice, bob)

    def available_bits(self, link_id: LinkId) -> int:
        return self._link(link_id).available * 8

    def flush(self, link_id: LinkId) -> None:
        """Discard a link's pool (issued keys stay fetchable)."""
        self._link(link_id).flush()

    def link_info(self, link_id: LinkId) -> LinkInfo:
        link = self._link(link_id)
        outstanding = sum(1 for k in self._issued.values() if tuple(link_id) in k.link_ids)
        return LinkInfo(
            a=link.a,
            b=link.b,
            available_bits=link.available * 8,
            capacity_bits=link.capacity * 8,
            outstanding_keys=outstanding,
            mismatches=link.mismatches,
            consumed_bits=link.consumed * 8,
        )

    # -- ETSI GS QKD 014 §5 ---------------------------------------------------------------

    def status(self, master: str, slave: str) -> KeyStatus:
        """Get status (§5.1): the link from ``master`` (the caller) to ``slave``."""
        master_site = self._caller_site(master)
        slave_site = self._slave_site(master, slave, "slave_SAE_ID")
        link = self._link_between(master_site, slave_site)
        limits = self.limits
        return KeyStatus(
            source_KME_ID=master_site,
            target_KME_ID=slave_site,
            master_SAE_ID=master,
            slave_SAE_ID=slave,
            key_size=limits.key_size,
            stored_key_count=link.available * 8 // limits.key_size,
            max_key_count=link.capacity * 8 // limits.key_size,
            max_key_per_request=limits.max_key_per_request,
            max_key_size=limits.max_key_size,
            min_key_size=limits.min_key_size,
            max_SAE_ID_count=limits.max_SAE_ID_count,
        )

    def enc_keys(self, master: str, slave: str, request: KeyRequest) -> list[QKey]:
        """Get key (§5.2): new keys for ``master`` (the caller), shared with ``slave``.

        All or nothing: either every requested key is issued or none is.
        """
        master_site = self._caller_site(master)
        self._check_extensions(request.extension_mandatory)
        number, size = self._number_and_size(request)
        slaves = self._slaves(master, slave, request.additional_slave_SAE_IDs)
        # One link per distinct slave site, the primary slave's first.
        sites = list(dict.fromkeys(self._site_of[s] for s in slaves))
        links = [self._link_between(master_site, site) for site in sites]
        nbytes = size // 8
        for link in links:
            if link.available < number * nbytes:
                raise KeyUnavailable(
                    "no key material available",
                    details=[
                        {"link": [link.a, link.b], "stored_key_count": link.available // nbytes}
                    ],
                )
        issued: list[_IssuedKey] = []
        keys: list[QKey] = []
        for _ in range(number):
            pads = [link.take(master_site, nbytes) for link in links]
            key = pads[0][0]
            at_site: dict[str, bytes] = {}
            for site, link, (master_copy, slave_copy) in zip(sites, links, pads, strict=True):
                # Key relay: the master site sends key ^ master_copy, the slave site
                # XORs its own copy back out. For the primary link master_copy is the
                # key itself, so this yields the slave site's copy unchanged.
                delivered = _xor(_xor(key, master_copy), slave_copy)
                if not hmac.compare_digest(delivered, key):
                    self._discard(link)
                    raise KeyUnavailable("key material check failed; link pool discarded")
                at_site[site] = delivered
            issued.append(
                _IssuedKey(
                    key_id=self._fresh_key_id(issued),
                    master=master,
                    link_ids=tuple((link.a, link.b) for link in links),
                    slave_copies={s: at_site[self._site_of[s]] for s in slaves},
                    state=next_state(KeyState.AVAILABLE, KeyEvent.ISSUE),
                )
            )
            keys.append(QKey(issued[-1].key_id, key))
        # Commit only once every key passed the check.
        for record in issued:
            self._issued[record.key_id] = record
        self._evict_excess()
        return keys

    def dec_keys(self, slave: str, master: str, request: KeyIDsRequest) -> list[QKey]:
        """Get key with key IDs (§5.3): the keys ``master`` obtained for ``slave`` (the caller).

        All or nothing: every key_ID is checked before any key is released.
        """
        self._caller_site(slave)
        if master not in self._site_of:
            raise _bad("unknown master_SAE_ID", master_SAE_ID=_echo(master))
        if len(request.key_IDs) > self.limits.max_key_ids_per_request:
            raise _bad(
                "too many key_IDs",
                key_IDs=len(request.key_IDs),
                max=self.limits.max_key_ids_per_request,
            )
        key_ids = request.uuids()
        if len(set(key_ids)) != len(key_ids):
            raise _bad("duplicate key_ID in request")
        records: list[_IssuedKey] = []
        for key_id in key_ids:
            record = self._issued.get(key_id)
            # Unknown, consumed and "issued by another master" look the same: the
            # (master, key_ID) pair names no key.
            if record is None or record.master != master:
                raise _bad("key_ID unknown or already delivered", key_ID=str(key_id))
            if slave not in record.slave_copies:
                raise KeySupplyUnauthorized(
                    "key_ID was not issued to this SAE", details=[{"key_ID": str(key_id)}]
                )
            if slave in record.fetched:
                raise _bad("key_ID unknown or already delivered", key_ID=str(key_id))
            records.append(record)
        out: list[QKey] = []
        for record in records:
            record.fetched.add(slave)
            last = record.fetched == record.slave_copies.keys()
            record.state = next_state(record.state, KeyEvent.FETCH_LAST if last else KeyEvent.FETCH)
            out.append(QKey(record.key_id, record.slave_copies[slave]))
            if record.state is KeyState.GONE:
                del self._issued[record.key_id]
        return out

    # -- checks -------------------------------------------------------------------------

    def _caller_site(self, sae: str) -> str:
        site = self._site_of.get(sae)
        if site is None:
            raise KeySupplyUnauthorized("caller is not an SAE registered with this KME")
        return site

    def _slave_site(self, master: str, slave: str, parameter: str) -> str:
        site = self._site_of.get(slave)
        if site is None:
            raise _bad(f"unknown {parameter}", **{parameter: _echo(slave)})
        if slave == master:
            raise _bad(f"{parameter} is the caller itself", **{parameter: _echo(slave)})
        return site

    def _link_between(self, master_site: str, slave_site: str) -> _Link:
        link = self._links.get(frozenset((master_site, slave_site)))
        if link is None:
            # Same-site SAE pairs included: this KME only serves QKD-linked pairs.
            raise _bad(
                "no QKD link between the master's and the slave's KME",
                source_KME_ID=master_site,
                target_KME_ID=slave_site,
            )
        return link

    @staticmethod
    def _check_extensions(mandatory: Sequence[Mapping[str, Any]]) -> None:
        unsupported = [
            name for ext in mandatory for name in ext if name not in SUPPORTED_EXTENSIONS
        ]
        if unsupported:
            raise KeySupplyBadRequest(
                "not all extension_mandatory parameters are supported",
                details=[
                    {"extension_mandatory_unsupported": _echo(name)} for name in unsupported[:16]
                ],
            )

    def _number_and_size(self, request: KeyRequest) -> tuple[int, int]:
        limits = self.limits
        number = 1 if request.number is None else request.number
        size = limits.key_size if request.size is None else request.size
        if not 1 <= number <= limits.max_key_per_request:
            raise _bad(
                "number out of range",
                parameter="number",
                min=1,
                max=limits.max_key_per_request,
            )
        if size % 8 or not limits.min_key_size <= size <= limits.max_key_size:
            raise _bad(
                "size must be a multiple of 8 within [min_key_size, max_key_size]",
                parameter="size",
                min=limits.min_key_size,
                max=limits.max_key_size,
            )
        return number, size

    def _slaves(self, master: str, slave: str, additional: Sequence[str]) -> list[str]:
        self._slave_site(master, slave, "slave_SAE_ID")
        if len(additional) > self.limits.max_SAE_ID_count:
            raise _bad(
                "too many additional_slave_SAE_IDs",
                parameter="additional_slave_SAE_IDs",
                max=self.limits.max_SAE_ID_count,
            )
        for extra in additional:
            self._slave_site(master, extra, "additional_slave_SAE_IDs")
        slaves = [slave, *additional]
        if len(set(slaves)) != len(slaves):
            raise _bad("a slave SAE is named twice", parameter="additional_slave_SAE_IDs")
        return slaves

    # -- bookkeeping ----------------------------------------------------------------------

    def _fresh_key_id(self, pending: Sequence[_IssuedKey]) -> uuid.UUID:
        key_id = self._new_key_id()
        if key_id in self._issued or any(r.key_id == key_id for r in pending):
            # uuid4 collisions do not happen; a repeating injected factory does.
            raise PatientKeyError("key_ID factory repeated a key_ID")
        return key_id

    def _discard(self, link: _Link) -> None:
        link.mismatches += 1
        link.flush()

    def _evict_excess(self) -> None:
        while len(self._issued) > self.limits.max_issued_keys:
            oldest = next(iter(self._issued.values()))
            oldest.state = next_state(oldest.state, KeyEvent.EVICT)
            del self._issued[oldest.key_id]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")
