"""Output of remote tasks (issue 10): what a task on a remote host writes to stdout and
stderr is printed by the executor, each line prefixed with its origin; bounded by a
per-host rate; unchanged for local workers.

Hosts are ``python -m zmqexecutor worker`` subprocesses on loopback (``--insecure``), as in
test_faults.py; their own stdout and stderr go to a log file. The executor prints from its
dispatcher's printer thread, so the tests replace ``sys.stdout`` and ``sys.stderr`` with
thread-safe buffers (``Captured``) and wait on their contents with a deadline.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import WorkerHost, free_tcp_port, host_logs, wait_until, worker_env

from zmqexecutor import _messages as msg
from zmqexecutor import _protocol as proto
from zmqexecutor._defaults import OUTPUT_BURST, OUTPUT_MAX_LINE, OUTPUT_RATE
from zmqexecutor._output import _Pipe
from zmqexecutor._protocol import OutputChunk

LOOPBACK = "tcp://127.0.0.1:*"
HB_ARGS = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "3"]
HB: dict[str, float] = {"heartbeat_interval": 0.2, "heartbeat_timeout": 3.0}
HOST = socket.gethostname()


# ---------------------------------------------------------------------------- tasks


def say(text: str) -> int:
    """Runs on a worker: one line to stdout, one to stderr."""
    print(f"out {text}")
    print(f"err {text}", file=sys.stderr)
    return os.getpid()


def stdout_target() -> str:
    """Runs on a worker: what its fd 1 is (a pipe to its supervisor, or the host's log)."""
    return os.readlink("/proc/self/fd/1")


def say_and_exit(text: str) -> None:
    """Runs on a worker: last words, then the process dies without any cleanup."""
    print(f"out {text}")
    print(f"err {text}", file=sys.stderr)
    os._exit(1)


def flood(seconds: float) -> tuple[int, float]:
    """Runs on a worker: 1 KiB lines as fast as it can for ``seconds``; returns the bytes
    written and the longest single print (a full pipe would block one)."""
    line = "x" * 1023
    written, longest = 0, 0.0
    start = now = time.perf_counter()
    while now - start < seconds:
        print(line)
        after = time.perf_counter()
        longest = max(longest, after - now)
        written += 1024
        now = after
    return written, longest


# ---------------------------------------------------------------------------- fixtures


class Captured:
    """A thread-safe stand-in for ``sys.stdout`` / ``sys.stderr``; ``block()`` makes every
    write wait (a full pipe) until ``unblock()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._open = threading.Event()
        self._open.set()
        self.blocked_writes = 0

    def write(self, text: str) -> int:
        if not self._open.is_set():
            self.blocked_writes += 1
            self._open.wait()
        with self._lock:
            self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        with self._lock:
            return "".join(self._parts)

    def block(self) -> None:
        self._open.clear()

    def unblock(self) -> None:
        self._open.set()


@pytest.fixture
def out(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], tuple[Captured, Captured]]]:
    """Call it first thing in the test: pytest's own capture sets ``sys.stdout`` again
    when the test's call phase starts, after the fixtures."""
    made: list[Captured] = []

    def install() -> tuple[Captured, Captured]:
        stdout, stderr = Captured(), Captured()
        monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.setattr(sys, "stderr", stderr)
        made.extend((stdout, stderr))
        return stdout, stderr

    yield install
    for captured in made:
        captured.unblock()


def buffered_worker_env() -> dict[str, str]:
    env = worker_env()
    del env["PYTHONUNBUFFERED"]  # as on a real host: buffering is ours to choose
    return env


@pytest.fixture
def start_host(tmp_path: Path) -> Iterator[Callable[..., WorkerHost]]:
    """Factory of CLI worker hosts connected to an executor; all stopped at teardown."""
    started: list[WorkerHost] = []

    def start(address: str | None, processes: int = 1, *extra: str) -> WorkerHost:
        """Connect to ``address`` (mode 2), or with None wait for an executor on the
        endpoint given in ``extra`` as ``--listen ENDPOINT`` (mode 3)."""
        where = [address] if address else []
        args = [*where, "--processes", str(processes), "--insecure", *HB_ARGS, *extra]
        host = WorkerHost(args, tmp_path / f"host-{len(started)}.log", buffered_worker_env())
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()


def remote(make_executor: Callable[..., Any], **kwargs: Any) -> Any:
    return make_executor(listen=LOOPBACK, insecure=True, **HB, **kwargs)


def lines_of(text: str) -> list[str]:
    return text.splitlines()


# ---------------------------------------------------------------------------- end to end


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["listen", "workers"])
def test_stdout_and_stderr_arrive_prefixed(
    make_executor: Callable[..., Any],
    start_host: Callable[..., WorkerHost],
    out: Callable[[], tuple[Captured, Captured]],
    mode: str,
) -> None:
    stdout, stderr = out()
    if mode == "listen":  # mode 2: the host connects to the executor
        ex = remote(make_executor)
        host = start_host(ex.address)
    else:  # mode 3: the executor attaches to a host waiting for it
        endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
        host = start_host(None, 1, "--listen", endpoint)
        ex = make_executor(workers=[endpoint], insecure=True, **HB)
    pid = ex.submit(say, "hello from afar").result(timeout=30)
    prefix = f"({HOST} pid={pid}) "
    wait_until(
        lambda: (
            f"{prefix}out hello from afar" in lines_of(stdout.getvalue())
            and f"{prefix}err hello from afar" in lines_of(stderr.getvalue())
        ),
        timeout=10,
        what=lambda: (
            f"prefixed lines; stdout={stdout.getvalue()!r} stderr={stderr.getvalue()!r}"
            + host_logs(host)
        ),
    )
    assert "err hello" not in stdout.getvalue() and "out hello" not in stderr.getvalue()
    # the host echoes them to its own terminal (its log here), unprefixed
    wait_until(lambda: "out hello from afar\n" in host.log(), timeout=10, what="the echo")
    assert f"pid={pid})" not in host.log()
    stats = ex.stats()
    assert stats.output_bytes >= len("out hello from afar\nerr hello from afar\n"), stats
    assert stats.output_dropped == 0, stats


