"""Hospital gateway database: initial tables.

Revision ID: hospital_0001
Revises: (none; root of the ``hospital`` branch)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "hospital_0001"
down_revision: str | None = None
branch_labels = ("hospital",)
depends_on: str | None = None

_ID = sa.String(128)


def _stamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=False),
        sa.Column("enrolled_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name="pk_patients"),
    )
    op.create_table(
        "kuh_keys",
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", "version", name="pk_kuh_keys"),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.patient_id"], name="fk_kuh_keys_patient_id_patients"
        ),
        sa.CheckConstraint("state IN ('pending', 'current', 'retired')", name="ck_kuh_keys_state"),
    )
    for state in ("current", "pending"):
        where = sa.text(f"state = '{state}'")
        op.create_index(
            f"uq_kuh_keys_patient_id_{state}",
            "kuh_keys",
            ["patient_id"],
            unique=True,
            sqlite_where=where,
            postgresql_where=where,
        )
    op.create_table(
        "records",
        sa.Column("p_id", _ID, nullable=False),
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("record_type", sa.String(64), nullable=False),
        sa.Column("fhir", sa.LargeBinary(), nullable=False),
        sa.Column("imported_at", _stamp(), nullable=False),
        sa.Column("import_batch", _ID, nullable=False),
        sa.PrimaryKeyConstraint("p_id", name="pk_records"),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.patient_id"], name="fk_records_patient_id_patients"
        ),
    )
    op.create_index("ix_records_patient_id", "records", ["patient_id"])
    op.create_index("ix_records_import_batch", "records", ["import_batch"])


def downgrade() -> None:
    op.drop_table("records")
    op.drop_table("kuh_keys")
    op.drop_table("patients")
