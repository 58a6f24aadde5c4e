"""The initial inventory: certificates, their names, CRL numbers, the audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-01

Written out with plain SQLAlchemy types (not the model classes), so this revision keeps
creating exactly this schema whatever the models become later. The enum value lists are
frozen here for the same reason. Portable DDL only: both SQLite and PostgreSQL run it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_STATUS = ("good", "revoked", "on_hold")
_REASONS = (
    "unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
    "cessationOfOperation", "certificateHold", "removeFromCRL", "privilegeWithdrawn", "aACompromise",
)
_NAME_KINDS = ("dns", "ip", "uri", "email")


def _exact(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _one_of(column: str, values: Sequence[str], *, nullable: bool = False) -> str:
    listed = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({listed})" + (f" OR {column} IS NULL" if nullable else "")


def _certificates() -> None:
    op.create_table(
        "certificates",
        sa.Column("id", _ID, nullable=False),
        sa.Column("serial", sa.LargeBinary(20), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("issuer_key_id", sa.LargeBinary(64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("identity", _exact(2048), nullable=True),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("profile", sa.String(64), nullable=True),
        sa.Column("key_type", sa.String(32), nullable=False),
        sa.Column("not_before", _TIME, nullable=False),
        sa.Column("not_after", _TIME, nullable=False),
        sa.Column("fingerprint_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("public_key_id", sa.LargeBinary(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("revoked_at", _TIME, nullable=True),
        sa.Column("revocation_reason", sa.String(32), nullable=True),
        sa.Column("requested_by", sa.String(256), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_certificates"),
        sa.UniqueConstraint("serial", "issuer_key_id", name="uq_certificates_serial_issuer_key_id"),
        sa.UniqueConstraint("fingerprint_sha256", name="uq_certificates_fingerprint_sha256"),
        sa.CheckConstraint(_one_of("status", _STATUS), name="ck_certificates_certificate_status"),
        sa.CheckConstraint(
            _one_of("revocation_reason", _REASONS, nullable=True), name="ck_certificates_revocation_reason"
        ),
        sa.CheckConstraint(
            "(status = 'good' AND revoked_at IS NULL AND revocation_reason IS NULL)"
            " OR (status <> 'good' AND revoked_at IS NOT NULL AND revocation_reason IS NOT NULL)",
            name="ck_certificates_revocation_consistent",
        ),
        sa.CheckConstraint(
            "(status = 'on_hold') = (revocation_reason = 'certificateHold') OR revocation_reason IS NULL",
            name="ck_certificates_hold_reason",
        ),
    )
    op.create_index("ix_certificates_identity", "certificates", ["identity"])
    op.create_index("ix_certificates_public_key_id", "certificates", ["public_key_id"])
    op.create_index("ix_certificates_not_after_id", "certificates", ["not_after", "id"])
    live = sa.text("status <> 'revoked'")
    op.create_index(
        "ix_certificates_live_not_after",
        "certificates",
        ["not_after", "id"],
        postgresql_where=live,
        sqlite_where=live,
    )
    revoked = sa.text("status <> 'good'")
    op.create_index(
        "ix_certificates_revoked_issuer_serial",
        "certificates",
        ["issuer_key_id", "serial"],
        postgresql_where=revoked,
        sqlite_where=revoked,
    )


def _certificate_names() -> None:
    op.create_table(
        "certificate_names",
        sa.Column("id", _ID, nullable=False),
        sa.Column("certificate_id", _ID, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("value", _exact(2048), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_certificate_names"),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["certificates.id"],
            name="fk_certificate_names_certificate_id_certificates",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(_one_of("kind", _NAME_KINDS), name="ck_certificate_names_name_kind"),
    )
    op.create_index("ix_certificate_names_certificate_id", "certificate_names", ["certificate_id"])
    op.create_index(
        "ix_certificate_names_kind_value", "certificate_names", ["kind", "value", "certificate_id"]
    )


def _crl_state() -> None:
    op.create_table(
        "crl_state",
        sa.Column("issuer_key_id", sa.LargeBinary(64), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("issuer_key_id", name="pk_crl_state"),
    )


def _audit() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("subject", sa.String(256), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
        sa.UniqueConstraint("hash", name="uq_audit_events_hash"),
    )
    op.create_index("ix_audit_events_subject", "audit_events", ["subject"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
        sa.CheckConstraint("id = 1", name="ck_audit_head_single_row"),
    )
    # The empty log: sequence 0, and the all-zero hash the first event chains to.
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": "0" * 64}])


def upgrade() -> None:
    _certificates()
    _certificate_names()
    _crl_state()
    _audit()


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_table("audit_events")
    op.drop_table("crl_state")
    op.drop_table("certificate_names")
    op.drop_table("certificates")
