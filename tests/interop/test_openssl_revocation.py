"""OpenSSL reads certwright's CRLs and OCSP responses and reaches the right verdicts.

For each key type a root issues three server leaves (to be kept good, revoked, and left
out of the inventory: unknown) and a delegated OCSP responder, on the real clock, since
openssl judges times against its own. CRLs go through ``openssl crl`` and
``openssl verify -crl_check``; OCSP requests are made by ``openssl ocsp -reqout``, answered
by :class:`OCSPResponder`, and judged by ``openssl ocsp -respin``. Each acceptance is paired
with a negative control: the same openssl call refusing when the input is wrong.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certwright.clock import SystemClock
from certwright.issuance import Authority, create_root
from certwright.revocation import (
    CertificateStatus,
    OCSPResponder,
    RevokedEntry,
    build_crl,
    issue_responder,
)
from certwright.x509.keys import KeyType, SigningKey, generate_key
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES, CASettings
from support.cli import KEY_TYPES
from support.interop import run

URL = "http://crl.example.org/interop.crl"
PEM = serialization.Encoding.PEM
HOUR = datetime.timedelta(hours=1)
REASONS = [r for r in x509.ReasonFlags if r is not x509.ReasonFlags.remove_from_crl]


@dataclass(frozen=True)
class RevocationPKI:
    dir: Path
    authority: Authority
    responder: x509.Certificate
    responder_key: SigningKey
    leaves: dict[str, x509.Certificate]  # "good", "revoked", "unknown"
    revoked_at: datetime.datetime

    @property
    def root(self) -> Path:
        return self.dir / "root.pem"

    def leaf(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def statuses(self) -> dict[int, CertificateStatus]:
        return {
            self.leaves["good"].serial_number: CertificateStatus.good(),
            self.leaves["revoked"].serial_number: CertificateStatus.revoked(
                self.revoked_at, x509.ReasonFlags.key_compromise
            ),
        }

    def crl(self, name: str, entries: list[RevokedEntry], **options: object) -> Path:
        """Write a CRL of this root as DER (``name.der``) and PEM (``name.pem``); return the DER path."""
        now = datetime.datetime.now(datetime.UTC)
        kwargs: dict[str, object] = {
            "crl_number": 1,
            "this_update": now - datetime.timedelta(minutes=5),
            "next_update": now + datetime.timedelta(days=1),
            "distribution_point": URL,
            **options,
        }
        data = build_crl(issuer=self.authority.certificate, key=self.authority.key, entries=entries, **kwargs)
        (self.dir / f"{name}.der").write_bytes(data)
        (self.dir / f"{name}.pem").write_bytes(x509.load_der_x509_crl(data).public_bytes(PEM))
        return self.dir / f"{name}.der"


@pytest.fixture(scope="module", params=KEY_TYPES)
def rpki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RevocationPKI:
    key_type = KeyType.parse(request.param)
    base = tmp_path_factory.mktemp(f"revocation-{request.param}")
    settings = CASettings(trust_domain="example.org", crl_urls=(URL,))
    key = generate_key(key_type)
    root = create_root(key, subject=f"CN=Revocation Root {key_type.value}", settings=settings)
    authority = Authority(certificate=root, key=key, settings=settings, clock=SystemClock())
    (base / "root.pem").write_bytes(root.public_bytes(PEM))
    leaves = {}
    for name in ("good", "revoked", "unknown"):
        leaves[name] = authority.issue(
            generate_key(key_type).public_key(),
            profile=BUILTIN_PROFILES["server"],
            sans=SubjectAltNames(dns=(f"{name}.example.org",)),
        )
        (base / f"{name}.pem").write_bytes(leaves[name].public_bytes(PEM))
    responder_key = generate_key(key_type)
    responder = issue_responder(authority, responder_key)
    (base / "responder.pem").write_bytes(responder.public_bytes(PEM))
    return RevocationPKI(
        base, authority, responder, responder_key, leaves, datetime.datetime.now(datetime.UTC) - HOUR
    )


def output(proc) -> str:
    return f"rc={proc.returncode}\n{proc.stdout}{proc.stderr}"


# --- CRL ---------------------------------------------------------------------------------------------


def test_openssl_crl_parses_and_verifies_every_crl(openssl, rpki):
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    crls = {
        "empty": rpki.crl("empty", []),
        "reasons": rpki.crl(
            "reasons", [RevokedEntry(1000 + i, now - i * HOUR, r) for i, r in enumerate([None, *REASONS])]
        ),
        "no-idp": rpki.crl("no-idp", [RevokedEntry(77, now)], distribution_point=None),
        "large": rpki.crl(
            "large", [RevokedEntry((1 << 126) + i, now) for i in range(5000)], crl_number=1 << 100
        ),
    }
    for name, path in crls.items():
        proc = run(openssl, "crl", "-inform", "DER", "-in", path, "-text", "-noout")
        assert proc.returncode == 0, f"{name}: {output(proc)}"
        assert "Version 2 (0x1)" in proc.stdout
        assert "X509v3 CRL Number" in proc.stdout
        assert "X509v3 Authority Key Identifier" in proc.stdout
        assert ("X509v3 Issuing Distribution Point: critical" in proc.stdout) is (name != "no-idp")
        proc = run(openssl, "crl", "-inform", "DER", "-in", path, "-CAfile", rpki.root, "-noout")
        assert proc.returncode == 0 and "verify OK" in proc.stderr, f"{name}: {output(proc)}"
    text = run(openssl, "crl", "-inform", "DER", "-in", crls["empty"], "-text", "-noout").stdout
    assert "No Revoked Certificates." in text
    text = run(openssl, "crl", "-inform", "DER", "-in", crls["reasons"], "-text", "-noout").stdout
    for label in ("Key Compromise", "CA Compromise", "Certificate Hold", "Superseded", "AA Compromise"):
        assert label in text
    assert "Unspecified" not in text  # RFC 5280 5.3.1: left out
    assert text.count("Serial Number:") == len(REASONS) + 1
    assert f"URI:{URL}" in text


def test_openssl_crl_refuses_a_tampered_signature(openssl, rpki):
    """Negative control for the 'verify OK' above."""
    path = rpki.crl("tampered", [RevokedEntry(5, datetime.datetime.now(datetime.UTC))])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the signature value
    path.write_bytes(bytes(data))
    proc = run(openssl, "crl", "-inform", "DER", "-in", path, "-CAfile", rpki.root, "-noout")
    assert "verify failure" in proc.stderr, output(proc)


def crl_verify(openssl: str, rpki: RevocationPKI, leaf: str, crl: str, *options: str) -> str:
    proc = run(
        openssl,
        "verify",
        "-x509_strict",
        *options,
        "-CAfile",
        rpki.root,
        "-CRLfile",
        rpki.dir / f"{crl}.pem",
        rpki.leaf(leaf),
    )
    return output(proc)


def test_openssl_verify_refuses_the_revoked_leaf_and_accepts_the_good_one(openssl, rpki):
    revoked = rpki.leaves["revoked"]
    rpki.crl(
        "current", [RevokedEntry(revoked.serial_number, rpki.revoked_at, x509.ReasonFlags.key_compromise)]
    )
    refused = crl_verify(openssl, rpki, "revoked", "current", "-crl_check")
    assert not refused.startswith("rc=0") and "certificate revoked" in refused, refused
    accepted = crl_verify(openssl, rpki, "good", "current", "-crl_check")
    assert accepted.startswith("rc=0") and ": OK" in accepted, accepted
    # Controls: without -crl_check the revoked leaf passes, so the refusal came from the CRL...
    assert crl_verify(openssl, rpki, "revoked", "current").startswith("rc=0")
    # ...and a CRL scoped to another distribution point does not cover these leaves (the
    # issuingDistributionPoint is matched against their CRL distribution point, RFC 5280 5.2.5).
    rpki.crl(
        "elsewhere",
        [RevokedEntry(revoked.serial_number, rpki.revoked_at)],
        distribution_point="http://crl.example.org/other.crl",
    )
    other = crl_verify(openssl, rpki, "good", "elsewhere", "-crl_check")
    assert not other.startswith("rc=0") and "different CRL scope" in other, other


def test_openssl_verify_refuses_a_stale_crl(openssl, rpki):
    now = datetime.datetime.now(datetime.UTC)
    rpki.crl("stale", [], this_update=now - 2 * HOUR, next_update=now - HOUR)
    stale = crl_verify(openssl, rpki, "good", "stale", "-crl_check")
    assert not stale.startswith("rc=0") and "CRL has expired" in stale, stale


# --- OCSP --------------------------------------------------------------------------------------------


@pytest.fixture
def responder(rpki) -> OCSPResponder:
    class Source:
        def lookup(self, serial: int) -> CertificateStatus | None:
            return rpki.statuses().get(serial)

    return OCSPResponder(
        issuer=rpki.authority.certificate,
        responder=rpki.responder,
        responder_key=rpki.responder_key,
        source=Source(),
        clock=SystemClock(),
    )


def ask(openssl: str, rpki: RevocationPKI, responder: OCSPResponder, name: str, *options: str) -> Path:
    """``openssl ocsp -reqout`` for leaf ``name``, answered by ``responder``; returns the request path."""
    request = rpki.dir / f"{name}-req.der"
    proc = run(openssl, "ocsp", "-issuer", rpki.root, *options, "-cert", rpki.leaf(name), "-reqout", request)
    assert proc.returncode == 0, output(proc)
    (rpki.dir / f"{name}-resp.der").write_bytes(responder.respond(request.read_bytes()))
    return request


def judge(openssl: str, rpki: RevocationPKI, name: str, *options: str, trust: str = "-CAfile") -> str:
    """``openssl ocsp -respin`` on the answer for leaf ``name``: status lines and verdict."""
    anchor = rpki.root if trust == "-CAfile" else rpki.dir / "responder.pem"
    proc = run(
        openssl,
        "ocsp",
        "-respin",
        rpki.dir / f"{name}-resp.der",
        "-issuer",
        rpki.root,
        *options,
        "-cert",
        rpki.leaf(name),
        trust,
        anchor,
        "-no_nonce",  # the nonce is checked against the request in test_openssl_checks_the_nonce
        "-resp_text",
    )
    return output(proc)


@pytest.mark.parametrize("digest", [(), ("-sha256",)], ids=["sha1", "sha256"])
@pytest.mark.parametrize("nonce", [(), ("-no_nonce",)], ids=["nonce", "no-nonce"])
@pytest.mark.parametrize("trust", ["-CAfile", "-VAfile"])
def test_openssl_reads_good_revoked_unknown(openssl, rpki, responder, digest, nonce, trust):
    for name, status in (("good", "good"), ("revoked", "revoked"), ("unknown", "unknown")):
        ask(openssl, rpki, responder, name, *digest, *nonce)
        verdict = judge(openssl, rpki, name, *digest, trust=trust)
        assert verdict.startswith("rc=0"), verdict
        assert "Response verify OK" in verdict, verdict
        assert f"{rpki.leaf(name)}: {status}\n" in verdict, verdict
        assert ("OCSP Nonce" in verdict) is (not nonce)  # echoed when asked for (RFC 6960 4.4.1)
        if status == "revoked":
            assert "Reason: keyCompromise" in verdict
            assert "Revocation Time:" in verdict
        assert "Next Update:" in verdict


def test_openssl_checks_the_nonce(openssl, rpki, responder):
    request = ask(openssl, rpki, responder, "good")
    response = rpki.dir / "good-resp.der"
    proc = run(openssl, "ocsp", "-respin", response, "-reqin", request, "-CAfile", rpki.root)
    assert proc.returncode == 0 and "Response verify OK" in proc.stderr, output(proc)
    assert "Nonce Verify error" not in proc.stderr
    # Control: the same response against another request (another nonce) is refused.
    other = rpki.dir / "other-req.der"
    run(openssl, "ocsp", "-issuer", rpki.root, "-cert", rpki.leaf("good"), "-reqout", other)
    proc = run(openssl, "ocsp", "-respin", response, "-reqin", other, "-CAfile", rpki.root)
    assert proc.returncode != 0 and "Nonce Verify error" in proc.stderr, output(proc)


def test_openssl_refuses_a_response_it_cannot_chain(openssl, rpki, responder):
    """Negative control for 'Response verify OK': trusting a leaf instead of the root fails."""
    ask(openssl, rpki, responder, "good", "-no_nonce")
    proc = run(
        openssl,
        "ocsp",
        "-respin",
        rpki.dir / "good-resp.der",
        "-issuer",
        rpki.root,
        "-cert",
        rpki.leaf("good"),
        "-CAfile",
        rpki.leaf("unknown"),
        "-no_nonce",
    )
    assert proc.returncode != 0 and "Response Verify Failure" in proc.stderr, output(proc)


def test_two_certificates_in_one_request_are_malformed(openssl, rpki, responder):
    # RFC 5019 2.1.1: one Request per OCSPRequest; certwright refuses the others.
    request = rpki.dir / "two-req.der"
    proc = run(
        openssl,
        "ocsp",
        "-issuer",
        rpki.root,
        "-cert",
        rpki.leaf("good"),
        "-cert",
        rpki.leaf("revoked"),
        "-reqout",
        request,
    )
    assert proc.returncode == 0, output(proc)
    response = rpki.dir / "two-resp.der"
    response.write_bytes(responder.respond(request.read_bytes()))
    proc = run(openssl, "ocsp", "-respin", response, "-resp_text", "-noverify")
    assert "malformedrequest" in output(proc).lower(), output(proc)


def test_another_issuers_certificate_is_unauthorized(openssl, rpki, responder, tmp_path):
    settings = CASettings(trust_domain="example.org")
    key = generate_key()
    stranger = create_root(key, subject="CN=Stranger Root", settings=settings)
    (tmp_path / "stranger.pem").write_bytes(stranger.public_bytes(PEM))
    request = tmp_path / "req.der"
    run(openssl, "ocsp", "-issuer", tmp_path / "stranger.pem", "-cert", rpki.leaf("good"), "-reqout", request)
    response = tmp_path / "resp.der"
    response.write_bytes(responder.respond(request.read_bytes()))
    proc = run(openssl, "ocsp", "-respin", response, "-resp_text", "-noverify")
    assert "unauthorized" in output(proc).lower(), output(proc)
