"""The mesh example (examples/mesh/run.py) runs end to end and every decision is the expected one.

It is run the way its README says, as a subprocess: it creates a CA with the certwright CLI,
starts three uvicorn services behind MTLSMiddleware on ports the system picks, makes the
calls and stops the services. Its exit status says whether every call ended as expected;
the lines checked here pin the decisions that matter (allowed with the rule, denied with
the reason) so that a run that "passes" for the wrong reason is caught too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support.env import REPO_ROOT

RUN = REPO_ROOT / "examples" / "mesh" / "run.py"
TIMEOUT = 300  # seconds: seven CLI calls and three service start-ups on a shared, busy machine


def run_example(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=tmp_path,  # the example must not depend on the caller's directory
    )


def test_the_mesh_example_makes_every_expected_decision(tmp_path: Path) -> None:
    proc = run_example(tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n--- stderr\n{proc.stderr}"
    summary = "OK: all 15 calls ended as expected (6 allowed, 9 refused), and the 2 offline explanations"
    assert f"{summary} agree" in out
    assert "UNEXPECTED" not in out
    # The CA and certificates come from the real CLI flow.
    assert "$ certwright ca init" in out
    assert "--identity spiffe://mesh.example/auditor --role reader" in out
    # Three services on system-picked loopback ports, each stopped at the end.
    ports = re.findall(r"^  (ledger|payments|web) +pid \d+ +https://127\.0\.0\.1:(\d+)$", out, re.M)
    assert {name for name, _ in ports} == {"ledger", "payments", "web"}, out
    assert all(int(port) > 0 for _, port in ports)
    for name in ("web", "payments", "ledger"):
        assert re.search(rf"^stopped {name} \(pid \d+\)$", out, re.M), out
    # The checkout crosses all three services, each hop allowed by its own rule.
    assert "ALLOWED        gateway -> web  POST /checkout  [HTTP 201]" in out
    assert "-> web -> payments: HTTP 201, rule web-uses-payments (policy.toml line" in out
    assert "-> payments -> ledger: HTTP 201, rule payments-writes-ledger (policy.toml line" in out
    # Denials, with the policy's reason.
    denials = {
        "web -> ledger  POST /v1/entries": "spiffe://mesh.example/web to POST /v1/entries on ledger",
        "web -> payments  DELETE /v1/payments/charges/1": "to DELETE /v1/payments/charges/1 on payments",
        "web -> payments  GET /v1/admin/settings": "to GET /v1/admin/settings on payments",
        "auditor -> ledger  POST /v1/entries": "auditor (roles: reader) to POST /v1/entries on ledger",
        "intruder -> payments  GET /v1/payments/charges/1": "spiffe://mesh.example/intruder to GET",
    }
    for call, reason in denials.items():
        block = re.search(rf"DENIED +{re.escape(call)}  \[HTTP 403\]\n(?:.*\n){{2}}", out)
        assert block is not None, f"no denial for {call}:\n{out}"
        assert reason in block.group(0) and "(default deny)" in block.group(0), block.group(0)
    assert "CLIENT REFUSED web -> payments" in out
    assert "not the expected spiffe://mesh.example/payments" in out
    # `certwright access check` explains the same policy offline, from the certificate files.
    assert "allowed by rule 'readers-read' (policy.toml line" in out
    assert "--service ledger --method POST --path /v1/entries    (exit 1)" in out
