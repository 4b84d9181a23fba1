"""The wallet's operations against an in-process platform, hospital and pharmacy (real crypto)."""

from __future__ import annotations

from pathlib import Path

import pytest
from wallet_fakes import HIS, PATIENT, REPORT, TP, USER, World

from patientkey.crypto import SealedRecord
from patientkey.errors import (
    Conflict,
    CryptoError,
    Forbidden,
    InvalidInput,
    NotFound,
    PeerUnavailable,
)
from patientkey.fhir.records import PrescriptionSummary, ReportSummary, load_record
from patientkey.protocol.states import Rotation

EREZEPT = Path("/work/shared/data/erezept")


def _body_parts(sealed: bytes) -> tuple[str, bytes, bytes, bytes]:
    record = SealedRecord.from_bytes(sealed)
    return record.protected, record.iv, record.ciphertext, record.tag


def _kuh_versions(sealed: bytes) -> set[int | None]:
    return {e.version for e in SealedRecord.from_bytes(sealed).entries_for(f"kuh:{HIS}")}


# --------------------------------------------------------------------------- bind


def test_bind_records_the_binding_after_mutual_authentication(world: World) -> None:
    """A bind whose reply proves the hospital's KUH is recorded, in memory and on disk."""
    world.init()
    wallet = world.open()
    wallet.charge(world.pool_file(10))
    wallet.enroll(world.code)
    assert world.on_disk().hospitals[HIS].bound is False
    wallet.bind(HIS)
    assert world.platform.bindings[(USER, HIS)] == PATIENT
    assert world.on_disk().hospitals[HIS].bound is True
    assert wallet.status().hospitals[0].bound is True


def test_bind_reply_failing_mutual_auth_is_refused(world: World) -> None:
    """A bind reply that is not {f(n)}KUH raises CryptoError and no binding is recorded."""
    world.init()
    wallet = world.open()
    wallet.charge(world.pool_file(10))
    wallet.enroll(world.code)
    world.platform.faults.add("forge-bind-reply")
    with pytest.raises(CryptoError):
        wallet.bind(HIS)
    assert world.on_disk().hospitals[HIS].bound is False
    assert wallet.status().hospitals[0].bound is False


def test_bind_with_a_wrong_key_is_forbidden(world: World) -> None:
    """A proof under a KUH the hospital does not hold is refused (403) and nothing is bound."""
    world.hospital.patients[PATIENT].keys = {1: b"\x01" * 32}  # the wallet's code is stale
    world.init()
    wallet = world.open()
    wallet.charge(world.pool_file(10))
    wallet.enroll(world.code)
    with pytest.raises(Forbidden):
        wallet.bind(HIS)
    assert world.on_disk().hospitals[HIS].bound is False


def test_bind_at_an_unknown_hospital_is_not_found(world: World) -> None:
    """Binding needs an enrollment first."""
    world.init()
    wallet = world.open()
    with pytest.raises(NotFound):
        wallet.bind("his-unknown")


# --------------------------------------------------------------------------- fetch / show


def test_fetch_and_show_a_synthetic_prescription(
    world: World, synthetic_bodies: list[bytes]
) -> None:
    """A fetched record is cached as ciphertext and shows the bundle's medication and dosage."""
    body = synthetic_bodies[0]
    world.add_record("rx-1", body)
    wallet = world.ready()
    wallet.fetch(HIS, "rx-1")
    cached = (world.directory / f"{USER}-data" / "records" / HIS / "rx-1.sealed").read_bytes()
    assert body not in cached
    view = wallet.show("rx-1")
    expected = load_record(body).summary
    assert isinstance(view.summary, PrescriptionSummary)
    assert isinstance(expected, PrescriptionSummary)
    assert view.record_type == "prescription"
    assert (view.summary.medication, view.summary.dosage, view.summary.authored_on) == (
        expected.medication,
        expected.dosage,
        expected.authored_on,
    )
    assert "Apixaban" not in repr(view)


