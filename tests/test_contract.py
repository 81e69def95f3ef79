"""ZmqExecutor keeps the concurrent.futures contract, with ProcessPoolExecutor as the reference.

Mirrors CPython's Lib/test/test_concurrent_futures/ (executor.py, test_process_pool.py,
test_shutdown.py, test_init.py, test_wait.py, test_as_completed.py) where it applies; the test
names say which. Local mode throughout (no ``listen``/``workers``).

Task callables live at module level here or in crash_cases: workers import them by module name,
as ProcessPoolExecutor's children would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import crash_cases as cc
import pytest
from conftest import RESULT_TIMEOUT, Gates, rendezvous_pids, wait_until

from zmqexecutor import BrokenZmqExecutor, ZmqExecutor

# ---------------------------------------------------------------------------- task callables


def mul(x: Any, y: Any) -> Any:
    return x * y


def capture(*args: Any, **kwargs: Any) -> Any:
    return args, kwargs


def raise_runtime_error_123() -> None:
    raise RuntimeError(123)  # some comment


class TaggedError(Exception):
    """A user exception type carrying the pid of the process that raised it (not in str)."""

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        self.pid = pid

    def __reduce__(self) -> Any:
        return TaggedError, (self.args[0], self.pid)


def raise_tagged() -> None:
    raise TaggedError("tagged failure", os.getpid())


class MyObject:
    def my_method(self) -> None:
        pass


def make_dummy_object(_: Any) -> MyObject:
    return MyObject()


class Doubler:
    def __call__(self, x: int) -> int:
        return 2 * x


INITIALIZER_STATUS = "uninitialized"


def init(x: str) -> None:
    global INITIALIZER_STATUS
    INITIALIZER_STATUS = x


def get_init_status() -> str:
    return INITIALIZER_STATUS


def init_status_at_rendezvous(directory: str, index: int, count: int) -> str:
    cc.rendezvous(directory, index, count)
    return INITIALIZER_STATUS


def init_fail() -> None:
    raise ValueError("error in initializer")


def value_or_block(gate: str | None) -> Any:
    return None if gate is None else cc.block_until(gate, "late")


def finish_last(i: int, gate: str, marker_dir: str) -> int:
    """Item 0 waits until every other item has finished; the others record that they did."""
    if i == 0:
        cc.block_until(gate)
    else:
        Path(marker_dir, str(i)).touch()
    return i * i


def chain_text(exc: BaseException | None) -> str:
    """Type and message of an exception and of its causes."""
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


# ---------------------------------------------------------------------------- constructor


def test_max_workers_negative() -> None:
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            ZmqExecutor(max_workers=number)


def test_max_tasks_per_child_validation() -> None:
    with pytest.raises(TypeError):
        ZmqExecutor(1, max_tasks_per_child="2")  # type: ignore[arg-type]
    for number in (0, -1):
        with pytest.raises(ValueError):
            ZmqExecutor(1, max_tasks_per_child=number)


def test_initializer_must_be_callable() -> None:
    with pytest.raises(TypeError):
        ZmqExecutor(1, initializer=42)  # type: ignore[arg-type]


def test_process_pool_executor_arguments_positionally(
    make_executor: Callable[..., ZmqExecutor],
) -> None:
    """Replacing the class name is enough: (max_workers, mp_context, initializer, initargs)."""
    ex = make_executor(1, multiprocessing.get_context("spawn"), init, ("positional",))
    assert ex.submit(get_init_status).result(timeout=RESULT_TIMEOUT) == "positional"


def test_default_max_workers_is_cpu_count(
    make_executor: Callable[..., ZmqExecutor], tmp_path: Path
) -> None:
    n = os.cpu_count() or 1
    if n > 16:
        pytest.skip(f"{n} CPUs: too many workers for a unit test")
    ex = make_executor()
    assert len(rendezvous_pids(ex, n, tmp_path)) == n


def test_two_workers_run_in_parallel(ex2: ZmqExecutor, tmp_path: Path) -> None:
    assert len(rendezvous_pids(ex2, 2, tmp_path)) == 2


# ---------------------------------------------------------------------------- submit / result


def test_submit(ex2: ZmqExecutor) -> None:
    assert ex2.submit(pow, 2, 8).result(timeout=RESULT_TIMEOUT) == 256


def test_submit_keyword(ex2: ZmqExecutor) -> None:
    assert ex2.submit(mul, 2, y=8).result(timeout=RESULT_TIMEOUT) == 16
    future = ex2.submit(capture, 1, self=2, fn=3)
    assert future.result(timeout=RESULT_TIMEOUT) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        ex2.submit(fn=capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ex2.submit(arg=1)  # type: ignore[call-arg]


def test_lambdas_closures_and_callables(ex2: ZmqExecutor) -> None:
    offset = 40

    def add_offset(x: int) -> int:
        return x + offset

    calls = {
        "lambda": ex2.submit(lambda x: x + 1, 41),
        "closure": ex2.submit(add_offset, 2),
        "partial": ex2.submit(partial(mul, 6), 7),
        "callable instance": ex2.submit(Doubler(), 21),
        "bound method": ex2.submit("-".join, ["a", "b"]),
        "builtin": ex2.submit(divmod, 85, 2),
    }
    results = {k: f.result(timeout=RESULT_TIMEOUT) for k, f in calls.items()}
    assert results == {
        "lambda": 42,
        "closure": 42,
        "partial": 42,
        "callable instance": 42,
        "bound method": "a-b",
        "builtin": (42, 1),
    }


def test_result_values_round_trip(ex2: ZmqExecutor) -> None:
    value = {"bytes": b"\x00\xff" * 10, "set": {1, 2}, "nested": [(1, 2.5, None, "é")]}
    assert ex2.submit(capture, value).result(timeout=RESULT_TIMEOUT) == ((value,), {})
    big = os.urandom(8 * 1024 * 1024)
    assert ex2.submit(bytes, big).result(timeout=RESULT_TIMEOUT) == big


def test_submit_from_many_threads(ex2: ZmqExecutor) -> None:
    def submit_some(k: int) -> list[cf.Future[Any]]:
        return [ex2.submit(mul, k, i) for i in range(25)]

    with cf.ThreadPoolExecutor(4) as tp:
        lists = list(tp.map(submit_some, range(4)))
    for k, futures in enumerate(lists):
        assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [k * i for i in range(25)]


def test_no_stale_references(ex2: ZmqExecutor) -> None:
    """CPython issue #16284: the executor does not hang on to a task's callable or args."""
    my_object = MyObject()
    ref = weakref.ref(my_object)
    ex2.submit(my_object.my_method)  # deliberately discarding the future
    del my_object
    wait_until(lambda: gc.collect() >= 0 and ref() is None, what="stale reference collected")


