"""Platform database: initial tables.

Revision ID: platform_0001
Revises: (none; root of the ``platform`` branch)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "platform_0001"
down_revision: str | None = None
branch_labels = ("platform",)
depends_on: str | None = None

_ID = sa.String(128)


def _stamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("created_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_accounts"),
    )
    op.create_table(
        "third_parties",
        sa.Column("b_id", _ID, nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("hpke_public", sa.LargeBinary(), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("registered_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("b_id", name="pk_third_parties"),
    )
    op.create_table(
        "records",
        sa.Column("his_id", _ID, nullable=False),
        sa.Column("p_id", _ID, nullable=False),
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("record_type", sa.String(64), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("announced_at", _stamp(), nullable=False),
        sa.Column("fetched_at", _stamp(), nullable=True),
        sa.PrimaryKeyConstraint("his_id", "p_id", name="pk_records"),
    )
    op.create_index("ix_records_his_id_patient_id", "records", ["his_id", "patient_id"])
    op.create_table(
        "bindings",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("his_id", _ID, nullable=False),
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("created_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "his_id", name="pk_bindings"),
        sa.UniqueConstraint("his_id", "patient_id", name="uq_bindings_his_id_patient_id"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["accounts.user_id"], name="fk_bindings_user_id_accounts"
        ),
    )
    op.create_table(
        "shares",
        sa.Column("share_id", _ID, nullable=False),
        sa.Column("his_id", _ID, nullable=False),
        sa.Column("p_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("b_id", _ID, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("kub_version", sa.Integer(), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("created_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("share_id", name="pk_shares"),
        sa.ForeignKeyConstraint(
            ["his_id", "p_id"],
            ["records.his_id", "records.p_id"],
            name="fk_shares_his_id_p_id_records",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["accounts.user_id"], name="fk_shares_user_id_accounts"
        ),
        sa.ForeignKeyConstraint(
            ["b_id"], ["third_parties.b_id"], name="fk_shares_b_id_third_parties"
        ),
        sa.CheckConstraint("kind IN ('hpke', 'kub')", name="ck_shares_kind"),
    )
    op.create_index("ix_shares_his_id_p_id", "shares", ["his_id", "p_id"])
    op.create_index("ix_shares_user_id_b_id", "shares", ["user_id", "b_id"])
    op.create_table(
        "dispense",
        sa.Column("his_id", _ID, nullable=False),
        sa.Column("p_id", _ID, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claimed_by", _ID, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("his_id", "p_id", name="pk_dispense"),
        sa.ForeignKeyConstraint(
            ["his_id", "p_id"],
            ["records.his_id", "records.p_id"],
            name="fk_dispense_his_id_p_id_records",
        ),
        sa.ForeignKeyConstraint(
            ["claimed_by"], ["third_parties.b_id"], name="fk_dispense_claimed_by_third_parties"
        ),
        sa.CheckConstraint("state IN ('open', 'claimed', 'completed')", name="ck_dispense_state"),
    )
    op.create_table(
        "rate_limits",
        sa.Column("bucket", sa.String(256), nullable=False),
        sa.Column("window_start", _stamp(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", name="pk_rate_limits"),
    )
    op.create_table(
        "event_log",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", _stamp(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("user_id", _ID, nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_event_log"),
    )
    op.create_index("ix_event_log_user_id", "event_log", ["user_id"])


def downgrade() -> None:
    for table in (
        "event_log",
        "rate_limits",
        "dispense",
        "shares",
        "bindings",
        "records",
        "third_parties",
        "accounts",
    ):
        op.drop_table(table)
