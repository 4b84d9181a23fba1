"""The identity package's public surface and its place in the error tree."""

from __future__ import annotations

import importlib

import pytest

import patientkey.identity
from patientkey.errors import PatientKeyError, RateLimited, Unauthenticated, error_classes
from patientkey.identity import LockedOut, ProofRejected

MODULES = [
    "patientkey.identity",
    "patientkey.identity.assurance",
    "patientkey.identity.challenge",
    "patientkey.identity.device",
    "patientkey.identity.lockout",
    "patientkey.identity.otp",
    "patientkey.identity.password",
    "patientkey.identity.totp",
    "patientkey.identity.x509sig",
    "patientkey.identity.webauthn",
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


def test_errors_join_the_one_tree():
    """Identity errors are PatientKeyErrors with their own problem types."""
    assert issubclass(ProofRejected, Unauthenticated)
    assert issubclass(LockedOut, RateLimited)
    classes = error_classes()
    assert classes["identity-proof-rejected"] is ProofRejected
    assert classes["identity-locked-out"] is LockedOut
    assert all(issubclass(c, PatientKeyError) for c in classes.values())


def test_proof_rejected_is_opaque():
    """Whatever the reason, the message and problem document are the same."""
    one, two = ProofRejected("password: wrong password"), ProofRejected("totp: replayed code")
    assert str(one) == str(two) == "Identity proof rejected"
    assert one.to_problem() == two.to_problem()
    assert "password" not in str(one.to_problem())


def test_package_reexports_are_the_module_objects():
    """Names re-exported by the package are the very objects of their modules."""
    from patientkey.identity import otp, password

    assert patientkey.identity.PasswordVerifier is password.PasswordVerifier
    assert patientkey.identity.OneTimeCodes is otp.OneTimeCodes
