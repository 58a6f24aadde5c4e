"""certwright.revocation.ocsp: answers, signatures, the pre-signed cache, and refusals.

Requests are built with cryptography's ``OCSPRequestBuilder`` (openssl's own requests are
in tests/interop/test_openssl_revocation.py); every answer is parsed back with
``load_der_ocsp_response`` and its signature checked against the responder certificate.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.x509 import ocsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certwright.clock import FixedClock
from certwright.errors import InvalidCertificateError, InvalidInputError, InvalidKeyError
from certwright.issuance import Authority
from certwright.revocation.entries import CertificateStatus
from certwright.revocation.ocsp import MALFORMED, MAX_REQUEST_SIZE, OCSPResponder, StatusSource
from certwright.revocation.responder import issue_responder
from certwright.x509 import der
from certwright.x509.keys import KeyType, SigningKey, generate_key
from certwright.x509.profiles import BUILTIN_PROFILES

UTC = datetime.UTC
HOUR = datetime.timedelta(hours=1)
MINUTE = datetime.timedelta(minutes=1)
DER = serialization.Encoding.DER
Status = ocsp.OCSPResponseStatus
SIGNING_KEY_TYPES = (KeyType.EC_P256, KeyType.EC_P384, KeyType.ED25519, KeyType.RSA_2048)


class DictSource:
    """A StatusSource over a dict, counting its lookups."""

    def __init__(self, statuses: dict[int, CertificateStatus]) -> None:
        self.statuses = statuses
        self.lookups = 0

    def lookup(self, serial: int) -> CertificateStatus | None:
        self.lookups += 1
        return self.statuses.get(serial)


@dataclass(frozen=True)
class Setup:
    authority: Authority
    responder: x509.Certificate
    responder_key: SigningKey
    good: x509.Certificate
    revoked: x509.Certificate
    unknown: x509.Certificate
    revoked_at: datetime.datetime

    @property
    def issuer(self) -> x509.Certificate:
        return self.authority.certificate

    def statuses(self) -> dict[int, CertificateStatus]:
        return {
            self.good.serial_number: CertificateStatus.good(),
            self.revoked.serial_number: CertificateStatus.revoked(
                self.revoked_at, x509.ReasonFlags.key_compromise
            ),
        }


@pytest.fixture(scope="module")
def setup_for(authority_for, start):
    cache: dict[KeyType, Setup] = {}

    def get(key_type: KeyType) -> Setup:
        if key_type not in cache:
            ca = authority_for(key_type)
            responder_key = generate_key(key_type)
            profile = BUILTIN_PROFILES["server"]
            leaves = [
                ca.issue(generate_key().public_key(), profile=profile, subject=f"CN={name}")
                for name in ("good", "revoked", "unknown")
            ]
            cache[key_type] = Setup(
                ca,
                issue_responder(ca, responder_key),
                responder_key,
                *leaves,
                revoked_at=start - datetime.timedelta(days=1, microseconds=250),
            )
        return cache[key_type]

    return get


@pytest.fixture
def pki(setup_for) -> Setup:
    return setup_for(KeyType.EC_P256)


@pytest.fixture
def source(pki) -> DictSource:
    return DictSource(pki.statuses())


@pytest.fixture
def responder(pki, source, clock) -> OCSPResponder:
    return make_responder(pki, source, clock)


def make_responder(pki: Setup, source: StatusSource, clock: FixedClock, **options) -> OCSPResponder:
    return OCSPResponder(
        issuer=pki.issuer,
        responder=pki.responder,
        responder_key=pki.responder_key,
        source=source,
        clock=clock,
        **options,
    )


def request(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = None,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


def check_signature(response: ocsp.OCSPResponse, cert: x509.Certificate) -> None:
    """Raise InvalidSignature unless ``cert``'s key signed the response."""
    key = cert.public_key()
    data, signature = response.tbs_response_bytes, response.signature
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(response.signature_hash_algorithm))
    else:
        key.verify(signature, data, padding.PKCS1v15(), response.signature_hash_algorithm)


def parse(data: bytes) -> ocsp.OCSPResponse:
    return ocsp.load_der_ocsp_response(data)


