"""Subject names (RFC 4514 strings) and subject alternative names.

SAN specs are ``dns:NAME``, ``ip:ADDRESS`` (IPv4 or IPv6), ``uri:URI`` and
``email:ADDRESS``. Internationalised DNS names are converted to their IDNA 2008 A-labels
(RFC 5891), the form certificates carry.

Example::

    >>> from certwright.x509.names import SubjectAltNames
    >>> sans = SubjectAltNames.parse(["dns:api.example.org", "ip:10.0.0.7"])
    >>> sans.dns, [str(ip) for ip in sans.ips]
    (('api.example.org',), ['10.0.0.7'])
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography import x509

from certwright.errors import InvalidNameError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# RFC 5321 4.1.2 local part, dot-atom form only (quoted local parts are refused).
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_MAX_DNS_LENGTH = 253
_T = TypeVar("_T")


def parse_subject(text: str) -> x509.Name:
    """Parse an RFC 4514 distinguished name such as ``CN=payments,O=Example``."""
    if not text.strip():
        return x509.Name([])
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        detail = str(exc) or "expected TYPE=value pairs separated by commas, e.g. CN=api,O=Example"
        raise InvalidNameError(f"invalid subject {text!r}: {detail}") from exc
    for attribute in name:
        if not str(attribute.value).strip():
            raise InvalidNameError(
                f"invalid subject {text!r}: empty value for {attribute.rfc4514_attribute_name}"
            )
    return name


def normalize_dns(name: str, *, allow_wildcard: bool = True) -> str:
    """Return the A-label form of a DNS name, or raise naming the bad label."""
    original = name
    name = name.strip().rstrip(".")
    if not name:
        raise InvalidNameError("empty DNS name")
    labels = name.split(".")
    wildcard = labels[0] == "*"
    if wildcard:
        if not allow_wildcard:
            raise InvalidNameError(f"DNS name {original!r}: wildcards are not allowed here")
        if len(labels) < 3:
            raise InvalidNameError(f"DNS name {original!r}: a wildcard needs at least two labels after it")
        labels = labels[1:]
    out = []
    for label in labels:
        if "*" in label:
            raise InvalidNameError(f"DNS name {original!r}: '*' is allowed only as the whole leftmost label")
        out.append(_a_label(original, label))
    result = ".".join((["*"] if wildcard else []) + out)
    if len(result) > _MAX_DNS_LENGTH:
        raise InvalidNameError(f"DNS name {original!r} is longer than {_MAX_DNS_LENGTH} characters")
    return result


def _a_label(original: str, label: str) -> str:
    if not label:
        raise InvalidNameError(f"DNS name {original!r} has an empty label")
    if label.isascii():
        lowered = label.lower()
        if not _LABEL.fullmatch(lowered):
            raise InvalidNameError(
                f"DNS name {original!r}: label {label!r} must be 1-63 letters, digits or "
                "hyphens, not starting or ending with a hyphen"
            )
        if lowered.startswith("xn--"):
            import idna

            try:
                idna.decode(lowered)
            except idna.IDNAError as exc:
                raise InvalidNameError(f"DNS name {original!r}: bad A-label {label!r}: {exc}") from None
        return lowered
    import idna

    try:
        return idna.encode(label, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidNameError(f"DNS name {original!r}: label {label!r} is not valid IDNA: {exc}") from None


def parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise InvalidNameError(f"{text!r} is not an IPv4 or IPv6 address") from None


def normalize_email(text: str) -> str:
    local, at, domain = text.strip().rpartition("@")
    if not at or not local or not _EMAIL_LOCAL.fullmatch(local):
        raise InvalidNameError(f"{text!r} is not an email address (local@domain)")
    return f"{local}@{normalize_dns(domain, allow_wildcard=False)}"


def normalize_uri(text: str) -> str:
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) or not rest:
        raise InvalidNameError(f"{text!r} is not an absolute URI (scheme:...)")
    if not text.isascii() or any(c.isspace() for c in text):
        raise InvalidNameError(f"URI {text!r} must be ASCII without spaces (percent-encode it)")
    return text


@dataclass(frozen=True)
class SubjectAltNames:
    """The SANs of a request or certificate, normalised and de-duplicated in order."""

    dns: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()
    uris: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        *,
        dns: Iterable[str] = (),
        ips: Iterable[str | IPAddress] = (),
        uris: Iterable[str] = (),
        emails: Iterable[str] = (),
    ) -> SubjectAltNames:
        """Normalise and validate each kind of name."""
        return cls(
            dns=_unique(normalize_dns(n) for n in dns),
            ips=_unique(ip if not isinstance(ip, str) else parse_ip(ip) for ip in ips),
            uris=_unique(normalize_uri(u) for u in uris),
            emails=_unique(normalize_email(e) for e in emails),
        )

    @classmethod
    def parse(cls, specs: Iterable[str]) -> SubjectAltNames:
        """Parse ``kind:value`` specs (``dns:``, ``ip:``, ``uri:``, ``email:``)."""
        buckets: dict[str, list[str]] = {"dns": [], "ip": [], "uri": [], "email": []}
        for spec in specs:
            kind, sep, value = spec.partition(":")
            kind = kind.strip().lower()
            if not sep or kind not in buckets:
                raise InvalidNameError(
                    f"SAN {spec!r}: expected dns:NAME, ip:ADDRESS, uri:URI or email:ADDRESS"
                )
            buckets[kind].append(value)
        return cls.create(dns=buckets["dns"], ips=buckets["ip"], uris=buckets["uri"], emails=buckets["email"])

    @classmethod
    def from_extension(cls, value: x509.SubjectAlternativeName) -> SubjectAltNames:
        """Read the SANs of a certificate or CSR (kinds certwright does not use are dropped)."""
        buckets: dict[type, list[Any]] = {
            x509.DNSName: [],
            x509.IPAddress: [],
            x509.UniformResourceIdentifier: [],
            x509.RFC822Name: [],
        }
        for name in value:  # one pass: this runs for every CSR of a batch
            bucket = buckets.get(type(name))
            if bucket is not None:
                bucket.append(name.value)
        return cls(
            dns=tuple(buckets[x509.DNSName]),
            ips=tuple(
                ip
                for ip in buckets[x509.IPAddress]
                if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
            ),
            uris=tuple(buckets[x509.UniformResourceIdentifier]),
            emails=tuple(buckets[x509.RFC822Name]),
        )

    @classmethod
    def of(cls, obj: x509.Certificate | x509.CertificateSigningRequest) -> SubjectAltNames:
        try:
            ext = obj.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return cls()
        return cls.from_extension(ext.value)

    def __bool__(self) -> bool:
        return bool(self.dns or self.ips or self.uris or self.emails)

    def merge(self, other: SubjectAltNames) -> SubjectAltNames:
        return SubjectAltNames(
            dns=_unique((*self.dns, *other.dns)),
            ips=_unique((*self.ips, *other.ips)),
            uris=_unique((*self.uris, *other.uris)),
            emails=_unique((*self.emails, *other.emails)),
        )

    def general_names(self) -> list[x509.GeneralName]:
        """The names as ``cryptography`` GeneralNames, URIs first (identity leads)."""
        return [
            *(x509.UniformResourceIdentifier(u) for u in self.uris),
            *(x509.DNSName(d) for d in self.dns),
            *(x509.IPAddress(ip) for ip in self.ips),
            *(x509.RFC822Name(e) for e in self.emails),
        ]

    def specs(self) -> list[str]:
        """Back to ``kind:value`` specs."""
        return [
            *(f"uri:{u}" for u in self.uris),
            *(f"dns:{d}" for d in self.dns),
            *(f"ip:{ip}" for ip in self.ips),
            *(f"email:{e}" for e in self.emails),
        ]


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))
