"""Python 3.14's forced shutdown (``terminate_workers()``, ``kill_workers()``) and CPython's
``test_cancel_futures`` promise: a shutdown right after submitting still runs a few tasks.

CPython 3.14, ``ProcessPoolExecutor._force_shutdown``: ``self.shutdown(wait=False,
cancel_futures=True)``, then ``proc.terminate()`` / ``proc.kill()`` on every live worker. Ours
does the same to the worker processes it started; a remote host ends the processes that ran
its tasks (the session is over) and stays up for the next executor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest
from conftest import RESULT_TIMEOUT, Gates, WorkerHost, free_tcp_port, wait_until, worker_env
from crash_cases import block_until

from zmqexecutor import BrokenZmqExecutor

HB = {"heartbeat_interval": 0.2, "heartbeat_timeout": 2.0}
HB_ARGS = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "2.0"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_forced_shutdown_of_local_workers(
    method: str, make_executor: Callable[..., Any], gates: Gates
) -> None:
    """Running futures fail, queued ones are cancelled, none stays pending, the worker
    processes are gone, and the executor refuses new work."""
    ex = make_executor(max_workers=2, prefetch=0)
    running = [gates(f"run{i}") for i in range(2)]
    futures = [ex.submit(block_until, str(g.path), None, str(g.started), 60.0) for g in running]
    for gate in running:
        gate.wait_started()
    pids = {w.pid for w in ex.stats().workers}
    queued = [ex.submit(pow, 2, i) for i in range(5)]

    getattr(ex, method)()

    for future in futures:
        with pytest.raises(BrokenZmqExecutor, match=method):
            future.result(timeout=RESULT_TIMEOUT)
    for future in queued:
        assert future.cancelled()
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 2)
    wait_until(lambda: not any(_alive(p) for p in pids), what="the worker processes to end")
    ex.shutdown(wait=True)


def test_terminate_does_not_wait_for_the_running_task(
    make_executor: Callable[..., Any],
    gates: Gates,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """terminate_workers() ends the worker process with its SIGTERM, running task included
    (a plain SIGTERM to a worker process lets its task finish first, and the supervisor
    would SIGKILL it only after WORKER_EXIT_TIMEOUT)."""
    ex = make_executor(max_workers=1)
    gate = gates("never")
    done = tmp_path / "done"
    future = ex.submit(_block_then_touch, str(gate.path), str(gate.started), str(done))
    gate.wait_started()
    (pid,) = {w.pid for w in ex.stats().workers}
    started = time.monotonic()
    ex.terminate_workers()
    wait_until(lambda: not _alive(pid), timeout=10.0, what="the worker process to end")
    assert time.monotonic() - started < 10.0
    gate.open()  # had the task gone on, it would now write the file
    with pytest.raises(BrokenZmqExecutor):
        future.result(timeout=RESULT_TIMEOUT)
    ex.shutdown(wait=True)  # the supervisor has reaped and logged every worker process
    assert f"worker process {pid} was killed by SIGKILL" not in caplog.text  # SIGTERM did it
    assert not done.exists()


def _block_then_touch(gate: str, started: str, done: str) -> None:
    block_until(gate, started=started, timeout=60.0)
    Path(done).touch()


def test_kill_workers_leaves_a_remote_host_up_for_the_next_executor(
    make_executor: Callable[..., Any], gates: Gates, tmp_path: Path
) -> None:
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    ex = make_executor(listen=address, insecure=True, **HB)
    host = WorkerHost(
        [address, "--processes", "1", "--insecure", *HB_ARGS], tmp_path / "host.log", worker_env()
    )
    try:
        gate = gates("remote")
        future = ex.submit(block_until, str(gate.path), None, str(gate.started), 60.0)
        gate.wait_started()
        (pid,) = {w.pid for w in ex.stats().workers}
        ex.kill_workers()
        with pytest.raises(BrokenZmqExecutor, match="kill_workers"):
            future.result(timeout=RESULT_TIMEOUT)
        ex.shutdown(wait=True)
        wait_until(lambda: not _alive(pid), what=lambda: f"the task's process to end\n{host.log()}")
        assert host.proc.poll() is None, host.log()

        # the next executor on the same address gets the host back
        nxt = make_executor(listen=address, insecure=True, **HB)
        new_pid = nxt.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
        assert new_pid != pid and host.owns(new_pid), host.log()
    finally:
        host.stop()


def test_shutdown_cancel_futures_right_after_submit_runs_a_few() -> None:
    """CPython's test_shutdown.test_cancel_futures: 50 tasks to a fresh executor, then
    shutdown(cancel_futures=True): more than 20 cancelled and at least one completed."""
    from zmqexecutor import ZmqExecutor

    ex = ZmqExecutor(max_workers=2)
    fs = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in fs if not f.cancelled()]
    assert others and all(f.done() and f.exception() is None for f in others)
    for f in cancelled:
        with pytest.raises(CancelledError):
            f.result(timeout=0)


def test_each_failed_future_has_its_own_exception(make_executor: Callable[..., Any]) -> None:
    """Python 3.14.x: futures that fail for one reason do not share one exception instance
    (a traceback added to one must not show on the others)."""
    ex = make_executor(max_workers=1, initializer=_fail_init)
    fs = [ex.submit(pow, 2, i) for i in range(3)]
    errors = [f.exception(timeout=RESULT_TIMEOUT) for f in fs]
    assert all(isinstance(e, BrokenZmqExecutor) for e in errors)
    assert len({id(e) for e in errors}) == 3


def _fail_init() -> None:
    raise ValueError("bad init")
