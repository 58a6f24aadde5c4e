"""Recording a signed batch into a SQLite inventory through ``sqlite3``, without SQLAlchemy.

``certwright sign --csr-dir`` on a CA's own SQLite inventory is one process that records
what its workers sign. Importing SQLAlchemy and the models costs that process ~0.3-0.5 s
of CPU, as much as recording 5,000 certificates, on a machine whose cores the workers
need. This writer does the batch's one transaction with the standard library alone:

* the same statements as :mod:`~certwright.store.bulk` (the tests hold each one equal to
  what SQLAlchemy compiles from :mod:`~certwright.store.models`);
* the same stored forms (the tests hold every parameter equal to
  :class:`~certwright.store.bulk.RowEncoder`'s): 20-octet serials, UTC times as
  ``YYYY-MM-DD HH:MM:SS.ffffff`` text, JSON text, enum values;
* the same rows (:mod:`~certwright.store.records`) and audit events, chained with
  :mod:`~certwright.store.chain`;
* the same writers' turn (:mod:`~certwright.store.writer_lock`, then ``BEGIN IMMEDIATE``)
  and connection settings (WAL, ``synchronous=NORMAL``, foreign keys).

It only appends to an inventory that is ready: :meth:`SQLiteBatch.open` returns None for a
missing file, one not in WAL mode, or one not at this certwright's schema revision, and
the caller then takes the SQLAlchemy path, which creates, migrates or reports it.

Example::

    >>> batch = SQLiteBatch.open("/ca/inventory.db", shared=shared_fields(...))  # doctest: +SKIP
    >>> with batch:                                                              # doctest: +SKIP
    ...     batch.add(issued_certificates)   # any number of times
    ...     batch.close()                    # moves the audit head; leaving commits
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii as _json_text  # C, what json.dumps uses
from types import TracebackType
from typing import Any

from certwright.issuance import Issued
from certwright.store.chain import chained_hasher, utc
from certwright.store.errors import DuplicateCertificateError, StoreError, WriterBusy
from certwright.store.records import issued_own_fields
from certwright.store.values import HEAD_REVISION, AuditKind, serial_to_bytes
from certwright.store.writer_lock import WRITER_LOCK_SUFFIX, FileLock

# As the Store waits (store/session.py, SQLITE_BUSY_TIMEOUT_MS).
WRITER_WAIT_SECONDS = 30.0

CERTIFICATE_COLUMNS = (
    "serial",
    "issuer",
    "issuer_key_id",
    "subject",
    "identity",
    "roles",
    "attributes",
    "profile",
    "key_type",
    "not_before",
    "not_after",
    "fingerprint_sha256",
    "public_key_id",
    "status",
    "revoked_at",
    "revocation_reason",
    "requested_by",
    "created_at",
    "der",
    "renewed_from_id",
)
INSERT_CERTIFICATE = (
    "INSERT INTO certificates (id, serial, issuer, issuer_key_id, subject, identity, roles, "
    "attributes, profile, key_type, not_before, not_after, fingerprint_sha256, public_key_id, "
    "status, revoked_at, revocation_reason, requested_by, created_at, der, renewed_from_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_NAME = "INSERT INTO certificate_names (certificate_id, kind, value) VALUES (?, ?, ?)"
INSERT_EVENT = (
    "INSERT INTO audit_events (seq, at, kind, actor, subject, details, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
LOCK_HEAD = "SELECT audit_head.seq, audit_head.hash \nFROM audit_head \nWHERE audit_head.id = ?"
MOVE_HEAD = "UPDATE audit_head SET seq=?, hash=? WHERE audit_head.id = ?"

_SERIAL, _ROLES, _ATTRIBUTES, _NOT_BEFORE, _NOT_AFTER = (
    CERTIFICATE_COLUMNS.index(c) for c in ("serial", "roles", "attributes", "not_before", "not_after")
)
# Own columns stored as they are (text and bytes).
_PLAIN = tuple(
    (CERTIFICATE_COLUMNS.index(c), c)
    for c in ("subject", "identity", "key_type", "fingerprint_sha256", "public_key_id", "der")
)
# The columns each certificate has of its own (the rest a batch shares, encoded once).
_OWN = frozenset(
    (
        "serial",
        "subject",
        "identity",
        "roles",
        "attributes",
        "key_type",
        "not_before",
        "not_after",
        "fingerprint_sha256",
        "public_key_id",
        "der",
    )
)


def stored_time(at: datetime.datetime | None) -> str | None:
    """A time as SQLAlchemy's SQLite dialect stores ``UTCDateTime``: UTC, microseconds, no offset."""
    if at is None:
        return None
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at!r}: the store keeps timezone-aware UTC only")
    at = at.astimezone(datetime.UTC)
    return (
        f"{at.year:04d}-{at.month:02d}-{at.day:02d} "
        f"{at.hour:02d}:{at.minute:02d}:{at.second:02d}.{at.microsecond:06d}"
    )


