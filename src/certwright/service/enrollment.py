"""Enrolment tokens, enrolment and renewal: the use cases behind ``certwright serve``.

* :meth:`EnrollmentService.create_token`: an admin grants one identity, one profile, a set
  of DNS names and IP addresses, roles/attributes and an optional lifetime cap, for a
  short time. The secret is returned once and stored only as its SHA-256.
* :meth:`EnrollmentService.enroll`: a workload presents the secret and a CSR (its key
  never leaves it). The token is redeemed by one conditional UPDATE in the transaction
  that stores the certificate, so the database enforces single use and a failed issuance
  leaves the token unused.
* :meth:`EnrollmentService.renew`: a workload authenticated by its current certificate
  (the TLS handshake verified the chain) gets a successor with the same identity, names,
  profile and roles, unless the inventory says that certificate is revoked, held or
  expired.

What is issued: exactly what the CSR asks for, within the grant. The identity is the
token's (or the presented certificate's) whether or not the CSR names it; the DNS names
and IP addresses are those the CSR lists, each of which must be in the grant: a CSR
without SANs gets a certificate with the identity alone. The grant is a set of names, not
patterns. The CSR's subject is not copied: the CA writes its default label (the last
identity segment), since a host-name-like CN is matched by clients that fall back to the
CN (OpenSSL without DNS SANs) and would widen the grant.

Every certificate returned has been committed with its inventory row and its audit event
(kind ``issued``, details naming the token or the certificate renewed). Every refusal
raises before the commit and changes nothing.

Example::

    >>> service = EnrollmentService(store=store, authority=authority,
    ...                             profiles=BUILTIN_PROFILES, clock=clock)   # doctest: +SKIP
    >>> created = service.create_token(
    ...     TokenGrant(SpiffeId.parse("spiffe://example.org/web"), "mtls"),
    ...     ttl=datetime.timedelta(minutes=15), actor="admin")               # doctest: +SKIP
    >>> enrolled = service.enroll(created.secret, csr, actor="enrol")        # doctest: +SKIP
    >>> renewed = service.renew(enrolled.certificate, next_csr, actor="web")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certwright.clock import Clock, SystemClock
from certwright.errors import CertwrightError, InvalidCSRError, InvalidInputError, PolicyViolation
from certwright.issuance import Authority, Issued, verify_csr
from certwright.store import AuditKind, CertificateStatus, Store, WriterBusy
from certwright.store.bulk import EventSpec, InTransaction, add_certificate_row, append_events
from certwright.store.models import EnrollmentToken
from certwright.store.records import issuance_details, issued_fields
from certwright.store.tokens import (
    HeldCertificate,
    RedeemedToken,
    TokenState,
    held,
    insert_token,
    lock_held,
    purge_expired,
    redeem,
    token_state,
)
from certwright.x509.authz import DEFAULT_OID, Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.names import IPAddress, SubjectAltNames, normalize_dns, normalize_email
from certwright.x509.profiles import Profile, Request

# A token is a bearer secret: short-lived by design. Fifteen minutes is the API's default.
MAX_TOKEN_TTL = datetime.timedelta(days=30)
SECRET_BYTES = 32  # 256 bits from the CSPRNG (secrets.token_urlsafe): not guessable, no rate limit needed
_MAX_SECRET_LENGTH = 256
_MAX_ACTOR_LENGTH = 256  # the width of requested_by / created_by / used_by
_SHA256 = hashes.SHA256()
_log = logging.getLogger("certwright.enrollment")


class TokenProblem(enum.Enum):
    """Why a token was refused (for logs and metrics; callers see only ``public_message``)."""

    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"
    IDENTITY = "identity"  # the CSR asks for another identity than the token's


# The CA's own certificates (server, admin) live under this path, with this role.
RESERVED_PATH = "/certwright"
RESERVED_ROLE = "certwright.admin"


class TokenError(CertwrightError):
    """A token is unknown, used, expired, or does not cover the request (never says which
    of unknown/used/expired to an unauthenticated caller: ``public_message``).

    The message itself names the token and the reason, for the server's log; ``problem``
    says which, ``token_id`` which token (None when the secret matches none).
    """

    public_message = "the enrolment token is not valid"

    def __init__(
        self,
        message: str,
        *,
        problem: TokenProblem = TokenProblem.UNKNOWN,
        token_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.problem = problem
        self.token_id = token_id


class RenewalError(CertwrightError):
    """A renewal is refused: the presented certificate is unknown, revoked or expired, or
    the request asks for more than it holds.

    The message is about the caller's own certificate and may be shown to it.
    """


@dataclass(frozen=True)
class TokenGrant:
    """What a token allows: one identity, one profile, a SAN set, roles, a lifetime cap.

    ``sans`` holds DNS names and IP addresses only (the identity is the one URI).
    ``lifetime`` caps the enrolled certificate's lifetime: it gets the profile's default
    lifetime or the cap, whichever is shorter.
    """

    identity: SpiffeId
    profile: str
    # Frozen values: one shared default instance is safe.
    sans: SubjectAltNames = SubjectAltNames()  # noqa: RUF009
    authorization: Authorization = Authorization()  # noqa: RUF009
    lifetime: datetime.timedelta | None = None


@dataclass(frozen=True)
class CreatedToken:
    """A new token: ``secret`` is shown once and stored only as a hash."""

    secret: str
    token_id: str
    grant: TokenGrant
    expires_at: datetime.datetime


@dataclass(frozen=True)
class Enrolled:
    """A certificate the inventory holds, and the chain to send with it (no root).

    ``recorded`` is what its committed row says (profile, identity), set only once the
    transaction that stored it has committed; an edge must not hand out a certificate
    without it.
    """

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    recorded: Recorded | None = None


class Recorded(NamedTuple):
    """The profile and identity a certificate's committed inventory row holds."""

    profile: str
    identity: str | None


