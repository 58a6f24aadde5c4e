"""mTLS benchmark: full handshakes/s of a certwright server beside ``openssl s_server``, same client.

Rows (see benchmarks/README.md, "mTLS"):

* full mTLS handshakes (no resumption, a new TCP connection and TLS session each time, a
  client certificate verified by the server, one tiny HTTP/1.0 request answered) against
  ``openssl s_server -WWW -Verify 2 -verify_return_error`` and against certwright servers
  (an asyncio server on :func:`certwright.mtls.context.server_context` reading each peer with
  :class:`certwright.mtls.peer.PeerVerifier`; uvicorn through :mod:`certwright.mtls.uvicorn`
  with :class:`certwright.mtls.asgi.MTLSMiddleware` when available), all driven by the SAME
  client: C Python processes looping over ``ssl`` connections for a fixed time;
* the same with TLS 1.3 session resumption (tickets), as a second figure;
* the cost of one access-policy decision, cold (first for its subject) and cached.

Each server runs in its own process; besides the wall-clock rate the benchmark reads the
server's CPU time from /proc, so the figure that compares servers, handshakes per server
CPU-second, does not depend on how the two shared cores were split with the clients.

Run ``python benchmarks/bench_mtls.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchcommon import log, machine_info
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certwright.access.policy import Policy, Request, Subject
from certwright.clock import FixedClock
from certwright.issuance import Authority, create_root
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES, CASettings

TRUST_DOMAIN = "example.org"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/bench/server"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/bench/client"
BODY = b"hello\n"
REQUEST = b"GET /hello.txt HTTP/1.0\r\n\r\n"
PEM = serialization.Encoding.PEM
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Credentials: root -> intermediate -> server and client leaves (P-256), as workload files


@dataclass(frozen=True)
class Creds:
    chain: Path  # leaf then intermediate (what certwright's TLSFiles.cert holds)
    leaf: Path  # the leaf alone (openssl -cert reads one certificate)
    intermediates: Path  # the intermediate alone (openssl -cert_chain)
    key: Path
    bundle: Path  # the root


def make_credentials(directory: Path) -> tuple[Creds, Creds]:
    settings = CASettings(trust_domain=TRUST_DOMAIN)
    hour_ago = FixedClock(datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = create_root(root_key, subject="CN=Bench Root CA", settings=settings, clock=hour_ago)
    root_ca = Authority(certificate=root, key=root_key, settings=settings, clock=hour_ago)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = root_ca.create_intermediate(inter_key.public_key(), subject="CN=Bench Issuing CA")
    authority = Authority(certificate=inter, key=inter_key, settings=settings, chain=(root,))
    bundle = directory / "bundle.pem"
    bundle.write_bytes(root.public_bytes(PEM))
    out = []
    for name, identity, roles in (("server", SERVER_ID, ()), ("client", CLIENT_ID, ("caller",))):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = authority.issue(
            key.public_key(), profile=BUILTIN_PROFILES["mtls"], identity=SpiffeId.parse(identity),
            sans=SubjectAltNames(), authorization=Authorization.create(roles, {}),
            lifetime=datetime.timedelta(hours=2),
        )
        creds = Creds(directory / f"{name}.chain.pem", directory / f"{name}.pem",
                      directory / f"{name}.inter.pem", directory / f"{name}.key", bundle)
        creds.leaf.write_bytes(cert.public_bytes(PEM))
        creds.intermediates.write_bytes(inter.public_bytes(PEM))
        creds.chain.write_bytes(cert.public_bytes(PEM) + inter.public_bytes(PEM))
        creds.key.write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        creds.key.chmod(0o600)
        out.append(creds)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# The servers (each in its own process: `--serve KIND`)


def serve_asyncio(creds: Creds, policy_file: Path) -> None:
    """certwright.mtls.server.start_server (server_context, PeerVerifier, the policy), one process."""
    from certwright.mtls.context import TLSFiles
    from certwright.mtls.peer import Peer, PeerVerifier
    from certwright.mtls.server import start_server

    files = TLSFiles(creds.chain, creds.key, creds.bundle)
    answer = b"HTTP/1.0 200 ok\r\nContent-Type: text/plain\r\n\r\n" + BODY

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()

    async def main() -> None:
        server = await start_server(
            handle, "127.0.0.1", 0, files=files, verifier=PeerVerifier(creds.bundle),
            policy=Policy.load(policy_file), service="bench-tcp", backlog=1024,
        )
        print(f"LISTENING {server.port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(main())


POLICY = """\
version = 1

