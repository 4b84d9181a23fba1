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

from patientkey.bench.auth import PHASES, PLATFORM_CALLS, TARGETS, AuthOptions, _Outbox, run
from patientkey.errors import InvalidInput


def test_options_are_checked() -> None:
    """Bad sizes or an unknown database are refused before anything starts."""
    with pytest.raises(InvalidInput):
        AuthOptions(database="oracle").check()
    with pytest.raises(InvalidInput):
        AuthOptions(concurrency=0).check()
    with pytest.raises(InvalidInput):
        AuthOptions(pool_keys=4).check()
    with pytest.raises(InvalidInput):
        AuthOptions(proofs="face").check()
    AuthOptions().check()


def test_outbox_reads_new_lines_and_each_code_once(tmp_path: Path) -> None:
    """The outbox reader finds the newest code per address, once, and skips a torn line."""
    path = tmp_path / "outbox.log"
    lines = [{"to": "a@x", "code": "111111"}, {"to": "b@x", "code": "222222"}]
    path.write_text("".join(json.dumps(m) + "\n" for m in lines) + '{"to": "a@x"', "utf-8")
    outbox = _Outbox(path)
    assert outbox.code_for("b@x") == "222222"
    assert outbox.code_for("a@x") == "111111"
    with pytest.raises(RuntimeError):
        outbox.code_for("a@x")  # used, and the torn line is not read yet
    with path.open("a", encoding="utf-8") as handle:
        handle.write(', "code": "333333"}\n')
    assert outbox.code_for("a@x") == "333333"


@pytest.mark.slow
@pytest.mark.xdist_group("integration")
@pytest.mark.parametrize("proofs", ["password", "otp"])
def test_bench_auth_smoke(tmp_path: Path, proofs: str) -> None:
    """Two patients run real CIBA flows and introspections without errors; JSON matches."""
    out = tmp_path / "auth.json"
    options = AuthOptions(
        concurrency=2,
        duration=1.5,
        warmup=0.3,
        pool_keys=200,
        workdir=tmp_path / "deployment",
        json_out=out,
        proofs=proofs,
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
        otp_call = proofs == "otp" and name == "ciba_flow"  # the wallet asks for the code
        assert row["platform_calls_per_op"] == PLATFORM_CALLS[name] + otp_call
        assert row["target_ops_per_s"] == TARGETS[name]
    assert set(report["phases"]["ciba_flow"]["steps_p50_ms"]) == {
        "bc_authorize",
        "inbox",
        "approve",
        "token",
    } | ({"otp"} if proofs == "otp" else set())


def test_run_restores_the_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """run() quiets the patientkey logger only while it runs, even when it fails."""
    import logging

    from patientkey.bench import auth

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("no deployment here")

    monkeypatch.setattr(auth, "_deployment", broken)
    logger = logging.getLogger("patientkey")
    before = logger.level
    with pytest.raises(RuntimeError):
        run(AuthOptions())
    assert logger.level == before