# ---------------------------------------------------------------------------- exceptions


def test_traceback(ex2: ZmqExecutor, capsys: pytest.CaptureFixture[str]) -> None:
    """The task's exception comes back as itself; the remote traceback is its __cause__."""
    exc = ex2.submit(raise_runtime_error_123).exception(timeout=RESULT_TIMEOUT)
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    cause = exc.__cause__
    assert cause is not None, "no remote traceback attached as __cause__"
    assert "raise RuntimeError(123)  # some comment" in str(cause)
    try:
        raise exc
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    assert "raise RuntimeError(123)  # some comment" in capsys.readouterr().err


def test_remote_traceback_names_host_and_pid(ex2: ZmqExecutor) -> None:
    exc = ex2.submit(raise_tagged).exception(timeout=RESULT_TIMEOUT)
    assert type(exc) is TaggedError
    assert str(exc) == "tagged failure"
    text = str(exc.__cause__)
    assert "Traceback" in text and "raise_tagged" in text and "tagged failure" in text, text
    assert socket.gethostname() in text, f"worker host not named in: {text}"
    assert str(exc.pid) in text, f"worker pid {exc.pid} not named in: {text}"


def test_exception_method_and_result_reraise(ex2: ZmqExecutor) -> None:
    future = ex2.submit(divmod, 1, 0)
    assert isinstance(future.exception(timeout=RESULT_TIMEOUT), ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        future.result(timeout=0)


# ---------------------------------------------------------------------------- map


@pytest.mark.parametrize("chunksize", [1, 3, 1000, 50])
def test_map(ex2: ZmqExecutor, chunksize: int) -> None:
    expected = list(map(pow, range(40), range(40)))
    result = ex2.map(pow, range(40), range(40), chunksize=chunksize, timeout=RESULT_TIMEOUT)
    assert list(result) == expected


@pytest.mark.parametrize("chunksize", [2, 7, 1000])
def test_map_one_iterable_in_chunks(ex2: ZmqExecutor, chunksize: int) -> None:
    """One iterable travels as a plain list per chunk; items that are tuples stay whole."""
    pairs = [(i, -i) for i in range(25)]
    assert list(ex2.map(len, iter(pairs), chunksize=chunksize, timeout=RESULT_TIMEOUT)) == [2] * 25
    assert list(ex2.map(abs, range(-30, 0), chunksize=chunksize)) == list(range(30, 0, -1))
    assert list(ex2.map(abs, [], chunksize=chunksize)) == []


def test_map_stops_at_shortest_iterable_and_empty(ex2: ZmqExecutor) -> None:
    assert list(ex2.map(pow, [2, 3, 4], [1, 2], timeout=RESULT_TIMEOUT)) == [2, 9]
    assert list(ex2.map(abs, [], timeout=RESULT_TIMEOUT)) == []
    assert list(ex2.map(abs, iter(range(-3, 0)), timeout=RESULT_TIMEOUT)) == [3, 2, 1]


@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_chunksize_invalid(ex2: ZmqExecutor, chunksize: int) -> None:
    with pytest.raises(ValueError):
        ex2.map(pow, range(4), range(4), chunksize=chunksize)


def test_map_exception(ex2: ZmqExecutor) -> None:
    i = ex2.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5], timeout=RESULT_TIMEOUT)
    assert next(i) == (0, 1)
    assert next(i) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(i)


