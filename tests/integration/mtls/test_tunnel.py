"""TunnelServer and TunnelClient in-process, on real sockets on 127.0.0.1 (port 0).

The target is a TCP echo server that records what it received and whether it saw EOF.
Every refusal is paired with its control (same tunnel, an allowed peer passes), and the
decisions are read back from the ``certwright.tunnel`` log as an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certwright.access.policy import Decision, Request, Subject
from certwright.mtls.context import ClientTLS, TLSFiles, server_context
from certwright.mtls.crl import CrlSource
from certwright.mtls.peer import PeerVerifier
from certwright.mtls.tunnel import (
    Address,
    Limits,
    TunnelAccess,
    TunnelClient,
    TunnelConfigError,
    TunnelServer,
)
from support.env import require
from support.pki import TestPKI

SERVER_ID = "spiffe://example.org/server"
CLIENT_ID = "spiffe://example.org/client"
DEADLINE = 20.0
LOCAL = Address("127.0.0.1", 0)


class Echo:
    """TCP echo target: answers every chunk, records bytes and EOFs."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.eofs = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Echo:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def address(self) -> Address:
        assert self.server is not None
        return Address("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
            self.eofs += 1
        except OSError:
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def running(tunnel: TunnelServer | TunnelClient) -> AsyncIterator[int]:
    await tunnel.start()
    try:
        yield tunnel.port
    finally:
        await tunnel.stop(grace=1.0)


def client_ctx(files: TLSFiles) -> ssl.SSLContext:
    return ClientTLS(files).context()


def no_cert_ctx(bundle: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(bundle))  # trusts the server, presents nothing
    ctx.check_hostname = False
    return ctx


async def exchange(port: int, payload: bytes, ctx: ssl.SSLContext | None = None) -> bytes | None:
    """Send ``payload``, read as much back; None when the tunnel refused (closed or reset)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="server" if ctx else None),
            DEADLINE,
        )
    except (OSError, ssl.SSLError):
        return None
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), DEADLINE)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def decisions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "certwright.tunnel"]


def tunnel_server(files: TLSFiles, target: Address, **kwargs: object) -> TunnelServer:
    access = kwargs.pop("access", None) or TunnelAccess.create(allow=[CLIENT_ID])
    return TunnelServer(listen=LOCAL, target=target, files=files, access=access, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="certwright")


def test_server_forwards_an_allowed_peer_and_refuses_the_others(
    pki: TestPKI, write_workload, server_files: TLSFiles, client_files: TLSFiles, caplog
) -> None:
    other = write_workload(pki.leaf("spiffe://example.org/batch", roles=("reader",)), "batch")
    two_uris = write_workload(pki.forged_leaf([CLIENT_ID, "spiffe://example.org/batch"]), "two")
    foreign_files = write_workload(TestPKI.create(name="Foreign").leaf(CLIENT_ID), "foreign")

    async def scenario() -> None:
        async with Echo() as echo, running(tunnel_server(server_files, echo.address)) as port:
            assert await exchange(port, b"hello", client_ctx(client_files)) == b"hello"
            assert await exchange(port, b"other", client_ctx(other)) is None
            assert await exchange(port, b"two", client_ctx(two_uris)) is None
            assert await exchange(port, b"nocert", no_cert_ctx(server_files.bundle)) is None
            assert await exchange(port, b"foreign", client_ctx(foreign_files)) is None
            assert bytes(echo.received) == b"hello"  # nothing of a refused peer reached the target

    asyncio.run(scenario())
    log = "\n".join(decisions(caplog))
    assert re.search(rf"allowed 127\.0\.0\.1:\d+ {CLIENT_ID} serial=0x[0-9a-f]+ roles=reader: --allow", log)
    assert re.search(r"denied 127\.0\.0\.1:\d+ spiffe://example.org/batch serial=.*no --allow pattern", log)
    assert "2 URI SANs" in log
    assert len(re.findall(r"denied .*TLS handshake failed", log)) == 2  # no certificate; another CA


def test_server_allows_by_role_and_by_glob_within_one_segment(
    pki: TestPKI, write_workload, server_files: TLSFiles, caplog
) -> None:
    reader = write_workload(pki.leaf("spiffe://example.org/x/reader", roles=("reader",)), "r")
    web = write_workload(pki.leaf("spiffe://example.org/ns/prod/web"), "w")
    deep = write_workload(pki.leaf("spiffe://example.org/ns/prod/web/admin"), "d")
    access = TunnelAccess.create(allow=["spiffe://example.org/ns/*/web"], allow_roles=["reader"])

    async def scenario() -> None:
        async with Echo() as echo, running(tunnel_server(server_files, echo.address, access=access)) as port:
            assert await exchange(port, b"r", client_ctx(reader)) == b"r"
            assert await exchange(port, b"w", client_ctx(web)) == b"w"
            # '*' must not reach into nested segments.
            assert await exchange(port, b"d", client_ctx(deep)) is None

    asyncio.run(scenario())
    log = "\n".join(decisions(caplog))
    assert "--allow-role reader" in log and "--allow spiffe://example.org/ns/*/web" in log


def test_server_refuses_a_revoked_peer_and_picks_up_a_new_crl(
    pki: TestPKI, tmp_path: Path, write_workload, server_files: TLSFiles, client_files: TLSFiles, caplog
) -> None:
    crl_file = tmp_path / "ca.crl"
    crl_file.write_bytes(pki.crl_pem())
    revoked = pki.leaf(CLIENT_ID)
    revoked_files = write_workload(revoked, "revoked")

    async def scenario() -> None:
        crls = CrlSource(crl_file, issuers=[server_files.cert, server_files.bundle], check_interval=0.05)
        verifier = PeerVerifier(server_files.bundle, crl=crls)
        async with Echo() as echo:
            server = tunnel_server(server_files, echo.address, verifier=verifier)
            async with running(server) as port:
                assert await exchange(port, b"a", client_ctx(revoked_files)) == b"a"
                pki.revoke(revoked.serial)
                crl_file.write_bytes(pki.crl_pem())
                deadline = time.monotonic() + DEADLINE
                while time.monotonic() < deadline:
                    if await exchange(port, b"b", client_ctx(revoked_files)) is None:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the revoked certificate was never refused")
                # Control: another certificate of the same identity still passes.
                assert await exchange(port, b"c", client_ctx(client_files)) == b"c"

    asyncio.run(scenario())
    assert any("revoked" in line and line.startswith("denied") for line in decisions(caplog))


def test_server_cuts_an_open_connection_once_its_peer_is_revoked(
    pki: TestPKI, tmp_path: Path, write_workload, server_files: TLSFiles, client_files: TLSFiles, caplog
) -> None:
    """A connection opened before the revocation does not outlive it: the peer is checked
    again every ``recheck_interval`` and the connection cut; another peer's stays open."""
    crl_file = tmp_path / "ca.crl"
    crl_file.write_bytes(pki.crl_pem())
    revoked = pki.leaf(CLIENT_ID)
    revoked_files = write_workload(revoked, "revoked-later")

    async def open_pair(port: int, files: TLSFiles) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx(files), server_hostname="server"
        )
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), DEADLINE) == b"ping"
        return reader, writer

    async def scenario() -> None:
        crls = CrlSource(crl_file, issuers=[server_files.cert, server_files.bundle], check_interval=0.05)
        verifier = PeerVerifier(server_files.bundle, crl=crls)
        limits = Limits(recheck_interval=0.1)
        async with Echo() as echo:
            server = tunnel_server(server_files, echo.address, verifier=verifier, limits=limits)
            async with running(server) as port:
                doomed_reader, doomed = await open_pair(port, revoked_files)
                kept_reader, kept = await open_pair(port, client_files)
                pki.revoke(revoked.serial)
                crl_file.write_bytes(pki.crl_pem())
                # The server closes the revoked peer's connection by itself: EOF or reset.
                with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
                    assert await asyncio.wait_for(doomed_reader.read(), DEADLINE) == b""
                # Control: the other peer's connection, open as long, still works.
                kept.write(b"pong")
                await kept.drain()
                assert await asyncio.wait_for(kept_reader.readexactly(4), DEADLINE) == b"pong"
                for writer in (doomed, kept):
                    writer.close()

    asyncio.run(scenario())
    assert any(line.startswith("cut") and "revoked" in line for line in decisions(caplog))


