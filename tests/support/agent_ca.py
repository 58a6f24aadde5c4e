"""A fake CA transport for the agent's unit tests, answering from a real Authority.

Nothing is mocked that can run for real: certificates are issued by certwright's own
:class:`~certwright.issuance.Authority` (on the same fixed clock as the agent). Only the
network is replaced, by :class:`FakeCA`, which answers as ``certwright serve`` would (or
fails as told).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from certwright.agent import AgentConfig, Issued, RenewalPolicy, ServerRefused, Unreachable
from certwright.agent.layout import Credentials
from certwright.clock import FixedClock
from certwright.issuance import Authority
from certwright.mtls.context import TLSFiles
from certwright.verify.identity import identity_of
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import generate_key
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES
from support.pki import TestPKI

IDENTITY = "spiffe://example.org/web"
LIFETIME = datetime.timedelta(hours=24)


class FakeCA:
    """The agent's transport, answering from a real Authority; ``fail`` makes calls fail."""

    def __init__(self, pki: TestPKI, clock: FixedClock) -> None:
        self.pki = pki
        self.authority = Authority(
            certificate=pki.intermediate,
            key=pki.authority.key,
            settings=pki.settings,
            chain=(pki.root,),
            clock=clock,
        )
        self.profile = dataclasses.replace(BUILTIN_PROFILES["mtls"], default_lifetime=LIFETIME)
        self.fail: Exception | None = None
        self.tokens: dict[str, str] = {}  # secret -> identity (single use)
        self.bundle: tuple[x509.Certificate, ...] | None = (pki.root,)
        self.calls: list[str] = []
        self.tamper: str | None = None  # "key", "identity", "chain": answer with something wrong

    def issue(self, public_key: object, identity: str, dns: Sequence[str] = ()) -> Issued:
        if self.tamper == "key":
            public_key = generate_key().public_key()
        if self.tamper == "identity":
            identity = "spiffe://example.org/other"
        certificate = self.authority.issue(
            public_key,  # type: ignore[arg-type]
            profile=self.profile,
            identity=SpiffeId.parse(identity),
            sans=SubjectAltNames.create(dns=dns),
        )
        intermediates = self.authority.chain_for_leaf()
        if self.tamper == "chain":
            intermediates = (TestPKI.create(name="Other").intermediate,)
        return Issued(certificate, intermediates, self.bundle)

    def enroll(
        self, token: str, csr: x509.CertificateSigningRequest, *, trust: object, expect: object
    ) -> Issued:
        self.calls.append("enroll")
        if self.fail is not None:
            raise self.fail
        identity = self.tokens.pop(token, None)
        if identity is None:
            raise ServerRefused(403, "Enrolment token refused", "the enrolment token is not valid")
        return self.issue(csr.public_key(), identity, SubjectAltNames.of(csr).dns)

    def renew(self, csr: x509.CertificateSigningRequest, *, files: TLSFiles, expect: object) -> Issued:
        self.calls.append("renew")
        if self.fail is not None:
            raise self.fail
        presented = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
        return self.issue(csr.public_key(), str(identity_of(presented)), SubjectAltNames.of(csr).dns)

    def credentials(self, obtained_at: datetime.datetime, *, dns: Sequence[str] = ()) -> Credentials:
        key = generate_key()
        issued = self.issue(key.public_key(), IDENTITY, dns)
        return Credentials(key, issued.certificate, issued.intermediates, (self.pki.root,), obtained_at)


def config(directory: Path, **changes: object) -> AgentConfig:
    base = AgentConfig(directory=directory, policy=RenewalPolicy(jitter=0.0))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


UNREACHABLE = Unreachable("cannot reach the CA at https://127.0.0.1:1: connection refused")
