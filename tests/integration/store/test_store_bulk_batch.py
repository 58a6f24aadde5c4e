"""Batch recording's shortcuts on SQLite and PostgreSQL, each held equal to the general way.

A batch encodes the columns its rows share once (``RowEncoder.with_constants``), builds
each row from the shared and the certificate's own columns, and appends audit events
chunk by chunk (``EventChain``). Rows, names and the hash chain must come out exactly as
the one-step writers make them.
"""

from __future__ import annotations

from pathlib import Path

from store_helpers import START

from certwright.files import read_csr
from certwright.issuance import Authority, Issued
from certwright.store import Store, audit_head, verify_chain
from certwright.store.bulk import EventChain, EventSpec, append_events, encoders_for
from certwright.store.models import AuditEvent, AuditKind
from certwright.store.records import issued_fields, issued_own_fields, shared_fields
from certwright.x509.authz import Authorization
from certwright.x509.profiles import BUILTIN_PROFILES
from support.certs import write_csr

MTLS = BUILTIN_PROFILES["mtls"]
SHARED = {"profile": "mtls", "requested_by": "test", "created_at": START}


def _issue(ca: Authority, tmp_path: Path, count: int) -> list[Issued]:
    issued = []
    for i in range(count):
        path = tmp_path / f"r{i}.csr"
        uri, dns = f"spiffe://example.org/batch/{i}", f"b{i}.example.org"
        write_csr(path, uris=(uri,), dns=(dns,), common_name=f"b{i}")
        authorization = Authorization.create(("reader",), {"env": "prod", "n": str(i % 2)})
        issued.append(ca.sign_csr_issued(read_csr(path), profile=MTLS, authorization=authorization))
    return issued


def test_shared_and_own_fields_make_issued_fields(ca: Authority, tmp_path: Path) -> None:
    issuer, key_id = ca.certificate.subject.rfc4514_string(), ca.key_identifier
    for issued in _issue(ca, tmp_path, 3):
        own, names = issued_own_fields(issued)
        shared = shared_fields(issuer=issuer, issuer_key_id=key_id, **SHARED)  # type: ignore[arg-type]
        assert not set(own) & set(shared)
        whole = issued_fields(issued, issuer=issuer, issuer_key_id=key_id, **SHARED)  # type: ignore[arg-type]
        assert ({**shared, **own}, names) == whole


def test_encoding_with_constants_equals_encoding_whole_rows(
    ca: Authority, store: Store, tmp_path: Path
) -> None:
    encoder = encoders_for(store.engine.dialect).certificates
    issuer, key_id = ca.certificate.subject.rfc4514_string(), ca.key_identifier
    shared = shared_fields(issuer=issuer, issuer_key_id=key_id, **SHARED)  # type: ignore[arg-type]
    encode = encoder.with_constants(shared)
    for issued in _issue(ca, tmp_path, 4):
        own, _ = issued_own_fields(issued)
        assert _plain(encode(own)) == _plain(encoder.encode({**shared, **own}))


def _plain(params: tuple[object, ...] | dict[str, object]) -> object:
    """Driver parameters comparable by value (psycopg wraps bytes in a Binary, equal by identity)."""
    unwrap = lambda value: getattr(value, "obj", value)  # noqa: E731
    if isinstance(params, dict):
        return {key: unwrap(value) for key, value in params.items()}
    return tuple(unwrap(value) for value in params)


def _events(count: int, offset: int = 0) -> list[EventSpec]:
    return [
        EventSpec(AuditKind.ISSUED, "test", START, f"{i + offset:x}", {"n": i + offset, "who": "batch"})
        for i in range(count)
    ]


def _chain(store: Store) -> list[tuple[int, str, str]]:
    """The log as (seq, prev_hash, hash), after a (0, -, head hash) entry for the head it starts from."""
    with store.read() as session:
        rows = session.query(AuditEvent.seq, AuditEvent.prev_hash, AuditEvent.hash).order_by(AuditEvent.seq)
        events = [(seq, prev, digest) for seq, prev, digest in rows]
        start = events[0][1] if events else audit_head(session)[1]
        return [(events[0][0] - 1 if events else 0, "", start), *events]


def test_appending_in_steps_chains_every_event_after_the_last(store: Store) -> None:
    before = _chain(store)
    with store.write() as session:
        chain = EventChain(session)
        chain.append(_events(3))
        chain.append([])
        chain.append(_events(4, offset=3))
        chain.close()
    after = _chain(store)
    added = after[len(before) :]
    assert [seq for seq, _, _ in added] == list(range(before[-1][0] + 1, before[-1][0] + 8))
    assert added[0][1] == before[-1][2]  # the first new event points at the old head
    assert all(prev == earlier[2] for (_, prev, _), earlier in zip(added[1:], added, strict=False))
    with store.read() as session:
        report = verify_chain(session, expected_head=(after[-1][0], after[-1][2]))
    assert report.ok, report  # every hash recomputes, and the head moved to the last event


def test_a_chain_with_nothing_appended_leaves_the_head(store: Store) -> None:
    before = _chain(store)
    with store.write() as session:
        chain = EventChain(session)
        chain.append([])
        chain.close()
    assert _chain(store) == before
    with store.read() as session:
        assert audit_head(session) == (before[-1][0], before[-1][2])
        assert verify_chain(session).ok


def test_append_events_is_one_step_of_a_chain(store: Store) -> None:
    before = _chain(store)
    with store.write() as session:
        append_events(session, _events(2))
    assert len(_chain(store)) == len(before) + 2
    with store.read() as session:
        assert verify_chain(session).ok
