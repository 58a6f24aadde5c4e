"""The revocation facts the CRL builder and the OCSP responder are given.

* :class:`RevokedEntry` is one line of a CRL. It is a ``NamedTuple``, not a dataclass, on
  purpose: a CRL streams up to millions of them, and :func:`~certwright.revocation.crl.build_crl`
  accepts any ``(serial, revoked_at, reason)`` tuple, so a database cursor's rows feed it as
  they are, without an object per row.
* :class:`CertificateStatus` is what a status source knows about one serial for OCSP.

Reasons are ``cryptography.x509.ReasonFlags`` at this boundary (RFC 5280 5.3.1 CRLReason).

Example::

    >>> import datetime
    >>> from cryptography import x509
    >>> from certwright.revocation.entries import CertificateStatus, RevokedEntry
    >>> when = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    >>> RevokedEntry(0x1234, when, x509.ReasonFlags.key_compromise).serial
    4660
    >>> CertificateStatus.revoked(when, x509.ReasonFlags.superseded).is_revoked
    True
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from typing import NamedTuple

from cryptography import x509

from certwright.errors import InvalidInputError


class RevokedEntry(NamedTuple):
    """One revoked certificate: serial, revocation time (timezone-aware), RFC 5280 reason."""

    serial: int
    revoked_at: datetime.datetime
    reason: x509.ReasonFlags | None = None


# RFC 5280 5.3.1: removeFromCRL "is for use with delta CRLs only"; certwright publishes full CRLs
# and answers OCSP from current state, where a released hold is simply "not revoked".
DELTA_ONLY_REASONS = frozenset({x509.ReasonFlags.remove_from_crl})


class CertStatus(enum.Enum):
    """What the inventory says of a certificate it knows (RFC 6960 2.2 good / revoked)."""

    GOOD = "good"
    REVOKED = "revoked"


@dataclass(frozen=True)
class CertificateStatus:
    """A known certificate's status; ``revoked_at`` and ``reason`` only when revoked.

    An unknown serial is not a status: a :class:`~certwright.revocation.ocsp.StatusSource`
    returns ``None`` for it.
    """

    status: CertStatus
    revoked_at: datetime.datetime | None = None
    reason: x509.ReasonFlags | None = None

    def __post_init__(self) -> None:
        if self.status is CertStatus.GOOD:
            if self.revoked_at is not None or self.reason is not None:
                raise InvalidInputError("a good certificate has no revocation time or reason")
            return
        if self.revoked_at is None:
            raise InvalidInputError("a revoked certificate needs its revocation time")
        require_aware(self.revoked_at, "revoked_at")
        if self.reason in DELTA_ONLY_REASONS:
            raise InvalidInputError("removeFromCRL is not a revocation reason (RFC 5280 5.3.1)")

    @classmethod
    def good(cls) -> CertificateStatus:
        return _GOOD

    @classmethod
    def revoked(
        cls, revoked_at: datetime.datetime, reason: x509.ReasonFlags | None = None
    ) -> CertificateStatus:
        return cls(CertStatus.REVOKED, revoked_at, reason)

    @property
    def is_revoked(self) -> bool:
        return self.status is CertStatus.REVOKED


_GOOD = CertificateStatus(CertStatus.GOOD)


def require_aware(value: datetime.datetime, name: str) -> None:
    """Refuse a naive datetime: certwright's times are timezone-aware (UTC by convention)."""
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.utcoffset() is None:
        raise InvalidInputError(f"{name} must be timezone-aware (got naive {value.isoformat()})")
