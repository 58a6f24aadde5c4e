"""Certificates in the inventory: round trip, uniqueness, and every look-up."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from store_helpers import START, Issue, issue_with, store_cert

from certwright.clock import FixedClock
from certwright.errors import InvalidInputError, InvalidNameError
from certwright.issuance import Authority
from certwright.store import (
    AmbiguousSerialError,
    CertificateRecord,
    CertificateStatus,
    DuplicateCertificateError,
    NameKind,
    Store,
    add_certificate,
    find_by_identity,
    find_by_name,
    find_by_public_key,
    get_by_fingerprint,
    get_by_serial,
    parse_san_query,
    public_key_id,
    search_name,
)
from certwright.store.models import CertificateName
from certwright.x509.keys import KeyType, SigningKey, generate_key
from certwright.x509.profiles import CASettings

WEB = "spiffe://example.org/ns/prod/web"


def test_a_certificate_round_trips_with_everything_derived_from_it(store: Store, issue: Issue) -> None:
    cert = issue(
        identity=WEB,
        dns=("web.example.org", "WEB2.example.org"),
        ips=("10.0.0.7", "fd00::1"),
        roles=("reader", "writer"),
        attributes=(("env", "prod"), ("owner", "payments")),
    )
    store_cert(store, cert)
    with store.read() as session:
        record = get_by_serial(session, cert.serial_number)
        assert record is not None
        assert record.serial == cert.serial_number
        assert record.der == cert.public_bytes(serialization.Encoding.DER)
        assert record.issuer == cert.issuer.rfc4514_string()
        assert (
            record.issuer_key_id
            == cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        )
        assert record.subject == cert.subject.rfc4514_string()
        assert record.identity == WEB
        assert record.roles == ["reader", "writer"]
        assert record.attributes == {"env": "prod", "owner": "payments"}
        assert (record.profile, record.key_type, record.requested_by) == ("mtls", "ec-p256", "tester")
        assert record.not_before == cert.not_valid_before_utc
        assert record.not_after == cert.not_valid_after_utc
        assert record.not_after.tzinfo is datetime.UTC
        assert record.created_at == START
        assert record.fingerprint_sha256 == cert.fingerprint(hashes.SHA256())
        assert record.public_key_id == public_key_id(cert)
        assert record.status is CertificateStatus.GOOD
        assert record.revocation_json() == {"status": "good", "revoked_at": None, "revocation_reason": None}
        names = {(n.kind, n.value) for n in record.names}
    assert names == {
        (NameKind.URI, WEB),
        (NameKind.DNS, "web.example.org"),
        (NameKind.DNS, "web2.example.org"),
        (NameKind.IP, "10.0.0.7"),
        (NameKind.IP, "fd00::1"),
    }


def test_the_serial_is_stored_as_20_big_endian_octets(store: Store, issue: Issue) -> None:
    cert = issue(identity=WEB)
    store_cert(store, cert)
    with store.read() as session:
        raw = session.execute(sa.text("SELECT serial FROM certificates")).scalar_one()
    assert bytes(raw) == cert.serial_number.to_bytes(20, "big")


def test_a_serial_of_21_octets_cannot_be_stored(store: Store, issue: Issue) -> None:
    with store.read() as session, pytest.raises(InvalidInputError, match="at most 20 octets"):
        get_by_serial(session, 2**160)


def test_the_same_certificate_twice_is_refused_and_rolls_back(store: Store, issue: Issue) -> None:
    cert = issue(identity=WEB)
    store_cert(store, cert)
    with pytest.raises(DuplicateCertificateError, match=f"{cert.serial_number:x}"):
        store_cert(store, cert)
    with store.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(CertificateRecord)) == 1


def test_the_database_itself_refuses_a_second_serial_of_one_issuer(store: Store, issue: Issue) -> None:
    """Not a Python check: a raw INSERT with a taken (serial, issuer key) fails the UNIQUE constraint."""
    store_cert(store, issue(identity=WEB))
    copy = (
        "INSERT INTO certificates (serial, issuer, issuer_key_id, subject, identity, roles, attributes,"
        " profile, key_type, not_before, not_after, fingerprint_sha256, public_key_id, status,"
        " requested_by, created_at, der)"
        " SELECT serial, issuer, issuer_key_id, subject, identity, roles, attributes, profile, key_type,"
        " not_before, not_after, :other_fingerprint, public_key_id, status, requested_by, created_at, der"
        " FROM certificates"
    )
    with pytest.raises(sa.exc.IntegrityError), store.write() as session:
        session.execute(sa.text(copy), {"other_fingerprint": b"\x01" * 32})


def test_one_serial_under_two_issuers_needs_the_issuer(
    store: Store,
    issue: Issue,
    other_root: tuple[x509.Certificate, SigningKey],
    settings: CASettings,
    leaf_key: SigningKey,
    clock: FixedClock,
) -> None:
    cert = issue(identity=WEB)
    root, key = other_root
    other = Authority(certificate=root, key=key, settings=settings, clock=clock)
    twin = x509.load_der_x509_certificate(_with_serial(issue_with(other, leaf_key)(identity=WEB), key, cert))
    store_cert(store, cert)
    store_cert(store, twin)
    with store.read() as session:
        with pytest.raises(AmbiguousSerialError, match="several CAs"):
            get_by_serial(session, cert.serial_number)
        aki = twin.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        found = get_by_serial(session, cert.serial_number, issuer_key_id=aki)
        assert found is not None and found.fingerprint_sha256 == twin.fingerprint(hashes.SHA256())


def _with_serial(cert: x509.Certificate, key: SigningKey, source: x509.Certificate) -> bytes:
    """``cert`` re-signed by ``key`` with ``source``'s serial (a collision on purpose)."""
    builder = (
        x509.CertificateBuilder()
        .serial_number(source.serial_number)
        .issuer_name(cert.issuer)
        .subject_name(cert.subject)
        .public_key(cert.public_key())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]


