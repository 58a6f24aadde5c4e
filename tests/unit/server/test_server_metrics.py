"""Metrics (server/metrics.py) and the OCSP GET decoding of server/public.py: no sockets, no database."""

from __future__ import annotations

import base64
import urllib.parse

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from certwright.revocation.ocsp import OCSPStats
from certwright.server.metrics import Metrics
from certwright.server.public import crl_distribution_point, decode_get_request


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_issuance_is_counted_and_timed_by_kind_profile_and_outcome() -> None:
    metrics = Metrics(profiles=["mtls", "server"], process=False)
    metrics.observe_issuance("enroll", "mtls", "ok", 0.003)
    metrics.observe_issuance("enroll", "mtls", "ok", 0.2)
    metrics.observe_issuance("renew", "server", "refused", 0.001)
    found = samples(metrics)
    labels = (("kind", "enroll"), ("outcome", "ok"), ("profile", "mtls"))
    assert found[("certwright_issuance_total", labels)] == 2
    assert found[("certwright_issuance_seconds_count", labels)] == 2
    assert found[("certwright_issuance_seconds_bucket", (*labels[:1], ("le", "0.005"), *labels[1:]))] == 1
    assert found[("certwright_issuance_seconds_sum", labels)] == pytest.approx(0.203)
    renew = (("kind", "renew"), ("outcome", "refused"), ("profile", "server"))
    assert found[("certwright_issuance_total", renew)] == 1


def test_label_values_are_bounded() -> None:
    metrics = Metrics(profiles=["mtls"], process=False)
    metrics.observe_issuance("token", "chosen-by-the-caller", "ok", 0.0)
    metrics.observe_http("public", "BREW", "other", 405, 0.0)
    text = metrics.render()[0].decode()
    assert "chosen-by-the-caller" not in text and 'profile="other"' in text
    assert "BREW" not in text and 'method="other"' in text
    with pytest.raises(ValueError, match="kind"):
        metrics.observe_issuance("sign", "mtls", "ok", 0.0)
    with pytest.raises(ValueError, match="outcome"):
        metrics.observe_issuance("enroll", "mtls", "maybe", 0.0)


def test_repeated_label_sets_count_each_observation_and_bad_values_stay_refused() -> None:
    # Label sets seen are remembered with their metric children: the counts must still add
    # up, and a bad value must be refused every time, not only the first.
    metrics = Metrics(profiles=["mtls"], process=False)
    for _ in range(3):
        metrics.observe_issuance("enroll", "mtls", "ok", 0.001)
        metrics.observe_http("api", "POST", "/v1/enroll", 201, 0.001)
    metrics.observe_http("api", "POST", "/v1/enroll", 400, 0.001)
    for _ in range(2):
        with pytest.raises(ValueError, match="outcome"):
            metrics.observe_issuance("enroll", "mtls", "maybe", 0.0)
    found = samples(metrics)
    enrolled = (("kind", "enroll"), ("outcome", "ok"), ("profile", "mtls"))
    assert found[("certwright_issuance_total", enrolled)] == 3
    http = (("listener", "api"), ("method", "POST"), ("route", "/v1/enroll"))
    assert found[("certwright_http_requests_total", (*http, ("status", "201")))] == 3
    assert found[("certwright_http_requests_total", (*http, ("status", "400")))] == 1
    timed = (("listener", "api"), ("route", "/v1/enroll"))
    assert found[("certwright_http_request_seconds_count", timed)] == 4


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(process=False), Metrics(process=False)
    first.observe_ocsp("good")
    assert "certwright_ocsp_responses_total" in first.render()[0].decode()
    assert 'status="good"' not in second.render()[0].decode()
    assert REGISTRY.get_sample_value("certwright_ocsp_responses_total", {"status": "good"}) is None


def test_ocsp_cache_counters_are_read_when_scraped() -> None:
    metrics = Metrics(process=False)
    stats = [OCSPStats(from_cache=0, signed=0, unsuccessful=0)]
    metrics.track_ocsp_cache(lambda: stats[0])
    stats[0] = OCSPStats(from_cache=41, signed=3, unsuccessful=1)
    found = samples(metrics)
    assert found[("certwright_ocsp_cache_hits_total", ())] == 41
    assert found[("certwright_ocsp_signatures_total", ())] == 3


def test_render_negotiates_openmetrics() -> None:
    metrics = Metrics(process=False)
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    assert metrics.render()[1].startswith("text/plain")


REQUEST = bytes(range(256)) * 2  # every byte value: the base64 has '+', '/' and padding


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(REQUEST).decode(),
        urllib.parse.quote(base64.b64encode(REQUEST).decode(), safe=""),
        base64.urlsafe_b64encode(REQUEST).decode().rstrip("="),
        base64.b64encode(REQUEST).decode().replace("+", " "),
    ],
    ids=["standard", "percent-encoded-twice", "base64url-unpadded", "plus-as-space"],
)
def test_get_requests_decode_from_every_encoding(text: str) -> None:
    assert decode_get_request(text) == REQUEST


@pytest.mark.parametrize("text", ["", "not*base64", "A", "QUJD" * 10_000])
def test_get_requests_that_are_not_base64_or_too_long_are_refused(text: str) -> None:
    assert decode_get_request(text) is None


def test_crl_scope_is_the_url_the_leaves_carry() -> None:
    key_id = bytes.fromhex("ab" * 20)
    ours = f"http://ca.example:8080/crl/{'ab' * 20}.crl"
    assert crl_distribution_point([ours], key_id) == ours
    assert crl_distribution_point(["http://mirror/x.crl", ours], key_id) == ours
    assert crl_distribution_point(["http://mirror/x.crl", "http://other/y.crl"], key_id) is None
    assert crl_distribution_point([], key_id) is None
