"""Keeping the KME's pools filled from simulated BB84 links.

The core (:mod:`patientkey.kme.core`) is pure; this module is the one place
with a thread. Each link has a :class:`LinkFeeder` that runs
:func:`patientkey.kme.bb84.simulate` rounds; a :class:`LinkManager` watches
every pool and, when one falls below its low watermark, runs rounds until it
reaches the high watermark. The simulation runs outside the lock; only
``core.add_material`` is called under it, so key requests wait microseconds,
not a round.

An aborted round (QBER above ``qber_abort``, e.g. with the eavesdropper
switched on) yields nothing: the pool drains with use and the KME answers 503
(ETSI GS QKD 014 §5.2, "Service unavailable") — senders fail closed. The
manager retries an aborting link every ``retry_interval_s``; switching Eve off
again lets the pool refill.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self

from patientkey.errors import InvalidInput
from patientkey.kme import bb84
from patientkey.kme.bb84 import LinkParams, LinkResult
from patientkey.kme.config import KmeSettings
from patientkey.kme.core import KmeCore, LinkId

__all__ = ["KmeRuntime", "LinkFeeder", "LinkManager", "Simulate", "Watermarks"]

log = logging.getLogger(__name__)

Simulate = Callable[[LinkParams, int | None], LinkResult]
_MAX_ROUNDS_PER_FILL = 256  # a link that adds almost nothing per round must not spin forever


@dataclass(frozen=True, slots=True)
class Watermarks:
    """Refill below ``low_bits``, stop at or above ``high_bits``."""

    low_bits: int
    high_bits: int

    def __post_init__(self) -> None:
        if not 0 <= self.low_bits < self.high_bits:
            raise InvalidInput("watermarks need 0 <= low_bits < high_bits")


class LinkFeeder:
    """Runs BB84 rounds for one link; its parameters (Eve) can change at runtime.

    With a ``seed`` the per-round seeds come from ``random.Random(seed)``, so a
    run is reproducible (tests); without one every round uses fresh OS entropy.
    """

    def __init__(
        self,
        link_id: LinkId,
        params: LinkParams,
        watermarks: Watermarks,
        *,
        seed: int | None = None,
        simulate: Simulate = bb84.simulate,
    ) -> None:
        self.link_id = link_id
        self.watermarks = watermarks
        self._params = params
        self._seeds = random.Random(seed) if seed is not None else None  # noqa: S311 - simulation seeds, not secrets
        self._simulate = simulate
        self._params_lock = threading.Lock()
        self.rounds = 0
        self.aborted_rounds = 0
        self.last_summary: dict[str, float | int | bool] | None = None
        self.retry_at = 0.0  # monotonic time before which an aborting link is left alone

    @property
    def params(self) -> LinkParams:
        with self._params_lock:
            return self._params

    def set_eve(self, eve: float) -> None:
        """Switch the intercept-resend eavesdropper to attack fraction ``eve`` (0 = off)."""
        with self._params_lock:
            self._params = dataclasses.replace(self._params, eve=eve)
        self.retry_at = 0.0  # let the next check try the new setting at once

    def run_round(self) -> LinkResult:
        seed = self._seeds.randrange(2**63) if self._seeds is not None else None
        result = self._simulate(self.params, seed)
        self.rounds += 1
        self.last_summary = result.summary()
        if result.aborted:
            self.aborted_rounds += 1
        return result

    def info(self) -> dict[str, Any]:
        return {
            "eve": self.params.eve,
            "rounds": self.rounds,
            "aborted_rounds": self.aborted_rounds,
            "last_round": self.last_summary,
            "low_watermark_bits": self.watermarks.low_bits,
            "high_watermark_bits": self.watermarks.high_bits,
        }


class LinkManager:
    """Keeps every link's pool between its watermarks, in a background thread."""

    def __init__(
        self,
        core: KmeCore,
        feeders: Iterable[LinkFeeder],
        *,
        interval_s: float = 0.2,
        retry_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.lock = core.lock
        self._feeders: dict[LinkId, LinkFeeder] = {f.link_id: f for f in feeders}
        unknown = set(self._feeders) - set(core.link_ids)
        if unknown:
            raise InvalidInput(f"feeders for unknown links: {sorted(unknown)}")
        self.interval_s = interval_s
        self.retry_interval_s = retry_interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def feeder(self, link_id: LinkId) -> LinkFeeder:
        try:
            return self._feeders[link_id]
        except KeyError:
            raise InvalidInput(f"no such link {link_id!r}") from None

    @property
    def link_ids(self) -> list[LinkId]:
        return list(self._feeders)

    def set_eve(self, link_id: LinkId, eve: float) -> None:
        self.feeder(link_id).set_eve(eve)

    def info(self, link_id: LinkId) -> dict[str, Any]:
        with self.lock:
            link = dataclasses.asdict(self.core.link_info(link_id))
        return {**link, **self.feeder(link_id).info()}

    def fill(self, link_id: LinkId, *, force: bool = False) -> int:
        """Top up one link to its high watermark; returns the bytes added.

        Does nothing while the pool is at or above the low watermark (unless
        ``force``), and stops at the first aborted or empty round.
        """
        feeder = self.feeder(link_id)
        added = 0
        with self.lock:
            level = self.core.available_bits(link_id)
        if level >= feeder.watermarks.low_bits and not force:
            return 0
        for _ in range(_MAX_ROUNDS_PER_FILL):
            if level >= feeder.watermarks.high_bits or self._stop.is_set():
                break
            result = feeder.run_round()
            if result.aborted or not result.alice_key:
                log.warning("link %s-%s round yielded no key: %s", *link_id, result.summary())
                feeder.retry_at = self._clock() + self.retry_interval_s
                break
            with self.lock:
                added += self.core.add_material(link_id, result.alice_key, result.bob_key)
                level = self.core.available_bits(link_id)
            log.debug("link %s-%s round: %s, pool %d bits", *link_id, result.summary(), level)
        return added

    def tick(self) -> int:
        """One pass over all links (what the thread does every ``interval_s``)."""
        now = self._clock()
        return sum(self.fill(link_id) for link_id, f in self._feeders.items() if f.retry_at <= now)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kme-refill", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                # The refill thread must outlive one bad round; the traceback is logged.
                log.exception("refill pass failed")
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass(slots=True)
class KmeRuntime:
    """A configured KME: its core and the feeders of its pools."""

    core: KmeCore
    links: LinkManager
    admin_sae_ids: frozenset[str]

    @classmethod
    def from_settings(cls, settings: KmeSettings, *, simulate: Simulate = bb84.simulate) -> Self:
        core = settings.build_core()
        feeders: list[LinkFeeder] = []
        for link in settings.links:
            if link.seed is not None:
                log.warning("link %s-%s has a fixed seed: keys are reproducible", link.a, link.b)
            feeders.append(
                LinkFeeder(
                    (link.a, link.b),
                    link.bb84.to_params(),
                    Watermarks(link.low_watermark_bits, link.high_watermark_bits),
                    seed=link.seed,
                    simulate=simulate,
                )
            )
        manager = LinkManager(
            core,
            feeders,
            interval_s=settings.refill_interval_s,
            retry_interval_s=settings.retry_interval_s,
        )
        return cls(core, manager, frozenset(settings.admin_sae_ids))

    def fill_all(self) -> int:
        """Fill every pool to its high watermark now (synchronously)."""
        return sum(self.links.fill(link_id, force=True) for link_id in self.links.link_ids)

    def start(self) -> None:
        self.links.start()

    def stop(self) -> None:
        self.links.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
