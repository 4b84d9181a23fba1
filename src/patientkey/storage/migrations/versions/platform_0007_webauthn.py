"""Platform database: WebAuthn passkeys and the challenges of registrations under way.

Revision ID: platform_0007
Revises: platform_0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "platform_0007"
down_revision: str | None = "platform_0006"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

_ID = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "webauthn_credentials",
        sa.Column("credential_id", sa.String(1364), nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("sign_count", sa.BigInteger(), nullable=False),
        sa.Column("transports", sa.String(300), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("credential_id", name="pk_webauthn_credentials"),
    )
    op.create_index("ix_webauthn_credentials_user_id", "webauthn_credentials", ["user_id"])
    op.create_table(
        "webauthn_challenges",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("challenge", sa.LargeBinary(64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_webauthn_challenges"),
    )


def downgrade() -> None:
    op.drop_table("webauthn_challenges")
    op.drop_index("ix_webauthn_credentials_user_id", table_name="webauthn_credentials")
    op.drop_table("webauthn_credentials")