def test_client_to_server_end_to_end_with_200_concurrent_connections(
    pki: TestPKI, server_files: TLSFiles, client_files: TLSFiles
) -> None:
    payloads = [bytes([i % 251]) * (1000 + 37 * i) for i in range(200)]

    async def scenario() -> None:
        async with Echo() as echo, running(tunnel_server(server_files, echo.address)) as server_port:
            client = TunnelClient(
                listen=LOCAL, target=Address("127.0.0.1", server_port), files=client_files, expect=SERVER_ID
            )
            async with running(client) as port:
                results = await asyncio.gather(*(exchange(port, p) for p in payloads))
        assert results == payloads

    asyncio.run(scenario())


def test_client_refuses_a_server_with_the_right_cn_and_the_wrong_uri(
    pki: TestPKI, write_workload, client_files: TLSFiles, caplog
) -> None:
    impostor_leaf = pki.leaf(
        "spiffe://example.org/impostor", subject="CN=server", dns=("server.example.org",)
    )
    impostor = write_workload(impostor_leaf, "impostor")

    async def scenario() -> None:
        async with Echo() as echo:
            # The impostor tunnel would even let our client through: only --expect stops it.
            access = TunnelAccess.create(allow=[CLIENT_ID])
            async with running(tunnel_server(impostor, echo.address, access=access)) as server_port:
                target = Address("127.0.0.1", server_port)
                wrong = TunnelClient(listen=LOCAL, target=target, files=client_files, expect=SERVER_ID)
                async with running(wrong) as port:
                    assert await exchange(port, b"secret") is None
                right = TunnelClient(
                    listen=LOCAL, target=target, files=client_files, expect="spiffe://example.org/impostor"
                )
                async with running(right) as port:
                    assert await exchange(port, b"control") == b"control"
            assert bytes(echo.received) == b"control"

    asyncio.run(scenario())
    assert any(
        line.startswith("denied") and "spiffe://example.org/impostor, not the expected" in line
        for line in decisions(caplog)
    )


