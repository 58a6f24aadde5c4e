"""certwright.revocation.crl: streamed CRLs, proven against cryptography's CRL builder.

The central tests rebuild each CRL with ``x509.CertificateRevocationListBuilder`` from the
same input (entries in the same order, the same extensions with the same criticality)
and require the TBSCertList to be byte-identical; for Ed25519 and RSA PKCS#1 v1.5, whose
signatures are deterministic, the whole DER.
"""

from __future__ import annotations

import datetime
import gc
import tracemalloc

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certwright.errors import InvalidInputError, InvalidKeyError, VerificationError
from certwright.issuance import Authority
from certwright.revocation.crl import MAX_SERIAL, build_crl, time_der
from certwright.revocation.entries import RevokedEntry
from certwright.verify.revocation import check_revocation
from certwright.x509 import der
from certwright.x509.keys import KeyType, SigningKey, generate_key, signature_hash
from certwright.x509.profiles import BUILTIN_PROFILES

UTC = datetime.UTC
DAY = datetime.timedelta(days=1)
SIGNING_KEY_TYPES = (KeyType.EC_P256, KeyType.EC_P384, KeyType.ED25519, KeyType.RSA_2048)
DETERMINISTIC = (KeyType.ED25519, KeyType.RSA_2048)
URL = "http://crl.example.org/root.crl"
CRL_REASONS = [r for r in x509.ReasonFlags if r is not x509.ReasonFlags.remove_from_crl]


def reference_crl(
    issuer: x509.Certificate,
    key: SigningKey,
    entries: list[tuple[int, datetime.datetime, x509.ReasonFlags | None]],
    *,
    number: int,
    this_update: datetime.datetime,
    next_update: datetime.datetime,
    distribution_point: str | None = None,
) -> x509.CertificateRevocationList:
    """The same CRL made by cryptography's builder (reason omitted when None or unspecified)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update)
    )
    for serial, revoked_at, reason in entries:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
        if reason not in (None, x509.ReasonFlags.unspecified):
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
    )
    builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    if distribution_point is not None:
        idp = x509.IssuingDistributionPoint(
            [x509.UniformResourceIdentifier(distribution_point)], None, False, False, None, False, False
        )
        builder = builder.add_extension(idp, critical=True)
    return builder.sign(key, signature_hash(key))


def _der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def sample_entries(start: datetime.datetime) -> list[tuple[int, datetime.datetime, x509.ReasonFlags | None]]:
    """Every reason and None; serials at each length boundary; times across UTCTime's range."""
    serials = [1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 1 << 63, (1 << 127) - 1, MAX_SERIAL - 1]
    serials += [s - 1 for s in serials[1:]]
    times = [
        start,
        start - datetime.timedelta(days=400, seconds=7, microseconds=999_999),
        datetime.datetime(1950, 1, 1, tzinfo=UTC),
        datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime.datetime(2050, 1, 1, tzinfo=UTC),
        datetime.datetime(2031, 6, 1, 8, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=-7))),
    ]
    reasons: list[x509.ReasonFlags | None] = [None, *CRL_REASONS]
    count = max(len(serials), len(reasons))
    return [
        (serials[i % len(serials)], times[i % len(times)], reasons[i % len(reasons)]) for i in range(count)
    ]


@pytest.fixture(scope="module")
def crl_kwargs(start):
    return {"crl_number": 42, "this_update": start, "next_update": start + 7 * DAY}


# --- equality with cryptography's builder -------------------------------------------------------


@pytest.mark.parametrize("key_type", SIGNING_KEY_TYPES, ids=lambda k: k.value)
@pytest.mark.parametrize("distribution_point", [None, URL], ids=["no-idp", "idp"])
def test_tbs_equals_cryptography_builder(authority_for, start, crl_kwargs, key_type, distribution_point):
    ca: Authority = authority_for(key_type)
    entries = sample_entries(start)
    built = build_crl(
        issuer=ca.certificate,
        key=ca.key,
        entries=entries,
        distribution_point=distribution_point,
        **crl_kwargs,
    )
    reference = reference_crl(
        ca.certificate,
        ca.key,
        entries,
        number=42,
        this_update=crl_kwargs["this_update"],
        next_update=crl_kwargs["next_update"],
        distribution_point=distribution_point,
    )
    crl = x509.load_der_x509_crl(built)
    assert crl.tbs_certlist_bytes == reference.tbs_certlist_bytes
    assert crl.signature_algorithm_oid == reference.signature_algorithm_oid
    assert crl.is_signature_valid(ca.certificate.public_key())
    if key_type in DETERMINISTIC:
        assert built == _der(reference)


