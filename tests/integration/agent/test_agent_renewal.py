"""``certwright agent`` against the real ``certwright serve``, with 20-second certificates.

A TLS service serves the agent's files the whole time (reloading them when they change)
and a prober handshakes with it every 200 ms: the service must always present a valid
certificate, through many renewals and through a CA outage across a renewal window.
"""

from __future__ import annotations

import datetime
import itertools
import json
import time
from pathlib import Path

from certwright.agent.layout import CERT, CredentialDir
from support.agent_procs import (
    WEB,
    AgentProcess,
    Service,
    enroll,
    make_short_ca,
    make_token,
    run_agent,
    wait_until,
)
from support.serve_process import ServeProcess


def watch(service: Service, seconds: float, *, until: object = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        service.probe()
        if callable(until) and until():
            return
        time.sleep(0.2)


def test_renews_before_expiry_many_times_in_a_row(
    server: ServeProcess, ca_data: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "web"
    enroll(server, ca_data, workdir)
    reloads = tmp_path / "reloads"
    health = tmp_path / "health.json"
    args = ("--reload-cmd", f"echo x >> {reloads}", "--health-file", health, "--log-format", "json")
    with (
        AgentProcess(workdir, server.api_url, *args, log=tmp_path / "agent.log"),
        Service(workdir, ca_data / "bundle.pem") as service,
    ):
        watch(service, 120, until=lambda: len(service.serials()) >= 6)
    log = (tmp_path / "agent.log").read_text()
    assert len(service.serials()) >= 6, log
    assert not service.expired_observations()
    assert not service.failures, service.failures
    renewed = [json.loads(line) for line in log.splitlines() if '"event": "renewed"' in line]
    assert len(renewed) >= 5 and reloads.read_text().count("x") >= 5
    # Each successor reached the service well before its predecessor expired (renewal at
    # 56-67 % of 20 s leaves about 7 s; the service reloads within 0.1 s).
    first_seen: dict[int, datetime.datetime] = {}
    for at, certificate in service.observed:
        first_seen.setdefault(certificate.serial_number, at)
    by_serial = {c.serial_number: c for _, c in service.observed}
    serials = service.serials()
    for previous, following in itertools.pairwise(serials):
        margin = by_serial[previous].not_valid_after_utc - first_seen[following]
        assert margin > datetime.timedelta(seconds=3), (previous, following, margin)
    document = json.loads(health.read_text())
    assert document["status"] == "ok" and document["identity"] == WEB


def test_ca_down_through_the_renewal_window_then_back(tmp_path: Path) -> None:
    # A CA of its own: this test stops it, and restarts it on the same port.
    data = make_short_ca(tmp_path / "data")
    workdir = tmp_path / "web"
    health = tmp_path / "health.json"
    log = tmp_path / "agent.log"
    with ServeProcess(data) as server:
        enroll(server, data, workdir)
    port = server.api_url.rsplit(":", 1)[1]
    back = ServeProcess(data, listen=f"127.0.0.1:{port}")
    try:
        back.start()
        with (
            AgentProcess(workdir, back.api_url, "--health-file", health, log=log),
            Service(workdir, data / "bundle.pem") as service,
        ):
            wait_until(health.exists, timeout=30, what="the health file")
            first = CredentialDir(workdir).load()
            back.stop()  # the CA goes down before the renewal is due...
            due = datetime.datetime.fromisoformat(json.loads(health.read_text())["next_renewal"])
            now = datetime.datetime.now(datetime.UTC)
            # ...stays down through the renewal time and a little beyond...
            watch(service, (due - now).total_seconds() + 2.0)
            assert CredentialDir(workdir).load().certificate == first.certificate
            assert json.loads(health.read_text())["status"] == "degraded"
            back = ServeProcess(data, listen=f"127.0.0.1:{port}")
            back.start()  # ...and comes back in time (the certificate has seconds left).
            assert datetime.datetime.now(datetime.UTC) < first.not_after
            watch(
                service, 30,
                until=lambda: CredentialDir(workdir).load().certificate != first.certificate,
            )  # fmt: skip
            watch(service, 2)
    finally:
        back.stop()
    assert CredentialDir(workdir).load().certificate != first.certificate, log.read_text()
    assert not service.expired_observations()
    assert not service.failures, service.failures
    assert "cannot reach the CA" in log.read_text()


def test_deleted_or_corrupted_certificate(server: ServeProcess, ca_data: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "web"
    enroll(server, ca_data, workdir)
    for damage in ("delete", "corrupt"):
        if damage == "delete":
            (workdir / CERT).unlink()
        else:
            (workdir / CERT).write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        reported = run_agent(workdir, server.api_url, "--once")
        assert reported.returncode == 1
        assert "cert.pem" in reported.stderr and "--token-file" in reported.stderr
        token = tmp_path / f"{damage}.token"
        token.write_text(make_token(server, ca_data, WEB))
        repaired = run_agent(workdir, server.api_url, "--once", "--token-file", token)
        assert repaired.returncode == 0, repaired.stderr
        creds = CredentialDir(workdir).load()
        assert str(creds.identity) == WEB
        assert datetime.datetime.now(datetime.UTC) < creds.not_after


def test_once_exit_codes(server: ServeProcess, ca_data: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "web"
    enroll(server, ca_data, workdir)
    before = CredentialDir(workdir).load()
    not_due = run_agent(workdir, server.api_url, "--once")
    assert not_due.returncode == 0, not_due.stderr
    assert CredentialDir(workdir).load().certificate == before.certificate
    forced = run_agent(workdir, server.api_url, "--once", "--renew-at", "0")
    assert forced.returncode == 0, forced.stderr
    assert CredentialDir(workdir).load().certificate != before.certificate
    # The CA must be the CA: a server with another SPIFFE ID gets no request at all.
    impostor = run_agent(
        workdir, server.api_url, "--once", "--renew-at", "0", "--server-identity", "spiffe://example.org/web"
    )
    assert impostor.returncode == 1
    assert "is not the CA" in impostor.stderr
    unreachable = run_agent(workdir, "https://127.0.0.1:1", "--once", "--renew-at", "0")
    assert unreachable.returncode == 1
    assert "cannot reach the CA" in unreachable.stderr
