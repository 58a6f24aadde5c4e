"""Worker processes: one ``certwright serve`` that uses every core.

CPython runs one thread of Python at a time in a process, so one process serves one core's
worth of TLS, JSON, CSR checks and signatures. With ``workers = N`` (``auto``, the default:
one per CPU this process may run on, up to eight) the process you start becomes a
supervisor: it prepares the data directory once (the CA unlocked, the inventory migrated,
the certificates due renewed), then forks N workers that each run both listeners and
share nothing but the database, the data directory and a metrics directory. They are
replicas on one machine that share the CA's memory pages:

* **Sockets.** The supervisor binds each address (a port in use, or port 0, is settled as
  for a single process), listens, and the workers inherit the listening sockets. Each
  worker accepts only while it holds no more connections than the least-loaded worker
  (:mod:`certwright.server.acceptor`), so a few long-lived keep-alive connections are
  spread evenly rather than by which worker woke first.
* **Database.** PostgreSQL: as replicas (row locks, sequences). SQLite: every writer of
  every process queues on one lock file beside the database (:mod:`certwright.store.session`).
* **Metrics.** prometheus-client's multi-process mode in ``DIR/run/metrics-<supervisor
  pid>``: any worker's ``/metrics`` adds up all of them (:mod:`certwright.server.metrics`).
* **Own certificates.** Worker 0 renews the server's certificates when due; every worker
  follows the OCSP responder's rotation, as replicas sharing a directory do.

Supervision: SIGTERM or SIGINT to the supervisor is passed on to every worker as SIGTERM
(requests in flight finish; a worker takes more SIGTERMs, such as systemd's to the whole
group, as the same request); a second signal to the supervisor reaches the workers as
SIGQUIT, and they stop at once. Workers ignore SIGINT, so Ctrl-C at a terminal is one
signal, not two. A worker
that exits while the server is not stopping is started again; more than
``RESTARTS_PER_MINUTE`` restarts a minute stop the server (exit non-zero): a worker that
cannot run would otherwise be forked forever. Each worker dies with its supervisor
(``PR_SET_PDEATHSIG``), so ``kill -9`` of the supervisor leaves no worker listening.

Example::

    sockets = [bind(config.listen), bind(config.http_listen)]
    prepared = bootstrap.prepare(config.with_bound(...), passphrase, hooks)
    serve_workers(prepared, sockets, count=config.worker_count, on_ready=print)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from certwright.server.acceptor import Shares
from certwright.server.bootstrap import Prepared
from certwright.server.config import format_address
from certwright.server.run import Balance, bound_address, preload, run

_log = logging.getLogger("certwright.server")
RESTARTS_PER_MINUTE = 10
RUN_DIR = "run"  # under the data directory: per-run files (the metrics of a supervisor's workers)
_PR_SET_PDEATHSIG = 1
BACKLOG = 2048


@dataclass
class _Supervisor:
    prepared: Prepared
    count: int
    metrics_dir: Path
    ready_read: int
    ready_write: int
    sockets: list[socket.socket]
    shares: tuple[Shares, ...]
    workers: dict[int, int] = field(default_factory=dict)  # pid -> worker index
    restarts: list[float] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    pid: int = field(default_factory=os.getpid)  # the supervisor's

    def start(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            _worker(self, index)
        self.workers[pid] = index

    def signal_all(self, signum: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def reap(self) -> list[tuple[int, int, int]]:
        """Workers that exited: (pid, index, wait status)."""
        gone = []
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = self.workers.pop(pid, None)
            if index is not None:
                for shares in self.shares:
                    shares.retire(index)  # its connections died with it
                gone.append((pid, index, status))
        return gone

    def wait_readable(self, timeout: float) -> int:
        """Ready notes read from the workers' pipe within ``timeout`` seconds."""
        try:
            readable, _, _ = select.select([self.ready_read], [], [], timeout)
        except InterruptedError:
            return 0
        if not readable:
            return 0
        return len(os.read(self.ready_read, 1024))


