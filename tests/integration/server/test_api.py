"""The CA's mTLS API over real HTTPS on 127.0.0.1: the full flow, and each attack refused.

One CA, inventory (SQLite) and server per module (the server on port 0, run by
certwright.mtls.uvicorn with a context that asks for, but does not require, a client
certificate). Clients are httpx over TLS: anonymous (trusting the bundle, no certificate),
the admin (role certwright.admin) and workloads enrolled through the API itself.

Every attack asserts a problem document AND an unchanged inventory: the number of
certificate rows and the audit log's head are the same before and after, so a refusal
that still issued (or still consumed a token and audited it) fails the test.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from certwright.access import Policy
from certwright.cadir import CADirectory, init_ca
from certwright.clock import FixedClock, SystemClock
from certwright.errors import VerificationError
from certwright.mtls import uvicorn as mtls_uvicorn
from certwright.mtls.context import TLSFiles, client_context, server_context
from certwright.mtls.peer import PeerVerifier
from certwright.revocation.entries import CertStatus
from certwright.revocation.ocsp import OCSPResponder
from certwright.server.api import create_api
from certwright.server.ca_policy import ADMIN_ROLE, default_policy_text
from certwright.server.config import ServerConfig
from certwright.server.metrics import Metrics
from certwright.server.problems import PROBLEM_BASE, PROBLEM_JSON
from certwright.server.state import ServerState
from certwright.service import CertificateService, RevocationService, StoreStatusSource
from certwright.service.certificates import ca_key_id
from certwright.service.enrollment import Enrolled, EnrollmentService, TokenGrant
from certwright.store import CertificateRecord, Store, audit_head, open_store
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import private_key_pem
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import BUILTIN_PROFILES

TD = "example.org"
PASSPHRASE = b"api test passphrase"
ADMIN_ID = f"spiffe://{TD}/certwright/admin"
SERVER_ID = f"spiffe://{TD}/certwright/server"

# -- the CA, its inventory and the running server ----------------------------------------


class InventoryRevocation:
    """The verifier's revocation check from the inventory (what `serve` wires in)."""

    def __init__(self, source: StoreStatusSource) -> None:
        self.source = source

    def check(self, certificate: x509.Certificate) -> None:
        status = self.source.lookup(certificate.serial_number)
        if status is None:
            raise VerificationError(f"certificate {certificate.serial_number:x} is not in the inventory")
        if status.status is not CertStatus.GOOD:
            raise VerificationError(f"certificate {certificate.serial_number:x} is revoked")


@dataclass
class Env:
    directory: Path
    ca: CADirectory
    store: Store
    state: ServerState
    bundle: Path
    admin: TLSFiles
    url: str
    url_without_crl: str


