"""openssl reads what the inventory CLI publishes: ``certwright crl`` and ``certwright ocsp``.

A CA per backend (its own SQLite file; a PostgreSQL database through ``--db``) issues a
good, a revoked (keyCompromise) and a held (certificateHold) leaf through the CLI; an
"unknown" leaf is signed by the same intermediate with :mod:`certwright.issuance` directly
and never recorded. ``openssl crl`` parses every CRL and lists exactly the revoked serials
with their reasons; ``openssl verify -crl_check`` uses it; OCSP requests are built by
``openssl ocsp -reqout``, answered by ``certwright ocsp``, and judged by
``openssl ocsp -respin``, which must print "Response verify OK" and the right status.
Each acceptance has a negative control (a wrong trust anchor is refused).
"""

from __future__ import annotations

import contextlib
import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certwright.cadir import open_ca
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import generate_key
from support.cli import PASSPHRASE, TRUST_DOMAIN, run_cli
from support.interop import run
from support.postgres import postgres_database

CRL_URL = "http://crl.example.org/interop-inventory.crl"
NS = f"spiffe://{TRUST_DOMAIN}/ns/interop"


@dataclass(frozen=True)
class PKI:
    dir: Path
    ca: Path
    db: tuple[str, ...]  # () for the CA's own SQLite file, ("--db", URL) for PostgreSQL
    serials: dict[str, int]  # good, revoked, held, unknown

    def leaf(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    @property
    def root(self) -> Path:
        return self.ca / "root.pem"

    @property
    def intermediate(self) -> Path:
        return self.ca / "intermediate.pem"

    def cli(self, *args: str | Path) -> str:
        outcome = run_cli(*args, "--ca", self.ca, *self.db)
        assert outcome.code == 0, outcome
        return outcome.stdout


def cli(*args: str | Path) -> str:
    outcome = run_cli(*args)
    assert outcome.code == 0, outcome
    return outcome.stdout


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PKI]:
    with contextlib.ExitStack() as stack:
        base = tmp_path_factory.mktemp(f"interop-inventory-{request.param}")
        db: tuple[str, ...] = ()
        if request.param == "postgresql":
            url = stack.enter_context(postgres_database("certwright_interop"))
            cli("db", "upgrade", "--db", url)
            db = ("--db", url)
        ca = base / "ca"
        cli(
            "ca",
            "init",
            "--dir",
            ca,
            "--name",
            "Interop Inventory",
            "--trust-domain",
            TRUST_DOMAIN,
            "--crl-url",
            CRL_URL,
            *db,
        )
        serials = {}
        for name in ("good", "revoked", "held"):
            out = cli(
                "issue", "--ca", ca, "--profile", "mtls", "--identity", f"{NS}/{name}", "--out", base / name
            )
            assert out.startswith("issued")
            serials[name] = x509.load_pem_x509_certificate((base / f"{name}.pem").read_bytes()).serial_number
        pki = PKI(base, ca, db, serials)
        pki.cli("revoke", f"{serials['revoked']:x}", "--reason", "keyCompromise")
        pki.cli("revoke", f"{serials['held']:x}", "--reason", "certificateHold")
        # Same issuer, never recorded: the responder must say "unknown", the CRL must not list it.
        authority = open_ca(ca, passphrase=PASSPHRASE.encode()).authority
        assert authority is not None
        stranger = authority.issue(
            generate_key().public_key(),
            profile=open_ca(ca).profile("mtls"),
            identity=SpiffeId.parse(f"{NS}/unknown"),
        )
        pki.leaf("unknown").write_bytes(stranger.public_bytes(serialization.Encoding.PEM))
        serials["unknown"] = stranger.serial_number
        yield pki


@pytest.fixture(scope="module")
def stranger_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed root with the real root's name but its own key: the wrong trust anchor."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Interop Inventory Root CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("stranger") / "root.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def openssl_hex(serial: int) -> str:
    """A serial as openssl prints it: upper-case hex, whole octets."""
    text = f"{serial:X}"
    return "0" * (len(text) % 2) + text


