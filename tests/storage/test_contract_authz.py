"""Contract of AuthzRepository: the same behaviour on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date, timedelta
from itertools import count

import pyotp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, text

from patientkey.authz import ciba
from patientkey.authz.catalog import default_catalog
from patientkey.authz.ciba import (
    AuthRequest,
    CibaPolicy,
    CibaState,
    TokenRequest,
    UserEntry,
)
from patientkey.authz.clients import ClientInfo, RegisteredClient
from patientkey.authz.consent import build_consent
from patientkey.authz.grants import Grant, GrantStatus, create_grant, revoke_grant
from patientkey.authz.rar import (
    ACTIONS,
    RECORD_TYPES,
    HealthRecordAccess,
    dump_details,
    parse_authorization_details,
)
from patientkey.crypto.vault import KeyVault
from patientkey.errors import (
    ConfigError,
    Conflict,
    CryptoError,
    InvalidInput,
    NotFound,
    PatientKeyError,
)
from patientkey.identity import ProofRejected
from patientkey.identity.assurance import ProofKind
from patientkey.identity.challenge import ApprovalChallenge, new_nonce
from patientkey.identity.device import (
    DeviceAlgorithm,
    DeviceKey,
    generate_device_key,
    sign_device_approval,
    verify_device_approval,
)
from patientkey.identity.lockout import Lockout, LockoutPolicy, LockoutState
from patientkey.identity.otp import MemorySink, OneTimeCodes, OtpChallenge, OtpChannel
from patientkey.identity.totp import (
    TotpAlgorithm,
    TotpParams,
    TotpVerifier,
    new_totp_enrollment,
)
from patientkey.storage import authz as storage_authz
from patientkey.storage import memory
from patientkey.storage.authz import EnrolledDeviceKey, authz_store, totp_vault
from patientkey.storage.repos import PlatformRepo
from patientkey.storage.schema import (
    AUTH_REQUEST_STATES,
    DEVICE_ALGORITHMS,
    OTP_CHANNELS,
    TOTP_ALGORITHMS,
    Party,
)

NOW = 1_750_000_000
CATALOG = default_catalog()
POLICY = CibaPolicy()
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PHARMACY = ClientInfo(
    client_id="pharmacy-1",
    name="Apotheke am Markt",
    scenarios=frozenset({"pharmacy_dispense"}),
)
PING_APP = ClientInfo(
    client_id="sync-app",
    name="My Health Sync",
    delivery_mode="ping",
    notification_endpoint="https://app.example/ciba/notify",
    scenarios=frozenset({"personal_app_sync", "research"}),
)
JWKS = {
    "keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]
}
PROOFS = (ProofKind.DEVICE_SIGNATURE, ProofKind.TOTP)
VAULT = totp_vault(secrets.token_bytes(32))
THREADS = 4  # below the PostgreSQL pool size: every thread holds a connection while it waits


class _Users:
    def lookup(self, user_id: str) -> UserEntry | None:
        return UserEntry(user_id=user_id)

    def check_user_code(self, user_id: str, code: str) -> bool:
        return False


@pytest.fixture
def authz(backend, request, clock):
    """The authorization unit's store on the backend of the test, on the fake clock."""
    if backend == "memory":
        return memory.authz_store(clock)
    db = request.getfixturevalue(f"{backend}_db")(Party.PLATFORM)
    return authz_store(db, clock=clock, vault=VAULT)


_ids = count()


def _entry(**overrides) -> dict:
    body = {
        "type": "health_record_access",
        "record_types": ["prescription"],
        "records": {"his_id": "HIS-1", "ids": ["P-17", "P-18"]},
        "actions": ["view", "fetch", "use"],
        "purpose": "pharmacy_dispense",
        "duration": "P7D",
    }
    body.update(overrides)
    return body


def _pending(user_id="alice", *, now=NOW, client=PHARMACY, **params) -> AuthRequest:
    """A new request as the backchannel endpoint makes it (unique ids)."""
    n = next(_ids)
    form = {
        "login_hint": user_id,
        "binding_message": "Apotheke 4711: W7X2",
        "authorization_details": json.dumps([_entry()]),
        **params,
    }
    accepted = ciba.backchannel_authenticate(
        form,
        client=client,
        users=_Users(),
        catalog=CATALOG,
        policy=POLICY,
        now=now,
        new_auth_req_id=lambda: f"auth-{n}",
        new_request_id=lambda: f"req-{n}",
    )
    return accepted.request


def _approved(request: AuthRequest, *, now=NOW + 10, approved=None) -> AuthRequest:
    decided = ciba.approve(
        request,
        user_id=request.user_id,
        proofs=PROOFS,
        catalog=CATALOG,
        now=now,
        approved=approved,
        new_grant_id=lambda: f"grant-of-{request.auth_req_id}",
    )
    return decided.request


def _grant(request: AuthRequest, *, now=NOW + 10) -> Grant:
    assert request.granted is not None
    assert request.grant_id is not None
    grant, _ = create_grant(
        grant_id=request.grant_id,
        user_id=request.user_id,
        client_id=request.client_id,
        scenario=request.decision.scenario.name,
        details=request.granted,
        acr=request.acr or "",
        proofs=request.proofs,
        auth_time=request.auth_time or now,
        now=now,
    )
    return grant


def _race(n, work):
    """Run ``work(i)`` in ``n`` threads released together; errors become results."""
    start = threading.Barrier(n, timeout=10)

    def run(i):
        start.wait()
        try:
            return work(i)
        except PatientKeyError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


# ─────────────────────────────────────────────────────────────── authorization requests


def test_request_round_trips_exactly_in_every_state(authz):
    """A request reads back equal in every state: pending, ping mode, approved, issued, denied."""
    pending = _pending(scope="openid", acr_values="http://eidas.europa.eu/LoA/high")
    ping = _pending(
        "bob",
        client=PING_APP,
        client_notification_token="tok-123",
        authorization_details=json.dumps(
            [
                _entry(
                    purpose="personal_app_sync",
                    records={"from": "2024-01-01", "to": "2024-12-31"},
                    duration=None,
                )
            ]
        ),
    )
    narrowed = parse_authorization_details(
        [_entry(actions=["view"], records={"his_id": "HIS-1", "ids": ["P-17"]}, duration=3600)]
    )
    approved = _approved(_pending(), approved=narrowed)
    issued_source = _approved(_pending())
    issued = ciba.poll(
        issued_source,
        TokenRequest(issued_source.auth_req_id),
        client=PHARMACY,
        policy=POLICY,
        now=NOW + 20,
    ).store
    denied = ciba.deny(_pending(), user_id="alice", now=NOW + 5).request
    stored = [pending, ping, approved, issued, denied]
    with authz.transaction() as repo:
        for request in stored:
            repo.requests.add(request)
    with authz.transaction() as repo:
        for request in stored:
            assert repo.requests.get(request.auth_req_id) == request
            assert repo.requests.by_request_id(request.request_id) == request
    assert approved.granted == narrowed
    assert approved.proofs == frozenset(PROOFS)
    assert issued is not None
    assert issued.state is CibaState.ISSUED
    assert ping.notification_token == "tok-123"
    assert ping.scope == ()
    assert pending.decision.reasons  # the client's acr_values raised the method


