"""Several processes writing one inventory at once, on SQLite and on PostgreSQL (issue 3, "Must hold").

Two (or three) worker processes are started, each opens the CA and the inventory and says
"ready"; only when every one is ready are they all told "go", so their transactions
really overlap. Each prints a line for every certificate (or CRL) the service *returned*
to it, the moment it returns. Afterwards the inventory must hold every returned
certificate exactly once (same DER fingerprint), no duplicate serial, no row without a
returned certificate, and an audit chain that still verifies.

This module is also the worker: ``python test_concurrency.py SPEC`` (see :func:`worker`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy.pool import NullPool

from certwright.cadir import open_ca
from certwright.service import CertificateService, RevocationService
from certwright.store import open_store, verify_chain
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import generate_key
from support.postgres import postgres_database

TESTS = Path(__file__).resolve().parent.parent
PASSPHRASE_ENV = "CERTWRIGHT_CA_PASSPHRASE"
N = 120  # certificates per issuing worker


# -- the worker -------------------------------------------------------------------------------


def fingerprint_hex(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def worker(spec: dict[str, Any]) -> None:
    """Open the CA and inventory, say ready, wait for go, then do ``spec["mode"]`` ``spec["count"]`` times.

    Modes: ``issue`` (CertificateService.issue, one transaction each) and ``crl``
    (RevocationService.publish_crl). One JSON line per result, printed as soon as the call
    returns; an exception is printed as ``{"error": ...}`` and the worker goes on.
    """
    passphrase = os.environ[PASSPHRASE_ENV].encode()
    ca = open_ca(Path(spec["ca"]), passphrase=passphrase)
    authority = ca.require_authority()
    store = open_store(spec["db"] or ca.inventory)
    actor = f"worker:{spec['label']}"
    certificates = CertificateService(
        store=store, authority=authority, extension_oid=ca.settings.extension_oid, actor=actor
    )
    revocations = RevocationService(store=store, issuer=ca.intermediate, actor=actor)
    profile = ca.profile("mtls")
    print(json.dumps({"ready": spec["label"]}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    for i in range(spec["count"]):
        try:
            if spec["mode"] == "issue":
                identity = SpiffeId.parse(f"spiffe://example.org/conc/{spec['label']}/{i}")
                cert = certificates.issue(generate_key().public_key(), profile=profile, identity=identity)
                result: dict[str, Any] = {"serial": f"{cert.serial_number:x}", "fp": fingerprint_hex(cert)}
            else:
                published = revocations.publish_crl(authority.key)
                result = {"crl": published.number}
        except Exception as exc:  # reported to the test, which fails on any
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
    store.close()


# -- starting workers together ----------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[str]
    label: str


def start(site: Site, label: str, mode: str, count: int) -> Worker:
    spec = {"ca": str(site.ca), "db": site.url if site.backend == "postgresql" else None, "label": label}
    spec |= {"mode": mode, "count": count}
    env = {**os.environ, PASSPHRASE_ENV: PASSPHRASE, "PYTHONPATH": str(TESTS)}
    process = subprocess.Popen(
        [sys.executable, __file__, json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return Worker(process, label)


def wait_ready(workers: list[Worker]) -> None:
    for w in workers:
        assert w.process.stdout is not None
        line = w.process.stdout.readline()
        assert json.loads(line or "{}").get("ready") == w.label, (line, w.process.stderr.read())  # type: ignore[union-attr]


def run_together(workers: list[Worker], *, timeout: float = 120) -> dict[str, list[dict[str, Any]]]:
    """Release every worker at once; each one's result lines, by label."""
    wait_ready(workers)
    for w in workers:
        assert w.process.stdin is not None
        w.process.stdin.write("go\n")
        w.process.stdin.flush()
    results: dict[str, list[dict[str, Any]]] = {}
    for w in workers:
        out, err = w.process.communicate(timeout=timeout)
        assert w.process.returncode == 0, err
        results[w.label] = [json.loads(line) for line in out.splitlines() if line.strip()]
        errors = [r["error"] for r in results[w.label] if "error" in r]
        assert not errors, errors
    return results


# -- the inventories ----------------------------------------------------------------------------------

PASSPHRASE = "concurrency test passphrase"


@dataclass(frozen=True)
class Site:
    backend: str
    ca: Path
    url: str

    def rows(self) -> dict[int, list[str]]:
        """serial -> fingerprints (hex) of every stored certificate with that serial."""
        engine = sa.create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                found = connection.execute(sa.text("SELECT serial, fingerprint_sha256 FROM certificates"))
                rows: dict[int, list[str]] = collections.defaultdict(list)
                for serial, fingerprint in found:
                    rows[int.from_bytes(bytes(serial), "big")].append(bytes(fingerprint).hex())
                return rows
        finally:
            engine.dispose()

    def actors(self, after_seq: int) -> list[str]:
        """Who appended each audit event after ``after_seq``, in chain order."""
        engine = sa.create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                query = sa.text("SELECT actor FROM audit_events WHERE seq > :s ORDER BY seq")
                return [actor for (actor,) in connection.execute(query, {"s": after_seq})]
        finally:
            engine.dispose()

    def audit(self) -> Any:
        store = open_store(self.url)
        try:
            with store.read() as session:
                return verify_chain(session)
        finally:
            store.close()


