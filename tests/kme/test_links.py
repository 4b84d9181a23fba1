"""Pools filled by BB84 rounds (links), and the KME configuration that describes them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from patientkey.errors import ConfigError, InvalidInput, KeyUnavailable
from patientkey.keysupply.embedded import EmbeddedKeySupply
from patientkey.kme.bb84 import LinkParams, LinkResult, simulate
from patientkey.kme.config import KmeSettings, load_config, parse_config
from patientkey.kme.core import KmeCore, Limits, parse_key_request
from patientkey.kme.links import KmeRuntime, LinkFeeder, LinkManager, Watermarks

LINK = ("A", "B")
FAST = LinkParams(pulses=20_000)  # ~1.8 kB of key per round, a few ms
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "kme.example.toml"


def network(max_pool_bits: int = 1 << 16) -> KmeCore:
    return KmeCore({"A": ["alice"], "B": ["bob"]}, [LINK], Limits(max_pool_bits=max_pool_bits))


def manager(
    core: KmeCore,
    params: LinkParams = FAST,
    marks: Watermarks | None = None,
    **kwargs: float,
) -> LinkManager:
    feeder = LinkFeeder(LINK, params, marks or Watermarks(8_192, 32_768), seed=7)
    return LinkManager(core, [feeder], **kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- refill --------------------------------------------------------------------------


def test_fill_reaches_the_high_watermark() -> None:
    """Below the low watermark, rounds run until the pool is at or above the high one."""
    core = network()
    links = manager(core)
    added = links.fill(LINK)
    assert added * 8 == core.available_bits(LINK) >= 32_768
    assert links.feeder(LINK).rounds >= 2


def test_fill_does_nothing_above_the_low_watermark() -> None:
    """A pool at or above the low watermark is left alone (no round run)."""
    core = network()
    core.add_material(LINK, bytes(1024), bytes(1024))  # 8192 bits = low watermark
    links = manager(core)
    assert links.fill(LINK) == 0
    assert links.feeder(LINK).rounds == 0


def test_served_keys_come_from_bb84_and_agree() -> None:
    """Keys cut from simulated BB84 output reach master and slave identically."""
    core = network()
    manager(core).fill(LINK)
    alice, bob = EmbeddedKeySupply(core, "alice"), EmbeddedKeySupply(core, "bob")
    keys = alice.get_keys("bob", number=4, size=256)
    assert bob.get_keys_by_id("alice", [k.key_id for k in keys]) == keys


def test_eve_aborts_rounds_and_the_pool_drains_to_503() -> None:
    """With Eve on every round aborts, nothing is added, and once drained the KME says 503."""
    core = network()
    links = manager(core)
    links.fill(LINK)
    links.set_eve(LINK, 1.0)
    alice = EmbeddedKeySupply(core, "alice")
    while core.available_bits(LINK) >= 256:
        alice.get_keys("bob", number=1, size=256)
        assert links.fill(LINK) == 0
    assert links.feeder(LINK).aborted_rounds >= 1
    assert links.feeder(LINK).last_summary is not None
    assert links.feeder(LINK).last_summary["aborted"] is True
    with pytest.raises(KeyUnavailable):
        alice.get_keys("bob")


def test_aborting_link_is_retried_after_the_interval() -> None:
    """After an aborted round the link is left alone for retry_interval_s, then retried."""
    core = network()
    clock = FakeClock()
    links = manager(core, LinkParams(pulses=20_000, eve=1.0), retry_interval_s=5.0, clock=clock)
    assert links.tick() == 0
    assert links.feeder(LINK).rounds == 1
    clock.now = 4.0
    links.tick()
    assert links.feeder(LINK).rounds == 1
    clock.now = 6.0
    links.tick()
    assert links.feeder(LINK).rounds == 2


def test_switching_eve_off_lets_the_pool_refill() -> None:
    """set_eve(0) takes effect at once, even during the retry wait."""
    core = network()
    clock = FakeClock()
    links = manager(core, LinkParams(pulses=20_000, eve=1.0), retry_interval_s=60.0, clock=clock)
    links.tick()
    assert core.available_bits(LINK) == 0
    links.set_eve(LINK, 0.0)
    assert links.feeder(LINK).params.eve == 0.0
    assert links.tick() > 0


def test_seeded_feeders_are_reproducible() -> None:
    """The same seed gives the same rounds (tests); no seed gives fresh ones."""
    one = LinkFeeder(LINK, FAST, Watermarks(0, 8), seed=3).run_round()
    two = LinkFeeder(LINK, FAST, Watermarks(0, 8), seed=3).run_round()
    assert one.alice_key == two.alice_key
    fresh = LinkFeeder(LINK, FAST, Watermarks(0, 8)).run_round()
    assert fresh.alice_key != one.alice_key


def test_disagreeing_bb84_output_fails_closed() -> None:
    """If a round's copies disagree (failed reconciliation), no key is served."""

    def broken(params: LinkParams, seed: int | None) -> LinkResult:
        good = simulate(params, seed)
        flipped = bytes([good.bob_key[0] ^ 0x80]) + good.bob_key[1:]
        return LinkResult(
            good.qber, good.sifted_bits, 0, good.secret_bits, False, good.alice_key, flipped
        )

    core = network()
    feeder = LinkFeeder(LINK, FAST, Watermarks(4_096, 8_192), seed=1, simulate=broken)
    LinkManager(core, [feeder]).fill(LINK)
    with pytest.raises(KeyUnavailable):
        EmbeddedKeySupply(core, "alice").get_keys("bob")
    assert core.link_info(LINK).mismatches == 1


