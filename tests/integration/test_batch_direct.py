"""`certwright sign --csr-dir` recording into the CA's own SQLite file without SQLAlchemy.

On a CA made by `certwright ca init` (no ``inventory_url``) the batch records through
:class:`~certwright.store.sqlite_batch.SQLiteBatch`; when that writer declines the file
(missing, not WAL, another schema revision) or the CA keeps its inventory elsewhere, the
batch falls back to the inventory service, which creates or migrates what it must. Either
way every certificate written to --out-dir has its row and its audit event.

Batches are small (COUNT CSRs); ``certwright.batch.CHUNK`` is lowered so that several
chunks flow through the recording loop, and --jobs 2 then signs them in forked workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import certwright.batch
from certwright.store.sqlite_batch import SQLiteBatch
from certwright.store.values import HEAD_REVISION
from certwright.store.writer_lock import WRITER_LOCK_SUFFIX
from support.certs import write_csr, write_tampered_csr
from support.cli import PASSPHRASE, PASSPHRASE_ENV, TRUST_DOMAIN, ZONE, Outcome, run_cli, tree
from support.locks import lock_is_free
from support.postgres import postgres_database

COUNT = 10
SMALL_CHUNK = 4  # three chunks of COUNT
NAMES = tuple(f"svc{index:02d}" for index in range(COUNT))
CA_OWN = 2  # the rows `ca init` records: root and intermediate
BAD = "svc05"

# Runs the CLI as `certwright ARGS` and, at exit, writes whether SQLAlchemy was imported.
WRAPPER = """\
import atexit, sys
flag = sys.argv[1]
def _report():
    with open(flag, "w") as out:
        out.write(repr("sqlalchemy" in sys.modules))
atexit.register(_report)
sys.argv = ["certwright", *sys.argv[2:]]
from certwright.cli.main import main
main()
"""


def identity(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/direct/{name}"


@pytest.fixture(scope="module")
def csr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("direct") / "in"
    directory.mkdir()
    for name in NAMES:
        write_csr(directory / f"{name}.csr", uris=(identity(name),), dns=(f"{name}.{ZONE}",))
    return directory


@pytest.fixture
def ca(ca_dir: Path, tmp_path: Path) -> Path:
    """A copy of the module's CA (made by `certwright ca init`), so each test has its own inventory."""
    return Path(shutil.copytree(ca_dir, tmp_path / "ca"))


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certwright.batch, "CHUNK", SMALL_CHUNK)


@dataclass
class Spy:
    """What SQLiteBatch.open was asked and gave during a CLI run (in-process runs only)."""

    calls: list[tuple[str, bool]] = field(default_factory=list)  # (path, a batch was returned)
    wait: float | None = None  # overrides the writer wait when set

    @property
    def direct(self) -> bool:
        return len(self.calls) == 1 and self.calls[0][1]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    seen = Spy()
    original = SQLiteBatch.open

    def open_and_record(cls: type[SQLiteBatch], path: str, **options: Any) -> SQLiteBatch | None:
        if seen.wait is not None:
            options["wait"] = seen.wait
        batch = original(path, **options)
        seen.calls.append((path, batch is not None))
        return batch

    monkeypatch.setattr(SQLiteBatch, "open", classmethod(open_and_record))
    return seen


def _sign_args(ca: Path, csr_dir: Path, out: Path, *options: str) -> tuple[str | Path, ...]:
    return ("sign", "--ca", ca, "--profile", "mtls", "--csr-dir", csr_dir, "--out-dir", out, *options)


def sign_batch(ca: Path, csr_dir: Path, out: Path, *options: str) -> Outcome:
    return run_cli(*_sign_args(ca, csr_dir, out, *options))


def inventory(ca: Path) -> Path:
    return ca / "inventory.db"


