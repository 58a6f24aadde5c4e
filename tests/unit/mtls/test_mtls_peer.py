"""PeerVerifier without sockets: parsing, the cache, the checks made on every call."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certwright.clock import FixedClock
from certwright.errors import InvalidIdentityError, VerificationError
from certwright.mtls.peer import PeerRefused, PeerVerifier
from certwright.verify.chain import Purpose
from support.pki import TestPKI, Workload

UTC = datetime.UTC
WEB = "spiffe://example.org/web"


def der(workload: Workload) -> bytes:
    return workload.certificate.public_bytes(serialization.Encoding.DER)


def chain_der(workload: Workload) -> list[bytes]:
    return [der(workload), *(c.public_bytes(serialization.Encoding.DER) for c in workload.chain)]


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


@pytest.fixture(scope="module")
def web(pki: TestPKI) -> Workload:
    return pki.leaf(WEB, roles=("reader", "team/web"), attributes={"env": "prod"})


def test_a_peer_carries_identity_roles_attributes_serial_and_expiry(pki: TestPKI, web: Workload) -> None:
    peer = PeerVerifier([pki.root], trust_domain="example.org").peer_from_der(der(web))
    assert str(peer.identity) == WEB
    assert peer.roles == ("reader", "team/web")
    assert dict(peer.attributes) == {"env": "prod"}
    assert peer.serial == web.serial
    assert peer.not_after == web.certificate.not_valid_after_utc
    assert peer.subject.identity == WEB and peer.subject.roles == ("reader", "team/web")


def test_the_fingerprint_is_the_sha256_of_the_der(pki: TestPKI, web: Workload) -> None:
    peer = PeerVerifier([pki.root]).peer_from_der(der(web))
    assert peer.fingerprint == web.certificate.fingerprint(hashes.SHA256()).hex()


def test_a_certificate_is_parsed_once(pki: TestPKI, web: Workload) -> None:
    verifier = PeerVerifier([pki.root])
    first = verifier.peer_from_der(der(web))
    assert verifier.peer_from_der(der(web)) is first


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(pki: TestPKI) -> None:
    verifier = PeerVerifier([pki.root], cache_size=2)
    a, b, c = (pki.leaf(f"spiffe://example.org/{n}") for n in "abc")
    peer_a = verifier.peer_from_der(der(a))
    verifier.peer_from_der(der(b))
    assert verifier.peer_from_der(der(a)) is peer_a  # a is now the most recent
    verifier.peer_from_der(der(c))  # evicts b
    assert len(verifier._cache) == 2
    assert verifier.peer_from_der(der(a)) is peer_a
    assert verifier.peer_from_der(der(b)) is not None  # parsed again


def test_expiry_is_checked_on_every_call_even_when_cached(pki: TestPKI, web: Workload) -> None:
    clock = FixedClock(datetime.datetime.now(UTC))
    verifier = PeerVerifier([pki.root], clock=clock)
    verifier.peer_from_der(der(web))
    clock.current = web.certificate.not_valid_after_utc + datetime.timedelta(seconds=1)
    with pytest.raises(PeerRefused, match="certificate expired at"):
        verifier.peer_from_der(der(web))


def test_two_uri_sans_are_refused(pki: TestPKI) -> None:
    forged = pki.forged_leaf(["spiffe://example.org/a", "spiffe://example.org/b"])
    with pytest.raises(PeerRefused, match="carries 2 URI SANs"):
        PeerVerifier([pki.root]).peer_from_der(der(forged))


def test_a_uri_that_is_not_a_spiffe_id_is_refused(pki: TestPKI) -> None:
    forged = pki.forged_leaf(["https://example.org/web"])
    with pytest.raises(PeerRefused, match="not a valid SPIFFE ID"):
        PeerVerifier([pki.root]).peer_from_der(der(forged))


def test_a_refusal_is_cached_and_repeated(pki: TestPKI) -> None:
    forged = pki.forged_leaf(["https://example.org/web"])
    verifier = PeerVerifier([pki.root])
    for _ in range(2):
        with pytest.raises(PeerRefused, match="not a valid SPIFFE ID"):
            verifier.peer_from_der(der(forged))
    assert len(verifier._cache) == 1


def test_identities_outside_the_trust_domain_are_refused(pki: TestPKI) -> None:
    other = TestPKI.create("other.org", name="Other")
    leaf = other.leaf("spiffe://other.org/web")
    with pytest.raises(PeerRefused, match=r"not in trust domain example\.org"):
        PeerVerifier([pki.root], trust_domain="example.org").peer_from_der(der(leaf))
    assert str(PeerVerifier([pki.root]).peer_from_der(der(leaf)).identity) == "spiffe://other.org/web"


def test_a_bad_trust_domain_setting_is_refused(pki: TestPKI) -> None:
    with pytest.raises(InvalidIdentityError):
        PeerVerifier([pki.root], trust_domain="Example.ORG")


def test_a_certificate_without_identity_is_refused_unless_allowed(pki: TestPKI) -> None:
    # The common name is a label, never an identity.
    leaf = pki.leaf(None, subject=f"CN={WEB}", profile="server", dns=("web.example.org",))
    with pytest.raises(PeerRefused, match="carries no SPIFFE identity"):
        PeerVerifier([pki.root]).peer_from_der(der(leaf))
    assert PeerVerifier([pki.root], require_identity=False).peer_from_der(der(leaf)).identity is None


def test_roles_are_read_under_the_configured_oid(pki: TestPKI, web: Workload) -> None:
    peer = PeerVerifier([pki.root], extension_oid="1.3.6.1.4.1.32473.9.9").peer_from_der(der(web))
    assert peer.roles == ()


def test_garbage_is_refused(pki: TestPKI) -> None:
    with pytest.raises(PeerRefused, match="cannot be parsed"):
        PeerVerifier([pki.root]).peer_from_der(b"\x30\x03\x02\x01\x01")


class FlippingChecker:
    """A revocation source whose answer the test changes."""

    def __init__(self) -> None:
        self.revoked = False
        self.calls = 0

    def check(self, certificate: x509.Certificate) -> None:
        self.calls += 1
        if self.revoked:
            raise VerificationError("certificate revoked: test")


def test_revocation_is_asked_on_every_call(pki: TestPKI, web: Workload) -> None:
    checker = FlippingChecker()
    verifier = PeerVerifier([pki.root], crl=checker)
    verifier.peer_from_der(der(web))
    verifier.peer_from_der(der(web))
    assert checker.calls == 2
    checker.revoked = True
    with pytest.raises(PeerRefused, match="certificate revoked: test"):
        verifier.peer_from_der(der(web))


def test_a_crl_argument_must_be_a_revocation_source(pki: TestPKI) -> None:
    with pytest.raises(TypeError):
        PeerVerifier([pki.root], crl="ca.crl")


def test_a_bundle_path_is_read(pki: TestPKI, tmp_path: Path) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(pki.bundle_pem)
    assert PeerVerifier(path).anchors == [pki.root]


def test_a_connection_without_verification_is_refused(pki: TestPKI) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    with pytest.raises(PeerRefused, match="CERT_NONE"):
        PeerVerifier([pki.root]).peer_of(tls)


def test_a_connection_before_its_handshake_has_no_peer(pki: TestPKI) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    tls = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    with pytest.raises(PeerRefused):
        PeerVerifier([pki.root]).peer_of(tls)


def test_a_plain_asyncio_transport_is_refused(pki: TestPKI) -> None:
    class Plain(asyncio.BaseTransport):
        def get_extra_info(self, name: str, default: object = None) -> object:
            return default

    with pytest.raises(PeerRefused, match="does not use TLS"):
        PeerVerifier([pki.root]).peer_of(Plain())


def test_an_unverified_chain_is_verified_first(pki: TestPKI, web: Workload) -> None:
    verifier = PeerVerifier([pki.root])
    assert str(verifier.peer_from_chain(chain_der(web), purpose=Purpose.CLIENT).identity) == WEB
    other = TestPKI.create(name="Other").leaf(WEB)
    with pytest.raises(PeerRefused, match="issuer"):
        verifier.peer_from_chain(chain_der(other))
    with pytest.raises(PeerRefused, match="no certificate"):
        verifier.peer_from_chain([])