def test_map_exception_with_chunks(ex2: ZmqExecutor) -> None:
    """With chunks, the error surfaces no later than its item, and no earlier than its chunk."""
    divisors = [1, 1, 1, 1, 1, 0, 1, 1, 1]
    results = []
    with pytest.raises(ZeroDivisionError):
        for r in ex2.map(divmod, [7] * 9, divisors, chunksize=3, timeout=RESULT_TIMEOUT):
            results.append(r)
    assert 3 <= len(results) <= 5
    assert results == [(7, 0)] * len(results)


def test_map_results_in_order_whatever_the_completion_order(
    ex2: ZmqExecutor, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    markers = tmp_path / "finished"
    markers.mkdir()
    it = ex2.map(finish_last, range(8), [str(gate.path)] * 8, [str(markers)] * 8)
    wait_until(lambda: len(os.listdir(markers)) == 7, what="items 1..7 to finish")
    gate.open()
    assert list(it) == [i * i for i in range(8)]


def test_map_timeout(ex2: ZmqExecutor, gates: Gates, tmp_path: Path) -> None:
    rendezvous_pids(ex2, 2, tmp_path)  # both workers up, so only the blocked item is slow
    gate = gates()
    results = []
    with pytest.raises(cf.TimeoutError):
        for r in ex2.map(value_or_block, [None, None, str(gate.path)], timeout=3):
            results.append(r)
    assert results == [None, None]


def test_map_submits_without_iteration(make_executor: Callable[..., ZmqExecutor], tmp_path: Path):
    ex = make_executor(max_workers=2)
    ex.map(cc.touch, [str(tmp_path / f"m{i}") for i in range(10)])
    ex.shutdown(wait=True)
    assert sorted(p.name for p in tmp_path.glob("m*")) == sorted(f"m{i}" for i in range(10))


def test_map_free_reference(ex2: ZmqExecutor) -> None:
    """CPython issue #14406: the result iterator keeps no reference to yielded results."""
    for obj in ex2.map(make_dummy_object, range(10), timeout=RESULT_TIMEOUT):
        wr = weakref.ref(obj)
        del obj
        gc.collect()
        assert wr() is None


# ---------------------------------------------------------------------------- wait / as_completed


def test_wait_first_completed(ex2: ZmqExecutor, gates: Gates) -> None:
    gate = gates()
    blocker = ex2.submit(cc.block_until, str(gate.path))
    quick = ex2.submit(mul, 21, 2)
    done, not_done = cf.wait(
        [blocker, quick], timeout=RESULT_TIMEOUT, return_when=cf.FIRST_COMPLETED
    )
    assert done == {quick} and not_done == {blocker}
    gate.open()
    blocker.result(timeout=RESULT_TIMEOUT)


def test_wait_first_exception(ex2: ZmqExecutor, gates: Gates) -> None:
    gate = gates()
    blocker = ex2.submit(cc.block_until, str(gate.path))
    failing = ex2.submit(divmod, 1, 0)
    done, not_done = cf.wait(
        [blocker, failing], timeout=RESULT_TIMEOUT, return_when=cf.FIRST_EXCEPTION
    )
    assert done == {failing} and not_done == {blocker}
    gate.open()
    blocker.result(timeout=RESULT_TIMEOUT)


def test_wait_all_completed(ex2: ZmqExecutor) -> None:
    fs = [ex2.submit(mul, i, 2) for i in range(5)] + [ex2.submit(divmod, 1, 0)]
    done, not_done = cf.wait(fs, timeout=RESULT_TIMEOUT, return_when=cf.ALL_COMPLETED)
    assert done == set(fs) and not not_done


def test_wait_timeout(ex2: ZmqExecutor, gates: Gates) -> None:
    gate = gates()
    blocker = ex2.submit(cc.block_until, str(gate.path))
    quick = ex2.submit(mul, 2, 3)
    quick.result(timeout=RESULT_TIMEOUT)
    done, not_done = cf.wait([blocker, quick], timeout=0.2, return_when=cf.ALL_COMPLETED)
    assert done == {quick} and not_done == {blocker}


def test_as_completed(ex2: ZmqExecutor, gates: Gates) -> None:
    gate = gates()
    blocker = ex2.submit(cc.block_until, str(gate.path), "late")
    quick = [ex2.submit(mul, 2, 21), ex2.submit(divmod, 1, 0)]
    for f in quick:
        f.exception(timeout=RESULT_TIMEOUT)
    seen = []
    with pytest.raises(cf.TimeoutError):
        for f in cf.as_completed([blocker, *quick], timeout=0.3):
            seen.append(f)
    assert set(seen) == set(quick)
    gate.open()
    assert [f.result() for f in cf.as_completed([blocker], timeout=RESULT_TIMEOUT)] == ["late"]


# ---------------------------------------------------------------------------- callbacks, cancel


def test_add_done_callback(ex2: ZmqExecutor, gates: Gates) -> None:
    gate = gates()
    called: list[cf.Future[Any]] = []
    fired = threading.Event()

    def callback(f: cf.Future[Any]) -> None:
        called.append(f)
        fired.set()

    future = ex2.submit(cc.block_until, str(gate.path), 42)
    future.add_done_callback(callback)
    assert not called
    gate.open()
    assert fired.wait(RESULT_TIMEOUT)
    assert called == [future] and future.result(timeout=0) == 42
    # Added after completion: called at once, in this thread.
    late: list[cf.Future[Any]] = []
    future.add_done_callback(late.append)
    assert late == [future]


def test_callback_may_submit_and_may_raise(ex2: ZmqExecutor, gates: Gates) -> None:
    """loky test_in_callback_submit: the callback may run on the executor's own thread."""
    gate = gates()
    inner: dict[str, Any] = {}
    fired = threading.Event()

    def resubmit(f: cf.Future[Any]) -> None:
        try:
            inner["future"] = ex2.submit(mul, f.result(), 2)
        except BaseException as e:
            inner["error"] = e
        fired.set()

    def explode(f: cf.Future[Any]) -> None:
        raise RuntimeError("callback failure (expected in this test)")

    first = ex2.submit(cc.block_until, str(gate.path), 21)
    first.add_done_callback(explode)
    first.add_done_callback(resubmit)
    gate.open()
    assert fired.wait(RESULT_TIMEOUT)
    assert "error" not in inner, inner
    assert inner["future"].result(timeout=RESULT_TIMEOUT) == 42
    assert ex2.submit(abs, -1).result(timeout=RESULT_TIMEOUT) == 1


def test_cancel_queued_future(
    make_executor: Callable[..., ZmqExecutor], gates: Gates, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1)
    gate = gates()
    blocker = ex.submit(cc.block_until, str(gate.path), "blocker", str(gate.started))
    gate.wait_started()
    queued = [ex.submit(cc.touch, str(tmp_path / f"ran-{i}"), i) for i in range(10)]
    last = queued[-1]
    assert last.cancel() is True
    assert last.cancelled() and last.done()
    gate.open()
    assert blocker.result(timeout=RESULT_TIMEOUT) == "blocker"
    assert [f.result(timeout=RESULT_TIMEOUT) for f in queued[:-1]] == list(range(9))
    with pytest.raises(cf.CancelledError):
        last.result(timeout=0)
    assert not (tmp_path / "ran-9").exists(), "a cancelled task ran"


def test_cannot_cancel_started_task(ex2: ZmqExecutor, gates: Gates) -> None:
    """Once a task's body has begun, its future is running and cannot report cancelled."""
    gate = gates()
    future = ex2.submit(cc.block_until, str(gate.path), "ran", str(gate.started))
    gate.wait_started()
    assert future.running()
    assert future.cancel() is False
    gate.open()
    assert future.result(timeout=RESULT_TIMEOUT) == "ran"


def test_asyncio(ex2: ZmqExecutor) -> None:
    async def main() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        a = await asyncio.wait_for(asyncio.wrap_future(ex2.submit(pow, 2, 5)), RESULT_TIMEOUT)
        b = await asyncio.wait_for(loop.run_in_executor(ex2, abs, -3), RESULT_TIMEOUT)
        c = await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(ex2, mul, i, i) for i in range(10))),
            RESULT_TIMEOUT,
        )
        with pytest.raises(ZeroDivisionError):
            await asyncio.wait_for(loop.run_in_executor(ex2, divmod, 1, 0), RESULT_TIMEOUT)
        return a, b, c

    assert asyncio.run(main()) == (32, 3, [i * i for i in range(10)])


