"""The worker command line and the refusal of unauthenticated remote sockets."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import crash_cases as cc
import pytest
from conftest import RESULT_TIMEOUT, Gates, free_tcp_port, wait_until, worker_env

from zmqexecutor import ConfigurationError, ZmqExecutor
from zmqexecutor._security import new_token

WORKER = [sys.executable, "-m", "zmqexecutor", "worker"]
# TEST-NET-1 (RFC 5737): never routed; the configuration is refused before any socket exists.
REMOTE = "tcp://192.0.2.1:5555"


def run_worker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WORKER, *args], capture_output=True, text=True, timeout=RESULT_TIMEOUT)


def test_help_documents_every_flag() -> None:
    console_script = str(Path(sys.executable).parent / "zmqexecutor-worker")
    for cmd in (WORKER, [console_script]):
        proc = subprocess.run(
            [*cmd, "--help"], capture_output=True, text=True, timeout=RESULT_TIMEOUT
        )
        assert proc.returncode == 0
        for flag in ("--listen", "--advertise", "--processes", "--insecure", "--log-level"):
            assert flag in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give the executor's endpoint"),
        (("tcp://127.0.0.1:5555", "--processes", "0"), "--processes must be at least 1"),
        (("--bogus",), "unrecognized arguments"),
        (("nonsense",), "not a ZeroMQ endpoint"),
        ((REMOTE,), "token"),
        ((REMOTE, "--insecure"), "only allows loopback"),
        (("--listen", "tcp://0.0.0.0:5556"), "zmqexecutor token"),
        (("tcp://127.0.0.1:5555",), "insecure=True"),
        (("tcp://127.0.0.1:5555", "--token-file", "/nonexistent/token"), "cannot read"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args: tuple[str, ...], message: str) -> None:
    proc = run_worker_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_executor_refuses_unauthenticated_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZMQEXECUTOR_TOKEN", raising=False)
    monkeypatch.delenv("ZMQEXECUTOR_TOKEN_FILE", raising=False)
    with pytest.raises(ConfigurationError, match="zmqexecutor token"):
        ZmqExecutor(listen="tcp://0.0.0.0:5555")
    with pytest.raises(ConfigurationError, match="only allows loopback"):
        ZmqExecutor(listen="tcp://0.0.0.0:5555", insecure=True)
    with pytest.raises(ConfigurationError, match="zmqexecutor token"):
        ZmqExecutor(workers=[REMOTE])
    with pytest.raises(ConfigurationError, match="insecure=True"):
        ZmqExecutor(listen="tcp://127.0.0.1:5555")


def test_insecure_opt_in_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zmqexecutor"):
        ex = ZmqExecutor(listen="tcp://127.0.0.1:*", insecure=True)
        ex.shutdown()
    assert "UNAUTHENTICATED" in caplog.text


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_must_be_positive(max_workers: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        ZmqExecutor(max_workers)


@pytest.mark.timeout(90)
def test_sigterm_lets_the_running_task_finish(gates: Gates) -> None:
    """SIGTERM to a worker host: its running task completes and reports, then exit 0."""
    token = new_token()
    with ZmqExecutor(listen="tcp://127.0.0.1:*", token=token) as ex:
        env = worker_env({"ZMQEXECUTOR_TOKEN": token})
        worker = subprocess.Popen([*WORKER, ex.address, "--processes", "1"], env=env)
        try:
            gate = gates("drain")
            fut = ex.submit(cc.block_until, str(gate.path), "finished", str(gate.started))
            gate.wait_started()
            worker.send_signal(signal.SIGTERM)
            gate.open()
            assert fut.result(timeout=RESULT_TIMEOUT) == "finished"
            assert worker.wait(timeout=RESULT_TIMEOUT) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def test_version_flag() -> None:
    import zmqexecutor

    proc = run_worker_cli("--version")
    assert proc.returncode == 0
    assert zmqexecutor.__version__ in proc.stdout


def start_worker_host(address: str, *args: str, token: str) -> subprocess.Popen[bytes]:
    env = worker_env({"ZMQEXECUTOR_TOKEN": token})
    return subprocess.Popen([*WORKER, address, "-n", "1", "--log-level", "WARNING", *args], env=env)


@pytest.mark.timeout(90)
def test_once_serves_one_executor_then_exits_0() -> None:
    token = new_token()
    with ZmqExecutor(listen="tcp://127.0.0.1:*", token=token) as ex:
        worker = start_worker_host(ex.address, "--once", token=token)
        assert ex.submit(pow, 3, 3).result(timeout=RESULT_TIMEOUT) == 27
    assert worker.wait(timeout=RESULT_TIMEOUT) == 0


@pytest.mark.timeout(60)
def test_idle_timeout_exits_0_without_an_executor() -> None:
    token = new_token()
    port = free_tcp_port()
    worker = start_worker_host(f"tcp://127.0.0.1:{port}", "--idle-timeout", "1", token=token)
    assert worker.wait(timeout=RESULT_TIMEOUT) == 0


@pytest.mark.timeout(90)
def test_worker_started_before_the_executor_connects_when_it_comes() -> None:
    token = new_token()
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    worker = start_worker_host(address, token=token)
    try:
        with ZmqExecutor(listen=address, token=token) as ex:
            assert ex.submit(pow, 2, 5).result(timeout=RESULT_TIMEOUT) == 32
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=RESULT_TIMEOUT) == 0


@pytest.mark.timeout(90)
def test_max_tasks_per_child_flag_replaces_processes() -> None:
    token = new_token()
    with ZmqExecutor(listen="tcp://127.0.0.1:*", token=token) as ex:
        worker = start_worker_host(ex.address, "--max-tasks-per-child", "2", token=token)
        try:
            pids = [ex.submit(os.getpid).result(timeout=RESULT_TIMEOUT) for _ in range(6)]
        finally:
            worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=RESULT_TIMEOUT) == 0
    assert len(set(pids)) == 3


@pytest.mark.timeout(90)
def test_stats_under_load(gates: Gates) -> None:
    with ZmqExecutor(max_workers=2) as ex:
        gate = gates("stats")
        blocked = [ex.submit(cc.block_until, str(gate.path), i) for i in range(2)]
        queued = [ex.submit(pow, 2, i) for i in range(10)]
        wait_until(lambda: ex.stats().running == 2, what="both workers busy")
        s = ex.stats()
        assert s.pending == 10 and s.running == 2
        assert sorted(w.in_flight for w in s.workers) == [1, 1]
        assert all(w.host and w.pid and w.slots == 1 for w in s.workers)
        gate.open()
        assert [f.result(timeout=RESULT_TIMEOUT) for f in blocked + queued] == [0, 1] + [
            2**i for i in range(10)
        ]
        ex.submit(pow, 0, -1).exception(timeout=RESULT_TIMEOUT)  # ZeroDivisionError
        s = ex.stats()
        assert (s.done, s.failed, s.pending, s.running) == (12, 1, 0, 0)
        assert sum(w.done for w in s.workers) == 13 and sum(w.failed for w in s.workers) == 1
        assert s.bytes_sent > 0 and s.bytes_received > 0
        assert "in flight" in str(s)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"processes": 0}, "--processes must be at least 1"),
        ({"max_tasks_per_child": 0}, "--max-tasks-per-child must be at least 1"),
        ({"idle_timeout": 0}, "--idle-timeout must be > 0"),
        ({"heartbeat_interval": 2.0, "heartbeat_timeout": 1.0}, "--heartbeat-interval <"),
        ({"resources": "GPU=-1"}, "non-negative"),
    ],
)
def test_run_worker_makes_the_checks_the_cli_makes(kwargs: dict[str, Any], message: str) -> None:
    """Library callers get the command line's checks (they live in run_worker)."""
    from zmqexecutor import run_worker

    with pytest.raises(ValueError, match=message):
        run_worker("tcp://127.0.0.1:5555", insecure=True, **kwargs)