# --- answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", SIGNING_KEY_TYPES, ids=lambda k: k.value)
def test_good_revoked_unknown_signed_by_the_responder(setup_for, clock, start, key_type):
    pki = setup_for(key_type)
    responder = make_responder(pki, DictSource(pki.statuses()), clock)
    expected = {
        pki.good: ocsp.OCSPCertStatus.GOOD,
        pki.revoked: ocsp.OCSPCertStatus.REVOKED,
        pki.unknown: ocsp.OCSPCertStatus.UNKNOWN,
    }
    for cert, status in expected.items():
        response = parse(responder.respond(request(cert, pki.issuer)))
        assert response.response_status is Status.SUCCESSFUL
        assert response.certificate_status is status
        assert response.serial_number == cert.serial_number
        assert response.this_update_utc == start
        assert response.next_update_utc == start + HOUR
        # RFC 6960 4.2.1 / 4.2.2.2: the delegated responder's certificate is in the response,
        # it signed it, it is named by key hash, and the issuer issued it.
        assert response.certificates == [pki.responder]
        check_signature(response, pki.responder)
        with pytest.raises(InvalidSignature):
            check_signature(response, pki.issuer)  # negative control
        assert (
            response.responder_key_hash
            == x509.SubjectKeyIdentifier.from_public_key(pki.responder.public_key()).digest
        )
        pki.responder.verify_directly_issued_by(pki.issuer)
    revoked = parse(responder.respond(request(pki.revoked, pki.issuer)))
    assert revoked.revocation_time_utc == pki.revoked_at.replace(microsecond=0)
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=lambda a: a.name)
def test_cert_id_hash_is_echoed(pki, responder, algorithm):
    sent = ocsp.load_der_ocsp_request(request(pki.good, pki.issuer, algorithm=algorithm))
    response = parse(responder.respond(sent.public_bytes(DER)))
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.hash_algorithm.name == algorithm.name
    assert response.issuer_name_hash == sent.issuer_name_hash
    assert response.issuer_key_hash == sent.issuer_key_hash


def test_sha1_and_sha256_answers_are_cached_apart(pki, responder):
    first = responder.respond(request(pki.good, pki.issuer, algorithm=hashes.SHA1()))
    second = responder.respond(request(pki.good, pki.issuer, algorithm=hashes.SHA256()))
    assert parse(first).hash_algorithm.name == "sha1"
    assert parse(second).hash_algorithm.name == "sha256"
    assert responder.stats.signed == 2


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (None, None),
        (x509.ReasonFlags.unspecified, None),  # left out, as in CRL entries (RFC 5280 5.3.1)
        (x509.ReasonFlags.certificate_hold, x509.ReasonFlags.certificate_hold),
        (x509.ReasonFlags.superseded, x509.ReasonFlags.superseded),
    ],
)
def test_revocation_reason(pki, clock, start, reason, expected):
    source = DictSource({pki.revoked.serial_number: CertificateStatus.revoked(start, reason)})
    response = parse(make_responder(pki, source, clock).respond(request(pki.revoked, pki.issuer)))
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is expected


def test_answer_carries_what_http_caching_needs(pki, responder, start):
    answer = responder.answer(request(pki.good, pki.issuer))
    assert answer.response_status is Status.SUCCESSFUL
    assert answer.cert_status is ocsp.OCSPCertStatus.GOOD
    assert (answer.this_update, answer.next_update, answer.cacheable) == (start, start + HOUR, True)
    with_nonce = responder.answer(request(pki.good, pki.issuer, nonce=b"n" * 16))
    assert not with_nonce.cacheable
    refused = responder.answer(b"junk")
    assert (refused.response_status, refused.cacheable, refused.next_update) == (
        Status.MALFORMED_REQUEST,
        False,
        None,
    )


def test_next_update_never_outlives_the_responder_certificate(pki, source, clock):
    not_after = pki.responder.not_valid_after_utc
    clock.current = not_after - 30 * MINUTE
    response = parse(make_responder(pki, source, clock).respond(request(pki.good, pki.issuer)))
    assert response.next_update_utc == not_after


# --- nonce -----------------------------------------------------------------------------------------