def cli(*args: str | Path) -> str:
    from support.cli import run_cli

    outcome = run_cli(*args, passphrase=PASSPHRASE)
    assert outcome.code == 0, outcome
    return outcome.stdout


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with contextlib.ExitStack() as stack:
        ca = tmp_path_factory.mktemp(f"concurrency-{request.param}") / "ca"
        db: tuple[str, ...] = ()
        url = f"sqlite:///{ca / 'inventory.db'}"
        if request.param == "postgresql":
            url = stack.enter_context(postgres_database("certwright_conc"))
            cli("db", "upgrade", "--db", url)
            db = ("--db", url)
        cli("ca", "init", "--dir", ca, "--name", "Concurrency", "--trust-domain", "example.org", *db)
        yield Site(request.param, ca, url)


# -- the tests ---------------------------------------------------------------------------------------------


def test_two_processes_issuing_at_once_lose_nothing_and_duplicate_nothing(site: Site) -> None:
    before = site.rows()
    events_before = site.audit().events
    results = run_together([start(site, "a", "issue", N), start(site, "b", "issue", N)])
    returned = {r["serial"]: r["fp"] for lines in results.values() for r in lines}
    assert all(len(lines) == N for lines in results.values())
    assert len(returned) == 2 * N  # no serial handed out twice
    after = site.rows()
    assert len(after) == len(before) + 2 * N  # no lost row, no row beyond what was returned
    assert all(len(fps) == 1 for fps in after.values())  # unique serials in the store too
    for serial, fingerprint in returned.items():
        assert after[int(serial, 16)] == [fingerprint]  # every returned certificate is stored, as returned
    report = site.audit()
    assert report.ok, report
    assert report.events == events_before + 2 * N  # one issuance event per certificate, chained in order
    actors = site.actors(events_before)
    switches = sum(1 for x, y in itertools.pairwise(actors) if x != y)
    assert switches >= 3, "the workers did not overlap: the test proved nothing"


def test_concurrent_crl_numbers_are_unique_and_increasing_beside_issuance(site: Site) -> None:
    count = 25
    events_before = site.audit().events
    results = run_together(
        [start(site, "crl1", "crl", count), start(site, "crl2", "crl", count), start(site, "c", "issue", 40)]
    )
    numbers = {label: [r["crl"] for r in results[label]] for label in ("crl1", "crl2")}
    for label, mine in numbers.items():
        assert mine == sorted(mine) and len(set(mine)) == len(mine), (label, mine)  # increasing for each
    every = numbers["crl1"] + numbers["crl2"]
    assert len(set(every)) == 2 * count  # never the same number twice
    assert sorted(every) == list(range(min(every), min(every) + 2 * count))  # and none lost
    report = site.audit()
    assert report.ok, report
    assert report.events == events_before + 2 * count + 40


def test_two_sign_csr_dir_runs_at_once_record_every_certificate_they_write(
    site: Site, tmp_path: Path
) -> None:
    from support.certs import write_csr
    from support.cli import certwright_exe

    count = 40
    before = site.rows()
    processes = []
    for label in ("x", "y"):
        requests = tmp_path / f"csr-{label}"
        requests.mkdir()
        for i in range(count):
            write_csr(requests / f"{label}{i}.csr", uris=(f"spiffe://example.org/batch/{label}/{i}",))
        processes.append(
            subprocess.Popen(
                [
                    *(str(certwright_exe()), "sign", "--ca", str(site.ca), "--profile", "mtls"),
                    *("--csr-dir", str(requests), "--out-dir", str(tmp_path / f"out-{label}")),
                ],
                env={**os.environ, PASSPHRASE_ENV: PASSPHRASE},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert f"signed {count} of {count}" in out
    written = [
        x509.load_pem_x509_certificate(path.read_bytes())
        for label in ("x", "y")
        for path in sorted((tmp_path / f"out-{label}").glob("*.pem"))
    ]
    assert len(written) == 2 * count
    after = site.rows()
    assert len(after) == len(before) + 2 * count
    for cert in written:
        assert after[cert.serial_number] == [fingerprint_hex(cert)]
    assert site.audit().ok


def test_a_worker_killed_mid_run_returned_nothing_that_is_not_stored(site: Site) -> None:
    """SIGKILL a writer in the middle of its stream: each certificate it had been handed is stored."""
    before = site.rows()
    victim = start(site, "killed", "issue", 100_000)
    wait_ready([victim])
    assert victim.process.stdin is not None and victim.process.stdout is not None
    victim.process.stdin.write("go\n")
    victim.process.stdin.flush()
    handed: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(handed) < 60 and time.monotonic() < deadline:
        line = victim.process.stdout.readline()
        result = json.loads(line)
        assert "error" not in result, result
        handed[result["serial"]] = result["fp"]
    victim.process.send_signal(signal.SIGKILL)
    victim.process.communicate(timeout=30)
    after = site.rows()
    for serial, fingerprint in handed.items():
        assert after[int(serial, 16)] == [fingerprint]
    assert len(after) >= len(before) + len(handed)  # perhaps more: committed, killed before printing
    assert site.audit().ok  # the interrupted transaction left no half-appended event


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
