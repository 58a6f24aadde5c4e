"""Listing the inventory: filters, identity globs, the expiring query, keyset pagination."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from cryptography import x509
from store_helpers import START, Issue, issue_with, store_cert

from certwright.clock import FixedClock
from certwright.errors import InvalidInputError
from certwright.issuance import Authority
from certwright.store import (
    BySerial,
    CertificateFilter,
    CertificateStatus,
    Cursor,
    Page,
    Store,
    expiring,
    list_certificates,
    mark_revoked,
    parse_san_query,
)
from certwright.store import repository as repository_module
from certwright.x509.keys import SigningKey
from certwright.x509.profiles import CASettings
from certwright.x509.revocation_reason import RevocationReason

TD = "spiffe://example.org"
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)


def serials(page: Page) -> list[int]:
    return [record.serial for record in page.items]


def all_pages(
    store: Store, where: CertificateFilter, *, now: datetime.datetime, limit: int
) -> Iterator[Page]:
    cursor: Cursor | None = None
    while True:
        with store.read() as session:
            page = list_certificates(session, where, now=now, limit=limit, after=cursor)
        yield page
        if page.next_cursor is None:
            return
        cursor = Cursor.decode(page.next_cursor.encode())  # what a CLI or HTTP client round-trips


def listed(
    store: Store, where: CertificateFilter, *, now: datetime.datetime = START, limit: int = 100
) -> list[int]:
    return [serial for page in all_pages(store, where, now=now, limit=limit) for serial in serials(page)]


def revoke(store: Store, cert: x509.Certificate, reason: RevocationReason) -> None:
    with store.write() as session:
        assert mark_revoked(session, BySerial(cert.serial_number), reason=reason, at=START)


@pytest.fixture
def identities(store: Store, issue: Issue) -> dict[str, int]:
    """Certificates for a small tree of identities; maps the path to the serial."""
    paths = ["ns/a", "ns/b", "ns/a_b", "ns/axb", "ns/a/b", "ns/a/b/c", "nsx/a", "other/ns/a"]
    out = {}
    for path in paths:
        cert = issue(identity=f"{TD}/{path}")
        store_cert(store, cert)
        out[path] = cert.serial_number
    return out


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (f"{TD}/ns/*", {"ns/a", "ns/b", "ns/a_b", "ns/axb"}),  # one segment: never ns/a/b
        (f"{TD}/ns/a/*", {"ns/a/b"}),
        (f"{TD}/ns/**", {"ns/a", "ns/b", "ns/a_b", "ns/axb", "ns/a/b", "ns/a/b/c"}),
        (f"{TD}/*/a", {"ns/a", "nsx/a"}),
        (f"{TD}/ns/a_b", {"ns/a_b"}),  # '_' is a literal, not LIKE's any-character
        (f"{TD}/ns/a*", {"ns/a", "ns/a_b", "ns/axb"}),
        ("spiffe://*/ns/a", {"ns/a"}),
        (f"{TD}/**/a", {"ns/a", "nsx/a", "other/ns/a"}),
        (f"{TD}/ns", set()),
        (f"{TD.upper()}/ns/a", set()),  # case-sensitive, like certwright.globs (SQLite's LIKE is not)
    ],
)
def test_identity_globs_follow_certwright_globs(
    store: Store, identities: dict[str, int], pattern: str, expected: set[str]
) -> None:
    found = listed(store, CertificateFilter(identity_glob=pattern))
    assert sorted(found) == sorted(identities[path] for path in expected)


def test_glob_pages_fill_across_scan_chunks(
    store: Store, identities: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows the glob rejects are skipped chunk after chunk until each page is full."""
    monkeypatch.setattr(repository_module, "_SCAN_CHUNK", 2)
    pages = list(all_pages(store, CertificateFilter(identity_glob=f"{TD}/*/a"), now=START, limit=1))
    assert [len(page.items) for page in pages] == [1, 1]
    assert {s for page in pages for s in serials(page)} == {identities["ns/a"], identities["nsx/a"]}


def test_filters_by_status_profile_issuer_san_and_expiry(
    store: Store,
    clock: FixedClock,
    issue: Issue,
    other_root: tuple[x509.Certificate, SigningKey],
    settings: CASettings,
    leaf_key: SigningKey,
) -> None:
    web = issue(identity=f"{TD}/web", dns=("web.example.org",))
    api = issue(dns=("api.example.org",), profile="server")
    short = issue(identity=f"{TD}/short", lifetime=HOUR)
    root, key = other_root
    foreign = issue_with(Authority(certificate=root, key=key, settings=settings, clock=clock), leaf_key)(
        identity=f"{TD}/web"
    )
    for cert, profile in ((web, "mtls"), (api, "server"), (short, "mtls"), (foreign, "mtls")):
        store_cert(store, cert, profile=profile)
    revoke(store, web, RevocationReason.KEY_COMPROMISE)
    later = START + 2 * HOUR
    aki = foreign.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier

    assert listed(store, CertificateFilter(status=CertificateStatus.REVOKED)) == [web.serial_number]
    assert listed(store, CertificateFilter(profile="server")) == [api.serial_number]
    assert listed(store, CertificateFilter(issuer_key_id=aki)) == [foreign.serial_number]
    assert listed(store, CertificateFilter(san=parse_san_query("dns:WEB.example.org"))) == [web.serial_number]
    assert listed(store, CertificateFilter(expired=True), now=later) == [short.serial_number]
    assert short.serial_number not in listed(store, CertificateFilter(expired=False), now=later)
    live_mtls = CertificateFilter(status=CertificateStatus.GOOD, expired=False, profile="mtls")
    assert listed(store, live_mtls, now=later) == [foreign.serial_number]


