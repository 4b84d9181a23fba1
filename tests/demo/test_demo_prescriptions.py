"""``patientkey demo`` (``make demo``) end to end: every step behaves, in four processes."""

from __future__ import annotations

import pytest

from patientkey.demo.prescriptions import run


@pytest.mark.slow
def test_the_demo_runs_every_step(tmp_path, capsys):
    """The main demo exits 0 with every step checked, the audit log verified, nothing leaked."""
    assert run(None, tmp_path / "work") == 0
    out = capsys.readouterr().out
    assert "demo complete: every step behaved as it must" in out
    assert "✘" not in out
    assert "each proven in the signed tree head" in out
    assert "FHIR R4 AuditEvents exported" in out
    assert (tmp_path / "work" / "disclosures.pdf").read_bytes().startswith(b"%PDF")