def test_rotated_client_and_server_certificates_are_used_by_new_connections(
    pki: TestPKI, server_files: TLSFiles, client_files: TLSFiles, caplog
) -> None:
    async def peer_serial(port: int) -> int:
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx(client_files), server_hostname="server"
        )
        der = writer.get_extra_info("ssl_object").getpeercert(True)
        writer.close()
        return x509.load_der_x509_certificate(der).serial_number

    async def scenario() -> None:
        async with Echo() as echo:
            server = tunnel_server(
                server_files, echo.address, context=server_context(server_files, check_interval=0.05)
            )
            async with running(server) as server_port:
                client = TunnelClient(
                    listen=LOCAL,
                    target=Address("127.0.0.1", server_port),
                    files=client_files,
                    expect=SERVER_ID,
                    tls=ClientTLS(client_files, check_interval=0.05),
                )
                async with running(client) as port:
                    assert await exchange(port, b"one") == b"one"
                    new_client = pki.leaf(CLIENT_ID)
                    new_client.write(client_files.cert.parent, pki.bundle_pem)
                    new_server = pki.leaf(SERVER_ID)
                    new_server.write(server_files.cert.parent, pki.bundle_pem)
                    deadline = time.monotonic() + DEADLINE
                    while time.monotonic() < deadline:
                        assert await exchange(port, b"two") == b"two"
                        if f"serial={new_client.serial:#x}" in "\n".join(decisions(caplog)):
                            break
                        await asyncio.sleep(0.05)
                    else:
                        raise AssertionError("the rotated client certificate was never presented")
                    while await peer_serial(server_port) != new_server.serial:
                        assert time.monotonic() < deadline, "the rotated server certificate was never used"
                        await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_half_close_reaches_the_target_and_stop_lets_open_connections_finish(
    server_files: TLSFiles, client_files: TLSFiles, caplog
) -> None:
    async def scenario() -> None:
        async with Echo() as echo, running(tunnel_server(server_files, echo.address)) as server_port:
            client = TunnelClient(
                listen=LOCAL,
                target=Address("127.0.0.1", server_port),
                files=client_files,
                expect=SERVER_ID,
                limits=Limits(shutdown_grace=10.0),
            )
            await client.start()
            port = client.port
            # Half-close: data before the FIN reaches the target, and so does the EOF.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"last words")
            writer.write_eof()
            await asyncio.wait_for(reader.read(), DEADLINE)  # the tunnel closes after the EOF
            writer.close()
            deadline = time.monotonic() + DEADLINE
            while echo.eofs < 1:
                assert time.monotonic() < deadline, "the target never saw the EOF"
                await asyncio.sleep(0.02)
            assert bytes(echo.received) == b"last words"

            # Graceful stop: the listener closes at once, an open connection keeps working.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"before")
            assert await asyncio.wait_for(reader.readexactly(6), DEADLINE) == b"before"
            stopping = asyncio.create_task(client.stop())
            while client._server is not None and client._server.is_serving():
                await asyncio.sleep(0.01)
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"during")
            assert await asyncio.wait_for(reader.readexactly(6), DEADLINE) == b"during"
            writer.close()
            await asyncio.wait_for(stopping, DEADLINE)
            assert client.active == 0

    asyncio.run(scenario())


