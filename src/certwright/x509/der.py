"""Minimal DER encoding (X.690) for the few structures certwright assembles itself.

Why not a library here: the issuance hot path builds a TBSCertificate from pre-encoded
parts (see ``issuance.py``); going through ``cryptography``'s builder costs about three
signatures' worth of time per leaf, and pyasn1 is slower still. Everything built with
these helpers is checked in the tests against what ``cryptography`` produces for the same
input, byte for byte.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the key-file reader imports this module early
    from cryptography import x509

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
BOOLEAN_TRUE = b"\x01\x01\xff"

# RFC 5280 4.1.2.5: dates in 1950-2049 as UTCTime, the others as GeneralizedTime.
_UTCTIME_YEARS = range(1950, 2050)


def length(n: int) -> bytes:
    """Encode a definite length (X.690 8.1.3)."""
    return _LENGTHS[n] if n < _TABLED else _encode_length(n)


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


# Every certificate part is shorter than this: its header comes from two lookups and one
# concatenation instead of building it (the issuance path writes ~15 headers a leaf).
_TABLED = 4096
_LENGTHS = [_encode_length(n) for n in range(_TABLED)]
_TAGS = [bytes((tag,)) for tag in range(256)]


def tlv(tag: int, value: bytes) -> bytes:
    """One tag-length-value triple."""
    n = len(value)
    return b"".join((_TAGS[tag], _LENGTHS[n] if n < _TABLED else _encode_length(n), value))


def sequence(*parts: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(parts))


def integer(value: int) -> bytes:
    """A two's-complement INTEGER in its minimal form (X.690 8.3)."""
    return tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def oid(value: x509.ObjectIdentifier | str) -> bytes:
    """An OBJECT IDENTIFIER (X.690 8.19)."""
    dotted = value if isinstance(value, str) else value.dotted_string
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return tlv(OBJECT_IDENTIFIER, bytes(body))


def time(value: datetime.datetime) -> bytes:
    """A certificate Time (RFC 5280 4.1.2.5), whole seconds, UTC."""
    value = value.astimezone(datetime.UTC)
    if value.year in _UTCTIME_YEARS:
        return tlv(UTC_TIME, value.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return tlv(GENERALIZED_TIME, value.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def extension(oid_der: bytes, critical: bool, value: bytes) -> bytes:
    """An Extension (RFC 5280 4.1): DEFAULT FALSE means criticality is omitted when false."""
    return sequence(oid_der, BOOLEAN_TRUE if critical else b"", tlv(OCTET_STRING, value))


def bit_string(value: bytes) -> bytes:
    """A BIT STRING of whole octets (no unused bits)."""
    return tlv(BIT_STRING, b"\x00" + value)


def read_tlv(data: bytes, offset: int = 0) -> tuple[int, int, int]:
    """Parse the header at ``offset``; return (tag, start of value, end of value)."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[offset]
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if count == 0:
            raise ValueError("indefinite length is not DER (X.690 10.1)")
        if pos + count > len(data):
            raise ValueError("truncated DER")
        size = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + size
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, pos, end
