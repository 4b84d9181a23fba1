"""Contract of the passkey store (``repo.webauthn``): the same on memory, SQLite, PostgreSQL."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import event

from patientkey.errors import Conflict, InvalidInput, PatientKeyError
from patientkey.identity.webauthn import WebAuthnCredential
from patientkey.storage import memory
from patientkey.storage.authz import authz_store, totp_vault
from patientkey.storage.schema import Party
from patientkey.storage.webauthn import EnrolledWebAuthnCredential

NOW = 1_750_000_000
VAULT = totp_vault(secrets.token_bytes(32))
THREADS = 4  # below the PostgreSQL pool size


@pytest.fixture
def authz(backend, request, clock):
    """The authorization unit's store on the backend of the test."""
    if backend == "memory":
        return memory.authz_store(clock)
    db = request.getfixturevalue(f"{backend}_db")(Party.PLATFORM)
    return authz_store(db, clock=clock, vault=VAULT)


def _passkey(credential_id: bytes | None = None, count: int = 0) -> WebAuthnCredential:
    return WebAuthnCredential(
        credential_id or secrets.token_bytes(16),
        b"\xa5\x01\x02\x03\x26" + secrets.token_bytes(70),  # COSE-looking bytes, stored as is
        count,
        ("internal", "hybrid"),
    )


def test_passkeys_round_trip_per_user_oldest_first(authz):
    """Passkeys read back equal with their time, per user, ordered by time then id."""
    first, second, third = _passkey(b"\x02" * 16), _passkey(b"\x01" * 16, 7), _passkey()
    with authz.transaction() as repo:
        stored = repo.webauthn.add("alice", first, NOW)
        repo.webauthn.add("alice", second, NOW)  # same second: ordered by id
        repo.webauthn.add("bob", third, NOW - 5)
    assert stored == EnrolledWebAuthnCredential(
        first.credential_id, first.public_key, 0, ("internal", "hybrid"), created_at=NOW
    )
    assert stored.credential() == first
    with authz.transaction() as repo:
        alices = repo.webauthn.for_user("alice")
        assert [c.credential_id for c in alices] == [second.credential_id, first.credential_id]
        assert alices[0].sign_count == 7
        assert repo.webauthn.get("alice", first.credential_id) == stored
        assert repo.webauthn.get("bob", first.credential_id) is None  # not bob's
        assert repo.webauthn.for_user("carol") == []


def test_a_credential_id_is_registered_once_across_users(authz):
    """A known credential id is a Conflict for any user, and the first stays."""
    passkey = _passkey()
    with authz.transaction() as repo:
        repo.webauthn.add("alice", passkey, NOW)
    for user in ("alice", "bob"):
        with pytest.raises(Conflict), authz.transaction() as repo:
            repo.webauthn.add(user, _passkey(passkey.credential_id), NOW)
    with authz.transaction() as repo:
        assert repo.webauthn.get("alice", passkey.credential_id).public_key == passkey.public_key
        assert repo.webauthn.for_user("bob") == []


def test_sign_count_is_compare_and_set(authz):
    """swap_sign_count writes only from the expected count, and only the owner's passkey."""
    passkey = _passkey()
    with authz.transaction() as repo:
        repo.webauthn.add("alice", passkey, NOW)
    with authz.transaction() as repo:
        assert repo.webauthn.swap_sign_count("alice", passkey.credential_id, 0, 3) is True
        assert repo.webauthn.swap_sign_count("alice", passkey.credential_id, 0, 4) is False
        assert repo.webauthn.swap_sign_count("bob", passkey.credential_id, 3, 4) is False
        assert repo.webauthn.swap_sign_count("alice", b"unknown", 3, 4) is False
    with authz.transaction() as repo:
        assert repo.webauthn.get("alice", passkey.credential_id).sign_count == 3


def test_competing_count_updates_have_one_winner(authz):
    """Four transactions moving the same count at once: exactly one succeeds."""
    passkey = _passkey()
    with authz.transaction() as repo:
        repo.webauthn.add("alice", passkey, NOW)
    start = threading.Barrier(THREADS, timeout=10)

    def swap(i: int) -> object:
        start.wait()
        try:
            with authz.transaction() as repo:
                return repo.webauthn.swap_sign_count("alice", passkey.credential_id, 0, i + 1)
        except PatientKeyError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(swap, range(THREADS)))
    assert results.count(True) == 1
    with authz.transaction() as repo:
        assert (
            repo.webauthn.get("alice", passkey.credential_id).sign_count == results.index(True) + 1
        )


def test_passkeys_are_removed_by_their_owner_only(authz):
    """remove drops the owner's passkey once; another user's remove changes nothing."""
    passkey = _passkey()
    with authz.transaction() as repo:
        repo.webauthn.add("alice", passkey, NOW)
        assert repo.webauthn.remove("bob", passkey.credential_id) is False
        assert repo.webauthn.remove("alice", passkey.credential_id) is True
        assert repo.webauthn.remove("alice", passkey.credential_id) is False
        assert repo.webauthn.for_user("alice") == []


