"""Directed, credit-based dispatch: no task waits behind a busy worker while another is free.

These are the two failures measured with blind PUSH round-robin (DESIGN.md §7): short tasks
stranded behind a long one, and a late-joining worker that receives none of the queued tasks.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import crash_cases as cc
import pytest
from conftest import RESULT_TIMEOUT, TESTS_DIR, Gates, free_tcp_port, rendezvous_pids, wait_until

from zmqexecutor import ZmqExecutor

WORKER_STOP_TIMEOUT = 20.0


def mul(x: int, y: int) -> int:
    return x * y


def test_short_tasks_not_stranded_behind_long_one(
    ex2: ZmqExecutor, gates: Gates, tmp_path: Path
) -> None:
    rendezvous_pids(ex2, 2, tmp_path)  # both workers registered and idle
    gate = gates()
    long = ex2.submit(cc.block_until, str(gate.path), "long")
    shorts = [ex2.submit(mul, i, i) for i in range(20)]
    _, not_done = cf.wait(shorts, timeout=RESULT_TIMEOUT)
    assert not not_done, f"{len(not_done)} of 20 short tasks stuck behind the long one"
    assert [f.result(timeout=0) for f in shorts] == [i * i for i in range(20)]
    assert not long.done(), "the long task should still be blocked"
    gate.open()
    assert long.result(timeout=RESULT_TIMEOUT) == "long"


# ---------------------------------------------------------------------------- late joiner


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return int(data[data.rfind(")") + 2 :].split()[1])


def is_same_or_descendant(pid: int, root: int) -> bool:
    """True if ``pid`` is ``root`` or one of its descendants (both must be alive)."""
    try:
        while pid > 1:
            if pid == root:
                return True
            pid = _ppid(pid)
    except OSError:
        return False
    return False


class WorkerProcess:
    """A ``python -m zmqexecutor worker`` subprocess, logging to a file."""

    def __init__(self, address: str, log_path: Path) -> None:
        self.log_path = log_path
        env = dict(os.environ)
        # The worker host must be able to import the tasks' modules, as on a real remote host.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p
        )
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zmqexecutor", "worker", address, "-n", "1", "--insecure"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not exit. Returns the SIGTERM exit code (or None)."""
        code: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(WORKER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            code = self.proc.returncode
        self._log.close()
        return code


@pytest.mark.timeout(180)
def test_late_worker_gets_queued_work(
    make_executor: Callable[..., ZmqExecutor], gates: Gates, tmp_path: Path
) -> None:
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    ex = make_executor(listen=address, insecure=True)  # no local workers
    workers: list[WorkerProcess] = []
    try:
        w1 = WorkerProcess(address, tmp_path / "worker1.log")
        workers.append(w1)
        gate = gates()
        blocker = ex.submit(cc.block_until, str(gate.path), None, str(gate.started))
        wait_until(gate.started.exists, 60, lambda: "worker 1 to run the blocker\n" + w1.log())
        rest = [ex.submit(os.getpid) for _ in range(39)]

        w2 = WorkerProcess(address, tmp_path / "worker2.log")
        workers.append(w2)
        # Everything not yet sent to worker 1 belongs to worker 2; allow a prefetch of up to 9.
        wait_until(
            lambda: sum(f.done() for f in rest) >= 30,
            60,
            lambda: (
                f"worker 2 to run 30 of the 39 queued tasks; done: "
                f"{sum(f.done() for f in rest)}\n--- worker 2 log:\n{w2.log()}"
            ),
        )
        assert not blocker.done()
        early = [f.result(timeout=0) for f in rest if f.done()]
        assert all(is_same_or_descendant(p, w2.pid) for p in early), (
            f"tasks finished before the blocker was released must have run on worker 2 "
            f"(pid {w2.pid}): {sorted(set(early))}"
        )

        gate.open()
        assert is_same_or_descendant(blocker.result(timeout=RESULT_TIMEOUT), w1.pid)
        pids = [f.result(timeout=RESULT_TIMEOUT) for f in rest]
        assert all(
            is_same_or_descendant(p, w1.pid) or is_same_or_descendant(p, w2.pid) for p in pids
        )
    finally:
        codes = [(w, w.stop()) for w in workers]
    for w, code in codes:
        assert code == 0, f"worker pid {w.pid} exited with {code} on SIGTERM:\n{w.log()}"
