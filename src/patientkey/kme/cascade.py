"""Cascade information reconciliation (Brassard & Salvail, EUROCRYPT '93).

Bob corrects his sifted key towards Alice's by exchanging block parities over
the public (authenticated) channel. Every parity Alice discloses is a bit of
information about the key that Eve may record, so the count is returned for
privacy amplification to subtract.

Protocol as simulated:

* pass 1 splits the key into blocks of k1 ≈ 0.73/Q bits in natural order
  (Brassard-Salvail's heuristic: ~0.73 expected errors per block balances the
  parities disclosed against errors hidden in pairs); passes i ≥ 2 use a fresh
  public random permutation and block size k_i = 2·k_{i-1};
* for every block whose parities differ, BINARY (halving by exchanging the
  parity of the left half) locates and flips one error;
* the cascade: flipping bit j changes the parity of the block containing j in
  every *other* pass, turning even blocks there odd, so those are searched too,
  which may expose further blocks, until every block of every pass so far
  agrees.

Vectorisation. Block parities of a whole pass come from one
``bitwise_xor.reduceat``. All odd blocks of one pass are disjoint, so their
binary searches run in lock-step over arrays (one public message per halving
step, as a batched implementation would send them); flipping their results
only changes parities of blocks in the other passes, which are then handled
the same way. Processing order differs from the sequential description but
every execution is a valid Cascade run: each search starts in a block with
odd error parity and ends on a real error, and it stops only when all blocks
of all passes have equal parity.

The simulation evaluates "do Alice's and Bob's parities of this range differ"
as the parity of the error pattern ``alice ^ bob`` over the range, which is
the same predicate; the leak is counted exactly as the real exchange would
disclose it (one bit per block parity and per halving step).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from patientkey.errors import InvalidInput

__all__ = ["DEFAULT_PASSES", "initial_block_size", "reconcile"]

DEFAULT_PASSES = 4

# Brassard-Salvail's k1 = 0.73/p: few enough parities, few blocks with an even error count.
_K1_FACTOR = 0.73
# A sampled QBER of 0 does not mean the key is error free; sizing blocks for
# at least this rate keeps pass 1 able to catch sparse errors (a single block
# spanning the whole key hides every even error count) for ~0.3 % overhead.
_QBER_FLOOR = 1e-3

Bits = npt.NDArray[np.uint8]
Index = npt.NDArray[np.intp]


def initial_block_size(qber: float, n: int) -> int:
    """Pass-1 block size k1 = ceil(0.73 / Q), with Q floored and k1 clipped to [1, n]."""
    k1 = math.ceil(_K1_FACTOR / max(qber, _QBER_FLOOR))
    return max(1, min(k1, n))


def _check_bits(name: str, array: npt.NDArray[np.generic]) -> Bits:
    if array.ndim != 1 or array.dtype.kind not in "biu":
        raise InvalidInput(f"{name} must be a 1-D integer or boolean bit array")
    if array.size and (int(array.min()) < 0 or int(array.max()) > 1):
        raise InvalidInput(f"{name} must contain only 0 and 1")
    return array.astype(np.uint8)


class _Pass:
    """One Cascade pass: its public permutation, block size and odd-block flags."""

    __slots__ = ("block", "n_blocks", "odd", "order", "where")

    def __init__(self, order: Index, block: int, errors: Bits) -> None:
        n = order.size
        self.order = order  # order[p] = key index at position p of this pass
        self.where = np.empty(n, dtype=np.intp)  # inverse: position of key index j
        self.where[order] = np.arange(n, dtype=np.intp)
        self.block = block
        self.n_blocks = -(-n // block)
        starts = np.arange(0, n, block, dtype=np.intp)
        parities = np.bitwise_xor.reduceat(errors[order], starts)
        self.odd: npt.NDArray[np.bool_] = parities.astype(np.bool_)

    def toggle(self, flipped: Index) -> None:
        """Account for Bob flipping key indices ``flipped`` (known to both sides)."""
        hits = np.bincount(self.where[flipped] // self.block, minlength=self.n_blocks)
        self.odd ^= (hits & 1).astype(np.bool_)

    def search_odd_blocks(self, errors: Bits) -> tuple[Index, int]:
        """BINARY on every odd block at once; returns the error indices found and bits leaked."""
        blocks = np.flatnonzero(self.odd)
        n = self.order.size
        k = self.block
        starts = blocks * k
        sizes = np.minimum(k, n - starts)
        offsets = np.arange(k, dtype=np.intp)
        positions = np.minimum(starts[:, None] + offsets, n - 1)
        inside = offsets < sizes[:, None]
        window = errors[self.order[positions]] & inside
        # prefix[b, t] = error parity of the first t bits of block b, so any
        # half's parity is one XOR of two entries.
        prefix = np.zeros((blocks.size, k + 1), dtype=np.uint8)
        np.bitwise_xor.accumulate(window, axis=1, out=prefix[:, 1:])
        rows = np.arange(blocks.size)
        lo = np.zeros(blocks.size, dtype=np.intp)
        hi = sizes.copy()
        leaked = 0
        while True:
            active = hi - lo > 1
            steps = int(np.count_nonzero(active))
            if steps == 0:
                break
            # One parity bit of Alice's left half per still-open search.
            leaked += steps
            mid = (lo + hi) // 2
            left_odd = (prefix[rows, mid] ^ prefix[rows, lo]).astype(np.bool_)
            hi = np.where(active & left_odd, mid, hi)
            lo = np.where(active & ~left_odd, mid, lo)
        return self.order[starts + lo], leaked


def reconcile(
    alice: npt.NDArray[np.generic],
    bob: npt.NDArray[np.generic],
    qber: float,
    rng: np.random.Generator,
    passes: int = DEFAULT_PASSES,
) -> tuple[Bits, int]:
    """Run Cascade; return Bob's corrected bits and the number of parity bits disclosed.

    ``qber`` is the estimated error rate (sizes the blocks); ``rng`` draws the
    public per-pass permutations. Residual errors are possible with small
    probability, so callers must verify equality afterwards.
    """
    a = _check_bits("alice", np.asarray(alice))
    b = _check_bits("bob", np.asarray(bob))
    if a.size != b.size:
        raise InvalidInput("alice and bob keys differ in length")
    if isinstance(qber, bool) or not isinstance(qber, int | float) or not 0.0 <= qber <= 0.5:
        raise InvalidInput("qber must be in [0, 0.5]")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise InvalidInput("passes must be a positive integer")
    n = a.size
    if n == 0:
        return b, 0

    errors = a ^ b
    flips = np.zeros(n, dtype=np.uint8)
    leaked = 0
    done: list[_Pass] = []
    block = initial_block_size(qber, n)
    for number in range(passes):
        order = np.arange(n, dtype=np.intp) if number == 0 else rng.permutation(n).astype(np.intp)
        current = _Pass(order, block, errors)
        leaked += current.n_blocks  # Alice announces every block parity of the pass
        done.append(current)
        # Smallest blocks first: their searches are the cheapest, and each
        # correction there may settle odd blocks of later passes for free.
        while (pending := next((p for p in done if p.odd.any()), None)) is not None:
            found, cost = pending.search_odd_blocks(errors)
            leaked += cost
            errors[found] ^= 1
            flips[found] ^= 1
            for other in done:
                other.toggle(found)
        block = min(2 * block, n)
    return b ^ flips, leaked
