"""The certwright authorization extension: roles and attributes inside a certificate.

ASN.1 module (also in ``docs/extension.md``)::

    CertwrightAuthorization DEFINITIONS EXPLICIT TAGS ::= BEGIN
      -- OID: a CA setting, under the deploying organisation's Private Enterprise
      -- Number; default id-certwright-authz 1.3.6.1.4.1.32473.1.1 (RFC 5612
      -- documentation arc: replace it with your own).
      Authorization ::= SEQUENCE {
        version     INTEGER { v1(1) },
        roles       SEQUENCE OF Role,        -- sorted, no duplicates
        attributes  SEQUENCE OF Attribute    -- sorted by key, keys unique
      }
      Role ::= UTF8String (SIZE (1..64))
      Attribute ::= SEQUENCE {
        key    UTF8String (SIZE (1..64)),
        value  UTF8String (SIZE (0..256))
      }
    END

The extension is always non-critical: relying parties that do not know it must still be
able to use the certificate for its identity. Roles and attributes are sorted so the
encoding of a given value is unique (DER's aim), and decoding refuses anything else.

Example::

    >>> from certwright.x509.authz import Authorization
    >>> authz = Authorization(roles=("reader",), attributes=(("env", "prod"),))
    >>> Authorization.from_der(authz.to_der()) == authz
    True
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, namedtype, univ

from certwright.errors import InvalidExtensionError

VERSION = 1
DOCUMENTATION_ARC = "1.3.6.1.4.1.32473"
DEFAULT_OID = f"{DOCUMENTATION_ARC}.1.1"
MAX_ARC = 2**31 - 1
MAX_ROLE_LENGTH = 64
MAX_VALUE_LENGTH = 256
# Roles may be hierarchical ("team/payments"): '/' separates non-empty segments, which
# role patterns match segment by segment (certwright.globs).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*(/[A-Za-z0-9._:-]+)*")


class _Attribute(univ.Sequence):  # type: ignore[misc]  # pyasn1 is untyped
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("key", char.UTF8String()),
        namedtype.NamedType("value", char.UTF8String()),
    )


class _Authorization(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("version", univ.Integer()),
        namedtype.NamedType(
            "roles",
            univ.SequenceOf(componentType=char.UTF8String()),
        ),
        namedtype.NamedType("attributes", univ.SequenceOf(componentType=_Attribute())),
    )


def validate_oid(dotted: str) -> x509.ObjectIdentifier:
    """Check an extension OID setting; refuse arcs that break common parsers.

    Arcs of 2^31 or more (such as the 128-bit arcs of ``2.25`` UUID OIDs) make Go's
    crypto/x509 fail with "base 128 integer too large", and trip pkilint and older parsers.
    """
    if not re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", dotted or ""):
        raise InvalidExtensionError(f"{dotted!r} is not a dotted OID such as 1.3.6.1.4.1.N.1")
    arcs = [int(a) for a in dotted.split(".")]
    if dotted.startswith("2.25."):
        raise InvalidExtensionError(
            f"{dotted}: 2.25 UUID OIDs break Go's crypto/x509 and pkilint; use an arc under "
            "your organisation's Private Enterprise Number (1.3.6.1.4.1.<PEN>)"
        )
    if any(a > MAX_ARC for a in arcs):
        raise InvalidExtensionError(
            f"{dotted}: arc {max(arcs)} is 2^31 or more, which Go's crypto/x509 and other parsers reject"
        )
    if arcs[0] < 2 and arcs[1] >= 40:
        raise InvalidExtensionError(f"{dotted}: the second arc must be below 40 under 0 and 1")
    if len(arcs) < 3:
        raise InvalidExtensionError(f"{dotted}: too short for a private extension OID")
    return x509.ObjectIdentifier(dotted)


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a {kind} is a string")
    if not name or len(name) > MAX_ROLE_LENGTH or not _NAME.fullmatch(name):
        raise InvalidExtensionError(
            f"invalid {kind} {name!r}: 1-{MAX_ROLE_LENGTH} characters, letters, digits and "
            "'.', '_', ':', '-', starting with a letter or digit; '/' separates non-empty segments"
        )
    return name


@dataclass(frozen=True)
class Authorization:
    """Roles and key/value attributes for the certwright extension.

    Build with :meth:`create` to normalise (sort, de-duplicate) user input.
    """

    roles: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    version: int = VERSION

    def __post_init__(self) -> None:
        for role in self.roles:
            _check_name("role", role)
        for key, value in self.attributes:
            _check_name("attribute key", key)
            if not isinstance(value, str) or len(value) > MAX_VALUE_LENGTH:
                raise InvalidExtensionError(
                    f"attribute {key!r}: the value must be text of at most {MAX_VALUE_LENGTH} characters"
                )
            # Cc covers C0, DEL and C1 controls: none belongs in a value shown to people.
            if any(unicodedata.category(c) == "Cc" for c in value):
                raise InvalidExtensionError(f"attribute {key!r}: control characters in value")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidExtensionError(f"attribute {key!r}: the value is not valid UTF-8 text") from None
        if list(self.roles) != sorted(set(self.roles)):
            raise InvalidExtensionError("roles must be sorted and unique (use Authorization.create)")
        keys = [k for k, _ in self.attributes]
        if keys != sorted(set(keys)):
            raise InvalidExtensionError("attribute keys must be sorted and unique (use Authorization.create)")
        if self.version != VERSION:
            raise InvalidExtensionError(
                f"authorization extension version {self.version} is not supported (this "
                f"certwright reads version {VERSION}; upgrade it)"
            )

    @classmethod
    def create(cls, roles: Iterable[str] = (), attributes: Mapping[str, str] | None = None) -> Authorization:
        """Normalise roles and attributes: sorted, duplicates of roles dropped."""
        return cls(
            roles=tuple(sorted(set(roles))),
            attributes=tuple(sorted((attributes or {}).items())),
        )

    @property
    def attribute_map(self) -> dict[str, str]:
        return dict(self.attributes)

    def __bool__(self) -> bool:
        return bool(self.roles or self.attributes)

    def to_der(self) -> bytes:
        """DER encoding of the extension value."""
        return _encode(self.roles, self.attributes)

    @classmethod
    def from_der(cls, data: bytes) -> Authorization:
        """Decode and validate an extension value; refuses non-canonical encodings."""
        return _decode(bytes(data))

    @classmethod
    def from_certificate(
        cls, certificate: x509.Certificate, oid: x509.ObjectIdentifier | str = DEFAULT_OID
    ) -> Authorization:
        """The extension of ``certificate`` (empty when it has none)."""
        target = oid if isinstance(oid, x509.ObjectIdentifier) else x509.ObjectIdentifier(oid)
        try:
            ext = certificate.extensions.get_extension_for_oid(target)
        except x509.ExtensionNotFound:
            return cls()
        if ext.critical:
            raise InvalidExtensionError("the authorization extension must not be critical")
        value = ext.value
        if not isinstance(value, x509.UnrecognizedExtension):
            raise InvalidExtensionError(f"OID {target.dotted_string} is not an authorization extension")
        return cls.from_der(value.value)

    def extension(
        self, oid: x509.ObjectIdentifier | str = DEFAULT_OID
    ) -> x509.Extension[x509.UnrecognizedExtension]:
        """This value as a non-critical ``x509.Extension`` for a certificate builder."""
        target = oid if isinstance(oid, x509.ObjectIdentifier) else x509.ObjectIdentifier(oid)
        return x509.Extension(target, False, x509.UnrecognizedExtension(target, self.to_der()))


# pyasn1 takes ~100 us per decoding too, and a fleet (a batch above all) carries a handful
# of distinct values: decode each once. The cache holds immutable results only.
@functools.lru_cache(maxsize=4096)
def _decode(data: bytes) -> Authorization:
    try:
        value, rest = decoder.decode(data, asn1Spec=_Authorization())
    except (PyAsn1Error, TypeError, ValueError) as exc:
        raise InvalidExtensionError(f"malformed authorization extension: {exc}") from exc
    if rest:
        raise InvalidExtensionError("malformed authorization extension: trailing data")
    version = int(value["version"])
    if version != VERSION:
        raise InvalidExtensionError(
            f"authorization extension version {version} is not supported (this certwright "
            f"reads version {VERSION})"
        )
    try:
        roles = tuple(str(r) for r in value["roles"])
        attributes = tuple((str(a["key"]), str(a["value"])) for a in value["attributes"])
    except (PyAsn1Error, UnicodeError) as exc:
        raise InvalidExtensionError(f"malformed authorization extension: {exc}") from exc
    result = Authorization(roles=roles, attributes=attributes)
    # pyasn1's DER decoder accepts some BER (long-form lengths, for one): only the one
    # canonical encoding of a value is DER (X.690 10), so re-encode and compare.
    if result.to_der() != data:
        raise InvalidExtensionError("malformed authorization extension: not canonical DER")
    return result


# pyasn1 takes ~100 us per encoding; fleets reuse a handful of role sets, so a bounded
# cache keeps it off the issuance hot path.
@functools.lru_cache(maxsize=4096)
def _encode(roles: tuple[str, ...], attributes: tuple[tuple[str, str], ...]) -> bytes:
    value = _Authorization()
    value["version"] = VERSION
    # clear() turns the empty schema objects into (empty) values pyasn1 will encode.
    role_seq = value["roles"].clear()
    for role in roles:
        role_seq.append(char.UTF8String(role))
    attr_seq = value["attributes"].clear()
    for key, item in attributes:
        attr = _Attribute()
        attr["key"] = key
        attr["value"] = item
        attr_seq.append(attr)
    return bytes(encoder.encode(value))
