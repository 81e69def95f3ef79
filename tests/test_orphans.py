"""A worker process whose executor died while it ran a task must not outlive it.

Found after the session's benchmarks: two local worker processes of an executor that had
been SIGKILLed were still alive 1.5 hours later, blocked in the RESULTS send of the task
they had been running (the sink socket is ``immediate``: with no executor connected, a
blocking send waits forever, so the worker never reached its orphan check).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import RESULT_TIMEOUT, descendants, wait_until, worker_env
from test_faults import is_dead

EXECUTOR = textwrap.dedent(
    """
    import sys, time
    from zmqexecutor import ZmqExecutor
    import crash_cases

    gate, started = sys.argv[1], sys.argv[2]
    ex = ZmqExecutor(max_workers=1)
    ex.submit(crash_cases.block_until, gate, None, started)
    time.sleep(600)  # SIGKILLed by the test while the task runs
    """
)


@pytest.mark.timeout(90)
def test_worker_leaves_when_its_executor_dies_mid_task(tmp_path: Path) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", EXECUTOR, str(gate), str(started)], env=worker_env()
    )
    workers: set[int] = set()
    try:
        wait_until(started.exists, RESULT_TIMEOUT, "the task to start on the worker")
        workers = descendants(proc.pid)
        assert workers, "the executor's worker process was not found"
        proc.kill()  # the executor dies with the worker's supervisor (a thread in it)
        proc.wait(RESULT_TIMEOUT)
        gate.touch()  # the task ends: its result has nowhere to go
        wait_until(
            lambda: all(is_dead(pid) for pid in workers),
            RESULT_TIMEOUT,
            "the orphaned worker process to leave instead of waiting in its RESULTS send",
        )
    finally:
        proc.kill()
        proc.wait()
        for pid in workers:
            if not is_dead(pid):
                os.kill(pid, signal.SIGKILL)
