"""A separate process that writes to the inventory at the same time as another one.

Run by test_store_concurrency.py as ``python store_worker.py MODE URL COUNT NAME GO_FILE
[CA_DIR]``. It opens the store, writes ``NAME.ready`` beside ``GO_FILE``, waits until the
test creates ``GO_FILE`` (so both workers start writing together), then does COUNT
transactions and prints what it wrote as JSON on one line:

``audit``  one audit event per transaction; prints the events' sequence numbers.
``crl``    one CRL number reservation per transaction; prints the numbers.
``issue``  issues a certificate from the CA in CA_DIR (``root.pem``, ``root.key``), stores
           it and audits it in one transaction, and only then "returns" it: prints the
           serials whose transaction committed.

Only certwright and the standard library: this file runs outside pytest.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certwright.clock import SystemClock
from certwright.issuance import Authority
from certwright.store import AuditKind, Store, add_certificate, append_event, open_store, reserve_crl_number
from certwright.x509.identity import SpiffeId
from certwright.x509.keys import KeyType, generate_key
from certwright.x509.profiles import BUILTIN_PROFILES, CASettings

ISSUER = b"concurrent issuer"


def wait_for(go: Path, name: str) -> None:
    (go.parent / f"{name}.ready").touch()
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the test never said go")
        time.sleep(0.005)


def pause() -> None:
    """A breath between transactions, as between requests, so the other worker gets turns.

    Without it one process can keep SQLite's lock for its whole run (the other's busy
    handler sleeps with back-off) and the test would check no interleaving at all.
    """
    time.sleep(0.002)


def audit(store: Store, count: int, name: str) -> list[int]:
    out = []
    for index in range(count):
        pause()
        with store.write() as session:
            now = datetime.datetime.now(datetime.UTC)
            event = append_event(session, kind=AuditKind.KEY, actor=name, at=now, details={"i": index})
            out.append(event.seq)
    return out


def crl(store: Store, count: int) -> list[int]:
    out = []
    for _ in range(count):
        pause()
        with store.write() as session:
            out.append(reserve_crl_number(session, ISSUER, at=datetime.datetime.now(datetime.UTC)))
    return out


def issue(store: Store, count: int, name: str, ca_dir: Path) -> list[int]:
    root = x509.load_pem_x509_certificate((ca_dir / "root.pem").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "root.key").read_bytes(), None)
    authority = Authority(
        certificate=root,
        key=key,  # type: ignore[arg-type]
        settings=CASettings(trust_domain="example.org"),
        clock=SystemClock(),
    )
    leaf = generate_key(KeyType.EC_P256).public_key()
    out = []
    for index in range(count):
        pause()
        with store.write() as session:
            identity = SpiffeId.parse(f"spiffe://example.org/{name}/{index}")
            cert = authority.issue(leaf, profile=BUILTIN_PROFILES["mtls"], identity=identity)
            now = datetime.datetime.now(datetime.UTC)
            add_certificate(session, cert, profile="mtls", requested_by=name, created_at=now)
            serial = format(cert.serial_number, "x")
            append_event(session, kind=AuditKind.ISSUED, actor=name, at=now, subject=serial)
        out.append(cert.serial_number)  # handed out only once its row has committed
    return out


def main(mode: str, url: str, count: str, name: str, go_file: str, ca_dir: str = "") -> None:
    with open_store(url) as store:
        wait_for(Path(go_file), name)
        if mode == "audit":
            result = audit(store, int(count), name)
        elif mode == "crl":
            result = crl(store, int(count))
        else:
            result = issue(store, int(count), name, Path(ca_dir))
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
