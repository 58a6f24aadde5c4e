"""Log lines for people (text) or for collectors (one JSON object per line).

The agent logs on the ``certwright.agent`` logger; each record may carry an ``event``
(``renewed``, ``enrolled``, ``not-due``, ``failed``, ``reloaded``, ``reload-failed``) and
fields such as ``serial``, ``not_after``, ``retry_in``, which the JSON form keeps as keys.

Example::

    >>> configure("json")                                                   # doctest: +SKIP
    >>> logging.getLogger("certwright.agent").info("renewed", extra={"event": "renewed"})  # doctest: +SKIP
    {"time": "2026-11-28T04:42:07.120+00:00", "level": "info", "logger": "certwright.agent",
     "message": "renewed", "event": "renewed"}
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

FIELDS = ("event", "identity", "serial", "not_after", "next_renewal", "retry_in", "attempt", "error")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


_PLAIN = (str, int, float, bool, type(None))


def _when(record: logging.LogRecord) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(record.created, datetime.UTC)


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _when(record).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value if isinstance(value, _PLAIN) else str(value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


class TextFormatter(logging.Formatter):
    """``2026-11-28T04:42:07Z info renewed serial=5f1c not_after=...``: message, then fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = _when(record).strftime("%Y-%m-%dT%H:%M:%SZ")
        fields = " ".join(
            f"{key}={getattr(record, key)}"
            for key in FIELDS
            if key != "event" and getattr(record, key, None) is not None
        )
        line = f"{stamp} {record.levelname.lower()} {record.getMessage()}"
        return f"{line} {fields}" if fields else line


def configure(fmt: str = "text", *, level: int = logging.INFO) -> None:
    """Send certwright's logs to stderr in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("certwright")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
