"""BB84 link simulation: parameters, protocol statistics and post-processing outcome."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.errors import InvalidInput
from patientkey.kme.bb84 import (
    LinkParams,
    LinkResult,
    binary_entropy,
    pulses_per_second,
    simulate,
)

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
# Statistical properties: a fixed example set keeps CI reproducible.
STATISTICAL = settings(max_examples=10, deadline=None, derandomize=True)


@STATISTICAL
@given(seed=SEEDS)
def test_full_intercept_resend_gives_quarter_qber_and_aborts(seed):
    """With Eve on every pulse and a clean channel the QBER is 0.25 ± 0.02 and the link aborts."""
    result = simulate(LinkParams(pulses=200_000, eve=1.0, noise=0.0), seed)
    assert result.qber == pytest.approx(0.25, abs=0.02)
    assert result.aborted
    assert result.secret_bits == 0
    assert result.alice_key == result.bob_key == b""


@STATISTICAL
@given(seed=SEEDS)
def test_honest_noisy_link_yields_equal_keys(seed):
    """Without Eve at 2 % noise the QBER is ≈ 0.02 and both ends get the same non-empty key."""
    result = simulate(LinkParams(pulses=200_000, eve=0.0, noise=0.02), seed)
    assert result.qber == pytest.approx(0.02, abs=0.006)
    assert not result.aborted
    assert result.secret_bits > 0
    assert len(result.alice_key) == result.secret_bits // 8
    assert result.alice_key == result.bob_key


@STATISTICAL
@given(seed=SEEDS, fraction=st.floats(min_value=0.0, max_value=0.4))
def test_eavesdropping_fraction_raises_qber_by_a_quarter(seed, fraction):
    """Eve on a fraction f of the pulses adds ≈ f/4 to the QBER."""
    result = simulate(LinkParams(pulses=400_000, eve=fraction, noise=0.0), seed)
    assert result.qber == pytest.approx(fraction / 4, abs=0.01)


@STATISTICAL
@given(seed=SEEDS, loss=st.floats(min_value=0.0, max_value=0.9))
def test_sifted_length_follows_loss(seed, loss):
    """sifted_bits ≈ pulses·(1 - loss)/2 minus the QBER sample."""
    params = LinkParams(pulses=100_000, loss=loss, sample_fraction=0.1)
    result = simulate(params, seed)
    expected = params.pulses * (1 - loss) / 2 * (1 - params.sample_fraction)
    # Binomial spread of the sifted count is < sqrt(pulses)/2 ≈ 160; 800 is 5 sigma.
    assert abs(result.sifted_bits - expected) <= 800


@STATISTICAL
@given(noise=st.floats(min_value=0.0, max_value=0.08))
def test_same_seed_is_reproducible(noise):
    """The same parameters and seed reproduce the result bit for bit, keys included."""
    params = LinkParams(pulses=50_000, noise=noise, eve=0.1)
    first, second = simulate(params, 42), simulate(params, 42)
    assert first == second
    assert first.alice_key == second.alice_key


def test_million_pulse_round_at_two_percent_noise():
    """A 10^6-pulse round at 2 % noise keeps ~450k sifted bits and distils > 250k secret bits."""
    result = simulate(LinkParams(pulses=1_000_000, noise=0.02), 2024)
    assert not result.aborted
    assert result.sifted_bits == pytest.approx(450_000, rel=0.01)
    assert result.secret_bits > 250_000
    assert result.alice_key == result.bob_key


def test_numpy_integer_seed_equals_python_int_seed():
    """A numpy integer seed reproduces the same round as the equal Python int."""
    params = LinkParams(pulses=20_000)
    assert simulate(params, np.int64(3)) == simulate(params, 3)


def test_different_seeds_give_different_keys():
    """Two rounds with different seeds produce unrelated keys."""
    params = LinkParams(pulses=50_000)
    assert simulate(params, 1).alice_key != simulate(params, 2).alice_key


def test_secret_length_is_the_gllp_formula():
    """secret_bits = floor(n(1 - h(Q)) - leaked - margin) with the estimated QBER."""
    params = LinkParams(pulses=200_000, noise=0.03, margin_bits=100)
    result = simulate(params, 5)
    n, q = result.sifted_bits, result.qber
    assert result.secret_bits == math.floor(
        n * (1 - binary_entropy(q)) - result.leaked_bits - params.margin_bits
    )
    # Cascade discloses at least the Shannon minimum, plus the 64-bit check.
    assert result.leaked_bits >= n * binary_entropy(q) * 0.9 + 64


def test_qber_above_threshold_aborts_on_noise_alone():
    """A channel noisier than the abort threshold stops the link even without Eve."""
    result = simulate(LinkParams(pulses=100_000, noise=0.15), 3)
    assert result.qber > 0.11
    assert result.aborted
    assert result.leaked_bits == 0
    assert result.alice_key == result.bob_key == b""


def test_raised_threshold_lets_partial_eavesdropping_through():
    """A 6 % QBER passes a 0.11 threshold but aborts under a stricter 0.05 threshold."""
    params = LinkParams(pulses=100_000, eve=0.24, noise=0.0)
    assert not simulate(params, 9).aborted
    assert simulate(dataclasses.replace(params, qber_abort=0.05), 9).aborted


def test_short_round_produces_no_key_without_aborting():
    """When the margin exceeds what is left the round succeeds but yields no key."""
    result = simulate(LinkParams(pulses=2_000, margin_bits=5_000), 1)
    assert not result.aborted
    assert result.secret_bits == 0
    assert result.alice_key == result.bob_key == b""


def test_total_loss_aborts():
    """With every pulse lost there is nothing to estimate the QBER on, so the round aborts."""
    result = simulate(LinkParams(pulses=1_000, loss=1.0), 0)
    assert result.aborted
    assert result.sifted_bits == 0
    assert result.secret_bits == 0


def test_summary_has_exactly_the_statistics():
    """summary() holds exactly qber, sifted_bits, leaked_bits, secret_bits and aborted."""
    result = simulate(LinkParams(pulses=20_000), 0)
    summary = result.summary()
    assert set(summary) == {"qber", "sifted_bits", "leaked_bits", "secret_bits", "aborted"}
    assert summary["secret_bits"] == result.secret_bits
    assert summary["aborted"] is False


def test_repr_hides_key_material():
    """repr(LinkResult) never shows the keys."""
    result = LinkResult(0.01, 10, 2, 8, False, b"\xaa", b"\xaa")
    assert "alice_key" not in repr(result)
    assert "bob_key" not in repr(result)
    assert "xaa" not in repr(result)


@pytest.mark.parametrize(
    "changes",
    [
        {"pulses": 0},
        {"pulses": 10**9},
        {"pulses": 1.5},
        {"pulses": True},
        {"eve": -0.1},
        {"eve": 1.1},
        {"noise": math.nan},
        {"loss": 2.0},
        {"loss": "0.1"},
        {"sample_fraction": 0.0},
        {"sample_fraction": 1.0},
        {"qber_abort": 0.6},
        {"margin_bits": -1},
        {"margin_bits": 1.0},
    ],
)
def test_params_reject_out_of_range_values(changes):
    """LinkParams raises InvalidInput for out-of-range or mistyped fields."""
    with pytest.raises(InvalidInput):
        LinkParams(**changes)


@pytest.mark.parametrize("seed", [-1, 1.5, "7"])
def test_simulate_rejects_bad_seed(seed):
    """simulate raises InvalidInput for a seed that is not a non-negative integer."""
    with pytest.raises(InvalidInput):
        simulate(LinkParams(pulses=100), seed)


def test_pulses_per_second_is_positive():
    """The benchmark helper reports a positive throughput."""
    assert pulses_per_second(pulses=20_000, seed=1) > 0
