"""Real TLS on 127.0.0.1: contexts, the peer of a connection, revocation, rotation.

A small threaded server (``PeerServer``) accepts one connection at a time with a context
from ``server_context``, asks a ``PeerVerifier`` who the peer is, answers ``OK <identity>``
or ``REFUSED <reason>`` and records the outcome, so each attack is asserted on the
server's own reason (the handshake's verify error, or ``PeerRefused.reason``).
"""

from __future__ import annotations

import asyncio
import http.server
import logging
import os
import queue
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certwright.mtls.context import ClientTLS, TLSFiles, client_context, server_context
from certwright.mtls.crl import CertificateRevoked, CrlSource, RevocationUnknown
from certwright.mtls.peer import Peer, PeerRefused, PeerVerifier
from support.env import require_tool
from support.pki import TestPKI, Workload

TIMEOUT = 10.0
# The workloads of conftest.py's server_files and client_files.
SERVER_ID = "spiffe://example.org/server"
CLIENT_ID = "spiffe://example.org/client"
WriteWorkload = Callable[[Workload, str], TLSFiles]


@dataclass
class Outcome:
    """What the server saw for one connection."""

    kind: str  # "ok", "refused" (PeerRefused), "handshake" (ssl.SSLError)
    peer: Peer | None = None
    reason: str = ""
    error: ssl.SSLError | None = None


class PeerServer:
    """Accepts TLS connections on 127.0.0.1 (port 0) in a thread; see the module docstring."""

    def __init__(self, context: ssl.SSLContext, verifier: PeerVerifier) -> None:
        self.context = context
        self.verifier = verifier
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self.server_names: list[str | None] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        # Record which SNI OpenSSL reports to the reloading callback (None: none sent).
        reload_hook = context.sni_callback

        def spy(conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
            self.server_names.append(name)
            if reload_hook is not None:
                reload_hook(conn, name, ctx)  # type: ignore[arg-type]  # typeshed is narrower than ssl

        context.sni_callback = spy

    def __enter__(self) -> PeerServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        # Wake accept() with one last connection, then wait for the thread.
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT):
            pass
        self._thread.join(TIMEOUT)
        self._listener.close()
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            raw, _ = self._listener.accept()
            if self._stop.is_set():
                raw.close()
                return
            raw.settimeout(TIMEOUT)
            try:
                tls = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                err = exc if isinstance(exc, ssl.SSLError) else None
                self.outcomes.put(Outcome("handshake", reason=str(exc), error=err))
                raw.close()
                continue
            with tls:
                try:
                    peer = self.verifier.peer_of(tls)
                except PeerRefused as exc:
                    self.outcomes.put(Outcome("refused", reason=exc.reason))
                    tls.sendall(f"REFUSED {exc.reason}\n".encode())
                else:
                    self.outcomes.put(Outcome("ok", peer=peer))
                    tls.sendall(f"OK {peer.identity}\n".encode())

    def outcome(self) -> Outcome:
        return self.outcomes.get(timeout=TIMEOUT)


@dataclass
class ClientResult:
    line: str  # the server's answer, or "" when the connection failed
    error: BaseException | None
    server_cert: x509.Certificate | None


def talk(port: int, context: ssl.SSLContext) -> ClientResult:
    """Connect without SNI (an IP address, no server_hostname), read the server's line."""
    cert = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, context.wrap_socket(
            raw
        ) as tls:
            der = tls.getpeercert(binary_form=True)
            cert = x509.load_der_x509_certificate(der) if der else None
            data = b""
            while not data.endswith(b"\n"):
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
            return ClientResult(data.decode().strip(), None, cert)
    except (ssl.SSLError, OSError) as exc:  # TLS 1.3: a client-cert refusal shows on read
        return ClientResult("", exc, cert)


