"""Signing many CSR files at once, on every core.

The CA key is opened once, in the parent; workers are forked after that, so they inherit
the opened authority without re-deriving the passphrase key (scrypt) or pickling a private
key. Each worker reads, verifies and signs its share of the CSRs and writes each
certificate into a private staging directory; only the verdicts (and each certificate's
:class:`~certwright.issuance.Issued` facts, for the inventory) travel back. The caller
then moves the staged files into place, or throws the staging directory away, so a batch
can still be all-or-nothing.

:func:`start_signing` forks the workers at once and returns; the caller can then do its
own start-up work (the batch CLI imports and opens the inventory) while they sign. Nothing
here imports the inventory (SQLAlchemy), so the workers never pay for it.

Example::

    >>> from certwright.batch import BatchRequest, sign_csr_files   # doctest: +SKIP
    >>> for chunk in sign_csr_files(authority, paths, BatchRequest(profile=p), jobs=2):
    ...     for item in chunk:                                         # doctest: +SKIP
    ...         print(item.source, item.error or "ok")
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from certwright.errors import CertwrightError
from certwright.files import parse_csr
from certwright.forkmap import ForkMap
from certwright.issuance import Authority, Issued, VerifiedCSR, verify_csr
from certwright.x509.authz import Authorization
from certwright.x509.identity import SpiffeId
from certwright.x509.names import SubjectAltNames
from certwright.x509.profiles import Profile

_T = TypeVar("_T")

CHUNK = 64
# Below this many requests per extra worker, forking costs more than it saves.
MIN_PER_WORKER = 256
# How much lower the workers' scheduling priority is than the recording parent's (see _init_worker).
WORKER_NICENESS = 5


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
    """The outcome for one CSR file, by name: staged (``error`` is None) or refused."""

    name: str
    error: str | None
    # What ``describe`` made of the certificate in the worker; without ``describe``, its
    # Issued (DER and facts) itself.
    record: Any = None

    @property
    def stem(self) -> str:
        return stem(self.name)


def stem(name: str) -> str:
    """``a.csr`` -> ``a``: the certificate for request ``a.csr`` is ``a.pem``."""
    return name.rpartition(".")[0] or name


def default_jobs(count: int) -> int:
    """One worker per usable core (CPU affinity, as containers set it), if the batch is big enough."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, count // MIN_PER_WORKER))


Checked = VerifiedCSR | str  # a request read and verified ahead of time, or why it is refused


def check_ahead(directory: Path, names: Sequence[str], *, stop: Callable[[], bool]) -> dict[str, Checked]:
    """Read and verify requests in order until ``stop()`` says to stop.

    Run while the CA key is being opened (its scrypt derivation leaves the GIL free):
    verifying a CSR is a third of the work per certificate, and the forked workers
    inherit the result and skip those requests' checks.
    """
    done: dict[str, Checked] = {}
    for name in names:
        if stop():
            break
        done[name] = _check_all(directory, [name])[0]
    return done


def _check_all(directory: str | Path, names: Sequence[str]) -> list[Checked]:
    """Read and verify requests, phase by phase: read all, parse all, verify all."""
    data = [_read(os.path.join(directory, name)) for name in names]
    parsed = [
        item if isinstance(item, str) else _refused_or(parse_csr, item, source=name)
        for name, item in zip(names, data, strict=True)
    ]
    return [item if isinstance(item, str) else _refused_or(verify_csr, item) for item in parsed]


