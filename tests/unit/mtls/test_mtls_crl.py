"""CrlSource from files: trust, refresh, keeping the last good CRL, failing closed."""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certwright.clock import FixedClock
from certwright.mtls.crl import CertificateRevoked, CrlError, CrlSource, RevocationUnknown
from support.pki import TestPKI

UTC = datetime.UTC
WEB = "spiffe://example.org/web"


@pytest.fixture
def pki() -> TestPKI:
    return TestPKI.create()


def write(path: Path, data: bytes) -> Path:
    """Replace ``path`` atomically (a new inode, as a CRL publisher does)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def source(pki: TestPKI, path: Path, **kwargs: object) -> CrlSource:
    return CrlSource(path, issuers=[pki.intermediate, pki.root], check_interval=0, **kwargs)  # type: ignore[arg-type]


def test_a_listed_serial_is_revoked_and_others_are_not(pki: TestPKI, tmp_path: Path) -> None:
    good, bad = pki.leaf(WEB), pki.leaf(WEB)
    pki.revoke(bad.serial)
    crls = source(pki, write(tmp_path / "ca.crl", pki.crl_pem()))
    crls.check(good.certificate)
    with pytest.raises(CertificateRevoked, match=r"certificate revoked: reason keyCompromise, at .*CN="):
        crls.check(bad.certificate)


def test_a_der_crl_file_works_too(pki: TestPKI, tmp_path: Path) -> None:
    leaf = pki.leaf(WEB)
    pki.revoke(leaf.serial)
    crls = source(pki, write(tmp_path / "ca.crl", pki.crl_der()))
    with pytest.raises(CertificateRevoked):
        crls.check(leaf.certificate)


def test_a_rewritten_file_is_picked_up(pki: TestPKI, tmp_path: Path) -> None:
    leaf = pki.leaf(WEB)
    path = write(tmp_path / "ca.crl", pki.crl_pem())
    crls = source(pki, path)
    crls.check(leaf.certificate)
    pki.revoke(leaf.serial)
    write(path, pki.crl_pem())
    with pytest.raises(CertificateRevoked):
        crls.check(leaf.certificate)


def test_the_file_is_not_looked_at_more_often_than_asked(pki: TestPKI, tmp_path: Path) -> None:
    # Negative control of the test above: with a long interval the change is not seen yet.
    leaf = pki.leaf(WEB)
    path = write(tmp_path / "ca.crl", pki.crl_pem())
    crls = CrlSource(path, issuers=[pki.intermediate], check_interval=3600)
    pki.revoke(leaf.serial)
    write(path, pki.crl_pem())
    crls.check(leaf.certificate)
    crls.refresh()  # an explicit refresh always reads
    with pytest.raises(CertificateRevoked):
        crls.check(leaf.certificate)


def test_a_corrupt_file_keeps_the_last_good_crl(
    pki: TestPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leaf = pki.leaf(WEB)
    pki.revoke(leaf.serial)
    path = write(tmp_path / "ca.crl", pki.crl_pem())
    crls = source(pki, path)
    caplog.set_level(logging.WARNING, logger="certwright.mtls")
    write(path, pki.crl_pem()[:200])  # half written
    with pytest.raises(CertificateRevoked):
        crls.check(leaf.certificate)
    assert any("not a valid CRL" in r.getMessage() for r in caplog.records)


def test_a_crl_with_a_bad_signature_is_refused(pki: TestPKI, tmp_path: Path) -> None:
    # The right issuer name and number, signed by another key: an attacker's "nothing is revoked".
    leaf = pki.leaf(WEB)
    pki.revoke(leaf.serial)
    path = write(tmp_path / "ca.crl", pki.crl_pem())
    crls = source(pki, path)
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    inter = pki.intermediate
    aki = inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(inter.subject)
        .last_update(now - datetime.timedelta(minutes=1))
        .next_update(now + datetime.timedelta(hours=1))
        .add_extension(x509.CRLNumber(99), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(aki), critical=False)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    write(path, forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateRevoked):  # the last good CRL still says revoked
        crls.check(leaf.certificate)
    # ... and with no good CRL before it, the forged one does not make anyone pass.
    fresh = source(pki, path)
    with pytest.raises(RevocationUnknown, match="invalid signature"):
        fresh.check(pki.leaf(WEB).certificate)


def test_an_older_crl_does_not_replace_a_newer_one(pki: TestPKI, tmp_path: Path) -> None:
    leaf = pki.leaf(WEB)
    old = pki.crl_pem()  # number 1: nothing revoked
    pki.revoke(leaf.serial)
    path = write(tmp_path / "ca.crl", pki.crl_pem())  # number 2: revoked
    crls = source(pki, path)
    write(path, old)  # a replay of the earlier, still unexpired CRL
    with pytest.raises(CertificateRevoked):
        crls.check(leaf.certificate)


def test_a_stale_crl_fails_closed(pki: TestPKI, tmp_path: Path) -> None:
    clock = FixedClock(datetime.datetime.now(UTC))
    path = write(tmp_path / "ca.crl", pki.crl_pem(next_update=datetime.timedelta(minutes=10)))
    crls = source(pki, path, clock=clock)
    leaf = pki.leaf(WEB).certificate
    crls.check(leaf)
    clock.advance(datetime.timedelta(minutes=30))
    with pytest.raises(RevocationUnknown, match="is stale"):
        crls.check(leaf)


def test_fail_open_is_explicit_and_logged(
    pki: TestPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FixedClock(datetime.datetime.now(UTC))
    path = write(tmp_path / "ca.crl", pki.crl_pem(next_update=datetime.timedelta(minutes=10)))
    crls = source(pki, path, clock=clock, fail_open=True)
    clock.advance(datetime.timedelta(minutes=30))
    caplog.set_level(logging.WARNING, logger="certwright.mtls")
    crls.check(pki.leaf(WEB).certificate)
    crls.check(pki.leaf(WEB).certificate)
    # By level and text: the INFO "CRL loaded from <tmp_path>" line names this test's directory.
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "allowed (fail_open)" in r.getMessage()
    ]
    assert len(warnings) == 1  # once per issuer, not per request


def test_a_crl_of_an_unknown_issuer_covers_nobody(pki: TestPKI, tmp_path: Path) -> None:
    other = TestPKI.create(name="Other")
    crls = source(pki, write(tmp_path / "ca.crl", other.crl_pem()))
    with pytest.raises(RevocationUnknown, match="no usable CRL"):
        crls.check(pki.leaf(WEB).certificate)


def test_one_file_may_hold_the_crls_of_several_issuers(pki: TestPKI, tmp_path: Path) -> None:
    other = TestPKI.create(name="Other")
    ours, theirs = pki.leaf(WEB), other.leaf(WEB)
    other.revoke(theirs.serial)
    path = write(tmp_path / "all.crl", b"junk before\n" + pki.crl_pem() + other.crl_pem())
    crls = CrlSource(path, issuers=[pki.intermediate, other.intermediate], check_interval=0)
    crls.check(ours.certificate)
    with pytest.raises(CertificateRevoked):
        crls.check(theirs.certificate)


def test_issuers_may_be_given_as_a_workload_chain_file(pki: TestPKI, tmp_path: Path) -> None:
    files = pki.leaf("spiffe://example.org/server").write(tmp_path / "server", pki.bundle_pem)
    leaf = pki.leaf(WEB)
    pki.revoke(leaf.serial)
    crls = CrlSource(write(tmp_path / "ca.crl", pki.crl_pem()), issuers=[files.cert, files.bundle])
    with pytest.raises(CertificateRevoked):
        crls.check(leaf.certificate)


def test_setup_errors_name_the_file(pki: TestPKI, tmp_path: Path) -> None:
    with pytest.raises(CrlError, match=r"missing\.crl"):
        CrlSource(tmp_path / "missing.crl", issuers=[pki.intermediate])
    with pytest.raises(CrlError, match=r"bad\.crl: not a valid CRL"):
        CrlSource(write(tmp_path / "bad.crl", b"nonsense"), issuers=[pki.intermediate])
    with pytest.raises(CrlError, match=r"no-issuers\.pem"):
        CrlSource(write(tmp_path / "ca.crl", pki.crl_pem()), issuers=[tmp_path / "no-issuers.pem"])
    with pytest.raises(CrlError, match="needs the certificates"):
        CrlSource(tmp_path / "ca.crl", issuers=[])
