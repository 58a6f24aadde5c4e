"""Run the x509-limbo suite through certwright's ``verify_chain``.

Usage::

    python conformance/limbo.py SUITE [--verbose] [--engine auto|openssl] [--only PREFIX]
                                      [--compare-openssl]

SUITE is ``limbo.json.gz`` (or ``.json``), compiled by x509-limbo (C2SP/x509-limbo). Each
test case is mapped onto ``verify_chain``: validation_kind -> purpose,
expected_peer_name (DNS/IP) -> dns_name/ip_address, validation_time -> at,
max_chain_depth, crls. A case passes when the verdict equals expected_result.

Output: one line per failure (``--verbose`` adds skips with their reasons and the
engine tally), then exactly one summary line::

    limbo: P passed, F failed, S skipped

Exit status 0 whenever the suite ran; judging the numbers is the test's job
(tests/conformance/test_limbo.py). ``--engine openssl`` runs the OpenSSL fallback
alone on every case; ``--compare-openssl`` lists the cases where the fallback alone
would accept what ``verify_chain`` refuses (it must be none: never looser).

The skip list follows upstream's pyca-cryptography harness
(harness/pyca-cryptography/main.py in C2SP/x509-limbo), minus ``has-crl`` and the
CLIENT cases, which certwright supports. Each entry says why.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import ipaddress
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import certwright  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cryptography import x509

from certwright.errors import InvalidInputError, VerificationError
from certwright.verify.chain import (
    Purpose,
    VerifiedChain,
    verify_chain,
    verify_chain_via_openssl,
)

# Features certwright's verifier does not implement (limbo's ``features`` field).
SKIPPED_FEATURES: dict[str, str] = {
    "pedantic-public-suffix-wildcard": (
        "rejecting wildcards on public suffixes needs the PSL; like most verifiers "
        "(and cryptography), certwright does not ship it"
    ),
    "name-constraint-dn": "directoryName name constraints are not supported by cryptography",
    "pedantic-webpki-eku": "CA/B EKU corner cases beyond serverAuth/clientAuth are not checked",
    "pedantic-webpki-subscriber-key": "CA/B key rules on subscriber (leaf) keys are not enforced",
    "pedantic-rfc5280": "strict RFC 5280 readings that validators widely ignore",
    "rfc5280-incompatible-with-webpki": (
        "where CA/B relaxes RFC 5280 incompatibly, the verifier follows CA/B"
    ),
    "has-policy-constraints": "certificate policy processing (RFC 5280 6.1.4) is not supported",
}

# Single cases, with upstream's reasons: deliberate, documented divergences of
# cryptography's verifier (which certwright's primary engine is). Upstream also lists
# "webpki::forbidden-rsa-not-divisable-by-8-in-root", a misspelling that matches no case
# (the id says "divisible"), so that case runs there and here alike and fails.
SKIPPED_CASES: dict[str, str] = {
    "pathlen::self-issued-certs-pathlen": (
        "self-issued intermediates count towards path length (as in Go and webpki)"
    ),
    "pathlen::max-chain-depth-1-self-issued": (
        "self-issued intermediates count towards max depth (as in Go and webpki)"
    ),
    "rfc5280::serial::zero": "serial number zero is allowed: common trust stores contain it",
    "rfc5280::ski::root-missing-ski": "CAs without SKI are allowed (as in Go and webpki)",
    "rfc5280::ski::intermediate-missing-ski": "CAs without SKI are allowed (as in Go and webpki)",
    "rfc5280::aki::intermediate-missing-aki": (
        "intermediates without AKI are allowed (as in Go and webpki)"
    ),
    "webpki::aki::root-with-aki-ski-mismatch": (
        "root AKI/SKI mismatch is allowed (as in Go and webpki)"
    ),
    "rfc5280::ca-as-leaf": "a CA certificate is refused as a leaf (CA/B), unlike RFC 5280",
    "pathlen::validation-ignores-pathlen-in-leaf": (
        "a CA certificate is refused as a leaf (CA/B), unlike RFC 5280"
    ),
    "pathological::pathological-chain-same-subject-same-key": (
        "not fixed in cryptography's verifier yet (upstream skip)"
    ),
}

_EKU_BY_PURPOSE = {Purpose.SERVER: "serverAuth", Purpose.CLIENT: "clientAuth"}

Verifier = Callable[..., VerifiedChain]


@dataclass(frozen=True)
class Outcome:
    """How one test case went: ``status`` is passed, failed or skipped."""

    case_id: str
    status: str
    detail: str
    engine: str = ""
    accepted: bool = False


def load_cases(path: Path) -> list[dict[str, Any]]:
    """Read the suite's test cases (gzip-compressed or plain JSON)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        suite = json.load(handle)
    cases: list[dict[str, Any]] = suite["testcases"]
    return cases


