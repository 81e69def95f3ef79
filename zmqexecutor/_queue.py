"""The tasks on the executor's side: one submitted call (``WorkItem``) and the queue of
those waiting to be sent (``TaskQueue``), which the scheduling core (``_scheduler.py``) pops.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class WorkItem:
    """A submitted call, pickled in submit() (outside any lock)."""

    future: Future[Any]
    task_id: int
    digest: bytes
    fn_bytes: bytes
    payload: bytes
    buffers: Sequence[Any]
    #: times sent to a worker (a task sent back to the queue unstarted is sent again)
    sends: int = 0
    #: expected run time when it was sent (seconds; None if unknown)
    estimate: float | None = None
    #: when it was last sent
    sent_at: float = 0.0
    #: it was sent to an idle worker: its result times the host's round trip
    probe: bool = False
    #: workers (and hosts) it was lost on; a retry never goes back to them (None: none yet,
    #: so that a million queued tasks do not carry a million empty sets)
    lost_on: set[str] | None = None
    #: higher is sent first (executor.options(priority=...)); FIFO within a priority
    priority: int = 0
    #: what it needs of its host while it runs, e.g. {"GPU": 1} (None: nothing)
    resources: dict[str, float] | None = None
    #: while it holds its resources: the whole units among them, e.g. {"GPU": [1]}
    units: dict[str, list[int]] | None = None


class TaskQueue:
    """The tasks waiting to be sent: by priority, higher first, FIFO within a priority.

    ``append`` may be called from any thread (submit()); it and ``popleft``, ``appendleft``
    and ``extendleft`` use only operations that are atomic under the GIL. With one priority
    (the common case) it costs what one deque costs.
    """

    def __init__(self) -> None:
        self._default: deque[WorkItem] = deque()
        self._levels: dict[int, deque[WorkItem]] = {0: self._default}
        #: the priorities, highest first (replaced whole, never changed in place)
        self._order: list[deque[WorkItem]] = [self._default]
        #: set once a task with a priority or resources was queued
        self.mixed = False

    def _level(self, priority: int) -> deque[WorkItem]:
        level = self._levels.get(priority)
        if level is None:
            level = self._levels.setdefault(priority, deque())
            self._order = [self._levels[p] for p in sorted(list(self._levels), reverse=True)]
        return level

    def append(self, item: WorkItem) -> None:
        if item.priority == 0 and item.resources is None:
            self._default.append(item)
            return
        self.mixed = True
        self._level(item.priority).append(item)

    def appendleft(self, item: WorkItem) -> None:
        self._level(item.priority).appendleft(item)

    def extendleft(self, items: Iterable[WorkItem]) -> None:
        """Like deque.extendleft: the last item given ends up first."""
        for item in items:
            self.appendleft(item)

    def popleft(self) -> WorkItem:
        if len(self._order) == 1:
            return self._default.popleft()
        for level in self._order:
            if level:
                return level.popleft()
        raise IndexError("pop from an empty TaskQueue")

    def __len__(self) -> int:
        if len(self._order) == 1:
            return len(self._default)
        return sum(len(level) for level in self._order)

    def __bool__(self) -> bool:
        return any(self._order) if len(self._order) > 1 else bool(self._default)

    def __iter__(self) -> Iterator[WorkItem]:
        return itertools.chain.from_iterable(list(self._order))

    def cancel_unsent(self, promised: int) -> None:
        """Cancel the futures of the tasks never sent, but for the first ``promised`` ones
        (atomic operations only: called from the caller's thread). A task that was sent
        once and came back unstarted has a running future and stays."""
        kept: list[WorkItem] = []
        while True:
            try:
                item = self.popleft()
            except IndexError:
                break  # the dispatcher took the last one
            if item.sends or (promised and not item.future.cancelled()):
                promised -= not item.sends
                kept.append(item)
            elif not item.future.cancel():
                kept.append(item)
        self.extendleft(reversed(kept))

    def take(self, wanted: Callable[[WorkItem], bool]) -> list[WorkItem]:
        """Remove the tasks ``wanted`` says yes to and return them; the rest keep their
        order (the dispatcher thread only)."""
        taken: list[WorkItem] = []
        kept: list[WorkItem] = []
        while self:
            item = self.popleft()
            (taken if wanted(item) else kept).append(item)
        self.extendleft(reversed(kept))
        return taken

    def drop_cancelled(self) -> None:
        """Forget the tasks never sent whose futures were cancelled."""
        for _ in range(len(self)):
            item = self.popleft()
            if item.sends or not item.future.cancelled():
                self.append(item)

    def by_priority(self) -> dict[int, int]:
        """How many tasks wait at each priority."""
        return {p: len(q) for p, q in sorted(list(self._levels.items()), reverse=True) if q}