def test_nonce_is_echoed_and_signed_fresh(pki, responder):
    first = parse(responder.respond(request(pki.good, pki.issuer, nonce=b"\x01" * 32)))
    second = parse(responder.respond(request(pki.good, pki.issuer, nonce=b"\x02" * 32)))
    assert first.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"\x01" * 32
    assert second.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"\x02" * 32
    assert responder.stats.signed == 2
    check_signature(first, pki.responder)
    # A nonce answer is not cached: a later request without nonce is signed anew, without one.
    plain = parse(responder.respond(request(pki.good, pki.issuer)))
    assert responder.stats.signed == 3
    with pytest.raises(x509.ExtensionNotFound):
        plain.extensions.get_extension_for_class(x509.OCSPNonce)


@pytest.mark.parametrize("size", [1, 16, 32, 128])
def test_nonce_sizes_accepted(pki, responder, size):
    response = parse(responder.respond(request(pki.good, pki.issuer, nonce=b"z" * size)))
    assert response.response_status is Status.SUCCESSFUL


@pytest.mark.parametrize("size", [0, 129, 1000])
def test_nonce_sizes_refused(pki, responder, size):
    # RFC 9654 2.1: 1 to 128 octets; anything else is malformedRequest.
    assert parse(responder.respond(request(pki.good, pki.issuer, nonce=b"z" * size))).response_status is (
        Status.MALFORMED_REQUEST
    )


# --- cache -------------------------------------------------------------------------------------------


def test_cache_hit_is_the_same_bytes_without_a_signature(pki, responder, source):
    first = responder.respond(request(pki.good, pki.issuer))
    assert (responder.stats.signed, source.lookups) == (1, 1)
    for _ in range(5):
        assert responder.respond(request(pki.good, pki.issuer)) == first
    assert (responder.stats.signed, source.lookups, responder.stats.from_cache) == (1, 1, 5)


def test_cached_answer_gives_only_what_needs_no_lookup_and_no_signature(pki, responder, source, clock):
    # What the HTTP edge answers in its event loop; None sends the request to answer().
    good = request(pki.good, pki.issuer)
    assert responder.cached_answer(good) is None  # not cached yet: it would need the inventory
    assert (responder.stats.signed, source.lookups) == (0, 0)
    first = responder.answer(good)
    assert responder.cached_answer(good) == first  # the very answer, no lookup, no signature
    assert (responder.stats.signed, source.lookups) == (1, 1)
    assert responder.cached_answer(b"garbage") is MALFORMED  # refusals need neither
    assert responder.cached_answer(request(pki.good, pki.issuer, nonce=b"n" * 16)) is None  # signed fresh
    assert responder.cached_answer(request(pki.unknown, pki.issuer)) is None  # never cached
    responder.invalidate(pki.good.serial_number)
    assert responder.cached_answer(good) is None  # a status change reaches it at once
    assert responder.cached_answer(good) is None
    responder.answer(good)
    assert responder.cached_answer(good) is not None
    clock.advance(HOUR)  # past the refresh point: to be signed anew
    assert responder.cached_answer(good) is None


def test_cache_refreshes_refresh_before_next_update(pki, source, clock, start):
    responder = make_responder(pki, source, clock, validity=HOUR, refresh_before=15 * MINUTE)
    first = responder.respond(request(pki.revoked, pki.issuer))
    clock.advance(45 * MINUTE - datetime.timedelta(seconds=1))
    assert responder.respond(request(pki.revoked, pki.issuer)) == first
    assert responder.stats.signed == 1
    clock.advance(datetime.timedelta(seconds=1))  # nextUpdate - refresh_before: sign anew
    refreshed = responder.respond(request(pki.revoked, pki.issuer))
    assert refreshed != first
    assert responder.stats.signed == 2
    response = parse(refreshed)
    assert response.this_update_utc == start + 45 * MINUTE
    assert response.next_update_utc == start + 105 * MINUTE
    assert responder.respond(request(pki.revoked, pki.issuer)) == refreshed


def test_invalidate_makes_the_next_answer_current(pki, responder, source, start):
    good = ocsp.OCSPCertStatus.GOOD
    assert parse(responder.respond(request(pki.good, pki.issuer))).certificate_status is good
    source.statuses[pki.good.serial_number] = CertificateStatus.revoked(start, x509.ReasonFlags.superseded)
    # Without invalidation the pre-signed answer stands until it is refreshed (RFC 5019 6.2).
    assert parse(responder.respond(request(pki.good, pki.issuer))).certificate_status is good
    responder.invalidate(pki.good.serial_number)
    response = parse(responder.respond(request(pki.good, pki.issuer)))
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is x509.ReasonFlags.superseded


