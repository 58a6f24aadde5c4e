"""Batch signing (`certwright sign --csr-dir`) on the multi-process path, and `sign_csr_files`.

``sign_csr_files`` hands work to forked workers only when there is more than one chunk of
:data:`certwright.batch.CHUNK` (64) requests and more than one job, so every batch here
holds :data:`COUNT` (150: three chunks) CSRs and runs with ``--jobs 2``. The small-batch
behaviour (one chunk, signed in-process) is covered in test_cli_certs.py.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

import certwright.batch
from certwright.batch import CHUNK, BatchItem, BatchRequest, sign_csr_files
from certwright.cadir import open_ca
from certwright.files import read_certificate, read_certificates
from support.certs import sans_of, spki, write_csr, write_tampered_csr
from support.cli import PASSPHRASE, TRUST_DOMAIN, ZONE, Outcome, run_cli, tree

COUNT = 150
CHUNKS = -(-COUNT // CHUNK)  # 3: the multi-process path needs more than one
NAMES = tuple(f"svc{index:03d}" for index in range(COUNT))
BAD = "svc100"  # replaced by a bad request in the refusal tests; in the last chunk, signed by a worker
STAGING_PREFIX = ".certwright-batch-"
TAMPERED_REASON = "signature does not verify"
OUTSIDE_REASON = "outside this CA's trust domain"


def identity(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/batch/{name}"


def sign_batch(ca_dir: Path, csr_dir: Path, out_dir: Path, *options: str) -> Outcome:
    return run_cli(
        "sign", "--ca", ca_dir, "--profile", "mtls", "--csr-dir", csr_dir, "--out-dir", out_dir, *options
    )


def expected_files(names: tuple[str, ...] = NAMES) -> set[str]:
    return {f"{name}.pem" for name in names}


def refusal_lines(outcome: Outcome) -> list[str]:
    return [line for line in outcome.stderr.splitlines() if line.startswith("refused ")]


def staging_dirs(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(STAGING_PREFIX)]


@pytest.fixture(scope="module")
def csr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """COUNT good PEM CSRs, NAME.csr, each asking for its own identity and DNS name.

    Shared by the whole module: tests that need a bad request copy it first (:func:`with_bad_csr`).
    """
    directory = tmp_path_factory.mktemp("batch") / "in"
    directory.mkdir()
    for name in NAMES:
        write_csr(directory / f"{name}.csr", uris=(identity(name),), dns=(f"{name}.{ZONE}",))
    return directory


def with_bad_csr(csr_dir: Path, into: Path, kind: str) -> Path:
    """A copy of ``csr_dir`` in which BAD.csr is refused: a broken signature, or a foreign identity."""
    copy = Path(shutil.copytree(csr_dir, into))
    bad = copy / f"{BAD}.csr"
    if kind == "tampered":
        bad.unlink()
        write_tampered_csr(bad, uri=identity(BAD))  # DER content; the name's suffix is what counts
    else:
        assert kind == "outside"
        write_csr(bad, uris=("spiffe://evil.example/batch/svc100",), dns=(f"{BAD}.{ZONE}",))
    return bad


@dataclass(frozen=True)
class Run:
    out: Path
    outcome: Outcome
    chunk_pids: list[int]  # the process that signed each chunk


def _run_recording_pids(ca_dir: Path, csr_dir: Path, base: Path, *options: str) -> Run:
    """Run a batch, recording which process signs each chunk (``_Job.run`` is the per-chunk call).

    The workers are forked, so they inherit the patched method; each leaves a file named
    after its pid and the chunk's first request.
    """
    marks = base / "marks"
    marks.mkdir()
    original = certwright.batch._Job.run

    def recording_run(self: certwright.batch._Job, names: list[str]) -> list[str | None]:
        (marks / f"{os.getpid()}-{certwright.batch.stem(names[0])}").touch()
        return original(self, names)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(certwright.batch._Job, "run", recording_run)
        outcome = sign_batch(ca_dir, csr_dir, base / "out", *options)
    return Run(base / "out", outcome, [int(mark.name.split("-")[0]) for mark in marks.iterdir()])


@pytest.fixture(scope="module")
def parallel(ca_dir: Path, csr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The whole batch signed with --jobs 2 (and --json), into an out dir the command creates."""
    return _run_recording_pids(ca_dir, csr_dir, tmp_path_factory.mktemp("parallel"), "--jobs", "2", "--json")


