"""Contract of PlatformRepository: the same behaviour on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import pytest

from patientkey.errors import Conflict, InvalidInput, NotFound, RateLimited
from patientkey.storage.repos import DISPENSE_TRANSITIONS
from patientkey.storage.schema import DispenseState, ShareKind

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _seed(platform) -> None:
    with platform.transaction() as repo:
        repo.create_account("u1")
        repo.create_account("u2")
        repo.announce_record("his-a", "rx-1", "pat-1", "prescription", 100)
        repo.register_third_party("pharm-1", "Pharmacy One", b"kbp-1", PEM)
        repo.register_third_party("pharm-2", "Pharmacy Two", b"kbp-2", PEM)


def test_accounts_are_created_once(platform, clock):
    """An account is created with the clock's time; a second creation is a Conflict."""
    with platform.transaction() as repo:
        account = repo.create_account("u1")
    assert account.user_id == "u1"
    assert account.created_at == clock.now
    assert account.created_at.tzinfo is not None
    with pytest.raises(Conflict), platform.transaction() as repo:
        repo.create_account("u1")
    with platform.transaction() as repo:
        assert repo.get_account("u1") == account


def test_unknown_account_is_not_found(platform):
    """Reading an absent account raises NotFound."""
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.get_account("nobody")


@pytest.mark.parametrize("bad", ["", "x" * 129, "tab\there", "nul\x00", 7, None])
def test_bad_identifiers_are_invalid_input(platform, bad):
    """Identifiers must be 1 to 128 printable characters, else InvalidInput."""
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.create_account(bad)


def test_timestamps_are_aware_utc(platform, clock):
    """Timestamps come back timezone-aware in UTC, whatever zone the clock used."""
    clock.now = clock.now.astimezone(ZoneInfo("Asia/Shanghai"))
    with platform.transaction() as repo:
        repo.create_account("u1")
    with platform.transaction() as repo:
        created = repo.get_account("u1").created_at
    assert created.utcoffset() == timedelta(0)
    assert created == clock.now


def test_bind_stores_and_reads_binding(platform, clock):
    """bind stores (User_ID, HIS_ID) → Patient_ID and get_binding returns it."""
    _seed(platform)
    with platform.transaction() as repo:
        binding = repo.bind("u1", "his-a", "pat-1")
    with platform.transaction() as repo:
        assert repo.get_binding("u1", "his-a") == binding
    assert (binding.patient_id, binding.created_at) == ("pat-1", clock.now)


def test_bind_is_idempotent_for_the_same_triple(platform, clock):
    """Binding the same triple twice returns the first binding unchanged."""
    _seed(platform)
    with platform.transaction() as repo:
        first = repo.bind("u1", "his-a", "pat-1")
    clock.advance(timedelta(minutes=1))
    with platform.transaction() as repo:
        assert repo.bind("u1", "his-a", "pat-1") == first


def test_bind_refuses_a_patient_bound_to_another_account(platform):
    """A HIS patient bound to one account cannot be bound to another: Conflict."""
    _seed(platform)
    with platform.transaction() as repo:
        repo.bind("u1", "his-a", "pat-1")
    with pytest.raises(Conflict), platform.transaction() as repo:
        repo.bind("u2", "his-a", "pat-1")


def test_bind_refuses_a_second_patient_at_the_same_his(platform):
    """An account bound at a HIS cannot be re-bound to another patient there: Conflict."""
    _seed(platform)
    with platform.transaction() as repo:
        repo.bind("u1", "his-a", "pat-1")
    with pytest.raises(Conflict), platform.transaction() as repo:
        repo.bind("u1", "his-a", "pat-2")


def test_same_patient_id_at_another_his_is_another_patient(platform):
    """Patient_IDs are per HIS: the same id at another HIS binds to another account."""
    _seed(platform)
    with platform.transaction() as repo:
        repo.bind("u1", "his-a", "pat-1")
        repo.bind("u2", "his-b", "pat-1")
        repo.bind("u1", "his-b", "pat-9")
        assert [b.his_id for b in repo.bindings_of("u1")] == ["his-a", "his-b"]


def test_bind_needs_an_account(platform):
    """Binding an unknown account raises NotFound."""
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.bind("ghost", "his-a", "pat-1")


def test_missing_binding_is_not_found(platform):
    """get_binding of an unbound pair raises NotFound."""
    _seed(platform)
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.get_binding("u1", "his-a")


