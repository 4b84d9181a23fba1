"""Merkle Tree Hash, inclusion and consistency proofs: RFC 9162 §2.1, exactly.

Hashing (§2.1.1), with SHA-256 (the only hash algorithm here)::

    MTH({})       = SHA-256()                              the empty tree
    MTH({d(0)})   = SHA-256(0x00 || d(0))                  a leaf
    MTH(D[n])     = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))
                    where k is the largest power of two smaller than n

Proofs list the hashes of subtrees, deepest first:

* inclusion (§2.1.3): ``PATH(m, D[n])`` proves that leaf ``m`` is in the tree of
  size ``n``; verified with the iterative algorithm of §2.1.3.2;
* consistency (§2.1.4): ``PROOF(m, D[n])`` proves that the tree of size ``m`` is
  a prefix of the tree of size ``n``; verified with §2.1.4.2.

Generation is written once, as index arithmetic: :func:`inclusion_ranges` and
:func:`consistency_ranges` follow the RFC's recursions but name each proof
element by the leaf range ``[start, end)`` whose MTH it is, and
:func:`perfect_subtrees` splits such a range into complete subtrees. The list
functions below (:func:`inclusion_proof`, :func:`consistency_proof`) hash the
ranges from all leaf hashes, O(n): a reference. :class:`~patientkey.audit.log.MerkleLog`
reads the same ranges from stored subtree roots, O(log n).

Verification raises the one opaque :class:`~patientkey.audit.ProofInvalid`
(the reason goes to the local log only) and returns nothing to ignore. Sizes
and indices that are not integers in ``[0, 2**64)`` are malformed input:
:class:`~patientkey.errors.InvalidInput`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from typing import Final

from patientkey.audit._errors import proof_failure
from patientkey.errors import InvalidInput

__all__ = [
    "EMPTY_ROOT",
    "HASH_LEN",
    "MAX_TREE_SIZE",
    "consistency_proof",
    "consistency_ranges",
    "fold_subtrees",
    "inclusion_proof",
    "inclusion_ranges",
    "leaf_hash",
    "merkle_tree_hash",
    "node_hash",
    "perfect_subtrees",
    "verify_consistency",
    "verify_inclusion",
]

_log = logging.getLogger(__name__)

HASH_LEN: Final = 32
#: RFC 9162 carries sizes and indices as uint64.
MAX_TREE_SIZE: Final = (1 << 64) - 1
_LEAF: Final = b"\x00"
_NODE: Final = b"\x01"
#: MTH({}) = SHA-256() (§2.1.1).
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d): the hash of one log entry."""
    return _sha256(_LEAF + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): an interior node."""
    return _sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n ≥ 2): the RFC's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_tree_hash(entries: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of the entries (not their hashes), by the recursive definition of §2.1.1."""
    n = len(entries)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hash(entries[0])
    k = _split(n)
    return node_hash(merkle_tree_hash(entries[:k]), merkle_tree_hash(entries[k:]))


def _check_u64(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TREE_SIZE:
        raise InvalidInput(f"{what} must be an integer in [0, 2**64)")
    return value


# ── generation: which subtrees a proof lists ────────────────────────────────────


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges ``[start, end)`` whose MTHs form PATH(index, D[size]) (§2.1.3.1).

    ``PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])`` if ``m < k``, else
    ``PATH(m - k, D[k:n]) : MTH(D[0:k])``; ``PATH(0, {d(0)}) = {}``.
    """
    _check_u64(index, "leaf index")
    _check_u64(size, "tree size")
    if index >= size:
        raise InvalidInput("leaf index must be smaller than the tree size")
    ranges: list[tuple[int, int]] = []
    start, end, m = 0, size, index
    while end - start > 1:  # walk down; the RFC lists the deepest sibling first
        k = _split(end - start)
        if m < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs form PROOF(old_size, D[new_size]) (§2.1.4.1).

    ``PROOF(m, D[n]) = SUBPROOF(m, D[n], true)``; ``SUBPROOF(m, D[m], true) = {}``,
    ``SUBPROOF(m, D[m], false) = {MTH(D[m])}``; for ``m < n``:
    ``SUBPROOF(m, D[0:k], b) : MTH(D[k:n])`` if ``m <= k``, else
    ``SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])``. The proof from the empty
    tree, and between equal sizes, is empty.
    """
    _check_u64(old_size, "old tree size")
    _check_u64(new_size, "new tree size")
    if old_size > new_size:
        raise InvalidInput("the old tree size must not exceed the new one")
    if old_size in (0, new_size):
        return []
    ranges: list[tuple[int, int]] = []
    start, end, m, whole = 0, new_size, old_size, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
            whole = False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Complete subtrees ``(level, index)`` covering leaves ``[start, end)``, left to right.

    Subtree ``(level, index)`` holds leaves ``[index * 2**level, (index + 1) * 2**level)``.
    For the ranges of the RFC's recursions (``start`` a multiple of the power of
    two at or above ``end - start``), MTH of the range is :func:`fold_subtrees`
    of these subtrees' roots.
    """
    keys: list[tuple[int, int]] = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start:
            level = min(level, (start & -start).bit_length() - 1)
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def fold_subtrees(roots: Sequence[bytes]) -> bytes:
    """MTH of a range from its complete subtrees' roots, left to right (a right fold).

    With ``k`` the largest power of two below the range's size, the first root
    is ``MTH(D[0:k])`` and the rest fold into ``MTH(D[k:n])``: §2.1.1 unrolled.
    """
    if not roots:
        return EMPTY_ROOT
    acc = roots[-1]
    for left in reversed(roots[:-1]):
        acc = node_hash(left, acc)
    return acc


def _range_hash(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH(D[start:end]) from leaf hashes, by §2.1.1's recursion (the O(n) reference)."""
    if end - start == 1:
        return leaf_hashes[start]
    k = _split(end - start)
    return node_hash(
        _range_hash(leaf_hashes, start, start + k), _range_hash(leaf_hashes, start + k, end)
    )


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]) computed from all ``n`` leaf hashes (O(n); a reference)."""
    return [_range_hash(leaf_hashes, s, e) for s, e in inclusion_ranges(index, len(leaf_hashes))]


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[n]) computed from all ``n`` leaf hashes (O(n); a reference)."""
    ranges = consistency_ranges(old_size, len(leaf_hashes))
    return [_range_hash(leaf_hashes, s, e) for s, e in ranges]