def crl_number(text: str) -> int:
    match = re.search(r"X509v3 CRL Number:\s*\n\s*(\d+)", text)
    assert match, text
    return int(match.group(1))


def entries(text: str) -> dict[str, str]:
    """serial (openssl hex) -> reason, from ``openssl crl -text``."""
    found = re.findall(
        r"Serial Number: ([0-9A-F]+)\s+Revocation Date: [^\n]+\s+CRL entry extensions:\s+"
        r"X509v3 CRL Reason Code:\s+([^\n]+)",
        text,
    )
    return {serial: reason.strip() for serial, reason in found}


def test_openssl_crl_parses_every_crl_and_lists_the_revoked_serials_and_reasons(
    pki: PKI, openssl: str
) -> None:
    der = pki.dir / "inventory.crl"
    pki.cli("crl", "--out", der, "--force")
    parsed = run(openssl, "crl", "-inform", "DER", "-in", der, "-noout", "-text")
    assert parsed.returncode == 0, parsed.stderr
    listed = entries(parsed.stdout)
    assert listed == {
        openssl_hex(pki.serials["revoked"]): "Key Compromise",
        openssl_hex(pki.serials["held"]): "Certificate Hold",
    }
    assert openssl_hex(pki.serials["good"]) not in parsed.stdout
    assert openssl_hex(pki.serials["unknown"]) not in parsed.stdout
    assert "X509v3 Issuing Distribution Point" in parsed.stdout and CRL_URL in parsed.stdout
    assert "Issuer: CN = Interop Inventory Issuing CA" in parsed.stdout
    first = crl_number(parsed.stdout)
    # Signed by the intermediate: openssl checks the signature against it.
    chain = pki.dir / "chain.pem"
    chain.write_bytes(pki.intermediate.read_bytes() + pki.root.read_bytes())
    verified = run(openssl, "crl", "-inform", "DER", "-in", der, "-CAfile", chain, "-noout")
    assert verified.returncode == 0 and "verify OK" in verified.stderr, verified.stderr
    wrong = run(openssl, "crl", "-inform", "DER", "-in", der, "-CAfile", pki.root, "-noout")
    assert wrong.returncode != 0 and "verify OK" not in wrong.stderr  # the root did not sign it

    # Every call takes the next number; PEM parses the same.
    pem = pki.dir / "inventory.crl.pem"
    pki.cli("crl", "--out", pem, "--pem", "--force")
    again = run(openssl, "crl", "-in", pem, "-noout", "-text")
    assert again.returncode == 0, again.stderr
    assert crl_number(again.stdout) == first + 1
    assert entries(again.stdout) == listed
    pki.cli("crl", "--out", der, "--force")
    third = run(openssl, "crl", "-inform", "DER", "-in", der, "-noout", "-text")
    assert crl_number(third.stdout) == first + 2


def test_openssl_verify_uses_the_crl(pki: PKI, openssl: str) -> None:
    crl = pki.dir / "verify.crl.pem"
    pki.cli("crl", "--out", crl, "--pem", "--force")

    def verify(name: str, root: Path = pki.root) -> tuple[int, str]:
        done = run(
            openssl,
            "verify",
            "-crl_check",
            "-CAfile",
            root,
            "-untrusted",
            pki.intermediate,
            "-CRLfile",
            crl,
            pki.leaf(name),
        )
        return done.returncode, done.stdout + done.stderr

    assert verify("good") == (0, f"{pki.leaf('good')}: OK\n")
    for name in ("revoked", "held"):
        code, text = verify(name)
        assert code != 0 and "certificate revoked" in text, text


def ocsp_exchange(pki: PKI, openssl: str, name: str, *, digest: str = "-sha1") -> tuple[Path, Path]:
    """An openssl-built request (with a nonce) for leaf ``name``, answered by certwright."""
    request, response = pki.dir / f"{name}{digest}.req", pki.dir / f"{name}{digest}.resp"
    built = run(
        openssl, "ocsp", digest, "-issuer", pki.intermediate, "-cert", pki.leaf(name), "-reqout", request
    )
    assert built.returncode == 0, built.stderr
    pki.cli("ocsp", "--request", request, "--out", response, "--force")
    return request, response


