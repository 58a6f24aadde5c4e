"""Real uvicorn, real TLS on 127.0.0.1 (port 0): MTLSMiddleware in front of Starlette and FastAPI.

Every server runs in a :class:`~certwright.mtls.uvicorn.ServerThread` started and stopped by a
fixture. The apps record each request they serve (``hits``), so every refusal also proves
that the app never ran; each refusal is paired with an allowed request over the same server.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import Depends, FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from certwright.access.policy import Policy
from certwright.mtls.asgi import (
    PROBLEM_ACCESS_DENIED,
    PROBLEM_AMBIGUOUS_PATH,
    PROBLEM_PEER_REFUSED,
    PROBLEM_TLS_UNAVAILABLE,
    peer_of,
)
from certwright.mtls.context import TLSFiles, client_context
from certwright.mtls.crl import CrlSource
from certwright.mtls.peer import Peer, PeerVerifier
from certwright.mtls.uvicorn import MTLSServer, ServerThread, config
from support.env import require_tool
from support.pki import TestPKI, Workload

CLIENT = "spiffe://example.org/client"
SERVER_NAME = "server.example.org"
TIMEOUT = 10.0
POLICY = """
version = 1

[[rule]]
name = "client-reads-items"
services = ["items"]
identities = ["spiffe://example.org/client"]
methods = ["GET"]
paths = ["/v1/items/*"]
"""
WriteWorkload = Callable[[Workload, str], TLSFiles]


@dataclass
class Apps:
    """The apps under test and what they served."""

    hits: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def starlette(self) -> Starlette:
        async def item(request: Request) -> JSONResponse:
            self.hits.append(request.url.path)
            if request.url.path == "/v1/items/slow":
                self.entered.set()
                await asyncio.to_thread(self.release.wait, TIMEOUT)
            peer: Peer = request.state.peer
            return JSONResponse({
                "identity": str(peer.identity), "roles": list(peer.roles),
                "reason": request.state.access_decision.reason, "path": request.url.path,
            })

        async def tls(request: Request) -> JSONResponse:
            self.hits.append(request.url.path)
            ext = dict(request.scope["extensions"]["tls"])
            ext["client_cert_chain"] = list(ext["client_cert_chain"])
            return JSONResponse(ext)

        async def ws(websocket: WebSocket) -> None:
            self.hits.append(websocket.url.path)
            await websocket.accept()
            await websocket.send_text(str(peer_of(websocket).identity))
            await websocket.close()

        return Starlette(routes=[
            WebSocketRoute("/v1/items/ws", ws),
            WebSocketRoute("/admin/ws", ws),
            Route("/v1/items/tls", tls),
            Route("/v1/items/{rest:path}", item),  # would serve /v1/items/a/b, /v1/items/../admin
            Route("/admin", item),
        ])

    def fastapi(self) -> FastAPI:
        app = FastAPI()

        def current_peer(request: FastAPIRequest) -> Peer:
            return peer_of(request)

        @app.get("/v1/items/{rest:path}")
        def item(rest: str, request: FastAPIRequest, peer: Peer = Depends(current_peer)) -> dict[str, Any]:  # noqa: B008
            self.hits.append(request.url.path)
            return {
                "identity": str(peer.identity), "roles": list(peer.roles),
                "reason": request.state.access_decision.reason, "path": request.url.path,
            }

        @app.get("/admin")
        def admin(request: FastAPIRequest) -> dict[str, str]:
            self.hits.append(request.url.path)
            return {"admin": "yes"}

        return app


@pytest.fixture
def apps() -> Apps:
    return Apps()


@pytest.fixture
def policy() -> Policy:
    return Policy.parse(POLICY, source="policy.toml")


@pytest.fixture
def verifier(pki: TestPKI) -> PeerVerifier:
    return PeerVerifier([pki.root], trust_domain="example.org")


@pytest.fixture
def start(server_files: TLSFiles) -> Iterator[Callable[..., ServerThread]]:
    """Start a server (stopped at teardown): start(app, verifier=..., policy=..., ...)."""
    running: list[ServerThread] = []

    def start_server(app: Any, **options: Any) -> ServerThread:
        options.setdefault("service", "items")
        options.setdefault("log_config", None)
        server = ServerThread(config(app, files=server_files, port=0, **options))
        running.append(server)
        return server.start()

    yield start_server
    for server in running:
        server.stop()


@pytest.fixture(params=["starlette", "fastapi"])
def server(
    request: pytest.FixtureRequest, apps: Apps, start: Callable[..., ServerThread],
    verifier: PeerVerifier, policy: Policy,
) -> ServerThread:
    app = apps.starlette() if request.param == "starlette" else apps.fastapi()
    return start(app, verifier=verifier, policy=policy)


@pytest.fixture
def client(client_files: TLSFiles, server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(verify=client_context(client_files), base_url=server.url, timeout=TIMEOUT) as http:
        yield http


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert document["status"] == response.status_code
    return document


# --- allowed and denied --------------------------------------------------------------------


def test_an_allowed_request_gets_200_with_the_peer_identity(client: httpx.Client, apps: Apps) -> None:
    response = client.get("/v1/items/42")
    assert response.status_code == 200
    body = response.json()
    assert body["identity"] == CLIENT and body["roles"] == ["reader"]
    assert "client-reads-items" in body["reason"]
    assert apps.hits == ["/v1/items/42"]


def test_a_request_the_policy_denies_gets_403_with_the_reason(client: httpx.Client, apps: Apps) -> None:
    response = client.get("/admin")
    assert response.status_code == 403
    doc = problem(response)
    assert doc["type"] == PROBLEM_ACCESS_DENIED
    assert "default deny" in doc["detail"] and "/admin" in doc["detail"]
    assert client.delete("/v1/items/42").status_code == 403  # the method counts too
    assert apps.hits == []
    assert client.get("/v1/items/42").status_code == 200  # negative control, same connection


def test_the_path_glob_does_not_cross_segments(client: httpx.Client, apps: Apps) -> None:
    response = client.get("/v1/items/a/b")  # the app's {rest:path} route would serve it
    assert response.status_code == 403 and problem(response)["type"] == PROBLEM_ACCESS_DENIED
    assert apps.hits == []


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/items/%2e%2e/admin",
        b"/v1/items/%2E%2E",  # '*' would match '..' if it were decided on
        b"/v1/items/..%2Fadmin",
        b"/v1/items/%252e%252e/admin",
        b"/v1/items/a%2Fb",
        b"/v1/items/..;/admin",
    ],
)
def test_encoded_path_tricks_are_refused_before_the_app(
    client: httpx.Client, apps: Apps, target: bytes
) -> None:
    response = client.get("/v1/items/x", extensions={"target": target})
    assert response.status_code == 400
    assert problem(response)["type"] == PROBLEM_AMBIGUOUS_PATH
    assert apps.hits == []


# --- refused peers ---------------------------------------------------------------------------


def _refused(files: TLSFiles | None, server: ServerThread, trust: Path) -> None:
    context = client_context(files) if files else ssl.create_default_context(cafile=str(trust))
    context.check_hostname = False
    with (
        httpx.Client(verify=context, base_url=server.url, timeout=TIMEOUT) as http,
        pytest.raises(httpx.TransportError),
    ):
        http.get("/v1/items/42")


def test_no_client_certificate_fails_the_handshake(
    server: ServerThread, server_files: TLSFiles, apps: Apps
) -> None:
    _refused(None, server, server_files.bundle)
    assert apps.hits == []


def test_a_certificate_from_another_ca_fails_the_handshake(
    server: ServerThread, other_pki: TestPKI, tmp_path: Path, server_files: TLSFiles, apps: Apps
) -> None:
    stranger = other_pki.leaf(CLIENT, roles=("reader",)).write(tmp_path / "stranger", other_pki.bundle_pem)
    # The stranger trusts our server (our bundle): only its own certificate is wrong.
    _refused(TLSFiles(stranger.cert, stranger.key, server_files.bundle), server, server_files.bundle)
    assert apps.hits == []


def test_an_expired_certificate_fails_the_handshake(
    server: ServerThread, pki: TestPKI, write_workload: WriteWorkload, server_files: TLSFiles, apps: Apps
) -> None:
    _refused(write_workload(pki.expired_leaf(CLIENT), "expired"), server, server_files.bundle)
    assert apps.hits == []


def test_a_revoked_certificate_is_refused(
    pki: TestPKI, apps: Apps, start: Callable[..., ServerThread], policy: Policy,
    write_workload: WriteWorkload, tmp_path: Path,
) -> None:
    crl_file = tmp_path / "issuing.crl"
    crl_file.write_bytes(pki.crl_pem())
    crl = CrlSource(crl_file, issuers=[pki.intermediate], check_interval=0.0)
    server = start(apps.starlette(), verifier=PeerVerifier([pki.root], crl=crl), policy=policy)
    victim = pki.leaf(CLIENT, roles=("reader",))
    files = write_workload(victim, "victim")
    with httpx.Client(verify=client_context(files), base_url=server.url, timeout=TIMEOUT) as http:
        assert http.get("/v1/items/1").status_code == 200  # negative control: before revocation
        pki.revoke(victim.serial)
        crl_file.write_bytes(pki.crl_pem())
        response = http.get("/v1/items/2")  # the same keep-alive connection: refused at once
    assert response.status_code == 403
    doc = problem(response)
    assert doc["type"] == PROBLEM_PEER_REFUSED and "revoked" in doc["detail"]
    assert apps.hits == ["/v1/items/1"]


def test_a_certificate_outside_the_name_constraints_fails_the_handshake(
    server: ServerThread, pki: TestPKI, write_workload: WriteWorkload, server_files: TLSFiles, apps: Apps
) -> None:
    forged = pki.forged_leaf(["spiffe://evil.org/client"])
    _refused(write_workload(forged, "forged"), server, server_files.bundle)
    assert apps.hits == []


# --- the adapter -----------------------------------------------------------------------------


def test_the_app_sees_the_asgi_tls_extension(
    apps: Apps, start: Callable[..., ServerThread], verifier: PeerVerifier, policy: Policy,
    client_files: TLSFiles,
) -> None:
    server = start(apps.starlette(), verifier=verifier, policy=policy)
    leaf = x509.load_pem_x509_certificates(client_files.cert.read_bytes())[0]
    for version, suites in (
        (ssl.TLSVersion.TLSv1_3, {0x1301, 0x1302, 0x1303}),
        (ssl.TLSVersion.TLSv1_2, {0xC02B, 0xC02C, 0xCCA9}),  # ECDHE-ECDSA with AES-GCM or ChaCha20
    ):
        context = client_context(client_files)
        context.maximum_version = version
        with httpx.Client(verify=context, base_url=server.url, timeout=TIMEOUT) as http:
            tls = http.get("/v1/items/tls").json()
        assert tls["tls_version"] == {ssl.TLSVersion.TLSv1_3: 0x0304, ssl.TLSVersion.TLSv1_2: 0x0303}[version]
        assert tls["cipher_suite"] in suites
        assert tls["client_cert_name"] == leaf.subject.rfc4514_string()
        assert tls["client_cert_error"] is None and tls["server_cert"] is None
        (chain_pem,) = tls["client_cert_chain"]
        assert ssl.PEM_cert_to_DER_cert(chain_pem) == leaf.public_bytes(serialization.Encoding.DER)


def test_without_the_adapter_every_request_is_a_500_never_an_allow(
    apps: Apps, start: Callable[..., ServerThread], verifier: PeerVerifier, client_files: TLSFiles
) -> None:
    # uvicorn's own h11 protocol: TLS works, but the app gets no TLS extension.
    server = start(apps.starlette(), verifier=verifier, policy=None, http="h11")
    with httpx.Client(verify=client_context(client_files), base_url=server.url, timeout=TIMEOUT) as http:
        response = http.get("/v1/items/42")
    assert response.status_code == 500 and problem(response)["type"] == PROBLEM_TLS_UNAVAILABLE
    assert apps.hits == []


def _websocket(server: ServerThread, files: TLSFiles, path: str) -> tuple[bytes, bytes]:
    """A WebSocket handshake over TLS by hand: (status line, first frame's payload or b"")."""
    context = client_context(files)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(4096)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0]
        if not status.startswith(b"HTTP/1.1 101"):
            return status, b""
        while len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F):
            rest += tls.recv(4096)
        return status, rest[2 : 2 + (rest[1] & 0x7F)]


