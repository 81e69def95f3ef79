"""Shared fixtures: executor factory, file gates, and the leak check every test runs under.

The leak check (autouse) asserts that a test leaves behind no process it started, no Python
thread and no open file descriptor. Each is polled for up to ``LEAK_DEADLINE`` seconds, because
``shutdown(wait=False)`` and worker exit are legitimately asynchronous.

Processes are found two ways, because a ppid walk alone misses a worker's task child that was
orphaned (re-parented to init) when its supervisor died first:

- descendants of this process, by walking ``ppid`` in ``/proc/*/stat``;
- any live process whose initial environment carries this test's ``ZMQEXECUTOR_TEST_MARK``
  (set in ``os.environ`` before the test, so every exec'd child inherits it).

Zombies among descendants count as leaks: someone forgot to reap a child.

Exempt, and why: the ``multiprocessing`` resource tracker and forkserver are process-wide
singletons that the stdlib starts on first use and keeps for the life of the interpreter
(ProcessPoolExecutor leaves them too); they are not the executor's to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# Workers import task callables from this directory by module name (crash_cases, test_*).
TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

LEAK_DEADLINE = 5.0
RESULT_TIMEOUT = 30.0
SHUTDOWN_DEADLINE = 30.0
MARK_ENV = "ZMQEXECUTOR_TEST_MARK"
TOKEN_VARS = ("ZMQEXECUTOR_TOKEN", "ZMQEXECUTOR_TOKEN_FILE")

if TYPE_CHECKING:
    from zmqexecutor import ZmqExecutor


# ---------------------------------------------------------------------------- small helpers


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = RESULT_TIMEOUT,
    what: str | Callable[[], str] = "condition",
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds.

    ``what`` describes the condition; a callable is evaluated only on failure, to show state.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout}s waiting for {what() if callable(what) else what}"
            )
        time.sleep(0.005)


def holds_for(condition: Callable[[], bool], seconds: float) -> bool:
    """True if ``condition()`` stays true for ``seconds``: for "this must not happen" checks."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.01)
    return condition()


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment with the tests directory on PYTHONPATH and unbuffered output: a worker
    host or an executor script imports the tasks' modules (crash_cases) as a real remote host
    would, and its log reaches its file at once. No token variable is inherited: a token
    reaches a subprocess only if ``extra`` passes one (a developer's own cannot change an
    outcome)."""
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gate:
    """A file on disk that a task waits for; crosses machines, unlike threading.Event."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"gate-{name}"
        self.started = directory / f"started-{name}"

    def open(self) -> None:
        self.path.touch()

    def wait_started(self, timeout: float = RESULT_TIMEOUT) -> None:
        """Wait until the task blocked on this gate has reported that it started."""
        wait_until(self.started.exists, timeout, f"task behind {self.path.name} to start")


class Gates:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._gates: list[Gate] = []

    def __call__(self, name: str | None = None) -> Gate:
        gate = Gate(self._dir, name or uuid.uuid4().hex[:8])
        self._gates.append(gate)
        return gate

    def open_all(self) -> None:
        for gate in self._gates:
            gate.open()


@pytest.fixture
def gates(tmp_path: Path) -> Gates:
    """Factory of file gates; every gate is opened at teardown so no task stays blocked."""
    d = tmp_path / "gates"
    d.mkdir()
    return Gates(d)


@pytest.fixture
def make_executor(gates: Gates) -> Iterator[Callable[..., ZmqExecutor]]:
    """Factory of executors that are all shut down at teardown (after every gate is opened)."""
    # Imported here, not at module level, so that other test files still collect while the
    # package is incomplete.
    from zmqexecutor import ZmqExecutor

    made: list[ZmqExecutor] = []

    def make(*args: Any, **kwargs: Any) -> ZmqExecutor:
        ex = ZmqExecutor(*args, **kwargs)
        made.append(ex)
        return ex

    yield make
    gates.open_all()
    # pytest-timeout fires once per test: if the test already timed out, a shutdown that hangs
    # here would freeze the whole session. Bound it, and report the hang as a failure.
    hung = []
    for ex in made:
        t = threading.Thread(
            target=ex.shutdown,
            kwargs={"wait": True, "cancel_futures": True},
            name="test-teardown-shutdown",
            daemon=True,
        )
        t.start()
        t.join(SHUTDOWN_DEADLINE)
        if t.is_alive():
            hung.append(repr(ex))
    if hung:
        pytest.fail(f"shutdown(wait=True) still blocked after {SHUTDOWN_DEADLINE}s: {hung}")


