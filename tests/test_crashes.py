"""One table of crash cases (loky style): what a bad task does to its future, and nothing more.

Every case runs on a fresh two-worker executor:

1. both workers are up (a two-task rendezvous returns their pids);
2. a companion task blocks on worker A; the bad task goes to the idle worker B;
3. the bad task's future fails with the expected error (``submit`` itself never raises);
4. the companion, in flight on the other worker all along, completes once released;
5. the same executor still runs normal tasks, still has two workers, and the worker that ran the
   bad task survived (``same``) or was replaced (``replaced``).

loky breaks the whole pool for most of these; ProcessPoolExecutor breaks it for any worker death.
zmqexecutor must not: one bad task fails one future.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crash_cases as cc
import pytest
from conftest import RESULT_TIMEOUT, Gates, rendezvous_pids

from zmqexecutor import (
    RemoteError,
    ResultSerializationError,
    TaskDeserializationError,
    TaskSerializationError,
    WorkerLostError,
    ZmqExecutor,
)

SAME = "same"  # the worker that ran the bad task is still the one serving
REPLACED = "replaced"  # that worker died and a new one took its place


def _missing_module_function() -> Any:
    """Pickled by reference to a module that exists only in this process, never on a worker."""
    return 42


_MISSING = types.ModuleType("_zmqexecutor_test_missing_module")
_missing_module_function.__module__ = _MISSING.__name__
_missing_module_function.__qualname__ = "missing_function"
_MISSING.missing_function = _missing_module_function  # type: ignore[attr-defined]
sys.modules[_MISSING.__name__] = _MISSING


def exit_code(code: int) -> str:
    """A message naming an exit code: 'exit code 3', 'exited with 3', 'EXIT(3)', 'status 3'."""
    return rf"(?i)(exit|code|status)\D{{0,20}}\b{code}\b"


def case(
    case_id: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    expected: type[BaseException],
    worker: str,
    match: str | None = None,
    contains: tuple[str, ...] = (),
    attrs: dict[str, Any] | None = None,
) -> Any:
    return pytest.param(fn, args, expected, worker, match, contains, attrs or {}, id=case_id)


CRASH_CASES = [
    # Baseline: a task's own exception comes back as itself.
    case("task-raises", cc.raise_error, (RuntimeError, "boom"), RuntimeError, SAME, "boom"),
    # Cannot pickle in the executor: the future fails, nothing is sent.
    case("callable-closes-over-lock", cc.LOCK_CLOSURE, (), TaskSerializationError, SAME, "lock"),
    case("arg-closes-over-lock", id, (cc.LOCK_CLOSURE,), TaskSerializationError, SAME, "lock"),
    case("arg-error-at-pickle", id, (cc.ErrorAtPickle(),), TaskSerializationError, SAME),
    case("arg-sys-exit-at-pickle", id, (cc.ExitAtPickle(),), TaskSerializationError, SAME),
    # Cannot unpickle on the worker: the task never runs, the worker stays.
    case(
        "arg-error-at-unpickle",
        id,
        (cc.ErrorAtUnpickle(RuntimeError, "msg"),),
        TaskDeserializationError,
        SAME,
        contains=("RuntimeError", "msg"),
    ),
    case(
        "arg-sys-exit-at-unpickle",
        id,
        (cc.ExitAtUnpickle(),),
        TaskDeserializationError,
        SAME,
        contains=("SystemExit",),
    ),
    case(
        "callable-module-missing-on-worker",
        _missing_module_function,
        (),
        TaskDeserializationError,
        SAME,
        contains=(_MISSING.__name__,),
    ),
    # Unpickling kills the worker process: only this task is lost.
    case("arg-os-exit-at-unpickle", id, (cc.OsExitAtUnpickle(),), WorkerLostError, REPLACED),
    case(
        "arg-segfault-at-unpickle",
        id,
        (cc.CrashAtUnpickle(),),
        WorkerLostError,
        REPLACED,
        contains=("SIGSEGV",),
    ),
    # The task kills its process.
    case("task-os-exit-3", cc.exit_process, (3,), WorkerLostError, REPLACED, exit_code(3)),
    case("task-sigkill", cc.kill_self, (), WorkerLostError, REPLACED, contains=("SIGKILL",)),
    case("task-segfault", cc.segfault, (), WorkerLostError, REPLACED, contains=("SIGSEGV",)),
    # sys.exit is an exception like any other (as in loky): the worker survives.
    case("task-sys-exit-3", cc.sys_exit, (3,), SystemExit, SAME, attrs={"code": 3}),
    # The task's exception cannot be pickled.
    case(
        "task-raises-exception-holding-lock",
        cc.raise_with_lock,
        (),
        RemoteError,
        SAME,
        "lock",
        attrs={"type_name": "Exception"},
    ),
    # The result cannot be pickled on the worker.
    case("result-is-lock", cc.return_lock, (), ResultSerializationError, SAME, "(?i)lock"),
    case(
        "result-error-at-pickle",
        cc.return_instance,
        (cc.ErrorAtPickle,),
        ResultSerializationError,
        SAME,
        "error in pickle",
    ),
    case(
        "result-segfault-at-pickle",
        cc.return_instance,
        (cc.CrashAtPickle,),
        WorkerLostError,
        REPLACED,
        contains=("SIGSEGV",),
    ),
    case(
        "result-os-exit-at-pickle",
        cc.return_instance,
        (cc.OsExitAtPickle,),
        WorkerLostError,
        REPLACED,
        exit_code(0),
    ),
    # The result cannot be unpickled in the executor.
    case(
        "result-error-at-unpickle",
        cc.return_instance,
        (cc.ErrorAtUnpickle, RuntimeError, "msg"),
        ResultSerializationError,
        SAME,
        contains=("RuntimeError", "msg"),
    ),
    case(
        "result-sys-exit-at-unpickle",
        cc.return_instance,
        (cc.ExitAtUnpickle,),
        ResultSerializationError,
        SAME,
        contains=("SystemExit",),
    ),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fn, args, expected, worker, match, contains, attrs", CRASH_CASES)
def test_crash_case(
    make_executor: Callable[..., ZmqExecutor],
    gates: Gates,
    tmp_path: Path,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    expected: type[BaseException],
    worker: str,
    match: str | None,
    contains: tuple[str, ...],
    attrs: dict[str, Any],
) -> None:
    ex = make_executor(max_workers=2)
    pids_before = rendezvous_pids(ex, 2, tmp_path)
    assert len(pids_before) == 2

    gate = gates("companion")
    companion = ex.submit(cc.block_until, str(gate.path), None, str(gate.started))
    gate.wait_started()

    try:
        fut = ex.submit(fn, *args)
    except BaseException as e:
        pytest.fail(f"submit() raised {e!r}; the error belongs on the future")

    exc = fut.exception(timeout=RESULT_TIMEOUT)
    assert isinstance(exc, expected), f"expected {expected.__name__}, got {exc!r}"
    if expected is RuntimeError:
        assert type(exc) is RuntimeError
        assert "boom" in str(exc.__cause__), "remote traceback missing from __cause__"
    text = str(exc)
    if match is not None:
        assert re.search(match, text), f"{match!r} not found in {text!r}"
    for needle in contains:
        assert needle in text, f"{needle!r} not in {text!r}"
    for name, value in attrs.items():
        assert getattr(exc, name, None) == value, f"{name}: {getattr(exc, name, None)!r}"

    # The companion on the other worker was untouched by the crash.
    assert not companion.done(), f"companion finished early: {companion!r}"
    gate.open()
    companion_pid = companion.result(timeout=RESULT_TIMEOUT)

    # The pool is not broken: normal work still runs, on two workers.
    assert ex.submit(pow, 2, 10).result(timeout=RESULT_TIMEOUT) == 1024
    assert list(ex.map(abs, range(-5, 5), timeout=RESULT_TIMEOUT)) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    pids_after = rendezvous_pids(ex, 2, tmp_path)
    assert len(pids_after) == 2
    assert companion_pid in pids_before and companion_pid in pids_after
    if worker == SAME:
        assert pids_after == pids_before, "the worker should have survived the bad task"
    else:
        assert pids_after != pids_before, "the dead worker should have been replaced"


def test_many_failures_at_pickle_do_not_block_good_tasks(
    make_executor: Callable[..., ZmqExecutor],
) -> None:
    """loky test_queue_full_deadlock: 100 unpicklable tasks, then 100 good ones."""
    ex = make_executor(max_workers=2)
    bad = [ex.submit(id, cc.ErrorAtPickle()) for _ in range(100)]
    good = [ex.submit(abs, -i) for i in range(100)]
    assert isinstance(bad[99].exception(timeout=RESULT_TIMEOUT), TaskSerializationError)
    assert [f.result(timeout=RESULT_TIMEOUT) for f in good] == list(range(100))
    assert all(isinstance(f.exception(timeout=RESULT_TIMEOUT), TaskSerializationError) for f in bad)
