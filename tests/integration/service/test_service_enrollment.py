"""EnrollmentService: tokens, enrolment and renewal on a real inventory, and the attacks of issue 5.

Every refused call is checked to change nothing: certificate rows, token rows and the
audit head are compared before and after. The concurrency tests run on SQLite and on
PostgreSQL (skipped locally without a server, failing under CI).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from service_helpers import assert_chain_intact, events

from certwright.clock import FixedClock
from certwright.errors import InvalidCSRError, InvalidInputError, PolicyViolation
from certwright.issuance import Authority, Issued
from certwright.service import (
    CertificateService,
    EnrollmentService,
    RenewalError,
    RevocationService,
    TokenError,
    TokenGrant,
    TokenProblem,
)
from certwright.service import enrollment as enrollment_module
from certwright.store import (
    AuditEvent,
    BySerial,
    CertificateRecord,
    Store,
    WriterBusy,
    audit_head,
    open_store,
)
from certwright.store.models import EnrollmentToken
from certwright.store.session import WRITER_LOCK_SUFFIX
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, generate_key
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES, DAY, HOUR, Profile
from certwright.x509.revocation_reason import RevocationReason as Reason
from support.postgres import PG_ADMIN, postgres_database

WEB = "spiffe://example.org/ns/web"
API = "api.svc.example.org"
DB = "db.svc.example.org"
TTL = datetime.timedelta(minutes=15)
# Accepts P-256 keys only: a CSR with another key fails *inside* the enrolment transaction.
P256_ONLY = Profile(
    name="p256-only",
    key_usage=BUILTIN_PROFILES["mtls"].key_usage,
    default_lifetime=DAY,
    max_lifetime=30 * DAY,
    key_types=frozenset({KeyType.EC_P256}),
)


# -- helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """Everything a use case could change."""

    certificates: tuple[tuple[int, str], ...]
    tokens: tuple[tuple[str, Any, Any, Any], ...]
    head: tuple[int, str]


def state(store: Store) -> State:
    with store.read() as session:
        certs = session.execute(sa.select(CertificateRecord.serial, CertificateRecord.status)).all()
        tokens = session.execute(
            sa.select(
                EnrollmentToken.token_id,
                EnrollmentToken.used_at,
                EnrollmentToken.used_by,
                EnrollmentToken.certificate_id,
            )
        ).all()
        return State(
            tuple(sorted((s, st.value) for s, st in certs)),
            tuple(sorted(tuple(t) for t in tokens)),
            audit_head(session),
        )


def token_row(store: Store, token_id: str) -> EnrollmentToken:
    with store.read() as session:
        return session.scalars(sa.select(EnrollmentToken).where(EnrollmentToken.token_id == token_id)).one()


def make_csr(
    *,
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    common_name: str | None = None,
    ca: bool = False,
    key: Any = None,
) -> x509.CertificateSigningRequest:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def tampered(csr: x509.CertificateSigningRequest) -> x509.CertificateSigningRequest:
    from cryptography.hazmat.primitives.serialization import Encoding

    data = bytearray(csr.public_bytes(Encoding.DER))
    data[-1] ^= 0x01  # inside the signature: still parses, no longer verifies
    bad = x509.load_der_x509_csr(bytes(data))
    assert not bad.is_signature_valid
    return bad


def sans(cert: x509.Certificate) -> list[str]:
    return SubjectAltNames.of(cert).specs()


def grant(
    identity: str = WEB,
    profile: str = "mtls",
    *,
    dns: tuple[str, ...] = (API, DB),
    ips: tuple[str, ...] = ("10.0.0.7",),
    roles: tuple[str, ...] = ("reader",),
    lifetime: datetime.timedelta | None = None,
) -> TokenGrant:
    return TokenGrant(
        identity=SpiffeId.parse(identity),
        profile=profile,
        sans=SubjectAltNames.create(dns=dns, ips=ips),
        authorization=Authorization.create(roles, {"team": "payments"}),
        lifetime=lifetime,
    )


@pytest.fixture
def enrollment(store: Store, authority: Authority, clock: FixedClock) -> EnrollmentService:
    profiles = {**BUILTIN_PROFILES, P256_ONLY.name: P256_ONLY}
    return EnrollmentService(store=store, authority=authority, profiles=profiles, clock=clock)


# -- tokens -----------------------------------------------------------------------------


def test_create_token_stores_only_the_hash_and_audits_without_the_secret(
    enrollment: EnrollmentService, store: Store, clock: FixedClock
) -> None:
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin:alice")
    assert len(created.secret) >= 43  # 32 random bytes, URL-safe base64
    assert created.expires_at == clock.now() + TTL
    assert created.grant.sans.dns == (API, DB)
    row = token_row(store, created.token_id)
    assert row.token_hash == hashlib.sha256(created.secret.encode()).digest()
    assert (row.identity, row.profile, row.dns, row.ips, row.roles, row.attributes) == (
        WEB,
        "mtls",
        [API, DB],
        ["10.0.0.7"],
        ["reader"],
        {"team": "payments"},
    )
    assert (row.created_by, row.created_at, row.expires_at, row.used_at) == (
        "admin:alice",
        clock.now(),
        created.expires_at,
        None,
    )
    [(kind, subject, actor, details)] = events(store)
    assert (kind, subject, actor) == ("token", f"token:{created.token_id}", "admin:alice")
    assert details["token_id"] == created.token_id
    assert (details["identity"], details["profile"]) == (WEB, "mtls")
    assert details["expires_at"] == created.expires_at.isoformat()
    # The secret is nowhere in the database: not in the token row, not in the audit log.
    with store.read() as session:
        dumped = repr(session.execute(sa.select(EnrollmentToken.__table__)).all())
        dumped += repr(session.execute(sa.select(AuditEvent.__table__)).all())
    assert created.secret not in dumped
    assert_chain_intact(store)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (lambda: grant(profile="nope"), PolicyViolation, "unknown profile 'nope'"),
        (lambda: grant(profile="intermediate-ca"), PolicyViolation, "issues CA certificates"),
        (
            lambda: grant(profile="ocsp-responder", dns=(), ips=()),
            PolicyViolation,
            "does not carry an identity",
        ),
        (lambda: grant("spiffe://evil.example/ns/web"), PolicyViolation, "outside this CA's trust domain"),
        (lambda: grant("spiffe://example.org"), PolicyViolation, "names the trust domain"),
        (lambda: grant(dns=("api.evil.example",)), PolicyViolation, "DNS name api.evil.example"),
        (lambda: grant(ips=("8.8.8.8",)), PolicyViolation, "IP address 8.8.8.8"),
        (lambda: grant(lifetime=31 * DAY), PolicyViolation, "exceeds the maximum"),
        (
            lambda: TokenGrant(
                SpiffeId.parse(WEB), "mtls", SubjectAltNames(uris=("spiffe://example.org/x",))
            ),
            InvalidInputError,
            "grants DNS names and IP addresses",
        ),
    ],
)
def test_create_token_refuses_a_grant_that_could_never_enrol(
    enrollment: EnrollmentService,
    store: Store,
    bad: Callable[[], TokenGrant],
    error: type[Exception],
    message: str,
) -> None:
    before = state(store)
    with pytest.raises(error, match=message):
        enrollment.create_token(bad(), ttl=TTL, actor="admin")
    assert state(store) == before


@pytest.mark.parametrize("ttl", [datetime.timedelta(0), -TTL, datetime.timedelta(days=31)])
def test_create_token_refuses_a_ttl_out_of_range(
    enrollment: EnrollmentService, store: Store, ttl: Any
) -> None:
    before = state(store)
    with pytest.raises(InvalidInputError, match="ttl"):
        enrollment.create_token(grant(), ttl=ttl, actor="admin")
    assert state(store) == before


def test_a_service_whose_extension_oid_differs_from_the_cas_is_refused(
    store: Store, authority: Authority, clock: FixedClock
) -> None:
    with pytest.raises(InvalidInputError, match="extension OID"):
        EnrollmentService(store=store, authority=authority, profiles={}, extension_oid="1.2.3.4", clock=clock)


def test_purge_expired_tokens_deletes_dead_unused_tokens_and_audits_the_count(
    enrollment: EnrollmentService, store: Store, clock: FixedClock
) -> None:
    stale = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    redeemed = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    enrollment.enroll(redeemed.secret, make_csr(uris=(WEB,), dns=(API,)), actor="enrol")
    clock.advance(TTL + 2 * HOUR)
    fresh = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    # Expired 2 h ago: kept by a 3 h retention, gone with 1 h; the redeemed one always stays.
    assert enrollment.purge_expired_tokens(older_than=3 * HOUR, actor="server") == 0
    before = len(events(store))
    assert enrollment.purge_expired_tokens(older_than=HOUR, actor="server") == 1
    with store.read() as session:
        left = set(session.scalars(sa.select(EnrollmentToken.token_id)))
    assert left == {redeemed.token_id, fresh.token_id}
    assert stale.token_id not in left
    all_events = events(store)
    assert len(all_events) == before + 1  # one event for the purge, none for the no-op before it
    kind, subject, actor, details = all_events[-1]
    assert (kind, subject, actor) == ("token", "tokens", "server")
    assert details == {"purged": 1, "expired_before": (clock.now() - HOUR).isoformat()}
    assert_chain_intact(store)
    with pytest.raises(TokenError):  # a purged token is as unknown as one never made
        enrollment.enroll(stale.secret, make_csr(uris=(WEB,)), actor="enrol")


def test_purge_expired_tokens_refuses_a_negative_retention(
    enrollment: EnrollmentService, store: Store
) -> None:
    before = state(store)
    with pytest.raises(InvalidInputError, match="must not be negative"):
        enrollment.purge_expired_tokens(older_than=-HOUR, actor="server")
    assert state(store) == before


# -- enrolment --------------------------------------------------------------------------


def test_enroll_issues_what_the_csr_asks_within_the_grant_and_records_it_with_the_token(
    enrollment: EnrollmentService,
    store: Store,
    clock: FixedClock,
    intermediate: x509.Certificate,
    authority: Authority,
) -> None:
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    head = state(store).head[0]
    csr = make_csr(uris=(WEB,), dns=(API.upper() + ".",), ips=("10.0.0.7",), common_name=DB)
    enrolled = enrollment.enroll(created.secret, csr, actor="enrol:10.1.2.3")
    cert = enrolled.certificate
    assert sans(cert) == [f"uri:{WEB}", f"dns:{API}", "ip:10.0.0.7"]  # not DB: the CSR did not ask
    # The CSR's CN is not copied (a host-name-like CN would widen the grant): the CA's label.
    assert cert.subject.rfc4514_string() == "CN=web"
    assert Authorization.from_certificate(cert) == Authorization.create(["reader"], {"team": "payments"})
    assert cert.not_valid_after_utc == clock.now() + DAY  # the mtls profile's default lifetime
    assert enrolled.chain == (intermediate,)
    assert enrolled.chain == authority.chain_for_leaf()
    cert.verify_directly_issued_by(intermediate)
    with store.read() as session:
        record = session.scalars(
            sa.select(CertificateRecord).where(CertificateRecord.serial == cert.serial_number)
        ).one()
        assert (record.profile, record.requested_by, record.identity) == ("mtls", "enrol:10.1.2.3", WEB)
        assert record.der == cert.public_bytes(serialization_der())
    [(kind, subject, actor, details)] = events(store, head)
    assert (kind, subject, actor) == ("issued", f"{cert.serial_number:x}", "enrol:10.1.2.3")
    assert details["token_id"] == created.token_id
    assert details["profile"] == "mtls"
    row = token_row(store, created.token_id)
    assert (row.used_at, row.used_by, row.certificate_id) == (clock.now(), "enrol:10.1.2.3", record.id)
    assert_chain_intact(store)


def serialization_der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def test_a_csr_without_names_gets_the_tokens_identity_alone(enrollment: EnrollmentService) -> None:
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    enrolled = enrollment.enroll(created.secret, make_csr(), actor="enrol")
    assert sans(enrolled.certificate) == [f"uri:{WEB}"]


def test_the_lifetime_cap_shortens_the_certificate_never_lengthens_it(
    enrollment: EnrollmentService, clock: FixedClock
) -> None:
    short = enrollment.create_token(grant(lifetime=HOUR), ttl=TTL, actor="admin")
    long = enrollment.create_token(grant(lifetime=7 * DAY), ttl=TTL, actor="admin")
    assert enrollment.enroll(short.secret, make_csr(), actor="e").certificate.not_valid_after_utc == (
        clock.now() + HOUR
    )
    assert enrollment.enroll(long.secret, make_csr(), actor="e").certificate.not_valid_after_utc == (
        clock.now() + DAY
    )


def test_attack_a_renewal_keeps_the_lifetime_cap_of_the_enrolled_certificate(
    enrollment: EnrollmentService, clock: FixedClock
) -> None:
    short = enrollment.create_token(grant(lifetime=HOUR), ttl=TTL, actor="admin")
    first = enrollment.enroll(short.secret, make_csr(), actor="e").certificate
    clock.advance(40 * datetime.timedelta(minutes=1))
    second = enrollment.renew(first, make_csr(), actor="peer:web").certificate
    # An hour, as the token allowed; not the profile's default day, nor renewable into one.
    assert second.not_valid_after_utc == clock.now() + HOUR
    third = enrollment.renew(second, make_csr(), actor="peer:web").certificate
    assert third.not_valid_after_utc - third.not_valid_before_utc == (
        second.not_valid_after_utc - second.not_valid_before_utc
    )


@pytest.mark.parametrize(
    ("identity", "roles", "field"),
    [
        ("spiffe://example.org/certwright/server", (), "identity"),
        ("spiffe://example.org/certwright/admin", (), "identity"),
        ("spiffe://example.org/certwright", (), "identity"),
        (WEB, ("certwright.admin",), "roles"),
    ],
)
def test_attack_a_token_cannot_grant_the_cas_own_identities_or_its_admin_role(
    enrollment: EnrollmentService, store: Store, identity: str, roles: tuple[str, ...], field: str
) -> None:
    before = state(store)
    with pytest.raises(PolicyViolation) as refused:
        enrollment.create_token(grant(identity, roles=roles), ttl=TTL, actor="admin")
    assert refused.value.field == field
    assert state(store) == before
    # Control: a path that only starts with the same letters is an ordinary workload.
    enrollment.create_token(grant("spiffe://example.org/certwright-docs"), ttl=TTL, actor="admin")


def test_attack_a_reused_token_is_refused_and_issues_nothing(
    enrollment: EnrollmentService, store: Store
) -> None:
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    enrollment.enroll(created.secret, make_csr(uris=(WEB,)), actor="first")
    after_first = state(store)
    with pytest.raises(TokenError) as caught:
        enrollment.enroll(created.secret, make_csr(uris=(WEB,)), actor="second")
    assert caught.value.problem is TokenProblem.USED
    assert caught.value.token_id == created.token_id
    assert "already used" in str(caught.value) and "first" in str(caught.value)
    assert caught.value.public_message == "the enrolment token is not valid"
    assert state(store) == after_first
    assert len(after_first.certificates) == 1


@pytest.mark.parametrize("late", [TTL, TTL + datetime.timedelta(seconds=1)])
def test_attack_an_expired_token_is_refused_and_stays_unused(
    enrollment: EnrollmentService, store: Store, clock: FixedClock, late: datetime.timedelta
) -> None:
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    clock.advance(late)  # at expires_at the token is already dead
    before = state(store)
    with pytest.raises(TokenError, match="expired") as caught:
        enrollment.enroll(created.secret, make_csr(uris=(WEB,)), actor="late")
    assert caught.value.problem is TokenProblem.EXPIRED
    assert state(store) == before
    assert token_row(store, created.token_id).used_at is None


@pytest.mark.parametrize("secret", ["not-a-token", "x" * 300, ""])
def test_attack_an_unknown_token_is_refused(enrollment: EnrollmentService, store: Store, secret: str) -> None:
    enrollment.create_token(grant(), ttl=TTL, actor="admin")
    before = state(store)
    with pytest.raises(TokenError) as caught:
        enrollment.enroll(secret, make_csr(uris=(WEB,)), actor="guess")
    assert caught.value.problem is TokenProblem.UNKNOWN
    assert caught.value.token_id is None
    assert state(store) == before


def test_attack_a_token_for_another_identity_is_refused_and_stays_unused(
    enrollment: EnrollmentService, store: Store
) -> None:
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    before = state(store)
    for asked in ("spiffe://example.org/ns/admin", "spiffe://evil.example/ns/web", "https://example.org/web"):
        with pytest.raises(TokenError, match=f"is for {WEB}; the CSR asks for {asked}") as caught:
            enrollment.enroll(created.secret, make_csr(uris=(asked,)), actor="thief")
        assert caught.value.problem is TokenProblem.IDENTITY
    with pytest.raises(TokenError):  # the right identity beside a wrong one
        enrollment.enroll(created.secret, make_csr(uris=(WEB, "spiffe://example.org/ns/admin")), actor="x")
    assert state(store) == before
    # The refusals rolled back: the token still enrols its own identity.
    assert sans(enrollment.enroll(created.secret, make_csr(uris=(WEB,)), actor="ok").certificate) == [
        f"uri:{WEB}"
    ]


@pytest.mark.parametrize(
    ("asked", "named", "field"),
    [
        ({"dns": (API, "evil.svc.example.org")}, "DNS name evil.svc.example.org", "dns"),
        ({"ips": ("10.0.0.7", "10.0.0.8")}, "IP address 10.0.0.8", "ip"),
        ({"dns": ("*.svc.example.org",)}, "DNS name \\*.svc.example.org", "dns"),
    ],
)
def test_attack_csr_sans_exceeding_the_token_are_refused_naming_the_extra_one(
    enrollment: EnrollmentService, store: Store, asked: dict[str, Any], named: str, field: str
) -> None:
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    before = state(store)
    with pytest.raises(PolicyViolation, match=f"asks for {named}, which token {created.token_id}") as caught:
        enrollment.enroll(created.secret, make_csr(uris=(WEB,), **asked), actor="greedy")
    assert caught.value.field == field
    assert state(store) == before
    assert token_row(store, created.token_id).used_at is None


def test_a_csr_with_a_bad_signature_or_asking_for_ca_changes_nothing(
    enrollment: EnrollmentService, store: Store
) -> None:
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    before = state(store)
    with pytest.raises(InvalidCSRError, match="signature does not verify"):
        enrollment.enroll(created.secret, tampered(make_csr(uris=(WEB,))), actor="x")
    with pytest.raises(PolicyViolation, match="CA:true"):
        enrollment.enroll(created.secret, make_csr(uris=(WEB,), ca=True), actor="x")
    assert state(store) == before


def test_a_failed_issuance_leaves_the_token_unused(enrollment: EnrollmentService, store: Store) -> None:
    created = enrollment.create_token(grant(profile="p256-only", dns=(), ips=()), ttl=TTL, actor="admin")
    before = state(store)
    # The token is redeemed, then the profile refuses the key: the redemption rolls back.
    with pytest.raises(PolicyViolation, match="key type ed25519"):
        enrollment.enroll(created.secret, make_csr(key=ed25519.Ed25519PrivateKey.generate()), actor="x")
    assert state(store) == before
    assert enrollment.enroll(created.secret, make_csr(), actor="ok").certificate is not None


def test_a_failed_write_after_signing_returns_nothing_and_leaves_the_token_unused(
    enrollment: EnrollmentService, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    before = state(store)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    # The certificate is signed and its row added; the audit append (last) fails.
    monkeypatch.setattr("certwright.service.enrollment.append_events", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        enrollment.enroll(created.secret, make_csr(uris=(WEB,)), actor="x")
    monkeypatch.undo()
    assert state(store) == before
    assert token_row(store, created.token_id).used_at is None


# -- renewal ----------------------------------------------------------------------------


@pytest.fixture
def enrolled(enrollment: EnrollmentService) -> x509.Certificate:
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    csr = make_csr(uris=(WEB,), dns=(API, DB), ips=("10.0.0.7",))
    return enrollment.enroll(created.secret, csr, actor="enrol").certificate


def test_renew_issues_a_successor_with_the_same_identity_names_and_roles(
    enrollment: EnrollmentService,
    store: Store,
    clock: FixedClock,
    enrolled: x509.Certificate,
    intermediate: x509.Certificate,
) -> None:
    clock.advance(16 * HOUR)
    head = state(store).head[0]
    key = ec.generate_private_key(ec.SECP256R1())
    renewed = enrollment.renew(enrolled, make_csr(uris=(WEB,), dns=(DB,), key=key), actor="peer:web")
    cert = renewed.certificate
    assert sans(cert) == [f"uri:{WEB}", f"dns:{DB}"]
    assert cert.public_key() == key.public_key()
    assert cert.serial_number != enrolled.serial_number
    assert Authorization.from_certificate(cert) == Authorization.from_certificate(enrolled)
    assert cert.not_valid_after_utc == clock.now() + DAY
    assert renewed.chain == (intermediate,)
    [(kind, subject, actor, details)] = events(store, head)
    assert (kind, subject, actor) == ("issued", f"{cert.serial_number:x}", "peer:web")
    assert details["renewed_from"] == f"{enrolled.serial_number:x}"
    assert details["profile"] == "mtls"
    # The successor renews in turn (the inventory holds it).
    assert enrollment.renew(cert, make_csr(), actor="peer:web").certificate is not None
    assert_chain_intact(store)


def test_renew_carries_roles_of_a_certificate_issued_by_the_cli(
    enrollment: EnrollmentService, certificates: CertificateService
) -> None:
    cert = certificates.issue(
        generate_key().public_key(),
        profile=BUILTIN_PROFILES["server"],
        sans=SubjectAltNames.create(dns=[API]),
        authorization=Authorization.create(["certwright.admin"]),
    )
    renewed = enrollment.renew(cert, make_csr(dns=(API,)), actor="peer").certificate
    assert sans(renewed) == [f"dns:{API}"]
    assert Authorization.from_certificate(renewed).roles == ("certwright.admin",)


def test_attack_renewal_asking_for_another_identity_is_refused(
    enrollment: EnrollmentService, store: Store, enrolled: x509.Certificate, certificates: CertificateService
) -> None:
    before = state(store)
    with pytest.raises(
        RenewalError, match=f"asks for identity spiffe://example.org/ns/admin; .* has identity {WEB}"
    ):
        enrollment.renew(enrolled, make_csr(uris=("spiffe://example.org/ns/admin",)), actor="peer")
    with pytest.raises(RenewalError, match="asks for identity"):
        enrollment.renew(enrolled, make_csr(uris=(WEB, "spiffe://example.org/ns/admin")), actor="peer")
    # A certificate without identity cannot gain one.
    server = certificates.issue(
        generate_key().public_key(),
        profile=BUILTIN_PROFILES["server"],
        sans=SubjectAltNames.create(dns=[API]),
    )
    before = state(store)
    with pytest.raises(RenewalError, match="has no identity"):
        enrollment.renew(server, make_csr(uris=(WEB,), dns=(API,)), actor="peer")
    assert state(store) == before


@pytest.mark.parametrize(
    ("asked", "named"),
    [
        ({"dns": ("evil.svc.example.org",)}, "DNS name evil.svc.example.org"),
        ({"ips": ("10.0.0.9",)}, "IP address 10.0.0.9"),
    ],
)
def test_attack_renewal_asking_for_more_names_is_refused(
    enrollment: EnrollmentService, store: Store, enrolled: x509.Certificate, asked: dict[str, Any], named: str
) -> None:
    before = state(store)
    with pytest.raises(
        RenewalError, match=f"asks for {named}, which the certificate presented does not have"
    ):
        enrollment.renew(enrolled, make_csr(uris=(WEB,), **asked), actor="peer")
    assert state(store) == before


@pytest.mark.parametrize(
    ("reason", "message"), [(Reason.KEY_COMPROMISE, "is revoked"), (Reason.CERTIFICATE_HOLD, "on hold")]
)
def test_attack_renewal_with_a_revoked_or_held_certificate_is_refused(
    enrollment: EnrollmentService,
    revocations: RevocationService,
    store: Store,
    enrolled: x509.Certificate,
    reason: Reason,
    message: str,
) -> None:
    revocations.revoke(BySerial(enrolled.serial_number), reason)
    before = state(store)
    with pytest.raises(RenewalError, match=message):
        enrollment.renew(enrolled, make_csr(uris=(WEB,)), actor="peer")
    assert state(store) == before


def _renewals(enrollment: EnrollmentService, first: x509.Certificate, count: int) -> list[x509.Certificate]:
    lineage = [first]
    for _ in range(count):
        lineage.append(enrollment.renew(lineage[-1], make_csr(uris=(WEB,)), actor="peer").certificate)
    return lineage


def _status(store: Store, certificate: x509.Certificate) -> tuple[str, str | None]:
    with store.read() as session:
        row = session.execute(
            sa.select(CertificateRecord.status, CertificateRecord.revocation_reason).where(
                CertificateRecord.serial == certificate.serial_number
            )
        ).one()
    return row[0].value, row[1].value if row[1] is not None else None


def test_a_compromise_revokes_the_renewals_after_it_not_before(
    enrollment: EnrollmentService, revocations: RevocationService, store: Store, enrolled: x509.Certificate
) -> None:
    first, second, third, fourth = _renewals(enrollment, enrolled, 3)
    head = audit_head_seq(store)
    changed = revocations.revoke(BySerial(second.serial_number), Reason.KEY_COMPROMISE)
    later = (second, third, fourth)
    assert [ref.serial for ref in changed] == [c.serial_number for c in later]
    assert _status(store, first) == ("good", None)  # its predecessor had another key
    for certificate in later:
        assert _status(store, certificate) == ("revoked", "keyCompromise")
    revoked = [(subject, details) for kind, subject, _, details in events(store, head) if kind == "revoked"]
    origin = f"{second.serial_number:x}"
    assert revoked == [
        (origin, {"reason": "keyCompromise", "selector": f"serial {origin}"}),
        (f"{third.serial_number:x}", {"reason": "keyCompromise", "selector": f"renewed from {origin}"}),
        (f"{fourth.serial_number:x}", {"reason": "keyCompromise", "selector": f"renewed from {origin}"}),
    ]
    assert_chain_intact(store)


def test_a_successor_already_revoked_is_left_alone(
    enrollment: EnrollmentService, revocations: RevocationService, store: Store, enrolled: x509.Certificate
) -> None:
    first, second, third = _renewals(enrollment, enrolled, 2)
    revocations.revoke(BySerial(second.serial_number), Reason.SUPERSEDED)  # reaches nothing
    assert _status(store, third) == ("good", None)
    changed = revocations.revoke(BySerial(first.serial_number), Reason.CESSATION_OF_OPERATION)
    assert [ref.serial for ref in changed] == [first.serial_number, third.serial_number]
    assert _status(store, second) == ("revoked", "superseded")  # its first revocation stands


@pytest.mark.parametrize("reason", [Reason.SUPERSEDED, Reason.UNSPECIFIED, Reason.CERTIFICATE_HOLD])
def test_reasons_that_say_nothing_against_the_holder_reach_no_successor(
    enrollment: EnrollmentService,
    revocations: RevocationService,
    store: Store,
    enrolled: x509.Certificate,
    reason: Reason,
) -> None:
    first, second = _renewals(enrollment, enrolled, 1)
    changed = revocations.revoke(BySerial(first.serial_number), reason)
    assert [ref.serial for ref in changed] == [first.serial_number]
    assert _status(store, second) == ("good", None)


def audit_head_seq(store: Store) -> int:
    with store.read() as session:
        return audit_head(session)[0]


def _before_next_signature(
    monkeypatch: pytest.MonkeyPatch, authority: Authority, act: Callable[[], None]
) -> None:
    """Run ``act`` once, just before the next certificate is signed (after the service read
    the token or the certificate to renew, before its write transaction)."""
    original = type(authority).issue_for_csr_key
    pending = [act]

    def issue_for_csr_key(self: Authority, *args: Any, **kwargs: Any) -> Issued:
        if pending:
            pending.pop()()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(authority), "issue_for_csr_key", issue_for_csr_key)


def test_a_revocation_landing_while_the_successor_is_signed_drops_it(
    enrollment: EnrollmentService,
    revocations: RevocationService,
    store: Store,
    enrolled: x509.Certificate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The renewal decides from a read and signs; the revocation commits in between; the
    write transaction decides again under the row lock and stores nothing."""
    revoke = lambda: revocations.revoke(BySerial(enrolled.serial_number), Reason.KEY_COMPROMISE)  # noqa: E731
    _before_next_signature(monkeypatch, enrollment.authority, revoke)
    with pytest.raises(RenewalError, match="revoked"):
        enrollment.renew(enrolled, make_csr(uris=(WEB,)), actor="peer")
    with store.read() as session:
        serials = session.scalars(sa.select(CertificateRecord.serial)).all()
    assert serials == [enrolled.serial_number]  # the successor signed meanwhile was dropped


