"""The futures ``submit`` returns: ``concurrent.futures.Future`` with its lock made lazily."""

from __future__ import annotations

import threading
from concurrent.futures import Future as _StdFuture
from concurrent.futures import _base
from typing import Any, TypeVar

T = TypeVar("T")

#: held while a future's Condition is made, so that "no Condition yet" is a state cancel()
#: can rely on: nobody has locked, waited on or added a callback to such a future
_MAKING = threading.Lock()
_CANCELLED = frozenset({_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED})
_DONE = _CANCELLED | {_base.FINISHED}
_UNFINISHED = frozenset({_base.PENDING, _base.RUNNING})


class LazyFuture(_StdFuture[T]):
    """A ``concurrent.futures.Future`` that creates its Condition and lists on first use.

    A stdlib Future costs about 1.6 KB, most of it the Condition (an RLock and a deque) that
    only matters once somebody waits on it or it completes; a million queued tasks would
    hold 1.6 GB of them. This one costs about 100 bytes until then. Every method is the
    stdlib's: they, ``wait`` and ``as_completed`` reach the attributes through
    ``__getattr__`` (or ``_materialize``); ``dict.setdefault`` and ``_MAKING`` make the
    first creation atomic, so threads that race to it share one Condition. ``done``,
    ``running`` and ``cancelled`` only read the state, and ``cancel`` of a future nobody
    has touched makes no Condition at all (``shutdown(cancel_futures=True)`` with a
    million queued tasks).
    """

    def __init__(self) -> None:  # the base's __init__ minus what is made lazily
        self._state = _base.PENDING
        self._result = None
        self._exception = None

    def __getattr__(self, name: str) -> Any:
        if name == "_condition":
            with _MAKING:
                return self.__dict__.setdefault("_condition", threading.Condition())
        if name == "_waiters" or name == "_done_callbacks":
            return self.__dict__.setdefault(name, [])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _materialize(self) -> None:
        """Make all the lazy attributes at once: each miss through ``__getattr__`` costs a
        caught AttributeError, and the dispatcher's calls below are on every task's path."""
        d = self.__dict__
        if "_waiters" not in d:
            d.setdefault("_waiters", [])
        if "_done_callbacks" not in d:
            d.setdefault("_done_callbacks", [])
        if "_condition" not in d:
            with _MAKING:
                d.setdefault("_condition", threading.Condition())

    # One attribute read needs no lock (the stdlib takes it only out of habit); so queries
    # on a queued future make no Condition (the dispatcher asks cancelled() of every
    # queued task when no worker is left).
    def cancelled(self) -> bool:
        return self._state in _CANCELLED

    def running(self) -> bool:
        return self._state == _base.RUNNING

    def done(self) -> bool:
        return self._state in _DONE

    # A finished future never changes again, and its result was set before its state (under
    # the GIL, in that order): reading it needs no lock, so a caller that collects results
    # already there (as map() and a loop over futures do) makes no Condition at all.
    def result(self, timeout: float | None = None) -> T:
        if self._state == _base.FINISHED and self._exception is None:
            return self._result  # type: ignore[return-value]
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == _base.FINISHED:
            return self._exception
        return super().exception(timeout)

    def cancel(self) -> bool:
        with _MAKING:
            if "_condition" not in self.__dict__:  # untouched: nobody waits, no callback
                if self._state in (_base.RUNNING, _base.FINISHED):
                    return False
                if self._state == _base.PENDING:
                    self._state = _base.CANCELLED
                return True
        self._materialize()
        return super().cancel()

    # The dispatcher thread makes these transitions for every task. On a future nobody has
    # touched (no Condition: nobody waits, no callback) they are plain assignments, under
    # _MAKING so that a Condition made meanwhile sees either the old state or the new one.
    def set_running_or_notify_cancel(self) -> bool:
        with _MAKING:
            if "_condition" not in self.__dict__:
                if self._state == _base.PENDING:
                    self._state = _base.RUNNING
                    return True
                if self._state == _base.CANCELLED:
                    self._state = _base.CANCELLED_AND_NOTIFIED
                    return False
        self._materialize()
        return super().set_running_or_notify_cancel()

    def set_result(self, result: T) -> None:
        if not self._finish_untouched("_result", result):
            self._materialize()
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if not self._finish_untouched("_exception", exception):
            self._materialize()
            super().set_exception(exception)

    def _finish_untouched(self, attribute: str, value: Any) -> bool:
        """Finish a running or pending future nobody touched; False if it was touched
        (or is done: the stdlib's method then raises InvalidStateError)."""
        with _MAKING:
            if "_condition" in self.__dict__ or self._state not in _UNFINISHED:
                return False
            setattr(self, attribute, value)
            self._state = _base.FINISHED
            return True
