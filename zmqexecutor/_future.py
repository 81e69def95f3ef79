"""The futures ``submit`` returns: ``concurrent.futures.Future`` with its lock made lazily."""

from __future__ import annotations

import threading
from concurrent.futures import Future as _StdFuture
from concurrent.futures import _base
from typing import Any, TypeVar

T = TypeVar("T")


class LazyFuture(_StdFuture[T]):
    """A ``concurrent.futures.Future`` that creates its Condition and lists on first use.

    A stdlib Future costs about 1.6 KB, most of it the Condition (an RLock and a deque) that
    only matters once somebody waits on it or it completes; a million queued tasks would
    hold 1.6 GB of them. This one costs about 100 bytes until then. Every method is the
    stdlib's: they, ``wait`` and ``as_completed`` reach the attributes through
    ``__getattr__`` (or ``_materialize``), and ``dict.setdefault`` makes the first creation
    atomic, so threads that race to it share one Condition.
    """

    def __init__(self) -> None:  # the base's __init__ minus what is made lazily
        self._state = _base.PENDING
        self._result = None
        self._exception = None

    def __getattr__(self, name: str) -> Any:
        if name == "_condition":
            value: Any = threading.Condition()
        elif name == "_waiters" or name == "_done_callbacks":
            value = []
        else:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.__dict__.setdefault(name, value)

    def _materialize(self) -> None:
        """Make all the lazy attributes at once: each miss through ``__getattr__`` costs a
        caught AttributeError, and the dispatcher's calls below are on every task's path."""
        d = self.__dict__
        if "_waiters" not in d:
            d.setdefault("_waiters", [])
        if "_done_callbacks" not in d:
            d.setdefault("_done_callbacks", [])
        if "_condition" not in d:
            d.setdefault("_condition", threading.Condition())

    def set_running_or_notify_cancel(self) -> bool:
        self._materialize()
        return super().set_running_or_notify_cancel()

    def set_result(self, result: T) -> None:
        self._materialize()
        super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        self._materialize()
        super().set_exception(exception)