@dataclass(frozen=True, slots=True)
class PendingCertificate:
    """A certificate signed from a read, not yet stored: hand it to
    :meth:`EnrollmentService.record`, which decides again in its write transaction.

    Never give ``issued`` to anyone before that: the inventory does not hold it yet.
    An enrolment carries its token (``token_hash`` and the grant the read saw), a renewal
    the certificate it renews (``fingerprint`` and the row the read saw).
    """

    issued: Issued
    profile: str
    identity: str | None
    actor: str
    at: datetime.datetime
    token_hash: bytes | None = None
    token: RedeemedToken | None = None
    fingerprint: bytes | None = None
    held: HeldCertificate | None = None


class _Link(NamedTuple):
    """What ties a new row to its request: the token redeemed or the certificate renewed."""

    token_pk: int | None
    renewed_from_pk: int | None
    extra: dict[str, str]  # for the audit event's details


class _Refused(Exception):
    """An item of :meth:`EnrollmentService.record` refused before it wrote anything."""

    def __init__(self, error: CertwrightError) -> None:
        super().__init__(str(error))
        self.error = error


class _Asked(NamedTuple):
    """The names a CSR asks for, normalised as the inventory stores them."""

    uris: tuple[str, ...]
    dns: tuple[str, ...]
    ips: tuple[IPAddress, ...]
    emails: tuple[str, ...]