@pytest.fixture
def ex2(make_executor: Callable[..., ZmqExecutor]) -> ZmqExecutor:
    """A local executor with two worker processes."""
    return make_executor(max_workers=2)


def rendezvous_pids(ex: Any, count: int, directory: Path) -> set[int]:
    """Run ``count`` tasks that each wait for all the others: proves ``count`` workers run at
    once, and returns their pids."""
    import crash_cases

    d = directory / f"rv-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    futs = [ex.submit(crash_cases.rendezvous, str(d), i, count) for i in range(count)]
    return {f.result(timeout=RESULT_TIMEOUT) for f in futs}


# ---------------------------------------------------------------------------- leak check


def proc_stats() -> dict[int, list[str]]:
    """pid -> the fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...)
    for every process we can read."""
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue
        # comm may contain spaces and parentheses: split after the last ')'.
        stats[int(entry)] = data[data.rfind(")") + 2 :].split()
    return stats


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process we can read."""
    table = {pid: (int(fields[1]), fields[0]) for pid, fields in proc_stats().items()}
    return table


def descendants(root: int, table: dict[int, tuple[int, str]] | None = None) -> set[int]:
    """Every live or zombie descendant of ``root``."""
    if table is None:
        table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out


class WorkerHost:
    """A ``python -m zmqexecutor worker ARGS`` subprocess leading its own process group.

    Its output goes to ``log_path``; the file is closed in this process at once (the child keeps
    its copy), so hosts can come and go without changing the test process's fd count.
    """

    COMMAND = [sys.executable, "-m", "zmqexecutor", "worker"]
    STOP_TIMEOUT = 15.0

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Start the host. ``env`` defaults to :func:`worker_env`."""
        self.args = list(args)
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.COMMAND, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=worker_env() if env is None else env,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid = self.proc.pid  # also the process group id of the host's processes

    def __repr__(self) -> str:
        return f"<WorkerHost pid={self.pid} {self.log_path.name}>"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"

    def processes(self) -> set[int]:
        """Its live (non-zombie) processes: the supervisor and its worker processes."""
        return {
            pid
            for pid, fields in proc_stats().items()
            if int(fields[2]) == self.pid and fields[0] not in ("Z", "X")
        }

    def owns(self, pid: int) -> bool:
        try:
            return os.getpgid(pid) == self.pid
        except ProcessLookupError:
            return False

    def _killpg(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def kill(self) -> None:
        """The host vanishes: SIGKILL to the supervisor and its worker processes at once."""
        self._killpg()
        self.proc.wait(self.STOP_TIMEOUT)

    def stop(self) -> int | None:
        """SIGTERM (running tasks finish), then SIGKILL to the whole group if needed.

        Returns the host's exit code if it exited by itself or on SIGTERM within
        ``STOP_TIMEOUT``, None if it had to be killed. Stopping a stopped host is harmless.
        """
        code: int | None = self.proc.poll()
        if code is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGCONT)  # a test may have left it frozen (SIGSTOP)
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(self.STOP_TIMEOUT)
        self._killpg()  # also any worker process that outlived its supervisor
        self.proc.wait(self.STOP_TIMEOUT)
        return code


