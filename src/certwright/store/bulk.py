"""Recording certificates without the ORM: batch signing's and the request path's writes.

The one-row functions of :mod:`~certwright.store.repository` and
:mod:`~certwright.store.audit` flush and lock per row (~2 ms a certificate on SQLite); a
batch of 10^4 certificates goes through Core ``executemany`` inserts instead, with the
audit chain computed in Python and the head row locked and moved once. Enrolment and
renewal (one certificate, one event per request) use the same writers, and
:class:`Prepared` statements, to stay under a millisecond.

Example::

    >>> with store.write() as session:                                  # doctest: +SKIP
    ...     add_certificates(session, rows)
    ...     append_events(session, events)
"""

from __future__ import annotations

import datetime
import enum
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

from certwright.store.chain import canonical_json, event_hash, utc
from certwright.store.errors import DuplicateCertificateError
from certwright.store.models import (
    AuditEvent,
    AuditHead,
    AuditKind,
    Base,
    CertificateName,
    CertificateRecord,
    EnrollmentToken,
    NameKind,
)


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
# Where a statement runs: an ORM Session's transaction, or a Core Connection's (the request path).
InTransaction = Session | sa.Connection
Params = tuple[Any, ...] | dict[str, Any]  # one row's driver parameters


class RowEncoder:
    """One table's INSERT, compiled once for a dialect, and rows encoded for its driver.

    SQLAlchemy's executemany runs every column's bind processor per row inside the
    statement call, in the process that executes it. A batch builds its rows in forked
    workers, which can run the same processors (the public ``bind_processor`` of each
    column type: UTC times, 20-octet serials, JSON, enums) where the row is made; the
    parent then hands finished parameters to the driver. Pickling an encoder is not
    needed: workers inherit it through ``fork``.
    """

    def __init__(self, table: sa.Table, dialect: sa.Dialect, *, explicit_id: bool = False) -> None:
        generated = [c for c in table.columns if c.primary_key and c.autoincrement in (True, "auto")]
        columns = [c for c in table.columns if c not in generated]
        id_keys = [c.key for c in generated] if explicit_id else []
        if explicit_id and id_keys != ["id"]:
            raise ValueError(f"table {table.name} has no generated id column to fill explicitly")
        compiled = sa.insert(table).compile(dialect=dialect, column_keys=id_keys + [c.key for c in columns])
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        by_key = {c.key: c for c in columns}
        order = list(compiled.positiontup or ()) if self.positional else list(by_key)
        if self.positional and explicit_id:
            # The id is bound first (table order), then the encoded values.
            if order[0] != "id":
                raise ValueError(f"unexpected parameter order for {table.name}: {order}")
            order = order[1:]
        self.keys = tuple(order)
        self.explicit_id = explicit_id
        self._processors = tuple((key, _processor(by_key[key].type, dialect)) for key in self.keys)

    def encode(self, row: Mapping[str, Any]) -> Params:
        values = [row[key] if process is None else process(row[key]) for key, process in self._processors]
        return tuple(values) if self.positional else dict(zip(self.keys, values, strict=True))

    def with_constants(self, constants: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Params]:
        """:meth:`encode` for rows that share the ``constants`` columns: those are encoded once.

        The returned function takes a mapping of the other columns only. A batch's rows
        share their issuer, profile, requester, creation time and status; encoding only
        what differs halves the work per row.
        """
        unknown = set(constants) - set(self.keys)
        if unknown:
            raise ValueError(f"not columns of this insert: {sorted(unknown)}")
        template: list[Any] = []
        varying: list[tuple[int, str, Callable[[Any], Any] | None]] = []
        for position, (key, process) in enumerate(self._processors):
            if key in constants:
                value = constants[key]
                template.append(value if process is None else process(value))
            else:
                template.append(None)
                varying.append((position, key, process))
        positional, keys = self.positional, self.keys

        def encode(row: Mapping[str, Any]) -> Params:
            values = template.copy()
            for position, key, process in varying:
                values[position] = row[key] if process is None else process(row[key])
            return tuple(values) if positional else dict(zip(keys, values, strict=True))

        return encode

    def insert(self, session: InTransaction, params: Sequence[Params], *, ids: Sequence[int] = ()) -> None:
        """Execute the INSERT for many encoded rows (one driver ``executemany``).

        With ``explicit_id`` the rows' primary keys are ``ids`` (from :func:`allocate_ids`).
        """
        if not params:
            return
        if self.explicit_id:
            params = [_with_id(ident, row) for ident, row in zip(ids, params, strict=True)]
        run_driver_sql(session, self.sql, list(params), many=True)


