"""OpenSSL against the plain-HTTP listener (server/public.py): OCSP over HTTP and the served CRL.

* ``openssl ocsp -url http://127.0.0.1:PORT/ocsp`` (POST) says good / revoked / unknown and
  verifies the delegated responder's signature up to the root (with and without a nonce,
  SHA-1 and SHA-256 CertIDs); a response is refused when trusted against another root.
* An RFC 6960 A.1 GET fetched with curl is judged by ``openssl ocsp -respin``.
* ``openssl crl -inform DER`` parses the served CRL, checks its signature and lists the
  revoked serial; ``openssl verify -crl_check -crl_download`` follows the leaves' own CRL
  distribution point to the server and refuses the revoked leaf only.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from certwright.issuance import create_root
from certwright.server.public import create_public_app
from certwright.server.state import ServerState
from certwright.store import BySerial
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import generate_key
from certwright.x509.profiles import CASettings
from certwright.x509.revocation_reason import RevocationReason
from support.env import require_tool
from support.public_server import PlainServer, build_state, free_socket, issue_leaf, make_ca


class Setup:
    """The running app, its state, and the PEM files openssl reads."""

    def __init__(self, directory: Path, state: ServerState, server: PlainServer) -> None:
        self.dir = directory
        self.state = state
        self.url = server.url
        self.root = self._write("root.pem", state.ca.root)
        self.issuer = self._write("intermediate.pem", state.ca.intermediate)
        self.chain = directory / "chain.pem"
        self.chain.write_bytes(self.issuer.read_bytes() + self.root.read_bytes())
        good, revoked = issue_leaf(state, "good"), issue_leaf(state, "revoked")
        state.revocation.revoke(BySerial(revoked.serial_number), RevocationReason.KEY_COMPROMISE)
        # Signed by the CA, never recorded: the inventory does not know it.
        unknown = state.ca.require_authority().issue(
            generate_key().public_key(),
            profile=state.ca.profile("mtls"),
            identity=SpiffeId.parse("spiffe://example.org/workload/unknown"),
        )
        self.leaves = {"good": good, "revoked": revoked, "unknown": unknown}
        for name, cert in self.leaves.items():
            self._write(f"{name}.pem", cert)

    def _write(self, name: str, cert: x509.Certificate) -> Path:
        path = self.dir / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def leaf(self, name: str) -> Path:
        return self.dir / f"{name}.pem"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("server-openssl")
    sock = free_socket()
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ca = make_ca(directory / "ca", base_url=base_url)
    state = build_state(ca, base_url=base_url)
    try:
        with PlainServer(create_public_app(state), sock=sock) as server:
            yield Setup(directory, state, server)
    finally:
        state.store.close()


def run(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, check=False)


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("digest", [(), ("-sha256",)], ids=["sha1", "sha256"])
@pytest.mark.parametrize("nonce", [(), ("-no_nonce",)], ids=["nonce", "no-nonce"])
def test_openssl_ocsp_url_reports_good_revoked_unknown(
    openssl: str, setup: Setup, digest: tuple[str, ...], nonce: tuple[str, ...]
) -> None:
    for name in ("good", "revoked", "unknown"):
        proc = run(
            openssl, "ocsp", "-issuer", setup.issuer, *digest, "-cert", setup.leaf(name), *nonce,
            "-url", f"{setup.url}/ocsp", "-CAfile", setup.root, "-verify_other", setup.issuer, "-resp_text",
        )
        verdict = output(proc)
        assert proc.returncode == 0, verdict
        assert "Response verify OK" in verdict, verdict
        assert f"{setup.leaf(name)}: {name}\n" in verdict, verdict
        assert ("OCSP Nonce" in verdict) is (not nonce)  # RFC 6960 4.4.1: echoed when asked
        if name == "revoked":
            assert "Reason: keyCompromise" in verdict


def test_openssl_refuses_the_answer_against_another_root(openssl: str, setup: Setup, tmp_path: Path) -> None:
    """Negative control for "Response verify OK": the signature must chain to the CA's root."""
    key = generate_key()
    stranger = create_root(key, subject="CN=Stranger Root", settings=CASettings(trust_domain="example.org"))
    anchor = tmp_path / "stranger.pem"
    anchor.write_bytes(stranger.public_bytes(serialization.Encoding.PEM))
    proc = run(
        openssl, "ocsp", "-issuer", setup.issuer, "-cert", setup.leaf("good"), "-url", f"{setup.url}/ocsp",
        "-CAfile", anchor, "-verify_other", setup.issuer,
    )
    assert proc.returncode != 0 and "Response Verify Failure" in proc.stderr, output(proc)


def test_an_ocsp_get_judged_by_openssl(openssl: str, setup: Setup, tmp_path: Path) -> None:
    curl = require_tool("curl")
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(setup.leaves["revoked"], setup.state.ca.intermediate, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    response = tmp_path / "get-resp.der"
    encoded = base64.b64encode(request).decode().replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    proc = run(curl, "-sS", "--fail", "-o", response, f"{setup.url}/ocsp/{encoded}")
    assert proc.returncode == 0, output(proc)
    proc = run(
        openssl, "ocsp", "-respin", response, "-issuer", setup.issuer, "-cert", setup.leaf("revoked"),
        "-CAfile", setup.root, "-verify_other", setup.issuer, "-no_nonce", "-resp_text",
    )
    verdict = output(proc)
    assert proc.returncode == 0 and "Response verify OK" in verdict, verdict
    assert f"{setup.leaf('revoked')}: revoked\n" in verdict, verdict


def test_openssl_crl_parses_the_served_crl_and_lists_the_revoked(
    openssl: str, setup: Setup, tmp_path: Path
) -> None:
    key_id = setup.state.revocation.issuer_key_id
    assert key_id is not None
    crl = tmp_path / "served.crl"
    crl.write_bytes(httpx.get(f"{setup.url}/crl/{key_id.hex()}.crl").raise_for_status().content)
    proc = run(openssl, "crl", "-inform", "DER", "-in", crl, "-noout", "-text", "-CAfile", setup.chain)
    text = output(proc)
    assert proc.returncode == 0 and "verify OK" in text, text
    serials = [line.split(":", 1)[1].strip() for line in text.splitlines() if "Serial Number:" in line]
    assert [int(s, 16) for s in serials] == [setup.leaves["revoked"].serial_number], text
    assert format(setup.leaves["good"].serial_number, "X") not in text
    assert "Key Compromise" in text


@pytest.mark.parametrize(("name", "refused"), [("good", False), ("revoked", True)])
def test_openssl_verify_follows_the_leaf_crl_distribution_point(
    openssl: str, setup: Setup, name: str, refused: bool
) -> None:
    proc = run(
        openssl, "verify", "-crl_check", "-crl_download", "-CAfile", setup.root,
        "-untrusted", setup.issuer, setup.leaf(name),
    )
    verdict = output(proc)
    if refused:
        assert proc.returncode != 0 and "certificate revoked" in verdict, verdict
    else:
        assert proc.returncode == 0 and ": OK" in verdict, verdict
