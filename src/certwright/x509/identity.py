"""SPIFFE-style workload identities.

A certwright workload identity is a SPIFFE ID, ``spiffe://<trust-domain>/<path>``, carried
as the one URI SAN of a workload certificate. The rules enforced here are those of the
SPIFFE ID specification (SPIFFE-ID.md, sections 2.1-2.3 and 2.4 on length).

Example::

    >>> from certwright.x509.identity import SpiffeId
    >>> sid = SpiffeId.parse("spiffe://example.org/ns/prod/sa/payments")
    >>> sid.trust_domain, sid.path
    ('example.org', '/ns/prod/sa/payments')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from certwright.errors import InvalidIdentityError

SCHEME = "spiffe://"
# SPIFFE-ID.md 2.1: trust domain characters are lowercase letters, digits, '.', '-', '_'.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
# SPIFFE-ID.md 2.2: path segment characters are letters, digits, '.', '-', '_'.
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# SPIFFE-ID.md 2.4: URIs up to 2048 bytes; trust domain up to 255 bytes.
MAX_ID_LENGTH = 2048
MAX_TRUST_DOMAIN_LENGTH = 255
# A valid SPIFFE ID in one pattern: the trust domain, then segments that are not '.' or
# '..'. ASCII only, so its length in characters is its length in bytes. SpiffeId.parse
# tries it first: identities are parsed on every request, and a regex is one C call.
_VALID_ID = re.compile(
    rf"spiffe://([a-z0-9._-]{{1,{MAX_TRUST_DOMAIN_LENGTH}}})((?:/(?!\.{{1,2}}(?:/|\Z))[A-Za-z0-9._-]+)*)"
)


def validate_trust_domain(name: str) -> str:
    """Return ``name`` if it is a valid SPIFFE trust domain name, else raise."""
    if not name:
        raise InvalidIdentityError("the trust domain is empty")
    if len(name) > MAX_TRUST_DOMAIN_LENGTH:
        raise InvalidIdentityError(
            f"trust domain {name[:40]!r}... is longer than {MAX_TRUST_DOMAIN_LENGTH} bytes"
        )
    if not _TRUST_DOMAIN.fullmatch(name):
        bad = next(c for c in name if not _TRUST_DOMAIN.fullmatch(c))
        raise InvalidIdentityError(
            f"trust domain {name!r} contains {bad!r}: only lowercase letters, digits, "
            "'.', '-' and '_' are allowed (no port, no user info, no uppercase)"
        )
    return name


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A validated SPIFFE ID; ``path`` is empty or starts with ``/``."""

    trust_domain: str
    path: str

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse and validate a SPIFFE ID, naming the rule a bad one breaks."""
        valid = _VALID_ID.fullmatch(uri) if type(uri) is str and len(uri) <= MAX_ID_LENGTH else None
        if valid is not None:  # every rule below at once (the tests hold the two equal)
            return cls(valid[1], valid[2])
        return cls._parse_checking(uri)

    @classmethod
    def _parse_checking(cls, uri: str) -> SpiffeId:
        if not isinstance(uri, str):
            raise TypeError("a SPIFFE ID is a string")
        if len(uri.encode("utf-8")) > MAX_ID_LENGTH:
            raise InvalidIdentityError(f"SPIFFE ID is longer than {MAX_ID_LENGTH} bytes")
        if not uri.startswith(SCHEME):
            if uri.lower().startswith(SCHEME):
                raise InvalidIdentityError(f"{uri!r}: the scheme must be lowercase 'spiffe'")
            raise InvalidIdentityError(f"{uri!r} is not a SPIFFE ID: it must start with spiffe://")
        rest = uri[len(SCHEME) :]
        for char, what in (("?", "a query"), ("#", "a fragment")):
            if char in rest:
                raise InvalidIdentityError(f"{uri!r}: a SPIFFE ID cannot have {what}")
        trust_domain, slash, path = rest.partition("/")
        if "@" in trust_domain:
            raise InvalidIdentityError(f"{uri!r}: a SPIFFE ID cannot have user info")
        if trust_domain.startswith("["):
            raise InvalidIdentityError(f"{uri!r}: a trust domain is a name, not an IP address literal")
        if ":" in trust_domain:
            raise InvalidIdentityError(f"{uri!r}: a SPIFFE ID cannot have a port")
        try:
            validate_trust_domain(trust_domain)
        except InvalidIdentityError as exc:
            raise InvalidIdentityError(f"{uri!r}: {exc}") from None
        path = slash + path
        _validate_path(uri, path)
        return cls(trust_domain, path)

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        """The path segments, without the leading slash."""
        return tuple(self.path[1:].split("/")) if self.path else ()

    def member_of(self, trust_domain: str) -> bool:
        """True when this identity belongs to ``trust_domain``."""
        return self.trust_domain == trust_domain


def _validate_path(uri: str, path: str) -> None:
    if not path:
        return
    if path == "/":
        raise InvalidIdentityError(f"{uri!r}: the path cannot be just '/' (omit it instead)")
    if path.endswith("/"):
        raise InvalidIdentityError(f"{uri!r}: the path cannot end with '/'")
    for segment in path[1:].split("/"):
        if not segment:
            raise InvalidIdentityError(f"{uri!r}: the path has an empty segment ('//')")
        if segment in (".", ".."):
            raise InvalidIdentityError(f"{uri!r}: the path cannot contain '.' or '..' segments")
        if not _SEGMENT.fullmatch(segment):
            bad = next(c for c in segment if not _SEGMENT.fullmatch(c))
            raise InvalidIdentityError(
                f"{uri!r}: path segment {segment!r} contains {bad!r}; only letters, digits, "
                "'.', '-' and '_' are allowed"
            )
