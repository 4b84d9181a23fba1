"""PlatformCore: the four operations, dispensing and their refusals, on memory and SQLite."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from platform_flows import (
    BODY,
    announce,
    checked_bind,
    delivery,
    fetch,
    offer,
    open_fetched,
    setup_alice,
    share,
    snapshot,
)
from platform_world import HIS, World

from patientkey.authz.errors import InvalidToken
from patientkey.crypto import SealedRecord, SymmetricRecipient, add_recipient, unwrap_dek
from patientkey.crypto.ratchet import (
    RotationContext,
    rotation_commit,
    verify_rotation_ack,
    wrap_rotation_key,
)
from patientkey.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PeerUnavailable,
    RateLimited,
)
from patientkey.platform.core import NOT_YOURS, BindLimits
from patientkey.protocol.messages import (
    DispenseRequest,
    FetchRequest,
    ListRequest,
    RecordsAnnounce,
    RotateCommit,
    RotatePrepare,
    ShareRequest,
)


def _dispense(world: World, b_id: str, action: str, p_id: str = "rx-1", user: str = "u-alice"):
    token = world.tokens.get((b_id, user))
    return world.core.dispense(
        b_id,
        DispenseRequest(b_id=b_id, his_id=HIS, p_id=p_id, action=action, access_token=token),
    )


# ── bind ─────────────────────────────────────────────────────────────────────


def test_bind_stores_binding_after_the_hospital_accepts(world):
    """A correct proof binds (User_ID, HIS_ID) → Patient_ID and the reply checks at the wallet."""
    alice = setup_alice(world, bind=False)
    checked_bind(world, alice, "pat-alice")
    with world.store.transaction() as repo:
        assert repo.get_binding("u-alice", HIS).patient_id == "pat-alice"
        kinds = [e.kind for e in repo.events(user_id="u-alice")]
    assert kinds[-2:] == ["bind.attempt", "bind"]


def test_wrong_proof_is_403_and_binds_nothing(world):
    """A proof under a wrong KUH is refused by the HIS (403 passes through); no binding."""
    alice = setup_alice(world, bind=False)
    request = world.bind_request(alice, "pat-alice", kuh=os.urandom(32))
    with pytest.raises(Forbidden):
        world.core.bind("u-alice", request)
    with pytest.raises(NotFound), world.store.transaction() as repo:
        repo.get_binding("u-alice", HIS)
    with world.store.transaction() as repo:
        assert [e.kind for e in repo.events(user_id="u-alice")][-1] == "bind.refused"


def test_bind_user_id_must_be_the_caller(world):
    """user_id other than the certificate's name is 403 before anything is counted or asked."""
    alice = setup_alice(world, bind=False)
    world.wallet("u-bob")
    before = snapshot(world.store)
    with pytest.raises(Forbidden):
        world.core.bind("u-bob", world.bind_request(alice, "pat-alice"))
    assert snapshot(world.store) == before
    assert world.hospital.calls["bind"] == 0


def test_bind_refuses_hospitals_and_third_parties_as_callers(world):
    """Only wallets bind; a hospital or pharmacy using its own name as user_id gets 403."""
    alice = setup_alice(world, bind=False)
    for caller in (HIS, "pharmacy-1"):
        with pytest.raises(Forbidden):
            world.core.bind(caller, world.bind_request(alice, "pat-alice", user=caller))


def test_bind_rate_limits_per_patient(store, pki):
    """Past the per-patient limit even a correct proof is 429, and wrong proofs never bind."""
    world = World(store, pki, limits=BindLimits(per_patient=3, per_user=100))
    alice = setup_alice(world, bind=False)
    for _ in range(3):
        with pytest.raises(Forbidden):
            world.core.bind("u-alice", world.bind_request(alice, "pat-alice", kuh=os.urandom(32)))
    with pytest.raises(RateLimited) as caught:
        world.core.bind("u-alice", world.bind_request(alice, "pat-alice"))
    assert caught.value.extensions["retry_after"] >= 1
    assert world.hospital.calls["bind"] == 3  # the 429 never reached the HIS
    with pytest.raises(NotFound), world.store.transaction() as repo:
        repo.get_binding("u-alice", HIS)


