"""submit()'s fast path: a task submitted while a worker is free and the dispatcher sleeps in
poll() is sent by the caller's thread itself (``Dispatcher.send_now``), holding the
dispatcher's lock, so the core and the sockets still have one owner at a time.

Each test records, in this process, which thread sent each TASKS message and whether the lock
was held then: the dispatcher's sends and the caller's must never overlap.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable, Iterator
from typing import Any

import crash_cases as cc
import pytest
from conftest import RESULT_TIMEOUT, wait_until

from zmqexecutor import BrokenZmqExecutor, WorkerLostError, ZmqExecutor
from zmqexecutor._dispatcher import Dispatcher


def square(x: int) -> int:
    return x * x


class Sends:
    """Who sent each TASKS message (thread name), and any send made without the lock."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.unlocked = 0
        self.mutex = threading.Lock()

    def by_caller(self) -> int:
        return sum(name != "zmqexecutor-dispatcher" for name in self.threads)


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sends]:
    record = Sends()
    original = Dispatcher._send

    def send(self: Dispatcher, *args: Any) -> None:
        with record.mutex:
            record.threads.append(threading.current_thread().name)
            record.unlocked += not self.lock.locked()
        original(self, *args)

    monkeypatch.setattr(Dispatcher, "_send", send)
    yield record


def _idle(ex: ZmqExecutor) -> None:
    """Both workers ready and the dispatcher asleep with a free worker."""
    wait_until(lambda: ex._dispatcher.core.ready_count() == 2, what="two ready workers")
    wait_until(lambda: ex._dispatcher.idle, what="the dispatcher to sleep with a worker free")


def _run_threads(client: Callable[[int], None], n: int) -> None:
    """Run ``client(0)`` ... ``client(n - 1)`` at once, each in a thread, until all end."""
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_a_task_for_an_idle_worker_is_sent_by_the_caller(
    make_executor: Callable[..., ZmqExecutor], sends: Sends
) -> None:
    ex = make_executor(max_workers=2)
    _idle(ex)
    for i in range(50):
        assert ex.submit(square, i).result(timeout=RESULT_TIMEOUT) == i * i
    # A caller racing the dispatcher's way back into poll() wakes it instead, so not every
    # one; without the fast path none is.
    assert sends.by_caller() >= 25, sends.threads
    assert sends.unlocked == 0


def test_a_fast_path_task_whose_worker_dies_fails_alone(
    make_executor: Callable[..., ZmqExecutor], sends: Sends
) -> None:
    ex = make_executor(max_workers=2)
    _idle(ex)
    doomed = ex.submit(cc.exit_process, 3)
    assert sends.by_caller() == 1  # this task took the fast path
    with pytest.raises(WorkerLostError, match=r"(?i)(exit|code|status)\D{0,20}\b3\b"):
        doomed.result(timeout=RESULT_TIMEOUT)
    # the executor goes on: the worker is replaced and the next tasks run
    assert [ex.submit(square, i).result(timeout=RESULT_TIMEOUT) for i in range(10)] == [
        i * i for i in range(10)
    ]
    assert sends.unlocked == 0


@pytest.mark.timeout(120)
def test_many_threads_submit_while_results_flow(
    make_executor: Callable[..., ZmqExecutor], sends: Sends
) -> None:
    ex = make_executor(max_workers=2)
    _idle(ex)
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            for i in range(150):
                x = k * 1000 + i
                if i % 3:
                    assert ex.submit(square, x).result(timeout=RESULT_TIMEOUT) == x * x
                else:  # a few at once: queued tasks and fast-path ones mix
                    fs = [ex.submit(square, x + j) for j in range(4)]
                    assert [f.result(timeout=RESULT_TIMEOUT) for f in fs] == [
                        (x + j) ** 2 for j in range(4)
                    ]
        except BaseException as e:
            errors.append(e)

    _run_threads(client, 8)
    assert not errors, errors
    assert sends.unlocked == 0
    assert sends.by_caller() > 0, "no task took the fast path"
    stats = ex.stats()
    assert (stats.pending, stats.running) == (0, 0)
    assert stats.done >= 8 * 150


@pytest.mark.timeout(120)
def test_cancel_racing_the_fast_path_ends_every_future_once(
    make_executor: Callable[..., ZmqExecutor], sends: Sends
) -> None:
    ex = make_executor(max_workers=2)
    _idle(ex)
    futures: list[cf.Future[int]] = []
    ends: dict[int, int] = {}
    lock = threading.Lock()

    def ended(f: cf.Future[int]) -> None:
        with lock:
            ends[id(f)] = ends.get(id(f), 0) + 1

    def client(k: int) -> None:
        for i in range(200):
            f = ex.submit(square, k * 1000 + i)
            f.add_done_callback(ended)
            f.cancel()  # races with the caller's own send (and the dispatcher's)
            with lock:
                futures.append(f)

    _run_threads(client, 4)
    _, not_done = cf.wait(futures, timeout=RESULT_TIMEOUT)
    assert not not_done
    for f in futures:
        if not f.cancelled():
            x = f.result()
            assert isinstance(x, int)
    wait_until(lambda: len(ends) == len(futures), what="every done callback")
    assert set(ends.values()) == {1}  # each future ended exactly once
    wait_until(lambda: (ex.stats().pending, ex.stats().running) == (0, 0), what="nothing held")
    assert sends.unlocked == 0


def test_a_send_that_fails_in_the_callers_thread_breaks_the_executor(
    make_executor: Callable[..., ZmqExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = make_executor(max_workers=2)
    _idle(ex)
    original = Dispatcher._send

    def send(self: Dispatcher, *args: Any) -> None:
        if threading.current_thread().name != "zmqexecutor-dispatcher":
            raise OSError("injected")
        original(self, *args)

    monkeypatch.setattr(Dispatcher, "_send", send)
    f = ex.submit(square, 3)
    with pytest.raises(BrokenZmqExecutor, match="sending a task failed"):
        f.result(timeout=RESULT_TIMEOUT)
    with pytest.raises(BrokenZmqExecutor):
        ex.submit(square, 4)
