"""x509-limbo through certwright's verify_chain (conformance/limbo.py as a subprocess).

Reference: cryptography 50.0.2's verifier with upstream's skip list scores 9,720 passed,
13 failed, 47 skipped on this suite (testdata README). certwright runs the 8 ``crl::``
cases and the 10 CLIENT cases upstream skips and passes all of them; its 13 failures
are the reference's own 13 (docs/verification.md says why each stays).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from support.env import REPO_ROOT, SHARED, require

SUITE = SHARED / "testdata" / "x509-limbo" / "limbo.json.gz"
HARNESS = REPO_ROOT / "conformance" / "limbo.py"
SUMMARY = re.compile(r"^limbo: (\d+) passed, (\d+) failed, (\d+) skipped$")

# Web-PKI rules cryptography's verifier (certwright's primary engine) does not check;
# the same 13 fail for the plain verifier. See docs/verification.md.
KNOWN_FAILURES = frozenset(
    {
        *(
            f"webpki::cn::{case}"
            for case in (
                "ipv4-hex-mismatch",
                "ipv4-leading-zeros-mismatch",
                "ipv6-uppercase-mismatch",
                "ipv6-uncompressed-mismatch",
                "ipv6-non-rfc5952-mismatch",
                "punycode-not-in-san",
                "utf8-vs-punycode-mismatch",
                "not-in-san",
                "case-mismatch",
            )
        ),
        "webpki::aki::root-with-aki-authoritycertissuer",
        "webpki::aki::root-with-aki-authoritycertserialnumber",
        "webpki::aki::root-with-aki-all-fields",
        "webpki::forbidden-rsa-not-divisible-by-8-in-root",
    }
)


def run_harness(*args: str) -> list[str]:
    """Run conformance/limbo.py on the shared suite; return its output lines."""
    require(SUITE.exists(), f"x509-limbo suite not found at {SUITE}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-W", "ignore", str(HARNESS), str(SUITE), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def summary(lines: list[str]) -> tuple[int, int, int]:
    """(passed, failed, skipped) from the harness's last line."""
    match = SUMMARY.match(lines[-1])
    assert match, f"unexpected last line: {lines[-1]!r}"
    passed, failed, skipped = (int(n) for n in match.groups())
    return passed, failed, skipped


@pytest.mark.slow
def test_limbo_score_and_fallback_never_looser() -> None:
    lines = run_harness("--compare-openssl")
    passed, failed, skipped = summary(lines)
    assert passed >= 9738, lines[-1]
    assert failed <= 13, lines[-1]
    assert passed + failed + skipped == 9780
    failures = {line.split()[1].rstrip(":") for line in lines if line.startswith("FAILED ")}
    assert failures <= KNOWN_FAILURES, sorted(failures - KNOWN_FAILURES)
    # Run alone on every case the primary refused, the OpenSSL fallback accepts none.
    assert "openssl fallback: 0 accepted that verify_chain refused" in lines, lines[-3:]


@pytest.mark.slow
def test_limbo_crl_cases_all_pass() -> None:
    assert summary(run_harness("--only", "crl::")) == (8, 0, 0)