def test_bind_rate_limits_per_user(store, pki):
    """The per-user limit counts attempts across patients."""
    world = World(store, pki, limits=BindLimits(per_patient=100, per_user=2))
    alice = setup_alice(world, bind=False)
    for patient in ("pat-x", "pat-y"):
        with pytest.raises(Forbidden):
            world.core.bind("u-alice", world.bind_request(alice, patient))
    with pytest.raises(RateLimited):
        world.core.bind("u-alice", world.bind_request(alice, "pat-alice"))


def test_rate_limit_window_passes(store, pki):
    """BindLimits take a window; an invalid limit is refused at construction."""
    with pytest.raises(InvalidInput):
        BindLimits(per_patient=0)
    with pytest.raises(InvalidInput):
        BindLimits(window=timedelta(0))


def test_bind_of_a_patient_bound_to_another_account_is_409(world):
    """Bob proving Alice's KUH cannot take her binding: 409, her binding stays."""
    alice = setup_alice(world)
    bob = world.wallet("u-bob")
    bob.kuh = dict(alice.kuh)  # stolen enrollment code
    with pytest.raises(Conflict):
        world.core.bind("u-bob", world.bind_request(bob, "pat-alice"))
    with world.store.transaction() as repo:
        assert repo.get_binding("u-alice", HIS).patient_id == "pat-alice"
        assert repo.bindings_of("u-bob") == []


def test_bind_needs_account_and_known_hospital(world):
    """No account (never charged) is 404; an unknown HIS_ID is 404 before anything counts."""
    alice = setup_alice(world, bind=False)
    with pytest.raises(NotFound):
        world.core.bind("u-bob", world.bind_request(alice, "pat-alice", user="u-bob"))
    request = world.bind_request(alice, "pat-alice").model_copy(update={"his_id": "hospital-9"})
    with pytest.raises(NotFound):
        world.core.bind("u-alice", request)


def test_bind_is_idempotent(world):
    """Binding the same patient again (a new nonce and proof) succeeds and changes nothing."""
    alice = setup_alice(world)
    checked_bind(world, alice, "pat-alice")
    with world.store.transaction() as repo:
        assert len(repo.bindings_of("u-alice")) == 1


# ── announce and list ────────────────────────────────────────────────────────


def test_only_hospitals_announce(world):
    """Records are announced by a hospital (its own HIS_ID); wallets and pharmacies get 403."""
    setup_alice(world)
    message = RecordsAnnounce.model_validate(
        {"patient_id": "pat-alice", "records": [{"p_id": "rx-7", "record_type": "prescription"}]}
    )
    for caller in ("u-alice", "pharmacy-1"):
        with pytest.raises(Forbidden):
            world.core.announce(caller, message)


def test_conflicting_announce_changes_nothing(world):
    """An announce naming a known P_ID with another patient is 409 and adds none of its records."""
    setup_alice(world)
    before = snapshot(world.store)
    with pytest.raises(Conflict):
        announce(world, "pat-bob", ("rx-new", "prescription"), ("rx-1", "prescription"))
    assert snapshot(world.store) == before


def test_list_shows_the_callers_records(world):
    """The list covers the caller's bindings, with fetch, dispense and share state."""
    alice = setup_alice(world)
    announce(world, "pat-bob", ("rx-bob", "prescription"))
    world.register()
    fetch(world, alice, "rep-1")
    share(world, alice, "rx-1", "pharmacy-1")
    listed = world.core.list_records("u-alice", ListRequest(user_id="u-alice")).records
    assert [(r.p_id, r.record_type, r.fetched, r.dispense, r.shared_with) for r in listed] == [
        ("rep-1", "report", True, None, []),
        ("rx-1", "prescription", True, "open", ["pharmacy-1"]),
    ]
    with pytest.raises(Forbidden):
        world.core.list_records("u-bob", ListRequest(user_id="u-alice"))


# ── fetch ────────────────────────────────────────────────────────────────────


