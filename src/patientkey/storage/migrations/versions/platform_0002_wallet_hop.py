"""Platform database: the wallet hop (KUE pool half, PQ exchanges) and a shared replay guard.

Revision ID: platform_0002
Revises: platform_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "platform_0002"
down_revision: str | None = "platform_0001"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

_ID = sa.String(128)


def _stamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "kue_keys",
        sa.Column("key_id", sa.String(36), nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_kue_keys"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["accounts.user_id"], name="fk_kue_keys_user_id_accounts"
        ),
        sa.CheckConstraint(
            "direction IN ('to_wallet', 'from_wallet')", name="ck_kue_keys_direction"
        ),
    )
    op.create_index("ix_kue_keys_user_id_direction", "kue_keys", ["user_id", "direction"])
    op.create_table(
        "pq_exchanges",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("exchange_id", sa.String(64), nullable=False),
        sa.Column("init", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "exchange_id", name="pk_pq_exchanges"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["accounts.user_id"], name="fk_pq_exchanges_user_id_accounts"
        ),
    )
    op.create_table(
        "replay_guard",
        sa.Column("sender", _ID, nullable=False),
        sa.Column("jti", sa.String(256), nullable=False),
        sa.Column("expires_at", _stamp(), nullable=False),
        sa.PrimaryKeyConstraint("sender", "jti", name="pk_replay_guard"),
    )
    op.create_index("ix_replay_guard_expires_at", "replay_guard", ["expires_at"])


def downgrade() -> None:
    for table in ("replay_guard", "pq_exchanges", "kue_keys"):
        op.drop_table(table)