def test_fetch_and_show_a_real_erezept_bundle(world: World) -> None:
    """A gematik example bundle survives hospital sealing, platform storage and wallet opening."""
    files = sorted(EREZEPT.glob("1.2.0/*.json"))
    if not files:
        pytest.skip("no gematik example bundles in /work/shared/data/erezept")
    body = files[0].read_bytes()
    world.add_record("rx-real", body)
    wallet = world.ready()
    wallet.fetch(HIS, "rx-real")
    view = wallet.show("rx-real")
    assert view.summary == load_record(body).summary


def test_fetch_and_show_a_report(world: World) -> None:
    """A DiagnosticReport shows its code and conclusion."""
    world.add_record("rep-1", REPORT)
    wallet = world.ready()
    wallet.fetch(HIS, "rep-1")
    view = wallet.show("rep-1")
    assert isinstance(view.summary, ReportSummary)
    assert view.summary.code == "http://loinc.org|58410-2"
    assert view.summary.conclusion == "No abnormality detected"


def test_second_fetch_is_served_from_blind_storage(
    world: World, synthetic_bodies: list[bytes]
) -> None:
    """The platform stores the ciphertext once; a second fetch never reaches the hospital."""
    world.add_record("rx-1", synthetic_bodies[0])
    wallet = world.ready()
    wallet.fetch(HIS, "rx-1")
    wallet.fetch(HIS, "rx-1")
    assert world.hospital.requests == 1


def test_fetch_refuses_a_swapped_record(world: World, synthetic_bodies: list[bytes]) -> None:
    """A platform answering with another record's ciphertext is refused; nothing is cached."""
    world.add_record("rx-1", synthetic_bodies[0])
    world.add_record("rx-2", synthetic_bodies[1])
    wallet = world.ready()
    wallet.fetch(HIS, "rx-1")
    world.platform.faults.add("swap-record")
    with pytest.raises(CryptoError):
        wallet.fetch(HIS, "rx-2")
    assert ("his-1", "rx-2") not in set(wallet.cached())


def test_fetch_refuses_a_malformed_record(world: World, synthetic_bodies: list[bytes]) -> None:
    """Ciphertext that is not a sealed record is the opaque CryptoError; nothing is cached."""
    world.add_record("rx-1", synthetic_bodies[0])
    wallet = world.ready()
    world.platform.stored[(HIS, "rx-1")] = b'{"protected": "x"}'
    with pytest.raises(CryptoError):
        wallet.fetch(HIS, "rx-1")
    assert list(wallet.cached()) == []


def test_fetch_refuses_a_tampered_body(world: World, synthetic_bodies: list[bytes]) -> None:
    """A record whose body was modified at the platform does not open and is not cached."""
    world.add_record("rx-1", synthetic_bodies[0])
    wallet = world.ready()
    sealed = SealedRecord.from_bytes(world.hospital.get_record(PATIENT, "rx-1"))
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    world.platform.stored[(HIS, "rx-1")] = SealedRecord(
        sealed.protected, sealed.iv, flipped, sealed.tag, sealed.recipients
    ).to_bytes()
    with pytest.raises(CryptoError):
        wallet.fetch(HIS, "rx-1")
    assert list(wallet.cached()) == []


def test_fetch_of_an_unknown_record_is_not_found(world: World) -> None:
    """The platform's 404 problem reaches the wallet as NotFound."""
    wallet = world.ready()
    with pytest.raises(NotFound):
        wallet.fetch(HIS, "rx-nope")


def test_show_needs_a_fetched_record(world: World) -> None:
    """show opens only what the wallet holds."""
    wallet = world.ready()
    with pytest.raises(NotFound):
        wallet.show("rx-1")