def test_fetch_asks_the_hospital_once(world):
    """The first fetch gets the sealed record from the HIS and keeps it; the second never asks."""
    alice = setup_alice(world)
    first = fetch(world, alice, "rx-1")
    assert world.hospital.calls["record"] == 1
    second = fetch(world, alice, "rx-1")
    assert second == first
    assert world.hospital.calls["record"] == 1
    assert open_fetched(alice, second) == BODY
    with world.store.transaction() as repo:
        assert repo.get_record(HIS, "rx-1").sealed == first


@pytest.mark.parametrize(
    ("user", "p_id"),
    [
        ("u-alice", "rx-bob"),  # another patient's record
        ("u-alice", "rx-absent"),  # never announced
        ("u-bob", "rx-1"),  # Bob has no binding at this HIS
    ],
)
def test_fetch_not_yours_and_absent_are_the_same_404(world, user, p_id):
    """Another patient's record, an unknown one and a missing binding all answer one 404."""
    setup_alice(world)
    world.wallet("u-bob")
    world.hospital.add_record("pat-bob", "rx-bob", BODY)
    announce(world, "pat-bob", ("rx-bob", "prescription"))
    before = snapshot(world.store)
    with pytest.raises(NotFound) as caught:
        world.core.fetch(user, FetchRequest(user_id=user, his_id=HIS, p_id=p_id))
    assert caught.value.detail == NOT_YOURS
    assert world.hospital.calls["record"] == 0
    assert snapshot(world.store) == before


def test_fetch_refuses_a_record_sealed_for_another_owner(world):
    """A HIS reply sealed for another owner is 502 and nothing is stored."""
    alice = setup_alice(world)
    world.hospital.seal_owner = f"{HIS}/pat-mallory"
    with pytest.raises(PeerUnavailable):
        fetch(world, alice, "rx-1")
    with world.store.transaction() as repo:
        assert repo.get_record(HIS, "rx-1").sealed is None


def test_fetch_user_id_must_be_the_caller(world):
    """Fetching in another account's name is 403."""
    setup_alice(world)
    world.wallet("u-bob")
    with pytest.raises(Forbidden):
        world.core.fetch("u-bob", FetchRequest(user_id="u-alice", his_id=HIS, p_id="rx-1"))


# ── rotate ───────────────────────────────────────────────────────────────────


def test_rotation_is_forwarded_with_the_patient_id(world):
    """Prepare and commit reach the HIS with the bound Patient_ID; both ends move to v2."""
    alice = setup_alice(world)
    new, nonce = os.urandom(32), os.urandom(32)
    ctx = RotationContext(
        patient_id="pat-alice",
        his_id=HIS,
        user_id="u-alice",
        current_version=1,
        new_version=2,
        nonce=nonce,
    )
    prepare = RotatePrepare(
        user_id="u-alice",
        his_id=HIS,
        current_version=1,
        new_version=2,
        wrapped_key=wrap_rotation_key(alice.kuh[1], new, ctx),
        nonce=nonce,
    )
    ack = world.core.rotate_prepare("u-alice", prepare)
    verify_rotation_ack(new, ack.ack, ctx)
    commit = RotateCommit(
        user_id="u-alice", his_id=HIS, new_version=2, nonce=nonce, proof=rotation_commit(new, ctx)
    )
    world.core.rotate_commit("u-alice", commit)
    assert world.hospital.patients["pat-alice"].current == 2
    alice.kuh[2] = new
    # Records sealed after the rotation are for KUH v2; the bind proof under v2 works.
    assert open_fetched(alice, fetch(world, alice, "rx-1")) == BODY
    checked_bind(world, alice, "pat-alice")


def test_rotation_needs_a_binding(world):
    """Rotating at a HIS the account is not bound to is 404 and the HIS is never asked."""
    alice = setup_alice(world, bind=False)
    prepare = RotatePrepare(
        user_id="u-alice",
        his_id=HIS,
        current_version=1,
        new_version=2,
        wrapped_key=os.urandom(40),
        nonce=os.urandom(32),
    )
    with pytest.raises(NotFound):
        world.core.rotate_prepare("u-alice", prepare)
    assert world.hospital.calls["rotate.prepare"] == 0
    assert alice.kuh


# ── share ────────────────────────────────────────────────────────────────────