# ---------------------------------------------------------------------------- initializer


def test_initializer(make_executor: Callable[..., ZmqExecutor], tmp_path: Path) -> None:
    ex = make_executor(max_workers=2, initializer=init, initargs=("initialized",))
    d = tmp_path / "rv"
    d.mkdir()
    futures = [ex.submit(init_status_at_rendezvous, str(d), i, 2) for i in range(2)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == ["initialized"] * 2
    assert get_init_status() == "uninitialized"  # ran in the workers, not here


def test_failing_initializer(make_executor: Callable[..., ZmqExecutor]) -> None:
    ex = make_executor(max_workers=2, initializer=init_fail)
    try:
        future = ex.submit(get_init_status)
    except cf.BrokenExecutor as e:  # perhaps the executor is already broken
        exc: BaseException | None = e
    else:
        exc = future.exception(timeout=RESULT_TIMEOUT)
    assert isinstance(exc, cf.BrokenExecutor), repr(exc)
    assert isinstance(exc, BrokenZmqExecutor), repr(exc)
    assert "error in initializer" in chain_text(exc), chain_text(exc)
    # From now on, work fails the same way: at submit(), or on the future.
    try:
        later = ex.submit(abs, -1)
    except cf.BrokenExecutor:
        pass
    else:
        assert isinstance(later.exception(timeout=RESULT_TIMEOUT), cf.BrokenExecutor)
    ex.shutdown(wait=True)


# ---------------------------------------------------------------------------- max_tasks_per_child


def test_max_tasks_per_child(make_executor: Callable[..., ZmqExecutor]) -> None:
    ex = make_executor(max_workers=1, max_tasks_per_child=2)
    pids = [ex.submit(os.getpid).result(timeout=RESULT_TIMEOUT) for _ in range(6)]
    assert len(set(pids)) >= 3, pids
    # As in the stdlib: a process is reused until its limit, then replaced.
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5], pids
    assert len(set(pids)) == 3, pids


