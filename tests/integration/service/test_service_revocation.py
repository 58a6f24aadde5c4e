"""RevocationService and StoreStatusSource on a real SQLite inventory."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from service_helpers import MTLS, NS, assert_chain_intact, events, issue, snapshot

from certwright.clock import FixedClock
from certwright.errors import CertwrightError, InvalidInputError
from certwright.issuance import Authority
from certwright.revocation import CertStatus
from certwright.service import CertificateService, RevocationService, StoreStatusSource
from certwright.service.certificates import ca_key_id
from certwright.store import ByIdentity, ByPublicKey, BySerial, CertificateStatus, Store, public_key_id
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import SigningKey, generate_key
from certwright.x509.revocation_reason import RevocationReason as Reason

HOUR = datetime.timedelta(hours=1)


def status(certificates: CertificateService, cert: x509.Certificate) -> tuple[str, str | None]:
    record = certificates.get(cert.serial_number)
    assert record is not None
    return record.status.value, record.revocation_reason.value if record.revocation_reason else None


def test_revoke_by_serial_records_the_time_and_reason_and_audits_it(
    certificates: CertificateService, revocations: RevocationService, store: Store, clock: FixedClock
) -> None:
    cert = issue(certificates, "serial")
    clock.advance(HOUR)
    before = snapshot(store)
    [ref] = revocations.revoke(BySerial(cert.serial_number), Reason.KEY_COMPROMISE)
    assert ref.serial == cert.serial_number
    record = certificates.get(cert.serial_number)
    assert record is not None
    assert (record.status, record.revocation_reason, record.revoked_at) == (
        CertificateStatus.REVOKED,
        Reason.KEY_COMPROMISE,
        clock.now(),
    )
    [(kind, subject, actor, details)] = events(store, before.head[0])
    assert (kind, subject, actor) == ("revoked", f"{cert.serial_number:x}", "test:bob")
    assert details == {"reason": "keyCompromise", "selector": f"serial {cert.serial_number:x}"}
    assert_chain_intact(store)


def test_refused_revocations_change_nothing(
    certificates: CertificateService, revocations: RevocationService, store: Store
) -> None:
    good = issue(certificates, "refused/good")
    revoked = issue(certificates, "refused/revoked")
    revocations.revoke(BySerial(revoked.serial_number), Reason.KEY_COMPROMISE)
    before = snapshot(store)
    with pytest.raises(CertwrightError, match="no certificate with serial"):
        revocations.revoke(BySerial(0x1234ABCD), Reason.KEY_COMPROMISE)
    with pytest.raises(CertwrightError, match="already revoked"):
        revocations.revoke(BySerial(revoked.serial_number), Reason.SUPERSEDED)
    with pytest.raises(InvalidInputError, match="removeFromCRL"):
        revocations.revoke(BySerial(good.serial_number), Reason.REMOVE_FROM_CRL)
    with pytest.raises(CertwrightError, match="no live certificate"):
        revocations.revoke(ByIdentity(f"{NS}/nobody"), Reason.SUPERSEDED)
    with pytest.raises(CertwrightError, match="no live certificate"):
        revocations.revoke(ByPublicKey(b"\x00" * 32), Reason.SUPERSEDED)
    with pytest.raises(CertwrightError, match="only a certificateHold can be lifted"):
        revocations.unrevoke(revoked.serial_number)
    with pytest.raises(CertwrightError, match="only a certificateHold can be lifted"):
        revocations.unrevoke(good.serial_number)
    with pytest.raises(CertwrightError, match="no certificate with serial"):
        revocations.unrevoke(0x1234ABCD)
    assert snapshot(store) == before


def test_revoke_by_identity_takes_every_live_certificate_and_leaves_expired_ones(
    certificates: CertificateService, revocations: RevocationService, store: Store, clock: FixedClock
) -> None:
    short = issue(certificates, "identity/web", lifetime=HOUR)
    live = [issue(certificates, "identity/web") for _ in range(3)]
    other = issue(certificates, "identity/other")
    clock.advance(2 * HOUR)  # "short" has expired
    before = snapshot(store)
    changed = revocations.revoke(ByIdentity(f"{NS}/identity/web"), Reason.CESSATION_OF_OPERATION)
    assert sorted(ref.serial for ref in changed) == sorted(c.serial_number for c in live)
    assert [status(certificates, c) for c in live] == [("revoked", "cessationOfOperation")] * 3
    assert status(certificates, short) == ("good", None)
    assert status(certificates, other) == ("good", None)
    assert len(events(store, before.head[0])) == 3  # one event per certificate


def test_revoke_by_public_key_takes_every_certificate_of_the_key(
    certificates: CertificateService, revocations: RevocationService, store: Store
) -> None:
    key: SigningKey = generate_key()
    mine = [issue(certificates, "key/a", key=key), issue(certificates, "key/b", key=key)]
    other = issue(certificates, "key/a")
    changed = revocations.revoke(ByPublicKey(public_key_id(mine[0])), Reason.KEY_COMPROMISE)
    assert sorted(ref.serial for ref in changed) == sorted(c.serial_number for c in mine)
    assert status(certificates, other) == ("good", None)
    details = events(store)[-1][3]
    assert details["selector"] == f"public key {public_key_id(mine[0]).hex()}"


def test_a_hold_can_be_lifted_or_made_final_keeping_its_time(
    certificates: CertificateService, revocations: RevocationService, store: Store, clock: FixedClock
) -> None:
    cert = issue(certificates, "hold")
    revocations.revoke(BySerial(cert.serial_number), Reason.CERTIFICATE_HOLD)
    assert status(certificates, cert) == ("on_hold", "certificateHold")
    head = snapshot(store).head[0]
    revocations.unrevoke(cert.serial_number)
    assert status(certificates, cert) == ("good", None)
    assert [(k, s) for k, s, _, _ in events(store, head)] == [("unrevoked", f"{cert.serial_number:x}")]
    revocations.revoke(BySerial(cert.serial_number), Reason.CERTIFICATE_HOLD)
    held_at = clock.now()
    clock.advance(HOUR)
    revocations.revoke(BySerial(cert.serial_number), Reason.KEY_COMPROMISE)
    record = certificates.get(cert.serial_number)
    assert record is not None
    assert (record.status, record.revocation_reason, record.revoked_at) == (
        CertificateStatus.REVOKED,
        Reason.KEY_COMPROMISE,
        held_at,  # relying parties have distrusted it since the hold
    )
    assert_chain_intact(store)


def reasons_of(crl: x509.CertificateRevocationList) -> dict[int, x509.ReasonFlags]:
    return {e.serial_number: e.extensions.get_extension_for_class(x509.CRLReason).value.reason for e in crl}


def test_publish_crl_lists_this_issuers_revocations_with_increasing_numbers(
    certificates: CertificateService,
    revocations: RevocationService,
    store: Store,
    clock: FixedClock,
    intermediate: x509.Certificate,
    intermediate_key: SigningKey,
    root: x509.Certificate,
    root_key: SigningKey,
) -> None:
    good = issue(certificates, "crl/good")
    revoked = [issue(certificates, f"crl/revoked{i}") for i in range(3)]
    held = issue(certificates, "crl/held")
    for cert in revoked:
        revocations.revoke(BySerial(cert.serial_number), Reason.SUPERSEDED)
    revocations.revoke(BySerial(held.serial_number), Reason.CERTIFICATE_HOLD)
    # The intermediate itself, recorded and revoked by its issuer (the root): not on this CRL.
    certificates.import_certificates([intermediate])
    by_root = RevocationService(store=store, issuer=root, clock=clock, actor="test:root")
    by_root.revoke(BySerial(intermediate.serial_number), Reason.CA_COMPROMISE)

    before = snapshot(store)
    published = revocations.publish_crl(
        intermediate_key,
        validity=datetime.timedelta(days=2),
        distribution_point="http://crl.example.org/i.crl",
    )
    crl = x509.load_der_x509_crl(published.der)
    assert crl.is_signature_valid(intermediate.public_key())  # type: ignore[arg-type]
    assert (published.number, published.entries, len(crl)) == (1, 4, 4)
    assert reasons_of(crl) == {
        **{c.serial_number: x509.ReasonFlags.superseded for c in revoked},
        held.serial_number: x509.ReasonFlags.certificate_hold,
    }
    assert good.serial_number not in reasons_of(crl)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    assert [n.value for n in idp.full_name or []] == ["http://crl.example.org/i.crl"]
    assert (crl.last_update_utc, crl.next_update_utc) == (
        clock.now(),
        clock.now() + datetime.timedelta(days=2),
    )
    assert (published.this_update, published.next_update) == (crl.last_update_utc, crl.next_update_utc)
    [(kind, subject, _, details)] = events(store, before.head[0])
    assert (kind, subject, details["entries"]) == ("crl", "1", 4)

    clock.advance(HOUR)
    second = revocations.publish_crl(intermediate_key)
    again = x509.load_der_x509_crl(second.der)
    assert second.number == 2
    with pytest.raises(x509.ExtensionNotFound):
        again.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert again.next_update_utc == clock.now() + datetime.timedelta(days=7)  # the default validity
    # Each issuer keeps its own numbers and entries.
    root_crl = by_root.publish_crl(root_key)
    assert (root_crl.number, root_crl.entries) == (1, 1)
    assert reasons_of(x509.load_der_x509_crl(root_crl.der)) == {
        intermediate.serial_number: x509.ReasonFlags.ca_compromise
    }
    with pytest.raises(InvalidInputError):
        revocations.publish_crl(intermediate_key, validity=datetime.timedelta(0))
    assert_chain_intact(store)


def test_store_status_source_says_good_revoked_held_or_unknown(
    certificates: CertificateService,
    revocations: RevocationService,
    store: Store,
    clock: FixedClock,
    authority: Authority,
    root_authority: Authority,
) -> None:
    good, revoked, held = (issue(certificates, f"status/{n}") for n in ("good", "revoked", "held"))
    revocations.revoke(BySerial(revoked.serial_number), Reason.KEY_COMPROMISE)
    revoked_at = clock.now()
    clock.advance(HOUR)
    revocations.revoke(BySerial(held.serial_number), Reason.CERTIFICATE_HOLD)
    source = StoreStatusSource(store, revocations.issuer_key_id)

    answer = source.lookup(good.serial_number)
    assert answer is not None and answer.status is CertStatus.GOOD
    answer = source.lookup(revoked.serial_number)
    assert answer is not None and answer.status is CertStatus.REVOKED
    assert (answer.revoked_at, answer.reason) == (revoked_at, x509.ReasonFlags.key_compromise)
    answer = source.lookup(held.serial_number)
    assert answer is not None and answer.status is CertStatus.REVOKED  # OCSP has no "held": revoked + reason
    assert (answer.revoked_at, answer.reason) == (clock.now(), x509.ReasonFlags.certificate_hold)
    assert source.lookup(0x1234ABCD) is None
    # Issued by this CA's key but never recorded: unknown, not good.
    stranger = authority.issue(
        generate_key().public_key(), profile=MTLS, identity=SpiffeId.parse(f"{NS}/stranger")
    )
    assert source.lookup(stranger.serial_number) is None
    # Another issuer's view never sees this issuer's certificates.
    other = StoreStatusSource(store, ca_key_id(root_authority.certificate))
    assert other.lookup(good.serial_number) is None
    # A lifted hold is good again.
    revocations.unrevoke(held.serial_number)
    answer = source.lookup(held.serial_number)
    assert answer is not None and answer.status is CertStatus.GOOD
