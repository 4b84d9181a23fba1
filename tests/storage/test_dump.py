"""dump_bytes: everything stored is findable, so the blindness test can scan the platform DB."""

from __future__ import annotations

import secrets
from datetime import date, timedelta

from patientkey.storage.repos import HospitalRepo, PlatformRepo
from patientkey.storage.schema import Party

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_dump_contains_every_stored_value(make_db):
    """Binary, text and JSON values written by the platform all appear in dump_bytes."""
    db = make_db(Party.PLATFORM)
    sealed = b"\x00\xffsealed-" + secrets.token_bytes(32)
    marker = f"marker-{secrets.token_hex(8)}"
    with db.transaction() as session:
        repo = PlatformRepo(session)
        repo.create_account("u-dump")
        repo.announce_record("his-dump", "rx-dump", "pat-dump", "prescription", 42)
        repo.store_sealed("his-dump", "rx-dump", sealed)
        repo.register_third_party("pharm-dump", "Apotheke Über", b"\x01kbp-bytes", PEM)
        repo.log_event("fetch", "u-dump", {"note": marker})
        repo.hit(f"bucket-{marker}", 5, timedelta(seconds=9))
    dump = db.dump_bytes()
    for needle in (
        sealed,
        b"\x01kbp-bytes",
        "Apotheke Über".encode(),
        marker.encode(),
        f"bucket-{marker}".encode(),
        b"pat-dump",
        PEM.encode(),
        str(db.current_revision()).encode(),  # the Alembic version table is a table too
    ):
        assert needle in dump, needle


def test_dump_of_hospital_holds_fhir_and_keys(make_db):
    """A hospital database dump contains its wrapped keys and FHIR bytes verbatim."""
    db = make_db(Party.HOSPITAL)
    wrapped = secrets.token_bytes(40)
    with db.transaction() as session:
        HospitalRepo(session).enroll("pat-1", "Erika", date(1970, 1, 1), wrapped)
    assert wrapped in db.dump_bytes()


def test_dump_of_an_empty_database_names_only_tables(make_db):
    """An emptied database dumps table headers and the version row, no other data."""
    db = make_db(Party.THIRDPARTY)
    lines = db.dump_bytes().splitlines()
    assert b"## received" in lines
    assert [line for line in lines if not line.startswith(b"## ")] == [b"thirdparty_0001"]