def test_unknown_request_ids_read_as_none(authz):
    """get and by_request_id answer None for ids nobody stored."""
    with authz.transaction() as repo:
        assert repo.requests.get("nope") is None
        assert repo.requests.by_request_id("nope") is None


def test_duplicate_request_ids_are_conflict(authz):
    """A second request with a known auth_req_id or request_id is a Conflict."""
    first = _pending()
    with authz.transaction() as repo:
        repo.requests.add(first)
    for twin in (replace(first, request_id="other"), replace(first, auth_req_id="other")):
        with pytest.raises(Conflict), authz.transaction() as repo:
            repo.requests.add(twin)
    with authz.transaction() as repo:
        assert repo.requests.get(first.auth_req_id) == first
        assert repo.requests.get("other") is None


def test_a_refused_write_leaves_the_transaction_usable(authz):
    """A Conflict caught by the caller writes nothing and the rest of the transaction commits."""
    first, second = _pending(), _pending()
    with authz.transaction() as repo:
        repo.requests.add(first)
    with authz.transaction() as repo:
        with pytest.raises(Conflict):
            repo.requests.add(replace(first, request_id="fresh"))
        repo.requests.add(second)
    with authz.transaction() as repo:
        assert repo.requests.get(second.auth_req_id) == second
        assert repo.requests.by_request_id("fresh") is None


def test_replace_is_compare_and_set_on_version(authz):
    """replace stores the successor once; a second replace from the same old version fails."""
    old = _pending()
    with authz.transaction() as repo:
        repo.requests.add(old)
    approved = _approved(old)
    denied = ciba.deny(old, user_id="alice", now=NOW + 1).request
    with authz.transaction() as repo:
        assert repo.requests.replace(old, approved) is True
        assert repo.requests.replace(old, denied) is False
    with authz.transaction() as repo:
        assert repo.requests.get(old.auth_req_id) == approved
        assert repo.requests.replace(old, denied) is False
        assert (
            repo.requests.replace(
                replace(old, auth_req_id="ghost", request_id="g"),
                replace(denied, auth_req_id="ghost", request_id="g"),
            )
            is False
        )


@pytest.mark.parametrize(
    "change",
    [
        {"auth_req_id": "other"},
        {"request_id": "other"},
        {"user_id": "mallory"},
        {"client_id": "other-client"},
        {"version": 1},
    ],
    ids=lambda change: next(iter(change)),
)
def test_replace_refuses_a_successor_of_another_identity(authz, change):
    """A successor must keep the request's ids and raise its version, else InvalidInput."""
    old = _pending()
    with authz.transaction() as repo:
        repo.requests.add(old)
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        repo.requests.replace(old, replace(_approved(old), **change))


_MALFORMED_REQUEST = [
    {"state": "pending"},
    {"proofs": frozenset({"totp"})},
    {"interval": float("nan")},
    {"last_polled_at": 1.5},
    {"auth_time": -1},
    {"decided_at": float("inf")},
]


@pytest.mark.parametrize("change", _MALFORMED_REQUEST, ids=lambda change: next(iter(change)))
def test_malformed_requests_are_invalid_input(authz, change):
    """A plain-string state or proof, or a body time that is not unix seconds, is
    InvalidInput on add and replace, and nothing is written."""
    old = _pending()
    with authz.transaction() as repo:
        repo.requests.add(old)
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        repo.requests.add(replace(_pending(), **change))
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        repo.requests.replace(old, replace(_approved(old), **change))
    with authz.transaction() as repo:
        assert repo.requests.pending_for("alice", NOW) == [old]


def test_competing_replaces_have_one_winner(authz):
    """Four transactions replacing the same version at once: exactly one succeeds."""
    old = _pending()
    with authz.transaction() as repo:
        repo.requests.add(old)
    successors = [
        replace(old, last_polled_at=NOW + i, version=old.version + 1) for i in range(THREADS)
    ]

    def replace_one(i):
        with authz.transaction() as repo:
            return repo.requests.replace(old, successors[i])

    results = _race(THREADS, replace_one)
    assert sorted(results) == [False] * (THREADS - 1) + [True]
    with authz.transaction() as repo:
        assert repo.requests.get(old.auth_req_id) == successors[results.index(True)]


@pytest.mark.postgres
def test_postgres_polls_that_all_read_approved_issue_once(postgres_db, clock):
    """On PostgreSQL, token requests that all read APPROVED first still issue one token."""
    store = authz_store(postgres_db(Party.PLATFORM), clock=clock)
    approved = _approved(_pending())
    with store.transaction() as repo:
        repo.requests.add(approved)
    seen = threading.Barrier(THREADS, timeout=10)

    def poll(i):
        with store.transaction() as repo:
            current = repo.requests.get(approved.auth_req_id)
            answer = ciba.poll(
                current,
                TokenRequest(approved.auth_req_id),
                client=PHARMACY,
                policy=POLICY,
                now=NOW + 20 + i,
            )
            seen.wait()
            assert answer.error is None
            assert answer.store is not None
            return repo.requests.replace(current, answer.store)

    results = _race(THREADS, poll)
    assert results.count(True) == 1
    assert results.count(False) == THREADS - 1


def test_pending_for_filters_by_user_state_and_expiry(authz):
    """pending_for lists the user's undecided, unexpired requests, oldest first."""
    later = _pending(now=NOW + 5)
    first = _pending(now=NOW)
    expired = _pending(now=NOW - 1000)  # expired at NOW - 700
    decided = _pending(now=NOW)
    other = _pending("bob", now=NOW)
    with authz.transaction() as repo:
        for request in (later, first, expired, decided, other):
            repo.requests.add(request)
        repo.requests.replace(decided, _approved(decided))
    with authz.transaction() as repo:
        assert repo.requests.pending_for("alice", NOW + 10) == [first, later]
        assert repo.requests.pending_for("bob", NOW + 10) == [other]
        assert repo.requests.pending_for("carol", NOW + 10) == []
        # Expiry is exclusive: at expires_at the request is expired (effective_state).
        assert repo.requests.pending_for("alice", first.expires_at) == [later]
        assert repo.requests.pending_for("alice", later.expires_at) == []


