"""Privacy amplification for the simulated BB84 link.

After error correction Alice and Bob share an ``n``-bit string about which Eve
holds partial information (from the intercept-resend attack, bounded by the
phase-error rate, and from every parity bit disclosed during reconciliation).
Hashing it with a randomly chosen member of a 2-universal family compresses it
to a shorter key about which Eve knows essentially nothing (leftover hash lemma,
Bennett, Brassard, Crépeau & Maurer, IEEE Trans. Inf. Theory 41(6), 1995).

The family used is random Toeplitz matrices over GF(2) (Krawczyk, CRYPTO '94):
an ``m x n`` Toeplitz matrix is fixed by ``m + n - 1`` public seed bits, and its
product with the key is a linear convolution, so it is computed with the FFT in
O((n + m) log(n + m)) instead of building the dense matrix (``m·n`` bits would
be ~10^11 for a 10^6-pulse round).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from patientkey.errors import InvalidInput

__all__ = ["binary_entropy", "secret_key_length", "toeplitz_hash"]

# Columns hashed per FFT. Each output of one chunk's convolution is an integer
# of at most this size; float64 FFT round-off for transforms of a few 10^7
# points stays orders of magnitude below 0.5 at this magnitude, so ``rint`` is
# exact. Larger keys are split into column blocks whose GF(2) products are
# XORed, which keeps the result exact for any n.
_CHUNK_BITS = 1 << 22


def binary_entropy(p: float) -> float:
    """Shannon binary entropy h(p) = -p log2 p - (1-p) log2 (1-p), with h(0) = h(1) = 0."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise InvalidInput("binary_entropy needs a probability in [0, 1]")
    if p in (0.0, 1.0):
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def secret_key_length(n: int, qber: float, leaked_bits: int, margin_bits: int) -> int:
    """Length of the amplified key: floor(n·(1 - h(Q)) - leaked - margin), never negative.

    This is the Shor-Preskill / GLLP rate for BB84 with single photons
    (Gottesman, Lo, Lütkenhaus & Preskill, QIC 4(5), 2004): Eve's information
    from the quantum channel is bounded by h of the phase-error rate, which for
    BB84 equals the bit-error rate measured in the conjugate basis, and the
    reconciliation leak is counted as actually disclosed instead of the
    asymptotic n·h(Q). ``margin_bits`` stands in for the finite-size
    correction term (statistical deviation of the sampled QBER).
    """
    if n < 0 or leaked_bits < 0 or margin_bits < 0:
        raise InvalidInput("key length, leak and margin must be non-negative")
    m = math.floor(n * (1.0 - binary_entropy(qber)) - leaked_bits - margin_bits)
    return max(m, 0)


def _fast_len(size: int) -> int:
    """Smallest 5-smooth integer >= size (pocketfft is fastest on those lengths)."""
    best = 1 << max(size - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            # Smallest power of two lifting p35 to at least ``size``.
            quotient = -(-size // p35)
            candidate = p35 * (1 << (quotient - 1).bit_length())
            best = min(best, candidate)
            p35 *= 3
        p5 *= 5
    return best


def _as_bits(name: str, array: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    if array.ndim != 1 or array.dtype.kind not in "biu":
        raise InvalidInput(f"{name} must be a 1-D integer or boolean bit array")
    if array.size and (int(array.min()) < 0 or int(array.max()) > 1):
        raise InvalidInput(f"{name} must contain only 0 and 1")
    return array.astype(np.uint8, copy=False)


def _convolve_window(
    seed: npt.NDArray[np.uint8], bits: npt.NDArray[np.uint8], out_len: int
) -> npt.NDArray[np.uint8]:
    """GF(2) product of the Toeplitz matrix T[i, j] = seed[i - j + n - 1] with ``bits``.

    (T·x)[i] = sum_j seed[i - j + n - 1]·x[j] = (seed * x)[i + n - 1], the
    middle ``out_len`` samples of the full linear convolution. A circular
    convolution of length >= len(seed) = m + n - 1 only wraps samples with
    index < n - 1 onto the window's start, none of which are read, so the FFT
    length need not cover the whole m + 2n - 2 linear convolution.
    """
    n = bits.size
    size = _fast_len(seed.size)
    spectrum = np.fft.rfft(seed, size) * np.fft.rfft(bits, size)
    window = np.fft.irfft(spectrum, size)[n - 1 : n - 1 + out_len]
    return (np.rint(window).astype(np.int64) & 1).astype(np.uint8)


def toeplitz_hash(
    bits: npt.NDArray[np.generic], out_len: int, seed_bits: npt.NDArray[np.generic]
) -> npt.NDArray[np.uint8]:
    """Multiply ``bits`` (length n) by the ``out_len x n`` Toeplitz matrix of ``seed_bits``.

    The matrix is T[i, j] = seed_bits[i - j + n - 1] (constant along diagonals),
    so ``seed_bits`` must hold exactly ``out_len + n - 1`` bits; the same public
    seed gives Alice and Bob the same hash function. Returns ``out_len`` bits
    (uint8 0/1). The dense matrix is never built.
    """
    if isinstance(out_len, bool) or not isinstance(out_len, int) or out_len < 0:
        raise InvalidInput("out_len must be a non-negative integer")
    x = _as_bits("bits", np.asarray(bits))
    seed = _as_bits("seed_bits", np.asarray(seed_bits))
    n = x.size
    if out_len == 0:
        return np.zeros(0, dtype=np.uint8)
    if n == 0:
        raise InvalidInput("cannot hash an empty bit string to a non-empty output")
    if seed.size != out_len + n - 1:
        raise InvalidInput("seed_bits must hold out_len + len(bits) - 1 bits")
    result = np.zeros(out_len, dtype=np.uint8)
    for start in range(0, n, _CHUNK_BITS):
        stop = min(start + _CHUNK_BITS, n)
        # Columns [start, stop) form their own Toeplitz matrix whose diagonals
        # are seed[n - stop : n - stop + out_len + (stop - start) - 1].
        sub_seed = seed[n - stop : n - stop + out_len + (stop - start) - 1]
        result ^= _convolve_window(sub_seed, x[start:stop], out_len)
    return result
