"""Platform database: TOTP secrets sealed at rest (``secret`` → ``secret_sealed`` + ``secret_tag``).

A migration has no key, so it cannot seal the plaintext secrets of existing rows (nor,
going down, unseal them): it refuses a non-empty ``totp_enrollments`` table instead.
Revision 0004 was never deployed with enrollments, so the empty table is the real case.

Revision ID: platform_0005
Revises: platform_0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from patientkey.errors import ConfigError

revision = "platform_0005"
down_revision: str | None = "platform_0004"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None


def _refuse_enrollments(action: str) -> None:
    # A row inserted after this count cannot slip through either: adding a NOT NULL
    # column without a default fails on a table that holds rows.
    count = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM totp_enrollments")).scalar_one()
    if count:
        raise ConfigError(
            f"totp_enrollments holds {count} TOTP enrollment(s): platform_0005 cannot "
            f"{action} their secrets without the authorization unit's key; delete the rows "
            "(the patients enroll their authenticators again) and migrate again"
        )


def upgrade() -> None:
    _refuse_enrollments("seal")
    with op.batch_alter_table("totp_enrollments") as batch:
        batch.drop_column("secret")
        batch.add_column(sa.Column("secret_sealed", sa.LargeBinary(), nullable=False))
        batch.add_column(sa.Column("secret_tag", sa.LargeBinary(32), nullable=False))


def downgrade() -> None:
    _refuse_enrollments("unseal")
    with op.batch_alter_table("totp_enrollments") as batch:
        batch.drop_column("secret_tag")
        batch.drop_column("secret_sealed")
        batch.add_column(sa.Column("secret", sa.String(128), nullable=False))