def test_invalidate_drops_both_hash_algorithms_and_invalidate_all_everything(pki, responder):
    for algorithm in (hashes.SHA1(), hashes.SHA256()):
        responder.respond(request(pki.good, pki.issuer, algorithm=algorithm))
    responder.respond(request(pki.revoked, pki.issuer))
    assert responder.stats.signed == 3
    responder.invalidate(pki.good.serial_number)
    for algorithm in (hashes.SHA1(), hashes.SHA256()):
        responder.respond(request(pki.good, pki.issuer, algorithm=algorithm))
    responder.respond(request(pki.revoked, pki.issuer))
    assert responder.stats.signed == 5
    responder.invalidate_all()
    responder.respond(request(pki.revoked, pki.issuer))
    assert responder.stats.signed == 6


def test_invalidation_during_a_lookup_keeps_the_answer_out_of_the_cache(pki, clock, start):
    """A revocation racing with a signing must not leave the stale 'good' cached."""
    statuses = pki.statuses()

    class RacingSource:
        responder: OCSPResponder

        def lookup(self, serial: int) -> CertificateStatus | None:
            status = statuses.get(serial)
            # The revocation lands after the status was read, before the answer is stored.
            statuses[serial] = CertificateStatus.revoked(start)
            self.responder.invalidate(serial)
            return status

    racing = RacingSource()
    responder = racing.responder = make_responder(pki, racing, clock)
    first = parse(responder.respond(request(pki.good, pki.issuer)))
    assert first.certificate_status is ocsp.OCSPCertStatus.GOOD
    second = parse(responder.respond(request(pki.good, pki.issuer)))
    assert second.certificate_status is ocsp.OCSPCertStatus.REVOKED


def test_unknown_answers_are_not_cached(pki, responder):
    for _ in range(3):
        assert parse(responder.respond(request(pki.unknown, pki.issuer))).certificate_status is (
            ocsp.OCSPCertStatus.UNKNOWN
        )
    assert responder.stats.signed == 3


def test_cache_size_is_bounded_oldest_first(pki, source, clock):
    responder = make_responder(pki, source, clock, max_cached=1)
    responder.respond(request(pki.good, pki.issuer))
    responder.respond(request(pki.revoked, pki.issuer))  # evicts good
    responder.respond(request(pki.revoked, pki.issuer))
    assert responder.stats.signed == 2
    responder.respond(request(pki.good, pki.issuer))
    assert responder.stats.signed == 3


def test_max_cached_zero_signs_every_time(pki, source, clock):
    responder = make_responder(pki, source, clock, max_cached=0)
    for _ in range(3):
        responder.respond(request(pki.good, pki.issuer))
    assert responder.stats.signed == 3


# --- refusals: malformedRequest, unauthorized, tryLater -------------------------------------------------


def _two_requests(single: bytes) -> bytes:
    """An OCSPRequest listing the same Request twice (RFC 5019 2.1.1 allows one)."""
    _, tbs_start, _ = der.read_tlv(single)
    _, list_start, _ = der.read_tlv(single, tbs_start)
    _, item_start, item_end = der.read_tlv(single, list_start)
    one = single[item_start:item_end]
    assert single[item_end : item_end + 1] == b""  # no extensions, no signature: nothing after
    return der.sequence(der.sequence(der.sequence(one, one)))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="garbage"),
        pytest.param(b"\x30\x82\xff\xff", id="truncated-header"),
        pytest.param(b"\x30\x80\x00\x00", id="indefinite-length"),
        pytest.param(b"\x30\x00", id="empty-sequence"),
    ],
)
def test_malformed_requests(responder, body):
    assert parse(responder.respond(body)).response_status is Status.MALFORMED_REQUEST
    assert responder.stats.unsuccessful == 1


