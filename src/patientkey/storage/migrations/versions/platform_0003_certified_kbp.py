"""Platform database: the third party's signature over its HPKE key (certified KBP).

Revision ID: platform_0003
Revises: platform_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "platform_0003"
down_revision: str | None = "platform_0002"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Nullable: rows registered before this revision carry no signature, and the
    # platform refuses to offer an uncertified key until the third party re-registers.
    with op.batch_alter_table("third_parties") as batch:
        batch.add_column(sa.Column("hpke_signature", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("third_parties") as batch:
        batch.drop_column("hpke_signature")
