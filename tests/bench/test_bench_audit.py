"""``patientkey bench audit`` at tiny sizes: the report's shape, never its speed."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
from typer.testing import CliRunner

from patientkey.bench.audit import AuditOptions, make_event, parse_sizes
from patientkey.cli import app
from patientkey.errors import InvalidInput


def test_bench_audit_runs_at_tiny_sizes(tmp_path):
    """The command appends, proves and verifies at 100 and 1000 events and writes JSON."""
    out = tmp_path / "audit.json"
    result = CliRunner().invoke(
        app, ["bench", "audit", "--sizes", "100,1000", "--samples", "20", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "appends" in result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["settings"]["sizes"] == [100, 1000]
    assert [r["size"] for r in report["results"]] == [100, 1000]
    for r in report["results"]:
        assert r["append"]["events_per_s"] > 0
        assert r["log2_size"] == math.ceil(math.log2(r["size"]))
        for kind in ("inclusion", "consistency"):
            assert r[kind]["hashes"]["max"] <= r["log2_size"] + 1
            assert set(r[kind]) == {"generate_us", "verify_us", "hashes", "node_reads"}
        assert set(r["tree_head"]) >= {"root_us", "sign_us", "wallet_check_consistency_us"}


def test_bench_audit_refuses_bad_sizes():
    """Sizes that are not whole numbers, or too small, end the command with exit code 2."""
    for sizes in ("10,abc", "1", "25e-1", "1.5"):
        result = CliRunner().invoke(app, ["bench", "audit", "--sizes", sizes])
        assert result.exit_code == 2, (sizes, result.output)


def test_sizes_parse_and_options_check():
    """Sizes parse with underscores and exponents, sorted; options refuse the impossible."""
    assert parse_sizes("1_000, 1e2,100") == (100, 1000)
    with pytest.raises(InvalidInput):
        parse_sizes(" , ")
    with pytest.raises(InvalidInput):
        AuditOptions(sizes=(1000, 100)).check()
    with pytest.raises(InvalidInput):
        AuditOptions(sizes=(100,), samples=0).check()
    AuditOptions().check()


def test_events_are_metadata_only():
    """Synthetic events are JSON with kind, time, User_ID and sequence: no health data."""
    event = json.loads(make_event(12))
    assert set(event) == {"at", "kind", "seq", "user_id", "by"}
    assert make_event(12) != make_event(13)


def test_bench_audit_sql_runs_on_the_platform_database(tmp_path):
    """--store sql logs, sequences and proves on SQLite; the probe account's sync verifies."""
    out = tmp_path / "audit-sql.json"
    result = CliRunner().invoke(
        app,
        ["bench", "audit", "--store", "sql", "--sizes", "200,500", "--samples", "5",
         "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["settings"]["store"].startswith("SQLite")
    assert [r["size"] for r in report["results"]] == [200, 500]
    for r in report["results"]:
        assert r["sequenced_per_s"] > 0
        assert r["inclusion_hashes"] <= r["log2_size"]
        assert r["sync_events"] == 20
        assert r["sync_hashes"] <= 20 * r["log2_size"]


@pytest.mark.postgres
def test_bench_audit_sql_on_postgresql():
    """--store sql with --db-url runs in a throw-away PostgreSQL schema."""
    pg_url = os.environ.get(
        "PATIENTKEY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    if not os.environ.get("CI"):
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=3).close()
        except OSError as exc:
            pytest.skip(f"PostgreSQL unreachable ({exc}); set CI to make this a failure")
    result = CliRunner().invoke(
        app,
        ["bench", "audit", "--store", "sql", "--sizes", "100", "--samples", "3",
         "--db-url", pg_url],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "postgresql" in result.output


def test_bench_audit_refuses_an_unknown_store():
    """--store other than memory or sql ends the command with exit code 2."""
    result = CliRunner().invoke(app, ["bench", "audit", "--store", "disk"])
    assert result.exit_code == 2, result.output
