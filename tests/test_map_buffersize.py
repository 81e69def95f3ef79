"""map(..., buffersize=N) behaves as Python 3.14's ProcessPoolExecutor.map, on every Python.

What 3.14 does (Lib/concurrent/futures/_base.py ``Executor.map`` and process.py
``ProcessPoolExecutor.map``): ``buffersize`` tasks (chunks, with ``chunksize > 1``) are
submitted by the call, one more each time a result is asked for; the results iterator holds
the executor by a weak reference and cancels its outstanding futures when it is closed.

How far map() read its input is observed through ``Counting``, a wrapper iterator: every item
it has handed out became (part of) a submitted task. Task callables live at module level:
workers import this module by name.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import itertools
import multiprocessing
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import crash_cases as cc
import pytest
from conftest import RESULT_TIMEOUT, Gates, wait_until

from zmqexecutor import ZmqExecutor


def square(x: int) -> int:
    return x * x


class Counting:
    """An iterator over ``items`` that counts how many items it has handed out."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._it = iter(items)
        self.taken = 0

    def __iter__(self) -> Counting:
        return self

    def __next__(self) -> Any:
        item = next(self._it)  # StopIteration is not an item
        self.taken += 1
        return item


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("buffersize", [0, -1])
def test_buffersize_below_one_raises_value_error(ex2: ZmqExecutor, buffersize: int) -> None:
    items = Counting(range(4))
    with pytest.raises(ValueError, match=r"^buffersize must be None or > 0$"):
        ex2.map(str, items, buffersize=buffersize)
    assert items.taken == 0


@pytest.mark.parametrize("buffersize", ["foo", 2.0])
def test_buffersize_not_an_int_raises_type_error(ex2: ZmqExecutor, buffersize: Any) -> None:
    items = Counting(range(4))
    with pytest.raises(TypeError, match=r"^buffersize must be an integer or None$"):
        ex2.map(str, items, buffersize=buffersize)
    assert items.taken == 0


def test_buffersize_with_empty_or_no_iterable(ex2: ZmqExecutor) -> None:
    assert list(ex2.map(str, [], buffersize=2)) == []
    assert list(ex2.map(str, buffersize=2)) == []
    assert list(ex2.map(str, [], chunksize=3, buffersize=2)) == []


# ---------------------------------------------------------------------------- laziness


@pytest.mark.parametrize("chunksize", [1, 4])
def test_buffersize_infinite_iterator(ex2: ZmqExecutor, chunksize: int) -> None:
    results = ex2.map(
        square, itertools.count(), chunksize=chunksize, buffersize=2, timeout=RESULT_TIMEOUT
    )
    assert list(itertools.islice(results, 10)) == [i * i for i in range(10)]
    two = ex2.map(pow, itertools.count(), itertools.count(), buffersize=3)
    assert list(itertools.islice(two, 5)) == [pow(i, i) for i in range(5)]
    results.close()  # type: ignore[attr-defined]
    two.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("buffersize", [1, 3])
def test_buffersize_submits_at_most_buffersize_ahead(ex2: ZmqExecutor, buffersize: int) -> None:
    """``buffersize`` tasks at the call, then one more per result asked for (3.14 submits it
    before waiting for the result, so ``buffersize + 1`` are outstanding during a next())."""
    items = Counting(range(20))
    results = ex2.map(square, items, buffersize=buffersize, timeout=RESULT_TIMEOUT)
    assert items.taken == buffersize
    for k in range(1, 20 - buffersize + 1):
        assert next(results) == (k - 1) ** 2
        assert items.taken == buffersize + k, f"after {k} result(s)"
    assert list(results) == [i * i for i in range(20 - buffersize, 20)]
    assert items.taken == 20


def test_without_buffersize_the_input_is_read_at_the_call(ex2: ZmqExecutor) -> None:
    """The stdlib's eager default stays the default (and shows that Counting can tell)."""
    items = Counting(range(20))
    results = ex2.map(square, items, timeout=RESULT_TIMEOUT)
    assert items.taken == 20
    assert list(results) == [i * i for i in range(20)]


