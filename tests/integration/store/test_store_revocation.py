"""Revocation rules, CRL entry streaming and CRL numbers (including under concurrency)."""

from __future__ import annotations

import datetime
import threading

import pytest
import sqlalchemy as sa
from cryptography import x509
from store_helpers import START, Issue, store_cert

from certwright.clock import FixedClock
from certwright.errors import InvalidInputError
from certwright.store import (
    ByIdentity,
    ByPublicKey,
    BySerial,
    CertificateRecord,
    CertificateRef,
    CertificateStatus,
    RevokedEntry,
    Store,
    get_by_serial,
    iter_revoked,
    mark_revoked,
    public_key_id,
    reserve_crl_number,
    unrevoke,
)
from certwright.x509.keys import KeyType, generate_key
from certwright.x509.revocation_reason import RevocationReason

WEB = "spiffe://example.org/ns/prod/web"
LATER = START + datetime.timedelta(hours=3)
HOLD = RevocationReason.CERTIFICATE_HOLD
KEY_COMPROMISE = RevocationReason.KEY_COMPROMISE


def aki(cert: x509.Certificate) -> bytes:
    value = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert value is not None
    return value


State = tuple[CertificateStatus, datetime.datetime | None, str | None]


def state(store: Store, cert: x509.Certificate) -> State:
    with store.read() as session:
        record = get_by_serial(session, cert.serial_number)
    assert record is not None
    reason = record.revocation_reason
    return record.status, record.revoked_at, None if reason is None else reason.value


def test_revoke_by_serial_then_again_changes_nothing(store: Store, issue: Issue) -> None:
    cert = issue(identity=WEB)
    store_cert(store, cert)
    with store.write() as session:
        changed = mark_revoked(session, BySerial(cert.serial_number), reason=KEY_COMPROMISE, at=START)
    assert changed == [CertificateRef(changed[0].id, cert.serial_number, aki(cert))]
    assert state(store, cert) == (CertificateStatus.REVOKED, START, "keyCompromise")
    with store.write() as session:
        assert mark_revoked(session, BySerial(cert.serial_number), reason=HOLD, at=LATER) == []
        assert mark_revoked(session, BySerial(cert.serial_number), reason=KEY_COMPROMISE, at=LATER) == []
    assert state(store, cert) == (CertificateStatus.REVOKED, START, "keyCompromise")


def test_a_hold_can_be_lifted(store: Store, issue: Issue) -> None:
    cert = issue(identity=WEB)
    store_cert(store, cert)
    with store.write() as session:
        assert len(mark_revoked(session, BySerial(cert.serial_number), reason=HOLD, at=START)) == 1
    assert state(store, cert) == (CertificateStatus.ON_HOLD, START, "certificateHold")
    with store.write() as session:
        assert len(unrevoke(session, BySerial(cert.serial_number), at=LATER)) == 1
    assert state(store, cert) == (CertificateStatus.GOOD, None, None)


def test_only_a_hold_can_be_lifted(store: Store, issue: Issue) -> None:
    revoked, good = issue(identity=WEB), issue(identity=WEB + "-2")
    store_cert(store, revoked)
    store_cert(store, good)
    with store.write() as session:
        mark_revoked(session, BySerial(revoked.serial_number), reason=RevocationReason.SUPERSEDED, at=START)
    with store.write() as session:
        assert unrevoke(session, BySerial(revoked.serial_number), at=LATER) == []
        assert unrevoke(session, BySerial(good.serial_number), at=LATER) == []
    assert state(store, revoked) == (CertificateStatus.REVOKED, START, "superseded")
    assert state(store, good) == (CertificateStatus.GOOD, None, None)


def test_a_held_certificate_can_be_revoked_for_good_keeping_its_date(store: Store, issue: Issue) -> None:
    cert = issue(identity=WEB)
    store_cert(store, cert)
    with store.write() as session:
        mark_revoked(session, BySerial(cert.serial_number), reason=HOLD, at=START)
    with store.write() as session:
        assert len(mark_revoked(session, BySerial(cert.serial_number), reason=KEY_COMPROMISE, at=LATER)) == 1
    assert state(store, cert) == (CertificateStatus.REVOKED, START, "keyCompromise")


def test_remove_from_crl_revokes_nothing(store: Store, issue: Issue) -> None:
    cert = issue(identity=WEB)
    store_cert(store, cert)
    with store.write() as session, pytest.raises(InvalidInputError, match="removeFromCRL"):
        mark_revoked(session, BySerial(cert.serial_number), reason=RevocationReason.REMOVE_FROM_CRL, at=START)
    assert state(store, cert)[0] is CertificateStatus.GOOD


def test_an_unknown_serial_changes_nothing(store: Store, issue: Issue) -> None:
    store_cert(store, issue(identity=WEB))
    with store.write() as session:
        assert mark_revoked(session, BySerial(12345), reason=KEY_COMPROMISE, at=START) == []
        elsewhere = BySerial(12345, issuer_key_id=b"x" * 20)
        assert mark_revoked(session, elsewhere, reason=KEY_COMPROMISE, at=START) == []
        count = session.scalar(
            sa.select(sa.func.count()).where(CertificateRecord.status != CertificateStatus.GOOD)
        )
    assert count == 0


