"""SQLite writers of one process queue first come, first served (store.session._WriterQueue).

Threads of one process take turns on a per-file queue before ``BEGIN IMMEDIATE``, instead
of polling in SQLite's busy handler. The tests watch the queue fill, then release it, and
check the order the writers committed in: the audit log records it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from store_helpers import START

from certwright.errors import CertwrightError
from certwright.store import AuditEvent, Store, StoreError, append_event, open_store, verify_chain
from certwright.store.models import AuditKind
from certwright.store.session import _writer_queue, _WriterQueue


def poll(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def waiting(queue: _WriterQueue) -> int:
    return len(queue._waiters)


def test_writers_of_one_process_commit_in_arrival_order(sqlite_store: Store) -> None:
    store = sqlite_store
    queue = _writer_queue(store._queue_key or "")
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with store.write() as session:
                append_event(session, kind=AuditKind.TOKEN, actor=name, at=START)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = []
    with store.write() as session:
        append_event(session, kind=AuditKind.TOKEN, actor="holder", at=START)
        for index in range(6):
            thread = threading.Thread(target=writer, args=(f"w{index}",))
            thread.start()
            threads.append(thread)
            poll(lambda count=index + 1: waiting(queue) == count, f"writer {index} to queue")
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    assert errors == []
    with store.read() as session:
        actors = list(session.scalars(sa.select(AuditEvent.actor).order_by(AuditEvent.seq)))
        assert verify_chain(session).ok
    assert actors == ["holder"] + [f"w{index}" for index in range(6)]
    assert waiting(queue) == 0 and queue._owner is None


def test_stores_of_one_file_share_a_queue_and_other_files_do_not(tmp_path: Path) -> None:
    with (
        open_store(tmp_path / "a.db", upgrade=True) as first,
        open_store(f"sqlite:///{tmp_path / 'a.db'}") as second,
        open_store(tmp_path / "b.db", upgrade=True) as other,
    ):
        assert first._queue_key == second._queue_key != other._queue_key
        assert _writer_queue(first._queue_key or "") is _writer_queue(second._queue_key or "")


def test_a_writer_that_outwaits_the_busy_timeout_gets_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread holds the turn past the timeout: "database is locked", as SQLite says it."""
    monkeypatch.setattr("certwright.store.session.SQLITE_BUSY_TIMEOUT_MS", 200)
    with open_store(tmp_path / "inventory.db", upgrade=True) as store:
        queue = _writer_queue(store._queue_key or "")
        outcome: dict[str, object] = {}

        def second() -> None:
            try:
                with store.write() as session:
                    session.execute(sa.text("SELECT 1"))
                outcome["second"] = "wrote"
            except CertwrightError as exc:
                outcome["second"] = exc

        with store.write() as session:
            session.execute(sa.text("SELECT 1"))
            thread = threading.Thread(target=second)
            thread.start()
            thread.join(60)  # gives up by itself: the turn is never handed over while held
            assert not thread.is_alive()
        assert isinstance(outcome["second"], StoreError), outcome
        assert "database is locked" in str(outcome["second"])
        assert waiting(queue) == 0 and queue._owner is None
        with store.write() as session:  # the queue is usable again
            session.execute(sa.text("SELECT 1"))


def test_a_write_inside_a_write_of_the_same_thread_fails_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turn is re-entrant: the inner write reaches SQLite's lock and its busy timeout."""
    monkeypatch.setattr("certwright.store.session.SQLITE_BUSY_TIMEOUT_MS", 200)
    with open_store(tmp_path / "inventory.db", upgrade=True) as store:
        with store.write() as outer:
            outer.execute(sa.text("SELECT 1"))
            with pytest.raises(StoreError, match="database is locked"), store.write() as inner:
                inner.execute(sa.text("SELECT 1"))
        with store.write() as session:
            session.execute(sa.text("SELECT 1"))


def test_another_process_still_meets_sqlites_own_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue is per process: a foreign holder of SQLite's lock is waited for by busy_timeout."""
    monkeypatch.setattr("certwright.store.session.SQLITE_BUSY_TIMEOUT_MS", 200)
    with open_store(tmp_path / "inventory.db", upgrade=True) as store:
        holder = sqlite3.connect(tmp_path / "inventory.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="database is locked"), store.write() as session:
                session.execute(sa.text("SELECT 1"))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        queue = _writer_queue(store._queue_key or "")
        assert waiting(queue) == 0 and queue._owner is None


def test_the_queue_hands_over_to_the_oldest_waiter_and_counts_reentry() -> None:
    queue = _WriterQueue()
    assert queue.acquire(timeout=1)
    assert queue.acquire(timeout=1)  # re-entered
    order: list[int] = []

    def waiter(index: int) -> None:
        assert queue.acquire(timeout=30)
        order.append(index)
        queue.release()

    threads = []
    for index in range(4):
        thread = threading.Thread(target=waiter, args=(index,))
        thread.start()
        threads.append(thread)
        poll(lambda count=index + 1: waiting(queue) == count, f"waiter {index}")
    queue.release()
    assert waiting(queue) == 4  # still held once
    queue.release()
    for thread in threads:
        thread.join(30)
    assert order == [0, 1, 2, 3]
    with pytest.raises(RuntimeError):
        queue.release()  # not held