def test_share_first_by_hpke_then_by_kub(world):
    """The first share goes by HPKE (KUB_1), the next under KUB_1 (KUB_2); both are read."""
    alice = setup_alice(world)
    world.register()
    first = share(world, alice, "rx-1", "pharmacy-1")
    assert (first.accepted, first.kub_version) == (True, 1)
    second = share(world, alice, "rep-1", "pharmacy-1")
    assert (second.accepted, second.kub_version) == (True, 2)
    pharmacy = world.pharmacies["pharmacy-1"]
    assert pharmacy.received[(HIS, "rx-1")] == BODY
    assert set(pharmacy.kubs["u-alice"]) == {1, 2}
    with world.store.transaction() as repo:
        shares = repo.shares_of_record(HIS, "rx-1")
        assert [(s.b_id, s.kind, s.kub_version, s.delivered) for s in shares] == [
            ("pharmacy-1", "hpke", 1, True)
        ]
        assert repo.get_dispense(HIS, "rx-1").state == "open"
        with pytest.raises(NotFound):
            repo.get_dispense(HIS, "rep-1")  # reports are not dispensed


def test_share_offer_fetches_from_the_hospital_first(world):
    """An offer for a record the platform never fetched asks the HIS once and keeps it."""
    alice = setup_alice(world)
    world.register()
    offered = offer(world, alice, "rx-1", "pharmacy-1")
    assert world.hospital.calls["record"] == 1
    assert offered.certificate_pem == world.pharmacies["pharmacy-1"].certificate_pem
    assert offered.hpke_public == world.pharmacies["pharmacy-1"].keypair.public_key.to_bytes()
    assert fetch(world, alice, "rx-1") == offered.sealed
    assert world.hospital.calls["record"] == 1


def test_share_refusals(world):
    """Unregistered third party, another's record, user_id ≠ caller: refused, nothing changes."""
    alice = setup_alice(world)
    world.wallet("u-bob")
    world.register("pharmacy-1")
    before = snapshot(world.store)
    cases = [
        (
            "u-alice",
            ShareRequest(user_id="u-alice", his_id=HIS, p_id="rx-1", b_id="pharmacy-2"),
            NotFound,
        ),
        (
            "u-alice",
            ShareRequest(user_id="u-alice", his_id=HIS, p_id="rx-1", b_id="pharmacy-9"),
            NotFound,
        ),
        (
            "u-bob",
            ShareRequest(user_id="u-bob", his_id=HIS, p_id="rx-1", b_id="pharmacy-1"),
            NotFound,
        ),
        (
            "u-bob",
            ShareRequest(user_id="u-alice", his_id=HIS, p_id="rx-1", b_id="pharmacy-1"),
            Forbidden,
        ),
    ]
    for caller, request, error in cases:
        with pytest.raises(error):
            world.core.share_offer(caller, request)
    assert snapshot(world.store) == before
    assert world.hospital.calls["record"] == 0
    assert alice.kuh


def test_share_without_a_grant_is_forbidden_before_the_hospital_is_asked(world):
    """The share gate: no live grant to the third party, no offer, nothing stored."""
    alice = setup_alice(world)
    world.register()
    before = snapshot(world.store)
    with pytest.raises(Forbidden):
        offer(world, alice, "rx-1", "pharmacy-1", grant=False)
    assert snapshot(world.store) == before
    assert world.hospital.calls["record"] == 0


def test_dispense_without_an_access_token_is_refused(world):
    """The token gate: a shared prescription is still not claimed without a token."""
    alice = setup_alice(world)
    world.register()
    share(world, alice, "rx-1", "pharmacy-1")
    before = snapshot(world.store)
    request = DispenseRequest(b_id="pharmacy-1", his_id=HIS, p_id="rx-1", action="claim")
    with pytest.raises(InvalidToken):
        world.core.dispense("pharmacy-1", request)
    assert snapshot(world.store) == before


