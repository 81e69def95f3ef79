"""The sans-I/O scheduling core: which task goes to which worker, and how every future ends.

It owns no socket, thread or clock (the time is an argument of every event that needs it),
so a test can drive it through any interleaving (``tests/test_simulation.py``). The
dispatcher thread translates socket traffic into the events below and carries out what
they leave behind::

    events in (Scheduler methods)                   actions out
    -----------------------------                   -----------
    pending.append(item)  (submit, any thread)      dispatch(now) -> [(worker, tasks to send)]
    worker_joined / worker_ready / init_failed      resolved: [(future, ok, value)] to set
    worker_left (BYE) / worker_died (DIED)          closed: [worker id] whose link to close
    results(sender, records, now, load)             broken: why the executor cannot go on
    heartbeat(host, now) / tick(now)                finished(): the dispatcher may exit
    request_shutdown() / cancel_queued()

Invariants (checked after every step of the simulation test):

1. Every submitted task is in exactly one place: queued in ``pending``, held by exactly one
   worker (``owner[id]`` is the worker whose ``outstanding`` has it, alive or dead and in its
   grace period), or its future is done. ``owner`` and the workers' ``outstanding`` agree.
2. Every future ends exactly once (the simulation sets what ``resolved`` says and fails on a
   second transition), and once shutdown is requested and every worker is gone or idle,
   the dispatcher finishes with no future pending.
3. At most once by default: a task that may have run (sent to a worker that started it, or
   whose fate is unknown) is sent again only while ``sends <= max_retries``, and never to a
   worker (or, after a host loss, a host) it was lost on.
4. No lost wake-up: after ``dispatch``, no ready worker with a free slot idles while a task
   it may take waits in ``pending``.

Rules:

- Tasks are sent in order to the least-loaded ready worker (credit-based flow control,
  zguide ch. 7): a free slot always takes a task; beyond that (prefetch) a worker takes
  only tasks known to be short, while many wait (``_accepts``).
- A worker runs what it holds in the order sent. When it dies, its supervisor reports the
  last task it started: the task running then failed (``WorkerLostError``, or a retry with
  ``max_retries``), the ones after it never started and go back to the front of the queue,
  and the ones before it finished; their results may still be on the way, so they stay
  held by the dead worker for ``LOST_RESULT_GRACE`` seconds before they count as lost.
- A host silent for ``heartbeat_timeout`` is lost with every worker it had; all their tasks
  may have run. A late result of a lost attempt is discarded: a retry gets a new task id.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ._defaults import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_MESSAGE_SIZE,
    LOST_HOSTS_KEPT,
    LOST_RESULT_GRACE,
    MAX_PREFETCH,
    NO_WORKER_WARNING,
    PREFETCH_BACKLOG,
    PREFETCH_BUDGET,
)
from ._protocol import ResultRecord, learn_duration
from .errors import BrokenZmqExecutor, NoWorkersError, TaskTimeoutError, WorkerLostError

log = logging.getLogger("zmqexecutor.dispatcher")


@dataclass(frozen=True)
class Settings:
    """The executor's options that scheduling acts on."""

    prefetch: int | None = None
    max_tasks_per_child: int | None = None
    max_retries: int = 0
    task_timeout: float | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    no_worker_timeout: float | None = None
    local_workers: int = 0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE


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
    #: workers (and hosts) it was lost on; a retry never goes back to them (None: none yet,
    #: so that a million queued tasks do not carry a million empty sets)
    lost_on: set[str] | None = None
    #: higher is sent first (executor.options(priority=...)); FIFO within a priority
    priority: int = 0
    #: what it needs of its host while it runs, e.g. {"GPU": 1} (None: nothing)
    resources: dict[str, float] | None = None
    #: while it holds its resources: the whole units among them, e.g. {"GPU": [1]}
    units: dict[str, list[int]] | None = None


