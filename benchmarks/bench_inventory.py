"""Inventory benchmark: the store, CRLs and OCSP at 10^6 certificates, beside OpenSSL in one run.

Sections (see benchmarks/README.md, "Inventory benchmark", for what each row means):

* inserting N certificate records through the store's bulk path (``store.bulk``) on SQLite and
  PostgreSQL, and a few thousand through the one-row path (``repository.add_certificate``);
* latencies at that size: lookup by serial, by identity, ``expiring --within 7d`` and an
  identity-glob page, with the query plans;
* full CRLs of 100,000 and 1,000,000 entries streamed from the inventory into ``build_crl``,
  beside ``openssl ca -gencrl`` on an ``index.txt`` with the same entries;
* OCSP responses/s from the responder's cache and cold, beside ``openssl ocsp`` on the same
  index, one process per request and as a server (``-port``) on loopback.

Run ``python benchmarks/bench_inventory.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import fcntl
import gc
import hashlib
import http.client
import itertools
import json
import math
import os
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from benchcommon import log
from benchcommon import machine_info as common_machine_info
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from sqlalchemy import event
from sqlalchemy.orm import Session

from certwright.clock import SystemClock
from certwright.issuance import Authority, create_root
from certwright.revocation.crl import build_crl
from certwright.revocation.ocsp import OCSPResponder
from certwright.revocation.responder import issue_responder
from certwright.service.revocation import StoreStatusSource
from certwright.store import (
    AuditKind,
    CertificateFilter,
    CertificateRecord,
    CertificateStatus,
    NameKind,
    Store,
    add_certificate,
    append_event,
    expiring,
    find_by_identity,
    get_by_serial,
    iter_revoked,
    list_certificates,
    open_store,
    reserve_crl_number,
)
from certwright.store.bulk import EventSpec, Row, add_certificates, append_events
from certwright.store.records import certificate_fields
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import generate_key
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES, CASettings
from certwright.x509.revocation_reason import RevocationReason

TRUST_DOMAIN = "example.org"
PROFILE = "mtls"
ACTOR = "bench"
NAMESPACES = 100  # identities are spiffe://example.org/ns/ns{K}/sa/svc{I}, K < 100
CERTS_PER_IDENTITY = 4  # each identity holds a few certificates (rotations), as in a fleet
TEMPLATES = 256  # real certificates the derived rows take their other columns from
REVOKED_SHARE = 0.05
LIFETIME = datetime.timedelta(days=90)
EXPIRING_WITHIN = datetime.timedelta(days=7)
PAGE = 100
LATENCY_TARGET_MS = 50.0
SEED = 20261128
# Revocation reasons of the generated rows, weighted; all of them are names `openssl ca` knows
# (it has no privilegeWithdrawn or aACompromise), so the same rows can go into its index.txt.
REASONS = (
    (RevocationReason.KEY_COMPROMISE, 30),
    (RevocationReason.SUPERSEDED, 30),
    (RevocationReason.CESSATION_OF_OPERATION, 20),
    (RevocationReason.AFFILIATION_CHANGED, 10),
    (RevocationReason.CERTIFICATE_HOLD, 5),
    (RevocationReason.UNSPECIFIED, 4),
    (RevocationReason.CA_COMPROMISE, 1),
)
# index.txt spelling (openssl ca's crl_reasons); a hold needs a hold instruction there.
OPENSSL_REASON = {
    RevocationReason.UNSPECIFIED: "unspecified",
    RevocationReason.KEY_COMPROMISE: "keyCompromise",
    RevocationReason.CA_COMPROMISE: "CACompromise",
    RevocationReason.AFFILIATION_CHANGED: "affiliationChanged",
    RevocationReason.SUPERSEDED: "superseded",
    RevocationReason.CESSATION_OF_OPERATION: "cessationOfOperation",
    RevocationReason.CERTIFICATE_HOLD: "certificateHold,holdInstructionNone",
}
GOOD, REVOKED, ON_HOLD = 0, 1, 2  # Inventory.states


# ---------------------------------------------------------------------------------------------
# The machine


def machine_info() -> dict[str, object]:
    import sqlite3

    return common_machine_info(
        memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        sqlalchemy=sa.__version__,
        sqlite=sqlite3.sqlite_version,
    )


def filesystem_of(path: Path) -> str:
    """The type of the file system holding ``path`` (tmpfs, ext4, ...), from /proc/mounts."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1].replace("\\040", " ")
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


# ---------------------------------------------------------------------------------------------
# The CA, the real certificates and the derived rows


@dataclass
class Pki:
    authority: Authority  # the issuing intermediate
    responder: x509.Certificate
    issuer_key_id: bytes  # what the inventory files the leaves under (the intermediate's SKI)
    ca_pem: Path
    ca_key: Path  # unencrypted, for openssl
    responder_pem: Path
    responder_key: Path

    @property
    def issuer(self) -> x509.Certificate:
        return self.authority.certificate


def make_pki(directory: Path) -> tuple[Pki, Any]:
    """A root and an issuing intermediate as ``ca init`` makes them, in memory; a responder."""
    settings = CASettings(trust_domain=TRUST_DOMAIN)
    root_key = generate_key()
    root = create_root(root_key, subject="CN=Bench Root CA", settings=settings)
    issuing_key = generate_key()
    intermediate = Authority(certificate=root, key=root_key, settings=settings).create_intermediate(
        issuing_key.public_key(), subject="CN=Bench Issuing CA"
    )
    authority = Authority(certificate=intermediate, key=issuing_key, settings=settings, chain=(root,))
    responder_key = generate_key()
    responder = issue_responder(authority, responder_key)
    plain = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    files = {
        "ca.pem": intermediate.public_bytes(serialization.Encoding.PEM),
        "ca.key": issuing_key.private_bytes(*plain),
        "responder.pem": responder.public_bytes(serialization.Encoding.PEM),
        "responder.key": responder_key.private_bytes(*plain),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)
    ski = intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    pki = Pki(authority, responder, ski, directory / "ca.pem", directory / "ca.key",
              directory / "responder.pem", directory / "responder.key")
    return pki, responder_key


def sign_real(authority: Authority, count: int) -> list[x509.Certificate]:
    """``count`` real mtls leaves, each with its own P-256 key, identity and DNS name."""
    profile = BUILTIN_PROFILES[PROFILE]
    authorization = Authorization.create(("orders.read",), {"env": "prod", "owner": "team-0"})
    certificates = []
    for i in range(count):
        ns = i % NAMESPACES
        certificates.append(authority.issue(
            generate_key().public_key(), profile=profile,
            identity=SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/ns{ns}/sa/real{i}"),
            sans=SubjectAltNames.create(dns=[f"real{i}.ns{ns}.{TRUST_DOMAIN}"]),
            authorization=authorization,
        ))
    return certificates


@dataclass
class Inventory:
    """What the generated rows hold, kept for lookups, OCSP checks and OpenSSL's index."""

    # 16 octets per serial, not a list of ints: the garbage collector walks every element of a
    # list on each full collection, which would add ~70 ms per collection at 10^6 rows to the
    # latencies measured in this process.
    packed: bytearray = field(default_factory=bytearray)
    states: bytearray = field(default_factory=bytearray)  # GOOD / REVOKED / ON_HOLD per serial
    identities: int = 0

    def add(self, serial: int, state: int) -> None:
        self.packed += serial.to_bytes(16, "big")
        self.states.append(state)

    def serial(self, k: int) -> int:
        return int.from_bytes(self.packed[16 * k:16 * k + 16], "big")

    def __len__(self) -> int:
        return len(self.states)


def index_time(when: datetime.datetime) -> str:
    return when.strftime("%y%m%d%H%M%SZ")


