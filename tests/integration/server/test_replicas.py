"""Two REAL ``certwright serve`` processes on one PostgreSQL database are one CA.

Each test gets a fresh database and data directory; replica A makes the directory on its
first start, replica B starts on the same directory and database. Clients talk to both
over the network exactly as workloads would (tokens and revocations with the admin's
mTLS credentials, enrolments with a token and a CSR).

* enrolments through both land in one inventory; a revocation through one replica
  reaches the other's cached OCSP answers and CRL;
* replica B is killed with SIGKILL in the middle of a load of enrolments: every
  certificate a client received is in the inventory (same DER), no serial is duplicated,
  every token is either redeemed for a certificate the inventory holds or still unused,
  and replica A goes on serving;
* CRL numbers increase across replicas, whichever publishes.

Without a PostgreSQL server the tests skip (fail under CI), as the store tests do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from certwright.store import CertificateRecord, Store, find_by_identity, get_by_serial, open_store
from support.postgres import postgres_database
from support.public_replicas import Operator, certificate_of
from support.serve_process import ServeProcess

DEADLINE = 30.0
TRUST_DOMAIN = "example.org"


@dataclass
class Cluster:
    first: ServeProcess
    second: ServeProcess
    store: Store
    operator: Operator
    issuer: x509.Certificate


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    data = tmp_path / "data"
    with postgres_database("certwright_replicas") as db_url:
        first = ServeProcess(data, "--db", db_url).start()
        try:
            second = ServeProcess(data, "--db", db_url).start()  # the directory exists now: reused
            try:
                store = open_store(db_url)
                try:
                    issuer = x509.load_pem_x509_certificate((data / "ca" / "intermediate.pem").read_bytes())
                    yield Cluster(first, second, store, Operator(data), issuer)
                finally:
                    store.close()
            finally:
                second.stop()
        finally:
            first.stop()


def identity(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/replicas/{name}"


def ocsp_status(public: str, cert: x509.Certificate, issuer: x509.Certificate) -> ocsp.OCSPCertStatus:
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    response = httpx.post(
        f"{public}/ocsp",
        content=request.public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
    )
    answer = ocsp.load_der_ocsp_response(response.content)
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL, answer.response_status
    return answer.certificate_status


def crl_of(public: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
    key_id = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    response = httpx.get(f"{public}/crl/{key_id.hex()}.crl")
    assert response.status_code == 200, response.text
    return x509.load_der_x509_crl(response.content)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_both_replicas_enrol_into_one_inventory_and_see_each_others_revocations(cluster: Cluster) -> None:
    op = cluster.operator
    received: list[x509.Certificate] = []
    with op.admin_client(cluster.first.api_url) as admin:
        for n, replica in enumerate([cluster.first, cluster.second] * 3):
            name = identity(f"both-{n}")
            with op.client(replica.api_url) as client:
                response = op.enroll(client, op.create_token(admin, name), name)
            assert response.status_code == 201, response.text
            received.append(certificate_of(response))
    assert len({c.serial_number for c in received}) == len(received)
    with cluster.store.read() as session:
        for cert in received:
            record = get_by_serial(session, cert.serial_number)
            assert record is not None and record.der == cert.public_bytes(serialization.Encoding.DER)

    # A certificate enrolled through B, revoked through B: A's cached "good" must turn.
    via_b = received[1]
    assert ocsp_status(cluster.first.http_url, via_b, cluster.issuer) is ocsp.OCSPCertStatus.GOOD
    assert ocsp_status(cluster.first.http_url, via_b, cluster.issuer) is ocsp.OCSPCertStatus.GOOD  # cached
    with op.admin_client(cluster.second.api_url) as admin_b:
        op.revoke(admin_b, via_b.serial_number)
    wait_for(
        lambda: ocsp_status(cluster.first.http_url, via_b, cluster.issuer) is ocsp.OCSPCertStatus.REVOKED,
        "replica A's OCSP to report the revocation made through replica B",
    )
    assert crl_of(cluster.first.http_url, cluster.issuer).get_revoked_certificate_by_serial_number(
        via_b.serial_number
    )


@dataclass
class Load:
    """What the clients of the load saw (appended from several threads; list.append is atomic)."""

    received: list[tuple[str, x509.Certificate, str]] = field(default_factory=list)  # identity, cert, replica
    burnt: list[str] = field(default_factory=list)  # tokens refused on A after B died mid-request
    failures: list[str] = field(default_factory=list)
    after_kill_on_first: int = 0
    killed: threading.Event = field(default_factory=threading.Event)


def _client_loop(cluster: Cluster, work: list[tuple[str, str]], index: int, load: Load) -> None:
    op = cluster.operator
    with op.client(cluster.first.api_url) as on_first, op.client(cluster.second.api_url) as on_second:
        for n, (token, name) in enumerate(work):
            use_second = (n + index) % 2 == 0 and not load.killed.is_set()
            try:
                if use_second:
                    try:
                        response = op.enroll(on_second, token, name)
                    except httpx.TransportError:
                        # B died under this request: it may or may not have committed it.
                        response = op.enroll(on_first, token, name)
                        if response.status_code == 403:
                            load.burnt.append(name)
                            continue
                    else:
                        if response.status_code == 201:
                            load.received.append((name, certificate_of(response), "B"))
                            continue
                else:
                    response = op.enroll(on_first, token, name)
                if response.status_code != 201:
                    load.failures.append(f"{name}: {response.status_code} {response.text}")
                    continue
                load.received.append((name, certificate_of(response), "A"))
                if load.killed.is_set():
                    load.after_kill_on_first += 1
            except Exception as exc:  # reported by the test, with the identity
                load.failures.append(f"{name}: {exc!r}")


def test_sigkill_of_one_replica_under_load_loses_no_certificate(cluster: Cluster) -> None:
    op, clients, tokens = cluster.operator, 4, 160
    with op.admin_client(cluster.first.api_url) as admin:
        work = [(op.create_token(admin, identity(f"load-{n}")), identity(f"load-{n}")) for n in range(tokens)]
    load = Load()
    threads = [
        threading.Thread(target=_client_loop, args=(cluster, work[i::clients], i, load), daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    # In the middle of the load: once B has answered a good share, with requests in flight.
    wait_for(lambda: sum(1 for *_, r in load.received if r == "B") >= 15, "replica B to serve enrolments")
    cluster.second.kill()
    load.killed.set()
    for thread in threads:
        thread.join(DEADLINE * 4)
        assert not thread.is_alive(), "a client thread did not finish"

    assert not load.failures, "\n".join(load.failures[:10])
    assert len(load.received) + len(load.burnt) == tokens  # every token accounted for
    assert load.after_kill_on_first > 0  # the other replica goes on
    assert httpx.get(f"{cluster.first.http_url}/healthz").status_code == 200

    serials = [cert.serial_number for _, cert, _ in load.received]
    assert len(set(serials)) == len(serials)
    with cluster.store.read() as session:
        for name, cert, _ in load.received:
            record = get_by_serial(session, cert.serial_number)
            assert record is not None, f"{name}: serial {cert.serial_number:x} is not in the inventory"
            assert record.der == cert.public_bytes(serialization.Encoding.DER)
        for name in load.burnt:
            # B redeemed the token and stored the certificate, then died before answering.
            assert find_by_identity(session, name), f"{name}: token used, but no certificate stored"
        duplicated = session.execute(
            sa.select(CertificateRecord.serial)
            .group_by(CertificateRecord.serial)
            .having(sa.func.count() > 1)
        ).all()
    assert not duplicated


def test_crl_numbers_increase_across_replicas(cluster: Cluster) -> None:
    op = cluster.operator
    numbers: list[int] = []
    first, second = cluster.first.api_url, cluster.second.api_url
    with op.admin_client(first) as admin_a, op.admin_client(second) as admin_b:
        replicas = [(cluster.first, admin_a), (cluster.second, admin_b)]
        for n in range(6):
            replica, admin = replicas[n % 2]
            _, other_admin = replicas[(n + 1) % 2]
            name = identity(f"crl-{n}")
            with op.client(replica.api_url) as client:
                response = op.enroll(client, op.create_token(admin, name), name)
            assert response.status_code == 201, response.text
            cert = certificate_of(response)
            op.revoke(other_admin, cert.serial_number)  # revoked through the other replica
            crl = crl_of(replica.http_url, cluster.issuer)
            assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
            numbers.append(crl_number(crl))
    assert numbers == sorted(set(numbers)), numbers  # strictly increasing, whoever published
