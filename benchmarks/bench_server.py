"""Server benchmark: enrol and renew through ``certwright serve`` beside ``cfssl serve``, and OCSP.

Rows (see benchmarks/README.md, "The server"):

* ``POST /v1/enroll`` (token + CSR over HTTPS, no client certificate) and ``POST /v1/renew``
  (mTLS with the current certificate + CSR) with 1, 8 and 64 concurrent clients, against
  one replica on SQLite, one replica on PostgreSQL, and two replicas sharing that
  PostgreSQL database (the clients' connections split between them);
* ``cfssl serve`` (Debian's golang-cfssl) signing the SAME CSRs at the same concurrency with
  the same kind of CA (the P-256 issuing intermediate of the SQLite server, its key written
  out unencrypted), over plain HTTP (its default) and over HTTPS with the server's TLS pair;
* ``POST /v1/tokens`` (admin mTLS), which makes the enrolment tokens of the enrol rows;
* OCSP over plain HTTP (``POST /ocsp``, no nonce: the pre-signed cache) at 1, 8 and 64 clients.

Every client keeps its connection alive (one TLS handshake per client, before timing; the
``--handshake`` row opens a new connection per request instead). Clients are asyncio
loops speaking raw HTTP/1.1 in ``--client-procs`` processes, the same code for every
server. Besides requests/s and p50/p99 latency, the server's CPU time (from /proc) per
request is printed: with both cores shared by clients and servers, it is the figure that
compares servers.

Run ``python benchmarks/bench_server.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchcommon import Process, Serve, log, machine_info
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from certwright.files import read_private_key

TRUST_DOMAIN = "example.org"
PASSPHRASE = "bench-server-passphrase"
DEFAULT_PG = os.environ.get("CERTWRIGHT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


# ---------------------------------------------------------------------------------------------
# Server processes


class Cfssl(Process):
    """``cfssl serve`` with the given CA pair, on a free port, plain HTTP or HTTPS."""

    def __init__(
        self, name: str, work: Path, *, ca: Path, ca_key: Path, tls: tuple[Path, Path] | None,
        certdb: Path | None = None,
    ) -> None:
        config = work / "cfssl-config.json"
        config.write_text(json.dumps({"signing": {"default": {
            "expiry": "24h", "usages": ["digital signature", "server auth", "client auth"]}}}))
        self.port = free_port()
        command = ["cfssl", "serve", "-address", "127.0.0.1", "-port", str(self.port), "-ca", str(ca),
                   "-ca-key", str(ca_key), "-config", str(config), "-loglevel", "4"]
        if tls is not None:
            command += ["-tls-cert", str(tls[0]), "-tls-key", str(tls[1])]
        if certdb is not None:
            command += ["-db-config", str(cfssl_certdb(work, certdb))]
        super().__init__(name, command)
        self.scheme = "https" if tls else "http"
        self.certdb = certdb
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise self.fail("did not start") from None
                time.sleep(0.05)
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"


# cfssl's certdb schema for SQLite (its certdb/sqlite migration 001, what cfssl 1.2 writes:
# Debian's build ships the driver but not the migrations).
_CFSSL_CERTDB_SCHEMA = """
CREATE TABLE certificates (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  ca_label                 blob,
  status                   blob NOT NULL,
  reason                   int,
  expiry                   timestamp,
  revoked_at               timestamp,
  pem                      blob NOT NULL,
  PRIMARY KEY(serial_number, authority_key_identifier)
);
CREATE TABLE ocsp_responses (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  body                     blob NOT NULL,
  expiry                   timestamp,
  PRIMARY KEY(serial_number, authority_key_identifier),
  FOREIGN KEY(serial_number, authority_key_identifier)
    REFERENCES certificates(serial_number, authority_key_identifier)
);
"""


def cfssl_certdb(work: Path, database: Path) -> Path:
    """A SQLite certdb for ``cfssl serve -db-config`` (made empty); the config file's path."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.executescript(_CFSSL_CERTDB_SCHEMA)
    config = work / f"{database.stem}-db.json"
    config.write_text(json.dumps({"driver": "sqlite3", "data_source": str(database)}))
    return config