def index_serial(serial: int) -> str:
    text = format(serial, "X")
    return "0" + text if len(text) % 2 else text  # whole octets, as openssl writes them


def index_line(serial: int, not_after: datetime.datetime, revoked_at: datetime.datetime | None,
               reason: RevocationReason | None) -> str:
    """One line of OpenSSL's index.txt: status, expiry, revocation, serial, file, subject."""
    if revoked_at is None or reason is None:
        return f"V\t{index_time(not_after)}\t\t{index_serial(serial)}\tunknown\t/CN=x\n"
    revocation = f"{index_time(revoked_at)},{OPENSSL_REASON[reason]}"
    return f"R\t{index_time(not_after)}\t{revocation}\t{index_serial(serial)}\tunknown\t/CN=x\n"


def generate(
    templates: Sequence[Row], n: int, *, now: datetime.datetime, batch: int,
    inventory: Inventory | None = None, index: TextIO | None = None,
) -> Iterator[tuple[list[Row], list[EventSpec]]]:
    """N inventory rows derived from real ones, in batches, with one audit event each.

    Every row takes the columns of a real certificate (issuer, subject, roles, DER, ...) and
    gets its own random 127-bit serial, identity, DNS SAN, fingerprint and public key id, a
    notAfter spread uniformly over the next 90 days, and ~5% are revoked (or held) with a
    reason. The same seed gives the same rows on every database.
    """
    rng = random.Random(SEED)
    identities = max(1, n // CERTS_PER_IDENTITY)
    if inventory is not None:
        inventory.identities = identities
    span = int(LIFETIME.total_seconds())
    reasons = [reason for reason, _ in REASONS]
    weights = list(itertools.accumulate(weight for _, weight in REASONS))
    for start in range(0, n, batch):
        rows: list[Row] = []
        events: list[EventSpec] = []
        lines: list[str] = []
        for i in range(start, min(n, start + batch)):
            template = templates[i % len(templates)][0]
            j = i % identities
            ns, svc = j % NAMESPACES, j // NAMESPACES
            identity = f"spiffe://{TRUST_DOMAIN}/ns/ns{ns}/sa/svc{svc}"
            serial = rng.getrandbits(127) or 1
            fingerprint = rng.randbytes(32)
            not_after = now + datetime.timedelta(seconds=rng.randrange(60, span))
            not_before = not_after - LIFETIME
            row = dict(template)
            row.update(serial=serial, identity=identity, fingerprint_sha256=fingerprint,
                       public_key_id=rng.randbytes(32), not_before=not_before, not_after=not_after,
                       created_at=not_before)
            state, revoked_at, reason = GOOD, None, None
            if rng.random() < REVOKED_SHARE:
                reason = rng.choices(reasons, cum_weights=weights)[0]
                revoked_at = not_before + datetime.timedelta(
                    seconds=rng.randrange(max(1, int((now - not_before).total_seconds()))))
                hold = reason is RevocationReason.CERTIFICATE_HOLD
                state = ON_HOLD if hold else REVOKED
                row.update(status=CertificateStatus.ON_HOLD if hold else CertificateStatus.REVOKED,
                           revoked_at=revoked_at, revocation_reason=reason)
            rows.append((row, [(NameKind.URI, identity), (NameKind.DNS, f"svc{svc}.ns{ns}.{TRUST_DOMAIN}")]))
            events.append(EventSpec(AuditKind.ISSUED, ACTOR, now, format(serial, "x"), {
                "issuer": row["issuer"], "subject": row["subject"], "identity": identity,
                "profile": PROFILE, "not_after": not_after.isoformat(),
                "fingerprint_sha256": fingerprint.hex(),
            }))
            if inventory is not None:
                inventory.add(serial, state)
            if index is not None:
                lines.append(index_line(serial, not_after, revoked_at, reason))
        if index is not None:
            index.write("".join(lines))
        yield rows, events


# ---------------------------------------------------------------------------------------------
# The databases


@dataclass
class Database:
    name: str  # "sqlite" or "postgresql"
    url: str
    where: str  # what the output says about where the data lives
    drop: Callable[[], None] | None = None


def sqlite_database(directory: Path) -> Database:
    path = directory / "inventory.db"
    return Database("sqlite", f"sqlite:///{path}", f"SQLite file {path} ({filesystem_of(path.parent)})")


def postgresql_database(admin_url: str) -> Database:
    """A new, dedicated database on the server of ``admin_url``; ``drop`` removes it."""
    import psycopg

    base = sa.make_url(admin_url).set(drivername="postgresql")
    name = f"certwright_bench_{os.getpid()}_{secrets.token_hex(3)}"
    conninfo = base.render_as_string(hide_password=False)
    try:
        admin = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as error:
        raise SystemExit(f"PostgreSQL at {base.render_as_string(hide_password=True)} is not reachable "
                         f"({' '.join(str(error).split())}); use --pg URL or --db sqlite") from None
    with admin as connection:
        settings = {row[0]: row[1] for row in connection.execute(
            "SELECT name, setting || COALESCE(unit, '') FROM pg_settings WHERE name IN "
            "('server_version', 'shared_buffers', 'fsync', 'synchronous_commit', 'data_directory', "
            "'work_mem')"
        )}
        connection.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    data_dir = settings.get("data_directory", "?")
    fs = filesystem_of(Path(data_dir)) if data_dir != "?" else "?"
    # shared_buffers is reported in 8kB pages.
    buffers = settings.get("shared_buffers", "?")
    if buffers.endswith("8kB"):
        buffers = f"{int(buffers[:-3]) * 8 // 1024} MB"
    where = (f"PostgreSQL {settings.get('server_version', '?')} database {name} on {base.host}:{base.port}, "
             f"data directory {data_dir} ({fs}); shared_buffers {buffers}, "
             f"fsync {settings.get('fsync', '?')}, "
             f"synchronous_commit {settings.get('synchronous_commit', '?')}")
    url = base.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    return Database("postgresql", url, where, drop)


# ---------------------------------------------------------------------------------------------
# 1. Inserting


@dataclass
class InsertResult:
    rows: int
    seconds: float  # add_certificates + append_events + commit, summed over the transactions
    certificates_s: float  # add_certificates alone
    one_row: int = 0
    one_row_seconds: float = 0.0


def bulk_load(store: Store, templates: Sequence[Row], n: int, *, now: datetime.datetime, batch: int,
              inventory: Inventory | None, index: TextIO | None) -> InsertResult:
    total = certificates = 0.0
    done = 0
    report_every = max(batch, n // 10)
    for rows, events in generate(templates, n, now=now, batch=batch, inventory=inventory, index=index):
        start = time.perf_counter()
        with store.write() as session:
            add_certificates(session, rows)
            middle = time.perf_counter()
            append_events(session, events)
        end = time.perf_counter()
        total += end - start
        certificates += middle - start
        done += len(rows)
        if done % report_every < batch or done == n:
            log(f"  {store.dialect}: {done:,} rows, {done / total:,.0f} rows/s so far")
    return InsertResult(n, total, certificates)


def one_row_inserts(store: Store, certificates: Sequence[x509.Certificate], now: datetime.datetime) -> float:
    """Seconds to record each certificate in its own transaction, as CertificateService.issue does."""
    start = time.perf_counter()
    for certificate in certificates:
        with store.write() as session:
            record = add_certificate(session, certificate, profile=PROFILE, requested_by=ACTOR,
                                     created_at=now)
            append_event(session, kind=AuditKind.ISSUED, actor=ACTOR, at=now,
                         subject=format(certificate.serial_number, "x"),
                         details={"issuer": record.issuer, "subject": record.subject,
                                  "identity": record.identity, "profile": PROFILE,
                                  "not_after": certificate.not_valid_after_utc.isoformat(),
                                  "fingerprint_sha256": record.fingerprint_sha256.hex()})
    return time.perf_counter() - start


def fields_cost(certificates: Sequence[x509.Certificate], now: datetime.datetime, repeat: int) -> float:
    """Seconds per certificate for certificate_fields (what a batch pays to make a row from a cert)."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for certificate in certificates:
            certificate_fields(certificate, profile=PROFILE, requested_by=ACTOR, created_at=now)
        best = min(best, time.perf_counter() - start)
    return best / len(certificates)


# ---------------------------------------------------------------------------------------------
# 2. Latencies and plans


@dataclass
class Latency:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    rows_per_query: float
    full_gc_calls: int  # calls during which CPython ran a full (generation 2) collection
    full_gc_ms: float  # their mean pause
    p99_without_gc_ms: float

    @property
    def text(self) -> str:
        return f"p50 {self.p50_ms:.2f} / p99 {self.p99_ms:.2f} / max {self.max_ms:.1f} ms"


def percentile(ordered: Sequence[float], share: float) -> float:
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


class FullCollections:
    """A gc callback noting CPython's full collections: when they happen and how long they take."""

    def __init__(self) -> None:
        self.seen = False
        self.count = 0
        self.seconds = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seen = True
            self.count += 1
            self.seconds += time.perf_counter() - self._start


def measure(store: Store, call: Callable[[Session, Any], int], args: Sequence[Any], warmup: int) -> Latency:
    """Wall-clock time of ``call`` in its own read transaction, one at a time, per argument."""
    for arg in args[:warmup]:
        with store.read() as session:
            call(session, arg)
    samples: list[float] = []
    quiet: list[float] = []  # the calls without a full collection
    rows = 0
    gc.collect()
    watch = FullCollections()
    gc.callbacks.append(watch)
    try:
        for arg in args[warmup:]:
            watch.seen = False
            start = time.perf_counter()
            with store.read() as session:
                got = call(session, arg)
            elapsed = time.perf_counter() - start
            samples.append(elapsed)
            if not watch.seen:
                quiet.append(elapsed)
            rows += got
    finally:
        gc.callbacks.remove(watch)
    samples.sort()
    quiet.sort()
    return Latency(len(samples), 1e3 * percentile(samples, 0.5), 1e3 * percentile(samples, 0.99),
                   1e3 * samples[-1], rows / len(samples), len(samples) - len(quiet),
                   1e3 * watch.seconds / max(1, watch.count), 1e3 * percentile(quiet or samples, 0.99))


@contextlib.contextmanager
def captured(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """The SELECT statements (and their parameters) the store sends inside the block."""
    statements: list[tuple[str, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(store.engine, "before_cursor_execute", before)


def short_sql(statement: str) -> str:
    """The statement on one line, its select list and long IN lists elided."""
    text = " ".join(statement.split())
    text = re.sub(r"^SELECT .+? FROM ", "SELECT ... FROM ", text, count=1)
    return re.sub(r"IN \(([^()]{60})[^()]*\)", r"IN (\1 ...)", text)


def short_line(line: str, width: int = 200) -> str:
    return line if len(line) <= width else line[:width] + " ..."


def explain(store: Store, statement: str, parameters: Any) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN or PostgreSQL's EXPLAIN of one captured statement."""
    with store.engine.connect() as connection:
        if store.dialect == "sqlite":
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            depth: dict[int, int] = {0: 0}
            lines = []
            for node, parent, _unused, detail in rows:
                depth[node] = depth.get(parent, 0) + 1
                lines.append(short_line("  " * depth[node] + str(detail)))
            return lines
        rows = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        return [short_line("  " + str(row[0])) for row in rows]


def plans_of(store: Store, call: Callable[[Session], object]) -> list[dict[str, Any]]:
    with captured(store) as statements, store.read() as session:
        call(session)
    seen, plans = set(), []
    for statement, parameters in statements:
        if statement in seen:
            continue
        seen.add(statement)
        plans.append({"sql": short_sql(statement), "plan": explain(store, statement, parameters)})
    return plans


@dataclass
class QuerySuite:
    latencies: dict[str, Latency]
    plans: dict[str, list[dict[str, Any]]]
    heap_objects: int  # objects the garbage collector tracks in this process before the run
    full_collection_ms: float  # what one full collection of them costs


QUERY_LABELS = {
    "serial": "get_by_serial (show SERIAL)",
    "identity": "find_by_identity",
    "expiring": f"expiring --within 7d, first page of {PAGE}",
    "glob": f"list --identity 'spiffe://{TRUST_DOMAIN}/ns/nsK/sa/*', first page of {PAGE}",
    "crl": "iter_revoked (CRL stream)",
}


def query_suite(store: Store, inventory: Inventory, *, now: datetime.datetime, count: int, glob_count: int,
                warmup: int, issuer_key_id: bytes) -> QuerySuite:
    rng = random.Random(SEED + 1)
    serials = [inventory.serial(rng.randrange(len(inventory))) for _ in range(warmup + count)]
    identities = [_identity(rng.randrange(inventory.identities)) for _ in range(warmup + count)]
    namespaces = [rng.randrange(NAMESPACES) for _ in range(warmup + glob_count)]

    # The process's own heap (SQLAlchemy, Alembic, cryptography, certwright and this script) is
    # frozen out of the collector, as a long-running server does after start-up: a full
    # collection then walks only what the queries made. Its cost unfrozen is reported.
    gc.collect()
    heap = len(gc.get_objects())
    start = time.perf_counter()
    gc.collect()
    full_collection = time.perf_counter() - start
    gc.freeze()
    try:
        latencies = _latencies(store, serials, identities, namespaces, warmup=warmup, now=now)
    finally:
        gc.unfreeze()
    plans = {
        "serial": plans_of(store, lambda s: _by_serial(s, serials[0])),
        "identity": plans_of(store, lambda s: _by_identity(s, identities[0])),
        "expiring": plans_of(store, lambda s: _expiring(s, now)),
        "glob": plans_of(store, lambda s: _glob(s, namespaces[0], now)),
    }
    return QuerySuite(latencies, plans, heap, 1e3 * full_collection)


def _by_serial(session: Session, serial: int) -> int:
    return int(get_by_serial(session, serial) is not None)


def _by_identity(session: Session, identity: str) -> int:
    return len(find_by_identity(session, identity))


def _expiring(session: Session, now: datetime.datetime) -> int:
    return len(expiring(session, now=now, within=EXPIRING_WITHIN, limit=PAGE).items)


def _glob(session: Session, ns: int, now: datetime.datetime) -> int:
    where = CertificateFilter(identity_glob=f"spiffe://{TRUST_DOMAIN}/ns/ns{ns}/sa/*")
    return len(list_certificates(session, where, now=now, limit=PAGE).items)


def _latencies(store: Store, serials: list[int], identities: list[str], namespaces: list[int], *,
               warmup: int, now: datetime.datetime) -> dict[str, Latency]:
    latencies = {}
    for name, call, args in (
        ("serial", _by_serial, serials),
        ("identity", _by_identity, identities),
        ("expiring", lambda s, _: _expiring(s, now), [None] * len(serials)),
        ("glob", lambda s, ns: _glob(s, ns, now), namespaces),
    ):
        log(f"  {store.dialect}: {QUERY_LABELS[name]} x {len(args) - warmup} (+{warmup} warm-up)")
        latencies[name] = measure(store, call, args, warmup)
    return latencies


def _identity(j: int) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/ns{j % NAMESPACES}/sa/svc{j // NAMESPACES}"


def crl_plan(store: Store, issuer_key_id: bytes) -> list[dict[str, Any]]:
    def first(session: Session) -> None:
        with contextlib.closing(iter_revoked(session, issuer_key_id)) as stream:  # type: ignore[type-var]
            next(stream, None)

    return plans_of(store, first)


# ---------------------------------------------------------------------------------------------
# 3. CRLs


def revoke_up_to(store: Store, issuer_key_id: bytes, target: int, at: datetime.datetime) -> int:
    """Revoke good rows (lowest ids first) until ``target`` rows of the issuer are on the CRL."""
    record = CertificateRecord
    with store.write() as session:
        on_crl = session.scalar(sa.select(sa.func.count()).select_from(record).where(
            record.issuer_key_id == issuer_key_id, record.status != CertificateStatus.GOOD))
        missing = target - int(on_crl or 0)
        if missing > 0:
            chosen = (sa.select(record.id).where(record.issuer_key_id == issuer_key_id,
                                                 record.status == CertificateStatus.GOOD)
                      .order_by(record.id).limit(missing).scalar_subquery())
            session.execute(sa.update(record).where(record.id.in_(chosen)).values(
                status=CertificateStatus.REVOKED, revoked_at=at,
                revocation_reason=RevocationReason.KEY_COMPROMISE,
            ).execution_options(synchronize_session=False))
    if store.dialect == "postgresql":
        with store.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE certificates")
    return max(0, missing)


def dump_crl_index(store: Store, issuer_key_id: bytes, path: Path) -> int:
    """The issuer's CRL entries as OpenSSL's index.txt (R lines): the same entries for openssl ca."""
    record = CertificateRecord
    query = (sa.select(record.serial, record.not_after, record.revoked_at, record.revocation_reason)
             .where(record.issuer_key_id == issuer_key_id, record.status != CertificateStatus.GOOD))
    count = 0
    with store.read() as session, path.open("w") as out:
        result = session.execute(query.execution_options(yield_per=10_000))
        for part in result.partitions():
            out.write("".join(index_line(*entry) for entry in part))
            count += len(part)
    (path.parent / (path.name + ".attr")).write_text("unique_subject = no\n")
    return count


@dataclass
class CrlRun:
    seconds: float
    peak_rss_kib: int
    base_rss_kib: int  # ours: the child's peak before the build (interpreter, imports, open store)
    der_bytes: int
    stream_seconds: float | None = None  # ours: iter_revoked alone, counting the entries


def peak_rss_kib() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak RSS over
    into a child's ru_maxrss at exec, so a child of this (large) process would report at least
    the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def crl_child(spec_path: str) -> int:
    """Child process: build the issuer's full CRL from the inventory, the way publish_crl does."""
    spec = json.loads(Path(spec_path).read_text())
    issuer = x509.load_pem_x509_certificate(Path(spec["issuer"]).read_bytes())
    key = serialization.load_pem_private_key(Path(spec["key"]).read_bytes(), password=None)
    issuer_key_id = bytes.fromhex(spec["issuer_key_id"])
    store = open_store(spec["url"])
    gc.collect()
    base = peak_rss_kib()
    start = time.perf_counter()
    now = SystemClock().now()
    with store.write() as session:
        number = reserve_crl_number(session, issuer_key_id, at=now)
    with store.read() as session:
        entries = iter_revoked(session, issuer_key_id)
        der = build_crl(issuer=issuer, key=key,  # type: ignore[arg-type]
                        entries=((s, at, reason.flag) for s, at, reason in entries),
                        crl_number=number, this_update=now, next_update=now + datetime.timedelta(days=7))
    seconds = time.perf_counter() - start
    peak = peak_rss_kib()
    stream = None
    if spec["stream"]:  # where the time goes: the same stream, counted and dropped
        start = time.perf_counter()
        with store.read() as session:
            count = sum(1 for _ in iter_revoked(session, issuer_key_id))
        stream = time.perf_counter() - start
        assert count == spec["expected"], (count, spec["expected"])
    Path(spec["out"]).write_bytes(der)
    store.close()
    print(json.dumps({"seconds": seconds, "base_rss_kib": base, "peak_rss_kib": peak, "der_bytes": len(der),
                      "stream_seconds": stream}))
    return 0


def our_crl(db: Database, pki: Pki, directory: Path, size: int, repeat: int) -> tuple[CrlRun, Path]:
    """Best of ``repeat`` builds, each in a fresh child process (its RSS is the CRL's alone)."""
    out = directory / f"crl-{db.name}-{size}.der"
    best: CrlRun | None = None
    stream = None
    for r in range(repeat):
        spec = directory / f"crl-{db.name}-{size}.json"
        spec.write_text(json.dumps({"url": db.url, "issuer": str(pki.ca_pem), "key": str(pki.ca_key),
                                    "issuer_key_id": pki.issuer_key_id.hex(), "out": str(out),
                                    "stream": r == 0, "expected": size}))
        command = [sys.executable, str(Path(__file__).resolve()), "--crl-child", str(spec)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"CRL child failed ({done.returncode}): {done.stderr[-2000:]}")
        child = json.loads(done.stdout.strip().splitlines()[-1])
        stream = child["stream_seconds"] if r == 0 else stream
        run = CrlRun(child["seconds"], child["peak_rss_kib"], child["base_rss_kib"], child["der_bytes"])
        if best is None or run.seconds < best.seconds:
            best = run
    assert best is not None
    best.stream_seconds = stream
    return best, out


def check_crl(path: Path, issuer: x509.Certificate, expected: int) -> None:
    crl = x509.load_der_x509_crl(path.read_bytes())
    if len(crl) != expected or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise RuntimeError(f"{path.name}: {len(crl)} entries (expected {expected}) or a bad signature")


# Runs a command from a small process, so that its ru_maxrss is its own (see peak_rss_kib).
LAUNCHER = """\
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    json.dump({"seconds": seconds, "peak_rss_kib": usage.ru_maxrss,
               "exit": os.waitstatus_to_exitcode(status)}, out)
"""


def launch(command: list[str], directory: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of ``command``, timed from spawn to exit by the launcher."""
    result = directory / "launch.json"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, str(result), *command],
                          capture_output=True, text=True, timeout=900, check=False)
    outcome = json.loads(result.read_text()) if result.exists() else {"exit": done.returncode}
    if done.returncode != 0 or outcome["exit"] != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed: {done.stderr[-2000:]}")
    result.unlink()
    return outcome["seconds"], outcome["peak_rss_kib"]


def openssl_gencrl(pki: Pki, index: Path, directory: Path, repeat: int) -> CrlRun:
    config = directory / f"gencrl-{index.stem}.cnf"
    (directory / "crlnumber").write_text("01\n")
    config.write_text(f"""\
[ ca ]
default_ca = bench

[ bench ]
database = {index}
certificate = {pki.ca_pem}
private_key = {pki.ca_key}
crlnumber = {directory / "crlnumber"}
default_md = sha256
default_crl_days = 7
unique_subject = no
""")
    out = directory / f"openssl-{index.stem}.crl"
    best: CrlRun | None = None
    for _ in range(repeat):
        seconds, peak = launch(["openssl", "ca", "-gencrl", "-config", str(config), "-out", str(out)],
                               directory)
        if best is None or seconds < best.seconds:
            best = CrlRun(seconds, peak, 0, out.stat().st_size)
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# 4. OCSP


def cert_id_hashes(issuer: x509.Certificate) -> tuple[bytes, bytes]:
    """SHA-1 issuerNameHash and issuerKeyHash (RFC 6960 4.1.1): the latter is the SKI method-1 hash."""
    return (hashlib.sha1(issuer.subject.public_bytes()).digest(),
            x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest)


def ocsp_request(hashes_: tuple[bytes, bytes], serial: int) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(hashes_[0], hashes_[1], serial, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def expected_status(state: int) -> ocsp.OCSPCertStatus:
    return ocsp.OCSPCertStatus.GOOD if state == GOOD else ocsp.OCSPCertStatus.REVOKED


@dataclass
class OcspResult:
    cached: float  # responses/s, the same request repeated
    cold: float  # responses/s, distinct serials, first request each (lookup + signature)
    lookup_ms: float  # StoreStatusSource.lookup alone, mean
    minimal_lookup_ms: float  # the three columns OCSP needs, one SELECT, mean
    checked: int


def bench_ocsp(store: Store, pki: Pki, responder_key: Any, inventory: Inventory, picks: Sequence[int], *,
               cold: int, cached: int, repeat: int) -> OcspResult:
    source = StoreStatusSource(store, pki.issuer_key_id)
    ids = cert_id_hashes(pki.issuer)

    def responder() -> OCSPResponder:
        return OCSPResponder(issuer=pki.issuer, responder=pki.responder, responder_key=responder_key,
                             source=source, clock=SystemClock())

    best_cold = math.inf
    checked = 0
    for r in range(repeat):
        chosen = picks[r * cold:(r + 1) * cold]
        requests = [ocsp_request(ids, inventory.serial(k)) for k in chosen]
        core = responder()
        gc.collect()
        start = time.perf_counter()
        answers = [core.answer(request) for request in requests]
        best_cold = min(best_cold, time.perf_counter() - start)
        for k, answer in zip(chosen, answers, strict=True):
            if answer.cert_status != expected_status(inventory.states[k]):
                raise RuntimeError(f"OCSP said {answer.cert_status} for serial {inventory.serial(k):x}")
            checked += 1
    core = responder()
    request = ocsp_request(ids, inventory.serial(picks[0]))
    core.answer(request)
    best_cached = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(cached):
            core.answer(request)
        best_cached = min(best_cached, time.perf_counter() - start)
    if core.stats.from_cache != cached * repeat:
        raise RuntimeError(f"expected {cached * repeat} answers from the cache, got {core.stats.from_cache}")
    # Where the cold time goes: the lookup as StoreStatusSource does it, and the one SELECT it needs.
    serials = [inventory.serial(k) for k in picks[:cold]]
    start = time.perf_counter()
    for serial in serials:
        source.lookup(serial)
    lookup = (time.perf_counter() - start) / len(serials)
    record = CertificateRecord
    minimal = sa.select(record.status, record.revoked_at, record.revocation_reason).where(
        record.serial == sa.bindparam("serial"), record.issuer_key_id == pki.issuer_key_id)
    start = time.perf_counter()
    for serial in serials:
        with store.read() as session:
            session.execute(minimal, {"serial": serial}).first()
    minimal_lookup = (time.perf_counter() - start) / len(serials)
    return OcspResult(cached / best_cached, cold / best_cold, 1e3 * lookup, 1e3 * minimal_lookup, checked)


def openssl_ocsp_args(pki: Pki, index: Path) -> list[str]:
    # -nmin 60: the same validity as the responder core's default; -resp_key_id: byKey, as ours.
    return ["openssl", "ocsp", "-index", str(index), "-rsigner", str(pki.responder_pem),
            "-rkey", str(pki.responder_key), "-CA", str(pki.ca_pem), "-nmin", "60", "-resp_key_id"]


def check_ocsp_response(der: bytes, state: int) -> None:
    response = ocsp.load_der_ocsp_response(der)
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise RuntimeError(f"openssl ocsp answered {response.response_status}")
    if response.certificate_status != expected_status(state):
        raise RuntimeError(f"openssl ocsp said {response.certificate_status} "
                           f"for serial {response.serial_number:x}")


@dataclass
class OpensslOcsp:
    per_process: float  # responses/s
    processes: int
    server: float | None  # responses/s over HTTP, None when not run
    server_requests: int
    server_startup_s: float
    server_note: str


def openssl_ocsp_per_process(pki: Pki, index: Path, directory: Path, inventory: Inventory,
                             picks: Sequence[int], *, limit: int, budget: float) -> tuple[float, int]:
    """One `openssl ocsp -index` process per request, as a shell script answering OCSP would."""
    ids = cert_id_hashes(pki.issuer)
    base = openssl_ocsp_args(pki, index)
    done = 0
    start = time.perf_counter()
    for k in picks[:limit]:
        request, response = directory / "req.der", directory / f"resp-{done}.der"
        request.write_bytes(ocsp_request(ids, inventory.serial(k)))
        subprocess.run([*base, "-reqin", str(request), "-respout", str(response)], capture_output=True,
                       check=True)
        done += 1
        if time.perf_counter() - start > budget:
            break
    elapsed = time.perf_counter() - start
    for i, k in enumerate(picks[:done]):
        check_ocsp_response((directory / f"resp-{i}.der").read_bytes(), inventory.states[k])
    return done / elapsed, done


def _loopback_up() -> None:
    """Bring `lo` up in this (new, empty) network namespace: SIOCGIFFLAGS, then SIOCSIFFLAGS | IFF_UP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, request))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def ocsp_server_child(spec_path: str) -> int:
    """Child process, in its own network namespace: `openssl ocsp -port` and a client, loopback only.

    OpenSSL 3.0's ``-port`` takes a port number only and listens on every interface, so it
    runs in a namespace whose only interface is `lo`. The port is picked by binding port 0.
    """
    spec = json.loads(Path(spec_path).read_text())

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(1)

    signal.signal(signal.SIGTERM, stop)
    _loopback_up()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    requests = [Path(p).read_bytes() for p in spec["requests"]]
    warmup = spec["warmup"]
    log_path = Path(spec["log"])
    with log_path.open("wb") as server_log:
        start = time.perf_counter()
        server = subprocess.Popen(
            [*spec["args"], "-port", str(port), "-nrequest", str(len(requests) + 10)],
            stdout=server_log, stderr=server_log, preexec_fn=_die_with_parent)
        try:
            while b"waiting for OCSP client connections" not in log_path.read_bytes():
                if server.poll() is not None or time.perf_counter() - start > 300:
                    raise RuntimeError(f"openssl ocsp -port did not start: {log_path.read_text()[-500:]}")
                time.sleep(0.01)
            startup = time.perf_counter() - start
            responses = []
            timed_from = 0.0
            for i, body in enumerate(requests):
                if i == warmup:
                    timed_from = time.perf_counter()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("POST", "/", body=body,
                                   headers={"Content-Type": "application/ocsp-request"})
                reply = connection.getresponse()
                data = reply.read()
                version = reply.version
                connection.close()
                if reply.status != 200:
                    raise RuntimeError(f"openssl ocsp -port answered HTTP {reply.status}")
                if i < 50:
                    responses.append(data.hex())
            seconds = time.perf_counter() - timed_from
        finally:
            server.kill()
            server.wait()
    print(json.dumps({"served": len(requests) - warmup, "seconds": seconds, "startup_s": startup,
                      "responses": responses, "http_version": version}))
    return 0


def openssl_ocsp_server(pki: Pki, index: Path, directory: Path, inventory: Inventory, picks: Sequence[int],
                        *, count: int, warmup: int) -> tuple[float | None, int, float, str]:
    ids = cert_id_hashes(pki.issuer)
    chosen = list(picks[:warmup + count])
    paths = []
    for i, k in enumerate(chosen):
        path = directory / f"server-req-{i}.der"
        path.write_bytes(ocsp_request(ids, inventory.serial(k)))
        paths.append(str(path))
    spec = directory / "server.json"
    spec.write_text(json.dumps({"args": openssl_ocsp_args(pki, index), "requests": paths, "warmup": warmup,
                                "log": str(directory / "server.log")}))
    unshare = shutil.which("unshare")
    if unshare is None:
        return None, 0, 0.0, "not run: no `unshare` to give it a loopback-only network namespace"
    command = [unshare, "--net", "--", sys.executable, str(Path(__file__).resolve()), "--ocsp-server-child",
               str(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return None, 0, 0.0, "not run: the server run timed out"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1]
        return None, 0, 0.0, f"not run: {reason[:200]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for i, der in enumerate(result["responses"]):
        check_ocsp_response(bytes.fromhex(der), inventory.states[chosen[i]])
    http = "HTTP/1.0" if result["http_version"] == 10 else "HTTP/1.1"
    return (result["served"] / result["seconds"], result["served"], result["startup_s"],
            f"one sequential Python http.client POST per request, a new TCP connection each "
            f"(the server answers {http} and closes)")


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class ReportRow:
    id: str  # stable key for --json consumers
    what: str
    figure: str  # as printed
    value: float | None = None  # the figure's main number, in ``unit``
    unit: str = ""
    ratio: float | None = None
    ratio_to: str = ""
    target: str = ""  # "p99 < 50 ms: yes" and the like
    meets_target: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)  # every figure behind the row, for --json


@dataclass
class Report:
    machine: dict[str, object]
    parameters: dict[str, object]
    where: dict[str, str] = field(default_factory=dict)
    rows: list[ReportRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plans: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    def add(self, row: ReportRow) -> None:
        self.rows.append(row)


def mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def render(report: Report) -> str:
    m, p = report.machine, report.parameters
    load = " ".join(map(str, m["load_average"]))  # type: ignore[call-overload]
    load_end = " ".join(map(str, m.get("load_average_end", [])))  # type: ignore[call-overload]
    lines = [
        "certwright inventory benchmark",
        f"machine      {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"load average {load} at start, {load_end} at end",
        f"python       {m['python']}, SQLAlchemy {m['sqlalchemy']}, SQLite {m['sqlite']}",
        f"cryptography {m['cryptography']}, bundling its own {m['cryptography_openssl']}",
        f"openssl CLI  {m['openssl_cli']}",
        f"parameters   n={p['n']:,} derived rows (+{p['one_row']:,} real ones through the one-row path), "
        f"transactions of {p['batch']:,}, {p['lookups']:,} lookups ({p['glob_lookups']:,} glob pages) "
        f"after {p['warmup']} warm-up, best of {p['repeat']}",
    ]
    lines += [f"{name:<12} {text}" for name, text in report.where.items()]
    lines.append("")
    header = ("what", "figure", "ratio", "ratio to", "target")
    table = [header] + [
        (r.what, r.figure, "" if r.ratio is None else _ratio(r.ratio), r.ratio_to, r.target)
        for r in report.rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for j, row in enumerate(table):
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]),
                 row[3].ljust(widths[3]), row[4]]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines += [f"* {note}" for note in report.notes]
    if report.plans:
        lines += ["", "Query plans (the statements each call sends; SQLite: EXPLAIN QUERY PLAN, "
                      "PostgreSQL: EXPLAIN)"]
        for db, queries in report.plans.items():
            for name, statements in queries.items():
                lines.append(f"\n[{db}] {QUERY_LABELS[name]}")
                for statement in statements:
                    lines.append(f"  {statement['sql'][:400]}")
                    lines += [f"  {line}" for line in statement["plan"]]
    return "\n".join(lines)


def _ratio(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def to_json(report: Report) -> str:
    return json.dumps({"machine": report.machine, "parameters": report.parameters, "where": report.where,
                       "rows": [asdict(r) for r in report.rows], "notes": report.notes,
                       "plans": report.plans}, indent=2)


def latency_row(db: str, name: str, latency: Latency, *, target: bool) -> ReportRow:
    verdict, meets = "", None
    if target:
        meets = latency.p99_ms < LATENCY_TARGET_MS
        verdict = f"p99 < {LATENCY_TARGET_MS:g} ms: {'yes' if meets else 'NO'}"
    return ReportRow(f"{db}.latency.{name}", f"{db}: {QUERY_LABELS[name]}", latency.text,
                     latency.p99_ms, "ms (p99)", target=verdict, meets_target=meets, details=asdict(latency))


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class DbResult:
    insert: InsertResult
    queries: QuerySuite
    ocsp: OcspResult
    crl: dict[int, CrlRun]
    crl_setup_s: dict[int, float]
    total_rows: int


def bench_database(db: Database, args: argparse.Namespace, pki: Pki, responder_key: Any,
                   templates: Sequence[Row], real: Sequence[x509.Certificate], now: datetime.datetime,
                   inventory: Inventory, index: Path, crl_indexes: dict[int, Path], directory: Path,
                   report: Report) -> DbResult:
    log(f"{db.name}: {db.where}")
    store = open_store(db.url, upgrade=True)
    try:
        first = not len(inventory)
        log(f"{db.name}: inserting {args.n:,} rows, transactions of {args.batch:,}")
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(index.open("w")) if first else None
            insert = bulk_load(store, templates, args.n, now=now, batch=args.batch,
                               inventory=inventory if first else None, index=out)
            if out is not None:
                # The real certificates too, so openssl's index lists what the inventory does.
                out.write("".join(index_line(c.serial_number, c.not_valid_after_utc, None, None)
                                  for c in real))
        if first:
            (index.parent / (index.name + ".attr")).write_text("unique_subject = no\n")
        log(f"{db.name}: {len(real):,} rows through the one-row path (add_certificate + append_event)")
        insert.one_row, insert.one_row_seconds = len(real), one_row_inserts(store, real, now)
        if db.name == "postgresql":
            with store.engine.begin() as connection:  # what autovacuum does shortly after a bulk load
                connection.exec_driver_sql("ANALYZE")
        queries = query_suite(store, inventory, now=now, count=args.lookups, glob_count=args.glob_lookups,
                              warmup=args.warmup, issuer_key_id=pki.issuer_key_id)
        picks = random.Random(SEED + 2).sample(range(len(inventory)), args.ocsp_cold * args.repeat)
        log(f"{db.name}: OCSP, {args.ocsp_cold:,} cold requests and {args.ocsp_cached:,} cached, "
            f"best of {args.repeat}")
        ocsp_result = bench_ocsp(store, pki, responder_key, inventory, picks, cold=args.ocsp_cold,
                                 cached=args.ocsp_cached, repeat=args.repeat)
        crl: dict[int, CrlRun] = {}
        setup: dict[int, float] = {}
        total = args.n + len(real)
        for size in args.crl_sizes:
            start = time.perf_counter()
            added = revoke_up_to(store, pki.issuer_key_id, size, now)
            setup[size] = time.perf_counter() - start
            log(f"{db.name}: revoked {added:,} more rows ({setup[size]:.1f} s) for a CRL of {size:,} entries")
            if size not in crl_indexes:
                path = directory / f"crl-index-{size}.txt"
                dumped = dump_crl_index(store, pki.issuer_key_id, path)
                assert dumped == size, (dumped, size)
                crl_indexes[size] = path
            log(f"{db.name}: CRL of {size:,} entries (child process), best of {args.repeat}")
            crl[size], der_path = our_crl(db, pki, directory, size, args.repeat)
            check_crl(der_path, pki.issuer, size)
        report.plans[db.name] = {**queries.plans, "crl": crl_plan(store, pki.issuer_key_id)}
        return DbResult(insert, queries, ocsp_result, crl, setup, total)
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.crl_child:
        return crl_child(args.crl_child)
    if args.ocsp_server_child:
        return ocsp_server_child(args.ocsp_server_child)
    machine = machine_info()
    parameters = {k: getattr(args, k) for k in ("n", "batch", "lookups", "glob_lookups", "warmup", "repeat",
                                                "ocsp_cold", "ocsp_cached", "openssl_processes")}
    parameters.update(one_row=args.one_row, crl_sizes=list(args.crl_sizes), databases=args.databases,
                      revoked_share=REVOKED_SHARE, certs_per_identity=CERTS_PER_IDENTITY,
                      namespaces=NAMESPACES)
    report = Report(machine, parameters)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="certwright-inventory-", dir=args.workdir) as tmp:
        directory = Path(tmp)
        log(f"work directory {directory} ({filesystem_of(directory)})")
        pki, responder_key = make_pki(directory)
        now = SystemClock().now()
        log(f"signing {args.one_row:,} real certificates (the first {TEMPLATES} are the rows' templates)")
        real = sign_real(pki.authority, max(args.one_row, TEMPLATES))
        templates = [certificate_fields(c, profile=PROFILE, requested_by=ACTOR, created_at=now)
                     for c in real[:TEMPLATES]]
        if templates[0][0]["issuer_key_id"] != pki.issuer_key_id:
            raise RuntimeError("the leaves' authorityKeyIdentifier is not the intermediate's SKI")
        per_row_fields = fields_cost(real[:TEMPLATES], now, args.repeat)
        real = real[:args.one_row]
        inventory = Inventory()
        index = directory / "index.txt"
        crl_indexes: dict[int, Path] = {}
        results: dict[str, DbResult] = {}
        for name in args.databases:
            db = sqlite_database(directory) if name == "sqlite" else postgresql_database(args.pg)
            report.where[name] = db.where
            try:
                results[name] = bench_database(db, args, pki, responder_key, templates, real, now, inventory,
                                               index, crl_indexes, directory, report)
            finally:
                if db.drop is not None:
                    db.drop()
                    log(f"{name}: dropped the benchmark database")
                if name == "sqlite":
                    for suffix in ("", "-wal", "-shm"):
                        (directory / f"inventory.db{suffix}").unlink(missing_ok=True)
        # OpenSSL on the same entries.
        openssl_dir = directory / "openssl"
        openssl_dir.mkdir()
        picks = random.Random(SEED + 3).sample(range(len(inventory)),
                                               max(args.openssl_processes, args.ocsp_cold) + args.warmup)
        log(f"openssl ocsp -index, one process per request (up to {args.openssl_processes}, "
            f"{args.openssl_budget:.0f} s)")
        per_process, processes = openssl_ocsp_per_process(pki, index, openssl_dir, inventory, picks,
                                                           limit=args.openssl_processes,
                                                           budget=args.openssl_budget)
        log(f"openssl ocsp -port on loopback ({args.ocsp_cold:,} requests after {args.warmup} warm-up)")
        server, served, startup, server_note = openssl_ocsp_server(pki, index, openssl_dir, inventory, picks,
                                                                   count=args.ocsp_cold, warmup=args.warmup)
        theirs = OpensslOcsp(per_process, processes, server, served, startup, server_note)
        gencrl: dict[int, CrlRun] = {}
        for size, path in sorted(crl_indexes.items()):
            log(f"openssl ca -gencrl, {size:,} entries, best of {args.repeat}")
            gencrl[size] = openssl_gencrl(pki, path, openssl_dir, args.repeat)
    report.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report.machine["wall_seconds"] = round(time.perf_counter() - started, 1)
    fill_report(report, args, results, theirs, gencrl, per_row_fields)
    print(to_json(report) if args.json else render(report))
    return 0


def fill_report(report: Report, args: argparse.Namespace, results: dict[str, DbResult], theirs: OpensslOcsp,
                gencrl: dict[int, CrlRun], per_row_fields: float) -> None:
    n = args.n
    for db, result in results.items():
        insert = result.insert
        bulk = n / insert.seconds
        one = insert.one_row / insert.one_row_seconds
        report.add(ReportRow(f"{db}.insert.bulk", f"{db}: bulk insert, add_certificates + append_events",
                             f"{bulk:,.0f} rows/s", bulk, "rows/s", details=asdict(insert)))
        report.add(ReportRow(f"{db}.insert.one_row", f"{db}: one-row insert, add_certificate + append_event",
                             f"{one:,.0f} rows/s", one, "rows/s", one / bulk, "bulk insert"))
    for db, result in results.items():
        for name, latency in result.queries.latencies.items():
            report.add(latency_row(db, name, latency, target=name in ("serial", "expiring")))
    for size in args.crl_sizes:
        ossl = gencrl.get(size)
        for db, result in results.items():
            run = result.crl[size]
            report.add(ReportRow(
                f"{db}.crl.{size}", f"{db}: CRL of {size:,} entries, iter_revoked -> build_crl",
                f"{run.seconds:.2f} s, peak RSS {mib(run.peak_rss_kib)}", run.seconds, "s",
                None if ossl is None else ossl.seconds / run.seconds, "openssl ca -gencrl (time / ours)",
                details=asdict(run)))
        if ossl is not None:
            report.add(ReportRow(f"openssl.gencrl.{size}", f"openssl ca -gencrl, {size:,} entries",
                                 f"{ossl.seconds:.2f} s, peak RSS {mib(ossl.peak_rss_kib)}",
                                 ossl.seconds, "s", details=asdict(ossl)))
    server_to = "openssl ocsp -port (HTTP)"
    for db, result in results.items():
        o = result.ocsp
        for kind, rate in (("cached", o.cached), ("cold", o.cold)):
            what = ("from cache, same request repeated" if kind == "cached"
                    else "cold, distinct serials, first request each")
            report.add(ReportRow(f"{db}.ocsp.{kind}", f"{db}: OCSPResponder.answer, {what}",
                                 f"{rate:,.0f} responses/s", rate, "responses/s",
                                 None if theirs.server is None else rate / theirs.server, server_to,
                                 details=asdict(o)))
        report.add(ReportRow(f"{db}.ocsp.cold_vs_per_process", f"{db}: OCSP cold / openssl ocsp per process",
                             "", None, "", o.cold / theirs.per_process, "openssl ocsp, 1 process/request"))
    if theirs.server is not None:
        report.add(ReportRow("openssl.ocsp.server",
                             f"openssl ocsp -port, {theirs.server_requests:,} requests",
                             f"{theirs.server:,.0f} responses/s", theirs.server, "responses/s"))
    report.add(ReportRow("openssl.ocsp.per_process",
                         f"openssl ocsp -index -reqin, 1 process/request ({theirs.processes})",
                         f"{theirs.per_process:,.1f} responses/s", theirs.per_process, "responses/s"))
    fill_notes(report, args, results, theirs, gencrl, per_row_fields)


def fill_notes(report: Report, args: argparse.Namespace, results: dict[str, DbResult], theirs: OpensslOcsp,
               gencrl: dict[int, CrlRun], per_row_fields: float) -> None:
    n = args.n
    notes = report.notes
    notes.append(
        f"Rows: {TEMPLATES} real mtls leaves signed by certwright (Authority.issue) are the templates; "
        f"each of the {n:,} rows takes one's columns (issuer, subject, roles, DER, ...) and gets its own "
        f"random 127-bit serial, identity spiffe://{TRUST_DOMAIN}/ns/nsK/sa/svcI ({NAMESPACES} namespaces, "
        f"{CERTS_PER_IDENTITY} certificates per identity), DNS SAN, random fingerprint and public key id, "
        f"a notAfter uniform over the next 90 days, and {REVOKED_SHARE:.0%} are revoked or held with an "
        "RFC 5280 reason. So a row's DER is its template's, not a certificate with its serial.")
    for db, result in results.items():
        insert = result.insert
        notes.append(
            f"{db}: bulk insert {n:,} rows in {insert.seconds:.1f} s: add_certificates "
            f"{insert.certificates_s:.1f} s ({n / insert.certificates_s:,.0f} rows/s), "
            "append_events + commit "
            f"{insert.seconds - insert.certificates_s:.1f} s (one hash-chained audit event per row). One-row "
            f"path: {1e3 * insert.one_row_seconds / insert.one_row:.2f} ms per certificate, "
            "own transaction each, "
            f"into the {n:,}-row table.")
    notes.append(
        f"Not in the bulk figure: making a row from a certificate (certificate_fields) costs "
        f"{1e6 * per_row_fields:.0f} us per certificate in-process; batch signing pays it in its workers.")
    notes.append(
        f"Latencies: wall clock of each call in its own read transaction (store.read()), one at a time, "
        f"random arguments, after {args.warmup} warm-up calls; ORM objects included (get_by_serial and the "
        "pages also load each row's names with a second SELECT). find_by_identity returns "
        + ", ".join(f"{r.queries.latencies['identity'].rows_per_query:.1f} ({db})"
                    for db, r in results.items())
        + " rows per identity; the glob page keeps the rows the glob matches from chunks of 500.")
    heaps = "; ".join(f"{db} {r.queries.heap_objects:,} objects, {r.queries.full_collection_ms:.0f} ms"
                      for db, r in results.items())
    pauses = []
    for db, result in results.items():
        for name, latency in result.queries.latencies.items():
            if latency.full_gc_calls:
                pauses.append(f"{db} {name} {latency.full_gc_calls} of {latency.count} calls "
                              f"(~{latency.full_gc_ms:.1f} ms each; "
                              f"p99 without them {latency.p99_without_gc_ms:.2f} ms)")
    notes.append(
        "Garbage collection: before the latency runs the process's heap (SQLAlchemy, Alembic, cryptography, "
        "certwright, this script) is frozen out of CPython's collector (gc.freeze()), as a long-running "
        "server would do after start-up; unfrozen, one full collection walks it in: " + heaps + ". Each "
        "page makes ~300 ORM objects in reference cycles, so full collections come every few dozen pages; "
        "without the freeze each adds that pause to the call it lands in (in trial runs ~2% of the expiring "
        "pages and ~20% of the glob pages, which fetch 500 rows). Calls that still met a full collection: "
        + ("; ".join(pauses) or "none") + ".")
    if "postgresql" in results:
        notes.append("PostgreSQL: ANALYZE ran after the load (autovacuum does it on its own shortly after a "
                     "bulk load); SQLite: no ANALYZE (certwright does not run it), plans from its "
                     "heuristics.")
    for db, result in results.items():
        o = result.ocsp
        notes.append(
            f"{db}: OCSP cold = lookup + signature per request; StoreStatusSource.lookup (get_by_serial: the "
            f"whole row, then its names) takes {o.lookup_ms:.2f} ms, a SELECT of the three columns "
            "OCSP needs "
            f"{o.minimal_lookup_ms:.2f} ms. {o.checked:,} cold answers checked against the rows' status.")
    notes.append(
        f"openssl ocsp per process: each process loads the {n + args.one_row:,}-line index.txt, answers one "
        f"request (-reqin/-respout) and exits; {theirs.processes} processes timed, the rate extrapolated.")
    if theirs.server is not None:
        notes.append(
            f"openssl ocsp -port: a single-process server with the index in memory, signing every response "
            f"(it has no cache), started in {theirs.server_startup_s:.1f} s (loading the index); "
            f"{theirs.server_note}. It ran in a private network namespace (unshare --net) whose only "
            "interface is loopback, because OpenSSL 3.0's -port listens on every interface. Comparable with "
            "the cold row in what is done per response (status lookup + one signature); not in transport: "
            "its figure includes HTTP and TCP on loopback and the Python client, ours is the in-process core "
            "(the HTTP endpoints come with the server issue). The cached row has no OpenSSL counterpart.")
    else:
        notes.append(f"openssl ocsp -port: {theirs.server_note}.")
    for size, run in sorted(gencrl.items()):
        parts = []
        for db, result in results.items():
            ours = result.crl[size]
            stream = "" if ours.stream_seconds is None else (
                f", iter_revoked alone (counting) {ours.stream_seconds:.2f} s of the {ours.seconds:.2f} s")
            parts.append(f"{db} {mib(ours.base_rss_kib)} before the build -> {mib(ours.peak_rss_kib)} peak, "
                         f"{ours.der_bytes / size:.1f} bytes/entry{stream}")
        notes.append(
            f"CRL {size:,}: each build in a fresh child process (reserve_crl_number, then iter_revoked "
            "streamed into build_crl, as RevocationService.publish_crl); peak RSS is the child's VmHWM: "
            + "; ".join(parts)
            + f". openssl ca -gencrl reads an index.txt of the same {size:,} entries (dumped from the "
            f"inventory): {mib(run.peak_rss_kib)} peak (ru_maxrss, started from a small launcher), "
            f"{run.der_bytes / size:.1f} bytes/entry (PEM).")
    setup = "; ".join(f"{db} " + ", ".join(f"{s:.1f} s" for s in r.crl_setup_s.values())
                      for db, r in results.items())
    notes.append("CRL set-up (not timed in the rows): revoking good rows with one UPDATE up to each "
                 f"size: {setup}.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000,
                        help="certificate rows to insert (default 1,000,000)")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both",
                        help="which databases (default both)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: n=20,000, fewer lookups, requests and processes, best of 1")
    parser.add_argument("--repeat", type=int, default=2,
                        help="R: best of R for CRLs and OCSP rates (default 2)")
    parser.add_argument("--batch", type=int, default=10_000,
                        help="rows per bulk transaction (default 10,000)")
    parser.add_argument("--lookups", type=int, default=1000,
                        help="timed serial, identity and expiring calls per database (default 1000)")
    parser.add_argument("--glob-lookups", type=int, default=300,
                        help="timed identity-glob pages per database (default 300)")
    parser.add_argument("--one-row", type=int, default=2000,
                        help="real certificates inserted through the one-row path (default 2000)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL server to create the benchmark database on "
                             "(it is dropped at the end)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--workdir", type=Path, default=_default_workdir(),
        help="where the SQLite file, index.txt files and CRLs go (default: /dev/shm when it exists, "
             "else benchmarks/.work); the output says which file system that was",
    )
    parser.add_argument("--crl-child", help=argparse.SUPPRESS)
    parser.add_argument("--ocsp-server-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.crl_child or args.ocsp_server_child:
        return args
    args.warmup = 100
    args.ocsp_cold, args.ocsp_cached = 2000, 20_000
    args.openssl_processes, args.openssl_budget = 200, 20.0
    if args.quick:
        args.n = min(args.n, 20_000)
        args.lookups, args.glob_lookups, args.one_row = 200, 100, 300
        args.warmup, args.repeat = 20, 1
        args.ocsp_cold, args.ocsp_cached = 300, 3000
        args.openssl_processes, args.openssl_budget = 20, 5.0
    if min(args.n, args.repeat, args.batch, args.lookups, args.glob_lookups) < 1 or args.one_row < 0:
        parser.error("--n, --repeat, --batch and the lookup counts must be positive")
    args.crl_sizes = (100_000, 1_000_000) if args.n >= 1_000_000 else (max(1, args.n // 10), args.n)
    args.databases = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    return args


def _default_workdir() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / "certwright-bench"
    return Path(__file__).resolve().parent / ".work"


if __name__ == "__main__":
    sys.exit(main())