[[rule]]
name = "bench-http"
services = ["bench-http"]
identities = ["spiffe://example.org/bench/*"]
methods = ["GET"]
paths = ["/**"]

# A plain TLS server knows no method or path: its rule names none.
[[rule]]
name = "bench-tcp"
services = ["bench-tcp"]
identities = ["spiffe://example.org/bench/*"]
"""


def serve_uvicorn(creds: Creds, policy_file: Path, *, tcp_socket: bool = False) -> None:
    """uvicorn through certwright.mtls.uvicorn, MTLSMiddleware enforcing the policy, one process.

    ``tcp_socket``: serve on a listening socket made with ``IPPROTO_TCP`` instead of the
    adapter's own. asyncio sets TCP_NODELAY only on connections accepted from such a socket;
    without it a response written in two parts (head, body) waits for the client's delayed
    ACK (~40 ms on Linux). See the notes: this row measures the adapter as it would be with
    that one-line fix.
    """
    from certwright.mtls import uvicorn as mtls_uvicorn
    from certwright.mtls.context import TLSFiles
    from certwright.mtls.peer import PeerVerifier

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": BODY})

    files = TLSFiles(creds.chain, creds.key, creds.bundle)
    config = mtls_uvicorn.config(
        app, files=files, host="127.0.0.1", port=0, verifier=PeerVerifier(creds.bundle),
        policy=Policy.load(policy_file), service="bench-http", log_level="warning", access_log=False,
        backlog=1024,
    )
    server = mtls_uvicorn.MTLSServer(config)
    if not tcp_socket:
        print(f"LISTENING {server.port}", flush=True)
        server.run()
        return
    server.socket.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


def adapter_lacks_nodelay() -> bool:
    """Whether certwright.mtls.uvicorn's listening socket leaves TCP_NODELAY off (proto 0)."""
    from certwright.mtls import uvicorn as mtls_uvicorn

    bind = getattr(mtls_uvicorn, "_bind", None)
    if bind is None:
        return False
    sock = bind("127.0.0.1", 0)
    try:
        return bool(sock.proto != socket.IPPROTO_TCP)
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# The client: the same loop for every server


def client_loop(args: tuple[int, str, str, str, float, bool, float]) -> tuple[int, int, int]:
    """Connections completed (and of them resumed), errors, until ``until`` (time.time())."""
    port, chain, key, bundle, until, resume, start_at = args
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(bundle)
    context.load_cert_chain(chain, key)
    context.check_hostname = False  # workloads are named by URI; hostnames are not what we measure
    session: ssl.SSLSession | None = None
    done = resumed = errors = 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    context.wrap_socket(raw, session=session if resume else None) as tls:
                tls.sendall(REQUEST)
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
                if not data.endswith(BODY):
                    raise OSError(f"unexpected answer {data[:80]!r}")
                if resume:
                    session = tls.session
                    resumed += bool(tls.session_reused)
            done += 1
        except (OSError, ssl.SSLError):
            errors += 1
            session = None
    return done, resumed, errors


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


@dataclass
class Measure:
    server: str
    resumption: bool
    seconds: float
    connections: int
    resumed: int
    errors: int
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.connections / self.seconds

    @property
    def per_cpu(self) -> float:
        return self.connections / self.server_cpu if self.server_cpu > 0 else float("nan")


def drive(name: str, pid: int, port: int, creds: Creds, *, seconds: float, clients: int,
          resume: bool) -> Measure:
    start_at = time.time() + 0.5
    until = start_at + seconds
    args = (port, str(creds.chain), str(creds.key), str(creds.bundle), until, resume, start_at)
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        pending = pool.map_async(client_loop, [args] * clients)
        while time.time() < start_at:
            time.sleep(0.001)
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        while time.time() < until:
            time.sleep(0.01)
        cpu1, t1 = cpu_seconds(pid), time.perf_counter()
        results = pending.get(timeout=seconds + 60)
    done = sum(r[0] for r in results)
    return Measure(name, resume, t1 - t0, done, sum(r[1] for r in results), sum(r[2] for r in results),
                   cpu1 - cpu0)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    port: int


