"""Problem documents (RFC 9457), the CA's default access policy, and the body limit, in process.

No sockets: the FastAPI app is driven by Starlette's in-process TestClient, and the body
limit middleware by hand-made ASGI messages.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from certwright.access import Policy, Request, Subject
from certwright.errors import (
    CADirectoryError,
    CertwrightError,
    InvalidCSRError,
    InvalidIdentityError,
    PolicyViolation,
    VerificationError,
)
from certwright.server.api import BodyLimit
from certwright.server.ca_policy import ADMIN_ROLE, SERVICE, default_policy_text, revoke_any_path
from certwright.server.problems import (
    PROBLEM_BASE,
    PROBLEM_JSON,
    Problem,
    install,
    problem_for,
    validation_problem,
)
from certwright.service.enrollment import RenewalError, TokenError
from certwright.store import DuplicateCertificateError, SchemaOutOfDateError, StoreError

# -- mapping errors to problems ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (TokenError("token 1f was used at 10:02 by api:enroll"), 403, "token-invalid"),
        (RenewalError("certificate 2a is revoked (keyCompromise): enrol again"), 403, "renewal-refused"),
        (PolicyViolation("dns name evil.example not granted", field="dns"), 403, "policy-violation"),
        (VerificationError("certificate expired"), 403, "peer-refused"),
        (InvalidCSRError("the CSR signature does not verify"), 400, "invalid-csr"),
        (InvalidIdentityError("not a SPIFFE ID"), 400, "invalid-input"),
        (DuplicateCertificateError("serial 1 already stored"), 409, "conflict"),
        (SchemaOutOfDateError("run certwright db upgrade"), 503, "store-unavailable"),
        (StoreError("database is locked"), 503, "store-unavailable"),
        (CADirectoryError("needs the passphrase"), 503, "ca-unavailable"),
        (CertwrightError("certificate 1f is already revoked"), 400, "request-refused"),
        (RuntimeError("secret internals /etc/ca.key"), 500, "internal-error"),
    ],
)
def test_errors_map_to_problem_types(error: Exception, status: int, slug: str) -> None:
    problem = problem_for(error)
    document = problem.document()
    assert (document["status"], document["type"]) == (status, PROBLEM_BASE + slug)
    assert document["title"] and document["detail"]


def test_token_errors_say_only_the_public_message() -> None:
    # An unauthenticated caller must not learn whether the token existed, was used or expired.
    detail = problem_for(TokenError("token 1f was used at 10:02 by api:enroll")).detail
    assert detail == TokenError.public_message


def test_unexpected_and_infrastructure_errors_reveal_nothing() -> None:
    assert "/etc/ca.key" not in json.dumps(problem_for(RuntimeError("/etc/ca.key")).document())
    assert "postgresql://" not in problem_for(StoreError("postgresql://u:***@db/ca is down")).detail


def test_policy_violation_names_the_field() -> None:
    document = problem_for(PolicyViolation("ip 10.0.0.1 not granted", field="ip")).document()
    assert document["field"] == "ip"
    assert set(document) == {"type", "title", "status", "detail", "field"}


def test_extensions_cannot_override_the_standard_members() -> None:
    problem = Problem(404, "not-found", "Not found", "gone", extensions={"status": 200, "type": "x"})
    assert problem.document()["status"] == 404
    assert problem.document()["type"] == PROBLEM_BASE + "not-found"


def test_response_is_problem_json() -> None:
    response = Problem(409, "already-revoked", "Already revoked", "certificate 1f").response()
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_JSON
    assert json.loads(bytes(response.body))["detail"] == "certificate 1f"


def test_validation_problem_never_echoes_the_input() -> None:
    errors = [
        {
            "type": "missing",
            "loc": ("body", "csr"),
            "msg": "Field required",
            "input": {"token": "s3cret-token"},
        },
        {"type": "extra_forbidden", "loc": ("body", "profile"), "msg": "Extra inputs", "input": "server"},
    ]
    problem = validation_problem(errors)
    assert problem.status == 422
    assert "s3cret-token" not in json.dumps(problem.document())
    assert problem.document()["errors"][0] == {"loc": ["body", "csr"], "msg": "Field required"}


def test_malformed_json_is_400() -> None:
    problem = validation_problem([{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error"}])
    assert (problem.status, problem.slug) == (400, "malformed-json")


# -- the handlers on an app -------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install(app)

    @app.post("/echo")
    def echo(body: _Body) -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("the CA key is at /etc/ca.key")

    @app.get("/refused")
    def refused() -> None:
        raise PolicyViolation("no", field="dns")

    return TestClient(app, raise_server_exceptions=False)


def _problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    document: dict[str, Any] = response.json()
    assert document["type"] == PROBLEM_BASE + slug
    return document


def test_app_answers_every_error_with_a_problem(client: TestClient) -> None:
    _problem(client.get("/nowhere"), 404, "not-found")
    _problem(client.get("/echo"), 405, "method-not-allowed")
    _problem(
        client.post("/echo", content=b"{", headers={"content-type": "application/json"}),
        400,
        "malformed-json",
    )
    document = _problem(client.post("/echo", json={"token": "t0k3n", "more": 1}), 422, "invalid-request")
    assert "t0k3n" not in json.dumps(document)
    assert _problem(client.get("/refused"), 403, "policy-violation")["field"] == "dns"
    boom = _problem(client.get("/boom"), 500, "internal-error")
    assert "/etc/ca.key" not in json.dumps(boom)


# -- the CA's default policy ------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.parse(default_policy_text("example.org"), source="policy.toml")


ADMIN = Subject("spiffe://example.org/certwright/admin", (ADMIN_ROLE,))
WORKLOAD = Subject("spiffe://example.org/ns/prod/web", ("reader",))
OUTSIDER = Subject("spiffe://other.example/web")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/tokens"),
        ("GET", "/v1/certificates"),
        ("GET", "/v1/certificates/1f"),
        ("POST", revoke_any_path(0x1F)),
        ("POST", "/v1/renew"),
        ("POST", "/v1/revoke"),
    ],
)
def test_admin_may_do_everything(policy: Policy, method: str, path: str) -> None:
    assert policy.decide(ADMIN, Request(SERVICE, method, path)).allowed


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/v1/renew", True),
        ("POST", "/v1/revoke", True),
        ("POST", "/v1/tokens", False),
        ("GET", "/v1/certificates", False),
        ("GET", "/v1/certificates/1f", False),
        ("POST", revoke_any_path(0x1F), False),
        ("GET", "/v1/renew", False),
    ],
)
def test_workloads_renew_and_revoke_only(policy: Policy, method: str, path: str, allowed: bool) -> None:
    assert policy.decide(WORKLOAD, Request(SERVICE, method, path)).allowed is allowed


def test_other_trust_domains_and_services_get_nothing(policy: Policy) -> None:
    assert not policy.decide(OUTSIDER, Request(SERVICE, "POST", "/v1/renew")).allowed
    assert not policy.decide(WORKLOAD, Request("payments", "POST", "/v1/renew")).allowed


def test_admin_role_is_bound_to_its_exact_name(policy: Policy) -> None:
    near = Subject("spiffe://example.org/web", ("certwright.admins", "certwright"))
    assert not policy.decide(near, Request(SERVICE, "POST", "/v1/tokens")).allowed


def test_default_policy_refuses_a_bad_trust_domain() -> None:
    with pytest.raises(CertwrightError):
        default_policy_text('example.org"]\n[[rule]]')


# -- the body limit ---------------------------------------------------------------------------


def _run_limit(
    messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]], limit: int
) -> tuple[int, bytes]:
    """Drive BodyLimit with ``messages``; returns (status, body seen by the app or the answer)."""
    queue = list(messages)
    sent: list[dict[str, Any]] = []
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        raise AssertionError("read past the end of the body: the middleware would hang on a real server")

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/enroll", "headers": headers}
    asyncio.run(BodyLimit(app, max_body=limit)(scope, receive, send))
    status = int(sent[0]["status"])
    return status, seen[0] if seen else bytes(sent[1]["body"])


def test_body_within_the_limit_is_replayed_whole() -> None:
    chunks: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd"},
    ]
    assert _run_limit(chunks, [], 4) == (200, b"abcd")


def test_chunked_body_over_the_limit_in_its_last_message() -> None:
    chunks: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cde"},
    ]
    status, body = _run_limit(chunks, [], 4)
    assert status == 413
    assert json.loads(body)["type"] == PROBLEM_BASE + "body-too-large"


def test_declared_length_over_the_limit_refused_before_the_app() -> None:
    chunks = [{"type": "http.request", "body": b"x" * 10}]
    status, _ = _run_limit(chunks, [(b"content-length", b"10")], 4)
    assert status == 413
