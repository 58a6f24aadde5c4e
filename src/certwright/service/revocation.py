"""Revoking certificates and publishing what was revoked (CRL, OCSP).

Example::

    >>> revocations = RevocationService(store=store, issuer=ca.intermediate,
    ...                                 clock=clock, actor="cli:alice")      # doctest: +SKIP
    >>> revocations.revoke(BySerial(serial), RevocationReason.KEY_COMPROMISE)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography import x509
from sqlalchemy.orm import Session

from certwright.clock import Clock, SystemClock
from certwright.errors import CertwrightError, InvalidInputError
from certwright.revocation.crl import build_crl
from certwright.revocation.entries import CertificateStatus
from certwright.service.certificates import ca_key_id
from certwright.store import (
    AuditKind,
    BySerial,
    CertificateRecord,
    CertificateRef,
    Selector,
    Store,
    append_event,
    get_by_serial,
    iter_revoked,
    mark_revoked,
    reserve_crl_number,
    revoke_successors,
    status_by_serial,
    unrevoke,
)
from certwright.store import (
    CertificateStatus as StoredStatus,
)
from certwright.x509.keys import SigningKey
from certwright.x509.revocation_reason import RevocationReason

DEFAULT_CRL_VALIDITY = datetime.timedelta(days=7)
# Revoking for these reaches the certificates renewed from the revoked one (see revoke()).
# Not superseded (replaced, nothing wrong: its successor is the replacement), not
# certificateHold (undone later, and so would the successors' be), not unspecified (an
# operator tidying old certificates must not revoke the current one by surprise).
REACHES_SUCCESSORS = frozenset(RevocationReason) - {
    RevocationReason.UNSPECIFIED,
    RevocationReason.SUPERSEDED,
    RevocationReason.CERTIFICATE_HOLD,
    RevocationReason.REMOVE_FROM_CRL,
}


@dataclass(frozen=True)
class PublishedCRL:
    """A CRL as built: its number, DER, and the count of entries it lists."""

    number: int
    der: bytes
    entries: int
    this_update: datetime.datetime
    next_update: datetime.datetime


@dataclass
class RevocationService:
    """Revoke, unrevoke, and publish CRLs for the certificates of one issuing CA."""

    store: Store
    issuer: x509.Certificate | None = None  # None: serials are unique enough (--db without --ca)
    clock: Clock = field(default_factory=SystemClock)
    actor: str = "certwright"

    @property
    def issuer_key_id(self) -> bytes | None:
        return ca_key_id(self.issuer) if self.issuer is not None else None

    def revoke(self, selector: Selector, reason: RevocationReason) -> list[CertificateRef]:
        """Revoke what ``selector`` names (one transaction, one audit event per certificate).

        An unknown serial, or a serial already revoked, is refused with the reason and
        changes nothing; an identity or key with no live certificate is refused too.

        For a reason that says the holder must not be trusted (:data:`REACHES_SUCCESSORS`:
        keyCompromise, affiliationChanged, cessationOfOperation, privilegeWithdrawn, ...),
        the certificates renewed from these, and their renewals, are revoked too, with the
        same reason, each with its own audit event naming the certificate it followed:
        whoever held the key could renew before the revocation, and the successor was
        obtained with it. Returned after the ones ``selector`` named.
        """
        now = self.clock.now()
        with self.store.write() as session:
            if isinstance(selector, BySerial):
                self._require_known(session, selector)
            changed = mark_revoked(session, self._scoped(selector), reason=reason, at=now)
            if not changed:
                raise CertwrightError(_nothing_to_revoke(selector))
            self._audit_revoked(session, changed, reason, now, _describe(selector))
            if reason in REACHES_SUCCESSORS:
                successors = revoke_successors(session, [ref.id for ref in changed], reason=reason, at=now)
                origin = ", ".join(format(ref.serial, "x") for ref in changed)
                self._audit_revoked(session, successors, reason, now, f"renewed from {origin}")
                changed = changed + successors
        return changed

    def _audit_revoked(
        self,
        session: Session,
        refs: list[CertificateRef],
        reason: RevocationReason,
        at: datetime.datetime,
        selector: str,
    ) -> None:
        for ref in refs:
            append_event(
                session,
                kind=AuditKind.REVOKED,
                actor=self.actor,
                at=at,
                subject=format(ref.serial, "x"),
                details={"reason": reason.value, "selector": selector},
            )

    def unrevoke(self, serial: int) -> CertificateRef:
        """Lift a certificateHold (RFC 5280 5.3.1); any other revocation is final."""
        now = self.clock.now()
        with self.store.write() as session:
            record = self._require_known(session, BySerial(serial, self.issuer_key_id))
            selector = BySerial(serial, record.issuer_key_id)
            changed = unrevoke(session, selector, at=now)
            if not changed:
                state = record.status.value
                raise CertwrightError(
                    f"certificate {serial:x} is {state}: only a certificateHold can be lifted"
                )
            append_event(session, kind=AuditKind.UNREVOKED, actor=self.actor, at=now, subject=f"{serial:x}")
        return changed[0]

    def publish_crl(
        self,
        key: SigningKey,
        *,
        validity: datetime.timedelta = DEFAULT_CRL_VALIDITY,
        distribution_point: str | None = None,
    ) -> PublishedCRL:
        """Build the issuer's full CRL from the inventory, streaming its entries.

        The CRL number is reserved (and audited) in its own short transaction, so a CRL of
        a million entries never holds the write lock while it is built; a build that fails
        leaves a gap in the numbers, which RFC 5280 5.2.3 allows (they must only increase).
        """
        if validity <= datetime.timedelta(0):
            raise InvalidInputError("the CRL validity must be positive")
        issuer, issuer_key_id = self.issuer, self.issuer_key_id
        if issuer is None or issuer_key_id is None:
            raise CertwrightError("a CRL is published by an issuing CA: open the CA directory")
        this_update = self.clock.now()
        next_update = this_update + validity
        with self.store.write() as session:
            number = reserve_crl_number(session, issuer_key_id, at=this_update)
        counter = _Counter()
        with self.store.read() as session:
            entries = counter.count(iter_revoked(session, issuer_key_id))
            der = build_crl(
                issuer=issuer,
                key=key,
                entries=((s, at, reason.flag) for s, at, reason in entries),
                crl_number=number,
                this_update=this_update,
                next_update=next_update,
                distribution_point=distribution_point,
            )
        with self.store.write() as session:
            append_event(
                session,
                kind=AuditKind.CRL,
                actor=self.actor,
                at=this_update,
                subject=f"{number}",
                details={
                    "issuer": issuer.subject.rfc4514_string(),
                    "entries": counter.seen,
                    "next_update": next_update.isoformat(),
                    "sha256": hashlib.sha256(der).hexdigest(),
                },
            )
        return PublishedCRL(number, der, counter.seen, this_update, next_update)

    def _scoped(self, selector: Selector) -> Selector:
        if isinstance(selector, BySerial) and selector.issuer_key_id is None:
            return BySerial(selector.serial, self.issuer_key_id)
        return selector

    def _require_known(self, session: Session, selector: BySerial) -> CertificateRecord:
        scoped = BySerial(selector.serial, selector.issuer_key_id or self.issuer_key_id)
        record = get_by_serial(session, scoped.serial, issuer_key_id=scoped.issuer_key_id)
        if record is None:
            source = f" from {self.issuer.subject.rfc4514_string()}" if self.issuer is not None else ""
            raise CertwrightError(f"no certificate with serial {scoped.serial:x}{source} in the inventory")
        return record


class _Counter:
    """Counts the entries of a stream as they pass (the CRL builder consumes it once)."""

    def __init__(self) -> None:
        self.seen = 0

    def count(
        self, stream: Iterator[tuple[int, datetime.datetime, RevocationReason]]
    ) -> Iterator[tuple[int, datetime.datetime, RevocationReason]]:
        for item in stream:
            self.seen += 1
            yield item


@dataclass
class StoreStatusSource:
    """OCSP answers from the inventory: good, revoked (held = revoked, certificateHold), unknown."""

    store: Store
    issuer_key_id: bytes

    def lookup(self, serial: int) -> CertificateStatus | None:
        with self.store.read() as session:
            row = status_by_serial(session, serial, issuer_key_id=self.issuer_key_id)
        if row is None:
            return None
        if row.status is StoredStatus.GOOD:
            return CertificateStatus.good()
        assert row.revoked_at is not None and row.reason is not None  # CHECK constraints
        return CertificateStatus.revoked(row.revoked_at, row.reason.flag)


def _describe(selector: Selector) -> str:
    if isinstance(selector, BySerial):
        return f"serial {selector.serial:x}"
    if hasattr(selector, "identity"):
        return f"identity {selector.identity}"
    return f"public key {selector.public_key_id.hex()}"


def _nothing_to_revoke(selector: Selector) -> str:
    if isinstance(selector, BySerial):
        return f"certificate {selector.serial:x} is already revoked"
    return f"no live certificate of {_describe(selector)} to revoke (unknown, expired or already revoked)"
