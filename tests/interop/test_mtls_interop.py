"""certwright's mTLS pieces against real TLS peers: curl, openssl s_client / s_server, nginx.

* curl and ``openssl s_client`` call a certwright-secured server
  (:func:`certwright.mtls.server.start_server`: :func:`~certwright.mtls.context.server_context`,
  :class:`~certwright.mtls.peer.PeerVerifier` and a policy): an allowed client gets its
  identity echoed; no certificate, a certificate of another CA, a leaf sent without its
  intermediate, or an identity the policy does not name get no answer. curl also calls a
  Starlette app on uvicorn (:mod:`certwright.mtls.uvicorn`, :class:`~certwright.mtls.asgi.MTLSMiddleware`).
* nginx is the mTLS server (``ssl_verify_client on``, ``ssl_crl``) with certwright's
  certificates and CRLs; certwright's httpx client gets through, a revoked certificate does not.
* ``openssl s_server -Verify 2 -verify_return_error`` answers certwright's clients (httpx,
  ``connect``, ``certwright tunnel client``); each refuses it when it expects another identity.

Certificates come from :class:`support.pki.TestPKI`; every external program is started on
a free loopback port of its own and stopped by PID at teardown.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from certwright.access.policy import Policy
from certwright.mtls import uvicorn as mtls_uvicorn
from certwright.mtls.asgi import peer_of
from certwright.mtls.client import IdentityMismatch, connect, httpx_client
from certwright.mtls.context import TLSFiles
from certwright.mtls.peer import Peer, PeerVerifier
from certwright.mtls.server import PeerServer, start_server
from certwright.mtls.uvicorn import ServerThread
from certwright.revocation.crl import build_crl
from support.env import require_tool
from support.pki import TestPKI, Workload
from support.tunnel_procs import LISTENING, certwright_cmd, started

SERVER_ID = "spiffe://example.org/interop/server"
CLIENT_ID = "spiffe://example.org/interop/client"
REVOKED_ID = "spiffe://example.org/interop/revoked"
SERVER_DNS = "server.example.org"
PEM = serialization.Encoding.PEM
DEADLINE = 15.0  # seconds to wait for a peer to listen or answer


# --- certificates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Creds:
    """A workload's files, plus the leaf and the chain apart (openssl's -cert reads one cert)."""

    files: TLSFiles
    leaf: Path
    chain: Path


def write_creds(workload: Workload, directory: Path, bundle: bytes) -> Creds:
    written = workload.write(directory, bundle)
    leaf = directory / "leaf.pem"
    chain = directory / "chain.pem"
    leaf.write_bytes(workload.certificate.public_bytes(PEM))
    chain.write_bytes(b"".join(c.public_bytes(PEM) for c in workload.chain))
    return Creds(TLSFiles(written.cert, written.key, written.bundle), leaf, chain)


@dataclass(frozen=True)
class Material:
    pki: TestPKI
    server: Creds
    client: Creds
    revoked: Creds
    foreign: Creds  # a client certificate of another CA (same trust domain, other root)
    crl_intermediate: Path  # the intermediate's CRL, listing ``revoked``
    crl_both: Path  # that CRL followed by the root's (empty) CRL


def root_crl_pem(pki: TestPKI) -> bytes:
    """An empty CRL of the root: nginx checks CRLs at every level of the chain (see below)."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    der = build_crl(
        issuer=pki.root,
        key=pki.root_key,
        entries=[],
        crl_number=1,
        this_update=now - datetime.timedelta(minutes=1),
        next_update=now + datetime.timedelta(hours=1),
    )
    return x509.load_der_x509_crl(der).public_bytes(PEM)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    base = tmp_path_factory.mktemp("mtls-interop")
    pki = TestPKI.create()
    bundle = pki.bundle_pem
    server = write_creds(pki.leaf(SERVER_ID, dns=[SERVER_DNS]), base / "server", bundle)
    client = write_creds(pki.leaf(CLIENT_ID, roles=("reader",)), base / "client", bundle)
    revoked_leaf = pki.leaf(REVOKED_ID)
    revoked = write_creds(revoked_leaf, base / "revoked", bundle)
    other = TestPKI.create(name="Other")
    # Trusts our root (to reach our servers) but presents a certificate of the other CA.
    foreign = write_creds(other.leaf(CLIENT_ID), base / "foreign", bundle)
    pki.revoke(revoked_leaf.serial)
    crl_intermediate = base / "crl-intermediate.pem"
    crl_intermediate.write_bytes(pki.crl_pem())
    crl_both = base / "crl-both.pem"
    crl_both.write_bytes(crl_intermediate.read_bytes() + root_crl_pem(pki))
    return Material(pki, server, client, revoked, foreign, crl_intermediate, crl_both)


