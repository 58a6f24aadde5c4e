"""An in-memory test PKI for the mTLS tests: root, name-constrained intermediate, leaves.

Built with certwright's own issuance API (no scrypt, no CA directory), so a test module can
make one in milliseconds and write workload files (cert chain, key, bundle, CRL) anywhere.
Attack material too: an expired leaf, a leaf from another CA, a leaf whose identity lies
outside the intermediate's name constraints and two URIs in one certificate (both built with
cryptography directly and signed by the real intermediate key: certwright would refuse them).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certwright.clock import FixedClock
from certwright.issuance import Authority, create_root
from certwright.revocation.crl import build_crl
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES, CASettings

TRUST_DOMAIN = "example.org"
UTC = datetime.UTC


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True)
class Workload:
    """One leaf with its key; ``write`` lays it out as a workload's files."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]  # intermediates after the leaf (no root)

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def write(self, directory: Path, bundle: bytes) -> WorkloadFiles:
        """Write cert.pem (leaf + chain), key.pem (0600), bundle.pem under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        files = WorkloadFiles(directory / "cert.pem", directory / "key.pem", directory / "bundle.pem")
        files.cert.write_bytes(_pem(self.certificate, *self.chain))
        fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.key_pem())
        files.bundle.write_bytes(bundle)
        return files


@dataclass(frozen=True)
class WorkloadFiles:
    cert: Path
    key: Path
    bundle: Path


@dataclass
class TestPKI:
    """Root -> intermediate (name-constrained to ``trust_domain``) -> leaves.

    Example::

        pki = TestPKI.create()
        web = pki.leaf("spiffe://example.org/web", roles=("reader",))
        files = web.write(tmp_path / "web", pki.bundle_pem)
    """

    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    authority: Authority
    settings: CASettings
    revoked: dict[int, datetime.datetime] = field(default_factory=dict)
    crl_number: int = 0

    __test__ = False  # not a pytest test class

    @classmethod
    def create(cls, trust_domain: str = TRUST_DOMAIN, *, name: str = "Test") -> TestPKI:
        settings = CASettings(trust_domain=trust_domain)
        # The CAs start a week ago so that expired leaves can be issued inside their validity.
        week_ago = FixedClock(datetime.datetime.now(UTC) - datetime.timedelta(days=7))
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = create_root(root_key, subject=f"CN={name} Root CA", settings=settings, clock=week_ago)
        root_authority = Authority(certificate=root, key=root_key, settings=settings, clock=week_ago)
        inter_key = ec.generate_private_key(ec.SECP256R1())
        inter = root_authority.create_intermediate(inter_key.public_key(), subject=f"CN={name} Issuing CA")
        authority = Authority(certificate=inter, key=inter_key, settings=settings, chain=(root,))
        return cls(root=root, root_key=root_key, authority=authority, settings=settings)

    @property
    def intermediate(self) -> x509.Certificate:
        return self.authority.certificate

    @property
    def bundle_pem(self) -> bytes:
        """The trust bundle: the root only (intermediates travel with the leaves)."""
        return _pem(self.root)

    def leaf(
        self,
        identity: str | None,
        *,
        roles: Iterable[str] = (),
        attributes: dict[str, str] | None = None,
        dns: Iterable[str] = (),
        profile: str = "mtls",
        subject: str | None = None,
        lifetime: datetime.timedelta = datetime.timedelta(hours=1),
        at: datetime.datetime | None = None,
    ) -> Workload:
        """Issue a leaf; ``at`` shifts the issuing clock (an expired leaf: at=now - 2 days)."""
        key = ec.generate_private_key(ec.SECP256R1())
        authority = self.authority
        if at is not None:
            authority = Authority(
                certificate=self.authority.certificate, key=self.authority.key, settings=self.settings,
                chain=self.authority.chain, clock=FixedClock(at),
            )
        cert = authority.issue(
            key.public_key(),
            profile=BUILTIN_PROFILES[profile],
            identity=SpiffeId.parse(identity) if identity else None,
            sans=SubjectAltNames(dns=tuple(dns)),
            authorization=Authorization.create(roles, attributes or {}),
            subject=subject,
            lifetime=lifetime,
        )
        return Workload(cert, key, self.authority.chain_for_leaf())

    def expired_leaf(self, identity: str, **kwargs: object) -> Workload:
        """A leaf whose validity ended a day ago (1 hour lifetime, issued two days ago)."""
        at = datetime.datetime.now(UTC) - datetime.timedelta(days=2)
        return self.leaf(identity, at=at, **kwargs)  # type: ignore[arg-type]

    def forged_leaf(
        self, uris: Iterable[str], *, roles: Iterable[str] = (), common_name: str = "forged"
    ) -> Workload:
        """A leaf signed by the real intermediate key but built with cryptography directly,
        bypassing certwright's profile checks: for identities outside the name constraints
        and for two URI SANs in one certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(UTC)
        inter = self.intermediate
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)]))
            .issuer_name(inter.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.authority.key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        authz = Authorization.create(roles)
        if authz:
            oid = x509.ObjectIdentifier(self.settings.extension_oid)
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, authz.to_der()), critical=False)
        cert = builder.sign(self.authority.key, hashes.SHA256())  # type: ignore[arg-type]
        return Workload(cert, key, self.authority.chain_for_leaf())

    def revoke(self, serial: int) -> None:
        self.revoked[serial] = datetime.datetime.now(UTC).replace(microsecond=0)

    def crl_der(self, *, next_update: datetime.timedelta = datetime.timedelta(hours=1)) -> bytes:
        """A fresh full CRL of the intermediate listing every revoked serial."""
        self.crl_number += 1
        now = datetime.datetime.now(UTC).replace(microsecond=0)
        return build_crl(
            issuer=self.intermediate,
            key=self.authority.key,
            entries=[(s, t, x509.ReasonFlags.key_compromise) for s, t in sorted(self.revoked.items())],
            crl_number=self.crl_number,
            this_update=now - datetime.timedelta(minutes=1),
            next_update=now + next_update,
        )

    def crl_pem(self, **kwargs: datetime.timedelta) -> bytes:
        der = self.crl_der(**kwargs)
        return x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)
