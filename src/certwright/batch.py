"""Signing many CSR files at once, on every core.

The CA key is opened once, in the parent; workers are forked after that, so they inherit
the opened authority without re-deriving the passphrase key (scrypt) or pickling a private
key. Each worker reads, verifies and signs its share of the CSRs and writes each
certificate into a private staging directory; only the verdicts travel back. The caller
then moves the staged files into place, or throws the staging directory away, so a batch
can still be all-or-nothing.

Example::

    >>> from certwright.batch import BatchRequest, sign_csr_files   # doctest: +SKIP
    >>> for chunk in sign_csr_files(authority, paths, BatchRequest(profile=p), jobs=2):
    ...     for item in chunk:                                         # doctest: +SKIP
    ...         print(item.source, item.error or "ok")
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from certwright.errors import CertwrightError
from certwright.files import read_csr
from certwright.issuance import Authority
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import Profile

CHUNK = 64
# Below this many requests per extra worker, forking costs more than it saves.
MIN_PER_WORKER = 256


@dataclass(frozen=True)
class BatchRequest:
    """What every certificate of the batch gets besides what its CSR asks for."""

    profile: Profile
    identity: SpiffeId | None = None
    sans: SubjectAltNames | None = None
    authorization: Authorization | None = None
    subject: str | None = None
    lifetime: datetime.timedelta | None = None


@dataclass(frozen=True)
class BatchItem:
    """The outcome for one CSR: its staged certificate file, or the reason it was refused."""

    source: Path
    staged: Path | None
    error: str | None


def default_jobs(count: int) -> int:
    """One worker per usable core (CPU affinity, as containers set it), if the batch is big enough."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, count // MIN_PER_WORKER))


def sign_csr_files(
    authority: Authority,
    paths: Sequence[Path],
    request: BatchRequest,
    *,
    staging: Path,
    jobs: int | None = None,
) -> Iterator[list[BatchItem]]:
    """Sign every CSR in ``paths`` into ``staging`` (an empty private directory).

    The certificate for ``dir/NAME.csr`` is staged as ``staging/NAME.pem``; stems must be
    unique. Yields results chunk by chunk, in the order of ``paths``.
    """
    jobs = default_jobs(len(paths)) if jobs is None else max(1, jobs)
    chunks = [list(paths[i : i + CHUNK]) for i in range(0, len(paths), CHUNK)]
    job = _Job(authority, request, staging)
    if jobs == 1 or len(chunks) == 1:
        for chunk in chunks:
            yield _decode(chunk, job.run(chunk), staging)
        return
    # "fork": the workers inherit the opened authority (see the module docstring). certwright
    # targets Linux, where fork is the default and safe before threads exist.
    context = multiprocessing.get_context("fork")
    with context.Pool(jobs, initializer=_init_worker, initargs=(job,)) as pool:
        for chunk, verdicts in zip(chunks, pool.imap(_run_chunk, chunks, chunksize=1), strict=True):
            yield _decode(chunk, verdicts, staging)


@dataclass(frozen=True)
class _Job:
    authority: Authority
    request: BatchRequest
    staging: Path

    def run(self, paths: list[Path]) -> list[str | None]:
        """Sign and stage each CSR; return None for success or the refusal reason."""
        return [self._one(path) for path in paths]

    def _one(self, path: Path) -> str | None:
        try:
            pem = _sign(self.authority, self.request, path)
        except CertwrightError as exc:
            return str(exc)
        # The staging directory is ours alone (mode 0700, fresh): a plain create suffices,
        # and the caller renames the finished file into place. os.open/os.write skip the
        # buffered-file machinery, a fifth of the per-certificate cost here.
        fd = os.open(self.staging / f"{path.stem}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, pem)
        finally:
            os.close(fd)
        return None


def _decode(paths: list[Path], verdicts: list[str | None], staging: Path) -> list[BatchItem]:
    return [
        BatchItem(path, staging / f"{path.stem}.pem" if error is None else None, error)
        for path, error in zip(paths, verdicts, strict=True)
    ]


# Per-worker state, set once by the pool initializer in each forked worker process.
_worker: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _worker
    _worker = job


def _run_chunk(paths: list[Path]) -> list[str | None]:
    assert _worker is not None, "worker used before its initializer ran"
    return _worker.run(paths)


def _sign(authority: Authority, request: BatchRequest, path: Path) -> bytes:
    cert = authority.sign_csr(
        read_csr(path),
        profile=request.profile,
        identity=request.identity,
        sans=request.sans,
        authorization=request.authorization,
        subject=request.subject,
        lifetime=request.lifetime,
    )
    return cert.public_bytes(serialization.Encoding.PEM)
