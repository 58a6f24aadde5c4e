"""``store.sqlite_batch`` writes what SQLAlchemy would: the same SQL text, the same parameters.

The batch CLI records into a CA's own SQLite inventory through ``sqlite3`` alone
(:class:`~certwright.store.sqlite_batch.SQLiteBatch`); every other writer goes through
SQLAlchemy (:mod:`~certwright.store.bulk`). Here each statement of the direct writer is
held equal to what SQLAlchemy compiles for the sqlite dialect, and each parameter it binds
to what :class:`~certwright.store.bulk.RowEncoder` (the models' bind processors) gives for
the same row: for certificates really issued, and for edge values from hypothesis.

No database file: a SQLiteBatch is built on an in-memory connection holding just the two
tables its constructor reads (the audit head and the certificates' ids).
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite as sqlite_dialect

from certwright.errors import InvalidInputError
from certwright.issuance import Authority, Issued
from certwright.store import sqlite_batch
from certwright.store.bulk import _LOCK_HEAD, _MOVE_HEAD, Encoders, _PreparedForm
from certwright.store.chain import canonical_json, chained_hasher, event_hash
from certwright.store.records import issuance_details, issued_own_fields, shared_fields
from certwright.store.sqlite_batch import (
    CERTIFICATE_COLUMNS,
    INSERT_CERTIFICATE,
    INSERT_EVENT,
    INSERT_NAME,
    LOCK_HEAD,
    MOVE_HEAD,
    SQLiteBatch,
    stored_time,
    stored_value,
)
from certwright.store.values import GENESIS_HASH, MAX_SERIAL, CertificateStatus
from certwright.store.writer_lock import FileLock
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, SigningKey
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES
from certwright.x509.revocation_reason import RevocationReason

DIALECT = sqlite_dialect.dialect()  # compiled SQL: what the brief and bulk.py compile from
ENCODERS_BARE = Encoders.for_dialect(DIALECT)
# A connected engine's dialect (its DBAPI loaded) is what a Store encodes rows with: only
# then do the binary columns get bind processors (sqlite3.Binary), so compare with that.
ENCODERS = Encoders.for_dialect(sa.create_engine("sqlite://").dialect)
MTLS = BUILTIN_PROFILES["mtls"]
SERVER = BUILTIN_PROFILES["server"]
NOW = datetime.datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
TIME_COLUMNS = ("not_before", "not_after", "revoked_at", "created_at")


# --- the statements ------------------------------------------------------------------------------


def test_inserts_are_what_sqlalchemy_compiles_for_sqlite() -> None:
    for encoders in (ENCODERS_BARE, ENCODERS):
        assert encoders.certificates.sql == INSERT_CERTIFICATE
        assert encoders.names.sql == INSERT_NAME
        assert encoders.events.sql == INSERT_EVENT
    # positional (qmark) parameters, the certificates' id bound explicitly and first
    assert ENCODERS.certificates.positional and ENCODERS.certificates.explicit_id
    assert INSERT_CERTIFICATE.startswith("INSERT INTO certificates (id, ")


def test_certificate_columns_are_the_encoders_parameter_order() -> None:
    assert CERTIFICATE_COLUMNS == ENCODERS_BARE.certificates.keys == ENCODERS.certificates.keys
    # what add() binds for names and events, in this order
    assert ENCODERS.names.keys == ("certificate_id", "kind", "value")
    assert ENCODERS.events.keys == ("seq", "at", "kind", "actor", "subject", "details", "prev_hash", "hash")


def test_head_statements_are_what_sqlalchemy_compiles_for_sqlite() -> None:
    lock = _PreparedForm(_LOCK_HEAD.statement, _LOCK_HEAD.columns, DIALECT)
    move = _PreparedForm(_MOVE_HEAD.statement, _MOVE_HEAD.columns, DIALECT)
    assert lock.sql == LOCK_HEAD
    assert move.sql == MOVE_HEAD
    # and the parameters SQLiteBatch passes are in the compiled order: (1,) and (seq, hash, 1)
    assert lock.encode({}) == (1,)
    assert move.encode({"head_seq": 7, "head_hash": "ab" * 32}) == (7, "ab" * 32, 1)


def test_own_and_shared_columns_split_a_row() -> None:
    shared = shared_fields(issuer="CN=x", issuer_key_id=b"k", profile="p", requested_by="a", created_at=NOW)
    own = set(CERTIFICATE_COLUMNS) - set(shared)
    assert own == set(sqlite_batch._OWN)
    assert set(shared) | own == set(CERTIFICATE_COLUMNS)


# --- building rows without a database file ---------------------------------------------------------


def _connection() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    connection.executescript(
        "CREATE TABLE audit_head (id INTEGER PRIMARY KEY, seq INTEGER, hash TEXT);"
        f"INSERT INTO audit_head VALUES (1, 0, '{GENESIS_HASH}');"
        "CREATE TABLE certificates (id INTEGER PRIMARY KEY);"
    )
    return connection


class _Batch:
    """A SQLiteBatch on an in-memory database, for its row encoding (nothing is committed)."""

    def __init__(self, shared: Mapping[str, Any]) -> None:
        self.connection = _connection()
        self.batch = SQLiteBatch(":memory:", self.connection, FileLock("unused-writer.lock"), shared)

    def __enter__(self) -> SQLiteBatch:
        return self.batch

    def __exit__(self, *exc_info: object) -> None:
        self.connection.close()


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview | bytearray) else value


def _encoded(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the SQLAlchemy path binds for a whole row (RowEncoder), binary values as bytes."""
    params = ENCODERS.certificates.encode(row)
    assert isinstance(params, tuple)
    return tuple(_plain(value) for value in params)