def test_max_tasks_early_shutdown(make_executor: Callable[..., ZmqExecutor]) -> None:
    ex = make_executor(max_workers=2, max_tasks_per_child=1)
    futures = [ex.submit(mul, i, i) for i in range(6)]
    ex.shutdown()
    assert [f.result(timeout=0) for f in futures] == [i * i for i in range(6)]


# ---------------------------------------------------------------------------- shutdown


def test_run_after_shutdown(ex2: ZmqExecutor) -> None:
    ex2.shutdown()
    with pytest.raises(RuntimeError):
        ex2.submit(pow, 2, 5)


def test_shutdown_twice(ex2: ZmqExecutor) -> None:
    assert ex2.submit(abs, -1).result(timeout=RESULT_TIMEOUT) == 1
    ex2.shutdown()
    ex2.shutdown()
    ex2.shutdown(wait=False, cancel_futures=True)


def test_context_manager_shutdown() -> None:
    with ZmqExecutor(max_workers=2) as ex:
        assert isinstance(ex, ZmqExecutor)
        assert list(ex.map(abs, range(-5, 5), timeout=RESULT_TIMEOUT)) == [
            5,
            4,
            3,
            2,
            1,
            0,
            1,
            2,
            3,
            4,
        ]
        futures = [ex.submit(mul, i, 3) for i in range(10)]
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == [i * 3 for i in range(10)]
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)


