"""The dispatcher: the one thread that owns the executor's sockets. It registers workers,
sends each task to the least-loaded worker with credit, resolves futures from results, and
handles workers that die or leave.

Data flow (compare CPython's concurrent/futures/process.py)::

    submit() --> pending deque --wake--> dispatcher thread --TASKS--> PUSH (one per worker)
                                               ^                          |
                                               |                          v
    Future  <--set_result/exception-- PULL sink <---RESULTS/HELLO/DIED--- worker processes

The executor keeps the queue of pending tasks itself, never in ZeroMQ buffers: a worker
holds at most its slots plus a small prefetch (credit-based flow control, zguide ch. 7), so
no short task waits behind a long one on a busy worker, a worker that joins late gets work
at once, and ``shutdown(cancel_futures=True)`` can still cancel everything not yet sent.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import cloudpickle
import zmq

from . import _protocol as proto
from ._defaults import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_MESSAGE_SIZE,
    DURATIONS_KEPT,
    LOST_RESULT_GRACE,
    MAX_PREFETCH,
    NO_WORKER_WARNING,
    PREFETCH_BACKLOG,
    PREFETCH_BUDGET,
    PROTOCOL_VERSION,
    TICK,
)
from ._net import recv_frames, set_heartbeats
from ._protocol import Kind
from ._security import Security
from ._serialize import load_result
from ._stats import ExecutorStats, WorkerStats
from .errors import BrokenZmqExecutor, NoWorkersError, TaskTimeoutError, WorkerLostError
from .worker import FN_SLOTS, version_mismatch

if TYPE_CHECKING:
    from .executor import ZmqExecutor

_POLLIN = int(zmq.POLLIN)  # a plain int: bit operations on the IntFlag cost microseconds

log = logging.getLogger("zmqexecutor.dispatcher")


@dataclass(frozen=True)
class Settings:
    """The executor's options that the dispatcher acts on."""

    prefetch: int | None = None
    max_tasks_per_child: int | None = None
    max_retries: int = 0
    task_timeout: float | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    no_worker_timeout: float | None = None
    local_workers: int = 0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE

    def welcome(self) -> dict[str, Any]:
        """What every worker process is told when it registers."""
        return {
            "max_tasks_per_child": self.max_tasks_per_child,
            "task_timeout": self.task_timeout,
            "heartbeat_interval": self.heartbeat_interval,
            "max_message_size": self.max_message_size,
        }


@dataclass
class HostRecord:
    """A worker host (one supervisor) and when it was last heard from."""

    host_id: str
    name: str
    last_seen: float
    workers: set[str] = field(default_factory=set)


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
    #: when it was last sent (time.monotonic())
    sent_at: float = 0.0
    #: workers (and hosts) it was lost on; a retry never goes back to them (None: none yet,
    #: so that a million queued tasks do not carry a million empty sets)
    lost_on: set[str] | None = None


@dataclass(eq=False)
class WorkerRecord:
    """What the executor knows about one worker process."""

    worker_id: str
    host: str
    pid: int
    slots: int
    push: zmq.Socket[bytes]
    host_id: str = ""
    ready: bool = False
    #: tasks sent and not answered, in the order sent (a worker runs them in that order)
    outstanding: OrderedDict[int, WorkItem] = field(default_factory=OrderedDict)
    #: callables the worker holds; evicted in insertion order exactly as the worker does
    functions: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
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