@dataclass(eq=False)
class WorkerState:
    """What the executor knows about one worker process."""

    worker_id: str
    host: str
    pid: int
    slots: int
    host_id: str = ""
    ready: bool = False
    #: still registered (False once it left, died or its host was lost)
    alive: bool = True
    #: tasks sent and not answered, in the order sent (a worker runs them in that order)
    outstanding: OrderedDict[int, WorkItem] = field(default_factory=OrderedDict)
    sent: int = 0
    done: int = 0
    failed: int = 0
    #: expected run time of the tasks it holds (seconds), and how many it cannot estimate
    queued: float = 0.0
    unknown: int = 0
    #: tasks this worker may still receive (max_tasks_per_child), None = unlimited
    remaining: int | None = None

    def describe(self) -> str:
        return f"worker {self.host} pid {self.pid}"


@dataclass
class HostState:
    """A worker host (one supervisor) and when it was last heard from."""

    host_id: str
    name: str
    last_seen: float
    workers: set[str] = field(default_factory=set)
    #: what it declared (--resources GPU=2), what its tasks hold now, and which whole units
    #: are free (an integral amount is numbered 0..n-1, so a task can learn which it holds)
    resources: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    free_units: dict[str, list[int]] = field(default_factory=dict)

    def declare(self, resources: dict[str, float]) -> None:
        if resources == self.resources:
            return
        self.resources = dict(resources)
        self.used = dict.fromkeys(resources, 0.0)
        self.free_units = {k: list(range(int(v))) for k, v in resources.items() if v == int(v)}

    def fits(self, request: dict[str, float]) -> bool:
        """Could ``request`` run here now?"""
        return all(
            self.used.get(k, 0.0) + v <= self.resources.get(k, 0.0) for k, v in request.items()
        )

    def could_ever_fit(self, request: dict[str, float]) -> bool:
        return all(v <= self.resources.get(k, 0.0) for k, v in request.items())

    def acquire(self, request: dict[str, float]) -> dict[str, list[int]]:
        units: dict[str, list[int]] = {}
        for k, v in request.items():
            self.used[k] = self.used.get(k, 0.0) + v
            free = self.free_units.get(k)
            if free is not None and v == int(v) and v > 0:
                units[k], free[:] = free[: int(v)], free[int(v) :]
        return units

    def release(self, request: dict[str, float], units: dict[str, list[int]] | None) -> None:
        for k, v in request.items():
            self.used[k] = max(0.0, self.used.get(k, 0.0) - v)
        for k, held in (units or {}).items():
            if k in self.free_units:
                self.free_units[k] = sorted(self.free_units[k] + held)


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

    def by_priority(self) -> dict[int, int]:
        """How many tasks wait at each priority."""
        return {p: len(q) for p, q in sorted(list(self._levels.items()), reverse=True) if q}


def _load(w: WorkerState) -> tuple[float, float, int, str]:
    """How loaded a worker is (the least loaded gets the next task); ties by work queued,
    then by tasks ever sent, so that work spreads."""
    return (len(w.outstanding) / w.slots, w.queued, w.sent, w.worker_id)


