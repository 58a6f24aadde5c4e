"""certwright.x509.der: each helper against pyasn1's and cryptography's encodings."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.der import encoder
from pyasn1.type import univ, useful

from certwright.x509 import der

UTC = datetime.UTC


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def cryptography_cert(ec_key):
    """Build a certificate with cryptography for given validity and extensions."""

    def build(not_before, not_after, extensions=()):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "der test")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ec_key.public_key())
            .serial_number(1)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )
        for value, critical in extensions:
            builder = builder.add_extension(value, critical=critical)
        return builder.sign(ec_key, hashes.SHA256())

    return build


# -- length / tlv ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (0x7F, "7f"),  # the last short form (X.690 8.1.3.4)
        (0x80, "8180"),  # the first long form
        (0xFF, "81ff"),
        (0x100, "820100"),
        (0xFFFF, "82ffff"),
        (0x10000, "83010000"),
    ],
)
def test_length_uses_the_shortest_definite_form(n, encoded):
    assert der.length(n).hex() == encoded


@pytest.mark.parametrize("size", [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x1234, 0x10000])
def test_tlv_matches_pyasn1_octet_string(size):
    value = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert der.tlv(der.OCTET_STRING, value) == encoder.encode(univ.OctetString(value))


def test_tlv_header_changes_with_the_tag_only():
    assert der.tlv(der.SEQUENCE, b"") == b"\x30\x00"
    assert der.tlv(der.SET, b"") == b"\x31\x00"
    # negative control: a long value is not encoded with a short length
    assert der.tlv(der.OCTET_STRING, b"x" * 0x80)[:3] == b"\x04\x81\x80"


def test_sequence_concatenates_its_parts():
    assert der.sequence(der.integer(1), der.integer(2)) == encoder.encode(
        univ.SequenceOf(componentType=univ.Integer()).setComponents(1, 2)
    )
    assert der.sequence() == b"\x30\x00"


# -- integer --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, 32767, 32768, 65535, 2**63, 2**127 - 1, 2**159])
def test_integer_is_minimal_twos_complement(value):
    assert der.integer(value) == encoder.encode(univ.Integer(value))


def test_integer_adds_a_zero_octet_only_when_the_high_bit_is_set():
    assert der.integer(0x7F) == b"\x02\x01\x7f"
    assert der.integer(0x80) == b"\x02\x02\x00\x80"
    # negative control: without the zero octet 0x80 would read as -128
    assert der.integer(0x80) != b"\x02\x01\x80"


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**200))
def test_integer_matches_pyasn1_for_any_non_negative_value(value):
    assert der.integer(value) == encoder.encode(univ.Integer(value))


# -- oid ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dotted",
    [
        "2.5.29.19",
        "1.2.840.113549.1.1.11",
        "1.3.6.1.4.1.32473.1.1",
        "1.3.6.1.4.1.11591.4.11",
        "2.999.3",  # first subidentifier 1079 needs two octets
        "0.0.0",
        "1.3.6.1.4.1.2147483647",
        "2.25.329800735698586629295641978511506172918",  # huge arcs still encode right
    ],
)
def test_oid_matches_pyasn1(dotted):
    expected = encoder.encode(univ.ObjectIdentifier(dotted))
    assert der.oid(dotted) == expected
    assert der.oid(x509.ObjectIdentifier(dotted)) == expected


def test_oid_of_distinct_values_differ():
    # negative control: a one-arc change changes the encoding
    assert der.oid("1.3.6.1.4.1.32473.1.1") != der.oid("1.3.6.1.4.1.32473.1.2")


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([0, 1, 2]).flatmap(
        lambda first: st.tuples(
            st.just(first),
            st.integers(min_value=0, max_value=39 if first < 2 else 10**6),
            st.lists(st.integers(min_value=0, max_value=2**64), max_size=8),
        )
    )
)
def test_oid_matches_pyasn1_for_any_arcs(arcs):
    first, second, rest = arcs
    dotted = ".".join(str(a) for a in (first, second, *rest))
    assert der.oid(dotted) == encoder.encode(univ.ObjectIdentifier(dotted))


# -- time (RFC 5280 4.1.2.5) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "encoded"),
    [
        (datetime.datetime(1950, 1, 1, tzinfo=UTC), b"\x17\x0d500101000000Z"),
        (datetime.datetime(2030, 6, 15, 8, 9, 10, tzinfo=UTC), b"\x17\x0d300615080910Z"),
        (datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), b"\x17\x0d491231235959Z"),
        (datetime.datetime(2050, 1, 1, tzinfo=UTC), b"\x18\x0f20500101000000Z"),
        (datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), b"\x18\x0f99991231235959Z"),
        # before 1950 a two-digit year would read as 20xx: GeneralizedTime
        (datetime.datetime(1949, 12, 31, 23, 59, 59, tzinfo=UTC), b"\x18\x0f19491231235959Z"),
    ],
)
def test_time_picks_utctime_for_1950_to_2049_only(moment, encoded):
    assert der.time(moment) == encoded


def test_time_converts_to_utc_and_drops_fractions():
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    local = datetime.datetime(2050, 1, 1, 1, 30, 0, 999_999, tzinfo=plus_two)
    assert der.time(local) == b"\x17\x0d491231233000Z"  # 2049-12-31T23:30Z: still UTCTime
    # negative control: the same wall-clock time in UTC is past the 2050 boundary
    assert der.time(local.replace(tzinfo=UTC))[0] == der.GENERALIZED_TIME


@pytest.mark.parametrize(
    "moment",
    [
        datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime.datetime(2050, 1, 1, tzinfo=UTC),
        datetime.datetime(1949, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_time_matches_pyasn1_useful_types(moment):
    if 1950 <= moment.year < 2050:
        expected = encoder.encode(useful.UTCTime(moment.strftime("%y%m%d%H%M%SZ")))
    else:
        expected = encoder.encode(useful.GeneralizedTime(moment.strftime("%Y%m%d%H%M%SZ")))
    assert der.time(moment) == expected


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (datetime.datetime(2030, 1, 1, tzinfo=UTC), datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)),
        (datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), datetime.datetime(2050, 1, 1, tzinfo=UTC)),
        (datetime.datetime(1950, 1, 1, tzinfo=UTC), datetime.datetime(2100, 1, 1, tzinfo=UTC)),
    ],
)
def test_validity_matches_what_cryptography_encodes(cryptography_cert, not_before, not_after):
    cert = cryptography_cert(not_before, not_after)
    ours = der.sequence(der.time(not_before), der.time(not_after))
    assert ours in cert.tbs_certificate_bytes
    # negative control: the other Time type for the same instant is not what it wrote
    swapped = der.tlv(der.GENERALIZED_TIME, not_after.strftime("%Y%m%d%H%M%SZ").encode())
    if not_after.year < 2050:
        assert der.sequence(der.time(not_before), swapped) not in cert.tbs_certificate_bytes


# -- extension / bit string -----------------------------------------------------------------


def test_extension_omits_criticality_when_false_and_matches_cryptography(cryptography_cert):
    constraints = x509.BasicConstraints(ca=False, path_length=None)
    usage = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])
    moment = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    cert = cryptography_cert(moment, moment, [(constraints, True), (usage, False)])
    critical = der.extension(der.oid(ExtensionOID.BASIC_CONSTRAINTS), True, constraints.public_bytes())
    plain = der.extension(der.oid(ExtensionOID.EXTENDED_KEY_USAGE), False, usage.public_bytes())
    assert critical in cert.tbs_certificate_bytes
    assert plain in cert.tbs_certificate_bytes
    assert der.BOOLEAN_TRUE in critical
    # negative control: DEFAULT FALSE must not be encoded explicitly (X.690 11.5)
    explicit_false = der.sequence(
        der.oid(ExtensionOID.EXTENDED_KEY_USAGE),
        b"\x01\x01\x00",
        der.tlv(der.OCTET_STRING, usage.public_bytes()),
    )
    assert explicit_false not in cert.tbs_certificate_bytes


def test_bit_string_has_no_unused_bits():
    assert der.bit_string(b"\xa5\x5a") == b"\x03\x03\x00\xa5\x5a"
    assert der.bit_string(b"\xa5\x5a") == encoder.encode(univ.BitString.fromOctetString(b"\xa5\x5a"))


# -- read_tlv -------------------------------------------------------------------------------


def test_read_tlv_short_and_long_forms():
    short = der.tlv(der.OCTET_STRING, b"abc")
    assert der.read_tlv(short) == (der.OCTET_STRING, 2, 5)
    long = der.tlv(der.OCTET_STRING, b"x" * 300)
    assert der.read_tlv(long) == (der.OCTET_STRING, 4, 304)


def test_read_tlv_at_an_offset_walks_nested_values():
    inner = der.integer(5)
    outer = der.sequence(der.integer(1), inner)
    _, start, end = der.read_tlv(outer)
    _, _, first_end = der.read_tlv(outer, start)
    tag, value_start, value_end = der.read_tlv(outer, first_end)
    assert (tag, outer[value_start:value_end], value_end) == (der.INTEGER, b"\x05", end)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x30", "truncated"),
        (b"\x04\x05abc", "truncated"),
        (b"\x04\x82\x01", "truncated"),  # long-form length cut short
        (b"\x30\x80\x00\x00", "indefinite length"),  # BER, never DER
    ],
)
def test_read_tlv_refuses_truncated_or_indefinite_input(data, message):
    with pytest.raises(ValueError, match=message):
        der.read_tlv(data)