def bare_client_context(bundle: Path) -> ssl.SSLContext:
    """A client that trusts the bundle but presents no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(bundle))
    return ctx


@pytest.fixture
def verifier(pki: TestPKI) -> PeerVerifier:
    return PeerVerifier([pki.root], trust_domain="example.org")


@pytest.fixture
def server(server_files: TLSFiles, verifier: PeerVerifier) -> Iterator[PeerServer]:
    with PeerServer(server_context(server_files, check_interval=0), verifier) as srv:
        print(f"PeerServer on 127.0.0.1:{srv.port}")
        yield srv


def _verify_error(outcome: Outcome) -> str:
    assert outcome.kind == "handshake", outcome
    assert isinstance(outcome.error, ssl.SSLCertVerificationError), outcome
    return str(outcome.error.verify_message)


# --- the happy path and its negative control ---------------------------------------------


def test_a_valid_client_is_known_by_its_identity_and_roles(
    server: PeerServer, client_files: TLSFiles
) -> None:
    result = talk(server.port, client_context(client_files))
    assert result.line == f"OK {CLIENT_ID}"
    outcome = server.outcome()
    assert outcome.kind == "ok" and outcome.peer is not None
    assert str(outcome.peer.identity) == CLIENT_ID
    assert outcome.peer.roles == ("reader",)
    # The client saw the server's certificate (and verified it against the bundle).
    assert result.server_cert is not None
    assert str(PeerVerifier([]).peer_from_der(result.server_cert.public_bytes(serialization.Encoding.DER))
               .identity) == SERVER_ID


def test_the_reload_callback_runs_for_clients_that_send_no_sni(
    server: PeerServer, client_files: TLSFiles
) -> None:
    talk(server.port, client_context(client_files))
    server.outcome()
    # OpenSSL ran the servername callback although the ClientHello had no SNI: the
    # reload below rests on that.
    assert server.server_names == [None]


# --- attacks ----------------------------------------------------------------------------


def test_no_client_certificate_fails_the_handshake(server: PeerServer, server_files: TLSFiles) -> None:
    result = talk(server.port, bare_client_context(server_files.bundle))
    outcome = server.outcome()
    assert outcome.kind == "handshake"
    assert outcome.error is not None and outcome.error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert result.line == ""  # the client got no answer (TLS 1.3: an alert on read)
    assert result.error is not None


def test_optional_client_certificates_still_give_no_peer_without_one(
    server_files: TLSFiles, verifier: PeerVerifier
) -> None:
    ctx = server_context(server_files, require_client_cert=False)
    with PeerServer(ctx, verifier) as srv:
        result = talk(srv.port, bare_client_context(server_files.bundle))
        outcome = srv.outcome()
    assert outcome.kind == "refused"
    assert outcome.reason == "the peer presented no certificate"
    assert result.line.startswith("REFUSED")


def test_a_certificate_from_another_ca_fails_the_handshake(
    server: PeerServer, other_pki: TestPKI, write_workload: WriteWorkload
) -> None:
    files = write_workload(other_pki.leaf(CLIENT_ID), "intruder")  # our bundle, their leaf
    result = talk(server.port, client_context(files))
    assert _verify_error(server.outcome()) == "unable to get local issuer certificate"
    assert result.line == ""


def test_an_expired_certificate_fails_the_handshake(
    server: PeerServer, pki: TestPKI, write_workload: WriteWorkload
) -> None:
    files = write_workload(pki.expired_leaf(CLIENT_ID), "expired")
    talk(server.port, client_context(files))
    assert _verify_error(server.outcome()) == "certificate has expired"


def test_an_identity_outside_the_name_constraints_fails_the_handshake(
    server: PeerServer, pki: TestPKI, write_workload: WriteWorkload
) -> None:
    # Signed by the real intermediate, whose name constraints permit example.org only.
    files = write_workload(pki.forged_leaf(["spiffe://evil.example.net/client"]), "outside")
    talk(server.port, client_context(files))
    assert _verify_error(server.outcome()) == "permitted subtree violation"


def test_the_same_forgery_inside_the_constraints_passes_the_handshake(
    server: PeerServer, pki: TestPKI, write_workload: WriteWorkload
) -> None:
    # Negative control of the test above: only the URI differs, and this one is accepted.
    files = write_workload(pki.forged_leaf(["spiffe://example.org/client"]), "inside")
    assert talk(server.port, client_context(files)).line == "OK spiffe://example.org/client"
    assert server.outcome().kind == "ok"


def test_two_identity_uris_are_refused(
    server: PeerServer, pki: TestPKI, write_workload: WriteWorkload
) -> None:
    forged = pki.forged_leaf(["spiffe://example.org/client", "spiffe://example.org/admin"])
    result = talk(server.port, client_context(write_workload(forged, "two")))
    outcome = server.outcome()
    assert outcome.kind == "refused"
    assert "carries 2 URI SANs" in outcome.reason
    assert result.line.startswith("REFUSED")


def test_the_identity_is_the_uri_never_the_common_name(
    server: PeerServer, pki: TestPKI, write_workload: WriteWorkload
) -> None:
    # A leaf whose CN says "client" while its URI says "mallory": the peer is mallory.
    mallory = pki.leaf("spiffe://example.org/mallory", subject=f"CN={CLIENT_ID}")
    talk(server.port, client_context(write_workload(mallory, "mallory")))
    outcome = server.outcome()
    assert outcome.peer is not None and str(outcome.peer.identity) == "spiffe://example.org/mallory"
    assert outcome.peer.certificate.subject.rfc4514_string() == f"CN={CLIENT_ID}"


def test_the_client_sees_the_servers_uri_identity(
    pki: TestPKI, write_workload: WriteWorkload, client_files: TLSFiles, verifier: PeerVerifier
) -> None:
    # The server presents Y while the client may expect X: the client's Peer says Y
    # (what to do about it is the client helper's check).
    other = write_workload(pki.leaf("spiffe://example.org/impostor", subject="CN=server"), "impostor")
    with PeerServer(server_context(other), verifier) as srv, socket.create_connection(
        ("127.0.0.1", srv.port), timeout=TIMEOUT
    ) as raw, client_context(client_files).wrap_socket(raw) as tls:
        peer = PeerVerifier([pki.root]).peer_of(tls)
        tls.recv(100)
    assert str(peer.identity) == "spiffe://example.org/impostor"


# --- revocation -------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_a_certificate_revoked_while_running_is_refused_without_restart(
    pki: TestPKI, server_files: TLSFiles, client_files: TLSFiles, tmp_path: Path
) -> None:
    crl_path = tmp_path / "ca.crl"
    crl_path.write_bytes(pki.crl_pem())
    crls = CrlSource(crl_path, issuers=[server_files.cert, server_files.bundle], check_interval=0)
    verifier = PeerVerifier([pki.root], crl=crls)
    with PeerServer(server_context(server_files), verifier) as srv:
        assert talk(srv.port, client_context(client_files)).line == f"OK {CLIENT_ID}"
        assert srv.outcome().kind == "ok"
        client_serial = x509.load_pem_x509_certificate(client_files.cert.read_bytes()).serial_number
        pki.revoke(client_serial)
        _write_atomically(crl_path, pki.crl_pem())
        result = talk(srv.port, client_context(client_files))
        outcome = srv.outcome()
    assert outcome.kind == "refused"
    assert outcome.reason.startswith("certificate revoked: reason keyCompromise")
    assert result.line.startswith("REFUSED certificate revoked")


def test_without_a_usable_crl_peers_are_refused(
    pki: TestPKI, other_pki: TestPKI, server_files: TLSFiles, client_files: TLSFiles, tmp_path: Path
) -> None:
    crl_path = tmp_path / "ca.crl"
    crl_path.write_bytes(other_pki.crl_pem())  # not our CA's CRL: nothing covers our peers
    crls = CrlSource(crl_path, issuers=[server_files.cert, server_files.bundle])
    with PeerServer(server_context(server_files), PeerVerifier([pki.root], crl=crls)) as srv:
        talk(srv.port, client_context(client_files))
        outcome = srv.outcome()
    assert outcome.kind == "refused"
    assert outcome.reason.startswith("revocation status unknown: no usable CRL")


class _CrlHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/pkix-crl")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def crl_http() -> Iterator[tuple[str, type[_CrlHandler]]]:
    """A CRL distribution point on 127.0.0.1: (URL, handler class whose body/status to set)."""
    handler = type("Handler", (_CrlHandler,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/ca.crl", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT)


def test_a_crl_url_is_fetched_and_refreshed(
    pki: TestPKI, server_files: TLSFiles, crl_http: tuple[str, type[_CrlHandler]]
) -> None:
    url, handler = crl_http
    handler.body = pki.crl_der()
    leaf = pki.leaf(CLIENT_ID).certificate
    with CrlSource(url, issuers=[server_files.cert], background=False) as crls:
        crls.check(leaf)  # fetched at start: good and not listing the leaf
        pki.revoke(leaf.serial_number)
        handler.body = pki.crl_der()
        crls.refresh()  # what the background thread does every `refresh` seconds
        with pytest.raises(CertificateRevoked):
            crls.check(leaf)
        handler.status, handler.body = 404, b"gone"
        crls.refresh()  # a failed fetch keeps the last good CRL
        with pytest.raises(CertificateRevoked):
            crls.check(leaf)


def test_the_background_fetcher_picks_up_a_new_crl(
    pki: TestPKI, server_files: TLSFiles, crl_http: tuple[str, type[_CrlHandler]]
) -> None:
    url, handler = crl_http
    handler.body = pki.crl_der()
    leaf = pki.leaf(CLIENT_ID).certificate
    with CrlSource(url, issuers=[server_files.cert], refresh=0.05) as crls:
        crls.check(leaf)
        pki.revoke(leaf.serial_number)
        handler.body = pki.crl_der()
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                crls.check(leaf)
            except CertificateRevoked:
                break
            assert time.monotonic() < deadline, "the background fetcher never loaded the new CRL"
            threading.Event().wait(0.02)


def test_an_unreachable_crl_url_fails_closed(
    pki: TestPKI, server_files: TLSFiles, crl_http: tuple[str, type[_CrlHandler]]
) -> None:
    url, handler = crl_http
    handler.status, handler.body = 500, b"down"
    with CrlSource(url, issuers=[server_files.cert], background=False) as crls, pytest.raises(
        RevocationUnknown, match=r"no usable CRL.*HTTP 500"
    ):
        crls.check(pki.leaf(CLIENT_ID).certificate)


# --- rotation of the server's own files -------------------------------------------------


def _rotate(files: TLSFiles, workload: Workload, *, key: bytes | None = None) -> None:
    """Replace the files as a renewal agent does: key first, then the certificate."""
    _write_atomically(files.key, key if key is not None else workload.key_pem())
    certs = (workload.certificate, *workload.chain)
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _write_atomically(files.cert, chain)


def test_a_rotated_server_certificate_is_used_by_new_connections(
    pki: TestPKI, server: PeerServer, server_files: TLSFiles, client_files: TLSFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = client_context(client_files)
    first = talk(server.port, ctx)
    assert first.line == f"OK {CLIENT_ID}"
    renewed = pki.leaf(SERVER_ID, dns=("server.example.org",))
    _rotate(server_files, renewed)
    second = talk(server.port, ctx)
    assert second.server_cert == renewed.certificate
    assert second.line == f"OK {CLIENT_ID}"

    # A bad rotation (the key of another certificate) keeps the renewed pair in use.
    caplog.set_level(logging.WARNING, logger="certwright.mtls")
    bad = pki.leaf(SERVER_ID, dns=("server.example.org",))
    _rotate(server_files, bad, key=pki.leaf(SERVER_ID).key_pem())
    third = talk(server.port, ctx)
    assert third.server_cert == renewed.certificate
    assert third.line == f"OK {CLIENT_ID}"
    assert any("keeping the previous ones" in r.getMessage() for r in caplog.records)

    # A half-written certificate file: also kept.
    server_files.cert.write_bytes(server_files.cert.read_bytes()[:100])
    assert talk(server.port, ctx).server_cert == renewed.certificate


def test_without_reload_the_old_certificate_stays(
    pki: TestPKI, server_files: TLSFiles, client_files: TLSFiles, verifier: PeerVerifier
) -> None:
    # Negative control of the rotation test: the new certificate is seen only thanks to reloading.
    original = x509.load_pem_x509_certificate(server_files.cert.read_bytes())
    with PeerServer(server_context(server_files, reload=False), verifier) as srv:
        _rotate(server_files, pki.leaf(SERVER_ID, dns=("server.example.org",)))
        assert talk(srv.port, client_context(client_files)).server_cert == original


def test_a_client_holder_follows_rotated_files(
    pki: TestPKI, server: PeerServer, client_files: TLSFiles
) -> None:
    tls = ClientTLS(client_files, check_interval=0)
    assert talk(server.port, tls.context()).line == f"OK {CLIENT_ID}"
    assert server.outcome().peer is not None
    renewed = pki.leaf("spiffe://example.org/client-v2")
    _rotate(client_files, renewed)
    assert talk(server.port, tls.context()).line == "OK spiffe://example.org/client-v2"


def test_a_reloaded_context_still_verifies_clients_and_follows_the_bundle(
    pki: TestPKI, other_pki: TestPKI, server: PeerServer, server_files: TLSFiles,
    write_workload: WriteWorkload,
) -> None:
    # After a swap to a reloaded context, client certificates are still required and
    # verified, against the reloaded bundle.
    intruder = write_workload(other_pki.leaf(CLIENT_ID), "intruder")
    _rotate(server_files, pki.leaf(SERVER_ID, dns=("server.example.org",)))
    talk(server.port, client_context(intruder))
    assert _verify_error(server.outcome()) == "unable to get local issuer certificate"
    talk(server.port, bare_client_context(server_files.bundle))
    outcome = server.outcome()
    assert outcome.error is not None and outcome.error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    # A bundle that now also trusts the other CA: its client gets in, by its own name.
    _write_atomically(server_files.bundle, pki.bundle_pem + other_pki.bundle_pem)
    other_client = write_workload(other_pki.leaf("spiffe://example.org/partner"), "partner")
    other_client.bundle.write_bytes(pki.bundle_pem)  # it trusts our server
    assert talk(server.port, client_context(other_client)).line == "OK spiffe://example.org/partner"


def test_openssl_without_sni_gets_the_rotated_certificate(
    pki: TestPKI, server: PeerServer, server_files: TLSFiles, client_files: TLSFiles, tmp_path: Path
) -> None:
    openssl = require_tool("openssl")
    renewed = pki.leaf(SERVER_ID, dns=("server.example.org",))
    _rotate(server_files, renewed)
    # s_client -cert reads one certificate: the intermediates go in -cert_chain.
    chain = tmp_path / "intermediates.pem"
    chain.write_bytes(pki.intermediate.public_bytes(serialization.Encoding.PEM))
    proc = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-noservername",
         "-cert", str(client_files.cert), "-cert_chain", str(chain), "-key", str(client_files.key),
         "-CAfile", str(client_files.bundle), "-verify_return_error", "-ign_eof"],
        input=b"", capture_output=True, timeout=TIMEOUT, check=False,
    )
    out = proc.stdout.decode()
    assert f"OK {CLIENT_ID}" in out, proc.stderr.decode()
    served = x509.load_pem_x509_certificate(out[out.index("-----BEGIN CERTIFICATE-----"):].encode())
    assert served == renewed.certificate
    assert server.server_names == [None]  # openssl sent no SNI, and the callback ran


def test_a_client_certificate_without_client_auth_fails_the_handshake(
    server: PeerServer, pki: TestPKI, write_workload: WriteWorkload
) -> None:
    server_only = pki.leaf(CLIENT_ID, profile="server", dns=("client.example.org",))
    talk(server.port, client_context(write_workload(server_only, "server-only")))
    assert _verify_error(server.outcome()) == "unsuitable certificate purpose"


def test_asyncio_servers_get_the_peer_and_the_rotated_certificate(
    pki: TestPKI, server_files: TLSFiles, client_files: TLSFiles, verifier: PeerVerifier
) -> None:
    async def scenario() -> tuple[list[str], list[bytes | None]]:
        seen: list[str] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                seen.append(str(verifier.peer_of(writer.transport).identity))
            except PeerRefused as exc:
                seen.append(f"refused: {exc.reason}")
            writer.write(b"done\n")  # the client waits for it: `seen` is complete then
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(
            handle, "127.0.0.1", 0, ssl=server_context(server_files, check_interval=0)
        )
        port = server.sockets[0].getsockname()[1]
        served: list[bytes | None] = []
        try:
            for step in range(2):
                if step == 1:
                    _rotate(server_files, pki.leaf(SERVER_ID, dns=("server.example.org",)))
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_context(client_files)
                )
                tls = writer.get_extra_info("ssl_object")
                served.append(tls.getpeercert(binary_form=True))
                assert await reader.readline() == b"done\n"
                writer.close()
                await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()
        return seen, served

    seen, served = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert seen == [CLIENT_ID, CLIENT_ID]
    assert served[0] != served[1]
    rotated = x509.load_pem_x509_certificate(server_files.cert.read_bytes())
    assert served[1] == rotated.public_bytes(serialization.Encoding.DER)
