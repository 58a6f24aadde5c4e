"""Queries of enrolment tokens, and the certificate reads of the request path.

Besides tokens: what a renewal decides on (:func:`held`, :func:`lock_held`, with its row
lock) and the status an mTLS peer is checked against (:func:`certificate_status`).

Like :mod:`certwright.store.repository`, every function takes a Session and never begins
or commits: the use case owns the transaction, so redeeming a token, storing the
certificate it yields and auditing both commit together or not at all.

The request path (``certwright serve``) uses the Core-level forms: :func:`insert_token`,
:func:`redeem`, :func:`link_certificate` and :func:`lock_held`, prepared statements of
plain columns, no ORM object or flush (an enrolment on SQLite spent ~0.6 ms redeeming
through the ORM, ~0.05 ms this way). The ORM forms stay for tests and tools.

Example::

    >>> with store.write() as session:                                   # doctest: +SKIP
    ...     token = redeem(session, sha256(secret), at=now, by="enrol")
    ...     if token is None: ...                       # unknown, used or expired
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from certwright.store.bulk import InTransaction, Prepared, RowEncoder, dialect_of, link_certificate
from certwright.store.models import CertificateRecord, CertificateStatus, EnrollmentToken
from certwright.x509.revocation_reason import RevocationReason


def add_token(
    session: Session,
    *,
    token_id: str,
    token_hash: bytes,
    identity: str,
    profile: str,
    dns: Sequence[str],
    ips: Sequence[str],
    roles: Sequence[str],
    attributes: Mapping[str, str],
    lifetime_seconds: int | None,
    created_by: str,
    created_at: datetime.datetime,
    expires_at: datetime.datetime,
) -> EnrollmentToken:
    """Store a new, unused token (only the hash of its secret) and flush."""
    token = EnrollmentToken(
        token_id=token_id,
        token_hash=token_hash,
        identity=identity,
        profile=profile,
        dns=list(dns),
        ips=list(ips),
        roles=list(roles),
        attributes=dict(attributes),
        lifetime_seconds=lifetime_seconds,
        created_by=created_by,
        created_at=created_at,
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return token


def redeem_token(
    session: Session, token_hash: bytes, *, at: datetime.datetime, by: str
) -> EnrollmentToken | None:
    """Mark the token used, if it is unused and unexpired at ``at``; None otherwise.

    One conditional UPDATE: the database decides, not a read followed by a write. Two
    concurrent redemptions cannot both match ``used_at IS NULL``: on PostgreSQL the second
    UPDATE waits for the first's row lock and then re-checks the condition against the
    committed row (READ COMMITTED); on SQLite the write transactions run one after the
    other. If the caller's transaction rolls back (issuance failed), the token is unused
    again.
    """
    token = EnrollmentToken
    statement = (
        sa.update(token)
        .where(token.token_hash == token_hash, token.used_at.is_(None), token.expires_at > at)
        .values(used_at=at, used_by=by)
        .returning(token)
        .execution_options(synchronize_session="fetch")
    )
    redeemed = session.scalars(statement).all()
    assert len(redeemed) <= 1, "token_hash is unique"
    return redeemed[0] if redeemed else None


def find_token(session: Session, token_hash: bytes) -> EnrollmentToken | None:
    """The token with this secret hash, whatever its state (to say why a redemption failed)."""
    return session.scalars(
        sa.select(EnrollmentToken).where(EnrollmentToken.token_hash == token_hash)
    ).one_or_none()


def get_token(session: Session, token_id: str) -> EnrollmentToken | None:
    """The token with this public id."""
    return session.scalars(
        sa.select(EnrollmentToken).where(EnrollmentToken.token_id == token_id)
    ).one_or_none()


def lock_certificate(session: Session, fingerprint_sha256: bytes) -> CertificateRecord | None:
    """The certificate with this fingerprint, its row locked until the transaction ends.

    A renewal reads the presented certificate's status and issues its successor in one
    transaction; the lock (``FOR UPDATE`` on PostgreSQL, the writer lock on SQLite) makes
    a concurrent revocation wait for the renewal, or the renewal see the revocation:
    never a successor of a certificate revoked meanwhile.
    """
    query = (
        sa.select(CertificateRecord)
        .where(CertificateRecord.fingerprint_sha256 == fingerprint_sha256)
        .with_for_update()
    )
    return session.scalars(query).one_or_none()


# -- the request path: Core statements, built once -------------------------------------------


def _table(model: type[EnrollmentToken] | type[CertificateRecord]) -> sa.Table:
    table = model.__table__
    assert isinstance(table, sa.Table)
    return table


_TOKENS = _table(EnrollmentToken)
_CERTIFICATES = _table(CertificateRecord)


class RedeemedToken(NamedTuple):
    """What a token just redeemed grants (its columns; see :class:`EnrollmentToken`)."""

    id: int
    token_id: str
    identity: str
    profile: str
    dns: list[str]
    ips: list[str]
    roles: list[str]
    attributes: dict[str, str]
    lifetime_seconds: int | None


class HeldCertificate(NamedTuple):
    """The columns a renewal decides on, of the certificate presented (its row locked)."""

    id: int
    serial: int
    status: CertificateStatus
    revocation_reason: RevocationReason | None
    not_after: datetime.datetime
    profile: str | None
    identity: str | None

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")


# Typed bind parameters: the same "now" is the redemption time and the expiry bound.
_NOW = sa.bindparam("now", type_=_TOKENS.c.used_at.type)
_REDEEMED_COLUMNS = [_TOKENS.c[name] for name in RedeemedToken._fields]
_REDEEM = Prepared(
    _TOKENS.update()
    .where(
        _TOKENS.c.token_hash == sa.bindparam("secret_hash", type_=_TOKENS.c.token_hash.type),
        _TOKENS.c.used_at.is_(None),
        _TOKENS.c.expires_at > _NOW,
    )
    .values(used_at=_NOW, used_by=sa.bindparam("redeemer", type_=_TOKENS.c.used_by.type))
    .returning(*_REDEEMED_COLUMNS),
    columns=_REDEEMED_COLUMNS,
)
_HELD_COLUMNS = [_CERTIFICATES.c[name] for name in HeldCertificate._fields]
_HELD_QUERY = sa.select(*_HELD_COLUMNS).where(
    _CERTIFICATES.c.fingerprint_sha256
    == sa.bindparam("fingerprint", type_=_CERTIFICATES.c.fingerprint_sha256.type)
)
_HELD = Prepared(_HELD_QUERY, columns=_HELD_COLUMNS)
# PostgreSQL: FOR UPDATE; SQLite: nothing (the writer lock is held).
_LOCK_HELD = Prepared(_HELD_QUERY.with_for_update(), columns=_HELD_COLUMNS)


class TokenState(NamedTuple):
    """A token as stored: its grant, and whether it may still be redeemed (if not, why)."""

    grant: RedeemedToken  # the grant's columns, as :func:`redeem` returns them
    used_at: datetime.datetime | None
    used_by: str | None
    expires_at: datetime.datetime

    @property
    def token_id(self) -> str:
        return self.grant.token_id

    def redeemable(self, now: datetime.datetime) -> bool:
        return self.used_at is None and now < self.expires_at


_STATE_COLUMNS = [*_REDEEMED_COLUMNS, _TOKENS.c.used_at, _TOKENS.c.used_by, _TOKENS.c.expires_at]
_TOKEN_STATE = Prepared(
    sa.select(*_STATE_COLUMNS).where(
        _TOKENS.c.token_hash == sa.bindparam("secret_hash", type_=_TOKENS.c.token_hash.type)
    ),
    columns=_STATE_COLUMNS,
)


_STATUS = Prepared(
    sa.select(_CERTIFICATES.c.status).where(
        _CERTIFICATES.c.serial == sa.bindparam("serial", type_=_CERTIFICATES.c.serial.type),
        _CERTIFICATES.c.issuer_key_id
        == sa.bindparam("issuer_key_id", type_=_CERTIFICATES.c.issuer_key_id.type),
    ),
    columns=[_CERTIFICATES.c.status],
)


@functools.lru_cache(maxsize=8)
def _token_encoder(dialect: sa.Dialect) -> RowEncoder:
    return RowEncoder(_TOKENS, dialect)


def insert_token(
    session: InTransaction,
    *,
    token_id: str,
    token_hash: bytes,
    identity: str,
    profile: str,
    dns: Sequence[str],
    ips: Sequence[str],
    roles: Sequence[str],
    attributes: Mapping[str, str],
    lifetime_seconds: int | None,
    created_by: str,
    created_at: datetime.datetime,
    expires_at: datetime.datetime,
) -> None:
    """:func:`add_token` without an ORM object: one driver-level INSERT.

    Raises ``IntegrityError`` at once for a duplicate hash or id, as the flush does.
    """
    encoder = _token_encoder(dialect_of(session))
    row = encoder.encode(
        {
            "token_id": token_id,
            "token_hash": token_hash,
            "identity": identity,
            "profile": profile,
            "dns": list(dns),
            "ips": list(ips),
            "roles": list(roles),
            "attributes": dict(attributes),
            "lifetime_seconds": lifetime_seconds,
            "created_by": created_by,
            "created_at": created_at,
            "expires_at": expires_at,
            "used_at": None,
            "used_by": None,
            "certificate_id": None,
        }
    )
    encoder.insert(session, [row])


def redeem(
    session: InTransaction, token_hash: bytes, *, at: datetime.datetime, by: str
) -> RedeemedToken | None:
    """:func:`redeem_token` as one ``UPDATE … RETURNING`` of the grant's columns.

    The same conditional UPDATE, so the same guarantee: of concurrent redemptions exactly
    one matches ``used_at IS NULL`` (PostgreSQL re-checks it after the row lock; SQLite
    runs write transactions one at a time), and a rollback leaves the token unused.
    """
    rows = _REDEEM.rows(session, {"secret_hash": token_hash, "now": at, "redeemer": by})
    assert len(rows) <= 1, "token_hash is unique"
    return RedeemedToken._make(rows[0]) if rows else None


def token_state(session: InTransaction, token_hash: bytes) -> TokenState | None:
    """:func:`find_token` as plain columns: the grant, and whether (and why not) it may be
    redeemed. Tokens never change but for their redemption, so what a read says it grants
    is what :func:`redeem` later returns."""
    rows = _TOKEN_STATE.rows(session, {"secret_hash": token_hash})
    if not rows:
        return None
    grant_end = len(_REDEEMED_COLUMNS)
    return TokenState(RedeemedToken._make(rows[0][:grant_end]), *rows[0][grant_end:])


def certificate_status(session: InTransaction, serial: int, issuer_key_id: bytes) -> CertificateStatus | None:
    """The status of the certificate ``serial`` of the issuer with this key id (None: unknown).

    Every mTLS request of the API asks this of the certificate presented.
    """
    rows = _STATUS.rows(session, {"serial": serial, "issuer_key_id": issuer_key_id})
    return rows[0][0] if rows else None


def held(session: InTransaction, fingerprint_sha256: bytes) -> HeldCertificate | None:
    """:func:`lock_held` without the lock: what a renewal decides on, read ahead of it."""
    rows = _HELD.rows(session, {"fingerprint": fingerprint_sha256})
    return HeldCertificate._make(rows[0]) if rows else None


def lock_held(session: InTransaction, fingerprint_sha256: bytes) -> HeldCertificate | None:
    """:func:`lock_certificate` reading only the columns a renewal decides on.

    The same lock: ``FOR UPDATE`` on PostgreSQL (a concurrent revocation waits for the
    renewal), the writer lock of the transaction on SQLite.
    """
    rows = _LOCK_HELD.rows(session, {"fingerprint": fingerprint_sha256})
    return HeldCertificate._make(rows[0]) if rows else None


__all__ = [
    "HeldCertificate",
    "RedeemedToken",
    "TokenState",
    "add_token",
    "certificate_status",
    "find_token",
    "get_token",
    "held",
    "insert_token",
    "link_certificate",
    "lock_certificate",
    "lock_held",
    "redeem",
    "redeem_token",
    "token_state",
]


def purge_expired(session: InTransaction, *, expired_before: datetime.datetime) -> int:
    """Delete the tokens never redeemed that expired before ``expired_before``; how many.

    Such a token can never enrol anything: the row is dead weight the redeeming query
    skips. Its creation stays in the audit log. Redeemed tokens are kept: they say who
    asked for which certificate (``created_by``, ``certificate_id``).
    """
    if expired_before.tzinfo is None:
        raise ValueError(f"naive datetime {expired_before!r}: give a timezone-aware UTC time")
    result = session.execute(_PURGE, {"cutoff": expired_before})
    assert isinstance(result, sa.CursorResult)  # a DELETE's result counts its rows
    return result.rowcount


_PURGE = sa.delete(_TOKENS).where(
    _TOKENS.c.used_at.is_(None),
    _TOKENS.c.expires_at < sa.bindparam("cutoff", type_=_TOKENS.c.expires_at.type),
)
