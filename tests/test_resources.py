"""Per-task resources and priorities, end to end (issue 13): ``executor.options(...)``.

Exclusive use of a resource is checked with a marker file created with O_EXCL while a task
holds a unit: a second task holding the same unit at the same time fails to create it and
raises, so over-commitment shows as an error, not as a timing guess.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import RESULT_TIMEOUT, Gates, WorkerHost, free_tcp_port, wait_until, worker_env
from crash_cases import block_until, rendezvous

import zmqexecutor
from zmqexecutor import NoWorkersError

HB_ARGS = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "3"]
HB = {"heartbeat_interval": 0.2, "heartbeat_timeout": 3.0}


def hold_exclusively(directory: str, seconds: float) -> tuple[int, dict[str, list[int]]]:
    """Runs on a worker: hold the unit(s) current_resources() names for ``seconds``; raise
    if another task holds one of them at the same time."""
    held = zmqexecutor.current_resources()
    markers = [os.path.join(directory, f"{k}-{u}") for k, us in held.items() for u in us]
    for marker in markers:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # FileExistsError
    try:
        time.sleep(seconds)
    finally:
        for marker in markers:
            os.unlink(marker)
    return os.getpid(), held


def record(path: str, label: str) -> str:
    with open(path, "a") as f:
        f.write(label + "\n")
    return label


def test_gpu_tasks_run_only_where_declared_and_never_two_at_once(
    make_executor: Callable[..., Any], tmp_path: Path
) -> None:
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    ex = make_executor(listen=address, insecure=True, **HB)
    common = ["--processes", "2", "--insecure", *HB_ARGS]
    gpu = WorkerHost([address, *common, "--resources", "GPU=1"], tmp_path / "gpu.log", worker_env())
    plain = WorkerHost([address, *common], tmp_path / "plain.log", worker_env())
    try:
        wait_until(lambda: len(ex.stats().workers) == 4, what="four worker processes")
        view = ex.options(resources={"GPU": 1})
        results = list(view.map(hold_exclusively, [str(tmp_path)] * 8, [0.05] * 8))
        assert all(gpu.owns(pid) for pid, _ in results), (results, gpu.processes())
        assert all(held == {"GPU": [0]} for _, held in results)
        # plain tasks use both hosts (a gate keeps each one running until all four started)
        meeting = tmp_path / "rv"
        meeting.mkdir()
        pids = set(ex.map(rendezvous, [str(meeting)] * 4, range(4), [4] * 4))
        assert any(gpu.owns(p) for p in pids) and any(plain.owns(p) for p in pids)
        declared = {h.name: h for h in ex.stats().hosts if h.resources}
        assert [h.resources for h in declared.values()] == [{"GPU": 1}]
    finally:
        gpu.stop()
        plain.stop()


def test_local_gpu_is_shared_by_local_workers(
    make_executor: Callable[..., Any], tmp_path: Path
) -> None:
    ex = make_executor(max_workers=2, resources={"GPU": 1})
    fs = [
        ex.options(resources={"GPU": 1}).submit(hold_exclusively, str(tmp_path), 0.05)
        for _ in range(6)
    ]
    plain = [ex.submit(os.getpid) for _ in range(4)]
    assert all(f.result(timeout=RESULT_TIMEOUT)[1] == {"GPU": [0]} for f in fs)
    assert all(f.result(timeout=RESULT_TIMEOUT) for f in plain)
    assert zmqexecutor.current_resources() == {}  # only a task holding units has any


def test_high_priority_runs_before_queued_low_priority(
    make_executor: Callable[..., Any], gates: Gates, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1)
    gate = gates("busy")
    busy = ex.submit(block_until, str(gate.path), None, str(gate.started))
    gate.wait_started()
    order = tmp_path / "order"
    low = [ex.submit(record, str(order), f"low{i}") for i in range(20)]
    high = [ex.options(priority=10).submit(record, str(order), f"high{i}") for i in range(5)]
    assert ex.stats().pending_by_priority == {10: 5, 0: 20}
    gate.open()
    for f in [busy, *low, *high]:
        f.result(timeout=RESULT_TIMEOUT)
    ran = order.read_text().split()
    assert ran[:5] == [f"high{i}" for i in range(5)], ran
    assert ran[5:] == [f"low{i}" for i in range(20)], ran  # FIFO within a priority


def test_a_request_no_host_declares_waits_warns_and_times_out(
    make_executor: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="zmqexecutor")
    ex = make_executor(max_workers=1, no_worker_timeout=1.0)
    waiting = ex.options(resources={"TPU": 1}).submit(os.getpid)
    assert ex.submit(os.getpid).result(timeout=RESULT_TIMEOUT)  # others are not held up
    with pytest.raises(NoWorkersError, match="TPU"):
        waiting.result(timeout=RESULT_TIMEOUT)
    warnings = [r for r in caplog.records if "which no connected host declares" in r.message]
    assert len(warnings) == 1, caplog.text


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"resources": {"GPU": -1}}, ValueError),
        ({"resources": {"GPU": "one"}}, ValueError),
        ({"resources": {"GPU": float("nan")}}, ValueError),
        ({"resources": ["GPU"]}, ValueError),
        ({"priority": "high"}, TypeError),
    ],
)
def test_bad_options_are_refused(
    make_executor: Callable[..., Any], options: dict[str, Any], error: type[Exception]
) -> None:
    ex = make_executor(max_workers=1)
    with pytest.raises(error):
        ex.options(**options)
    with pytest.raises(ValueError):
        make_executor(max_workers=1, resources={"GPU": -2})


def test_view_shutdown_leaves_the_executor_running(
    make_executor: Callable[..., Any], gates: Gates
) -> None:
    ex = make_executor(max_workers=1)
    gate = gates("busy")
    busy = ex.submit(block_until, str(gate.path), None, str(gate.started))
    gate.wait_started()
    view = ex.options(priority=1)
    queued = view.submit(os.getpid)
    view.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        view.submit(os.getpid)
    gate.open()
    busy.result(timeout=RESULT_TIMEOUT)
    assert ex.submit(pow, 2, 5).result(timeout=RESULT_TIMEOUT) == 32
    other = ex.options(priority=2)
    assert list(other.map(pow, [2, 3], [2, 2])) == [4, 9]
    other.shutdown(wait=True)
    assert ex.submit(pow, 2, 3).result(timeout=RESULT_TIMEOUT) == 8


def test_cli_refuses_a_bad_resources_flag(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "zmqexecutor", "worker", "ipc:///nowhere", "--resources", "GPU"],
        capture_output=True,
        text=True,
        timeout=60,
        env=worker_env(),
    )
    assert proc.returncode == 2 and "NAME=AMOUNT" in proc.stderr, proc.stderr
