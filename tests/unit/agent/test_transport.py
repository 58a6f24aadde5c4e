"""Reading the CA's answers: problem documents, transient or not, malformed bodies."""

from __future__ import annotations

import httpx
import pytest

from certwright.agent.transport import HTTPTransport, ServerRefused, _parse_issued
from certwright.errors import CertwrightError
from support.pki import TestPKI, _pem

PROBLEM = "application/problem+json"


def _response(status: int, body: object, content_type: str = "application/json") -> httpx.Response:
    return httpx.Response(status, json=body, headers={"content-type": content_type})


def test_problem_document_becomes_a_refusal() -> None:
    document = {
        "type": "https://certwright.dev/problems/renewal-refused",
        "title": "Renewal refused",
        "status": 403,
        "detail": "certificate 1f is revoked (keyCompromise): enrol again",
    }
    with pytest.raises(ServerRefused) as refused:
        _parse_issued(_response(403, document, PROBLEM))
    assert refused.value.problem_type.endswith("/renewal-refused")
    assert "revoked" in str(refused.value)
    assert not refused.value.transient


@pytest.mark.parametrize(
    ("status", "transient"), [(400, False), (401, False), (429, True), (500, True), (503, True)]
)
def test_only_server_trouble_is_transient(status: int, transient: bool) -> None:
    with pytest.raises(ServerRefused) as refused:
        _parse_issued(_response(status, {"title": "x", "detail": "y"}, PROBLEM))
    assert refused.value.transient is transient


def test_issued_answer_is_parsed_and_the_leaf_dropped_from_the_chain() -> None:
    pki = TestPKI.create()
    leaf = pki.leaf("spiffe://example.org/web")
    body = {
        "certificate": _pem(leaf.certificate).decode(),
        "chain": _pem(leaf.certificate, pki.intermediate).decode(),
        "serial": format(leaf.serial, "x"),
        "not_after": leaf.certificate.not_valid_after_utc.isoformat(),
        "identity": "spiffe://example.org/web",
    }
    certificate, intermediates = _parse_issued(_response(201, body))
    assert certificate == leaf.certificate
    assert intermediates == (pki.intermediate,)


@pytest.mark.parametrize("body", [{"certificate": "junk", "chain": ""}, {"chain": ""}, ["not", "a", "dict"]])
def test_malformed_answers_are_refused(body: object) -> None:
    with pytest.raises(ServerRefused, match="Malformed"):
        _parse_issued(_response(201, body))


def test_server_url_must_be_https() -> None:
    with pytest.raises(CertwrightError, match="https"):
        HTTPTransport("http://127.0.0.1:8443")
