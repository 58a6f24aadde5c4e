"""Recording a batch with ``sqlite3`` alone (``SQLiteBatch``) against the SQLAlchemy path.

The batch CLI writes a CA's own SQLite inventory directly (no SQLAlchemy import); every
other writer goes through the Store. Both paths must leave the same database behind: the
same rows, ids, names, audit events and head, byte for byte. Here the same batch is
recorded both ways into two copies of one inventory, and the direct writer's refusals
(not a ready inventory, a busy writer, a duplicate, an exception) are checked to leave
the database as it was and the writers' turn free.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import multiprocessing
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_helpers import START

from certwright.batch import BatchItem, BatchRequest
from certwright.clock import FixedClock
from certwright.files import read_csr
from certwright.issuance import Authority, Issued, create_root
from certwright.service.batches import BatchRefusedError, batch_shared_fields, record_chunks
from certwright.service.certificates import CertificateService
from certwright.store import (
    CertificateStatus,
    DuplicateCertificateError,
    NameKind,
    StoreError,
    WriterBusy,
    get_by_serial,
    open_store,
    verify_chain,
)
from certwright.store.sqlite_batch import SQLiteBatch
from certwright.store.values import HEAD_REVISION
from certwright.store.writer_lock import WRITER_LOCK_SUFFIX
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, generate_key
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES, CASettings
from support.certs import write_csr
from support.locks import lock_is_free

MTLS = BUILTIN_PROFILES["mtls"]
REQUEST = BatchRequest(profile=MTLS)
ACTOR = "cli:batch-tester"
# Not UTC and with microseconds: both paths must store it as the same UTC text.
NOW = datetime.datetime(2030, 1, 1, 14, 0, 0, 654321, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
TABLES = {
    "certificates": "id",
    "certificate_names": "id",
    "audit_events": "seq",
    "audit_head": "id",
    "crl_state": "issuer_key_id",
    "enrollment_tokens": "id",
    "alembic_version": "version_num",
}
COUNT = 9


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory at head that already holds certificates and events (ids and seq start past 1)."""
    path = tmp_path_factory.mktemp("template") / "inventory.db"
    key = generate_key(KeyType.EC_P256)
    settings = CASettings(trust_domain="example.org")
    other = create_root(key, subject="CN=Other Root", settings=settings, clock=FixedClock(START))
    authority = Authority(certificate=other, key=key, settings=settings, clock=FixedClock(START))
    with open_store(path, upgrade=True) as store:
        service = CertificateService(store=store, authority=authority, clock=FixedClock(START), actor="setup")
        service.record_issued([other], profile="root-ca")
        service.issue(key.public_key(), profile=MTLS, identity=SpiffeId.parse("spiffe://example.org/setup"))
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path


def copy_of(template: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    target = into / "inventory.db"
    shutil.copyfile(template, target)
    return target


@pytest.fixture
def db(template: Path, tmp_path: Path) -> Path:
    return copy_of(template, tmp_path / "direct")


@pytest.fixture
def twin(template: Path, tmp_path: Path) -> Path:
    return copy_of(template, tmp_path / "service")


def _issue_batch(ca: Authority, tmp_path: Path, count: int = COUNT) -> list[Issued]:
    """Certificates as a batch's workers make them: from CSRs, with varied SANs and authorizations."""
    issued = []
    csr_dir = tmp_path / "csrs"
    csr_dir.mkdir(exist_ok=True)
    for i in range(count):
        path = csr_dir / f"r{i}.csr"
        write_csr(
            path, uris=(f"spiffe://example.org/batch/{i}",), dns=(f"b{i}.example.org", f"Alt{i}.Example.ORG")
        )
        authorization = (
            Authorization()
            if i % 3 == 0
            else Authorization.create(
                ("reader",) if i % 2 else ("admin", "reader"), {"env": "prod", "n": f"é{i % 2}"}
            )
        )
        sans = SubjectAltNames.create(ips=[f"10.0.0.{i}", "fd00::1"]) if i % 4 == 1 else None
        issued.append(
            ca.sign_csr_issued(read_csr(path), profile=MTLS, authorization=authorization, sans=sans)
        )
    return issued


def chunks_of(issued: list[Issued], size: int = 4) -> list[list[BatchItem]]:
    items = [BatchItem(f"r{i}.csr", None, record) for i, record in enumerate(issued)]
    return [items[i : i + size] for i in range(0, len(items), size)]


def shared_for(ca: Authority) -> dict[str, Any]:
    return batch_shared_fields(ca, REQUEST, ACTOR, NOW)


def open_batch(path: Path, ca: Authority, **options: Any) -> SQLiteBatch:
    batch = SQLiteBatch.open(str(path), shared=shared_for(ca), **options)
    assert batch is not None, f"{path} is a ready inventory: the direct writer must take it"
    return batch


def record_direct(
    path: Path, ca: Authority, chunks: list[list[BatchItem]], *, keep_going: bool = False
) -> Any:
    with open_batch(path, ca) as batch:
        return record_chunks(chunks, batch, keep_going=keep_going)


def record_with_service(
    path: Path, ca: Authority, chunks: list[list[BatchItem]], *, keep_going: bool = False
) -> Any:
    with open_store(path) as store:
        service = CertificateService(store=store, authority=ca, clock=FixedClock(NOW), actor=ACTOR)
        return service.record_batch(chunks, REQUEST, keep_going=keep_going)


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in key order, as sqlite3 reads them (types included)."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
            for table, key in TABLES.items()
        }