def test_kub_unknown_receipt_records_no_share(world):
    """A kub-unknown receipt is relayed and records no share; a fresh HPKE share then works."""
    alice = setup_alice(world)
    world.register()
    share(world, alice, "rx-1", "pharmacy-1")
    world.pharmacies["pharmacy-1"].kubs.clear()
    receipt = share(world, alice, "rep-1", "pharmacy-1")
    assert (receipt.accepted, receipt.reason) == (False, "kub-unknown")
    with world.store.transaction() as repo:
        assert repo.shares_of_record(HIS, "rep-1") == []
        assert repo.events(user_id="u-alice")[-1].kind == "share.refused"
    again = share(world, alice, "rep-1", "pharmacy-1", force_hpke=True)
    assert (again.accepted, again.kub_version) == (True, 1)


def _tampered_deliveries(world, alice):
    """Deliveries whose record is not 'the stored record plus one entry for this B'."""
    good, _ = delivery(alice, offer(world, alice, "rx-1", "pharmacy-1"))
    stored = SealedRecord.from_bytes(fetch(world, alice, "rx-1"))
    record = SealedRecord.from_bytes(good.sealed)
    dek = unwrap_dek(stored, kid=f"kuh:{HIS}", key=alice.kuh[1])

    def replace(**fields):
        values = {
            "protected": record.protected,
            "iv": record.iv,
            "ciphertext": record.ciphertext,
            "tag": record.tag,
            "recipients": record.recipients,
            **fields,
        }
        return good.model_copy(update={"sealed": SealedRecord(**values).to_bytes()})

    flipped = bytes([record.ciphertext[0] ^ 1]) + record.ciphertext[1:]
    two_more = add_recipient(record, dek, SymmetricRecipient("kub:pharmacy-1", 5, os.urandom(32)))
    for_other = add_recipient(stored, dek, SymmetricRecipient("kub:pharmacy-2", 1, os.urandom(32)))
    kub_entry = add_recipient(stored, dek, SymmetricRecipient("kub:pharmacy-1", 1, os.urandom(32)))
    return {
        "ciphertext": replace(ciphertext=flipped),
        "iv": replace(iv=os.urandom(12)),
        "tag": replace(tag=os.urandom(16)),
        "no entry added": replace(recipients=stored.recipients),
        "stored entry dropped": replace(recipients=record.recipients[1:]),
        "two entries added": good.model_copy(update={"sealed": two_more.to_bytes()}),
        "entry for another third party": good.model_copy(update={"sealed": for_other.to_bytes()}),
        "kub entry with kind=hpke": good.model_copy(update={"sealed": kub_entry.to_bytes()}),
        "not a record": good.model_copy(update={"sealed": b"{}"}),
        "kind=kub with version 0": good.model_copy(update={"kind": "kub"}),
        "kind=hpke with a version": good.model_copy(update={"kub_version": 3}),
    }


def test_delivered_record_must_be_the_stored_one_plus_one_entry(world):
    """Any other body or recipient change is 400: nothing relayed, nothing recorded."""
    alice = setup_alice(world)
    world.register()
    cases = _tampered_deliveries(world, alice)
    before = snapshot(world.store)
    for name, message in cases.items():
        with pytest.raises(InvalidInput):
            world.core.share_deliver("u-alice", message)
        assert snapshot(world.store) == before, name
    assert world.pharmacies["pharmacy-1"].calls["receive"] == 0


def test_deliver_before_offer_and_for_another_account(world):
    """A delivery for a record never fetched is 409; in another account's name 403."""
    alice = setup_alice(world)
    world.register()
    good, _ = delivery(alice, offer(world, alice, "rx-1", "pharmacy-1"))
    early = good.model_copy(update={"p_id": "rep-1"})
    with pytest.raises(Conflict):
        world.core.share_deliver("u-alice", early)
    world.wallet("u-bob")
    with pytest.raises(Forbidden):
        world.core.share_deliver("u-bob", good)


# ── dispense ─────────────────────────────────────────────────────────────────


