"""certwright's exception hierarchy.

Every error a user can cause is a :class:`CertwrightError`; the message says what was
wrong and, where it helps, what to do. The CLI maps the whole family to exit code 1
(later the HTTP edge maps it to RFC 9457 problem documents); anything else escaping is a
bug.

The subclasses also derive from the builtin they refine (``ValueError``), so code that
only knows Python's conventions still catches them.
"""

from __future__ import annotations


class CertwrightError(Exception):
    """Base class of every error certwright raises on purpose."""


class InvalidInputError(CertwrightError, ValueError):
    """Input that cannot be parsed or is not acceptable at all (names the bad part)."""


class InvalidNameError(InvalidInputError):
    """A subject DN or a SAN spec is malformed."""


class InvalidIdentityError(InvalidInputError):
    """A SPIFFE ID breaks the SPIFFE ID rules."""


class InvalidKeyError(InvalidInputError):
    """A key is corrupt, of an unsupported type, or its passphrase is wrong."""


class InvalidCSRError(InvalidInputError):
    """A certificate signing request is malformed or its signature does not verify."""


class InvalidCertificateError(InvalidInputError):
    """A certificate file is corrupt or not a certificate."""


class InvalidExtensionError(InvalidInputError):
    """The certwright authorization extension (or its OID) is malformed."""


class ProfileError(InvalidInputError):
    """A profile definition (built in or from TOML) is inconsistent or malformed."""


class PolicyViolation(CertwrightError):
    """A request asks for something its profile does not allow.

    ``field`` names the part of the request at fault (``"dns"``, ``"lifetime"`` ...).
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class VerificationError(CertwrightError):
    """A certificate chain did not verify; ``reason`` is the human-readable cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CADirectoryError(CertwrightError):
    """A CA directory is missing, incomplete, or its key cannot be opened."""