def test_websockets_carry_the_peer_and_are_refused_by_policy(
    apps: Apps, start: Callable[..., ServerThread], verifier: PeerVerifier, policy: Policy,
    client_files: TLSFiles,
) -> None:
    server = start(apps.starlette(), verifier=verifier, policy=policy)
    status, payload = _websocket(server, client_files, "/v1/items/ws")
    assert status.startswith(b"HTTP/1.1 101") and payload == CLIENT.encode()
    status, _ = _websocket(server, client_files, "/admin/ws")
    assert status.startswith(b"HTTP/1.1 403")
    assert apps.hits == ["/v1/items/ws"]


# --- curl ------------------------------------------------------------------------------------


def _curl(
    server: ServerThread, bundle: Path, files: TLSFiles | None, path: str, *extra: str
) -> tuple[int, str, str]:
    """curl PATH (with the client's certificate unless None): (exit status, HTTP code, body)."""
    args = [
        require_tool("curl"), "--silent", "--show-error", "--max-time", str(TIMEOUT), "--cacert", str(bundle),
        "--resolve", f"{SERVER_NAME}:{server.port}:127.0.0.1", "--write-out", "\n%{http_code}", *extra,
    ]
    if files is not None:
        args += ["--cert", str(files.cert), "--key", str(files.key)]
    args.append(f"https://{SERVER_NAME}:{server.port}{path}")
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    body, _, code = done.stdout.rpartition("\n")
    return done.returncode, code, body + done.stderr


