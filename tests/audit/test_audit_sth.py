"""Signed tree heads: encoding, Ed25519 signatures, JSON, and the wallet's consistency check."""

from __future__ import annotations

import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from patientkey.audit import (
    EMPTY_ROOT,
    LogRewritten,
    MemoryNodeStore,
    MerkleLog,
    ProofInvalid,
    SignedTreeHead,
    TreeHead,
    check_consistency,
    check_inclusion,
    sign_tree_head,
    verify_tree_head,
)
from patientkey.audit.sth import STH_LABEL, TREE_HEAD_LEN, signing_input
from patientkey.errors import InvalidInput

from ._vectors import ROOTS

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key()
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
LOG_ID = "patientkey-platform"
EVENTS = [b'{"kind":"bind","seq":%d,"user_id":"u-alice"}' % i for i in range(12)]


def make_log(events: list[bytes]) -> MerkleLog:
    log = MerkleLog(MemoryNodeStore())
    log.append_many(events)
    return log


def head_of(log: MerkleLog, at_ms: int, size: int | None = None) -> SignedTreeHead:
    n = log.size if size is None else size
    return sign_tree_head(KEY, TreeHead(n, log.root(n), at_ms), LOG_ID)


def test_tree_head_encodes_as_tree_head_data_v2():
    """TreeHeadDataV2: uint64 timestamp, uint64 size, 0x20 || root, empty extensions."""
    head = TreeHead(size=8, root_hash=ROOTS[8], timestamp_ms=1_700_000_000_123)
    encoded = head.encode()
    assert len(encoded) == TREE_HEAD_LEN == 51
    assert encoded == (
        struct.pack(">Q", 1_700_000_000_123) + struct.pack(">Q", 8) + b"\x20" + ROOTS[8] + b"\0\0"
    )
    assert TreeHead.decode(encoded) == head


def test_signing_input_is_label_log_id_and_tree_head():
    """The log signs the label, the length-prefixed log id and TreeHeadDataV2."""
    head = TreeHead(size=0, root_hash=EMPTY_ROOT, timestamp_ms=5)
    expected = b"patientkey/audit/v1/tree-head" + b"\x13" + LOG_ID.encode() + head.encode()
    assert STH_LABEL == b"patientkey/audit/v1/tree-head"
    assert signing_input(LOG_ID, head) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        TreeHead(8, ROOTS[8], 1).encode()[:-1],
        TreeHead(8, ROOTS[8], 1).encode() + b"\0",
        TreeHead(8, ROOTS[8], 1).encode()[:16] + b"\x1f" + ROOTS[8] + b"\0\0",
        TreeHead(8, ROOTS[8], 1).encode()[:-2] + b"\0\x01",  # extensions present
        bytearray(TreeHead(8, ROOTS[8], 1).encode()),
    ],
)
def test_only_the_canonical_tree_head_decodes(data):
    """Wrong length, another hash length, extensions or a non-bytes value are refused."""
    with pytest.raises(InvalidInput):
        TreeHead.decode(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": -1, "root_hash": ROOTS[1], "timestamp_ms": 0},
        {"size": 1 << 64, "root_hash": ROOTS[1], "timestamp_ms": 0},
        {"size": True, "root_hash": ROOTS[1], "timestamp_ms": 0},
        {"size": 1, "root_hash": ROOTS[1][:31], "timestamp_ms": 0},
        {"size": 1, "root_hash": ROOTS[1], "timestamp_ms": -5},
        {"size": 1, "root_hash": ROOTS[1], "timestamp_ms": 1.5},
        {"size": 0, "root_hash": ROOTS[1], "timestamp_ms": 0},  # the empty tree has one root
    ],
)
def test_tree_head_checks_itself(kwargs):
    """A tree head with an impossible size, timestamp or root cannot be made."""
    with pytest.raises(InvalidInput):
        TreeHead(**kwargs)


def test_signed_head_verifies_with_the_log_key():
    """A head signed by the log verifies with its public key."""
    sth = sign_tree_head(KEY, TreeHead(8, ROOTS[8], 1000), LOG_ID)
    verify_tree_head(PUBLIC, sth)
    assert len(sth.signature) == 64


