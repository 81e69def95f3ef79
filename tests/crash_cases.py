"""Bad objects and task callables for the crash table (loky style), importable by workers.

Everything here is referenced by module name from tasks, so worker processes import this module:
keep it free of side effects and of test-only imports. It also holds the two synchronization
helpers tasks share (``block_until``, ``rendezvous``): they use files, which cross machines.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from pickle import PicklingError
from typing import Any, NoReturn

GATE_TIMEOUT = 30.0


# ---------------------------------------------------------------------------- synchronization


def block_until(
    gate: str, value: Any = None, started: str | None = None, timeout: float = GATE_TIMEOUT
) -> Any:
    """Touch ``started`` (if given), then wait until the file ``gate`` exists.

    Returns ``value``, or this process's pid if ``value`` is None. Raises TimeoutError after
    ``timeout`` seconds so that a broken test never leaves a worker blocked forever.
    """
    if started is not None:
        Path(started).touch()
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} not opened within {timeout}s")
        time.sleep(0.005)
    return os.getpid() if value is None else value


def rendezvous(directory: str, index: int, count: int, timeout: float = GATE_TIMEOUT) -> int:
    """Announce arrival ``index`` and wait until all ``count`` tasks arrived; return the pid."""
    Path(directory, f"arrived-{index}").touch()
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"rendezvous: only {len(os.listdir(directory))} of {count} tasks ran at once"
            )
        time.sleep(0.005)
    return os.getpid()


def touch(path: str, value: Any = None) -> Any:
    """Record that the task body ran (exec marker), then return ``value``."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return value


# ---------------------------------------------------------------------------- crashes


def _no_core_dump() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def segfault() -> NoReturn:
    """Dereference NULL: the process dies of SIGSEGV (core dumps disabled first)."""
    _no_core_dump()
    ctypes.string_at(0)
    raise AssertionError("unreachable")


def exit_process(code: int = 0) -> NoReturn:
    """Die at once, without cleanup, with exit code ``code``."""
    os._exit(code)


def sys_exit(code: int = 0) -> NoReturn:
    sys.exit(code)


def kill_self() -> NoReturn:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def raise_error(etype: type[BaseException] = RuntimeError, message: str = "msg") -> NoReturn:
    raise etype(message)


def raise_with_lock() -> NoReturn:
    """Raise an exception that cannot be pickled (it holds a lock)."""
    raise Exception(threading.Lock())


def return_lock() -> Any:
    """Return a result that cannot be pickled."""
    return threading.Lock()


def return_instance(cls: type, *args: Any) -> Any:
    return cls(*args)


def make_lock_closure() -> Any:
    lock = threading.Lock()
    return lambda: lock


#: A callable that cannot be pickled: a lambda closing over a lock.
LOCK_CLOSURE = make_lock_closure()


# ---------------------------------------------------------------------------- bad objects


class ErrorAtPickle:
    """Raises PicklingError when pickled."""

    def __reduce__(self) -> Any:
        raise PicklingError("error in pickle")


class ExitAtPickle:
    """Raises SystemExit when pickled (in whichever process or thread pickles it)."""

    def __reduce__(self) -> Any:
        sys.exit(0)


class CrashAtPickle:
    """Segfaults when pickled. Only ever use as a *result* (pickled on the worker)."""

    def __reduce__(self) -> Any:
        segfault()


class OsExitAtPickle:
    """Calls os._exit(0) when pickled. Only ever use as a *result*."""

    def __reduce__(self) -> Any:
        exit_process(0)


class ErrorAtUnpickle:
    """Raises ``etype(message)`` when unpickled."""

    def __init__(self, etype: type[BaseException] = RuntimeError, message: str = "msg") -> None:
        self.etype = etype
        self.message = message

    def __reduce__(self) -> Any:
        return raise_error, (self.etype, self.message)


class ExitAtUnpickle:
    """Raises SystemExit(0) when unpickled (on a worker, or in the executor if it is a result)."""

    def __reduce__(self) -> Any:
        return sys_exit, (0,)


class OsExitAtUnpickle:
    """Calls os._exit(0) when unpickled. Only ever send *to* a worker."""

    def __reduce__(self) -> Any:
        return exit_process, (0,)


class CrashAtUnpickle:
    """Segfaults when unpickled. Only ever send *to* a worker."""

    def __reduce__(self) -> Any:
        return segfault, ()


# ---------------------------------------------------------------------------- fault tests
# (test_faults.py) Exec markers here are lines "pid pgid netns label", appended with one
# O_APPEND write each, so concurrent writers on any host never interleave within a line.


def _netns() -> str:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return "?"