def test_curl_with_the_client_certificate(server: ServerThread, client_files: TLSFiles, apps: Apps) -> None:
    bundle = client_files.bundle
    rc, code, body = _curl(server, bundle, client_files, "/v1/items/7")
    assert (rc, code) == (0, "200") and json.loads(body)["identity"] == CLIENT
    rc, code, body = _curl(server, bundle, client_files, "/admin")
    assert (rc, code) == (0, "403") and json.loads(body)["type"] == PROBLEM_ACCESS_DENIED
    rc, code, body = _curl(server, bundle, client_files, "/v1/items/../admin", "--path-as-is")
    assert (rc, code) == (0, "400") and json.loads(body)["type"] == PROBLEM_AMBIGUOUS_PATH
    assert apps.hits == ["/v1/items/7"]


def test_curl_without_a_client_certificate_is_refused(
    server: ServerThread, server_files: TLSFiles, apps: Apps
) -> None:
    rc, code, output = _curl(server, server_files.bundle, None, "/v1/items/7")
    assert rc != 0 and code == "000", output
    assert apps.hits == []


# --- lifecycle -------------------------------------------------------------------------------


def test_shutdown_is_graceful_for_requests_in_flight(
    apps: Apps, start: Callable[..., ServerThread], verifier: PeerVerifier, policy: Policy,
    client_files: TLSFiles,
) -> None:
    server = start(apps.starlette(), verifier=verifier, policy=policy)
    result: dict[str, Any] = {}

    def slow_request() -> None:
        with httpx.Client(verify=client_context(client_files), base_url=server.url, timeout=TIMEOUT) as http:
            result["response"] = http.get("/v1/items/slow")

    requester = threading.Thread(target=slow_request)
    stopper = threading.Thread(target=server.stop)
    requester.start()
    try:
        assert apps.entered.wait(TIMEOUT)
        stopper.start()
        deadline = time.monotonic() + TIMEOUT
        while True:  # the listener closes first: new connections are refused
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the server kept accepting after stop()"
            time.sleep(0.02)
        assert stopper.is_alive()  # still waiting for the request in flight
    finally:
        apps.release.set()
        requester.join(TIMEOUT)
        if stopper.ident is not None:
            stopper.join(TIMEOUT)
    assert result["response"].status_code == 200
    assert not stopper.is_alive()