def test_pending_for_breaks_creation_ties_by_id(authz):
    """Requests created in the same second come back in auth_req_id order on every backend."""
    same = [_pending(now=NOW) for _ in range(3)]
    with authz.transaction() as repo:
        for request in reversed(same):
            repo.requests.add(request)
    with authz.transaction() as repo:
        found = repo.requests.pending_for("alice", NOW)
    assert found == sorted(same, key=lambda r: r.auth_req_id)


def test_sqlite_pending_query_uses_the_user_state_expiry_index(sqlite_db):
    """SQLite answers pending_for from ix_auth_requests_user_id_state_expires_at."""
    db = sqlite_db(Party.PLATFORM)
    with db.engine.connect() as conn:
        plan = conn.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT * FROM auth_requests WHERE user_id = 'a' "
                "AND state = 'pending' AND expires_at > 5 ORDER BY created_at"
            )
        ).all()
    assert any("ix_auth_requests_user_id_state_expires_at" in str(row) for row in plan)


def test_sql_operations_take_one_statement_each(make_db, clock):
    """On SQL, each read, insert and compare-and-set is exactly one statement."""
    db = make_db(Party.PLATFORM)
    store = authz_store(db, clock=clock, vault=VAULT)
    old = _pending()
    grant = _grant(_approved(old))
    enrollment = new_totp_enrollment()
    used = replace(enrollment, last_step=1)
    statements = []

    def count_statement(_conn, _cursor, statement, *_args):
        statements.append(statement)

    with store.transaction() as repo:
        event.listen(db.engine, "before_cursor_execute", count_statement)
        try:
            calls = [
                lambda: repo.requests.add(old),
                lambda: repo.requests.get(old.auth_req_id),
                lambda: repo.requests.by_request_id(old.request_id),
                lambda: repo.requests.pending_for("alice", NOW),
                lambda: repo.requests.replace(old, _approved(old)),
                lambda: repo.grants.add(grant),
                lambda: repo.grants.get(grant.grant_id),
                lambda: repo.grants.for_user("alice"),
                lambda: repo.tokens.use_assertion("pharmacy-1", "j", NOW),
                lambda: repo.tokens.is_revoked("j"),
                lambda: repo.credentials.environment("alice"),
                lambda: repo.totp.put("alice", enrollment),
                lambda: repo.totp.get("alice"),
                lambda: repo.totp.swap("alice", enrollment, used),
                lambda: repo.totp.swap("alice", used, new_totp_enrollment()),
            ]
            for call in calls:
                before = len(statements)
                call()
                assert len(statements) == before + 1, statements[before:]
        finally:
            event.remove(db.engine, "before_cursor_execute", count_statement)


# ─────────────────────────────────────────────────────────────── grants and consent


def test_grant_round_trips_and_lists_per_user(authz, clock):
    """Grants read back equal, for_user lists a user's grants oldest first."""
    early = _grant(_approved(_pending()), now=NOW)
    late = _grant(_approved(_pending()), now=NOW + 50)
    bobs = _grant(_approved(_pending("bob")), now=NOW)
    with authz.transaction() as repo:
        for grant in (late, bobs, early):
            repo.grants.add(grant)
    with authz.transaction() as repo:
        assert repo.grants.get(early.grant_id) == early
        assert repo.grants.for_user("alice") == [early, late]
        assert repo.grants.for_user("bob") == [bobs]
        assert repo.grants.for_user("nobody") == []
        assert repo.grants.get("nope") is None


def test_duplicate_grant_id_is_conflict(authz):
    """A second grant under a known grant_id is a Conflict; the first stays."""
    grant = _grant(_approved(_pending()))
    with authz.transaction() as repo:
        repo.grants.add(grant)
    with pytest.raises(Conflict), authz.transaction() as repo:
        repo.grants.add(replace(grant, acr="other"))
    with authz.transaction() as repo:
        assert repo.grants.get(grant.grant_id) == grant


@pytest.mark.parametrize(
    "change",
    [
        {"status": "active"},
        {"proofs": frozenset({"totp"})},
        {"auth_time": 1.5},
        {"expires_at": float("nan")},
        {"revoked_at": -1},
    ],
    ids=lambda change: next(iter(change)),
)
def test_malformed_grants_are_invalid_input(authz, change):
    """A plain-string status or proof, or a time that is not unix seconds, is InvalidInput
    on add and replace, and nothing is written."""
    grant = _grant(_approved(_pending()))
    with authz.transaction() as repo:
        repo.grants.add(grant)
    other = replace(grant, grant_id=f"other-{grant.grant_id}", **change)
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        repo.grants.add(other)
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        repo.grants.replace(grant, replace(grant, version=2, **change))
    with authz.transaction() as repo:
        assert repo.grants.for_user("alice") == [grant]


def test_revocation_through_the_core_round_trips(authz):
    """grants.revoke_grant runs on the store; the revoked grant reads back exactly."""
    grant = _grant(_approved(_pending()))
    with authz.transaction() as repo:
        repo.grants.add(grant)
    with authz.transaction() as repo:
        revoked, event = revoke_grant(
            repo.grants, grant.grant_id, by="patient", actor="alice", now=NOW + 99
        )
    assert (revoked.status, revoked.revoked_by, revoked.version) == (
        GrantStatus.REVOKED,
        "patient",
        2,
    )
    with authz.transaction() as repo:
        assert repo.grants.get(grant.grant_id) == revoked
        assert repo.grants.replace(grant, replace(revoked, version=3)) is False
    with pytest.raises(Conflict), authz.transaction() as repo:
        revoke_grant(repo.grants, grant.grant_id, by="client", actor="pharmacy-1", now=NOW + 100)
    assert event.grant_id == grant.grant_id


