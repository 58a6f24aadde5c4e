"""The API's direct path for ``POST /v1/enroll`` and ``POST /v1/renew``, in process.

:func:`~certwright.server.api.create_api` answers well-formed enrol and renew requests
without FastAPI (``_Direct``) and hands every other request to the FastAPI app. These tests
hold it to that: each malformed body gets exactly the answer the FastAPI app alone gives
(status, headers that matter, document), a well-formed one the same fields FastAPI's
response model has, and errors the same problem documents (with their headers), while
metrics still see the route template. One CA and inventory (SQLite) per module; the app
is driven by Starlette's TestClient, the TLS extension added by hand for renewal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from certwright.server import api as api_module
from certwright.server.api import INLINE_WRITER_WAIT, IssuedOut, create_api
from certwright.server.problems import PROBLEM_BASE, PROBLEM_JSON
from certwright.server.state import ServerState
from certwright.service.enrollment import EnrollmentService, TokenGrant
from certwright.store import StoreError
from certwright.store import session as session_module
from certwright.store.session import WRITER_LOCK_SUFFIX
from certwright.x509.identity import SpiffeId
from support.postgres import postgres_database
from support.public_server import TRUST_DOMAIN, build_state, make_ca

TD = TRUST_DOMAIN


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerState]:
    directory: Path = tmp_path_factory.mktemp("direct")
    base_url = "http://127.0.0.1:8080"
    made = build_state(make_ca(directory / "ca", base_url=base_url), base_url=base_url)
    try:
        yield made
    finally:
        made.store.close()


def _fastapi_of(app: Any) -> Any:
    """The FastAPI app behind create_api's outer layers (metrics, body limit, direct path)."""
    while not hasattr(app, "openapi"):
        app = app.app
    return app


def _csr(key: ec.EllipticCurvePrivateKey, *uris: str) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        names = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _token(state: ServerState, name: str) -> str:
    grant = TokenGrant(SpiffeId.parse(f"spiffe://{TD}/{name}"), "mtls")
    return state.enrollment.create_token(grant, ttl=datetime.timedelta(minutes=5), actor="test").secret


class _WithCertificate:
    """Adds the ASGI TLS extension with ``pem`` as the client certificate (what the adapter does)."""

    def __init__(self, app: Any, pem: str | None) -> None:
        self.app = app
        self.tls = {"client_cert_chain": (pem,) if pem else (), "client_cert_error": None}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": self.tls}}
        await self.app(scope, receive, send)


def _answer(response: Any) -> tuple[int, str, Any]:
    kind = response.headers.get("content-type", "")
    return response.status_code, kind, response.json() if "json" in kind else response.text


# -- malformed bodies: the FastAPI app's own answers ------------------------------------------

_VALID_CSR = _csr(ec.generate_private_key(ec.SECP256R1()))
_JSON = "application/json"


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


# (what, body from the endpoint's valid fields, content type)
MALFORMED: list[tuple[str, Callable[[dict[str, Any]], bytes], str | None]] = [
    ("extra field", lambda valid: _dump({**valid, "profile": "server"}), _JSON),
    ("missing csr", lambda valid: _dump({k: v for k, v in valid.items() if k != "csr"}), _JSON),
    ("csr not a string", lambda valid: _dump({**valid, "csr": 7}), _JSON),
    ("csr null", lambda valid: _dump({**valid, "csr": None}), _JSON),
    ("csr a list", lambda valid: _dump({**valid, "csr": [_VALID_CSR]}), _JSON),
    ("token too long", lambda valid: _dump({**valid, "token": "t" * 513}), _JSON),  # renew: extra field
    ("not an object", lambda valid: _dump(list(valid.values())), _JSON),
    ("malformed JSON", lambda valid: b'{"csr": ', _JSON),
    ("not UTF-8", lambda valid: b'{"csr": "\xff"}', _JSON),
    # pydantic refuses a lone surrogate in a field with a length limit (token), not in csr
    ("lone surrogate in token", lambda valid: _dump({**valid, "token": "\ud800"}), _JSON),
    ("lone surrogate in csr", lambda valid: _dump({**valid, "csr": "\ud800"}), _JSON),
    ("empty body", lambda valid: b"", _JSON),
    ("nested too deep", lambda valid: b"[" * 60000, _JSON),
    ("text/plain", lambda valid: _dump(valid), "text/plain"),
    ("no content type", lambda valid: _dump(valid), None),
]
_VALID = {"/v1/enroll": {"token": "t", "csr": _VALID_CSR}, "/v1/renew": {"csr": _VALID_CSR}}