def cfssl_recorded(cfssl: Cfssl) -> int:
    """How many certificates a certdb-backed cfssl has recorded."""
    assert cfssl.certdb is not None
    with contextlib.closing(sqlite3.connect(cfssl.certdb)) as connection:
        return int(connection.execute("SELECT count(*) FROM certificates").fetchone()[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# The client: raw HTTP/1.1 over asyncio, keep-alive, in a few processes


@dataclass(frozen=True)
class Conn:
    """One client connection and what it sends (each body once, or cycled until the deadline)."""

    url: str  # scheme://host:port
    path: str
    content_type: str
    bodies: tuple[bytes, ...]
    expect: int
    cafile: str | None = None
    cert: tuple[str, str] | None = None  # client certificate chain and key files (mTLS)
    keepalive: bool = True


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    start: float = 0.0
    end: float = 0.0
    answers: list[list[bytes]] = field(default_factory=list)  # per connection, in request order


def _context(conn: Conn) -> ssl.SSLContext | None:
    if not conn.url.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=conn.cafile)
    if conn.cert:
        context.load_cert_chain(*conn.cert)
    return context


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(conn: Conn, context: ssl.SSLContext | None) -> Stream:
    host, _, port = conn.url.partition("://")[2].rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context, limit=1 << 20)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes,
                    body: bytes) -> tuple[int, bytes, bool]:
    writer.write(head + body)
    header = await reader.readuntil(b"\r\n\r\n")
    status = int(header[9:12])
    lines = header.decode("latin-1").lower().split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.startswith("content-length:")), None)
    if length is not None:
        payload = await reader.readexactly(length)
    else:  # chunked (Go's net/http, for large bodies)
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        payload = b"".join(p[:-2] for p in parts)
    close = any(line.startswith("connection:") and "close" in line for line in lines)
    return status, payload, close