def stored_value(column: str, value: Any) -> Any:
    """One column's parameter as the sqlite3 driver takes it (see the module doc)."""
    if value is None:
        return None
    if column == "serial":
        return serial_to_bytes(value)
    if column in ("roles", "attributes"):
        return json.dumps(value)
    if column in ("not_before", "not_after", "revoked_at", "created_at"):
        return stored_time(value)
    if isinstance(value, bytes | str | int):
        return value
    return value.value  # an enum: its value, as the models' non-native enums store it


class SQLiteBatch:
    """One batch's write transaction on a SQLite inventory file (see the module doc).

    Holds the writers' turn from :meth:`open` until the ``with`` block ends: leaving it
    normally commits, leaving it with an exception rolls everything back. Not thread-safe.
    """

    def __init__(self, path: str, connection: sqlite3.Connection, lock: FileLock, shared: Mapping[str, Any]):
        self.path = path
        self._connection = connection
        self._lock = lock
        self._shared = dict(shared)
        unknown = set(shared) - set(CERTIFICATE_COLUMNS)
        if unknown or _OWN & set(shared) or set(shared) | _OWN != set(CERTIFICATE_COLUMNS):
            raise ValueError(f"shared columns {sorted(shared)} do not complete a certificate row")
        self._template = [None if c in _OWN else stored_value(c, shared[c]) for c in CERTIFICATE_COLUMNS]
        self._json_memo: dict[tuple[Any, ...], str] = {}
        self._time_memo: dict[datetime.datetime, str] = {}
        # By time and zone: equal instants in two zones compare equal but print differently.
        self._iso_memo: dict[tuple[datetime.datetime, Any], str] = {}
        self._actor: str = shared["requested_by"]
        self._at = stored_time(utc(shared["created_at"]))
        self._kind = AuditKind.ISSUED.value
        self._digest = chained_hasher(at=shared["created_at"], kind=self._kind, actor=self._actor)
        self._issuer_json = _json_text(shared["issuer"])
        profile = shared["profile"]
        self._profile_json = "null" if profile is None else _json_text(profile)
        ((self._seq, self._head),) = self._rows(LOCK_HEAD, (1,))
        ((top,),) = self._rows("SELECT max(id) FROM certificates", ())
        self._next_id = int(top or 0) + 1
        self._moved = False

    @classmethod
    def open(
        cls, path: str, *, shared: Mapping[str, Any], wait: float = WRITER_WAIT_SECONDS
    ) -> SQLiteBatch | None:
        """Take the writers' turn on ``path`` and begin the batch's transaction.

        None (nothing taken, nothing written) when the file is not a ready inventory:
        missing, not in WAL mode, or at another schema revision. Raises
        :class:`~certwright.store.errors.WriterBusy` when another writer keeps the turn
        longer than ``wait`` seconds, :class:`~certwright.store.errors.StoreError` when
        the file cannot be used.
        """
        if not os.path.isfile(path):
            return None
        # The Store's key for the file (store/session.py): a symlinked path takes the same turn.
        lock = FileLock(os.path.realpath(path) + WRITER_LOCK_SUFFIX)
        try:
            if not lock.acquire(timeout=wait):
                raise WriterBusy(
                    f"inventory database {path}: another process's writer is busy (it held "
                    f"{lock.path} for {wait:g} s)"
                )
        except OSError as error:
            lock.forget()
            raise StoreError(f"inventory database {path}: cannot take the writers' turn: {error}") from error
        connection: sqlite3.Connection | None = None
        try:
            connection = sqlite3.connect(path, timeout=wait, isolation_level=None)
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("BEGIN IMMEDIATE")
            if not _ready(connection):  # checked inside the transaction: no migration can slip in
                connection.execute("ROLLBACK")
                connection.close()
                lock.release()
                lock.forget()
                return None
            return cls(path, connection, lock, shared)
        except BaseException as error:
            if connection is not None:
                connection.close()
            lock.release()
            lock.forget()
            if isinstance(error, sqlite3.Error):
                raise StoreError(f"inventory database {path}: {_reason(error)}") from error
            raise

    def add(self, certificates: Sequence[Issued]) -> None:
        """Insert the rows, names and issuance events of ``certificates``, in order."""
        if not certificates:
            return
        rows: list[tuple[Any, ...]] = []
        names: list[tuple[int, str, str]] = []
        events: list[tuple[Any, ...]] = []
        ident, seq, previous = self._next_id, self._seq, self._head
        at, actor, kind, digest = self._at, self._actor, self._kind, self._digest
        for issued in certificates:
            fields, own_names = issued_own_fields(issued)
            rows.append(self._row(ident, fields))
            names.extend((ident, name_kind.value, value) for name_kind, value in own_names)
            seq += 1
            subject = format(issued.serial, "x")
            details = self._details(fields)
            previous_hash, previous = previous, digest(seq, subject, details, previous)
            events.append((seq, at, kind, actor, subject, details, previous_hash, previous))
            ident += 1
        try:
            self._connection.executemany(INSERT_CERTIFICATE, rows)
        except sqlite3.IntegrityError as error:
            raise DuplicateCertificateError(
                "a certificate of the batch (same issuer and serial, or same fingerprint) is already "
                "in the inventory"
            ) from error
        except sqlite3.Error as error:
            raise StoreError(f"inventory database {self.path}: {_reason(error)}") from error
        self._execute_many(INSERT_NAME, names)
        self._execute_many(INSERT_EVENT, events)
        self._next_id, self._seq, self._head = ident, seq, previous
        self._moved = True

    def close(self) -> None:
        """Move the audit head to the last event added (nothing to do if none was)."""
        if self._moved:
            self._execute_many(MOVE_HEAD, [(self._seq, self._head, 1)])
            self._moved = False

    def _row(self, ident: int, fields: Mapping[str, Any]) -> tuple[Any, ...]:
        # Column by column, not through stored_value: a batch repeats its times (one
        # validity per second), roles and attributes, so those are looked up once encoded.
        values = self._template.copy()
        values[_SERIAL] = serial_to_bytes(fields["serial"])
        for position, column in _PLAIN:
            values[position] = fields[column]
        # Keys name their column: no roles and no attributes are both empty, "[]" and "{}".
        values[_ROLES] = self._json(fields["roles"], ("roles", *fields["roles"]))
        values[_ATTRIBUTES] = self._json(fields["attributes"], ("attributes", *fields["attributes"].items()))
        values[_NOT_BEFORE] = self._time(fields["not_before"])
        values[_NOT_AFTER] = self._time(fields["not_after"])
        return (ident, *values)

    def _json(self, value: Any, key: tuple[Any, ...]) -> str:
        encoded = self._json_memo.get(key)
        if encoded is None:
            encoded = _remember(self._json_memo, key, json.dumps(value))
        return encoded

    def _time(self, at: datetime.datetime) -> str:
        encoded = self._time_memo.get(at)
        if encoded is None:
            text = stored_time(at)
            assert text is not None
            encoded = _remember(self._time_memo, at, text)
        return encoded

    def _details(self, fields: Mapping[str, Any]) -> str:
        """``canonical_json(issuance_details(row))``, written out (the tests hold them equal)."""
        identity = fields["identity"]
        not_after = fields["not_after"]
        key = (not_after, not_after.tzinfo)
        iso = self._iso_memo.get(key)
        if iso is None:
            iso = _remember(self._iso_memo, key, _json_text(not_after.isoformat()))
        return (
            f'{{"fingerprint_sha256":"{fields["fingerprint_sha256"].hex()}",'
            f'"identity":{"null" if identity is None else _json_text(identity)},'
            f'"issuer":{self._issuer_json},"not_after":{iso},"profile":{self._profile_json},'
            f'"subject":{_json_text(fields["subject"])}}}'
        )

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            return self._connection.execute(sql, params).fetchall()
        except sqlite3.Error as error:
            raise StoreError(f"inventory database {self.path}: {_reason(error)}") from error

    def _execute_many(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        if not params:
            return
        try:
            self._connection.executemany(sql, params)
        except sqlite3.Error as error:
            raise StoreError(f"inventory database {self.path}: {_reason(error)}") from error

    def __enter__(self) -> SQLiteBatch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        connection = self._connection
        try:
            if kind is None:
                try:
                    connection.execute("COMMIT")
                except sqlite3.Error as failure:
                    raise StoreError(f"inventory database {self.path}: {_reason(failure)}") from failure
        finally:
            try:
                # SQLite may have rolled back by itself (a full disk, an I/O error): then
                # there is nothing left to roll back, and the first error stands.
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            finally:
                connection.close()
                self._lock.release()
                self._lock.forget()


_MEMO_LIMIT = 4096  # a batch repeats a handful of values; a caller that never repeats stays bounded


def _remember(memo: dict[Any, str], key: Any, value: str) -> str:
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value
    return value


def _ready(connection: sqlite3.Connection) -> bool:
    """Whether the file is an inventory this writer may append to as it is."""
    try:
        mode = connection.execute("PRAGMA journal_mode").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            return False
        revisions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError:  # no such table, not a database: the Store reports it
        return False
    return revisions == [(HEAD_REVISION,)]


def _reason(error: sqlite3.Error) -> str:
    return " ".join(str(error).split()) or type(error).__name__
