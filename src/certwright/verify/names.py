"""Names in certificates: reading extensions safely, peer-name matching, name constraints.

The primary engine (``cryptography``) does all of this itself. These helpers serve the
OpenSSL fallback, which pyOpenSSL's public API cannot ask for a host-name check, and they
turn a bare "permitted subtree violation" into a reason that names the offending identity.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Sequence
from typing import TypeVar

from cryptography import x509

from certwright.errors import VerificationError
from certwright.verify.request import IPAddress

E = TypeVar("E", bound=x509.ExtensionType)


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
    label, matches exactly one label, and needs at least two labels after it.
    """
    if not pattern.isascii():
        return False  # SANs are IA5String A-labels (RFC 5280 4.2.1.6)
    pattern, host = pattern.lower(), host.lower()
    if not pattern.startswith("*."):
        return pattern == host
    suffix = pattern[2:]
    if "*" in suffix or suffix.count(".") < 1:
        return False
    label, _, rest = host.partition(".")
    return bool(label) and rest == suffix


# --- name constraints (RFC 5280 4.2.1.10) ------------------------------------------------


def uri_host(uri: str) -> str | None:
    """The host of a URI as a lower-case domain name, or ``None`` if it has none.

    RFC 5280 4.2.1.10: a URI name constraint applies to the host part; a URI without an
    authority, or whose host is an IP address, cannot satisfy a URI constraint.
    """
    try:
        host = urllib.parse.urlsplit(uri).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.rstrip(".")
    return None


def uri_within(host: str, subtree: str) -> bool:
    """Whether a URI host lies in a URI subtree.

    RFC 5280 4.2.1.10: ``host.example.com`` names exactly that host; ``.example.com``
    names any host below it, but not ``example.com`` itself.
    """
    subtree = subtree.lower()
    if subtree.startswith("."):
        return host.endswith(subtree) and len(host) > len(subtree)
    return host == subtree


def dns_within(name: str, subtree: str) -> bool:
    """Whether a dNSName lies in a DNS subtree (RFC 5280 4.2.1.10: add labels on the left).

    A leading-dot subtree (an OpenSSL and Go convention) names only proper subdomains.
    """
    name, subtree = name.lower().rstrip("."), subtree.lower().rstrip(".")
    if not subtree:
        return True  # an empty dNSName constraint covers every name
    if subtree.startswith("."):
        return name.endswith(subtree)
    return name == subtree or name.endswith("." + subtree)


def name_constraints(cert: x509.Certificate) -> x509.NameConstraints | None:
    """The certificate's NameConstraints value, ``None`` when it has none."""
    ext = extension(cert, x509.NameConstraints)
    return ext.value if ext is not None else None


def has_uri_constraints(cert: x509.Certificate) -> bool:
    """Whether the certificate constrains URIs (permitted or excluded), tolerating junk.

    Used to scan *candidate* CAs before building a path, so a certificate whose
    extensions cannot be parsed is simply "not URI-constrained" here; the engine that
    builds the path refuses it on its own terms.
    """
    try:
        nc = name_constraints(cert)
    except VerificationError:
        return False
    if nc is None:
        return False
    subtrees = [*(nc.permitted_subtrees or ()), *(nc.excluded_subtrees or ())]
    return any(isinstance(s, x509.UniformResourceIdentifier) for s in subtrees)


def constraint_violation(
    names: list[x509.GeneralName], nc: x509.NameConstraints
) -> str | None:
    """The first name outside ``nc`` (as text), or ``None`` when all are inside.

    Covers the URI, DNS and IP forms, the ones certwright issues. Within a form,
    permitted subtrees (if any of that form exist) must contain the name and no
    excluded subtree may (RFC 5280 4.2.1.10).
    """
    for name in names:
        if not _name_allowed(name, nc):
            return str(name.value)
    return None


def explain_constraint_violation(
    cert: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> str | None:
    """A reason naming the SAN of ``cert`` that a candidate CA's constraints exclude.

    Engines report *that* a constraint failed, not which name broke which CA's rule;
    this recomputes it for the message only (the engine's verdict stands either way).
    """
    try:
        names = subject_alt_names(cert)
    except VerificationError:
        return None
    for ca in candidates:
        try:
            nc = name_constraints(ca)
        except VerificationError:
            continue  # a malformed candidate cannot be the one that was applied
        outside = constraint_violation(names, nc) if nc is not None else None
        if outside is not None:
            return (
                f"identity {outside} outside the issuer's name constraints "
                f"(constrained by {describe(ca)})"
            )
    return None


def _name_allowed(name: x509.GeneralName, nc: x509.NameConstraints) -> bool:
    permitted = [s for s in nc.permitted_subtrees or () if type(s) is type(name)]
    excluded = [s for s in nc.excluded_subtrees or () if type(s) is type(name)]
    if not permitted and not excluded:
        return True
    if isinstance(name, x509.UniformResourceIdentifier):
        host = uri_host(name.value)
        if host is None:
            return False  # RFC 5280 4.2.1.10: MUST reject such a URI when constrained
        within = [uri_within(host, s.value) for s in (*permitted, *excluded)]
    elif isinstance(name, x509.DNSName):
        within = [dns_within(name.value, s.value) for s in (*permitted, *excluded)]
    elif isinstance(name, x509.IPAddress):
        within = [_ip_within(name.value, s.value) for s in (*permitted, *excluded)]
    else:
        return True  # forms certwright does not issue are left to the engine
    in_permitted, in_excluded = within[: len(permitted)], within[len(permitted) :]
    return (not permitted or any(in_permitted)) and not any(in_excluded)


def _ip_within(address: object, network: object) -> bool:
    if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address) and isinstance(
        network, ipaddress.IPv4Network | ipaddress.IPv6Network
    ):
        return address.version == network.version and address in network
    return False