async def _drive(conn: Conn, opened: Stream,
                 deadline: float | None, sample: Sample, answers: list[bytes] | None) -> None:
    host = conn.url.partition("://")[2]
    context = _context(conn)
    reader, writer = opened
    n = 0
    while True:
        if deadline is None and n >= len(conn.bodies):
            break
        if deadline is not None and time.time() >= deadline:
            break
        body = conn.bodies[n % len(conn.bodies)]
        n += 1
        head = (f"POST {conn.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {conn.content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        started = time.perf_counter()
        if not conn.keepalive and n > 1:
            writer.close()
            reader, writer = await _open(conn, context)  # a full handshake inside the timed request
        try:
            status, payload, close = await _exchange(reader, writer, head, body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            sample.errors += 1
            sample.first_error = sample.first_error or repr(exc)
            writer.close()
            reader, writer = await _open(conn, context)
            continue
        sample.latencies.append(time.perf_counter() - started)
        if status != conn.expect:
            sample.errors += 1
            sample.first_error = sample.first_error or f"{status} {payload[:300]!r}"
        elif answers is not None:
            answers.append(payload)
        if close:
            writer.close()
            reader, writer = await _open(conn, context)
    writer.close()


def _client_process(args: tuple[list[Conn], float | None, Any, bool]) -> Sample:
    conns, seconds, barrier, keep = args

    async def main() -> Sample:
        sample = Sample(answers=[[] for _ in conns])
        # Connected (TLS handshakes done) before the clock starts: keep-alive clients pay them once.
        opened = await asyncio.gather(*(_open(c, _context(c)) for c in conns))
        barrier.wait()  # every process is connected: time from here
        sample.start = time.time()
        deadline = sample.start + seconds if seconds is not None else None
        await asyncio.gather(*(
            _drive(c, o, deadline, sample, sample.answers[i] if keep else None)
            for i, (c, o) in enumerate(zip(conns, opened, strict=True))
        ))
        sample.end = time.time()
        return sample

    return asyncio.run(main())


@dataclass
class Result:
    operation: str
    server: str
    clients: int
    requests: int
    errors: int
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None  # server CPU per request
    first_error: str = ""
    notes: str = ""
    rounds: list[float] = field(default_factory=list)  # req/s of each round (--rounds), in order


def combine(results: Sequence[Result]) -> Result:
    """One row for the rounds of a cell: the median round's rate and latencies, the CPU of
    all rounds per request, every error, and each round's rate (in ``rounds``)."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    done = [r.requests - r.errors for r in results]
    cpu = [r.cpu_us * d for r, d in zip(results, done, strict=True) if r.cpu_us is not None]
    return Result(
        operation=first.operation, server=first.server, clients=first.clients,
        requests=sum(r.requests for r in results), errors=sum(r.errors for r in results),
        rate=statistics.median(r.rate for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        cpu_us=sum(cpu) / sum(done) if cpu and sum(done) else None,
        first_error=next((r.first_error for r in results if r.first_error), ""),
        rounds=[r.rate for r in results],
    )


def paired_ratio(ours: Sequence[Result], theirs: Sequence[Result]) -> tuple[float, float, float]:
    """Median, lowest and highest of our rate over theirs, round by round.

    Each round runs both cells back to back, so a change in the VM's speed between rounds
    (seen here: 25 % within minutes) moves both sides of a round's ratio alike.
    """
    ratios = [a.rate / b.rate for a, b in zip(ours, theirs, strict=True) if b.rate > 0]
    if not ratios:
        return 0.0, 0.0, 0.0
    return statistics.median(ratios), min(ratios), max(ratios)


_CFSSL_LABELS = {"http": "cfssl HTTP", "https": "cfssl HTTPS", "https+certdb": "cfssl HTTPS+certdb"}


def ratio_note(ours: Sequence[Result], cfssl: dict[str, list[Result]]) -> str:
    parts = []
    for kind, rounds in cfssl.items():
        mid, low, high = paired_ratio(ours, rounds)
        spread = f" ({low:.2f}-{high:.2f})" if len(ours) > 1 else ""
        parts.append(f"x{mid:.2f}{spread} {_CFSSL_LABELS[kind]}")
    return ", ".join(parts)


def run_load(operation: str, server: str, conns: list[Conn], *, seconds: float | None, procs: int,
             watch: Sequence[Process], keep: bool = False) -> tuple[Result, list[list[bytes]]]:
    """Drive ``conns`` from ``procs`` processes (count-based, or for ``seconds``); measure.

    With ``keep``, the successful answers are returned per connection (in ``conns`` order).
    """
    procs = max(1, min(procs, len(conns)))
    shares = [conns[i::procs] for i in range(procs)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(procs + 1)
        with ctx.Pool(procs) as pool:
            pending = pool.map_async(_client_process, [(s, seconds, barrier, keep) for s in shares])
            barrier.wait()
            cpu0 = sum(p.cpu_seconds() for p in watch)
            samples = pending.get(timeout=3600)
            cpu1 = sum(p.cpu_seconds() for p in watch)
    latencies = sorted(x for s in samples for x in s.latencies)
    errors = sum(s.errors for s in samples)
    elapsed = max(s.end for s in samples) - min(s.start for s in samples)
    done = len(latencies) - errors
    result = Result(
        operation=operation, server=server, clients=len(conns), requests=len(latencies), errors=errors,
        rate=done / elapsed if elapsed > 0 else 0.0,
        p50_ms=1000 * statistics.median(latencies) if latencies else 0.0,
        p99_ms=1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0,
        cpu_us=1e6 * (cpu1 - cpu0) / done if done and watch else None,
        first_error=next((s.first_error for s in samples if s.first_error), ""),
    )
    log(f"  {operation:<22} {server:<26} c={len(conns):<3} {result.rate:8.0f}/s "
        f"p50 {result.p50_ms:6.1f} ms p99 {result.p99_ms:6.1f} ms errors {errors}"
        + (f" ({result.first_error[:120]})" if errors else ""))
    answers = [samples[j % procs].answers[j // procs] for j in range(len(conns))]
    return result, answers


# ---------------------------------------------------------------------------------------------
# Work: CSRs, tokens, client certificates


@dataclass(frozen=True)
class Csr:
    identity: str
    pem: str


def make_csrs(n: int, prefix: str) -> list[Csr]:
    """P-256 CSRs for spiffe://example.org/bench/PREFIX-i (the URI SAN; CN for cfssl's sake)."""
    out = []
    for i in range(n):
        identity = f"spiffe://{TRUST_DOMAIN}/bench/{prefix}-{i}"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{prefix}-{i}")]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), False)
            .sign(key, hashes.SHA256())
        )
        out.append(Csr(identity, csr.public_bytes(serialization.Encoding.PEM).decode()))
    return out


def create_tokens(server: str, apis: list[str], d: Path, csrs: list[Csr], clients: int, procs: int,
                  watch: Sequence[Process]) -> tuple[Result, list[bytes]]:
    """POST /v1/tokens for each CSR's identity (admin mTLS); returns the enrol bodies, in CSR order."""
    cert = (str(d / "admin.pem"), str(d / "admin.key"))
    shares = [csrs[i::clients] for i in range(clients)]
    conns = [
        Conn(apis[i % len(apis)], "/v1/tokens", "application/json",
             tuple(json.dumps({"identity": c.identity, "ttl": "1h"}).encode() for c in share), 201,
             str(d / "bundle.pem"), cert)
        for i, share in enumerate(shares)
    ]
    result, answers = run_load("POST /v1/tokens", server, conns, seconds=None, procs=procs, watch=watch,
                               keep=True)
    if result.errors:
        raise RuntimeError(f"token creation failed: {result.first_error}")
    # Each connection sent its share in order: its answers pair with its share's CSRs.
    paired = {
        c.identity: json.dumps({"token": json.loads(answer)["token"], "csr": c.pem}).encode()
        for share, got in zip(shares, answers, strict=True)
        for c, answer in zip(share, got, strict=True)
    }
    return result, [paired[c.identity] for c in csrs]


def enroll_conns(
    apis: list[str], d: Path, bodies: list[bytes], clients: int, keepalive: bool = True
) -> list[Conn]:
    return [Conn(apis[i % len(apis)], "/v1/enroll", "application/json", tuple(bodies[i::clients]), 201,
                 str(d / "bundle.pem"), keepalive=keepalive) for i in range(clients)]


def enroll_identities(api: str, d: Path, csrs: list[Csr], work: Path) -> list[tuple[str, str, Csr]]:
    """Enrol each CSR's identity once; returns (chain file, key file, renewal CSR) per identity."""
    keys = []
    pems = []
    for c in csrs:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renew")]))
               .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(c.identity)]),
                              critical=False)
               .sign(key, hashes.SHA256()))
        keys.append(key)
        pems.append(Csr(c.identity, csr.public_bytes(serialization.Encoding.PEM).decode()))
    _, bodies = create_tokens("setup", [api], d, pems, 1, 1, [])
    conns = [Conn(api, "/v1/enroll", "application/json", tuple(bodies), 201, str(d / "bundle.pem"))]
    _, answers = run_load("setup enrol", "setup", conns, seconds=None, procs=1, watch=[], keep=True)
    out = []
    for i, (answer, key, csr) in enumerate(zip(answers[0], keys, pems, strict=True)):
        body = json.loads(answer)
        chain = work / f"renew-{uuid.uuid4().hex[:8]}-{i}.pem"
        chain.write_text(body["certificate"] + body["chain"])
        key_file = chain.with_suffix(".key")
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        out.append((str(chain), str(key_file), csr))
    return out


