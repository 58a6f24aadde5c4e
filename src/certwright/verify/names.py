"""Names in certificates: reading extensions safely, name syntax, peer-name matching.

The primary engine (``cryptography``) does all of this itself. These helpers serve the
OpenSSL fallback, which pyOpenSSL's public API cannot ask for a host-name check, and the
messages that explain a refusal.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TypeVar

from cryptography import x509

from certwright.errors import VerificationError

E = TypeVar("E", bound=x509.ExtensionType)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# One LDH label: letters, digits, hyphens; 1-63 long; no hyphen at either end.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def describe(cert: x509.Certificate) -> str:
    """A short, human label for a certificate in messages: its subject DN."""
    subject = cert.subject.rfc4514_string()
    return subject or f"<empty subject, serial {cert.serial_number:#x}>"


def extension(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E] | None:
    """The extension of type ``kind``, ``None`` when absent.

    A certificate whose extensions cannot be parsed (duplicates, bad DER) is refused:
    RFC 5280 4.2 forbids duplicate extensions, and a check we cannot read is a check
    we cannot claim to have made.
    """
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None
    except (ValueError, TypeError, x509.DuplicateExtension) as exc:
        raise VerificationError(
            f"certificate {describe(cert)} has malformed extensions: {exc}"
        ) from exc


def subject_alt_names(cert: x509.Certificate) -> list[x509.GeneralName]:
    """The certificate's SAN entries (empty when it has no SAN extension)."""
    ext = extension(cert, x509.SubjectAlternativeName)
    return list(ext.value) if ext is not None else []


def is_dns_name(name: str, *, wildcard: bool = False) -> bool:
    """Whether ``name`` is a host name in preferred syntax (RFC 1034 3.5, RFC 1123 2.1).

    RFC 5280 4.2.1.6 requires this syntax of every dNSName. With ``wildcard``, a whole
    left-most ``*`` label is also allowed (a SAN pattern, RFC 6125 6.4.3).
    """
    if wildcard and name.startswith("*."):
        name = name[2:]
    if not name or len(name) > 253 or not name.isascii():
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def looks_like_host(text: str) -> bool:
    """Whether OpenSSL would read a subject CN as a DNS name (dotted LDH text)."""
    return "." in text and is_dns_name(text)


def common_names(cert: x509.Certificate) -> list[str]:
    """The subject's commonName values, as text."""
    return [
        str(attr.value) for attr in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    ]


# --- peer name matching (RFC 6125 section 6) ---------------------------------------------


def matches_peer(
    sans: list[x509.GeneralName], *, dns_name: str | None, ip_address: IPAddress | None
) -> bool:
    """Whether one SAN entry names the expected peer.

    Only subjectAltName is consulted: the CN fallback of RFC 6125 6.4.4 is deliberately
    absent (CA/B BR 7.1.4.3 deprecates it, and certwright's CN is a label only).
    """
    if ip_address is not None:
        # RFC 6125 6.2.1 / RFC 5280 4.2.1.6: IP identities match iPAddress SANs, exactly.
        return any(
            isinstance(san, x509.IPAddress) and san.value == ip_address for san in sans
        )
    if dns_name is not None:
        return any(
            isinstance(san, x509.DNSName) and dns_pattern_matches(san.value, dns_name)
            for san in sans
        )
    return True


def dns_pattern_matches(pattern: str, host: str) -> bool:
    """Match a dNSName SAN (possibly ``*.``-wildcarded) against a host name.

    RFC 6125 6.4.3, as CA/B BR 7.1.4.2.1 narrows it: the wildcard is a whole left-most
    label, matches exactly one label, and needs at least two labels after it. A SAN that
    is not a valid name matches nothing.
    """
    if not is_dns_name(pattern, wildcard=True):
        return False
    pattern, host = pattern.lower(), host.lower()
    if not pattern.startswith("*."):
        return pattern == host
    suffix = pattern[2:]
    if "." not in suffix:
        return False
    label, _, rest = host.partition(".")
    return bool(label) and rest == suffix