def test_announce_record_is_idempotent_and_checked(platform):
    """Re-announcing with the same metadata returns the record; other metadata is a Conflict."""
    _seed(platform)
    with platform.transaction() as repo:
        again = repo.announce_record("his-a", "rx-1", "pat-1", "prescription", 100)
        assert again.sealed is None
        assert again.fetched_at is None
    with pytest.raises(Conflict), platform.transaction() as repo:
        repo.announce_record("his-a", "rx-1", "pat-2", "prescription", 100)


def test_store_sealed_keeps_the_first_ciphertext(platform, clock):
    """A second store_sealed never overwrites: the first ciphertext stays and is returned."""
    _seed(platform)
    with platform.transaction() as repo:
        first = repo.store_sealed("his-a", "rx-1", b"ciphertext-1")
    assert first.sealed == b"ciphertext-1"
    assert first.fetched_at == clock.now
    clock.advance(timedelta(seconds=5))
    with platform.transaction() as repo:
        second = repo.store_sealed("his-a", "rx-1", b"ciphertext-2")
    assert second == first
    with platform.transaction() as repo:
        assert repo.get_record("his-a", "rx-1").sealed == b"ciphertext-1"


def test_store_sealed_needs_an_announced_record(platform):
    """Storing ciphertext for an unannounced record raises NotFound."""
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.store_sealed("his-a", "rx-404", b"ct")


def test_store_sealed_refuses_empty_ciphertext(platform):
    """Empty or non-bytes ciphertext is InvalidInput."""
    _seed(platform)
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.store_sealed("his-a", "rx-1", b"")


def test_records_of_patient_are_listed_by_p_id(platform):
    """records_of_patient lists one HIS patient's records ordered by P_ID."""
    _seed(platform)
    with platform.transaction() as repo:
        repo.announce_record("his-a", "rx-0", "pat-1", "report", 5)
        repo.announce_record("his-a", "rx-2", "pat-2", "report", 5)
        repo.announce_record("his-b", "rx-3", "pat-1", "report", 5)
        found = repo.records_of_patient("his-a", "pat-1")
    assert [r.p_id for r in found] == ["rx-0", "rx-1"]


def test_third_party_registration(platform):
    """A third party registers once; identical re-registration is fine, different is Conflict."""
    _seed(platform)
    with platform.transaction() as repo:
        tp = repo.get_third_party("pharm-1")
        assert (tp.display_name, tp.hpke_public, tp.certificate_pem) == (
            "Pharmacy One",
            b"kbp-1",
            PEM,
        )
        assert repo.register_third_party("pharm-1", "Pharmacy One", b"kbp-1", PEM) == tp
    with pytest.raises(Conflict), platform.transaction() as repo:
        repo.register_third_party("pharm-1", "Pharmacy One", b"other-key", PEM)
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.register_third_party("pharm-3", "P3", b"k", "not a pem")


def test_third_party_signature_is_kept(platform):
    """The KBP signature is stored with the key; another signature is a Conflict."""
    _seed(platform)
    with platform.transaction() as repo:
        tp = repo.register_third_party("pharm-9", "P9", b"kbp-9", PEM, b"sig-9")
        assert repo.get_third_party("pharm-9").hpke_signature == b"sig-9" == tp.hpke_signature
        assert repo.get_third_party("pharm-1").hpke_signature == b""
    with pytest.raises(Conflict), platform.transaction() as repo:
        repo.register_third_party("pharm-9", "P9", b"kbp-9", PEM, b"other")


def test_shares_are_recorded_and_delivered(platform, clock):
    """add_share records an undelivered share; mark_delivered flips it, idempotently."""
    _seed(platform)
    with platform.transaction() as repo:
        share = repo.add_share(
            "s-1",
            his_id="his-a",
            p_id="rx-1",
            user_id="u1",
            b_id="pharm-1",
            kind="hpke",
            kub_version=1,
        )
    assert share.kind is ShareKind.HPKE
    assert not share.delivered
    assert share.created_at == clock.now
    with platform.transaction() as repo:
        assert repo.mark_delivered("s-1").delivered
        assert repo.mark_delivered("s-1").delivered
        repo.add_share(
            "s-0",
            his_id="his-a",
            p_id="rx-1",
            user_id="u1",
            b_id="pharm-1",
            kind=ShareKind.KUB,
            kub_version=2,
        )
        listed = repo.shares_of_record("his-a", "rx-1")
    assert [(s.share_id, s.kind, s.kub_version) for s in listed] == [
        ("s-0", ShareKind.KUB, 2),
        ("s-1", ShareKind.HPKE, 1),
    ]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"p_id": "rx-404"}, NotFound),
        ({"user_id": "ghost"}, NotFound),
        ({"b_id": "pharm-404"}, NotFound),
        ({"kind": "rsa"}, InvalidInput),
        ({"kub_version": 0}, InvalidInput),
        ({"kub_version": True}, InvalidInput),
    ],
)
def test_add_share_checks_its_references(platform, change, error):
    """A share needs a known record, account and third party, a valid kind and version."""
    _seed(platform)
    args = {
        "his_id": "his-a",
        "p_id": "rx-1",
        "user_id": "u1",
        "b_id": "pharm-1",
        "kind": "kub",
        "kub_version": 1,
    }
    with pytest.raises(error), platform.transaction() as repo:
        repo.add_share("s-1", **(args | change))