def test_consent_is_stored_with_its_grant(authz):
    """set_consent stores the FHIR Consent with the grant; a grant update keeps it."""
    request = _approved(_pending())
    grant = _grant(request)
    document = build_consent(grant, client_name=request.client_name, purpose_of_use="TREAT")
    with authz.transaction() as repo:
        repo.grants.add(grant)
        assert repo.grants.consent(grant.grant_id) is None
        repo.grants.set_consent(grant.grant_id, document)
    with authz.transaction() as repo:
        assert repo.grants.consent(grant.grant_id) == document
        revoke_grant(repo.grants, grant.grant_id, by="client", actor="pharmacy-1", now=NOW + 1)
    with authz.transaction() as repo:
        assert repo.grants.consent(grant.grant_id) == document
        repo.grants.set_consent(grant.grant_id, {**document, "status": "inactive"})
    with authz.transaction() as repo:
        assert repo.grants.consent(grant.grant_id)["status"] == "inactive"
        assert repo.grants.consent("nope") is None


def test_consent_of_an_unknown_grant_is_not_found(authz):
    """set_consent for a grant nobody stored raises NotFound and writes nothing."""
    with pytest.raises(NotFound), authz.transaction() as repo:
        repo.grants.set_consent("nope", {"resourceType": "Consent"})


@pytest.mark.parametrize("bad", [[], {"n": float("nan")}, {"x": object()}, {"x": "y" * 70_000}])
def test_consent_must_be_a_bounded_json_object(authz, bad):
    """A consent that is not a JSON object of at most 64 KiB is InvalidInput."""
    grant = _grant(_approved(_pending()))
    with authz.transaction() as repo:
        repo.grants.add(grant)
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        repo.grants.set_consent(grant.grant_id, bad)


# ─────────────────────────────────────────────────────────────── clients


def test_clients_register_once_and_round_trip(authz):
    """A registered client reads back equal; a second registration is a Conflict."""
    pharmacy = RegisteredClient(info=PHARMACY, jwks=JWKS)
    app = RegisteredClient(info=PING_APP, jwks={"keys": []})
    with authz.transaction() as repo:
        repo.clients.register(pharmacy)
        repo.clients.register(app)
    with authz.transaction() as repo:
        assert repo.clients.get("pharmacy-1") == pharmacy
        assert repo.clients.get("nope") is None
        assert repo.clients.all() == [pharmacy, app]
    with pytest.raises(Conflict), authz.transaction() as repo:
        repo.clients.register(RegisteredClient(info=PHARMACY, jwks={"keys": []}))
    with authz.transaction() as repo:
        assert repo.clients.get("pharmacy-1") == pharmacy


def test_client_registration_can_replace(authz):
    """register(replace=True) overwrites a client's metadata and keys."""
    with authz.transaction() as repo:
        repo.clients.register(RegisteredClient(info=PHARMACY, jwks=JWKS))
    renamed = RegisteredClient(info=replace(PHARMACY, name="Neue Apotheke"), jwks={"keys": []})
    with authz.transaction() as repo:
        repo.clients.register(renamed, replace=True)
        repo.clients.register(RegisteredClient(info=PING_APP, jwks={}), replace=True)
    with authz.transaction() as repo:
        assert repo.clients.get("pharmacy-1") == renamed
        assert [c.client_id for c in repo.clients.all()] == ["pharmacy-1", "sync-app"]


# ─────────────────────────────────────────────────────────────── credentials


def test_password_certificate_contacts_and_environment_round_trip(authz):
    """Each single-valued credential reads back as last set, None before; per user."""
    with authz.transaction() as repo:
        creds = repo.credentials
        assert creds.password_hash("alice") is None
        assert creds.certificate("alice") is None
        assert creds.contact("alice", "sms") is None
        assert creds.environment("alice") is None
        creds.set_password_hash("alice", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA")
        creds.set_password_hash("alice", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$bmV3")
        creds.set_certificate("alice", PEM)
        creds.set_contact("alice", "sms", "+4915112345678")
        creds.set_contact("alice", OtpChannel.EMAIL, "alice@example.org")
        creds.set_environment("alice", "env-hash-1")
        creds.set_environment("bob", "env-hash-2")
    with authz.transaction() as repo:
        creds = repo.credentials
        assert creds.password_hash("alice") == "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$bmV3"
        assert creds.certificate("alice") == PEM
        assert creds.contact("alice", OtpChannel.SMS) == "+4915112345678"
        assert creds.contact("alice", "email") == "alice@example.org"
        assert creds.environment("alice") == "env-hash-1"
        assert creds.environment("bob") == "env-hash-2"
        assert creds.password_hash("bob") is None


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("set_password_hash", ("alice", "plaintext")),
        ("set_password_hash", ("", "$argon2id$x")),
        ("set_certificate", ("alice", "not pem")),
        ("set_contact", ("alice", "fax", "+49301234567")),
        ("contact", ("alice", "pigeon")),
        ("set_contact", ("alice", "sms", "line\nbreak")),
        ("set_environment", ("alice", "")),
        ("remove_device_key", ("alice", "k" * 65)),
    ],
)
def test_bad_credentials_are_invalid_input(authz, method, args):
    """Malformed hashes, certificates, channels, addresses and ids are InvalidInput."""
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        getattr(repo.credentials, method)(*args)


def test_device_keys_are_added_listed_and_removed(authz, clock):
    """Device keys are registered once per user, listed oldest first, and removed by key id."""
    ed = DeviceKey.from_public_key(generate_device_key(DeviceAlgorithm.ED25519).public_key())
    ml = DeviceKey.from_public_key(generate_device_key(DeviceAlgorithm.ML_DSA_65).public_key())
    with authz.transaction() as repo:
        first = repo.credentials.add_device_key("alice", ed)
    clock.advance(timedelta(seconds=30))
    with authz.transaction() as repo:
        second = repo.credentials.add_device_key("alice", ml)
        repo.credentials.add_device_key("bob", ed)
    enrolled_at = int(clock.now.timestamp()) - 30
    assert first == EnrolledDeviceKey(ed.algorithm, ed.public_bytes, enrolled_at)
    assert (first.key_id, first.device_key()) == (ed.key_id, ed)
    with pytest.raises(Conflict), authz.transaction() as repo:
        repo.credentials.add_device_key("alice", ed)
    with authz.transaction() as repo:
        assert repo.credentials.device_keys("alice") == [first, second]
        assert repo.credentials.remove_device_key("alice", ed.key_id) is True
        assert repo.credentials.remove_device_key("alice", ed.key_id) is False
    with authz.transaction() as repo:
        assert repo.credentials.device_keys("alice") == [second]
        assert [k.key_id for k in repo.credentials.device_keys("bob")] == [ed.key_id]
        assert repo.credentials.device_keys("carol") == []


