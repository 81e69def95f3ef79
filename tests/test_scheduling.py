"""Directed, credit-based dispatch: no task waits behind a busy worker while another is free.

These are the two failures measured with blind PUSH round-robin (DESIGN.md §7): short tasks
stranded behind a long one, and a late-joining worker that receives none of the queued tasks.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable
from pathlib import Path

import crash_cases as cc
import pytest
from conftest import (
    RESULT_TIMEOUT,
    Gates,
    WorkerHost,
    free_tcp_port,
    host_logs,
    rendezvous_pids,
    wait_until,
)

from zmqexecutor import ZmqExecutor


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


@pytest.mark.timeout(180)
def test_late_worker_gets_queued_work(
    make_executor: Callable[..., ZmqExecutor],
    worker_hosts: Callable[..., WorkerHost],
    gates: Gates,
) -> None:
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    ex = make_executor(listen=address, insecure=True)  # no local workers
    workers: list[WorkerHost] = []
    try:
        w1 = worker_hosts(address, "--insecure", name="1")
        workers.append(w1)
        gate = gates()
        blocker = ex.submit(cc.block_until, str(gate.path), None, str(gate.started))
        wait_until(gate.started.exists, 60, lambda: "worker 1 to run the blocker" + host_logs(w1))
        rest = [ex.submit(os.getpid) for _ in range(39)]

        w2 = worker_hosts(address, "--insecure", name="2")
        workers.append(w2)
        # Everything not yet sent to worker 1 belongs to worker 2; allow a prefetch of up to 9.
        wait_until(
            lambda: sum(f.done() for f in rest) >= 30,
            60,
            lambda: (
                f"worker 2 to run 30 of the 39 queued tasks; done: "
                f"{sum(f.done() for f in rest)}{host_logs(w2)}"
            ),
        )
        assert not blocker.done()
        early = [f.result(timeout=0) for f in rest if f.done()]
        assert all(w2.owns(p) for p in early), (
            f"tasks finished before the blocker was released must have run on worker 2 "
            f"(pid {w2.pid}): {sorted(set(early))}"
        )

        gate.open()
        assert w1.owns(blocker.result(timeout=RESULT_TIMEOUT))
        pids = [f.result(timeout=RESULT_TIMEOUT) for f in rest]
        assert all(w1.owns(p) or w2.owns(p) for p in pids)
    finally:
        codes = [(w, w.stop()) for w in workers]
    for w, code in codes:
        assert code == 0, f"worker pid {w.pid} exited with {code} on SIGTERM:{host_logs(w)}"
