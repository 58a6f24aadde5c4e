"""The plain-HTTP app (server/public.py) on a real socket: CRL, OCSP GET/POST, health, metrics.

One CA per module (its leaves name this module's listener in their CRL DP and AIA); the
app runs with uvicorn on 127.0.0.1 in a thread and is called with httpx (keep-alive).
Replicas are simulated in-process here (a second ServerState on the same CA and
database: its own connection pool and OCSP cache); real processes are in test_replicas.
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtensionOID

from certwright.cadir import CADirectory
from certwright.issuance import Authority, create_root
from certwright.server.public import create_public_app
from certwright.server.state import ServerState
from certwright.store import BySerial, StoreError
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import generate_key
from certwright.x509.profiles import CASettings
from certwright.x509.revocation_reason import RevocationReason
from support.postgres import postgres_database
from support.public_server import PlainServer, build_state, free_socket, issue_leaf, make_ca, replica_state

DEADLINE = 15.0


@pytest.fixture(scope="module")
def listener() -> Any:
    return free_socket()


@pytest.fixture(scope="module")
def base_url(listener: Any) -> str:
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, base_url: str) -> CADirectory:
    return make_ca(tmp_path_factory.mktemp("public") / "ca", base_url=base_url)


@pytest.fixture(scope="module")
def state(ca: CADirectory, base_url: str) -> Iterator[ServerState]:
    built = build_state(ca, base_url=base_url)
    yield built
    built.store.close()


@pytest.fixture(scope="module")
def server(state: ServerState, listener: Any) -> Iterator[PlainServer]:
    with PlainServer(create_public_app(state), sock=listener) as running:
        yield running


@pytest.fixture
def client(server: PlainServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as opened:
        yield opened


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate, algorithm: Any = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def post_ocsp(client: httpx.Client, der: bytes) -> ocsp.OCSPResponse:
    response = client.post("/ocsp", content=der, headers={"Content-Type": "application/ocsp-request"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/ocsp-response"
    return ocsp.load_der_ocsp_response(response.content)


def status_of(client: httpx.Client, cert: x509.Certificate, issuer: x509.Certificate) -> ocsp.OCSPCertStatus:
    response = post_ocsp(client, ocsp_request(cert, issuer))
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL, response.response_status
    return response.certificate_status


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def fetch_crl(client: httpx.Client, state: ServerState) -> x509.CertificateRevocationList:
    key_id = state.revocation.issuer_key_id
    assert key_id is not None
    response = client.get(f"/crl/{key_id.hex()}.crl")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pkix-crl"
    return x509.load_der_x509_crl(response.content)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def assert_signed_by_responder(response: ocsp.OCSPResponse, state: ServerState) -> None:
    [responder] = response.certificates
    assert responder.issuer == state.ca.intermediate.subject
    key = responder.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    hash_algorithm = response.signature_hash_algorithm
    assert hash_algorithm is not None
    key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hash_algorithm))


def revoke(state: ServerState, cert: x509.Certificate) -> None:
    state.revocation.revoke(BySerial(cert.serial_number), RevocationReason.KEY_COMPROMISE)


# --- health and metrics ------------------------------------------------------------------


def test_healthz_answers_ok_when_the_database_does(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"


def test_healthz_is_a_503_problem_when_the_database_fails(
    state: ServerState, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> Any:
        raise StoreError("database is down (test)")

    monkeypatch.setattr(state.store, "read", broken)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "https://certwright.dev/problems/unhealthy"
    assert problem["status"] == 503
    assert "down (test)" not in problem["detail"]  # the reason is logged, not published


def test_metrics_count_requests_by_route_and_issuance_by_profile(
    state: ServerState, client: httpx.Client
) -> None:
    client.get("/healthz")
    client.get("/no/such/path/42")
    state.metrics.observe_issuance("enroll", "mtls", "ok", 0.004)
    state.metrics.observe_issuance("enroll", "made-up-by-a-client", "refused", 0.001)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    requests = "certwright_http_requests_total"
    assert requests + '{listener="public",method="GET",route="/healthz",status="200"}' in text
    assert 'route="other",status="404"' in text
    assert "/no/such/path" not in text  # raw paths never become labels
    assert 'certwright_issuance_total{kind="enroll",outcome="ok",profile="mtls"}' in text
    assert 'certwright_issuance_seconds_bucket{kind="enroll",le="0.005",outcome="ok",profile="mtls"}' in text
    assert 'profile="other"' in text and "made-up-by-a-client" not in text


def test_unknown_route_is_a_problem(client: httpx.Client) -> None:
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert response.json()["type"] == "https://certwright.dev/problems/not-found"


# --- CRL ---------------------------------------------------------------------------------


def test_crl_is_signed_by_the_issuer_and_lists_what_was_revoked(
    state: ServerState, client: httpx.Client
) -> None:
    kept, revoked = issue_leaf(state, "crl-kept"), issue_leaf(state, "crl-revoked")
    before = fetch_crl(client, state)
    assert before.is_signature_valid(state.ca.intermediate.public_key())
    assert before.issuer == state.ca.intermediate.subject
    assert before.get_revoked_certificate_by_serial_number(revoked.serial_number) is None

    revoke(state, revoked)
    after = fetch_crl(client, state)
    assert after.is_signature_valid(state.ca.intermediate.public_key())
    entry = after.get_revoked_certificate_by_serial_number(revoked.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert after.get_revoked_certificate_by_serial_number(kept.serial_number) is None
    assert crl_number(after) > crl_number(before)  # published again at once: a revocation happened


def test_crl_is_cached_between_revocations_and_revalidates_by_etag(
    state: ServerState, client: httpx.Client
) -> None:
    key_id = state.revocation.issuer_key_id
    assert key_id is not None
    path = f"/crl/{key_id.hex().upper()}.crl"  # the key id is matched case-insensitively
    first = client.get(path)
    second = client.get(path)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content  # no revocation in between: the same CRL, same number
    assert "max-age=" in first.headers["cache-control"]
    not_modified = client.get(path, headers={"If-None-Match": first.headers["etag"]})
    assert not_modified.status_code == 304
    assert not not_modified.content


def test_crl_scope_is_the_distribution_point_of_the_leaves(
    state: ServerState, client: httpx.Client, base_url: str
) -> None:
    leaf = issue_leaf(state, "crl-scope")
    points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    [leaf_url] = [name.value for point in points for name in point.full_name or ()]
    crl = fetch_crl(client, state)
    idp = crl.extensions.get_extension_for_oid(ExtensionOID.ISSUING_DISTRIBUTION_POINT).value
    assert [name.value for name in idp.full_name] == [leaf_url]
    key_id = state.revocation.issuer_key_id
    assert key_id is not None
    assert leaf_url == f"{base_url}/crl/{key_id.hex()}.crl"


def test_crl_of_an_unknown_issuer_is_not_found(client: httpx.Client) -> None:
    response = client.get(f"/crl/{'ab' * 20}.crl")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


# --- OCSP --------------------------------------------------------------------------------


def test_ocsp_post_says_good_revoked_and_unknown(state: ServerState, client: httpx.Client) -> None:
    good, revoked = issue_leaf(state, "ocsp-good"), issue_leaf(state, "ocsp-revoked")
    # Signed by the CA but never recorded: the inventory does not know it.
    stray = state.ca.require_authority().issue(
        generate_key().public_key(),
        profile=state.ca.profile("mtls"),
        identity=SpiffeId.parse("spiffe://example.org/workload/stray"),
    )
    revoke(state, revoked)
    issuer = state.ca.intermediate
    assert status_of(client, good, issuer) is ocsp.OCSPCertStatus.GOOD
    assert status_of(client, revoked, issuer) is ocsp.OCSPCertStatus.REVOKED
    assert status_of(client, stray, issuer) is ocsp.OCSPCertStatus.UNKNOWN
    response = post_ocsp(client, ocsp_request(revoked, issuer, hashes.SHA256()))
    assert response.revocation_reason is x509.ReasonFlags.key_compromise
    assert response.serial_number == revoked.serial_number
    assert_signed_by_responder(response, state)
    metrics = client.get("/metrics").text
    for status in ("good", "revoked", "unknown"):
        assert f'certwright_ocsp_responses_total{{status="{status}"}}' in metrics


def test_cached_ocsp_answers_skip_the_worker_thread(
    state: ServerState, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cached answer comes from the event loop; only a miss (lookup and signature) hops
    # to a worker thread.
    import certwright.server.public as public

    hops: list[str] = []
    original = public.run_in_threadpool

    async def counting(func: Any, *args: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await original(func, *args)

    monkeypatch.setattr(public, "run_in_threadpool", counting)
    leaf = issue_leaf(state, "ocsp-inline")
    issuer = state.ca.intermediate
    assert status_of(client, leaf, issuer) is ocsp.OCSPCertStatus.GOOD
    assert hops == ["_answer"]
    for _ in range(3):
        assert status_of(client, leaf, issuer) is ocsp.OCSPCertStatus.GOOD
    get = client.get("/ocsp/" + base64.b64encode(ocsp_request(leaf, issuer)).decode())
    assert ocsp.load_der_ocsp_response(get.content).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert hops == ["_answer"]  # the cache answered the rest, POST and GET
    revoke(state, leaf)
    state.ocsp.invalidate(leaf.serial_number)  # as POST /v1/revoke does: the next answer is looked up
    assert status_of(client, leaf, issuer) is ocsp.OCSPCertStatus.REVOKED
    assert hops == ["_answer", "_answer"]


def _b64_with_plus_and_slash(state: ServerState) -> tuple[x509.Certificate, str]:
    """A leaf whose SHA-1 request's base64 holds '+' and '/' (so the encodings differ)."""
    for n in range(200):
        leaf = issue_leaf(state, f"ocsp-get-{n}")
        text = base64.b64encode(ocsp_request(leaf, state.ca.intermediate)).decode()
        if "+" in text and "/" in text:
            return leaf, text
    raise AssertionError("no request with both '+' and '/' in 200 tries")


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda b64: b64, id="raw"),
        pytest.param(lambda b64: urllib.parse.quote(b64, safe=""), id="percent-encoded"),
        pytest.param(lambda b64: urllib.parse.quote(urllib.parse.quote(b64, safe=""), safe=""), id="twice"),
        pytest.param(lambda b64: b64.replace("+", "-").replace("/", "_").rstrip("="), id="base64url"),
        pytest.param(lambda b64: b64.replace("+", "%20"), id="plus-as-space"),
    ],
)
def test_ocsp_get_accepts_every_encoding_clients_use(
    state: ServerState, client: httpx.Client, encode: Callable[[str], str]
) -> None:
    leaf, b64 = _b64_with_plus_and_slash(state)
    # The path exactly as the client wrote it (httpx would otherwise normalise it).
    url = httpx.URL(str(client.base_url)).copy_with(raw_path=b"/ocsp/" + encode(b64).encode())
    response = client.get(url)
    assert response.status_code == 200
    answer = ocsp.load_der_ocsp_response(response.content)
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.serial_number == leaf.serial_number
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    # RFC 5019 6.2: an HTTP cache may keep it until nextUpdate.
    assert "max-age=" in response.headers["cache-control"]
    assert response.headers["last-modified"] and response.headers["expires"]


