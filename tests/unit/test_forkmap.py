"""certwright.forkmap: numbered tasks in forked workers, results in order, failures raised."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from certwright.forkmap import ForkMap, WorkerLost


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False  # reaped already
    return done == 0


def test_results_come_back_in_task_order_from_several_processes(tmp_path: Path) -> None:
    def run(number: int) -> tuple[int, int]:
        (tmp_path / f"{number}-{os.getpid()}").touch()
        return number, number * number

    with ForkMap(run, count=40, jobs=3) as results:
        got = list(results)
    assert got == [(n, n * n) for n in range(40)]
    pids = {int(p.name.split("-")[1]) for p in tmp_path.iterdir()}
    assert len(list(tmp_path.iterdir())) == 40  # each task ran once
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 3


def test_results_larger_than_a_pipe_buffer_arrive_whole() -> None:
    with ForkMap(lambda number: bytes([number]) * 300_000, count=6, jobs=2) as results:
        assert [len(r) == 300_000 and r[:1] == bytes([n]) for n, r in enumerate(results)] == [True] * 6


def test_setup_runs_once_in_each_worker(tmp_path: Path) -> None:
    def setup() -> None:
        (tmp_path / f"setup-{os.getpid()}").touch()

    def run(number: int) -> int:
        assert (tmp_path / f"setup-{os.getpid()}").exists()
        return number

    with ForkMap(run, count=10, jobs=2, setup=setup) as results:
        assert list(results) == list(range(10))
    # Each worker that ran a task had run setup (asserted in run); a worker that found no
    # task left may have been stopped before or after its setup.
    assert 1 <= len(list(tmp_path.glob("setup-*"))) <= 2


def test_no_tasks_gives_no_results() -> None:
    with ForkMap(lambda number: number, count=0, jobs=2) as results:
        assert list(results) == []


def test_a_task_that_raises_raises_in_the_caller() -> None:
    def run(number: int) -> int:
        if number == 5:
            raise OSError(28, "No space left on device")
        return number

    with ForkMap(run, count=20, jobs=2) as results, pytest.raises(OSError, match="No space left"):
        list(results)


def test_an_exception_that_does_not_pickle_still_says_what_it_was() -> None:
    class Local(Exception):  # defined in a function: pickle cannot find it by name
        pass

    def run(number: int) -> int:
        raise Local("a local failure")

    with (
        ForkMap(run, count=3, jobs=2) as results,
        pytest.raises(RuntimeError, match="Local: a local failure"),
    ):
        list(results)


def test_a_worker_killed_mid_task_is_reported_not_waited_for() -> None:
    def run(number: int) -> int:
        if number == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return number

    with ForkMap(run, count=8, jobs=2) as results, pytest.raises(WorkerLost, match="task 3") as lost:
        list(results)
    assert "killed by signal 9" in str(lost.value)


def test_leaving_early_stops_and_reaps_the_workers(tmp_path: Path) -> None:
    def run(number: int) -> int:
        if number > 0:
            time.sleep(60)  # would hold the test for minutes if close() did not stop it
        return number

    results = ForkMap(run, count=4, jobs=2)
    pids = list(results._pids)
    with results:
        assert next(iter(results)) == 0
    assert not any(_alive(pid) for pid in pids)


def test_the_worker_never_returns_into_the_callers_code(tmp_path: Path) -> None:
    # Code after the ForkMap runs once, in this process: a worker that unwound into it
    # (instead of exiting) would run it too.
    marker = tmp_path / "after"
    with ForkMap(lambda number: number, count=4, jobs=2) as results:
        assert list(results) == [0, 1, 2, 3]
    with marker.open("a") as out:
        out.write(f"{os.getpid()}\n")
    time.sleep(0)  # nothing to wait for: the workers were reaped by close()
    assert marker.read_text().split() == [str(os.getpid())]
