"""Client helpers against a real mTLS server on 127.0.0.1: ``connect``, ``httpx_client``,
``async_httpx_client``, and the server identity check that runs before any request byte.

The server is a small threaded HTTPS server (certwright's ``server_context``, client
certificate required) that records every byte it receives and answers with the serial
of the client certificate, so the tests see both what reached the server and who spoke.
Each refusal test has its control: the same client with the right ``expect`` succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from certwright.errors import InvalidIdentityError
from certwright.mtls.client import (
    IdentityMismatch,
    async_httpx_client,
    check_peer_identity,
    connect,
    httpx_client,
)
from certwright.mtls.context import ClientTLS, TLSFiles, server_context
from certwright.mtls.peer import PeerRefused
from support.pki import TestPKI

SERVER_ID = "spiffe://example.org/server"
IMPOSTOR_ID = "spiffe://example.org/impostor"
DEADLINE = 20.0


class RecordingServer:
    """HTTPS with mTLS on 127.0.0.1:0; ``received`` holds the bytes of each connection."""

    def __init__(self, files: TLSFiles) -> None:
        self.context = server_context(files, check_interval=0.05)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []
        self.handshakes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        data = b""
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                with self._lock:
                    self.handshakes += 1
                der = tls.getpeercert(binary_form=True)
                serial = x509.load_der_x509_certificate(der).serial_number if der else 0
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    body = f"{serial:x}".encode()
                    tls.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                        % (len(body), body)
                    )
        except (OSError, ssl.SSLError):
            pass
        finally:
            with self._lock:
                self.received.append(data)
            raw.close()

    def wait_connections(self, count: int) -> list[bytes]:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"the server saw {len(self.received)} connections, expected {count}")


@contextlib.contextmanager
def serving(pki: TestPKI, tmp_path: Path, identity: str | None, **leaf: object) -> Iterator[RecordingServer]:
    workload = pki.leaf(identity, **leaf) if identity else pki.forged_leaf(**leaf)  # type: ignore[arg-type]
    files = workload.write(tmp_path / "srv", pki.bundle_pem)
    with RecordingServer(TLSFiles(files.cert, files.key, files.bundle)) as server:
        yield server


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_connect_returns_a_verified_socket_for_the_expected_identity(
    pki: TestPKI, tmp_path: Path, client_files: TLSFiles
) -> None:
    with serving(pki, tmp_path, SERVER_ID, subject="CN=server") as server:
        with connect("127.0.0.1", server.port, files=client_files, expect=SERVER_ID) as sock:
            sock.sendall(GET)
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        assert server.wait_connections(1) == [GET]


def test_connect_refuses_the_right_cn_with_the_wrong_uri(
    pki: TestPKI, tmp_path: Path, client_files: TLSFiles
) -> None:
    # The impostor has everything a hostname check would look at: CN and DNS name.
    with serving(pki, tmp_path, IMPOSTOR_ID, subject="CN=server", dns=("server.example.org",)) as server:
        with pytest.raises(IdentityMismatch, match="impostor"):
            connect("127.0.0.1", server.port, files=client_files, expect=SERVER_ID)
        # Control: the handshake itself was fine, only the identity was wrong.
        with connect("127.0.0.1", server.port, files=client_files, expect=IMPOSTOR_ID) as sock:
            sock.sendall(GET)
        received = server.wait_connections(2)
    assert sorted(received) == [b"", GET]  # the refused connection sent the server nothing


def test_connect_refuses_a_server_with_two_uris(pki: TestPKI, tmp_path: Path, client_files: TLSFiles) -> None:
    with serving(pki, tmp_path, None, uris=[SERVER_ID, IMPOSTOR_ID], common_name="server") as server:
        for expect in (SERVER_ID, IMPOSTOR_ID):
            with pytest.raises(PeerRefused, match="2 URI SANs"):
                connect("127.0.0.1", server.port, files=client_files, expect=expect)
        # Control: without an expected identity the chain alone verifies.
        connect("127.0.0.1", server.port, files=client_files, expect=None).close()


def test_connect_refuses_a_server_from_another_ca(
    pki: TestPKI, tmp_path: Path, client_files: TLSFiles
) -> None:
    other = TestPKI.create(name="Other")
    with serving(other, tmp_path, SERVER_ID) as server, pytest.raises(ssl.SSLCertVerificationError):
        connect("127.0.0.1", server.port, files=client_files, expect=SERVER_ID)


def test_check_peer_identity_refuses_an_invalid_expectation(
    pki: TestPKI, tmp_path: Path, client_files: TLSFiles
) -> None:
    with (
        serving(pki, tmp_path, SERVER_ID) as server,
        connect("127.0.0.1", server.port, files=client_files) as sock,
    ):
        assert str(check_peer_identity(sock, SERVER_ID)) == SERVER_ID
        with pytest.raises(InvalidIdentityError):
            check_peer_identity(sock, "https://example.org/server")
        with pytest.raises(IdentityMismatch):
            check_peer_identity(sock, SERVER_ID + "/sub")


def test_httpx_client_checks_the_identity_before_sending_the_request(
    pki: TestPKI, tmp_path: Path, client_files: TLSFiles
) -> None:
    with serving(pki, tmp_path, IMPOSTOR_ID, subject="CN=server") as server:
        with httpx_client(client_files, expect=SERVER_ID) as client, pytest.raises(IdentityMismatch):
            client.get(server.url)
        assert server.wait_connections(1) == [b""]  # handshake made, not one request byte
        with httpx_client(client_files, expect=IMPOSTOR_ID) as client:
            response = client.get(server.url)
        assert response.status_code == 200
        assert int(response.text, 16) == pki_serial(client_files)


def test_async_httpx_client_checks_the_identity_before_sending_the_request(
    pki: TestPKI, tmp_path: Path, client_files: TLSFiles
) -> None:
    async def scenario(url: str) -> None:
        async with async_httpx_client(client_files, expect=SERVER_ID) as client:
            with pytest.raises(IdentityMismatch):
                await client.get(url)
        async with async_httpx_client(client_files, expect=IMPOSTOR_ID) as client:
            response = await client.get(url)
            assert response.status_code == 200

    with serving(pki, tmp_path, IMPOSTOR_ID) as server:
        asyncio.run(scenario(server.url))
        assert sorted(server.wait_connections(2))[0] == b""


def test_httpx_client_refuses_tls_overrides(client_files: TLSFiles) -> None:
    with pytest.raises(TypeError, match="verify"):
        httpx_client(client_files, expect=SERVER_ID, verify=False)
    with pytest.raises(TypeError, match="exactly one"):
        httpx_client(client_files, expect=SERVER_ID, tls=ClientTLS(client_files))


def test_httpx_client_presents_rotated_files_on_new_connections(
    pki: TestPKI, tmp_path: Path, client_files: TLSFiles
) -> None:
    tls = ClientTLS(client_files, check_interval=0.05)
    with serving(pki, tmp_path, SERVER_ID) as server, httpx_client(tls=tls, expect=SERVER_ID) as client:
        first = int(client.get(server.url).text, 16)
        assert first == pki_serial(client_files)
        renewed = pki.leaf("spiffe://example.org/client", roles=("reader",))
        renewed.write(client_files.cert.parent, pki.bundle_pem)
        deadline = time.monotonic() + DEADLINE
        seen = first
        while seen != renewed.serial and time.monotonic() < deadline:
            time.sleep(0.06)
            seen = int(client.get(server.url).text, 16)  # Connection: close: a new handshake each
        assert seen == renewed.serial


def pki_serial(files: TLSFiles) -> int:
    return x509.load_pem_x509_certificates(files.cert.read_bytes())[0].serial_number


def test_httpx_errors_stay_httpx_errors(client_files: TLSFiles) -> None:
    # Nothing listens on a port we just closed: the caller sees httpx's own exception.
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with httpx_client(client_files, expect=SERVER_ID, timeout=5) as client, pytest.raises(httpx.ConnectError):
        client.get(f"https://127.0.0.1:{port}/")
