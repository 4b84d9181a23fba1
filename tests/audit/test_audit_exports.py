"""The audit package's public surface and its place in the error tree."""

from __future__ import annotations

import importlib

import pytest

import patientkey.audit
from patientkey.audit import LogRewritten, ProofInvalid
from patientkey.errors import CryptoError, PatientKeyError, error_classes

MODULES = [
    "patientkey.audit",
    "patientkey.audit.merkle",
    "patientkey.audit.log",
    "patientkey.audit.sth",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_exactly_the_public_names(name):
    """Each module's __all__ names objects it has, and every public name it defines is listed."""
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert all(hasattr(module, item) for item in exported)
    defined = {
        item
        for item, value in vars(module).items()
        if not item.startswith("_")
        and getattr(value, "__module__", None) == name
        and (isinstance(value, type) or callable(value))
    }
    assert defined <= exported, sorted(defined - exported)


def test_package_reexports_are_the_module_objects():
    """Names re-exported by the package are the very objects of their modules."""
    from patientkey.audit import log, merkle, sth

    assert patientkey.audit.MerkleLog is log.MerkleLog
    assert patientkey.audit.verify_inclusion is merkle.verify_inclusion
    assert patientkey.audit.check_consistency is sth.check_consistency


def test_errors_join_the_one_tree():
    """ProofInvalid is the opaque CryptoError; LogRewritten is a ProofInvalid; both mapped."""
    assert issubclass(ProofInvalid, CryptoError)
    assert issubclass(LogRewritten, ProofInvalid)
    classes = error_classes()
    assert classes["audit-proof-invalid"] is ProofInvalid
    assert classes["audit-log-rewritten"] is LogRewritten
    assert all(issubclass(c, PatientKeyError) for c in classes.values())


def test_proof_invalid_is_opaque():
    """Whatever the reason, the message and problem document are the same."""
    one, two = ProofInvalid("inclusion: computed root differs"), ProofInvalid("tree head")
    assert str(one) == str(two) == "Audit log proof could not be verified"
    assert one.to_problem() == two.to_problem()
    assert "inclusion" not in str(one.to_problem())