def test_signatures_are_ed25519_over_the_signing_input():
    """The signature is plain Ed25519 over signing_input (any Ed25519 library can check it)."""
    head = TreeHead(3, ROOTS[3], 42)
    sth = sign_tree_head(KEY, head, LOG_ID)
    PUBLIC.verify(sth.signature, signing_input(LOG_ID, head))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: SignedTreeHead(s.log_id, TreeHead(7, ROOTS[7], 1000), s.signature),
        lambda s: SignedTreeHead(s.log_id, TreeHead(8, ROOTS[7], 1000), s.signature),
        lambda s: SignedTreeHead(s.log_id, TreeHead(8, ROOTS[8], 1001), s.signature),
        lambda s: SignedTreeHead("another-log", s.head, s.signature),
        lambda s: SignedTreeHead(s.log_id, s.head, bytes([s.signature[0] ^ 1]) + s.signature[1:]),
        lambda s: sign_tree_head(OTHER_KEY, s.head, s.log_id),
    ],
)
def test_any_change_to_a_signed_head_is_refused(tamper):
    """Another size, root, time, log id, signature bit or signer fails verification."""
    sth = sign_tree_head(KEY, TreeHead(8, ROOTS[8], 1000), LOG_ID)
    with pytest.raises(ProofInvalid) as caught:
        verify_tree_head(PUBLIC, tamper(sth))
    assert not isinstance(caught.value, LogRewritten)


def test_verify_needs_an_ed25519_public_key():
    """Verifying with anything but an Ed25519 public key is malformed input."""
    sth = sign_tree_head(KEY, TreeHead(8, ROOTS[8], 1000), LOG_ID)
    with pytest.raises(InvalidInput):
        verify_tree_head(KEY, sth)  # the private key by mistake
    with pytest.raises(InvalidInput):
        sign_tree_head(PUBLIC, sth.head, LOG_ID)


def test_json_round_trip_uses_base64url_fields():
    """to_json/from_json round-trip; hashes and signatures are unpadded base64url."""
    sth = sign_tree_head(KEY, TreeHead(8, ROOTS[8], 1_700_000_000_000), LOG_ID)
    data = json.loads(sth.to_json())
    assert data == {
        "log_id": LOG_ID,
        "tree_size": 8,
        "timestamp": 1_700_000_000_000,
        "root_hash": "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz-Nw7_RgQyg",
        "signature": data["signature"],
    }
    assert "=" not in data["signature"]
    assert SignedTreeHead.from_json(sth.to_json()) == sth
    assert SignedTreeHead.from_json(sth.to_json().encode()) == sth
    assert SignedTreeHead.from_dict(sth.to_dict()) == sth


def _json_with(**changes):
    sth = sign_tree_head(KEY, TreeHead(8, ROOTS[8], 1000), LOG_ID)
    data = sth.to_dict()
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


@pytest.mark.parametrize(
    "data",
    [
        _json_with(extra=1),
        _json_with(signature=...),
        _json_with(tree_size="8"),
        _json_with(tree_size=-1),
        _json_with(tree_size=True),
        _json_with(timestamp=1.5),
        _json_with(root_hash="XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz-Nw7_RgQyg="),  # padded
        _json_with(root_hash="XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg"),  # base64, not url
        _json_with(root_hash="XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz-Nw7_RgQyh"),  # non-canonical
        _json_with(root_hash="AAAA"),
        _json_with(signature="AAAA"),
        _json_with(log_id=""),
        _json_with(log_id="x" * 256),
        _json_with(log_id=7),
        [],
    ],
)
def test_malformed_json_heads_are_invalid_input(data):
    """Missing or extra fields, wrong types, non-canonical base64url are refused."""
    with pytest.raises(InvalidInput):
        SignedTreeHead.from_dict(data)


@pytest.mark.parametrize("text", ["", "{", "[1]", "null", b"\xff", "x" * 5000, 3])
def test_non_json_heads_are_invalid_input(text):
    """Text that is not a JSON object of bounded size is refused before parsing fields."""
    with pytest.raises(InvalidInput):
        SignedTreeHead.from_json(text)