class Scheduler:
    """The queue, the workers' credit, and every future between submit and its end."""

    def __init__(
        self,
        settings: Settings,
        task_ids: Iterator[int],
        sink_address: str,
        local_host: str | None = None,
    ) -> None:
        self.settings = settings
        #: the host id of the executor's own local worker processes (local mode)
        self.local_host = local_host
        #: how many of them are ready (read by cancel_queued() from the caller's thread)
        self.local_ready = 0
        self.task_ids = task_ids
        self.sink_address = sink_address
        #: submitted and not sent; submit() appends from any thread (a deque's append,
        #: popleft and appendleft are atomic), everything else happens on one thread
        self.pending = TaskQueue()
        self.workers: dict[str, WorkerState] = {}
        self.hosts: dict[str, HostState] = {}
        #: which worker holds each task that was sent and not answered
        self.owner: dict[int, WorkerState] = {}
        #: moving average of each callable's run time (by digest): how much to prefetch
        self.durations: dict[bytes, float] = {}
        #: the workers that are READY, and those of them with a free slot, longest idle first
        #: (the zguide's LRU queue): with 200 workers no round scans them all
        self._ready: dict[str, WorkerState] = {}
        self._idle: OrderedDict[str, WorkerState] = OrderedDict()
        self._ready_slots = 0
        #: finished tasks of a dead worker whose results may still be in flight, by deadline
        self._grace: list[tuple[float, WorkerState, list[int]]] = []
        self.shutdown_requested = False
        self.broken: str | None = None
        self.init_failures = 0
        #: hosts declared lost (bounded): a late heartbeat of one must not revive it
        self._lost_hosts: OrderedDict[str, bool] = OrderedDict()
        self._last_tick: float | None = None
        #: resource requests no connected host declares: tasks seen waiting for each in the
        #: last dispatch, and since when each has waited (warned once; no_worker_timeout)
        self._unsatisfiable_seen: dict[tuple[tuple[str, float], ...], int] = {}
        self._unsatisfiable_since: dict[tuple[tuple[str, float], ...], float] = {}
        #: since when tasks wait with no ready worker, and when that was last logged
        self._waiting_since: float | None = None
        self._warned_at: float | None = None
        self.done = 0
        self.failed = 0
        self.discarded_results = 0
        # -- actions for the I/O loop to carry out, drained by it --
        #: futures to finish: (future, True, value) or (future, False, exception)
        self.resolved: list[tuple[Future[Any], bool, Any]] = []
        #: workers whose link (PUSH socket) is to be closed
        self.closed: list[str] = []

    # -- state questions -------------------------------------------------------------------

    def has_room(self) -> bool:
        """True if a task submitted now could be sent at once (submit() must wake us)."""
        return bool(self._idle)

    def ready_count(self) -> int:
        return len(self._ready)

    def needs_fast_ticks(self) -> bool:
        """Deadlines are near (results in their grace, tasks waiting for a worker)."""
        return bool(self._grace) or (bool(self.pending) and not self._ready)

    def finished(self) -> bool:
        """May the dispatcher stop? Only after shutdown, with nothing queued or held."""
        if not self.shutdown_requested:
            return False
        if self.broken is not None:
            return True
        if self.pending and not self._ready:
            # no worker to pop them: cancelled futures must still leave the queue (with
            # workers, dispatch drops them; scanning here each round would be quadratic)
            for _ in range(len(self.pending)):
                item = self.pending.popleft()
                if item.sends or not item.future.cancelled():
                    self.pending.append(item)
        return not self.pending and not self.owner

    # -- events from the executor ------------------------------------------------------------

    def request_shutdown(self) -> None:
        self.shutdown_requested = True

    def cancel_queued(self) -> None:
        """shutdown(cancel_futures=True): cancel what no worker has been sent. Called from
        the caller's thread, so only atomic deque operations touch ``pending``; a task that
        was sent once and came back unstarted has a running future and stays queued.

        Local worker processes that are still starting are promised their first task each,
        as ProcessPoolExecutor keeps the tasks already in its call queue: shutting down
        right after submitting still runs a few (CPython's test_cancel_futures)."""
        promised = max(0, self.settings.local_workers - self.local_ready)
        kept: list[WorkItem] = []
        while True:
            try:
                item = self.pending.popleft()
            except IndexError:
                break  # the dispatcher took the last one
            if item.sends or (promised and not item.future.cancelled()):
                promised -= not item.sends
                kept.append(item)
            elif not item.future.cancel():
                kept.append(item)
        self.pending.extendleft(reversed(kept))

    # -- events from workers ------------------------------------------------------------------

    def worker_joined(
        self,
        worker_id: str,
        host_id: str,
        host: str,
        pid: int,
        slots: int,
        now: float,
        resources: dict[str, float] | None = None,
    ) -> WorkerState:
        """A worker process registered (HELLO, with what its host declares); it gets tasks
        once it is ready."""
        w = WorkerState(
            worker_id=worker_id,
            host=host,
            pid=pid,
            slots=slots,
            host_id=host_id,
            remaining=self.settings.max_tasks_per_child,
        )
        self.workers[worker_id] = w
        record = self._host(host_id, host, now)
        record.workers.add(worker_id)
        if resources is not None:
            record.declare(resources)
        return w

    def worker_ready(self, w: WorkerState) -> None:
        """Its initializer ran: it may take tasks."""
        if w.ready or not w.alive:
            return  # a repeated READY
        w.ready = True
        if w.host_id == self.local_host:
            self.local_ready += 1
        self._ready[w.worker_id] = w
        self._ready_slots += w.slots
        if self._has_slot(w):
            self._idle[w.worker_id] = w
        log.info("%s is ready", w.describe())

    def worker_init_failed(self, w: WorkerState, error: str, traceback: str) -> None:
        self._remove(w)
        self._requeue_all(w)
        self.init_failures += 1
        log.error("%s refused: its initializer failed: %s\n%s", w.describe(), error, traceback)
        local = self.settings.local_workers
        if local and self.init_failures >= local:
            self.break_(
                "A process in the process pool was terminated abruptly while the future was "
                f"running or pending: the initializer failed on every worker ({error})"
            )

    def worker_left(self, w: WorkerState, done: object) -> None:
        """BYE: it sent every result before it, so what it still holds never started."""
        self._remove(w)
        self._requeue_all(w)
        log.info("%s left after %s tasks", w.describe(), done)

    def worker_died(
        self,
        w: WorkerState,
        *,
        running: int,
        last_started: int,
        how: str,
        timeout: float,
        now: float,
    ) -> None:
        """A worker process died (its supervisor's DIED report): fail the task it was
        running, re-queue what it had not started, and give the results of what it had
        finished a grace period to arrive."""
        self._remove(w)
        items = list(w.outstanding.values())
        ids = [i.task_id for i in items]
        cut = ids.index(last_started) + 1 if last_started in ids else 0
        may_have_run, not_started = items[:cut], items[cut:]
        # decided before _lost gives a retried task a new id
        finished = [i.task_id for i in may_have_run if i.task_id != running]
        how = f"{w.describe()} {how}"
        for item in may_have_run:
            if item.task_id != running:
                continue
            self._forget(w, item.task_id)
            if timeout:
                self._fail(
                    item,
                    TaskTimeoutError(
                        f"the task ran longer than task_timeout={timeout:g}s on "
                        f"{w.describe()} and was killed; raise task_timeout if it needs more time"
                    ),
                )
            else:
                self._lost(item, w, f"{how} while running this task")
        if finished:  # their results may still be on the way: wait a little
            self._grace.append((now + LOST_RESULT_GRACE, w, finished))
        for item in not_started:
            self._forget(w, item.task_id)
        self._requeue(not_started)
        log.warning("%s (%d task(s) sent elsewhere)", how, len(not_started))

    def heartbeat(self, host_id: str, name: str, now: float, timeout: float | None = None) -> None:
        """A host's HEARTBEAT (``timeout``: the heartbeat_timeout it judges itself by)."""
        if host_id in self._lost_hosts:
            if not self._lost_hosts[host_id]:
                self._lost_hosts[host_id] = True
                log.warning(
                    "worker host %s (%s), declared lost, is alive again; its worker processes "
                    "register anew under a new host id",
                    name,
                    host_id,
                )
            return
        host = self.hosts.get(host_id)
        if host is None:
            host = self._host(host_id, name, now)
            if timeout is not None and timeout != self.settings.heartbeat_timeout:
                log.warning(
                    "worker host %s judges the executor with heartbeat_timeout=%gs, this executor "
                    "uses %gs: give both sides the same --heartbeat-timeout, or a host that was "
                    "frozen may not notice that it was declared lost",
                    name,
                    timeout,
                    self.settings.heartbeat_timeout,
                )
        host.last_seen = now

    def results(
        self,
        sender: bytes,
        records: Iterable[ResultRecord],
        now: float,
        load: Callable[[ResultRecord], tuple[bool, Any]],
    ) -> None:
        """RESULTS from the worker ``sender``: each accepted one is unpickled by ``load``
        (only now: a result nobody waits for is never unpickled) and resolves its future."""
        for record in records:
            w = self.owner.get(record.task_id)
            if w is None or w.worker_id.encode() != sender:
                # late (its worker was declared lost), replayed, or misdirected
                self.discarded_results += 1
                log.info("discarded a result for task %d: not outstanding there", record.task_id)
                continue
            item = self._forget(w, record.task_id)
            assert item is not None  # owner and outstanding agree (invariant 1)
            learn_duration(self.durations, item.digest, record.duration)
            ok, value = load(record)
            w.done += 1
            if ok:
                self.done += 1
            else:
                w.failed += 1
                self.failed += 1
            self.resolved.append((item.future, ok, value))

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Deadlines: results in their grace period, silent hosts, tasks with no worker."""
        if (
            self._last_tick is not None
            and now - self._last_tick > self.settings.heartbeat_timeout / 2
        ):
            # The executor itself stood still (SIGSTOP, a suspended VM, a stalled process):
            # the hosts' heartbeats wait unread in the sink. Silence we did not listen to
            # is no evidence, so every host gets its window again.
            for host in self.hosts.values():
                host.last_seen += now - self._last_tick
            log.warning("the executor did not run for %.1fs", now - self._last_tick)
        self._last_tick = now
        while self._grace and self._grace[0][0] <= now:
            _, w, task_ids = self._grace.pop(0)
            for task_id in task_ids:
                item = self._forget(w, task_id)
                if item is not None:  # its result did not arrive
                    self._lost(
                        item, w, f"{w.describe()} died after running this task; its result was lost"
                    )
        self._check_hosts(now)
        self._check_no_workers(now)
        self._check_unsatisfiable(now)
        self._fail_queue_if_broken()

    def _check_unsatisfiable(self, now: float) -> None:
        """Tasks whose request no connected host declares wait, as tasks wait for a worker:
        warned once per request, failed after no_worker_timeout (during shutdown after
        heartbeat_timeout at most)."""
        seen, self._unsatisfiable_seen = self._unsatisfiable_seen, {}
        for key in list(self._unsatisfiable_since):
            if key not in seen:
                del self._unsatisfiable_since[key]  # a host declares it now, or none wait
        limit = self.settings.no_worker_timeout
        if self.shutdown_requested:
            limit = min(limit or self.settings.heartbeat_timeout, self.settings.heartbeat_timeout)
        for key, count in seen.items():
            since = self._unsatisfiable_since.setdefault(key, now)
            if since == now:
                log.warning(
                    "%d task(s) wait for %s, which no connected host declares (start a host "
                    "with: zmqexecutor-worker %s --resources %s)",
                    count,
                    dict(key),
                    self.sink_address,
                    ",".join(f"{k}={v:g}" for k, v in key),
                )
            if limit is not None and now - since > limit:
                self._fail_unsatisfiable(key, limit)
                del self._unsatisfiable_since[key]

    def _fail_unsatisfiable(self, key: tuple[tuple[str, float], ...], limit: float) -> None:
        request = dict(key)
        kept: list[WorkItem] = []
        while self.pending:
            item = self.pending.popleft()
            if item.resources == request:
                self._fail(
                    item,
                    NoWorkersError(
                        f"no connected host declared {request} for {limit:g}s "
                        "(no_worker_timeout); start a host with --resources"
                    ),
                )
            else:
                kept.append(item)
        self.pending.extendleft(reversed(kept))

    def _check_hosts(self, now: float) -> None:
        """A host silent for heartbeat_timeout is lost with every worker it had."""
        for host in list(self.hosts.values()):
            if now - host.last_seen <= self.settings.heartbeat_timeout:
                continue
            del self.hosts[host.host_id]
            self._lost_hosts[host.host_id] = False
            if len(self._lost_hosts) > LOST_HOSTS_KEPT:
                self._lost_hosts.popitem(last=False)
            lost = [self.workers[i] for i in host.workers if i in self.workers]
            if not lost:
                continue
            log.warning(
                "worker host %s silent for %.1fs: lost with %d worker process(es)",
                host.name,
                now - host.last_seen,
                len(lost),
            )
            for w in lost:
                self._remove(w)
                for item in list(w.outstanding.values()):
                    self._forget(w, item.task_id)
                    self._lost(
                        item,
                        w,
                        f"{w.describe()} was lost: its host was silent for "
                        f"{self.settings.heartbeat_timeout:g}s (heartbeat_timeout)",
                        host=True,
                    )

    def _check_no_workers(self, now: float) -> None:
        """Tasks wait while no worker is ready: warn now and then, and fail them after
        no_worker_timeout (during shutdown after heartbeat_timeout at most)."""
        if not self.pending or self._ready:
            self._waiting_since = self._warned_at = None
            return
        if self._waiting_since is None:
            self._waiting_since = self._warned_at = now
        elif now - (self._warned_at or now) > NO_WORKER_WARNING:
            log.warning("%d task(s) wait: no worker is connected", len(self.pending))
            self._warned_at = now
        limit = self.settings.no_worker_timeout
        if self.shutdown_requested:
            # shutdown() must return even when every worker is gone
            limit = min(limit or self.settings.heartbeat_timeout, self.settings.heartbeat_timeout)
        if limit is not None and now - self._waiting_since > limit:
            while self.pending:
                self._fail(
                    self.pending.popleft(),
                    NoWorkersError(
                        f"no worker was connected for {limit:g}s (no_worker_timeout); start "
                        f"workers with: zmqexecutor-worker {self.sink_address}"
                    ),
                )

    # -- dispatch --------------------------------------------------------------------------

    def dispatch(self, now: float) -> list[tuple[WorkerState, list[WorkItem]]]:
        """Give pending tasks, in order, to the least loaded ready workers that accept them;
        returns what to send to whom."""
        if not self.pending:
            return []
        batches: dict[str, tuple[WorkerState, list[WorkItem]]] = {}
        # A few tasks are spread one per worker, never prefetched: they may wait for each
        # other, and a task queued behind one that blocks cannot be taken back yet.
        backlog = len(self.pending) >= PREFETCH_BACKLOG * self._ready_slots
        if self.settings.prefetch is None and not backlog:
            # only free slots take tasks: the workers idle longest first (the zguide's LRU
            # queue), so that no round costs time in proportion to the number of workers
            idle = list(itertools.islice(self._idle.values(), len(self.pending)))
            if not self._fill(idle, backlog, now, batches) or not self._idle:
                return list(batches.values())
            # a retry may not go back where it was lost: let every idle worker try it
        self._fill(list(self._ready.values()), backlog, now, batches)
        return list(batches.values())

    def _fill(
        self,
        candidates: Iterable[WorkerState],
        backlog: bool,
        now: float,
        batches: dict[str, tuple[WorkerState, list[WorkItem]]],
    ) -> bool:
        """Dispatch to ``candidates``, least loaded first, while they accept (prefetch only
        with a ``backlog``); True if a task was put back because it was lost there or
        because no worker can hold what it needs now."""
        workers = [w for w in candidates if w.remaining is None or w.remaining > 0]
        heap = [_load(w) for w in workers]
        heapq.heapify(heap)
        deferred: list[WorkItem] = []
        stale = False  # a worker took a task out of heap order (resources): check the top
        pending = self.pending
        while heap and pending:
            worker_id = heap[0][3]
            w = self.workers[worker_id]
            if stale and heap[0] != _load(w):
                heapq.heapreplace(heap, _load(w))
                continue
            item = pending.popleft()
            if item.resources is not None:
                target = self._place(item, workers, batches)
                if target is None:
                    deferred.append(item)  # nowhere fits now; others may still go
                    continue
                w = target
            elif not self._accepts(w, item, now, backlog):
                pending.appendleft(item)  # the least loaded worker is full: all are
                break
            elif item.lost_on and not item.lost_on.isdisjoint((w.worker_id, w.host_id)):
                deferred.append(item)  # a retry never goes back where it was lost
                continue
            if not item.sends and not item.future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            if item.resources is not None:
                item.units = self.hosts[w.host_id].acquire(item.resources)
            worker_id = w.worker_id
            item.estimate = self.durations.get(item.digest)
            item.sent_at = now
            self._hold(w, item)
            w.outstanding[item.task_id] = item
            self.owner[item.task_id] = w
            item.sends += 1
            w.sent += 1
            if w.remaining is not None:
                w.remaining -= 1
            if not self._has_slot(w):
                self._idle.pop(worker_id, None)
            batch = batches.setdefault(worker_id, (w, []))[1]
            batch.append(item)
            if heap[0][3] != worker_id:
                heapq.heappush(heap, _load(w))  # its old entry is stale now
                stale = True
            elif len(batch) >= DEFAULT_MAX_BATCH:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, _load(w))
        if deferred:
            pending.extendleft(reversed(deferred))
        return bool(deferred)

    def _place(
        self,
        item: WorkItem,
        workers: list[WorkerState],
        batches: dict[str, tuple[WorkerState, list[WorkItem]]],
    ) -> WorkerState | None:
        """The least loaded worker with a free slot (never prefetch: a task holds its
        resources from the moment it is sent) on a host where ``item``'s resources are free
        now; None if there is none, noting a request that no host could ever satisfy."""
        assert item.resources is not None
        best: WorkerState | None = None
        possible = False
        for w in workers:
            host = self.hosts.get(w.host_id)
            if host is None or not host.could_ever_fit(item.resources):
                continue
            possible = True
            if not self._has_slot(w) or not host.fits(item.resources):
                continue
            if item.lost_on and not item.lost_on.isdisjoint((w.worker_id, w.host_id)):
                continue
            if len(batches.get(w.worker_id, (w, ()))[1]) >= DEFAULT_MAX_BATCH:
                continue
            if best is None or _load(w) < _load(best):
                best = w
        if not possible:
            key = tuple(sorted(item.resources.items()))
            self._unsatisfiable_seen[key] = self._unsatisfiable_seen.get(key, 0) + 1
        return best

    def _accepts(self, w: WorkerState, item: WorkItem, now: float, backlog: bool) -> bool:
        """May ``w`` hold ``item`` now? A free slot always; beyond that (prefetch) only
        while many tasks wait (``backlog``) and only tasks known to be short, up to
        PREFETCH_BUDGET seconds of queued work, so that batching pays for small tasks and a
        prefetched task never waits long behind another while a worker is idle. Once
        priorities or resources are in use, nothing is prefetched: a task queued on a
        worker could not be taken back for a higher priority one."""
        held = len(w.outstanding)
        if w.remaining is not None and w.remaining <= 0:
            return False
        if held < w.slots:
            return True
        if self.pending.mixed:
            return False
        if self.settings.prefetch is not None:
            return held < w.slots + self.settings.prefetch
        estimate = self.durations.get(item.digest)
        if not backlog or estimate is None or w.unknown or held >= w.slots * MAX_PREFETCH:
            return False
        if w.queued + estimate > PREFETCH_BUDGET * w.slots:
            return False
        # a task that runs much longer than expected may block: queue nothing behind it
        oldest = next(iter(w.outstanding.values()))
        return now - oldest.sent_at <= w.queued + PREFETCH_BUDGET

    @staticmethod
    def _has_slot(w: WorkerState) -> bool:
        """May ``w`` take a task without prefetching?"""
        return len(w.outstanding) < w.slots and (w.remaining is None or w.remaining > 0)

    @staticmethod
    def _hold(w: WorkerState, item: WorkItem) -> None:
        if item.estimate is None:
            w.unknown += 1
        else:
            w.queued += item.estimate

    # -- bookkeeping -------------------------------------------------------------------------

    def _forget(self, w: WorkerState, task_id: int) -> WorkItem | None:
        """``w`` no longer holds ``task_id`` (answered, lost or taken back)."""
        item = w.outstanding.pop(task_id, None)
        if item is None:
            return None
        if self.owner.get(task_id) is w:
            del self.owner[task_id]
        self._release(w, item)
        if item.estimate is None:
            w.unknown -= 1
        elif w.outstanding:
            w.queued = max(0.0, w.queued - item.estimate)
        else:
            w.queued = 0.0  # no drift from float sums
        if w.ready and w.worker_id not in self._idle and self._has_slot(w):
            self._idle[w.worker_id] = w
        return item

    def _release(self, w: WorkerState, item: WorkItem) -> None:
        """``item`` no longer holds resources on ``w``'s host."""
        if item.resources is not None and item.units is not None:
            host = self.hosts.get(w.host_id)
            if host is not None:
                host.release(item.resources, item.units)
            item.units = None

    def _remove(self, w: WorkerState) -> None:
        """``w`` is gone: it gets no task any more and its link is closed. Its process is
        gone too, so whatever its tasks held on the host is free again (the tasks
        themselves may stay held a while for their results: see worker_died)."""
        if not w.alive:
            return
        for item in w.outstanding.values():
            self._release(w, item)
        w.alive = False
        self.workers.pop(w.worker_id, None)
        if self._ready.pop(w.worker_id, None) is not None:
            self._ready_slots -= w.slots
            if w.host_id == self.local_host:
                self.local_ready -= 1
        self._idle.pop(w.worker_id, None)
        w.ready = False
        host = self.hosts.get(w.host_id)
        if host is not None:
            host.workers.discard(w.worker_id)
        self.closed.append(w.worker_id)

    def _requeue_all(self, w: WorkerState) -> None:
        items = list(w.outstanding.values())
        for item in items:
            self._forget(w, item.task_id)
        self._requeue(items)

    def _requeue(self, items: list[WorkItem]) -> None:
        """Tasks a worker received but certainly never started go back to the front."""
        self.pending.extendleft(reversed(items))

    def _lost(self, item: WorkItem, w: WorkerState, how: str, *, host: bool = False) -> None:
        """``item`` may have run on ``w``, which is gone: retry it elsewhere if the user
        allowed it (max_retries), else fail it. Never re-run silently (at-most-once).
        With ``host`` the whole host is avoided, not only the worker process."""
        item.lost_on = (item.lost_on or set()) | {w.host_id if host else w.worker_id}
        attempts = item.sends
        if attempts <= self.settings.max_retries and self.broken is None:
            log.warning("%s; retrying task elsewhere (attempt %d)", how, attempts + 1)
            item.task_id = next(self.task_ids)  # a late result of the lost attempt is dropped
            self.pending.appendleft(item)
            return
        tried = f"; attempted on {attempts} workers" if attempts > 1 else ""
        self._fail(
            item,
            WorkerLostError(
                f"{how}{tried}. The task may have partly run and was not retried "
                f"(max_retries={self.settings.max_retries})"
            ),
        )

    def _fail(self, item: WorkItem, error: BaseException) -> None:
        """Fail ``item``'s future with its own exception instance (unless it was cancelled
        while queued)."""
        if item.sends or item.future.set_running_or_notify_cancel():
            self.failed += 1
            self.resolved.append((item.future, False, error))

    def _host(self, host_id: str, name: str, now: float) -> HostState:
        host = self.hosts.get(host_id)
        if host is None:
            host = self.hosts[host_id] = HostState(host_id, name, now)
        return host

    def _fail_queue_if_broken(self) -> None:
        if self.broken is None:
            return
        while self.pending:
            self._fail(self.pending.popleft(), BrokenZmqExecutor(self.broken))

    def break_(self, reason: str) -> None:
        """The executor cannot run anything any more: fail every queued and held future."""
        self.broken = reason
        self._fail_queue_if_broken()
        for w in list(self.owner.values()):
            for task_id in list(w.outstanding):
                item = self._forget(w, task_id)
                if item is not None:
                    self._fail(item, BrokenZmqExecutor(reason))
        self._grace.clear()