def test_context_manager_shuts_down_on_error() -> None:
    with pytest.raises(KeyError), ZmqExecutor(max_workers=1) as ex:
        future = ex.submit(mul, 6, 7)
        raise KeyError("boom")
    assert future.result(timeout=0) == 42
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)


def test_hang_issue12364(ex2: ZmqExecutor) -> None:
    fs = [ex2.submit(mul, i, i) for i in range(50)]
    ex2.shutdown()
    assert all(f.done() for f in fs), "shutdown(wait=True) returned before the work was done"
    assert [f.result(timeout=0) for f in fs] == [i * i for i in range(50)]


def test_shutdown_race_issue12456(ex2: ZmqExecutor) -> None:
    # CPython #12456: shutdown() at once after map(), before the workers have even registered,
    # must neither hang nor drop the calls map() queued: all three ran when it returns.
    results = ex2.map(str, [2] * 3, timeout=RESULT_TIMEOUT)
    ex2.shutdown()
    stats = ex2.stats()
    assert (stats.done, stats.pending, stats.running) == (3, 0, 0), (
        f"shutdown(wait=True) returned with the mapped calls unfinished: {stats!r}"
    )
    assert list(results) == ["2"] * 3


def test_shutdown_wait_true_waits_for_running_task(ex2: ZmqExecutor, gates: Gates) -> None:
    gate = gates()
    future = ex2.submit(cc.block_until, str(gate.path), "done", str(gate.started))
    gate.wait_started()
    t = threading.Thread(target=ex2.shutdown, kwargs={"wait": True})
    t.start()
    t.join(0.5)
    assert t.is_alive(), "shutdown(wait=True) returned while a task was still running"
    assert not future.done()
    gate.open()
    t.join(RESULT_TIMEOUT)
    assert not t.is_alive(), "shutdown(wait=True) did not return after the task finished"
    assert future.done() and future.result(timeout=0) == "done"


