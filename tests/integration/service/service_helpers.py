"""Helpers of the service tests (fixtures are in conftest.py beside this file).

Importable as ``service_helpers`` by the test modules here (pytest puts this directory
on ``sys.path`` for them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography import x509

from certwright.service import CertificateService
from certwright.store import AuditEvent, CertificateRecord, CRLState, Store, audit_head, verify_chain
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import SigningKey, generate_key
from certwright.x509.profiles import BUILTIN_PROFILES

MTLS = BUILTIN_PROFILES["mtls"]
NS = "spiffe://example.org/ns"


@dataclass(frozen=True)
class Snapshot:
    """Everything a use case could change: rows (serial, status, reason), CRL numbers, the audit head."""

    rows: tuple[tuple[int, str, str | None], ...]
    crl_numbers: tuple[int, ...]
    head: tuple[int, str]


def snapshot(store: Store) -> Snapshot:
    with store.read() as session:
        rows = session.execute(
            sa.select(CertificateRecord.serial, CertificateRecord.status, CertificateRecord.revocation_reason)
        ).all()
        numbers = session.scalars(sa.select(CRLState.last_number)).all()
        return Snapshot(
            tuple(sorted((s, st.value, r.value if r else None) for s, st, r in rows)),
            tuple(sorted(numbers)),
            audit_head(session),
        )


def events(store: Store, after: int = 0) -> list[tuple[str, str | None, str, dict[str, Any]]]:
    """(kind, subject, actor, details) of every audit event after sequence ``after``."""
    with store.read() as session:
        found = session.scalars(sa.select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq))
        return [(e.kind.value, e.subject, e.actor, json.loads(e.details)) for e in found]


def assert_chain_intact(store: Store) -> None:
    with store.read() as session:
        report = verify_chain(session)
    assert report.ok, report


def issue(
    service: CertificateService,
    name: str,
    *,
    key: SigningKey | None = None,
    lifetime: Any = None,
) -> x509.Certificate:
    """An mtls leaf for ``spiffe://example.org/ns/NAME`` through the service."""
    return service.issue(
        (key or generate_key()).public_key(),
        profile=MTLS,
        identity=SpiffeId.parse(f"{NS}/{name}"),
        lifetime=lifetime,
    )