def _with_constants(shared: Mapping[str, Any], own: Mapping[str, Any]) -> tuple[Any, ...]:
    """What _BatchRecorder binds: the shared columns encoded once, the own per row."""
    params = ENCODERS.certificates.with_constants(shared)(own)
    assert isinstance(params, tuple)
    return tuple(_plain(value) for value in params)


def assert_same_params(
    batch: SQLiteBatch, ident: int, shared: Mapping[str, Any], own: Mapping[str, Any]
) -> None:
    row = {**shared, **own}
    direct = batch._row(ident, own)
    expected = _encoded(row)
    assert direct[0] == ident
    assert len(direct) == len(expected) + 1 == len(CERTIFICATE_COLUMNS) + 1
    for column, mine, theirs in zip(CERTIFICATE_COLUMNS, direct[1:], expected, strict=True):
        assert type(mine) is type(theirs), (column, mine, theirs)
        assert mine == theirs, column
        assert _plain(stored_value(column, row[column])) == theirs, column
    assert direct[1:] == _with_constants(shared, own)


# --- rows of certificates really issued ---------------------------------------------------------


def _shared(authority: Authority, **changes: Any) -> dict[str, Any]:
    fields = shared_fields(
        issuer=authority.certificate.subject.rfc4514_string(),
        issuer_key_id=authority.key_identifier,
        profile="mtls",
        requested_by="cli:tester",
        created_at=NOW,
    )
    fields.update(changes)
    return fields


@pytest.fixture(scope="module")
def issued(authority_for: Any, leaf_keys: Any) -> list[Issued]:
    """Certificates of every key type the inventory records, with and without an identity,
    DNS names, IP addresses, roles, and attributes with non-ASCII text and quotes."""
    out: list[Issued] = []
    authority: Authority = authority_for(KeyType.EC_P256)
    for index, key_type in enumerate((KeyType.EC_P256, KeyType.EC_P384, KeyType.ED25519, KeyType.RSA_2048)):
        key: SigningKey = leaf_keys(key_type)
        out.append(
            authority.issue_issued(
                key.public_key(),
                profile=MTLS,
                identity=SpiffeId.parse(f"spiffe://example.org/ns/prod/svc-{index}"),
                sans=SubjectAltNames.create(dns=[f"svc-{index}.example.org"], ips=["10.0.0.1", "fd00::7"]),
                authorization=Authorization.create(
                    ("reader", "writer"), {"team": 'paiements "Zürich" 中文', "note": "it's \\ ok"}
                ),
            )
        )
    key = leaf_keys(KeyType.EC_P256)
    # what most CLI batches sign: an identity from the CSR, no roles, no attributes
    out.append(
        authority.issue_issued(
            key.public_key(), profile=MTLS, identity=SpiffeId.parse("spiffe://example.org/plain")
        )
    )
    # no identity, only a DNS name; then only roles; then only attributes
    out.append(
        authority.issue_issued(
            key.public_key(),
            profile=SERVER,
            sans=SubjectAltNames.create(dns=["only-dns.example.org"]),
            lifetime=datetime.timedelta(minutes=5),
        )
    )
    out.append(
        authority.issue_issued(
            key.public_key(),
            profile=SERVER,
            subject="CN=roles only",
            authorization=Authorization.create(("reader",)),
        )
    )
    out.append(
        authority.issue_issued(
            key.public_key(),
            profile=SERVER,
            subject="CN=attributes only",
            authorization=Authorization.create((), {"env": "prod"}),
        )
    )
    return out