def test_shutdown_no_wait(make_executor: Callable[..., ZmqExecutor], gates: Gates) -> None:
    ex = make_executor(max_workers=1)
    gate = gates()
    blocker = ex.submit(cc.block_until, str(gate.path), "late", str(gate.started))
    gate.wait_started()
    pending = [ex.submit(mul, i, i) for i in range(5)]
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 2.0, "shutdown(wait=False) blocked"
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)
    gate.open()
    assert blocker.result(timeout=RESULT_TIMEOUT) == "late"
    assert [f.result(timeout=RESULT_TIMEOUT) for f in pending] == [i * i for i in range(5)]


def test_cancel_futures(
    make_executor: Callable[..., ZmqExecutor], gates: Gates, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1)
    gate = gates()
    running = ex.submit(cc.block_until, str(gate.path), "ran", str(gate.started))
    gate.wait_started()
    queued = [ex.submit(cc.touch, str(tmp_path / f"ran-{i}"), i) for i in range(20)]
    ex.shutdown(wait=False, cancel_futures=True)
    # Nothing has been sent beyond a small prefetch: nearly all queued tasks can be cancelled.
    wait_until(
        lambda: sum(f.cancelled() for f in queued) >= 15,
        what=lambda: (
            "15 of 20 queued futures cancelled (prefetch slack 5); states: "
            + str([f._state for f in queued])
        ),  # type: ignore[attr-defined]
    )
    gate.open()
    assert running.result(timeout=RESULT_TIMEOUT) == "ran"
    for i, f in enumerate(queued):
        if f.cancelled():
            assert not (tmp_path / f"ran-{i}").exists(), f"cancelled task {i} ran"
        else:
            assert f.result(timeout=RESULT_TIMEOUT) == i


def test_shutdown_wait_true_cancel_futures(
    make_executor: Callable[..., ZmqExecutor], gates: Gates
) -> None:
    ex = make_executor(max_workers=1)
    gate = gates()
    running = ex.submit(cc.block_until, str(gate.path), "ran", str(gate.started))
    gate.wait_started()
    queued = [ex.submit(mul, i, i) for i in range(20)]
    t = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
    t.start()
    wait_until(lambda: sum(f.cancelled() for f in queued) >= 15, what="queued futures cancelled")
    gate.open()
    t.join(RESULT_TIMEOUT)
    assert not t.is_alive()
    assert running.result(timeout=0) == "ran"
    assert all(f.done() for f in queued)


def test_del_shutdown() -> None:
    """Dropping the last reference shuts the executor down; results already asked for arrive.

    The leak check then verifies the processes and threads went away.
    """
    ex = ZmqExecutor(max_workers=2)
    res = ex.map(abs, range(-5, 5), timeout=RESULT_TIMEOUT)
    del ex
    gc.collect()
    assert list(res) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    del res
    gc.collect()


# ---------------------------------------------------------------------------- whole programs