# --- processes and ports -------------------------------------------------------------------------


def free_port() -> int:
    """A port free right now (bind port 0, close): for programs that cannot report theirs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until something accepts on ``port``; fail with the log if ``proc`` died first."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {DEADLINE}s:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one process we started, by its PID: TERM, then KILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start(args: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc


def run(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, timeout=60, check=False
    )


# --- a certwright-secured server -----------------------------------------------------------------


ECHO_POLICY = f"""\
version = 1

[[rule]]
name = "interop-client"
services = ["echo"]
identities = ["{CLIENT_ID}"]
"""


class EchoServer:
    """certwright's asyncio helper (:func:`certwright.mtls.server.start_server`, on
    ``server_context``) answering HTTP/1.0 with the verified peer's identity.

    Handshakes without a client certificate (or with one the bundle does not trust) fail in
    TLS; peers the policy does not allow are closed by the helper before the handler runs.
    """

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: PeerServer | None = None
        self.port = 0

    @staticmethod
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = f"peer {peer.identity}\n"
        writer.write(f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        await writer.drain()

    def __enter__(self) -> EchoServer:
        self.thread.start()
        start = start_server(
            self.handle, "127.0.0.1", 0, files=self.files, verifier=PeerVerifier(self.files.bundle),
            policy=Policy.parse(ECHO_POLICY, source="echo.toml"), service="echo",
        )
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(DEADLINE)
        self.port = self.server.port
        print(f"certwright echo server on 127.0.0.1:{self.port}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        server = self.server

        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(DEADLINE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)
        self.loop.close()


@pytest.fixture(scope="module")
def echo(material: Material) -> Iterator[EchoServer]:
    with EchoServer(material.server.files) as server:
        yield server


def curl(curl_path: str, port: int, *options: str | Path) -> subprocess.CompletedProcess[bytes]:
    return run(
        curl_path, "-sS", "--max-time", "20", "--resolve", f"{SERVER_DNS}:{port}:127.0.0.1",
        *options, f"https://{SERVER_DNS}:{port}/",
    )


# asyncio ends a refused handshake by closing the socket, sometimes before its alert has
# left the buffer: a peer sees the alert, a reset or a bare EOF. What matters is that the
# client verified the server (no client-side verify error), was then cut off, and got no answer.
SERVER_CUT_OFF = (
    b"alert", b"Connection reset by peer", b"errno=104", b"Empty reply from server", b"unexpected eof"
)  # errno 104 is ECONNRESET, as s_client prints it


def assert_refused_by_server(proc: subprocess.CompletedProcess[bytes], *, status_line: bool = False) -> None:
    """curl got no answer because the server refused the handshake (exit 35, 52 or 56;
    a failure to verify the server would be 60). ``status_line``: curl ran with -w."""
    stderr = proc.stderr.decode()
    assert proc.returncode in (35, 52, 56), stderr
    assert any(sign in proc.stderr for sign in SERVER_CUT_OFF), stderr
    assert proc.stdout == (b"\nstatus 000" if status_line else b"")


def assert_s_client_cut_off(proc: subprocess.CompletedProcess[bytes]) -> None:
    stderr = proc.stderr.decode()
    assert b"verify error" not in proc.stderr, stderr  # s_client itself accepted the server
    assert any(sign in proc.stderr for sign in SERVER_CUT_OFF), stderr
    assert b"peer spiffe" not in proc.stdout


def test_curl_with_a_client_certificate_is_served(material: Material, echo: EchoServer) -> None:
    curl_path = require_tool("curl")
    creds = material.client
    proc = curl(curl_path, echo.port, "--cacert", creds.files.bundle, "--cert", creds.files.cert,
                "--key", creds.files.key)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == f"peer {CLIENT_ID}\n"


def test_curl_without_a_client_certificate_is_refused(material: Material, echo: EchoServer) -> None:
    curl_path = require_tool("curl")
    proc = curl(curl_path, echo.port, "--cacert", material.client.files.bundle)
    assert_refused_by_server(proc)


def test_curl_with_a_certificate_of_another_ca_is_refused(material: Material, echo: EchoServer) -> None:
    curl_path = require_tool("curl")
    creds = material.foreign
    proc = curl(curl_path, echo.port, "--cacert", material.client.files.bundle, "--cert", creds.files.cert,
                "--key", creds.files.key)
    assert_refused_by_server(proc)


def test_curl_with_an_identity_the_policy_does_not_allow_is_cut_off(
    material: Material, echo: EchoServer
) -> None:
    """The certificate is good (same CA) but the policy names only CLIENT_ID: no answer."""
    curl_path = require_tool("curl")
    creds = material.revoked  # another identity of the same CA (revocation is not checked here)
    proc = curl(curl_path, echo.port, "--cacert", creds.files.bundle, "--cert", creds.files.cert,
                "--key", creds.files.key)
    assert_refused_by_server(proc)


# --- curl against uvicorn + MTLSMiddleware (certwright.mtls.uvicorn) ----------------------------

ASGI_POLICY = f"""\
version = 1