def test_connection_limit_and_unreachable_target_are_refused_and_logged(
    pki: TestPKI, server_files: TLSFiles, client_files: TLSFiles, caplog
) -> None:
    async def scenario() -> None:
        async with Echo() as echo:
            client = TunnelClient(
                listen=LOCAL,
                target=echo.address,
                files=client_files,
                expect=SERVER_ID,
                limits=Limits(max_connections=1),
            )
            # The client tunnel points at a plain echo: its handshakes fail, logged as such.
            async with running(client) as port:
                assert await exchange(port, b"x") is None
            with socket_closed_port() as dead:
                server = tunnel_server(server_files, dead)
                async with running(server) as sport:
                    assert await exchange(sport, b"y", client_ctx(client_files)) is None
                limited = tunnel_server(server_files, echo.address, limits=Limits(max_connections=1))
                async with running(limited) as lport:
                    held_r, held_w = await asyncio.open_connection(
                        "127.0.0.1", lport, ssl=client_ctx(client_files), server_hostname="s"
                    )
                    held_w.write(b"held")
                    assert await held_r.readexactly(4) == b"held"
                    assert await exchange(lport, b"z", client_ctx(client_files)) is None
                    held_w.close()

    asyncio.run(scenario())
    log = "\n".join(decisions(caplog))
    assert re.search(r"failed 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+:", log)
    assert re.search(rf"failed 127\.0\.0\.1:\d+ {CLIENT_ID} .*unreachable", log)
    assert "connection limit (1) reached" in log


