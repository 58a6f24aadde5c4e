"""Name constraints (RFC 5280 4.2.1.10), for the OpenSSL fallback and for messages.

OpenSSL enforces name constraints in the fallback; :func:`check_name_constraints`
enforces them again, for the four forms certwright issues or meets (URI, DNS, IP,
rfc822), with the stricter readings ``cryptography`` applies: a malformed name is never
inside a subtree, a DNS subtree with a leading period is malformed, and a wildcard SAN
must not reach into an excluded subtree. The fallback accepts only what both accept.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Callable, Sequence

from cryptography import x509

from certwright.errors import VerificationError
from certwright.verify.names import (
    common_names,
    describe,
    extension,
    is_dns_name,
    looks_like_host,
    subject_alt_names,
)

_FORMS = (x509.UniformResourceIdentifier, x509.DNSName, x509.IPAddress, x509.RFC822Name)
# Names x subtrees compared per CA before refusing: cryptography (its "budget") and
# OpenSSL (1 << 20 in NAME_CONSTRAINTS_check) cap this work too; 2^16 is far above any
# real certificate yet keeps a hostile chain cheap.
MAX_COMPARISONS = 1 << 16


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


def check_name_constraints(chain: Sequence[x509.Certificate]) -> None:
    """Enforce every CA's constraints on the certificates below it in ``chain``.

    RFC 5280 6.1.3(b): a CA's constraints bind each later certificate in the path,
    except self-issued intermediates; ``chain`` is leaf first, anchor last.
    """
    for position, ca in enumerate(chain[1:], start=1):
        nc = name_constraints(ca)
        if nc is None:
            continue
        _check_subtrees_wellformed(nc, ca)
        for index, cert in enumerate(chain[:position]):
            if index > 0 and cert.subject == cert.issuer:
                continue
            outside = constraint_violation(subject_alt_names(cert), nc)
            if outside is not None:
                raise VerificationError(
                    f"identity {outside} outside the issuer's name constraints "
                    f"(constrained by {describe(ca)})"
                )


def _check_subtrees_wellformed(nc: x509.NameConstraints, ca: x509.Certificate) -> None:
    for subtree in (*(nc.permitted_subtrees or ()), *(nc.excluded_subtrees or ())):
        # RFC 5280 4.2.1.10: DNS subtrees are names to which labels are added on the
        # left; the leading-period form is defined for URIs and mailboxes only.
        if isinstance(subtree, x509.DNSName) and subtree.value and not is_dns_name(subtree.value):
            raise VerificationError(
                f"malformed dNSName name constraint {subtree.value!r} ({describe(ca)})"
            )


def constraint_violation(names: list[x509.GeneralName], nc: x509.NameConstraints) -> str | None:
    """The first name outside ``nc`` (as text), or ``None`` when all are inside.

    Within a form, permitted subtrees (if any of that form exist) must contain the name
    and no excluded subtree may (RFC 5280 4.2.1.10). Forms other than URI, DNS, IP and
    rfc822 are left to the engine. Raises :class:`VerificationError` past the work
    budget, as cryptography and OpenSSL also refuse (a denial-of-service guard).
    """
    subtrees = len(nc.permitted_subtrees or ()) + len(nc.excluded_subtrees or ())
    if len(names) * subtrees > MAX_COMPARISONS:
        raise VerificationError(
            f"{len(names)} names against {subtrees} name constraints exceed the "
            f"{MAX_COMPARISONS} comparisons certwright allows"
        )
    for name in names:
        if isinstance(name, _FORMS) and not _allowed(name, nc):
            return str(name.value)
    return None


def _allowed(name: x509.GeneralName, nc: x509.NameConstraints) -> bool:
    permitted = [s for s in nc.permitted_subtrees or () if type(s) is type(name)]
    excluded = [s for s in nc.excluded_subtrees or () if type(s) is type(name)]
    if not permitted and not excluded:
        return True
    if isinstance(name, x509.DNSName) and name.value.startswith("*."):
        return _wildcard_allowed(name.value[2:], permitted, excluded)
    within = _matcher(name)
    if within is None:
        return False  # a malformed name is in no subtree, so never permitted
    in_permitted = not permitted or any(within(s.value) for s in permitted)
    return in_permitted and not any(within(s.value) for s in excluded)


def _matcher(name: x509.GeneralName) -> Callable[[object], bool] | None:
    """A test "is ``name`` inside this subtree?", or ``None`` if ``name`` is malformed.

    The name is parsed once here, not once per subtree.
    """
    if isinstance(name, x509.UniformResourceIdentifier):
        host = uri_host(name.value)
        return None if host is None else lambda subtree: uri_within(host, str(subtree))
    if isinstance(name, x509.DNSName):
        dns = name.value
        return (lambda subtree: dns_within(dns, str(subtree))) if is_dns_name(dns) else None
    if isinstance(name, x509.RFC822Name):
        mailbox = _mailbox(name.value)
        return None if mailbox is None else lambda subtree: _mailbox_within(mailbox, str(subtree))
    address = name.value
    return lambda subtree: _ip_within(address, subtree)


def _wildcard_allowed(
    base: str, permitted: list[x509.GeneralName], excluded: list[x509.GeneralName]
) -> bool:
    """A ``*.base`` SAN stands for every one-label child of ``base``.

    Permitted only if all of them are (``base`` inside a permitted subtree); refused if
    any of them is excluded: an excluded ``bar.example.com`` forbids ``*.example.com``
    (the reading of CVE-2025-61727 that cryptography and x509-limbo take).
    """
    if not is_dns_name(base):
        return False
    for subtree in excluded:
        zone = str(subtree.value).lower()
        child_of_base = zone.endswith("." + base.lower()) and zone.count(".") == base.count(".") + 1
        if dns_within(base, zone) or child_of_base:
            return False
    return not permitted or any(dns_within(base, str(s.value)) for s in permitted)


def uri_host(uri: str) -> str | None:
    """The host of a URI as a lower-case domain name, or ``None`` if it has none.

    RFC 5280 4.2.1.10: a URI constraint applies to the host part; a URI without an
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
        return host
    return None