def test_list_and_status_report_dispense_state(world: World, synthetic_bodies: list[bytes]) -> None:
    """The list names every announced record of the binding with its dispense state."""
    world.add_record("rx-1", synthetic_bodies[0])
    world.add_record("rep-1", REPORT)
    wallet = world.ready()
    listed = wallet.list_records()
    assert {(e.p_id, e.record_type, e.fetched) for e in listed.records} == {
        ("rx-1", "prescription", False),
        ("rep-1", "report", False),
    }
    world.platform.dispense[(HIS, "rx-1")] = "claimed"
    assert wallet.record_status(HIS, "rx-1").dispense == "claimed"
    with pytest.raises(NotFound):
        wallet.record_status(HIS, "rx-unknown")


# --------------------------------------------------------------------------- rotate


def test_rotation_happy_path(world: World, synthetic_bodies: list[bytes]) -> None:
    """Both sides move to v2 together; v1 is kept and old records stay readable."""
    world.add_record("rx-1", synthetic_bodies[0])
    wallet = world.ready()
    wallet.fetch(HIS, "rx-1")
    done = wallet.rotate(HIS)
    assert (done.old_version, done.new_version, done.committed) == (1, 2, True)
    patient = world.hospital.patients[PATIENT]
    assert (patient.current, patient.pending) == (2, None)
    stored = world.on_disk().hospitals[HIS]
    assert (stored.current, sorted(stored.keys), stored.rotation) == (2, [1, 2], None)
    assert stored.keys[2] == patient.keys[2]
    # The platform's copy is still under v1; the wallet still opens it, and binds under v2.
    assert _kuh_versions(world.platform.stored[(HIS, "rx-1")]) == {1}
    wallet.show("rx-1")
    wallet.bind(HIS)


def test_rotation_with_a_lost_ack_aborts_on_the_old_key(
    world: World, synthetic_bodies: list[bytes]
) -> None:
    """Lost ack: the wallet stays on v1 with nothing pending; records and binds still work."""
    world.add_record("rx-1", synthetic_bodies[0])
    wallet = world.ready()
    wallet.fetch(HIS, "rx-1")
    world.platform.faults.add("lose-ack")
    with pytest.raises(PeerUnavailable):
        wallet.rotate(HIS)
    stored = world.on_disk().hospitals[HIS]
    assert (stored.current, sorted(stored.keys), stored.rotation) == (1, [1], None)
    assert world.hospital.patients[PATIENT].current == 1  # its pending v2 is never used
    assert wallet.show("rx-1").record_type == "prescription"
    world.platform.faults.clear()
    wallet.bind(HIS)
    world.add_record("rx-2", synthetic_bodies[1])
    wallet.fetch(HIS, "rx-2")
    wallet.show("rx-2")
    # The next rotation replaces the hospital's stale pending key.
    assert wallet.rotate(HIS).new_version == 2
    assert world.hospital.patients[PATIENT].current == 2


def test_rotation_with_a_forged_ack_aborts(world: World) -> None:
    """An ack that is not a MAC under KUH_new is refused: the wallet stays on v1."""
    wallet = world.ready()
    world.platform.faults.add("forge-ack")
    with pytest.raises(CryptoError):
        wallet.rotate(HIS)
    stored = world.on_disk().hospitals[HIS]
    assert (stored.current, stored.rotation) == (1, None)


def test_rotation_with_a_lost_commit_is_resent_on_next_contact(world: World) -> None:
    """Lost commit: the wallet is on v2 and the pending commit goes out with the next request."""
    wallet = world.ready()
    world.platform.faults.add("lose-commit")
    done = wallet.rotate(HIS)
    assert (done.new_version, done.committed) == (2, False)
    stored = world.on_disk().hospitals[HIS]
    assert stored.current == 2
    assert stored.rotation is not None
    assert stored.rotation.state is Rotation.ACKED
    patient = world.hospital.patients[PATIENT]
    assert patient.current == 1
    assert patient.pending is not None
    with pytest.raises(Conflict):
        wallet.rotate(HIS)  # no new rotation while a commit is outstanding
    world.platform.faults.clear()
    # A new process on the next contact: the commit is sent before the listing.
    wallet = world.open()
    wallet.list_records()
    assert world.hospital.patients[PATIENT].current == 2
    assert world.on_disk().hospitals[HIS].rotation is None
    assert [p for p, _ in world.platform.log[-2:]] == ["/v1/rotate/commit", "/v1/records/list"]


