"""Attacks on the listeners themselves: slow headers, slow bodies, too many connections.

The real ``certwright serve`` with a one-second ``request_timeout`` and three connections
per listener: a client trickling its headers ("slowloris") is disconnected, a trickled
body gets 408 on both listeners, a connection past ``max_connections`` gets 503, and a
well-behaved keep-alive client is not disturbed.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from support.serve_process import ServeProcess

TIMEOUT = 1.0
DEADLINE = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = {
        "CERTWRIGHT_REQUEST_TIMEOUT": str(TIMEOUT),
        "CERTWRIGHT_MAX_CONNECTIONS": "3",
        "CERTWRIGHT_WORKERS": "1",  # the connection count is per worker
    }
    with ServeProcess(tmp_path_factory.mktemp("slow") / "data", env=env) as running:
        yield running


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def _connect(server: ServeProcess, *, tls: bool = True) -> socket.socket:
    raw = socket.create_connection(_address(server.api_url if tls else server.http_url), timeout=DEADLINE)
    if not tls:
        return raw
    context = ssl.create_default_context(cafile=str(server.directory / "bundle.pem"))
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading what it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    sock.settimeout(DEADLINE)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_attack_slowloris_headers_are_cut_off(server: ServeProcess) -> None:
    for tls in (True, False):
        with _connect(server, tls=tls) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 4 * TIMEOUT and not closed:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")  # a header line now and then, never the end
                except (ConnectionError, ssl.SSLError):
                    closed = True
                    break
                closed = _closed_within(sock, 0.3)
            assert closed, "a client trickling its headers kept its connection"


def test_attack_a_trickled_body_gets_408_on_both_listeners(server: ServeProcess) -> None:
    for tls, path, content_type in (
        (True, "/v1/enroll", "application/json"),
        (False, "/ocsp", "application/ocsp-request"),
    ):
        with _connect(server, tls=tls) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                "Content-Length: 500\r\n\r\n".encode()
                + b"{"
            )
            status, headers, body = _response(sock)
            assert status == 408, body
            assert headers["content-type"] == "application/problem+json"
            assert json.loads(body)["type"].endswith("request-timeout")
            assert headers.get("connection") == "close"


def test_attack_connections_past_the_limit_get_503(server: ServeProcess) -> None:
    held = [_connect(server) for _ in range(3)]
    try:
        with _connect(server) as extra:
            extra.sendall(b"GET /v1/bundle HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = _response(extra)
        assert status == 503
    finally:
        for sock in held:
            sock.close()


def test_a_keep_alive_client_with_pauses_is_served(server: ServeProcess) -> None:
    with _connect(server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /v1/bundle HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = _response(sock)
            assert status == 200 and b"BEGIN CERTIFICATE" in body
            time.sleep(TIMEOUT / 2)  # a pause shorter than the deadline, between requests