@pytest.mark.timeout(60)
def test_forward_output_false_forwards_nothing(
    make_executor: Callable[..., Any],
    start_host: Callable[..., WorkerHost],
    out: Callable[[], tuple[Captured, Captured]],
) -> None:
    stdout, stderr = out()
    ex = remote(make_executor, forward_output=False)
    host = start_host(ex.address)
    ex.submit(say, "stays home").result(timeout=30)
    # written to the host's own terminal directly: the host does not read it at all
    wait_until(lambda: "err stays home" in host.log(), timeout=10, what="the host's log")
    assert ex.submit(stdout_target).result(timeout=30) == str(host.log_path)
    ex.shutdown()  # waits for any OUTPUT still on its way
    assert "stays home" not in stdout.getvalue() + stderr.getvalue()
    assert ex.stats().output_bytes == 0


@pytest.mark.timeout(60)
def test_output_before_os_exit_arrives(
    make_executor: Callable[..., Any],
    start_host: Callable[..., WorkerHost],
    out: Callable[[], tuple[Captured, Captured]],
) -> None:
    from zmqexecutor import WorkerLostError

    stdout, stderr = out()
    ex = remote(make_executor)
    host = start_host(ex.address)
    assert ex.submit(stdout_target).result(timeout=30).startswith("pipe:")
    with pytest.raises(WorkerLostError):
        ex.submit(say_and_exit, "last words").result(timeout=30)
    wait_until(
        lambda: (
            re.search(r"^\(.+ pid=\d+\) out last words$", stdout.getvalue(), re.M)
            and re.search(r"^\(.+ pid=\d+\) err last words$", stderr.getvalue(), re.M)
        ),
        timeout=10,
        what=lambda: (
            f"last words; stdout={stdout.getvalue()!r} stderr={stderr.getvalue()!r}"
            + host_logs(host)
        ),
    )


