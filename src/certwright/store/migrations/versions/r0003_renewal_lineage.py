"""Renewal lineage: which certificate a renewal replaced (``certificates.renewed_from_id``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

A renewal is obtained with the certificate it replaces; revoking that one for a
compromise must reach every successor obtained with it (``RevocationService.revoke``),
found through this column. A plain indexed integer, no foreign key: rows are never
deleted, and SQLite cannot add a constraint to an existing table without rebuilding it.
Existing rows (issued before this revision) have no recorded lineage.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("certificates", sa.Column("renewed_from_id", _ID, nullable=True))
    op.create_index("ix_certificates_renewed_from_id", "certificates", ["renewed_from_id"])


def downgrade() -> None:
    op.drop_index("ix_certificates_renewed_from_id", table_name="certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("renewed_from_id")
