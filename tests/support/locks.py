"""The writers' lock file of a SQLite inventory, as the tests look at it."""

from __future__ import annotations

from pathlib import Path

from certwright.store.writer_lock import WRITER_LOCK_SUFFIX, FileLock


def lock_is_free(path: Path) -> bool:
    """Whether the writers' turn on the inventory file ``path`` can be taken at once."""
    lock = FileLock(f"{path}{WRITER_LOCK_SUFFIX}")
    try:
        taken = lock.acquire(timeout=0)
        lock.release()
        return taken
    finally:
        lock.forget()