def _rss(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(90)
def test_flood_is_dropped_not_queued(
    make_executor: Callable[..., Any],
    start_host: Callable[..., WorkerHost],
    out: Callable[[], tuple[Captured, Captured]],
) -> None:
    """A task printing in a tight loop: it is not held back to the forwarding rate, the
    executor's memory stays flat, the excess is dropped and counted, other tasks run."""
    stdout, _ = out()
    ex = remote(make_executor)
    host = start_host(ex.address, 2, "--no-echo-output")
    assert len({ex.submit(os.getpid).result(timeout=30) for _ in range(2)}) >= 1
    rss_before = _rss()
    seconds = 2.0
    flooding = ex.submit(flood, seconds)
    latencies = []
    while not flooding.done():
        t0 = time.monotonic()
        ex.submit(abs, -1).result(timeout=10)
        latencies.append(time.monotonic() - t0)
    written, longest = flooding.result()
    forwarded_max = OUTPUT_BURST + OUTPUT_RATE * (seconds + 1.0)
    # held back to the forwarding rate, it could not have written more than forwarded_max
    assert written > 2 * forwarded_max, (written, longest, host_logs(host))
    assert longest < 1.0, f"one print took {longest:.2f}s: the task was blocked"
    assert latencies and max(latencies) < 2.0, f"short tasks waited {max(latencies):.2f}s"
    # every byte is accounted for: printed here, or dropped and counted
    wait_until(
        lambda: ex.stats().output_bytes + ex.stats().output_dropped == written,
        timeout=10,
        what=lambda: f"{written} bytes accounted for: {ex.stats()}",
    )
    stats = ex.stats()
    assert stats.output_bytes <= forwarded_max, stats
    assert stats.output_dropped >= written - forwarded_max, stats
    growth = _rss() - rss_before
    assert growth < 64 * 2**20, f"executor RSS grew by {growth / 2**20:.0f} MiB"
    host_rss = max(_rss(pid) for pid in host.processes())
    assert host_rss < 128 * 2**20, f"a process of the host holds {host_rss / 2**20:.0f} MiB"
    assert len(stdout.getvalue()) <= forwarded_max * 1.1


@pytest.mark.timeout(60)
def test_blocked_stdout_does_not_stall_the_executor(
    make_executor: Callable[..., Any],
    start_host: Callable[..., WorkerHost],
    out: Callable[[], tuple[Captured, Captured]],
) -> None:
    stdout, _ = out()
    ex = remote(make_executor)
    start_host(ex.address, 1, "--no-echo-output")
    stdout.block()
    ex.submit(say, "into a full pipe").result(timeout=30)
    wait_until(lambda: stdout.blocked_writes > 0, timeout=10, what="a blocked write")
    # the printer thread is stuck in write(); the dispatcher is not
    for i in range(20):
        ex.submit(say, f"more {i}").result(timeout=5)
    assert ex.stats().running == 0
    stdout.unblock()
    wait_until(lambda: "out more 19" in stdout.getvalue(), timeout=10, what="the rest")


@pytest.mark.timeout(60)
def test_local_workers_output_unchanged(
    make_executor: Callable[..., Any], capfd: pytest.CaptureFixture[str]
) -> None:
    ex = make_executor(max_workers=1)
    pid = ex.submit(say, "local").result(timeout=30)
    target = ex.submit(stdout_target).result(timeout=30)
    ex.shutdown()
    captured = capfd.readouterr()
    assert "out local" in lines_of(captured.out), captured
    assert "err local" in lines_of(captured.err), captured
    assert f"pid={pid})" not in captured.out + captured.err
    assert not target.startswith("pipe:"), target  # the executor's own fd 1, inherited
    assert ex.stats().output_bytes == 0


# ---------------------------------------------------------------------------- units


def test_lines_are_whole_and_cut() -> None:
    pipe = _Pipe(file=None, pid=1, stream=1)  # type: ignore[arg-type]
    assert pipe.lines(b"a\nb") == (b"a\n", 0)
    assert pipe.lines(b"c\n") == (b"bc\n", 0)
    long = b"y" * (OUTPUT_MAX_LINE + 10)
    whole, cut = pipe.lines(long + b"\nz\n")
    assert whole == b"y" * OUTPUT_MAX_LINE + b" [cut]\nz\n" and cut == 10
    # a line that never ends: its start goes at once, the rest is skipped to its end
    whole, cut = pipe.lines(long)
    assert whole == b"y" * OUTPUT_MAX_LINE + b" [cut]\n" and cut == 10
    assert pipe.lines(b"more of it\nnext\n") == (b"next\n", len(b"more of it\n"))


# (the OUTPUT message itself: tests/test_messages.py)


@pytest.mark.timeout(60)
def test_output_of_another_session_is_dropped(
    make_executor: Callable[..., Any], out: Callable[[], tuple[Captured, Captured]]
) -> None:
    """OUTPUT carries the session its host's worker processes serve: what a host sends for
    a previous executor (which had this address) is dropped and counted, never printed;
    output from before any WELCOME (no session) and of this session is printed."""
    stdout, _ = out()
    ex = remote(make_executor)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    host = ctx.socket(zmq.PUSH)
    host.linger = 0
    host.connect(ex.address)

    def send(session: bytes, text: str) -> None:
        chunk = OutputChunk(4242, proto.STDOUT, f"{text}\n")
        host.send_multipart(msg.Output(host="old-host", chunks=(chunk,)).encode(session))

    try:
        send(os.urandom(8), "from the previous executor's session")
        send(proto.NO_SESSION, "before any welcome")
        send(ex._dispatcher.session, "of this session")  # in order, on one connection
        wait_until(
            lambda: "of this session" in stdout.getvalue(),
            timeout=10,
            what=lambda: f"the line of this session; stdout={stdout.getvalue()!r}",
        )
        assert "before any welcome" in stdout.getvalue()
        assert "previous" not in stdout.getvalue()
        assert ex.stats().protocol_errors == 1
    finally:
        host.close()
        ctx.term()
