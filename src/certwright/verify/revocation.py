"""Revocation checking against caller-supplied CRLs (RFC 5280 sections 5 and 6.3).

One implementation for both engines: ``cryptography`` 50's verifier has no revocation
support, and OpenSSL's (``X509_V_FLAG_CRL_CHECK``) fails any certificate whose issuer has
no CRL at hand, which is not the semantics certwright promises. So the built path is
checked here, after either engine has accepted it.

Semantics:

* every certificate of the path except the trust anchor is checked against the CRLs of
  its issuer in the path: those whose issuer name is the issuer's subject and whose
  authorityKeyIdentifier (when both sides carry one) is the issuer's key;
* a certificate whose issuer has no CRL in the list is **not** treated as revoked:
  supplying CRLs is opt-in, per issuer;
* a CRL that claims to be the issuer's but is unusable (bad signature, issuer may not
  sign CRLs, stale or not yet valid at the verification time, no or critical cRLNumber,
  unknown critical extension, delta or indirect CRL) makes verification fail: the
  caller asked for revocation checking and the status cannot be known, so certwright
  fails closed rather than silently skipping a tampered or broken CRL.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Sequence
from typing import TypeVar

from cryptography import x509
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from certwright.errors import VerificationError
from certwright.verify.names import describe, extension
from certwright.verify.profile import PERMITTED_SIGNATURE_OIDS, timestamp

E = TypeVar("E", bound=x509.ExtensionType)

# RFC 5280 5.2: extensions a CRL may carry that this checker understands. Any other
# extension marked critical makes the CRL unusable ("MUST reject the CRL").
_KNOWN_CRL_EXTENSIONS = frozenset(
    {
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.ISSUING_DISTRIBUTION_POINT,
        ExtensionOID.FRESHEST_CRL,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    }
)
_KNOWN_ENTRY_EXTENSIONS = frozenset(
    {CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.INVALIDITY_DATE}
)


def check_revocation(
    chain: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    at: datetime.datetime,
) -> None:
    """Refuse the path if a non-anchor certificate is revoked by its issuer's CRL."""
    if not crls:
        return
    for cert, issuer in itertools.pairwise(chain):
        for crl in crls_of(issuer, crls):
            check_crl(crl, issuer, at)
            if _in_scope(crl, cert):
                _check_entry(crl, cert)


def crls_of(
    issuer: x509.Certificate, crls: Sequence[x509.CertificateRevocationList]
) -> list[x509.CertificateRevocationList]:
    """The CRLs that claim to come from ``issuer`` (RFC 5280 6.3.3(b)(1), 5.2.1)."""
    ski = extension(issuer, x509.SubjectKeyIdentifier)
    result = []
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        aki = _crl_extension(crl, x509.AuthorityKeyIdentifier)
        if (
            ski is not None
            and aki is not None
            and aki.value.key_identifier is not None
            and aki.value.key_identifier != ski.value.digest
        ):
            continue  # same name, another key (CA rollover): not this issuer's CRL
        result.append(crl)
    return result


def check_crl(
    crl: x509.CertificateRevocationList, issuer: x509.Certificate, at: datetime.datetime
) -> None:
    who = describe(issuer)
    usage = extension(issuer, x509.KeyUsage)
    if usage is not None and not usage.value.crl_sign:
        # RFC 5280 4.2.1.3 and 6.3.3(f): the CRL signer must assert cRLSign.
        raise VerificationError(f"CRL issuer {who} may not sign CRLs (keyUsage lacks cRLSign)")
    if crl.signature_algorithm_oid not in PERMITTED_SIGNATURE_OIDS or not _signed_by(
        crl, issuer
    ):
        raise VerificationError(f"CRL for {who} has an invalid signature")  # RFC 5280 6.3.3(g)
    _check_crl_times(crl, who, at)
    _check_crl_extensions(crl, who)


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    try:
        return crl.is_signature_valid(key)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False  # a key type that cannot sign CRLs cannot have signed this one


