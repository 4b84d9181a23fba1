"""Platform database: the authorization unit (OAuth/CIBA) and the patients' identity proofs.

Revision ID: platform_0004
Revises: platform_0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "platform_0004"
down_revision: str | None = "platform_0003"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

_ID = sa.String(128)


def _seconds(name: str, *, nullable: bool = False) -> sa.Column[int]:
    """Unix seconds: the authorization core's time (JWT ``exp``, CIBA expiry)."""
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "auth_requests",
        sa.Column("auth_req_id", _ID, nullable=False),
        sa.Column("request_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _seconds("created_at"),
        _seconds("expires_at"),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("auth_req_id", name="pk_auth_requests"),
        sa.UniqueConstraint("request_id", name="uq_auth_requests_request_id"),
        sa.CheckConstraint(
            "state IN ('pending', 'approved', 'denied', 'expired', 'issued')",
            name="ck_auth_requests_state",
        ),
    )
    op.create_index(
        "ix_auth_requests_user_id_state_expires_at",
        "auth_requests",
        ["user_id", "state", "expires_at"],
    )
    op.create_table(
        "grants",
        sa.Column("grant_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("client_id", _ID, nullable=False),
        _seconds("created_at"),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("consent", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("grant_id", name="pk_grants"),
    )
    op.create_index("ix_grants_user_id_created_at", "grants", ["user_id", "created_at"])
    op.create_table(
        "oauth_clients",
        sa.Column("client_id", _ID, nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name="pk_oauth_clients"),
    )
    op.create_table(
        "credentials",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("password_hash", sa.String(512), nullable=True),
        sa.Column("certificate_pem", sa.Text(), nullable=True),
        sa.Column("sms", sa.String(320), nullable=True),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("environment", sa.String(256), nullable=True),
        sa.PrimaryKeyConstraint("user_id", name="pk_credentials"),
    )
    op.create_table(
        "device_keys",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("public_bytes", sa.LargeBinary(), nullable=False),
        _seconds("created_at"),
        sa.PrimaryKeyConstraint("user_id", "key_id", name="pk_device_keys"),
        sa.CheckConstraint(
            "algorithm IN ('Ed25519', 'ML-DSA-65')", name="ck_device_keys_algorithm"
        ),
    )
    op.create_table(
        "totp_enrollments",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("digits", sa.Integer(), nullable=False),
        sa.Column("period", sa.Integer(), nullable=False),
        sa.Column("algorithm", sa.String(8), nullable=False),
        _seconds("last_step", nullable=True),
        sa.PrimaryKeyConstraint("user_id", name="pk_totp_enrollments"),
        sa.CheckConstraint(
            "algorithm IN ('SHA1', 'SHA256', 'SHA512')", name="ck_totp_enrollments_algorithm"
        ),
    )
    op.create_table(
        "otp_challenges",
        sa.Column("challenge_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("request_id", _ID, nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("code_mac", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("challenge_id", name="pk_otp_challenges"),
        sa.CheckConstraint("channel IN ('sms', 'email')", name="ck_otp_challenges_channel"),
    )
    op.create_index("ix_otp_challenges_expires_at", "otp_challenges", ["expires_at"])
    op.create_table(
        "lockouts",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("proof", sa.String(32), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", sa.Double(), nullable=False),
        sa.Column("locked_until", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "proof", name="pk_lockouts"),
    )
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(256), nullable=False),
        _seconds("expires_at"),
        sa.PrimaryKeyConstraint("jti", name="pk_revoked_tokens"),
    )
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])
    op.create_table(
        "client_assertions",
        sa.Column("client_id", _ID, nullable=False),
        sa.Column("jti", sa.String(256), nullable=False),
        _seconds("expires_at"),
        sa.PrimaryKeyConstraint("client_id", "jti", name="pk_client_assertions"),
    )
    op.create_index("ix_client_assertions_expires_at", "client_assertions", ["expires_at"])


def downgrade() -> None:
    for table in (
        "client_assertions",
        "revoked_tokens",
        "lockouts",
        "otp_challenges",
        "totp_enrollments",
        "device_keys",
        "credentials",
        "oauth_clients",
        "grants",
        "auth_requests",
    ):
        op.drop_table(table)