@pytest.mark.parametrize("path", ["/ocsp/not*base64!", "/ocsp/AAAA", "/ocsp/"])
def test_ocsp_get_of_garbage_is_malformed_request(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    answer = ocsp.load_der_ocsp_response(response.content)
    assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert response.headers["cache-control"] == "no-store"


def test_ocsp_for_another_issuer_is_unauthorized(state: ServerState, client: httpx.Client) -> None:
    settings = CASettings(trust_domain="example.org")
    other_key = generate_key()
    other = create_root(other_key, subject="CN=Another CA", settings=settings)
    foreign = Authority(certificate=other, key=other_key, settings=settings).issue(
        generate_key().public_key(),
        profile=state.ca.profile("mtls"),
        identity=SpiffeId.parse("spiffe://example.org/workload/foreign"),
    )
    response = post_ocsp(client, ocsp_request(foreign, other))
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_ocsp_post_refuses_oversized_bodies_and_other_media_types(client: httpx.Client) -> None:
    big = b"\x30" * (16 * 1024 + 1)
    response = client.post("/ocsp", content=big, headers={"Content-Type": "application/ocsp-request"})
    assert response.status_code == 413
    assert response.json()["type"] == "https://certwright.dev/problems/body-too-large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(64):
            yield b"\x30" * 1024

    response = client.post("/ocsp", content=chunks(), headers={"Content-Type": "application/ocsp-request"})
    assert response.status_code == 413
    response = client.post("/ocsp", content=b"\x30\x00", headers={"Content-Type": "application/json"})
    assert response.status_code == 415


# --- replicas (in-process) ---------------------------------------------------------------


def test_a_revocation_by_another_replica_reaches_cached_ocsp_answers(
    state: ServerState, ca: CADirectory, base_url: str
) -> None:
    leaf = issue_leaf(state, "replicated")
    polling, deaf = replica_state(state), replica_state(state)
    app_polling = create_public_app(polling, revocation_poll=0.2)
    # Negative control: a replica that polls once an hour keeps serving its cached "good".
    app_deaf = create_public_app(deaf, revocation_poll=3600)
    try:
        with (
            PlainServer(app_polling) as fast,
            PlainServer(app_deaf) as slow,
            httpx.Client(base_url=fast.url) as fast_client,
            httpx.Client(base_url=slow.url) as slow_client,
        ):
            issuer = ca.intermediate
            for c in (fast_client, slow_client):
                assert status_of(c, leaf, issuer) is ocsp.OCSPCertStatus.GOOD
                assert status_of(c, leaf, issuer) is ocsp.OCSPCertStatus.GOOD  # now from the cache
            assert polling.ocsp.stats.from_cache >= 1 and deaf.ocsp.stats.from_cache >= 1

            revoke(state, leaf)  # through the first replica's service, not the others'
            wait_for(
                lambda: status_of(fast_client, leaf, issuer) is ocsp.OCSPCertStatus.REVOKED,
                "the polling replica to answer revoked",
            )
            assert status_of(slow_client, leaf, issuer) is ocsp.OCSPCertStatus.GOOD
    finally:
        polling.store.close()
        deaf.store.close()


def test_a_replica_that_cannot_poll_fails_closed(
    state: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaf = issue_leaf(state, "stale-feed")
    replica = replica_state(state)
    try:
        app = create_public_app(replica, revocation_poll=0.2)
        with PlainServer(app) as running, httpx.Client(base_url=running.url) as client:
            assert status_of(client, leaf, state.ca.intermediate) is ocsp.OCSPCertStatus.GOOD  # cached

            def broken() -> Any:
                raise StoreError("database is down (test)")

            monkeypatch.setattr(replica.store, "read", broken)

            def try_later() -> bool:
                answer = post_ocsp(client, ocsp_request(leaf, state.ca.intermediate))
                return answer.response_status is ocsp.OCSPResponseStatus.TRY_LATER

            wait_for(try_later, "tryLater once the feed is stale")
            key_id = replica.revocation.issuer_key_id
            assert key_id is not None
            assert client.get(f"/crl/{key_id.hex()}.crl").status_code == 503
    finally:
        replica.store.close()


def test_crl_is_published_again_after_a_revocation_by_another_replica(
    state: ServerState, client: httpx.Client
) -> None:
    leaf = issue_leaf(state, "crl-elsewhere")
    before = fetch_crl(client, state)
    other = replica_state(state)
    try:
        revoke(other, leaf)
    finally:
        other.store.close()
    after = fetch_crl(client, state)
    assert after.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    assert crl_number(after) > crl_number(before)


def test_crl_numbers_increase_across_replicas_on_postgresql(tmp_path: Path) -> None:
    with postgres_database() as db_url:
        sock = free_socket()
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        sock.close()
        shared = make_ca(tmp_path / "ca", base_url=base_url, db_url=db_url)
        first = build_state(shared, base_url=base_url)
        second = replica_state(first)
        try:
            apps = [create_public_app(first), create_public_app(second)]
            with PlainServer(apps[0]) as a, PlainServer(apps[1]) as b:
                clients = [httpx.Client(base_url=a.url), httpx.Client(base_url=b.url)]
                numbers = []
                for round_ in range(6):
                    revoke(first if round_ % 2 else second, issue_leaf(first, f"pg-{round_}"))
                    numbers.append(crl_number(fetch_crl(clients[round_ % 2], first)))
                for c in clients:
                    c.close()
            assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
        finally:
            first.store.close()
            second.store.close()
