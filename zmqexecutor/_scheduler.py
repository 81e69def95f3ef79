"""The sans-I/O scheduling core: which task goes to which worker, and how every future ends.

It owns no socket, thread or clock (the time is an argument of every event that needs it),
so a test can drive it through any interleaving (``tests/test_simulation.py``). The
dispatcher thread translates socket traffic into the events below and carries out what
they leave behind::

    events in (Scheduler methods)                   actions out
    -----------------------------                   -----------
    pending.append(item)  (submit, any thread)      dispatch(now) -> [(worker, tasks to send)]
    sent(tasks, now)  (each batch, once sent)
    worker_joined / worker_ready / init_failed      resolved: [(future, ok, value)] to set
    worker_left (BYE) / worker_died (DIED)          closed: [worker id] whose link to close
    results(sender, records, now, load)             broken: why the executor cannot go on
    heartbeat(host, now) / tick(now)                finished(): the dispatcher may exit
    request_shutdown() / cancel_queued()            rebalance() -> recalls: [(worker, ids)]
    returned(sender, recall id, ids) (RETURNED)     round_trip(host, seconds) (from results)

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
   it may take waits in ``pending``, and, once ``dispatch`` is no longer ``cut_short``,
   the least loaded ready worker would not take the next queued task (the loop may not
   run again before the next results come, a round trip later); after ``rebalance``, no
   worker idles while
   another holds a tail of queued work worth taking back (``_window.recall_tail``) and is
   not asked for it.
5. A task id starts at most once: a task taken back (RECALL, BYE, a death before it
   started) is one its worker never started; a retry gets a new id. A RECALL asks only for
   tasks its worker holds, one RECALL per worker at a time.

Rules:

- Tasks are sent in order to the least-loaded ready worker (credit-based flow control,
  zguide ch. 7): a free slot always takes a task; beyond that (prefetch) a worker takes
  only tasks known to be short, while many wait, up to a budget widened by the round trip
  of its host's link (``_accepts``; how the round trip is timed: ``_window.py``); the
  executor's own local workers have no link and get no round-trip window. A ``dispatch``
  gives each worker one batch (``DEFAULT_MAX_BATCH`` tasks) at most and says when that cut
  it short (``cut_short``): the dispatcher sends and asks again at once, so that a long
  link's window fills without waiting for results.
- RECALL: a worker with a free slot and nothing to take asks the worker holding the most
  queued work for the tail of it. The worker answers between tasks (RETURNED) with those
  it gave back, never started; they go back to the front of the queue; the ones it was
  asked for and had started stay with it. An answer crossing the worker's death counts
  while its finished tasks are in their grace period; after it, they count as lost.
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
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any

from ._defaults import (
    DEFAULT_MAX_BATCH,
    LOST_RESULT_GRACE,
    NO_WORKER_WARNING,
    PREFETCH_BACKLOG,
)
from ._hosts import HostState, HostTable, Unsatisfiable, WorkerState, has_slot, load, place
from ._protocol import ResultRecord, learn_duration
from ._queue import TaskQueue, WorkItem
from ._settings import Settings
from ._window import may_prefetch, plan_recalls, round_trip
from .errors import BrokenZmqExecutor, NoWorkersError, TaskTimeoutError, WorkerLostError

__all__ = ["HostState", "Scheduler", "Settings", "TaskQueue", "WorkItem", "WorkerState"]

log = logging.getLogger("zmqexecutor.dispatcher")


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
        self.hosts = HostTable()
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
        #: resource requests no connected host declares (warned once; no_worker_timeout)
        self.unsatisfiable = Unsatisfiable()
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
        #: RECALLs to send: (worker, ids of the tasks it is asked to give back)
        self.recalls: list[tuple[WorkerState, list[int]]] = []
        #: a worker got a free slot since the last rebalance()
        self._rebalance = False
        self._recall_ids = itertools.count(1)
        #: the last dispatch() stopped at a batch's size for a worker that may take more
        self.cut_short = False

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
            self.pending.drop_cancelled()
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
        self.pending.cancel_unsent(max(0, self.settings.local_workers - self.local_ready))

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
        record = self.hosts.add(host_id, host, now)
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
        if has_slot(w):
            self._idle[w.worker_id] = w
            self._rebalance = True
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
        self.hosts.heard(host_id, name, now, timeout, self.settings.heartbeat_timeout)

    def results(
        self,
        sender: bytes,
        records: Iterable[ResultRecord],
        now: float,
        load: Callable[[ResultRecord], tuple[bool, Any]],
    ) -> None:
        """RESULTS from the worker ``sender``: each accepted one is unpickled by ``load``
        (only now: a result nobody waits for is never unpickled) and resolves its future."""
        sender_id = sender.decode(errors="replace")  # once, not per record
        for record in records:
            w = self.owner.get(record.task_id)
            if w is None or w.worker_id != sender_id:
                # late (its worker was declared lost), replayed, or misdirected
                self.discarded_results += 1
                log.info("discarded a result for task %d: not outstanding there", record.task_id)
                continue
            item = self._forget(w, record.task_id)
            assert item is not None  # owner and outstanding agree (invariant 1)
            learn_duration(self.durations, item.digest, record.duration)
            w.answered = now
            if item.probe:  # sent to an idle worker: the rest is the link's round trip
                self.round_trip(w.host_id, now - item.sent_at - record.duration)
            ok, value = load(record)
            w.done += 1
            if ok:
                self.done += 1
            else:
                w.failed += 1
                self.failed += 1
            self.resolved.append((item.future, ok, value))

    def round_trip(self, host_id: str, seconds: float) -> None:
        """A measurement of the round trip to the host ``host_id`` (see ``results``)."""
        host = self.hosts.get(host_id)
        if host is not None:
            host.rtt = round_trip(host.rtt_samples, seconds)
            self._rebalance = True  # a tail may be worth taking back now

    def rebalance(self) -> None:
        """After ``dispatch``, workers with a free slot have nothing in the queue they may
        take (invariant 4): ask those that hold the most queued work for the tail of it (a
        RECALL each, see ``_window.recall_tail``); the answer (``returned``) puts what
        they gave back at the front of the queue."""
        if not self._rebalance:
            return
        self._rebalance = False
        if not self._idle or self.broken is not None:
            return
        for donor, ids in plan_recalls(list(self._idle.values()), self._ready.values(), self.hosts):
            donor.recall_id = next(self._recall_ids)
            donor.recall.update(ids)
            self.recalls.append((donor, ids))

    def returned(self, sender: str, recall_id: int, task_ids: Iterable[int]) -> None:
        """RETURNED: the worker ``sender`` answers the RECALL ``recall_id`` with the tasks it
        gave back, which it never started and never will (it decides between tasks); the
        others it was asked for it had started, and keeps. Its answer may come after it
        died (it was sent before), while its finished tasks wait for their results (the
        grace period): it counts then too."""
        task_ids = list(task_ids)
        w = self.workers.get(sender)
        if w is None:  # gone: the dead worker that holds them, if any
            owners = (self.owner.get(i) for i in task_ids)
            w = next((o for o in owners if o is not None and o.worker_id == sender), None)
        if w is None or not recall_id or w.recall_id != recall_id:
            self.discarded_results += len(task_ids)  # replayed, late, or never asked for
            return
        back: list[WorkItem] = []
        for task_id in task_ids:
            if self.owner.get(task_id) is not w or task_id not in w.recall:
                self.discarded_results += 1  # not asked for
                continue
            item = self._forget(w, task_id)
            assert item is not None  # owner and outstanding agree (invariant 1)
            back.append(item)
        w.recall.clear()  # the rest had started: their results come
        w.recall_id = 0
        self._requeue(back)
        self._rebalance = True  # it may hold a tail worth asking for again

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Deadlines: results in their grace period, silent hosts, tasks with no worker."""
        self.hosts.tick(now, self.settings.heartbeat_timeout)
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
        limit = self._wait_limit()
        for key in self.unsatisfiable.due(now, limit, self.sink_address):
            assert limit is not None
            why = (
                f"no connected host declared {dict(key)} for {limit:g}s (no_worker_timeout); "
                "start a host with --resources"
            )
            for item in self.pending.take(partial(_asks_for, dict(key))):
                self._fail(item, NoWorkersError(why))

    def _wait_limit(self) -> float | None:
        """How long tasks may wait for a worker: no_worker_timeout, and during shutdown
        heartbeat_timeout at most (shutdown() must return even when every worker is gone)."""
        limit, most = self.settings.no_worker_timeout, self.settings.heartbeat_timeout
        return min(limit or most, most) if self.shutdown_requested else limit

    def _check_hosts(self, now: float) -> None:
        """A host silent for heartbeat_timeout is lost with every worker it had."""
        for host in self.hosts.silent(now, self.settings.heartbeat_timeout):
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
        limit = self._wait_limit()
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
        """Give pending tasks, in order, to the least loaded ready workers that accept them,
        a batch each at most; returns what to send to whom (see ``cut_short``)."""
        if not self.pending:
            return []
        self.cut_short = False
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

    def sent(self, items: list[WorkItem], now: float) -> None:
        """The dispatcher sent ``items`` (a batch ``dispatch`` returned) at ``now``: a task
        that times its host's round trip counts from then, not from the round's start."""
        if items[0].probe:
            items[0].sent_at = now

    def _fill(
        self,
        candidates: Iterable[WorkerState],
        backlog: bool,
        now: float,
        batches: dict[str, tuple[WorkerState, list[WorkItem]]],
    ) -> bool:
        """Dispatch to ``candidates``, least loaded first, while they accept (prefetch only
        with a ``backlog``); True if a task was put back because it was lost there or
        because no worker can hold what it needs now. A worker takes one batch
        (DEFAULT_MAX_BATCH tasks) at most; ``cut_short`` says that one did."""
        workers = [w for w in candidates if w.remaining is None or w.remaining > 0]
        heap = [load(w) for w in workers]
        heapq.heapify(heap)
        deferred: list[WorkItem] = []
        stale = False  # a worker took a task out of heap order (resources): check the top
        pending = self.pending
        while heap and pending:
            worker_id = heap[0][3]
            w = self.workers[worker_id]
            if w.remaining is not None and w.remaining <= 0:
                heapq.heappop(heap)  # max_tasks_per_child reached: it must not stop the round
                continue
            if stale and heap[0] != load(w):
                heapq.heapreplace(heap, load(w))
                continue
            item = pending.popleft()
            if item.resources is not None:
                target, possible = place(item, workers, self.hosts, batches)
                if not possible:
                    self.unsatisfiable.note(item.resources)
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
            # the first task sent to an idle worker times its host's round trip
            item.probe = not w.outstanding and item.estimate is not None
            w.hold(item)
            w.outstanding[item.task_id] = item
            self.owner[item.task_id] = w
            item.sends += 1
            w.sent += 1
            if w.remaining is not None:
                w.remaining -= 1
            if not has_slot(w):
                self._idle.pop(worker_id, None)
            batch = batches.setdefault(worker_id, (w, []))[1]
            batch.append(item)
            if heap[0][3] != worker_id:
                heapq.heappush(heap, load(w))  # its old entry is stale now
                stale = True
            elif len(batch) >= DEFAULT_MAX_BATCH:
                heapq.heappop(heap)
                self.cut_short = True  # it may take more: the dispatcher asks again
            else:
                heapq.heapreplace(heap, load(w))
        if deferred:
            pending.extendleft(reversed(deferred))
        return bool(deferred)

    def _accepts(self, w: WorkerState, item: WorkItem, now: float, backlog: bool) -> bool:
        """May ``w`` hold ``item`` now? A free slot always; beyond that (prefetch) only
        while many tasks wait (``backlog``) and only tasks known to be short
        (``_window.may_prefetch``). Once priorities or resources are in use, nothing is
        prefetched: a task queued on a worker could not be taken back for a higher priority
        one."""
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
        if not backlog or estimate is None or w.unknown:
            return False
        host = self.hosts.get(w.host_id)
        if host is None or w.host_id == self.local_host:
            # the executor's own workers have no link: what their "round trip" measures is
            # only the loop's lag, which must not widen their window
            return may_prefetch(w, estimate, now, None)
        return may_prefetch(w, estimate, now, host.rtt)

    # -- bookkeeping -------------------------------------------------------------------------

    def _forget(self, w: WorkerState, task_id: int) -> WorkItem | None:
        """``w`` no longer holds ``task_id`` (answered, lost or taken back)."""
        item = w.outstanding.pop(task_id, None)
        if item is None:
            return None
        if self.owner.get(task_id) is w:
            del self.owner[task_id]
        self._release(w, item)
        if w.recall:
            w.recall.discard(task_id)
        if item.estimate is None:
            w.unknown -= 1
        elif w.outstanding:
            w.queued = max(0.0, w.queued - item.estimate)
        else:
            w.queued = 0.0  # no drift from float sums
        if w.ready and w.worker_id not in self._idle and has_slot(w):
            self._idle[w.worker_id] = w
            self._rebalance = True
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


def _asks_for(resources: dict[str, float], item: WorkItem) -> bool:
    return item.resources == resources