def renew_conns(apis: list[str], d: Path, holders: list[tuple[str, str, Csr]], clients: int) -> list[Conn]:
    return [Conn(apis[i % len(apis)], "/v1/renew", "application/json",
                 (json.dumps({"csr": holders[i][2].pem}).encode(),), 201, str(d / "bundle.pem"),
                 (holders[i][0], holders[i][1])) for i in range(clients)]


def cfssl_conns(cfssl: Cfssl, csrs: list[Csr], clients: int, cafile: str) -> list[Conn]:
    bodies = [json.dumps({"certificate_request": c.pem}).encode() for c in csrs]
    return [Conn(cfssl.url, "/api/v1/cfssl/sign", "application/json", tuple(bodies[i::clients]), 200,
                 cafile if cfssl.scheme == "https" else None) for i in range(clients)]


def ocsp_body(d: Path, chain_file: str) -> bytes:
    leaf = x509.load_pem_x509_certificates(Path(chain_file).read_bytes())[0]
    issuer = x509.load_pem_x509_certificate((d / "ca" / "intermediate.pem").read_bytes())
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    return request.public_bytes(serialization.Encoding.DER)


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Report:
    machine: dict[str, object]
    parameters: dict[str, object]
    results: list[Result]
    notes: list[str]


def postgres_database(admin_url: str) -> tuple[str, str] | None:
    try:
        import psycopg
    except ImportError:
        return None
    name = f"certwright_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        log(f"PostgreSQL not usable ({exc}); PostgreSQL rows skipped")
        return None
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    url = (f"postgresql+psycopg://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}:"
           f"{info.get('port', 5432)}/{name}")
    return name, url


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(args: argparse.Namespace) -> Report:
    work = Path(tempfile.mkdtemp(prefix="bench-server-", dir=args.workdir))
    processes: list[Process] = []
    pg: tuple[str, str] | None = None
    results: list[Result] = []
    notes: list[str] = []
    procs = args.client_procs
    try:
        log("starting servers")
        sqlite = Serve("serve (SQLite)", work / "sqlite", None, passphrase=PASSPHRASE)
        processes.append(sqlite)
        d1 = sqlite.directory
        key = read_private_key(d1 / "ca" / "intermediate.key", PASSPHRASE.encode())
        ca_key = work / "cfssl-ca.key"
        ca_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        ca_cert = d1 / "ca" / "intermediate.pem"
        cfssl_http = Cfssl("cfssl serve (HTTP)", work, ca=ca_cert, ca_key=ca_key, tls=None)
        processes.append(cfssl_http)
        cfssl_https = Cfssl("cfssl serve (HTTPS)", work, ca=ca_cert, ca_key=ca_key,
                            tls=(d1 / "tls" / "server.pem", d1 / "tls" / "server.key"))
        processes.append(cfssl_https)
        # Context, not the bar: cfssl recording what it signs (certdb, SQLite on the same file
        # system), as certwright records every certificate, its names, an audit event and the
        # token's redemption.
        cfssl_db = Cfssl("cfssl serve (HTTPS, certdb SQLite)", work, ca=ca_cert, ca_key=ca_key,
                         tls=(d1 / "tls" / "server.pem", d1 / "tls" / "server.key"),
                         certdb=work / "cfssl-certdb.sqlite")
        processes.append(cfssl_db)
        cfssl_servers = {"http": cfssl_http, "https": cfssl_https, "https+certdb": cfssl_db}
        clusters: list[tuple[str, list[Serve], Path]] = [("certwright, 1 replica, SQLite", [sqlite], d1)]
        if not args.no_postgres and (pg := postgres_database(args.postgres)) is not None:
            first = Serve("serve A (PostgreSQL)", work / "pg", pg[1], passphrase=PASSPHRASE)
            processes.append(first)
            second = Serve("serve B (PostgreSQL)", work / "pg", pg[1], passphrase=PASSPHRASE)
            processes.append(second)
            clusters.append(("certwright, 1 replica, PostgreSQL", [first], first.directory))
            clusters.append(("certwright, 2 replicas, PostgreSQL", [first, second], first.directory))

        most = max(args.concurrency)
        log(f"enrolling {most} identities per data directory for the renewal rows")
        holders = {}
        for _, servers, d in clusters:
            if d not in holders:
                csrs = make_csrs(most, f"holder-{len(holders)}")
                holders[d] = enroll_identities(servers[0].api, d, csrs, work)

        for clients in args.concurrency:
            log(f"{clients} concurrent client(s)")
            # Rounds: cfssl and every certwright cluster enrol back to back in each round,
            # fresh CSRs and tokens each round; ratios are taken within a round.
            cfssl_rounds: dict[str, list[Result]] = {kind: [] for kind in cfssl_servers}
            enrol_rounds: dict[str, list[Result]] = {name: [] for name, _, _ in clusters}
            token_rounds: dict[str, list[Result]] = {name: [] for name, _, _ in clusters}
            for round_no in range(args.rounds):
                csrs = make_csrs(args.requests, f"c{clients}r{round_no}")
                for kind, cf in cfssl_servers.items():
                    conns = cfssl_conns(cf, csrs, clients, str(d1 / "bundle.pem"))
                    result, _ = run_load("sign (cfssl)", cf.name, conns, seconds=None, procs=procs,
                                         watch=[cf])
                    cfssl_rounds[kind].append(result)
                for name, servers, d in clusters:
                    apis = [s.api for s in servers]
                    tokens, bodies = create_tokens(name, apis, d, csrs, clients, procs, servers)
                    token_rounds[name].append(tokens)
                    enrol, _ = run_load("POST /v1/enroll", name, enroll_conns(apis, d, bodies, clients),
                                        seconds=None, procs=procs, watch=servers)
                    enrol_rounds[name].append(enrol)
            results += [combine(rounds) for rounds in cfssl_rounds.values()]
            for name, servers, d in clusters:
                apis = [s.api for s in servers]
                results.append(combine(token_rounds[name]))
                enrol = combine(enrol_rounds[name])
                enrol.notes = ratio_note(enrol_rounds[name], cfssl_rounds)
                results.append(enrol)
                renew, _ = run_load("POST /v1/renew", name, renew_conns(apis, d, holders[d], clients),
                                    seconds=args.seconds, procs=procs, watch=servers)
                # One renewal cell (time-based) per concurrency: against each round's cfssl rate.
                renew.notes = ratio_note([renew] * args.rounds, cfssl_rounds)
                results.append(renew)
            if args.handshake and clients == args.handshake:
                csrs = make_csrs(args.requests, f"c{clients}h")
                tokens, bodies = create_tokens("handshake", [sqlite.api], d1, csrs, clients, procs, [sqlite])
                result, _ = run_load("POST /v1/enroll, new TLS connection each", clusters[0][0],
                                     enroll_conns([sqlite.api], d1, bodies, clients, keepalive=False),
                                     seconds=None, procs=procs, watch=[sqlite])
                results.append(result)

        body = ocsp_body(d1, holders[d1][0][0])
        for clients in args.concurrency:
            conns = [Conn(sqlite.public, "/ocsp", "application/ocsp-request", (body,), 200)
                     for _ in range(clients)]
            result, _ = run_load("POST /ocsp (cached)", clusters[0][0], conns, seconds=args.seconds,
                                 procs=procs, watch=[sqlite])
            results.append(result)
        notes.append(f"requests per count-based cell: {args.requests}; time-based cells: {args.seconds} s; "
                     f"{args.rounds} round(s) of the enrol and cfssl cells (median shown; ratios paired "
                     "within a round, median and range)")
        signed = sum(r.requests - r.errors for r in results if r.server == cfssl_db.name)
        notes.append(f"cfssl certdb: {cfssl_recorded(cfssl_db)} certificates recorded of {signed} signed")
    finally:
        for p in reversed(processes):
            p.stop()
        if pg is not None:
            drop_database(args.postgres, pg[0])
        shutil.rmtree(work, ignore_errors=True)
    parameters = {k: v for k, v in vars(args).items() if k not in ("json",)}
    return Report(machine_info(), parameters, results, notes)


