"""The worker command line and the refusal of unauthenticated remote sockets."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import crash_cases as cc
import pytest
from conftest import RESULT_TIMEOUT, Gates

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
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(cc.__file__).parent),
            "ZMQEXECUTOR_TOKEN": token,
        }
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
