"""The bulk write path (batch signing) on SQLite and PostgreSQL.

Rows made from :class:`~certwright.issuance.Issued` facts and encoded for the driver
(what batch workers do) must read back exactly as rows made by the ORM path from the
parsed certificate; a duplicate refuses the whole batch and leaves nothing behind.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from store_helpers import START

from certwright.files import read_csr
from certwright.issuance import Authority, Issued, _subject_key
from certwright.store import DuplicateCertificateError, Store, verify_chain
from certwright.store.bulk import EventSpec, add_certificates, append_events, encode_row, encoders_for
from certwright.store.models import AuditKind, NameKind
from certwright.store.records import certificate_fields, issued_fields
from certwright.store.repository import find_by_name, get_by_fingerprint
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import generate_key
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES
from support.certs import write_csr

MTLS = BUILTIN_PROFILES["mtls"]


def _issue_many(ca: Authority, tmp_path: Path, count: int) -> list[Issued]:
    issued = []
    for i in range(count):
        path = tmp_path / f"r{i}.csr"
        write_csr(
            path, uris=(f"spiffe://example.org/bulk/{i}",), dns=(f"svc{i}.example.org",), common_name=f"s{i}"
        )
        issued.append(
            ca.sign_csr_issued(
                read_csr(path),
                profile=MTLS,
                authorization=Authorization.create(("reader",), {"env": "prod"}),
            )
        )
    return issued


def _fields(ca: Authority, issued: Issued) -> tuple[dict[str, object], list[tuple[NameKind, str]]]:
    return issued_fields(
        issued,
        issuer=ca.certificate.subject.rfc4514_string(),
        issuer_key_id=ca.key_identifier,
        profile="mtls",
        requested_by="test",
        created_at=START,
    )


def test_issued_fields_equal_what_the_parsed_certificate_gives(ca: Authority, tmp_path: Path) -> None:
    for issued in _issue_many(ca, tmp_path, 3):
        assert _fields(ca, issued) == certificate_fields(
            issued.certificate, profile="mtls", requested_by="test", created_at=START
        )


def test_issued_fields_for_a_key_issued_leaf_with_ip_and_email(ca: Authority) -> None:
    key = generate_key()
    issued = ca._issue(  # the facts of a leaf without a CSR: every SAN kind
        _subject_key(key.public_key()),
        profile=MTLS,
        identity=SpiffeId.parse("spiffe://example.org/web"),
        sans=SubjectAltNames.parse(["dns:web.example.org", "ip:127.0.0.1", "ip:::1"]),
        authorization=Authorization(),
        subject="CN=web",
        lifetime=datetime.timedelta(hours=3),
    )
    assert _fields(ca, issued) == certificate_fields(
        issued.certificate, profile="mtls", requested_by="test", created_at=START
    )


def test_encoded_rows_read_back_like_orm_rows(store: Store, ca: Authority, tmp_path: Path) -> None:
    batch = _issue_many(ca, tmp_path, 5)
    encoders = encoders_for(store.engine.dialect)
    with store.write() as session:
        add_certificates(session, [encode_row(encoders, _fields(ca, issued)) for issued in batch[:3]])
        add_certificates(session, [_fields(ca, issued) for issued in batch[3:]])  # unencoded path too
        events = [
            EventSpec(AuditKind.ISSUED, "t", START, f"{i.serial:x}", {"n": n}) for n, i in enumerate(batch)
        ]
        append_events(session, events)
    with store.read() as session:
        for issued in batch:
            record = get_by_fingerprint(session, issued.fingerprint)
            assert record is not None
            assert record.serial == issued.serial
            assert record.der == issued.der
            assert (record.not_before, record.not_after) == (issued.not_before, issued.not_after)
            assert record.roles == ["reader"] and record.attributes == {"env": "prod"}
            assert record.identity == str(issued.sans.uris[0])
            assert record.created_at == START
            assert {(n.kind, n.value) for n in record.names} == {
                (NameKind.URI, issued.sans.uris[0]),
                (NameKind.DNS, issued.sans.dns[0]),
            }
            [found] = find_by_name(session, NameKind.DNS, issued.sans.dns[0])
            assert found.id == record.id
    with store.read() as session:
        report = verify_chain(session)
    assert report.ok and report.events >= 5


def test_a_duplicate_refuses_the_whole_batch(store: Store, ca: Authority, tmp_path: Path) -> None:
    batch = _issue_many(ca, tmp_path, 3)
    with store.write() as session:
        add_certificates(session, [_fields(ca, batch[0])])
    encoders = encoders_for(store.engine.dialect)
    with pytest.raises(DuplicateCertificateError), store.write() as session:
        add_certificates(session, [encode_row(encoders, _fields(ca, i)) for i in batch])
    with store.read() as session:
        assert get_by_fingerprint(session, batch[0].fingerprint) is not None
        assert get_by_fingerprint(session, batch[1].fingerprint) is None  # rolled back with the duplicate
        assert get_by_fingerprint(session, batch[2].fingerprint) is None
