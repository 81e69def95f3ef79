"""Availability before authentication: idle connections must not lock legitimate workers out.

Anyone who can reach a listening port can open TCP connections to it and send nothing: no
token is needed for that. Each one holds a file descriptor in the listening process until
libzmq gives up on its handshake (30 s by default). With the soft limit of 1,024 open files
that a user's shell gives, about a thousand of them used to stop any worker from joining and
any file from being opened in the user's process (issue 9, bug 4). Now every bound socket
closes connections that have not finished their handshake after ``HANDSHAKE_TIMEOUT``, and a
process that listens on TCP raises its soft open-file limit toward the hard limit.

The executor under test runs in a subprocess started with a soft limit of 1,024, as a user's
shell gives it; this test process holds the idle connections (it needs a higher limit for
them, or the test is skipped). Everything is on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import secrets
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerHost, free_tcp_port, host_logs, wait_until, worker_env

from zmqexecutor import _net
from zmqexecutor._defaults import HANDSHAKE_TIMEOUT

IDLE_CONNECTIONS = 1500
#: what a user's shell gives (the executor process starts with it)
SHELL_SOFT_LIMIT = 1024
#: the first task must complete this soon after its worker host started, flood or not
FIRST_TASK_DEADLINE = 10.0
#: files the user's process must still be able to open during the flood
FILES_OPENED = 50

# The user's program: an executor that listens with a token, then, told "go" on stdin,
# opens FILES_OPENED files and runs one task; reports both as a JSON line.
EXECUTOR_SCRIPT = """
import json, os, resource, sys

# the soft limit a user's shell gives (set here, not in a preexec_fn: pytest has threads)
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), hard))
from zmqexecutor import ZmqExecutor

ex = ZmqExecutor(listen="tcp://127.0.0.1:*")  # the token comes from $ZMQEXECUTOR_TOKEN
soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
print(json.dumps({"address": ex.address, "soft_limit": soft}), flush=True)
sys.stdin.readline()
opened, errors = [], []
for _ in range(int(sys.argv[1])):
    try:
        opened.append(open(os.devnull, "rb"))
    except OSError as e:
        errors.append(str(e))
for f in opened:
    f.close()
try:
    pid = ex.submit(os.getpid).result(timeout=60)
    task = "ok" if pid != os.getpid() else "ran in the executor"
except Exception as e:
    task = repr(e)