@pytest.fixture
def worker_hosts(gates: Gates, tmp_path: Path) -> Iterator[Callable[..., WorkerHost]]:
    """Factory of CLI worker hosts, all stopped at teardown (after every gate is opened).

    ``worker_hosts(*args, name="host", processes=1, token=None, env=None, cwd=None)`` runs
    ``python -m zmqexecutor worker ARGS --processes N`` (``processes=None``: no flag, the CLI's
    default) with :func:`worker_env` updated by ``env``. ``token`` goes in the host's
    environment (ZMQEXECUTOR_TOKEN), never on its command line. Its log is
    ``tmp_path/worker-NAME-I.log``.
    """
    started: list[WorkerHost] = []

    def start(
        *args: str,
        name: str = "host",
        processes: int | None = 1,
        token: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> WorkerHost:
        extra = dict(env or {})
        if token is not None:
            extra["ZMQEXECUTOR_TOKEN"] = token
        count = [] if processes is None else ["--processes", str(processes)]
        host = WorkerHost(
            [*args, *count],
            tmp_path / f"worker-{name}-{len(started)}.log",
            worker_env(extra),
            cwd=cwd,
        )
        started.append(host)
        return host

    yield start
    gates.open_all()
    for host in started:
        host.stop()


def host_logs(*hosts: WorkerHost) -> str:
    """The tail of each host's log, for an assertion message."""
    return "".join(f"\n----- {h!r}\n{h.log()[-6000:]}" for h in hosts)


def _has_mark(pid: int, mark: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return mark in f.read().split(b"\0")
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _is_stdlib_singleton(pid: int) -> bool:
    cmd = _cmdline(pid)
    return "multiprocessing.resource_tracker" in cmd or "multiprocessing.forkserver" in cmd


def _leaked_processes(before: set[int], mark: bytes) -> dict[int, str]:
    me = os.getpid()
    table = _proc_table()
    leaked: dict[int, str] = {}
    for pid in descendants(me, table) - before:
        if not _is_stdlib_singleton(pid):
            state = table[pid][1]
            leaked[pid] = "zombie (not reaped)" if state == "Z" else f"state {state}"
    for pid, (_, state) in table.items():
        if (
            pid != me
            and pid not in leaked
            and state != "Z"
            and _has_mark(pid, mark)
            and not _is_stdlib_singleton(pid)
        ):
            leaked[pid] = f"orphan, state {state}"
    return leaked


def _stdlib_singleton_fds() -> set[int]:
    fds: set[int] = set()
    try:
        from multiprocessing import resource_tracker

        fd = resource_tracker._resource_tracker._fd
        if fd is not None:
            fds.add(fd)
    except (ImportError, AttributeError):
        pass
    try:
        from multiprocessing import forkserver

        fd = forkserver._forkserver._forkserver_alive_fd
        if fd is not None:
            fds.add(fd)
    except (ImportError, AttributeError):
        pass
    return fds


def _open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        # The directory fd listdir used is closed by now: readlink fails, skip it.
        with contextlib.suppress(OSError):
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a child process, a thread or an open fd behind."""
    mark = f"{request.node.nodeid}-{uuid.uuid4().hex}"
    old_mark = os.environ.get(MARK_ENV)
    os.environ[MARK_ENV] = mark
    procs_before = descendants(os.getpid(), _proc_table())
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    try:
        yield
    finally:
        if old_mark is None:
            os.environ.pop(MARK_ENV, None)
        else:
            os.environ[MARK_ENV] = old_mark

    mark_b = f"{MARK_ENV}={mark}".encode()
    problems: list[str] = []
    deadline = time.monotonic() + LEAK_DEADLINE
    while True:
        procs = _leaked_processes(procs_before, mark_b)
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        fds = {
            fd: target
            for fd, target in _open_fds().items()
            if fds_before.get(fd) != target and fd not in _stdlib_singleton_fds()
        }
        if not (procs or threads or fds) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if procs:
        problems.append(
            "processes left: "
            + "; ".join(f"pid {p} ({why}): {_cmdline(p)}" for p, why in procs.items())
        )
    if threads:
        problems.append("threads left: " + ", ".join(repr(t) for t in threads))
    if fds:
        problems.append(
            f"fds left ({len(fds_before)} before): "
            + ", ".join(f"{fd}->{t}" for fd, t in sorted(fds.items()))
        )
    if problems:
        pytest.fail(f"after {LEAK_DEADLINE}s: " + " | ".join(problems), pytrace=False)
