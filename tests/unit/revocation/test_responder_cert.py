"""certwright.revocation.responder and .entries: the responder certificate, rotation, status values."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certwright.clock import FixedClock
from certwright.errors import InvalidCertificateError, InvalidInputError
from certwright.issuance import Authority, create_root
from certwright.revocation import (
    CertificateStatus,
    CertStatus,
    RevokedEntry,
    check_responder,
    issue_responder,
    responder_needs_rotation,
)
from certwright.x509.keys import KeyType, generate_key
from certwright.x509.profiles import BUILTIN_PROFILES

DAY = datetime.timedelta(days=1)


@pytest.mark.parametrize(
    "key_type", [KeyType.EC_P256, KeyType.ED25519, KeyType.RSA_2048], ids=lambda k: k.value
)
def test_issue_responder_uses_the_ocsp_responder_profile(authority_for, start, key_type):
    ca = authority_for(key_type)
    key = generate_key(key_type)
    cert = issue_responder(ca, key)
    assert cert.issuer == ca.certificate.subject
    cert.verify_directly_issued_by(ca.certificate)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    # RFC 6960 4.2.2.2.1: trusted for its lifetime, so never checked itself.
    assert cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert cert.not_valid_after_utc - start == 7 * DAY
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == f"Test Root {key_type.value} OCSP Responder"
    check_responder(issuer=ca.certificate, responder=cert, responder_key=key, now=start)


def test_issue_responder_takes_a_public_key_subject_and_lifetime(authority, start):
    key = generate_key()
    cert = issue_responder(authority, key.public_key(), subject="CN=ocsp,O=Example", lifetime=2 * DAY)
    assert cert.subject.rfc4514_string() == "CN=ocsp,O=Example"
    assert cert.not_valid_after_utc - start == 2 * DAY


def test_default_subject_stays_within_64_characters(settings, start):
    key = generate_key()
    long_name = "A" * 64
    root = create_root(key, subject=f"CN={long_name}", settings=settings, clock=FixedClock(start))
    cert = issue_responder(
        Authority(certificate=root, key=key, settings=settings, clock=FixedClock(start)), generate_key()
    )
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert len(common_name) == 64
    assert common_name.endswith(" OCSP Responder")


def test_rotation_at_two_thirds_of_the_lifetime(authority):
    cert = issue_responder(authority, generate_key(), lifetime=9 * DAY)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    third = (not_after - not_before) / 3
    assert not responder_needs_rotation(cert, not_before)
    assert not responder_needs_rotation(cert, not_after - third)
    assert responder_needs_rotation(cert, not_after - third + datetime.timedelta(seconds=1))
    assert responder_needs_rotation(cert, not_after)
    assert responder_needs_rotation(cert, not_after + DAY)


def test_check_responder_refuses_a_leaf_without_ocsp_signing(authority, start):
    key = generate_key()
    leaf = authority.issue(key.public_key(), profile=BUILTIN_PROFILES["server"], subject="CN=web")
    with pytest.raises(InvalidCertificateError, match="OCSPSigning"):
        check_responder(issuer=authority.certificate, responder=leaf, responder_key=key, now=start)


def test_check_responder_refuses_a_not_yet_valid_certificate(authority, start):
    key = generate_key()
    cert = issue_responder(authority, key)
    with pytest.raises(InvalidCertificateError, match="not valid now"):
        check_responder(
            issuer=authority.certificate,
            responder=cert,
            responder_key=key,
            now=start - datetime.timedelta(hours=1),
        )


# --- status values -----------------------------------------------------------------------------------


def test_certificate_status_values(start):
    good = CertificateStatus.good()
    assert good.status is CertStatus.GOOD and not good.is_revoked
    revoked = CertificateStatus.revoked(start, x509.ReasonFlags.key_compromise)
    assert revoked.is_revoked and revoked.revoked_at == start


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": CertStatus.GOOD, "revoked_at": "t"}, "good certificate"),
        ({"status": CertStatus.GOOD, "reason": x509.ReasonFlags.superseded}, "good certificate"),
        ({"status": CertStatus.REVOKED}, "needs its revocation time"),
        ({"status": CertStatus.REVOKED, "revoked_at": "naive"}, "timezone-aware"),
        (
            {"status": CertStatus.REVOKED, "revoked_at": "t", "reason": x509.ReasonFlags.remove_from_crl},
            "removeFromCRL",
        ),
    ],
)
def test_certificate_status_refusals(start, kwargs, message):
    times = {"t": start, "naive": start.replace(tzinfo=None)}
    if "revoked_at" in kwargs:
        kwargs = {**kwargs, "revoked_at": times[kwargs["revoked_at"]]}
    with pytest.raises(InvalidInputError, match=message):
        CertificateStatus(**kwargs)


def test_revoked_entry_is_a_plain_tuple(start):
    entry = RevokedEntry(7, start)
    assert entry == (7, start, None)
    serial, revoked_at, reason = entry
    assert (serial, revoked_at, reason) == (7, start, None)
