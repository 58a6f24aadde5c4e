"""The use cases: one transaction each, between the edges (CLI, later HTTP) and the store.

A certificate is returned only after the transaction that stores it has committed: if
the write fails, the caller gets the error, never an unrecorded certificate.
"""

from certwright.service.certificates import (
    BatchOutcome,
    BatchRefusedError,
    CertificateService,
    ImportReport,
)
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