[[rule]]
name = "client-reads"
services = ["asgi"]
identities = ["{CLIENT_ID}"]
methods = ["GET"]
paths = ["/whoami"]
"""


async def whoami(request: StarletteRequest) -> PlainTextResponse:
    return PlainTextResponse(f"peer {peer_of(request).identity} rule {request.state.access_decision.rule}\n")


@pytest.fixture(scope="module")
def asgi(material: Material) -> Iterator[ServerThread]:
    files = material.server.files
    cfg = mtls_uvicorn.config(
        Starlette(routes=[Route("/whoami", whoami)]), files=files, port=0,
        verifier=PeerVerifier(files.bundle), policy=Policy.parse(ASGI_POLICY, source="asgi.toml"),
        service="asgi", log_level="warning",
    )
    with ServerThread(cfg) as running:
        print(f"uvicorn + MTLSMiddleware on 127.0.0.1:{running.port}")
        yield running


def curl_path(
    curl_bin: str, port: int, path: str, *options: str | Path
) -> subprocess.CompletedProcess[bytes]:
    return run(
        curl_bin, "-sS", "--max-time", "20", "--resolve", f"{SERVER_DNS}:{port}:127.0.0.1",
        "-w", "\nstatus %{http_code}", *options, f"https://{SERVER_DNS}:{port}{path}",
    )


def test_curl_through_uvicorn_and_the_middleware(material: Material, asgi: ServerThread) -> None:
    curl_bin = require_tool("curl")
    creds = material.client.files
    proc = curl_path(curl_bin, asgi.port, "/whoami", "--cacert", creds.bundle, "--cert", creds.cert,
                     "--key", creds.key)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == f"peer {CLIENT_ID} rule client-reads (asgi.toml line 3)\n\nstatus 200"


def test_curl_through_uvicorn_is_denied_by_the_policy(material: Material, asgi: ServerThread) -> None:
    """A good certificate of the same CA, but an identity the policy does not name: 403."""
    curl_bin = require_tool("curl")
    creds = material.revoked.files  # REVOKED_ID: this server has no CRL, only the policy decides
    proc = curl_path(curl_bin, asgi.port, "/whoami", "--cacert", creds.bundle, "--cert", creds.cert,
                     "--key", creds.key)
    assert proc.returncode == 0, proc.stderr.decode()
    body, status = proc.stdout.decode().rsplit("\n", 1)
    assert status == "status 403"
    problem = json.loads(body)
    assert problem["type"] == "urn:certwright:problem:access-denied"
    assert f"no rule allows {REVOKED_ID} to GET /whoami on asgi" in problem["detail"]


def test_curl_through_uvicorn_without_a_certificate_is_refused(
    material: Material, asgi: ServerThread
) -> None:
    curl_bin = require_tool("curl")
    proc = curl_path(curl_bin, asgi.port, "/whoami", "--cacert", material.client.files.bundle)
    assert_refused_by_server(proc, status_line=True)


def s_client(
    openssl: str, port: int, creds: Creds | None, bundle: Path
) -> subprocess.CompletedProcess[bytes]:
    cert = ["-cert", creds.leaf, "-cert_chain", creds.chain, "-key", creds.files.key] if creds else []
    return run(
        openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SERVER_DNS,
        "-verify_return_error", "-verify_hostname", SERVER_DNS, "-CAfile", bundle, *cert, "-quiet",
        stdin=b"GET / HTTP/1.0\r\n\r\n",
    )


def test_openssl_s_client_with_a_client_certificate_is_served(
    openssl: str, material: Material, echo: EchoServer
) -> None:
    proc = s_client(openssl, echo.port, material.client, material.client.files.bundle)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().endswith(f"\r\n\r\npeer {CLIENT_ID}\n")


def test_openssl_s_client_without_the_chain_is_refused(
    openssl: str, material: Material, echo: EchoServer
) -> None:
    """Negative control: the leaf alone (no intermediate) cannot be verified against the root."""
    creds = material.client
    proc = run(
        openssl, "s_client", "-connect", f"127.0.0.1:{echo.port}", "-verify_return_error",
        "-CAfile", creds.files.bundle, "-cert", creds.leaf, "-key", creds.files.key, "-quiet",
        stdin=b"GET / HTTP/1.0\r\n\r\n",
    )
    assert_s_client_cut_off(proc)


def test_openssl_s_client_with_a_certificate_of_another_ca_is_refused(
    openssl: str, material: Material, echo: EchoServer
) -> None:
    proc = s_client(openssl, echo.port, material.foreign, material.client.files.bundle)
    assert_s_client_cut_off(proc)


# --- nginx as the mTLS server --------------------------------------------------------------------


@dataclass(frozen=True)
class Nginx:
    port: int
    error_log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"


NGINX_CONF = """\
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {bundle};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_crl {crl};
        location / {{
            return 200 "hello $ssl_client_verify $ssl_client_s_dn\\n";
        }}
    }}
}}
"""


@contextmanager
def run_nginx(directory: Path, material: Material, crl: Path) -> Iterator[Nginx]:
    """nginx in the foreground as the current user, every path under ``directory``, no master."""
    nginx = require_tool("nginx")
    directory.mkdir()
    port = free_port()
    conf = directory / "nginx.conf"
    server = material.server.files
    conf.write_text(NGINX_CONF.format(
        dir=directory, port=port, cert=server.cert, key=server.key, bundle=server.bundle, crl=crl
    ))
    error_log = directory / "error.log"
    proc = start(
        [nginx, "-p", str(directory), "-c", str(conf), "-e", str(error_log)], directory / "stderr.log", port
    )
    print(f"nginx pid {proc.pid} on 127.0.0.1:{port}")
    try:
        yield Nginx(port, error_log)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def nginx(material: Material, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    with run_nginx(tmp_path_factory.mktemp("nginx") / "run", material, material.crl_both) as server:
        yield server


def nginx_get(creds: Creds, server: Nginx) -> httpx.Response:
    with httpx_client(creds.files, expect=SERVER_ID, timeout=DEADLINE) as client:
        return client.get(server.url)


def test_nginx_serves_a_certwright_client(material: Material, nginx: Nginx) -> None:
    response = nginx_get(material.client, nginx)
    assert response.status_code == 200, response.text
    assert response.text == "hello SUCCESS CN=client\n"


def test_nginx_refuses_a_revoked_client(material: Material, nginx: Nginx) -> None:
    response = nginx_get(material.revoked, nginx)
    # nginx verifies the client certificate after the handshake and answers with its own
    # 400 page rather than an alert; its log names the reason.
    assert response.status_code == 400
    assert "The SSL certificate error" in response.text
    assert "SUCCESS" not in response.text
    assert "(23:certificate revoked)" in nginx.error_log.read_text()


def test_nginx_refuses_a_client_without_a_certificate(material: Material, nginx: Nginx) -> None:
    curl_path = require_tool("curl")
    proc = run(curl_path, "-sS", "--max-time", "20", "--cacert", material.client.files.bundle,
               "--resolve", f"{SERVER_DNS}:{nginx.port}:127.0.0.1", f"https://{SERVER_DNS}:{nginx.port}/")
    assert b"400 No required SSL certificate was sent" in proc.stdout, proc.stdout.decode()


def test_nginx_needs_the_roots_crl_too(material: Material, tmp_path: Path) -> None:
    """Why the fixture hands nginx two CRLs: ``ssl_crl`` turns on OpenSSL's CRL_CHECK_ALL,
    so with the intermediate's CRL alone even a good client is refused."""
    with run_nginx(tmp_path / "run", material, material.crl_intermediate) as server:
        response = nginx_get(material.client, server)
        assert response.status_code == 400
        assert "(3:unable to get certificate CRL)" in server.error_log.read_text()