def assert_same_rows(
    path: Path, table: str, mine: list[tuple[Any, ...]], theirs: list[tuple[Any, ...]]
) -> None:
    """Equal rows, or a message naming the first row and column that differ."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
    assert len(mine) == len(theirs), f"{table}: {len(mine)} rows directly, {len(theirs)} through the service"
    for index, (one, other) in enumerate(zip(mine, theirs, strict=True)):
        differ = {
            c: (a, b) for c, a, b in zip(columns, one, other, strict=True) if a != b or type(a) is not type(b)
        }
        assert not differ, f"{table} row {index}: (direct, service) {differ}"


def full_dump(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return list(connection.iterdump())




@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """The writers' turn held on a descriptor of its own, as another process's writer holds it."""
    fd = os.open(f"{path}{WRITER_LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def sql(path: Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        for statement in statements:
            connection.execute(statement)


# --- the same database as the SQLAlchemy path ----------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, COUNT], ids=["chunks-of-1", "chunks-of-4", "one-chunk"])
def test_direct_and_service_paths_leave_identical_databases(
    ca: Authority, tmp_path: Path, db: Path, twin: Path, chunk: int
) -> None:
    issued = _issue_batch(ca, tmp_path)
    before = dump(db)
    direct = record_direct(db, ca, chunks_of(issued, chunk))
    service = record_with_service(twin, ca, chunks_of(issued, chunk))
    assert direct == service
    assert direct.signed == [f"r{i}.csr" for i in range(COUNT)] and direct.failures == []

    mine, theirs = dump(db), dump(twin)
    for table in TABLES:
        assert_same_rows(db, table, mine[table], theirs[table])
    assert full_dump(db) == full_dump(twin)  # and everything else (indexes, sequences, schema)

    # the batch really added its rows: ids and seqs continue after what was there
    added = mine["certificates"][len(before["certificates"]) :]
    assert [row[0] for row in added] == list(
        range(before["certificates"][-1][0] + 1, before["certificates"][-1][0] + 1 + COUNT)
    )
    events = mine["audit_events"][len(before["audit_events"]) :]
    assert len(events) == COUNT and events[0][6] == before["audit_head"][0][2]  # prev_hash = old head
    assert mine["audit_head"] == [(1, before["audit_head"][0][1] + COUNT, events[-1][7])]
    assert {row[2] for row in events} == {"issued"} and {row[3] for row in events} == {ACTOR}
    assert {row[1] for row in events} == {"2030-01-01 12:00:00.654321"}  # UTC text


def test_refusals_with_keep_going_record_the_same_on_both_paths(
    ca: Authority, tmp_path: Path, db: Path, twin: Path
) -> None:
    issued = _issue_batch(ca, tmp_path, 6)
    chunks = chunks_of(issued, 3)
    chunks[0][1] = BatchItem("r1.csr", "signature does not verify")
    chunks[1][2] = BatchItem("r5.csr", "outside this CA's trust domain")
    direct = record_direct(db, ca, chunks, keep_going=True)
    service = record_with_service(twin, ca, chunks, keep_going=True)
    assert direct == service
    assert direct.failures == [
        ("r1.csr", "signature does not verify"),
        ("r5.csr", "outside this CA's trust domain"),
    ]
    assert full_dump(db) == full_dump(twin)


def test_the_direct_paths_chain_verifies_and_the_store_reads_its_rows(
    ca: Authority, tmp_path: Path, db: Path
) -> None:
    issued = _issue_batch(ca, tmp_path)
    record_direct(db, ca, chunks_of(issued))
    with open_store(db) as store, store.read() as session:
        report = verify_chain(session)
        assert report.ok, report
        assert report.events == report.head_seq == len(dump(db)["audit_events"])
        for certificate in issued:
            record = get_by_serial(session, certificate.serial, issuer_key_id=ca.key_identifier)
            assert record is not None, format(certificate.serial, "x")
            assert record.serial == certificate.serial
            assert record.der == certificate.der
            assert record.identity == certificate.sans.uris[0]
            assert record.subject == certificate.subject
            assert record.issuer == ca.certificate.subject.rfc4514_string()
            assert record.issuer_key_id == ca.key_identifier
            assert record.not_before == certificate.not_before and record.not_after == certificate.not_after
            assert record.not_before.tzinfo is not None
            assert record.created_at == NOW
            assert record.status is CertificateStatus.GOOD and record.revoked_at is None
            assert record.profile == "mtls" and record.requested_by == ACTOR
            assert record.roles == list(certificate.authorization.roles)
            assert record.attributes == certificate.authorization.attribute_map
            assert isinstance(record.attributes, dict) and isinstance(record.roles, list)
            assert record.fingerprint_sha256 == certificate.fingerprint
            assert record.renewed_from_id is None
            names = [(n.kind, n.value) for n in record.names]
            assert names[0] == (NameKind.URI, certificate.sans.uris[0])
            assert (NameKind.DNS, f"b{issued.index(certificate)}.example.org") in names


def test_a_committed_batch_releases_the_writers_turn(ca: Authority, tmp_path: Path, db: Path) -> None:
    batch = open_batch(db, ca)
    assert not lock_is_free(db)  # held from open() ...
    with batch:
        record_chunks(chunks_of(_issue_batch(ca, tmp_path, 2)), batch)
        assert not lock_is_free(db)
    assert lock_is_free(db)  # ... until the block ends
    with open_store(db) as store, store.write_connection(wait=0.5):
        pass  # and a Store's writer gets it at once


def test_an_empty_batch_commits_nothing(ca: Authority, db: Path) -> None:
    before = full_dump(db)
    with open_batch(db, ca) as batch:
        batch.add([])
        batch.close()
    assert full_dump(db) == before
    assert lock_is_free(db)


# --- not a ready inventory: None, nothing taken, nothing written ------------------------------


def test_a_missing_file_is_none_and_creates_nothing(ca: Authority, tmp_path: Path) -> None:
    assert SQLiteBatch.open(str(tmp_path / "inventory.db"), shared=shared_for(ca)) is None
    assert list(tmp_path.iterdir()) == []
    assert SQLiteBatch.open(str(tmp_path), shared=shared_for(ca)) is None  # a directory


@pytest.mark.parametrize("revision", ["0002", "0001", "9999"])
def test_another_schema_revision_is_none(ca: Authority, db: Path, revision: str) -> None:
    sql(db, f"UPDATE alembic_version SET version_num = '{revision}'")
    before, raw = full_dump(db), db.read_bytes()
    assert SQLiteBatch.open(str(db), shared=shared_for(ca)) is None
    assert full_dump(db) == before and db.read_bytes() == raw
    assert lock_is_free(db)


def test_no_schema_at_all_is_none(ca: Authority, tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    sql(path, "PRAGMA journal_mode=WAL", "CREATE TABLE other (x)")
    assert SQLiteBatch.open(str(path), shared=shared_for(ca)) is None
    assert lock_is_free(path)
    empty = tmp_path / "empty.db"
    empty.touch()
    assert SQLiteBatch.open(str(empty), shared=shared_for(ca)) is None
    assert empty.read_bytes() == b""


def test_two_revision_rows_are_none(ca: Authority, db: Path) -> None:
    sql(db, f"INSERT INTO alembic_version VALUES ('{HEAD_REVISION}x')")
    assert SQLiteBatch.open(str(db), shared=shared_for(ca)) is None
    assert lock_is_free(db)


def test_a_file_not_in_wal_mode_is_none_and_stays_so(ca: Authority, db: Path) -> None:
    sql(db, "PRAGMA journal_mode=DELETE")
    before, raw = full_dump(db), db.read_bytes()
    assert SQLiteBatch.open(str(db), shared=shared_for(ca)) is None
    assert db.read_bytes() == raw and full_dump(db) == before
    with contextlib.closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert lock_is_free(db)


def test_a_file_that_is_not_a_database_is_a_store_error_and_frees_the_turn(
    ca: Authority, tmp_path: Path
) -> None:
    path = tmp_path / "inventory.db"
    path.write_bytes(b"not a database, " * 512)
    with pytest.raises(StoreError, match="file is not a database"):
        SQLiteBatch.open(str(path), shared=shared_for(ca))
    assert lock_is_free(path)
    assert path.read_bytes() == b"not a database, " * 512


# --- the writers' turn ---------------------------------------------------------------------------


def test_a_held_turn_is_writer_busy_after_the_wait_and_nothing_is_written(ca: Authority, db: Path) -> None:
    before = full_dump(db)
    with held_lock(db):
        started = time.monotonic()
        with pytest.raises(WriterBusy, match="another process's writer is busy"):
            SQLiteBatch.open(str(db), shared=shared_for(ca), wait=0.2)
        waited = time.monotonic() - started
    assert 0.2 <= waited < 5
    assert full_dump(db) == before
    assert lock_is_free(db)
    batch = open_batch(db, ca, wait=0.2)  # free again: taken at once
    with batch:
        batch.close()


def _hold_a_store_write(path: str, holding: Any, release: Any) -> None:
    with open_store(path) as store, store.write_connection():
        holding.set()
        release.wait(30)


def test_another_processs_store_writer_keeps_the_batch_out(ca: Authority, db: Path) -> None:
    context = multiprocessing.get_context("fork")
    holding, release = context.Event(), context.Event()
    child = context.Process(target=_hold_a_store_write, args=(str(db), holding, release))
    child.start()
    try:
        assert holding.wait(30)
        before = full_dump(db)
        with pytest.raises(WriterBusy):
            SQLiteBatch.open(str(db), shared=shared_for(ca), wait=0.2)
        assert full_dump(db) == before
    finally:
        release.set()
        child.join(30)
    assert child.exitcode == 0
    with open_batch(db, ca, wait=5) as batch:
        batch.close()


def test_an_open_batch_keeps_a_stores_writers_out(ca: Authority, db: Path) -> None:
    with open_batch(db, ca) as batch, open_store(db) as store:
        with (
            pytest.raises(WriterBusy, match="another process's writer is busy"),
            store.write_connection(wait=0.1),
        ):
            pass
        batch.close()


# --- all or nothing ------------------------------------------------------------------------------


def _assert_unchanged(path: Path, before: list[str], head: list[tuple[Any, ...]]) -> None:
    assert full_dump(path) == before
    assert dump(path)["audit_head"] == head
    assert lock_is_free(path)
    with open_store(path) as store, store.read() as session:
        assert verify_chain(session).ok


def test_the_same_certificate_twice_in_a_chunk_is_a_duplicate_and_nothing_is_kept(
    ca: Authority, tmp_path: Path, db: Path
) -> None:
    issued = _issue_batch(ca, tmp_path, 3)
    before, head = full_dump(db), dump(db)["audit_head"]
    with pytest.raises(DuplicateCertificateError), open_batch(db, ca) as batch:
        batch.add([issued[0], issued[1], issued[0]])
        batch.close()
    _assert_unchanged(db, before, head)


def test_a_duplicate_in_a_later_chunk_undoes_the_earlier_chunks(
    ca: Authority, tmp_path: Path, db: Path
) -> None:
    issued = _issue_batch(ca, tmp_path, 5)
    before, head = full_dump(db), dump(db)["audit_head"]
    with pytest.raises(DuplicateCertificateError), open_batch(db, ca) as batch:
        batch.add(issued[:3])  # inserted ...
        batch.add([issued[3], issued[1]])
        batch.close()
    _assert_unchanged(db, before, head)  # ... and rolled back with the rest


def test_a_certificate_already_in_the_inventory_is_a_duplicate(
    ca: Authority, tmp_path: Path, db: Path
) -> None:
    issued = _issue_batch(ca, tmp_path, 4)
    record_direct(db, ca, chunks_of(issued[:2]))
    before, head = full_dump(db), dump(db)["audit_head"]
    with pytest.raises(DuplicateCertificateError), open_batch(db, ca) as batch:
        record_chunks(chunks_of([issued[2], issued[1], issued[3]]), batch)
    _assert_unchanged(db, before, head)


def test_the_service_path_refuses_the_same_duplicate(ca: Authority, tmp_path: Path, db: Path) -> None:
    # the control: the SQLAlchemy path raises the same error for the same batch
    issued = _issue_batch(ca, tmp_path, 2)
    before = full_dump(db)
    with pytest.raises(DuplicateCertificateError):
        record_with_service(db, ca, chunks_of([issued[0], issued[1], issued[0]]))
    assert full_dump(db) == before


def test_an_exception_in_the_block_rolls_everything_back(ca: Authority, tmp_path: Path, db: Path) -> None:
    issued = _issue_batch(ca, tmp_path, 4)
    before, head = full_dump(db), dump(db)["audit_head"]

    class Stop(Exception):
        pass

    with pytest.raises(Stop), open_batch(db, ca) as batch:
        batch.add(issued[:2])
        batch.add(issued[2:])
        batch.close()  # even with the head moved
        raise Stop
    _assert_unchanged(db, before, head)


def test_a_refused_batch_rolls_everything_back(ca: Authority, tmp_path: Path, db: Path) -> None:
    issued = _issue_batch(ca, tmp_path, 6)
    chunks = chunks_of(issued, 3)
    chunks[1][0] = BatchItem("r3.csr", "signature does not verify")
    before, head = full_dump(db), dump(db)["audit_head"]
    with pytest.raises(BatchRefusedError) as refused, open_batch(db, ca) as batch:
        record_chunks(chunks, batch)
    assert refused.value.failures == [("r3.csr", "signature does not verify")]
    _assert_unchanged(db, before, head)


def test_a_full_disk_is_reported_as_a_store_error_and_nothing_is_kept(
    ca: Authority, tmp_path: Path, db: Path
) -> None:
    # SQLITE_FULL rolls the whole transaction back inside SQLite; the Store reports it as a
    # StoreError ("database or disk is full"), and so must the direct writer, instead of
    # failing on its own ROLLBACK ("cannot rollback - no transaction is active").
    issued = _issue_batch(ca, tmp_path, 40)
    before, head = full_dump(db), dump(db)["audit_head"]
    with pytest.raises(StoreError, match="database or disk is full"), open_batch(db, ca) as batch:
        connection = batch._connection
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages + 3}")  # as if the disk filled up
        batch.add(issued[:2])
        batch.add(issued[2:])
        batch.close()
    _assert_unchanged(db, before, head)


def test_a_symlinked_inventory_takes_the_same_turn_as_the_store(
    ca: Authority, tmp_path: Path, db: Path
) -> None:
    # The Store takes the turn on realpath(FILE)-writer.lock; a batch opened through a link
    # to the same file must wait for that same lock.
    link = tmp_path / "link.db"
    link.symlink_to(db)
    with held_lock(db), pytest.raises(WriterBusy):
        batch = SQLiteBatch.open(str(link), shared=shared_for(ca), wait=0.2)
        if batch is not None:
            with batch:
                pass
