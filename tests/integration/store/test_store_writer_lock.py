"""SQLite writers across processes and threads: the lock file, bounded waits, kept connections.

Every write transaction on a SQLite inventory takes this process's writers' queue and then
an ``flock`` on ``inventory.db-writer.lock``, so the worker processes of one server (and a
CLI command beside it) take turns without SQLite's sleeping busy handler. ``wait`` bounds
the turn (``WriterBusy``, nothing written); a thread that asks keeps its connections open.
"""

from __future__ import annotations

import datetime
import fcntl
import multiprocessing
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from certwright.store import AuditKind, StoreError, WriterBusy, open_store, verify_chain
from certwright.store import session as session_module
from certwright.store.audit import audit_head
from certwright.store.bulk import EventSpec, append_events
from certwright.store.session import WRITER_LOCK_SUFFIX, Store

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "inventory.db"
    open_store(path, upgrade=True).close()
    yield path


def _append(store: Store, actor: str, count: int) -> None:
    for i in range(count):
        with store.write_connection() as connection:
            append_events(connection, [EventSpec(AuditKind.ISSUED, actor, NOW, f"{actor}-{i}")])


def _writer_process(path: str, actor: str, count: int) -> None:
    with open_store(path) as store:
        _append(store, actor, count)


def test_writers_in_several_processes_take_turns_and_keep_the_chain(db: Path) -> None:
    context = multiprocessing.get_context("fork")
    per_process = 150
    processes = [
        context.Process(target=_writer_process, args=(str(db), f"p{i}", per_process)) for i in range(3)
    ]
    for process in processes:
        process.start()
    with open_store(db) as store:
        store.keep_connections_in_this_thread()
        _append(store, "parent", per_process)  # the parent writes too, through a kept connection
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    with open_store(db) as store, store.read() as session:
        report = verify_chain(session)
        assert report.ok, report
        assert audit_head(session)[0] == report.head_seq == report.events
        actors = session.execute(sa.text("SELECT actor, count(*) FROM audit_events GROUP BY actor")).all()
    assert dict(actors) == {"p0": per_process, "p1": per_process, "p2": per_process, "parent": per_process}
    lock = Path(f"{db}{WRITER_LOCK_SUFFIX}")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def _hold(db: Path) -> int:
    fd = os.open(f"{db}{WRITER_LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another process's writer would hold it
    return fd


def _events(store: Store) -> int:
    with store.read() as session:
        return int(session.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one())


def test_a_bounded_wait_gives_up_with_writer_busy_and_writes_nothing(db: Path) -> None:
    with open_store(db) as store:
        before = _events(store)
        fd = _hold(db)
        try:
            with (
                pytest.raises(WriterBusy, match="another process's writer is busy"),
                store.write_connection(wait=0.05) as connection,
            ):
                append_events(connection, [EventSpec(AuditKind.ISSUED, "busy", NOW)])
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        assert _events(store) == before
        _append(store, "after", 1)  # the turn is free again
        assert _events(store) == before + 1


def test_without_a_bounded_wait_a_held_lock_is_a_store_error_after_the_busy_timeout(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    with open_store(db) as store:
        fd = _hold(db)
        try:
            with (
                pytest.raises(StoreError, match="database is locked") as raised,
                store.write() as session,
            ):
                session.execute(sa.text("SELECT 1"))
            assert not isinstance(raised.value, WriterBusy)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def test_a_bounded_wait_behind_another_thread_of_this_process(db: Path) -> None:
    with open_store(db) as store:
        inside, release = threading.Event(), threading.Event()

        def long_writer() -> None:
            with store.write_connection():
                inside.set()
                release.wait(10)

        thread = threading.Thread(target=long_writer)
        thread.start()
        try:
            assert inside.wait(10)
            with (
                pytest.raises(WriterBusy, match="another writer of this process"),
                store.write_connection(wait=0.05),
            ):
                pass
        finally:
            release.set()
            thread.join()


def test_a_thread_that_asks_keeps_its_connections_and_others_borrow(db: Path) -> None:
    with open_store(db) as store:
        with store.write_connection() as first:
            pass
        with store.write_connection() as second:
            pass
        assert first is not second  # borrowed from the pool each time

        store.keep_connections_in_this_thread()
        with store.write_connection() as kept:
            pass
        with store.write_connection() as again, store.read_connection() as reading:
            assert again is kept and not kept.closed
            assert reading is not kept  # reads have their own (deferred BEGIN) connection
        with store.read_connection() as reading_again:
            assert reading_again is reading

        pool = store.engine.pool
        borrowed = []

        def other_thread() -> None:
            store.keep_connections_in_this_thread()
            with store.write_connection() as connection:
                borrowed.append(connection)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        checked_out = pool.checkedout()  # type: ignore[attr-defined]
        store.keep_connections_in_this_thread()  # a thread asking releases those of ended threads
        assert pool.checkedout() == checked_out - 1  # type: ignore[attr-defined]
        assert borrowed[0].closed
    assert kept.closed  # close() closes the kept connections too


def test_at_most_a_few_threads_keep_connections(db: Path) -> None:
    with open_store(db) as store:
        release = threading.Event()
        kept: list[bool] = []

        def keeper() -> None:
            store.keep_connections_in_this_thread()
            with store.write_connection() as first:
                pass
            with store.write_connection() as second:
                pass
            kept.append(first is second)
            release.wait(10)

        threads = [threading.Thread(target=keeper) for _ in range(6)]
        for thread in threads:
            thread.start()
        try:
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=10)
            while len(kept) < 6 and datetime.datetime.now() < deadline:
                threading.Event().wait(0.01)
        finally:
            release.set()
            for thread in threads:
                thread.join()
        assert sorted(kept) == [False, False, True, True, True, True]


def test_a_forked_child_uses_connections_and_a_lock_of_its_own(db: Path) -> None:
    context = multiprocessing.get_context("fork")
    with open_store(db) as store:
        store.keep_connections_in_this_thread()
        _append(store, "parent", 1)  # the parent holds a kept connection and an open lock file
        queue: multiprocessing.Queue[str] = context.Queue()
        child = context.Process(target=_child_with_inherited_store, args=(store, queue))
        child.start()
        child.join(timeout=60)
        assert queue.get(timeout=5) == "ok"
        _append(store, "parent", 1)
        with store.read() as session:
            assert verify_chain(session).ok


def _child_with_inherited_store(store: Store, queue: multiprocessing.Queue[str]) -> None:
    """The server's workers inherit the supervisor's Store through fork: they must write
    through connections and a lock file descriptor of their own."""
    try:
        store.keep_connections_in_this_thread()
        _append(store, "child", 3)
        queue.put("ok")
    except Exception as exc:
        queue.put(repr(exc))