def test_truncated_and_oversized_and_multiple_requests(pki, responder):
    valid = request(pki.good, pki.issuer)
    for body in (valid[:-1], valid + b"\x00", _two_requests(valid), b"\x30" * (MAX_REQUEST_SIZE + 1)):
        assert parse(responder.respond(body)).response_status is Status.MALFORMED_REQUEST
    assert parse(responder.respond(valid)).response_status is Status.SUCCESSFUL  # control


def raw_request(name_hash: bytes, key_hash: bytes, serial: int) -> bytes:
    """An OCSPRequest written by hand (RFC 6960 4.1.1), for serials the builder refuses."""
    sha1 = der.sequence(der.oid("1.3.14.3.2.26"), b"\x05\x00")
    cert_id = der.sequence(
        sha1, der.tlv(der.OCTET_STRING, name_hash), der.tlv(der.OCTET_STRING, key_hash), der.integer(serial)
    )
    return der.sequence(der.sequence(der.sequence(der.sequence(cert_id))))


@pytest.mark.parametrize("serial", [-1, 0, 1 << 160])
def test_serials_no_certificate_can_have_are_malformed(pki, responder, serial):
    ours = ocsp.load_der_ocsp_request(request(pki.good, pki.issuer))
    control = raw_request(ours.issuer_name_hash, ours.issuer_key_hash, pki.good.serial_number)
    assert parse(responder.respond(control)).certificate_status is ocsp.OCSPCertStatus.GOOD
    body = raw_request(ours.issuer_name_hash, ours.issuer_key_hash, serial)
    assert parse(responder.respond(body)).response_status is Status.MALFORMED_REQUEST


def test_request_size_limit_is_configurable(pki, source, clock):
    valid = request(pki.good, pki.issuer)
    small = make_responder(pki, source, clock, max_request_size=len(valid) - 1)
    assert parse(small.respond(valid)).response_status is Status.MALFORMED_REQUEST


def test_unknown_critical_request_extension_is_refused(pki, responder):
    extension = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.32473.9.9"), b"\x05\x00")
    base = ocsp.OCSPRequestBuilder().add_certificate(pki.good, pki.issuer, hashes.SHA1())
    critical = base.add_extension(extension, critical=True).build().public_bytes(DER)
    plain = base.add_extension(extension, critical=False).build().public_bytes(DER)
    # RFC 6960 4.4: unrecognized extensions are ignored unless critical.
    assert parse(responder.respond(critical)).response_status is Status.MALFORMED_REQUEST
    assert parse(responder.respond(plain)).response_status is Status.SUCCESSFUL


def test_other_issuer_is_unauthorized(pki, setup_for, responder):
    other = setup_for(KeyType.EC_P384)
    body = request(other.good, other.issuer)
    assert parse(responder.respond(body)).response_status is Status.UNAUTHORIZED


def test_same_name_other_key_is_unauthorized(pki, responder):
    ours = ocsp.load_der_ocsp_request(request(pki.good, pki.issuer))
    forged = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(ours.issuer_name_hash, b"\x00" * 20, pki.good.serial_number, hashes.SHA1())
        .build()
        .public_bytes(DER)
    )
    assert parse(responder.respond(forged)).response_status is Status.UNAUTHORIZED


@pytest.mark.parametrize("algorithm", [hashes.SHA384(), hashes.SHA512()], ids=lambda a: a.name)
def test_other_cert_id_hashes_are_unauthorized(pki, responder, algorithm):
    body = request(pki.good, pki.issuer, algorithm=algorithm)
    assert parse(responder.respond(body)).response_status is Status.UNAUTHORIZED


def test_unrecognized_cert_id_hash_is_unauthorized(pki, responder):
    body = request(pki.good, pki.issuer, algorithm=hashes.SHA256())
    sha256 = der.oid("2.16.840.1.101.3.4.2.1")
    assert body.count(sha256) == 1
    unknown = body.replace(sha256, der.oid("2.16.840.1.101.3.4.2.99"))
    assert parse(responder.respond(unknown)).response_status is Status.UNAUTHORIZED


def test_source_failure_is_try_later_and_not_cached(pki, clock):
    class Down:
        calls = 0

        def lookup(self, serial: int) -> CertificateStatus | None:
            self.calls += 1
            raise ConnectionError("database is down")

    down = Down()
    responder = make_responder(pki, down, clock)
    for _ in range(2):
        assert parse(responder.respond(request(pki.good, pki.issuer))).response_status is Status.TRY_LATER
    assert down.calls == 2


