"""Revocation publishing, core layer (no I/O): streamed full CRLs and an OCSP responder core.

* :func:`~certwright.revocation.crl.build_crl` - a signed full CRL (RFC 5280 5) from any
  iterable of ``(serial, revoked_at, reason)``, in memory bounded by its DER size.
* :class:`~certwright.revocation.ocsp.OCSPResponder` - RFC 6960 / RFC 5019 answers from a
  :class:`~certwright.revocation.ocsp.StatusSource`, pre-signed and cached.
* :func:`~certwright.revocation.responder.issue_responder` and
  :func:`~certwright.revocation.responder.responder_needs_rotation` - the delegated
  responder certificate.

This package imports only ``certwright.x509``, ``certwright.errors`` and ``certwright.clock``.
See ``docs/revocation.md``.
"""

from certwright.revocation.crl import build_crl
from certwright.revocation.entries import CertificateStatus, CertStatus, RevokedEntry
from certwright.revocation.ocsp import OCSPAnswer, OCSPResponder, OCSPStats, StatusSource
from certwright.revocation.responder import check_responder, issue_responder, responder_needs_rotation

__all__ = [
    "CertStatus",
    "CertificateStatus",
    "OCSPAnswer",
    "OCSPResponder",
    "OCSPStats",
    "RevokedEntry",
    "StatusSource",
    "build_crl",
    "check_responder",
    "issue_responder",
    "responder_needs_rotation",
]
