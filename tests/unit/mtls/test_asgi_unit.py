"""MTLSMiddleware without sockets: ASGI scopes built by hand, a real verifier and policy.

Each refusal is paired with the request that passes, and each asserts the app was not
called: a refusal that still ran the app would be no refusal at all.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import ssl
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from certwright.access.policy import Decision, Policy, Request, Subject
from certwright.clock import FixedClock
from certwright.mtls.asgi import (
    DECISION_KEY,
    PEER_KEY,
    PROBLEM_ACCESS_DENIED,
    PROBLEM_AMBIGUOUS_PATH,
    PROBLEM_NO_CERTIFICATE,
    PROBLEM_PEER_REFUSED,
    PROBLEM_TLS_UNAVAILABLE,
    MTLSMiddleware,
    ambiguous_path,
    peer_of,
)
from certwright.mtls.crl import CrlSource
from certwright.mtls.peer import Peer, PeerVerifier
from certwright.mtls.policy_source import PolicySource
from certwright.mtls.server import AccessGate
from support.pki import TestPKI, Workload

CLIENT = "spiffe://example.org/client"
OTHER = "spiffe://example.org/other"
POLICY = """
version = 1

[[rule]]
name = "client-reads-items"
services = ["items"]
identities = ["spiffe://example.org/client"]
methods = ["GET"]
paths = ["/v1/items/*"]
"""

Message = MutableMapping[str, Any]


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


@pytest.fixture(scope="module")
def client(pki: TestPKI) -> Workload:
    return pki.leaf(CLIENT, roles=("reader",))


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.parse(POLICY, source="policy.toml")


def pem(workload: Workload) -> str:
    return workload.certificate.public_bytes(serialization.Encoding.PEM).decode()


def tls_ext(*chain: str, error: str | None = None) -> dict[str, Any]:
    return {
        "server_cert": None, "client_cert_chain": list(chain), "client_cert_name": None,
        "client_cert_error": error, "tls_version": 0x0304, "cipher_suite": 0x1302,
    }


def http_scope(
    path: str, *, tls: dict[str, Any] | None, method: str = "GET", raw: bytes | None = None
) -> Message:
    scope: Message = {
        "type": "http", "method": method, "path": path, "raw_path": raw if raw is not None else path.encode(),
        "query_string": b"", "headers": [], "client": ("127.0.0.1", 40000), "state": {"from_lifespan": 1},
    }
    if tls is not None:
        scope["extensions"] = {"tls": tls}
    return scope


class Recorder:
    """An ASGI app that records the scopes it is called with and answers 200."""

    def __init__(self) -> None:
        self.scopes: list[Message] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


def run(app: Any, scope: Message, incoming: list[Message] | None = None) -> list[Message]:
    sent: list[Message] = []
    queue = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def problem(sent: list[Message]) -> tuple[int, dict[str, Any]]:
    start, body = sent
    assert (b"content-type", b"application/problem+json") in start["headers"]
    document = json.loads(body["body"])
    assert document["status"] == start["status"]
    return start["status"], document


def middleware(pki: TestPKI, policy: Any, **kwargs: Any) -> tuple[MTLSMiddleware, Recorder]:
    app = Recorder()
    verifier = kwargs.pop("verifier", None) or PeerVerifier([pki.root], trust_domain="example.org")
    return MTLSMiddleware(app, verifier=verifier, policy=policy, service="items", **kwargs), app


def test_an_allowed_request_reaches_the_app_with_the_peer_and_decision(
    pki: TestPKI, client: Workload, policy: Policy
) -> None:
    mw, app = middleware(pki, policy)
    sent = run(mw, http_scope("/v1/items/42", tls=tls_ext(pem(client))))
    assert sent[0]["status"] == 200
    (scope,) = app.scopes
    peer = scope[PEER_KEY]
    assert isinstance(peer, Peer) and str(peer.identity) == CLIENT and peer.roles == ("reader",)
    assert scope["state"]["peer"] is peer
    assert scope["state"]["from_lifespan"] == 1  # lifespan state is kept
    decision = scope["state"]["access_decision"]
    assert decision is scope[DECISION_KEY] and decision.allowed and "client-reads-items" in decision.reason
    assert peer_of(scope) is peer


def test_a_denied_request_gets_a_403_problem_with_the_reason_and_never_reaches_the_app(
    pki: TestPKI, client: Workload, policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    mw, app = middleware(pki, policy)
    with caplog.at_level(logging.INFO, logger="certwright.mtls.access"):
        sent = run(mw, http_scope("/admin", tls=tls_ext(pem(client))))
    status, doc = problem(sent)
    assert status == 403 and doc["type"] == PROBLEM_ACCESS_DENIED and doc["title"] == "Access denied"
    assert "default deny" in doc["detail"] and "/admin" in doc["detail"]
    assert app.scopes == []
    (record,) = [r for r in caplog.records if r.name == "certwright.mtls.access"]
    fields = record.certwright_access  # type: ignore[attr-defined]
    assert fields["identity"] == CLIENT and fields["service"] == "items" and fields["method"] == "GET"
    assert fields["path"] == "/admin" and fields["allowed"] is False and "default deny" in fields["reason"]


def test_every_allowed_decision_is_logged_with_its_rule(
    pki: TestPKI, client: Workload, policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    mw, _ = middleware(pki, policy)
    with caplog.at_level(logging.INFO, logger="certwright.mtls.access"):
        run(mw, http_scope("/v1/items/42", tls=tls_ext(pem(client))))
    (record,) = [r for r in caplog.records if r.name == "certwright.mtls.access"]
    assert record.levelno == logging.INFO and record.getMessage().startswith("allow identity=" + CLIENT)
    assert "client-reads-items (policy.toml line" in record.certwright_access["rule"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/v1/items/a/b", "/v1/items", "/v1/itemsX/1", "/v1/items/1/"])
def test_the_glob_does_not_cross_path_segments(
    pki: TestPKI, client: Workload, policy: Policy, path: str
) -> None:
    mw, app = middleware(pki, policy)
    status, doc = problem(run(mw, http_scope(path, tls=tls_ext(pem(client)))))
    assert status == 403 and doc["type"] == PROBLEM_ACCESS_DENIED
    assert app.scopes == []


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/items/../admin", b"/v1/items/%2e%2e/admin"),  # decoded by the server: '..'
        ("/v1/items/..", b"/v1/items/%2E%2E"),  # '*' alone would match '..'
        ("/v1/items/.", b"/v1/items/."),
        ("/v1/items/a/b", b"/v1/items/a%2Fb"),  # an encoded separator
        ("/v1/items/%2e%2e", b"/v1/items/%252e%252e"),  # double encoding
        ("/v1/items/a\\b", b"/v1/items/a%5Cb"),
        ("/v1//items/1", b"/v1//items/1"),
        ("/v1/items/1;x", b"/v1/items/1;x"),
        ("/v1/items/\n", b"/v1/items/%0A"),
    ],
)
def test_ambiguous_paths_are_refused_with_400_before_any_decision(
    pki: TestPKI, client: Workload, path: str, raw: bytes
) -> None:
    # Even with a policy that allows every path: the path check does not depend on it.
    lenient = Policy.parse(POLICY.replace('paths = ["/v1/items/*"]', 'paths = ["/**"]'))
    mw, app = middleware(pki, lenient)
    status, doc = problem(run(mw, http_scope(path, tls=tls_ext(pem(client)), raw=raw)))
    assert status == 400 and doc["type"] == PROBLEM_AMBIGUOUS_PATH
    assert app.scopes == []
    # Negative control: the same policy admits a canonical path.
    assert run(mw, http_scope("/v1/items/1", tls=tls_ext(pem(client))))[0]["status"] == 200


def test_without_strict_paths_the_policy_still_refuses_dot_segments(
    pki: TestPKI, client: Workload, policy: Policy
) -> None:
    mw, app = middleware(pki, policy, strict_paths=False)
    scope = http_scope("/v1/items/..", tls=tls_ext(pem(client)), raw=b"/v1/items/%2e%2e")
    status, doc = problem(run(mw, scope))
    assert status == 403 and doc["type"] == PROBLEM_ACCESS_DENIED and "'..'" in doc["detail"]
    assert app.scopes == []


def test_ambiguous_path_accepts_canonical_paths() -> None:
    # A double-encoded harmless character reads the same whichever way: allowed.
    assert ambiguous_path({"path": "/v1/items/a%20b", "raw_path": b"/v1/items/a%2520b"}) is None
    assert ambiguous_path({"path": "/v1/items/a b", "raw_path": b"/v1/items/a%20b"}) is None
    assert ambiguous_path({"path": "/", "raw_path": b"/"}) is None
    assert ambiguous_path({"path": "/v1/items/", "raw_path": b"/v1/items/"}) is None


def test_no_tls_extension_is_a_500_configuration_error_never_an_allow(
    pki: TestPKI, client: Workload, caplog: pytest.LogCaptureFixture
) -> None:
    mw, app = middleware(pki, None)  # even with no policy at all
    with caplog.at_level(logging.INFO, logger="certwright.mtls.access"):
        status, doc = problem(run(mw, http_scope("/v1/items/1", tls=None)))
    assert status == 500 and doc["type"] == PROBLEM_TLS_UNAVAILABLE
    assert app.scopes == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "no TLS extension" in errors[0].getMessage()


def test_no_client_certificate_is_refused_with_403(pki: TestPKI) -> None:
    mw, app = middleware(pki, None)
    status, doc = problem(run(mw, http_scope("/v1/items/1", tls=tls_ext())))
    assert status == 403 and doc["type"] == PROBLEM_NO_CERTIFICATE
    assert app.scopes == []


def test_a_certificate_the_server_could_not_verify_is_refused(pki: TestPKI, client: Workload) -> None:
    mw, app = middleware(pki, None)
    scope = http_scope("/v1/items/1", tls=tls_ext(pem(client), error="unable to get issuer"))
    status, doc = problem(run(mw, scope))
    assert status == 403 and doc["type"] == PROBLEM_PEER_REFUSED and "unable to get issuer" in doc["detail"]
    assert app.scopes == []


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda pki: pki.leaf(None, profile="server", dns=("a.example.org",)), "no SPIFFE identity"),
        (lambda pki: pki.forged_leaf([CLIENT, OTHER]), "2 URI SANs"),
        (lambda pki: pki.expired_leaf(CLIENT), "expired"),
        (
            lambda pki: TestPKI.create(trust_domain="evil.org").leaf("spiffe://evil.org/client"),
            "trust domain",
        ),
    ],
)
def test_refused_peers_get_403_with_the_verifier_reason(
    pki: TestPKI, policy: Policy, make: Any, reason: str
) -> None:
    mw, app = middleware(pki, policy)
    status, doc = problem(run(mw, http_scope("/v1/items/1", tls=tls_ext(pem(make(pki))))))
    assert status == 403 and doc["type"] == PROBLEM_PEER_REFUSED and reason in doc["detail"]
    assert app.scopes == []


def test_a_revoked_peer_is_refused_at_once(tmp_path: Path, policy: Policy) -> None:
    pki = TestPKI.create()
    client = pki.leaf(CLIENT)
    crl_file = tmp_path / "ca.crl"
    crl_file.write_bytes(pki.crl_pem())
    crl = CrlSource(crl_file, issuers=[pki.intermediate], check_interval=0.0)
    verifier = PeerVerifier([pki.root], crl=crl)
    mw, app = middleware(pki, policy, verifier=verifier)
    scope = http_scope("/v1/items/1", tls=tls_ext(pem(client)))
    assert run(mw, scope)[0]["status"] == 200  # negative control: not revoked yet
    pki.revoke(client.serial)
    crl_file.write_bytes(pki.crl_pem())
    status, doc = problem(run(mw, http_scope("/v1/items/1", tls=tls_ext(pem(client)))))
    assert status == 403 and doc["type"] == PROBLEM_PEER_REFUSED and "revoked" in doc["detail"]
    assert len(app.scopes) == 1


def test_reverify_chain_refuses_a_certificate_from_another_ca(pki: TestPKI, policy: Policy) -> None:
    stranger = TestPKI.create(name="Other").leaf(CLIENT)
    trusting, _ = middleware(pki, policy)
    # Without reverification the middleware trusts the server's handshake (which would refuse it).
    assert run(trusting, http_scope("/v1/items/1", tls=tls_ext(pem(stranger))))[0]["status"] == 200
    mw, app = middleware(pki, policy, reverify_chain=True)
    status, doc = problem(run(mw, http_scope("/v1/items/1", tls=tls_ext(pem(stranger)))))
    assert status == 403 and doc["type"] == PROBLEM_PEER_REFUSED
    assert app.scopes == []
    own = pki.leaf(CLIENT)
    chain = [pem(own), *(c.public_bytes(serialization.Encoding.PEM).decode() for c in own.chain)]
    assert run(mw, http_scope("/v1/items/1", tls=tls_ext(*chain)))[0]["status"] == 200


def test_a_policy_source_with_only_current_is_used(pki: TestPKI, client: Workload, policy: Policy) -> None:
    class Source:
        def __init__(self) -> None:
            self.policy = Policy()

        def current(self) -> Policy:
            return self.policy

    source = Source()
    mw, _ = middleware(pki, source)
    assert problem(run(mw, http_scope("/v1/items/1", tls=tls_ext(pem(client)))))[0] == 403
    source.policy = policy  # a reload: the next request uses the new policy
    assert run(mw, http_scope("/v1/items/1", tls=tls_ext(pem(client))))[0]["status"] == 200


def test_policy_none_admits_verified_peers_and_says_so(
    pki: TestPKI, client: Workload, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="certwright.mtls.access"):
        mw, app = middleware(pki, None)
    assert any("every verified peer is admitted" in r.getMessage() for r in caplog.records)
    assert run(mw, http_scope("/anything", tls=tls_ext(pem(client))))[0]["status"] == 200
    assert app.scopes[0][DECISION_KEY].rule is None


def test_a_policy_of_the_wrong_type_is_refused_at_construction(pki: TestPKI) -> None:
    with pytest.raises(TypeError):
        middleware(pki, "policy.toml")
    with pytest.raises(ValueError, match="service"):
        MTLSMiddleware(Recorder(), verifier=PeerVerifier([pki.root]), policy=None, service="")


def test_websocket_refusal_uses_the_http_response_extension(
    pki: TestPKI, client: Workload, policy: Policy
) -> None:
    mw, app = middleware(pki, policy)
    scope = http_scope("/admin", tls=tls_ext(pem(client)))
    scope["type"] = "websocket"
    del scope["method"]
    scope["extensions"]["websocket.http.response"] = {}
    sent = run(mw, scope, [{"type": "websocket.connect"}])
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 403
    assert json.loads(sent[1]["body"])["type"] == PROBLEM_ACCESS_DENIED
    assert app.scopes == []


def test_websocket_refusal_without_the_extension_closes_with_1008(
    pki: TestPKI, client: Workload, policy: Policy
) -> None:
    mw, app = middleware(pki, policy)
    scope = http_scope("/admin", tls=tls_ext(pem(client)))
    scope["type"] = "websocket"
    sent = run(mw, scope, [{"type": "websocket.connect"}])
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "Access denied"}]
    assert app.scopes == []
    # The handshake is decided as a GET: the allowed path passes.
    allowed = http_scope("/v1/items/1", tls=tls_ext(pem(client)))
    allowed["type"] = "websocket"
    run(mw, allowed, [{"type": "websocket.connect"}])
    assert app.scopes[0][DECISION_KEY].allowed


def test_lifespan_passes_through(pki: TestPKI) -> None:
    mw, app = middleware(pki, None)
    run(mw, {"type": "lifespan"}, [{"type": "lifespan.startup"}])
    assert app.scopes == [{"type": "lifespan"}]


def test_peer_of_refuses_a_request_that_did_not_pass_the_middleware() -> None:
    class FakeRequest:
        scope: dict[str, Any] = {"type": "http"}  # noqa: RUF012

    with pytest.raises(LookupError, match="MTLSMiddleware"):
        peer_of(FakeRequest())


def test_the_gate_logs_untrusted_text_on_one_line(
    pki: TestPKI, client: Workload, caplog: pytest.LogCaptureFixture
) -> None:
    gate = AccessGate(verifier=PeerVerifier([pki.root]), policy=Policy(), service="items")
    peer = gate.peer(client.certificate.public_bytes(serialization.Encoding.DER))
    with caplog.at_level(logging.INFO, logger="certwright.mtls.access"):
        decision = gate.decide(peer, method="GET", path="/x\nallow identity=spiffe://example.org/admin")
    assert not decision.allowed
    assert "\n" not in caplog.records[-1].getMessage()


def test_the_gate_decides_against_a_fake_source_with_decide(pki: TestPKI, client: Workload) -> None:
    seen: list[tuple[Subject, Request]] = []

    class Source:
        def decide(self, subject: Subject, request: Request) -> Decision:
            seen.append((subject, request))
            return Decision(False, "nope")

    gate = AccessGate(verifier=PeerVerifier([pki.root]), policy=Source(), service="items")
    peer = gate.peer(ssl.PEM_cert_to_DER_cert(pem(client)))
    assert not gate.decide(peer, method="POST", path="/v1/x")
    assert seen == [(Subject(CLIENT, ("reader",)), Request("items", "POST", "/v1/x"))]


def test_an_expired_cached_peer_is_refused_on_a_later_request(pki: TestPKI, policy: Policy) -> None:
    leaf = pki.leaf(CLIENT)
    clock = FixedClock(datetime.datetime.now(datetime.UTC))
    verifier = PeerVerifier([pki.root], clock=clock)
    mw, _ = middleware(pki, policy, verifier=verifier)
    assert run(mw, http_scope("/v1/items/1", tls=tls_ext(pem(leaf))))[0]["status"] == 200
    clock.advance(leaf.certificate.not_valid_after_utc - clock.now() + datetime.timedelta(seconds=1))
    assert problem(run(mw, http_scope("/v1/items/1", tls=tls_ext(pem(leaf)))))[0] == 403


def test_a_reloading_policy_source_is_followed(pki: TestPKI, client: Workload, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.replace("/v1/items/*", "/v2/items/*"))
    source = PolicySource(path, interval=0.0)
    mw, _ = middleware(pki, source)
    assert problem(run(mw, http_scope("/v1/items/1", tls=tls_ext(pem(client)))))[0] == 403
    path.write_text(POLICY + "\n# edited\n")
    assert source.reload()
    assert run(mw, http_scope("/v1/items/1", tls=tls_ext(pem(client))))[0]["status"] == 200
