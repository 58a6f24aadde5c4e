"""The writers' turn on a SQLite inventory between processes: an ``flock`` beside the file.

SQLite's own busy handler makes a waiting writer sleep up to 100 ms between tries; every
certwright writer (the server's workers, CLI commands, a batch) first takes an exclusive
``flock`` on ``FILE-writer.lock``, polled every 20-200 us, then SQLite's lock. No
SQLAlchemy here: :mod:`~certwright.store.sqlite_batch` takes the same turn.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

WRITER_LOCK_SUFFIX = "-writer.lock"  # beside a SQLite file: the writers' turn between processes


class FileLock:
    """An exclusive ``flock`` on ``path``, taken by polling with a deadline.

    The descriptor is this process's own (a forked child opens its own: the store's
    queues forget theirs after ``fork``): ``flock`` belongs to the open file, so a
    descriptor inherited across ``fork`` would share the parent's lock instead of
    competing for it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, *, timeout: float) -> bool:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        delay = 0.00002
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
            time.sleep(delay)
            delay = min(delay * 2, 0.0002)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def forget(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
