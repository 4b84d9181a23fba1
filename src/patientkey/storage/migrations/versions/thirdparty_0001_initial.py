"""Third-party database: initial tables.

Revision ID: thirdparty_0001
Revises: (none; root of the ``thirdparty`` branch)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "thirdparty_0001"
down_revision: str | None = None
branch_labels = ("thirdparty",)
depends_on: str | None = None

_ID = sa.String(128)


def _stamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "kub_keys",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "version", name="pk_kub_keys"),
        sa.CheckConstraint("state IN ('pending', 'current', 'retired')", name="ck_kub_keys_state"),
    )
    for state in ("current", "pending"):
        where = sa.text(f"state = '{state}'")
        op.create_index(
            f"uq_kub_keys_user_id_{state}",
            "kub_keys",
            ["user_id"],
            unique=True,
            sqlite_where=where,
            postgresql_where=where,
        )
    op.create_table(
        "received",
        sa.Column("his_id", _ID, nullable=False),
        sa.Column("p_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("his_id", "p_id", name="pk_received"),
    )
    op.create_index("ix_received_user_id", "received", ["user_id"])
    op.create_table(
        "claims",
        sa.Column("his_id", _ID, nullable=False),
        sa.Column("p_id", _ID, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("updated_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("his_id", "p_id", name="pk_claims"),
        sa.CheckConstraint(
            "state IN ('pending', 'claimed', 'completed', 'released')", name="ck_claims_state"
        ),
    )


def downgrade() -> None:
    op.drop_table("claims")
    op.drop_table("received")
    op.drop_table("kub_keys")