def test_a_registration_challenge_is_taken_once(authz):
    """take_challenge returns the latest challenge once; a later take finds nothing."""
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    with authz.transaction() as repo:
        repo.webauthn.put_challenge("alice", old, NOW + 300)
        repo.webauthn.put_challenge("alice", new, NOW + 300)  # a new begin replaces
        repo.webauthn.put_challenge("bob", old, NOW + 300)
    with authz.transaction() as repo:
        assert repo.webauthn.take_challenge("alice", NOW) == new
        assert repo.webauthn.take_challenge("alice", NOW) is None
    with authz.transaction() as repo:
        assert repo.webauthn.take_challenge("bob", NOW) == old


def test_an_expired_challenge_is_taken_as_none(authz):
    """A challenge at or past its expiry reads as None and is gone afterwards."""
    challenge = secrets.token_bytes(32)
    with authz.transaction() as repo:
        repo.webauthn.put_challenge("alice", challenge, NOW + 300)
    with authz.transaction() as repo:
        assert repo.webauthn.take_challenge("alice", NOW + 300) is None
    with authz.transaction() as repo:
        repo.webauthn.put_challenge("alice", challenge, NOW + 300)
        assert repo.webauthn.take_challenge("alice", NOW + 299) == challenge


def test_a_refused_transaction_keeps_the_challenge(authz):
    """A take in a transaction that fails afterwards is rolled back with it."""
    challenge = secrets.token_bytes(32)
    with authz.transaction() as repo:
        repo.webauthn.put_challenge("alice", challenge, NOW + 300)
    taken = []

    def take_then_fail() -> None:
        with authz.transaction() as repo:
            taken.append(repo.webauthn.take_challenge("alice", NOW))
            raise Conflict("a later step failed")

    with pytest.raises(Conflict):
        take_then_fail()
    assert taken == [challenge]
    with authz.transaction() as repo:
        assert repo.webauthn.take_challenge("alice", NOW) == challenge


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("add", ("", _passkey(), NOW)),
        ("add", ("alice", "not a credential", NOW)),
        ("add", ("alice", _passkey(), -1)),
        ("get", ("alice", b"")),
        ("get", ("alice", "text id")),
        ("swap_sign_count", ("alice", b"id", -1, 1)),
        ("swap_sign_count", ("alice", b"id", 0, 2**32)),
        ("swap_sign_count", ("alice", b"id", 0, True)),
        ("remove", ("alice", b"x" * 1024)),
        ("put_challenge", ("alice", b"short", NOW)),
        ("put_challenge", ("alice", secrets.token_bytes(65), NOW)),
        ("put_challenge", ("alice", secrets.token_bytes(32), 1.5)),
        ("take_challenge", ("alice", -1)),
        ("for_user", ("\x00",)),
    ],
)
def test_bad_input_is_invalid_input(authz, method, args):
    """Malformed ids, credentials, counts, challenges and times are InvalidInput everywhere."""
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        getattr(repo.webauthn, method)(*args)


def test_sql_operations_take_one_statement_each(make_db, clock):
    """On SQL, each passkey read, insert, compare-and-set and challenge take is one statement."""
    db = make_db(Party.PLATFORM)
    store = authz_store(db, clock=clock, vault=VAULT)
    passkey = _passkey()
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    with store.transaction() as repo:
        event.listen(db.engine, "before_cursor_execute", count)
        try:
            calls = [
                lambda: repo.webauthn.add("alice", passkey, NOW),
                lambda: repo.webauthn.for_user("alice"),
                lambda: repo.webauthn.get("alice", passkey.credential_id),
                lambda: repo.webauthn.swap_sign_count("alice", passkey.credential_id, 0, 1),
                lambda: repo.webauthn.put_challenge("alice", bytes(32), NOW),
                lambda: repo.webauthn.take_challenge("alice", NOW),
                lambda: repo.webauthn.remove("alice", passkey.credential_id),
            ]
            for call in calls:
                before = len(statements)
                call()
                assert len(statements) == before + 1, statements[before:]
        finally:
            event.remove(db.engine, "before_cursor_execute", count)


def test_memory_and_sql_agree_on_a_registration_time_from_the_clock(authz, clock):
    """The caller's time is stored as given (the platform passes its own clock's seconds)."""
    clock.advance(timedelta(days=1))  # the store's clock plays no part
    passkey = _passkey()
    with authz.transaction() as repo:
        assert repo.webauthn.add("alice", passkey, NOW).created_at == NOW
    with authz.transaction() as repo:
        assert repo.webauthn.for_user("alice")[0].created_at == NOW
