"""The inventory: every certificate the CA issued or imported, CRL numbers, the audit log.

SQLite (embedded default) or PostgreSQL, one schema, Alembic migrations shipped in the
package. The layer below the service layer: it never signs and never reads configuration.

* :func:`open_store` / :class:`Store` (``session``): connections and transactions;
* :mod:`~certwright.store.repository`: the queries (each takes a Session);
* :mod:`~certwright.store.audit`: the hash-chained audit log;
* :mod:`~certwright.store.models`: the schema; :mod:`~certwright.store.migrate`: migrations.
"""

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
