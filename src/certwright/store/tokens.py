"""Queries of enrolment tokens, and the row lock a renewal takes.

Like :mod:`certwright.store.repository`, every function takes a Session and never begins
or commits: the use case owns the transaction, so redeeming a token, storing the
certificate it yields and auditing both commit together or not at all.

Example::

    >>> with store.write() as session:                                   # doctest: +SKIP
    ...     token = redeem_token(session, sha256(secret), at=now, by="enrol")
    ...     if token is None: ...                       # unknown, used or expired
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from certwright.store.models import CertificateRecord, EnrollmentToken


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


__all__ = ["add_token", "find_token", "get_token", "lock_certificate", "redeem_token"]