def test_rows_of_issued_certificates_bind_what_the_row_encoder_binds(
    authority_for: Any, issued: list[Issued]
) -> None:
    shared = _shared(authority_for(KeyType.EC_P256))
    with _Batch(shared) as batch:
        for ident, certificate in enumerate(issued, start=3):
            own, _names = issued_own_fields(certificate)
            assert_same_params(batch, ident, shared, own)


def test_rows_of_issued_certificates_twice_use_the_json_memo_correctly(
    authority_for: Any, issued: list[Issued]
) -> None:
    # the second pass is served from the JSON memo: it must give the same text
    shared = _shared(authority_for(KeyType.EC_P256))
    with _Batch(shared) as batch:
        for _ in range(2):
            for certificate in issued:
                own, _names = issued_own_fields(certificate)
                assert_same_params(batch, 1, shared, own)


def test_a_batch_starts_after_the_highest_id_and_the_head() -> None:
    connection = _connection()
    try:
        connection.execute("INSERT INTO certificates (id) VALUES (41)")
        connection.execute("UPDATE audit_head SET seq = 9, hash = ?", ("ab" * 32,))
        shared = shared_fields(
            issuer="CN=x", issuer_key_id=b"k", profile=None, requested_by="a", created_at=NOW
        )
        batch = SQLiteBatch(":memory:", connection, FileLock("unused"), shared)
        assert (batch._next_id, batch._seq, batch._head) == (42, 9, "ab" * 32)
    finally:
        connection.close()


def test_shared_columns_that_do_not_complete_a_row_are_refused() -> None:
    shared = shared_fields(issuer="CN=x", issuer_key_id=b"k", profile=None, requested_by="a", created_at=NOW)
    for broken in (
        {k: v for k, v in shared.items() if k != "status"},  # one missing
        {**shared, "serial": 1},  # an own column
        {**shared, "nonsense": 1},  # not a column
    ):
        connection = _connection()
        try:
            with pytest.raises(ValueError, match="do not complete a certificate row"):
                SQLiteBatch(":memory:", connection, FileLock("unused"), broken)
        finally:
            connection.close()


# --- edge values (hypothesis) ---------------------------------------------------------------------

ZONES = (
    datetime.UTC,
    datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
    datetime.timezone(datetime.timedelta(hours=-11, minutes=-15)),
    datetime.timezone(datetime.timedelta(hours=13, seconds=7, microseconds=250)),
    ZoneInfo("America/New_York"),
    ZoneInfo("Australia/Lord_Howe"),
    ZoneInfo("Asia/Kathmandu"),
)
# Far enough from year 1 and 9999 that any offset converts to UTC without overflowing.
aware_times = st.datetimes(
    min_value=datetime.datetime(2, 1, 2),
    max_value=datetime.datetime(9998, 12, 30),
    timezones=st.sampled_from(ZONES),
)
whole_seconds = aware_times.map(lambda at: at.replace(microsecond=0))
times = st.one_of(aware_times, whole_seconds)
text = st.text(max_size=12)  # any code points, lone surrogates included
names = st.text(alphabet="ab\u00e9\u4e2d\"'\\", max_size=3)  # small: rows repeat values (the memo)
roles = st.lists(names, max_size=3)
attributes = st.dictionaries(names, st.one_of(names, text), max_size=3)
binary = st.binary(max_size=40)

own_rows = st.fixed_dictionaries(
    {
        "serial": st.one_of(
            st.integers(0, MAX_SERIAL), st.sampled_from([0, 1, MAX_SERIAL, 2**63, 2**64 - 1])
        ),
        "subject": text,
        "identity": st.one_of(st.none(), text),
        "roles": roles,
        "attributes": attributes,
        "key_type": st.sampled_from([k.value for k in KeyType]),
        "not_before": times,
        "not_after": times,
        "fingerprint_sha256": binary,
        "public_key_id": binary,
        "der": binary,
    }
)
reasons = st.sampled_from(list(RevocationReason))
shared_rows = st.fixed_dictionaries(
    {
        "issuer": text,
        "issuer_key_id": binary,
        "profile": st.one_of(st.none(), text),
        "status": st.sampled_from(list(CertificateStatus)),
        "revoked_at": st.one_of(st.none(), times),
        "revocation_reason": st.one_of(st.none(), reasons),
        "requested_by": text,
        "created_at": times,
        "renewed_from_id": st.one_of(st.none(), st.integers(1, 2**62)),
    }
)