def test_a_stored_device_key_verifies_the_wallet_signature(authz):
    """A listed device key verifies an approval its private key signed, and no other."""
    private = generate_device_key(DeviceAlgorithm.ML_DSA_65)
    with authz.transaction() as repo:
        repo.credentials.add_device_key("alice", DeviceKey.from_public_key(private.public_key()))
    challenge = ApprovalChallenge.create("req-1", [_entry()], new_nonce())
    signature = sign_device_approval(private, challenge)
    with authz.transaction() as repo:
        (stored,) = repo.credentials.device_keys("alice")
    verify_device_approval(stored, challenge, signature)
    other = ApprovalChallenge.create("req-2", [_entry()], new_nonce())
    with pytest.raises(ProofRejected):
        verify_device_approval(stored, other, signature)


# ─────────────────────────────────────────────────────────────── TOTP, one-time codes, lockout


def test_totp_enrollment_round_trips_and_swaps_once(authz):
    """put/get round-trip an enrollment; swap from a stale value fails."""
    enrollment = new_totp_enrollment(
        TotpParams(digits=8, period=60, algorithm=TotpAlgorithm.SHA256)
    )
    used = replace(enrollment, last_step=123)
    with authz.transaction() as repo:
        assert repo.totp.get("alice") is None
        repo.totp.put("alice", enrollment)
    with authz.transaction() as repo:
        assert repo.totp.get("alice") == enrollment
        assert repo.totp.swap("alice", enrollment, used) is True
        assert repo.totp.swap("alice", enrollment, replace(enrollment, last_step=124)) is False
        assert repo.totp.swap("bob", enrollment, used) is False
    with authz.transaction() as repo:
        assert repo.totp.get("alice") == used


@pytest.mark.parametrize("algorithm", list(TotpAlgorithm))
def test_totp_enrollment_round_trips_each_algorithm(authz, algorithm):
    """Every algorithm's enrollment, and a lower-case unpadded secret, read back equal."""
    enrollment = new_totp_enrollment(TotpParams(algorithm=algorithm))
    lowered = replace(enrollment, secret=enrollment.secret.lower(), last_step=7)
    with authz.transaction() as repo:
        repo.totp.put("alice", enrollment)
        repo.totp.put("bob", lowered)
    with authz.transaction() as repo:
        assert repo.totp.get("alice") == enrollment
        assert repo.totp.get("bob") == lowered


def test_totp_swap_to_a_new_secret_replaces_it(authz):
    """swap to another secret (re-enrollment) stores it; the old secret no longer matches."""
    old = new_totp_enrollment()
    new = new_totp_enrollment(TotpParams(digits=7))
    with authz.transaction() as repo:
        repo.totp.put("alice", old)
    with authz.transaction() as repo:
        assert repo.totp.swap("alice", old, new) is True
        assert repo.totp.swap("alice", old, replace(old, last_step=1)) is False
        # Same parameters and step, other secret: the tag tells them apart.
        assert repo.totp.swap("alice", replace(new, secret=old.secret), old) is False
    with authz.transaction() as repo:
        assert repo.totp.get("alice") == new


def test_competing_totp_swaps_have_one_winner(authz):
    """Four transactions swapping the same enrollment at once: exactly one succeeds."""
    enrollment = new_totp_enrollment()
    with authz.transaction() as repo:
        repo.totp.put("alice", enrollment)
    successors = [replace(enrollment, last_step=100 + i) for i in range(THREADS)]

    def swap_one(i):
        with authz.transaction() as repo:
            return repo.totp.swap("alice", enrollment, successors[i])

    results = _race(THREADS, swap_one)
    assert sorted(results) == [False] * (THREADS - 1) + [True]
    with authz.transaction() as repo:
        assert repo.totp.get("alice") == successors[results.index(True)]


def _sealed_row(db, user_id):
    with db.engine.connect() as conn:
        return conn.execute(
            text("SELECT secret_sealed, secret_tag FROM totp_enrollments WHERE user_id = :u"),
            {"u": user_id},
        ).one()


def test_sql_totp_row_holds_no_plaintext_secret(make_db, clock):
    """On SQL, neither the TOTP row nor the database dump contains the secret in any form."""
    db = make_db(Party.PLATFORM)
    store = authz_store(db, clock=clock, vault=VAULT)
    enrollment = new_totp_enrollment(TotpParams(algorithm=TotpAlgorithm.SHA512))
    with store.transaction() as repo:
        repo.totp.put("alice", enrollment)
    padded = enrollment.secret + "=" * (-len(enrollment.secret) % 8)
    raw = base64.b32decode(padded)
    sealed, tag = _sealed_row(db, "alice")
    assert len(bytes(tag)) == 32
    dump = db.dump_bytes()
    assert bytes(sealed) in dump  # the scan sees the row
    for needle in (enrollment.secret.encode(), enrollment.secret.lower().encode(), raw):
        assert needle not in dump
        assert needle not in bytes(sealed)
        assert needle not in bytes(tag)


def test_sql_totp_step_swap_keeps_the_sealed_blob(make_db, clock):
    """On SQL, a swap that keeps the secret (a code accepted) leaves the blob byte for byte."""
    db = make_db(Party.PLATFORM)
    store = authz_store(db, clock=clock, vault=VAULT)
    enrollment = new_totp_enrollment()
    with store.transaction() as repo:
        repo.totp.put("alice", enrollment)
    before = _sealed_row(db, "alice")
    with store.transaction() as repo:
        assert repo.totp.swap("alice", enrollment, replace(enrollment, last_step=5)) is True
    assert _sealed_row(db, "alice") == before
    renewed = new_totp_enrollment()
    with store.transaction() as repo:
        assert repo.totp.swap("alice", replace(enrollment, last_step=5), renewed) is True
    assert bytes(_sealed_row(db, "alice").secret_sealed) != bytes(before.secret_sealed)


def test_sql_totp_blob_moved_to_another_user_does_not_open(make_db, clock):
    """On SQL, alice's sealed secret and tag copied into bob's row raise CryptoError for bob."""
    db = make_db(Party.PLATFORM)
    store = authz_store(db, clock=clock, vault=VAULT)
    with store.transaction() as repo:
        repo.totp.put("alice", new_totp_enrollment())
        repo.totp.put("bob", new_totp_enrollment())
    sealed, tag = _sealed_row(db, "alice")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE totp_enrollments SET secret_sealed = :s, secret_tag = :t "
                "WHERE user_id = 'bob'"
            ),
            {"s": bytes(sealed), "t": bytes(tag)},
        )
    with pytest.raises(CryptoError), store.transaction() as repo:
        repo.totp.get("bob")
    with store.transaction() as repo:
        assert repo.totp.get("alice") is not None


