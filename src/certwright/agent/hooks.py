"""Telling the service its credentials changed: a reload command, or a signal to a process.

Example::

    >>> reload = ReloadCommand("systemctl reload nginx")              # doctest: +SKIP
    >>> hup = SignalProcess.parse("/run/nginx.pid:HUP")               # doctest: +SKIP
    >>> for hook in (reload, hup): hook.run()                         # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from certwright.errors import CertwrightError, InvalidInputError

DEFAULT_COMMAND_TIMEOUT = 60.0


class HookError(CertwrightError):
    """A reload command failed or a signal could not be sent."""


class Hook(Protocol):
    def run(self) -> None:
        """Tell the service; raise :class:`HookError` when that failed."""
        ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class ReloadCommand:
    """A shell command (``/bin/sh -c``, so ``nginx -s reload && echo ok`` works), run with a
    timeout; a non-zero exit is a failure. ``CERTWRIGHT_AGENT_DIR`` tells it where the files are."""

    command: str
    timeout: float = DEFAULT_COMMAND_TIMEOUT
    directory: Path | None = None

    def run(self) -> None:
        env = dict(os.environ)
        if self.directory is not None:
            env["CERTWRIGHT_AGENT_DIR"] = str(self.directory)
        try:
            done = subprocess.run(  # the operator's own command, by design
                ["/bin/sh", "-c", self.command],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise HookError(f"reload command {self.command!r} did not finish in {self.timeout:g}s") from None
        except OSError as exc:
            raise HookError(f"cannot run reload command {self.command!r}: {exc.strerror}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).decode(errors="replace").strip()[-300:]
            raise HookError(f"reload command {self.command!r} exited with {done.returncode}: {tail}")

    def describe(self) -> str:
        return f"command {self.command!r}"


@dataclass(frozen=True)
class SignalProcess:
    """Send ``signal`` to a PID, or to the PID read from a pid file at each change (the
    service may have restarted since the agent started)."""

    target: int | Path
    signal: signal.Signals

    @classmethod
    def parse(cls, text: str) -> SignalProcess:
        """``PID:SIG`` or ``PIDFILE:SIG``, e.g. ``1234:HUP``, ``/run/nginx.pid:SIGHUP``, ``1234:1``."""
        target, sep, name = text.rpartition(":")
        if not sep or not target or not name:
            raise InvalidInputError(f"--signal {text!r}: expected PID:SIG or PIDFILE:SIG (e.g. 1234:HUP)")
        return cls(int(target) if target.isdigit() else Path(target), _signal(name))

    def pid(self) -> int:
        if isinstance(self.target, int):
            return self.target
        try:
            text = self.target.read_text().strip()
        except OSError as exc:
            raise HookError(f"cannot read pid file {self.target}: {exc.strerror}") from None
        if not text.isdigit():
            raise HookError(f"pid file {self.target} does not hold a PID: {text[:40]!r}")
        return int(text)

    def run(self) -> None:
        pid = self.pid()
        if pid <= 1:
            # kill(0) and kill(-1) reach whole process groups; PID 1 is init: never meant.
            raise HookError(f"refusing to signal PID {pid}")
        try:
            os.kill(pid, self.signal)
        except ProcessLookupError:
            raise HookError(f"no process {pid} to send {self.signal.name} to") from None
        except PermissionError:
            raise HookError(f"not allowed to send {self.signal.name} to PID {pid}") from None

    def describe(self) -> str:
        return f"signal {self.signal.name} to {self.target}"


def _signal(name: str) -> signal.Signals:
    text = name.strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise InvalidInputError(f"unknown signal {name!r} (e.g. HUP, USR1, TERM)") from None
