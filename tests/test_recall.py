"""RECALL with real worker processes: a worker that idles takes back the tail of another's
queue, which gives back only tasks it has not started (issue 11; the rules and their races
are checked in ``test_simulation.py``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import crash_cases as cc
from conftest import RESULT_TIMEOUT, Gates, wait_until

from zmqexecutor import ZmqExecutor


def sleep_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_an_idle_worker_takes_back_the_tail_of_a_blocked_one(
    make_executor: Callable[..., ZmqExecutor], gates: Gates
) -> None:
    ex = make_executor(max_workers=2, prefetch=4)
    ready = lambda: sum(w.ready for w in ex.stats().workers) == 2  # noqa: E731
    wait_until(ready, RESULT_TIMEOUT, "both workers ready")
    assert [f.result(RESULT_TIMEOUT) for f in [ex.submit(sleep_pid, 0.01) for _ in range(2)]]
    # each worker runs a task blocked on its own gate, with three queued behind it
    a, b = gates("a"), gates("b")
    fa = ex.submit(cc.block_until, str(a.path), None, str(a.started))
    fb = ex.submit(cc.block_until, str(b.path), None, str(b.started))
    a.wait_started()
    b.wait_started()
    rest = [ex.submit(sleep_pid, 0.05) for _ in range(6)]
    wait_until(lambda: ex.stats().pending == 0, RESULT_TIMEOUT, "every task sent")
    held = {len(w.task_ids) for w in ex.stats().workers}
    assert held == {4}, f"expected 1 running + 3 queued on each worker, got {held}"
    b.open()  # worker B runs its queue and idles while A is still blocked
    pid_b = fb.result(RESULT_TIMEOUT)
    queue_a = next(w.task_ids for w in ex.stats().workers if w.pid != pid_b)
    wait_until(lambda: sum(f.done() for f in rest) >= 3, RESULT_TIMEOUT, "B's queue done")
    a.open()
    pid_a = fa.result(RESULT_TIMEOUT)
    pids = [f.result(RESULT_TIMEOUT) for f in rest]
    assert set(pids) <= {pid_a, pid_b}
    # A's queued tasks (in the order sent): it gave back what it had not started
    ran_on_b = pids.count(pid_b)
    assert ran_on_b > 3, f"no task queued on A ran on B (A held {list(queue_a)}): no RECALL"
    assert pids.count(pid_a) >= 1, "A gave back every task: the tail only was asked for"
