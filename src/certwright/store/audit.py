"""The append-only, hash-chained audit log.

Each event's ``hash`` is SHA-256 over a canonical encoding of the event (its sequence
number, time, kind, actor, subject, details and the previous event's hash), so changing,
deleting, inserting or reordering any row breaks the chain from that row on, and
:func:`verify_chain` names the first sequence number where it breaks.

Canonical encoding: a JSON object with exactly the keys ``seq``, ``at`` (ISO 8601 UTC with
microseconds), ``kind``, ``actor``, ``subject``, ``details`` (the details' own canonical
JSON text, as stored) and ``prev_hash``, serialised with sorted keys, no whitespace and
ASCII escapes, then UTF-8 encoded. The first event's ``prev_hash`` is 64 zeros.

Appending is serialised by the single ``audit_head`` row: the appender locks it
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write transaction already holds the
database's only writer lock), chains to the hash it names, inserts the event and moves
the head, all in the caller's transaction. Two writers therefore queue instead of both
chaining to the same predecessor. Append last in a use case: the head stays locked until
the transaction commits.

What a hash chain cannot do alone: someone able to write the database *and* recompute
every hash after the row they change can forge a consistent log. Record
:func:`audit_head` somewhere else now and then (a log line, a ticket, a CRL extension) to
anchor it; ``verify_chain(expected_head=...)`` then checks the log still contains it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from certwright.store.chain import canonical_json, event_hash, utc
from certwright.store.models import GENESIS_HASH, AuditEvent, AuditHead, AuditKind


@dataclass(frozen=True)
class AuditReport:
    """The outcome of :func:`verify_chain`; ``first_bad_seq`` and ``problem`` are None when ok."""

    events: int
    head_seq: int
    first_bad_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def __str__(self) -> str:
        if self.ok:
            return f"audit log intact: {self.events} events, head at {self.head_seq}"
        return f"audit log broken at event {self.first_bad_seq}: {self.problem}"


def append_event(
    session: Session,
    *,
    kind: AuditKind,
    actor: str,
    at: datetime.datetime,
    subject: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain, inside the caller's (write) transaction."""
    at = utc(at)  # both databases keep microseconds: the hash survives a reload
    details_json = canonical_json(dict(details or {}))
    head_seq, head_hash = session.execute(
        sa.select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
    ).one()
    seq = head_seq + 1
    digest = event_hash(
        seq=seq,
        at=at,
        kind=kind.value,
        actor=actor,
        subject=subject,
        details=details_json,
        prev_hash=head_hash,
    )
    event = AuditEvent(
        seq=seq,
        at=at,
        kind=kind,
        actor=actor,
        subject=subject,
        details=details_json,
        prev_hash=head_hash,
        hash=digest,
    )
    session.add(event)
    session.execute(sa.update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=digest))
    session.flush()
    return event


def audit_head(session: Session) -> tuple[int, str]:
    """The (sequence, hash) of the last event: (0, 64 zeros) for an empty log. Anchor it elsewhere."""
    seq, digest = session.execute(sa.select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    return int(seq), str(digest)


def iter_events(session: Session, *, batch_size: int = 1000) -> Iterator[AuditEvent]:
    """Every event in sequence order, streamed (for ``audit show`` and exports)."""
    query = sa.select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=batch_size)
    yield from session.scalars(query)


def verify_chain(
    session: Session, *, batch_size: int = 1000, expected_head: tuple[int, str] | None = None
) -> AuditReport:
    """Re-hash the whole log in sequence order, streaming; report the first broken event.

    Finds an edited row (its hash no longer matches), a deleted row (a gap in the
    sequence, or the head pointing past the last row), an inserted or reordered row (its
    ``prev_hash`` is not its predecessor's hash), and, with ``expected_head`` (an
    anchored :func:`audit_head`), a log rewritten after that point.
    """
    head_seq, head_hash = audit_head(session)
    previous_seq, previous_hash, count = 0, GENESIS_HASH, 0
    anchored = expected_head is None
    for row in _rows(session, batch_size):
        count += 1
        problem = _check_row(row, previous_seq, previous_hash)
        if problem is None and expected_head is not None and row.seq == expected_head[0]:
            anchored = True
            if row.hash != expected_head[1]:
                problem = row.seq, "differs from the anchored head: the log was rewritten"
        if problem is not None:
            return AuditReport(count, head_seq, *problem)
        previous_seq, previous_hash = row.seq, row.hash
    if (previous_seq, previous_hash) != (head_seq, head_hash):
        return AuditReport(count, head_seq, *_head_problem(previous_seq, head_seq))
    if not anchored:
        assert expected_head is not None
        return AuditReport(count, head_seq, expected_head[0], "the anchored event is no longer in the log")
    return AuditReport(count, head_seq)


def _head_problem(last_seq: int, head_seq: int) -> tuple[int, str]:
    """(first bad sequence, why) when the last event and the head disagree."""
    if last_seq == head_seq:
        return last_seq, f"the head's hash is not event {last_seq}'s: the head or the last event was replaced"
    how = "deleted from the end" if last_seq < head_seq else "added without the appender"
    return min(last_seq, head_seq) + 1, (
        f"the log ends at event {last_seq} but its head names event {head_seq}: events were {how}"
    )


def _rows(session: Session, batch_size: int) -> Iterator[Any]:
    # Columns, not ORM objects: no identity map to grow. Kind and time are read raw (no
    # enum or datetime conversion), so a row edited into nonsense is reported as that row,
    # not raised from the middle of a batch.
    query = sa.select(
        AuditEvent.seq,
        sa.type_coerce(AuditEvent.at, sa.types.NullType()).label("at"),
        sa.type_coerce(AuditEvent.kind, sa.types.NullType()).label("kind"),
        AuditEvent.actor,
        AuditEvent.subject,
        AuditEvent.details,
        AuditEvent.prev_hash,
        AuditEvent.hash,
    ).order_by(AuditEvent.seq)
    result = session.execute(query.execution_options(yield_per=batch_size))
    try:
        yield from result
    finally:
        result.close()


def _stored_time(value: object) -> datetime.datetime:
    """A raw time column: ``timestamptz`` on PostgreSQL, SQLAlchemy's UTC text on SQLite."""
    if isinstance(value, datetime.datetime):
        return value
    if not isinstance(value, str):
        raise TypeError(f"time {value!r} is not a time")
    return datetime.datetime.fromisoformat(value).replace(tzinfo=datetime.UTC)


def _check_row(row: Any, previous_seq: int, previous_hash: str) -> tuple[int, str] | None:
    if row.seq != previous_seq + 1:
        missing = previous_seq + 1
        return missing, f"event {missing} is missing (deleted): the log goes from {previous_seq} to {row.seq}"
    try:
        expected = event_hash(
            seq=row.seq,
            at=_stored_time(row.at),
            kind=row.kind,
            actor=row.actor,
            subject=row.subject,
            details=row.details,
            prev_hash=row.prev_hash,
        )
    except (ValueError, TypeError) as exc:  # SQLite keeps whatever text or blob was written
        return row.seq, f"it cannot be read back ({exc}): the row was edited"
    if row.hash != expected:
        return row.seq, "its content does not match its hash: the row was edited or moved"
    if row.prev_hash != previous_hash:
        return row.seq, f"it does not chain to event {previous_seq}: a row was inserted, replaced or moved"
    return None
