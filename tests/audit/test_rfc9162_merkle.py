"""RFC 9162 §2.1: tree hashes, inclusion and consistency proofs, by known answers and the RFC.

The known answers are the certificate-transparency reference test tree
(transparency-dev/merkle ``testonly/constants.go`` and ``proof/verify_test.go``,
the vectors of the CT reference implementation since RFC 6962): eight leaves,
the root of every size, every complete subtree, and published proofs.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkey.audit import (
    EMPTY_ROOT,
    ProofInvalid,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_tree_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from patientkey.audit.merkle import consistency_ranges, inclusion_ranges, perfect_subtrees
from patientkey.errors import CryptoError, InvalidInput

from . import _spec
from ._vectors import CONSISTENCY, INCLUSION, LEAVES, NODES, ROOTS

LEAF_HASHES = [leaf_hash(d) for d in LEAVES]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def flip(proof: list[bytes], at: int, bit: int = 3) -> list[bytes]:
    """A copy of ``proof`` with one bit of element ``at`` flipped."""
    out = list(proof)
    out[at] = bytes([out[at][0] ^ (1 << bit), *out[at][1:]])
    return out


def refused(check) -> bool:
    """True if ``check()`` raises ProofInvalid (and nothing else)."""
    try:
        check()
    except ProofInvalid:
        return True
    return False


# ── known answers ───────────────────────────────────────────────────────────────


def test_empty_tree_hash_is_sha256_of_nothing():
    """MTH({}) is SHA-256 of the empty string."""
    assert merkle_tree_hash([]) == EMPTY_ROOT == ROOTS[0]


@pytest.mark.parametrize("size", range(9))
def test_roots_match_the_reference_tree(size):
    """MTH of the first n reference leaves is the published root for every n ≤ 8."""
    assert merkle_tree_hash(LEAVES[:size]) == ROOTS[size]


def test_leaf_and_node_hashes_use_the_rfc_prefixes():
    """Leaves hash with 0x00, interior nodes with 0x01 (reference subtree roots)."""
    assert NODES[0] == LEAF_HASHES
    for level in range(1, 4):
        for index, expected in enumerate(NODES[level]):
            below = NODES[level - 1]
            assert node_hash(below[2 * index], below[2 * index + 1]) == expected


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION)
def test_inclusion_proofs_match_the_published_vectors(index, size, expected):
    """PATH(m, D[n]) equals the published proof, and it verifies."""
    got = inclusion_proof(index, LEAF_HASHES[:size])
    assert got == expected
    verify_inclusion(LEAF_HASHES[index], index, size, got, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "expected"), CONSISTENCY)
def test_consistency_proofs_match_the_published_vectors(old, new, expected):
    """PROOF(m, D[n]) equals the published proof, and it verifies."""
    got = consistency_proof(old, LEAF_HASHES[:new])
    assert got == expected
    verify_consistency(old, new, ROOTS[old], ROOTS[new], got)


@pytest.mark.parametrize(("index", "size", "proof"), [v for v in INCLUSION if v[2]])
def test_published_inclusion_proofs_refuse_every_corruption(index, size, proof):
    """The reference corruptions of an inclusion proof are all refused (verify_test.go)."""
    leaf, root = LEAF_HASHES[index], ROOTS[size]
    probes = [
        (index - 1, size, root, leaf, proof),
        (index + 1, size, root, leaf, proof),
        (index ^ 2, size, root, leaf, proof),
        (index, size * 2, root, leaf, proof),
        (index, size // 2, root, leaf, proof),
        (index, size, root, leaf_hash(b"WrongLeaf"), proof),
        (index, size, EMPTY_ROOT, leaf, proof),
        (index, size, SOME_HASH, leaf, proof),
        (index, size, root, leaf, [*proof, root]),
        (index, size, root, leaf, [root, *proof]),
        (index, size, root, leaf, proof[:-1]),
        (index, size, root, leaf, [proof[0], SOME_HASH, *proof[1:]]),
        *[(index, size, root, leaf, flip(proof, i)) for i in range(len(proof))],
    ]
    for i, n, r, h, p in probes:
        if i < 0:
            continue
        assert refused(lambda i=i, n=n, r=r, h=h, p=p: verify_inclusion(h, i, n, p, r))


@pytest.mark.parametrize(("old", "new", "proof"), [v for v in CONSISTENCY if v[2]])
def test_published_consistency_proofs_refuse_every_corruption(old, new, proof):
    """The reference corruptions of a consistency proof are all refused (verify_test.go)."""
    r1, r2 = ROOTS[old], ROOTS[new]
    probes = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, SOME_HASH, r2, proof),
        (old, new, r1, SOME_HASH, proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
        *[(old, new, r1, r2, flip(proof, i, 4)) for i in range(len(proof))],
    ]
    for m, n, a, b, p in probes:
        assert refused(lambda m=m, n=n, a=a, b=b, p=p: verify_consistency(m, n, a, b, p))


# ── the trivial cases and malformed input ───────────────────────────────────────


def test_trivial_consistency_needs_an_empty_proof_and_known_roots():
    """From the empty tree or between equal sizes: no proof; SHA-256() or equal roots."""
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    verify_consistency(3, 3, ROOTS[3], ROOTS[3], [])
    for args in [
        (0, 5, ROOTS[1], ROOTS[5], []),  # the empty tree has one root
        (0, 5, EMPTY_ROOT, ROOTS[5], [EMPTY_ROOT]),
        (3, 3, ROOTS[3], ROOTS[4], []),
        (3, 3, ROOTS[3], ROOTS[3], [EMPTY_ROOT]),
        (4, 3, ROOTS[4], ROOTS[3], []),  # time travel
        (1, 2, ROOTS[1], ROOTS[2], []),  # a real proof is never empty
    ]:
        assert refused(lambda args=args: verify_consistency(*args))


def test_inclusion_in_an_empty_or_too_small_tree_is_refused():
    """No leaf is in the empty tree; an index at or beyond the size never verifies."""
    for index, size in [(0, 0), (1, 0), (1, 1), (2, 1)]:
        assert refused(lambda i=index, n=size: verify_inclusion(SOME_HASH, i, n, [], EMPTY_ROOT))


def test_single_leaf_tree_root_is_its_leaf_hash():
    """In a one-leaf tree the proof is empty and the root is the leaf hash."""
    verify_inclusion(LEAF_HASHES[0], 0, 1, [], ROOTS[1])
    assert refused(lambda: verify_inclusion(LEAF_HASHES[0], 0, 1, [], LEAF_HASHES[1]))
    assert refused(lambda: verify_inclusion(b"", 0, 1, [], ROOTS[1]))
    assert refused(lambda: verify_inclusion(LEAF_HASHES[0], 0, 1, [], b""))


def test_hashes_of_the_wrong_length_are_refused_as_proofs():
    """Short, long or non-bytes hashes anywhere fail the proof, never crash it."""
    good = INCLUSION[1][2]
    for bad in (good[0][:31], good[0] + b"\x00", "x" * 32, None):
        p = [bad, *good[1:]]
        assert refused(lambda p=p: verify_inclusion(LEAF_HASHES[0], 0, 8, p, ROOTS[8]))
    assert refused(lambda: verify_inclusion(LEAF_HASHES[0], 0, 8, b"".join(good), ROOTS[8]))
    assert refused(lambda: verify_inclusion(LEAF_HASHES[0], 0, 8, None, ROOTS[8]))
    assert refused(lambda: verify_inclusion(LEAF_HASHES[0], 0, 8, iter(good), ROOTS[8]))
    proof = CONSISTENCY[1][2]
    assert refused(lambda: verify_consistency(1, 8, ROOTS[1][:16], ROOTS[8], proof))
    assert refused(lambda: verify_consistency(1, 8, ROOTS[1], ROOTS[8], [*proof[:2], b"x"]))


@pytest.mark.parametrize("bad", [-1, 1 << 64, True, 1.0, "3", None])
def test_sizes_and_indices_must_be_uint64(bad):
    """A size or index that is not an integer in [0, 2**64) is malformed input."""
    with pytest.raises(InvalidInput):
        verify_inclusion(LEAF_HASHES[0], bad, 8, [], ROOTS[8])
    with pytest.raises(InvalidInput):
        verify_consistency(1, bad, ROOTS[1], ROOTS[8], [])
    with pytest.raises(InvalidInput):
        inclusion_ranges(0, bad)
    with pytest.raises(InvalidInput):
        consistency_ranges(bad, 8)


def test_generation_refuses_impossible_requests():
    """Proofs are generated only for an index below the size and an old size ≤ the new."""
    with pytest.raises(InvalidInput):
        inclusion_proof(8, LEAF_HASHES)
    with pytest.raises(InvalidInput):
        inclusion_proof(0, [])
    with pytest.raises(InvalidInput):
        consistency_proof(9, LEAF_HASHES)
    assert consistency_proof(0, LEAF_HASHES) == []
    assert consistency_proof(8, LEAF_HASHES) == []


def test_proof_failures_are_opaque_and_logged(caplog):
    """Every failure has the same text; the reason goes to the local log only."""
    caplog.set_level(logging.WARNING, logger="patientkey.audit")
    with pytest.raises(ProofInvalid) as one:
        verify_inclusion(LEAF_HASHES[0], 0, 8, [], ROOTS[8])
    with pytest.raises(ProofInvalid) as two:
        verify_consistency(1, 8, ROOTS[1], SOME_HASH, CONSISTENCY[1][2])
    assert isinstance(one.value, CryptoError)
    assert str(one.value) == str(two.value)
    assert one.value.to_problem() == two.value.to_problem()
    assert one.value.reason != two.value.reason
    assert one.value.reason in caplog.text
    assert "reason" not in one.value.to_problem()


def test_perfect_subtrees_cover_a_range_left_to_right():
    """A range splits into the complete subtrees the RFC recursion would hash."""
    assert perfect_subtrees(0, 8) == [(3, 0)]
    assert perfect_subtrees(0, 7) == [(2, 0), (1, 2), (0, 6)]
    assert perfect_subtrees(4, 7) == [(1, 2), (0, 6)]
    assert perfect_subtrees(6, 8) == [(1, 3)]
    assert perfect_subtrees(5, 5) == []


# ── every proof, against the RFC written out ────────────────────────────────────

N_EXHAUSTIVE = 70
DATA = [b"event-%d" % i for i in range(N_EXHAUSTIVE)]
DATA_HASHES = [leaf_hash(d) for d in DATA]
SPEC_ROOTS = [_spec.mth(DATA[:n]) for n in range(N_EXHAUSTIVE + 1)]


def test_every_inclusion_proof_of_every_leaf_at_every_size_verifies():
    """For n ≤ 70 and every m < n: PATH as the RFC writes it, and it verifies."""
    for n in range(1, N_EXHAUSTIVE + 1):
        assert merkle_tree_hash(DATA[:n]) == SPEC_ROOTS[n]
        for m in range(n):
            got = inclusion_proof(m, DATA_HASHES[:n])
            assert got == _spec.path(m, DATA[:n]), (m, n)
            verify_inclusion(DATA_HASHES[m], m, n, got, SPEC_ROOTS[n])


def test_every_consistency_proof_between_sizes_verifies():
    """For every 0 < m ≤ n ≤ 70: PROOF as the RFC writes it, and it verifies."""
    for n in range(1, N_EXHAUSTIVE + 1):
        for m in range(1, n + 1):
            got = consistency_proof(m, DATA_HASHES[:n])
            assert got == _spec.proof(m, DATA[:n]), (m, n)
            verify_consistency(m, n, SPEC_ROOTS[m], SPEC_ROOTS[n], got)


sizes = st.integers(min_value=1, max_value=N_EXHAUSTIVE)


@st.composite
def leaf_in_tree(draw):
    n = draw(sizes)
    return draw(st.integers(min_value=0, max_value=n - 1)), n


@st.composite
def size_pair(draw):
    n = draw(st.integers(min_value=2, max_value=N_EXHAUSTIVE))
    return draw(st.integers(min_value=1, max_value=n - 1)), n


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(leaf_in_tree(), st.data())
def test_any_changed_inclusion_claim_is_refused(case, data):
    """A flipped bit, another index, another size or a cut or padded proof never verifies."""
    m, n = case
    proof = inclusion_proof(m, DATA_HASHES[:n])
    leaf, root = DATA_HASHES[m], SPEC_ROOTS[n]
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bent = list(proof)
        bent[at] = (int.from_bytes(proof[at], "big") ^ (1 << bit)).to_bytes(32, "big")
        assert refused(lambda: verify_inclusion(leaf, m, n, bent, root))
        assert refused(lambda: verify_inclusion(leaf, m, n, proof[:-1], root))
        assert refused(lambda: verify_inclusion(leaf, m, n, proof[1:], root))
    extra = data.draw(st.sampled_from([*DATA_HASHES[:3], EMPTY_ROOT, root, SOME_HASH]))
    assert refused(lambda: verify_inclusion(leaf, m, n, [*proof, extra], root))
    assert refused(lambda: verify_inclusion(leaf, m, n, [extra, *proof], root))
    other = data.draw(st.integers(0, N_EXHAUSTIVE).filter(lambda i: i != m))
    assert refused(lambda: verify_inclusion(leaf, other, n, proof, root))
    if other < n:
        assert refused(lambda: verify_inclusion(DATA_HASHES[other], other, n, proof, root))
    # The root of the claimed size: an inclusion proof is checked against a signed
    # (size, root) pair; a size alone is not bound to a root by the proof.
    size = data.draw(st.integers(m + 1, N_EXHAUSTIVE).filter(lambda s: s != n))
    assert refused(lambda: verify_inclusion(leaf, m, size, proof, SPEC_ROOTS[size]))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(size_pair(), st.data())
def test_any_changed_consistency_claim_is_refused(case, data):
    """A flipped bit, other sizes, swapped roots or a cut or padded proof never verifies."""
    m, n = case
    proof = consistency_proof(m, DATA_HASHES[:n])
    r1, r2 = SPEC_ROOTS[m], SPEC_ROOTS[n]
    at = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    bent = list(proof)
    bent[at] = (int.from_bytes(proof[at], "big") ^ (1 << bit)).to_bytes(32, "big")
    assert refused(lambda: verify_consistency(m, n, r1, r2, bent))
    assert refused(lambda: verify_consistency(m, n, r1, r2, proof[:-1]))
    assert refused(lambda: verify_consistency(m, n, r1, r2, proof[1:]))
    extra = data.draw(st.sampled_from([r1, r2, proof[0], EMPTY_ROOT, SOME_HASH]))
    assert refused(lambda: verify_consistency(m, n, r1, r2, [*proof, extra]))
    assert refused(lambda: verify_consistency(m, n, r1, r2, [extra, *proof]))
    assert refused(lambda: verify_consistency(m, n, r2, r1, proof))
    old = data.draw(st.integers(1, n).filter(lambda s: s != m))
    assert refused(lambda: verify_consistency(old, n, SPEC_ROOTS[old], r2, proof))
    new = data.draw(st.integers(m + 1, N_EXHAUSTIVE).filter(lambda s: s != n))
    assert refused(lambda: verify_consistency(m, new, r1, SPEC_ROOTS[new], proof))