def test_a_token_redeemed_while_the_certificate_is_signed_drops_it(
    enrollment: EnrollmentService, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two redemptions of one token: the second read the token before the first redeemed
    it; the conditional UPDATE refuses the second, whose certificate is never stored."""
    created = enrollment.create_token(grant(), ttl=TTL, actor="admin")
    won: list[x509.Certificate] = []
    rival = lambda: won.append(  # noqa: E731
        enrollment.enroll(created.secret, make_csr(uris=(WEB,)), actor="rival").certificate
    )
    _before_next_signature(monkeypatch, enrollment.authority, rival)
    with pytest.raises(TokenError) as refused:
        enrollment.enroll(created.secret, make_csr(uris=(WEB,)), actor="late")
    assert refused.value.problem is TokenProblem.USED
    with store.read() as session:
        serials = session.scalars(sa.select(CertificateRecord.serial)).all()
    assert serials == [won[0].serial_number]
    assert token_row(store, created.token_id).used_by == "rival"


@pytest.mark.parametrize("after", [datetime.timedelta(0), datetime.timedelta(seconds=1)])
def test_attack_renewal_with_an_expired_certificate_is_refused(
    enrollment: EnrollmentService,
    store: Store,
    clock: FixedClock,
    enrolled: x509.Certificate,
    after: datetime.timedelta,
) -> None:
    clock.current = enrolled.not_valid_after_utc + after  # at notAfter it is already expired
    before = state(store)
    with pytest.raises(RenewalError, match="expired"):
        enrollment.renew(enrolled, make_csr(uris=(WEB,)), actor="peer")
    assert state(store) == before


def test_attack_renewal_with_a_certificate_unknown_to_the_inventory_is_refused(
    enrollment: EnrollmentService, store: Store, authority: Authority, certificates: CertificateService
) -> None:
    # Signed by the CA's own key, so it passes any chain check, but never recorded.
    stray = authority.issue(
        generate_key().public_key(), profile=BUILTIN_PROFILES["mtls"], identity=SpiffeId.parse(WEB)
    )
    before = state(store)
    with pytest.raises(RenewalError, match="not in this CA's inventory"):
        enrollment.renew(stray, make_csr(uris=(WEB,)), actor="peer")
    assert state(store) == before
    # Imported certificates have no profile: they enrol, they do not renew.
    certificates.import_certificates([stray])
    before = state(store)
    with pytest.raises(RenewalError, match="without a profile"):
        enrollment.renew(stray, make_csr(uris=(WEB,)), actor="peer")
    assert state(store) == before


def test_renewal_with_a_bad_csr_changes_nothing(
    enrollment: EnrollmentService, store: Store, enrolled: x509.Certificate
) -> None:
    before = state(store)
    with pytest.raises(InvalidCSRError):
        enrollment.renew(enrolled, tampered(make_csr(uris=(WEB,))), actor="peer")
    with pytest.raises(PolicyViolation, match="CA:true"):
        enrollment.renew(enrolled, make_csr(uris=(WEB,), ca=True), actor="peer")
    assert state(store) == before


# -- concurrency: SQLite and PostgreSQL -------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        with open_store(tmp_path / "shared.db", upgrade=True) as opened:
            yield opened
        return
    with postgres_database() as url, open_store(url, upgrade=True) as opened:
        yield opened


def run_threads(*targets: Callable[[], object]) -> list[object]:
    """Run each target in a thread; each result or exception, in order."""
    results: list[object] = [None] * len(targets)

    def run(index: int, target: Callable[[], object]) -> None:
        try:
            results[index] = target()
        except Exception as exc:  # returned to the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a redemption never finished"
    return results


def test_two_simultaneous_redemptions_of_one_token_issue_exactly_one_certificate(
    shared_store: Store, authority: Authority, clock: FixedClock
) -> None:
    service = EnrollmentService(
        store=shared_store, authority=authority, profiles=BUILTIN_PROFILES, clock=clock
    )
    for round_ in range(5):
        created = service.create_token(grant(), ttl=TTL, actor="admin")
        barrier = threading.Barrier(2)

        def redeem(name: str, secret: str = created.secret, barrier: threading.Barrier = barrier) -> object:
            csr = make_csr(uris=(WEB,))
            barrier.wait()
            return service.enroll(secret, csr, actor=name)

        results = run_threads(lambda: redeem("alpha"), lambda: redeem("beta"))
        errors = [r for r in results if isinstance(r, Exception)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], TokenError) and errors[0].problem is TokenProblem.USED
        with shared_store.read() as session:
            count = session.scalar(sa.select(sa.func.count()).select_from(CertificateRecord))
        assert count == round_ + 1
    issued = [e for e in events(shared_store) if e[0] == "issued"]
    assert len(issued) == 5
    assert_chain_intact(shared_store)


def pause_first_recording(monkeypatch: pytest.MonkeyPatch, pause: Callable[[], None]) -> None:
    """The first enrolment to record its certificate waits for ``pause()`` first: inside its
    write transaction, after its redemption's UPDATE took the token row's lock."""
    original = enrollment_module.add_certificate_row
    pending: list[Callable[[], None]] = [pause]

    def add_certificate_row(session: Any, row: Any, **options: Any) -> int:
        if pending:
            pending.pop()()
        return original(session, row, **options)

    monkeypatch.setattr(enrollment_module, "add_certificate_row", add_certificate_row)


def wait_for_lock_waiter(database: str, deadline: float) -> None:
    """Until a session of ``database`` waits on a lock (the second UPDATE on the token row)."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        while time.monotonic() < deadline:
            waiting = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                (database,),
            ).fetchone()
            if waiting and waiting[0] >= 1:
                return
            time.sleep(0.01)
    raise AssertionError("the second redemption never waited on the first one's row lock")


