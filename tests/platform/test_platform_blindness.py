"""Blind storage: after bind, fetch, share and dispense with a real e-prescription, the
platform's database holds no health data and no KUH, KUB or DEK bytes."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from platform_flows import announce, checked_bind, fetch, offer, share
from platform_world import HIS, World

from patientkey.crypto import SealedRecord, unwrap_dek
from patientkey.fhir.records import load_record
from patientkey.protocol.messages import DispenseRequest
from patientkey.storage import PlatformRepo, SqlStore

DATA = Path(
    os.environ.get("PATIENTKEY_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared/data")
)
BUNDLES = ["erezept/1.2.0/Beispiel_1.json", "erezept/1.1.0/Beispiel_1.json"]


def _encodings(secret: bytes) -> list[bytes]:
    """The byte forms a leaked key could take in a dump."""
    return [
        secret,
        base64.urlsafe_b64encode(secret).rstrip(b"="),
        base64.b64encode(secret).rstrip(b"="),
        secret.hex().encode(),
    ]


def _needles(summary: dict[str, str | bool], body: bytes) -> list[bytes]:
    """Health data of the bundle: names (whole and in parts), birth date, insurance number,
    PZN, medication text, prescriber, and a slice of the canonical body itself."""
    texts: list[str] = []
    for key in ("patient_name", "prescriber"):
        value = summary.get(key)
        assert isinstance(value, str)
        texts.append(value)
        texts += [part for part in value.split() if len(part) > 4 and part not in ("Freiherr",)]
    for key in ("patient_birth_date", "insurance_number", "pzn", "medication", "prescription_id"):
        value = summary.get(key)
        assert isinstance(value, str)
        texts.append(value)
    texts.append("Januvia")
    needles = [t.encode("utf-8") for t in texts]
    needles.append(body[100:160])
    return needles


@pytest.mark.parametrize("bundle", BUNDLES)
def test_platform_database_is_blind(tmp_path, pki, bundle):
    """No name, birth date, insurance number, PZN, medication or key bytes in the file or dump."""
    path = DATA / bundle
    if not path.is_file():
        pytest.skip(f"shared example data absent at {DATA} (set PATIENTKEY_SHARED_DATA)")
    record = load_record(path)
    summary = record.summary.as_dict()
    if "Januvia" not in str(summary.get("medication")):
        pytest.skip("the example bundle changed")
    from patientkey.storage import Party, open_database

    db_path = tmp_path / "platform.db"
    db = open_database(f"sqlite:///{db_path}", Party.PLATFORM)
    db.upgrade()
    world = World(SqlStore(db, PlatformRepo), pki)
    alice = world.wallet("u-alice")
    world.enroll(alice, "pat-alice")
    world.hospital.add_record("pat-alice", "rx-1", record.canonical)
    world.hospital.add_record("pat-alice", "rx-2", record.canonical)
    announce(world, "pat-alice", ("rx-1", "prescription"), ("rx-2", "prescription"))
    checked_bind(world, alice, "pat-alice")
    world.register()
    sealed = fetch(world, alice, "rx-1")
    offer(world, alice, "rx-2", "pharmacy-2")
    share(world, alice, "rx-1", "pharmacy-1")  # HPKE, KUB_1
    share(world, alice, "rx-2", "pharmacy-1")  # under KUB_1, KUB_2
    token = world.grant("u-alice", "pharmacy-1", "rx-1")  # the token for rx-1
    world.core.dispense(
        "pharmacy-1",
        DispenseRequest(
            b_id="pharmacy-1", his_id=HIS, p_id="rx-1", action="claim", access_token=token
        ),
    )
    assert world.pharmacies["pharmacy-1"].received[(HIS, "rx-1")] == record.canonical

    deks = [
        unwrap_dek(SealedRecord.from_bytes(s), kid=f"kuh:{HIS}", key=alice.kuh[1])
        for s in (sealed, fetch(world, alice, "rx-2"))
    ]
    secrets = [*alice.kuh.values(), *alice.kub["pharmacy-1"].values(), *deks]
    needles = _needles(summary, record.canonical)

    dump = db.dump_bytes()
    db.close()  # checkpoints the WAL into the file
    files = b"".join(p.read_bytes() for p in tmp_path.glob("platform.db*"))
    assert b"rx-1" in dump  # the dump is not vacuous
    for haystack in (dump, files):
        for needle in needles:
            assert needle not in haystack, needle
        for secret in secrets:
            for form in _encodings(secret):
                assert form not in haystack
