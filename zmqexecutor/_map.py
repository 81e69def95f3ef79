"""map() for ZmqExecutor and its views: chunks, the lazy buffered results, their cancellation.

Python 3.14's ``Executor.map`` on every Python: only ``submit()`` of the executor is used, so
it serves ``ZmqExecutor`` and ``ExecutorView`` alike. ``_process_chunk`` and
``_process_star_chunk`` run on the workers (pickled by reference).
"""

from __future__ import annotations

import collections
import itertools
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")


def _process_chunk(fn: Callable[..., T], chunk: list[Any]) -> list[T]:
    """Runs on the worker: one task for ``chunksize`` items of map() over one iterable."""
    return list(map(fn, chunk))


def _process_star_chunk(fn: Callable[..., T], chunk: list[tuple[Any, ...]]) -> list[T]:
    """Runs on the worker: one task for ``chunksize`` items of map() over several iterables."""
    return list(itertools.starmap(fn, chunk))


def map_calls(
    executor: Executor,
    fn: Callable[..., T],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
) -> Iterator[T]:
    """ZmqExecutor.map, for an executor or a view of one (their submit() is all it uses)."""
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    # the checks and messages of Python 3.14's Executor.map
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")
    if chunksize == 1:
        return _map_results(executor, fn, zip(*iterables, strict=False), timeout, buffersize)
    if len(iterables) == 1:  # chunks of plain values pickle fast (see dump_args)
        process, it = _process_chunk, iter(iterables[0])
    else:
        process, it = _process_star_chunk, zip(*iterables, strict=False)
    chunks = iter(lambda: list(itertools.islice(it, chunksize)), [])
    return _chain(
        _map_results(executor, partial(process, fn), zip(chunks, strict=False), timeout, buffersize)
    )


def _map_results(
    executor: Executor,
    fn: Callable[..., T],
    calls: Iterator[tuple[Any, ...]],
    timeout: float | None,
    buffersize: int | None,
) -> Generator[T, None, None]:
    """Submit map()'s first tasks now (all of them when ``buffersize`` is None) and return
    the generator of their results, as Python 3.14's ``Executor.map`` does."""
    deadline = None if timeout is None else time.monotonic() + timeout
    first = calls if buffersize is None else itertools.islice(calls, buffersize)
    futures = collections.deque(executor.submit(fn, *args) for args in first)
    # weak, so that an iterator nobody reads does not keep the executor (and its workers)
    return _results(weakref.ref(executor), fn, calls, futures, deadline, buffersize is not None)


def _results(
    executor_ref: weakref.ref[Executor],
    fn: Callable[..., T],
    calls: Iterator[tuple[Any, ...]],
    futures: collections.deque[Future[T]],
    deadline: float | None,
    refill: bool,
) -> Generator[T, None, None]:
    futures.reverse()  # the oldest on the right, where pop() takes it; new ones join left
    try:
        while futures:
            # One more task per result asked for, submitted before waiting (as in 3.14: up
            # to buffersize + 1 are outstanding during a next(), CPython gh-131466). Once
            # the executor is gone, only what was submitted is yielded. As in 3.14, the
            # `executor` local keeps it alive while this generator is suspended.
            if refill and (executor := executor_ref()) is not None:
                args = next(calls, None)
                if args is not None:
                    futures.appendleft(executor.submit(fn, *args))
            # popped straight into the call: no reference to a yielded result stays here
            yield _result_or_cancel(
                futures.pop(), None if deadline is None else deadline - time.monotonic()
            )
    finally:  # close(), garbage collection, a timeout or an error: cancel what is left
        for future in futures:
            future.cancel()


def _result_or_cancel(future: Future[T], timeout: float | None) -> T:
    try:
        return future.result(timeout)
    finally:
        future.cancel()  # after a timeout: the task need not run any more
        del future  # break the cycle through a raised exception's traceback


def _chain(results: Generator[list[T], None, None]) -> Generator[T, None, None]:
    """The items of map()'s chunk results. Keeps at most one chunk of results alive (the
    results generator drops each chunk as it is yielded); closing it closes ``results``
    at once, which cancels the chunks not started."""
    try:
        yield from itertools.chain.from_iterable(results)
    finally:
        results.close()