@pytest.mark.parametrize("first_fails", [False, True])
def test_postgresql_a_second_redemption_waits_for_the_first_and_takes_over_only_if_it_fails(
    authority: Authority, clock: FixedClock, first_fails: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both redemptions are in flight at once: B's UPDATE blocks on A's row lock.

    If A commits, B's UPDATE re-checks ``used_at IS NULL`` and matches nothing; if A's
    issuance fails and rolls back, B redeems the token. A read-then-write redemption
    would let both succeed here.
    """
    with postgres_database() as url, open_store(url, upgrade=True) as pg:
        database = url.rsplit("/", 1)[1]
        inside = threading.Event()

        def pause() -> None:
            inside.set()
            wait_for_lock_waiter(database, time.monotonic() + 60)
            if first_fails:
                raise RuntimeError("issuance failed")

        service = EnrollmentService(store=pg, authority=authority, profiles=BUILTIN_PROFILES, clock=clock)
        created = service.create_token(grant(), ttl=TTL, actor="admin")
        pause_first_recording(monkeypatch, pause)
        results: dict[str, object] = {}

        def enrol(name: str) -> None:
            try:
                results[name] = service.enroll(created.secret, make_csr(uris=(WEB,)), actor=name)
            except Exception as exc:  # checked below
                results[name] = exc

        first = threading.Thread(target=enrol, args=("A",))
        first.start()
        assert inside.wait(60), "A never reached its recording"
        second = threading.Thread(target=enrol, args=("B",))
        second.start()
        for thread in (first, second):
            thread.join(120)
            assert not thread.is_alive()
        winner, loser = ("B", "A") if first_fails else ("A", "B")
        assert not isinstance(results[winner], Exception), results
        assert isinstance(results[loser], TokenError if not first_fails else RuntimeError), results
        row = token_row(pg, created.token_id)
        assert row.used_by == winner
        with pg.read() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(CertificateRecord)) == 1
            issued = session.scalars(sa.select(AuditEvent.details).where(AuditEvent.kind == "issued")).all()
        assert [json.loads(d)["token_id"] for d in issued] == [created.token_id]


def test_attack_a_guessed_token_is_refused_without_waiting_for_the_writer(
    enrollment: EnrollmentService, store: Store
) -> None:
    """Unauthenticated guesses are answered from a read: they never queue for the one writer."""
    outcome: dict[str, object] = {}

    def guess() -> None:
        try:
            enrollment.enroll("guessed-" + "x" * 32, make_csr(), actor="anonymous")
        except TokenError as exc:
            outcome["refused"] = exc.problem

    with store.write():  # another request holds the writer (SQLite: the database's only one)
        thread = threading.Thread(target=guess)
        thread.start()
        thread.join(10)
        answered_while_held = not thread.is_alive()
    thread.join(30)
    assert answered_while_held
    assert outcome["refused"] is TokenProblem.UNKNOWN


# -- several requests recorded in one transaction (what the server does under load) ------------


def _issued_serials(store: Store) -> list[int]:
    with store.read() as session:
        return sorted(session.scalars(sa.select(CertificateRecord.serial)).all())


def _prepared(enrollment: EnrollmentService, prefix: str, count: int) -> tuple[list[Any], list[Any]]:
    """``count`` tokens for identities ``/ns/<prefix><i>`` and an enrolment prepared with each."""
    created = [
        enrollment.create_token(
            grant(f"spiffe://example.org/ns/{prefix}{i}", dns=(), ips=()), ttl=TTL, actor="admin"
        )
        for i in range(count)
    ]
    pending = [
        enrollment.prepare_enrollment(c.secret, make_csr(), actor=f"e{i}") for i, c in enumerate(created)
    ]
    return created, pending


def test_record_stores_enrolments_and_renewals_prepared_apart_in_one_transaction(
    enrollment: EnrollmentService, store: Store, enrolled: x509.Certificate
) -> None:
    created, pending = _prepared(enrollment, "batch", 3)
    pending.append(enrollment.prepare_renewal(enrolled, make_csr(uris=(WEB,)), actor="peer"))
    before = _issued_serials(store)
    assert before == [enrolled.serial_number]  # prepared: signed, nothing stored yet
    head = audit_head_seq(store)
    results = enrollment.record(pending)
    assert [type(r) for r in results] == [enrollment_module.Enrolled] * 4
    issued = [r.certificate for r in results if isinstance(r, enrollment_module.Enrolled)]
    assert [c.serial_number for c in issued] == [p.issued.serial for p in pending]
    assert _issued_serials(store) == sorted([enrolled.serial_number, *(c.serial_number for c in issued)])
    for made, certificate in zip(created, issued[:3], strict=True):
        row = token_row(store, made.token_id)
        assert row.used_at is not None and row.certificate_id is not None
        assert sans(certificate) == [f"uri:{made.grant.identity}"]
    # One "issued" event per certificate, in the order given, each naming its request.
    logged = [(kind, subject, details) for kind, subject, _, details in events(store, head)]
    assert [(kind, subject) for kind, subject, _ in logged] == [
        ("issued", f"{p.issued.serial:x}") for p in pending
    ]
    assert [d.get("token_id") for _, _, d in logged[:3]] == [c.token_id for c in created]
    assert logged[3][2]["renewed_from"] == f"{enrolled.serial_number:x}"
    assert_chain_intact(store)


def test_record_refuses_the_second_redemption_of_one_token_and_stores_the_rest(
    enrollment: EnrollmentService, store: Store
) -> None:
    """Two requests with one token, prepared before either is recorded (both reads saw it
    unused), in one transaction: the conditional UPDATE lets one through."""
    shared = enrollment.create_token(grant(dns=(), ips=()), ttl=TTL, actor="admin")
    other = enrollment.create_token(
        grant("spiffe://example.org/ns/other", dns=(), ips=()), ttl=TTL, actor="admin"
    )
    first = enrollment.prepare_enrollment(shared.secret, make_csr(), actor="first")
    second = enrollment.prepare_enrollment(shared.secret, make_csr(), actor="second")
    third = enrollment.prepare_enrollment(other.secret, make_csr(), actor="third")
    results = enrollment.record([first, second, third])
    assert isinstance(results[0], enrollment_module.Enrolled) and isinstance(
        results[2], enrollment_module.Enrolled
    )
    assert isinstance(results[1], TokenError) and results[1].problem is TokenProblem.USED
    assert _issued_serials(store) == sorted([first.issued.serial, third.issued.serial])  # never the second
    assert token_row(store, shared.token_id).used_by == "first"
    assert_chain_intact(store)


def test_record_refuses_a_renewal_revoked_since_it_was_prepared_and_stores_the_rest(
    enrollment: EnrollmentService, revocations: RevocationService, store: Store, enrolled: x509.Certificate
) -> None:
    created = enrollment.create_token(
        grant("spiffe://example.org/ns/beside", dns=(), ips=()), ttl=TTL, actor="admin"
    )
    renewal = enrollment.prepare_renewal(enrolled, make_csr(uris=(WEB,)), actor="peer")
    enrolment = enrollment.prepare_enrollment(created.secret, make_csr(), actor="e")
    revocations.revoke(BySerial(enrolled.serial_number), Reason.KEY_COMPROMISE)
    results = enrollment.record([renewal, enrolment])
    assert isinstance(results[0], RenewalError) and "revoked" in str(results[0])
    assert isinstance(results[1], enrollment_module.Enrolled)
    assert _issued_serials(store) == sorted([enrolled.serial_number, enrolment.issued.serial])


def test_a_failure_inside_a_shared_transaction_costs_the_other_requests_nothing(
    enrollment: EnrollmentService, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One item fails after it wrote (its certificate row cannot be inserted): the shared
    transaction rolls back whole, each item is recorded alone, and only the bad one fails,
    leaving no row and its token unused."""
    created, pending = _prepared(enrollment, "alone", 3)
    bad_serial = pending[1].issued.serial
    original = enrollment_module.add_certificate_row

    def add_certificate_row(session: Any, row: Any, **options: Any) -> int:
        if row[0]["serial"] == bad_serial:
            raise RuntimeError("disk full")
        return original(session, row, **options)

    monkeypatch.setattr(enrollment_module, "add_certificate_row", add_certificate_row)
    results = enrollment.record(pending)
    assert isinstance(results[0], enrollment_module.Enrolled) and isinstance(
        results[2], enrollment_module.Enrolled
    )
    assert isinstance(results[1], RuntimeError) and "disk full" in str(results[1])
    assert _issued_serials(store) == sorted([pending[0].issued.serial, pending[2].issued.serial])
    assert token_row(store, created[1].token_id).used_at is None  # usable again
    assert_chain_intact(store)


def test_record_gives_up_before_writing_when_another_process_holds_the_writer_turn(
    enrollment: EnrollmentService, store: Store
) -> None:
    created = [
        enrollment.create_token(
            grant(f"spiffe://example.org/ns/busy{i}", dns=(), ips=()), ttl=TTL, actor="admin"
        )
        for i in range(2)
    ]
    pending = [enrollment.prepare_enrollment(c.secret, make_csr(), actor="e") for c in created]
    before = state(store)
    lock_path = f"{store.engine.url.database}{WRITER_LOCK_SUFFIX}"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # another open file: as another process
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(WriterBusy):
            enrollment.record(pending, writer_wait=0.01)
        alone = enrollment.record(pending[:1], writer_wait=0.01)  # one item: its outcome, not a raise
        assert len(alone) == 1 and isinstance(alone[0], WriterBusy)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert state(store) == before
    assert all(isinstance(r, enrollment_module.Enrolled) for r in enrollment.record(pending))