def test_lost_commit_is_settled_by_a_bind_under_the_new_key(world: World) -> None:
    """A bind proof under v2 commits the hospital's pending key; the wallet then clears its own."""
    wallet = world.ready()
    world.platform.faults.add("lose-commit")
    wallet.rotate(HIS)
    wallet.bind(HIS)  # the resend fails again, the bind under v2 succeeds
    assert world.hospital.patients[PATIENT].current == 2
    assert world.on_disk().hospitals[HIS].rotation is None


def test_commit_answered_conflict_means_already_committed(world: World) -> None:
    """If the hospital already committed (its answer was lost), a resent commit's 409 settles it."""
    wallet = world.ready()
    world.platform.faults.add("lose-commit")
    wallet.rotate(HIS)
    world.hospital._commit(world.hospital.patients[PATIENT])  # the first commit did arrive
    world.platform.faults.clear()
    wallet.list_records()
    assert world.on_disk().hospitals[HIS].rotation is None


def test_crash_after_prepare_aborts_on_restart(world: World) -> None:
    """A process dying after PREPARED was saved leaves KUH_new on disk; the next run aborts it."""
    wallet = world.ready()

    def crash(request: object) -> None:
        raise KeyboardInterrupt

    world.platform.on_request = crash
    with pytest.raises(KeyboardInterrupt):
        wallet.rotate(HIS)
    world.platform.on_request = None
    stored = world.on_disk().hospitals[HIS]
    assert stored.rotation is not None
    assert stored.rotation.state is Rotation.PREPARED
    assert stored.current == 1
    restarted = world.open()
    restarted.list_records()
    stored = world.on_disk().hospitals[HIS]
    assert (stored.current, stored.rotation) == (1, None)


def test_prepared_state_is_persisted_before_rotate_prepare_is_sent(world: World) -> None:
    """When RotatePrepare is on the wire, the keystore already holds KUH_new in state PREPARED."""
    wallet = world.ready()
    seen: list[object] = []

    def check(request: object) -> None:
        if str(getattr(request, "url", "")).endswith("/v1/rotate/prepare"):
            rotation = world.on_disk().hospitals[HIS].rotation
            seen.append(rotation.state if rotation else None)

    world.platform.on_request = check
    wallet.rotate(HIS)
    assert seen == [Rotation.PREPARED]


def test_rewrap_after_rotation_keeps_body_bytes(
    world: World, synthetic_bodies: list[bytes]
) -> None:
    """Cached records move to the new KUH version; protected header, iv, body and tag unchanged."""
    world.add_record("rx-1", synthetic_bodies[0])
    world.add_record("rx-2", synthetic_bodies[1])
    wallet = world.ready()
    wallet.fetch(HIS, "rx-1")
    wallet.fetch(HIS, "rx-2")
    cache = world.directory / f"{USER}-data" / "records" / HIS
    before = {p: (cache / f"{p}.sealed").read_bytes() for p in ("rx-1", "rx-2")}
    done = wallet.rotate(HIS)
    assert done.rewrapped == 2
    for p_id, old in before.items():
        new = (cache / f"{p_id}.sealed").read_bytes()
        assert _body_parts(new) == _body_parts(old)
        assert _kuh_versions(old) == {1}
        assert _kuh_versions(new) == {2}
        assert (
            world.hospital.open_as_patient(PATIENT, new, 2) == synthetic_bodies[int(p_id[-1]) - 1]
        )
    assert wallet.show("rx-2").record_type == "prescription"
    # A record fetched after the rotation (still sealed under v1 at the platform) is re-wrapped too.
    world.add_record("rx-3", synthetic_bodies[2])
    world.platform.stored[(HIS, "rx-3")] = world.hospital.get_record(PATIENT, "rx-3")
    wallet.fetch(HIS, "rx-3")
    assert _kuh_versions((cache / "rx-3.sealed").read_bytes()) == {2}


