"""Alembic migrations: idempotent, per party, and equal to the models."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect, text

from patientkey.errors import ConfigError
from patientkey.storage.engine import open_database, version_table
from patientkey.storage.schema import METADATA, Party

HEADS = {
    Party.PLATFORM: "platform_0007",
    Party.HOSPITAL: "hospital_0001",
    Party.THIRDPARTY: "thirdparty_0001",
}


def _tables(db) -> set[str]:
    with db.engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def _upgrade_to(db, revision: str) -> None:
    """Migrate to one revision (Database.upgrade only knows head)."""
    with db.engine.begin() as connection:
        command.upgrade(db._alembic_config(connection), revision)


def _upgrade_twice(db, party: Party) -> None:
    assert db.current_revision() is None
    db.upgrade()
    assert db.current_revision() == HEADS[party]
    tables = _tables(db)
    db.upgrade()
    assert db.current_revision() == HEADS[party]
    assert _tables(db) == tables
    # Only this party's tables, plus its own version table.
    assert tables == set(METADATA[party].tables) | {version_table(party)}


@pytest.mark.parametrize("party", list(Party))
def test_sqlite_upgrade_is_idempotent(tmp_path, party):
    """Upgrading a fresh SQLite file reaches head with only the party's tables; again is a no-op."""
    with open_database(f"sqlite:///{tmp_path / 'db.sqlite'}", party) as db:
        _upgrade_twice(db, party)


@pytest.mark.postgres
@pytest.mark.parametrize("party", list(Party))
def test_postgres_upgrade_is_idempotent(fresh_pg, party):
    """Upgrading a fresh PostgreSQL schema reaches head; upgrading again is a no-op."""
    _upgrade_twice(fresh_pg(party), party)


@pytest.mark.parametrize("party", list(Party))
def test_migrated_schema_matches_models(make_db, party):
    """After upgrade, Alembic's compare_metadata finds no difference from the models."""
    assert make_db(party).schema_diff() == []


def test_schema_diff_sees_drift(sqlite_db):
    """schema_diff is not vacuous: a dropped index shows up as a difference."""
    db = sqlite_db(Party.PLATFORM)
    with db.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_records_his_id_patient_id"))
    diff = db.schema_diff()
    assert [d[0] for d in diff] == ["add_index"]


def test_each_party_has_its_own_version_table(tmp_path):
    """Each party has its own version table, so branches never see each other's revisions."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with open_database(url, Party.HOSPITAL) as hospital:
        hospital.upgrade()
    with open_database(url, Party.THIRDPARTY) as thirdparty:
        assert thirdparty.current_revision() is None
        thirdparty.upgrade()
        assert thirdparty.current_revision() == HEADS[Party.THIRDPARTY]
    with open_database(url, Party.HOSPITAL) as hospital:
        assert hospital.current_revision() == HEADS[Party.HOSPITAL]
        assert hospital.schema_diff() != []  # the third party's tables are foreign here


def _plaintext_totp_rows(db, rows: int) -> None:
    """A database at platform_0004 whose totp_enrollments holds ``rows`` plaintext rows."""
    _upgrade_to(db, "platform_0004")
    with db.engine.begin() as conn:
        for n in range(rows):
            conn.execute(
                text(
                    "INSERT INTO totp_enrollments (user_id, secret, digits, period, algorithm) "
                    "VALUES (:u, 'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP', 6, 30, 'SHA1')"
                ),
                {"u": f"user-{n}"},
            )


def _check_totp_sealing_upgrade(db) -> None:
    _plaintext_totp_rows(db, 1)
    with pytest.raises(ConfigError, match="cannot seal"):
        db.upgrade()
    assert db.current_revision() == "platform_0004"
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM totp_enrollments")).scalar_one() == 1
        conn.execute(text("DELETE FROM totp_enrollments"))
        conn.commit()
    db.upgrade()
    assert db.current_revision() == HEADS[Party.PLATFORM]
    assert db.schema_diff() == []


def test_sqlite_totp_sealing_refuses_plaintext_rows(tmp_path):
    """platform_0005 refuses a TOTP table with (plaintext) rows and upgrades it once empty."""
    with open_database(f"sqlite:///{tmp_path / 'db.sqlite'}", Party.PLATFORM) as db:
        _check_totp_sealing_upgrade(db)


@pytest.mark.postgres
def test_postgres_totp_sealing_refuses_plaintext_rows(fresh_pg):
    """On PostgreSQL too, platform_0005 refuses rows it cannot seal and upgrades an empty table."""
    _check_totp_sealing_upgrade(fresh_pg(Party.PLATFORM))


def test_totp_sealing_downgrade_refuses_sealed_rows(tmp_path):
    """Down from platform_0005 refuses sealed rows (no key to unseal) and restores ``secret``."""
    with open_database(f"sqlite:///{tmp_path / 'db.sqlite'}", Party.PLATFORM) as db:
        db.upgrade()
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO totp_enrollments (user_id, secret_sealed, secret_tag, digits, "
                    "period, algorithm) VALUES ('u', x'00', x'00', 6, 30, 'SHA1')"
                )
            )
        with pytest.raises(ConfigError, match="cannot unseal"), db.engine.begin() as conn:
            command.downgrade(db._alembic_config(conn), "platform_0004")
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM totp_enrollments"))
            command.downgrade(db._alembic_config(conn), "platform_0004")
        with db.engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("totp_enrollments")}
        assert "secret" in columns
        assert not columns & {"secret_sealed", "secret_tag"}