def test_expired_responder_certificate_answers_try_later(pki, responder, clock):
    clock.current = pki.responder.not_valid_after_utc
    assert parse(responder.respond(request(pki.good, pki.issuer))).response_status is Status.TRY_LATER


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(responder, body):
    response = parse(responder.respond(body))
    assert response.response_status in (Status.MALFORMED_REQUEST, Status.UNAUTHORIZED)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_requests_never_raise(pki, responder, data):
    body = bytearray(request(pki.good, pki.issuer, nonce=b"q" * 16))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
        body[position] = data.draw(st.integers(min_value=0, max_value=255))
    response = parse(responder.respond(bytes(body)))
    assert response.response_status in (Status.SUCCESSFUL, Status.MALFORMED_REQUEST, Status.UNAUTHORIZED)


# --- construction ------------------------------------------------------------------------------------------


def test_responder_certificate_needs_ocsp_signing(pki, source, clock):
    key = generate_key()
    leaf = pki.authority.issue(key.public_key(), profile=BUILTIN_PROFILES["server"], subject="CN=no eku")
    with pytest.raises(InvalidCertificateError, match="OCSPSigning"):
        OCSPResponder(issuer=pki.issuer, responder=leaf, responder_key=key, source=source, clock=clock)


def test_responder_certificate_must_come_from_the_issuer(pki, setup_for, source, clock):
    other = setup_for(KeyType.EC_P384)
    with pytest.raises(InvalidCertificateError, match="not issued by"):
        OCSPResponder(
            issuer=pki.issuer,
            responder=other.responder,
            responder_key=other.responder_key,
            source=source,
            clock=clock,
        )


def test_responder_key_must_match(pki, source, clock):
    with pytest.raises(InvalidKeyError, match="does not match"):
        OCSPResponder(
            issuer=pki.issuer,
            responder=pki.responder,
            responder_key=generate_key(),
            source=source,
            clock=clock,
        )


def test_responder_certificate_must_be_valid_now(pki, source, clock):
    clock.current = pki.responder.not_valid_after_utc + MINUTE
    with pytest.raises(InvalidCertificateError, match="not valid now"):
        make_responder(pki, source, clock)


@pytest.mark.parametrize(
    ("validity", "refresh_before"),
    [(HOUR, HOUR), (HOUR, 2 * HOUR), (HOUR, datetime.timedelta(0)), (HOUR, -MINUTE)],
)
def test_refresh_must_fall_inside_validity(pki, source, clock, validity, refresh_before):
    with pytest.raises(InvalidInputError, match="refresh_before"):
        make_responder(pki, source, clock, validity=validity, refresh_before=refresh_before)


# -- rotation ---------------------------------------------------------------------------------


def test_rotate_signs_with_the_new_responder_and_drops_the_cache(pki: Setup, source, clock) -> None:
    responder = make_responder(pki, source, clock)
    before = ocsp.load_der_ocsp_response(responder.respond(request(pki.good, pki.issuer)))
    check_signature(before, pki.responder)
    new_key = generate_key(KeyType.EC_P256)
    new_cert = issue_responder(pki.authority, new_key)
    responder.rotate(new_cert, new_key)
    lookups = source.lookups
    after = ocsp.load_der_ocsp_response(responder.respond(request(pki.good, pki.issuer)))
    assert source.lookups == lookups + 1  # not the old, cached response
    assert after.certificates == [new_cert]
    check_signature(after, new_cert)
    with pytest.raises(InvalidSignature):
        check_signature(after, pki.responder)


def test_rotate_refuses_a_pair_that_does_not_match_and_keeps_signing(pki: Setup, source, clock) -> None:
    responder = make_responder(pki, source, clock)
    stray_key = generate_key(KeyType.EC_P256)
    new_cert = issue_responder(pki.authority, generate_key(KeyType.EC_P256))
    with pytest.raises((InvalidKeyError, InvalidInputError)):
        responder.rotate(new_cert, stray_key)
    response = ocsp.load_der_ocsp_response(responder.respond(request(pki.good, pki.issuer)))
    check_signature(response, pki.responder)  # the old pair still signs
