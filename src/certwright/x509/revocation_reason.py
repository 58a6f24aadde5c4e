"""RFC 5280 revocation reasons (5.3.1, CRLReason), named as the RFC spells them.

The values are the RFC's camelCase names (``keyCompromise``), which is also how the CLI,
the JSON output and the inventory spell them; :meth:`RevocationReason.flag` and
:meth:`RevocationReason.from_flag` convert to and from ``cryptography``'s ``ReasonFlags``
for building CRLs and OCSP responses.

Example::

    >>> from certwright.x509.revocation_reason import RevocationReason, parse_reason
    >>> parse_reason("keyCompromise") is RevocationReason.KEY_COMPROMISE
    True
    >>> RevocationReason.KEY_COMPROMISE.code
    1
"""

from __future__ import annotations

import enum

from cryptography import x509

from certwright.errors import InvalidInputError


class RevocationReason(enum.Enum):
    """CRLReason ::= ENUMERATED (RFC 5280 5.3.1); the value is the RFC name."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CERTIFICATE_HOLD = "certificateHold"
    # RFC 5280 5.3.1: removeFromCRL "is for use with delta CRLs only"; a certificate is
    # never revoked with it (the store refuses it), but CRL readers may meet it.
    REMOVE_FROM_CRL = "removeFromCRL"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"
    AA_COMPROMISE = "aACompromise"

    @property
    def code(self) -> int:
        """The ENUMERATED value of RFC 5280 5.3.1 (7 is unused)."""
        return _CODES[self]

    @property
    def flag(self) -> x509.ReasonFlags:
        """The same reason as ``cryptography`` names it (for CRL and OCSP builders)."""
        return x509.ReasonFlags(self.value)

    @classmethod
    def from_flag(cls, flag: x509.ReasonFlags) -> RevocationReason:
        """The reason of a CRL entry or OCSP response read with ``cryptography``."""
        return cls(flag.value)  # ReasonFlags' values are the RFC names as well


_CODES = {
    RevocationReason.UNSPECIFIED: 0,
    RevocationReason.KEY_COMPROMISE: 1,
    RevocationReason.CA_COMPROMISE: 2,
    RevocationReason.AFFILIATION_CHANGED: 3,
    RevocationReason.SUPERSEDED: 4,
    RevocationReason.CESSATION_OF_OPERATION: 5,
    RevocationReason.CERTIFICATE_HOLD: 6,
    RevocationReason.REMOVE_FROM_CRL: 8,
    RevocationReason.PRIVILEGE_WITHDRAWN: 9,
    RevocationReason.AA_COMPROMISE: 10,
}
_BY_FOLDED_NAME = {reason.value.casefold(): reason for reason in RevocationReason}


def parse_reason(text: str) -> RevocationReason:
    """Parse an RFC 5280 reason name (``keyCompromise``; case does not matter).

    Raises :class:`InvalidInputError` listing the valid names.
    """
    reason = _BY_FOLDED_NAME.get(text.strip().casefold())
    if reason is None:
        names = ", ".join(r.value for r in RevocationReason)
        raise InvalidInputError(f"unknown revocation reason {text!r}: use one of {names}")
    return reason