@pytest.mark.parametrize("key_type", SIGNING_KEY_TYPES, ids=lambda k: k.value)
def test_empty_crl_equals_builder_and_omits_the_list(authority_for, crl_kwargs, key_type):
    ca = authority_for(key_type)
    built = build_crl(issuer=ca.certificate, key=ca.key, entries=[], **crl_kwargs)
    reference = reference_crl(
        ca.certificate,
        ca.key,
        [],
        number=42,
        this_update=crl_kwargs["this_update"],
        next_update=crl_kwargs["next_update"],
    )
    crl = x509.load_der_x509_crl(built)
    assert crl.tbs_certlist_bytes == reference.tbs_certlist_bytes
    assert len(crl) == 0
    assert crl.is_signature_valid(ca.certificate.public_key())
    # RFC 5280 5.1.2.6: no empty SEQUENCE; nextUpdate is followed directly by the [0] extensions.
    tbs = crl.tbs_certlist_bytes
    assert der.time(crl_kwargs["next_update"]) + b"\xa0" in tbs


_datetimes = st.datetimes(
    min_value=datetime.datetime(1950, 1, 1),
    max_value=datetime.datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, datetime.timezone(datetime.timedelta(hours=5, minutes=30))]),
).filter(lambda d: d.astimezone(UTC).year >= 1950)
_entries = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=MAX_SERIAL - 1),
        _datetimes,
        st.sampled_from([None, *CRL_REASONS]),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key_type=st.sampled_from(SIGNING_KEY_TYPES),
    entries=_entries,
    number=st.integers(min_value=0, max_value=(1 << 159) - 1),
    this_update=st.datetimes(
        min_value=datetime.datetime(1950, 1, 2),
        max_value=datetime.datetime(9000, 1, 1),
        timezones=st.just(UTC),
    ),
    lifetime=st.timedeltas(min_value=datetime.timedelta(seconds=1), max_value=datetime.timedelta(days=400)),
    with_idp=st.booleans(),
)
def test_any_input_equals_builder(authority_for, key_type, entries, number, this_update, lifetime, with_idp):
    ca = authority_for(key_type)
    this_update = this_update.replace(microsecond=0)
    next_update = this_update + lifetime
    url = URL if with_idp else None
    built = build_crl(
        issuer=ca.certificate,
        key=ca.key,
        entries=entries,
        crl_number=number,
        this_update=this_update,
        next_update=next_update,
        distribution_point=url,
    )
    reference = reference_crl(
        ca.certificate,
        ca.key,
        entries,
        number=number,
        this_update=this_update,
        next_update=next_update,
        distribution_point=url,
    )
    assert x509.load_der_x509_crl(built).tbs_certlist_bytes == reference.tbs_certlist_bytes
    if key_type in DETERMINISTIC:
        assert built == _der(reference)  # signature included


@given(st.datetimes(min_value=datetime.datetime(1950, 1, 2), timezones=st.just(UTC)))
def test_time_der_matches_der_time(value):
    assert time_der(value) == der.time(value)


# --- what the CRL says ----------------------------------------------------------------------------