def skip_reason(case: dict[str, Any]) -> str | None:
    """Why certwright does not run this case, or ``None`` to run it."""
    if case["id"] in SKIPPED_CASES:
        return SKIPPED_CASES[case["id"]]
    for feature in case["features"]:
        if feature in SKIPPED_FEATURES:
            return f"feature {feature}: {SKIPPED_FEATURES[feature]}"
    if case["signature_algorithms"]:
        return "signature algorithm selection is not a verify_chain option"
    purpose = Purpose.SERVER if case["validation_kind"] == "SERVER" else Purpose.CLIENT
    if case["extended_key_usage"] not in ([], [_EKU_BY_PURPOSE[purpose]]):
        return "only the purpose's own EKU (serverAuth/clientAuth) is supported"
    peer = case["expected_peer_name"]
    if peer is not None and peer["kind"] not in ("DNS", "IP"):
        return f"{peer['kind']} peer names are not a verify_chain option"
    return None


def run_case(case: dict[str, Any], verify: Verifier) -> Outcome:
    """Run one case and compare the verdict with ``expected_result``."""
    reason = skip_reason(case)
    if reason is not None:
        return Outcome(case["id"], "skipped", reason)
    engine: str = ""
    try:
        verified = verify(**_arguments(case))
        actual, detail, engine = "SUCCESS", "verified", verified.engine
    except (VerificationError, InvalidInputError) as exc:
        actual, detail = "FAILURE", str(exc)
    except Exception as exc:  # a crash is a harness/library bug, never a verdict
        return Outcome(case["id"], "failed", f"crashed: {type(exc).__name__}: {exc}")
    expected = case["expected_result"]
    status = "passed" if actual == expected else "failed"
    detail = f"expected {expected}, got {actual}: {detail}"
    return Outcome(case["id"], status, detail, engine, accepted=actual == "SUCCESS")


def _arguments(case: dict[str, Any]) -> dict[str, Any]:
    def certs(pems: list[str]) -> list[x509.Certificate]:
        return [x509.load_pem_x509_certificate(pem.encode()) for pem in pems]

    args: dict[str, Any] = {
        "trusted": certs(case["trusted_certs"]),
        "untrusted": certs(case["untrusted_intermediates"]),
        "purpose": Purpose.SERVER if case["validation_kind"] == "SERVER" else Purpose.CLIENT,
        "max_chain_depth": case["max_chain_depth"],
        "crls": [x509.load_pem_x509_crl(pem.encode()) for pem in case["crls"]],
    }
    leaf = x509.load_pem_x509_certificate(case["peer_certificate"].encode())
    if case["validation_time"] is not None:
        args["at"] = datetime.datetime.fromisoformat(case["validation_time"])
    peer = case["expected_peer_name"]
    if peer is not None and peer["kind"] == "DNS":
        args["dns_name"] = peer["value"]
    elif peer is not None and peer["kind"] == "IP":
        args["ip_address"] = ipaddress.ip_address(peer["value"])
    return {"leaf": leaf, **args}


def run_suite(cases: list[dict[str, Any]], verify: Verifier) -> Iterator[Outcome]:
    """Run every case in order."""
    for case in cases:
        yield run_case(case, verify)


def compare_engines(cases: list[dict[str, Any]], outcomes: list[Outcome]) -> list[str]:
    """Ids of cases the OpenSSL fallback alone accepts although verify_chain refuses.

    The fallback must never be looser than the primary engine; on limbo this list
    should be empty (cases it refuses more often are path-building limits, not risks).
    """
    looser = []
    for case, outcome in zip(cases, outcomes, strict=True):
        if outcome.status == "skipped" or outcome.accepted:
            continue
        if run_case(case, verify_chain_via_openssl).accepted:
            looser.append(case["id"])
    return looser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints failures and the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path, help="limbo.json.gz or limbo.json")
    parser.add_argument("--verbose", action="store_true", help="also list skips and engines")
    parser.add_argument("--engine", choices=("auto", "openssl"), default="auto")
    parser.add_argument("--only", default="", help="run only cases whose id starts with this")
    parser.add_argument(
        "--compare-openssl",
        action="store_true",
        help="also run the OpenSSL fallback alone where verify_chain refused, and list "
        "the cases it would accept (it must never be looser)",
    )
    args = parser.parse_args(argv)

    verify: Verifier = verify_chain if args.engine == "auto" else verify_chain_via_openssl
    cases = [c for c in load_cases(args.suite) if c["id"].startswith(args.only)]
    tally: collections.Counter[str] = collections.Counter()
    engines: collections.Counter[str] = collections.Counter()
    outcomes = list(run_suite(cases, verify))
    for outcome in outcomes:
        tally[outcome.status] += 1
        if outcome.engine:
            engines[outcome.engine] += 1
        if outcome.status == "failed" or (args.verbose and outcome.status == "skipped"):
            print(f"{outcome.status.upper()} {outcome.case_id}: {_short(outcome.detail, args)}")
    if args.verbose:
        print(f"verified by engine: {dict(engines)}")
    if args.compare_openssl:
        looser = compare_engines(cases, outcomes)
        for case_id in looser:
            print(f"LOOSER {case_id}: the OpenSSL fallback accepts what verify_chain refuses")
        print(f"openssl fallback: {len(looser)} accepted that verify_chain refused")
    print(f"limbo: {tally['passed']} passed, {tally['failed']} failed, {tally['skipped']} skipped")
    return 0


def _short(text: str, args: argparse.Namespace) -> str:
    return text if args.verbose or len(text) <= 200 else text[:197] + "..."


if __name__ == "__main__":
    sys.exit(main())