def test_revoke_by_identity_takes_every_live_certificate_of_it_and_nothing_else(
    store: Store, clock: FixedClock, issue: Issue
) -> None:
    expired = issue(identity=WEB, lifetime=datetime.timedelta(hours=1))
    clock.advance(datetime.timedelta(hours=2))
    live = [issue(identity=WEB), issue(identity=WEB)]
    nested, other = issue(identity=WEB + "/x"), issue(identity=WEB + "x")
    for cert in (expired, *live, nested, other):
        store_cert(store, cert)
    with store.write() as session:
        changed = mark_revoked(session, ByIdentity(WEB), reason=KEY_COMPROMISE, at=clock.now())
    assert sorted(ref.serial for ref in changed) == sorted(c.serial_number for c in live)
    for cert in (expired, nested, other):
        assert state(store, cert)[0] is CertificateStatus.GOOD


def test_revoke_by_key_takes_every_live_certificate_of_the_key(store: Store, issue: Issue) -> None:
    compromised = [issue(identity=WEB), issue(identity=WEB + "-b")]
    other = issue(identity=WEB, key=generate_key(KeyType.EC_P256))
    for cert in (*compromised, other):
        store_cert(store, cert)
    with store.write() as session:
        objects = [get_by_serial(session, c.serial_number) for c in compromised]  # loaded before the update
        changed = mark_revoked(
            session, ByPublicKey(public_key_id(compromised[0])), reason=KEY_COMPROMISE, at=START
        )
        # Objects the session already held are refreshed, so a use case never returns stale rows.
        assert {o.status for o in objects if o is not None} == {CertificateStatus.REVOKED}
    assert sorted(ref.serial for ref in changed) == sorted(c.serial_number for c in compromised)
    assert state(store, other)[0] is CertificateStatus.GOOD


def test_the_database_refuses_inconsistent_revocation_columns(store: Store, issue: Issue) -> None:
    """CHECK constraints, not Python, keep status, time and reason in step."""
    store_cert(store, issue(identity=WEB))
    for assignment in (
        "status = 'revoked'",  # no time, no reason
        "status = 'on_hold', revoked_at = created_at, revocation_reason = 'keyCompromise'",
        "status = 'revoked', revoked_at = created_at, revocation_reason = 'certificateHold'",
        "status = 'expired'",
        "revocation_reason = 'noSuchReason'",
    ):
        with pytest.raises(sa.exc.IntegrityError), store.write() as session:
            session.execute(sa.text(f"UPDATE certificates SET {assignment}"))


def test_crl_entries_stream_in_serial_order_for_one_issuer(
    store: Store, clock: FixedClock, issue: Issue, root: x509.Certificate
) -> None:
    certs = [issue(identity=f"{WEB}/{i}", lifetime=datetime.timedelta(hours=1 + 17 * i)) for i in range(40)]
    for cert in certs:
        store_cert(store, cert)
    revoked = certs[::3]
    with store.write() as session:
        for index, cert in enumerate(revoked):
            reason = HOLD if index % 2 else KEY_COMPROMISE
            at = START + datetime.timedelta(minutes=index)
            mark_revoked(session, BySerial(cert.serial_number), reason=reason, at=at)
    issuer = aki(certs[0])
    with store.read() as session:
        entries = list(iter_revoked(session, issuer, batch_size=4))
        assert list(iter_revoked(session, b"another issuer")) == []
        cutoff = START + datetime.timedelta(days=15)
        recent = list(iter_revoked(session, issuer, expired_before=cutoff))
    expected = sorted(
        RevokedEntry(c.serial_number, START + datetime.timedelta(minutes=i), [KEY_COMPROMISE, HOLD][i % 2])
        for i, c in enumerate(revoked)
    )
    assert entries == expected
    assert all(type(e.serial) is int and e.revoked_at.tzinfo is datetime.UTC for e in entries)
    by_serial = {c.serial_number: c for c in certs}
    assert recent == [e for e in expected if by_serial[e.serial].not_valid_after_utc >= cutoff]
    assert 0 < len(recent) < len(expected)


def test_crl_numbers_increase_per_issuer_and_a_rollback_gives_its_number_back(store: Store) -> None:
    def reserve(issuer: bytes) -> int:
        with store.write() as session:
            return reserve_crl_number(session, issuer, at=START)

    assert [reserve(b"issuer-a") for _ in range(3)] == [1, 2, 3]
    assert reserve(b"issuer-b") == 1
    with pytest.raises(RuntimeError), store.write() as session:
        assert reserve_crl_number(session, b"issuer-a", at=START) == 4
        raise RuntimeError("signing the CRL failed")
    assert reserve(b"issuer-a") == 4  # the failed CRL was never published: its number is reused


def test_crl_numbers_are_unique_and_increasing_under_concurrency(store: Store) -> None:
    """Four threads, each with its own connection, reserving at once from a fresh issuer."""
    per_thread, threads_count = 25, 4
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_count)

    def work(index: int) -> None:
        try:
            barrier.wait()
            mine = []
            for _ in range(per_thread):
                with store.write() as session:
                    mine.append(reserve_crl_number(session, b"busy issuer", at=START))
            results[index] = mine
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    every = sorted(n for numbers in results.values() for n in numbers)
    assert every == list(range(1, per_thread * threads_count + 1))
    for numbers in results.values():
        assert numbers == sorted(numbers)
