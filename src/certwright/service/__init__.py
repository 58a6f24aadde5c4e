"""The use cases: one transaction each, between the edges (CLI, later HTTP) and the store.

A certificate is returned only after the transaction that stores it has committed: if
the write fails, the caller gets the error, never an unrecorded certificate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from certwright.lazy import lazy_attributes

if TYPE_CHECKING:
    from certwright.service.batches import BatchOutcome, BatchRefusedError
    from certwright.service.certificates import CertificateService, ImportReport
    from certwright.service.enrollment import (
        CreatedToken,
        Enrolled,
        EnrollmentService,
        RenewalError,
        TokenError,
        TokenGrant,
        TokenProblem,
    )
    from certwright.service.revocation import RevocationService, StoreStatusSource

_LAZY = {
    "BatchOutcome": "certwright.service.batches",
    "BatchRefusedError": "certwright.service.batches",
    "CertificateService": "certwright.service.certificates",
    "CreatedToken": "certwright.service.enrollment",
    "Enrolled": "certwright.service.enrollment",
    "EnrollmentService": "certwright.service.enrollment",
    "ImportReport": "certwright.service.certificates",
    "RenewalError": "certwright.service.enrollment",
    "RevocationService": "certwright.service.revocation",
    "StoreStatusSource": "certwright.service.revocation",
    "TokenError": "certwright.service.enrollment",
    "TokenGrant": "certwright.service.enrollment",
    "TokenProblem": "certwright.service.enrollment",
}

__all__ = [
    "BatchOutcome",
    "BatchRefusedError",
    "CertificateService",
    "CreatedToken",
    "Enrolled",
    "EnrollmentService",
    "ImportReport",
    "RenewalError",
    "RevocationService",
    "StoreStatusSource",
    "TokenError",
    "TokenGrant",
    "TokenProblem",
]


# Imported on first use: see certwright.lazy.
__getattr__ = lazy_attributes(__name__, _LAZY)