def query(path: Path, statement: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(statement).fetchall()


def snapshot(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return list(connection.iterdump())


def listed(ca: Path) -> list[dict[str, Any]]:
    outcome = run_cli("list", "--ca", ca, "--json", "--all", "--limit", "1000")
    assert outcome.code == 0, outcome
    items: list[dict[str, Any]] = json.loads(outcome.stdout)["items"]
    return items


def audit(ca: Path) -> dict[str, Any]:
    outcome = run_cli("audit", "verify", "--ca", ca, "--json")
    report: dict[str, Any] = json.loads(outcome.stdout)
    assert outcome.code == (0 if report["ok"] else 1), outcome
    return report


def assert_recorded(ca: Path, out: Path, names: tuple[str, ...], *, before: int = CA_OWN) -> None:
    """Every certificate in ``out`` (and only those of ``names``) is listed and audited."""
    assert tree(out) == {f"{name}.pem" for name in names}
    items = listed(ca)
    assert len(items) == before + len(names)
    by_fingerprint = {item["fingerprint_sha256"]: item for item in items}
    for name in names:
        certificate = x509.load_pem_x509_certificate((out / f"{name}.pem").read_bytes())
        der = certificate.public_bytes(serialization.Encoding.DER)
        item = by_fingerprint.get(hashlib.sha256(der).hexdigest())
        assert item is not None, f"{name}.pem was written but not recorded"
        assert item["identity"] == identity(name) and item["profile"] == "mtls", item
    report = audit(ca)
    assert report["ok"], report
    assert report["events"] == report["head"] == before + len(names)




# --- the direct path -----------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_batch_on_the_cas_own_inventory_records_every_certificate_directly(
    ca: Path, csr_dir: Path, tmp_path: Path, spy: Spy, jobs: str
) -> None:
    out = tmp_path / "out"
    outcome = sign_batch(ca, csr_dir, out, "--jobs", jobs)
    assert outcome.code == 0, outcome
    assert outcome.stdout.strip() == f"signed {COUNT} of {COUNT} requests into {out}"
    assert spy.direct, spy.calls
    assert spy.calls[0][0] == str(inventory(ca))
    assert_recorded(ca, out, NAMES)
    # the rows as the service would have written them: actor, time, and the models' JSON forms
    rows = query(
        inventory(ca), "SELECT requested_by, roles, attributes, status FROM certificates WHERE profile='mtls'"
    )
    assert len(rows) == COUNT
    assert {row[1:] for row in rows} == {("[]", "{}", "good")}
    assert len({row[0] for row in rows}) == 1
    assert lock_is_free(inventory(ca))


def test_the_direct_path_rows_read_back_through_the_store(ca: Path, csr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert sign_batch(ca, csr_dir, out, "--jobs", "1").code == 0
    for item in listed(ca):
        if item["profile"] != "mtls":
            continue
        shown = run_cli("show", "--ca", ca, item["serial"], "--json")
        assert shown.code == 0, shown
        record = json.loads(shown.stdout)
        assert record["identity"] == item["identity"] and record["status"] == "good"
        assert record["roles"] == [] and record["attributes"] == {}


def test_a_second_batch_continues_the_ids_and_the_chain(
    ca: Path, csr_dir: Path, tmp_path: Path, spy: Spy
) -> None:
    assert sign_batch(ca, csr_dir, tmp_path / "one").code == 0
    assert sign_batch(ca, csr_dir, tmp_path / "two", "--jobs", "2").code == 0  # the same CSRs again
    assert [direct for _, direct in spy.calls] == [True, True]
    ids = [row[0] for row in query(inventory(ca), "SELECT id FROM certificates ORDER BY id")]
    assert ids == list(range(1, CA_OWN + 2 * COUNT + 1))
    report = audit(ca)
    assert report["ok"] and report["events"] == CA_OWN + 2 * COUNT, report


def _run_wrapped(tmp_path: Path, *args: str | Path) -> tuple[subprocess.CompletedProcess[str], bool]:
    flag = tmp_path / "sqlalchemy-imported"
    env = {**os.environ, PASSPHRASE_ENV: PASSPHRASE}
    process = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(flag), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert flag.is_file(), f"the wrapper did not report: {process.stderr}"
    imported = flag.read_text()
    assert imported in ("True", "False"), imported
    return process, imported == "True"


def test_the_direct_path_never_imports_sqlalchemy(ca: Path, csr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    process, imported = _run_wrapped(tmp_path, *_sign_args(ca, csr_dir, out, "--jobs", "1"))
    assert process.returncode == 0, process.stderr
    assert not imported, "the batch CLI imported SQLAlchemy on the CA's own, ready inventory"
    assert query(inventory(ca), "SELECT count(*) FROM certificates") == [(CA_OWN + COUNT,)]
    assert_recorded(ca, out, NAMES)


def test_the_fallback_does_import_sqlalchemy(ca: Path, csr_dir: Path, tmp_path: Path) -> None:
    # the control of the test above: the same wrapper sees SQLAlchemy when the service records
    with contextlib.closing(sqlite3.connect(inventory(ca))) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")
    out = tmp_path / "out"
    process, imported = _run_wrapped(tmp_path, *_sign_args(ca, csr_dir, out, "--jobs", "1"))
    assert process.returncode == 0, process.stderr
    assert imported
    assert_recorded(ca, out, NAMES)


# --- the fallback: the inventory service -----------------------------------------------------------


def _downgrade(path: Path, revision: str) -> None:
    from alembic import command

    from certwright.store import open_store
    from certwright.store.migrate import alembic_config

    with open_store(path) as store:
        immediate = store.engine.execution_options(certwright_sqlite_begin="IMMEDIATE")
        with immediate.connect() as connection:
            command.downgrade(alembic_config(connection), revision)


def test_an_inventory_at_an_older_revision_is_migrated_and_records(
    ca: Path, csr_dir: Path, tmp_path: Path, spy: Spy
) -> None:
    _downgrade(inventory(ca), "0002")
    assert query(inventory(ca), "SELECT version_num FROM alembic_version") == [("0002",)]
    out = tmp_path / "out"
    outcome = sign_batch(ca, csr_dir, out, "--jobs", "2")
    assert outcome.code == 0, outcome
    assert spy.calls == [(str(inventory(ca)), False)]  # declined: the service migrated and recorded
    assert query(inventory(ca), "SELECT version_num FROM alembic_version") == [(HEAD_REVISION,)]
    assert_recorded(ca, out, NAMES)


def test_a_missing_inventory_is_created_and_records(
    ca: Path, csr_dir: Path, tmp_path: Path, spy: Spy
) -> None:
    inventory(ca).unlink()
    out = tmp_path / "out"
    outcome = sign_batch(ca, csr_dir, out)
    assert outcome.code == 0, outcome
    assert spy.calls == [(str(inventory(ca)), False)]
    assert_recorded(ca, out, NAMES, before=0)  # a new file: the CA's own two are not in it


def test_an_inventory_not_in_wal_mode_is_switched_and_records(
    ca: Path, csr_dir: Path, tmp_path: Path, spy: Spy
) -> None:
    with contextlib.closing(sqlite3.connect(inventory(ca))) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")
    out = tmp_path / "out"
    assert sign_batch(ca, csr_dir, out).code == 0
    assert spy.calls == [(str(inventory(ca)), False)]
    assert query(inventory(ca), "PRAGMA journal_mode") == [("wal",)]
    assert_recorded(ca, out, NAMES)
    # and the next batch, on the file as the service left it, is direct again
    assert sign_batch(ca, csr_dir, tmp_path / "again").code == 0
    assert spy.calls[-1] == (str(inventory(ca)), True)


def test_an_inventory_of_a_newer_certwright_is_refused_and_nothing_is_written(
    ca: Path, csr_dir: Path, tmp_path: Path, spy: Spy
) -> None:
    with contextlib.closing(sqlite3.connect(inventory(ca))) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    before = snapshot(inventory(ca))
    out = tmp_path / "out"
    outcome = sign_batch(ca, csr_dir, out)
    assert outcome.code == 1, outcome
    assert "9999" in outcome.stderr and "newer" in outcome.stderr, outcome
    assert spy.calls == [(str(inventory(ca)), False)]
    assert snapshot(inventory(ca)) == before
    assert not out.exists()


def make_ca_with_db(directory: Path, url: str) -> Path:
    outcome = run_cli(
        "ca", "init", "--dir", directory, "--name", "Elsewhere", "--trust-domain", TRUST_DOMAIN,
        "--dns-zone", ZONE, "--db", url,
    )  # fmt: skip
    assert outcome.code == 0, outcome
    return directory


def test_an_inventory_url_to_another_sqlite_file_goes_through_the_service(
    csr_dir: Path, tmp_path: Path, spy: Spy
) -> None:
    other = tmp_path / "shared" / "inventory.db"
    other.parent.mkdir()
    ca = make_ca_with_db(tmp_path / "ca", f"sqlite:///{other}")
    assert not inventory(ca).exists()
    out = tmp_path / "out"
    outcome = sign_batch(ca, csr_dir, out, "--jobs", "2")
    assert outcome.code == 0, outcome
    assert spy.calls == []  # an inventory_url is never written directly
    assert not inventory(ca).exists()
    assert query(other, "SELECT count(*) FROM certificates") == [(CA_OWN + COUNT,)]
    assert_recorded(ca, out, NAMES)


def test_a_postgresql_inventory_goes_through_the_service(csr_dir: Path, tmp_path: Path, spy: Spy) -> None:
    with postgres_database() as url:
        ca = make_ca_with_db(tmp_path / "ca", url)
        out = tmp_path / "out"
        outcome = sign_batch(ca, csr_dir, out, "--jobs", "2")
        assert outcome.code == 0, outcome
        assert spy.calls == []
        assert_recorded(ca, out, NAMES)


# --- refusals on the direct path -------------------------------------------------------------------


def _with_bad_csr(csr_dir: Path, into: Path) -> Path:
    copy = Path(shutil.copytree(csr_dir, into))
    (copy / f"{BAD}.csr").unlink()
    write_tampered_csr(copy / f"{BAD}.csr", uri=identity(BAD))
    return copy


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_one_bad_csr_refuses_the_batch_and_records_nothing(
    ca: Path, csr_dir: Path, tmp_path: Path, spy: Spy, jobs: str
) -> None:
    bad_dir = _with_bad_csr(csr_dir, tmp_path / "in")
    before = snapshot(inventory(ca))
    out = tmp_path / "out"
    outcome = sign_batch(ca, bad_dir, out, "--jobs", jobs)
    assert outcome.code == 1, outcome
    assert f"1 of {COUNT} requests refused; nothing written" in outcome.stderr, outcome
    assert spy.direct, spy.calls
    assert snapshot(inventory(ca)) == before
    assert not out.exists(), tree(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".certwright-batch-")] == []
    assert lock_is_free(inventory(ca))
    report = audit(ca)
    assert report["ok"] and report["events"] == CA_OWN, report


def test_keep_going_records_the_good_ones(ca: Path, csr_dir: Path, tmp_path: Path, spy: Spy) -> None:
    bad_dir = _with_bad_csr(csr_dir, tmp_path / "in")
    out = tmp_path / "out"
    outcome = sign_batch(ca, bad_dir, out, "--jobs", "2", "--keep-going")
    assert outcome.code == 1, outcome
    assert outcome.stdout.strip() == f"signed {COUNT - 1} of {COUNT} requests into {out}"
    assert spy.direct, spy.calls
    assert_recorded(ca, out, tuple(name for name in NAMES if name != BAD))


def test_a_busy_writer_stops_the_batch_before_anything_is_published(
    ca: Path, csr_dir: Path, tmp_path: Path, spy: Spy
) -> None:
    spy.wait = 0.2  # instead of the 30 s a real batch waits
    before = snapshot(inventory(ca))
    fd = os.open(f"{inventory(ca)}{WRITER_LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        out = tmp_path / "out"
        outcome = sign_batch(ca, csr_dir, out, "--jobs", "2")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert outcome.code == 1, outcome
    assert "another process's writer is busy" in outcome.stderr, outcome
    assert snapshot(inventory(ca)) == before
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".certwright-batch-")] == []


def test_the_module_ca_is_made_by_ca_init(ca_dir: Path) -> None:
    # what the direct path relies on: `ca init` leaves a WAL file at this certwright's head
    assert query(inventory(ca_dir), "PRAGMA journal_mode") == [("wal",)]
    assert query(inventory(ca_dir), "SELECT version_num FROM alembic_version") == [(HEAD_REVISION,)]
    assert query(inventory(ca_dir), "SELECT count(*) FROM certificates") == [(CA_OWN,)]