def serve_workers(
    prepared: Prepared,
    sockets: Sequence[socket.socket],
    *,
    count: int,
    on_ready: Callable[[list[str]], None] | None = None,
) -> None:
    """Run ``count`` worker processes on ``sockets`` (bound: API, public) until SIGTERM/SIGINT.

    ``on_ready`` gets the API and public URLs once every worker accepts connections.
    Raises RuntimeError when a worker fails at start-up or keeps failing.
    """
    addresses = [bound_address(s) for s in sockets]
    for sock in sockets:
        sock.listen(BACKLOG)  # the workers accept from these: connections wait here meanwhile
    metrics_dir = _metrics_dir(prepared.directory)
    preload()
    # No pooled connection may cross the fork: each worker opens its own.
    prepared.store.engine.dispose()
    ready_read, ready_write = os.pipe()
    supervisor = _Supervisor(
        prepared,
        count,
        metrics_dir,
        ready_read,
        ready_write,
        sockets=list(sockets),
        shares=tuple(Shares(count) for _ in sockets),
    )
    previous = {s: signal.signal(s, _note(supervisor)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(count):
            supervisor.start(index)
        _await_ready(supervisor)
        if on_ready is not None:
            on_ready([f"https://{format_address(addresses[0])}", f"http://{format_address(addresses[1])}"])
        _supervise(supervisor)
    finally:
        if supervisor.workers:  # an error above: no worker outlives its supervisor
            supervisor.signal_all(signal.SIGKILL)
            for pid in list(supervisor.workers):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(ready_read)
        os.close(ready_write)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _note(supervisor: _Supervisor) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        # Passed on at once. A worker drains on SIGTERM and ignores more of them (systemd
        # sends SIGTERM to the whole group as well); a second signal here means "now":
        # SIGQUIT, which a worker takes as its force signal.
        supervisor.signal_all(signal.SIGQUIT if supervisor.signals else signal.SIGTERM)
        supervisor.signals.append(signum)

    return handler


def _await_ready(supervisor: _Supervisor) -> None:
    ready = 0
    while ready < supervisor.count:
        ready += supervisor.wait_readable(0.2)
        for pid, index, status in supervisor.reap():
            raise RuntimeError(
                f"worker {index} (pid {pid}) {_describe(status)} while starting; see the log above"
            )
        if supervisor.signals:
            raise RuntimeError("stopped by a signal while the workers were starting")


def _supervise(supervisor: _Supervisor) -> None:
    while supervisor.workers:
        supervisor.wait_readable(0.5)  # restarted workers' ready notes; a tick otherwise
        for pid, index, status in supervisor.reap():
            if supervisor.signals:
                continue  # stopping: each worker exits when its requests are done
            _log.error("worker %d (pid %d) %s; starting it again", index, pid, _describe(status))
            now = time.monotonic()
            supervisor.restarts = [t for t in supervisor.restarts if now - t < 60] + [now]
            if len(supervisor.restarts) > RESTARTS_PER_MINUTE:
                raise RuntimeError(f"workers exited {len(supervisor.restarts)} times in a minute; stopping")
            supervisor.start(index)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _worker(supervisor: _Supervisor, index: int) -> None:
    """A worker's whole life, in the forked child: it always ends with ``os._exit``."""
    code = 1
    try:
        _die_with(supervisor.pid)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until run() installs its own
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor passes Ctrl-C on
        os.close(supervisor.ready_read)

        def ready(_servers: object) -> None:
            os.write(supervisor.ready_write, b".")

        run(
            supervisor.prepared,
            supervisor.sockets,
            on_ready=ready,
            renew_own=index == 0,
            metrics_dir=supervisor.metrics_dir,
            signals=(signal.SIGTERM,),
            force_signals=(signal.SIGQUIT,),
            balance=Balance(index, supervisor.shares),
        )
        code = 0
    except BaseException:  # a child must never return into the parent's code
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _metrics_dir(directory: Path) -> Path:
    """``DIR/run/metrics-<pid>``, new and empty; directories of supervisors gone are removed."""
    run_dir = directory / RUN_DIR
    run_dir.mkdir(mode=0o700, exist_ok=True)
    for old in run_dir.glob("metrics-*"):
        pid = old.name.removeprefix("metrics-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = run_dir / f"metrics-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