def test_background_thread_refills_after_use() -> None:
    """The refill thread tops the pool up again after keys are taken."""
    core = network()
    links = manager(core, interval_s=0.01)
    alice = EmbeddedKeySupply(core, "alice")
    with links:
        deadline = time.monotonic() + 10
        while core.available_bits(LINK) < 32_768 and time.monotonic() < deadline:
            time.sleep(0.01)
        taken = 0
        while core.available_bits(LINK) >= 8_192:  # drive it below the low watermark
            taken += len(alice.get_keys("bob", number=16, size=256))
        assert taken
        while core.available_bits(LINK) < 32_768 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert core.available_bits(LINK) >= 32_768


def test_feeders_must_match_links() -> None:
    """A feeder for a link the core does not have is refused."""
    feeder = LinkFeeder(("A", "C"), FAST, Watermarks(0, 8))
    with pytest.raises(InvalidInput):
        LinkManager(network(), [feeder])


def test_watermarks_must_be_ordered() -> None:
    """low < high, both non-negative."""
    with pytest.raises(InvalidInput):
        Watermarks(10, 10)


# --- config (TOML -> settings -> runtime) ---------------------------------------------

MINIMAL = """
pki_dir = "pki"
[sites]
A = ["alice"]
B = ["bob"]
[[links]]
a = "A"
b = "B"
low_watermark_bits = 4096
high_watermark_bits = 16384
seed = 5
[links.bb84]
pulses = 20000
"""


def test_example_config_is_valid() -> None:
    """docs/kme.example.toml loads, with pki_dir taken relative to the file."""
    settings = load_config(EXAMPLE)
    assert settings.pki_dir == EXAMPLE.parent / "../pki"
    assert settings.sites["KME_WALLET"] == ["wallet"]
    assert settings.links[2].bb84.loss == 0.2
    assert "kme" in settings.certificate_names()


def test_runtime_from_config_serves_keys(tmp_path: Path) -> None:
    """A runtime built from TOML fills its pools and serves keys through the core."""
    settings = parse_config(MINIMAL, base_dir=tmp_path)
    assert settings.pki_dir == tmp_path / "pki"
    runtime = KmeRuntime.from_settings(settings)
    assert runtime.fill_all() > 0
    keys = runtime.core.enc_keys("alice", "bob", parse_key_request({"number": 2}))
    assert len(keys) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('B = ["alice"]', "attached to"),
        ('B = ["../bob"]', "invalid SAE_ID"),
        ('server_name = "alice"\n[sites]', "server_name"),
        ('a = "C"', "unknown site"),
        ('b = "A"', "itself"),
        ("low_watermark_bits = 99999", "low_watermark_bits"),
        ("pulses = 20000\nbogus = 1", "bogus"),
        ("pulses = 0", "pulses"),
        ('pulses = "many"', "pulses"),
        ("high_watermark_bits = 99999999", "max_pool_bits"),
    ],
)
def test_inconsistent_configs_are_refused(tmp_path: Path, change: str, message: str) -> None:
    """Every inconsistency is a ConfigError naming the problem, before anything starts."""
    original = {
        'B = ["alice"]': 'B = ["bob"]',
        'B = ["../bob"]': 'B = ["bob"]',
        'server_name = "alice"\n[sites]': "[sites]",
        'a = "C"': 'a = "A"',
        'b = "A"': 'b = "B"',
        "low_watermark_bits = 99999": "low_watermark_bits = 4096",
        "pulses = 20000\nbogus = 1": "pulses = 20000",
        "pulses = 0": "pulses = 20000",
        'pulses = "many"': "pulses = 20000",
        "high_watermark_bits = 99999999": "high_watermark_bits = 16384",
    }[change]
    text = MINIMAL.replace(original, change, 1)
    assert text != MINIMAL
    with pytest.raises(ConfigError, match=message):
        parse_config(text, base_dir=tmp_path)


def test_duplicate_links_are_refused(tmp_path: Path) -> None:
    """Two links between the same sites (either direction) are refused."""
    text = MINIMAL + '[[links]]\na = "B"\nb = "A"\n'
    with pytest.raises(ConfigError, match="two links"):
        parse_config(text, base_dir=tmp_path)


def test_bad_limits_are_refused(tmp_path: Path) -> None:
    """Limits are checked as a whole (key_size within min/max)."""
    with pytest.raises(ConfigError, match="key_size"):
        parse_config("key_size = 2048\n" + MINIMAL, base_dir=tmp_path)


def test_unreadable_or_non_toml_config_is_refused(tmp_path: Path) -> None:
    """A missing file or broken TOML is a ConfigError, not an OSError/TOMLDecodeError."""
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[sites\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="TOML"):
        load_config(broken)


def test_settings_are_frozen(tmp_path: Path) -> None:
    """Settings cannot be changed after validation."""
    settings = parse_config(MINIMAL, base_dir=tmp_path)
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]
    assert isinstance(settings, KmeSettings)