def run_driver_sql(
    session: InTransaction, sql: str, params: Params | list[Params], *, many: bool = False
) -> list[Any] | None:
    """Run driver-level SQL in the session's transaction; its rows (None: no result set).

    On the driver's connection itself, skipping SQLAlchemy's per-statement execution
    context (~15 us of a ~20 us statement on SQLite, ~60 us on PostgreSQL); driver
    errors are wrapped as SQLAlchemy wraps them (``IntegrityError``,
    ``OperationalError``), and a lost connection invalidates the Connection, as
    ``exec_driver_sql`` would (:func:`_run`). Not echoed by ``echo=True``.
    """
    connection, driver = _connection_of(session)
    return _run(connection, driver, sql, params, many=many)


def _run(
    connection: sa.Connection, driver: Any, sql: str, params: Params | list[Params], *, many: bool
) -> list[Any] | None:
    """Run ``sql`` on ``driver`` (the DBAPI connection of ``connection``, in its transaction).

    What ``exec_driver_sql`` would do, without its execution context: a driver error is
    wrapped as SQLAlchemy wraps it, and a lost connection invalidates ``connection`` (and
    so, as SQLAlchemy does, the pool's older connections).
    """
    dialect = connection.dialect
    base_error = dialect.loaded_dbapi.Error
    cursor = driver.cursor()
    try:
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else None
    except base_error as error:
        lost = dialect.is_disconnect(error, driver, cursor)
        if lost:
            connection.invalidate(error)
        raise exc.DBAPIError.instance(
            sql, params, error, base_error, dialect=dialect, ismulti=many, connection_invalidated=lost
        ) from error
    finally:
        cursor.close()


