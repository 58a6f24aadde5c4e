"""OpenSSL reads and accepts everything certwright writes, for every key type.

Each acceptance is paired with a negative control showing that the same openssl call does
refuse when the input is wrong, so a pass proves the certificates are right rather than
openssl being lenient.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certwright.files import read_certificates, read_private_key
from certwright.issuance import create_root
from certwright.x509.keys import generate_key
from certwright.x509.profiles import CASettings
from support.certs import spki
from support.cli import PASSPHRASE_ENV, TRUST_DOMAIN, ZONE
from support.interop import EXTENSION_OID, P12_PASSPHRASE, PASSPHRASE, PKI, WEB, run

PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
PEM_KEY = re.compile(r"-----BEGIN PRIVATE KEY-----.+?-----END PRIVATE KEY-----", re.S)
KEY_ALGORITHM = {
    "ec-p256": "id-ecPublicKey",
    "ec-p384": "id-ecPublicKey",
    "ed25519": "ED25519",
    "rsa-2048": "rsaEncryption",
}


def pem(prefix: Path) -> Path:
    return Path(f"{prefix}.pem")


def openssl_verify(openssl: str, pki: PKI, leaf: Path, *options: str, bundle: Path | None = None) -> str:
    """``openssl verify -x509_strict`` of ``leaf``; returns the combined output (asserts nothing)."""
    proc = run(
        openssl,
        "verify",
        "-x509_strict",
        *options,
        "-CAfile",
        bundle or pki.bundle,
        "-untrusted",
        pki.intermediate,
        leaf,
    )
    return f"rc={proc.returncode}\n{proc.stdout}{proc.stderr}"


# --- openssl verify ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leaf", "purposes"),
    [
        ("mtls", ("sslserver", "sslclient")),
        ("server", ("sslserver",)),
        ("client", ("sslclient",)),
        ("ocsp", ("any",)),
    ],
)
def test_openssl_verify_accepts_the_chain(
    openssl: str, pki: PKI, leaf: str, purposes: tuple[str, ...]
) -> None:
    for purpose in purposes:
        result = openssl_verify(openssl, pki, pem(getattr(pki, leaf)), "-purpose", purpose)
        assert result.startswith("rc=0") and ": OK" in result, f"{pki.key_type} {leaf} {purpose}: {result}"


def test_openssl_verify_checks_the_host_name_and_ip(openssl: str, pki: PKI) -> None:
    ok = openssl_verify(
        openssl, pki, pem(pki.server), "-purpose", "sslserver", "-verify_hostname", f"api.{ZONE}"
    )
    assert ok.startswith("rc=0"), ok
    ok_ip = openssl_verify(openssl, pki, pem(pki.server), "-verify_ip", "127.0.0.1")
    assert ok_ip.startswith("rc=0"), ok_ip
    wrong = openssl_verify(openssl, pki, pem(pki.server), "-verify_hostname", f"other.{ZONE}")
    assert not wrong.startswith("rc=0") and "hostname mismatch" in wrong, wrong


def test_openssl_verify_refuses_the_wrong_purpose(openssl: str, pki: PKI) -> None:
    # negative control for the purposes above
    server_as_client = openssl_verify(openssl, pki, pem(pki.server), "-purpose", "sslclient")
    assert not server_as_client.startswith("rc=0") and "unsuitable certificate purpose" in server_as_client
    client_as_server = openssl_verify(openssl, pki, pem(pki.client), "-purpose", "sslserver")
    assert not client_as_server.startswith("rc=0") and "unsuitable certificate purpose" in client_as_server


def test_openssl_verify_refuses_a_foreign_root(openssl: str, pki: PKI, tmp_path: Path) -> None:
    # negative control: a root with the same name as the real one but another key
    real_root = read_certificates(pki.bundle)[0]
    settings = CASettings(trust_domain=TRUST_DOMAIN)
    impostor = create_root(generate_key(), subject=real_root.subject, settings=settings)
    (tmp_path / "impostor.pem").write_bytes(impostor.public_bytes(serialization.Encoding.PEM))
    result = openssl_verify(openssl, pki, pem(pki.mtls), bundle=tmp_path / "impostor.pem")
    assert not result.startswith("rc=0"), result
    # OpenSSL matches issuers by key identifier too, so the impostor is not even a candidate.
    assert "unable to get local issuer certificate" in result or "signature failure" in result, result


def test_openssl_verify_refuses_a_leaf_outside_the_name_constraints(openssl: str, pki: PKI) -> None:
    result = openssl_verify(openssl, pki, pki.evil)
    assert not result.startswith("rc=0"), result
    assert "permitted subtree violation" in result


# --- openssl x509 -text --------------------------------------------------------------------------


def x509_text(openssl: str, path: Path) -> str:
    proc = run(openssl, "x509", "-in", path, "-noout", "-text")
    assert proc.returncode == 0, proc.stderr
    assert "unable to load" not in proc.stderr.lower()
    return proc.stdout


def test_openssl_parses_root_and_intermediate(openssl: str, pki: PKI) -> None:
    root = x509_text(openssl, pki.ca / "root.pem")
    assert "CA:TRUE" in root and KEY_ALGORITHM[pki.key_type] in root
    intermediate = x509_text(openssl, pki.intermediate)
    assert "X509v3 Name Constraints: critical" in intermediate
    assert "Permitted:" in intermediate
    assert f"URI:{TRUST_DOMAIN}" in intermediate and f"DNS:{ZONE}" in intermediate
    assert "pathlen:0" in intermediate


def test_openssl_parses_the_leaves(openssl: str, pki: PKI) -> None:
    web = x509_text(openssl, pem(pki.mtls))
    assert f"URI:{WEB}" in web and f"DNS:web.{ZONE}" in web and "IP Address:10.0.0.7" in web
    assert f"{EXTENSION_OID}:" in web, "the certwright authorization extension is shown by its OID"
    assert f"{EXTENSION_OID}: critical" not in web
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in web
    assert KEY_ALGORITHM[pki.key_type] in web
    for prefix in (pki.server, pki.client, pki.ocsp):
        x509_text(openssl, pem(prefix))
    assert "OCSP No Check" in x509_text(openssl, pem(pki.ocsp))
    chain = Path(f"{pki.mtls}.chain.pem")
    # openssl x509 reads the first certificate of a chain file: the leaf
    assert f"URI:{WEB}" in x509_text(openssl, chain)


# --- openssl req -verify -------------------------------------------------------------------------


def test_openssl_accepts_certwright_csrs(openssl: str, pki: PKI) -> None:
    proc = run(openssl, "req", "-in", pki.csr, "-verify", "-noout", "-text")
    assert proc.returncode == 0, proc.stderr
    assert "verify OK" in proc.stdout + proc.stderr
    assert f"URI:{WEB}" in proc.stdout and f"DNS:web.{ZONE}" in proc.stdout


def test_openssl_refuses_a_tampered_csr(openssl: str, pki: PKI, tmp_path: Path) -> None:
    # negative control: one flipped signature byte
    der = bytearray(x509.load_pem_x509_csr(pki.csr.read_bytes()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    (tmp_path / "bad.der").write_bytes(bytes(der))
    proc = run(openssl, "req", "-in", tmp_path / "bad.der", "-inform", "DER", "-verify", "-noout")
    # OpenSSL 3.0 prints the failure but still exits 0, so the message is what is checked
    # (here and, as "verify OK", in the success case above).
    assert "verify failure" in proc.stdout + proc.stderr
    assert "verify OK" not in proc.stdout + proc.stderr


# --- openssl pkey ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["root", "intermediate"])
def test_openssl_opens_the_encrypted_ca_keys(openssl: str, pki: PKI, name: str) -> None:
    proc = run(
        openssl,
        "pkey",
        "-in",
        pki.ca / f"{name}.key",
        "-passin",
        f"env:{PASSPHRASE_ENV}",
        "-pubout",
        env={PASSPHRASE_ENV: PASSPHRASE},
    )
    assert proc.returncode == 0, proc.stderr
    public = serialization.load_pem_public_key(proc.stdout.encode())
    assert spki(public) == spki(read_certificates(pki.ca / f"{name}.pem")[0].public_key())


def test_openssl_refuses_the_wrong_ca_passphrase(openssl: str, pki: PKI) -> None:
    proc = run(
        openssl, "pkey", "-in", pki.ca / "intermediate.key", "-passin", "pass:not the passphrase", "-noout"
    )
    assert proc.returncode != 0


def test_openssl_reads_unencrypted_leaf_keys(openssl: str, pki: PKI) -> None:
    proc = run(openssl, "pkey", "-in", f"{pki.mtls}.key", "-pubout")
    assert proc.returncode == 0, proc.stderr
    public = serialization.load_pem_public_key(proc.stdout.encode())
    assert spki(public) == spki(read_certificates(pem(pki.mtls))[0].public_key())


# --- openssl pkcs12 -------------------------------------------------------------------------------


def test_openssl_reads_certwright_pkcs12(openssl: str, pki: PKI) -> None:
    passin = f"file:{pki.p12_passphrase_file}"
    info = run(openssl, "pkcs12", "-in", pki.p12, "-info", "-noenc", "-passin", passin)
    assert info.returncode == 0, info.stderr
    assert "friendlyName: web" in info.stdout + info.stderr
    assert "PBES2" in info.stdout + info.stderr, "keys in the PKCS#12 file are encrypted with PBES2"
    certs = [x509.load_pem_x509_certificate(m.encode()) for m in PEM_CERT.findall(info.stdout)]
    assert read_certificates(pem(pki.mtls))[0] in certs
    assert read_certificates(pki.intermediate)[0] in certs
    keys = PEM_KEY.findall(info.stdout)
    assert len(keys) == 1
    key = serialization.load_pem_private_key(keys[0].encode(), None)
    assert spki(key.public_key()) == spki(read_private_key(Path(f"{pki.mtls}.key")).public_key())


def test_openssl_refuses_the_wrong_pkcs12_passphrase(openssl: str, pki: PKI) -> None:
    assert P12_PASSPHRASE != "wrong"
    proc = run(openssl, "pkcs12", "-in", pki.p12, "-info", "-noenc", "-passin", "pass:wrong")
    assert proc.returncode != 0
    assert "BEGIN PRIVATE KEY" not in proc.stdout