def test_sql_totp_under_another_key_does_not_open(make_db, clock):
    """On SQL, a store with another at-rest key cannot read the enrollment (CryptoError)."""
    db = make_db(Party.PLATFORM)
    with authz_store(db, clock=clock, vault=VAULT).transaction() as repo:
        repo.totp.put("alice", new_totp_enrollment())
    other = authz_store(db, clock=clock, vault=totp_vault(secrets.token_bytes(32)))
    with pytest.raises(CryptoError), other.transaction() as repo:
        repo.totp.get("alice")


def test_sql_store_without_vault_refuses_totp_only(make_db, clock):
    """On SQL, a store opened without a vault raises ConfigError on totp; the rest works."""
    db = make_db(Party.PLATFORM)
    store = authz_store(db, clock=clock)
    with store.transaction() as repo:
        repo.clients.register(RegisteredClient(info=PHARMACY, jwks=JWKS))
        with pytest.raises(ConfigError, match="at-rest key"):
            repo.totp.get("alice")
    with store.transaction() as repo:
        assert [c.info.client_id for c in repo.clients.all()] == ["pharmacy-1"]


def test_totp_vault_is_derived_and_checked():
    """totp_vault derives a KeyVault from the authorization secret and refuses short secrets."""
    assert isinstance(totp_vault(bytes(32)), KeyVault)
    with pytest.raises(InvalidInput):
        totp_vault(bytes(31))
    with pytest.raises(InvalidInput):
        authz_store(None, vault=b"k" * 32)


def test_totp_verifier_runs_on_the_store(authz):
    """TotpVerifier over the repository accepts a fresh code once and refuses its replay."""
    enrollment = new_totp_enrollment()
    with authz.transaction() as repo:
        repo.totp.put("alice", enrollment)
    code = pyotp.TOTP(enrollment.secret).at(NOW)
    with authz.transaction() as repo:
        TotpVerifier(repo.totp, clock=lambda: float(NOW)).verify("alice", code)
    with pytest.raises(ProofRejected), authz.transaction() as repo:
        TotpVerifier(repo.totp, clock=lambda: float(NOW)).verify("alice", code)
    with authz.transaction() as repo:
        assert repo.totp.get("alice").last_step == NOW // 30


def test_one_time_codes_run_on_the_store(authz):
    """A code sent through OneTimeCodes verifies once against the stored challenge."""
    sink = MemorySink()
    with authz.transaction() as repo:
        codes = OneTimeCodes(b"k" * 32, repo.otp, sink, clock=lambda: NOW + 0.25)
        challenge = codes.send(
            user_id="alice",
            request_id="req-1",
            channel=OtpChannel.SMS,
            destination="+4915112345678",
        )
    with authz.transaction() as repo:
        assert repo.otp.get(challenge.challenge_id) == challenge
        codes = OneTimeCodes(b"k" * 32, repo.otp, sink, clock=lambda: NOW + 1.5)
        codes.verify(
            challenge_id=challenge.challenge_id,
            user_id="alice",
            request_id="req-1",
            code=sink.messages[0].code,
        )
    with authz.transaction() as repo:
        assert repo.otp.get(challenge.challenge_id) == replace(challenge, attempts=1, used=True)
    with authz.transaction() as repo:
        codes = OneTimeCodes(b"k" * 32, repo.otp, sink, clock=lambda: NOW + 2.0)
        with pytest.raises(ProofRejected):
            codes.verify(
                challenge_id=challenge.challenge_id,
                user_id="alice",
                request_id="req-1",
                code=sink.messages[0].code,
            )


def _challenge(challenge_id="c-1", expires_at=NOW + 300.5, **changes) -> OtpChallenge:
    base = OtpChallenge(
        challenge_id=challenge_id,
        user_id="alice",
        request_id="req-1",
        channel=OtpChannel.EMAIL,
        code_mac=b"\x00mac" * 8,
        expires_at=expires_at,
    )
    return replace(base, **changes)


def test_otp_challenges_swap_once_and_refuse_duplicates(authz):
    """swap is compare-and-set on the whole challenge; a known challenge id is a Conflict."""
    challenge = _challenge()
    spent = replace(challenge, attempts=1)
    with authz.transaction() as repo:
        repo.otp.add(challenge)
        assert repo.otp.get("c-1") == challenge
        assert repo.otp.get("c-2") is None
    with pytest.raises(Conflict), authz.transaction() as repo:
        repo.otp.add(replace(challenge, user_id="bob"))
    with authz.transaction() as repo:
        assert repo.otp.swap(challenge, spent) is True
        assert repo.otp.swap(challenge, replace(challenge, attempts=2)) is False
        assert repo.otp.swap(_challenge("c-9"), replace(_challenge("c-9"), used=True)) is False
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        repo.otp.swap(spent, replace(spent, challenge_id="c-2"))
    with authz.transaction() as repo:
        assert repo.otp.get("c-1") == spent


def test_otp_purge_drops_expired_challenges_only(authz):
    """purge removes challenges expired at ``now`` (inclusive) and says how many."""
    with authz.transaction() as repo:
        repo.otp.add(_challenge("old", expires_at=NOW - 1.0))
        repo.otp.add(_challenge("edge", expires_at=float(NOW)))
        repo.otp.add(_challenge("live", expires_at=NOW + 0.001))
    with authz.transaction() as repo:
        assert repo.otp.purge(NOW) == 2
        assert repo.otp.purge(NOW) == 0
    with authz.transaction() as repo:
        assert [repo.otp.get(c) is not None for c in ("old", "edge", "live")] == [
            False,
            False,
            True,
        ]


def test_lockout_counts_failures_and_locks(authz):
    """Lockout over the repository charges failures, locks, and a success forgets them."""
    policy = LockoutPolicy(free_failures=2, base_seconds=60)

    def reject():
        raise ProofRejected()

    for at in (NOW, NOW + 1):
        with authz.transaction() as repo:
            Lockout(repo.lockout, policy, clock=lambda at=at: at + 0.5).attempt(
                "alice", ProofKind.TOTP, reject
            )
    with authz.transaction() as repo:
        state = repo.lockout.get("alice", ProofKind.TOTP)
        assert state == LockoutState(failures=2, last_attempt_at=NOW + 1.5, locked_until=NOW + 61.5)
        assert repo.lockout.get("alice", ProofKind.PASSWORD) is None
        attempt = Lockout(repo.lockout, policy, clock=lambda: NOW + 100.0).attempt(
            "alice", ProofKind.TOTP, lambda: "ok"
        )
        assert attempt.unwrap() == "ok"
    with authz.transaction() as repo:
        assert repo.lockout.get("alice", ProofKind.TOTP) is None