def _write_pair(
    directory: Path, name: str, certificate: x509.Certificate, key: Any, bundle: Path, chain: bytes
) -> TLSFiles:
    """Leaf and chain (the intermediate: peers trust the root only) and the key, 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM) + chain)
    key_path.write_bytes(private_key_pem(key))
    key_path.chmod(0o600)
    return TLSFiles(cert_path, key_path, bundle)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    directory = tmp_path_factory.mktemp("api")
    ca = init_ca(
        directory / "ca", name="API Test", trust_domain=TD, passphrase=PASSPHRASE, dns_zones=(TD, "localhost")
    )
    authority = ca.require_authority()
    store = open_store(ca.inventory, upgrade=True)
    try:
        issuing = CertificateService(store=store, authority=authority, actor="test:bootstrap")
        issuing.record_issued([ca.root], profile="root-ca")
        issuing.record_issued([ca.intermediate], profile="intermediate-ca")
        bundle = directory / "bundle.pem"
        bundle.write_bytes(ca.root.public_bytes(serialization.Encoding.PEM))
        chain = ca.intermediate.public_bytes(serialization.Encoding.PEM)

        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = issuing.issue(
            server_key.public_key(),
            profile=ca.profile("server"),
            identity=SpiffeId.parse(SERVER_ID),
            sans=SubjectAltNames.create(dns=["localhost"], ips=["127.0.0.1"]),
        )
        server_files = _write_pair(directory / "tls", "server", server_cert, server_key, bundle, chain)
        admin_key = ec.generate_private_key(ec.SECP256R1())
        admin_cert = issuing.issue(
            admin_key.public_key(),
            profile=ca.profile("client"),
            identity=SpiffeId.parse(ADMIN_ID),
            authorization=Authorization.create([ADMIN_ROLE]),
        )
        admin = _write_pair(directory, "admin", admin_cert, admin_key, bundle, chain)
        responder_key = ec.generate_private_key(ec.SECP256R1())
        responder = issuing.issue(
            responder_key.public_key(), profile=ca.profile("ocsp-responder"), subject="CN=API Test OCSP"
        )

        key_id = ca_key_id(ca.intermediate)
        status = StoreStatusSource(store, key_id)
        clock = SystemClock()
        state = ServerState(
            config=ServerConfig(directory=directory, trust_domain=TD),
            ca=ca,
            store=store,
            certificates=CertificateService(store=store, authority=authority, actor="api"),
            revocation=RevocationService(store=store, issuer=ca.intermediate, actor="api"),
            enrollment=EnrollmentService(
                store=store,
                authority=authority,
                profiles=ca.profiles,
                extension_oid=ca.settings.extension_oid,
            ),
            ocsp=OCSPResponder(
                issuer=ca.intermediate,
                responder=responder,
                responder_key=responder_key,
                source=status,
                clock=clock,
            ),
            verifier=PeerVerifier(bundle, crl=InventoryRevocation(status), trust_domain=TD),
            policy=Policy.parse(default_policy_text(TD), source="policy.toml"),
            metrics=Metrics(profiles=ca.profiles, process=False),
        )
        # The same CA behind a verifier that does not consult the inventory: proves that the
        # renewal service refuses a revoked certificate by itself, not only the handshake layer.
        lax_state = dataclasses.replace(state, verifier=PeerVerifier(bundle, trust_domain=TD))
        threads = []
        try:
            for app_state in (state, lax_state):
                context = server_context(
                    TLSFiles(server_files.cert, server_files.key, bundle), require_client_cert=False
                )
                cfg = mtls_uvicorn.config(
                    create_api(app_state), ssl_context=context, host="127.0.0.1", port=0, log_level="warning"
                )
                threads.append(mtls_uvicorn.ServerThread(cfg).start())
            print(f"API servers on {threads[0].url} and {threads[1].url}")
            yield Env(directory, ca, store, state, bundle, admin, threads[0].url, threads[1].url)
        finally:
            for thread in threads:
                thread.stop()
    finally:
        store.close()


def _anonymous_context(bundle: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(bundle))  # checks the server's IP SAN too
    return context


@pytest.fixture
def anon(env: Env) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=env.url, verify=_anonymous_context(env.bundle), timeout=30) as client:
        yield client


@pytest.fixture
def admin(env: Env) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=env.url, verify=client_context(env.admin), timeout=30) as client:
        yield client


def _client(env: Env, files: TLSFiles, *, url: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=url or env.url, verify=client_context(files), timeout=30)


# -- workloads ------------------------------------------------------------------------------


def _csr(key: ec.EllipticCurvePrivateKey, *, uris: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> str:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Workload:
    files: TLSFiles
    certificate: x509.Certificate
    serial: str


_counter = iter(range(1, 1_000_000))


def _token(admin: httpx.Client, identity: str, **grant: Any) -> str:
    response = admin.post("/v1/tokens", json={"identity": identity, **grant})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"token", "token_id", "expires_at"}
    return str(body["token"])


def _enroll(env: Env, admin: httpx.Client, anon: httpx.Client, name: str | None = None) -> Workload:
    name = name or f"w{next(_counter)}"
    identity = f"spiffe://{TD}/{name}"
    token = _token(admin, identity, dns=[f"{name}.{TD}"])
    key = ec.generate_private_key(ec.SECP256R1())  # the key never leaves the workload
    response = anon.post("/v1/enroll", json={"token": token, "csr": _csr(key, dns=(f"{name}.{TD}",))})
    assert response.status_code == 201, response.text
    body = response.json()
    certificate = x509.load_pem_x509_certificate(body["certificate"].encode())
    files = _write_pair(
        env.directory / "workloads", name, certificate, key, env.bundle, body["chain"].encode()
    )
    return Workload(files, certificate, body["serial"])


# -- inventory snapshots ----------------------------------------------------------------------


def _snapshot(store: Store) -> tuple[int, tuple[int, str]]:
    with store.read() as session:
        rows = session.scalar(sa.select(sa.func.count()).select_from(CertificateRecord))
        return int(rows or 0), audit_head(session)


def _assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    document: dict[str, Any] = response.json()
    assert document["type"] == PROBLEM_BASE + slug, document
    assert document["status"] == status
    assert document["title"] and document["detail"]
    return document


# -- the full flow ----------------------------------------------------------------------------


def test_full_flow_enroll_renew_list_revoke(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    identity = f"spiffe://{TD}/flow/web"
    token = _token(admin, identity, dns=[f"web.{TD}"], roles=["reader"], ttl="5m")
    key = ec.generate_private_key(ec.SECP256R1())
    enrolled = anon.post("/v1/enroll", json={"token": token, "csr": _csr(key, dns=(f"web.{TD}",))})
    assert enrolled.status_code == 201, enrolled.text
    body = enrolled.json()
    assert body["identity"] == identity
    first = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert format(first.serial_number, "x") == body["serial"]
    assert first.public_key() == key.public_key()
    chain = x509.load_pem_x509_certificates(body["chain"].encode())
    assert chain == [env.ca.intermediate]  # the chain to send, without the root
    first.verify_directly_issued_by(env.ca.intermediate)
    assert env.state.certificates.get(first.serial_number) is not None  # returned only once stored
    files = _write_pair(env.directory / "flow", "web", first, key, env.bundle, body["chain"].encode())

    # Renew over mTLS with the new certificate, with a new key.
    next_key = ec.generate_private_key(ec.SECP256R1())
    with _client(env, files) as workload:
        renewed = workload.post("/v1/renew", json={"csr": _csr(next_key)})
    assert renewed.status_code == 201, renewed.text
    second = x509.load_pem_x509_certificate(renewed.json()["certificate"].encode())
    assert renewed.json()["identity"] == identity
    assert second.serial_number != first.serial_number
    assert second.public_key() == next_key.public_key()
    sans = second.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [identity]
    renewed_files = _write_pair(
        env.directory / "flow", "web2", second, next_key, env.bundle, renewed.json()["chain"].encode()
    )

    # The admin lists (two pages of one) and shows.
    page = admin.get("/v1/certificates", params={"identity": identity, "limit": 1})
    assert page.status_code == 200, page.text
    assert len(page.json()["items"]) == 1 and page.json()["next_cursor"]
    rest = admin.get(
        "/v1/certificates", params={"identity": identity, "limit": 1, "cursor": page.json()["next_cursor"]}
    )
    assert rest.status_code == 200, rest.text
    serials = {page.json()["items"][0]["serial"], rest.json()["items"][0]["serial"]}
    assert serials == {format(first.serial_number, "x"), format(second.serial_number, "x")}
    assert rest.json()["next_cursor"] is None
    item = rest.json()["items"][0]
    assert item["identity"] == identity and item["status"] == "good" and item["roles"] == ["reader"]
    shown = admin.get(f"/v1/certificates/{second.serial_number:x}")
    assert shown.status_code == 200, shown.text
    assert x509.load_pem_x509_certificate(shown.json()["certificate"].encode()) == second

    # The holder revokes its own (current) certificate; then it can no longer renew.
    with _client(env, renewed_files) as holder:
        revoked = holder.post(
            "/v1/revoke", json={"serial": f"{second.serial_number:x}", "reason": "keyCompromise"}
        )
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["status"] == "revoked" and revoked.json()["reason"] == "keyCompromise"
        before = _snapshot(env.store)
        refused = holder.post("/v1/renew", json={"csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    _assert_problem(refused, 403, "peer-refused")
    assert _snapshot(env.store) == before
    listed = admin.get("/v1/certificates", params={"identity": identity, "status": "revoked"})
    assert [i["serial"] for i in listed.json()["items"]] == [format(second.serial_number, "x")]

    metrics, _ = env.state.metrics.render()
    assert b'certwright_issuance_total{kind="enroll",outcome="ok",profile="mtls"}' in metrics
    assert b'certwright_issuance_total{kind="renew",outcome="ok",profile="mtls"}' in metrics
    assert b'certwright_issuance_total{kind="renew",outcome="refused"' in metrics
    assert b'listener="api",method="POST",route="/v1/enroll",status="201"' in metrics


def test_bundle_and_openapi_need_no_certificate(env: Env, anon: httpx.Client) -> None:
    bundle = anon.get("/v1/bundle")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("application/pem-certificate-chain")
    assert x509.load_pem_x509_certificates(bundle.content) == [env.ca.root]
    spec = anon.get("/openapi.json").json()
    assert {"/v1/tokens", "/v1/enroll", "/v1/renew", "/v1/revoke", "/v1/certificates", "/v1/bundle"} <= set(
        spec["paths"]
    )


# -- attacks: each refused with a problem document, leaving no row ------------------------------


def test_reused_token(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    token = _token(admin, f"spiffe://{TD}/reuse")
    first = anon.post(
        "/v1/enroll", json={"token": token, "csr": _csr(ec.generate_private_key(ec.SECP256R1()))}
    )
    assert first.status_code == 201, first.text
    before = _snapshot(env.store)
    again = anon.post(
        "/v1/enroll", json={"token": token, "csr": _csr(ec.generate_private_key(ec.SECP256R1()))}
    )
    document = _assert_problem(again, 403, "token-invalid")
    assert document["detail"] == "the enrolment token is not valid"  # says nothing about why
    assert _snapshot(env.store) == before


def test_expired_token(env: Env, anon: httpx.Client) -> None:
    # Made an hour ago with a 15-minute ttl: expired 45 minutes ago, no waiting needed.
    past = dataclasses.replace(
        env.state.enrollment,
        clock=FixedClock(datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)),
    )
    created = past.create_token(
        TokenGrant(SpiffeId.parse(f"spiffe://{TD}/late"), "mtls"),
        ttl=datetime.timedelta(minutes=15),
        actor="test",
    )
    before = _snapshot(env.store)
    response = anon.post(
        "/v1/enroll", json={"token": created.secret, "csr": _csr(ec.generate_private_key(ec.SECP256R1()))}
    )
    document = _assert_problem(response, 403, "token-invalid")
    assert "expired" not in document["detail"]
    assert _snapshot(env.store) == before


def test_unknown_token(env: Env, anon: httpx.Client) -> None:
    before = _snapshot(env.store)
    response = anon.post(
        "/v1/enroll", json={"token": "not-a-token", "csr": _csr(ec.generate_private_key(ec.SECP256R1()))}
    )
    _assert_problem(response, 403, "token-invalid")
    assert _snapshot(env.store) == before


def test_token_for_another_identity(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    token = _token(admin, f"spiffe://{TD}/meant")
    key = ec.generate_private_key(ec.SECP256R1())
    before = _snapshot(env.store)
    response = anon.post(
        "/v1/enroll", json={"token": token, "csr": _csr(key, uris=(f"spiffe://{TD}/certwright/admin",))}
    )
    _assert_problem(response, 403, "token-invalid")
    assert _snapshot(env.store) == before
    # The refusal did not consume the token: its own identity still enrolls.
    ok = anon.post("/v1/enroll", json={"token": token, "csr": _csr(key, uris=(f"spiffe://{TD}/meant",))})
    assert ok.status_code == 201, ok.text


def test_csr_sans_exceeding_the_token(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    token = _token(admin, f"spiffe://{TD}/narrow", dns=[f"narrow.{TD}"])
    key = ec.generate_private_key(ec.SECP256R1())
    before = _snapshot(env.store)
    response = anon.post(
        "/v1/enroll", json={"token": token, "csr": _csr(key, dns=(f"narrow.{TD}", f"wide.{TD}"))}
    )
    document = _assert_problem(response, 403, "policy-violation")
    assert document["field"] == "dns"
    assert _snapshot(env.store) == before


def test_client_cannot_choose_the_profile_at_enrolment(
    env: Env, admin: httpx.Client, anon: httpx.Client
) -> None:
    token = _token(admin, f"spiffe://{TD}/chooser")
    before = _snapshot(env.store)
    response = anon.post(
        "/v1/enroll",
        json={"token": token, "csr": _csr(ec.generate_private_key(ec.SECP256R1())), "profile": "server"},
    )
    _assert_problem(response, 422, "invalid-request")
    assert _snapshot(env.store) == before


def test_token_for_a_ca_profile_refused(env: Env, admin: httpx.Client) -> None:
    before = _snapshot(env.store)
    response = admin.post("/v1/tokens", json={"identity": f"spiffe://{TD}/ca", "profile": "intermediate-ca"})
    document = _assert_problem(response, 403, "policy-violation")
    assert document["field"] == "profile"
    assert _snapshot(env.store) == before


def test_token_outside_the_trust_domain_refused(env: Env, admin: httpx.Client) -> None:
    before = _snapshot(env.store)
    response = admin.post("/v1/tokens", json={"identity": "spiffe://evil.example/web"})
    document = _assert_problem(response, 403, "policy-violation")
    assert document["field"] == "identity"
    assert _snapshot(env.store) == before


def test_renewal_asking_for_another_identity(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    workload = _enroll(env, admin, anon)
    before = _snapshot(env.store)
    with _client(env, workload.files) as client:
        response = client.post(
            "/v1/renew", json={"csr": _csr(ec.generate_private_key(ec.SECP256R1()), uris=(ADMIN_ID,))}
        )
    _assert_problem(response, 403, "renewal-refused")
    assert _snapshot(env.store) == before


def test_renewal_asking_for_more_names(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    workload = _enroll(env, admin, anon)
    before = _snapshot(env.store)
    with _client(env, workload.files) as client:
        response = client.post(
            "/v1/renew", json={"csr": _csr(ec.generate_private_key(ec.SECP256R1()), dns=(f"admin.{TD}",))}
        )
    _assert_problem(response, 403, "renewal-refused")
    assert _snapshot(env.store) == before


@pytest.mark.parametrize("layer", ["verifier", "service"])
def test_renewal_with_a_revoked_certificate(
    env: Env, admin: httpx.Client, anon: httpx.Client, layer: str
) -> None:
    workload = _enroll(env, admin, anon)
    revoked = admin.post("/v1/revoke", json={"serial": workload.serial, "reason": "keyCompromise"})
    assert revoked.status_code == 200, revoked.text
    before = _snapshot(env.store)
    # "verifier": the server as `serve` runs it (the handshake's peer is checked against the
    # inventory); "service": a verifier that does not look, so the renewal itself must refuse.
    url = env.url if layer == "verifier" else env.url_without_crl
    with _client(env, workload.files, url=url) as client:
        response = client.post("/v1/renew", json={"csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    _assert_problem(response, 403, "peer-refused" if layer == "verifier" else "renewal-refused")
    assert _snapshot(env.store) == before


def test_renewal_without_a_certificate(env: Env, anon: httpx.Client) -> None:
    before = _snapshot(env.store)
    response = anon.post("/v1/renew", json={"csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    _assert_problem(response, 401, "client-certificate-required")
    assert _snapshot(env.store) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/tokens", {"identity": f"spiffe://{TD}/escalate", "roles": [ADMIN_ROLE]}),
        ("GET", "/v1/certificates", None),
        ("GET", "/v1/certificates/{victim}", None),
        ("POST", "/v1/revoke", {"serial": "{victim}", "reason": "keyCompromise"}),
    ],
)
def test_non_admin_calling_admin_endpoints(
    env: Env, admin: httpx.Client, anon: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> None:
    workload = _enroll(env, admin, anon)
    victim = _enroll(env, admin, anon)
    path = path.format(victim=victim.serial)
    payload = json.loads(json.dumps(body).replace("{victim}", victim.serial)) if body else None
    before = _snapshot(env.store)
    with _client(env, workload.files) as client:
        response = client.request(method, path, json=payload)
    _assert_problem(response, 403, "access-denied")
    no_certificate = anon.request(method, path, json=payload)
    _assert_problem(no_certificate, 401, "client-certificate-required")
    assert _snapshot(env.store) == before
    assert admin.get(f"/v1/certificates/{victim.serial}").json()["status"] == "good"


def test_holder_cannot_revoke_another_certificate_of_its_identity(
    env: Env, admin: httpx.Client, anon: httpx.Client
) -> None:
    workload = _enroll(env, admin, anon)
    with _client(env, workload.files) as client:
        renewed = client.post("/v1/renew", json={"csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
        assert renewed.status_code == 201, renewed.text
        before = _snapshot(env.store)
        response = client.post(
            "/v1/revoke", json={"serial": renewed.json()["serial"], "reason": "superseded"}
        )
    _assert_problem(response, 403, "access-denied")
    assert _snapshot(env.store) == before
    assert admin.get(f"/v1/certificates/{renewed.json()['serial']}").json()["status"] == "good"


def test_attack_renewals_made_with_a_stolen_key_die_with_the_compromised_certificate(
    env: Env, admin: httpx.Client, anon: httpx.Client
) -> None:
    """Whoever holds a certificate's key can renew it. Revoking the original for
    keyCompromise must cut off the successors obtained with it, and theirs."""
    workload = _enroll(env, admin, anon)
    files, pairs = workload.files, []
    for step in range(2):  # the thief renews twice, each time with the newest certificate
        key = ec.generate_private_key(ec.SECP256R1())
        with _client(env, files) as thief:
            renewed = thief.post("/v1/renew", json={"csr": _csr(key)})
        assert renewed.status_code == 201, renewed.text
        body = renewed.json()
        certificate = x509.load_pem_x509_certificate(body["certificate"].encode())
        files = _write_pair(
            env.directory / "stolen",
            f"s{step}-{body['serial']}",
            certificate,
            key,
            env.bundle,
            body["chain"].encode(),
        )
        pairs.append((body["serial"], files))

    revoked = admin.post("/v1/revoke", json={"serial": workload.serial, "reason": "keyCompromise"})
    assert revoked.status_code == 200, revoked.text
    assert sorted(revoked.json()["successors_revoked"]) == sorted(serial for serial, _ in pairs)
    for serial, successor in pairs:
        shown = admin.get(f"/v1/certificates/{serial}").json()
        assert (shown["status"], shown["revocation_reason"]) == ("revoked", "keyCompromise")
        with _client(env, successor) as thief:
            refused = thief.post("/v1/renew", json={"csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
        _assert_problem(refused, 403, "peer-refused")


def test_superseded_reaches_no_successor(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    workload = _enroll(env, admin, anon)
    with _client(env, workload.files) as client:
        renewed = client.post("/v1/renew", json={"csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    assert renewed.status_code == 201, renewed.text
    revoked = admin.post("/v1/revoke", json={"serial": workload.serial, "reason": "superseded"})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["successors_revoked"] == []
    assert admin.get(f"/v1/certificates/{renewed.json()['serial']}").json()["status"] == "good"


def test_body_over_the_limit(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    limit = env.state.config.max_body
    token = _token(admin, f"spiffe://{TD}/big")
    csr = _csr(ec.generate_private_key(ec.SECP256R1()))
    before = _snapshot(env.store)
    padded = json.dumps({"token": token, "csr": csr + " " * limit}).encode()
    response = anon.post("/v1/enroll", content=padded, headers={"content-type": "application/json"})
    _assert_problem(response, 413, "body-too-large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for start in range(0, len(padded), 4096):
            yield padded[start : start + 4096]

    with httpx.Client(base_url=env.url, verify=_anonymous_context(env.bundle), timeout=30) as fresh:
        chunked = fresh.post("/v1/enroll", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in chunked.request.headers
    _assert_problem(chunked, 413, "body-too-large")
    assert _snapshot(env.store) == before
    # Just under the limit the same token still works: the refusals consumed nothing.
    fitting = json.dumps({"token": token, "csr": csr}).encode()
    assert len(fitting) <= limit
    ok = anon.post("/v1/enroll", content=fitting, headers={"content-type": "application/json"})
    assert ok.status_code == 201, ok.text


def test_malformed_json(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    before = _snapshot(env.store)
    response = anon.post(
        "/v1/enroll", content=b'{"token": "x", "csr": ', headers={"content-type": "application/json"}
    )
    _assert_problem(response, 400, "malformed-json")
    as_admin = admin.post("/v1/tokens", content=b"{identity", headers={"content-type": "application/json"})
    _assert_problem(as_admin, 400, "malformed-json")
    assert _snapshot(env.store) == before


@pytest.mark.parametrize(
    "csr",
    [
        "not a PEM at all",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    ],
)
def test_malformed_pem(env: Env, admin: httpx.Client, anon: httpx.Client, csr: str) -> None:
    token = _token(admin, f"spiffe://{TD}/pem")
    before = _snapshot(env.store)
    response = anon.post("/v1/enroll", json={"token": token, "csr": csr})
    _assert_problem(response, 400, "invalid-csr")
    assert _snapshot(env.store) == before
    ok = anon.post("/v1/enroll", json={"token": token, "csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    assert ok.status_code == 201, ok.text  # the token survived the refusal


def test_csr_with_a_bad_signature(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    token = _token(admin, f"spiffe://{TD}/forged")
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(
        x509.load_pem_x509_csr(_csr(key, uris=(f"spiffe://{TD}/forged",)).encode()).public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-1] ^= 0x01  # inside the signature: still parses, no longer verifies
    tampered = x509.load_der_x509_csr(bytes(der))
    assert not tampered.is_signature_valid
    before = _snapshot(env.store)
    response = anon.post(
        "/v1/enroll",
        json={"token": token, "csr": tampered.public_bytes(serialization.Encoding.PEM).decode()},
    )
    _assert_problem(response, 400, "invalid-csr")
    assert _snapshot(env.store) == before


def test_unknown_route_and_method(env: Env, anon: httpx.Client) -> None:
    _assert_problem(anon.get("/v1/nothing-here"), 404, "not-found")
    _assert_problem(anon.get("/v1/enroll"), 405, "method-not-allowed")


def test_revoke_unknown_and_twice(env: Env, admin: httpx.Client, anon: httpx.Client) -> None:
    _assert_problem(admin.post("/v1/revoke", json={"serial": "7fffffff0001"}), 404, "certificate-not-found")
    _assert_problem(admin.post("/v1/revoke", json={"serial": "zz"}), 400, "invalid-input")
    workload = _enroll(env, admin, anon)
    first = admin.post("/v1/revoke", json={"serial": workload.serial, "reason": "superseded"})
    assert first.status_code == 200, first.text
    before = _snapshot(env.store)
    _assert_problem(admin.post("/v1/revoke", json={"serial": workload.serial}), 409, "already-revoked")
    _assert_problem(
        admin.post("/v1/revoke", json={"serial": workload.serial, "reason": "notAReason"}),
        400,
        "invalid-input",
    )
    assert _snapshot(env.store) == before


def test_list_rejects_a_forged_cursor(env: Env, admin: httpx.Client) -> None:
    _assert_problem(
        admin.get("/v1/certificates", params={"cursor": "bm90IGEgY3Vyc29y"}), 400, "invalid-input"
    )
    _assert_problem(admin.get("/v1/certificates", params={"limit": 0}), 422, "invalid-request")


class _UnrecordedEnrollment:
    """An enrolment service that signs but never records: the API must not pass it on."""

    def __init__(self, env: Env) -> None:
        self.authority = env.ca.require_authority()

    def enroll(
        self,
        secret: str,
        csr: x509.CertificateSigningRequest,
        *,
        actor: str,
        writer_wait: float | None = None,
    ) -> Enrolled:
        certificate = self.authority.issue(
            csr.public_key(),
            profile=BUILTIN_PROFILES["mtls"],
            identity=SpiffeId.parse(f"spiffe://{TD}/ghost"),
        )
        return Enrolled(certificate=certificate, chain=self.authority.chain_for_leaf())

    # The direct path (SQLite) prepares, then records: here recording "succeeds" unrecorded.
    def prepare_enrollment(self, secret: str, csr: x509.CertificateSigningRequest, *, actor: str) -> Any:
        return csr

    def record(self, pending: list[Any], *, writer_wait: float | None = None) -> list[Enrolled]:
        return [self.enroll("anything", csr, actor="x") for csr in pending]


def test_no_certificate_returned_unless_stored(env: Env) -> None:
    state = dataclasses.replace(env.state, enrollment=_UnrecordedEnrollment(env))  # type: ignore[arg-type]
    with TestClient(create_api(state), raise_server_exceptions=False) as client:
        response = client.post(
            "/v1/enroll", json={"token": "anything", "csr": _csr(ec.generate_private_key(ec.SECP256R1()))}
        )
    document = _assert_problem(response, 500, "internal-error")
    assert "BEGIN CERTIFICATE" not in response.text and "certificate" not in document
    metrics, _ = env.state.metrics.render()
    assert b'certwright_issuance_total{kind="enroll",outcome="error"' in metrics
