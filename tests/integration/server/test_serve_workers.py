"""``certwright serve --workers N``: one server, several processes (the real program).

The supervisor forks N workers that each listen on the same addresses (SO_REUSEPORT);
these tests hold it to what an operator relies on: enrolments through any worker land in
one inventory and one metrics view; a second server cannot join the port; a worker that
dies is replaced; SIGTERM stops every worker and SIGKILL of the supervisor takes the
workers with it (nothing left listening); bad ``--workers`` values are refused.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certwright.store import open_store
from certwright.store.repository import get_by_serial
from support.serve_process import ServeProcess

TD = "example.org"
WORKERS = 2
DEADLINE = 30.0


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def wait_for(predicate: object, what: str, timeout: float = DEADLINE) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path / "data", "--workers", str(WORKERS)) as running:
        yield running


def _tokens(server: ServeProcess, count: int) -> list[tuple[str, str]]:
    d = server.directory
    context = ssl.create_default_context(cafile=str(d / "bundle.pem"))
    context.load_cert_chain(d / "admin.pem", d / "admin.key")
    made = []
    with httpx.Client(verify=context) as client:
        for i in range(count):
            identity = f"spiffe://{TD}/workers/{i}"
            response = client.post(f"{server.api_url}/v1/tokens", json={"identity": identity})
            assert response.status_code == 201, response.text
            made.append((identity, response.json()["token"]))
    return made


def _csr(identity: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _enroll_each_on_a_new_connection(server: ServeProcess, count: int) -> list[int]:
    """Enrol ``count`` identities, a new TCP (and TLS) connection each: the kernel spreads
    new connections across the workers' sockets."""
    context = ssl.create_default_context(cafile=str(server.directory / "bundle.pem"))
    serials = []
    for identity, token in _tokens(server, count):
        with httpx.Client(verify=context) as client:
            body = {"token": token, "csr": _csr(identity)}
            response = client.post(f"{server.api_url}/v1/enroll", json=body)
        assert response.status_code == 201, response.text
        serials.append(int(response.json()["serial"], 16))
    return serials


def _metric(body: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_workers_share_one_inventory_and_one_metrics_view(server: ServeProcess) -> None:
    workers = children(server.pid)
    assert len(workers) == WORKERS, server.output
    count = 30
    serials = _enroll_each_on_a_new_connection(server, count)

    # Every certificate a client received is in the one inventory, once.
    with open_store(server.directory / "ca" / "inventory.db") as store, store.read() as session:
        for serial in serials:
            assert get_by_serial(session, serial) is not None, f"{serial:x} not in the inventory"
    assert len(set(serials)) == count

    # Both workers did some of the work: each has its own metrics file...
    metrics_dirs = list((server.directory / "run").glob(f"metrics-{server.pid}"))
    assert len(metrics_dirs) == 1
    writers = {int(p.stem.rsplit("_", 1)[1]) for p in metrics_dirs[0].glob("counter_*.db")}
    assert writers == workers, (writers, workers)
    # ...and every scrape, whichever worker answers it, counts all of them.
    labels = 'kind="enroll",outcome="ok",profile="mtls"'
    for _ in range(6):
        with httpx.Client() as client:
            body = client.get(f"{server.http_url}/metrics").text
        assert _metric(body, "certwright_issuance_total", labels) == count
        assert _metric(body, "certwright_issuance_seconds_count", labels) == count
    assert "process_cpu_seconds_total" not in body  # one process's figures: left out with workers


def test_a_worker_that_dies_is_replaced(server: ServeProcess) -> None:
    before = children(server.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(children(server.pid) - {victim}) == WORKERS, "a replacement worker")
    assert victim not in children(server.pid)
    assert "starting it again" in "".join(server.stderr), server.output
    # The server goes on: enrolments still work, through whichever worker.
    assert len(_enroll_each_on_a_new_connection(server, 4)) == 4


def test_sigterm_stops_every_worker_and_frees_the_ports(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", "--workers", str(WORKERS)).start()
    try:
        workers = children(server.pid)
        assert len(workers) == WORKERS
        server.signal(signal.SIGTERM)
        assert server.wait() == 0, server.output
    finally:
        server.stop()
    assert not any(alive(pid) for pid in workers)
    assert "certwright: stopped" in "".join(server.stdout)
    assert not list((server.directory / "run").glob("metrics-*"))  # the run's metrics are gone
    for url in (server.api_url, server.http_url):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port_of(url)))


def test_sigkill_of_the_supervisor_takes_the_workers_with_it(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", "--workers", str(WORKERS)).start()
    try:
        workers = children(server.pid)
        assert len(workers) == WORKERS
        server.kill()
        wait_for(lambda: not any(alive(pid) for pid in workers), "the workers to die with the supervisor")
        assert refused(port_of(server.api_url)) and refused(port_of(server.http_url))
    finally:
        server.stop()
        for pid in children(server.pid):  # never leave one behind, even if the test failed
            os.kill(pid, signal.SIGKILL)


def test_another_server_cannot_join_the_workers_port(server: ServeProcess, tmp_path: Path) -> None:
    taken = server.api_url.split("//")[1]
    intruder = ServeProcess(tmp_path / "other", "--workers", str(WORKERS), listen=taken)
    assert intruder.run_to_exit() == 1, intruder.output
    assert "cannot listen on" in "".join(intruder.stderr)
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("value", ["0", "-2", "many", "65"])
def test_a_bad_worker_count_is_refused(tmp_path: Path, value: str) -> None:
    server = ServeProcess(tmp_path / "data", "--workers", value)
    assert server.run_to_exit() == 1, server.output
    assert "workers" in "".join(server.stderr)
    assert "Traceback" not in "".join(server.stderr)
    assert not (tmp_path / "data").exists()


def test_the_worker_count_comes_from_the_settings_file_too(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text("workers = 3\n")
    with ServeProcess(data) as server:
        assert len(children(server.pid)) == 3, server.output
        assert "3 worker processes" in "".join(server.stdout)


def test_sigterm_to_the_whole_group_is_one_graceful_stop(tmp_path: Path) -> None:
    """systemd (KillMode=control-group) sends SIGTERM to the supervisor and every worker;
    the supervisor passes its own on too: still one graceful stop, not an abrupt one."""
    server = ServeProcess(tmp_path / "data", "--workers", str(WORKERS)).start()
    try:
        workers = children(server.pid)
        for pid in (server.pid, *workers):
            os.kill(pid, signal.SIGTERM)
        assert server.wait() == 0, server.output
    finally:
        server.stop()
    assert "stopping now" not in server.output
    assert "Traceback" not in server.output and "CancelledError" not in server.output
    assert not any(alive(pid) for pid in workers)


def test_a_second_signal_to_the_supervisor_stops_the_workers_at_once(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", "--workers", str(WORKERS)).start()
    try:
        workers = children(server.pid)
        with socket.create_connection(("127.0.0.1", port_of(server.http_url))) as slow:
            # A first request answered proves a worker holds the connection; the second
            # will not finish by itself (its body never comes): the worker must drain it.
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert slow.recv(4096).startswith(b"HTTP/1.1 200")
            slow.sendall(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            server.signal(signal.SIGTERM)
            wait_for(lambda: "Shutting down" in server.output, "the workers to start draining")
            assert server.proc is not None and server.proc.poll() is None  # still draining
            server.signal(signal.SIGINT)
            assert server.wait(timeout=10) == 0, server.output
    finally:
        server.stop()
    assert "stopping now" in server.output
    assert not any(alive(pid) for pid in workers)
