"""RFC 5280 reasons: parsing, cryptography's ReasonFlags, and every one through the database."""

from __future__ import annotations

import pytest
from cryptography import x509
from store_helpers import START, Issue, store_cert

from certwright.errors import InvalidInputError
from certwright.store import BySerial, Store, get_by_serial, iter_revoked, mark_revoked
from certwright.x509.revocation_reason import RevocationReason, parse_reason

REVOCABLE = [r for r in RevocationReason if r is not RevocationReason.REMOVE_FROM_CRL]


def test_reasons_are_the_rfc_names_with_the_rfc_codes() -> None:
    assert {r.value: r.code for r in RevocationReason} == {
        "unspecified": 0,
        "keyCompromise": 1,
        "cACompromise": 2,
        "affiliationChanged": 3,
        "superseded": 4,
        "cessationOfOperation": 5,
        "certificateHold": 6,
        "removeFromCRL": 8,
        "privilegeWithdrawn": 9,
        "aACompromise": 10,
    }


@pytest.mark.parametrize("reason", list(RevocationReason))
def test_reasons_map_to_and_from_reason_flags(reason: RevocationReason) -> None:
    assert RevocationReason.from_flag(reason.flag) is reason
    assert x509.ReasonFlags(reason.value) is reason.flag


@pytest.mark.parametrize("text", ["keyCompromise", "KEYCOMPROMISE", " keycompromise "])
def test_parse_reason_ignores_case_and_spaces(text: str) -> None:
    assert parse_reason(text) is RevocationReason.KEY_COMPROMISE


def test_parse_reason_lists_the_valid_names() -> None:
    with pytest.raises(InvalidInputError, match=r"unknown revocation reason .* use one of") as caught:
        parse_reason("compromised")
    assert all(r.value in str(caught.value) for r in RevocationReason)


@pytest.mark.parametrize("reason", REVOCABLE)
def test_every_reason_survives_the_database(store: Store, issue: Issue, reason: RevocationReason) -> None:
    cert = issue(identity="spiffe://example.org/r")
    store_cert(store, cert)
    with store.write() as session:
        [ref] = mark_revoked(session, BySerial(cert.serial_number), reason=reason, at=START)
    with store.read() as session:
        record = get_by_serial(session, cert.serial_number)
        entries = list(iter_revoked(session, ref.issuer_key_id))
    assert record is not None and record.revocation_reason is reason
    assert record.revocation_json()["revocation_reason"] == reason.value
    assert [(e.serial, e.reason) for e in entries] == [(cert.serial_number, reason)]