def test_concurrent_lockout_updates_are_all_counted(authz):
    """Four transactions charging one counter at once all count: none is lost."""

    def charge(state):
        failures = 0 if state is None else state.failures
        return LockoutState(failures=failures + 1, last_attempt_at=float(NOW))

    def work(_i):
        with authz.transaction() as repo:
            return repo.lockout.update("alice", ProofKind.PASSWORD, charge)

    results = _race(THREADS, work)
    assert sorted(r.failures for r in results) == list(range(1, THREADS + 1))
    with authz.transaction() as repo:
        assert repo.lockout.get("alice", ProofKind.PASSWORD).failures == THREADS


def test_lockout_update_refuses_what_is_not_a_state(authz):
    """A change returning something other than a LockoutState or None is InvalidInput."""
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        repo.lockout.update("alice", ProofKind.TOTP, lambda _state: "locked")
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        repo.lockout.update("alice", "totp", lambda state: state)


# ─────────────────────────────────────────────────────────────── token ledgers


def test_revoked_jti_is_recorded_once(authz):
    """revoke_jti says True the first time, False after; is_revoked reflects it."""
    with authz.transaction() as repo:
        assert repo.tokens.is_revoked("jti-1") is False
        assert repo.tokens.revoke_jti("jti-1", NOW + 60) is True
        assert repo.tokens.revoke_jti("jti-1", NOW + 90) is False
    with authz.transaction() as repo:
        assert repo.tokens.is_revoked("jti-1") is True
        assert repo.tokens.is_revoked("jti-2") is False


def test_client_assertion_replay_is_detected(authz):
    """A (client_id, jti) seen before is a replay; the same jti of another client is not."""
    with authz.transaction() as repo:
        assert repo.tokens.use_assertion("pharmacy-1", "a-1", NOW + 60) is True
        assert repo.tokens.use_assertion("sync-app", "a-1", NOW + 60) is True
    with authz.transaction() as repo:
        assert repo.tokens.use_assertion("pharmacy-1", "a-1", NOW + 60) is False


def test_concurrent_assertion_replays_have_one_winner(authz):
    """Four transactions presenting one assertion at once: exactly one is accepted."""

    def present(_i):
        with authz.transaction() as repo:
            return repo.tokens.use_assertion("pharmacy-1", "a-race", NOW + 60)

    assert sorted(_race(THREADS, present)) == [False] * (THREADS - 1) + [True]


def test_token_purge_drops_expired_entries(authz):
    """purge drops revocations and assertions whose expiry is at or before now."""
    with authz.transaction() as repo:
        repo.tokens.revoke_jti("gone", NOW - 1)
        repo.tokens.revoke_jti("edge", NOW)
        repo.tokens.revoke_jti("kept", NOW + 1)
        repo.tokens.use_assertion("c", "gone", NOW - 5)
        repo.tokens.use_assertion("c", "kept", NOW + 5)
    with authz.transaction() as repo:
        assert repo.tokens.purge(NOW) == 3
        assert repo.tokens.purge(NOW) == 0
    with authz.transaction() as repo:
        assert [repo.tokens.is_revoked(j) for j in ("gone", "edge", "kept")] == [False, False, True]
        assert repo.tokens.use_assertion("c", "gone", NOW + 60) is True
        assert repo.tokens.use_assertion("c", "kept", NOW + 60) is False


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.revoke_jti("", NOW),
        lambda t: t.revoke_jti("j" * 257, NOW),
        lambda t: t.revoke_jti("j", -1),
        lambda t: t.revoke_jti("j", True),
        lambda t: t.use_assertion("c" * 129, "j", NOW),
        lambda t: t.purge(1.5),
    ],
)
def test_bad_token_ledger_input_is_invalid(authz, call):
    """Empty or overlong jtis and client ids, and non-integer times, are InvalidInput."""
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        call(repo.tokens)


# ─────────────────────────────────────────────────────────────── events, rollback


def test_log_event_appends_to_the_event_log(authz, clock):
    """log_event records kind, user and detail with the clock's time."""
    with authz.transaction() as repo:
        repo.log_event("authz.requested", "alice", {"client_id": "pharmacy-1", "n": 1})
        repo.log_event("authz.purge", None, {})
    with authz.transaction() as repo:
        (event,) = repo.events(user_id="alice")
        assert (event.kind, event.detail, event.at) == (
            "authz.requested",
            {"client_id": "pharmacy-1", "n": 1},
            clock.now,
        )
        assert [e.kind for e in repo.events()] == ["authz.requested", "authz.purge"]
    with pytest.raises(InvalidInput), authz.transaction() as repo:
        repo.log_event("authz.bad", "alice", {"nested": {"no": 1}})


def test_sql_events_share_the_platform_event_log(make_db, clock):
    """On SQL, authz events land in the table PlatformRepo.events reads, in one sequence."""
    db = make_db(Party.PLATFORM)
    store = authz_store(db, clock=clock)
    with db.transaction() as session:
        PlatformRepo(session, clock).log_event("fetch", "alice", {})
    with store.transaction() as repo:
        repo.log_event("authz.approved", "alice", {"grant_id": "g-1"})
    with db.transaction() as session:
        events = PlatformRepo(session, clock).events(user_id="alice")
    assert [(e.seq, e.kind) for e in events] == [(1, "fetch"), (2, "authz.approved")]


class _Boom(Exception):
    pass


def _write_everything_then_fail(repo, kept: AuthRequest, approved: AuthRequest, grant: Grant):
    repo.requests.add(_pending())
    repo.requests.replace(kept, approved)
    repo.grants.add(grant)
    repo.grants.set_consent(grant.grant_id, {"resourceType": "Consent"})
    repo.clients.register(RegisteredClient(info=PHARMACY, jwks=JWKS))
    repo.credentials.set_password_hash("alice", "$argon2id$x")
    device = generate_device_key(DeviceAlgorithm.ED25519).public_key()
    repo.credentials.add_device_key("alice", DeviceKey.from_public_key(device))
    repo.credentials.set_contact("alice", "sms", "+4915112345678")
    repo.totp.put("alice", new_totp_enrollment())
    repo.otp.add(_challenge())
    repo.lockout.update("alice", ProofKind.TOTP, lambda _s: LockoutState(1, float(NOW)))
    repo.tokens.revoke_jti("jti", NOW + 60)
    repo.tokens.use_assertion("pharmacy-1", "a", NOW + 60)
    repo.log_event("authz.approved", "alice", {})
    raise _Boom


