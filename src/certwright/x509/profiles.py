"""Certificate profiles: what a class of certificate may contain, and the checks against it.

A profile fixes key usage, extended key usages, basic constraints, lifetimes, allowed key
types, which identities and SANs may appear (glob patterns, see :mod:`certwright.globs`),
name constraints for CA profiles, and optional CRL / AIA URLs. Patterns may use
``{trust_domain}`` and ``{zone}`` (each DNS zone of the CA).

Example::

    >>> from certwright.x509.profiles import BUILTIN_PROFILES
    >>> BUILTIN_PROFILES["mtls"].extended_key_usage
    (<ExtendedKeyUsage.SERVER_AUTH: 'serverAuth'>, <ExtendedKeyUsage.CLIENT_AUTH: 'clientAuth'>)
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certwright.errors import InvalidIdentityError, PolicyViolation, ProfileError
from certwright.globs import Glob, alternation
from certwright.x509.authz import DEFAULT_OID, Authorization, validate_oid
from certwright.x509.identity import SpiffeId, validate_trust_domain
from certwright.x509.keys import KeyType
from certwright.x509.names import IPAddress, SubjectAltNames, normalize_dns

DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)


class KeyUsageFlag(enum.Enum):
    """RFC 5280 4.2.1.3 key usage bits, by their RFC names."""

    DIGITAL_SIGNATURE = "digitalSignature"
    CONTENT_COMMITMENT = "contentCommitment"
    KEY_ENCIPHERMENT = "keyEncipherment"
    DATA_ENCIPHERMENT = "dataEncipherment"
    KEY_AGREEMENT = "keyAgreement"
    KEY_CERT_SIGN = "keyCertSign"
    CRL_SIGN = "cRLSign"


class ExtendedKeyUsage(enum.Enum):
    """RFC 5280 4.2.1.12 key purposes, by their RFC names."""

    SERVER_AUTH = "serverAuth"
    CLIENT_AUTH = "clientAuth"
    CODE_SIGNING = "codeSigning"
    EMAIL_PROTECTION = "emailProtection"
    TIME_STAMPING = "timeStamping"
    OCSP_SIGNING = "OCSPSigning"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return _EKU_OIDS[self]


_EKU_OIDS = {
    ExtendedKeyUsage.SERVER_AUTH: ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsage.CLIENT_AUTH: ExtendedKeyUsageOID.CLIENT_AUTH,
    ExtendedKeyUsage.CODE_SIGNING: ExtendedKeyUsageOID.CODE_SIGNING,
    ExtendedKeyUsage.EMAIL_PROTECTION: ExtendedKeyUsageOID.EMAIL_PROTECTION,
    ExtendedKeyUsage.TIME_STAMPING: ExtendedKeyUsageOID.TIME_STAMPING,
    ExtendedKeyUsage.OCSP_SIGNING: ExtendedKeyUsageOID.OCSP_SIGNING,
}


class IdentityRule(enum.Enum):
    """Whether a certificate of the profile carries a SPIFFE identity."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    FORBIDDEN = "forbidden"


# Private and loopback ranges (RFC 1918, RFC 4193, loopback): an internal CA's servers live here.
INTERNAL_IP_RANGES = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "::1/128",
    "fc00::/7",
)


@dataclass(frozen=True)
class CASettings:
    """What a CA is for: its trust domain, DNS zones and extension OID.

    ``dns_zones`` defaults to the trust domain itself when that is a valid DNS name.
    """

    trust_domain: str
    dns_zones: tuple[str, ...] = ()
    extension_oid: str = DEFAULT_OID
    backdate: datetime.timedelta = datetime.timedelta(seconds=60)
    crl_urls: tuple[str, ...] = ()
    ocsp_urls: tuple[str, ...] = ()
    ca_issuer_urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        validate_oid(self.extension_oid)
        zones = self.dns_zones or _default_zones(self.trust_domain)
        object.__setattr__(self, "dns_zones", tuple(normalize_dns(z, allow_wildcard=False) for z in zones))
        if self.backdate < datetime.timedelta(0) or self.backdate > HOUR:
            raise ProfileError("backdate must be between 0 and 1 hour")

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return x509.ObjectIdentifier(self.extension_oid)


def _default_zones(trust_domain: str) -> tuple[str, ...]:
    try:
        return (normalize_dns(trust_domain, allow_wildcard=False),)
    except ValueError:
        return ()  # a trust domain with '_' is no DNS name: DNS SANs need explicit zones