def test_dispense_claim_complete_and_finality(world):
    """Claim is exclusive, only the claimant completes, and completed is final for shares too."""
    alice = setup_alice(world)
    world.register()
    share(world, alice, "rx-1", "pharmacy-1")
    share(world, alice, "rx-1", "pharmacy-2")
    assert _dispense(world, "pharmacy-1", "claim").state == "claimed"
    with pytest.raises(Conflict):
        _dispense(world, "pharmacy-2", "claim")
    with pytest.raises(Conflict):
        _dispense(world, "pharmacy-2", "complete")
    done = _dispense(world, "pharmacy-1", "complete")
    assert (done.state, done.claimed_by) == ("completed", "pharmacy-1")
    for action in ("claim", "release", "complete"):
        with pytest.raises(Conflict):
            _dispense(world, "pharmacy-1", action)
    with pytest.raises(Conflict):
        offer(world, alice, "rx-1", "pharmacy-2")
    world.grant("u-alice", "pharmacy-2", "rep-1")
    message, _ = delivery(
        alice,
        world.core.share_offer(
            "u-alice", ShareRequest(user_id="u-alice", his_id=HIS, p_id="rep-1", b_id="pharmacy-2")
        ),
    )
    with pytest.raises(Conflict):
        world.core.share_deliver("u-alice", message.model_copy(update={"p_id": "rx-1"}))
    with world.store.transaction() as repo:
        kinds = [e.kind for e in repo.events(user_id="u-alice")]
    assert "dispense.claim" in kinds
    assert "dispense.complete" in kinds


def test_dispense_release_reopens(world):
    """The claimant may release; then another pharmacy it was shared with may claim."""
    alice = setup_alice(world)
    world.register()
    share(world, alice, "rx-1", "pharmacy-1")
    share(world, alice, "rx-1", "pharmacy-2")
    _dispense(world, "pharmacy-1", "claim")
    assert _dispense(world, "pharmacy-1", "release").state == "open"
    assert _dispense(world, "pharmacy-2", "claim").claimed_by == "pharmacy-2"


def test_dispense_only_by_third_parties_it_was_shared_with(world):
    """Not shared, unknown, a report, or in another's name: refused and nothing changes."""
    alice = setup_alice(world)
    world.register()
    share(world, alice, "rx-1", "pharmacy-1")
    share(world, alice, "rep-1", "pharmacy-1")
    before = snapshot(world.store)
    with pytest.raises(NotFound):
        _dispense(world, "pharmacy-2", "claim")  # never shared with pharmacy-2
    with pytest.raises(NotFound):
        _dispense(world, "pharmacy-1", "claim", p_id="rx-absent")
    with pytest.raises(NotFound):
        _dispense(world, "pharmacy-1", "claim", p_id="rep-1")  # a report
    with pytest.raises(Forbidden):
        world.core.dispense(
            "pharmacy-2",
            DispenseRequest(b_id="pharmacy-1", his_id=HIS, p_id="rx-1", action="claim"),
        )
    with pytest.raises(Forbidden):
        world.core.dispense(
            "u-alice", DispenseRequest(b_id="u-alice", his_id=HIS, p_id="rx-1", action="claim")
        )
    assert snapshot(world.store) == before


# ── third-party registry ─────────────────────────────────────────────────────


def test_register_third_party_checks_its_export(world, tmp_path):
    """Key length, CN = b_id, issuer = our CA and the certificate key's KBP signature: checked."""
    from patientkey.pki import init_pki

    export = world.pharmacies["pharmacy-1"].export()
    other_ca = tmp_path / "other"
    init_pki(other_ca, ["pharmacy-1"])
    bad = [
        {**export, "b_id": "pharmacy-2"},
        {**export, "b_id": "not a name"},
        {**export, "hpke_public": export["hpke_public"][:-4]},
        {**export, "hpke_public": 7},
        {**export, "certificate_pem": "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----"},
        {**export, "certificate_pem": (other_ca / "pharmacy-1.pem").read_text()},
        {**export, "display_name": 3},
        {k: v for k, v in export.items() if k != "hpke_signature"},
        {
            **export,
            "hpke_signature": world.pharmacies["pharmacy-1"].export()["hpke_signature"][:-8],
        },
        {**export, "hpke_public": world.pharmacies["pharmacy-2"].export()["hpke_public"]},
    ]
    for data in bad:
        with pytest.raises(InvalidInput):
            world.core.register_third_party(data)
    with world.store.transaction() as repo:
        assert repo.counts()["third_parties"] == 0
    registered = world.core.register_third_party(export)
    assert registered.display_name == "pharmacy-1"
    assert world.core.register_third_party(export) == registered  # idempotent
