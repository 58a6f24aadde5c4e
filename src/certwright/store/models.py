"""The inventory schema: certificates, their names, CRL numbers and the audit log.

SQLAlchemy 2.0 typed models. Every table is created by the Alembic migrations in
``migrations/versions`` (never by ``metadata.create_all`` outside tests), and each index
exists for one query of :mod:`certwright.store.repository`; ``docs/store.md`` lists them.

Choices that hold on both SQLite and PostgreSQL:

* enums are VARCHAR plus a CHECK constraint (``native_enum=False``), storing the enum's
  *value*: PostgreSQL's native enums need ``ALTER TYPE`` in a migration for every new
  member and SQLite has none;
* time is :class:`~certwright.store.types.UTCDateTime`, serials are
  :class:`~certwright.store.types.SerialNumber` (20 big-endian octets);
* expiry is not a status: it follows from ``not_after`` and the clock, so it can never be
  stale. ``status`` records only what the CA decided (good, revoked, on hold).
"""

from __future__ import annotations

import datetime
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from certwright.store.types import SerialNumber, UTCDateTime, exact_text
from certwright.store.values import GENESIS_HASH as GENESIS_HASH  # re-exported: the schema's vocabulary
from certwright.store.values import AuditKind as AuditKind
from certwright.store.values import CertificateStatus as CertificateStatus
from certwright.store.values import NameKind as NameKind
from certwright.x509.revocation_reason import RevocationReason

# Stable constraint and index names: Alembic's autogenerate and SQLite's batch mode (which
# rebuilds tables) both need to find constraints by name on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
IDENTITY_LENGTH = 2048  # SPIFFE IDs are at most 2048 bytes (SPIFFE-ID 2.3)
NAME_LENGTH = 2048

# SQLite only auto-assigns "INTEGER PRIMARY KEY"; PostgreSQL wants 64 bits for a table that
# may reach millions of rows over the CA's life.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _values(kind: type[enum.Enum]) -> list[str]:
    return [str(member.value) for member in kind]


def _enum(kind: type[enum.Enum], name: str, *, constrained: bool = True) -> sa.Enum:
    return sa.Enum(
        kind,
        name=name,
        native_enum=False,
        create_constraint=constrained,
        length=32,
        values_callable=_values,
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class CertificateRecord(Base):
    """One issued (or imported) certificate: the facts the queries need, and its DER."""

    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    serial: Mapped[int] = mapped_column(SerialNumber())
    issuer: Mapped[str] = mapped_column(sa.Text)
    # The authorityKeyIdentifier: two CAs may share a DN (re-keyed, or an unrelated import),
    # never a key, so uniqueness and CRL scope are per issuer key.
    issuer_key_id: Mapped[bytes] = mapped_column(sa.LargeBinary(64))
    subject: Mapped[str] = mapped_column(sa.Text)
    identity: Mapped[str | None] = mapped_column(exact_text(IDENTITY_LENGTH), index=True)
    roles: Mapped[list[str]] = mapped_column(sa.JSON)
    attributes: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    profile: Mapped[str | None] = mapped_column(sa.String(64))
    key_type: Mapped[str] = mapped_column(sa.String(32))
    not_before: Mapped[datetime.datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime.datetime] = mapped_column(UTCDateTime())
    fingerprint_sha256: Mapped[bytes] = mapped_column(sa.LargeBinary(32), unique=True)
    # SHA-256 of the SubjectPublicKeyInfo DER: "revoke every certificate of this key".
    public_key_id: Mapped[bytes] = mapped_column(sa.LargeBinary(32), index=True)
    status: Mapped[CertificateStatus] = mapped_column(
        _enum(CertificateStatus, "certificate_status"), default=CertificateStatus.GOOD
    )
    revoked_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime())
    revocation_reason: Mapped[RevocationReason | None] = mapped_column(
        _enum(RevocationReason, "revocation_reason")
    )
    requested_by: Mapped[str] = mapped_column(sa.String(256))
    created_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime())
    der: Mapped[bytes] = mapped_column(sa.LargeBinary)
    # The certificate this one renewed (its id), None for enrolments, imports and CLI
    # issuance: revoking a certificate for a compromise reaches its successors through it.
    renewed_from_id: Mapped[int | None] = mapped_column(BigId, index=True)

    names: Mapped[list[CertificateName]] = relationship(
        back_populates="certificate",
        cascade="all, delete-orphan",
        lazy="selectin",  # one extra query per page of results, never one per row
        order_by="CertificateName.id",
    )

    __table_args__ = (
        # Serial first: one index serves "show SERIAL" (serial alone) and "serial of issuer",
        # and the constraint is the database's guarantee of RFC 5280 4.1.2.2 uniqueness.
        sa.UniqueConstraint("serial", "issuer_key_id"),
        # Listing pages through everything by (not_after, id): keyset pagination.
        sa.Index("ix_certificates_not_after_id", "not_after", "id"),
        # "expiring within": the live (not revoked) certificates by expiry. Partial, so
        # revoked rows cost nothing; the query repeats the predicate word for word, as both
        # planners require to pick a partial index.
        sa.Index(
            "ix_certificates_live_not_after",
            "not_after",
            "id",
            postgresql_where=sa.text("status <> 'revoked'"),
            sqlite_where=sa.text("status <> 'revoked'"),
        ),
        # CRL generation: the revoked and held entries of one issuer, in serial order.
        sa.Index(
            "ix_certificates_revoked_issuer_serial",
            "issuer_key_id",
            "serial",
            postgresql_where=sa.text("status <> 'good'"),
            sqlite_where=sa.text("status <> 'good'"),
        ),
        sa.CheckConstraint(
            "(status = 'good' AND revoked_at IS NULL AND revocation_reason IS NULL)"
            " OR (status <> 'good' AND revoked_at IS NOT NULL AND revocation_reason IS NOT NULL)",
            name="revocation_consistent",
        ),
        # RFC 5280 5.3.1: only certificateHold can be undone; keep the status and reason in step.
        sa.CheckConstraint(
            "(status = 'on_hold') = (revocation_reason = 'certificateHold') OR revocation_reason IS NULL",
            name="hold_reason",
        ),
    )

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")

    def is_expired(self, now: datetime.datetime) -> bool:
        return self.not_after <= now

    def revocation_json(self) -> dict[str, Any]:
        """``status``, ``revoked_at`` and ``revocation_reason`` as the CLI's JSON shows them."""
        return {
            "status": self.status.value,
            "revoked_at": None if self.revoked_at is None else self.revoked_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "revocation_reason": None if self.revocation_reason is None else self.revocation_reason.value,
        }