class Request(NamedTuple):
    """What a certificate request asks for, after parsing, before policy.

    A named tuple rather than a frozen dataclass: one is built for every certificate, and
    a frozen dataclass sets each field through ``object.__setattr__`` (~1 us for six).
    """

    key_type: KeyType
    identity: SpiffeId | None
    sans: SubjectAltNames
    authorization: Authorization
    lifetime: datetime.timedelta | None
    wants_ca: bool = False


@dataclass(frozen=True)
class Profile:
    """A class of certificate; see the module docstring. Values, not behaviour flags."""

    name: str
    key_usage: frozenset[KeyUsageFlag]
    default_lifetime: datetime.timedelta
    max_lifetime: datetime.timedelta
    description: str = ""
    ca: bool = False
    path_length: int | None = None
    extended_key_usage: tuple[ExtendedKeyUsage, ...] = ()
    key_types: frozenset[KeyType] = frozenset(KeyType)
    identity: IdentityRule = IdentityRule.OPTIONAL
    identity_patterns: tuple[str, ...] = ("spiffe://{trust_domain}/**",)
    dns_patterns: tuple[str, ...] = ("{zone}", "**.{zone}")
    allow_wildcard_dns: bool = False
    ip_ranges: tuple[str, ...] = ()
    email_patterns: tuple[str, ...] = ()
    role_patterns: tuple[str, ...] = ("**",)
    name_constraints: bool = False
    ocsp_no_check: bool = False
    crl_urls: tuple[str, ...] = ()
    ocsp_urls: tuple[str, ...] = ()
    ca_issuer_urls: tuple[str, ...] = ()
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(), init=False, compare=False, repr=False
    )
    # The patterns compiled for the CA settings last checked against (a CA checks thousands
    # of requests with one settings object), replaced as one attribute.
    _compiled: tuple[CASettings, _Matchers] | None = field(
        default=None, init=False, compare=False, repr=False, hash=False
    )

    def __post_init__(self) -> None:
        _check_profile(self)
        try:
            nets = tuple(ipaddress.ip_network(r, strict=True) for r in self.ip_ranges)
        except ValueError as exc:
            raise ProfileError(f"profile {self.name!r}: bad IP range: {exc}") from None
        object.__setattr__(self, "_networks", nets)

    def lifetime_for(self, requested: datetime.timedelta | None) -> datetime.timedelta:
        """The lifetime to issue: the request's, within the maximum, or the default."""
        if requested is None:
            return self.default_lifetime
        if requested <= datetime.timedelta(0):
            raise PolicyViolation("the lifetime must be positive", field="lifetime")
        if requested > self.max_lifetime:
            raise PolicyViolation(
                f"lifetime {_days(requested)} exceeds the maximum of profile {self.name!r} "
                f"({_days(self.max_lifetime)})",
                field="lifetime",
            )
        return requested

    def check(self, request: Request, settings: CASettings) -> None:
        """Refuse, with the reason, anything in ``request`` this profile does not allow."""
        if request.key_type not in self.key_types:
            allowed = ", ".join(sorted(k.value for k in self.key_types))
            raise PolicyViolation(
                f"key type {request.key_type.value} is not allowed by profile {self.name!r} "
                f"(allowed: {allowed})",
                field="key_type",
            )
        if request.wants_ca and not self.ca:
            raise PolicyViolation(
                f"the request asks for CA:true, which profile {self.name!r} does not issue",
                field="basic_constraints",
            )
        if request.lifetime is not None:
            self.lifetime_for(request.lifetime)
        matchers = self._matchers(settings)
        self._check_identity(request, settings, matchers)
        self._check_sans(request.sans, matchers)
        self._check_roles(request.authorization, matchers)

    def _matchers(self, settings: CASettings) -> _Matchers:
        compiled = self._compiled  # one read: another thread may replace it meanwhile
        if compiled is not None and compiled[0] is settings:
            return compiled[1]
        matchers = _Matchers(
            identity=_GlobSet.of(
                Glob.compile(p, sep="/") for p in _expand(self.identity_patterns, settings)
            ),
            dns=_GlobSet.of(
                Glob.compile(p, sep=".", case_sensitive=False) for p in _expand(self.dns_patterns, settings)
            ),
            # '@' as the separator: '*' spans a dotted local part or domain, never both.
            email=_GlobSet.of(
                Glob.compile(p, sep="@", case_sensitive=False) for p in _expand(self.email_patterns, settings)
            ),
            roles=_GlobSet.of(Glob.compile(p, sep="/") for p in self.role_patterns),
        )
        object.__setattr__(self, "_compiled", (settings, matchers))
        return matchers

    def _check_identity(self, request: Request, settings: CASettings, matchers: _Matchers) -> None:
        identity = request.identity
        uris = request.sans.uris
        if uris:
            extra_uris = [u for u in uris if identity is None or u != str(identity)]
            if extra_uris:
                raise PolicyViolation(
                    f"URI SAN {extra_uris[0]!r} is not allowed: a certificate carries one URI, "
                    "its SPIFFE identity",
                    field="uri",
                )
        if identity is None:
            if self.identity is IdentityRule.REQUIRED:
                raise PolicyViolation(
                    f"profile {self.name!r} requires a SPIFFE identity (--identity "
                    f"spiffe://{settings.trust_domain}/...)",
                    field="identity",
                )
            return
        if self.identity is IdentityRule.FORBIDDEN:
            raise PolicyViolation(f"profile {self.name!r} does not carry an identity", field="identity")
        if not identity.member_of(settings.trust_domain):
            raise PolicyViolation(
                f"identity {identity} is outside this CA's trust domain {settings.trust_domain}",
                field="identity",
            )
        if not identity.path:
            raise PolicyViolation(
                f"identity {identity} names the trust domain, not a workload: add a path",
                field="identity",
            )
        if not matchers.identity.matches(str(identity)):
            raise PolicyViolation(
                f"identity {identity} does not match profile {self.name!r} "
                f"(allowed: {', '.join(matchers.identity.patterns) or 'none'})",
                field="identity",
            )

    def _check_sans(self, sans: SubjectAltNames, matchers: _Matchers) -> None:
        dns_globs = matchers.dns
        for name in sans.dns:
            if name.startswith("*.") and not self.allow_wildcard_dns:
                raise PolicyViolation(
                    f"wildcard DNS name {name} is not allowed by profile {self.name!r}",
                    field="dns",
                )
            if not dns_globs.matches(name):
                raise PolicyViolation(
                    f"DNS name {name} is not allowed by profile {self.name!r} (allowed: "
                    f"{', '.join(dns_globs.patterns) or 'no DNS names'})",
                    field="dns",
                )
        for ip in sans.ips:
            if not self._ip_allowed(ip):
                raise PolicyViolation(
                    f"IP address {ip} is not allowed by profile {self.name!r} (allowed: "
                    f"{', '.join(self.ip_ranges) or 'no IP addresses'})",
                    field="ip",
                )
        for email in sans.emails:
            if not matchers.email.matches(email):
                raise PolicyViolation(
                    f"email address {email} is not allowed by profile {self.name!r}",
                    field="email",
                )

    def _ip_allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self._networks)

    def _check_roles(self, authorization: Authorization, matchers: _Matchers) -> None:
        role_globs = matchers.roles
        for role in authorization.roles:
            if not role_globs.matches(role):
                raise PolicyViolation(f"role {role!r} is not allowed by profile {self.name!r}", field="role")
        if self.ca and authorization:
            raise PolicyViolation("CA certificates carry no roles or attributes", field="role")


