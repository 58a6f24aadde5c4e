"""CertificateService on a real SQLite inventory: what it returns is stored and audited, or nothing is."""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from service_helpers import MTLS, NS, assert_chain_intact, events, issue, snapshot

from certwright.batch import BatchRequest
from certwright.clock import FixedClock
from certwright.errors import CertwrightError, PolicyViolation
from certwright.issuance import Authority
from certwright.service import BatchRefusedError, CertificateService
from certwright.store import CertificateFilter, CertificateStatus, DuplicateCertificateError, Store
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import generate_key
from support.certs import write_csr, write_tampered_csr

DER = serialization.Encoding.DER


def test_issue_returns_a_certificate_already_stored_and_audited(
    certificates: CertificateService, store: Store
) -> None:
    before = snapshot(store)
    cert = issue(certificates, "web")
    record = certificates.get(cert.serial_number)
    assert record is not None
    assert record.der == cert.public_bytes(DER)
    assert (record.identity, record.profile, record.requested_by) == (f"{NS}/web", "mtls", "test:alice")
    assert record.status is CertificateStatus.GOOD
    assert record.created_at == certificates.clock.now()
    [(kind, subject, actor, details)] = events(store, before.head[0])
    assert (kind, subject, actor) == ("issued", f"{cert.serial_number:x}", "test:alice")
    assert details["fingerprint_sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    assert details["identity"] == f"{NS}/web" and details["profile"] == "mtls"
    assert_chain_intact(store)


def test_a_refused_issuance_stores_and_audits_nothing(certificates: CertificateService, store: Store) -> None:
    before = snapshot(store)
    with pytest.raises(PolicyViolation):
        certificates.issue(
            generate_key().public_key(), profile=MTLS, identity=SpiffeId.parse("spiffe://evil.example/x")
        )
    with pytest.raises(PolicyViolation):
        certificates.issue(generate_key().public_key(), profile=MTLS, lifetime=datetime.timedelta(days=365))
    assert snapshot(store) == before


def test_issuing_needs_the_authority(store: Store) -> None:
    read_only = CertificateService(store=store)
    with pytest.raises(CertwrightError, match="needs the CA key"):
        read_only.issue(generate_key().public_key(), profile=MTLS, identity=SpiffeId.parse(f"{NS}/x"))


def test_when_the_audit_append_fails_the_certificate_row_is_rolled_back_too(
    certificates: CertificateService, store: Store, database: Path
) -> None:
    """A real failure inside the transaction, after the certificate row was written: nothing stays."""
    before = snapshot(store)
    with sqlite3.connect(database) as raw:
        raw.execute(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit log is refusing writes'); END"
        )
    with pytest.raises(sa.exc.DBAPIError, match="audit log is refusing writes"):
        issue(certificates, "unlucky")
    assert snapshot(store) == before  # no certificate row without its audit event
    with sqlite3.connect(database) as raw:
        raw.execute("DROP TRIGGER refuse_audit")
    issue(certificates, "lucky")
    assert len(snapshot(store).rows) == len(before.rows) + 1


def test_sign_csr_stores_the_certificate_for_the_requests_key(
    certificates: CertificateService, store: Store, tmp_path: Path
) -> None:
    request = write_csr(tmp_path / "a.csr", uris=(f"{NS}/from-csr",))
    cert = certificates.sign_csr(request, profile=MTLS)
    assert cert.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo) == (
        request.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    record = certificates.get(cert.serial_number)
    assert record is not None and record.identity == f"{NS}/from-csr"
    # A CSR whose signature does not verify is refused before anything is stored.
    before = snapshot(store)
    write_tampered_csr(tmp_path / "bad.csr", uri=f"{NS}/tampered")
    tampered = x509.load_der_x509_csr((tmp_path / "bad.csr").read_bytes())
    with pytest.raises(CertwrightError):
        certificates.sign_csr(tampered, profile=MTLS)
    assert snapshot(store) == before


def test_record_issued_is_all_or_nothing(
    certificates: CertificateService, store: Store, authority: Authority
) -> None:
    def signed(name: str) -> x509.Certificate:  # signed outside the service: not recorded
        return authority.issue(
            generate_key().public_key(), profile=MTLS, identity=SpiffeId.parse(f"{NS}/{name}")
        )

    a, b, c = signed("a"), signed("b"), signed("c")
    before = snapshot(store)
    with pytest.raises(DuplicateCertificateError):
        certificates.record_issued([a, b, a], profile="mtls")  # a duplicate inside the batch
    assert snapshot(store) == before
    stored = issue(certificates, "stored")
    before = snapshot(store)
    with pytest.raises(DuplicateCertificateError):
        certificates.record_issued([c, stored], profile="mtls")  # one already in the inventory
    assert snapshot(store) == before
    certificates.record_issued([a, b, c], profile="batch")
    after = snapshot(store)
    assert len(after.rows) == len(before.rows) + 3
    recorded = events(store, before.head[0])
    assert [(kind, subject) for kind, subject, _, _ in recorded] == [
        ("issued", f"{x.serial_number:x}") for x in (a, b, c)
    ]
    assert all(d["profile"] == "batch" for _, _, _, d in recorded)
    record = certificates.get(b.serial_number)
    assert record is not None and (record.profile, record.identity) == ("batch", f"{NS}/b")
    assert_chain_intact(store)


def batch_directory(tmp_path: Path, good: int, *, tampered: bool) -> tuple[Path, list[str]]:
    requests = tmp_path / "requests"
    requests.mkdir()
    for i in range(good):
        write_csr(requests / f"ok{i}.csr", uris=(f"{NS}/batch/{i}",))
    if tampered:
        write_tampered_csr(requests / "bad.csr", uri=f"{NS}/batch/bad")
    return requests, sorted(p.name for p in requests.iterdir())


def test_sign_csr_batch_without_keep_going_records_nothing_when_one_is_refused(
    certificates: CertificateService, store: Store, tmp_path: Path
) -> None:
    requests, names = batch_directory(tmp_path, 4, tampered=True)
    staging = tmp_path / "staging"
    staging.mkdir()
    before = snapshot(store)
    with pytest.raises(BatchRefusedError) as refused:
        certificates.sign_csr_batch(requests, names, BatchRequest(profile=MTLS), staging=staging)
    assert [name for name, _ in refused.value.failures] == ["bad.csr"]
    assert "1 of 5 requests refused; nothing written" in str(refused.value)
    assert snapshot(store) == before  # the signed four were rolled back with the refusal


def test_sign_csr_batch_with_keep_going_records_exactly_the_signed_ones(
    certificates: CertificateService, store: Store, tmp_path: Path
) -> None:
    requests, names = batch_directory(tmp_path, 4, tampered=True)
    staging = tmp_path / "staging"
    staging.mkdir()
    before = snapshot(store)
    progress: list[int] = []
    outcome = certificates.sign_csr_batch(
        requests,
        names,
        BatchRequest(profile=MTLS),
        staging=staging,
        keep_going=True,
        progress=progress.append,
    )
    assert sorted(outcome.signed) == [f"ok{i}.csr" for i in range(4)]
    assert [name for name, _ in outcome.failures] == ["bad.csr"]
    assert sum(progress) == 5
    staged = {p.name: x509.load_pem_x509_certificate(p.read_bytes()) for p in staging.glob("*.pem")}
    assert sorted(staged) == [f"ok{i}.pem" for i in range(4)]
    for cert in staged.values():
        record = certificates.get(cert.serial_number)
        assert record is not None and record.der == cert.public_bytes(DER) and record.profile == "mtls"
    assert len(snapshot(store).rows) == len(before.rows) + 4
    assert [kind for kind, *_ in events(store, before.head[0])] == ["issued"] * 4
    assert_chain_intact(store)


def test_sign_csr_batch_all_good_records_all(
    certificates: CertificateService, store: Store, tmp_path: Path
) -> None:
    requests, names = batch_directory(tmp_path, 6, tampered=False)
    staging = tmp_path / "staging"
    staging.mkdir()
    before = snapshot(store)
    request = BatchRequest(profile=MTLS, lifetime=datetime.timedelta(hours=2))
    outcome = certificates.sign_csr_batch(requests, names, request, staging=staging)
    assert (len(outcome.signed), outcome.failures) == (6, [])
    assert len(snapshot(store).rows) == len(before.rows) + 6
    for path in staging.glob("*.pem"):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(hours=2, minutes=1)


def test_import_skips_certificates_already_in_the_inventory(
    certificates: CertificateService, store: Store, authority: Authority, intermediate: x509.Certificate
) -> None:
    issued = issue(certificates, "present")
    outside = authority.issue(
        generate_key().public_key(), profile=MTLS, identity=SpiffeId.parse(f"{NS}/outside")
    )
    before = snapshot(store)
    report = certificates.import_certificates([issued, outside, intermediate])
    assert report.imported == (outside, intermediate)
    assert report.already_present == (issued,)
    assert [(k, s) for k, s, _, _ in events(store, before.head[0])] == [
        ("import", f"{outside.serial_number:x}"),
        ("import", f"{intermediate.serial_number:x}"),
    ]
    again = certificates.import_certificates([outside, intermediate])
    assert (again.imported, again.already_present) == ((), (outside, intermediate))
    record = certificates.get(outside.serial_number)
    assert record is not None and record.profile is None


def test_list_pages_with_a_filter(certificates: CertificateService, clock: FixedClock) -> None:
    made = [issue(certificates, f"list/{i}") for i in range(5)]
    clock.advance(datetime.timedelta(seconds=1))
    issue(certificates, "elsewhere")
    where = CertificateFilter(identity_glob=f"{NS}/list/*")
    first = certificates.list(where, limit=3)
    assert len(first.items) == 3 and first.next_cursor is not None
    rest = certificates.list(where, limit=3, after=first.next_cursor)
    assert rest.next_cursor is None
    assert {r.serial for r in first.items + rest.items} == {c.serial_number for c in made}
    wide = certificates.list(CertificateFilter(identity_glob=f"{NS}/**"), limit=100)
    assert len(wide.items) == 6
    assert certificates.get(12345) is None
