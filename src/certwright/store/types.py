"""Column types that behave the same on SQLite and PostgreSQL.

* :class:`UTCDateTime`: PostgreSQL keeps ``timestamptz``; SQLite has no time type and
  SQLAlchemy stores text without an offset. Binding converts every value to UTC (and
  refuses naive datetimes, which would silently mean "local time"); reading attaches UTC
  again, so the application only ever sees timezone-aware UTC. Since every stored value is
  UTC in one fixed format, SQLite's text comparison orders them correctly.
* :class:`SerialNumber`: a certificate serial as a fixed-width, 20-octet, big-endian
  unsigned integer (``BLOB`` / ``bytea``). Why not the alternatives:

  - hex text: ``0a`` vs ``a`` spellings, case, and lexical order that is not numeric order;
  - ``NUMERIC(48)``: exact on PostgreSQL, but SQLite's NUMERIC affinity turns any integer
    above 2**63 into an 8-byte float, silently losing the low bits of a 127-bit serial;
  - fixed-width big-endian bytes compare (memcmp) in numeric order on both databases, are
    16 bytes of payload for certwright's serials, index compactly, and 20 octets is the
    RFC 5280 4.1.2.2 maximum ("MUST NOT use serialNumber values longer than 20 octets").

* :func:`exact_text`: strings that are compared by code point on both databases. SQLite's
  default BINARY collation is code point order already; PostgreSQL uses the database's
  collation (often ``en_US.UTF-8``, where punctuation is ignored at first level), so a
  prefix range ``identity >= 'spiffe://td/ns/' AND identity < 'spiffe://td/ns0'`` would
  miss rows. The ``"C"`` collation makes such ranges exact and still index-backed.
"""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from certwright.store.values import SERIAL_OCTETS, serial_to_bytes


class UTCDateTime(sa.TypeDecorator[datetime.datetime]):
    """A timezone-aware UTC datetime on every database (naive values are refused)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware UTC only")
        value = value.astimezone(datetime.UTC)
        # SQLite stores the text without an offset: strip it once the value is UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime.datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC)


class SerialNumber(sa.TypeDecorator[int]):
    """A certificate serial number stored as 20 big-endian octets (see the module doc)."""

    impl = sa.LargeBinary(SERIAL_OCTETS)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> bytes | None:
        return None if value is None else serial_to_bytes(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int.from_bytes(bytes(value), "big")


def exact_text(length: int) -> sa.types.TypeEngine[str]:
    """A VARCHAR compared by code point on both databases (``"C"`` collation on PostgreSQL)."""
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")