def test_the_asyncio_server_reports_its_port_and_stops(
    apps: Apps, server_files: TLSFiles, client_files: TLSFiles, verifier: PeerVerifier, policy: Policy
) -> None:
    async def main() -> tuple[int, int, str]:
        cfg = config(apps.starlette(), files=server_files, port=0, verifier=verifier, policy=policy,
                     service="items", log_config=None)
        server = MTLSServer(cfg)
        assert server.port != 0
        async with (
            server,
            httpx.AsyncClient(verify=client_context(client_files), base_url=server.url) as http,
        ):
            response = await http.get("/v1/items/9")
        return server.port, response.status_code, response.json()["identity"]

    port, status, identity = asyncio.run(main())
    assert (status, identity) == (200, CLIENT)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()


def test_config_refuses_a_verifier_without_policy(
    apps: Apps, server_files: TLSFiles, verifier: PeerVerifier
) -> None:
    with pytest.raises(TypeError, match="policy"):
        config(apps.starlette(), files=server_files, verifier=verifier, service="items")
    with pytest.raises(TypeError, match="files"):
        config(apps.starlette(), verifier=verifier, policy=None, service="items")


SERVE_SCRIPT = """
import sys
from pathlib import Path
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from certwright.access.policy import Policy
from certwright.mtls.context import TLSFiles
from certwright.mtls.peer import PeerVerifier
from certwright.mtls.uvicorn import serve

cert, key, bundle = map(Path, sys.argv[1:4])
async def hello(request):
    return PlainTextResponse(str(request.state.peer.identity))
files = TLSFiles(cert, key, bundle)
serve(Starlette(routes=[Route("/v1/items/{x}", hello)]), files=files, port=0,
      verifier=PeerVerifier(bundle), policy=Policy.parse(sys.stdin.read()), service="items")
"""


def test_serve_runs_in_the_foreground_and_stops_gracefully_on_sigterm(
    server_files: TLSFiles, client_files: TLSFiles
) -> None:
    paths = (server_files.cert, server_files.key, server_files.bundle)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, *map(str, paths)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(POLICY)
        proc.stdin.close()
        proc.stdin = None  # communicate() must not flush it again
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, f"serve() exited: {proc.wait(TIMEOUT)}"
            if "Uvicorn running on https://" in line:
                url = line.split("running on ")[1].split()[0]
        assert url is not None
        with httpx.Client(verify=client_context(client_files), base_url=url, timeout=TIMEOUT) as http:
            response = http.get("/v1/items/1")
        assert (response.status_code, response.text) == (200, CLIENT)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM (its default: exit).
    assert "Shutting down" in rest and "Application shutdown complete" in rest, rest
    assert proc.returncode in (0, -signal.SIGTERM)
