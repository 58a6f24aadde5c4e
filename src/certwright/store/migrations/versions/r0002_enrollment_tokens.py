"""Enrolment tokens: one-time secrets (stored as SHA-256) bound to an identity and profile.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Plain SQLAlchemy types, literal constraint names (those the models' naming convention
gives), portable DDL only: SQLite and PostgreSQL both run it, as for 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def _exact(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", _ID, nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("identity", _exact(2048), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("dns", sa.JSON(), nullable=False),
        sa.Column("ips", sa.JSON(), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("lifetime_seconds", sa.BigInteger(), nullable=True),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("used_at", _TIME, nullable=True),
        sa.Column("used_by", sa.String(256), nullable=True),
        sa.Column("certificate_id", _ID, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_enrollment_tokens"),
        # The redemption looks the token up by hash: the unique index serves it.
        sa.UniqueConstraint("token_hash", name="uq_enrollment_tokens_token_hash"),
        sa.UniqueConstraint("token_id", name="uq_enrollment_tokens_token_id"),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["certificates.id"],
            name="fk_enrollment_tokens_certificate_id_certificates",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint("(used_at IS NULL) = (used_by IS NULL)", name="ck_enrollment_tokens_use_recorded"),
        sa.CheckConstraint(
            "certificate_id IS NULL OR used_at IS NOT NULL", name="ck_enrollment_tokens_certificate_after_use"
        ),
    )


def downgrade() -> None:
    op.drop_table("enrollment_tokens")