@pytest.mark.parametrize(("what", "make", "content_type"), MALFORMED, ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("path", ["/v1/enroll", "/v1/renew"])
def test_malformed_bodies_get_fastapis_own_answer(
    state: ServerState,
    path: str,
    what: str,
    make: Callable[[dict[str, Any]], bytes],
    content_type: str | None,
) -> None:
    body = make(_VALID[path])
    headers = {"content-type": content_type} if content_type else {}
    app = create_api(state)
    # Both anonymous over "TLS": a renewal FastAPI accepts is then a 401, not a 500.
    direct, plain = _WithCertificate(app, None), _WithCertificate(_fastapi_of(app), None)
    with TestClient(direct) as with_direct, TestClient(plain) as fastapi_alone:
        expected = _answer(fastapi_alone.post(path, content=body, headers=headers))
        got = _answer(with_direct.post(path, content=body, headers=headers))
    assert got == expected
    assert got[0] in (400, 401, 422) and got[1].startswith(PROBLEM_JSON)


# -- well-formed requests ----------------------------------------------------------------------


def test_enrolment_on_the_direct_path(state: ServerState) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = {"token": _token(state, "direct/web"), "csr": _csr(key, f"spiffe://{TD}/direct/web")}
    with TestClient(create_api(state)) as client:
        response = client.post("/v1/enroll", json=body)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert list(document) == list(IssuedOut.model_fields)  # the response model's fields, in order
    IssuedOut.model_validate(document)
    certificate = x509.load_pem_x509_certificate(document["certificate"].encode())
    assert certificate.public_key() == key.public_key()
    assert document["identity"] == f"spiffe://{TD}/direct/web"
    assert state.certificates.get(certificate.serial_number) is not None
    metrics, _ = state.metrics.render()
    assert b'listener="api",method="POST",route="/v1/enroll",status="201"' in metrics
    assert b'certwright_issuance_total{kind="enroll",outcome="ok",profile="mtls"}' in metrics


def test_a_json_subtype_goes_through_fastapi_with_the_same_result(state: ServerState) -> None:
    # Not "application/json": FastAPI's route answers (it parses any +json), with the same core.
    key = ec.generate_private_key(ec.SECP256R1())
    body = json.dumps({"token": _token(state, "direct/vnd"), "csr": _csr(key)}).encode()
    with TestClient(create_api(state)) as client:
        response = client.post("/v1/enroll", content=body, headers={"content-type": "application/vnd.x+json"})
    assert response.status_code == 201, response.text
    assert list(response.json()) == list(IssuedOut.model_fields)


def test_renewal_on_the_direct_path(state: ServerState) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with TestClient(create_api(state)) as client:
        enrolled = client.post("/v1/enroll", json={"token": _token(state, "direct/renew"), "csr": _csr(key)})
    assert enrolled.status_code == 201, enrolled.text
    app = _WithCertificate(create_api(state), enrolled.json()["certificate"])
    with TestClient(app) as client:
        renewed = client.post("/v1/renew", json={"csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    assert renewed.status_code == 201, renewed.text
    assert renewed.json()["identity"] == f"spiffe://{TD}/direct/renew"
    assert renewed.json()["serial"] != enrolled.json()["serial"]
    with TestClient(_WithCertificate(create_api(state), None)) as client:
        anonymous = client.post("/v1/renew", json={"csr": _csr(ec.generate_private_key(ec.SECP256R1()))})
    assert anonymous.status_code == 401
    assert anonymous.json()["type"] == PROBLEM_BASE + "client-certificate-required"


@pytest.mark.parametrize(
    ("csr", "slug"),
    [
        ("not a PEM", "invalid-csr"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "invalid-csr"),
    ],
)
def test_refusals_on_the_direct_path_keep_the_token(state: ServerState, csr: str, slug: str) -> None:
    token = _token(state, "direct/refused")
    key = ec.generate_private_key(ec.SECP256R1())
    # A CSR whose signature does not verify: the service checks it before any database work.
    der = bytearray(x509.load_pem_x509_csr(_csr(key).encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with TestClient(create_api(state)) as client:
        for bad in (csr, forged):
            response = client.post("/v1/enroll", json={"token": token, "csr": bad})
            assert response.status_code == 400, response.text
            assert response.json()["type"] == PROBLEM_BASE + slug
        unknown = client.post("/v1/enroll", json={"token": "no-such-token", "csr": _csr(key)})
        assert unknown.status_code == 403 and unknown.json()["type"] == PROBLEM_BASE + "token-invalid"
        ok = client.post("/v1/enroll", json={"token": token, "csr": _csr(key)})
    assert ok.status_code == 201, ok.text  # the refusals consumed nothing


class _Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def prepare_enrollment(self, secret: str, csr: x509.CertificateSigningRequest, *, actor: str) -> Any:
        raise self.error


class _FailingWrite:
    """The real service, but its write transaction (record) fails."""

    def __init__(self, service: EnrollmentService, error: Exception) -> None:
        self.service = service
        self.error = error

    def prepare_enrollment(self, secret: str, csr: x509.CertificateSigningRequest, *, actor: str) -> Any:
        return self.service.prepare_enrollment(secret, csr, actor=actor)

    def record(self, pending: Any, *, writer_wait: float | None = None) -> Any:
        raise self.error


def test_a_failed_write_on_the_direct_path_is_a_503_and_keeps_the_token(state: ServerState) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = {
        "token": _token(state, "direct/write-fails"),
        "csr": _csr(key, f"spiffe://{TD}/direct/write-fails"),
    }
    failing = dataclasses.replace(
        state, enrollment=_FailingWrite(state.enrollment, StoreError("disk I/O error"))
    )  # type: ignore[arg-type]
    with TestClient(create_api(failing)) as client:
        response = client.post("/v1/enroll", json=body)
    assert response.status_code == 503 and response.json()["type"] == PROBLEM_BASE + "store-unavailable"
    assert "disk" not in response.text
    with TestClient(create_api(state)) as client:
        assert client.post("/v1/enroll", json=body).status_code == 201  # the token was not spent


def test_problem_headers_and_500s_on_the_direct_path(
    state: ServerState, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"token": "t", "csr": _csr(ec.generate_private_key(ec.SECP256R1()))}
    busy = dataclasses.replace(state, enrollment=_Failing(StoreError("database is locked")))  # type: ignore[arg-type]
    with TestClient(create_api(busy)) as client:
        response = client.post("/v1/enroll", json=body)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["type"] == PROBLEM_BASE + "store-unavailable"
    assert "locked" not in response.text
    broken = dataclasses.replace(state, enrollment=_Failing(RuntimeError("/etc/secret.key")))  # type: ignore[arg-type]
    with TestClient(create_api(broken), raise_server_exceptions=False) as client:
        response = client.post("/v1/enroll", json=body)
    assert response.status_code == 500 and response.json()["type"] == PROBLEM_BASE + "internal-error"
    assert "secret" not in response.text
    # Logged server-side, with the traceback.
    assert any(r.exc_info and "secret" in str(r.exc_info[1]) for r in caplog.records)
    metrics, _ = state.metrics.render()
    assert b'route="/v1/enroll",status="503"' in metrics and b'route="/v1/enroll",status="500"' in metrics


def test_the_openapi_document_still_describes_both_endpoints(state: ServerState) -> None:
    with TestClient(create_api(state)) as client:
        spec = client.get("/openapi.json").json()
    for path in ("/v1/enroll", "/v1/renew"):
        operation = spec["paths"][path]["post"]
        assert operation["responses"]["201"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/IssuedOut"
        }
        assert "422" in operation["responses"] and "413" in operation["responses"]
    assert set(spec["components"]["schemas"]["EnrollIn"]["properties"]) == {"token", "csr"}


def _issuance_count(state: ServerState, kind: str, outcome: str) -> float:
    metrics, _ = state.metrics.render()
    prefix = f'certwright_issuance_total{{kind="{kind}",outcome="{outcome}",profile="mtls"}} '.encode()
    line = next((ln for ln in metrics.splitlines() if ln.startswith(prefix)), None)
    return float(line[len(prefix) :]) if line is not None else 0.0


def test_an_enrolment_waits_in_the_worker_thread_when_another_process_writes(state: ServerState) -> None:
    """SQLite: the loop gives up its inline attempt while another process holds the writers'
    lock (nothing written), and the worker thread finishes the enrolment once it is free."""
    lock_path = f"{state.store.engine.url.database}{WRITER_LOCK_SUFFIX}"
    key = ec.generate_private_key(ec.SECP256R1())
    body = {"token": _token(state, "direct/busy"), "csr": _csr(key, f"spiffe://{TD}/direct/busy")}
    ok_before = _issuance_count(state, "enroll", "ok")
    errors_before = _issuance_count(state, "enroll", "error")
    fd = os.open(lock_path, os.O_RDWR)  # another open file: competes as another process would
    fcntl.flock(fd, fcntl.LOCK_EX)
    held_for = 10 * INLINE_WRITER_WAIT
    releaser = threading.Timer(held_for, lambda: (fcntl.flock(fd, fcntl.LOCK_UN), os.close(fd)))
    started = time.monotonic()
    releaser.start()
    try:
        with TestClient(create_api(state)) as client:
            response = client.post("/v1/enroll", json=body)
    finally:
        releaser.join()
    assert response.status_code == 201, response.text
    assert time.monotonic() - started >= held_for  # it did wait for the lock
    serial = int(response.json()["serial"], 16)
    assert state.certificates.get(serial) is not None
    # One outcome for one request: the abandoned inline attempt is not counted as an error.
    assert _issuance_count(state, "enroll", "ok") == ok_before + 1
    assert _issuance_count(state, "enroll", "error") == errors_before


def test_requests_arriving_while_another_process_writes_wait_in_the_loop_and_commit_together(
    state: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: while another process holds the writers' lock, the loop does not block on it:
    the prepared request waits (nothing written), the loop serves the next request, which
    joins it, and both are recorded in one transaction once the lock is free (no thread)."""
    monkeypatch.setattr(api_module, "INLINE_WRITER_WAIT", 60.0)  # never the thread, however slow the machine
    attempts: list[tuple[int, str]] = []  # (batch size, outcome) of each recording attempt
    original = EnrollmentService.record

    def record(self: EnrollmentService, pending: Any, *, writer_wait: float | None = None) -> Any:
        try:
            results = original(self, pending, writer_wait=writer_wait)
        except Exception as exc:
            attempts.append((len(pending), type(exc).__name__))
            raise
        attempts.append((len(pending), ",".join(sorted({type(r).__name__ for r in results}))))
        return results

    threads: list[int] = []
    monkeypatch.setattr(EnrollmentService, "record", record)
    monkeypatch.setattr(api_module._Recorder, "_in_thread", lambda self, batch: threads.append(len(batch)))
    names = ["direct/wait-a", "direct/wait-b"]
    bodies = [
        {
            "token": _token(state, name),
            "csr": _csr(ec.generate_private_key(ec.SECP256R1()), f"spiffe://{TD}/{name}"),
        }
        for name in names
    ]
    lock_path = f"{state.store.engine.url.database}{WRITER_LOCK_SUFFIX}"
    fd = os.open(lock_path, os.O_RDWR)  # another open file: competes as another process would
    fcntl.flock(fd, fcntl.LOCK_EX)

    async def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, attempts
            await asyncio.sleep(0.001)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_api(state))
        async with httpx.AsyncClient(transport=transport, base_url="https://ca.test") as client:
            first = asyncio.create_task(client.post("/v1/enroll", json=bodies[0]))
            await until(lambda: (1, "WriterBusy") in attempts)  # prepared, found the turn taken
            second = asyncio.create_task(client.post("/v1/enroll", json=bodies[1]))
            await until(lambda: (2, "WriterBusy") in attempts)  # joined the waiting request
            fcntl.flock(fd, fcntl.LOCK_UN)
            return list(await asyncio.gather(first, second))

    try:
        responses = asyncio.run(scenario())
    finally:
        os.close(fd)
    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    assert attempts[-1] == (2, "Enrolled")  # one transaction for both
    assert {outcome for _, outcome in attempts[:-1]} == {"WriterBusy"}  # nothing written before
    assert threads == []
    for response, name in zip(responses, names, strict=True):
        stored = state.certificates.get(int(response.json()["serial"], 16))
        assert stored is not None and stored.identity == f"spiffe://{TD}/{name}"


def test_a_writer_busy_past_the_whole_wait_is_a_503_and_keeps_the_token(
    state: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When even the worker thread's wait runs out, the answer is a problem document and
    the token stays usable (nothing was written)."""
    monkeypatch.setattr(session_module, "SQLITE_BUSY_TIMEOUT_MS", 300)
    lock_path = f"{state.store.engine.url.database}{WRITER_LOCK_SUFFIX}"
    key = ec.generate_private_key(ec.SECP256R1())
    token = _token(state, "direct/locked")
    body = {"token": token, "csr": _csr(key, f"spiffe://{TD}/direct/locked")}
    fd = os.open(lock_path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with TestClient(create_api(state), raise_server_exceptions=False) as client:
            response = client.post("/v1/enroll", json=body)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["detail"] == "the inventory database cannot be used now"  # no path leaks
    with TestClient(create_api(state)) as client:
        assert client.post("/v1/enroll", json=body).status_code == 201  # the token was not spent


@pytest.fixture(scope="module")
def pg_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerState]:
    """The same CA and API on a PostgreSQL inventory (each request run in a thread)."""
    with postgres_database() as url:
        directory: Path = tmp_path_factory.mktemp("direct-pg")
        base_url = "http://127.0.0.1:8080"
        made = build_state(make_ca(directory / "ca", base_url=base_url, db_url=url), base_url=base_url)
        try:
            yield made
        finally:
            made.store.close()


@pytest.mark.parametrize("backend", ["state", "pg_state"])
def test_enrolments_arriving_together_are_recorded_in_one_transaction(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests whose bodies are in before the loop's next turn are signed one by one and
    recorded together; each gets its own outcome (here a token used twice: one 201, one 403).
    On PostgreSQL each request is prepared and recorded in a thread of its own: the same
    outcomes, in whatever order the threads commit."""
    state: ServerState = request.getfixturevalue(backend)
    sizes: list[int] = []
    original = EnrollmentService.record

    def record(self: EnrollmentService, pending: Any, *, writer_wait: float | None = None) -> Any:
        sizes.append(len(pending))
        return original(self, pending, writer_wait=writer_wait)

    monkeypatch.setattr(EnrollmentService, "record", record)
    names = [f"direct/together{i}" for i in range(4)]
    tokens = [_token(state, name) for name in names]
    bodies = [
        {"token": token, "csr": _csr(ec.generate_private_key(ec.SECP256R1()), f"spiffe://{TD}/{name}")}
        for token, name in zip(tokens, names, strict=True)
    ]
    bodies.append({"token": tokens[0], "csr": _csr(ec.generate_private_key(ec.SECP256R1()))})

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_api(state))
        async with httpx.AsyncClient(transport=transport, base_url="https://ca.test") as client:
            return await asyncio.gather(*(client.post("/v1/enroll", json=body) for body in bodies))

    responses = asyncio.run(send_all())
    if backend == "state":
        assert max(sizes) > 1  # recorded together
    # The two requests with one token: exactly one enrols (which one is the first
    # recorded: on SQLite the first to arrive, on PostgreSQL the first thread to finish).
    shared = sorted([responses[0].status_code, responses[4].status_code])
    assert shared == [201, 403]
    assert [r.status_code for r in responses[1:4]] == [201, 201, 201]
    refused = responses[0] if responses[0].status_code == 403 else responses[4]
    assert refused.json()["detail"] == "the enrolment token is not valid"
    for response, name in zip(responses, [*names, names[0]], strict=True):
        if response.status_code == 201:
            serial = int(response.json()["serial"], 16)
            record_ = state.certificates.get(serial)
            assert record_ is not None and record_.identity == f"spiffe://{TD}/{name}"
    if backend == "state":
        assert responses[4].status_code == 403  # recorded in arrival order