class Prepared:
    """A Core statement compiled once per dialect and run through the driver directly.

    The request path's statements (a token redemption, the audit head, one certificate)
    are few and fixed; through ``Connection.execute`` each one pays ~30-50 us of cache-key
    generation and parameter processing. Here the SQL text, the bind processors of its
    parameters and the result processors of ``columns`` (what it returns, in order) are
    worked out once; a call encodes the parameters, runs the SQL through
    :func:`run_driver_sql` (errors are still SQLAlchemy's, e.g. ``IntegrityError``) and
    decodes the rows.

    Example::

        >>> LOCK = Prepared(sa.select(t.c.seq).where(t.c.id == sa.bindparam("id")), columns=[t.c.seq])
        >>> LOCK.rows(session, {"id": 1})                                    # doctest: +SKIP
        [(7,)]
    """

    def __init__(self, statement: sa.Executable, *, columns: Sequence[sa.ColumnElement[Any]] = ()) -> None:
        self.statement = statement
        self.columns = tuple(columns)
        self._forms: dict[sa.Dialect, _PreparedForm] = {}

    def rows(self, session: InTransaction, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Execute with ``params`` (by bind name); the decoded rows, if the statement returns any."""
        connection, driver = _connection_of(session)
        form = self._forms.get(connection.dialect)
        if form is None:
            form = self._forms[connection.dialect] = _PreparedForm(
                self.statement, self.columns, connection.dialect
            )
        rows = _run(connection, driver, form.sql, form.encode(params or {}), many=False)
        if not rows:
            return []
        decode = form.decode_at
        if not decode:
            return [tuple(row) for row in rows]
        decoded = []
        for row in rows:
            values = list(row)
            for at, process in decode:
                values[at] = process(values[at])
            decoded.append(tuple(values))
        return decoded


class _PreparedForm:
    """One dialect's SQL text and processors of a :class:`Prepared` statement."""

    def __init__(
        self, statement: sa.Executable, columns: Sequence[sa.ColumnElement[Any]], dialect: sa.Dialect
    ) -> None:
        assert isinstance(statement, sa.ClauseElement)
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        names = list(compiled.positiontup or ()) if self.positional else list(compiled.binds)
        self.names = tuple(names)
        binds = [compiled.binds[name] for name in names]
        # Literal values of the statement (``id == 1``) are bound like the caller's:
        # encoded once, here.
        self.fixed = {
            name: _encoded(bind.value, bind.type, dialect)
            for name, bind in zip(names, binds, strict=True)
            if not bind.required
        }
        # The batch encoders' processors (see _processor): recent values remembered (the
        # request's time, the second's validity), plain bytes passed as they are.
        self.processors = tuple(
            (name, _processor(bind.type, dialect))
            for name, bind in zip(names, binds, strict=True)
            if name not in self.fixed
        )
        self.decoders = tuple(_decoder(c.type, dialect) for c in columns)
        # The columns that need decoding, by position (most values come as the driver reads them).
        self.decode_at = tuple((at, f) for at, f in enumerate(self.decoders) if f is not None)
        # Positional parameters (SQLite): per position, the caller's name and its processor,
        # or a literal's encoded value (name None); a name may occur twice (the same value
        # in WHERE and SET).
        by_name = dict(self.processors)
        self.plan: tuple[tuple[str | None, Callable[[Any], Any] | None, Any], ...] | None = None
        if self.positional:
            self.plan = tuple(
                (None, None, self.fixed[name]) if name in self.fixed else (name, by_name[name], None)
                for name in names
            )

    def encode(self, params: Mapping[str, Any]) -> Params:
        plan = self.plan
        if plan is not None:
            return tuple(
                [
                    fixed if name is None else params[name] if process is None else process(params[name])
                    for name, process, fixed in plan
                ]
            )
        encoded = {
            name: params[name] if process is None else process(params[name])
            for name, process in self.processors
        }
        if self.fixed:
            encoded.update(self.fixed)
        return encoded


def _decoder(column_type: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> Callable[[Any], Any] | None:
    process = column_type.dialect_impl(dialect).result_processor(dialect, None)
    if process is None or not isinstance(column_type, sa.JSON):
        return process
    return _memoized_json(process)


def _memoized_json(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A JSON column's ``process`` remembering the texts it decoded.

    Tokens repeat their JSON texts (most carry no DNS names, IPs or attributes; a fleet
    has few role lists) and a token is read twice per enrolment (the read that decides,
    the redemption that confirms): 4 texts a read, ~3 us each through json and
    SQLAlchemy's wrappers. Only flat values are kept (lists of strings, objects of
    string values), and each caller gets its own shallow copy, so no caller can change
    what another reads.
    """
    memo: dict[str, list[str] | dict[str, str]] = {}

    def decode(value: Any) -> Any:
        if type(value) is not str:  # a driver that decodes JSON itself, or NULL
            return process(value)
        cached = memo.get(value)
        if cached is None:
            decoded = process(value)
            if not _flat(decoded):
                return decoded
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            cached = memo[value] = decoded
        return list(cached) if isinstance(cached, list) else dict(cached)

    return decode


def _flat(value: Any) -> bool:
    if type(value) is list:
        return all(type(item) is str for item in value)
    if type(value) is dict:
        return all(type(item) is str for item in value.values())
    return False


def _encoded(value: Any, column_type: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> Any:
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    return value if process is None else process(value)


_CONNECTION_KEY = "certwright.bulk.connection"


def _connection_of(session: InTransaction) -> tuple[sa.Connection, Any]:
    """The session's Connection and its DBAPI connection (sqlite3's or psycopg's).

    ``Session.connection()`` costs ~10 us a call; within one transaction the Session keeps
    one Connection, so it is looked up once per transaction (keyed by the transaction
    object, which a commit or rollback replaces). A Connection (the request path's
    transactions, :meth:`~certwright.store.Store.write_connection`) is used as it is.
    """
    if isinstance(session, sa.Connection):
        return session, session.connection.driver_connection
    transaction = session.get_transaction()
    cached = session.info.get(_CONNECTION_KEY)
    if cached is not None and transaction is not None and cached[0] is transaction:
        return cached[1], cached[2]
    connection = session.connection()  # begins the transaction if needed
    driver = connection.connection.driver_connection
    session.info[_CONNECTION_KEY] = (session.get_transaction(), connection, driver)
    return connection, driver


def dialect_of(session: InTransaction) -> sa.Dialect:
    """The dialect of a Session's or a Connection's database."""
    return session.dialect if isinstance(session, sa.Connection) else session.get_bind().dialect


def _with_id(ident: int, params: Params) -> Params:
    return (ident, *params) if isinstance(params, tuple) else {"id": ident, **params}


def allocate_ids(session: Session, table: sa.Table, count: int) -> list[int]:
    """Reserve ``count`` new ``id`` values of ``table`` for rows inserted with explicit keys.

    PostgreSQL: drawn from the column's own sequence, so concurrent writers (other
    replicas) never collide. SQLite: the caller's write transaction holds the database's
    one writer lock (``BEGIN IMMEDIATE``, see :mod:`~certwright.store.session`), so no one
    else can insert until it commits, and ``max(id) + 1`` onwards is free.
    """
    if count <= 0:
        return []
    if session.get_bind().dialect.name == "postgresql":
        query = sa.text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n)")
        return [int(ident) for (ident,) in session.execute(query, {"table": table.name, "n": count})]
    top = session.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0
    return list(range(top + 1, top + 1 + count))


def _processor(column_type: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> Callable[[Any], Any] | None:
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return None
    if not _is_binary(column_type, dialect):
        return _memoized(process)
    # Binary processors wrap bytes in the driver's Binary (a memoryview on sqlite3), which
    # cannot be pickled back from a worker; every driver takes plain bytes. So a plain
    # binary column passes bytes as they are (wrapping and copying them back cost ~1 us
    # a value); a TypeDecorator's own conversion always runs.
    inner = process
    plain = not isinstance(column_type.dialect_impl(dialect), sa.TypeDecorator)

    def to_bytes(value: Any) -> Any:
        if plain and type(value) is bytes:
            return value
        result = inner(value)
        return bytes(result) if isinstance(result, memoryview) else result

    return to_bytes


_MEMO_LIMIT = 4096


def _memoized(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process`` remembering recent results: a batch repeats most values (its roles,
    attributes, creation time, and one validity per second), and a processor costs
    2-7 us (JSON, time formatting) against ~0.1 us for a lookup."""
    memo: dict[Any, Any] = {}

    def lookup(value: Any) -> Any:
        key = _memo_key(value)
        if key is None:
            return process(value)
        try:
            return memo[key]
        except KeyError:
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            result = memo[key] = process(value)
            return result

    return lookup


def _memo_key(value: Any) -> Any:
    # Typed keys: 1 and True, or "x" and ["x"], must not share an entry.
    if isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return (list, *value)
        return None
    if isinstance(value, dict):
        if all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return (dict, *value.items())  # insertion order matters to JSON text
        return None
    if value is None or isinstance(value, (str, datetime.datetime, enum.Enum)):
        return (type(value), value)
    return None  # ints and anything else: not worth it, or not safely hashable


def _is_binary(column_type: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> bool:
    impl = column_type.dialect_impl(dialect)
    if isinstance(impl, sa.TypeDecorator):
        impl = impl.impl_instance
    return isinstance(impl, sa.LargeBinary)


@dataclass(frozen=True)
class Encoders:
    """The encoders of a batch: certificates, their names, audit events."""

    certificates: RowEncoder
    names: RowEncoder
    events: RowEncoder

    @classmethod
    def for_dialect(cls, dialect: sa.Dialect) -> Encoders:
        return cls(
            RowEncoder(_table(CertificateRecord), dialect, explicit_id=True),
            RowEncoder(_table(CertificateName), dialect),
            RowEncoder(_table(AuditEvent), dialect),
        )


@dataclass(frozen=True)
class EncodedRow:
    """A certificate row ready for the driver, made by :meth:`Encoders.encode_row`."""

    params: Params
    fingerprint: bytes
    names: list[tuple[NameKind, str]]


@functools.lru_cache(maxsize=8)
def encoders_for(dialect: sa.Dialect) -> Encoders:
    """The :class:`Encoders` of a dialect (built once: compiling the INSERTs costs ~1 ms)."""
    return Encoders.for_dialect(dialect)


def encode_row(encoders: Encoders, row: Row) -> EncodedRow:
    """Encode a :func:`~certwright.store.records.certificate_fields` row for the driver."""
    fields, names = row
    return EncodedRow(encoders.certificates.encode(fields), fields["fingerprint_sha256"], names)


def add_certificates(session: Session, rows: Sequence[Row | EncodedRow]) -> None:
    """Insert new certificate rows and their names: one ``executemany`` per table.

    ``rows`` come from :func:`~certwright.store.records.certificate_fields`, or already
    encoded by :func:`encode_row` (batch workers do that on every core). No ORM object
    per row, no per-row statement processing. Raises :class:`DuplicateCertificateError`
    when any (issuer, serial) or fingerprint is already stored; the transaction must then
    be rolled back (nothing of it is kept).
    """
    if not rows:
        return
    encoders = encoders_for(dialect_of(session))
    encoded = [row if isinstance(row, EncodedRow) else encode_row(encoders, row) for row in rows]
    # Keys are chosen here, not by the insert, so the names can point at their certificate
    # without reading the new ids back.
    ids = allocate_ids(session, _table(CertificateRecord), len(encoded))
    try:
        encoders.certificates.insert(session, [row.params for row in encoded], ids=ids)
    except exc.IntegrityError as error:
        raise DuplicateCertificateError(
            "a certificate of the batch (same issuer and serial, or same fingerprint) is already "
            "in the inventory"
        ) from error
    encode_name = encoders.names.encode
    names = [
        encode_name({"certificate_id": ident, "kind": kind, "value": value})
        for ident, row in zip(ids, encoded, strict=True)
        for kind, value in row.names
    ]
    encoders.names.insert(session, names)


def add_certificate_row(session: InTransaction, row: Row, *, link_token: int | None = None) -> int:
    """:func:`add_certificates` for one row, returning the new row's id.

    The request path's insert (enrol, renew), instead of an ORM flush: the row
    (``INSERT … RETURNING id``: the database picks the id, as an ORM flush lets it), its
    names, and with ``link_token`` the link from that redeemed token (its row's id) to the
    new certificate. On PostgreSQL the three are one statement (data-modifying CTEs): one
    round trip instead of three. Raises :class:`DuplicateCertificateError` like
    :func:`add_certificates`.
    """
    fields, names = row
    dialect = dialect_of(session)
    joined = dialect.name == "postgresql" and 0 < len(names) <= _JOINED_NAMES
    try:
        if joined:
            params = {**fields, "token_pk": link_token}
            for at, (kind, value) in enumerate(names):
                params[f"kind{at}"], params[f"value{at}"] = kind, value
            ((ident,),) = _joined_insert(len(names)).rows(session, params)
        else:
            ((ident,),) = _INSERT_CERTIFICATE.rows(session, fields)
    except exc.IntegrityError as error:
        serial = format(fields["serial"], "x")
        raise DuplicateCertificateError(
            f"certificate serial {serial} of {fields['issuer']!r} (or one with the same fingerprint) "
            "is already in the inventory"
        ) from error
    if joined:
        return int(ident)
    encoder = encoders_for(dialect).names
    rows = [encoder.encode({"certificate_id": ident, "kind": kind, "value": value}) for kind, value in names]
    encoder.insert(session, rows)
    if link_token is not None:
        link_certificate(session, link_token, int(ident))
    return int(ident)


def link_certificate(session: InTransaction, token_pk: int, certificate_pk: int) -> None:
    """Record which certificate a redeemed token yielded (``RedeemedToken.id``, the row's id).

    :func:`add_certificate_row` links as it inserts (``link_token``).
    """
    _LINK_TOKEN.rows(session, {"token_pk": token_pk, "certificate_pk": certificate_pk})


def append_events(session: InTransaction, events: Sequence[EventSpec]) -> None:
    """Append events to the hash chain in order: one head lock, one insert, one head update."""
    if not events:
        return
    chain = EventChain(session)
    if dialect_of(session).name == "postgresql" and len(events) <= _JOINED_EVENTS:
        chain.append_and_close(events)
        return
    chain.append(events)
    chain.close()


class EventChain:
    """The audit chain's head, locked for one transaction, for appending in several steps.

    A batch appends each chunk's events as the chunk arrives (the work overlaps the
    signing) and moves the head once, in :meth:`close`. Until the transaction commits
    nobody else can append: the head row is locked (on SQLite, the writer lock is held).
    """

    def __init__(self, session: InTransaction) -> None:
        self._session = session
        self._events = encoders_for(dialect_of(session)).events
        ((self.seq, self.head),) = _LOCK_HEAD.rows(session)
        self._moved = False

    def append(self, events: Sequence[EventSpec]) -> None:
        """Chain ``events`` in order after those appended so far, and insert them."""
        encode = self._events.encode
        self._events.insert(self._session, [encode(row) for row in self._chained(events)])

    def append_and_close(self, events: Sequence[EventSpec]) -> None:
        """:meth:`append` then :meth:`close` as one statement (PostgreSQL, a few events:
        the inserts in a data-modifying CTE of the head's ``UPDATE``)."""
        params: dict[str, Any] = {}
        rows = self._chained(events)
        for at, row in enumerate(rows):
            params.update({f"{key}{at}": value for key, value in row.items()})
        params["head_seq"], params["head_hash"] = self.seq, self.head
        _joined_events(len(rows)).rows(self._session, params)
        self._moved = False

    def _chained(self, events: Sequence[EventSpec]) -> list[dict[str, Any]]:
        """The rows of ``events``, chained after the head; the head moves past them."""
        rows: list[dict[str, Any]] = []
        seq, previous = self.seq, self.head
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
        self.seq, self.head = seq, previous
        self._moved = self._moved or bool(rows)
        return rows

    def close(self) -> None:
        """Move the head to the last event appended (nothing to do if none was)."""
        if self._moved:
            _MOVE_HEAD.rows(self._session, {"head_seq": self.seq, "head_hash": self.head})
            self._moved = False


# Built once, Core on the table (not the ORM entity: an ORM UPDATE costs ~0.3 ms more).
_HEAD = _table(AuditHead)
_LOCK_HEAD = Prepared(
    sa.select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update(),
    columns=[_HEAD.c.seq, _HEAD.c.hash],
)
_MOVE_HEAD = Prepared(
    _HEAD.update()
    .where(_HEAD.c.id == 1)
    .values(
        seq=sa.bindparam("head_seq", type_=_HEAD.c.seq.type),
        hash=sa.bindparam("head_hash", type_=_HEAD.c.hash.type),
    )
)
_CERTIFICATES = _table(CertificateRecord)
_TOKENS = _table(EnrollmentToken)
_LINK_TOKEN = Prepared(
    _TOKENS.update()
    .where(_TOKENS.c.id == sa.bindparam("token_pk", type_=_TOKENS.c.id.type))
    .values(certificate_id=sa.bindparam("certificate_pk", type_=_TOKENS.c.certificate_id.type))
)
_INSERT_CERTIFICATE = Prepared(
    sa.insert(_CERTIFICATES)
    .values({c.key: sa.bindparam(c.key, type_=c.type) for c in _CERTIFICATES.columns if c.key != "id"})
    .returning(_CERTIFICATES.c.id),
    columns=[_CERTIFICATES.c.id],
)


# PostgreSQL: statements joined by data-modifying CTEs, one per number of names or events
# (a certificate has a few names; an enrolment appends one event). More take the
# separate statements.
_JOINED_NAMES = 8
_JOINED_EVENTS = 16


@functools.lru_cache(maxsize=_JOINED_NAMES)
def _joined_insert(names: int) -> Prepared:
    """The row, its ``names`` names (``kind0``/``value0``, ...) and the link from the token
    ``token_pk`` (NULL: none) in one statement, returning the new row's id."""
    table = _table(CertificateName)
    cert = _INSERT_CERTIFICATE.statement
    assert isinstance(cert, sa.Insert)
    inserted = cert.cte("cert")
    rows = [
        sa.select(
            inserted.c.id,
            sa.bindparam(f"kind{at}", type_=table.c.kind.type),
            sa.bindparam(f"value{at}", type_=table.c.value.type),
        )
        for at in range(names)
    ]
    named = (
        sa.insert(table).from_select(["certificate_id", "kind", "value"], sa.union_all(*rows)).cte("names")
    )
    linked = (
        _TOKENS.update()
        .where(_TOKENS.c.id == sa.bindparam("token_pk", type_=_TOKENS.c.id.type))
        .values(certificate_id=inserted.c.id)
        .cte("link")
    )
    return Prepared(sa.select(inserted.c.id).add_cte(named, linked), columns=[_CERTIFICATES.c.id])


@functools.lru_cache(maxsize=_JOINED_EVENTS)
def _joined_events(events: int) -> Prepared:
    """``events`` audit events (``seq0``, ``at0``, ...) inserted and the head moved to
    ``head_seq``/``head_hash``, in one statement."""
    table = _table(AuditEvent)
    values = [
        {c.key: sa.bindparam(f"{c.key}{at}", type_=c.type) for c in table.columns} for at in range(events)
    ]
    inserted = sa.insert(table).values(values).cte("events")
    moved = (
        _HEAD.update()
        .where(_HEAD.c.id == 1)
        .values(
            seq=sa.bindparam("head_seq", type_=_HEAD.c.seq.type),
            hash=sa.bindparam("head_hash", type_=_HEAD.c.hash.type),
        )
        .add_cte(inserted)
    )
    return Prepared(moved)
