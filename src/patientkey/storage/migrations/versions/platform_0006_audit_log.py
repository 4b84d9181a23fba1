"""Platform database: the transparency log over the event log (RFC 9162).

``event_log`` gains ``salt`` (16 random bytes per event, see ``audit.entry``) and
``leaf_index`` (the event's leaf once sequenced; NULL before, unique); ``audit_nodes``
holds the Merkle log's write-once hashes.

Events already logged get a random salt here, like new ones do in ``log_event``: a
salt is only a blinding value, so drawing it late changes nothing the log will
commit to (no event is a leaf yet). They are sequenced, oldest first, at the first
``integrate``.

Revision ID: platform_0006
Revises: platform_0005
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import op

revision = "platform_0006"
down_revision: str | None = "platform_0005"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

_SALT_LEN = 16
_BATCH = 1000


def _salt_existing_rows() -> None:
    bind = op.get_bind()
    events = sa.table("event_log", sa.column("seq", sa.BigInteger()), sa.column("salt"))
    last = 0
    while True:
        seqs = (
            bind.execute(
                sa.select(events.c.seq)
                .where(events.c.seq > last, events.c.salt.is_(None))
                .order_by(events.c.seq)
                .limit(_BATCH)
            )
            .scalars()
            .all()
        )
        if not seqs:
            return
        bind.execute(
            events.update()
            .where(events.c.seq == sa.bindparam("b_seq"))
            .values(salt=sa.bindparam("b_salt")),
            [{"b_seq": seq, "b_salt": os.urandom(_SALT_LEN)} for seq in seqs],
        )
        last = seqs[-1]


def upgrade() -> None:
    with op.batch_alter_table("event_log") as batch:
        batch.add_column(sa.Column("salt", sa.LargeBinary(_SALT_LEN), nullable=True))
        batch.add_column(sa.Column("leaf_index", sa.BigInteger(), nullable=True))
    _salt_existing_rows()
    with op.batch_alter_table("event_log") as batch:
        batch.alter_column("salt", existing_type=sa.LargeBinary(_SALT_LEN), nullable=False)
        batch.create_unique_constraint("uq_event_log_leaf_index", ["leaf_index"])
    op.create_table(
        "audit_nodes",
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name="pk_audit_nodes"),
    )


def downgrade() -> None:
    op.drop_table("audit_nodes")
    with op.batch_alter_table("event_log") as batch:
        batch.drop_constraint("uq_event_log_leaf_index", type_="unique")
        batch.drop_column("leaf_index")
        batch.drop_column("salt")