def test_parsed_content(authority, start, crl_kwargs):
    entries = [
        RevokedEntry(1001, start - DAY, x509.ReasonFlags.key_compromise),
        RevokedEntry(1002, start - 2 * DAY, None),
        RevokedEntry(1003, start - 3 * DAY, x509.ReasonFlags.unspecified),
        RevokedEntry(1004, start - 4 * DAY, x509.ReasonFlags.certificate_hold),
    ]
    crl = x509.load_der_x509_crl(
        build_crl(
            issuer=authority.certificate,
            key=authority.key,
            entries=entries,
            distribution_point=URL,
            **crl_kwargs,
        )
    )
    assert crl.issuer == authority.certificate.subject
    assert crl.last_update_utc == start
    assert crl.next_update_utc == start + 7 * DAY
    assert [r.serial_number for r in crl] == [1001, 1002, 1003, 1004]
    assert [r.revocation_date_utc for r in crl] == [e.revoked_at for e in entries]
    reasons = []
    for revoked in crl:
        try:
            reasons.append(revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason)
        except x509.ExtensionNotFound:
            reasons.append(None)
    # RFC 5280 5.3.1: no reasonCode for an unspecified reason.
    assert reasons == [x509.ReasonFlags.key_compromise, None, None, x509.ReasonFlags.certificate_hold]
    extensions = {e.oid: e for e in crl.extensions}
    assert list(extensions) == [
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.ISSUING_DISTRIBUTION_POINT,
    ]
    ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert extensions[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].value.key_identifier == ski.digest
    assert not extensions[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].critical
    assert extensions[ExtensionOID.CRL_NUMBER].value.crl_number == 42
    assert not extensions[ExtensionOID.CRL_NUMBER].critical
    idp = extensions[ExtensionOID.ISSUING_DISTRIBUTION_POINT]
    assert idp.critical
    assert idp.value.full_name == [x509.UniformResourceIdentifier(URL)]
    assert crl.get_revoked_certificate_by_serial_number(1002) is not None
    assert crl.get_revoked_certificate_by_serial_number(999) is None


def test_signed_by_the_issuer_only(authority, authority_for, crl_kwargs):
    crl = x509.load_der_x509_crl(
        build_crl(issuer=authority.certificate, key=authority.key, entries=[], **crl_kwargs)
    )
    assert crl.is_signature_valid(authority.certificate.public_key())
    other = authority_for(KeyType.EC_P384).certificate.public_key()
    assert not crl.is_signature_valid(other)  # negative control


def test_certwright_verifier_refuses_the_revoked_leaf_only(authority, leaf_keys, start, crl_kwargs):
    profile = BUILTIN_PROFILES["server"]
    revoked = authority.issue(leaf_keys(KeyType.EC_P256).public_key(), profile=profile, subject="CN=gone")
    kept = authority.issue(leaf_keys(KeyType.EC_P256).public_key(), profile=profile, subject="CN=kept")
    crl = x509.load_der_x509_crl(
        build_crl(
            issuer=authority.certificate,
            key=authority.key,
            entries=[RevokedEntry(revoked.serial_number, start, x509.ReasonFlags.key_compromise)],
            **crl_kwargs,
        )
    )
    at = start + datetime.timedelta(hours=1)
    with pytest.raises(VerificationError, match="revoked"):
        check_revocation([revoked, authority.certificate], [crl], at)
    check_revocation([kept, authority.certificate], [crl], at)


# --- scale and memory -----------------------------------------------------------------------------


