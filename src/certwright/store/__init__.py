"""The inventory: every certificate the CA issued or imported, CRL numbers, the audit log.

SQLite (embedded default) or PostgreSQL, one schema, Alembic migrations shipped in the
package. The layer below the service layer: it never signs and never reads configuration.

* :func:`open_store` / :class:`Store` (``session``): connections and transactions;
* :mod:`~certwright.store.repository`: the queries (each takes a Session);
* :mod:`~certwright.store.audit`: the hash-chained audit log;
* :mod:`~certwright.store.models`: the schema; :mod:`~certwright.store.migrate`: migrations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from certwright.lazy import lazy_attributes

if TYPE_CHECKING:
    from certwright.store.audit import AuditReport, append_event, audit_head, verify_chain
    from certwright.store.errors import (
        AmbiguousSerialError,
        DuplicateCertificateError,
        SchemaOutOfDateError,
        StoreError,
        WriterBusy,
    )
    from certwright.store.migrate import head_revision, upgrade
    from certwright.store.models import (
        AuditEvent,
        AuditKind,
        CertificateName,
        CertificateRecord,
        CertificateStatus,
        CRLState,
        NameKind,
    )
    from certwright.store.records import parse_san_query, public_key_id, search_name
    from certwright.store.repository import (
        ByIdentity,
        ByPublicKey,
        BySerial,
        CertificateFilter,
        CertificateRef,
        Cursor,
        Page,
        RevokedEntry,
        Selector,
        add_certificate,
        expiring,
        find_by_identity,
        find_by_name,
        find_by_public_key,
        get_by_fingerprint,
        get_by_serial,
        iter_revoked,
        list_certificates,
        mark_revoked,
        reserve_crl_number,
        revoke_successors,
        status_by_serial,
        unrevoke,
    )
    from certwright.store.session import Store, open_store

_LAZY = {
    "AmbiguousSerialError": "certwright.store.errors",
    "AuditEvent": "certwright.store.models",
    "AuditKind": "certwright.store.models",
    "AuditReport": "certwright.store.audit",
    "ByIdentity": "certwright.store.repository",
    "ByPublicKey": "certwright.store.repository",
    "BySerial": "certwright.store.repository",
    "CRLState": "certwright.store.models",
    "CertificateFilter": "certwright.store.repository",
    "CertificateName": "certwright.store.models",
    "CertificateRecord": "certwright.store.models",
    "CertificateRef": "certwright.store.repository",
    "CertificateStatus": "certwright.store.models",
    "Cursor": "certwright.store.repository",
    "DuplicateCertificateError": "certwright.store.errors",
    "NameKind": "certwright.store.models",
    "Page": "certwright.store.repository",
    "RevokedEntry": "certwright.store.repository",
    "SchemaOutOfDateError": "certwright.store.errors",
    "Selector": "certwright.store.repository",
    "Store": "certwright.store.session",
    "StoreError": "certwright.store.errors",
    "WriterBusy": "certwright.store.errors",
    "add_certificate": "certwright.store.repository",
    "append_event": "certwright.store.audit",
    "audit_head": "certwright.store.audit",
    "expiring": "certwright.store.repository",
    "find_by_identity": "certwright.store.repository",
    "find_by_name": "certwright.store.repository",
    "find_by_public_key": "certwright.store.repository",
    "get_by_fingerprint": "certwright.store.repository",
    "get_by_serial": "certwright.store.repository",
    "head_revision": "certwright.store.migrate",
    "iter_revoked": "certwright.store.repository",
    "list_certificates": "certwright.store.repository",
    "mark_revoked": "certwright.store.repository",
    "open_store": "certwright.store.session",
    "parse_san_query": "certwright.store.records",
    "public_key_id": "certwright.store.records",
    "reserve_crl_number": "certwright.store.repository",
    "revoke_successors": "certwright.store.repository",
    "search_name": "certwright.store.records",
    "status_by_serial": "certwright.store.repository",
    "unrevoke": "certwright.store.repository",
    "upgrade": "certwright.store.migrate",
    "verify_chain": "certwright.store.audit",
}

__all__ = [
    "AmbiguousSerialError",
    "AuditEvent",
    "AuditKind",
    "AuditReport",
    "ByIdentity",
    "ByPublicKey",
    "BySerial",
    "CRLState",
    "CertificateFilter",
    "CertificateName",
    "CertificateRecord",
    "CertificateRef",
    "CertificateStatus",
    "Cursor",
    "DuplicateCertificateError",
    "NameKind",
    "Page",
    "RevokedEntry",
    "SchemaOutOfDateError",
    "Selector",
    "Store",
    "StoreError",
    "WriterBusy",
    "add_certificate",
    "append_event",
    "audit_head",
    "expiring",
    "find_by_identity",
    "find_by_name",
    "find_by_public_key",
    "get_by_fingerprint",
    "get_by_serial",
    "head_revision",
    "iter_revoked",
    "list_certificates",
    "mark_revoked",
    "open_store",
    "parse_san_query",
    "public_key_id",
    "reserve_crl_number",
    "revoke_successors",
    "search_name",
    "status_by_serial",
    "unrevoke",
    "upgrade",
    "verify_chain",
]


# Imported on first use: see certwright.lazy.
__getattr__ = lazy_attributes(__name__, _LAZY)
