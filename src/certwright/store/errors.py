"""Errors of the inventory store.

``src/certwright/errors.py`` belongs to the core; the store's errors live here and join
the same family (:class:`~certwright.errors.CertwrightError`), so the CLI and the HTTP edge
report them like any other error a user can cause.
"""

from __future__ import annotations

from certwright.errors import CertwrightError


class StoreError(CertwrightError):
    """The inventory database cannot be used: unreachable, bad URL, wrong schema, locked.

    Messages name the database by its URL with the password hidden.
    """


class WriterBusy(StoreError):
    """The database's writer turn was not free within the short wait the caller asked for
    (:meth:`~certwright.store.Store.write_connection` with ``wait``); nothing was written.

    A caller that cannot afford to wait long in its own thread (an event loop) tries
    again where it can (a worker thread).
    """


class SchemaOutOfDateError(StoreError):
    """The database schema is older (or newer) than this certwright; ``certwright db upgrade``."""


class DuplicateCertificateError(StoreError):
    """A certificate with the same (issuer, serial) or the same fingerprint is already stored."""


class AmbiguousSerialError(StoreError):
    """A serial number names certificates of several issuers: the issuer must be given."""
