"""Recording a batch as its workers sign it: the all-or-nothing rules, whatever the writer.

:meth:`CertificateService.record_batch <certwright.service.certificates.CertificateService.record_batch>`
records through the Store (SQLAlchemy; SQLite or PostgreSQL); the batch CLI records into
a CA's own SQLite file with :class:`~certwright.store.sqlite_batch.SQLiteBatch`, which
needs no SQLAlchemy. Both hand their writer to :func:`record_chunks`, so a refusal, a
``--keep-going`` batch and the progress bar behave the same on either path. Nothing here
imports SQLAlchemy.

Example::

    >>> batch = SQLiteBatch.open(path, shared=batch_shared_fields(authority, request, actor, now))
    >>> with batch:                                                         # doctest: +SKIP
    ...     outcome = record_chunks(run, batch, keep_going=False)
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from certwright.batch import BatchItem, BatchRequest
from certwright.errors import CertwrightError
from certwright.issuance import Authority, Issued
from certwright.store.records import shared_fields


@dataclass(frozen=True)
class BatchOutcome:
    """Names of the requests signed (and recorded), and (name, reason) of those refused."""

    signed: list[str]
    failures: list[tuple[str, str]]


class BatchRefusedError(CertwrightError):
    """Some requests of an all-or-nothing batch were refused: nothing was recorded."""

    def __init__(self, failures: list[tuple[str, str]], total: int) -> None:
        super().__init__(
            f"{len(failures)} of {total} requests refused; nothing written "
            "(use --keep-going to write the others)"
        )
        self.failures = failures


class BatchWriter(Protocol):
    """Where a batch's rows go, inside one open write transaction."""

    def add(self, certificates: Sequence[Issued]) -> None:
        """Insert the rows, names and issuance events of ``certificates``, in order."""

    def close(self) -> None:
        """Finish the audit chain (move its head); the caller then commits."""


def batch_shared_fields(
    authority: Authority, request: BatchRequest, actor: str, now: datetime.datetime
) -> dict[str, Any]:
    """The columns every certificate of a batch shares (issuer, profile, requester, time)."""
    return shared_fields(
        issuer=authority.certificate.subject.rfc4514_string(),
        issuer_key_id=authority.key_identifier,
        profile=request.profile.name,
        requested_by=actor,
        created_at=now,
    )


def record_chunks(
    chunks: Iterable[list[BatchItem]],
    writer: BatchWriter,
    *,
    keep_going: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BatchOutcome:
    """Hand each chunk's signed certificates to ``writer`` as the chunk arrives.

    Each item's ``record`` is the :class:`~certwright.issuance.Issued` its worker signed.
    Without ``keep_going`` one refusal makes the batch fail: once a request is refused
    nothing more is written (it will all be rolled back), and :class:`BatchRefusedError`
    is raised after the last chunk, naming every refused request, for the caller's
    transaction to roll back. The caller commits after a normal return.
    """
    signed: list[str] = []
    failures: list[tuple[str, str]] = []
    for chunk in chunks:
        issued: list[Issued] = []
        for item in chunk:
            if item.error is not None:
                failures.append((item.name, item.error))
            else:
                signed.append(item.name)
                issued.append(item.record)
        if keep_going or not failures:  # else it is all rolled back: spare the work
            writer.add(issued)
        if progress is not None:
            progress(len(chunk))
    if failures and not keep_going:
        raise BatchRefusedError(sorted(failures), len(signed) + len(failures))
    writer.close()
    return BatchOutcome(signed, sorted(failures))