def judge(
    pki: PKI, openssl: str, name: str, response: Path, *, root: Path | None = None
) -> tuple[int, str, str]:
    done = run(
        openssl,
        "ocsp",
        "-respin",
        response,
        "-CAfile",
        root or pki.root,
        "-verify_other",
        pki.intermediate,
        "-issuer",
        pki.intermediate,
        "-cert",
        pki.leaf(name),
        "-no_nonce",
    )
    return done.returncode, done.stdout, done.stderr


EXPECTED = {
    "good": ("good", None),
    "revoked": ("revoked", "keyCompromise"),
    "held": ("revoked", "certificateHold"),
    "unknown": ("unknown", None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_openssl_ocsp_accepts_the_response_and_reports_the_status(
    pki: PKI, openssl: str, stranger_root: Path, name: str
) -> None:
    request, response = ocsp_exchange(pki, openssl, name)
    code, out, err = judge(pki, openssl, name, response)
    status, reason = EXPECTED[name]
    assert code == 0, err
    assert "Response verify OK" in err
    assert out.startswith(f"{pki.leaf(name)}: {status}\n"), out
    if reason:
        assert f"Reason: {reason}" in out
    else:
        assert "Reason:" not in out
    # The response echoes the request's nonce: openssl checks it when given the request.
    paired = run(
        openssl,
        "ocsp",
        "-respin",
        response,
        "-reqin",
        request,
        "-CAfile",
        pki.root,
        "-verify_other",
        pki.intermediate,
    )
    assert paired.returncode == 0 and "Response verify OK" in paired.stderr, paired.stderr
    # Negative control: the same response against a trust anchor that did not sign it.
    code, out, err = judge(pki, openssl, name, response, root=stranger_root)
    assert "Response Verify Failure" in err, err


def test_openssl_ocsp_with_a_sha256_cert_id(pki: PKI, openssl: str) -> None:
    _, response = ocsp_exchange(pki, openssl, "revoked", digest="-sha256")
    done = run(
        openssl,
        "ocsp",
        "-respin",
        response,
        "-CAfile",
        pki.root,
        "-verify_other",
        pki.intermediate,
        "-issuer",
        pki.intermediate,
        "-sha256",  # before -cert: the CertID it builds to match the response's
        "-cert",
        pki.leaf("revoked"),
        "-no_nonce",
    )
    assert done.returncode == 0 and "Response verify OK" in done.stderr, done.stderr
    assert f"{pki.leaf('revoked')}: revoked" in done.stdout


def test_a_lifted_hold_is_good_again_for_openssl(pki: PKI, openssl: str) -> None:
    held = f"{pki.serials['held']:x}"
    pki.cli("unrevoke", held)
    try:
        _, response = ocsp_exchange(pki, openssl, "held")
        code, out, err = judge(pki, openssl, "held", response)
        assert code == 0 and "Response verify OK" in err, err
        assert out.startswith(f"{pki.leaf('held')}: good\n"), out
        crl = pki.dir / "lifted.crl"
        pki.cli("crl", "--out", crl, "--force")
        text = run(openssl, "crl", "-inform", "DER", "-in", crl, "-noout", "-text").stdout
        assert openssl_hex(pki.serials["held"]) not in entries(text)
    finally:
        pki.cli("revoke", held, "--reason", "certificateHold")


def test_openssl_reads_the_malformed_request_answer(pki: PKI, openssl: str) -> None:
    request = pki.dir / "garbage.req"
    request.write_bytes(b"not an OCSP request")
    response = pki.dir / "garbage.resp"
    outcome = run_cli("ocsp", "--request", request, "--out", response, "--force", "--ca", pki.ca, *pki.db)
    assert outcome.code == 1 and "malformed_request" in outcome.stdout
    shown = run(openssl, "ocsp", "-respin", response, "-resp_text", "-noverify")
    assert "Responder Error: malformedrequest (1)" in shown.stdout + shown.stderr
