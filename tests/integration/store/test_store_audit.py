"""The hash-chained audit log: appending, and finding every kind of tampering with raw SQL."""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import START

from certwright.errors import InvalidInputError
from certwright.store import AuditEvent, AuditKind, Store, append_event, audit_head, verify_chain
from certwright.store.audit import event_hash, iter_events
from certwright.store.models import GENESIS_HASH

EVENTS = 5


def at(index: int) -> datetime.datetime:
    return START + datetime.timedelta(seconds=index, microseconds=123456)


@pytest.fixture
def log(store: Store) -> Store:
    """A log of EVENTS events, one transaction each (as use cases append them)."""
    return fill(store)


@pytest.fixture
def sqlite_log(sqlite_store: Store) -> Store:
    """The same log on SQLite only (for tampering that PostgreSQL's column types refuse)."""
    return fill(sqlite_store)


def fill(store: Store) -> Store:
    for index in range(1, EVENTS + 1):
        with store.write() as session:
            append_event(
                session,
                kind=AuditKind.ISSUED if index % 2 else AuditKind.REVOKED,
                actor=f"user-{index}",
                at=at(index),
                subject=format(1000 + index, "x"),
                details={"profile": "mtls", "index": index, "names": ["a", "b"]},
            )
    return store


def sql(store: Store, statement: str, **params: object) -> None:
    with store.write() as session:
        session.execute(sa.text(statement), params)


def report(store: Store, **options: object) -> tuple[bool, int | None, str]:
    with store.read() as session:
        result = verify_chain(session, **options)  # type: ignore[arg-type]
    return result.ok, result.first_bad_seq, result.problem or ""


def test_an_empty_log_verifies(store: Store) -> None:
    with store.read() as session:
        result = verify_chain(session)
        assert audit_head(session) == (0, GENESIS_HASH)
    assert (result.ok, result.events, result.head_seq) == (True, 0, 0)


def test_events_chain_and_verify(log: Store) -> None:
    with log.read() as session:
        events = list(iter_events(session))
        result = verify_chain(session, batch_size=2)
        head = audit_head(session)
    assert [e.seq for e in events] == list(range(1, EVENTS + 1))
    assert events[0].prev_hash == GENESIS_HASH
    for previous, event in itertools.pairwise(events):
        assert event.prev_hash == previous.hash
    assert head == (EVENTS, events[-1].hash)
    assert events[0].details == '{"index":1,"names":["a","b"],"profile":"mtls"}'
    assert events[0].at == at(1)
    assert events[0].hash == event_hash(
        seq=1,
        at=at(1),
        kind="issued",
        actor="user-1",
        subject="3e9",
        details=events[0].details,
        prev_hash=GENESIS_HASH,
    )
    assert result.ok and result.events == EVENTS
    assert str(result) == f"audit log intact: {EVENTS} events, head at {EVENTS}"


@pytest.mark.parametrize(
    "assignment",
    ["actor = 'someone else'", "details = '{}'", "subject = NULL", "kind = 'unrevoked'", "kind = 'garbage'"],
)
def test_an_edited_row_is_found(log: Store, assignment: str) -> None:
    sql(log, f"UPDATE audit_events SET {assignment} WHERE seq = 3")
    ok, first_bad, problem = report(log)
    assert (ok, first_bad) == (False, 3)
    assert "does not match its hash" in problem


def test_an_edited_time_is_found(log: Store) -> None:
    with log.read() as session:
        original = session.scalar(sa.select(AuditEvent.at).where(AuditEvent.seq == 2))
    assert original is not None
    with log.write() as session:
        later = original + datetime.timedelta(microseconds=1)
        session.execute(sa.update(AuditEvent).where(AuditEvent.seq == 2).values(at=later))
    assert report(log)[:2] == (False, 2)


def test_garbage_in_a_sqlite_time_column_is_reported_not_raised(sqlite_log: Store) -> None:
    sql(sqlite_log, "UPDATE audit_events SET at = 'yesterday' WHERE seq = 4")
    ok, first_bad, problem = report(sqlite_log)
    assert (ok, first_bad) == (False, 4)
    assert "cannot be read back" in problem


def test_a_blob_in_a_sqlite_text_column_is_reported_not_raised(sqlite_log: Store) -> None:
    sql(sqlite_log, "UPDATE audit_events SET details = X'00ff' WHERE seq = 2")
    assert report(sqlite_log)[:2] == (False, 2)


def test_a_deleted_row_is_found(log: Store) -> None:
    sql(log, "DELETE FROM audit_events WHERE seq = 3")
    ok, first_bad, problem = report(log)
    assert (ok, first_bad) == (False, 3)
    assert "event 3 is missing" in problem


def test_the_first_row_deleted_is_found(log: Store) -> None:
    sql(log, "DELETE FROM audit_events WHERE seq = 1")
    assert report(log)[:2] == (False, 1)


def test_rows_deleted_from_the_end_are_found(log: Store) -> None:
    sql(log, "DELETE FROM audit_events WHERE seq >= 4")
    ok, first_bad, problem = report(log)
    assert (ok, first_bad) == (False, 4)
    assert "deleted from the end" in problem


def test_reordered_rows_are_found(log: Store) -> None:
    """Rows 2 and 3 swap places (their sequence numbers), each keeping its own hash."""
    sql(log, "UPDATE audit_events SET seq = -2 WHERE seq = 2")
    sql(log, "UPDATE audit_events SET seq = 2 WHERE seq = 3")
    sql(log, "UPDATE audit_events SET seq = 3 WHERE seq = -2")
    ok, first_bad, _ = report(log)
    assert (ok, first_bad) == (False, 2)