def test_buffersize_counts_chunks(ex2: ZmqExecutor) -> None:
    """With chunksize=5 and buffersize=2: two chunks (10 items) at the call; one more chunk
    when the first item of each chunk is asked for."""
    items = Counting(range(40))
    results = ex2.map(square, items, chunksize=5, buffersize=2, timeout=RESULT_TIMEOUT)
    assert items.taken == 10
    for k in range(1, 26):
        assert next(results) == (k - 1) ** 2
        chunks_asked = (k + 4) // 5
        assert items.taken == min(40, 5 * (2 + chunks_asked)), f"after {k} result(s)"
    assert list(results) == [i * i for i in range(25, 40)]


# ---------------------------------------------------------------------------- closing


def _gated_map(
    ex: ZmqExecutor, gates: Gates, started: Path, chunksize: int, buffersize: int | None
) -> Iterator[Any]:
    """map() over 10 tasks (chunks): the first one's items return at once, every later item
    waits for a gate. Each item that runs touches ``started/<index>`` first."""
    n = 10 * chunksize
    open_gate, closed_gate = gates(), gates()
    open_gate.open()
    paths = [str(open_gate.path)] * chunksize + [str(closed_gate.path)] * (n - chunksize)
    return ex.map(
        cc.block_until,
        paths,
        range(n),
        [str(started / str(i)) for i in range(n)],
        chunksize=chunksize,
        buffersize=buffersize,
        timeout=RESULT_TIMEOUT,
    )


@pytest.mark.parametrize("how", ["close", "drop"])
@pytest.mark.parametrize(("chunksize", "buffersize"), [(1, None), (1, 4), (3, None), (3, 4)])
def test_closing_the_iterator_cancels_outstanding_tasks(
    make_executor: Callable[..., ZmqExecutor],
    gates: Gates,
    tmp_path: Path,
    how: str,
    chunksize: int,
    buffersize: int | None,
) -> None:
    """The first task has been yielded from and the two workers are each blocked in a task;
    closing (or dropping) the iterator must cancel the 7 tasks not started."""
    ex = make_executor(max_workers=2, prefetch=0)  # no task waits on a worker: 2 in flight
    started = tmp_path / "started"
    started.mkdir()
    results = _gated_map(ex, gates, started, chunksize, buffersize)
    assert next(results) == 0
    # the first task (its chunksize items) ran; one item of each of the next two started
    wait_until(lambda: len(os.listdir(started)) == chunksize + 2, what="two blocked tasks")
    if how == "close":
        results.close()  # type: ignore[attr-defined]
        with pytest.raises(StopIteration):
            next(results)
    else:
        del results
        gc.collect()
    gates.open_all()
    ex.shutdown(wait=True)
    assert len(os.listdir(started)) == 3 * chunksize, "tasks ran after the iterator closed"


# ---------------------------------------------------------------------------- the executor


@pytest.mark.parametrize("chunksize", [1, 2])
def test_iterator_holds_the_executor_weakly(chunksize: int) -> None:
    """An unread results iterator does not keep the executor: it is collected, shuts down
    (the leak check sees its threads and processes go), and, as 3.14 does once the weak
    reference is dead, the iterator yields what was submitted and stops."""
    ex = ZmqExecutor(max_workers=2)
    items = Counting(range(100))
    results = ex.map(square, items, chunksize=chunksize, buffersize=3, timeout=RESULT_TIMEOUT)
    executor = weakref.ref(ex)
    del ex
    gc.collect()
    assert executor() is None
    assert list(results) == [i * i for i in range(3 * chunksize)]
    assert items.taken == 3 * chunksize


