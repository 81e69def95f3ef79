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
    ``__getattr__``, and ``dict.setdefault`` makes the first creation atomic.
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