def test_expiring_keeps_live_and_held_certificates_soonest_first(
    store: Store, clock: FixedClock, issue: Issue
) -> None:
    gone = issue(identity=f"{TD}/gone", lifetime=HOUR)  # expired by the time we ask
    clock.advance(2 * HOUR)
    now = clock.now()
    soon = issue(identity=f"{TD}/soon", lifetime=2 * DAY)
    held = issue(identity=f"{TD}/held", lifetime=3 * DAY)
    revoked = issue(identity=f"{TD}/revoked", lifetime=4 * DAY)
    edge = issue(identity=f"{TD}/edge", lifetime=7 * DAY)  # not after == now + 7d: inside
    late = issue(identity=f"{TD}/late", lifetime=20 * DAY)
    for cert in (gone, soon, held, revoked, edge, late):
        store_cert(store, cert)
    revoke(store, held, RevocationReason.CERTIFICATE_HOLD)
    revoke(store, revoked, RevocationReason.SUPERSEDED)
    with store.read() as session:
        page = expiring(session, now=now, within=7 * DAY)
    assert serials(page) == [soon.serial_number, held.serial_number, edge.serial_number]
    assert page.next_cursor is None
    assert [r.not_after for r in page.items] == sorted(r.not_after for r in page.items)


def test_pages_are_stable_with_ties_and_concurrent_inserts(
    store: Store, clock: FixedClock, issue: Issue
) -> None:
    """Keyset pages over many equal not_after values: none repeats, none is skipped."""
    certs = []
    for index in range(23):
        if index % 5 == 0:
            clock.advance(datetime.timedelta(seconds=1))  # groups of five share one not_after
        certs.append(issue(identity=f"{TD}/tie/{index}"))
    rows = sorted((cert.not_valid_after_utc, store_cert(store, cert), cert.serial_number) for cert in certs)
    expected = [serial for _, _, serial in rows]  # the order keyset pages promise: (not_after, id)

    pages = list(all_pages(store, CertificateFilter(), now=START, limit=4))
    assert [len(p.items) for p in pages] == [4, 4, 4, 4, 4, 3]
    assert [s for p in pages for s in serials(p)] == expected

    # New rows between two pages: one that sorts before the cursor (never shown, never
    # shifting the rest), one after it (shown once, in its place).
    with store.read() as session:
        first = list_certificates(session, CertificateFilter(), now=START, limit=10)
    early = issue(identity=f"{TD}/early", lifetime=HOUR)
    clock.advance(HOUR)
    late = issue(identity=f"{TD}/late")
    store_cert(store, early)
    store_cert(store, late)
    rest: list[int] = []
    cursor = first.next_cursor
    while cursor is not None:
        with store.read() as session:
            page = list_certificates(session, CertificateFilter(), now=START, limit=4, after=cursor)
        rest += serials(page)
        cursor = page.next_cursor
    assert serials(first) + rest == [*expected, late.serial_number]


def test_an_exact_last_page_has_no_cursor(store: Store, issue: Issue) -> None:
    for index in range(4):
        store_cert(store, issue(identity=f"{TD}/n/{index}"))
    pages = list(all_pages(store, CertificateFilter(), now=START, limit=2))
    assert [len(p.items) for p in pages] == [2, 2]
    last = pages[-1].items[-1]
    with store.read() as session:
        after = Cursor(last.not_after, last.id)
        after_last = list_certificates(session, CertificateFilter(), now=START, after=after)
    assert after_last == Page((), None)


@pytest.mark.parametrize("text", ["", "garbage", "bm90LWEtY3Vyc29y", Cursor(START, 1).encode()[:-3]])
def test_a_bad_cursor_is_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid page cursor"):
        Cursor.decode(text)


def test_cursors_round_trip() -> None:
    cursor = Cursor(START + datetime.timedelta(microseconds=5), 2**40)
    assert Cursor.decode(cursor.encode()) == cursor


def test_a_page_size_below_one_is_refused(store: Store) -> None:
    with store.read() as session, pytest.raises(InvalidInputError, match="page size"):
        list_certificates(session, CertificateFilter(), now=START, limit=0)
