"""The mesh example end to end: a CA, three mTLS services, a policy, allowed and denied calls.

    python examples/mesh/run.py

1. Creates a CA with certwright's CLI (``certwright ca init``) in a temporary directory and
   issues one certificate per workload (``certwright issue --identity ... --role ...``):
   the services web, payments and ledger, and three callers: gateway (the edge, in front of
   web), auditor (role ``reader``) and intruder (a valid certificate of the same CA whose
   identity the policy never mentions).
2. Starts ledger, payments and web (``services.py``), each in its own process on
   127.0.0.1 with a port the system picks, and prints the ports.
3. Makes calls as each workload with certwright's httpx client, which also checks the
   identity of the service that answers, and prints every decision with its rule or reason.
4. Stops every service, then asks ``certwright access check`` to explain two decisions
   offline, from the certificate files alone.
5. Exits 0 only if every call and every check ended exactly as expected (1 if not).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from certwright.mtls.client import IdentityMismatch, httpx_client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from services import TRUST_DOMAIN, identity, workload_files  # noqa: E402

POLICY = HERE / "policy.toml"
# Who gets a certificate, with which roles. The policy (policy.toml) says what each may do.
WORKLOADS: dict[str, tuple[str, ...]] = {
    "web": (),
    "payments": (),
    "ledger": (),
    "gateway": (),
    "auditor": ("reader",),
    "intruder": (),
}
START_TIMEOUT = 30.0
ACCESS_DENIED = "urn:certwright:problem:access-denied"
AMBIGUOUS_PATH = "urn:certwright:problem:ambiguous-path"


# --- the CA, the way an operator makes one ---------------------------------------------------------


def certwright_cli() -> list[str]:
    """The ``certwright`` command installed beside this Python (or on PATH)."""
    beside = Path(sys.executable).parent / "certwright"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("certwright")
    if found is None:
        sys.exit("certwright is not installed: pip install -e . (see the README)")
    return [found]


def make_pki(work: Path) -> Path:
    """``certwright ca init`` and one ``certwright issue`` per workload; returns the certs dir."""
    cli = certwright_cli()
    passphrase = work / "ca-passphrase"
    passphrase.write_text("mesh example CA passphrase\n")
    passphrase.chmod(0o600)
    ca, certs = work / "ca", work / "certs"
    certs.mkdir()

    def certwright(*args: str | Path) -> None:
        command = [*cli, *map(str, args), "--passphrase-file", str(passphrase)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            sys.exit(f"certwright {args[0]} failed ({done.returncode}): {done.stderr.strip()}")
        print("  $ certwright " + " ".join(str(a) for a in args))

    print("certificates:")
    certwright("ca", "init", "--dir", ca, "--name", "Mesh Example", "--trust-domain", TRUST_DOMAIN)
    for name, roles in WORKLOADS.items():
        role_args = [arg for role in roles for arg in ("--role", role)]
        certwright("issue", "--ca", ca, "--profile", "mtls", "--identity", identity(name), *role_args,
                   "--dns", f"{name}.{TRUST_DOMAIN}", "--ttl", "1h", "--out", certs / name)
    shutil.copy(ca / "bundle.pem", certs / "bundle.pem")
    return certs


# --- the services -------------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[str]
    log: Path
    url: str = ""


def start_service(name: str, certs: Path, work: Path, peers: dict[str, str]) -> Service:
    log = work / f"{name}.log"
    # Run from this directory so that decisions name the rule as "(policy.toml line N)".
    command = [sys.executable, "services.py", name, "--certs", str(certs), "--policy", POLICY.name]
    command += [f"--peer={target}={url}" for target, url in peers.items()]
    with log.open("w") as err:
        proc = subprocess.Popen(command, cwd=HERE, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, text=True)
    service = Service(name, proc, log)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "listening NAME URL", printed once the port is bound
        if not line.startswith(f"listening {name} "):
            raise RuntimeError(f"{name} did not start (exit {proc.poll()}):\n{log.read_text()}")
        service.url = line.split()[2]
        wait_until_serving(service)
    except BaseException:
        stop_service(service)
        raise
    print(f"  {name:<9} pid {proc.pid:<7} {service.url}")
    return service


def wait_until_serving(service: Service) -> None:
    """Poll with a TLS-less TCP connect until the service accepts (or died / timed out)."""
    host, port = service.url.removeprefix("https://").rsplit(":", 1)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if service.proc.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with {service.proc.returncode}:\n{service.log.read_text()}"
            )
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service.name} is not accepting after {START_TIMEOUT}s") from None
            time.sleep(0.05)


def stop_service(service: Service) -> None:
    """SIGTERM (uvicorn shuts down gracefully), then SIGKILL if it lingers."""
    if service.proc.poll() is None:
        service.proc.terminate()
        try:
            service.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(timeout=15)
    if service.proc.stdout is not None:
        service.proc.stdout.close()


@contextmanager
def running_mesh(certs: Path, work: Path) -> Iterator[dict[str, Service]]:
    """ledger, then payments (which calls ledger), then web (which calls payments)."""
    services: dict[str, Service] = {}
    try:
        print("services (127.0.0.1, ports picked by the system):")
        services["ledger"] = start_service("ledger", certs, work, {})
        services["payments"] = start_service("payments", certs, work, {"ledger": services["ledger"].url})
        services["web"] = start_service("web", certs, work, {"payments": services["payments"].url})
        yield services
    finally:
        # Stop them all before printing anything: a failing print must not leave one running.
        for service in reversed(services.values()):
            stop_service(service)
        for service in reversed(services.values()):
            print(f"stopped {service.name} (pid {service.proc.pid})")


# --- the calls ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """``caller`` calls ``method path`` on ``target``; ``expect`` is how it must end.

    ``expect``: ``allow:RULE`` (2xx, let in by that policy rule), ``deny`` (403 from the
    policy), ``ambiguous`` (400: a path that could be read two ways), or ``client-refuses``
    (certwright's client rejects the server's identity before sending anything).
    ``dial`` is the service whose port is dialled (default: ``target``).
    """

    caller: str
    target: str
    method: str
    path: str
    expect: str
    why: str
    body: dict[str, Any] | None = None
    dial: str | None = None


CALLS: Sequence[Call] = (
    Call("gateway", "web", "POST", "/checkout", "allow:gateway-checks-out",
         "a checkout: gateway -> web -> payments -> ledger", {"order": "A-1001", "amount": 4200}),
    Call("web", "payments", "GET", "/v1/payments/charges/1", "allow:web-uses-payments",
         "web looks up the charge it made"),
    Call("web", "payments", "POST", "/v1/payments/charges", "allow:web-uses-payments",
         "web charges a second order directly", {"order": "A-1002", "amount": 990}),
    Call("payments", "ledger", "POST", "/v1/entries", "allow:payments-writes-ledger",
         "payments books an adjustment", {"charge": None, "amount": -10}),
    Call("auditor", "ledger", "GET", "/v1/entries", "allow:readers-read",
         "the reader role may read the ledger"),
    Call("auditor", "payments", "GET", "/v1/payments/charges/2", "allow:readers-read",
         "the reader role may read charges"),
    Call("web", "ledger", "POST", "/v1/entries", "deny",
         "web may not call ledger at all", {"charge": None, "amount": 1_000_000}),
    Call("web", "ledger", "GET", "/v1/entries", "deny", "not even to read"),
    Call("web", "payments", "DELETE", "/v1/payments/charges/1", "deny",
         "wrong method: web may GET and POST on payments, not DELETE"),
    Call("web", "payments", "GET", "/v1/admin/settings", "deny",
         "path outside web's glob /v1/payments/**"),
    Call("auditor", "ledger", "POST", "/v1/entries", "deny",
         "the reader role may GET only", {"charge": None, "amount": 1}),
    Call("intruder", "payments", "GET", "/v1/payments/charges/1", "deny",
         "a valid certificate of this CA, but an identity the policy does not name"),
    Call("gateway", "payments", "POST", "/v1/payments/charges", "deny",
         "the gateway may reach web only", {"order": "X", "amount": 1}),
    Call("web", "payments", "GET", "/v1/payments/%2e%2e/admin/settings", "ambiguous",
         "an encoded dot segment: refused before any decision, never resolved"),
    Call("web", "payments", "GET", "/v1/payments/charges/1", "client-refuses",
         "web dials ledger's port believing it is payments: the client checks who answered",
         dial="ledger"),
)


@dataclass
class Outcome:
    kind: str  # allow, deny, ambiguous, client-refuses, error
    status: int | None
    detail: str
    body: dict[str, Any] = field(default_factory=dict)


def make_call(call: Call, certs: Path, services: dict[str, Service]) -> Outcome:
    url = services[call.dial or call.target].url + call.path
    files = workload_files(certs, call.caller)
    try:
        # The client presents the caller's certificate and expects the target's identity.
        with httpx_client(files, expect=identity(call.target), timeout=10.0) as client:
            response = client.request(call.method, httpx.URL(url), json=call.body)
    except IdentityMismatch as exc:
        return Outcome("client-refuses", None, str(exc))
    except httpx.HTTPError as exc:
        return Outcome("error", None, f"{type(exc).__name__}: {exc}")
    try:
        body = response.json()
    except json.JSONDecodeError:
        body = {"text": response.text}
    if response.is_success:
        return Outcome("allow", response.status_code, f"rule {body.get('rule')}", body)
    problem = body.get("type")
    if response.status_code == 403 and problem == ACCESS_DENIED:
        return Outcome("deny", 403, body.get("detail", ""), body)
    if response.status_code == 400 and problem == AMBIGUOUS_PATH:
        return Outcome("ambiguous", 400, body.get("detail", ""), body)
    return Outcome("error", response.status_code, json.dumps(body)[:300], body)


def as_expected(call: Call, outcome: Outcome) -> bool:
    kind, _, rule = call.expect.partition(":")
    if outcome.kind != kind:
        return False
    return not rule or str(outcome.body.get("rule", "")).startswith(f"{rule} (")


def hops(body: dict[str, Any], depth: int = 1) -> Iterator[str]:
    """The downstream calls a service made for us (web -> payments -> ledger), as lines."""
    for key in ("payments", "ledger"):
        hop = body.get(key)
        if isinstance(hop, dict) and "caller" in hop:
            verdict = f"rule {hop.get('rule')}" if hop.get("rule") else hop.get("detail", "")
            yield f"{'    ' * depth}  -> {hop['caller'].rsplit('/', 1)[1]} -> {key}: " \
                  f"HTTP {hop.get('status')}, {verdict}"
            yield from hops(hop, depth + 1)


LABELS = {"allow": "ALLOWED", "deny": "DENIED", "ambiguous": "REFUSED", "client-refuses": "CLIENT REFUSED",
          "error": "ERROR"}


def run_calls(certs: Path, services: dict[str, Service]) -> int:
    """Make every call, print its decision; returns how many did not end as expected."""
    print("calls:")
    failures = 0
    for number, call in enumerate(CALLS, 1):
        outcome = make_call(call, certs, services)
        ok = as_expected(call, outcome)
        failures += not ok
        status = f"HTTP {outcome.status}" if outcome.status else "no request sent"
        print(f"{number:>3}. {LABELS[outcome.kind]:<14} {call.caller} -> {call.target}  "
              f"{call.method} {call.path}  [{status}]")
        print(f"       why: {call.why}")
        print(f"       {'reason' if outcome.kind != 'allow' else 'by'}: {outcome.detail}")
        for line in hops(outcome.body):
            print(f"     {line}")
        if call.target == "ledger" and call.method == "GET" and outcome.kind == "allow":
            print(f"       ledger holds {len(outcome.body.get('entries', []))} entries")
        print(f"       {'as expected' if ok else 'UNEXPECTED: expected ' + call.expect}")
    return failures


# `certwright access check` explains a decision offline, from the certificate file alone:
# (caller, service, method, path, expected exit status: 0 allowed, 1 denied).
CHECKS: Sequence[tuple[str, str, str, str, int]] = (
    ("auditor", "ledger", "GET", "/v1/entries", 0),
    ("web", "ledger", "POST", "/v1/entries", 1),
)


def run_checks(certs: Path) -> int:
    """Ask ``certwright access check`` about a few requests; returns how many were unexpected."""
    print("offline explanations (certwright access check):")
    failures = 0
    for caller, service, method, path, expected in CHECKS:
        args = ["access", "check", "--policy", POLICY.name, "--cert", f"{certs / caller}.chain.pem",
                "--bundle", str(certs / "bundle.pem"), "--service", service,
                "--method", method, "--path", path]
        done = subprocess.run([*certwright_cli(), *args], capture_output=True, text=True, check=False,
                              timeout=120, cwd=HERE)
        ok = done.returncode == expected
        failures += not ok
        print(f"  $ certwright access check --cert {caller}.chain.pem --service {service} "
              f"--method {method} --path {path}    (exit {done.returncode})")
        for line in (done.stdout + done.stderr).strip().splitlines():
            print(f"      {line}")
        print(f"      {'as expected' if ok else f'UNEXPECTED: expected exit {expected}'}")
    return failures


def main() -> int:
    keep = os.environ.get("MESH_KEEP_DIR")  # set it to look at the certificates and logs afterwards
    work = Path(tempfile.mkdtemp(prefix="certwright-mesh-"))
    failures = 0
    try:
        certs = make_pki(work)
        with running_mesh(certs, work) as services:
            failures = run_calls(certs, services)
        failures += run_checks(certs)
        if failures:
            for name in ("ledger", "payments", "web"):
                print(f"--- {name} log ---\n{(work / f'{name}.log').read_text()}", file=sys.stderr)
    finally:
        if keep:
            print(f"files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    total = len(CALLS) + len(CHECKS)
    if failures:
        print(f"FAILED: {failures} of {total} decisions were not the expected ones")
        return 1
    print(f"OK: all {len(CALLS)} calls ended as expected "
          f"({sum(c.expect.startswith('allow') for c in CALLS)} allowed, "
          f"{sum(not c.expect.startswith('allow') for c in CALLS)} refused), "
          f"and the {len(CHECKS)} offline explanations agree")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
