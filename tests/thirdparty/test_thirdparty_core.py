"""The third-party core: HPKE and KUB shares, the ratchet's restarts, refusals, dispensing."""

from __future__ import annotations

import contextlib
import os

import pytest
from pydantic import ValidationError
from thirdparty_helpers import HIS, USER, B, Wallet, fhir_body, hospital_record

from patientkey.crypto import SealedRecord, open_record
from patientkey.errors import (
    ConfigError,
    Conflict,
    CryptoError,
    InvalidInput,
    NotFound,
    PeerUnavailable,
)
from patientkey.fhir.records import load_record
from patientkey.protocol.messages import DispenseState, ShareRelay
from patientkey.storage.memory import thirdparty_store
from patientkey.storage.schema import ClaimState, KeyState
from patientkey.thirdparty.core import NOT_RECEIVED, ThirdPartyCore
from patientkey.thirdparty.settings import ThirdPartyKeys


def kub_states(core: ThirdPartyCore, user: str = USER) -> dict[int, KeyState]:
    out: dict[int, KeyState] = {}
    with core._store.transaction() as repo:
        for version in range(1, 12):
            with contextlib.suppress(NotFound):
                out[version] = repo.get_kub(user, version).state
    return out


def tamper(blob: bytes, member: str) -> bytes:
    """Flip one bit inside a base64url member of a sealed record."""
    record = SealedRecord.from_bytes(blob)
    value = bytearray(getattr(record, member))
    value[len(value) // 2] ^= 0x01
    fields = {
        "protected": record.protected,
        "iv": record.iv,
        "ciphertext": record.ciphertext,
        "tag": record.tag,
        "recipients": record.recipients,
    }
    fields[member] = bytes(value)
    return SealedRecord(**fields).to_bytes()


# --- op 4: receiving shares -------------------------------------------------------------


def test_first_share_by_hpke_is_accepted_and_readable(sql_core, db, wallet):
    """An HPKE share: accepted with KUB v1, the record decrypts, no key in clear in the DB."""
    record = hospital_record()
    relay, _, kub = wallet.share(record)
    receipt = sql_core.receive_share(relay)
    assert (receipt.b_id, receipt.p_id, receipt.accepted, receipt.kub_version) == (
        B,
        "p-1",
        True,
        1,
    )
    assert receipt.reason == "ok"
    opened = sql_core.show(HIS, "p-1")
    assert opened.record.canonical == load_record(fhir_body()).canonical
    assert (opened.info.user_id, opened.info.claim) == (USER, None)
    dump = db.dump_bytes()
    assert kub not in dump
    assert sql_core._storage_key not in dump
    assert load_record(fhir_body()).canonical not in dump


def test_kub_shares_ratchet_forward_and_keep_older_versions(memory_core, wallet):
    """Each KUB share stores KUB_{v+1} as current; the older versions stay, retired."""
    for n, p_id in enumerate(["p-1", "p-2", "p-3"], start=1):
        receipt = wallet.send(memory_core, hospital_record(p_id))
        assert (receipt.accepted, receipt.kub_version) == (True, n)
    assert kub_states(memory_core) == {
        1: KeyState.RETIRED,
        2: KeyState.RETIRED,
        3: KeyState.CURRENT,
    }
    assert [r.p_id for r in memory_core.received()] == ["p-1", "p-2", "p-3"]


def test_kub_share_under_an_unknown_version_is_kub_unknown(sql_core, db, wallet):
    """KUB_v not held: accepted=false, reason kub-unknown, the held version; nothing stored."""
    wallet.send(sql_core, hospital_record("p-1"))
    wallet.kubs[5], wallet.version = os.urandom(32), 5
    before = db.dump_bytes()
    relay, _, _ = wallet.share(hospital_record("p-2"))
    receipt = sql_core.receive_share(relay)
    assert (receipt.accepted, receipt.reason, receipt.kub_version) == (False, "kub-unknown", 1)
    assert db.dump_bytes() == before


def test_kub_share_without_any_kub_held_answers_version_zero(memory_core, keys):
    """A KUB share from an account the third party has no KUB for: kub-unknown, version 0."""
    stranger = Wallet(kbp=keys.hpke.public_key, kubs={1: os.urandom(32)}, version=1)
    relay, _, _ = stranger.share(hospital_record())
    receipt = memory_core.receive_share(relay)
    assert (receipt.accepted, receipt.reason, receipt.kub_version) == (False, "kub-unknown", 0)
    assert memory_core.received() == []


def test_a_kub_v_that_differs_from_the_one_held_is_kub_unknown(sql_core, db, wallet):
    """Both hold a "KUB_1" but not the same one: kub-unknown (so the wallet resets), no change."""
    wallet.send(sql_core, hospital_record("p-1"))
    wallet.kubs[1] = os.urandom(32)
    before = db.dump_bytes()
    relay, _, _ = wallet.share(hospital_record("p-2"))
    receipt = sql_core.receive_share(relay)
    assert (receipt.accepted, receipt.reason) == (False, "kub-unknown")
    assert db.dump_bytes() == before


def test_an_hpke_share_resets_the_ratchet(memory_core, wallet):
    """After kub-unknown the wallet shares by HPKE with a fresh KUB_1: older KUBs are dropped."""
    for p_id in ("p-1", "p-2", "p-3"):
        wallet.send(memory_core, hospital_record(p_id))
    assert wallet.version == 3
    fresh = Wallet(kbp=wallet.kbp)  # e.g. a restored wallet that lost its KUBs
    receipt = fresh.send(memory_core, hospital_record("p-4"))
    assert (receipt.accepted, receipt.kub_version) == (True, 1)
    assert kub_states(memory_core) == {1: KeyState.CURRENT}
    assert fresh.send(memory_core, hospital_record("p-5")).kub_version == 2
    stale = wallet.share(hospital_record("p-6"))[0]  # the old ratchet is gone for good
    assert memory_core.receive_share(stale).reason == "kub-unknown"
    assert memory_core.show(HIS, "p-1").record.record_type == "prescription"


def test_a_share_repeated_after_a_lost_receipt_replaces_the_next_kub(memory_core, wallet):
    """Receipt lost: the wallet shares again under KUB_v; KUB_{v+1} is replaced, both in step."""
    wallet.send(memory_core, hospital_record("p-1"))
    lost, _, _ = wallet.share(hospital_record("p-2"))
    assert memory_core.receive_share(lost).kub_version == 2  # the wallet never sees this
    assert wallet.version == 1
    receipt = wallet.send(memory_core, hospital_record("p-3"))
    assert (receipt.accepted, receipt.kub_version) == (True, 2)
    assert wallet.send(memory_core, hospital_record("p-4")).kub_version == 3


@pytest.mark.parametrize("member", ["ciphertext", "tag", "iv"])
def test_a_tampered_record_is_refused_and_nothing_is_stored(sql_core, db, wallet, member):
    """A body that does not authenticate: CryptoError, no record and no KUB stored."""
    wallet.send(sql_core, hospital_record("p-1"))
    relay, _, _ = wallet.share(hospital_record("p-2"))
    forged = relay.model_copy(update={"sealed": tamper(relay.sealed, member)})
    before = db.dump_bytes()
    with pytest.raises(CryptoError):
        sql_core.receive_share(forged)
    assert db.dump_bytes() == before


def test_a_tampered_hpke_share_is_refused(sql_core, db, wallet):
    """HPKE shares with a flipped body or next-KUB blob: CryptoError, nothing stored."""
    relay, _, _ = wallet.share(hospital_record())
    blob = bytearray(relay.next_kub)
    blob[-1] ^= 1
    before = db.dump_bytes()
    for forged in (
        relay.model_copy(update={"next_kub": bytes(blob)}),
        relay.model_copy(update={"sealed": tamper(relay.sealed, "ciphertext")}),
    ):
        with pytest.raises(CryptoError):
            sql_core.receive_share(forged)
    assert db.dump_bytes() == before


def test_a_next_kub_bound_to_another_record_is_refused(memory_core, wallet):
    """The next KUB is bound to (user, B, HIS, P_ID, version): moved to another share it fails."""
    wallet.send(memory_core, hospital_record("p-1"))
    first, _, _ = wallet.share(hospital_record("p-2"))
    second, _, _ = wallet.share(hospital_record("p-3"))
    with pytest.raises(CryptoError):
        memory_core.receive_share(second.model_copy(update={"next_kub": first.next_kub}))
    assert [r.p_id for r in memory_core.received()] == ["p-1"]


def test_a_share_for_another_third_party_is_refused(memory_core):
    """A record sealed for another B's HPKE key: CryptoError, nothing stored."""
    other = ThirdPartyKeys.generate()
    relay, _, _ = Wallet(kbp=other.hpke.public_key).share(hospital_record())
    with pytest.raises(CryptoError):
        memory_core.receive_share(relay)
    assert memory_core.received() == []


def test_a_record_that_is_not_fhir_is_refused(sql_core, db, wallet):
    """Authentic but not a FHIR record: InvalidInput, nothing stored."""
    relay, _, _ = wallet.share(hospital_record(body=b'{"resourceType": "Patient"}'))
    before = db.dump_bytes()
    with pytest.raises(InvalidInput):
        sql_core.receive_share(relay)
    assert db.dump_bytes() == before


def test_the_relay_must_name_the_sealed_record(memory_core, wallet):
    """A relay whose P_ID or HIS_ID is not the sealed record's is refused before any crypto."""
    relay, _, _ = wallet.share(hospital_record("p-1"))
    for change in ({"p_id": "p-2"}, {"his_id": "hospital-2"}):
        with pytest.raises(InvalidInput, match="not the record"):
            memory_core.receive_share(relay.model_copy(update=change))


def test_kind_and_version_must_agree(memory_core, wallet):
    """kind=hpke carries kub_version 0, kind=kub at least 1; a malformed record is refused."""
    relay, _, _ = wallet.share(hospital_record())
    with pytest.raises(InvalidInput):
        memory_core.receive_share(relay.model_copy(update={"kub_version": 3}))
    with pytest.raises(InvalidInput):
        memory_core.receive_share(relay.model_copy(update={"kind": "kub"}))
    with pytest.raises(InvalidInput):
        memory_core.receive_share(relay.model_copy(update={"sealed": b"{}"}))


def test_a_record_received_from_another_account_is_a_conflict(sql_core, db, keys):
    """The same record shared by another account: 409, and that account's KUB is not kept."""
    record = hospital_record()
    Wallet(kbp=keys.hpke.public_key, user="u-alice").send(sql_core, record)
    before = db.dump_bytes()
    relay, _, _ = Wallet(kbp=keys.hpke.public_key, user="u-mallory").share(record)
    with pytest.raises(Conflict):
        sql_core.receive_share(relay)
    assert db.dump_bytes() == before


def test_a_share_of_a_dispensed_prescription_is_not_accepted(memory_core, wallet):
    """Once this party completed the prescription, a new share is answered "completed"."""
    wallet.send(memory_core, hospital_record("p-1"))
    memory_core.dispense("claim", HIS, "p-1")
    memory_core.dispense("complete", HIS, "p-1")
    relay, _, _ = wallet.share(hospital_record("p-1"))
    receipt = memory_core.receive_share(relay)
    assert (receipt.accepted, receipt.reason, receipt.kub_version) == (False, "completed", 1)


def test_the_stored_copy_has_only_the_storage_recipient(sql_core, db, wallet):
    """The kept record opens with the storage key alone; body bytes are the shared ones."""
    relay, _, _ = wallet.share(hospital_record())
    sql_core.receive_share(relay)
    with sql_core._store.transaction() as repo:
        stored = SealedRecord.from_bytes(repo.get_received(HIS, "p-1").sealed)
    shared = SealedRecord.from_bytes(relay.sealed)
    assert [(r.kid, r.version) for r in stored.recipients] == [(f"store:{B}", 1)]
    assert (stored.protected, stored.ciphertext, stored.tag) == (
        shared.protected,
        shared.ciphertext,
        shared.tag,
    )
    body = open_record(stored, kid=f"store:{B}", key=sql_core._storage_key)
    assert load_record(body).record_type == "prescription"


def test_show_of_an_unknown_record_is_not_found(memory_core):
    """show() for a record never received: NotFound."""
    with pytest.raises(NotFound, match=NOT_RECEIVED):
        memory_core.show(HIS, "p-x")


# --- dispensing -------------------------------------------------------------------------


def test_claim_then_complete_follows_the_platform(memory_core, wallet, platform_port):
    """claim → claimed (by us), complete → completed; the local claim record follows."""
    wallet.send(memory_core, hospital_record("p-1"))
    state = memory_core.dispense("claim", HIS, "p-1")
    assert (state.state, state.claimed_by) == ("claimed", B)
    assert memory_core.received()[0].claim is ClaimState.CLAIMED
    memory_core.dispense("complete", HIS, "p-1")
    assert memory_core.received()[0].claim is ClaimState.COMPLETED
    assert [c.action for c in platform_port.calls] == ["claim", "complete"]
    with pytest.raises(Conflict):
        memory_core.dispense("claim", HIS, "p-1")
    assert len(platform_port.calls) == 2  # refused locally: completed is final


def test_release_and_claim_again(memory_core, wallet):
    """release reopens the prescription; claiming again goes pending → claimed."""
    wallet.send(memory_core, hospital_record("p-1"))
    memory_core.dispense("claim", HIS, "p-1")
    assert memory_core.dispense("release", HIS, "p-1").state == "open"
    assert memory_core.show(HIS, "p-1").info.claim is ClaimState.RELEASED
    memory_core.dispense("claim", HIS, "p-1")
    assert memory_core.show(HIS, "p-1").info.claim is ClaimState.CLAIMED


def test_a_claim_refused_by_the_platform_is_released_locally(memory_core, wallet, platform_port):
    """Another third party holds it: the platform's 409 is raised, the local claim released."""
    wallet.send(memory_core, hospital_record("p-1"))
    platform_port.answer = Conflict("prescription is claimed by another third party")
    with pytest.raises(Conflict):
        memory_core.dispense("claim", HIS, "p-1")
    assert memory_core.show(HIS, "p-1").info.claim is ClaimState.RELEASED


def test_an_unanswered_claim_stays_pending(memory_core, wallet, platform_port):
    """No answer from the platform: the claim is left pending and can be retried."""
    wallet.send(memory_core, hospital_record("p-1"))
    platform_port.answer = PeerUnavailable("platform unreachable")
    with pytest.raises(PeerUnavailable):
        memory_core.dispense("claim", HIS, "p-1")
    assert memory_core.show(HIS, "p-1").info.claim is ClaimState.PENDING
    platform_port.answer = None
    memory_core.dispense("claim", HIS, "p-1")
    assert memory_core.show(HIS, "p-1").info.claim is ClaimState.CLAIMED


def test_a_claim_answered_for_another_party_is_released(memory_core, wallet, platform_port):
    """If the platform reports the prescription claimed by someone else, ours is released."""
    wallet.send(memory_core, hospital_record("p-1"))
    platform_port.answer = DispenseState(
        his_id=HIS, p_id="p-1", state="claimed", claimed_by="pharmacy-2"
    )
    memory_core.dispense("claim", HIS, "p-1")
    assert memory_core.show(HIS, "p-1").info.claim is ClaimState.RELEASED


def test_an_answer_about_another_prescription_is_refused(memory_core, wallet, platform_port):
    """A DispenseState for another P_ID is a faulty peer: PeerUnavailable, claim left pending."""
    wallet.send(memory_core, hospital_record("p-1"))
    platform_port.answer = DispenseState(his_id=HIS, p_id="p-9", state="claimed", claimed_by=B)
    with pytest.raises(PeerUnavailable):
        memory_core.dispense("claim", HIS, "p-1")
    assert memory_core.show(HIS, "p-1").info.claim is ClaimState.PENDING


def test_dispensing_needs_a_received_record_and_a_platform(memory_core, keys, platform_port):
    """No such received record: NotFound without calling; no platform port: ConfigError."""
    with pytest.raises(NotFound):
        memory_core.dispense("claim", HIS, "p-1")
    assert platform_port.calls == []
    with pytest.raises(ConfigError):
        ThirdPartyCore(B, thirdparty_store(), keys).dispense("claim", HIS, "p-1")


def test_the_core_refuses_an_invalid_b_id(keys):
    """A B_ID that is not a party name is a configuration error."""
    with pytest.raises(ConfigError):
        ThirdPartyCore("not a name", thirdparty_store(), keys)


def test_relays_are_checked_messages(wallet):
    """A ShareRelay refuses unknown kinds and negative versions on creation (400 at the edge)."""
    relay, _, _ = wallet.share(hospital_record())
    data = relay.model_dump(mode="json")
    for bad in ({"kind": "plain"}, {"kub_version": -1}, {"p_id": "../x"}):
        with pytest.raises(ValidationError):
            ShareRelay.model_validate({**data, **bad})