def test_hostile_json_heads_are_invalid_input():
    """Deep nesting within the size bound, a repeated member or NaN: InvalidInput, no crash."""
    text = sign_tree_head(KEY, TreeHead(8, ROOTS[8], 1000), LOG_ID).to_json()
    for hostile in (
        "[" * 4000,
        text[:-1] + ',"tree_size":7}',  # two values for one member: which one is signed?
        text.replace('"tree_size":8', '"tree_size":NaN'),
    ):
        with pytest.raises(InvalidInput):
            SignedTreeHead.from_json(hostile)


# ── the wallet's check ──────────────────────────────────────────────────────────


def test_a_grown_log_is_accepted():
    """A later head of a log that only grew passes check_consistency with its proof."""
    log = make_log(EVENTS[:5])
    old = head_of(log, 1000)
    log.append_many(EVENTS[5:])
    new = head_of(log, 2000)
    check_consistency(old, new, log.consistency_proof(5), PUBLIC)
    check_consistency(old, old, [], PUBLIC)
    empty = sign_tree_head(KEY, TreeHead(0, EMPTY_ROOT, 500), LOG_ID)
    check_consistency(empty, new, [], PUBLIC)


def test_a_rewritten_event_is_detected():
    """Altering an accepted event makes every later head inconsistent: LogRewritten."""
    log = make_log(EVENTS[:5])
    old = head_of(log, 1000)
    forged = [*EVENTS[:2], b'{"kind":"bind","seq":2,"user_id":"u-mallory"}', *EVENTS[3:]]
    rewritten = make_log(forged)
    new = head_of(rewritten, 2000)
    with pytest.raises(LogRewritten) as caught:
        check_consistency(old, new, rewritten.consistency_proof(5), PUBLIC)
    assert "rewritten" in str(caught.value)
    assert caught.value.old == old
    assert caught.value.new == new
    # The honest log's proof does not rescue the forged head either.
    with pytest.raises(LogRewritten):
        check_consistency(old, new, make_log(EVENTS).consistency_proof(5), PUBLIC)


def test_a_deleted_event_is_detected():
    """A smaller log signed later (an event deleted) raises LogRewritten."""
    log = make_log(EVENTS[:6])
    old = head_of(log, 1000)
    shrunk = make_log([*EVENTS[:3], *EVENTS[4:6]])
    new = head_of(shrunk, 2000)
    with pytest.raises(LogRewritten) as caught:
        check_consistency(old, new, [], PUBLIC)
    assert "deleted" in caught.value.detail
    assert caught.value.to_problem()["new_tree_head"]["tree_size"] == 5


def test_a_deletion_hidden_by_later_events_is_detected():
    """Deleting an event then appending more (a larger tree) still raises LogRewritten."""
    log = make_log(EVENTS[:6])
    old = head_of(log, 1000)
    refilled = make_log([*EVENTS[:3], *EVENTS[4:]])
    new = head_of(refilled, 2000)
    with pytest.raises(LogRewritten):
        check_consistency(old, new, refilled.consistency_proof(6), PUBLIC)


def test_two_roots_for_one_size_is_a_fork():
    """Two signed heads of the same size with different roots raise LogRewritten."""
    honest = make_log(EVENTS[:4])
    forked = make_log([*EVENTS[:3], b"another history"])
    with pytest.raises(LogRewritten):
        check_consistency(head_of(honest, 1000), head_of(forked, 2000), [], PUBLIC)


def test_a_larger_tree_signed_before_a_smaller_one_is_a_fork():
    """Sizes and timestamps must grow together: a larger tree signed earlier is a rewrite."""
    log = make_log(EVENTS)
    old = head_of(log, 2000, size=5)
    new = head_of(log, 1000, size=12)
    with pytest.raises(LogRewritten):
        check_consistency(old, new, log.consistency_proof(5), PUBLIC)


def test_an_older_head_is_stale_not_a_rewrite():
    """A head older and smaller than the accepted one is refused as input, not as a rewrite."""
    log = make_log(EVENTS)
    with pytest.raises(InvalidInput):
        check_consistency(head_of(log, 2000), head_of(log, 1000, size=5), [], PUBLIC)