def test_share_id_is_unique(platform):
    """Re-using a share id is a Conflict."""
    _seed(platform)
    args = {
        "his_id": "his-a",
        "p_id": "rx-1",
        "user_id": "u1",
        "b_id": "pharm-1",
        "kind": "kub",
        "kub_version": 1,
    }
    with platform.transaction() as repo:
        repo.add_share("s-1", **args)
    with pytest.raises(Conflict), platform.transaction() as repo:
        repo.add_share("s-1", **args)


def test_dispense_claim_life_cycle(platform, clock):
    """open → claimed → completed, version counting each transition; completed is final."""
    _seed(platform)
    with platform.transaction() as repo:
        opened = repo.open_dispense("his-a", "rx-1")
    assert (opened.state, opened.claimed_by, opened.version) == (DispenseState.OPEN, None, 1)
    clock.advance(timedelta(seconds=1))
    with platform.transaction() as repo:
        claimed = repo.claim("his-a", "rx-1", "pharm-1")
    assert (claimed.state, claimed.claimed_by, claimed.version) == (
        DispenseState.CLAIMED,
        "pharm-1",
        2,
    )
    assert claimed.updated_at == clock.now
    with platform.transaction() as repo:
        done = repo.complete("his-a", "rx-1", "pharm-1")
    assert (done.state, done.claimed_by, done.version) == (DispenseState.COMPLETED, "pharm-1", 3)
    for op in DISPENSE_TRANSITIONS:
        with pytest.raises(Conflict), platform.transaction() as repo:
            getattr(repo, op)("his-a", "rx-1", "pharm-1")
    with platform.transaction() as repo:
        assert repo.open_dispense("his-a", "rx-1") == done


def test_second_claim_is_a_conflict(platform):
    """Once claimed, another claim (by anyone) raises Conflict and changes nothing."""
    _seed(platform)
    with platform.transaction() as repo:
        repo.open_dispense("his-a", "rx-1")
        claimed = repo.claim("his-a", "rx-1", "pharm-1")
    for b_id in ("pharm-2", "pharm-1"):
        with pytest.raises(Conflict), platform.transaction() as repo:
            repo.claim("his-a", "rx-1", b_id)
    with platform.transaction() as repo:
        assert repo.get_dispense("his-a", "rx-1") == claimed


def test_only_the_claimant_may_complete_or_release(platform):
    """complete and release by a third party that does not hold the claim are Conflicts."""
    _seed(platform)
    with platform.transaction() as repo:
        repo.open_dispense("his-a", "rx-1")
        repo.claim("his-a", "rx-1", "pharm-1")
    for op in ("complete", "release"):
        with pytest.raises(Conflict), platform.transaction() as repo:
            getattr(repo, op)("his-a", "rx-1", "pharm-2")


def test_release_reopens_the_claim(platform):
    """A released claim is open again and can be claimed by another third party."""
    _seed(platform)
    with platform.transaction() as repo:
        repo.open_dispense("his-a", "rx-1")
        repo.claim("his-a", "rx-1", "pharm-1")
        released = repo.release("his-a", "rx-1", "pharm-1")
        assert (released.state, released.claimed_by, released.version) == (
            DispenseState.OPEN,
            None,
            3,
        )
        assert repo.claim("his-a", "rx-1", "pharm-2").claimed_by == "pharm-2"


def test_claim_needs_an_opened_record_and_known_third_party(platform):
    """Claiming an unopened record or as an unknown third party raises NotFound."""
    _seed(platform)
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.claim("his-a", "rx-1", "pharm-1")
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.open_dispense("his-a", "rx-404")
    with platform.transaction() as repo:
        repo.open_dispense("his-a", "rx-1")
    with pytest.raises(NotFound), platform.transaction() as repo:
        repo.claim("his-a", "rx-1", "pharm-404")


