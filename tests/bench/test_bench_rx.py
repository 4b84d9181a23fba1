"""``patientkey bench rx`` machinery at tiny scale: the report's shape, never its speed.

The benchmark's figures belong in its output (and docs), not in assertions: a
loaded CI machine would make any threshold flaky. The smoke test only checks
that every phase ran operations over the real deployment without errors and
that the JSON report has the documented shape.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from rich.console import Console

from patientkey.bench.rx import OPERATIONS, PLATFORM_CALLS, RxOptions, percentile, run
from patientkey.errors import InvalidInput
from patientkey.wallet.store import MemoryRecordCache, MemoryStateStore, WalletState

SUMMARY_KEYS = {"ops", "ops_per_s", "p50_ms", "p95_ms", "p99_ms", "errors"}
OPERATION_KEYS = SUMMARY_KEYS | {"platform_calls_per_op", "platform_calls_per_s", "ratio_to_bare"}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_options_are_checked() -> None:
    with pytest.raises(InvalidInput):
        RxOptions(ops=("bind", "teleport")).check()
    with pytest.raises(InvalidInput):
        RxOptions(database="oracle").check()
    with pytest.raises(InvalidInput):
        RxOptions(workers=2, profile=Path("p.pstats")).check()
    RxOptions().check()


def test_memory_wallet_stores_keep_nothing_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``open_wallet(persist=False)``'s stores: saves are counted, records stay in memory."""
    # The stores are given no path: a file written anyway would land in the working
    # directory, so make that the directory checked below.
    monkeypatch.chdir(tmp_path)
    store = MemoryStateStore()
    store.save(WalletState(user_id="u-alice"))
    assert store.saves == 1
    cache = MemoryRecordCache()
    assert cache.get("hospital-1", "P1") is None
    cache.put("hospital-1", "P1", b"sealed")
    assert cache.get("hospital-1", "P1") == b"sealed"
    assert list(cache.items()) == [("hospital-1", "P1")]
    with pytest.raises(InvalidInput):
        cache.put("../x", "P1", b"sealed")
    assert not any(tmp_path.iterdir())


def test_closed_loop_measures_steps_errors_and_exhaustion() -> None:
    """Each thread loops until the window ends: successes timed with their steps, errors
    counted by type with a sample, and an exhausted thread stops (counted once)."""
    from patientkey.bench.rx import _closed_loop, _Exhausted

    def works() -> dict[str, float]:
        time.sleep(0.002)
        return {"step": 0.001}

    def fails() -> None:
        time.sleep(0.002)
        raise InvalidInput("refused on purpose")

    def exhausted() -> None:
        raise _Exhausted

    result = _closed_loop(
        [("works", works), ("fails", fails), ("exhausted", exhausted)],
        start_at=time.monotonic(),
        warmup=0.05,
        duration=0.2,
    )
    assert result.latencies_ms
    assert all(ms >= 2.0 for ms in result.latencies_ms)
    assert result.steps_ms == {"step": [1.0] * len(result.latencies_ms)}
    assert set(result.errors) == {"InvalidInput (400)"}
    assert result.error_samples["InvalidInput (400)"] == "refused on purpose"
    assert result.exhausted == 1


@pytest.mark.slow
@pytest.mark.xdist_group("integration")
def test_bench_rx_smoke(tmp_path: Path) -> None:
    out = tmp_path / "rx.json"
    options = RxOptions(
        concurrency=2,
        duration=1.0,
        warmup=0.3,
        records=40,
        clients=2,
        pool_keys=800,
        workdir=tmp_path / "deployment",
        json_out=out,
    )
    with (tmp_path / "console.txt").open("w", encoding="utf-8") as log:
        report = run(options, console=Console(file=log, width=160))
    assert json.loads(out.read_text(encoding="utf-8")) == report

    assert set(report) >= {"settings", "machine", "bare", "operations", "cpu_cores", "target"}
    settings = report["settings"]
    assert settings["concurrency"] == 2
    assert settings["virtual_users"] == 2
    assert settings["platform_bind_limit_user"] >= 1000
    assert report["machine"]["cpu_count"] >= 1

    assert set(report["bare"]) >= SUMMARY_KEYS
    assert report["bare"]["ops"] > 0
    assert report["bare"]["errors"] == 0
    assert set(report["operations"]) == set(OPERATIONS)
    for name, row in report["operations"].items():
        assert set(row) >= OPERATION_KEYS, name
        assert row["ops"] > 0, name
        assert row["errors"] == 0, (name, row["error_samples"])
        assert row["platform_calls_per_op"] == PLATFORM_CALLS[name]
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["ratio_to_bare"] > 0
    assert set(report["cpu_cores"]) == {"bare", *OPERATIONS}
    assert report["target"]["platform_calls_per_s"] == 1770