# ── verification ────────────────────────────────────────────────────────────────


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_LEN


def _check_hashes(what: str, given: Sequence[object], proof: Sequence[object]) -> None:
    """Every hash given and every proof element is 32 bytes (else the proof fails)."""
    if not all(_is_hash(h) for h in given):
        raise proof_failure(_log, f"{what}: a given hash is not 32 bytes")
    if (
        isinstance(proof, bytes | str)
        or not isinstance(proof, Sequence)
        or not all(_is_hash(p) for p in proof)
    ):
        raise proof_failure(_log, f"{what}: a proof element is not 32 bytes")


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _sides(fn: int, sn: int, count: int, what: str) -> tuple[list[bool], int]:
    """The index walk of §2.1.3.2 step 4 and §2.1.4.2 step 6, apart from the hashing.

    For each of ``count`` proof hashes, whether it is the left sibling ("if LSB(fn)
    is set, or if fn is equal to sn"), and ``sn`` after the walk (0 when the path
    was exactly that long). A proof longer than the path fails ("if sn is 0, stop
    the iteration and fail the proof verification").
    """
    sides: list[bool] = []
    for _ in range(count):
        if sn == 0:
            raise proof_failure(_log, f"{what}: proof longer than the path")
        left = bool(fn & 1) or fn == sn
        if left:
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        sides.append(left)
        fn >>= 1
        sn >>= 1
    return sides, sn


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root`` (§2.1.3.2).

    Raises :class:`~patientkey.audit.ProofInvalid` unless the proof holds.
    ``size`` and ``root`` must come together from one signed tree head: the
    proof binds the leaf to the pair, not the size to the root (a proof for
    one size can also fit another size against the same root).
    """
    _check_u64(index, "leaf index")
    _check_u64(size, "tree size")
    _check_hashes("inclusion", (leaf_hash, root), proof)
    if index >= size:  # step 1
        raise proof_failure(_log, "inclusion: leaf index beyond the tree")
    sides, sn = _sides(index, size - 1, len(proof), "inclusion")  # steps 2 and 4
    if sn != 0:  # step 5
        raise proof_failure(_log, "inclusion: proof shorter than the path")
    r = leaf_hash  # step 3
    for p, left in zip(proof, sides, strict=True):  # step 4
        r = node_hash(p, r) if left else node_hash(r, p)
    if not _same(r, root):
        raise proof_failure(_log, "inclusion: computed root differs")


def _verify_trivial(
    old_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Consistency from the empty tree or between equal sizes: no proof, known roots."""
    if proof:
        raise proof_failure(_log, "consistency: a trivial proof must be empty")
    if old_size == 0 and not _same(old_root, EMPTY_ROOT):
        raise proof_failure(_log, "consistency: the empty tree has another root")
    if old_size != 0 and not _same(old_root, new_root):
        raise proof_failure(_log, "consistency: equal sizes, different roots")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``(old_size, old_root)`` is a prefix of ``(new_size, new_root)``.

    §2.1.4.2 for ``0 < old_size < new_size``; otherwise the proof must be empty
    and: from the empty tree, ``old_root`` is ``SHA-256()``; between equal sizes,
    the roots are equal. Raises :class:`~patientkey.audit.ProofInvalid` unless it holds.
    """
    _check_u64(old_size, "old tree size")
    _check_u64(new_size, "new tree size")
    _check_hashes("consistency", (old_root, new_root), proof)
    if old_size > new_size:
        raise proof_failure(_log, "consistency: the old tree is larger than the new")
    if old_size in (0, new_size):
        _verify_trivial(old_size, old_root, new_root, proof)
        return
    if not proof:  # step 1
        raise proof_failure(_log, "consistency: empty proof")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: first is an exact power of 2
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    sides, sn = _sides(fn, sn, len(path) - 1, "consistency")  # step 6
    fr = sr = path[0]  # step 5
    for c, left in zip(path[1:], sides, strict=True):  # step 6
        if left:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
        else:
            sr = node_hash(sr, c)
    # step 7; both comparisons always run, so the failure says nothing about which
    old_ok = _same(fr, old_root)
    new_ok = _same(sr, new_root)
    if not (old_ok and new_ok and sn == 0):
        raise proof_failure(_log, "consistency: computed roots differ")