def test_hundred_thousand_entries(authority, start, crl_kwargs):
    count = 100_000
    times = [start - datetime.timedelta(minutes=i) for i in range(500)]

    def entries():
        for i in range(count):
            yield (0x4000_0000_0000_0000_0000_0000 + i * 7919, times[i % 500], CRL_REASONS[i % 3])

    data = build_crl(issuer=authority.certificate, key=authority.key, entries=entries(), **crl_kwargs)
    crl = x509.load_der_x509_crl(data)
    assert len(crl) == count
    assert crl.is_signature_valid(authority.certificate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(0x4000_0000_0000_0000_0000_0000 + 99_999 * 7919)


def test_memory_is_bounded_by_the_der_not_by_entry_objects(authority, start, crl_kwargs):
    """200,000 entries from a generator: the peak is the returned DER, about 44 octets an entry.

    Holding the same 200,000 entries as ``RevokedEntry`` tuples alone costs about 130 bytes
    each (cryptography's builder needs more per entry still, partly in Rust objects that
    tracemalloc cannot see). The entries go to a spooled temporary file, so not even the
    TBSCertList is held twice.
    """
    count = 200_000
    times = [start - datetime.timedelta(seconds=i) for i in range(3600)]
    reasons = [None, x509.ReasonFlags.key_compromise, x509.ReasonFlags.superseded]

    def entries():
        for i in range(count):
            yield RevokedEntry((1 << 120) + i * 104_729, times[i % 3600], reasons[i % 3])

    gc.collect()
    tracemalloc.start()
    try:
        data = build_crl(issuer=authority.certificate, key=authority.key, entries=entries(), **crl_kwargs)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        held = list(entries())
        objects_cost = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(held) == count
    del held
    assert len(data) < 45 * count
    # The result itself, plus at most the 1 MiB spool and a 64 KiB chunk.
    assert peak < len(data) + (3 << 19), f"peak {peak} for {len(data)} octets of DER"
    assert peak < objects_cost * 0.4, f"peak {peak}, entries as objects {objects_cost}"
    assert len(x509.load_der_x509_crl(data)) == count


def test_entries_are_consumed_once_and_lazily(authority, start, crl_kwargs):
    seen: list[int] = []

    def entries():
        for serial in (5, 6, 7):
            seen.append(serial)
            yield RevokedEntry(serial, start)

    iterator = entries()
    build_crl(issuer=authority.certificate, key=authority.key, entries=iterator, **crl_kwargs)
    assert seen == [5, 6, 7]
    assert next(iterator, None) is None


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "error", "message"),
    [
        ((0, "t", None), InvalidInputError, "out of range"),
        ((-5, "t", None), InvalidInputError, "out of range"),
        ((MAX_SERIAL, "t", None), InvalidInputError, "out of range"),
        (("12", "t", None), TypeError, "must be an int"),
        ((1, "naive", None), InvalidInputError, "timezone-aware"),
        ((1, "1949", None), InvalidInputError, "before 1950"),
        ((1, "t", x509.ReasonFlags.remove_from_crl), InvalidInputError, "delta CRLs only"),
        ((1, "t", "keyCompromise"), TypeError, "ReasonFlags"),
    ],
)
def test_bad_entries_are_refused(authority, start, crl_kwargs, entry, error, message):
    times = {
        "t": start,
        "naive": start.replace(tzinfo=None),
        "1949": datetime.datetime(1949, 12, 31, 23, 59, 59, tzinfo=UTC),
    }
    serial, when, reason = entry
    bad = (serial, times[when], reason)
    with pytest.raises(error, match=message):
        build_crl(
            issuer=authority.certificate,
            key=authority.key,
            entries=[RevokedEntry(9, start), bad],
            **crl_kwargs,
        )


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"crl_number": -1}, InvalidInputError, "out of range"),
        ({"crl_number": 1 << 159}, InvalidInputError, "out of range"),
        ({"crl_number": True}, TypeError, "crl_number"),
        ({"next_update": "same"}, InvalidInputError, "must be after"),
        ({"next_update": "before"}, InvalidInputError, "must be after"),
        ({"next_update": "sub-second"}, InvalidInputError, "must be after"),
        ({"this_update": "naive"}, InvalidInputError, "timezone-aware"),
        ({"next_update": "naive"}, InvalidInputError, "timezone-aware"),
        ({"distribution_point": "/root.crl"}, InvalidInputError, "absolute ASCII URL"),
        ({"distribution_point": "http://crl.exämple.org/x.crl"}, InvalidInputError, "absolute ASCII URL"),
        ({"distribution_point": "http://crl.example.org/a b.crl"}, InvalidInputError, "absolute ASCII URL"),
    ],
)
def test_bad_arguments_are_refused(authority, start, crl_kwargs, change, error, message):
    times = {
        "same": start,
        "before": start - DAY,
        "sub-second": start.replace(microsecond=500_000),
        "naive": start.replace(tzinfo=None),
    }
    kwargs = {**crl_kwargs, **{k: times.get(v, v) if isinstance(v, str) else v for k, v in change.items()}}
    with pytest.raises(error, match=message):
        build_crl(issuer=authority.certificate, key=authority.key, entries=[], **kwargs)


def test_key_must_match_the_issuer(authority, crl_kwargs):
    with pytest.raises(InvalidKeyError, match="does not match"):
        build_crl(issuer=authority.certificate, key=generate_key(), entries=[], **crl_kwargs)


def test_issuer_must_have_crl_sign(authority, crl_kwargs):
    key = generate_key()
    leaf = authority.issue(key.public_key(), profile=BUILTIN_PROFILES["server"], subject="CN=not a ca")
    with pytest.raises(InvalidInputError, match="cRLSign"):
        build_crl(issuer=leaf, key=key, entries=[], **crl_kwargs)