def test_rotate_needs_a_binding(world: World) -> None:
    """The platform knows no patient for an unbound wallet: rotate refuses locally first."""
    world.init()
    wallet = world.open()
    wallet.enroll(world.code)
    with pytest.raises(Conflict):
        wallet.rotate(HIS)


# --------------------------------------------------------------------------- share


def test_share_hpke_then_kub_ratchet_then_reset(
    world: World, synthetic_bodies: list[bytes]
) -> None:
    """Share 1 by HPKE (KUB 1), share 2 by KUB 1 (→ KUB 2); a forgetful pharmacy gets HPKE again."""
    for i, body in enumerate(synthetic_bodies, start=1):
        world.add_record(f"rx-{i}", body)
    wallet = world.ready()

    first = wallet.share(HIS, "rx-1", TP)
    assert (first.kind, first.kub_version, first.reset) == ("hpke", 1, False)
    assert world.third_party.received[(HIS, "rx-1")] == synthetic_bodies[0]
    assert world.third_party.kubs[USER][1] == world.on_disk().third_parties[TP].keys[1]

    second = wallet.share(HIS, "rx-2", TP)
    assert (second.kind, second.kub_version, second.reset) == ("kub", 2, False)
    assert world.third_party.received[(HIS, "rx-2")] == synthetic_bodies[1]
    held = world.on_disk().third_parties[TP]
    assert (held.current, sorted(held.keys), held.pending) == (2, [1, 2], None)
    assert held.keys[2] == world.third_party.kubs[USER][2]

    world.platform.faults.add("tp-forgets")
    third = wallet.share(HIS, "rx-3", TP)
    assert (third.kind, third.kub_version, third.reset) == ("hpke", 1, True)
    assert world.third_party.received[(HIS, "rx-3")] == synthetic_bodies[2]
    assert world.on_disk().third_parties[TP].keys == {1: world.third_party.kubs[USER][1]}
    assert world.platform.shares[(HIS, "rx-3")] == [TP]
    # The platform's copy never changed: blind storage keeps the hospital's ciphertext.
    stored = world.platform.stored[(HIS, "rx-1")]
    assert [e.kid for e in SealedRecord.from_bytes(stored).recipients] == [f"kuh:{HIS}"]


def test_share_refuses_a_certificate_for_another_name(
    world: World, synthetic_bodies: list[bytes]
) -> None:
    """An offer whose certificate names someone else is refused before anything is delivered."""
    world.add_record("rx-1", synthetic_bodies[0])
    wallet = world.ready()
    world.platform.wrong_certificate = (world.pki / f"{USER}.pem").read_text()
    world.platform.faults.add("wrong-cert")
    with pytest.raises(Forbidden):
        wallet.share(HIS, "rx-1", TP)
    assert world.third_party.received == {}
    assert TP not in world.on_disk().third_parties


def test_share_refuses_a_certificate_from_another_ca(
    world: World, synthetic_bodies: list[bytes], foreign_pki: Path
) -> None:
    """A certificate with the right name from a CA the wallet does not trust is refused."""
    world.add_record("rx-1", synthetic_bodies[0])
    wallet = world.ready()
    world.platform.wrong_certificate = (foreign_pki / f"{TP}.pem").read_text()
    world.platform.faults.add("wrong-cert")
    with pytest.raises(Forbidden):
        wallet.share(HIS, "rx-1", TP)
    assert world.third_party.received == {}


