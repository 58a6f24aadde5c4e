"""Opening the inventory: SQLite (embedded default) or PostgreSQL, one code path.

``open_store("ca/inventory.db")`` or ``open_store("sqlite:///ca/inventory.db")`` opens a
SQLite file; ``open_store("postgresql+psycopg://certwright@db/certwright")`` a PostgreSQL
database. Either way the schema must be at this certwright's migration head:
``open_store(..., upgrade=True)`` migrates a new or older database first.

Transactions: :meth:`Store.read` and :meth:`Store.write` each give a Session inside one
transaction, committed when the block ends and rolled back if it raises. The difference
matters on SQLite: a write transaction starts with ``BEGIN IMMEDIATE``, taking the
database's single writer lock up front and waiting for it (``busy_timeout``). A deferred
``BEGIN`` that reads first and writes later can fail at once with SQLITE_BUSY when another
writer commits in between, and the busy timeout does not help there. Reads stay deferred,
so readers never queue behind each other (WAL lets them run beside the writer).

Writers of one process also queue in front of SQLite, first come first served, on a lock
per database file (:class:`_WriterQueue`): SQLite's busy handler makes a waiting writer
sleep and retry in growing steps (up to 100 ms), so under load a writer could wait many
commits longer than its turn (a p99 of ~1 s at 8 concurrent requests); queued, the next
writer starts as soon as the previous one commits. Between processes (the workers of
``certwright serve``, the CLI beside a server) the turn is an ``flock`` on a file beside
the database (``inventory.db-writer.lock``), polled every 20 to 200 us rather than
SQLite's sleeps of up to 100 ms; SQLite's own lock and ``busy_timeout`` stay behind it.

Example::

    >>> from certwright.store import open_store               # doctest: +SKIP
    >>> store = open_store("inventory.db", upgrade=True)       # doctest: +SKIP
    >>> with store.write() as session:                         # doctest: +SKIP
    ...     add_certificate(session, cert, profile="mtls", requested_by="cli")
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session

from certwright.store.errors import SchemaOutOfDateError, StoreError, WriterBusy
from certwright.store.migrate import current_revision, head_revision, is_known_revision, upgrade_engine
from certwright.store.writer_lock import WRITER_LOCK_SUFFIX, FileLock

SQLITE_BUSY_TIMEOUT_MS = 30_000
_PRIVATE = "engine:"
_BEGIN_OPTION = "certwright_sqlite_begin"
_PG_DRIVERS = {"postgresql", "postgres", "postgresql+psycopg"}
_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}
# Errors the caller caused (a constraint, bad SQL, a value the column refuses) propagate
# as they are; everything else a DBAPI raises means the database cannot be used.
_CALLER_ERRORS = (exc.IntegrityError, exc.ProgrammingError, exc.DataError)
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


class Store:
    """An open inventory database: an engine and the two kinds of transaction."""

    def __init__(self, engine: Engine, *, display_url: str) -> None:
        self.engine = engine
        self.url = display_url  # password hidden: safe to print and log
        self._writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self._queue_key = _queue_key(engine)
        self._pinned = _PinnedConnections(engine, self._writer) if engine.dialect.name == "sqlite" else None

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read transaction (deferred on SQLite), rolled back when the block ends."""
        with self.translate_errors(), Session(self.engine, expire_on_commit=False) as session:
            yield session  # the Session begins on first use; closing it rolls back

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back if it raises.

        Objects stay usable after the commit (``expire_on_commit=False``), so a use case can
        return what it stored. On SQLite the block first waits for its turn among this
        process's writers (FIFO), then for SQLite's own lock (``BEGIN IMMEDIATE``); the turn
        ends once the transaction has committed or rolled back.
        """
        with (
            self._writers_turn(),
            self.translate_errors(),
            Session(self._writer, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextlib.contextmanager
    def read_connection(self) -> Iterator[sa.Connection]:
        """:meth:`read` as a Core ``Connection``, for the request path's prepared statements.

        A Session costs ~40 us a transaction over its Connection; enrolment and renewal run
        only Core statements (``certwright.store.tokens``, ``certwright.store.bulk``), so they
        take the Connection alone. On SQLite the connection is this thread's own, kept open
        (a pool checkout and return cost as much as the statements): see
        :class:`_PinnedConnections`.
        """
        with self.translate_errors():
            pinned = self._pinned.get(write=False) if self._pinned is not None else None
            if pinned is None:
                with self.engine.connect() as connection:
                    yield connection  # begins on first use; closing it rolls back
                return
            with pinned.begin() as transaction:
                yield pinned
                transaction.rollback()  # a read: end the snapshot, write nothing

    @contextlib.contextmanager
    def statement_connection(self) -> Iterator[sa.Connection]:
        """A connection for reads of one statement each, outside any transaction.

        Each statement sees what was committed when it ran: use it for a lookup that is
        one ``SELECT`` (a token by its hash, a certificate by its fingerprint), never
        for several statements that must agree. On SQLite, in a thread that keeps its
        connections (:meth:`keep_connections_in_this_thread`), it is that thread's
        writing connection, idle between its transactions (SQLite runs a statement
        outside ``BEGIN`` in a transaction of its own): no ``BEGIN`` and ``ROLLBACK``
        around the one statement, and the pages its own writes just touched are still
        in its cache, where a separate reading connection has to read them again after
        every commit. On PostgreSQL it is a pooled connection in autocommit: the one
        statement is one round trip, where a transaction adds a ``BEGIN`` and a
        ``ROLLBACK``. Elsewhere it is :meth:`read_connection`.

        Example::

            >>> with store.statement_connection() as connection:        # doctest: +SKIP
            ...     state = token_state(connection, secret_hash)          # one SELECT
        """
        if self._pinned is None:  # PostgreSQL: in autocommit, one round trip (no BEGIN, no ROLLBACK)
            with self.translate_errors(), self.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT")
                yield connection
            return
        pinned = self._pinned.get(write=True)
        if pinned is None or pinned.in_transaction():
            with self.read_connection() as connection:
                yield connection
            return
        with self.translate_errors():
            try:
                yield pinned
            finally:
                if pinned.in_transaction():  # a statement went through SQLAlchemy: end what it began
                    pinned.rollback()

    @contextlib.contextmanager
    def write_connection(self, *, wait: float | None = None) -> Iterator[sa.Connection]:
        """:meth:`write` as a Core ``Connection`` (same turn, same ``BEGIN IMMEDIATE``).

        ``wait``: on SQLite, give up after this many seconds in the writers' queue (or at
        the other processes' lock) with :class:`WriterBusy`, before anything is written;
        None waits as long as :meth:`write` does. PostgreSQL has no such turn.
        """
        with self._writers_turn(wait), self.translate_errors():
            pinned = self._pinned.get(write=True) if self._pinned is not None else None
            if pinned is None:
                with self._writer.begin() as connection:
                    yield connection
                return
            with pinned.begin():
                yield pinned

    def keep_connections_in_this_thread(self) -> None:
        """Have this (long-lived) thread keep its request-path connections open (SQLite).

        For the threads that carry the load (a server's event loop, its database thread):
        :meth:`read_connection` and :meth:`write_connection` then skip the pool's checkout
        and return (~0.1 ms a request). Other threads borrow from the pool as before.
        """
        if self._pinned is not None:
            self._pinned.keep_for_this_thread()

    @contextlib.contextmanager
    def _writers_turn(self, wait: float | None = None) -> Iterator[None]:
        if self._queue_key is None:  # PostgreSQL: row locks, no database-wide writer lock
            yield
            return
        timeout = SQLITE_BUSY_TIMEOUT_MS / 1000 if wait is None else wait
        queue = _writer_queue(self._queue_key)
        if not queue.acquire(timeout=timeout):
            if wait is not None:
                raise WriterBusy(f"inventory database {self.url}: another writer of this process is busy")
            # What SQLite would have said after busy_timeout: the same wait, the same error.
            raise StoreError(
                f"inventory database {self.url}: database is locked (another writer of this "
                f"process held it for {timeout:g} s)"
            )
        try:
            file_lock = queue.file_lock if queue.depth == 1 else None
            if file_lock is not None and not file_lock.acquire(timeout=timeout):
                if wait is not None:
                    raise WriterBusy(f"inventory database {self.url}: another process's writer is busy")
                raise StoreError(
                    f"inventory database {self.url}: database is locked (another process's writer "
                    f"held {file_lock.path} for {timeout:g} s)"
                )
            try:
                yield
            finally:
                if file_lock is not None:
                    file_lock.release()
        finally:
            queue.release()

    @contextlib.contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Turn "cannot reach, open or lock the database" into a :class:`StoreError`."""
        try:
            yield
        except exc.DBAPIError as error:
            if isinstance(error, _CALLER_ERRORS) and not _refused_access(error):
                raise  # the statement's fault, not the database's
            raise StoreError(f"inventory database {self.url}: {_reason(error)}") from error

    def revision(self) -> str | None:
        """The Alembic revision the database is at (None: never migrated)."""
        with self.translate_errors(), self.engine.connect() as connection:
            return current_revision(connection)

    def close(self) -> None:
        """Close every pooled connection (and the threads' own, on SQLite)."""
        if self._pinned is not None:
            self._pinned.close()
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"


class _PinnedConnections:
    """One reading and one writing SQLite connection for each thread that asks, kept open.

    The request path (:meth:`Store.read_connection`, :meth:`Store.write_connection`) runs
    a few short statements per transaction; a pool checkout, its reset on return and the
    begin events cost about as much. The thread that carries the load (a server's event
    loop) asks to keep its pair (:meth:`Store.keep_connections_in_this_thread`); every
    other thread borrows from the pool as before. At most ``MAX_THREADS`` threads keep
    connections, and those of threads that have ended go back to the pool when another
    thread asks, so the pool is never drained. A connection that was invalidated or
    closed is replaced on next use. A forked child (the server's workers) starts with
    none: a connection is never shared across ``fork``.
    """

    MAX_THREADS = 4

    def __init__(self, reader: Engine, writer: Engine) -> None:
        self._engines = {False: reader, True: writer}
        self._local = threading.local()
        self._owned: list[tuple[threading.Thread, sa.Connection]] = []
        self._keepers: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def keep_for_this_thread(self) -> None:
        self._check_fork()
        self._release_ended()
        with self._lock:
            if len(self._keepers) >= self.MAX_THREADS:
                return  # this thread borrows from the pool, as any other
            self._keepers.add(threading.current_thread())
        self._local.keep = True

    def get(self, *, write: bool) -> sa.Connection | None:
        """This thread's kept connection (opened if needed), or None: borrow from the pool."""
        self._check_fork()
        local = self._local
        if not getattr(local, "keep", False):
            return None
        name = "write" if write else "read"
        connection: sa.Connection | None = getattr(local, name, None)
        if connection is None or connection.closed or connection.invalidated:
            connection = self._engines[write].connect()
            setattr(local, name, connection)
            with self._lock:
                self._owned.append((threading.current_thread(), connection))
        return connection

    def _release_ended(self) -> None:
        with self._lock:
            ended = [c for t, c in self._owned if not t.is_alive()]
            self._owned = [(t, c) for t, c in self._owned if t.is_alive()]
            self._keepers = {t for t in self._keepers if t.is_alive()}
        _close_all(ended)  # SQLite connections of the pool may be closed from any thread

    def _check_fork(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's connections are not ours
            self._local, self._owned, self._keepers = threading.local(), [], set()
            self._lock = threading.Lock()
            self._pid = os.getpid()

    def close(self) -> None:
        with self._lock:
            owned, self._owned, self._keepers = self._owned, [], set()
        _close_all(c for _, c in owned)
        self._local = threading.local()


def _close_all(connections: Iterable[sa.Connection]) -> None:
    for connection in connections:
        with contextlib.suppress(Exception):  # another thread's: close what can be closed
            connection.close()


class _WriterQueue:
    """A re-entrant lock whose waiters get it in arrival order, with a timeout.

    ``threading.Lock`` promises no order: a thread that just released it can take it
    again before the waiters wake. Here each waiter sleeps on its own gate, and a release
    hands the lock to the oldest waiter. Re-entrant so that a write opened inside a
    write of the same thread meets SQLite's busy timeout as before, not a deadlock.
    """

    def __init__(self, file_lock: FileLock | None = None) -> None:
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiters: collections.deque[tuple[int, threading.Lock]] = collections.deque()
        self.file_lock = file_lock  # other processes' writers (None: a private database)

    @property
    def depth(self) -> int:
        """How many nested turns the owner holds (1: the outermost)."""
        return self._depth

    def acquire(self, *, timeout: float) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None:  # no owner: nobody waits either (a release hands over)
                self._owner, self._depth = me, 1
                return True
            gate = threading.Lock()
            gate.acquire()
            entry = (me, gate)
            self._waiters.append(entry)
        if gate.acquire(timeout=timeout):
            return True  # release() made this thread the owner
        with self._mutex:
            try:
                self._waiters.remove(entry)
            except ValueError:
                return True  # handed over just as the wait timed out: the turn is ours
            return False

    def release(self) -> None:
        with self._mutex:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a writer turn this thread does not hold")
            self._depth -= 1
            if self._depth:
                return
            if self._waiters:
                ident, gate = self._waiters.popleft()
                self._owner, self._depth = ident, 1
                gate.release()
            else:
                self._owner = None


_QUEUES: dict[str, _WriterQueue] = {}
_QUEUES_LOCK = threading.Lock()


def _writer_queue(key: str) -> _WriterQueue:
    queue = _QUEUES.get(key)
    if queue is None:
        with _QUEUES_LOCK:
            queue = _QUEUES.get(key)
            if queue is None:
                shared = not key.startswith(_PRIVATE)
                queue = _QUEUES[key] = _WriterQueue(FileLock(key + WRITER_LOCK_SUFFIX) if shared else None)
    return queue


def _forget_queues() -> None:
    # A forked child has one thread: a queue some other parent thread held would never
    # be released in it. Its stores start over with new queues (and lock files of their own).
    global _QUEUES_LOCK
    for queue in _QUEUES.values():
        if queue.file_lock is not None:
            queue.file_lock.forget()
    _QUEUES.clear()
    _QUEUES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_queues)


def _queue_key(engine: Engine) -> str | None:
    """Which writer queue a store's writes join: one per SQLite file (None: not SQLite)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return f"{_PRIVATE}{id(engine)}"  # private or URI-named databases: this store's own queue
    return os.path.realpath(database)


def open_store(target: str | Path, *, upgrade: bool = False, echo: bool = False) -> Store:
    """Open the inventory at ``target``: a SQLite path or URL, or a PostgreSQL URL.

    With ``upgrade=True`` a missing SQLite file is created and an empty or older schema is
    migrated to this certwright's head; without it such a database is refused with a
    :class:`SchemaOutOfDateError` that says to run ``certwright db upgrade``. Raises
    :class:`StoreError` when the URL is bad or the database cannot be reached.
    """
    url = _parse_target(target)
    display = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        _check_sqlite_file(url, display, create=upgrade)
    store = Store(_create_engine(url, echo=echo), display_url=display)
    try:
        _check_schema(store, upgrade=upgrade)
    except BaseException:
        store.close()
        raise
    return store


def _parse_target(target: str | Path) -> URL:
    text = str(target)
    if isinstance(target, Path) or "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser().absolute()))
    try:
        url = sa.make_url(text)
    except (exc.ArgumentError, ValueError) as error:
        shown = _URL_PASSWORD.sub(r"\1***@", text)
        raise StoreError(f"invalid database URL {shown}: {error}") from error
    if url.drivername in _PG_DRIVERS:
        return url.set(drivername="postgresql+psycopg")  # the one PostgreSQL driver certwright ships
    if url.drivername in _SQLITE_DRIVERS:
        return url
    raise StoreError(
        f"unsupported database URL {url.render_as_string(hide_password=True)}: use a SQLite path, "
        "sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE"
    )


def _check_sqlite_file(url: URL, display: str, *, create: bool) -> None:
    """Refuse a missing file unless asked to create one: a typo must not make a new, empty CA."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.is_dir():
        raise StoreError(f"inventory database {display}: directory {path.parent} does not exist")
    if not create and not path.exists():
        raise StoreError(
            f"no inventory database at {path}: create it with `certwright db upgrade` "
            "(or open it with upgrade=True)"
        )


def _create_engine(url: URL, *, echo: bool) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    engine = sa.create_engine(
        url,
        echo=echo,
        # Replicas share one server: a small pool per process. A connection idle for a
        # while is checked before use (_ping_if_idle), so a dropped idle connection costs a
        # reconnect, not a failed request.
        pool_size=5,
        max_overflow=10,
        pool_timeout=30,
        pool_recycle=1800,
        connect_args={"connect_timeout": 10, "application_name": "certwright"},
    )
    event.listen(engine, "connect", _note_idle)
    event.listen(engine, "checkin", _note_idle)
    event.listen(engine, "checkout", functools.partial(_ping_if_idle, engine.dialect))
    return engine


# A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
# SQLAlchemy's pool_pre_ping pings at every checkout: a round trip per transaction (two
# more on an enrolment's seven). What drops connections is mostly idleness (a proxy's or
# firewall's timeout, PostgreSQL's idle_session_timeout); a server restarted under load fails the
# statements of the connections in use at that moment once (SQLAlchemy then invalidates
# the whole pool, as it does for any disconnect), and the requests get a 503 to retry.
PING_AFTER_IDLE = 5.0
_IDLE_SINCE = "certwright_idle_since"


def _note_idle(dbapi_connection: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(dialect: sa.Dialect, dbapi_connection: Any, record: Any, proxy: Any) -> None:
    since = record.info.get(_IDLE_SINCE)
    if since is not None and time.monotonic() - since < PING_AFTER_IDLE:
        return
    try:
        dialect.do_ping(dbapi_connection)
    except dialect.loaded_dbapi.Error as error:
        if dialect.is_disconnect(error, dbapi_connection, None):
            # The pool drops this connection and checks out another (a new one if need be).
            raise exc.DisconnectionError(f"stale pooled connection: {_one_line(error)}") from error
        raise
    record.info[_IDLE_SINCE] = time.monotonic()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy (through _sqlite_on_begin) emit BEGIN, instead of the sqlite3 module's
    # own guesswork, which starts transactions late and cannot do BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL: readers do not block the writer nor the writer readers; NORMAL sync is
        # durable against a process crash (a power cut may lose the last commits).
        _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the file to WAL once; it stays so (the mode is stored in the file).

    The switch needs the database to itself and SQLite does not apply the busy timeout to
    it, so two processes creating the file at once retry here instead of failing.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() in ("wal", "memory"):
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_on_begin(connection: sa.Connection) -> None:
    mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    sql = _BEGIN_SQL[mode]
    # On the sqlite3 connection itself: every transaction runs this, and SQLAlchemy's
    # statement machinery would double its cost. Errors are wrapped as SQLAlchemy wraps
    # them (a busy database is an OperationalError, which translate_errors reports).
    driver = connection.connection.driver_connection
    assert driver is not None
    try:
        driver.execute(sql)
    except sqlite3.Error as error:
        raise exc.DBAPIError.instance(sql, (), error, sqlite3.Error, dialect=connection.dialect) from error


_BEGIN_SQL = {mode: f"BEGIN {mode}" for mode in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")}


def _check_schema(store: Store, *, upgrade: bool) -> None:
    current = store.revision()
    head = head_revision()
    if current == head:
        return
    if current is not None and not is_known_revision(current):
        # Never "upgrade" (or run) against a schema a later certwright wrote.
        raise SchemaOutOfDateError(
            f"inventory database {store.url} is at schema revision {current}, which this "
            "certwright does not know: it is newer; use the certwright that migrated it"
        )
    if upgrade:
        with store.translate_errors():
            upgrade_engine(store.engine)
        return
    if current is None:
        problem = "has no certwright schema yet"
    else:
        problem = f"is at schema revision {current}, this certwright needs {head}"
    raise SchemaOutOfDateError(f"inventory database {store.url} {problem}: run `certwright db upgrade`")


def _refused_access(error: exc.DBAPIError) -> bool:
    """Permission denied (SQLSTATE 42501): the account may not write here, whatever the statement.

    psycopg files it under ProgrammingError, like a typo in SQL; it is a database problem
    (a read-only role, a revoked grant) to report, not a bug to raise.
    """
    return getattr(error.orig, "sqlstate", None) == "42501"


def _reason(error: exc.DBAPIError) -> str:
    """The driver's one-line reason, without SQLAlchemy's statement dump."""
    return _one_line(error.orig) if error.orig is not None else str(error)


def _one_line(error: BaseException) -> str:
    """A driver error's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__
