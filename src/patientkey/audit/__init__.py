"""The patient-verifiable transparency log: RFC 9162 Merkle trees, sans-IO.

Every security event goes into an append-only Merkle log; the log signs tree
heads; the patient's wallet checks that each new head extends the last one it
accepted and that its own events are in the log. Nothing here does I/O: the
log's hashes live behind the narrow :class:`NodeStore` (with the in-memory
twin :class:`MemoryNodeStore`), clocks and keys are passed in.

* :mod:`~patientkey.audit.merkle` — RFC 9162 §2.1: leaf and node hashes and
  MTH (§2.1.1), inclusion proofs (§2.1.3.1 generation, §2.1.3.2 verification),
  consistency proofs (§2.1.4.1, §2.1.4.2);
* :mod:`~patientkey.audit.log` — :class:`MerkleLog`: amortized O(1) hashes per
  append, roots of any earlier size and proofs from O(log n) stored nodes;
* :mod:`~patientkey.audit.entry` — :class:`LogEntry`, an event's canonical
  (salted) bytes: the leaf the log commits to;
* :mod:`~patientkey.audit.sth` — signed tree heads (RFC 9162 §4.10
  ``TreeHeadDataV2``, signed with Ed25519), their JSON form, and the client's
  :func:`check_consistency` and :func:`check_inclusion`.

A proof or signature that does not verify raises the one opaque
:class:`ProofInvalid` (a :class:`~patientkey.errors.CryptoError`; the reason is
in ``ProofInvalid.reason`` and the local log only). Two signed heads that
contradict each other raise :class:`LogRewritten` (a ``ProofInvalid`` that
says so loudly and carries both heads). Malformed input raises
:class:`~patientkey.errors.InvalidInput`.
"""

from patientkey.audit._errors import LogDamaged, ProofInvalid
from patientkey.audit.entry import SALT_LEN, LogEntry, datetime_ms
from patientkey.audit.log import MemoryNodeStore, MerkleLog, NodeKey, NodeStore, StoredNode
from patientkey.audit.merkle import (
    EMPTY_ROOT,
    HASH_LEN,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_tree_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from patientkey.audit.sth import (
    LogRewritten,
    SignedTreeHead,
    TreeHead,
    check_consistency,
    check_inclusion,
    sign_tree_head,
    verify_tree_head,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_LEN",
    "SALT_LEN",
    "LogDamaged",
    "LogEntry",
    "LogRewritten",
    "MemoryNodeStore",
    "MerkleLog",
    "NodeKey",
    "NodeStore",
    "ProofInvalid",
    "SignedTreeHead",
    "StoredNode",
    "TreeHead",
    "check_consistency",
    "check_inclusion",
    "consistency_proof",
    "datetime_ms",
    "inclusion_proof",
    "leaf_hash",
    "merkle_tree_hash",
    "node_hash",
    "sign_tree_head",
    "verify_consistency",
    "verify_inclusion",
    "verify_tree_head",
]
