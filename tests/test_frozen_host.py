"""A worker host frozen longer than heartbeat_timeout serves again (issue 9, bug 2; F-06).

SIGSTOP to a host's whole process group (supervisor and worker processes) is what laptop
sleep, a paused or migrated VM, or hard swapping look like from outside. The executor
declares the silent host lost and fails its running task; after SIGCONT the host must notice
that it was forgotten and come back as a new incarnation (a new worker process that says
HELLO again), whether or not a ZMTP timer happened to drop its TCP connection meanwhile.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import crash_cases as cc
import pytest
from conftest import (
    RESULT_TIMEOUT,
    Gates,
    WorkerHost,
    host_logs,
    proc_stats,
    wait_until,
    worker_env,
)

HB_INTERVAL = 0.2
HB_TIMEOUT = 2.0
HB: dict[str, float] = {"heartbeat_interval": HB_INTERVAL, "heartbeat_timeout": HB_TIMEOUT}
HB_ARGS = ["--heartbeat-interval", str(HB_INTERVAL), "--heartbeat-timeout", str(HB_TIMEOUT)]
#: the executor fails a frozen host's task within heartbeat_timeout plus this
LOST_MARGIN = 3.0
#: F-06: a new task runs on the thawed host within heartbeat_timeout plus this of SIGCONT
RECOVERY_MARGIN = 3.0


@pytest.fixture
def host(gates: Gates, tmp_path: Path) -> Iterator[Callable[[str], WorkerHost]]:
    """Start one single-process CLI worker host; at teardown it is thawed and stopped."""
    started: list[WorkerHost] = []

    def start(address: str) -> WorkerHost:
        args = [address, "--processes", "1", "--insecure", *HB_ARGS]
        h = WorkerHost(args, tmp_path / "worker.log", worker_env())
        started.append(h)
        return h

    yield start
    gates.open_all()
    for h in started:
        os.killpg(h.pid, signal.SIGCONT)  # a failed test may leave it stopped
        h.stop()


def stopped(h: WorkerHost) -> bool:
    """Every process of the host is stopped (state T)."""
    states = [fields[0] for pid, fields in proc_stats().items() if int(fields[2]) == h.pid]
    return bool(states) and all(s == "T" for s in states)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "frozen_after_loss",
    [0.0, 2 * HB_TIMEOUT],
    ids=["thawed-at-loss", "thawed-later"],
)
def test_frozen_host_serves_again_as_new_incarnation(
    make_executor: Callable[..., Any],
    host: Callable[[str], WorkerHost],
    gates: Gates,
    frozen_after_loss: float,
) -> None:
    """SIGSTOP the host while its task runs, wait for WorkerLostError, SIGCONT: a new task
    runs on that host in a new worker process within heartbeat_timeout + RECOVERY_MARGIN.

    ``thawed-at-loss`` resumes it the moment the loss is reported: the executor's ZMTP
    timeout usually has not dropped the connection yet, so nothing but the host's own
    judgement can tell it that it was forgotten (without the fix: 0 of 6 recovered).
    ``thawed-later`` also lets the connection drop while frozen.
    """
    from zmqexecutor import WorkerLostError

    ex = make_executor(listen="tcp://127.0.0.1:*", insecure=True, **HB)
    h = host(ex.address)
    _, _, first_pid, pgid = ex.submit(cc.where).result(timeout=RESULT_TIMEOUT)
    assert pgid == h.pid, host_logs(h)

    gate = gates("frozen")
    running = ex.submit(cc.block_until, str(gate.path), None, str(gate.started))
    gate.wait_started()
    t_stop = time.monotonic()
    os.killpg(h.pid, signal.SIGSTOP)
    wait_until(lambda: stopped(h), 10.0, "every process of the host to be stopped")
    exc = running.exception(timeout=HB_TIMEOUT + LOST_MARGIN)
    assert isinstance(exc, WorkerLostError), repr(exc)
    assert time.monotonic() - t_stop <= HB_TIMEOUT + LOST_MARGIN
    if frozen_after_loss:
        time.sleep(frozen_after_loss)  # part of the scenario: how long the host stays frozen

    t_cont = time.monotonic()
    os.killpg(h.pid, signal.SIGCONT)
    deadline = HB_TIMEOUT + RECOVERY_MARGIN
    after = ex.submit(cc.where)
    try:
        _, _, pid, pgid = after.result(timeout=deadline)
    except TimeoutError:
        pytest.fail(f"the thawed host ran no task within {deadline}s of SIGCONT{host_logs(h)}")
    elapsed = time.monotonic() - t_cont
    assert pgid == h.pid, f"ran on pgid {pgid}, not on the thawed host {h.pid}"
    assert pid != first_pid, "the forgotten worker process ran it: not a new incarnation"
    assert h.proc.poll() is None, f"the host exited{host_logs(h)}"
    assert "starting incarnation 1" in h.log(), host_logs(h)
    assert elapsed <= deadline, f"served again after {elapsed:.1f}s > {deadline}s"
    # It keeps serving: a second task, no leftovers of the lost incarnation in the way.
    assert ex.submit(cc.where).result(timeout=RESULT_TIMEOUT)[3] == h.pid
