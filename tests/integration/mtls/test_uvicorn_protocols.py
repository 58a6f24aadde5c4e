"""certwright.mtls.uvicorn's adapter on every uvicorn HTTP protocol and event loop it may get.

``Config(loop="auto", http="auto")`` picks uvloop and httptools when they are installed, h11
and asyncio otherwise; :func:`~certwright.mtls.uvicorn.tls_protocol` must give the app the
ASGI TLS extension in all four combinations, and its write coalescing must keep responses
whole: several requests on one keep-alive connection, a large body (flow control), a body
streamed in pieces across awaits, ``Connection: close``. TLS sessions resume (tickets).
Real TLS on 127.0.0.1, port 0, one server per test, stopped by the fixture.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

from certwright.mtls.context import TLSFiles, client_context
from certwright.mtls.uvicorn import ServerThread, _CoalescingTransport, config, tls_protocol

BIG = 3 * 1024 * 1024 + 17  # larger than any socket buffer: the transport must pause and resume
TIMEOUT = 10.0


def _protocols() -> list[Any]:
    params: list[Any] = [pytest.param(("asyncio", H11Protocol), id="asyncio-h11")]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: uvicorn's "auto" is h11 then
        return params
    params.append(pytest.param(("asyncio", HttpToolsProtocol), id="asyncio-httptools"))
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return params
    params.append(pytest.param(("uvloop", H11Protocol), id="uvloop-h11"))
    params.append(pytest.param(("uvloop", HttpToolsProtocol), id="uvloop-httptools"))
    return params


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    tls = (scope.get("extensions") or {}).get("tls") or {}
    path = scope["path"]
    if path == "/stream":  # three pieces, with a turn of the loop between them
        start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        await send(start)
        for piece in (b"one,", b"two,", b"three"):
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/big":
        payload = bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256)
    else:
        payload = f"{tls.get('client_cert_name')}|{tls.get('tls_version')}|{len(body)}".encode()
    headers = [(b"content-length", str(len(payload)).encode()), (b"content-type", b"text/plain")]
    if path == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture(params=_protocols())
def server(request: pytest.FixtureRequest, server_files: TLSFiles) -> Iterator[ServerThread]:
    loop, protocol = request.param
    http = tls_protocol(protocol)
    cfg = config(app, files=server_files, port=0, loop=loop, http=http, log_config=None, log_level="warning")
    running = ServerThread(cfg).start()
    print(f"{loop} + {protocol.__name__} on {running.url}")
    try:
        yield running
    finally:
        running.stop()


def _connect(
    server: ServerThread, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    return context.wrap_socket(raw, session=session)


def _request(tls: ssl.SSLSocket, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    tls.sendall(
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    reader = tls.makefile("rb")
    status = int(reader.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        payload = reader.read(int(headers["content-length"]))
    else:  # chunked
        parts = []
        while (size := int(reader.readline().split(b";")[0], 16)) != 0:
            parts.append(reader.read(size))
            reader.readline()
        reader.readline()
        payload = b"".join(parts)
    return status, headers, payload


def test_the_tls_extension_reaches_the_app_on_every_request_of_a_connection(
    server: ServerThread, client_files: TLSFiles
) -> None:
    leaf = x509.load_pem_x509_certificates(client_files.cert.read_bytes())[0]
    with _connect(server, client_context(client_files)) as tls:
        for n in range(5):  # keep-alive: one connection, answers whole and in order
            status, _, payload = _request(tls, "/echo", b"x" * n)
            assert status == 200
            assert payload.decode() == f"{leaf.subject.rfc4514_string()}|{0x0304}|{n}"


def test_a_large_body_and_a_streamed_body_arrive_whole(server: ServerThread, client_files: TLSFiles) -> None:
    with _connect(server, client_context(client_files)) as tls:
        status, _, payload = _request(tls, "/big")
        assert status == 200 and len(payload) == BIG
        assert payload[:512] == bytes(range(256)) * 2 and payload.endswith(b"x" * (BIG % 256))
        status, headers, payload = _request(tls, "/stream")
        assert status == 200 and headers.get("transfer-encoding") == "chunked"
        assert payload == b"one,two,three"
        status, _, payload = _request(tls, "/echo", b"after")  # the connection is still in step
        assert status == 200 and payload.endswith(b"|5")


def test_connection_close_sends_the_whole_answer_first(server: ServerThread, client_files: TLSFiles) -> None:
    with _connect(server, client_context(client_files)) as tls:
        status, headers, payload = _request(tls, "/close", b"bye")
        assert status == 200 and headers["connection"] == "close"
        assert payload.endswith(b"|3")
        try:  # then the server closes: end of stream, not a hang (the socket has a timeout)
            rest = tls.recv(1)
        except (ssl.SSLEOFError, ConnectionResetError):
            rest = b""
        assert rest == b""


def test_tls_sessions_resume(server: ServerThread, client_files: TLSFiles) -> None:
    context = client_context(client_files)
    with _connect(server, context) as first:
        assert _request(first, "/echo")[0] == 200  # TLS 1.3 tickets come after the handshake
        session = first.session
        assert not first.session_reused
    assert session is not None and session.has_ticket
    with _connect(server, context, session) as second:
        status, _, payload = _request(second, "/echo")
        assert second.session_reused
    # The resumed session still carries the client certificate to the app.
    leaf = x509.load_pem_x509_certificates(client_files.cert.read_bytes())[0]
    assert status == 200 and payload.startswith(leaf.subject.rfc4514_string().encode())


# -- the coalescing transport, alone -----------------------------------------------------------


class _Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_of_one_turn_go_out_as_one() -> None:
    async def scenario() -> None:
        inner = _Recorder()
        transport = _CoalescingTransport(inner)
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"body")
        assert inner.writes == []  # nothing yet: written at the end of this turn
        assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
        await asyncio.sleep(0)
        assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        transport.write(b"last")
        transport.close()  # close writes what is pending first
        assert inner.writes[-1] == b"last" and inner.closed
        aborted = _Recorder()
        dropped = _CoalescingTransport(aborted)
        dropped.write(b"never")
        dropped.abort()
        await asyncio.sleep(0)
        assert aborted.writes == [] and aborted.aborted

    asyncio.run(scenario())
