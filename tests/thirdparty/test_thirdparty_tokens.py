"""The third party's token store (file and in-memory twin), the token rule, and dispensing
with the token of the patient's grant."""

from __future__ import annotations

import json
import stat
import threading
import time

import pytest
from thirdparty_helpers import HIS, USER, B, granted_token, hospital_record

from patientkey.authz.rar import RecordRef, parse_authorization_details
from patientkey.errors import ConfigError, NotFound
from patientkey.storage.memory import thirdparty_store
from patientkey.storage.schema import ClaimState
from patientkey.thirdparty.core import ThirdPartyCore
from patientkey.thirdparty.oauth import BackchannelTicket
from patientkey.thirdparty.tokens import (
    MemoryTokenStore,
    NoAccessToken,
    TokenFile,
    choose_token,
)

P1 = RecordRef("prescription", HIS, "p-1")


def pending_ticket(auth_req_id: str = "req-1") -> BackchannelTicket:
    requested = parse_authorization_details(
        [
            {
                "type": "health_record_access",
                "record_types": ["prescription"],
                "records": {"his_id": HIS, "ids": ["p-1"]},
                "actions": ["view", "use"],
                "purpose": "pharmacy_dispense",
            }
        ]
    )
    now = time.time()
    return BackchannelTicket(
        auth_req_id=auth_req_id,
        expires_at=now + 300,
        interval=5,
        user_id=USER,
        binding_message="pharmacy-1 A1B2C3",
        requested=requested,
        created_at=now,
        last_polled_at=now,
    )


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path):
    """Both stores, so the twin is held to the file's behaviour."""
    if request.param == "file":
        return TokenFile(tmp_path / "state" / "pharmacy.tokens.json")
    return MemoryTokenStore()


# ── the store ──────────────────────────────────────────────────────────────────────


def test_tokens_are_kept_per_grant(store):
    """A new token for a grant replaces the old one; other grants stay."""
    first = granted_token(grant_id="g-1")
    store.put_token(first)
    store.put_token(granted_token(grant_id="g-2", user="u-bob"))
    newer = granted_token(grant_id="g-1")
    store.put_token(newer)
    held = {t.ref: t for t in store.tokens()}
    assert set(held) == {"g-1", "g-2"}
    assert held["g-1"] == newer
    assert [t.ref for t in store.tokens_for(USER)] == ["g-1"]


def test_forget_token(store):
    """forget_token drops it; an unknown ref is NotFound."""
    store.put_token(granted_token(grant_id="g-1"))
    assert store.forget_token("g-1").ref == "g-1"
    assert store.tokens() == []
    with pytest.raises(NotFound):
        store.forget_token("g-1")


def test_pending_requests_are_kept_until_redeemed(store):
    """put/get pending; redeem stores the token and drops the request in one step."""
    ticket = pending_ticket()
    store.put_pending(ticket)
    assert store.get_pending("req-1") == ticket
    assert store.pending() == [ticket]
    store.redeem("req-1", granted_token())
    assert store.pending() == []
    assert len(store.tokens()) == 1
    with pytest.raises(NotFound):
        store.get_pending("req-1")
    store.forget_pending("req-1")  # forgetting twice is harmless


def test_the_token_file_is_private_and_round_trips(tmp_path):
    """Mode 0600; a second TokenFile on the same path reads back exactly what was put."""
    path = tmp_path / "pharmacy.tokens.json"
    token, ticket = granted_token(), pending_ticket()
    TokenFile(path).put_token(token)
    TokenFile(path).put_pending(ticket)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = TokenFile(path)
    assert again.tokens() == [token]
    assert again.pending() == [ticket]
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == 1
    assert data["tokens"][0]["access_token"] == token.access_token


def test_a_missing_token_file_is_empty(tmp_path):
    """No file yet: no tokens, no pending requests, nothing created by reading."""
    store = TokenFile(tmp_path / "none.json")
    assert store.tokens() == []
    assert store.pending() == []
    assert not (tmp_path / "none.json").exists()


def test_a_corrupt_token_file_is_refused_without_echoing_it(tmp_path):
    """Anything but a version-1 token file is a ConfigError whose text holds none of it."""
    path = tmp_path / "t.json"
    for text in (
        "secret-token-text",
        '{"version": 2}',
        '{"version": 1, "tokens": [{}]}',
        '{"version": 1, "pending": [], "tokens": ["secret"]}',
        '{"version": 1, "pending": [["secret"]], "tokens": []}',
        "[" * 100_000,
    ):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            TokenFile(path).tokens()
        assert "secret" not in caught.value.detail
        assert "not a PatientKey token file" in caught.value.detail