def test_rate_limit_counts_within_a_fixed_window(platform, clock):
    """hit counts up to the limit, then RateLimited with retry_after; a new window resets."""
    window = timedelta(seconds=60)
    with platform.transaction() as repo:
        assert [repo.hit("bind:u1", 3, window) for _ in range(3)] == [1, 2, 3]
    clock.advance(timedelta(seconds=20))
    with pytest.raises(RateLimited) as caught, platform.transaction() as repo:
        repo.hit("bind:u1", 3, window)
    assert caught.value.extensions["retry_after"] == 40
    with platform.transaction() as repo:
        assert repo.hit("bind:u2", 3, window) == 1
    clock.advance(timedelta(seconds=40))
    with platform.transaction() as repo:
        assert repo.hit("bind:u1", 3, window) == 1


def test_refused_hits_are_not_counted(platform, clock):
    """A hit refused with RateLimited does not count, even if the caller swallows it."""
    window = timedelta(seconds=10)
    with platform.transaction() as repo:
        repo.hit("b", 1, window)
        for _ in range(3):
            with pytest.raises(RateLimited):
                repo.hit("b", 1, window)
    clock.advance(window)
    with platform.transaction() as repo:
        assert repo.hit("b", 2, window) == 1


@pytest.mark.parametrize(("limit", "window"), [(0, 10), (1, 0), (1, -5)])
def test_rate_limit_arguments_are_checked(platform, limit, window):
    """A limit below 1 or a non-positive window is InvalidInput."""
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.hit("b", limit, timedelta(seconds=window))


def test_event_log_appends_and_filters(platform, clock):
    """Events get increasing seq numbers, keep their detail and filter by account and seq."""
    with platform.transaction() as repo:
        e1 = repo.log_event("bind", "u1", {"his_id": "his-a", "ok": True})
        clock.advance(timedelta(seconds=1))
        e2 = repo.log_event("fetch", "u2", {"count": 2, "ratio": 0.5, "note": None})
        e3 = repo.log_event("startup", None, {})
    assert e1.seq < e2.seq < e3.seq
    with platform.transaction() as repo:
        everything = repo.events()
        assert everything == [e1, e2, e3]
        assert repo.events(user_id="u2") == [e2]
        assert repo.events(after=e1.seq, limit=1) == [e2]
    assert everything[1].detail == {"count": 2, "ratio": 0.5, "note": None}
    assert everything[1].at == clock.now
    assert everything[0].at.tzinfo is UTC


@pytest.mark.parametrize(
    "detail",
    [{"nested": {"a": 1}}, {"list": [1, 2]}, {1: "x"}, {"big": "x" * 5000}, {"nan": float("nan")}],
)
def test_event_detail_must_be_flat_scalars(platform, detail):
    """Event detail is a small flat map of scalars; anything else is InvalidInput."""
    with pytest.raises(InvalidInput), platform.transaction() as repo:
        repo.log_event("bind", "u1", detail)


def test_failed_transaction_leaves_no_partial_state(platform):
    """An exception inside transaction() undoes every write made in it."""
    _seed(platform)

    def write_then_fail() -> None:
        with platform.transaction() as repo:
            repo.create_account("u3")
            repo.bind("u3", "his-a", "pat-3")
            repo.store_sealed("his-a", "rx-1", b"ct")
            repo.open_dispense("his-a", "rx-1")
            repo.log_event("bind", "u3", {})
            raise RuntimeError("crypto check failed after the writes")

    with pytest.raises(RuntimeError):
        write_then_fail()
    with platform.transaction() as repo:
        with pytest.raises(NotFound):
            repo.get_account("u3")
        with pytest.raises(NotFound):
            repo.get_binding("u3", "his-a")
        with pytest.raises(NotFound):
            repo.get_dispense("his-a", "rx-1")
        assert repo.get_record("his-a", "rx-1").sealed is None
        assert repo.events() == []


def test_caught_repository_error_leaves_earlier_writes_usable(platform):
    """A Conflict caught inside a transaction does not poison it: earlier writes commit."""
    _seed(platform)
    with platform.transaction() as repo:
        repo.bind("u1", "his-a", "pat-1")
        with pytest.raises(Conflict):
            repo.bind("u2", "his-a", "pat-1")
        repo.bind("u2", "his-a", "pat-2")
    with platform.transaction() as repo:
        assert repo.get_binding("u2", "his-a").patient_id == "pat-2"
