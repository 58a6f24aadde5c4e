"""The cost of one policy decision, cold and cached, for the benchmark script to call.

*Cold* is :meth:`Policy.evaluate`: no cache at all, what a new peer's first request
costs (the subject's identity is validated and every rule is tried). *Warm* is a known
peer asking for a path not seen before (the rules that apply to the peer are cached, the
decision is not). *Cached* is :meth:`Policy.decide` once the same (subject, request) has
been decided: a lookup.

Example::

    >>> from certwright.access.measure import decision_cost
    >>> cost = decision_cost(rule_count=20, number=200)
    >>> cost.allowed, cost.rules
    (True, 20)
    >>> print(cost)                                 # doctest: +SKIP
    policy decision (20 rules): cold 9.81 us, warm 4.40 us, cached 0.310 us (200 calls each)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from certwright.access.model import Request, Subject
from certwright.access.policy import Policy


@dataclass(frozen=True)
class DecisionCost:
    """Microseconds per decision, with what was measured."""

    rules: int
    number: int
    cold_us: float
    warm_us: float
    cached_us: float
    allowed: bool

    def __str__(self) -> str:
        return (
            f"policy decision ({self.rules} rules): cold {self.cold_us:.2f} us, "
            f"warm {self.warm_us:.2f} us, cached {self.cached_us:.3f} us ({self.number} calls each)"
        )


def sample_policy(rule_count: int = 50) -> Policy:
    """A policy of ``rule_count`` rules in the shape of real ones (globs, roles, paths).

    The rule that allows :func:`sample_request` for :func:`sample_subject` comes last, so
    a cold decision tries every rule before it; every tenth rule is about a role the
    subject holds, so the subject has a few candidate rules to try per request.
    """
    blocks = ["version = 1"]
    for index in range(rule_count - 1):
        if index % 10 == 0:  # a role-only rule: it applies to the sample subject
            who = 'roles = ["writer", "batch/*"]'
        else:
            who = f'identities = ["spiffe://example.org/ns/*/svc-{index}", "spiffe://example.org/svc-{index}"]'
        blocks.append(
            f"""
[[rule]]
name = "rule-{index}"
services = ["service-{index}"]
{who}
methods = ["GET", "POST"]
paths = ["/v1/service-{index}/**"]
"""
        )
    blocks.append(
        """
[[rule]]
name = "web-reads-payments"
services = ["payments"]
identities = ["spiffe://example.org/ns/*/web"]
roles = ["reader"]
methods = ["GET", "HEAD"]
paths = ["/v1/payments/*", "/v1/payments/*/items/**"]
"""
    )
    return Policy.parse("".join(blocks), source="sample.toml")


def sample_subject() -> Subject:
    return Subject("spiffe://example.org/ns/prod/web", ("reader", "writer"))


def sample_request() -> Request:
    return Request("payments", "GET", "/v1/payments/1234/items/5")


def decision_cost(
    policy: Policy | None = None,
    subject: Subject | None = None,
    request: Request | None = None,
    *,
    rule_count: int = 50,
    number: int = 20_000,
) -> DecisionCost:
    """Time ``number`` cold and ``number`` cached decisions; defaults: the samples above."""
    policy = policy if policy is not None else sample_policy(rule_count)
    subject = subject if subject is not None else sample_subject()
    request = request if request is not None else sample_request()
    allowed = policy.decide(subject, request).allowed  # warms the cache for the cached figure
    cold = _per_call_us(lambda: policy.evaluate(subject, request), number)
    cached = _per_call_us(lambda: policy.decide(subject, request), number)
    # Distinct paths (as IDs in URLs make them), made beforehand: only the decisions are timed.
    fresh = iter([Request(request.service, request.method, f"{request.path}{i}") for i in range(number)])
    warm = _per_call_us(lambda: policy.decide(subject, next(fresh)), number)
    return DecisionCost(len(policy.rules), number, cold, warm, cached, allowed)


def _per_call_us(call: Callable[[], object], number: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(number):
        call()
    return (time.perf_counter_ns() - start) / number / 1000


if __name__ == "__main__":
    print(decision_cost())
