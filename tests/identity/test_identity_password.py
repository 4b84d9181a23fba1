"""Passwords: Argon2id, rehash on login, and no user-enumeration oracle."""

from __future__ import annotations

import unicodedata

import pytest
from argon2 import PasswordHasher, Type, extract_parameters

from patientkey.crypto.keystore import Argon2Params
from patientkey.errors import InvalidInput
from patientkey.identity import PasswordVerifier, ProofRejected
from patientkey.identity.password import MAX_PASSWORD_CHARS

SECRET = "correct horse battery staple"


class SpyHasher:
    """Forwards to a real PasswordHasher and records the hash of every verify call."""

    def __init__(self, real: PasswordHasher) -> None:
        self.real = real
        self.verified: list[str] = []

    def verify(self, hash: str, password: str) -> bool:  # noqa: A002 - argon2's name
        self.verified.append(hash)
        return self.real.verify(hash, password)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


@pytest.fixture
def verifier(cheap_argon2):
    return PasswordVerifier(cheap_argon2)


def _spy(verifier: PasswordVerifier) -> SpyHasher:
    spy = SpyHasher(verifier._hasher)
    verifier._hasher = spy  # type: ignore[assignment]
    return spy


def test_hash_is_argon2id_with_the_explicit_parameters(verifier, cheap_argon2):
    """The stored hash is Argon2id with exactly the configured cost parameters."""
    params = extract_parameters(verifier.hash(SECRET))
    assert params.type is Type.ID
    assert (params.time_cost, params.memory_cost, params.parallelism) == (
        cheap_argon2.time_cost,
        cheap_argon2.memory_cost,
        cheap_argon2.parallelism,
    )
    assert params.salt_len == cheap_argon2.salt_len
    assert params.hash_len == 32


def test_right_password_verifies_without_rehash(verifier):
    """The right password verifies; same parameters mean nothing to rehash."""
    assert verifier.verify(verifier.hash(SECRET), SECRET) is None


def test_salts_differ(verifier):
    """Two hashes of one password differ (fresh salt per hash)."""
    assert verifier.hash(SECRET) != verifier.hash(SECRET)


def test_wrong_password_is_rejected(verifier):
    """A wrong password is the opaque ProofRejected."""
    stored = verifier.hash(SECRET)
    with pytest.raises(ProofRejected) as info:
        verifier.verify(stored, SECRET + "!")
    assert info.value.reason == "password: wrong password"


def test_wrong_password_and_unknown_user_take_the_same_path(verifier):
    """Unknown user and wrong password each cost one Argon2id verify; the unknown one the dummy."""
    stored = verifier.hash(SECRET)
    spy = _spy(verifier)
    with pytest.raises(ProofRejected) as wrong:
        verifier.verify(stored, "not the password")
    with pytest.raises(ProofRejected) as unknown:
        verifier.verify(None, "not the password")
    assert spy.verified == [stored, verifier._dummy_hash]
    assert str(wrong.value) == str(unknown.value)
    assert wrong.value.to_problem() == unknown.value.to_problem()


def test_dummy_hash_uses_the_current_parameters(verifier):
    """The dummy hash costs what a real one costs: same parameters, so no rehash is due."""
    assert not verifier._hasher.check_needs_rehash(verifier._dummy_hash)


def test_overlong_or_non_text_password_still_runs_one_verify(verifier):
    """An over-long or non-text password is rejected after the same single verification."""
    stored = verifier.hash(SECRET)
    spy = _spy(verifier)
    for bad in ("x" * (MAX_PASSWORD_CHARS + 1), None, b"bytes"):
        with pytest.raises(ProofRejected):
            verifier.verify(stored, bad)  # type: ignore[arg-type]
    assert spy.verified == [stored] * 3


def test_unreadable_stored_hash_is_rejected(verifier):
    """A stored value that is no Argon2 hash is a rejected proof, not a crash."""
    for junk in ("", "$argon2id$v=19$garbage", "plaintext"):
        with pytest.raises(ProofRejected):
            verifier.verify(junk, SECRET)


def test_rehash_on_login_when_parameters_change(cheap_argon2):
    """A hash made with old parameters verifies and comes back rehashed with the new ones."""
    old = PasswordVerifier(cheap_argon2)
    new_params = Argon2Params(time_cost=2, memory_cost=16, parallelism=1)
    new = PasswordVerifier(new_params)
    rehashed = new.verify(old.hash(SECRET), SECRET)
    assert rehashed is not None
    assert extract_parameters(rehashed).time_cost == 2
    assert extract_parameters(rehashed).memory_cost == 16
    assert new.verify(rehashed, SECRET) is None


def test_no_rehash_after_a_failed_login(cheap_argon2):
    """A wrong password never yields a rehash, even with outdated parameters."""
    old_hash = PasswordVerifier(cheap_argon2).hash(SECRET)
    new = PasswordVerifier(Argon2Params(time_cost=2, memory_cost=16, parallelism=1))
    with pytest.raises(ProofRejected):
        new.verify(old_hash, "wrong")


def test_unicode_forms_of_one_password_are_equal(verifier):
    """Composed and decomposed spellings of one password verify alike (NFC, RFC 8265)."""
    composed = unicodedata.normalize("NFC", "Passwört-Ärger")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert verifier.verify(verifier.hash(composed), decomposed) is None


def test_enrollment_policy(verifier):
    """Enrollment refuses passwords under 8 or over 1024 characters, without echoing them."""
    for bad in ("short12", "y" * (MAX_PASSWORD_CHARS + 1)):
        with pytest.raises(InvalidInput) as info:
            verifier.hash(bad)
        assert bad not in str(info.value)
    with pytest.raises(InvalidInput):
        verifier.hash(b"not text")  # type: ignore[arg-type]


def test_errors_never_contain_the_password(verifier):
    """Neither message, repr, reason nor problem document contains the password."""
    stored = verifier.hash(SECRET)
    with pytest.raises(ProofRejected) as info:
        verifier.verify(stored, "hunter2-guess")
    error = info.value
    for text in (str(error), repr(error), error.reason, str(error.to_problem())):
        assert "hunter2-guess" not in text
        assert SECRET not in text
        assert stored not in text
    assert error.status == 401
    assert "reason" not in error.to_problem()