@given(shared=shared_rows, rows=st.lists(own_rows, min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_every_parameter_equals_the_row_encoders(shared: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    with _Batch(shared) as batch:
        for ident, own in enumerate(rows, start=1):
            assert_same_params(batch, ident, shared, own)


def test_no_roles_and_no_attributes_are_stored_as_an_empty_list_and_an_empty_object() -> None:
    # The commonest row of a CLI batch (nothing but what the CSR asks for). Its roles and
    # attributes are both empty: their JSON texts differ ("[]", "{}") however they are memoised.
    shared = shared_fields(
        issuer="CN=x", issuer_key_id=b"k", profile="mtls", requested_by="a", created_at=NOW
    )
    own = {
        "serial": 5,
        "subject": "",
        "identity": "spiffe://example.org/a",
        "roles": [],
        "attributes": {},
        "key_type": "ec-p256",
        "not_before": NOW,
        "not_after": NOW,
        "fingerprint_sha256": b"f",
        "public_key_id": b"p",
        "der": b"d",
    }
    with _Batch(shared) as batch:
        row = batch._row(1, own)
        assert row[1 + CERTIFICATE_COLUMNS.index("roles")] == "[]"
        assert row[1 + CERTIFICATE_COLUMNS.index("attributes")] == "{}"


def _utc_only(row: dict[str, Any]) -> dict[str, Any]:
    # Issued times are UTC (built on UTC, or back from a worker as POSIX seconds)
    return {**row, "not_after": row["not_after"].astimezone(datetime.UTC)}


@given(shared=shared_rows, rows=st.lists(own_rows.map(_utc_only), min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_event_details_are_the_canonical_issuance_details(
    shared: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    with _Batch(shared) as batch:
        for own in rows:
            expected = canonical_json(issuance_details({**shared, **own}, shared["profile"]))
            assert batch._details(own) == expected


def test_event_details_of_issued_certificates(authority_for: Any, issued: list[Issued]) -> None:
    shared = _shared(authority_for(KeyType.EC_P256))
    with _Batch(shared) as batch:
        for certificate in issued * 2:  # the second time from the memo
            own, _names = issued_own_fields(certificate)
            expected = canonical_json(issuance_details({**shared, **own}, "mtls"))
            assert batch._details(own) == expected
            assert json.loads(expected)["identity"] == own["identity"]


@given(
    seqs=st.lists(st.integers(0, 2**62), min_size=1, max_size=4),
    at=times,
    kind=st.one_of(st.sampled_from(["issued", "revoked"]), text),
    actor=text,
    subject=st.one_of(st.none(), text),
    details=text,
    prev_hash=text,
)
@settings(max_examples=200, deadline=None)
def test_the_batch_hasher_is_event_hash(
    seqs: list[int],
    at: datetime.datetime,
    kind: str,
    actor: str,
    subject: str | None,
    details: str,
    prev_hash: str,
) -> None:
    digest = chained_hasher(at=at, kind=kind, actor=actor)
    for seq in seqs:
        expected = event_hash(
            seq=seq, at=at, kind=kind, actor=actor, subject=subject, details=details, prev_hash=prev_hash
        )
        assert digest(seq, subject, details, prev_hash) == expected


def test_the_batch_hasher_refuses_what_event_hash_refuses() -> None:
    digest = chained_hasher(at=NOW, kind="issued", actor="a")
    with pytest.raises(InvalidInputError):
        digest(True, None, "{}", GENESIS_HASH)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        chained_hasher(at=datetime.datetime(2030, 1, 1), kind="issued", actor="a")


@given(at=times)
@example(at=datetime.datetime(999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC))
@example(at=datetime.datetime(2, 1, 2, 0, 0, 0, 1, tzinfo=datetime.UTC))
@example(at=datetime.datetime(1000, 1, 1, 0, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=1))))
@example(at=datetime.datetime(2030, 6, 1, 12, 0, tzinfo=ZoneInfo("America/New_York")))
@example(at=datetime.datetime(2030, 6, 1, 12, 0, 0, 500000, tzinfo=ZoneInfo("Asia/Kathmandu")))
def test_stored_time_is_utc_text_with_microseconds(at: datetime.datetime) -> None:
    stored = stored_time(at)
    utc = at.astimezone(datetime.UTC)
    # an oracle that is not SQLAlchemy: four-digit years, always six fraction digits, no offset
    assert stored == utc.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    assert len(stored) == 26 and stored[4] == "-" and stored[19] == "."
    # and what the models' UTCDateTime binds on SQLite, for every time column
    for column in TIME_COLUMNS:
        position = CERTIFICATE_COLUMNS.index(column)
        row = dict.fromkeys(CERTIFICATE_COLUMNS)
        row.update(
            {
                "serial": 1,
                "roles": [],
                "attributes": {},
                "status": CertificateStatus.GOOD,
                column: at,
            }
        )
        assert _encoded(row)[position] == stored == stored_value(column, at)


def test_known_stored_times() -> None:
    new_york = ZoneInfo("America/New_York")
    assert stored_time(datetime.datetime(2030, 1, 1, 7, 0, tzinfo=new_york)) == "2030-01-01 12:00:00.000000"
    assert (
        stored_time(datetime.datetime(2030, 7, 1, 8, 0, 0, 5, tzinfo=new_york))
        == "2030-07-01 12:00:00.000005"
    )
    assert (
        stored_time(datetime.datetime(999, 3, 4, 5, 6, 7, tzinfo=datetime.UTC))
        == "0999-03-04 05:06:07.000000"
    )
    assert stored_time(datetime.datetime(5, 1, 1, tzinfo=datetime.UTC)) == "0005-01-01 00:00:00.000000"
    assert stored_time(None) is None


class _NoOffset(datetime.tzinfo):
    """A tzinfo that does not know its offset: the datetime is as good as naive."""

    def utcoffset(self, dt: datetime.datetime | None) -> None:
        return None

    def dst(self, dt: datetime.datetime | None) -> None:
        return None

    def tzname(self, dt: datetime.datetime | None) -> str:
        return "?"


@pytest.mark.parametrize(
    "at",
    [datetime.datetime(2030, 1, 1, 12, 0), datetime.datetime(2030, 1, 1, tzinfo=_NoOffset())],
    ids=["naive", "unknown-offset"],
)
def test_a_naive_time_is_refused_as_the_models_refuse_it(at: datetime.datetime) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        stored_time(at)
    for column in TIME_COLUMNS:
        with pytest.raises(ValueError, match="naive datetime"):
            stored_value(column, at)
    row = dict.fromkeys(CERTIFICATE_COLUMNS)
    row.update(
        {"serial": 1, "roles": [], "attributes": {}, "status": CertificateStatus.GOOD, "not_before": at}
    )
    with pytest.raises(ValueError, match="naive datetime"):
        ENCODERS.certificates.encode(row)


def test_stored_json_is_the_models_json_text() -> None:
    roles_value = ["lecteur-é", 'a"b', "中文"]
    attributes_value = {"équipe": 'paiements "Zürich"', "b": "it's", "a": "\\"}
    assert stored_value("roles", roles_value) == json.dumps(roles_value)
    assert stored_value("attributes", attributes_value) == json.dumps(attributes_value)
    # ASCII only, keys in insertion order
    assert stored_value("attributes", attributes_value).startswith('{"\\u00e9quipe"')
    assert stored_value("roles", []) == "[]" and stored_value("attributes", {}) == "{}"


def test_stored_serial_and_enums() -> None:
    assert stored_value("serial", 1) == b"\x00" * 19 + b"\x01"
    assert stored_value("serial", MAX_SERIAL) == b"\xff" * 20
    assert stored_value("status", CertificateStatus.ON_HOLD) == "on_hold"
    assert stored_value("revocation_reason", RevocationReason.CERTIFICATE_HOLD) == "certificateHold"
    assert stored_value("issuer_key_id", b"\x01\x02") == b"\x01\x02"
    assert stored_value("renewed_from_id", 5) == 5
    assert stored_value("identity", None) is None


def test_the_doc_lists_every_stored_form() -> None:
    # every column's stored form is one of the module doc's (bytes, time text, JSON text,
    # enum value, or as it is): a new column type would need a new branch in stored_value
    processors = ENCODERS.certificates._processors
    assert tuple(column for column, _ in processors) == CERTIFICATE_COLUMNS
    with_processor = {column for column, process in processors if process is not None}
    assert with_processor == {
        "serial",
        "issuer_key_id",
        "roles",
        "attributes",
        "not_before",
        "not_after",
        "fingerprint_sha256",
        "public_key_id",
        "status",
        "revoked_at",
        "revocation_reason",
        "created_at",
        "der",
    }, "a column gained or lost a bind processor: check stored_value handles it"


def test_path_of_a_missing_file_is_none(tmp_path: Path) -> None:
    shared = shared_fields(issuer="CN=x", issuer_key_id=b"k", profile=None, requested_by="a", created_at=NOW)
    assert SQLiteBatch.open(str(tmp_path / "absent.db"), shared=shared) is None
    assert list(tmp_path.iterdir()) == []  # not even a lock file