def record(marker: str, label: Any = None) -> None:
    """Append the exec-marker line ``pid pgid netns label`` to the file ``marker``."""
    line = f"{os.getpid()} {os.getpgid(0)} {_netns()} {label}\n".encode()
    fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_marker(marker: str | os.PathLike[str]) -> list[tuple[int, int, str, str]]:
    """The lines of an exec marker as (pid, pgid, netns, label); [] if it does not exist."""
    try:
        with open(marker) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        pid, pgid, netns, label = line.split(" ", 3)
        out.append((int(pid), int(pgid), netns, label))
    return out


def where(value: Any = None) -> tuple[Any, str, int, int]:
    """Return ``(value, netns id, pid, process group id)``: which host and process ran this."""
    return value, _netns(), os.getpid(), os.getpgid(0)


def record_and_block(
    marker: str,
    gate: str,
    value: Any = None,
    timeout: float = GATE_TIMEOUT,
    done_marker: str | None = None,
) -> Any:
    """Record an exec marker, wait for ``gate`` (see block_until), record ``done_marker`` (if
    given) and return ``value`` (or the pid if ``value`` is None)."""
    record(marker, value)
    result = block_until(gate, value, timeout=timeout)
    if done_marker is not None:
        record(done_marker, value)
    return result


def record_and_sleep(marker: str, seconds: float, value: Any = None) -> Any:
    """Record an exec marker labelled ``value``, sleep ``seconds`` (a long task that can be
    killed from outside mid-run), and return ``value``."""
    record(marker, value)
    time.sleep(seconds)
    return value


class MkdirAtUnpickle:
    """Creates the directory ``path`` when unpickled: a result that proves it was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return os.mkdir, (self.path,)


def block_then_return_bait(
    marker: str, gate: str, label: str, canary: str, done_marker: str
) -> MkdirAtUnpickle:
    """Record an exec marker, wait for ``gate``, record ``done_marker``, and return a result
    whose unpickling creates ``canary`` (a spy for results that must never be loaded)."""
    record(marker, label)
    block_until(gate)
    record(done_marker, label)
    return MkdirAtUnpickle(canary)


def record_and_exit(marker: str, code: int = 1) -> NoReturn:
    """Record an exec marker, then kill this process with ``os._exit(code)``: a poison task."""
    record(marker, "exit")
    os._exit(code)


def record_and_spin(marker: str, limit: float = 2 * GATE_TIMEOUT) -> NoReturn:
    """Record an exec marker, then busy-loop in pure Python (a hung task that never sleeps).

    Gives up after ``limit`` seconds with TimeoutError, so a broken test cannot leave a process
    spinning forever.
    """
    record(marker, "spin")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        pass
    raise TimeoutError(f"spun for {limit}s and nobody stopped this task")


def fail_init_if_env(var: str) -> None:
    """An initializer that raises ValueError("bad init") where the environment sets ``var``."""
    if os.environ.get(var):
        raise ValueError("bad init")


def fail_init() -> NoReturn:
    """An initializer that always raises ValueError("bad init")."""
    raise ValueError("bad init")


def record_and_return(marker: str, value: Any = None) -> tuple[Any, str, int, int]:
    """Record an exec marker labelled ``value``, then return :func:`where` ``(value)``."""
    record(marker, value)
    return where(value)


# ---------------------------------------------------------------------------- soak (test_soak.py)
# A soak task's kind is one letter; its index goes to an exec log (one O_APPEND write per run).

SOAK_TINY, SOAK_SLEEP, SOAK_CPU, SOAK_BIG, SOAK_RAISE, SOAK_EXIT = "tscbre"


class SoakIntendedError(Exception):
    """The exception a soak task of kind SOAK_RAISE raises on purpose."""


def soak_expected(kind: str, index: int, size: int = 0) -> Any:
    """The value a soak task of ``kind`` returns (kinds that return at all)."""
    if kind == SOAK_BIG:
        return (index, size)
    return (index, index * index + 1)


def soak_task(log: str, kind: str, index: int, payload: Any = None) -> Any:
    """Append ``index`` to the exec log ``log``, then behave as ``kind`` says: return at once
    (tiny), sleep ``payload`` seconds, spin ``payload`` seconds, echo the size of a large
    ``payload`` (bytes) with a large result, raise SoakIntendedError, or os._exit(7)."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{index}\n".encode())
    finally:
        os.close(fd)
    if kind == SOAK_SLEEP:
        time.sleep(payload)
    elif kind == SOAK_CPU:
        deadline = time.perf_counter() + payload
        while time.perf_counter() < deadline:
            pass
    elif kind == SOAK_BIG:
        return soak_expected(kind, index, len(payload)), bytes(len(payload))
    elif kind == SOAK_RAISE:
        raise SoakIntendedError(f"intended failure of task {index}")
    elif kind == SOAK_EXIT:
        os._exit(7)
    return soak_expected(kind, index)
