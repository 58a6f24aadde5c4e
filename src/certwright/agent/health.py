"""The agent's health file: how long the current certificate has left, and what went wrong.

Written atomically (temporary file + rename) after every check, so a monitoring probe
never reads half a document::

    {"status": "ok", "identity": "spiffe://example.org/web", "serial": "5f1c...",
     "not_after": "2026-11-29T04:42:07+00:00", "seconds_left": 86190, "next_renewal": "...",
     "last_success": "2026-11-28T04:42:07+00:00", "last_error": null, "last_error_at": null,
     "updated_at": "2026-11-28T04:43:37+00:00"}

``status`` is ``ok`` (a valid certificate, the last attempt succeeded or none was due),
``degraded`` (a valid certificate, but the last attempt failed: the agent is retrying),
``expired`` or ``missing`` (no usable certificate: the service cannot work). ``seconds_left``
is as of ``updated_at``; probes should also check ``updated_at`` is recent (the agent
rewrites the file at least every check interval).

Example::

    >>> import json, pathlib, tempfile                                   # doctest: +SKIP
    >>> json.loads(pathlib.Path("/run/certwright/web.health.json").read_text())["status"]  # doctest: +SKIP
    'ok'
"""

from __future__ import annotations

import datetime
import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certwright.files import write_file


class Status(enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"
    EXPIRED = "expired"
    MISSING = "missing"


def _iso(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True)
class Health:
    """One snapshot of the agent's state (see the module documentation)."""

    status: Status
    updated_at: datetime.datetime
    identity: str | None = None
    serial: str | None = None
    not_after: datetime.datetime | None = None
    next_renewal: datetime.datetime | None = None
    last_success: datetime.datetime | None = None
    last_error: str | None = None
    last_error_at: datetime.datetime | None = None

    @property
    def seconds_left(self) -> int | None:
        if self.not_after is None:
            return None
        return max(0, int((self.not_after - self.updated_at).total_seconds()))

    def document(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "identity": self.identity,
            "serial": self.serial,
            "not_after": _iso(self.not_after),
            "seconds_left": self.seconds_left,
            "next_renewal": _iso(self.next_renewal),
            "last_success": _iso(self.last_success),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "updated_at": _iso(self.updated_at),
        }

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically with this snapshot (JSON)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.document(), indent=2).encode() + b"\n"
        # Not fsync-ed: a probe reads it from the page cache, and it is rewritten every check.
        write_file(path, data, mode=0o644, overwrite=True, durable=False)