def start_server(name: str, command: list[str], *, cwd: Path, port: int | None) -> Server:
    proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    try:
        if port is None:  # our servers print the port they bound
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("LISTENING "):
                raise RuntimeError(f"{name} did not start: {line!r}, exit {proc.poll()}")
            port = int(line.split()[1])
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} does not listen on {port}") from None
                time.sleep(0.05)
    except BaseException:
        stop_server(proc)
        raise
    log(f"{name}: pid {proc.pid}, 127.0.0.1:{port}")
    return Server(name, proc, port)


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_commands(work: Path, server: Creds, *, uvicorn: bool) -> dict[str, tuple[list[str], int | None]]:
    port = free_port()
    me = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(work)]
    commands: dict[str, tuple[list[str], int | None]] = {
        "openssl s_server": ([
            "openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(server.leaf),
            "-cert_chain", str(server.intermediates), "-key", str(server.key), "-CAfile", str(server.bundle),
            "-Verify", "2", "-verify_return_error", "-WWW", "-quiet",
        ], port),
        "certwright asyncio": ([*me, "--serve", "asyncio"], None),
    }
    if uvicorn:
        commands["certwright uvicorn+middleware"] = ([*me, "--serve", "uvicorn"], None)
        if adapter_lacks_nodelay():
            commands[NODELAY_ROW] = ([*me, "--serve", "uvicorn-tcp"], None)
    return commands


NODELAY_ROW = "certwright uvicorn+middleware, IPPROTO_TCP socket"


def uvicorn_available() -> bool:
    try:
        from certwright.mtls import asgi, uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Policy decisions


@dataclass
class PolicyResult:
    cold_us: float
    cached_us: float
    rules: int


def bench_policy(n: int, rules: int) -> PolicyResult:
    """decide() per call: cold = a fresh subject each call, cached = the same subject again."""
    text = "version = 1\n\n" + "".join(
        f'[[rule]]\nname = "r{i}"\nservices = ["svc{i % 10}"]\nidentities = ["spiffe://example.org/ns/team{i}/*"]\n'
        f'methods = ["GET", "POST"]\npaths = ["/v1/items/**"]\n\n'
        for i in range(rules)
    )
    policy = Policy.parse(text, source="bench.toml")
    # The subject that matches the last rule: every rule is looked at.
    last = rules - 1
    request = Request(f"svc{last % 10}", "GET", "/v1/items/42/detail")
    subjects = [Subject(f"spiffe://example.org/ns/team{last}/sa{i}", ("reader",)) for i in range(n)]
    assert policy.decide(subjects[0], request).allowed, "the benchmark policy must allow its subject"
    policy = Policy.parse(text, source="bench.toml")  # a fresh compile: nothing cached yet
    gc.collect()
    start = time.perf_counter()
    for subject in subjects:
        policy.decide(subject, request)
    cold = (time.perf_counter() - start) / n
    hot = subjects[0]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            policy.decide(hot, request)
        best = min(best, (time.perf_counter() - start) / n)
    return PolicyResult(cold * 1e6, best * 1e6, rules)


# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    machine: dict[str, object]
    parameters: dict[str, object]
    measures: list[Measure] = field(default_factory=list)
    policy: PolicyResult | None = None
    notes: list[str] = field(default_factory=list)


def best(measures: list[Measure], server: str, resume: bool) -> Measure | None:
    found = [m for m in measures if m.server == server and m.resumption == resume and m.connections]
    return max(found, key=lambda m: m.per_cpu) if found else None


