"""Fleet benchmark: 10,000 simulated agents renewing 24-hour certificates against one server.

Each simulated agent does what ``certwright agent`` does at a renewal, with the library's
own client (:class:`certwright.agent.HTTPTransport`): a fresh P-256 key and CSR, a NEW TLS
connection presenting its current certificate (a full mTLS handshake: agents are separate
processes on separate machines, nothing is shared between them), ``POST /v1/renew``, then
``GET /v1/bundle`` on the same connection; the answer replaces its files (in tmpfs, not
fsync-ed: the agent's disk is not the server's cost).

Phases (one ``certwright serve`` on SQLite, access log off):

1. **enrol** the fleet: a token (admin mTLS, kept alive) and an enrolment per agent;
2. **herd**: every agent renews once, all at once, ``--concurrency`` in flight (the CA back
   after an outage, or ``--renew-at 0`` everywhere): renewals/s, p50/p99, server CPU per
   renewal (from /proc, so the clients' share of the two cores does not enter it);
3. **replay**: the steady state of a fleet of 24-hour certificates, time-compressed. Each
   agent is given an issuance time in the last 24 hours and renews when
   :class:`certwright.agent.RenewalPolicy` says (2/3 of the lifetime, jitter from its
   fingerprint); the schedule is replayed at ``--speedup`` (default: offered load = half the
   herd's rate) for ``--replay-seconds``: renewals/s held, how late they started, p99.

The fleet's natural load is ``agents / mean renewal interval`` (10,000 agents at ~14.8 h:
0.19 renewals/s); the report prints the headroom beside it.

Run ``python benchmarks/bench_fleet.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchcommon import Serve, log, machine_info
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certwright.agent import HTTPTransport, RenewalPolicy
from certwright.agent.policy import jitter_fraction
from certwright.mtls.client import httpx_client
from certwright.mtls.context import TLSFiles
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import generate_key, private_key_pem, signature_hash

PASSPHRASE = "bench-fleet-passphrase"
SERVER_ID = SpiffeId.parse("spiffe://example.org/certwright/server")
LIFETIME = datetime.timedelta(hours=24)


# -- the server ------------------------------------------------------------------------------


# -- simulated agents (run in client processes) -------------------------------------------------


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _csr(key: Any) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, signature_hash(key)).public_bytes(serialization.Encoding.PEM).decode()


def _files(work: Path, index: int) -> TLSFiles:
    d = work / f"a{index}"
    return TLSFiles(d / "chain.pem", d / "key.pem", work / "bundle.pem")


def _enrol_chunk(job: tuple[str, Path, Path, list[int]]) -> list[float]:
    """Token + enrolment for each agent of the chunk (keep-alive connections)."""
    api, data, work, indices = job
    admin = TLSFiles(data / "admin.pem", data / "admin.key", data / "bundle.pem")
    transport = HTTPTransport(api)
    bundle = tuple(x509.load_pem_x509_certificates((data / "bundle.pem").read_bytes()))
    latencies = []
    with httpx_client(admin, expect=SERVER_ID, base_url=api, timeout=60) as client:
        for index in indices:
            started = time.perf_counter()
            body = {"identity": f"spiffe://example.org/fleet/a{index}", "ttl": "1h"}
            token = client.post("/v1/tokens", json=body).json()["token"]
            key = generate_key()
            csr = x509.load_pem_x509_csr(_csr(key).encode())
            issued = transport.enroll(token, csr, trust=bundle, expect=SERVER_ID)
            latencies.append(time.perf_counter() - started)
            files = _files(work, index)
            files.cert.parent.mkdir(parents=True, exist_ok=True)
            files.cert.write_bytes(_pem(issued.certificate, *issued.intermediates))
            files.key.write_bytes(private_key_pem(key))
    return latencies


def _renew(api: str, files: TLSFiles) -> float:
    key = generate_key()
    csr = x509.load_pem_x509_csr(_csr(key).encode())
    started = time.perf_counter()
    issued = HTTPTransport(api).renew(csr, files=files, expect=SERVER_ID)
    elapsed = time.perf_counter() - started
    files.cert.write_bytes(_pem(issued.certificate, *issued.intermediates))
    files.key.write_bytes(private_key_pem(key))
    return elapsed


def _renew_chunk(
    job: tuple[str, Path, list[tuple[int, float]], int, float],
) -> list[tuple[float, float, bool]]:
    """Renew each (agent, offset) no earlier than ``start + offset``; (latency, lateness, ok)."""
    api, work, schedule, threads, start = job

    def one(item: tuple[int, float]) -> tuple[float, float, bool]:
        index, offset = item
        wait = start + offset - time.time()
        if wait > 0:
            time.sleep(wait)
        late = max(0.0, time.time() - (start + offset))
        try:
            return _renew(api, _files(work, index)), late, True
        except Exception:
            return 0.0, late, False

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, schedule))


# -- phases ----------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    renewals: int
    failed: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    late_p99_ms: float
    server_cpu_ms_per_renewal: float
    offered_per_second: float | None = None


def _summary(name: str, results: list[tuple[float, float, bool]], seconds: float, cpu: float,
             offered: float | None = None) -> Phase:  # fmt: skip
    ok = [r for r in results if r[2]]
    latencies = sorted(r[0] for r in ok) or [0.0]
    lateness = sorted(r[1] for r in results) or [0.0]
    return Phase(
        name=name,
        renewals=len(ok),
        failed=len(results) - len(ok),
        seconds=round(seconds, 2),
        per_second=round(len(ok) / seconds, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 1),
        p99_ms=round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
        late_p99_ms=round(lateness[int(0.99 * (len(lateness) - 1))] * 1000, 1),
        server_cpu_ms_per_renewal=round(cpu / max(1, len(ok)) * 1000, 2),
        offered_per_second=None if offered is None else round(offered, 1),
    )


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def run_phase(
    name: str,
    server: Serve,
    work: Path,
    schedule: list[tuple[int, float]],
    args: argparse.Namespace,
    offered: float | None = None,
) -> Phase:
    threads = max(1, args.concurrency // args.procs)
    start = time.time() + 1.0  # every process ready before the first renewal is due
    cpu0 = server.cpu_seconds()
    with multiprocessing.Pool(args.procs) as pool:
        chunks = pool.map(
            _renew_chunk, [(server.api, work, c, threads, start) for c in _split(schedule, args.procs)]
        )
    seconds = time.time() - start
    results = [r for chunk in chunks for r in chunk]
    return _summary(name, results, seconds, server.cpu_seconds() - cpu0, offered)


def steady_schedule(
    agents: int, work: Path, seconds: float, speedup: float, seed: int
) -> list[tuple[int, float]]:
    """The renewals due in the next ``seconds * speedup`` simulated seconds of a steady fleet."""
    policy = RenewalPolicy()
    rng = random.Random(seed)
    window = seconds * speedup
    schedule = []
    for index in range(agents):
        pem = _files(work, index).cert.read_bytes()
        u = jitter_fraction(x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()))
        # In a steady fleet each certificate was obtained at a uniformly random point of its
        # own renewal interval ago (older ones have been renewed already).
        interval = LIFETIME.total_seconds() * (policy.renew_at - policy.jitter * u)
        due = interval - rng.uniform(0, interval)
        if due < window:
            schedule.append((index, due / speedup))
    return sorted(schedule, key=lambda item: item[1])


def natural_rate(agents: int) -> float:
    policy = RenewalPolicy()
    mean_interval = LIFETIME.total_seconds() * (policy.renew_at - policy.jitter / 2)
    return agents / mean_interval


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=base))
    server: Serve | None = None
    try:
        data, work = root / "data", root / "agents"
        work.mkdir()
        server = Serve("serve", data, None, passphrase=PASSPHRASE)
        shutil.copy(data / "bundle.pem", work / "bundle.pem")
        log(f"server {server.api}; enrolling {args.agents} agents")
        started = time.time()
        with multiprocessing.Pool(args.procs) as pool:
            chunks = pool.map(
                _enrol_chunk,
                [(server.api, data, work, c) for c in _split(list(range(args.agents)), args.procs * 4)],
            )
        enrol_seconds = time.time() - started
        enrol_latencies = sorted(x for c in chunks for x in c)
        log(f"enrolled in {enrol_seconds:.1f} s; herd: {args.agents} renewals at once")
        herd = run_phase("herd", server, work, [(i, 0.0) for i in range(args.agents)], args)
        log(f"herd: {herd.per_second}/s, p99 {herd.p99_ms} ms")
        speedup = args.speedup or (herd.per_second * args.replay_load / natural_rate(args.agents))
        schedule = steady_schedule(args.agents, work, args.replay_seconds, speedup, args.seed)
        offered = len(schedule) / args.replay_seconds
        log(
            f"replay: {len(schedule)} renewals over {args.replay_seconds} s "
            f"(x{speedup:.0f}, {offered:.1f}/s offered)"
        )
        replay = run_phase("replay", server, work, schedule, args, offered)
        return {
            "machine": machine_info(),
            "agents": args.agents,
            "lifetime_hours": LIFETIME.total_seconds() / 3600,
            "natural_rate_per_second": round(natural_rate(args.agents), 3),
            "enrol": {"agents": args.agents, "seconds": round(enrol_seconds, 1),
                      "per_second": round(args.agents / enrol_seconds, 1),
                      "p99_ms": round(enrol_latencies[int(0.99 * (len(enrol_latencies) - 1))] * 1000, 1)},
            "phases": [asdict(herd), asdict(replay)],
            "replay_speedup": round(speedup, 1),
            "headroom_vs_natural": round(herd.per_second / natural_rate(args.agents), 0),
            "concurrency": args.concurrency,
            "client_procs": args.procs,
        }  # fmt: skip
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{report['agents']} agents, {report['lifetime_hours']:.0f}-hour certificates: natural load "
        f"{report['natural_rate_per_second']} renewals/s; enrolment {report['enrol']['per_second']}/s",
        f"{'phase':8} {'renewals':>8} {'failed':>6} {'offered/s':>9} {'held/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'late p99 ms':>11} {'server CPU ms/renewal':>21}",
    ]
    for p in report["phases"]:
        offered = "-" if p["offered_per_second"] is None else str(p["offered_per_second"])
        lines.append(
            f"{p['name']:8} {p['renewals']:>8} {p['failed']:>6} {offered:>9} {p['per_second']:>7} "
            f"{p['p50_ms']:>7} {p['p99_ms']:>7} {p['late_p99_ms']:>11} {p['server_cpu_ms_per_renewal']:>21}"
        )
    lines.append(f"headroom: the herd rate is {report['headroom_vs_natural']:.0f}x the fleet's natural load")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32, help="renewals in flight at once")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--replay-seconds", type=float, default=30.0)
    parser.add_argument(
        "--replay-load", type=float, default=0.5, help="offered load as a fraction of the herd rate"
    )
    parser.add_argument(
        "--speedup", type=float, help="time compression of the replay (default: from --replay-load)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
