"""PlatformSettings: the documented example loads, inconsistent files are refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from patientkey.errors import ConfigError
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.platform import settings as settings_module
from patientkey.platform.settings import load_platform_settings


def _example() -> str:
    doc = settings_module.__doc__ or ""
    block = doc.split("Example (paths relative to the file)::", 1)[1].split("\n\nEvery ", 1)[0]
    return "\n".join(line[4:] for line in block.splitlines())


def test_documented_example_loads(tmp_path):
    """The module docstring's example is a valid file; relative paths resolve to its folder."""
    path = tmp_path / "platform.toml"
    path.write_text(_example(), encoding="utf-8")
    settings = load_platform_settings(path)
    assert settings.hospitals == ["hospital-1"]
    assert settings.third_parties == ["pharmacy-1"]
    assert settings.kue_policy is QkdPolicy.PREFERRED
    assert settings.keystore == tmp_path / "platform.keystore"
    assert settings.database == f"sqlite:///{tmp_path / 'platform.db'}"
    assert settings.bind_window == timedelta(seconds=900)
    assert settings.replay_guard_shared is False


@pytest.mark.parametrize(
    "extra",
    [
        'hospitals = ["hospital-9"]',  # no [peers.hospital-9]
        'hospitals = ["x"]\nthird_parties = ["x"]\n[peers.x]\nurl = "https://x"',
        'charger_sae = "bad name"',
        "workers = 0",
        'kue_policy = "sometimes"',
        "unknown_key = 1",
    ],
)
def test_inconsistent_files_are_refused(tmp_path, extra):
    """Unknown peers, overlapping roles, bad names, bad values and unknown keys: ConfigError."""
    path = tmp_path / "platform.toml"
    path.write_text(
        f'name = "platform"\npki_dir = "pki"\ndatabase = "sqlite:///p.db"\n{extra}\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError):
        load_platform_settings(path)


def test_shared_replay_guard_follows_workers(tmp_path):
    """The database replay guard is on with several workers unless set explicitly."""
    path = tmp_path / "platform.toml"
    base = 'name = "platform"\npki_dir = "pki"\ndatabase = "sqlite:///p.db"\n'
    path.write_text(base + "workers = 2\n", encoding="utf-8")
    assert load_platform_settings(path).replay_guard_shared is True
    path.write_text(base + "workers = 2\nshared_replay_guard = false\n", encoding="utf-8")
    assert load_platform_settings(path).replay_guard_shared is False