def render(report: Report) -> str:
    m, p = report.machine, report.parameters
    lines = [
        "## certwright mTLS benchmark",
        "",
        f"{m['cpu']}, {m['cores']} cores; load average {' '.join(map(str, m['load_average']))} at start, "  # type: ignore[call-overload]
        f"{' '.join(map(str, m.get('load_average_end', [])))} at end; "  # type: ignore[call-overload]
        f"{m['python']} (ssl: {m['python_ssl']}); openssl CLI {m['openssl_cli']}",
        f"{p['clients']} client processes, {p['seconds']} s per run, best of {p['rounds']} rounds; "
        "P-256 keys, TLS 1.3, server verifies a 2-certificate client chain to its root.",
        "",
        "| server | resumption | handshakes/s (wall) | server CPU s | handshakes per server CPU-s | "
        "ratio to openssl s_server (per CPU-s) | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for resume in (False, True):
        reference = best(report.measures, "openssl s_server", resume)
        for server in dict.fromkeys(x.server for x in report.measures):
            row = best(report.measures, server, resume)
            if row is None:
                continue
            ratio = f"{row.per_cpu / reference.per_cpu:.2f}" if reference else ""
            label = f"tickets ({row.resumed / row.connections:.0%} resumed)" if resume else "none (full)"
            lines.append(f"| {server} | {label} | {row.rate:,.0f} | {row.server_cpu:.2f} | "
                         f"{row.per_cpu:,.0f} | {ratio} | {row.errors} |")
    if report.policy is not None:
        pol = report.policy
        lines += [
            "",
            "| access policy decision | us per decision |",
            "| --- | ---: |",
            f"| `Policy.decide`, cold (first decision for a subject; {pol.rules} rules) "
            f"| {pol.cold_us:.2f} |",
            f"| `Policy.decide`, cached (same subject and request again) | {pol.cached_us:.3f} |",
        ]
    lines.append("")
    lines += [f"* {note}" for note in report.notes]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each timed run (default 5)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per server (interleaved across servers; the best is kept; default 2)")
    parser.add_argument("--clients", type=int, default=3, help="client processes (default 3)")
    parser.add_argument("--no-resumption", action="store_true", help="skip the session-resumption rows")
    parser.add_argument("--policy-n", type=int, default=20000, help="decisions per policy measurement")
    parser.add_argument("--policy-rules", type=int, default=50, help="rules in the benchmark policy")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s, 2000 decisions")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--workdir", type=Path, default=None, help="temporary files (default: /dev/shm)")
    parser.add_argument("--serve", choices=["asyncio", "uvicorn", "uvicorn-tcp"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.policy_n = 1.0, 1, 2000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:  # a server process started by the benchmark itself
        creds = Creds(args.workdir / "server.chain.pem", args.workdir / "server.pem",
                      args.workdir / "server.inter.pem", args.workdir / "server.key",
                      args.workdir / "bundle.pem")
        if args.serve == "asyncio":
            serve_asyncio(creds, args.workdir / "policy.toml")
        else:
            serve_uvicorn(creds, args.workdir / "policy.toml", tcp_socket=args.serve == "uvicorn-tcp")
        return 0
    machine = machine_info()
    base = args.workdir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    work = Path(tempfile.mkdtemp(prefix="certwright-bench-mtls-", dir=base))
    report = Report(machine, {"seconds": args.seconds, "rounds": args.rounds, "clients": args.clients})
    try:
        server, client = make_credentials(work)
        (work / "hello.txt").write_bytes(BODY)
        (work / "policy.toml").write_text(POLICY)
        commands = server_commands(work, server, uvicorn=uvicorn_available())
        modes = [False] if args.no_resumption else [False, True]
        for r in range(args.rounds):
            for name, (command, port) in commands.items():
                srv = start_server(name, command, cwd=work, port=port)
                try:
                    for resume in modes:
                        log(f"round {r + 1}/{args.rounds}: {name}, resumption={resume}")
                        report.measures.append(drive(name, srv.proc.pid, srv.port, client,
                                                     seconds=args.seconds, clients=args.clients,
                                                     resume=resume))
                finally:
                    stop_server(srv.proc)
        log("policy decisions")
        report.policy = bench_policy(args.policy_n, args.policy_rules)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report.notes += [
        "Same client for every server: Python `ssl` (the interpreter's OpenSSL), a new TCP "
        "connection and a full handshake per request (resumption rows: the previous session's "
        "ticket), one `GET /hello.txt` over HTTP/1.0, read to EOF.",
        "`openssl s_server` serves one connection at a time (it is a test tool, not an event "
        "loop), so its wall rate includes waiting for the client's flight; handshakes per "
        "server CPU-second (server process utime+stime from /proc) is the figure that compares "
        "the servers, and the ratio uses it.",
        "The machine has 2 cores shared by the clients, the server and other users: read the "
        "load average above.",
    ]
    if NODELAY_ROW in commands:
        report.notes.append(
            "certwright.mtls.uvicorn binds its listening socket with protocol 0, so asyncio does not "
            "set TCP_NODELAY on accepted connections: uvicorn writes the response head and body "
            "separately and the body waits for the client's delayed ACK (~40 ms), which caps the "
            "wall rate of the `uvicorn+middleware` row. The `IPPROTO_TCP socket` row serves the "
            "same config on a socket made with IPPROTO_TCP (the one-line fix); server CPU per "
            "handshake is unaffected either way."
        )
    if "certwright uvicorn+middleware" not in commands:
        report.notes.append("certwright.mtls.uvicorn is not importable: the uvicorn row is skipped.")
    if args.json:
        print(json.dumps({"machine": machine, "parameters": report.parameters,
                          "measures": [asdict(m) | {"rate": m.rate, "per_cpu": m.per_cpu}
                                       for m in report.measures],
                          "policy": asdict(report.policy) if report.policy else None,
                          "notes": report.notes}, indent=2))
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