@pytest.fixture(scope="module")
def serial(ca_dir: Path, csr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The same batch signed with --jobs 1 (text output)."""
    return _run_recording_pids(ca_dir, csr_dir, tmp_path_factory.mktemp("serial"), "--jobs", "1")


# --- the whole batch ---------------------------------------------------------------------------


def test_jobs_2_signs_the_chunks_in_worker_processes(parallel: Run) -> None:
    assert parallel.outcome.code == 0, parallel.outcome
    assert len(parallel.chunk_pids) == CHUNKS
    assert os.getpid() not in parallel.chunk_pids, "a chunk was signed in the parent: no workers ran"


def test_jobs_1_signs_in_process(serial: Run) -> None:
    # the control for the test above: the same spy does see the parent when there are no workers
    assert serial.outcome.code == 0, serial.outcome
    assert serial.chunk_pids == [os.getpid()] * CHUNKS


def test_parallel_batch_writes_every_certificate(parallel: Run, csr_dir: Path, ca_dir: Path) -> None:
    assert parallel.outcome.code == 0, parallel.outcome
    # tree() lists hidden entries too: equality also rules out a leftover staging directory
    assert tree(parallel.out) == expected_files()
    assert staging_dirs(parallel.out) == []
    intermediate = read_certificate(ca_dir / "intermediate.pem")
    serials = set()
    for name in NAMES:
        certs = read_certificates(parallel.out / f"{name}.pem")
        assert len(certs) == 1, name
        cert = certs[0]
        assert sans_of(cert).get_values_for_type(x509.UniformResourceIdentifier) == [identity(name)], name
        assert sans_of(cert).get_values_for_type(x509.DNSName) == [f"{name}.{ZONE}"], name
        request = x509.load_pem_x509_csr((csr_dir / f"{name}.csr").read_bytes())
        assert spki(cert.public_key()) == spki(request.public_key()), f"{name}: not the CSR's key"
        cert.verify_directly_issued_by(intermediate)
        serials.add(cert.serial_number)
    assert len(serials) == COUNT, "forked workers issued duplicate serial numbers"


def test_parallel_batch_json_lists_every_certificate(parallel: Run) -> None:
    result = json.loads(parallel.outcome.stdout)
    assert result == {"issued": [str(parallel.out / f"{name}.pem") for name in NAMES], "refused": []}
    assert refusal_lines(parallel.outcome) == []


def test_jobs_1_and_jobs_2_write_the_same_files(parallel: Run, serial: Run) -> None:
    assert serial.outcome.code == 0, serial.outcome
    assert serial.outcome.stdout.strip() == f"signed {COUNT} of {COUNT} requests into {serial.out}"
    assert tree(serial.out) == tree(parallel.out) == expected_files()
    for name in NAMES:
        one = read_certificates(serial.out / f"{name}.pem")[0]
        two = read_certificates(parallel.out / f"{name}.pem")[0]
        assert sans_of(one) == sans_of(two), name
        assert spki(one.public_key()) == spki(two.public_key()), name
        assert one.subject == two.subject, name


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        pytest.param("tampered", TAMPERED_REASON, id="bad-signature"),
        pytest.param("outside", OUTSIDE_REASON, id="outside-trust-domain"),
    ],
)
@pytest.mark.parametrize("out_exists", [False, True], ids=["out-dir-created", "out-dir-existing"])
def test_one_bad_csr_refuses_the_whole_batch(
    tmp_path: Path, ca_dir: Path, csr_dir: Path, kind: str, reason: str, out_exists: bool
) -> None:
    bad = with_bad_csr(csr_dir, tmp_path / "in", kind)
    out = tmp_path / "out"
    if out_exists:
        out.mkdir()
        (out / "keep.txt").write_text("not ours")
    outcome = sign_batch(ca_dir, tmp_path / "in", out, "--jobs", "2")
    assert outcome.code == 1, outcome
    lines = refusal_lines(outcome)
    assert len(lines) == 1 and lines[0].startswith(f"refused {bad}: ") and reason in lines[0], outcome
    assert f"1 of {COUNT} requests refused; nothing written" in outcome.stderr, outcome
    if out_exists:
        assert tree(out) == {"keep.txt"}, "written or staged files left behind"
        assert (out / "keep.txt").read_text() == "not ours"
    else:
        assert not out.exists(), f"the out dir the command created is left: {tree(out)}"
    assert tree(tmp_path / "in") == {f"{name}.csr" for name in NAMES}


def test_keep_going_writes_the_good_ones(tmp_path: Path, ca_dir: Path, csr_dir: Path) -> None:
    bad = with_bad_csr(csr_dir, tmp_path / "in", "outside")
    out = tmp_path / "out"
    outcome = sign_batch(ca_dir, tmp_path / "in", out, "--jobs", "2", "--keep-going")
    assert outcome.code == 1, outcome
    lines = refusal_lines(outcome)
    assert len(lines) == 1 and lines[0].startswith(f"refused {bad}: ") and OUTSIDE_REASON in lines[0], outcome
    assert outcome.stdout.strip() == f"signed {COUNT - 1} of {COUNT} requests into {out}"
    good = tuple(name for name in NAMES if name != BAD)
    assert tree(out) == expected_files(good)
    for name in good:
        cert = read_certificates(out / f"{name}.pem")[0]
        assert sans_of(cert).get_values_for_type(x509.UniformResourceIdentifier) == [identity(name)], name


def test_keep_going_json_lists_issued_and_refused(tmp_path: Path, ca_dir: Path, csr_dir: Path) -> None:
    bad = with_bad_csr(csr_dir, tmp_path / "in", "tampered")
    out = tmp_path / "out"
    outcome = sign_batch(ca_dir, tmp_path / "in", out, "--jobs", "2", "--keep-going", "--json")
    assert outcome.code == 1, outcome
    result = json.loads(outcome.stdout)
    good = tuple(name for name in NAMES if name != BAD)
    assert result["issued"] == [str(out / f"{name}.pem") for name in good]
    assert [r["csr"] for r in result["refused"]] == [str(bad)]
    assert TAMPERED_REASON in result["refused"][0]["reason"]
    assert tree(out) == expected_files(good)


def test_existing_target_without_force_changes_nothing(tmp_path: Path, ca_dir: Path, csr_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "svc042.pem").write_text("old")
    (out / "notes.txt").write_text("unrelated")
    outcome = sign_batch(ca_dir, csr_dir, out, "--jobs", "2")
    assert outcome.code == 1, outcome
    assert "svc042.pem" in outcome.stderr and "already exists" in outcome.stderr, outcome
    assert tree(out) == {"svc042.pem", "notes.txt"}
    assert (out / "svc042.pem").read_text() == "old"


# --- the library ---------------------------------------------------------------------------------


def _sign_files(ca_dir: Path, directory: Path, staging: Path) -> Iterator[list[BatchItem]]:
    opened = open_ca(ca_dir, passphrase=PASSPHRASE.encode())
    request = BatchRequest(profile=opened.profile("mtls"))
    staging.mkdir(mode=0o700)
    names = sorted(p.name for p in directory.iterdir())
    return sign_csr_files(opened.require_authority(), directory, names, request, staging=staging, jobs=2)


def test_sign_csr_files_stages_every_certificate(tmp_path: Path, ca_dir: Path, csr_dir: Path) -> None:
    names = sorted(p.name for p in csr_dir.iterdir())
    assert len(names) == COUNT
    staging = tmp_path / "staging"
    chunks = list(_sign_files(ca_dir, csr_dir, staging))
    assert len(chunks) == CHUNKS and all(len(chunk) <= CHUNK for chunk in chunks)
    items = [item for chunk in chunks for item in chunk]
    assert [item.name for item in items] == names  # in order
    for item in items:
        assert item.error is None, item
        staged = staging / f"{item.stem}.pem"
        assert staged.is_file(), item
        cert = x509.load_pem_x509_certificate(staged.read_bytes())
        uris = sans_of(cert).get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == [identity(item.stem)], item
    assert {p.name for p in staging.iterdir()} == expected_files()


def test_sign_csr_files_reports_a_refusal_and_stages_the_rest(
    tmp_path: Path, ca_dir: Path, csr_dir: Path
) -> None:
    bad = with_bad_csr(csr_dir, tmp_path / "in", "tampered")
    staging = tmp_path / "staging"
    items = [item for chunk in _sign_files(ca_dir, bad.parent, staging) for item in chunk]
    refused = [item for item in items if item.name == bad.name]
    assert len(refused) == 1 and not (staging / f"{BAD}.pem").exists(), refused
    assert refused[0].error is not None and TAMPERED_REASON in refused[0].error
    for item in items:
        if item.name != bad.name:
            assert item.error is None and (staging / f"{item.stem}.pem").is_file(), item
    assert {p.name for p in staging.iterdir()} == expected_files(tuple(n for n in NAMES if n != BAD))


def test_refused_batch_removes_every_directory_it_created(
    tmp_path: Path, ca_dir: Path, csr_dir: Path
) -> None:
    bad_dir = with_bad_csr(csr_dir, tmp_path / "in", "outside").parent
    outcome = sign_batch(ca_dir, bad_dir, tmp_path / "a" / "b" / "out", "--jobs", "2")
    assert outcome.code == 1, outcome
    assert not (tmp_path / "a").exists(), tree(tmp_path)


def test_refused_batch_with_json_still_prints_the_refusals(
    tmp_path: Path, ca_dir: Path, csr_dir: Path
) -> None:
    bad_dir = with_bad_csr(csr_dir, tmp_path / "in", "tampered").parent
    outcome = sign_batch(ca_dir, bad_dir, tmp_path / "out", "--jobs", "2", "--json")
    assert outcome.code == 1, outcome
    report = json.loads(outcome.stdout)
    assert report["issued"] == []
    assert [Path(r["csr"]).name for r in report["refused"]] == [f"{BAD}.csr"]
    assert TAMPERED_REASON in report["refused"][0]["reason"]


def test_output_directory_equal_to_input_directory_is_refused(
    tmp_path: Path, ca_dir: Path, csr_dir: Path
) -> None:
    copy = Path(shutil.copytree(csr_dir, tmp_path / "in"))
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    outcome = sign_batch(ca_dir, copy, copy, "--force")
    assert outcome.code == 1, outcome
    assert "--out-dir must differ from --csr-dir" in outcome.stderr
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_requests_checked_ahead_are_signed_without_a_second_check(
    tmp_path: Path, ca_dir: Path, csr_dir: Path
) -> None:
    bad = with_bad_csr(csr_dir, tmp_path / "in", "tampered")
    names = sorted(p.name for p in bad.parent.iterdir())
    checked = certwright.batch.check_ahead(bad.parent, names, stop=lambda: False)
    assert set(checked) == set(names)
    assert isinstance(checked[bad.name], str) and TAMPERED_REASON in checked[bad.name]
    assert all(isinstance(v, certwright.batch.VerifiedCSR) for n, v in checked.items() if n != bad.name)
    stopped = certwright.batch.check_ahead(bad.parent, names, stop=lambda: True)
    assert stopped == {}
    opened = open_ca(ca_dir, passphrase=PASSPHRASE.encode())
    staging = tmp_path / "staging"
    staging.mkdir(mode=0o700)
    request = BatchRequest(profile=opened.profile("mtls"))
    items = [
        item
        for chunk in sign_csr_files(
            opened.require_authority(), bad.parent, names, request, staging=staging, jobs=2, checked=checked
        )
        for item in chunk
    ]
    assert [i.name for i in items if i.error is not None] == [bad.name]
    assert {p.name for p in staging.iterdir()} == expected_files(tuple(n for n in NAMES if n != BAD))