@dataclass
class EnrollmentService:
    """Tokens, enrol (token + CSR) and renew (current certificate + CSR), one transaction each.

    ``extension_oid`` must be the OID the authority writes roles under
    (``authority.settings.extension_oid``): the inventory indexes roles with it and
    renewal reads them back with it.
    """

    store: Store
    authority: Authority
    profiles: dict[str, Profile]
    extension_oid: str = DEFAULT_OID
    clock: Clock = field(default_factory=SystemClock)
    # What never changes for one authority, computed once (see _issuer).
    _issuer_facts: _IssuerFacts | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.extension_oid != self.authority.settings.extension_oid:
            raise InvalidInputError(
                f"extension OID {self.extension_oid} differs from the CA's "
                f"{self.authority.settings.extension_oid}: roles would be recorded (and renewed) wrongly"
            )

    # -- tokens ------------------------------------------------------------------------

    def create_token(self, grant: TokenGrant, *, ttl: datetime.timedelta, actor: str) -> CreatedToken:
        """Store a single-use token for ``grant`` (audited, kind TOKEN).

        The grant is checked now against its profile and the CA's trust domain, so a token
        that could never enrol is refused at once: :class:`PolicyViolation` (unknown or CA
        profile, an identity, name or role the profile refuses) or
        :class:`InvalidInputError` (ttl not in (0, 30 days], URIs or emails in ``sans``).
        """
        _check_actor(actor)
        if not datetime.timedelta(0) < ttl <= MAX_TOKEN_TTL:
            raise InvalidInputError(f"a token's ttl must be positive and at most {MAX_TOKEN_TTL.days} days")
        grant = self._checked_grant(grant)
        now = self.clock.now()
        secret = secrets.token_urlsafe(SECRET_BYTES)
        token_id = secrets.token_hex(8)
        expires_at = now + ttl
        lifetime = None if grant.lifetime is None else int(grant.lifetime.total_seconds())
        with self.store.write_connection() as connection:
            insert_token(
                connection,
                token_id=token_id,
                token_hash=_hash_secret(secret),
                identity=str(grant.identity),
                profile=grant.profile,
                dns=grant.sans.dns,
                ips=[str(ip) for ip in grant.sans.ips],
                roles=grant.authorization.roles,
                attributes=grant.authorization.attribute_map,
                lifetime_seconds=lifetime,
                created_by=actor,
                created_at=now,
                expires_at=expires_at,
            )
            # Never the secret: the log is read by more people than may enrol workloads.
            details: dict[str, Any] = {
                "token_id": token_id,
                "identity": str(grant.identity),
                "profile": grant.profile,
                "dns": list(grant.sans.dns),
                "ips": [str(ip) for ip in grant.sans.ips],
                "roles": list(grant.authorization.roles),
                "attributes": grant.authorization.attribute_map,
                "lifetime_seconds": lifetime,
                "expires_at": expires_at.isoformat(),
            }
            append_event(connection, EventSpec(AuditKind.TOKEN, actor, now, f"token:{token_id}", details))
        return CreatedToken(secret=secret, token_id=token_id, grant=grant, expires_at=expires_at)

    def purge_expired_tokens(self, *, older_than: datetime.timedelta, actor: str) -> int:
        """Delete tokens never redeemed that expired more than ``older_than`` ago; how many.

        Audited (kind TOKEN, one event naming the count and the cut-off) when any went.
        ``certwright serve`` runs it hourly with ``token_retention``.

        Example::

            >>> service.purge_expired_tokens(older_than=timedelta(days=7), actor="server")  # doctest: +SKIP
            12
        """
        if older_than < datetime.timedelta(0):
            raise InvalidInputError(f"token retention must not be negative (got {older_than})")
        now = self.clock.now()
        cutoff = now - older_than
        with self.store.write_connection() as connection:
            purged = purge_expired(connection, expired_before=cutoff)
            if purged:
                details = {"purged": purged, "expired_before": cutoff.isoformat()}
                append_event(connection, EventSpec(AuditKind.TOKEN, actor, now, "tokens", details))
        return purged

    def _checked_grant(self, grant: TokenGrant) -> TokenGrant:
        profile = self.profiles.get(grant.profile)
        if profile is None:
            known = ", ".join(sorted(n for n, p in self.profiles.items() if not p.ca)) or "none"
            raise PolicyViolation(f"unknown profile {grant.profile!r} (known: {known})", field="profile")
        if profile.ca:
            raise PolicyViolation(
                f"profile {profile.name!r} issues CA certificates: no tokens", field="profile"
            )
        if grant.sans.uris or grant.sans.emails:
            raise InvalidInputError(
                "a token grants DNS names and IP addresses; its identity is the certificate's one URI"
            )
        # The CA's own identities and its admin role are issued by `certwright serve` itself:
        # a workload holding spiffe://TD/certwright/server would pass every client's check of
        # the CA server (and collect enrolment tokens); a token must never mint an admin.
        if grant.identity.path == RESERVED_PATH or grant.identity.path.startswith(RESERVED_PATH + "/"):
            raise PolicyViolation(
                f"identity {grant.identity} is reserved for the CA's own certificates", field="identity"
            )
        if RESERVED_ROLE in grant.authorization.roles:
            raise PolicyViolation(
                f"role {RESERVED_ROLE!r} is the CA's administrator role: it is not granted by tokens",
                field="roles",
            )
        sans = SubjectAltNames.create(dns=grant.sans.dns, ips=grant.sans.ips)
        lifetime = grant.lifetime
        if lifetime is not None:
            lifetime = datetime.timedelta(seconds=int(lifetime.total_seconds()))  # stored in whole seconds
        # The key is not known before enrolment (where issuance checks its type): check the
        # rest with a key type the profile accepts.
        key_type = min(profile.key_types, key=lambda k: k.value)
        request = Request(
            key_type=key_type,
            identity=grant.identity,
            sans=sans,
            authorization=grant.authorization,
            lifetime=lifetime,
        )
        profile.check(request, self.authority.settings)  # trust domain, patterns, roles, max lifetime
        return replace(grant, sans=sans, lifetime=lifetime)

    # -- enrolment ---------------------------------------------------------------------

    def enroll(
        self,
        secret: str,
        csr: x509.CertificateSigningRequest,
        *,
        actor: str,
        writer_wait: float | None = None,
    ) -> Enrolled:
        """Redeem the token and issue for the CSR in one transaction (all or nothing).

        Raises :class:`InvalidCSRError` (bad signature or extensions), :class:`TokenError`
        (unknown, used or expired token; the CSR names another identity),
        :class:`PolicyViolation` (the CSR asks for a name the token does not grant, or its
        key type is not allowed by the profile). The token stays unused after any error.
        ``writer_wait``: see :meth:`~certwright.store.Store.write_connection` (``WriterBusy``,
        raised before anything is written).
        """
        return self.record_one(self.prepare_enrollment(secret, csr, actor=actor), writer_wait=writer_wait)

    def prepare_enrollment(
        self, secret: str, csr: x509.CertificateSigningRequest, *, actor: str
    ) -> PendingCertificate:
        """The first half of :meth:`enroll`: every check a read can make, and the signature.

        Nothing is written: the certificate is stored (and may be returned) only once
        :meth:`record` has redeemed the token in the transaction that stores it. Raises
        what :meth:`enroll` raises for the request itself.
        """
        _check_actor(actor)
        verified = verify_csr(csr)  # RFC 2986 3: proof of possession, before touching the database
        asked = _asked(verified.csr)
        token_hash = _hash_secret(secret)
        now = self.clock.now()
        # An unknown, used or expired token is refused from a read (one SELECT): guessing
        # (unauthenticated, free to send) must not queue for the database's one writer. The
        # certificate is signed from what the read says the token grants (a token never
        # changes but for its redemption), outside the write transaction, so the writer
        # turn is held only for the statements. The conditional UPDATE in record() stays
        # the authority on single use: if another request redeemed the token meanwhile, the
        # certificate just signed is dropped, never stored nor returned.
        with self.store.statement_connection() as connection:
            state = token_state(connection, token_hash)
        if state is None or not state.redeemable(now):
            raise _refusal(state, now)
        grant = grant_of(state.grant)
        profile = self._profile(grant.profile, what=f"token {state.token_id}")
        sans = _within_grant(asked, grant, state.token_id)
        issued = self.authority.issue_for_csr_key(
            verified,
            profile=profile,
            identity=grant.identity,
            sans=sans,
            authorization=grant.authorization,
            lifetime=_capped(grant.lifetime, profile),
        )
        return PendingCertificate(
            issued, profile.name, str(grant.identity), actor, now, token_hash=token_hash, token=state.grant
        )

    def _profile(self, name: str, *, what: str) -> Profile:
        profile = self.profiles.get(name)
        if profile is None:  # removed from the configuration after the token was made
            raise PolicyViolation(
                f"{what} names profile {name!r}, which this CA no longer has", field="profile"
            )
        return profile

    # -- renewal -----------------------------------------------------------------------

    def renew(
        self,
        presented: x509.Certificate,
        csr: x509.CertificateSigningRequest,
        *,
        actor: str,
        writer_wait: float | None = None,
    ) -> Enrolled:
        """Issue a successor for ``presented`` (verified by the TLS handshake): same identity.

        The successor has the presented certificate's profile, identity and roles and
        attributes, the DNS names and IP addresses the CSR lists (each must be in the
        presented certificate) and the profile's default lifetime. Raises
        :class:`RenewalError` (certificate unknown to the inventory, revoked, on hold,
        expired, without a profile; the CSR asks for another identity or more names) or
        :class:`InvalidCSRError`. ``writer_wait``: as for :meth:`enroll`.
        """
        return self.record_one(self.prepare_renewal(presented, csr, actor=actor), writer_wait=writer_wait)

    def prepare_renewal(
        self, presented: x509.Certificate, csr: x509.CertificateSigningRequest, *, actor: str
    ) -> PendingCertificate:
        """The first half of :meth:`renew`, as :meth:`prepare_enrollment` is of :meth:`enroll`."""
        _check_actor(actor)
        verified = verify_csr(csr)
        asked = _asked(verified.csr)
        fingerprint = presented.fingerprint(_SHA256)
        now = self.clock.now()
        # Decided and signed from a read; the write transaction (record()) reads the row
        # again, locked, and decides again (a revocation may have landed meanwhile: the
        # certificate just signed is then dropped, never stored nor returned), so the writer
        # turn covers only the statements.
        with self.store.statement_connection() as connection:
            row, profile = self._renewable(held(connection, fingerprint), now)
        identity = SpiffeId.parse(row.identity) if row.identity is not None else None
        sans = _within_held(asked, identity, SubjectAltNames.of(presented))
        issued = self.authority.issue_for_csr_key(
            verified,
            profile=profile,
            identity=identity,
            sans=sans,
            authorization=Authorization.from_certificate(presented, self.extension_oid),
            # Never longer than the certificate it replaces: a token's lifetime cap, or a
            # short-lived certificate, stays short across renewals.
            lifetime=self._held_lifetime(presented, profile),
        )
        return PendingCertificate(
            issued, profile.name, row.identity, actor, now, fingerprint=fingerprint, held=row
        )

    def _held_lifetime(self, presented: x509.Certificate, profile: Profile) -> datetime.timedelta:
        validity = presented.not_valid_after_utc - presented.not_valid_before_utc
        held = max(validity - self.authority.settings.backdate, datetime.timedelta(seconds=1))
        return min(held, profile.default_lifetime)

    def _renewable(
        self, row: HeldCertificate | None, now: datetime.datetime
    ) -> tuple[HeldCertificate, Profile]:
        """The row and the profile to renew it under, or the reason it may not renew."""
        if row is None:
            # Chained to our roots but not in the inventory: issued elsewhere (or the
            # inventory lost it); either way the CA never decided about it.
            raise RenewalError("the certificate presented is not in this CA's inventory")
        what = f"certificate {row.serial_hex}"
        # RFC 5280 3.3: a revoked certificate must not be trusted, least of all to get a successor.
        if row.status is CertificateStatus.REVOKED:
            raise RenewalError(f"{what} is revoked ({_reason(row)}): enrol again")
        if row.status is CertificateStatus.ON_HOLD:
            raise RenewalError(f"{what} is on hold: it cannot renew until the hold is lifted")
        if now >= row.not_after:
            raise RenewalError(f"{what} expired at {row.not_after.isoformat()}: enrol again")
        if row.profile is None:
            raise RenewalError(f"{what} was imported without a profile: enrol it instead")
        profile = self.profiles.get(row.profile)
        if profile is None:
            raise RenewalError(f"{what} has profile {row.profile!r}, which this CA no longer has")
        return row, profile

    # -- recording ---------------------------------------------------------------------

    def record(
        self, pending: Sequence[PendingCertificate], *, writer_wait: float | None = None
    ) -> list[Enrolled | Exception]:
        """Store prepared certificates in one write transaction; per certificate, what happened.

        Each item is :class:`Enrolled` (committed with its row, its token's redemption or
        its renewal link, and its ``issued`` audit event) or the exception that refused it
        (the token was redeemed, or the certificate renewed was revoked, since the read
        that prepared it), in the order given. A refused item writes nothing; the others
        still commit. Several requests share one writer turn, one head of the audit chain
        and one commit: the server gathers the enrolments and renewals that arrive
        together (:mod:`certwright.server.api`).

        If the shared transaction fails for any other reason it is rolled back whole and
        each item is recorded again in a transaction of its own, so one bad item costs the
        others nothing; its exception is then its item. ``writer_wait``: see
        :meth:`enroll`; :class:`WriterBusy` is raised before anything is written, or (in
        that fallback) is the item of each certificate that was not tried.

        Example::

            >>> pending = [service.prepare_enrollment(s, c, actor="api") for s, c in asks]  # doctest: +SKIP
            >>> for outcome in service.record(pending):                               # doctest: +SKIP
            ...     print(outcome.certificate.serial_number if isinstance(outcome, Enrolled) else outcome)
        """
        if len(pending) > 1:
            try:
                return self._record_together(pending, writer_wait)
            except WriterBusy:
                raise  # nothing written: the caller may wait for the turn elsewhere
            except Exception:
                _log.warning(
                    "recording %d certificates together failed: each is recorded alone",
                    len(pending),
                    exc_info=True,
                )
        results: list[Enrolled | Exception] = []
        for item in pending:
            try:
                results.extend(self._record_together([item], writer_wait))
            except Exception as exc:  # the item's own outcome, as enroll() and renew() raise it
                results.append(exc)
        return results

    def record_one(self, pending: PendingCertificate, *, writer_wait: float | None = None) -> Enrolled:
        """:meth:`record` for one certificate: its :class:`Enrolled`, or its refusal raised."""
        (result,) = self.record([pending], writer_wait=writer_wait)
        if isinstance(result, Exception):
            raise result
        return result

    def _record_together(
        self, pending: Sequence[PendingCertificate], writer_wait: float | None
    ) -> list[Enrolled | Exception]:
        issuer = self._issuer()
        results: list[Enrolled | Exception] = []
        events: list[EventSpec] = []
        with self.store.write_connection(wait=writer_wait) as connection:
            for item in pending:
                try:
                    link = self._claim(connection, item)
                except _Refused as refused:
                    results.append(refused.error)
                    continue
                events.append(self._store_rows(connection, item, link, issuer))
                # Committed once the block ends (it raises otherwise): the row holds what
                # ``recorded`` says.
                recorded = Recorded(item.profile, item.identity)
                results.append(Enrolled(item.issued.certificate, issuer.chain, recorded))
            # The events go last: on PostgreSQL the chain's head stays locked until the commit.
            append_events(connection, events)
        return results

    def _claim(self, connection: InTransaction, item: PendingCertificate) -> _Link:
        """Redeem the item's token, or decide again on the certificate it renews (its row
        locked). A refusal (:class:`_Refused`) comes before the item writes anything."""
        if item.token_hash is not None:
            token = redeem(connection, item.token_hash, at=item.at, by=item.actor)
            if token is None:  # redeemed (or expired) since the read: the signature is dropped
                raise _Refused(_refusal(token_state(connection, item.token_hash), item.at))
            if token != item.token:  # cannot happen: tokens are immutable; never sign blind
                raise TokenError(
                    f"token {token.token_id} changed while it was redeemed", token_id=token.token_id
                )
            return _Link(token.id, None, {"token_id": token.token_id})
        assert item.fingerprint is not None and item.held is not None
        row = item.held
        try:
            locked, _ = self._renewable(lock_held(connection, item.fingerprint), item.at)
        except RenewalError as exc:  # revoked, held or gone since the read
            raise _Refused(exc) from None
        if (locked.profile, locked.identity) != (row.profile, row.identity):
            raise _Refused(RenewalError(f"certificate {row.serial_hex} changed while it was renewed"))
        return _Link(None, row.id, {"renewed_from": row.serial_hex})

    def _store_rows(
        self, session: InTransaction, item: PendingCertificate, link: _Link, issuer: _IssuerFacts
    ) -> EventSpec:
        """The row, the token's link to it, and the ``issued`` event to append (what
        CertificateService records, plus the token or the certificate renewed).

        Core inserts, no ORM object: the row is built from the facts the certificate was
        encoded from (:func:`~certwright.store.records.issued_fields`, held equal to the
        parsed certificate's row by the tests).
        """
        issued = item.issued
        fields, names = issued_fields(
            issued,
            issuer=issuer.subject,
            issuer_key_id=issuer.key_id,
            profile=item.profile,
            requested_by=item.actor,
            created_at=item.at,
        )
        fields["renewed_from_id"] = link.renewed_from_pk
        add_certificate_row(session, (fields, names), link_token=link.token_pk)
        details = {**issuance_details(fields, item.profile), **link.extra}
        return EventSpec(AuditKind.ISSUED, item.actor, item.at, format(issued.serial, "x"), details)

    def _issuer(self) -> _IssuerFacts:
        """The authority's key id and leaf chain, computed once per authority."""
        facts = self._issuer_facts
        if facts is None or facts.authority is not self.authority:
            authority = self.authority
            facts = _IssuerFacts(
                authority,
                authority.key_identifier,
                authority.chain_for_leaf(),
                authority.certificate.subject.rfc4514_string(),
            )
            self._issuer_facts = facts
        return facts