def test_an_inserted_row_is_found_even_with_a_valid_hash_of_its_own(log: Store) -> None:
    """A forged event 3, correctly hashed and chained to 2; the old 3.. move up by one."""
    with log.read() as session:
        two = session.scalars(sa.select(AuditEvent).where(AuditEvent.seq == 2)).one()
        prev = two.hash
    sql(log, "UPDATE audit_events SET seq = seq + 100 WHERE seq >= 3")
    sql(log, "UPDATE audit_events SET seq = seq - 99 WHERE seq >= 100")
    forged_at = at(2) + datetime.timedelta(milliseconds=1)
    digest = event_hash(
        seq=3, at=forged_at, kind="revoked", actor="mallory", subject="1", details="{}", prev_hash=prev
    )
    with log.write() as session:
        session.add(
            AuditEvent(
                seq=3,
                at=forged_at,
                kind=AuditKind.REVOKED,
                actor="mallory",
                subject="1",
                details="{}",
                prev_hash=prev,
                hash=digest,
            )
        )
    ok, first_bad, _ = report(log)
    assert (ok, first_bad) == (False, 4)


def test_a_row_replaced_by_a_consistent_forgery_is_found_by_the_next_one(log: Store) -> None:
    """Event 3 rewritten with a correct hash of its new content: event 4 no longer chains to it."""
    with log.read() as session:
        three = session.scalars(sa.select(AuditEvent).where(AuditEvent.seq == 3)).one()
        prev, when = three.prev_hash, three.at
    digest = event_hash(
        seq=3, at=when, kind="issued", actor="mallory", subject="1", details="{}", prev_hash=prev
    )
    sql(
        log,
        "UPDATE audit_events SET actor = 'mallory', subject = '1', details = '{}', kind = 'issued', hash = :h"
        " WHERE seq = 3",
        h=digest,
    )
    ok, first_bad, problem = report(log)
    assert (ok, first_bad) == (False, 4)
    assert "does not chain to event 3" in problem


def test_a_rewritten_log_is_found_against_an_anchored_head(log: Store) -> None:
    """Recomputing every hash fools the chain alone; an anchor kept elsewhere does not."""
    with log.read() as session:
        anchor = audit_head(session)
        events = list(iter_events(session))
    prev = GENESIS_HASH
    for event in events:
        actor = "mallory" if event.seq == 2 else event.actor
        digest = event_hash(
            seq=event.seq,
            at=event.at,
            kind=event.kind.value,
            actor=actor,
            subject=event.subject,
            details=event.details,
            prev_hash=prev,
        )
        sql(
            log,
            "UPDATE audit_events SET actor = :a, prev_hash = :p, hash = :h WHERE seq = :s",
            a=actor,
            p=prev,
            h=digest,
            s=event.seq,
        )
        prev = digest
    sql(log, "UPDATE audit_head SET hash = :h", h=prev)
    assert report(log)[0] is True  # the limit of a bare hash chain, documented
    ok, first_bad, problem = report(log, expected_head=anchor)
    assert (ok, first_bad) == (False, EVENTS)
    assert "anchored head" in problem


def test_a_truncated_log_is_found_against_an_anchored_head(log: Store) -> None:
    with log.read() as session:
        anchor = audit_head(session)
    sql(log, "DELETE FROM audit_events WHERE seq >= 4")
    sql(log, "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_events WHERE seq = 3)")
    assert report(log)[0] is True
    ok, first_bad, problem = report(log, expected_head=anchor)
    assert (ok, first_bad) == (False, EVENTS)
    assert "no longer in the log" in problem


def test_a_long_log_verifies_in_batches(store: Store) -> None:
    with store.write() as session:
        for index in range(1500):
            append_event(session, kind=AuditKind.CRL, actor="crl", at=at(index), details={"n": index})
    with store.read() as session:
        result = verify_chain(session, batch_size=100)
    assert (result.ok, result.events, result.head_seq) == (True, 1500, 1500)


def test_details_must_be_plain_json_and_times_aware(store: Store) -> None:
    with store.write() as session:
        with pytest.raises(InvalidInputError, match="plain JSON"):
            append_event(session, kind=AuditKind.KEY, actor="a", at=START, details={"when": START})
        with pytest.raises(InvalidInputError, match="plain JSON"):
            append_event(session, kind=AuditKind.KEY, actor="a", at=START, details={"x": float("nan")})
        with pytest.raises(InvalidInputError, match="naive"):
            append_event(session, kind=AuditKind.KEY, actor="a", at=datetime.datetime(2030, 1, 1))
    with store.read() as session:
        assert audit_head(session) == (0, GENESIS_HASH)


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(0, 2**63),
    actor=st.text(),
    subject=st.none() | st.text(),
    details=st.text(),
    kind=st.text(),
    prev=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    micros=st.integers(0, 10**6 - 1),
)
def test_event_hash_is_sha256_of_the_sorted_key_json_object(
    seq: int, actor: str, subject: str | None, details: str, kind: str, prev: str, micros: int
) -> None:
    """The hand-assembled encoding equals json.dumps(sort_keys=True, ...) for any input."""
    at = datetime.datetime(2030, 1, 1, 12, 0, 0, micros, tzinfo=datetime.UTC)
    reference = json.dumps(
        {
            "seq": seq,
            "at": at.isoformat(timespec="microseconds"),
            "kind": kind,
            "actor": actor,
            "subject": subject,
            "details": details,
            "prev_hash": prev,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    expected = hashlib.sha256(reference.encode("utf-8")).hexdigest()
    got = event_hash(seq=seq, at=at, kind=kind, actor=actor, subject=subject, details=details, prev_hash=prev)
    assert got == expected
