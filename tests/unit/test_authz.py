"""certwright.x509.authz: the authorization extension codec and its OID setting."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtensionOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.der import decoder as der_decoder

from certwright.errors import InvalidExtensionError
from certwright.x509 import der
from certwright.x509.authz import DEFAULT_OID, MAX_ARC, Authorization, validate_oid
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType
from certwright.x509.profiles import BUILTIN_PROFILES

# The value of Authorization.create(["reader", "writer"], {"env": "prod"}), written out by
# hand from the ASN.1 module in authz.py: pins the wire format.
PINNED = bytes.fromhex(
    "3024"  # Authorization SEQUENCE
    "020101"  # version v1
    "3010"
    "0c06726561646572"
    "0c06777269746572"  # roles: "reader", "writer"
    "300d"
    "300b"
    "0c03656e76"
    "0c0470726f64"  # attributes: ("env", "prod")
)


def _utf8(text: str) -> bytes:
    return der.tlv(0x0C, text.encode("utf-8"))


def _raw(version: int = 1, roles=(), attributes=()) -> bytes:
    """An Authorization value with whatever content, canonical or not."""
    return der.sequence(
        der.integer(version),
        der.sequence(*(_utf8(r) for r in roles)),
        der.sequence(*(der.sequence(_utf8(k), _utf8(v)) for k, v in attributes)),
    )


@pytest.fixture(scope="module")
def roles_profile():
    """The mtls profile, allowing any role (``**`` spans '/'-separated role names)."""
    return dataclasses.replace(BUILTIN_PROFILES["mtls"], name="mtls-any-role", role_patterns=("**",))


@pytest.fixture(scope="module")
def workload_key(leaf_keys):
    return leaf_keys(KeyType.EC_P256)


@pytest.fixture(scope="module")
def self_signed(key_for):
    """A cryptography-built certificate carrying the given extensions."""
    key = key_for(KeyType.EC_P256)

    def build(*extensions: tuple[x509.ExtensionType, bool]) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authz test")])
        moment = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(7)
            .not_valid_before(moment)
            .not_valid_after(moment + datetime.timedelta(days=1))
        )
        for value, critical in extensions:
            builder = builder.add_extension(value, critical=critical)
        return builder.sign(key, hashes.SHA256())

    return build


# -- the value type -------------------------------------------------------------------------


def test_encoding_is_pinned_to_the_asn1_module():
    authz = Authorization.create(["writer", "reader"], {"env": "prod"})
    assert authz.to_der() == PINNED
    assert Authorization.from_der(PINNED) == authz
    # and pyasn1's generic DER decoder sees exactly that structure
    value, rest = der_decoder.decode(PINNED)
    assert not rest
    assert int(value[0]) == 1
    assert [str(r) for r in value[1]] == ["reader", "writer"]


def test_empty_authorization_encodes_too():
    empty = Authorization()
    assert not empty
    assert empty.to_der() == bytes.fromhex("300702010130003000")
    assert Authorization.from_der(empty.to_der()) == empty
    assert Authorization.create(["r"])


def test_create_sorts_and_deduplicates():
    authz = Authorization.create(["b", "a", "b"], {"z": "1", "a": "2"})
    assert authz.roles == ("a", "b")
    assert authz.attributes == (("a", "2"), ("z", "1"))
    assert authz.attribute_map == {"a": "2", "z": "1"}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"roles": ("b", "a")}, "roles must be sorted and unique"),
        ({"roles": ("a", "a")}, "roles must be sorted and unique"),
        ({"attributes": (("z", "1"), ("a", "2"))}, "attribute keys must be sorted and unique"),
        ({"attributes": (("a", "1"), ("a", "2"))}, "attribute keys must be sorted and unique"),
        ({"roles": ("",)}, "invalid role ''"),
        ({"roles": ("-admin",)}, "invalid role '-admin'"),
        ({"roles": ("has space",)}, "invalid role 'has space'"),
        ({"roles": ("r" * 65,)}, "invalid role 'r{65}': 1-64 characters"),
        ({"roles": ("rôle",)}, "invalid role 'rôle'"),
        ({"attributes": (("bad key", "v"),)}, "invalid attribute key 'bad key'"),
        ({"attributes": (("k", "v" * 257),)}, "attribute 'k': the value must be text of at most 256"),
        ({"attributes": (("k", "line\nbreak"),)}, "attribute 'k': control characters in value"),
        ({"attributes": (("k", "del\x7f"),)}, "attribute 'k': control characters"),
        ({"attributes": (("k", "\ud800"),)}, "attribute 'k': the value is not valid UTF-8 text"),
        ({"version": 2}, "version 2 is not supported"),
    ],
)
def test_constructor_refuses_invalid_values(kwargs, fragment):
    with pytest.raises(InvalidExtensionError, match=fragment):
        Authorization(**kwargs)


def test_limits_are_inclusive():
    authz = Authorization(roles=("r" * 64,), attributes=(("k" * 64, "v" * 256), ("z", "")))
    assert Authorization.from_der(authz.to_der()) == authz


def test_non_string_role_is_a_type_error():
    with pytest.raises(TypeError, match="a role is a string"):
        Authorization(roles=(1,))  # type: ignore[arg-type]


# -- decoding refuses what is not the one canonical encoding --------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (_raw(roles=("writer", "reader")), "roles must be sorted and unique"),
        (_raw(roles=("reader", "reader")), "roles must be sorted and unique"),
        (_raw(attributes=(("env", "a"), ("env", "b"))), "attribute keys must be sorted and unique"),
        (_raw(attributes=(("z", "a"), ("a", "b"))), "attribute keys must be sorted and unique"),
        (_raw(version=2), "version 2 is not supported"),
        (_raw(version=0), "version 0 is not supported"),
        (PINNED + b"\x00", "trailing data"),
        (b"\x30\x81\x24" + PINNED[2:], "not canonical DER"),  # long-form length where short fits
        (b"\x30\x25\x02\x02\x00\x01" + PINNED[5:], "not canonical DER"),  # padded INTEGER
        (b"\x30\x80" + PINNED[2:] + b"\x00\x00", "malformed"),  # indefinite length (BER)
        (PINNED[:-1], "malformed"),
        (b"", "malformed"),
        (b"garbage bytes", "malformed"),
        (bytes(range(256)), "malformed"),
        (der.sequence(der.integer(1)), "malformed"),  # missing components
        (_raw(roles=("-bad",)), "invalid role '-bad'"),
        (_raw(attributes=(("k", "a\tb"),)), "control characters"),
        # a role as PrintableString instead of UTF8String
        (der.sequence(der.integer(1), der.sequence(der.tlv(0x13, b"reader")), der.sequence()), "malformed"),
        # invalid UTF-8 in a role
        (der.sequence(der.integer(1), der.sequence(der.tlv(0x0C, b"\xff\xfe")), der.sequence()), "malformed"),
    ],
)
def test_from_der_refuses(data, fragment):
    with pytest.raises(InvalidExtensionError, match=fragment):
        Authorization.from_der(data)


def test_from_der_accepts_the_canonical_twin_of_each_refused_value():
    # negative control for the table above: the same content, canonically encoded, decodes
    assert Authorization.from_der(_raw(roles=("reader", "writer"))).roles == ("reader", "writer")
    assert Authorization.from_der(_raw(attributes=(("a", "b"), ("env", "a")))).attribute_map == {
        "a": "b",
        "env": "a",
    }


# -- properties -----------------------------------------------------------------------------

_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,40}(/[A-Za-z0-9._:-]{1,6}){0,3}", fullmatch=True)
_VALUE = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=256)
# Role names the '**' glob accepts: '/'-separated non-empty segments.
_CERT_ROLE = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}(/[A-Za-z0-9._:-]{1,10}){0,3}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(roles=st.lists(_NAME, max_size=8), attributes=st.dictionaries(_NAME, _VALUE, max_size=6))
def test_any_valid_value_round_trips_through_der(roles, attributes):
    authz = Authorization.create(roles, attributes)
    encoded = authz.to_der()
    assert Authorization.from_der(encoded) == authz
    # the encoding is a function of the value: order of input does not matter
    assert Authorization.create(reversed(roles), dict(reversed(attributes.items()))).to_der() == encoded


@settings(max_examples=100, deadline=None)
@given(roles=st.lists(_CERT_ROLE, max_size=5), attributes=st.dictionaries(_NAME, _VALUE, max_size=4))
def test_any_valid_value_round_trips_through_a_certificate(
    authority, roles_profile, workload_key, roles, attributes
):
    authz = Authorization.create(roles, attributes)
    cert = authority.issue(
        workload_key.public_key(),
        profile=roles_profile,
        identity=SpiffeId.parse("spiffe://example.org/web"),
        authorization=authz,
    )
    assert Authorization.from_certificate(cert, authority.settings.oid) == authz
    if authz:
        ext = cert.extensions.get_extension_for_oid(authority.settings.oid)
        assert ext.critical is False
        assert ext.value.value == authz.to_der()
    else:
        # an empty authorization adds no extension at all
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_oid(authority.settings.oid)


# -- in certificates ------------------------------------------------------------------------


def test_extension_is_non_critical_under_the_given_oid():
    authz = Authorization.create(["reader"])
    ext = authz.extension()
    assert ext.critical is False
    assert ext.oid.dotted_string == DEFAULT_OID
    assert ext.value.value == authz.to_der()
    other = authz.extension("1.3.6.1.4.1.99999.7")
    assert other.oid.dotted_string == "1.3.6.1.4.1.99999.7"


def test_from_certificate_reads_the_extension(self_signed):
    authz = Authorization.create(["reader"], {"env": "prod"})
    ext = authz.extension()
    assert Authorization.from_certificate(self_signed((ext.value, False))) == authz
    # under another OID it is not found: empty
    assert (
        Authorization.from_certificate(self_signed((ext.value, False)), "1.3.6.1.4.1.99999.7")
        == Authorization()
    )


def test_certificate_without_the_extension_gives_empty(self_signed):
    assert Authorization.from_certificate(self_signed()) == Authorization()


def test_critical_extension_is_refused(self_signed):
    ext = Authorization.create(["reader"]).extension()
    with pytest.raises(InvalidExtensionError, match="must not be critical"):
        Authorization.from_certificate(self_signed((ext.value, True)))


def test_oid_of_a_known_extension_is_refused(self_signed):
    cert = self_signed((x509.SubjectKeyIdentifier(b"\x01" * 20), False))
    with pytest.raises(InvalidExtensionError, match=r"OID 2\.5\.29\.14 is not an authorization extension"):
        Authorization.from_certificate(cert, ExtensionOID.SUBJECT_KEY_IDENTIFIER)


def test_malformed_extension_in_a_certificate_is_refused(self_signed):
    oid = x509.ObjectIdentifier(DEFAULT_OID)
    cert = self_signed((x509.UnrecognizedExtension(oid, _raw(roles=("b", "a"))), False))
    with pytest.raises(InvalidExtensionError, match="sorted and unique"):
        Authorization.from_certificate(cert)


# -- the OID setting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dotted",
    [DEFAULT_OID, "1.3.6.1.4.1.32473.1.1", "1.3.6.1.4.1.99999.1", f"1.3.6.1.4.1.{MAX_ARC}", "2.999.1"],
)
def test_validate_oid_accepts_private_enterprise_arcs(dotted):
    assert validate_oid(dotted) == x509.ObjectIdentifier(dotted)


@pytest.mark.parametrize(
    ("dotted", "fragment"),
    [
        ("2.25.329800735698586629295641978511506172918", "2.25 UUID OIDs break Go's crypto/x509"),
        ("2.25.1.1", "2.25 UUID OIDs"),
        (f"1.3.6.1.4.1.{2**31}", f"arc {2**31} is 2\\^31 or more"),
        (f"1.3.6.1.4.1.32473.{2**64}", "2\\^31 or more"),
        ("1.40.1", "the second arc must be below 40"),
        ("0.99.1", "the second arc must be below 40"),
        ("1.3", "too short for a private extension OID"),
        ("", "is not a dotted OID"),
        ("1", "is not a dotted OID"),
        ("1.", "is not a dotted OID"),
        ("1..3", "is not a dotted OID"),
        ("1.3.6.01", "is not a dotted OID"),
        ("3.1.2", "is not a dotted OID"),
        (" 1.3.6.1", "is not a dotted OID"),
        ("1.3.6.1.4.1.x", "is not a dotted OID"),
        ("iso.3.6", "is not a dotted OID"),
    ],
)
def test_validate_oid_refuses(dotted, fragment):
    with pytest.raises(InvalidExtensionError, match=fragment):
        validate_oid(dotted)
