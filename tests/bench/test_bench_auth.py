"""``patientkey bench auth`` machinery at tiny scale: the report's shape, never its speed.

The figures belong in the benchmark's output (and docs), not in assertions: a loaded
CI machine would make any threshold flaky. The smoke test only checks that both phases
ran complete CIBA flows and introspections over the real deployment without errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from patientkey.bench.auth import PHASES, PLATFORM_CALLS, TARGETS, AuthOptions, run
from patientkey.errors import InvalidInput


def test_options_are_checked() -> None:
    """Bad sizes or an unknown database are refused before anything starts."""
    with pytest.raises(InvalidInput):
        AuthOptions(database="oracle").check()
    with pytest.raises(InvalidInput):
        AuthOptions(concurrency=0).check()
    with pytest.raises(InvalidInput):
        AuthOptions(pool_keys=4).check()
    AuthOptions().check()


@pytest.mark.slow
@pytest.mark.xdist_group("integration")
def test_bench_auth_smoke(tmp_path: Path) -> None:
    """Two patients run real CIBA flows and introspections without errors; JSON matches."""
    out = tmp_path / "auth.json"
    options = AuthOptions(
        concurrency=2,
        duration=1.5,
        warmup=0.3,
        pool_keys=200,
        workdir=tmp_path / "deployment",
        json_out=out,
    )
    with (tmp_path / "console.txt").open("w", encoding="utf-8") as log:
        report = run(options, console=Console(file=log, width=160))
    assert json.loads(out.read_text(encoding="utf-8")) == report
    assert set(report) >= {"settings", "machine", "phases", "cpu_cores", "target"}
    assert report["settings"]["virtual_patients"] == 2
    assert set(report["phases"]) == set(PHASES)
    for name, row in report["phases"].items():
        assert row["ops"] > 0, name
        assert row["errors"] == 0, (name, row["error_samples"])
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["platform_calls_per_op"] == PLATFORM_CALLS[name]
        assert row["target_ops_per_s"] == TARGETS[name]
    assert set(report["phases"]["ciba_flow"]["steps_p50_ms"]) == {
        "bc_authorize",
        "inbox",
        "approve",
        "token",
    }