class _IssuerFacts(NamedTuple):
    authority: Authority
    key_id: bytes
    chain: tuple[x509.Certificate, ...]
    subject: str  # RFC 4514, as the inventory files the issuer


def append_event(session: InTransaction, event: EventSpec) -> None:
    """Append one audit event: Core statements, the chain's head row held until the commit."""
    append_events(session, [event])


def grant_of(token: EnrollmentToken | RedeemedToken) -> TokenGrant:
    """The grant a stored token carries."""
    return TokenGrant(
        identity=SpiffeId.parse(token.identity),
        profile=token.profile,
        sans=SubjectAltNames(dns=tuple(token.dns), ips=tuple(ipaddress.ip_address(ip) for ip in token.ips)),
        authorization=Authorization(
            roles=tuple(token.roles), attributes=tuple(sorted(token.attributes.items()))
        ),
        lifetime=None
        if token.lifetime_seconds is None
        else datetime.timedelta(seconds=token.lifetime_seconds),
    )


def _hash_secret(secret: str) -> bytes:
    if not isinstance(secret, str) or not 0 < len(secret) <= _MAX_SECRET_LENGTH:
        raise TokenError("the token is empty, too long or not text")
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _check_actor(actor: str) -> None:
    if not actor or len(actor) > _MAX_ACTOR_LENGTH:
        raise InvalidInputError(f"the actor must be 1 to {_MAX_ACTOR_LENGTH} characters")