class _GlobSet(NamedTuple):
    """Some patterns, and one regex matching what any of them matches (None: none)."""

    patterns: tuple[str, ...]
    regex: re.Pattern[str] | None

    @classmethod
    def of(cls, globs: Iterable[Glob]) -> _GlobSet:
        compiled = tuple(globs)
        return cls(tuple(g.pattern for g in compiled), alternation(compiled))

    def matches(self, value: str) -> bool:
        return self.regex is not None and self.regex.fullmatch(value) is not None


class _Matchers(NamedTuple):
    """A profile's patterns for one CA's settings, expanded and compiled."""

    identity: _GlobSet
    dns: _GlobSet
    email: _GlobSet
    roles: _GlobSet


def _expand(patterns: tuple[str, ...], settings: CASettings) -> tuple[str, ...]:
    out: list[str] = []
    for pattern in patterns:
        pattern = pattern.replace("{trust_domain}", settings.trust_domain)
        if "{zone}" in pattern:
            out.extend(pattern.replace("{zone}", zone) for zone in settings.dns_zones)
        else:
            out.append(pattern)
    return tuple(out)


def _days(delta: datetime.timedelta) -> str:
    from certwright.durations import format_duration

    return format_duration(delta)


def _check_profile(profile: Profile) -> None:
    where = f"profile {profile.name!r}"
    if not profile.key_usage:
        raise ProfileError(f"{where}: key_usage is empty")
    if profile.default_lifetime > profile.max_lifetime:
        raise ProfileError(f"{where}: default_lifetime is longer than max_lifetime")
    if profile.default_lifetime <= datetime.timedelta(0):
        raise ProfileError(f"{where}: lifetimes must be positive")
    if not profile.key_types:
        raise ProfileError(f"{where}: key_types is empty")
    signs = KeyUsageFlag.KEY_CERT_SIGN in profile.key_usage
    if profile.ca != signs:
        raise ProfileError(f"{where}: a CA profile needs keyCertSign, and only a CA may have it")
    if profile.path_length is not None and (not profile.ca or profile.path_length < 0):
        raise ProfileError(f"{where}: path_length needs ca = true and a value >= 0")
    if profile.name_constraints and not profile.ca:
        raise ProfileError(f"{where}: name_constraints apply to CA profiles only")
    for pattern in profile.identity_patterns:
        probe = pattern.replace("{trust_domain}", "example.org").replace("*", "x")
        try:
            SpiffeId.parse(probe)
        except InvalidIdentityError as exc:
            raise ProfileError(f"{where}: identity pattern {pattern!r} is invalid: {exc}") from None