def _refused_or(step: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | str:
    """``step(...)``, or the reason it refused the request."""
    try:
        return step(*args, **kwargs)
    except CertwrightError as exc:
        return str(exc)


def sign_csr_files(
    authority: Authority,
    directory: Path,
    names: Sequence[str],
    request: BatchRequest,
    *,
    staging: Path,
    jobs: int | None = None,
    checked: Mapping[str, Checked] | None = None,
    describe: Callable[[Issued], Any] | None = None,
) -> Iterator[list[BatchItem]]:
    """Sign the CSR files ``names`` of ``directory`` into ``staging`` (empty, private).

    The certificate for ``NAME.csr`` is staged as ``staging/NAME.pem``; stems must be
    unique. Yields results chunk by chunk, in the order of ``names``. File names are plain
    strings here: with 10^5 requests, pathlib objects cost more than the file system.
    ``checked`` holds requests already read and verified (:func:`check_ahead`).
    ``describe(issued)`` runs in the worker that signed it, with the certificate's DER and
    facts (:class:`~certwright.issuance.Issued`); its result (picklable) comes back as
    ``BatchItem.record``; without it the record is the ``Issued`` itself.

    Lazy: nothing is signed until the first chunk is asked for. :func:`start_signing`
    starts at once.
    """
    with start_signing(
        authority, directory, names, request, staging=staging, jobs=jobs, checked=checked, describe=describe
    ) as run:
        yield from run


def start_signing(
    authority: Authority,
    directory: Path,
    names: Sequence[str],
    request: BatchRequest,
    *,
    staging: Path,
    jobs: int | None = None,
    checked: Mapping[str, Checked] | None = None,
    describe: Callable[[Issued], Any] | None = None,
) -> SigningRun:
    """:func:`sign_csr_files`, with the workers forked now: iterate the result for the chunks.

    Use it as a context manager (leaving it stops the workers). Fork it before importing
    anything heavy that the workers do not need: they start signing while the caller
    carries on.
    """
    jobs = default_jobs(len(names)) if jobs is None else max(1, jobs)
    chunks = [list(names[i : i + CHUNK]) for i in range(0, len(names), CHUNK)]
    job = _Job(authority, request, str(directory), str(staging), checked or {}, describe)
    return SigningRun(job, chunks, jobs)


class SigningRun:
    """A batch being signed (see :func:`start_signing`): its chunks' results, in order."""

    def __init__(self, job: _Job, chunks: list[list[str]], jobs: int) -> None:
        self._job = job
        self._chunks = chunks
        self._workers: ForkMap[list[tuple[str | None, Any]]] | None = None
        self._verdicts: Iterable[list[tuple[str | None, Any]]]
        if jobs == 1 or len(chunks) <= 1:
            self._verdicts = map(job.run, chunks)  # in this process, as the caller iterates
            return
        # Forked: the workers inherit the opened authority (see the module docstring). The
        # caller's threads (the CLI's key-opening one) have finished by now.
        self._workers = ForkMap(
            lambda number: job.run(chunks[number]), count=len(chunks), jobs=jobs, setup=_init_worker
        )
        self._verdicts = self._workers

    def __iter__(self) -> Iterator[list[BatchItem]]:
        for chunk, verdicts in zip(self._chunks, self._verdicts, strict=True):
            yield _items(chunk, verdicts)

    def close(self) -> None:
        """Stop the workers (at once: whatever they staged is the caller's to throw away)."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def __enter__(self) -> SigningRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class _Job:
    authority: Authority
    request: BatchRequest
    directory: str
    staging: str
    checked: Mapping[str, Checked]
    describe: Callable[[Issued], Any] | None

    def run(self, names: list[str]) -> list[tuple[str | None, Any]]:
        """Sign and stage each CSR; return (None or the refusal reason, describe's result).

        In phases, each over the whole chunk: read the files, parse them, verify them,
        sign, encode and write. Interleaving system calls, parsing and the two kinds of
        signature work per certificate costs more (measured on one core: 300 -> 250 us a
        certificate for read / sign / write phases; splitting read, parse and verify as
        well: 366 -> 331 us), the caches being cold after each switch.
        """
        ahead = [self.checked.get(name) for name in names]
        todo = [i for i, item in enumerate(ahead) if item is None]
        if todo:
            fresh = _check_all(self.directory, [names[i] for i in todo])
            for i, item in zip(todo, fresh, strict=True):
                ahead[i] = item
        ready: list[Checked] = [item for item in ahead if item is not None]
        signed = [self._sign(item) for item in ready]
        for name, (issued, _, _) in zip(names, signed, strict=True):
            if issued is not None:
                self._stage(name, issued.pem())
        return [(error, record) for _, record, error in signed]

    def _sign(self, item: Checked) -> tuple[Issued | None, Any, str | None]:
        if isinstance(item, str):
            return None, None, item
        try:
            issued = _sign(self.authority, self.request, item)
            record = self.describe(issued) if self.describe is not None else issued
        except CertwrightError as exc:
            return None, None, str(exc)
        return issued, record, None

    def _stage(self, name: str, pem: bytes) -> None:
        # The staging directory is ours alone (mode 0700, fresh): a plain create suffices,
        # and the caller renames the finished file into place.
        target = os.path.join(self.staging, stem(name) + ".pem")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, pem)
        finally:
            os.close(fd)


def _read(path: str) -> bytes | str:
    """The file's bytes, or the reason it cannot be read.

    ``os.read`` on the descriptor: a CSR is a few hundred bytes, and a buffered file object
    costs more to set up than the read itself.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            parts = [os.read(fd, _READ_SIZE)]
            while len(parts[-1]) == _READ_SIZE:  # larger than one read (rare): to the end
                parts.append(os.read(fd, _READ_SIZE))
        finally:
            os.close(fd)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    return parts[0] if len(parts) == 1 else b"".join(parts)


_READ_SIZE = 1 << 16


def _items(names: list[str], verdicts: list[tuple[str | None, Any]]) -> list[BatchItem]:
    return [BatchItem(name, error, record) for name, (error, record) in zip(names, verdicts, strict=True)]


def _init_worker() -> None:
    # What the worker inherited lives until it exits: the collector need not walk it (nor
    # touch its pages, which fork shares until written).
    gc.freeze()
    # The parent records what the workers sign (one transaction, in order): it is the
    # batch's longest path, so on a busy core it goes first. Measured on 2 cores: the
    # workers otherwise finish ~0.2 s before the parent is done with their results.
    os.nice(WORKER_NICENESS)


def _sign(authority: Authority, request: BatchRequest, csr: VerifiedCSR) -> Issued:
    return authority.sign_csr_issued(
        csr,
        profile=request.profile,
        identity=request.identity,
        sans=request.sans,
        authorization=request.authorization,
        subject=request.subject,
        lifetime=request.lifetime,
    )
