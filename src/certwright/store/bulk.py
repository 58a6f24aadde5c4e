"""Recording many certificates in one transaction: batch signing's write path.

The one-row functions of :mod:`~certwright.store.repository` and
:mod:`~certwright.store.audit` flush and lock per row (~2 ms a certificate on SQLite); a
batch of 10^4 certificates goes through Core ``executemany`` inserts instead, with the
audit chain computed in Python and the head row locked and moved once.

Example::

    >>> with store.write() as session:                                  # doctest: +SKIP
    ...     add_certificates(session, rows)
    ...     append_events(session, events)
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import Session

from certwright.store.audit import canonical_json, event_hash, utc
from certwright.store.errors import DuplicateCertificateError
from certwright.store.models import (
    AuditEvent,
    AuditHead,
    AuditKind,
    Base,
    CertificateName,
    CertificateRecord,
    NameKind,
)

_LOOKUP_CHUNK = 1000  # bound parameters per IN (...): far below SQLite's 32,766


@dataclass(frozen=True)
class EventSpec:
    """One audit event to append (see :func:`~certwright.store.audit.append_event`)."""

    kind: AuditKind
    actor: str
    at: datetime.datetime
    subject: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


def _table(model: type[Base]) -> sa.Table:
    table = model.__table__
    assert isinstance(table, sa.Table)
    return table


Row = tuple[dict[str, Any], list[tuple[NameKind, str]]]  # see records.certificate_fields


def add_certificates(session: Session, rows: Sequence[Row]) -> None:
    """Insert new certificate rows and their names with two multi-row statements.

    ``rows`` come from :func:`~certwright.store.records.certificate_fields`. Core inserts on
    the tables, not the ORM: no object per row. Raises :class:`DuplicateCertificateError`
    when any (issuer, serial) or fingerprint is already stored; the transaction must then
    be rolled back (nothing of it is kept).
    """
    if not rows:
        return
    table = _table(CertificateRecord)
    fields = [row for row, _ in rows]
    try:
        # A plain executemany: INSERT ... RETURNING goes row by row on SQLite (~5x slower);
        # the new ids are read back by fingerprint (unique, indexed) in one query instead.
        session.execute(sa.insert(table), fields)
    except exc.IntegrityError as error:
        raise DuplicateCertificateError(
            "a certificate of the batch (same issuer and serial, or same fingerprint) is already "
            "in the inventory"
        ) from error
    fingerprints = [row["fingerprint_sha256"] for row in fields]
    found: dict[bytes, int] = {}
    for start in range(0, len(fingerprints), _LOOKUP_CHUNK):
        chunk = fingerprints[start : start + _LOOKUP_CHUNK]
        query = sa.select(table.c.fingerprint_sha256, table.c.id).where(table.c.fingerprint_sha256.in_(chunk))
        found.update((fingerprint, ident) for fingerprint, ident in session.execute(query))
    ids = [found[fingerprint] for fingerprint in fingerprints]
    names = [
        {"certificate_id": ident, "kind": kind, "value": value}
        for ident, (_, row_names) in zip(ids, rows, strict=True)
        for kind, value in row_names
    ]
    if names:
        session.execute(sa.insert(_table(CertificateName)), names)


def append_events(session: Session, events: Sequence[EventSpec]) -> None:
    """Append events to the hash chain in order: one head lock, one insert, one head update."""
    if not events:
        return
    seq, previous = session.execute(
        sa.select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
    ).one()
    rows = []
    for event in events:
        seq += 1
        at = utc(event.at)  # refuses a naive time, as append_event does
        details = canonical_json(dict(event.details))
        digest = event_hash(
            seq=seq,
            at=at,
            kind=event.kind.value,
            actor=event.actor,
            subject=event.subject,
            details=details,
            prev_hash=previous,
        )
        rows.append(
            {
                "seq": seq,
                "at": at,
                "kind": event.kind,
                "actor": event.actor,
                "subject": event.subject,
                "details": details,
                "prev_hash": previous,
                "hash": digest,
            }
        )
        previous = digest
    session.execute(sa.insert(_table(AuditEvent)), rows)
    session.execute(sa.update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=previous))