class Dispatcher(threading.Thread):
    """Owns the sink, one PUSH per worker, and every future between send and result."""

    def __init__(
        self,
        executor: ZmqExecutor,
        *,
        context: zmq.Context[zmq.Socket[bytes]],
        sink: zmq.Socket[bytes],
        attach: list[zmq.Socket[bytes]],
        sink_address: str,
        settings: Settings,
        security: Security,
        initializer: bytes,
        task_ids: Iterator[int],
        before_detach: Callable[[], None],
        on_exit: Callable[[], None],
        local_host: str | None = None,
    ) -> None:
        super().__init__(name="zmqexecutor-dispatcher", daemon=True)
        self.session = os.urandom(8)
        self.ctx = context
        self.sink = sink
        self.attach = attach
        self.sink_address = sink_address
        self.settings = settings
        self.security = security
        self.welcome = settings.welcome()
        self.initializer = initializer
        self.task_ids = task_ids
        self.hosts: dict[str, HostRecord] = {}
        self._next_attach = 0.0
        self.before_detach = before_detach
        #: the host id of this process's own supervisor (local mode), whose workers
        #: before_detach() has told to leave already
        self.local_host = local_host
        self.on_exit = on_exit
        self.pending: deque[WorkItem] = deque()
        #: moving average of each callable's run time (by digest): how much to prefetch
        self.durations: dict[bytes, float] = {}
        self.workers: dict[str, WorkerRecord] = {}
        #: the workers that are READY, and those of them with a free slot, longest idle first
        #: (the zguide's LRU queue): with 200 workers no round scans them all
        self._ready: dict[str, WorkerRecord] = {}
        self._idle: OrderedDict[str, WorkerRecord] = OrderedDict()
        self._ready_slots = 0
        self.shutdown_requested = False
        self.broken: str | None = None
        self.init_failures = 0
        #: which worker holds each task that was sent and not answered
        self.owner: dict[int, WorkerRecord] = {}
        #: finished tasks of a dead worker whose results may still be in flight, with a deadline
        self._grace: list[tuple[float, WorkerRecord, list[int]]] = []
        self._executor_ref = weakref.ref(executor, lambda _: self.wake())
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        #: set while the loop sleeps in poll() with credit to spare: submit() must wake it
        self.idle = False
        #: since when tasks wait with no ready worker, and when that was last logged
        self._waiting_since: float | None = None
        self._warned_at: float | None = None
        self.protocol_errors = 0
        self.discarded_results = 0
        self.counts = dict.fromkeys(("done", "failed", "bytes_sent", "bytes_received"), 0)
        self._stats_requests: deque[Future[ExecutorStats]] = deque()
        #: results received but not yet set on their futures (see _resolve)
        self._results: list[tuple[Future[Any], bool, Any]] = []

    # -- called from other threads ----------------------------------------------------

    def wake(self) -> None:
        self.idle = False
        with contextlib.suppress(OSError):  # already woken (pipe full) or closing
            os.write(self._wake_w, b"x")

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sink, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._finished():
                self._dispatch()  # first: a woken loop sends a new task before anything else
                self._housekeeping()
                self._answer_stats_requests()
                self.idle = self._has_room() and not self.pending
                if self.pending and self.idle:  # raced with a submit(): go round again
                    self.idle = False
                    continue
                timeout = self._timeout()
                self._resolve()
                events = dict(poller.poll(timeout))
                self.idle = False
                if self._wake_r in events:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                if self.sink in events:
                    self._drain_sink()
        except BaseException:
            log.exception("dispatcher failed; the executor is broken")
            self._break("the dispatcher thread failed (see the log)")
            raise
        finally:
            self._resolve()
            self._close()
            self._answer_stats_requests()

    # -- statistics (asked from other threads, answered by this one) ------------------------

    def stats(self, timeout: float = 5.0) -> ExecutorStats:
        """A snapshot taken by the dispatcher thread (its state is never read elsewhere)."""
        if not self.is_alive():
            return self._snapshot()
        request: Future[ExecutorStats] = Future()
        self._stats_requests.append(request)
        self.wake()
        if not self.is_alive():  # exited meanwhile: the final answer may have been missed
            self._answer_stats_requests()
        return request.result(timeout)

    def _answer_stats_requests(self) -> None:
        while self._stats_requests:
            request = self._stats_requests.popleft()
            if not request.done():
                request.set_result(self._snapshot())

    def _snapshot(self) -> ExecutorStats:
        now = time.monotonic()
        workers = []
        for w in list(self.workers.values()):
            host = self.hosts.get(w.host_id)
            workers.append(
                WorkerStats(
                    worker_id=w.worker_id,
                    host=w.host,
                    pid=w.pid,
                    slots=w.slots,
                    in_flight=len(w.outstanding),
                    done=w.done,
                    failed=w.failed,
                    heartbeat_age=None if host is None else now - host.last_seen,
                )
            )
        return ExecutorStats(
            workers=workers,
            pending=len(self.pending),
            running=len(self.owner),
            done=self.counts["done"],
            failed=self.counts["failed"],
            bytes_sent=self.counts["bytes_sent"],
            bytes_received=self.counts["bytes_received"],
            protocol_errors=self.protocol_errors,
            discarded_results=self.discarded_results,
        )

    def _timeout(self) -> int:
        tick = min(TICK, self.settings.heartbeat_interval)
        if self._grace or (self.pending and not self._ready):
            tick /= 5
        return int(tick * 1000)

    def _finished(self) -> bool:
        if not self.shutdown_requested and self._executor_ref() is not None:
            return False
        if self.broken is not None:
            return True
        if self.pending and not self._ready:
            # no worker to pop them: cancelled futures must still leave the queue (with
            # workers, _dispatch drops them; scanning here each round would be quadratic)
            for _ in range(len(self.pending)):
                item = self.pending.popleft()
                if item.sends or not item.future.cancelled():
                    self.pending.append(item)
        return not self.pending and not self.owner

    def _accepts(self, w: WorkerRecord, item: WorkItem, now: float, backlog: bool) -> bool:
        """May ``w`` hold ``item`` now? A free slot always; beyond that (prefetch) only
        while many tasks wait (``backlog``) and only tasks known to be short, up to
        PREFETCH_BUDGET seconds of queued work, so that batching pays for small tasks and a
        prefetched task never waits long behind another while a worker is idle."""
        held = len(w.outstanding)
        if w.remaining is not None and w.remaining <= 0:
            return False
        if held < w.slots:
            return True
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

    def _has_room(self) -> bool:
        """True if a task submitted now could be sent at once (submit() must wake us)."""
        return bool(self._idle)

    # -- sending ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give pending tasks, in order, to the least loaded ready worker that accepts them."""
        if not self.pending:
            return
        # A few tasks are spread one per worker, never prefetched: they may wait for each
        # other, and a task queued behind one that blocks cannot be taken back yet.
        backlog = len(self.pending) >= PREFETCH_BACKLOG * self._ready_slots
        if self.settings.prefetch is None and not backlog:
            # only free slots take tasks: the workers idle longest first (the zguide's LRU
            # queue), so that no round costs time in proportion to the number of workers
            idle = list(itertools.islice(self._idle.values(), len(self.pending)))
            if not self._fill(idle, backlog) or not self._idle:
                return
            # a retry may not go back where it was lost: let every idle worker try it
        self._fill(self._ready.values(), backlog)

    def _fill(self, candidates: Iterable[WorkerRecord], backlog: bool) -> bool:
        """Dispatch to ``candidates``, least loaded first, while they accept (prefetch only
        with a ``backlog``); True if a task was put back because it was lost there."""
        heap = [(len(w.outstanding) / w.slots, w.queued, w.sent, w.worker_id)
                for w in candidates if w.remaining is None or w.remaining > 0]  # fmt: skip
        heapq.heapify(heap)
        batches: dict[str, list[WorkItem]] = {}
        deferred: list[WorkItem] = []
        now = time.monotonic()
        while heap and self.pending:
            worker_id = heap[0][3]
            w = self.workers[worker_id]
            item = self.pending.popleft()
            if not self._accepts(w, item, now, backlog):
                self.pending.appendleft(item)  # the least loaded worker is full: all are
                break
            if item.lost_on and not item.lost_on.isdisjoint((w.worker_id, w.host_id)):
                deferred.append(item)  # a retry never goes back where it was lost
                continue
            if not item.sends and not item.future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            item.estimate = self.durations.get(item.digest)
            item.sent_at = now
            self._hold(w, item)
            w.outstanding[item.task_id] = item
            self.owner[item.task_id] = w
            item.sends += 1
            if w.remaining is not None:
                w.remaining -= 1
            if not self._has_slot(w):
                self._idle.pop(worker_id, None)
            batch = batches.setdefault(worker_id, [])
            batch.append(item)
            if len(batch) >= DEFAULT_MAX_BATCH:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (len(w.outstanding) / w.slots, w.queued, w.sent, worker_id))
        self.pending.extendleft(reversed(deferred))
        for worker_id, items in batches.items():
            self._send_tasks(self.workers[worker_id], items)
        return bool(deferred)

    def _send_tasks(self, w: WorkerRecord, items: list[WorkItem]) -> None:
        functions = []
        for item in items:
            if item.digest not in w.functions:
                functions.append((item.digest, item.fn_bytes))
                w.functions[item.digest] = None
                if len(w.functions) > FN_SLOTS:
                    w.functions.popitem(last=False)
        tasks = [(i.task_id, i.digest, i.payload, i.buffers) for i in items]
        w.sent += len(items)
        # ZMQ_MAXMSGSIZE bounds each frame: keep every message's first frame under the limit
        limit = self.settings.max_message_size
        start, size = 0, sum(len(data) + proto.RECORD_OVERHEAD for _, data in functions)
        for end, task in enumerate(tasks):
            cost = len(task[2]) + proto.RECORD_OVERHEAD
            if end > start and size + cost > limit:
                self._send(w, functions, tasks[start:end])
                functions, start, size = [], end, 0
            size += cost
        self._send(w, functions, tasks[start:])

    def _send(
        self,
        w: WorkerRecord,
        functions: list[tuple[bytes, bytes]],
        tasks: list[tuple[int, bytes, bytes, Sequence[Any]]],
    ) -> None:
        frames = proto.encode_tasks(self.session, functions, tasks)
        self.counts["bytes_sent"] += sum(memoryview(f).nbytes for f in frames)
        w.push.send_multipart(frames, copy=len(frames) == 1)  # zero-copy only pays for buffers

    # -- receiving ----------------------------------------------------------------------

    def _drain_sink(self) -> None:
        for n in range(1000):  # bounded: sending must not starve behind a result flood
            # asking is cheaper than the zmq.Again that ends a drain otherwise
            if n and not cast(int, self.sink.get(zmq.EVENTS)) & _POLLIN:
                return
            try:
                frames = recv_frames(self.sink, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.counts["bytes_received"] += sum(len(f) for f in frames)
            try:
                self._on_message(frames)
            except proto.VersionMismatch as e:
                self.protocol_errors += 1
                self._refuse_other_version(frames, e)
            except proto.ProtocolError as e:
                self.protocol_errors += 1
                log.warning("dropped a bad message: %s", e)
            except (KeyError, ValueError, TypeError, UnicodeDecodeError) as e:
                # a body that parses but does not make sense: never let input kill the loop
                self.protocol_errors += 1
                log.warning("dropped a malformed message: %s: %s", type(e).__name__, e)

    def _on_message(self, frames: list[Any]) -> None:
        kind, session, _ = proto.parse_header(frames[0])
        if kind is Kind.HELLO:
            self._on_hello(proto.parse_control(frames))
            return
        if kind is Kind.HEARTBEAT:
            self._on_heartbeat(proto.parse_control(frames))
            return
        if session != self.session:
            raise proto.ProtocolError(f"{kind.name} from another session")
        if kind is Kind.RESULTS:
            self._on_results(*proto.decode_results(frames))
            return
        body = proto.parse_control(frames)
        w = self.workers.get(str(body.get("id")))
        if w is None:
            log.debug("%s from an unknown worker %s", kind.name, body.get("id"))
            return
        if kind is Kind.READY:
            if w.ready:
                return  # a repeated READY
            w.ready = True
            self._ready[w.worker_id] = w
            self._ready_slots += w.slots
            if self._has_slot(w):
                self._idle[w.worker_id] = w
            log.info("%s is ready", w.describe())
        elif kind is Kind.INIT_FAILED:
            self._on_init_failed(w, body)
        elif kind is Kind.BYE:
            self._remove(w)
            self._requeue_all(w)
            log.info("%s left after %s tasks", w.describe(), body.get("done"))
        elif kind is Kind.DIED:
            self._on_died(w, body)
        else:
            raise proto.ProtocolError(f"unexpected {kind.name} on the sink")

    def _on_hello(self, body: dict[str, Any]) -> None:
        worker_id = str(body.get("id"))
        if worker_id in self.workers:
            return  # a repeated HELLO; WELCOME is on its way
        mismatch = version_mismatch(body)
        if mismatch:
            self._refuse(body, mismatch)
            return
        try:  # every field is checked before a socket exists
            inbox = body["inbox"]
            pid, slots = int(body.get("pid", 0)), max(1, int(body.get("slots", 1)))
            if not isinstance(inbox, str) or len(worker_id) != 16:
                raise ValueError("bad inbox or worker id")
        except (KeyError, ValueError, TypeError) as e:
            raise proto.ProtocolError(f"HELLO with bad fields: {e}") from None
        push = self.ctx.socket(zmq.PUSH)
        push.linger = 0
        push.sndhwm = 0  # credit bounds what is queued
        set_heartbeats(push, self.settings.heartbeat_interval, self.settings.heartbeat_timeout)
        self.security.client(push)
        try:
            push.connect(inbox)
        except zmq.ZMQError as e:
            push.close()
            raise proto.ProtocolError(f"HELLO with a bad inbox address: {e}") from None
        w = WorkerRecord(
            worker_id=worker_id,
            host=str(body.get("host", "?")),
            pid=pid,
            slots=slots,
            push=push,
            host_id=str(body.get("host_id", "")),
            remaining=self.settings.max_tasks_per_child,
        )
        self.workers[worker_id] = w
        self._host(w.host_id, w.host).workers.add(worker_id)
        push.send_multipart(
            [*proto.control(Kind.WELCOME, self.welcome, self.session), self.initializer]
        )
        log.info("%s joined (inbox %s)", w.describe(), body.get("inbox"))

    def _refuse(self, body: dict[str, Any], reason: str) -> None:
        """Tell a worker that cannot work with us why, once, and forget it."""
        log.error("refused worker %s pid %s: %s", body.get("host"), body.get("pid"), reason)
        inbox = body.get("inbox")
        if not isinstance(inbox, str):
            return
        push = self.ctx.socket(zmq.PUSH)
        self.security.client(push)
        try:
            push.connect(inbox)
            push.send_multipart(proto.control(Kind.REFUSE, {"reason": reason}), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        finally:
            push.close(linger=1000)

    def _refuse_other_version(self, frames: list[Any], e: proto.VersionMismatch) -> None:
        if e.kind != Kind.HELLO:
            log.warning("dropped a message of protocol version %d", e.version)
            return
        try:
            body = proto.parse_control(frames)
        except proto.ProtocolError as bad:
            log.warning("dropped a HELLO of protocol version %d: %s", e.version, bad)
            return
        self._refuse(
            body,
            f"the worker speaks protocol version {e.version}, this executor "
            f"{PROTOCOL_VERSION}: install the same zmqexecutor version on both sides",
        )

    def _on_results(self, sender: bytes, results: list[proto.ResultRecord]) -> None:
        for record in results:
            w = self.owner.get(record.task_id)
            if w is None or w.worker_id.encode() != sender:
                # late (its worker was declared lost), replayed, or misdirected
                self.discarded_results += 1
                log.info("discarded a result for task %d: not outstanding there", record.task_id)
                continue
            del self.owner[record.task_id]
            item = w.outstanding.pop(record.task_id)
            self._release(w, item)
            self._learn_duration(item.digest, record.duration)
            ok, value = load_result(record)
            w.done += 1
            if ok:
                self.counts["done"] += 1
            else:
                w.failed += 1
                self.counts["failed"] += 1
            self._results.append((item.future, ok, value))

    def _resolve(self) -> None:
        """Set the received results on their futures: last thing before poll(), which
        releases the GIL, so a woken caller does not wait for the rest of the loop."""
        results, self._results = self._results, []
        for future, ok, value in results:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _learn_duration(self, digest: bytes, duration: float) -> None:
        old = self.durations.get(digest)
        self.durations[digest] = duration if old is None else old + (duration - old) / 8
        if len(self.durations) > DURATIONS_KEPT:
            del self.durations[next(iter(self.durations))]

    def _on_init_failed(self, w: WorkerRecord, body: dict[str, Any]) -> None:
        self._remove(w)
        self._requeue_all(w)
        self.init_failures += 1
        log.error(
            "%s refused: its initializer failed: %s\n%s",
            w.describe(),
            body.get("error"),
            body.get("traceback", ""),
        )
        local = self.settings.local_workers
        if local and self.init_failures >= local:
            self._break(
                "A process in the process pool was terminated abruptly while the future was "
                f"running or pending: the initializer failed on every worker ({body.get('error')})"
            )

    def _on_died(self, w: WorkerRecord, body: dict[str, Any]) -> None:
        """A worker process died: fail what it may have run, re-queue what it had not."""
        self._remove(w)
        last_started = int(body.get("last_started", 0))
        items = list(w.outstanding.values())
        ids = [i.task_id for i in items]
        cut = ids.index(last_started) + 1 if last_started in ids else 0
        may_have_run, not_started = items[:cut], items[cut:]
        running = int(body.get("running", 0))
        how = f"{w.describe()} {body.get('exit', 'died')}"
        timeout = float(body.get("timeout") or 0)
        for item in may_have_run:
            if item.task_id != running:
                continue
            self._forget(w, item.task_id)
            if timeout:
                item.future.set_exception(
                    TaskTimeoutError(
                        f"the task ran longer than task_timeout={timeout:g}s on {w.describe()} "
                        "and was killed; raise task_timeout if it needs more time"
                    )
                )
            else:
                self._lost(item, w, f"{how} while running this task")
        finished = [i.task_id for i in may_have_run if i.task_id != running]
        if finished:  # their results may still be on the way: wait a little
            self._grace.append((time.monotonic() + LOST_RESULT_GRACE, w, finished))
        for item in not_started:
            self._forget(w, item.task_id)
        self._requeue(not_started)
        log.warning("%s (%d task(s) sent elsewhere)", how, len(not_started))

    def _forget(self, w: WorkerRecord, task_id: int) -> WorkItem | None:
        self.owner.pop(task_id, None)
        item = w.outstanding.pop(task_id, None)
        if item is not None:
            self._release(w, item)
        return item

    @staticmethod
    def _hold(w: WorkerRecord, item: WorkItem) -> None:
        if item.estimate is None:
            w.unknown += 1
        else:
            w.queued += item.estimate

    def _release(self, w: WorkerRecord, item: WorkItem) -> None:
        """``item`` left ``w.outstanding`` (answered, lost or taken back)."""
        if item.estimate is None:
            w.unknown -= 1
        elif w.outstanding:
            w.queued = max(0.0, w.queued - item.estimate)
        else:
            w.queued = 0.0  # no drift from float sums
        if w.ready and w.worker_id not in self._idle and self._has_slot(w):
            self._idle[w.worker_id] = w

    @staticmethod
    def _has_slot(w: WorkerRecord) -> bool:
        """May ``w`` take a task without prefetching?"""
        return len(w.outstanding) < w.slots and (w.remaining is None or w.remaining > 0)

    # -- bookkeeping --------------------------------------------------------------------

    def _remove(self, w: WorkerRecord) -> None:
        self.workers.pop(w.worker_id, None)
        if self._ready.pop(w.worker_id, None) is not None:
            self._ready_slots -= w.slots
        self._idle.pop(w.worker_id, None)
        w.push.close(linger=0)
        w.ready = False

    def _requeue_all(self, w: WorkerRecord) -> None:
        items = list(w.outstanding.values())
        for item in items:
            self._forget(w, item.task_id)
        self._requeue(items)

    def _requeue(self, items: list[WorkItem]) -> None:
        """Tasks a worker received but certainly never started go back to the front."""
        self.pending.extendleft(reversed(items))

    def _housekeeping(self) -> None:
        now = time.monotonic()
        while self._grace and self._grace[0][0] <= now:
            _, w, task_ids = self._grace.pop(0)
            for task_id in task_ids:
                item = self._forget(w, task_id)
                if item is None:
                    continue  # its result did arrive
                self._lost(
                    item, w, f"{w.describe()} died after running this task; its result was lost"
                )
        self._check_no_workers(now)
        self._check_hosts(now)
        self._fail_queue_if_broken()

    def _lost(self, item: WorkItem, w: WorkerRecord, how: str, *, host: bool = False) -> None:
        """``item`` may have run on ``w``, which is gone: retry it elsewhere if the user
        allowed it (max_retries), else fail it. Never re-run silently (at-most-once).
        With ``host`` the whole host is avoided, not only the worker process."""
        item.lost_on = (item.lost_on or set()) | {w.host_id if host else w.worker_id}
        attempts = item.sends
        if attempts <= self.settings.max_retries:
            log.warning("%s; retrying task elsewhere (attempt %d)", how, attempts + 1)
            item.task_id = next(self.task_ids)  # a late result of the lost attempt is dropped
            self.pending.appendleft(item)
            return
        tried = f"; attempted on {attempts} workers" if attempts > 1 else ""
        item.future.set_exception(
            WorkerLostError(
                f"{how}{tried}. The task may have partly run and was not retried "
                f"(max_retries={self.settings.max_retries})"
            )
        )

    def _host(self, host_id: str, name: str) -> HostRecord:
        host = self.hosts.get(host_id)
        if host is None:
            host = self.hosts[host_id] = HostRecord(host_id, name, time.monotonic())
        return host

    def _on_heartbeat(self, body: dict[str, Any]) -> None:
        host = self._host(str(body.get("host_id", "")), str(body.get("host", "?")))
        host.last_seen = time.monotonic()

    def _check_hosts(self, now: float) -> None:
        """A host silent for heartbeat_timeout is lost with every worker it had."""
        for host in list(self.hosts.values()):
            if now - host.last_seen <= self.settings.heartbeat_timeout:
                continue
            del self.hosts[host.host_id]
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
                items = list(w.outstanding.values())
                for item in items:
                    self._forget(w, item.task_id)
                    self._lost(
                        item,
                        w,
                        f"{w.describe()} was lost: its host was silent for "
                        f"{self.settings.heartbeat_timeout:g}s (heartbeat_timeout)",
                        host=True,
                    )
        if self.attach and now >= self._next_attach:
            # mode 3: (re)attach hosts that restarted or never got the first ATTACH
            self._next_attach = now + self.settings.heartbeat_interval
            attach = proto.control(Kind.ATTACH, {"sink": self.sink_address}, self.session)
            for sock in self.attach:
                with contextlib.suppress(zmq.Again):
                    sock.send_multipart(attach, zmq.NOBLOCK)

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
        if self.shutdown_requested or self._executor_ref() is None:
            # shutdown() must return even when every worker is gone
            limit = min(limit or self.settings.heartbeat_timeout, self.settings.heartbeat_timeout)
        if limit is not None and now - self._waiting_since > limit:
            error = NoWorkersError(
                f"no worker was connected for {limit:g}s (no_worker_timeout); start workers "
                f"with: zmqexecutor-worker {self.sink_address}"
            )
            while self.pending:
                item = self.pending.popleft()
                if item.sends or item.future.set_running_or_notify_cancel():
                    item.future.set_exception(error)

    def _fail_queue_if_broken(self) -> None:
        if self.broken is None:
            return
        while self.pending:
            item = self.pending.popleft()
            if item.sends or item.future.set_running_or_notify_cancel():
                item.future.set_exception(BrokenZmqExecutor(self.broken))

    def _break(self, reason: str) -> None:
        """The executor cannot run anything any more: fail every queued and running future."""
        self.broken = reason
        executor = self._executor_ref()
        if executor is not None:
            executor._broken = reason
        self._fail_queue_if_broken()
        for w in list(self.owner.values()):
            for item in w.outstanding.values():
                if not item.future.done():
                    item.future.set_exception(BrokenZmqExecutor(reason))
            w.outstanding.clear()
        self.owner.clear()

    def _close(self) -> None:
        self.before_detach()
        detach = proto.control(Kind.DETACH, {}, self.session)
        for w in self.workers.values():
            with contextlib.suppress(zmq.ZMQError):
                w.push.send_multipart(detach, zmq.NOBLOCK)
            # a local worker was sent SIGTERM and may be gone: waiting for it to take the
            # DETACH would only hold up shutdown (and context.term()) by the linger
            w.push.close(linger=0 if w.host_id == self.local_host else int(TICK * 1000))
        for sock in self.attach:
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart(detach, zmq.NOBLOCK)
            sock.close(linger=int(TICK * 1000))
        self.workers.clear()
        self.sink.close(linger=0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.on_exit()


def pickle_initializer(initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> bytes:
    """The WELCOME frame that carries the initializer (empty: none)."""
    if initializer is None:
        return b""
    data: bytes = cloudpickle.dumps((initializer, initargs), protocol=5)
    return data