def test_concurrent_writers_lose_nothing(tmp_path):
    """Eight writers at once (each its own TokenFile): every token is kept (flock)."""
    path = tmp_path / "t.json"
    errors: list[BaseException] = []

    def put(n: int) -> None:
        try:
            TokenFile(path).put_token(granted_token(grant_id=f"g-{n}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {t.ref for t in TokenFile(path).tokens()} == {f"g-{n}" for n in range(8)}


# ── the rule ───────────────────────────────────────────────────────────────────────


def test_choose_token_takes_the_live_covering_token_lasting_longest():
    """Among the patient's tokens allowing use on the record, the one expiring last."""
    now = time.time()
    short = granted_token(grant_id="short", expires_at=now + 60)
    long = granted_token(grant_id="long", expires_at=now + 250)
    other = granted_token(grant_id="other", ids=["p-2"], expires_at=now + 299)
    bob = granted_token(user="u-bob", grant_id="bob", expires_at=now + 299)
    view = granted_token(grant_id="view", actions=("view",), expires_at=now + 299)
    chosen = choose_token(
        [short, long, other, bob, view], user_id=USER, action="use", record=P1, now=now
    )
    assert chosen.ref == "long"


def test_choose_token_without_a_token_says_what_to_run():
    """No covering token: NoAccessToken naming the authorize command for this record."""
    with pytest.raises(NoAccessToken) as caught:
        choose_token(
            [granted_token(ids=["p-2"])], user_id=USER, action="use", record=P1, now=time.time()
        )
    assert (
        f"patientkey thirdparty authorize --user {USER} --purpose pharmacy_dispense "
        f"--record {HIS}:p-1" in caught.value.detail
    )


def test_choose_token_with_only_expired_tokens_says_so():
    """Only expired (or about to expire) tokens: NoAccessToken saying it expired."""
    now = time.time()
    for expires_at in (now - 10, now + 2):
        with pytest.raises(NoAccessToken, match="expired"):
            choose_token(
                [granted_token(expires_at=expires_at)],
                user_id=USER,
                action="use",
                record=P1,
                now=now,
            )


# ── dispensing with the token ────────────────────────────────────────────────────────


def test_dispense_attaches_the_token_covering_the_prescription(
    memory_core, wallet, platform_port, token_store
):
    """Claim and complete carry the access token of the grant covering that prescription."""
    for grant in token_store.tokens():
        token_store.forget_token(grant.ref)
    wanted = granted_token(grant_id="for-p1", ids=["p-1"])
    token_store.put_token(granted_token(grant_id="for-p2", ids=["p-2"]))
    token_store.put_token(wanted)
    wallet.send(memory_core, hospital_record("p-1"))
    memory_core.dispense("claim", HIS, "p-1")
    memory_core.dispense("complete", HIS, "p-1")
    assert [c.access_token for c in platform_port.calls] == [wanted.access_token] * 2


def test_dispense_without_a_token_fails_before_anything_changes(keys, wallet, platform_port):
    """No token: NoAccessToken telling the operator to authorize; nothing sent, no claim."""
    core = ThirdPartyCore(
        B, thirdparty_store(), keys, platform=platform_port, tokens=MemoryTokenStore()
    )
    wallet.send(core, hospital_record("p-1"))
    with pytest.raises(NoAccessToken, match="patientkey thirdparty authorize"):
        core.dispense("claim", HIS, "p-1")
    assert platform_port.calls == []
    assert core.show(HIS, "p-1").info.claim is None


def test_a_core_without_a_token_source_cannot_dispense(keys, wallet, platform_port):
    """A core built without tokens fails closed with the same clear error."""
    core = ThirdPartyCore(B, thirdparty_store(), keys, platform=platform_port)
    wallet.send(core, hospital_record("p-1"))
    with pytest.raises(NoAccessToken):
        core.dispense("claim", HIS, "p-1")
    assert platform_port.calls == []


def test_an_expired_token_is_not_sent(keys, wallet, platform_port):
    """The token expired (by the core's clock): NoAccessToken, the platform is not asked."""
    now = time.time()
    store = MemoryTokenStore([granted_token(expires_at=now + 100)])
    core = ThirdPartyCore(
        B, thirdparty_store(), keys, platform=platform_port, tokens=store, clock=lambda: now + 200
    )
    wallet.send(core, hospital_record("p-1"))
    with pytest.raises(NoAccessToken, match="expired"):
        core.dispense("claim", HIS, "p-1")
    assert platform_port.calls == []


def test_the_token_of_the_patient_who_shared_is_used(keys, platform_port):
    """The token is chosen for the account the record came from, not another patient's."""
    from thirdparty_helpers import Wallet

    bob_token = granted_token(user="u-bob", grant_id="bob")
    store = MemoryTokenStore([bob_token, granted_token(user=USER, ids=["p-9"], grant_id="a")])
    core = ThirdPartyCore(B, thirdparty_store(), keys, platform=platform_port, tokens=store)
    Wallet(kbp=keys.hpke.public_key, user="u-bob").send(core, hospital_record("p-1"))
    core.dispense("claim", HIS, "p-1")
    assert platform_port.calls[0].access_token == bob_token.access_token
    assert core.show(HIS, "p-1").info.claim is ClaimState.CLAIMED
