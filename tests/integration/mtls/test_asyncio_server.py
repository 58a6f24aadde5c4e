"""certwright.mtls.server.start_server over real TLS on 127.0.0.1 (port 0).

The handler greets the peer by identity and records it; every refusal asserts both the
logged reason and that the handler never ran, next to a connection that is admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certwright.access.policy import Policy
from certwright.mtls.context import TLSFiles, client_context
from certwright.mtls.crl import CrlSource
from certwright.mtls.peer import Peer, PeerVerifier
from certwright.mtls.server import PeerServer, start_server
from support.pki import TestPKI, Workload

CLIENT = "spiffe://example.org/client"
TIMEOUT = 10.0
POLICY = """
version = 1

[[rule]]
name = "client-uses-echo"
services = ["echo"]
identities = ["spiffe://example.org/client"]
"""
WriteWorkload = Callable[[Workload, str], TLSFiles]


class Echo:
    """The handler: answers ``hello <identity>`` and records who it served."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.release = asyncio.Event()
        self.hold = False

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        self.peers.append(peer)
        if self.hold:
            await self.release.wait()
        writer.write(f"hello {peer.identity}\n".encode())
        await writer.drain()


async def greet(server: PeerServer, files: TLSFiles) -> bytes:
    """Connect with ``files``; the server's first line, or b"" when it closed the connection."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", server.port, ssl=client_context(files)), TIMEOUT
    )
    try:
        return await asyncio.wait_for(reader.readline(), TIMEOUT)
    except (ConnectionResetError, ssl.SSLError):
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, ssl.SSLError, BrokenPipeError):
            await writer.wait_closed()


def run(
    server_files: TLSFiles,
    verifier: PeerVerifier,
    policy: Any,
    body: Callable[[PeerServer], Awaitable[Any]],
    handler: Echo | None = None,
) -> Any:
    """Start a server, run ``body`` against it, and always close it (graceful shutdown)."""

    async def main() -> Any:
        server = await start_server(
            handler or Echo(), "127.0.0.1", 0, files=server_files, verifier=verifier, policy=policy,
            service="echo",
        )
        async with server:
            return await body(server)

    return asyncio.run(main())


@pytest.fixture
def policy() -> Policy:
    return Policy.parse(POLICY, source="policy.toml")


@pytest.fixture
def verifier(pki: TestPKI) -> PeerVerifier:
    return PeerVerifier([pki.root], trust_domain="example.org")


def test_an_allowed_peer_reaches_the_handler(
    server_files: TLSFiles, client_files: TLSFiles, verifier: PeerVerifier, policy: Policy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    echo = Echo()

    async def body(server: PeerServer) -> bytes:
        assert server.port != 0 and server.host == "127.0.0.1"
        return await greet(server, client_files)

    with caplog.at_level(logging.INFO, logger="certwright.mtls.access"):
        assert run(server_files, verifier, policy, body, echo) == f"hello {CLIENT}\n".encode()
    assert [str(p.identity) for p in echo.peers] == [CLIENT]
    (record,) = [r for r in caplog.records if r.name == "certwright.mtls.access"]
    assert record.getMessage().startswith(f"allow identity={CLIENT} service=echo")


def test_a_peer_the_policy_denies_is_closed_with_a_logged_reason(
    pki: TestPKI, server_files: TLSFiles, write_workload: WriteWorkload, verifier: PeerVerifier,
    policy: Policy, caplog: pytest.LogCaptureFixture,
) -> None:
    other = write_workload(pki.leaf("spiffe://example.org/other"), "other")
    echo = Echo()
    with caplog.at_level(logging.INFO, logger="certwright.mtls.access"):
        assert run(server_files, verifier, policy, lambda server: greet(server, other), echo) == b""
    assert echo.peers == []
    denials = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("deny identity=spiffe://example.org/other service=echo" in m and "default deny" in m
               for m in denials), denials


def test_a_revoked_peer_is_closed(
    pki: TestPKI, server_files: TLSFiles, client_files: TLSFiles, policy: Policy, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pki.revoke(leaf_serial(client_files))
    crl_file = tmp_path / "issuing.crl"
    crl_file.write_bytes(pki.crl_pem())
    verifier = PeerVerifier([pki.root], crl=CrlSource(crl_file, issuers=[pki.intermediate]))
    echo = Echo()
    with caplog.at_level(logging.INFO, logger="certwright.mtls.access"):
        assert run(server_files, verifier, policy, lambda server: greet(server, client_files), echo) == b""
    assert echo.peers == []
    assert any("peer refused" in r.getMessage() and "revoked" in r.getMessage() for r in caplog.records)


def leaf_serial(files: TLSFiles) -> int:
    return x509.load_pem_x509_certificates(files.cert.read_bytes())[0].serial_number


@pytest.mark.parametrize("who", ["nobody", "stranger", "expired"])
def test_peers_the_handshake_refuses_never_reach_the_handler(
    who: str, pki: TestPKI, other_pki: TestPKI, server_files: TLSFiles, write_workload: WriteWorkload,
    verifier: PeerVerifier, tmp_path: Path,
) -> None:
    if who == "stranger":
        written = other_pki.leaf(CLIENT).write(tmp_path / "stranger", other_pki.bundle_pem)
        files: TLSFiles | None = TLSFiles(written.cert, written.key, server_files.bundle)
    elif who == "expired":
        files = write_workload(pki.expired_leaf(CLIENT), "expired")
    else:
        files = None
    echo = Echo()

    async def body(server: PeerServer) -> bytes:
        if files is not None:
            return await greet(server, files)
        context = ssl.create_default_context(cafile=str(server_files.bundle))
        context.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
        try:
            return await asyncio.wait_for(reader.readline(), TIMEOUT)
        except (ConnectionResetError, ssl.SSLError):
            return b""
        finally:
            writer.close()

    assert run(server_files, verifier, None, body, echo) == b""
    assert echo.peers == []


def test_policy_none_admits_every_verified_peer(
    server_files: TLSFiles, client_files: TLSFiles, verifier: PeerVerifier
) -> None:
    greeting = run(server_files, verifier, None, lambda server: greet(server, client_files))
    assert greeting == f"hello {CLIENT}\n".encode()


def test_closing_waits_for_handlers_in_flight(
    server_files: TLSFiles, client_files: TLSFiles, verifier: PeerVerifier, policy: Policy
) -> None:
    echo = Echo()
    echo.hold = True

    async def body(server: PeerServer) -> bytes:
        pending = asyncio.create_task(greet(server, client_files))
        while not echo.peers:  # the handler is running
            await asyncio.wait({pending}, timeout=0.01)
            assert not pending.done()
        server.close()
        closing = asyncio.create_task(server.wait_closed(timeout=TIMEOUT))
        await asyncio.wait({closing}, timeout=0.05)
        assert not closing.done()  # still waiting for the handler
        echo.release.set()
        await closing
        return await pending

    assert run(server_files, verifier, policy, body, echo) == f"hello {CLIENT}\n".encode()


def test_start_server_needs_exactly_one_tls_source(server_files: TLSFiles, verifier: PeerVerifier) -> None:
    async def main() -> None:
        await start_server(Echo(), verifier=verifier, policy=None, service="echo")

    with pytest.raises(TypeError, match="exactly one"):
        asyncio.run(main())
