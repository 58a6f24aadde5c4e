"""A policy file that reloads itself when it changes, and never trades a good policy for a bad one.

Services read their access policy through a :class:`PolicySource`: ``current()`` returns the
compiled policy, checking the file at most once per ``interval`` (a ``stat``, and a read
and parse only when it changed). A new version that does not parse is refused with its
line logged, and the previous policy stays in force; a file that disappears keeps the
previous policy too. The first load, by contrast, raises: a service must not start
without a policy it understands.

Example::

    >>> from certwright.mtls.policy_source import PolicySource            # doctest: +SKIP
    >>> policies = PolicySource("/etc/myservice/policy.toml")              # doctest: +SKIP
    >>> policies.decide(peer.subject, Request("payments", "GET", "/v1/x")) # doctest: +SKIP
    Decision(allowed=True, reason="allowed by rule 'web-reads' (...)", ...)
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from certwright.access.model import Decision, PolicyError, Request, Subject
from certwright.access.policy import DEFAULT_CACHE_SIZE, Policy, decode_policy

LOG = logging.getLogger("certwright.mtls.policy")

DEFAULT_INTERVAL = 1.0
# A file modified this recently may be modified again within the same timestamp tick
# without its stat changing ("racy" in git's terms): re-read it on the next check.
_RACY_SECONDS = 2.0


@dataclass(frozen=True)
class _Stamp:
    """What stat says about the file; any change means "read it again"."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, result: os.stat_result) -> _Stamp:
        return cls(result.st_dev, result.st_ino, result.st_size, result.st_mtime_ns, result.st_ctime_ns)


class PolicySource:
    """The current policy of a file, reloaded on change; thread-safe, cheap to call.

    ``interval``: seconds between checks of the file (at most one check per interval,
    whatever the call rate). ``clock``: a monotonic clock, injectable for tests.
    ``on_change``: called with the new policy after each successful reload.
    Raises :class:`PolicyError` if the file cannot be loaded at construction.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        interval: float = DEFAULT_INTERVAL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[Policy], None] | None = None,
        logger: logging.Logger = LOG,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self._cache_size = cache_size
        self._clock = clock
        self._on_change = on_change
        self._log = logger
        self._lock = threading.Lock()
        self._last_error: str | None = None
        self._refused_digest: bytes | None = None
        try:
            stamp = _Stamp.of(os.stat(self.path))
            data = self.path.read_bytes()
        except OSError as exc:
            message = f"cannot read the policy: {exc.strerror or exc}"
            raise PolicyError(message, source=str(self.path)) from None
        self._policy = self._compile(data)
        self._stamp: _Stamp | None = stamp
        self._digest = hashlib.sha256(data).digest()
        self._racy = self._is_racy(stamp)
        self._next_check = clock() + interval

    @property
    def last_error(self) -> str | None:
        """Why the latest version of the file was refused (None once a version is accepted)."""
        return self._last_error

    def current(self) -> Policy:
        """The policy in force; checks the file if ``interval`` has passed since the last check."""
        if self._clock() >= self._next_check and self._lock.acquire(blocking=False):
            # Another thread checking right now? Then serve the current policy meanwhile.
            try:
                self._check()
            finally:
                self._lock.release()
        return self._policy

    def decide(self, subject: Subject, request: Request) -> Decision:
        """``current().decide(subject, request)``: never raises."""
        return self.current().decide(subject, request)

    def reload(self) -> bool:
        """Check the file now; True when a new policy was put in force."""
        with self._lock:
            return self._check()

    # -- internals ------------------------------------------------------------------------
    def _compile(self, data: bytes) -> Policy:
        text = decode_policy(data, source=str(self.path))
        return Policy.parse(text, source=str(self.path), cache_size=self._cache_size)

    def _is_racy(self, stamp: _Stamp) -> bool:
        return time.time_ns() - stamp.mtime_ns < _RACY_SECONDS * 1e9

    def _check(self) -> bool:
        self._next_check = self._clock() + self.interval
        try:
            stamp = _Stamp.of(os.stat(self.path))
            if stamp == self._stamp and not self._racy:
                return False
            data = self.path.read_bytes()
        except OSError as exc:
            self._refuse(f"cannot read the policy: {exc.strerror or exc}", None)
            return False
        self._stamp, self._racy = stamp, self._is_racy(stamp)
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            self._last_error = self._refused_digest = None
            return False  # touched, or rewritten (or restored) with the content in force
        if digest == self._refused_digest:
            return False  # the same bad version: already logged
        try:
            policy = self._compile(data)
        except PolicyError as exc:
            self._refuse(str(exc), digest)
            return False
        self._policy, self._digest = policy, digest
        self._last_error, self._refused_digest = None, None
        self._log.info("access policy %s reloaded: %d rules", self.path, len(policy.rules))
        if self._on_change is not None:
            try:
                self._on_change(policy)
            except Exception:  # the callback's failure must not make current() raise
                self._log.exception("on_change callback failed for %s", self.path)
        return True

    def _refuse(self, reason: str, digest: bytes | None) -> None:
        if reason != self._last_error:
            self._log.error("%s; keeping the policy in force (%d rules)", reason, len(self._policy.rules))
        self._last_error, self._refused_digest = reason, digest
