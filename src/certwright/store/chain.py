"""The audit chain's arithmetic: canonical JSON, UTC times and event hashes.

:mod:`~certwright.store.audit` stores and verifies the chain; the encoding lives here,
without SQLAlchemy, so that :mod:`~certwright.store.sqlite_batch` chains a batch's events
exactly as every other writer does. The module docstring of
:mod:`~certwright.store.audit` gives the canonical encoding.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _encode_ascii  # C, what json.dumps uses
from typing import Any

from certwright.errors import InvalidInputError


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no whitespace, ASCII only; NaN and non-JSON types refused."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"audit details must be plain JSON values: {exc}") from exc


def utc(at: datetime.datetime) -> datetime.datetime:
    """``at`` in UTC; a naive datetime is refused (``astimezone`` would take it as local time)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInputError(f"naive datetime {at!r}: audit times are timezone-aware UTC")
    return at.astimezone(datetime.UTC)


def canonical_time(at: datetime.datetime) -> str:
    return utc(at).isoformat(timespec="microseconds")


def event_hash(
    *,
    seq: int,
    at: datetime.datetime,
    kind: str,
    actor: str,
    subject: str | None,
    details: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical encoding of one event (see the module doc).

    The object is written out key by key in sorted order rather than through
    ``canonical_json(dict)``: batches hash 10^4 events in a row, and this is 5x cheaper.
    The tests hold it equal to the ``json.dumps(sort_keys=True, ...)`` form for any input.
    """
    return _digest(_head(actor, at), _middle(kind), seq, subject, details, prev_hash)


def _head(actor: str, at: datetime.datetime) -> str:
    # The canonical object's keys in sorted order: actor, at, details, kind, prev_hash, seq, subject.
    return f'{{"actor":{_json_string(actor)},"at":{_json_string(canonical_time(at))},"details":'


def _middle(kind: str) -> str:
    return f',"kind":{_json_string(kind)},"prev_hash":'


def _digest(head: str, middle: str, seq: int, subject: str | None, details: str, prev_hash: str) -> str:
    if type(seq) is not int:  # bool and floats would serialise differently
        raise InvalidInputError(f"audit sequence number must be an int, not {type(seq).__name__}")
    tail = "null" if subject is None else _json_string(subject)
    encoded = f'{head}{_json_string(details)}{middle}{_json_string(prev_hash)},"seq":{seq},"subject":{tail}}}'
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _json_string(value: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"audit field must be text, not {type(value).__name__}")
    return _encode_ascii(value)


def chained_hasher(
    *, at: datetime.datetime, kind: str, actor: str
) -> Callable[[int, str | None, str, str], str]:
    """:func:`event_hash` for events that share ``at``, ``kind`` and ``actor`` (a batch's).

    Returns ``hash(seq, subject, details, prev_hash)``; the shared fields are encoded once
    (~10 us of the ~20 us an event costs).
    """
    head, middle = _head(actor, at), _middle(kind)

    def digest(seq: int, subject: str | None, details: str, prev_hash: str) -> str:
        return _digest(head, middle, seq, subject, details, prev_hash)

    return digest