def uri_within(host: str, subtree: str) -> bool:
    """RFC 5280 4.2.1.10: ``host.example.com`` names exactly that host; ``.example.com``
    names any host below it, but not ``example.com`` itself."""
    subtree = subtree.lower()
    if subtree.startswith("."):
        return host.endswith(subtree)
    return host == subtree


def dns_within(name: str, subtree: str) -> bool:
    """RFC 5280 4.2.1.10: a DNS subtree covers the name and any name with labels added
    on the left; the empty subtree covers every name."""
    name, subtree = name.lower(), subtree.lower()
    return not subtree or name == subtree or name.endswith("." + subtree)


def _mailbox(address: str) -> tuple[str, str] | None:
    """Split an rfc822Name into (local part, lower-case host); ``None`` if malformed."""
    local, at, host = address.rpartition("@")
    if not at or not local or "@" in local or not is_dns_name(host):
        return None  # RFC 5322 addr-spec without quoting: exactly one "@"
    return local, host.lower()


def _mailbox_within(mailbox: tuple[str, str], subtree: str) -> bool:
    """RFC 5280 4.2.1.10 rfc822 forms: a mailbox, a host (``example.com``: all of its
    mailboxes) or a domain (``.example.com``: mailboxes of hosts below it)."""
    local, host = mailbox
    subtree = subtree.lower()
    if "@" in subtree:
        wanted_local, _, wanted_host = subtree.rpartition("@")
        return local.lower() == wanted_local and host == wanted_host
    if subtree.startswith("."):
        return host.endswith(subtree)
    return host == subtree


def _ip_within(address: object, network: object) -> bool:
    if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address) and isinstance(
        network, ipaddress.IPv4Network | ipaddress.IPv6Network
    ):
        return address.version == network.version and address in network
    return False


def explain_constraint_violation(
    cert: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> str | None:
    """A reason naming the name of ``cert`` that a candidate CA's constraints exclude.

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
            outside = constraint_violation(names, nc) if nc is not None else None
        except VerificationError:
            continue  # malformed, or over budget: not worth explaining
        if outside is not None:
            return (
                f"identity {outside} outside the issuer's name constraints "
                f"(constrained by {describe(ca)})"
            )
    return _cn_hint(cert, names)


def _cn_hint(cert: x509.Certificate, names: list[x509.GeneralName]) -> str | None:
    # OpenSSL checks a host-like subject CN against DNS constraints when the leaf has
    # no dNSName SAN (its NAME_CONSTRAINTS_check_CN); cryptography never reads the CN.
    if any(isinstance(n, x509.DNSName) for n in names):
        return None
    hosts = [cn for cn in common_names(cert) if looks_like_host(cn)]
    if not hosts:
        return None
    return (
        f"subject CN {hosts[0]} is read by OpenSSL as a DNS name (the leaf has no dNSName "
        "SAN) and lies outside the issuer's DNS name constraints"
    )