def _check_crl_times(crl: x509.CertificateRevocationList, who: str, at: datetime.datetime) -> None:
    # RFC 5280 5.1.2.4-5 and 6.3.3(a)(2): usable from thisUpdate until nextUpdate;
    # conforming issuers MUST include nextUpdate, so a CRL without it is refused.
    if at < crl.last_update_utc:
        raise VerificationError(
            f"CRL for {who} not valid before {timestamp(crl.last_update_utc)}"
        )
    next_update = crl.next_update_utc
    if next_update is None:
        raise VerificationError(f"CRL for {who} has no nextUpdate")
    if at > next_update:
        raise VerificationError(f"CRL for {who} is stale: nextUpdate was {timestamp(next_update)}")


def _check_crl_extensions(crl: x509.CertificateRevocationList, who: str) -> None:
    number = _crl_extension(crl, x509.CRLNumber)
    # RFC 5280 5.2.3: conforming CRL issuers MUST include cRLNumber, marked non-critical.
    if number is None:
        raise VerificationError(f"CRL for {who} lacks a cRLNumber")
    if number.critical:
        raise VerificationError(f"CRL for {who} marks cRLNumber critical")
    if _crl_extension(crl, x509.DeltaCRLIndicator) is not None:
        raise VerificationError(f"CRL for {who} is a delta CRL, which is not supported")
    for ext in _all_extensions(crl):
        if ext.critical and ext.oid not in _KNOWN_CRL_EXTENSIONS:
            raise VerificationError(
                f"CRL for {who} has an unsupported critical extension {ext.oid.dotted_string}"
            )
    idp = _crl_extension(crl, x509.IssuingDistributionPoint)
    if idp is not None and (idp.value.indirect_crl or idp.value.only_some_reasons):
        # Indirect and reason-partitioned CRLs need more CRLs to decide (RFC 5280 5.2.5).
        raise VerificationError(f"CRL for {who} is indirect or partitioned by reason")


def _in_scope(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """Whether the CRL covers ``cert``, per its issuingDistributionPoint (RFC 5280 5.2.5)."""
    idp = _crl_extension(crl, x509.IssuingDistributionPoint)
    if idp is None:
        return True
    basic = extension(cert, x509.BasicConstraints)
    is_ca = basic is not None and basic.value.ca
    if idp.value.only_contains_user_certs and is_ca:
        return False
    if idp.value.only_contains_ca_certs and not is_ca:
        return False
    return not idp.value.only_contains_attribute_certs


def _check_entry(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> None:
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return
    try:
        extensions = list(entry.extensions)
    except (ValueError, TypeError, x509.DuplicateExtension) as exc:
        raise VerificationError(f"CRL entry for {describe(cert)} is malformed: {exc}") from exc
    for ext in extensions:
        if ext.critical and ext.oid not in _KNOWN_ENTRY_EXTENSIONS:
            # RFC 5280 5.3: an unrecognised critical entry extension (e.g. a
            # certificateIssuer of an indirect CRL) means we cannot judge the entry.
            raise VerificationError(f"CRL entry for {describe(cert)} has an unsupported critical extension")
    reason = next(
        (ext.value.reason for ext in extensions if isinstance(ext.value, x509.CRLReason)),
        x509.ReasonFlags.unspecified,
    )
    raise VerificationError(
        f"certificate revoked (reason: {reason.value}) at "
        f"{timestamp(entry.revocation_date_utc)} ({describe(cert)})"
    )


def _crl_extension(
    crl: x509.CertificateRevocationList, kind: type[E]
) -> x509.Extension[E] | None:
    try:
        return crl.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None
    except (ValueError, TypeError, x509.DuplicateExtension) as exc:
        raise VerificationError(f"CRL from {crl.issuer.rfc4514_string()} is malformed: {exc}") from exc


def _all_extensions(crl: x509.CertificateRevocationList) -> list[x509.Extension[x509.ExtensionType]]:
    try:
        return list(crl.extensions)
    except (ValueError, TypeError, x509.DuplicateExtension) as exc:
        raise VerificationError(f"CRL from {crl.issuer.rfc4514_string()} is malformed: {exc}") from exc