def run_script(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ, ZMQEX_TEST_COUNTER=str(tmp_path / "counter"))
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(90)
def test_main_module_functions_without_guard(tmp_path: Path) -> None:
    """A script with no ``if __name__ == "__main__"`` guard: its functions, lambdas and
    classes run on workers, and its top-level code runs exactly once (no fork bomb)."""
    proc = run_script(
        tmp_path,
        """
        import os

        counter = os.environ["ZMQEX_TEST_COUNTER"]
        with open(counter, "a") as f:
            f.write(f"{os.getpid()} {__name__}\\n")
        with open(counter) as f:
            if len(f.readlines()) > 1:
                raise SystemExit("top-level code of the main script ran again")

        from zmqexecutor import ZmqExecutor

        OFFSET = 40


        def square(x):
            return x * x


        def add_offset(x):
            return x + OFFSET


        def make_adder(n):
            return lambda x: x + n


        class Point:
            def __init__(self, x):
                self.x = x

            def norm1(self):
                return abs(self.x)


        ex = ZmqExecutor(max_workers=2)
        print("squares", sum(ex.map(square, range(10), timeout=30)))
        print("lambda", ex.submit(lambda x: x * 3, 14).result(timeout=30))
        print("closure", ex.submit(make_adder(5), 37).result(timeout=30))
        print("global", ex.submit(add_offset, 2).result(timeout=30))
        print("method", ex.submit(Point(-42).norm1).result(timeout=30))
        ex.shutdown()
        """,
    )
    runs = (tmp_path / "counter").read_text().splitlines()
    assert len(runs) == 1, f"top-level code ran {len(runs)} times: {runs}\n{proc.stderr}"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n") == [
        "squares 285",
        "lambda 42",
        "closure 42",
        "global 42",
        "method 42",
        "",
    ], proc.stdout + proc.stderr


@pytest.mark.timeout(90)
def test_interpreter_shutdown(tmp_path: Path) -> None:
    """A task still pending when the program ends runs to completion (atexit, as the stdlib)."""
    marker = tmp_path / "marker"
    proc = run_script(
        tmp_path,
        """
        import sys
        import time

        from zmqexecutor import ZmqExecutor


        def mark_and_print(path, word):
            time.sleep(0.5)  # not synchronization: keeps the task pending at exit
            with open(path, "w") as f:
                f.write(word)
            print(word, flush=True)


        if __name__ == "__main__":
            t = ZmqExecutor(2)
            t.submit(mark_and_print, sys.argv[1], "apple")
        """,
        str(marker),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert marker.read_text() == "apple"
    assert proc.stdout.strip() == "apple", "a local worker's stdout is the parent's, as stdlib"


@pytest.mark.timeout(90)
def test_worker_output_is_flushed_when_it_exits(tmp_path: Path) -> None:
    """Workers leave with os._exit (as forked pool children do), after flushing: what a
    task printed without flush=True still reaches the parent's stdout and stderr."""
    proc = run_script(
        tmp_path,
        """
        import os
        import sys

        from zmqexecutor import ZmqExecutor

        os.environ.pop("PYTHONUNBUFFERED", None)  # the workers' stdout is block-buffered


        def chatty(i):
            print("out", i)
            print("err", i, file=sys.stderr)


        if __name__ == "__main__":
            with ZmqExecutor(2) as ex:
                list(ex.map(chatty, range(4)))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n")[:-1]) == [f"out {i}" for i in range(4)]
    assert sorted(line for line in proc.stderr.split("\n") if line.startswith("err")) == [
        f"err {i}" for i in range(4)
    ]


@pytest.mark.timeout(90)
def test_hang_gh83386(tmp_path: Path) -> None:
    """shutdown(wait=False) with a running task doesn't hang or lose the task at exit."""
    marker = tmp_path / "marker"
    proc = run_script(
        tmp_path,
        """
        import sys
        import time

        from zmqexecutor import ZmqExecutor


        def mark(path, word):
            time.sleep(0.5)  # not synchronization: keeps the task running at shutdown
            with open(path, "w") as f:
                f.write(word)


        if __name__ == "__main__":
            t = ZmqExecutor(max_workers=3)
            t.submit(mark, sys.argv[1], "apple")
            t.shutdown(wait=False)
        """,
        str(marker),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert marker.read_text() == "apple"