def test_a_failed_transaction_leaves_nothing_behind(authz):
    """An exception inside the transaction rolls back every sub-store's writes."""
    kept = _pending()
    with authz.transaction() as repo:
        repo.requests.add(kept)
    approved = _approved(kept)
    grant = _grant(approved)
    with pytest.raises(_Boom), authz.transaction() as repo:
        _write_everything_then_fail(repo, kept, approved, grant)
    with authz.transaction() as repo:
        assert repo.requests.get(kept.auth_req_id) == kept
        assert repo.requests.pending_for("alice", NOW) == [kept]
        assert repo.grants.get(grant.grant_id) is None
        assert repo.clients.all() == []
        assert repo.credentials.password_hash("alice") is None
        assert repo.credentials.device_keys("alice") == []
        assert repo.credentials.contact("alice", "sms") is None
        assert repo.totp.get("alice") is None
        assert repo.otp.get("c-1") is None
        assert repo.lockout.get("alice", ProofKind.TOTP) is None
        assert repo.tokens.is_revoked("jti") is False
        assert repo.tokens.use_assertion("pharmacy-1", "a", NOW + 60) is True
        assert repo.events(user_id="alice") == []


# ─────────────────────────────────────────────────────────────── a whole flow, properties


def test_a_ciba_flow_runs_on_the_store(authz):
    """Request, wallet listing, approval, grant with consent, one token, revocation."""
    accepted = _pending()
    with authz.transaction() as repo:
        repo.clients.register(RegisteredClient(info=PHARMACY, jwks=JWKS))
        repo.requests.add(accepted)
    with authz.transaction() as repo:
        (listed,) = repo.requests.pending_for("alice", NOW + 5)
        decided = ciba.approve(listed, user_id="alice", proofs=PROOFS, catalog=CATALOG, now=NOW + 5)
        assert repo.requests.replace(listed, decided.request)
        grant = _grant(decided.request, now=NOW + 5)
        repo.grants.add(grant)
        repo.grants.set_consent(
            grant.grant_id, build_consent(grant, client_name=PHARMACY.name, purpose_of_use="TREAT")
        )
    with authz.transaction() as repo:
        current = repo.requests.get(accepted.auth_req_id)
        answer = ciba.poll(
            current,
            TokenRequest(current.auth_req_id),
            client=repo.clients.get("pharmacy-1").info,
            policy=POLICY,
            now=NOW + 10,
        )
        assert answer.error is None
        assert repo.requests.replace(current, answer.store)
        assert repo.tokens.revoke_jti("jti-of-token", NOW + 600)
    with authz.transaction() as repo:
        again = ciba.poll(
            repo.requests.get(accepted.auth_req_id),
            TokenRequest(accepted.auth_req_id),
            client=PHARMACY,
            policy=POLICY,
            now=NOW + 20,
        )
        assert again.error is not None
        assert again.error.error == "invalid_grant"
        assert repo.requests.pending_for("alice", NOW + 20) == []
        assert repo.grants.for_user("alice") == [grant]


_DAYS = [date(2024, 1, 1), date(2024, 3, 15), date(2024, 12, 31)]


@st.composite
def _access(draw, purpose):
    records = {}
    if draw(st.booleans()):
        records["ids"] = draw(
            st.lists(
                st.sampled_from(["P-1", "P-2", "p.3", "X:9"]), min_size=1, max_size=3, unique=True
            )
        )
    if draw(st.booleans()):
        records["his_id"] = draw(st.sampled_from(["HIS-1", "his@2"]))
    if draw(st.booleans()) or not records:
        start, end = sorted(draw(st.lists(st.sampled_from(_DAYS), min_size=2, max_size=2)))
        if draw(st.booleans()):
            records["from"] = start.isoformat()
        if draw(st.booleans()) or "from" not in records:
            records["to"] = end.isoformat()
    return HealthRecordAccess.model_validate(
        {
            "type": "health_record_access",
            "record_types": draw(st.lists(st.sampled_from(RECORD_TYPES), min_size=1, unique=True)),
            "records": records,
            "actions": draw(
                st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=5, unique=True)
            ),
            "purpose": purpose,
            "duration": draw(st.one_of(st.none(), st.integers(1, 10 * 365 * 86400))),
        }
    )


_details = st.sampled_from(["pharmacy_dispense", "research", "x_1"]).flatmap(
    lambda purpose: st.lists(_access(purpose), min_size=1, max_size=4).map(tuple)
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    scope=_details,
    granted=st.one_of(st.none(), _details),
    proofs=st.sets(st.sampled_from(list(ProofKind))),
)
def test_generated_details_round_trip(authz, scope, granted, proofs):
    """Any authorization details, as a request's scope and grant, and any proofs read back equal."""
    base = _pending()
    request = replace(
        base,
        decision=replace(base.decision, scope=scope),
        granted=granted,
        proofs=frozenset(proofs),
        state=CibaState.PENDING if granted is None else CibaState.APPROVED,
    )
    grant = Grant(
        grant_id=f"g-{base.auth_req_id}",
        user_id="alice",
        client_id="pharmacy-1",
        scenario="pharmacy_dispense",
        details=scope,
        acr="http://eidas.europa.eu/LoA/high",
        proofs=frozenset(proofs),
        auth_time=NOW,
        created_at=NOW,
        expires_at=NOW + 10,
    )
    with authz.transaction() as repo:
        repo.requests.add(request)
        repo.grants.add(grant)
    with authz.transaction() as repo:
        assert repo.requests.get(request.auth_req_id) == request
        assert repo.grants.get(grant.grant_id) == grant
    assert parse_authorization_details(dump_details(scope)) == scope


def test_schema_enumerations_match_the_cores():
    """The CHECK constraints allow exactly the states, algorithms and channels of the cores."""
    assert tuple(state.value for state in CibaState) == AUTH_REQUEST_STATES
    assert tuple(a.value for a in DeviceAlgorithm) == DEVICE_ALGORITHMS
    assert tuple(c.value for c in OtpChannel) == OTP_CHANNELS
    assert tuple(a.value for a in TotpAlgorithm) == TOTP_ALGORITHMS


def test_authz_module_exports_resolve():
    """Every name in storage.authz's __all__ exists and none is listed twice."""
    exported = storage_authz.__all__
    assert len(set(exported)) == len(exported)
    assert [name for name in exported if not hasattr(storage_authz, name)] == []