def test_a_self_signed_root_is_filed_under_its_own_key(store: Store, root: x509.Certificate) -> None:
    store_cert(store, root, profile="root-ca")
    with store.read() as session:
        record = get_by_serial(session, root.serial_number)
    assert record is not None
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert record.issuer_key_id == ski
    assert record.identity is None


def test_naive_datetimes_are_refused(store: Store, issue: Issue) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), store.write() as session:
        naive = datetime.datetime(2030, 1, 1)
        add_certificate(session, issue(identity=WEB), profile="mtls", requested_by="t", created_at=naive)


def test_get_by_fingerprint(store: Store, issue: Issue) -> None:
    cert = issue(identity=WEB)
    store_cert(store, cert)
    with store.read() as session:
        found = get_by_fingerprint(session, cert.fingerprint(hashes.SHA256()))
        assert found is not None and found.serial == cert.serial_number
        assert get_by_fingerprint(session, b"\0" * 32) is None
        assert get_by_serial(session, cert.serial_number + 1) is None


def test_find_by_identity_is_exact_and_can_skip_expired(
    store: Store, clock: FixedClock, issue: Issue
) -> None:
    old = issue(identity=WEB, lifetime=datetime.timedelta(hours=1))
    clock.advance(datetime.timedelta(hours=2))
    new = issue(identity=WEB)
    nested = issue(identity=WEB + "/admin")
    for cert in (old, new, nested):
        store_cert(store, cert)
    now = START + datetime.timedelta(hours=2)
    with store.read() as session:
        assert [r.serial for r in find_by_identity(session, WEB)] == [old.serial_number, new.serial_number]
        assert [r.serial for r in find_by_identity(session, WEB, live_at=now)] == [new.serial_number]
        assert find_by_identity(session, "spiffe://example.org/ns/prod") == []


def test_find_by_san_normalises_the_query(store: Store, issue: Issue) -> None:
    web = issue(identity=WEB, dns=("web.example.org",), ips=("fd00::1",))
    api = issue(dns=("api.example.org",), ips=("10.0.0.7",), profile="server")
    store_cert(store, web)
    store_cert(store, api, profile="server")
    with store.read() as session:

        def serials(spec: str) -> list[int]:
            return [r.serial for r in find_by_name(session, *parse_san_query(spec))]

        assert serials("dns:WEB.Example.org.") == [web.serial_number]
        assert serials("ip:fd00:0000::0001") == [web.serial_number]
        assert serials("ip:10.0.0.7") == [api.serial_number]
        assert serials(f"uri:{WEB}") == [web.serial_number]
        assert serials("dns:example.org") == []
    with pytest.raises(InvalidNameError, match="unknown SAN kind"):
        search_name("x400", "whatever")
    with pytest.raises(InvalidNameError):
        parse_san_query("ip:not-an-address")


def test_find_by_public_key_finds_every_certificate_of_the_key(store: Store, issue: Issue) -> None:
    other_key = generate_key(KeyType.EC_P256)
    first, second = issue(identity=WEB), issue(identity=WEB + "-2")
    unrelated = issue(identity=WEB + "-3", key=other_key)
    for cert in (first, second, unrelated):
        store_cert(store, cert)
    with store.read() as session:
        found = {r.serial for r in find_by_public_key(session, public_key_id(first))}
    assert found == {first.serial_number, second.serial_number}


def test_deleting_a_certificate_deletes_its_names(store: Store, issue: Issue) -> None:
    """certificate_names follows its certificate (ON DELETE CASCADE, foreign keys on in SQLite)."""
    store_cert(store, issue(identity=WEB, dns=("web.example.org",)))
    with store.write() as session:
        session.execute(sa.text("DELETE FROM certificates"))
    with store.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(CertificateName)) == 0


def test_ip_names_are_stored_canonically(store: Store, issue: Issue) -> None:
    cert = issue(dns=("a.example.org",), ips=("FD00:0:0::1",), profile="server")
    store_cert(store, cert, profile="server")
    ips = sa.select(CertificateName.value).where(CertificateName.kind == NameKind.IP)
    with store.read() as session:
        values = session.scalars(ips).all()
    assert values == [str(ipaddress.ip_address("fd00::1"))]
