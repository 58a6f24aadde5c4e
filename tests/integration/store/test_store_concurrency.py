"""Two processes writing one inventory at once (a SQLite file, or a PostgreSQL database).

Each test starts two ``store_worker.py`` processes, lets both open the store, then
releases them together. Separate processes, not threads: each has its own connection
pool, its own SQLite file handle and its own Python, as two ``certwright`` commands or two
server replicas would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization

from certwright.clock import SystemClock
from certwright.issuance import create_root
from certwright.store import AuditKind, CertificateRecord, Store, get_by_serial, verify_chain
from certwright.store.audit import iter_events
from certwright.x509.keys import KeyType, generate_key
from certwright.x509.profiles import CASettings

WORKER = Path(__file__).with_name("store_worker.py")
COUNT = 30
NAMES = ("alpha", "beta")


def run_pair(mode: str, url: str, tmp_path: Path, *extra: str) -> dict[str, list[int]]:
    """Both workers, released at the same instant; returns what each printed."""
    go = tmp_path / "go"
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(WORKER), mode, url, str(COUNT), name, str(go), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in NAMES
    }
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{name}.ready").exists() for name in NAMES):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
            break
        time.sleep(0.01)
    go.touch()
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"worker {name} failed:\n{stderr}"
        out[name] = json.loads(stdout)
    return out


def test_concurrent_audit_appends_keep_one_valid_chain(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    seqs = run_pair("audit", database_url, tmp_path)
    every = sorted(s for values in seqs.values() for s in values)
    assert every == list(range(1, 2 * COUNT + 1))  # no number given twice, none lost
    with store.read() as session:
        result = verify_chain(session)
        actors = [event.actor for event in iter_events(session)]
    assert (result.ok, result.events) == (True, 2 * COUNT), str(result)
    assert sorted(actors) == sorted(NAMES * COUNT)
    alpha, beta = seqs["alpha"], seqs["beta"]
    assert min(alpha) < max(beta) and min(beta) < max(alpha), "the workers did not overlap in time"


def test_concurrent_crl_reservations_never_repeat(store: Store, database_url: str, tmp_path: Path) -> None:
    numbers = run_pair("crl", database_url, tmp_path)
    assert sorted(n for values in numbers.values() for n in values) == list(range(1, 2 * COUNT + 1))
    for values in numbers.values():
        assert values == sorted(values)


def test_concurrent_issuers_lose_no_row_and_return_nothing_unstored(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    """The store side of "two processes issuing at once": every returned serial has its row."""
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    key = generate_key(KeyType.EC_P256)
    settings = CASettings(trust_domain="example.org")
    root = create_root(key, subject="CN=Concurrent Root", settings=settings, clock=SystemClock())
    (ca_dir / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    (ca_dir / "root.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    )
    serials = run_pair("issue", database_url, tmp_path, str(ca_dir))
    returned = [s for values in serials.values() for s in values]
    assert len(returned) == len(set(returned)) == 2 * COUNT
    with store.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(CertificateRecord)) == 2 * COUNT
        for serial in returned:
            assert get_by_serial(session, serial) is not None
        result = verify_chain(session)
        issued = [e for e in iter_events(session) if e.kind is AuditKind.ISSUED]
    assert result.ok, str(result)
    assert sorted(int(e.subject or "", 16) for e in issued) == sorted(returned)