def test_next_after_shutdown_raises_runtime_error(ex2: ZmqExecutor) -> None:
    """As 3.14: the iterator submits with the executor it still reaches, which refuses."""
    items = Counting(range(10))
    results = ex2.map(square, items, buffersize=2, timeout=RESULT_TIMEOUT)
    assert next(results) == 0
    ex2.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        next(results)
    with pytest.raises(StopIteration):
        next(results)
    assert items.taken == 4  # 2 at the call, 1 per next(): the last one was not submitted


@pytest.mark.parametrize("chunksize", [1, 2])
def test_buffersize_timeout(ex2: ZmqExecutor, gates: Gates, tmp_path: Path, chunksize: int) -> None:
    """The timeout counts from the map() call; after it, the iteration is over."""
    gate, open_gate = gates(), gates()
    open_gate.open()
    paths = [str(open_gate.path)] * chunksize + [str(gate.path)] * 5 * chunksize
    t0 = time.monotonic()
    results = ex2.map(
        cc.block_until, paths, range(len(paths)), chunksize=chunksize, buffersize=2, timeout=1.0
    )
    assert next(results) == 0
    with pytest.raises(cf.TimeoutError):
        list(results)
    assert time.monotonic() - t0 >= 1.0
    with pytest.raises(StopIteration):
        next(results)


# ---------------------------------------------------------------------------- as the stdlib


def _outcomes(results: Iterator[Any], limit: int = 100) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for _ in range(limit):
        try:
            out.append(("value", next(results)))
        except StopIteration:
            return out
        except Exception as e:
            out.append(("raised", type(e).__name__))
    return out


CASES = [
    pytest.param(pow, (range(20), range(20)), 1, id="pow"),
    pytest.param(pow, (range(20), range(15)), 3, id="pow-chunks-shortest"),
    pytest.param(abs, (range(-10, 10),), 4, id="abs-one-iterable-chunks"),
    pytest.param(divmod, ([5] * 6, [2, 1, 0, 3, 0, 5]), 1, id="divmod-raises"),
    pytest.param(divmod, ([5] * 6, [2, 1, 0, 3, 0, 5]), 2, id="divmod-raises-chunks"),
]


@pytest.fixture
def process_pool() -> Iterator[cf.ProcessPoolExecutor]:
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _trace(
    ex: cf.Executor, fn: Callable[..., Any], iterables: tuple[Any, ...], **kwargs: Any
) -> tuple[list[tuple[str, Any]], list[int]]:
    """The outcomes of map(), and how far it had read its first input after the call and
    after each result."""
    first = Counting(iterables[0])
    results = ex.map(fn, first, *iterables[1:], timeout=RESULT_TIMEOUT, **kwargs)
    taken = [first.taken]
    outcomes: list[tuple[str, Any]] = []
    while True:
        step = _outcomes(results, limit=1)
        if not step:
            break
        outcomes += step
        taken.append(first.taken)
    return outcomes, taken


@pytest.mark.parametrize(("fn", "iterables", "chunksize"), CASES)
def test_same_results_as_process_pool(
    process_pool: cf.ProcessPoolExecutor,
    ex2: ZmqExecutor,
    fn: Callable[..., Any],
    iterables: tuple[Any, ...],
    chunksize: int,
) -> None:
    expected = _trace(process_pool, fn, iterables, chunksize=chunksize)
    assert _trace(ex2, fn, iterables, chunksize=chunksize) == expected


@pytest.mark.skipif(sys.version_info < (3, 14), reason="the stdlib has buffersize from 3.14")
@pytest.mark.parametrize("buffersize", [1, 2, 7])
@pytest.mark.parametrize(("fn", "iterables", "chunksize"), CASES)
def test_same_results_and_reads_as_process_pool_with_buffersize(
    process_pool: cf.ProcessPoolExecutor,
    ex2: ZmqExecutor,
    fn: Callable[..., Any],
    iterables: tuple[Any, ...],
    chunksize: int,
    buffersize: int,
) -> None:
    kwargs = {"chunksize": chunksize, "buffersize": buffersize}
    expected = _trace(process_pool, fn, iterables, **kwargs)
    assert _trace(ex2, fn, iterables, **kwargs) == expected