def test_malformed_proofs_are_input_errors_not_rewrites():
    """A proof of the wrong length or element size is InvalidInput, never LogRewritten."""
    log = make_log(EVENTS)
    old, new = head_of(log, 1000, size=5), head_of(log, 2000)
    proof = log.consistency_proof(5)
    for bad in (proof[:-1], [*proof, proof[0]], [proof[0][:31], *proof[1:]], b"".join(proof)):
        with pytest.raises(InvalidInput):
            check_consistency(old, new, bad, PUBLIC)
    with pytest.raises(InvalidInput):
        check_consistency(old, old, [EMPTY_ROOT], PUBLIC)


def test_a_well_formed_bad_proof_between_signed_heads_is_a_rewrite():
    """Between two signed heads, a well-formed proof that fails is evidence: LogRewritten."""
    log = make_log(EVENTS)
    old, new = head_of(log, 1000, size=5), head_of(log, 2000)
    proof = log.consistency_proof(5)
    bent = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
    with pytest.raises(LogRewritten):
        check_consistency(old, new, bent, PUBLIC)


def test_unsigned_or_foreign_heads_are_not_evidence():
    """A forged head is ProofInvalid (not LogRewritten); another log's head is InvalidInput."""
    log = make_log(EVENTS)
    old = head_of(log, 1000, size=5)
    forged = sign_tree_head(OTHER_KEY, TreeHead(3, log.root(3), 2000), LOG_ID)
    for first, second in ((old, forged), (forged, old)):
        with pytest.raises(ProofInvalid) as caught:
            check_consistency(first, second, [], PUBLIC)
        assert not isinstance(caught.value, LogRewritten)
    other = sign_tree_head(KEY, TreeHead(12, log.root(), 2000), "another-log")
    with pytest.raises(InvalidInput):
        check_consistency(old, other, log.consistency_proof(5), PUBLIC)


def test_log_rewritten_says_so_loudly():
    """LogRewritten is a ProofInvalid with its own problem type, status and a precise detail."""
    log = make_log(EVENTS[:6])
    old, new = head_of(log, 1000), head_of(make_log(EVENTS[:4]), 2000)
    with pytest.raises(LogRewritten) as caught:
        check_consistency(old, new, [], PUBLIC)
    problem = caught.value.to_problem()
    assert problem["type"].endswith("/audit-log-rewritten")
    assert problem["status"] == 502
    assert "accepted tree size 6" in problem["detail"]
    assert "new tree size 4" in problem["detail"]
    assert problem["old_tree_head"] == old.to_dict()


# ── inclusion of the patient's own events ───────────────────────────────────────


def test_an_event_in_the_signed_tree_is_accepted():
    """check_inclusion accepts each event with its index and proof under a signed head."""
    log = make_log(EVENTS)
    sth = head_of(log, 1000)
    for index, event in enumerate(EVENTS):
        check_inclusion(sth, event, index, log.inclusion_proof(index), PUBLIC)


def test_an_altered_event_is_not_in_the_log():
    """An event changed after logging, or under another index, fails check_inclusion."""
    log = make_log(EVENTS)
    sth = head_of(log, 1000)
    proof = log.inclusion_proof(4)
    with pytest.raises(ProofInvalid):
        check_inclusion(sth, EVENTS[4].replace(b"alice", b"bob"), 4, proof, PUBLIC)
    with pytest.raises(ProofInvalid):
        check_inclusion(sth, EVENTS[5], 5, proof, PUBLIC)
    forged = sign_tree_head(OTHER_KEY, sth.head, LOG_ID)
    with pytest.raises(ProofInvalid):
        check_inclusion(forged, EVENTS[4], 4, proof, PUBLIC)


def test_inclusion_input_is_checked():
    """An index beyond the tree, a non-bytes event or a misshapen proof is InvalidInput."""
    log = make_log(EVENTS)
    sth = head_of(log, 1000)
    proof = log.inclusion_proof(4)
    with pytest.raises(InvalidInput):
        check_inclusion(sth, EVENTS[4], 12, proof, PUBLIC)
    with pytest.raises(InvalidInput):
        check_inclusion(sth, EVENTS[4].decode(), 4, proof, PUBLIC)
    with pytest.raises(InvalidInput):
        check_inclusion(sth, EVENTS[4], 4, proof[:-1], PUBLIC)