@contextlib.contextmanager
def socket_closed_port() -> Iterator[Address]:
    """An address nothing listens on: a port bound and released."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    yield Address("127.0.0.1", port)


def test_idle_connections_are_closed(server_files: TLSFiles, client_files: TLSFiles, pki: TestPKI) -> None:
    async def scenario() -> None:
        async with Echo() as echo:
            server = tunnel_server(server_files, echo.address, limits=Limits(idle_timeout=1.0))
            async with running(server) as port:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_ctx(client_files), server_hostname="s"
                )
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                assert await asyncio.wait_for(reader.read(), DEADLINE) == b""  # closed by the tunnel
                writer.close()

    asyncio.run(scenario())


# --- configuration ------------------------------------------------------------------------


class _Deny:
    def decide(self, subject: Subject, request: Request) -> Decision:
        return Decision(False, f"no rule for {subject.identity} on {request.service}")


class _Allow:
    def decide(self, subject: Subject, request: Request) -> Decision:
        return Decision(True, "rule r1", "r1 (p.toml line 1)")


def test_access_refuses_configurations_that_make_no_sense() -> None:
    with pytest.raises(TunnelConfigError, match="default"):
        TunnelAccess.create()
    with pytest.raises(TunnelConfigError, match="--service"):
        TunnelAccess.create(policy=_Allow())
    with pytest.raises(TunnelConfigError, match="--service"):
        TunnelAccess.create(allow=[CLIENT_ID], service="db")
    with pytest.raises(TunnelConfigError, match="spiffe://"):
        TunnelAccess.create(allow=["example.org/web"])


def test_access_with_allow_lists_and_a_policy_needs_both() -> None:
    web = Subject("spiffe://example.org/web", ("reader",))
    both = TunnelAccess.create(allow=["spiffe://example.org/web"], policy=_Deny(), service="db")
    assert not both.decide(web).allowed and "no rule" in both.decide(web).reason
    allowed = TunnelAccess.create(allow=["spiffe://example.org/web"], policy=_Allow(), service="db")
    assert allowed.decide(web)
    listed_out = TunnelAccess.create(allow=["spiffe://example.org/x"], policy=_Allow(), service="db")
    assert not listed_out.decide(web)
    policy_only = TunnelAccess.create(policy=_Allow(), service="db")
    assert policy_only.decide(Subject(None)).rule == "r1 (p.toml line 1)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:0", Address("127.0.0.1", 0)),
        ("[::1]:8443", Address("::1", 8443)),
        ("localhost:80", Address("localhost", 80)),
    ],
)
def test_address_parse(text: str, expected: Address) -> None:
    assert Address.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["8443", ":8443", "::1:8443", "[nope]:1", "host:99999", "host:x"])
def test_address_parse_refuses(text: str) -> None:
    with pytest.raises(TunnelConfigError):
        Address.parse(text)


def test_server_listens_on_ipv6_loopback(server_files: TLSFiles, client_files: TLSFiles, caplog) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        has_ipv6 = True
    except OSError:
        has_ipv6 = False
    require(has_ipv6, "no IPv6 loopback (::1) on this machine")

    async def scenario() -> None:
        async with Echo() as echo:
            server = tunnel_server(server_files, echo.address)
            server.listen = Address.parse("[::1]:0")
            async with running(server) as port:
                reader, writer = await asyncio.open_connection(
                    "::1", port, ssl=client_ctx(client_files), server_hostname="server"
                )
                writer.write(b"v6")
                assert await reader.readexactly(2) == b"v6"
                writer.close()
            assert server.addresses == (f"[::1]:{port}",)

    asyncio.run(scenario())
    assert any(re.search(r"listening on \[::1\]:\d+", line) for line in decisions(caplog))


def test_client_with_a_crl_refuses_a_revoked_server(
    pki: TestPKI, tmp_path: Path, server_files: TLSFiles, client_files: TLSFiles, caplog
) -> None:
    server_serial = x509.load_pem_x509_certificate(server_files.cert.read_bytes()).serial_number
    crl_file = tmp_path / "ca.crl"
    crl_file.write_bytes(pki.crl_pem())

    async def scenario() -> None:
        crls = CrlSource(crl_file, issuers=[client_files.cert, client_files.bundle], check_interval=0.05)
        async with Echo() as echo, running(tunnel_server(server_files, echo.address)) as server_port:
            client = TunnelClient(
                listen=LOCAL,
                target=Address("127.0.0.1", server_port),
                files=client_files,
                expect=SERVER_ID,
                crl=crls,
            )
            async with running(client) as port:
                assert await exchange(port, b"before") == b"before"  # control: not revoked yet
                pki.revoke(server_serial)
                crl_file.write_bytes(pki.crl_pem())
                deadline = time.monotonic() + DEADLINE
                while time.monotonic() < deadline:
                    if await exchange(port, b"after") is None:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the revoked server was never refused")
        crls.close()

    asyncio.run(scenario())
    assert any(line.startswith("denied") and "revoked" in line for line in decisions(caplog))
