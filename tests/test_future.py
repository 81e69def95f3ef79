"""The futures submit() returns: stdlib Futures whose lock is made on first use."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import tracemalloc

import pytest

from zmqexecutor._future import LazyFuture


def test_is_a_stdlib_future_with_nothing_allocated_until_used() -> None:
    f: LazyFuture[int] = LazyFuture()
    assert isinstance(f, cf.Future)
    assert set(vars(f)) == {"_state", "_result", "_exception"}
    assert not f.done() and not f.running() and not f.cancelled()
    assert "_condition" not in vars(f)  # queries make nothing
    assert f.set_running_or_notify_cancel()
    f.set_result(7)
    assert f.result(timeout=0) == 7
    assert repr(f).endswith("state=finished returned int>")


def test_smaller_than_a_stdlib_future_while_queued() -> None:
    def bytes_each(make: type[cf.Future[int]]) -> float:
        tracemalloc.start()
        try:
            futures = [make() for _ in range(1000)]
            return tracemalloc.get_traced_memory()[0] / len(futures)
        finally:
            tracemalloc.stop()

    lazy, stdlib = bytes_each(LazyFuture), bytes_each(cf.Future)
    assert lazy * 4 < stdlib, (lazy, stdlib)  # measured: about 104 vs 1,600 bytes


def test_reading_a_finished_future_makes_no_lock() -> None:
    """W1 and map() read thousands of results that are already there: no Condition each."""
    f: LazyFuture[int] = LazyFuture()
    assert f.set_running_or_notify_cancel()
    f.set_result(7)
    assert f.result() == 7 and f.result(timeout=0) == 7 and f.exception() is None
    g: LazyFuture[int] = LazyFuture()
    g.set_exception(KeyError("k"))
    assert isinstance(g.exception(), KeyError)
    assert "_condition" not in vars(f) and "_condition" not in vars(g)
    with pytest.raises(KeyError):  # a failed one raises as the stdlib's does
        g.result()


def test_callbacks_cancel_exception_and_missing_attributes() -> None:
    seen: list[cf.Future[int]] = []
    f: LazyFuture[int] = LazyFuture()
    f.add_done_callback(seen.append)
    assert f.cancel() and f.cancelled()
    assert seen == [f]
    g: LazyFuture[int] = LazyFuture()
    g.set_exception(KeyError("k"))
    assert isinstance(g.exception(timeout=0), KeyError)
    with pytest.raises(AttributeError, match="no_such_attribute"):
        g.no_such_attribute  # noqa: B018


def test_cancel_of_an_untouched_future_makes_no_lock_and_keeps_the_contract() -> None:
    f: LazyFuture[int] = LazyFuture()
    assert f.cancel() and f.cancel()  # the stdlib answers True again
    assert "_condition" not in vars(f)
    assert f.cancelled() and f.done()
    with pytest.raises(cf.CancelledError):
        f.result(timeout=0)
    seen: list[cf.Future[int]] = []
    f.add_done_callback(seen.append)  # runs at once on a done future
    assert seen == [f]
    assert not f.set_running_or_notify_cancel()  # what the dispatcher does with it
    done, _ = cf.wait([f], timeout=0)  # as for the stdlib's, only once notified
    assert done == {f}
    with pytest.raises(cf.InvalidStateError):
        f.set_result(1)


def test_untouched_future_runs_and_finishes_without_a_lock() -> None:
    """What the dispatcher does to a future nobody waits on makes no Condition; whoever
    looks afterwards sees the outcome."""
    f: LazyFuture[int] = LazyFuture()
    assert f.set_running_or_notify_cancel() and f.running()
    assert not f.cancel()  # running: too late, as for the stdlib's
    f.set_result(5)
    assert "_condition" not in vars(f)
    assert not f.cancel()
    with pytest.raises(cf.InvalidStateError):
        f.set_result(6)
    assert f.result(timeout=0) == 5
    seen: list[cf.Future[int]] = []
    f.add_done_callback(seen.append)
    assert seen == [f]
    g: LazyFuture[int] = LazyFuture()
    g.set_running_or_notify_cancel()
    g.set_exception(KeyError("k"))
    assert isinstance(g.exception(timeout=0), KeyError)
    done, _ = cf.wait([f, g], timeout=0)
    assert done == {f, g}


def test_cancel_races_with_waiters_and_the_dispatcher() -> None:
    """Cancel while other threads start waiting or try to run it: every waiter sees the
    outcome, whichever thread made the Condition."""
    for _ in range(200):
        f: LazyFuture[int] = LazyFuture()
        barrier = threading.Barrier(3)
        outcome: list[str] = []

        def waiter(fut: LazyFuture[int], b: threading.Barrier, out: list[str]) -> None:
            b.wait(timeout=10)
            done, _ = cf.wait([fut], timeout=10)
            out.append("done" if done else "hung")

        def runner(fut: LazyFuture[int], b: threading.Barrier) -> None:
            b.wait(timeout=10)
            if fut.set_running_or_notify_cancel():  # False if cancelled: then it notifies
                fut.set_result(1)

        threads = [
            threading.Thread(target=waiter, args=(f, barrier, outcome)),
            threading.Thread(target=runner, args=(f, barrier)),
        ]
        for t in threads:
            t.start()
        barrier.wait(timeout=10)
        cancelled = f.cancel()
        for t in threads:
            t.join(timeout=10)
        assert outcome == ["done"]
        assert f.cancelled() == cancelled
        assert cancelled or f.result(timeout=0) == 1


def test_first_use_from_many_threads_makes_one_condition() -> None:
    """Waiters that arrive together share one Condition, so the result wakes them all."""
    f: LazyFuture[str] = LazyFuture()
    barrier = threading.Barrier(9)
    got: list[str] = []

    def waiter() -> None:
        barrier.wait(timeout=10)
        got.append(f.result(timeout=10))

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for t in threads:
        t.start()
    barrier.wait(timeout=10)
    f.set_result("done")
    for t in threads:
        t.join(timeout=10)
    assert got == ["done"] * 8


def test_wait_as_completed_and_asyncio() -> None:
    fs: list[LazyFuture[int]] = [LazyFuture() for _ in range(3)]
    fs[1].set_result(1)
    done, not_done = cf.wait(fs, timeout=0, return_when=cf.FIRST_COMPLETED)
    assert done == {fs[1]} and not_done == {fs[0], fs[2]}
    threading.Timer(0.0, fs[0].set_result, (0,)).start()
    threading.Timer(0.0, fs[2].set_result, (2,)).start()
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=10)) == [0, 1, 2]

    async def main() -> int:
        g: LazyFuture[int] = LazyFuture()
        asyncio.get_running_loop().call_soon(g.set_result, 5)
        return await asyncio.wrap_future(g)

    assert asyncio.run(main()) == 5
