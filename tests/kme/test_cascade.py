"""Cascade reconciliation: correctness, disclosed-bit accounting and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.errors import InvalidInput
from patientkey.kme.cascade import initial_block_size, reconcile
from patientkey.kme.privacy import binary_entropy


def noisy_pair(seed: int, n: int, qber: float) -> tuple[np.ndarray, np.ndarray]:
    """Alice's random key and Bob's copy with i.i.d. flips at rate ``qber``."""
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    errors = (rng.random(n) < qber).astype(np.uint8)
    return alice, alice ^ errors


def shannon_leak_bound(alice: np.ndarray, bob: np.ndarray) -> float:
    """n·h(actual error rate): the least any reconciliation must disclose."""
    return alice.size * binary_entropy(float(np.mean(alice != bob)))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    qber=st.floats(min_value=0.01, max_value=0.05),
)
def test_corrects_all_errors_at_typical_qber(seed, qber):
    """At 1-5 % QBER Cascade leaves Bob's key identical to Alice's."""
    alice, bob = noisy_pair(seed, 20_000, qber)
    corrected, _ = reconcile(alice, bob, qber, np.random.default_rng(seed + 1))
    np.testing.assert_array_equal(corrected, alice)


def test_failure_rate_is_small():
    """Over 200 keys of 10^4 bits at 3 % QBER at most 2 keep a residual error."""
    failures = 0
    for seed in range(200):
        alice, bob = noisy_pair(seed, 10_000, 0.03)
        corrected, _ = reconcile(alice, bob, 0.03, np.random.default_rng(seed))
        failures += not np.array_equal(corrected, alice)
    assert failures <= 2


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    qber=st.sampled_from([0.01, 0.02, 0.03, 0.05, 0.08]),
)
def test_leak_is_near_the_shannon_bound(seed, qber):
    """Disclosed parities lie between n·h(Q) and 1.3·n·h(Q) plus block overhead."""
    n = 100_000
    alice, bob = noisy_pair(seed, n, qber)
    _, leaked = reconcile(alice, bob, qber, np.random.default_rng(seed))
    bound = shannon_leak_bound(alice, bob)
    assert leaked >= bound
    # 200 bits cover the fixed cost of the last (largest-block) passes.
    assert leaked <= 1.3 * bound + 200


def test_no_errors_costs_only_block_parities():
    """With identical keys only the top-level parities of the four passes are disclosed."""
    n, qber = 50_000, 0.02
    alice, _ = noisy_pair(0, n, 0.0)
    corrected, leaked = reconcile(alice, alice.copy(), qber, np.random.default_rng(0))
    np.testing.assert_array_equal(corrected, alice)
    k1 = initial_block_size(qber, n)
    assert leaked == sum(math.ceil(n / min(k1 * 2**i, n)) for i in range(4))


def test_cascade_backtracks_into_earlier_passes():
    """Errors that pass 2 alone cannot see are fixed by re-opening pass-1 blocks."""
    n, qber, seed = 2_000, 0.02, 11
    k1 = initial_block_size(qber, n)
    k2 = 2 * k1
    # Pass 2's permutation is the first draw reconcile makes from the rng.
    where2 = np.argsort(np.random.default_rng(seed).permutation(n))

    def block2(j: int) -> int:
        return int(where2[j]) // k2

    # e1, e2 share pass-1 block 0 and are split by pass 2; e3 shares e2's
    # pass-2 block, e4 shares e3's pass-1 block. Pass 1 sees only even blocks,
    # pass 2 fixes e1 and e4 but sees {e2, e3} as even. Only back-tracking
    # (pass-1 blocks of e1 and e4 turn odd) finds e2 and e3.
    e1 = 0
    e2 = next(j for j in range(1, k1) if block2(j) != block2(e1))
    e3 = next(j for j in range(k1, n) if block2(j) == block2(e2))
    first = (e3 // k1) * k1
    e4 = next(
        j
        for j in range(first, min(first + k1, n))
        if j != e3 and block2(j) not in {block2(e1), block2(e2)}
    )
    alice, _ = noisy_pair(5, n, 0.0)
    bob = alice.copy()
    bob[[e1, e2, e3, e4]] ^= 1
    corrected, _ = reconcile(alice, bob, qber, np.random.default_rng(seed), passes=2)
    np.testing.assert_array_equal(corrected, alice)


def test_single_pass_misses_even_error_pairs():
    """Without later passes an even error count in a block stays uncorrected."""
    n, qber = 2_000, 0.02
    k1 = initial_block_size(qber, n)
    alice, _ = noisy_pair(5, n, 0.0)
    bob = alice.copy()
    bob[[0, k1 - 1]] ^= 1
    corrected, leaked = reconcile(alice, bob, qber, np.random.default_rng(11), passes=1)
    assert int(np.count_nonzero(corrected != alice)) == 2
    assert leaked == math.ceil(n / k1)


def test_only_bob_changes_and_inputs_are_untouched():
    """reconcile returns a new array and leaves both inputs unmodified."""
    alice, bob = noisy_pair(2, 5_000, 0.04)
    alice_before, bob_before = alice.copy(), bob.copy()
    corrected, _ = reconcile(alice, bob, 0.04, np.random.default_rng(2))
    np.testing.assert_array_equal(alice, alice_before)
    np.testing.assert_array_equal(bob, bob_before)
    assert corrected is not bob
    assert corrected.dtype == np.uint8


def test_same_rng_seed_is_deterministic():
    """The same public randomness reproduces the same corrections and leak."""
    alice, bob = noisy_pair(4, 20_000, 0.03)
    first = reconcile(alice, bob, 0.03, np.random.default_rng(9))
    second = reconcile(alice, bob, 0.03, np.random.default_rng(9))
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]


def test_zero_qber_estimate_still_corrects_sparse_errors():
    """A sampled QBER of 0 still yields blocks small enough to catch a few errors."""
    alice, bob = noisy_pair(8, 100_000, 0.0005)
    assert np.any(alice != bob)
    corrected, _ = reconcile(alice, bob, 0.0, np.random.default_rng(8))
    np.testing.assert_array_equal(corrected, alice)


def test_empty_and_tiny_keys():
    """Empty keys leak nothing; a one-bit key is corrected with one parity bit."""
    empty = np.zeros(0, dtype=np.uint8)
    corrected, leaked = reconcile(empty, empty, 0.02, np.random.default_rng(0))
    assert corrected.size == 0
    assert leaked == 0
    one, other = np.array([1], dtype=np.uint8), np.array([0], dtype=np.uint8)
    corrected, leaked = reconcile(one, other, 0.02, np.random.default_rng(0))
    np.testing.assert_array_equal(corrected, one)
    assert leaked == 4  # one single-bit block per pass


@pytest.mark.parametrize(
    ("alice", "bob", "qber", "passes"),
    [
        (np.zeros(4, np.uint8), np.zeros(5, np.uint8), 0.02, 4),
        (np.zeros(4, np.uint8), np.full(4, 2, np.uint8), 0.02, 4),
        (np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), 0.02, 4),
        (np.zeros(4, np.float64), np.zeros(4, np.float64), 0.02, 4),
        (np.zeros(4, np.uint8), np.zeros(4, np.uint8), 0.6, 4),
        (np.zeros(4, np.uint8), np.zeros(4, np.uint8), -0.1, 4),
        (np.zeros(4, np.uint8), np.zeros(4, np.uint8), 0.02, 0),
    ],
)
def test_rejects_bad_input(alice, bob, qber, passes):
    """Mismatched or non-bit keys and out-of-range parameters raise InvalidInput."""
    with pytest.raises(InvalidInput):
        reconcile(alice, bob, qber, np.random.default_rng(0), passes=passes)
