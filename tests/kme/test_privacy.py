"""Privacy amplification: Toeplitz hashing over GF(2) and the secret key length."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.errors import InvalidInput
from patientkey.kme import privacy
from patientkey.kme.privacy import binary_entropy, secret_key_length, toeplitz_hash


def dense_toeplitz(seed_bits: np.ndarray, out_len: int, n: int) -> np.ndarray:
    """Reference matrix T[i, j] = seed[i - j + n - 1], built element by element."""
    matrix = np.zeros((out_len, n), dtype=np.int64)
    for i in range(out_len):
        for j in range(n):
            matrix[i, j] = seed_bits[i - j + n - 1]
    return matrix


def random_bits(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 2, size, dtype=np.uint8)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=70),
    out_len=st.integers(min_value=1, max_value=70),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_matches_dense_reference(n, out_len, seed):
    """The FFT Toeplitz hash equals the dense GF(2) matrix-vector product."""
    rng = np.random.default_rng(seed)
    bits = random_bits(rng, n)
    seed_bits = random_bits(rng, out_len + n - 1)
    expected = (dense_toeplitz(seed_bits, out_len, n) @ bits) % 2
    result = toeplitz_hash(bits, out_len, seed_bits)
    assert result.dtype == np.uint8
    assert result.shape == (out_len,)
    np.testing.assert_array_equal(result, expected)


def test_exact_on_large_input():
    """Rows of a 2^18-bit hash agree with direct dot products (no float round-off)."""
    rng = np.random.default_rng(7)
    n, out_len = 1 << 18, 150_000
    bits = random_bits(rng, n)
    seed_bits = random_bits(rng, out_len + n - 1)
    result = toeplitz_hash(bits, out_len, seed_bits)
    for i in rng.choice(out_len, size=40, replace=False):
        row = seed_bits[i : i + n][::-1]  # T[i, j] = seed[i - j + n - 1]
        assert result[i] == int(row.astype(np.int64) @ bits) % 2


def test_column_chunking_is_exact(monkeypatch):
    """Splitting the key into column blocks gives the same hash as one convolution."""
    rng = np.random.default_rng(3)
    n, out_len = 1000, 300
    bits = random_bits(rng, n)
    seed_bits = random_bits(rng, out_len + n - 1)
    whole = toeplitz_hash(bits, out_len, seed_bits)
    monkeypatch.setattr(privacy, "_CHUNK_BITS", 97)
    np.testing.assert_array_equal(toeplitz_hash(bits, out_len, seed_bits), whole)
    np.testing.assert_array_equal(whole, (dense_toeplitz(seed_bits, out_len, n) @ bits) % 2)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_linear_over_gf2(seed):
    """The hash is GF(2)-linear: T(a xor b) = T(a) xor T(b)."""
    rng = np.random.default_rng(seed)
    n, out_len = 500, 200
    a, b = random_bits(rng, n), random_bits(rng, n)
    seed_bits = random_bits(rng, out_len + n - 1)
    np.testing.assert_array_equal(
        toeplitz_hash(a ^ b, out_len, seed_bits),
        toeplitz_hash(a, out_len, seed_bits) ^ toeplitz_hash(b, out_len, seed_bits),
    )


def test_accepts_bool_and_int_arrays():
    """Boolean and wider integer bit arrays hash like uint8 ones."""
    rng = np.random.default_rng(1)
    bits = random_bits(rng, 64)
    seed_bits = random_bits(rng, 32 + 63)
    expected = toeplitz_hash(bits, 32, seed_bits)
    np.testing.assert_array_equal(toeplitz_hash(bits.astype(bool), 32, seed_bits), expected)
    np.testing.assert_array_equal(toeplitz_hash(bits.astype(np.int64), 32, seed_bits), expected)


def test_zero_output_length_is_empty():
    """Hashing to zero bits returns an empty array."""
    assert toeplitz_hash(np.ones(10, dtype=np.uint8), 0, np.zeros(0, dtype=np.uint8)).size == 0


@pytest.mark.parametrize(
    ("bits", "out_len", "seed_len"),
    [
        (np.ones(10, dtype=np.uint8), 4, 12),  # seed one bit short
        (np.ones(10, dtype=np.uint8), 4, 14),  # seed one bit long
        (np.full(10, 2, dtype=np.uint8), 4, 13),  # not a bit
        (np.full(10, -1, dtype=np.int8), 4, 13),  # not a bit
        (np.ones(10, dtype=np.float64), 4, 13),  # float array
        (np.ones((2, 5), dtype=np.uint8), 4, 13),  # not 1-D
        (np.ones(10, dtype=np.uint8), -1, 8),  # negative length
        (np.zeros(0, dtype=np.uint8), 4, 3),  # nothing to hash
    ],
)
def test_rejects_bad_input(bits, out_len, seed_len):
    """Malformed bits, seeds or lengths raise InvalidInput."""
    with pytest.raises(InvalidInput):
        toeplitz_hash(bits, out_len, np.zeros(seed_len, dtype=np.uint8))


def test_binary_entropy_values():
    """h(0) = h(1) = 0, h(1/2) = 1, h is symmetric and h(0.11) ≈ 0.5."""
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(1.0) == 0.0
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.02) == pytest.approx(binary_entropy(0.98))
    assert binary_entropy(0.11) == pytest.approx(0.5, abs=0.001)


@pytest.mark.parametrize("p", [-0.01, 1.01, math.nan, True])
def test_binary_entropy_rejects_non_probabilities(p):
    """binary_entropy raises InvalidInput outside [0, 1]."""
    with pytest.raises(InvalidInput):
        binary_entropy(p)


def test_secret_key_length_formula():
    """Key length is floor(n(1 - h(Q)) - leak - margin) and clamps at zero."""
    n, q = 100_000, 0.02
    expected = math.floor(n * (1 - binary_entropy(q)) - 16_000 - 64)
    assert secret_key_length(n, q, 16_000, 64) == expected
    assert secret_key_length(1000, 0.1, 1000, 64) == 0
    with pytest.raises(InvalidInput):
        secret_key_length(-1, 0.0, 0, 0)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(min_value=1, max_value=10**7))
def test_fast_len_is_smooth_and_minimal(size):
    """The FFT length is the smallest 2-3-5-smooth integer not below the request."""
    length = privacy._fast_len(size)
    assert length >= size
    assert _smooth_remainder(length) == 1
    assert all(_smooth_remainder(k) != 1 for k in range(size, min(length, size + 2000)))


def _smooth_remainder(k: int) -> int:
    for p in (2, 3, 5):
        while k % p == 0:
            k //= p
    return k
