"""The request path's Core-level writers, on SQLite and on PostgreSQL.

``insert_token``/``redeem``/``link_certificate``/``lock_held`` (store.tokens) and
``add_certificate_row``/``Prepared`` (store.bulk) replace ORM objects and flushes on the
enrol and renew path: each must store and read exactly what the ORM forms do.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from store_helpers import START, Issue, store_cert

from certwright.store import (
    BySerial,
    CertificateStatus,
    DuplicateCertificateError,
    Store,
    audit_head,
    get_by_serial,
    mark_revoked,
    verify_chain,
)
from certwright.store.audit import append_event
from certwright.store.bulk import EventSpec, Prepared, add_certificate_row, append_events
from certwright.store.models import AuditKind, CertificateRecord, EnrollmentToken
from certwright.store.records import certificate_fields
from certwright.store.tokens import (
    HeldCertificate,
    RedeemedToken,
    add_token,
    get_token,
    insert_token,
    link_certificate,
    lock_held,
    redeem,
)
from certwright.x509.revocation_reason import RevocationReason
from support.postgres import PG_ADMIN

TTL = datetime.timedelta(minutes=15)
SECRET_HASH = hashlib.sha256(b"secret").digest()
GRANT = {
    "identity": "spiffe://example.org/ns/web",
    "profile": "mtls",
    "dns": ["api.example.org"],
    "ips": ["10.0.0.7", "fd00::1"],
    "roles": ["reader"],
    "attributes": {"team": "payments"},
    "lifetime_seconds": 3600,
}


def columns(store: Store, token_id: str) -> dict[str, object]:
    with store.read() as session:
        row = get_token(session, token_id)
        assert row is not None
        return {c.key: getattr(row, c.key) for c in EnrollmentToken.__table__.columns if c.key != "id"}


def test_insert_token_stores_what_add_token_stores(store: Store) -> None:
    common = {**GRANT, "created_by": "admin", "created_at": START, "expires_at": START + TTL}
    with store.write() as session:
        add_token(session, token_id="orm", token_hash=b"\x01" * 32, **common)  # type: ignore[arg-type]
        insert_token(session, token_id="core", token_hash=b"\x02" * 32, **common)  # type: ignore[arg-type]
    orm, core = columns(store, "orm"), columns(store, "core")
    assert {**orm, "token_id": None, "token_hash": None} == {**core, "token_id": None, "token_hash": None}
    with pytest.raises(sa.exc.IntegrityError), store.write() as session:  # the hash is unique
        insert_token(session, token_id="again", token_hash=b"\x02" * 32, **common)  # type: ignore[arg-type]


def new_token(store: Store) -> None:
    with store.write() as session:
        insert_token(
            session,
            token_id="t1",
            token_hash=SECRET_HASH,
            created_by="admin",
            created_at=START,
            expires_at=START + TTL,
            **GRANT,  # type: ignore[arg-type]
        )


def test_redeem_returns_the_grant_once_and_only_before_expiry(store: Store) -> None:
    new_token(store)
    with store.write() as session:
        assert redeem(session, SECRET_HASH, at=START + TTL, by="late") is None  # the first dead instant
        assert redeem(session, hashlib.sha256(b"guess").digest(), at=START, by="x") is None
    later = START + datetime.timedelta(minutes=1)
    with store.write() as session:
        token = redeem(session, SECRET_HASH, at=later, by="first")
    assert isinstance(token, RedeemedToken)
    assert token._asdict() | {"id": 0} == {"id": 0, "token_id": "t1", **GRANT}
    with store.write() as session:
        assert redeem(session, SECRET_HASH, at=later, by="second") is None
    row = columns(store, "t1")
    assert (row["used_at"], row["used_by"], row["certificate_id"]) == (later, "first", None)


def test_a_rolled_back_redemption_and_link_leave_the_token_unused(store: Store, issue: Issue) -> None:
    new_token(store)
    row_id = store_cert(store, issue(identity=GRANT["identity"]))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError), store.write() as session:
        token = redeem(session, SECRET_HASH, at=START, by="failed")
        assert token is not None
        link_certificate(session, token.id, row_id)
        raise RuntimeError("issuance failed")
    assert columns(store, "t1")["used_at"] is None
    with store.write() as session:
        token = redeem(session, SECRET_HASH, at=START, by="retry")
        assert token is not None
        link_certificate(session, token.id, row_id)
    assert columns(store, "t1")["certificate_id"] == row_id


def test_add_certificate_row_stores_what_add_certificate_stores(store: Store, issue: Issue) -> None:
    orm_cert = issue(identity="spiffe://example.org/ns/web", dns=("api.example.org",))
    core_cert = issue(identity="spiffe://example.org/ns/web", dns=("api.example.org",))
    orm_id = store_cert(store, orm_cert)
    row = certificate_fields(core_cert, profile="mtls", requested_by="tester", created_at=START)
    with store.write() as session:
        core_id = add_certificate_row(session, row)
    assert core_id != orm_id
    with store.read() as session:
        orm = get_by_serial(session, orm_cert.serial_number)
        core = get_by_serial(session, core_cert.serial_number)
        assert orm is not None and core is not None and core.id == core_id
        skip = {"id", "serial", "fingerprint_sha256", "public_key_id", "der", "not_before", "not_after"}
        keys = [c.key for c in CertificateRecord.__table__.columns if c.key not in skip]
        assert {k: getattr(core, k) for k in keys} == {k: getattr(orm, k) for k in keys}
        assert sorted((n.kind.value, n.value) for n in core.names) == sorted(
            (n.kind.value, n.value) for n in orm.names
        )
    with pytest.raises(DuplicateCertificateError), store.write() as session:
        add_certificate_row(session, row)


@pytest.mark.parametrize("dns_names", [0, 2, 12])  # PostgreSQL: one statement up to 8 names, then three
def test_add_certificate_row_stores_every_name_and_links_the_token(
    store: Store, issue: Issue, dns_names: int
) -> None:
    new_token(store)
    dns = tuple(f"n{i}.example.org" for i in range(dns_names))
    cert = issue(identity="spiffe://example.org/ns/web", dns=dns)
    row = certificate_fields(cert, profile="mtls", requested_by="tester", created_at=START)
    with store.write() as session:
        redeemed = redeem(session, SECRET_HASH, at=START, by="tester")
        assert redeemed is not None
        ident = add_certificate_row(session, row, link_token=redeemed.id)
    with store.read() as session:
        stored = get_by_serial(session, cert.serial_number)
        assert stored is not None and stored.id == ident
        assert sorted((n.kind.value, n.value) for n in stored.names) == sorted(
            [("uri", "spiffe://example.org/ns/web"), *(("dns", d) for d in dns)]
        )
        token = get_token(session, "t1")
        assert token is not None and token.certificate_id == ident and token.used_by == "tester"


@pytest.mark.parametrize("count", [5, 20])  # PostgreSQL: one statement up to 16 events, then two
def test_append_events_chains_and_moves_the_head_past_every_event(store: Store, count: int) -> None:
    with store.write() as session:
        append_event(session, kind=AuditKind.TOKEN, actor="a", at=START, subject="s0")
    events = [EventSpec(AuditKind.ISSUED, "b", START, f"s{i}", {"n": i}) for i in range(1, count + 1)]
    with store.write() as session:
        append_events(session, events)
    with store.write() as session:
        append_event(session, kind=AuditKind.TOKEN, actor="c", at=START, subject="last")
    with store.read() as session:
        assert audit_head(session)[0] == count + 2
        report = verify_chain(session)
    assert report.ok, report


def test_a_failed_joined_insert_leaves_no_row_no_name_and_the_token_unlinked(
    store: Store, issue: Issue
) -> None:
    # A duplicate serial makes the whole statement fail (row, names and link alike).
    new_token(store)
    cert = issue(identity="spiffe://example.org/ns/web", dns=("api.example.org",))
    row = certificate_fields(cert, profile="mtls", requested_by="tester", created_at=START)
    with store.write() as session:
        add_certificate_row(session, row)
    before = columns(store, "t1")
    with pytest.raises(DuplicateCertificateError), store.write() as session:
        redeemed = redeem(session, SECRET_HASH, at=START, by="tester")
        assert redeemed is not None
        add_certificate_row(session, row, link_token=redeemed.id)
    assert columns(store, "t1") == before  # rolled back: unused, unlinked
    with store.read() as session:
        stored = get_by_serial(session, cert.serial_number)
        assert stored is not None and len(stored.names) == 2


def test_lock_held_reads_the_status_a_renewal_decides_on(store: Store, issue: Issue) -> None:
    cert = issue(identity="spiffe://example.org/ns/web")
    row_id = store_cert(store, cert)
    fingerprint = cert.fingerprint(hashes.SHA256())
    with store.write() as session:
        held = lock_held(session, fingerprint)
        assert lock_held(session, b"\x00" * 32) is None
    assert held == HeldCertificate(
        id=row_id,
        serial=cert.serial_number,
        status=CertificateStatus.GOOD,
        revocation_reason=None,
        not_after=cert.not_valid_after_utc,
        profile="mtls",
        identity="spiffe://example.org/ns/web",
    )
    assert held.serial_hex == format(cert.serial_number, "x")
    with store.write() as session:
        mark_revoked(session, BySerial(cert.serial_number), reason=RevocationReason.KEY_COMPROMISE, at=START)
    with store.write() as session:
        revoked = lock_held(session, fingerprint)
    assert revoked is not None
    assert (revoked.status, revoked.revocation_reason) == (
        CertificateStatus.REVOKED,
        RevocationReason.KEY_COMPROMISE,
    )


def lock_waiters(database: str) -> int:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (database,),
        ).fetchone()
    return int(row[0]) if row else 0


def poll(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_revocation_waits_for_a_renewal_holding_lock_held(store: Store, issue: Issue) -> None:
    """lock_held locks the row as lock_certificate does: a concurrent revocation waits, then applies."""
    cert = issue(identity="spiffe://example.org/ns/web")
    store_cert(store, cert)
    started = threading.Event()
    outcome: dict[str, object] = {}

    def revoke() -> None:
        started.set()
        try:
            with store.write() as session:
                outcome["changed"] = mark_revoked(
                    session, BySerial(cert.serial_number), reason=RevocationReason.SUPERSEDED, at=START
                )
        except Exception as exc:  # reported below
            outcome["changed"] = exc

    thread = threading.Thread(target=revoke)
    with store.write() as session:
        held = lock_held(session, cert.fingerprint(hashes.SHA256()))
        assert held is not None and held.status is CertificateStatus.GOOD
        thread.start()
        assert started.wait(30)
        if store.dialect == "postgresql":
            database = store.engine.url.database or ""
            poll(lambda: lock_waiters(database) >= 1, "the revocation to wait on the row lock")
        assert "changed" not in outcome  # still waiting: the renewal decides on a status that holds
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(outcome["changed"], list) and len(outcome["changed"]) == 1


def test_append_events_of_one_event_chains_with_append_event(store: Store) -> None:
    with store.write() as session:
        append_event(session, kind=AuditKind.TOKEN, actor="a", at=START, subject="s1", details={"n": 1})
    with store.write() as session:
        append_events(session, [EventSpec(AuditKind.ISSUED, "b", START, "s2", {"n": 2})])
    with store.write() as session:
        append_event(session, kind=AuditKind.TOKEN, actor="c", at=START, subject="s3")
    with store.read() as session:
        assert audit_head(session)[0] == 3
        report = verify_chain(session)
    assert report.ok, report


def test_prepared_json_values_are_decoded_once_and_never_shared(store: Store) -> None:
    # JSON texts repeat across tokens, so their decoded values are remembered: each read
    # must still get values of its own (a caller changing one changes no other read).
    tokens = EnrollmentToken.__table__
    assert isinstance(tokens, sa.Table)
    new_token(store)
    query = Prepared(
        sa.select(tokens.c.dns, tokens.c.attributes, tokens.c.roles).where(tokens.c.token_id == "t1"),
        columns=[tokens.c.dns, tokens.c.attributes, tokens.c.roles],
    )
    with store.read() as session:
        ((dns, attributes, roles),) = query.rows(session)
        assert (dns, attributes, roles) == (GRANT["dns"], GRANT["attributes"], GRANT["roles"])
        dns.append("evil.example.org")
        attributes["team"] = "changed"
        roles.clear()
        assert query.rows(session) == [(GRANT["dns"], GRANT["attributes"], GRANT["roles"])]


def test_prepared_binds_literals_and_repeated_names_and_decodes_rows(store: Store) -> None:
    tokens = EnrollmentToken.__table__
    assert isinstance(tokens, sa.Table)
    new_token(store)
    bound = sa.bindparam("at", type_=tokens.c.expires_at.type)
    query = Prepared(
        sa.select(tokens.c.token_id, tokens.c.expires_at, tokens.c.dns).where(
            tokens.c.created_at < bound, tokens.c.expires_at > bound, tokens.c.profile == "mtls"
        ),
        columns=[tokens.c.token_id, tokens.c.expires_at, tokens.c.dns],
    )
    with store.read() as session:
        assert query.rows(session, {"at": START + datetime.timedelta(minutes=1)}) == [
            ("t1", START + TTL, ["api.example.org"])
        ]
        assert query.rows(session, {"at": START + TTL}) == []