class CertificateName(Base):
    """One subjectAltName of a certificate, searchable by (kind, value)."""

    __tablename__ = "certificate_names"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    certificate_id: Mapped[int] = mapped_column(
        sa.ForeignKey("certificates.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[NameKind] = mapped_column(_enum(NameKind, "name_kind"))
    value: Mapped[str] = mapped_column(exact_text(NAME_LENGTH))

    certificate: Mapped[CertificateRecord] = relationship(back_populates="names")

    # certificate_id last: "who has dns:api.example.org" is answered from the index alone.
    __table_args__ = (sa.Index("ix_certificate_names_kind_value", "kind", "value", "certificate_id"),)


class CRLState(Base):
    """The last CRL number each issuer key used (RFC 5280 5.2.3: monotonically increasing)."""

    __tablename__ = "crl_state"

    issuer_key_id: Mapped[bytes] = mapped_column(sa.LargeBinary(64), primary_key=True)
    # RFC 5280 allows 20 octets; a 64-bit counter outlives any CA at one CRL per second.
    last_number: Mapped[int] = mapped_column(sa.BigInteger)
    updated_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    """One append-only, hash-chained audit record (see :mod:`certwright.store.audit`)."""

    __tablename__ = "audit_events"

    # Assigned by the appender (head.seq + 1), not by the database: the chain needs
    # gap-free numbers, which sequences and AUTOINCREMENT do not promise.
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime.datetime] = mapped_column(UTCDateTime())
    kind: Mapped[AuditKind] = mapped_column(_enum(AuditKind, "audit_kind", constrained=False))
    actor: Mapped[str] = mapped_column(sa.String(256))
    subject: Mapped[str | None] = mapped_column(sa.String(256), index=True)
    # Canonical JSON text (sorted keys, no spaces) exactly as hashed: a JSON/JSONB column
    # would be re-serialised by the database and could no longer be checked byte for byte.
    details: Mapped[str] = mapped_column(sa.Text)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)


class AuditHead(Base):
    """The single row naming the last audit event: the lock appenders queue on.

    It also lets ``verify_chain`` notice rows deleted from the end of the log, which a
    chain alone cannot show.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str] = mapped_column(sa.String(64))

    __table_args__ = (sa.CheckConstraint("id = 1", name="single_row"),)


class EnrollmentToken(Base):
    """A one-time enrolment token: what it grants, and whether it was used.

    Only the SHA-256 of the secret is stored: a copy of the database redeems nothing.
    Single use is the database's job: redemption is one conditional ``UPDATE … WHERE
    used_at IS NULL AND expires_at > now`` (see :mod:`certwright.store.tokens`), so of two
    concurrent redemptions exactly one changes the row.
    """

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Public name of the token (audit, logs, API responses); never enough to redeem it.
    token_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    token_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), unique=True)
    identity: Mapped[str] = mapped_column(exact_text(IDENTITY_LENGTH))
    profile: Mapped[str] = mapped_column(sa.String(64))
    dns: Mapped[list[str]] = mapped_column(sa.JSON)
    ips: Mapped[list[str]] = mapped_column(sa.JSON)
    roles: Mapped[list[str]] = mapped_column(sa.JSON)
    attributes: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    lifetime_seconds: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_by: Mapped[str] = mapped_column(sa.String(256))
    created_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime())
    used_by: Mapped[str | None] = mapped_column(sa.String(256))
    # The certificate the redemption issued (same transaction as used_at).
    certificate_id: Mapped[int | None] = mapped_column(sa.ForeignKey("certificates.id", ondelete="SET NULL"))

    __table_args__ = (
        sa.CheckConstraint("(used_at IS NULL) = (used_by IS NULL)", name="use_recorded"),
        sa.CheckConstraint("certificate_id IS NULL OR used_at IS NOT NULL", name="certificate_after_use"),
    )