_LEAF_KEY_USAGE = frozenset({KeyUsageFlag.DIGITAL_SIGNATURE})
_CA_KEY_USAGE = frozenset({KeyUsageFlag.KEY_CERT_SIGN, KeyUsageFlag.CRL_SIGN, KeyUsageFlag.DIGITAL_SIGNATURE})

BUILTIN_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="root-ca",
            description="self-signed trust anchor",
            ca=True,
            key_usage=_CA_KEY_USAGE,
            default_lifetime=10 * 365 * DAY,
            max_lifetime=20 * 365 * DAY,
            identity=IdentityRule.FORBIDDEN,
            dns_patterns=(),
        ),
        Profile(
            name="intermediate-ca",
            description="issuing CA, name-constrained to the trust domain and DNS zones",
            ca=True,
            path_length=0,
            key_usage=_CA_KEY_USAGE,
            default_lifetime=5 * 365 * DAY,
            max_lifetime=10 * 365 * DAY,
            identity=IdentityRule.FORBIDDEN,
            dns_patterns=(),
            name_constraints=True,
        ),
        Profile(
            name="server",
            description="TLS server; identity optional, DNS names in the CA's zones",
            key_usage=_LEAF_KEY_USAGE,
            extended_key_usage=(ExtendedKeyUsage.SERVER_AUTH,),
            default_lifetime=30 * DAY,
            max_lifetime=397 * DAY,
            ip_ranges=INTERNAL_IP_RANGES,
        ),
        Profile(
            name="client",
            description="TLS client workload; identity required",
            key_usage=_LEAF_KEY_USAGE,
            extended_key_usage=(ExtendedKeyUsage.CLIENT_AUTH,),
            default_lifetime=DAY,
            max_lifetime=30 * DAY,
            identity=IdentityRule.REQUIRED,
        ),
        Profile(
            name="mtls",
            description="workload that is both TLS server and client; identity required",
            key_usage=_LEAF_KEY_USAGE,
            extended_key_usage=(ExtendedKeyUsage.SERVER_AUTH, ExtendedKeyUsage.CLIENT_AUTH),
            default_lifetime=DAY,
            max_lifetime=30 * DAY,
            identity=IdentityRule.REQUIRED,
            ip_ranges=INTERNAL_IP_RANGES,
        ),
        Profile(
            name="ocsp-responder",
            description="delegated OCSP signer (RFC 6960 4.2.2.2), with ocsp-nocheck",
            key_usage=_LEAF_KEY_USAGE,
            extended_key_usage=(ExtendedKeyUsage.OCSP_SIGNING,),
            default_lifetime=7 * DAY,
            max_lifetime=30 * DAY,
            identity=IdentityRule.FORBIDDEN,
            dns_patterns=(),
            ocsp_no_check=True,
        ),
    )
}