print(json.dumps({"open_errors": errors, "task": task}), flush=True)
sys.stdin.readline()
ex.shutdown(wait=True, cancel_futures=True)
"""


def _env(token: str) -> dict[str, str]:
    env = {k: v for k, v in worker_env().items() if not k.startswith("ZMQEXECUTOR_TOKEN")}
    env["ZMQEXECUTOR_TOKEN"] = token
    return env


class ExecutorProcess:
    """EXECUTOR_SCRIPT in a subprocess that starts with the shell's soft open-file limit."""

    def __init__(self, token: str, log_path: Path) -> None:
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", EXECUTOR_SCRIPT, str(FILES_OPENED), str(SHELL_SOFT_LIMIT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=_env(token),
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buffer = b""
        # not select.select: this process holds fds above 1,023 during the test
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def report(self, timeout: float) -> dict[str, Any]:
        """The script's next JSON line; fail the test after ``timeout`` seconds."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                pytest.fail(f"no report from the executor process in {timeout}s:\n{self.log()}")
            if self._selector.select(left):
                self._buffer += self.proc.stdout.read() or b""
        line, _, self._buffer = self._buffer.partition(b"\n")
        report: dict[str, Any] = json.loads(line)
        return report

    def tell(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.tell()  # the script shuts its executor down and exits
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self._selector.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
        self._log.close()


@pytest.fixture
def enough_fds() -> Iterator[None]:
    """Raise this process's soft open-file limit for the idle connections it will hold;
    skip when the hard limit does not allow it. Restored afterwards."""
    needed = IDLE_CONNECTIONS + 1000  # plus pytest, the leak check, pipes, logs
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(
            f"holding {IDLE_CONNECTIONS} connections needs {needed} open files, but the hard "
            f"limit (ulimit -Hn) is {hard}; raise it to run this test"
        )
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class IdleFlood:
    """Plain TCP connections that send nothing (no ZMTP greeting), as a port scanner or a
    host without the token can open.

    They are opened in batches smaller than the listen backlog, each batch once the previous
    one was accepted: the kernel would otherwise drop what overflows the accept queue (with
    SYN cookies our side still believes those connections are up), and the flood would never
    reach the executor. A ZMTP peer sends its greeting as soon as it accepts a connection,
    so a connection is accepted when it becomes readable. A batch not accepted within
    ``accept_wait`` means the executor cannot accept more: the rest are opened without
    waiting.
    """

    BATCH = 50  # libzmq's listen backlog (ZMQ_BACKLOG) is 100

    def __init__(self, address: str, count: int, accept_wait: float) -> None:
        m = re.fullmatch(r"tcp://([\d.]+):(\d+)", address)
        assert m, address
        target = (m.group(1), int(m.group(2)))
        self.sockets: list[socket.socket] = []
        self.accepted = 0
        saturated = False
        with selectors.DefaultSelector() as selector:  # fds above 1,023: no select.select
            for start in range(0, count, self.BATCH):
                batch = []
                for _ in range(min(self.BATCH, count - start)):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    self.sockets.append(s)
                    s.setblocking(False)  # a full accept queue must not block us
                    s.connect_ex(target)
                    batch.append(s)
                if saturated:
                    continue
                for s in batch:
                    selector.register(s, selectors.EVENT_READ)
                pending = set(batch)
                deadline = time.monotonic() + accept_wait
                while pending and time.monotonic() < deadline:
                    for key, _ in selector.select(deadline - time.monotonic()):
                        selector.unregister(key.fileobj)
                        pending.discard(key.fileobj)  # type: ignore[arg-type]
                        self.accepted += 1
                for s in pending:
                    selector.unregister(s)
                saturated = bool(pending)

    def close(self) -> None:
        for s in self.sockets:
            s.close()


@pytest.mark.timeout(180)
def test_idle_connections_do_not_lock_out_workers(enough_fds: None, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(24)
    ex = ExecutorProcess(token, tmp_path / "executor.log")
    flood: IdleFlood | None = None
    host: WorkerHost | None = None
    try:
        ready = ex.report(60)
        flood = IdleFlood(ready["address"], IDLE_CONNECTIONS, accept_wait=2.0)
        started = time.monotonic()
        host = WorkerHost(
            [ready["address"], "--processes", "1"], tmp_path / "worker.log", _env(token)
        )
        ex.tell()
        done = ex.report(60 + FIRST_TASK_DEADLINE)
        first_task = time.monotonic() - started
        print(
            f"first task {first_task:.2f} s after the host started; {flood.accepted} of "
            f"{IDLE_CONNECTIONS} idle connections accepted by the executor; "
            f"{len(done['open_errors'])} of {FILES_OPENED} files failed to open"
        )
        assert done["open_errors"] == [], (
            f"{len(done['open_errors'])} of {FILES_OPENED} files could not be opened in the "
            f"executor's process during the flood: {done['open_errors'][0]}"
        )
        assert done["task"] == "ok", f"{done['task']}\n{ex.log()}{host_logs(host)}"
        assert first_task < FIRST_TASK_DEADLINE, (
            f"the first task took {first_task:.1f}s with {IDLE_CONNECTIONS} idle connections"
            f"{host_logs(host)}"
        )
        assert ready["soft_limit"] > SHELL_SOFT_LIMIT, "the executor kept the shell's limit"
    finally:
        if flood is not None:
            flood.close()
        ex.close()
        if host is not None:
            host.stop()


def _idle_connection(endpoint: str) -> socket.socket | None:
    """A plain TCP connection to ``endpoint`` that sends nothing; None if refused."""
    m = re.fullmatch(r"tcp://([\d.]+):(\d+)", endpoint)
    assert m, endpoint
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.connect((m.group(1), int(m.group(2))))
    except ConnectionRefusedError:
        s.close()
        return None
    return s


def _seconds_until_closed(conns: dict[str, socket.socket], timeout: float) -> dict[str, float]:
    """How long after its greeting arrived the peer of each connection closed it (inf: not
    within ``timeout``). We read and never answer."""
    arrived: dict[str, float] = {}
    closed: dict[str, float] = {}
    with selectors.DefaultSelector() as selector:
        for name, s in conns.items():
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ, name)
        deadline = time.monotonic() + timeout
        while len(closed) < len(conns) and time.monotonic() < deadline:
            for key, _ in selector.select(deadline - time.monotonic()):
                name = key.data
                try:
                    data = conns[name].recv(4096)
                except ConnectionError:
                    data = b""
                now = time.monotonic()
                arrived.setdefault(name, now)
                if not data:
                    closed[name] = now - arrived[name]
                    selector.unregister(key.fileobj)
    return {name: closed.get(name, float("inf")) for name in conns}


@pytest.mark.timeout(120)
def test_unfinished_handshakes_are_closed(
    make_executor: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every bound socket that accepts network peers (the executor's sink, a worker host's
    rendezvous socket, a worker process's inbox) closes a connection that sends nothing
    after HANDSHAKE_TIMEOUT, not libzmq's 30 s."""
    caplog.set_level(logging.INFO, logger="zmqexecutor")
    token = secrets.token_urlsafe(24)
    ex = make_executor(listen="tcp://127.0.0.1:*", token=token)
    rendezvous = f"tcp://127.0.0.1:{free_tcp_port()}"
    hosts = [
        WorkerHost([ex.address, "--processes", "1"], tmp_path / "joins.log", _env(token)),
        WorkerHost(
            ["--listen", rendezvous, "--processes", "1"], tmp_path / "waits.log", _env(token)
        ),
    ]
    conns: dict[str, socket.socket] = {}
    try:
        inboxes: list[str] = []

        def joined() -> bool:
            inboxes[:] = [
                m.group(1)
                for r in list(caplog.records)
                if (m := re.search(r"joined \(inbox (tcp://[^)\s]+)\)", r.getMessage()))
            ]
            return bool(inboxes)

        wait_until(joined, 30, lambda: f"a worker process to join{host_logs(*hosts)}")

        def rendezvous_up() -> bool:
            s = _idle_connection(rendezvous)
            if s is not None:
                conns["rendezvous"] = s
            return s is not None

        wait_until(rendezvous_up, 30, lambda: f"the host to listen{host_logs(*hosts)}")
        for name, endpoint in (("sink", ex.address), ("inbox", inboxes[0])):
            s = _idle_connection(endpoint)
            assert s is not None, f"{name} {endpoint} refused a connection"
            conns[name] = s
        closed = _seconds_until_closed(conns, 40)
        print("idle connection closed after (s):", {k: round(v, 2) for k, v in closed.items()})
        late = {k: v for k, v in closed.items() if v > HANDSHAKE_TIMEOUT + 3}
        assert not late, f"idle connections not closed in {HANDSHAKE_TIMEOUT + 3}s: {late}"
        assert ex.submit(os.getpid).result(timeout=30) in hosts[0].processes()
    finally:
        for s in conns.values():
            s.close()
        for host in hosts:
            host.stop()