def _refusal(token: TokenState | None, now: datetime.datetime) -> TokenError:
    """Why a token may not be redeemed (for the log; callers see public_message)."""
    if token is None:
        return TokenError("no token has this secret", problem=TokenProblem.UNKNOWN)
    if token.used_at is not None:
        return TokenError(
            f"token {token.token_id} was already used at {token.used_at.isoformat()} by {token.used_by}",
            problem=TokenProblem.USED,
            token_id=token.token_id,
        )
    return TokenError(
        f"token {token.token_id} expired at {token.expires_at.isoformat()}",
        problem=TokenProblem.EXPIRED,
        token_id=token.token_id,
    )


def _asked(csr: x509.CertificateSigningRequest) -> _Asked:
    """The names a (verified) CSR asks for, normalised; CA:true is refused as sign_csr does."""
    try:
        sans = SubjectAltNames.of(csr)
        constraints = [e.value for e in csr.extensions if isinstance(e.value, x509.BasicConstraints)]
        asked = _Asked(
            uris=tuple(dict.fromkeys(sans.uris)),
            dns=tuple(dict.fromkeys(normalize_dns(d) for d in sans.dns)),
            ips=tuple(dict.fromkeys(sans.ips)),
            emails=tuple(dict.fromkeys(normalize_email(e) for e in sans.emails)),
        )
    except ValueError as exc:  # cryptography's parse errors and InvalidNameError alike
        raise InvalidCSRError(f"the CSR asks for names that cannot be issued: {exc}") from exc
    if any(c.ca for c in constraints):
        raise PolicyViolation(
            "the CSR asks for CA:true: enrolment and renewal issue leaf certificates",
            field="basic_constraints",
        )
    return asked


