"""Issuing, recording and finding certificates.

Example::

    >>> service = CertificateService(store=store, authority=authority, clock=clock,
    ...                              actor="cli:alice")                       # doctest: +SKIP
    >>> cert = service.issue(key.public_key(), profile=profiles["mtls"],
    ...                      identity=SpiffeId.parse("spiffe://example.org/web"))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy.orm import Session

from certwright.batch import BatchItem, BatchRequest, Checked, start_signing
from certwright.clock import Clock, SystemClock
from certwright.errors import CertwrightError
from certwright.issuance import Authority, Issued, VerifiedCSR
from certwright.service.batches import BatchOutcome, batch_shared_fields, record_chunks
from certwright.store import (
    AuditKind,
    CertificateFilter,
    CertificateRecord,
    Cursor,
    Page,
    Store,
    add_certificate,
    append_event,
    get_by_fingerprint,
    get_by_serial,
    list_certificates,
)
from certwright.store.bulk import (
    EncodedRow,
    EventChain,
    EventSpec,
    add_certificates,
    append_events,
    encoders_for,
)
from certwright.store.records import certificate_fields, issuance_details, issued_own_fields
from certwright.x509.authz import DEFAULT_OID, Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import PublicKey
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import Profile

_SHA256 = hashes.SHA256()


@dataclass(frozen=True)
class ImportReport:
    """What ``import`` did: certificates added, and those already in the inventory."""

    imported: tuple[x509.Certificate, ...] = ()
    already_present: tuple[x509.Certificate, ...] = ()


@dataclass
class CertificateService:
    """Issue and look up certificates; every issuance is stored and audited atomically.

    ``authority`` may be None for read-only use (list, show, import).
    """

    store: Store
    authority: Authority | None = None
    extension_oid: str = DEFAULT_OID
    clock: Clock = field(default_factory=SystemClock)
    actor: str = "certwright"

    def issue(
        self,
        public_key: PublicKey,
        *,
        profile: Profile,
        identity: SpiffeId | None = None,
        sans: SubjectAltNames | None = None,
        authorization: Authorization | None = None,
        subject: x509.Name | str | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> x509.Certificate:
        """Issue for a public key; returned only once its row and audit event are committed."""
        authority = self._authority()
        with self.store.write() as session:
            certificate = authority.issue(
                public_key,
                profile=profile,
                identity=identity,
                sans=sans,
                authorization=authorization,
                subject=subject,
                lifetime=lifetime,
            )
            self._record(session, certificate, profile=profile.name, kind=AuditKind.ISSUED)
        return certificate

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest | VerifiedCSR,
        *,
        profile: Profile,
        identity: SpiffeId | None = None,
        sans: SubjectAltNames | None = None,
        authorization: Authorization | None = None,
        subject: x509.Name | str | None = None,
        lifetime: datetime.timedelta | None = None,
    ) -> x509.Certificate:
        """Issue for a CSR (its signature verified); stored and audited like :meth:`issue`."""
        authority = self._authority()
        with self.store.write() as session:
            certificate = authority.sign_csr(
                csr,
                profile=profile,
                identity=identity,
                sans=sans,
                authorization=authorization,
                subject=subject,
                lifetime=lifetime,
            )
            self._record(session, certificate, profile=profile.name, kind=AuditKind.ISSUED)
        return certificate

    def record_issued(self, certificates: Sequence[x509.Certificate], *, profile: str | None) -> None:
        """Store certificates signed outside this service (a batch's, a new CA's own).

        One transaction: either every one is recorded, or none is.
        """
        now = self.clock.now()
        rows = [
            certificate_fields(
                c, profile=profile, requested_by=self.actor, created_at=now, extension_oid=self.extension_oid
            )
            for c in certificates
        ]
        events = [
            EventSpec(
                AuditKind.ISSUED, self.actor, now, format(c.serial_number, "x"), issuance_details(r, profile)
            )
            for c, (r, _) in zip(certificates, rows, strict=True)
        ]
        with self.store.write() as session:
            add_certificates(session, rows)
            append_events(session, events)

    def sign_csr_batch(
        self,
        directory: Path,
        names: Sequence[str],
        request: BatchRequest,
        *,
        staging: Path,
        jobs: int | None = None,
        checked: Mapping[str, Checked] | None = None,
        keep_going: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> BatchOutcome:
        """Sign a directory of CSRs into ``staging`` on every core; record them all at once.

        :func:`~certwright.batch.start_signing`, then :meth:`record_batch`. The caller
        moves staged files into place after this returns, never before: no certificate
        leaves the CA without its row. Refusals without ``keep_going`` raise
        :class:`BatchRefusedError` and record nothing.
        """
        authority = self._authority()
        with start_signing(
            authority, directory, names, request, staging=staging, jobs=jobs, checked=checked
        ) as run:
            return self.record_batch(run, request, keep_going=keep_going, progress=progress)

    def record_batch(
        self,
        chunks: Iterable[list[BatchItem]],
        request: BatchRequest,
        *,
        keep_going: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> BatchOutcome:
        """Record a batch as its workers sign it (:func:`~certwright.batch.start_signing`).

        Each chunk's rows and audit events are inserted as it arrives, inside ONE write
        transaction that commits only when every request was signed (or, with
        ``keep_going``, every signable one). Workers send back each certificate's DER
        and facts (:class:`~certwright.issuance.Issued`); rows are built from those, not
        from parsing the certificates. Refusals without ``keep_going`` raise
        :class:`BatchRefusedError`, and nothing is recorded.
        """
        shared = batch_shared_fields(self._authority(), request, self.actor, self.clock.now())
        with self.store.write() as session:
            # A refusal raises out of the transaction: it rolls back, nothing is kept.
            return record_chunks(
                chunks, _BatchRecorder(session, shared=shared), keep_going=keep_going, progress=progress
            )

    def import_certificates(self, certificates: Iterable[x509.Certificate]) -> ImportReport:
        """Bring existing certificates into the inventory (one transaction; duplicates skipped)."""
        imported: list[x509.Certificate] = []
        present: list[x509.Certificate] = []
        with self.store.write() as session:
            for certificate in certificates:
                if get_by_fingerprint(session, certificate.fingerprint(_SHA256)) is not None:
                    present.append(certificate)
                    continue
                self._record(session, certificate, profile=None, kind=AuditKind.IMPORT)
                imported.append(certificate)
        return ImportReport(tuple(imported), tuple(present))

    def get(self, serial: int, *, issuer_key_id: bytes | None = None) -> CertificateRecord | None:
        """The inventory row of a serial (of the issuer with ``issuer_key_id`` when given)."""
        with self.store.read() as session:
            return get_by_serial(session, serial, issuer_key_id=issuer_key_id)

    def list(self, where: CertificateFilter, *, limit: int = 100, after: Cursor | None = None) -> Page:
        """One page of certificates matching ``where`` (keyset pagination: pass ``next_cursor``)."""
        with self.store.read() as session:
            return list_certificates(session, where, now=self.clock.now(), limit=limit, after=after)

    def _authority(self) -> Authority:
        if self.authority is None:
            raise CertwrightError("issuing needs the CA key: open the CA with its passphrase")
        return self.authority

    def _record(
        self, session: Session, certificate: x509.Certificate, *, profile: str | None, kind: AuditKind
    ) -> CertificateRecord:
        now = self.clock.now()
        record = add_certificate(
            session,
            certificate,
            profile=profile,
            requested_by=self.actor,
            created_at=now,
            extension_oid=self.extension_oid,
        )
        append_event(
            session,
            kind=kind,
            actor=self.actor,
            at=now,
            subject=format(certificate.serial_number, "x"),
            details=issuance_details(record, profile),
        )
        return record


class _BatchRecorder:
    """A batch's rows and issuance events, written chunk by chunk in the caller's transaction.

    The columns every row shares (``shared``: issuer, profile, requester, time) are
    encoded once; each certificate adds its own columns, its names, and its own event in
    the hash chain, whose head moves once, in :meth:`close`.
    """

    def __init__(self, session: Session, *, shared: dict[str, Any]) -> None:
        self._session = session
        self._shared = shared
        self._encode = encoders_for(session.get_bind().dialect).certificates.with_constants(shared)
        self._chain = EventChain(session)

    def add(self, certificates: Sequence[Issued]) -> None:
        shared = self._shared
        actor, at = shared["requested_by"], shared["created_at"]
        rows, events = [], []
        for issued in certificates:
            fields, names = issued_own_fields(issued)
            rows.append(EncodedRow(self._encode(fields), fields["fingerprint_sha256"], names))
            details = issuance_details({**shared, **fields}, shared["profile"])
            events.append(EventSpec(AuditKind.ISSUED, actor, at, format(issued.serial, "x"), details))
        add_certificates(self._session, rows)
        self._chain.append(events)

    def close(self) -> None:
        self._chain.close()


def ca_key_id(ca_certificate: x509.Certificate) -> bytes:
    """The key id the inventory files a CA's children under (its SubjectKeyIdentifier)."""
    try:
        return ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(ca_certificate.public_key()).digest
