"""The inventory's vocabulary, without SQLAlchemy: its enums and the stored serial form.

:mod:`~certwright.store.models` maps these onto columns. They live apart so that code
which only builds rows (:mod:`~certwright.store.records`) or writes a SQLite inventory
directly (:mod:`~certwright.store.sqlite_batch`) need not import SQLAlchemy, whose import
alone costs a batch CLI run ~0.3-0.5 s.
"""

from __future__ import annotations

import enum

from certwright.errors import InvalidInputError

# The newest packaged schema revision (store/migrations), written down so that opening an
# up-to-date inventory does not import Alembic (~0.1 s of every CLI command); a test holds
# it equal to Alembic's head.
HEAD_REVISION = "0003"
GENESIS_HASH = "0" * 64  # prev_hash of the first audit event
SERIAL_OCTETS = 20
MAX_SERIAL = 2 ** (8 * SERIAL_OCTETS) - 1


class CertificateStatus(enum.Enum):
    """What the CA decided about a certificate. Expiry is derived from ``not_after``."""

    GOOD = "good"
    REVOKED = "revoked"
    ON_HOLD = "on_hold"  # revoked with reason certificateHold: the only state that can be undone


class NameKind(enum.Enum):
    """The subjectAltName kinds certwright issues and searches (RFC 5280 4.2.1.6)."""

    DNS = "dns"
    IP = "ip"
    URI = "uri"
    EMAIL = "email"


class AuditKind(enum.Enum):
    """What an audit event records. New kinds need no migration (no CHECK constraint)."""

    ISSUED = "issued"
    REVOKED = "revoked"
    UNREVOKED = "unrevoked"
    CRL = "crl"
    KEY = "key"
    IMPORT = "import"
    OCSP_SIGNER = "ocsp_signer"
    TOKEN = "token"  # noqa: S105  (enrolment token events, not a secret)
    CA = "ca"


def serial_to_bytes(serial: int) -> bytes:
    """The stored form of a serial: 20 octets, big-endian, unsigned."""
    if not 0 <= serial <= MAX_SERIAL:
        raise InvalidInputError(
            f"serial number {serial:#x} cannot be stored: it must be positive and at most "
            f"{SERIAL_OCTETS} octets (RFC 5280 4.1.2.2)"
        )
    return serial.to_bytes(SERIAL_OCTETS, "big")