def test_raise_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Soft limit raised to min(hard, wanted); never lowered; a refusal is tolerated."""
    limits = {"soft": 1024, "hard": 4096}
    calls: list[tuple[int, int]] = []

    def getrlimit(which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return limits["soft"], limits["hard"]

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        calls.append(value)
        limits["soft"], limits["hard"] = value

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)

    assert _net.raise_open_file_limit(65536) == 4096  # up to the hard limit
    assert calls == [(4096, 4096)]
    limits.update(soft=1024, hard=1_000_000)
    assert _net.raise_open_file_limit(65536) == 65536  # but not beyond what is wanted
    assert calls[-1] == (65536, 1_000_000)
    limits.update(soft=200_000)
    assert _net.raise_open_file_limit(65536) == 200_000  # never lowered
    limits.update(soft=1024, hard=resource.RLIM_INFINITY)
    assert _net.raise_open_file_limit(65536) == 65536
    assert calls[-1] == (65536, resource.RLIM_INFINITY)
    n = len(calls)
    limits.update(soft=resource.RLIM_INFINITY)
    assert _net.raise_open_file_limit(65536) == resource.RLIM_INFINITY
    assert len(calls) == n  # infinity is not lowered either

    def refuse(which: int, value: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    limits.update(soft=1024, hard=4096)
    assert _net.raise_open_file_limit(65536) == 1024  # tolerated; nothing changed


def test_raise_open_file_limit_for_real() -> None:
    """In this process: the limit really moves, and is then restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = SHELL_SOFT_LIMIT
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.skip(f"hard open-file limit {hard} leaves no room above {low} to test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        wanted = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
        assert _net.raise_open_file_limit(wanted) == wanted
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (wanted, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