# --- openssl s_server as the mTLS server ---------------------------------------------------------


@pytest.fixture(scope="module")
def s_server(openssl: str, material: Material, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``openssl s_server -Verify 2 -verify_return_error -www``: a client certificate required."""
    server = material.server
    port = free_port()
    log = tmp_path_factory.mktemp("s_server") / "s_server.log"
    proc = start(
        [
            openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(server.leaf),
            "-cert_chain", str(server.chain), "-key", str(server.files.key),
            "-CAfile", str(server.files.bundle), "-Verify", "2", "-verify_return_error", "-www",
        ],
        log,
        port,
    )
    print(f"openssl s_server pid {proc.pid} on 127.0.0.1:{port}")
    try:
        yield port
    finally:
        stop(proc)


def test_certwright_httpx_client_against_s_server(material: Material, s_server: int) -> None:
    with httpx_client(material.client.files, expect=SERVER_ID, timeout=DEADLINE) as client:
        response = client.get(f"https://127.0.0.1:{s_server}/")
    assert response.status_code == 200
    # -www answers with a status page describing the session, the verified client certificate
    # included (printed by X509_print, so its URI SAN shows).
    assert "Client certificate" in response.text
    assert f"URI:{CLIENT_ID}" in response.text


def test_certwright_socket_client_against_s_server(material: Material, s_server: int) -> None:
    with connect("127.0.0.1", s_server, files=material.client.files, expect=SERVER_ID) as sock:
        assert sock.version() in ("TLSv1.3", "TLSv1.2")
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        head = sock.recv(64)
    assert head.startswith(b"HTTP/1.0 200 ok")


def test_certwright_client_refuses_s_server_with_another_identity(material: Material, s_server: int) -> None:
    wrong = "spiffe://example.org/interop/someone-else"
    with pytest.raises(IdentityMismatch, match="not the expected"), \
            httpx_client(material.client.files, expect=wrong, timeout=DEADLINE) as client:
        client.get(f"https://127.0.0.1:{s_server}/")
    with pytest.raises(IdentityMismatch):
        connect("127.0.0.1", s_server, files=material.client.files, expect=wrong).close()


def test_s_server_refuses_a_client_of_another_ca(material: Material, s_server: int) -> None:
    """Negative control: s_server really checks the client certificate (-verify_return_error)."""
    with pytest.raises((httpx.HTTPError, OSError)), \
            httpx_client(material.foreign.files, expect=SERVER_ID, timeout=DEADLINE) as client:
        client.get(f"https://127.0.0.1:{s_server}/")



# --- certwright tunnel client in front of openssl s_server ---------------------------------------


def tunnel_client(material: Material, s_server: int, expect: str) -> list[str]:
    files = material.client.files
    return certwright_cmd(
        "tunnel", "client", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{s_server}",
        "--cert", files.cert, "--key", files.key, "--bundle", files.bundle, "--expect", expect,
    )


def through(port: int) -> bytes:
    """A plain-TCP HTTP/1.0 request to the tunnel's local port; everything read until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_tunnel_client_reaches_s_server_with_the_expected_identity(
    material: Material, s_server: int, tmp_path: Path
) -> None:
    log = tmp_path / "tunnel.log"
    with started(tunnel_client(material, s_server, SERVER_ID), log) as proc:
        port = int(proc.wait_for(LISTENING).group(1))
        answer = through(port)
    assert answer.startswith(b"HTTP/1.0 200 ok"), answer[:200]
    assert f"URI:{CLIENT_ID}".encode() in answer  # s_server saw the tunnel's client certificate


def test_tunnel_client_refuses_s_server_with_another_identity(
    material: Material, s_server: int, tmp_path: Path
) -> None:
    log = tmp_path / "tunnel.log"
    wrong = "spiffe://example.org/interop/someone-else"
    with started(tunnel_client(material, s_server, wrong), log) as proc:
        port = int(proc.wait_for(LISTENING).group(1))
        answer = through(port)
        proc.wait_for(re.escape(f"not the expected {wrong}"))
    assert answer == b""