def render(report: Report) -> str:
    m = report.machine
    lines = [
        f"Machine: {m['cpu']} ({m['cores']} cores), load average {m['load_average']}, {m['python']}, "
        f"{m['python_ssl']} (server TLS), cfssl {cfssl_version()}",
        "",
        "| operation | server | clients | req/s | p50 ms | p99 ms | server CPU us/req | vs cfssl |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report.results:
        cpu = f"{r.cpu_us:,.0f}" if r.cpu_us is not None else ""
        errors = f" ({r.errors} errors)" if r.errors else ""
        lines.append(f"| {r.operation}{errors} | {r.server} | {r.clients} | {r.rate:,.0f} | {r.p50_ms:.1f} | "
                     f"{r.p99_ms:.1f} | {cpu} | {r.notes} |")
    lines += ["", *(f"- {n}" for n in report.notes)]
    return "\n".join(lines)


def cfssl_version() -> str:
    out = subprocess.run(["cfssl", "version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].split(":", 1)[1].strip() if out else "?"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="enrolments (and cfssl signatures) per cell")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of the renew and OCSP cells")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of the enrol and cfssl cells, back to back in each round (median kept; "
                        "default 3, --quick 1)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64])
    p.add_argument("--client-procs", type=int, default=2, help="client processes (asyncio loops)")
    p.add_argument("--handshake", type=int, default=8,
                   help="also enrol with a new TLS connection per request at this concurrency (0: no)")
    p.add_argument("--postgres", default=DEFAULT_PG,
                   help="admin URL of a PostgreSQL server (a throw-away database is made there)")
    p.add_argument("--no-postgres", action="store_true", help="only the SQLite replica")
    p.add_argument("--workdir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    p.add_argument("--quick", action="store_true", help="smoke run: 100 requests, 2 s cells, 1 and 8 clients")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.seconds, args.concurrency = 100, 2.0, [1, 8]
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        p.error("--rounds must be 1 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("cfssl") is None:
        log("cfssl is not installed (Debian: apt install golang-cfssl)")
        return 2
    report = run(args)
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