def _within_grant(asked: _Asked, grant: TokenGrant, token_id: str) -> SubjectAltNames:
    """The CSR's DNS names and IPs, each of which the token must grant; its URI must be the identity."""
    for uri in asked.uris:
        if uri != str(grant.identity):
            # The token binds one identity: a CSR for another is someone else's request.
            raise TokenError(
                f"token {token_id} is for {grant.identity}; the CSR asks for {uri}",
                problem=TokenProblem.IDENTITY,
                token_id=token_id,
            )
    extra = _extra(asked, grant.sans)
    if extra is not None:
        kind, name = extra
        granted = ", ".join(grant.sans.specs()) or "no names"
        raise PolicyViolation(
            f"the CSR asks for {kind} {name}, which token {token_id} does not grant (granted: {granted})",
            field=_FIELD[kind],
        )
    return SubjectAltNames(dns=asked.dns, ips=asked.ips)


def _within_held(asked: _Asked, identity: SpiffeId | None, held: SubjectAltNames) -> SubjectAltNames:
    """The CSR's names, each of which the presented certificate must hold; the same identity."""
    for uri in asked.uris:
        if identity is None or uri != str(identity):
            holds = f"identity {identity}" if identity is not None else "no identity"
            raise RenewalError(f"the CSR asks for identity {uri}; the certificate presented has {holds}")
    extra = _extra(asked, held)
    if extra is not None:
        kind, name = extra
        raise RenewalError(f"the CSR asks for {kind} {name}, which the certificate presented does not have")
    return SubjectAltNames(dns=asked.dns, ips=asked.ips, emails=asked.emails)


_FIELD = {"DNS name": "dns", "IP address": "ip", "email address": "email"}


def _extra(asked: _Asked, allowed: SubjectAltNames) -> tuple[str, str] | None:
    """The first name ``asked`` has that ``allowed`` lacks: (kind, name), or None."""
    held_dns = {normalize_dns(d) for d in allowed.dns}
    for name in asked.dns:
        if name not in held_dns:
            return "DNS name", name
    for ip in asked.ips:
        if ip not in allowed.ips:
            return "IP address", str(ip)
    for email in asked.emails:
        if email not in allowed.emails:
            return "email address", email
    return None


def _capped(cap: datetime.timedelta | None, profile: Profile) -> datetime.timedelta | None:
    """A token's lifetime cap applied to the profile's default (None: the default)."""
    return None if cap is None or cap >= profile.default_lifetime else cap


def _reason(row: HeldCertificate) -> str:
    return row.revocation_reason.value if row.revocation_reason is not None else "no reason"