def test_share_refuses_a_key_the_third_party_did_not_sign(
    world: World, synthetic_bodies: list[bytes]
) -> None:
    """A platform that swaps in its own HPKE key is caught: nothing is wrapped to that key."""
    world.add_record("rx-1", synthetic_bodies[0])
    wallet = world.ready()
    world.platform.faults.add("swap-kbp")
    with pytest.raises(CryptoError):
        wallet.share(HIS, "rx-1", TP)
    assert world.third_party.received == {}
    assert TP not in world.on_disk().third_parties


def test_share_lost_receipt_keeps_the_old_kub(world: World, synthetic_bodies: list[bytes]) -> None:
    """A receipt lost after the pharmacy accepted does not advance the KUB; the next share works."""
    world.add_record("rx-1", synthetic_bodies[0])
    world.add_record("rx-2", synthetic_bodies[1])
    wallet = world.ready()
    wallet.share(HIS, "rx-1", TP)
    world.platform.faults.add("lose-receipt")
    with pytest.raises(PeerUnavailable):
        wallet.share(HIS, "rx-2", TP)
    assert sorted(world.third_party.kubs[USER]) == [1, 2]  # it did take KUB 2
    held = world.on_disk().third_parties[TP]
    assert held.current == 1
    assert held.pending is not None  # the offered KUB 2 was saved before the send
    assert held.pending.key == world.third_party.kubs[USER][2]
    # The pharmacy still holds KUB 1: the next share ratchets from there.
    again = wallet.share(HIS, "rx-2", TP)
    assert (again.kind, again.kub_version, again.reset) == ("kub", 2, False)
    assert world.on_disk().third_parties[TP].keys[2] == world.third_party.kubs[USER][2]


def test_share_of_an_unknown_third_party_is_not_found(
    world: World, synthetic_bodies: list[bytes]
) -> None:
    """The platform's 404 for an unregistered third party reaches the wallet."""
    world.add_record("rx-1", synthetic_bodies[0])
    wallet = world.ready()
    with pytest.raises(NotFound):
        wallet.share(HIS, "rx-1", "pharmacy-unknown")


def test_share_of_a_completed_prescription_is_a_conflict(
    world: World, synthetic_bodies: list[bytes]
) -> None:
    """A completed prescription cannot be shared any more."""
    world.add_record("rx-1", synthetic_bodies[0])
    wallet = world.ready()
    world.platform.dispense[(HIS, "rx-1")] = "completed"
    with pytest.raises(Conflict):
        wallet.share(HIS, "rx-1", TP)


# --------------------------------------------------------------------------- enrollment / status


def test_enroll_twice_is_idempotent_and_a_different_key_conflicts(world: World) -> None:
    """The same code twice changes nothing; another KUH for the same hospital is refused."""
    world.init()
    wallet = world.open()
    wallet.enroll(world.code)
    wallet.enroll(world.code)
    other = world.hospital.enroll("pat-2")
    with pytest.raises(Conflict):
        wallet.enroll(other)
    assert world.on_disk().hospitals[HIS].patient_id == PATIENT


def test_enroll_refuses_malformed_codes(world: World) -> None:
    """A malformed code is InvalidInput and leaves the keystore unchanged."""
    world.init()
    wallet = world.open()
    with pytest.raises(InvalidInput):
        wallet.enroll("PKENROLL1.not-json")
    assert world.on_disk().hospitals == {}


def test_status_shows_versions_and_never_key_bytes(world: World) -> None:
    """status reports the pool, bindings and KUH versions; no key material in it."""
    wallet = world.ready(keys=10)
    wallet.rotate(HIS)
    status = wallet.status()
    assert status.user_id == USER
    assert status.hospitals[0].versions == (1, 2)
    assert status.hospitals[0].current_version == 2
    text = repr(status)
    for key in world.hospital.patients[PATIENT].keys.values():
        assert key.hex() not in text
        assert str(key) not in text
