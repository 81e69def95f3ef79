"""The dispatcher: the one thread that owns the executor's sockets. It turns what arrives on
the sink into events of the scheduling core (``_scheduler.py``) and carries out what the
core decides: sends TASKS, sets results on futures, closes the links of workers that left.

Data flow (compare CPython's concurrent/futures/process.py)::

    submit() --> core.pending --wake--> dispatcher thread --TASKS--> PUSH (one per worker)
                                          |      ^                        |
                              core.dispatch()    |                        v
    Future  <--set_result/exception-- PULL sink <---RESULTS/HELLO/DIED--- worker processes

One exception to "the one thread": while the loop sleeps in poll() it does not hold its
``lock``, and a submit() that finds a worker free takes the lock (never waiting for it) and
runs the loop's own ``_dispatch`` in the caller's thread (``send_now``). The core and the
sockets are still used by one thread at a time, the holder of the lock; the core decides
exactly as it would on this thread; a task then reaches its worker without two thread
hand-offs (W3's latency).

The executor keeps the queue of pending tasks itself, never in ZeroMQ buffers: a worker
holds at most its slots plus a small prefetch (credit-based flow control, zguide ch. 7), so
no short task waits behind a long one on a busy worker, a worker that joins late gets work
at once, and ``shutdown(cancel_futures=True)`` can still cancel everything not yet sent.
Every scheduling decision is the core's; this module makes none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any, cast

import zmq

from . import _messages as msg
from . import _protocol as proto
from ._defaults import OUTPUT_SHUTDOWN_MAX, OUTPUT_SHUTDOWN_QUIET, PROTOCOL_VERSION, TICK
from ._endpoints import Endpoints, Placement
from ._net import recv_frames, set_heartbeats
from ._output import Printer, prefixed, print_lines
from ._protocol import Kind
from ._scheduler import Scheduler, Settings, WorkerState, WorkItem
from ._serialize import load_result
from ._stats import ExecutorStats, snapshot
from ._version_requests import VersionRequests, VersionsRequest
from ._versions import Versions

__all__ = ["Dispatcher", "Flags"]

_POLLIN = int(zmq.POLLIN)  # a plain int: bit operations on the IntFlag cost microseconds

log = logging.getLogger("zmqexecutor.dispatcher")


@dataclass(eq=False)
class Link:
    """The executor's end of one worker process: its PUSH socket and the callables it holds."""

    push: zmq.Socket[bytes]
    worker_id: bytes
    #: callables the worker holds; evicted in insertion order exactly as the worker does
    functions: proto.FunctionSlots[None] = field(default_factory=proto.FunctionSlots)


class Flags:
    """The state the executor and its dispatcher both read (loky's ``_ExecutorFlags``), so
    that the executor reads no field of the dispatcher's (but the queue and ``idle`` on the
    submit path). One writer each: ``shutdown`` the executor, under its shutdown lock;
    ``broken`` the scheduling core, on the dispatcher thread (read through, not copied, so
    that it is set before the first future fails with it)."""

    __slots__ = ("_core", "shutdown")

    def __init__(self, core: Scheduler) -> None:
        self._core = core
        self.shutdown = False  #: shutdown() was called: submit() takes no new task

    @property
    def broken(self) -> str | None:
        """Why the executor cannot run tasks any more, or None."""
        return self._core.broken


class Dispatcher(threading.Thread):
    """Owns the sink, one PUSH per worker, and the scheduling core; sets every future.

    It opens what it closes as its thread ends (``_endpoints.Endpoints``): the context,
    the sink and ATTACH sockets, security, the ipc directory and the local worker host.

    Raises:
        ConfigurationError: a socket cannot be bound or connected; nothing is left open.
    """

    def __init__(
        self,
        executor: object,
        *,
        settings: Settings,
        placement: Placement,
        initializer: bytes,
        task_ids: Any,
        forward_output: bool = True,
    ) -> None:
        super().__init__(name="zmqexecutor-dispatcher", daemon=True)
        self.session = os.urandom(8)
        self._wake_r, self._wake_w = os.pipe()
        try:
            self.ends = Endpoints(placement, settings)
        except BaseException:
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self.ctx = self.ends.context
        self.sink = self.ends.sink
        self.attach = self.ends.attach
        self.sink_address = self.ends.sink_address
        self.settings = settings
        self.security = self.ends.security
        # forward_output=False: the worker processes of remote hosts write to their host's
        # terminal, so the hosts never read, send or rate-limit their output
        self.welcome = msg.Welcome(
            max_tasks_per_child=settings.max_tasks_per_child,
            task_timeout=settings.task_timeout,
            heartbeat_interval=settings.heartbeat_interval,
            max_message_size=settings.max_message_size,
            forward_output=forward_output,
            initializer=initializer,
        )
        self.forward_output = forward_output
        #: prints remote tasks' output (started on the first OUTPUT message)
        self.printer: Printer | None = None
        self.output_dropped = 0  #: bytes the hosts dropped
        self.remote_joined = False  #: a remote worker joined: wait for its output at the end
        #: the host id of this process's own supervisor (local mode), whose workers
        #: _close() has told to leave already
        self.local_host = self.ends.local_host
        self.core = Scheduler(settings, task_ids, self.sink_address, self.local_host)
        self.flags = Flags(self.core)
        self.links: dict[str, Link] = {}
        self._next_attach = 0.0
        # only to notice the executor being dropped without shutdown() (as CPython's
        # manager thread does); the dispatcher never reads or writes it
        self._executor_ref = weakref.ref(executor, lambda _: self.wake())
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        #: set while the loop sleeps in poll() with credit to spare: submit() must wake it
        self.idle = False
        #: the right to touch the core and the sockets: this thread holds it except while it
        #: sleeps in poll(), when submit() may take it to send a task itself (send_now)
        self.lock = threading.Lock()
        self.protocol_errors = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._stats_requests: deque[Future[ExecutorStats]] = deque()
        self._break_requested: str | None = None
        #: versions() calls: handed over by callers, asked and answered by this thread
        self.version_requests = VersionRequests(self.core)

    def start(self) -> None:
        """Start the local worker host (if any), then this thread."""
        self.ends.start_local()
        super().start()

    # -- called from other threads ----------------------------------------------------

    def wake(self) -> None:
        self.idle = False
        with contextlib.suppress(OSError):  # already woken (pipe full) or closing
            os.write(self._wake_w, b"x")

    def send_now(self) -> None:
        """submit() queued a task while this thread sleeps in poll() with a worker free:
        send it from the caller's thread, which saves two thread hand-offs (the wake-up and
        the GIL) on the way to the worker. The caller does exactly what the loop would do
        next (``_dispatch``), holding ``lock``, so the core still has one owner at a time;
        if this thread holds the lock it is awake and sends the task itself."""
        if not self.lock.acquire(blocking=False):
            self.wake()
            return
        try:
            if self.idle:  # still sleeping in poll() (we hold the lock: it cannot wake)
                self._dispatch()
                self.idle = self.core.has_room() and not self.core.pending
        except BaseException:
            log.exception("sending a task from submit() failed; the executor is broken")
            self._break_requested = "sending a task failed (see the log)"
        finally:
            self.lock.release()
        if self.core.pending or self._break_requested is not None:
            self.wake()  # what the core kept back (resources, retries) is its to decide

    def request_shutdown(self) -> None:
        self.core.request_shutdown()
        self.wake()

    def request_break(self, reason: str) -> None:
        """Fail every queued and running future with ``reason`` and stop (on this thread)."""
        self._break_requested = reason
        self.wake()

    def cancel_pending(self) -> None:
        """Cancel the tasks no worker has been sent (``shutdown(cancel_futures=True)``)."""
        self.core.cancel_queued()

    def end_workers(self, reason: str, signum: int) -> None:
        """Break with ``reason`` and end the local worker processes with ``signum`` now,
        running tasks included (``terminate_workers()``, ``kill_workers()``)."""
        self.request_break(reason)
        self.ends.end_local(signum)

    def summary(self) -> tuple[int, int, int]:
        """Workers ready, tasks pending, tasks sent: sizes only, each an atomic read, so
        that a repr never waits for this thread."""
        core = self.core
        return core.ready_count(), len(core.pending), len(core.owner)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        core = self.core
        poller = zmq.Poller()
        poller.register(self.sink, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        lock = self.lock
        lock.acquire()  # held for good once the loop ends: send_now() then never sends
        try:
            while True:
                if self._executor_ref() is None:
                    core.request_shutdown()
                if self._break_requested is not None and core.broken is None:
                    self._break(self._break_requested)
                if core.finished():
                    break
                self._dispatch()  # first: a woken loop sends a new task before anything else
                self._recall()
                self._housekeeping()
                self._answer_stats_requests()
                self.version_requests.answer(self._send_to, self.session)
                self.idle = core.has_room() and not core.pending
                if core.pending and self.idle:  # raced with a submit(): go round again
                    self.idle = False
                    continue
                timeout = self._timeout()
                self._resolve()
                lock.release()
                try:
                    events = dict(poller.poll(timeout))
                finally:
                    lock.acquire()
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
            self.version_requests.answer(self._send_to, self.session, final=True)

    def _timeout(self) -> int:
        tick = min(TICK, self.settings.heartbeat_interval)
        if self.core.needs_fast_ticks():
            tick /= 5
        return int(tick * 1000)

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
        printer = self.printer
        return snapshot(
            self.core,
            time.monotonic(),
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            protocol_errors=self.protocol_errors,
            output_bytes=printer.written if printer else 0,
            output_dropped=self.output_dropped + (printer.dropped if printer else 0),
        )

    # -- versions (asked from other threads, answered by this one) -------------------------

    def versions(self, request: VersionsRequest) -> Versions:
        """Ask every host about ``request.packages``; wait ``request.timeout`` at most
        for their answers (see ``ZmqExecutor.versions``)."""
        self.version_requests.hand_over(request)
        self.wake()
        if not self.is_alive():  # exited: nobody else will answer it
            self.version_requests.answer(self._send_to, self.session, final=True)
        wait([request.future], request.timeout)
        if not request.future.done():
            self.wake()  # its deadline has passed: the loop sees that as it wakes
            wait([request.future], 2 * TICK)
        if not request.future.done() and not self.is_alive():
            self.version_requests.answer(self._send_to, self.session, final=True)
        return request.future.result(0)  # TimeoutError only if this thread is stuck

    # -- carrying out the core's decisions ---------------------------------------------------

    def _dispatch(self) -> None:
        if not self.core.pending:
            return
        core = self.core
        while True:  # a batch per worker per call, sent before the next is chosen
            for w, items in core.dispatch(time.monotonic()):
                self._send_tasks(w, items)
                core.sent(items, time.monotonic())
            if not core.cut_short or not core.pending:
                break
        self._close_links()

    def _recall(self) -> None:
        """Send the RECALLs the core decides on (on the PUSH that carried the tasks: a
        worker reads a RECALL after every task sent before it)."""
        self.core.rebalance()
        recalls = self.core.recalls
        while recalls:
            w, task_ids = recalls.pop()
            link = self.links.get(w.worker_id)
            if link is not None:
                recall = msg.Recall(recall=w.recall_id, tasks=tuple(task_ids))
                link.push.send_multipart(recall.encode(self.session))

    def _housekeeping(self) -> None:
        self.core.tick(time.monotonic())
        self._close_links()
        if self.core.broken is not None:
            self._resolve()
        if self.attach:
            self._attach(time.monotonic())

    def _resolve(self) -> None:
        """Set the decided results on their futures: last thing before poll(), which
        releases the GIL, so a woken caller does not wait for the rest of the loop."""
        resolved, self.core.resolved = self.core.resolved, []
        for future, ok, value in resolved:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _close_links(self) -> None:
        closed = self.core.closed
        while closed:
            link = self.links.pop(closed.pop(), None)
            if link is not None:
                link.push.close(linger=0)

    def _break(self, reason: str) -> None:
        self.core.break_(reason)
        self._resolve()

    def _send_tasks(self, w: WorkerState, items: list[WorkItem]) -> None:
        link = self.links[w.worker_id]
        functions = []
        for item in items:
            if item.digest not in link.functions:
                functions.append((item.digest, item.fn_bytes))
                link.functions.add(item.digest, None)
        tasks = [(i.task_id, i.digest, i.payload, i.buffers, i.units) for i in items]
        costs = [len(t[2]) + proto.RECORD_OVERHEAD for t in tasks]
        first = sum(len(data) + proto.RECORD_OVERHEAD for _, data in functions)
        for start, end in proto.under_limit(costs, self.settings.max_message_size, first):
            self._send(link, functions if start == 0 else [], tasks[start:end])

    def _send_to(self, worker_id: str, frames: list[bytes]) -> bool:
        """Send a control message to a worker process if its link takes it now."""
        link = self.links.get(worker_id)
        if link is None:
            return False
        try:
            link.push.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def _send(
        self,
        link: Link,
        functions: list[tuple[bytes, bytes]],
        tasks: list[tuple[Any, ...]],
    ) -> None:
        frames = proto.encode_tasks(self.session, functions, tasks, link.worker_id)
        self.bytes_sent += sum(memoryview(f).nbytes for f in frames)
        link.push.send_multipart(frames, copy=len(frames) == 1)  # zero-copy only pays for buffers

    def _attach(self, now: float) -> None:
        """Mode 3: (re)attach hosts that restarted or never got the first ATTACH."""
        if now < self._next_attach:
            return
        self._next_attach = now + self.settings.heartbeat_interval
        attach = msg.Attach(sink=self.sink_address).encode(self.session)
        for sock in self.attach:
            with contextlib.suppress(zmq.Again):
                sock.send_multipart(attach, zmq.NOBLOCK)

    # -- receiving: socket traffic to core events -----------------------------------------

    def _drain_sink(self) -> None:
        for n in range(1000):  # bounded: sending must not starve behind a result flood
            # asking is cheaper than the zmq.Again that ends a drain otherwise
            if n and not cast(int, self.sink.get(zmq.EVENTS)) & _POLLIN:
                break
            try:
                frames = recv_frames(self.sink, zmq.NOBLOCK)
            except zmq.Again:
                break
            self.bytes_received += sum(len(f) for f in frames)
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
        self._close_links()

    def _on_message(self, frames: list[Any]) -> None:
        kind, session, _ = proto.parse_header(frames[0])
        core = self.core
        if kind is Kind.HELLO:
            self._on_hello(msg.Hello.decode(frames))
            return
        if kind is Kind.HEARTBEAT:
            beat = msg.Heartbeat.decode(frames)
            core.heartbeat(beat.host_id, beat.host, time.monotonic(), beat.timeout)
            return
        if kind is Kind.OUTPUT:
            self._on_output(frames, session)
            return
        if session != self.session:
            raise proto.ProtocolError(f"{kind.name} from another session")
        if kind is Kind.RESULTS:
            sender, records = proto.decode_results(frames)
            core.results(sender, records, time.monotonic(), load_result)
            return
        if kind not in msg.ABOUT_A_WORKER:
            raise proto.ProtocolError(f"unexpected {kind.name} on the sink")
        m = msg.ABOUT_A_WORKER[kind].decode(frames)
        if isinstance(m, msg.Returned):  # also from a worker that died since: see core.returned
            core.returned(m.id, m.recall, m.tasks)
            return
        w = core.workers.get(m.id)
        if w is None:
            log.debug("%s from an unknown worker %s", kind.name, m.id)
        elif isinstance(m, msg.Ready):
            core.worker_ready(w)
        elif isinstance(m, msg.InitFailed):
            core.worker_init_failed(w, m.error, m.traceback)
        elif isinstance(m, msg.Bye):
            core.worker_left(w, m.done)
        elif isinstance(m, msg.VersionsReply):
            self.version_requests.on_reply(w, m)
        elif isinstance(m, msg.Died):
            core.worker_died(
                w,
                running=m.running,
                last_started=m.last_started,
                how=m.exit,
                timeout=m.timeout,
                now=time.monotonic(),
            )

    def _on_output(self, frames: list[Any], session: bytes) -> None:
        """Remote tasks' output: printed by the printer thread, so that a blocked stdout
        never stalls this loop (a full queue drops lines and counts them). Output from
        before a host's processes were welcomed has no session, and is printed too."""
        if not self.forward_output:
            return  # e.g. a worker process's warnings before it was WELCOMEd
        if session not in (self.session, proto.NO_SESSION):
            raise proto.ProtocolError("OUTPUT from another session (a previous executor's)")
        output = msg.Output.decode(frames)
        self.output_dropped += output.dropped
        if self.printer is None:
            self.printer = Printer(print_lines, "zmqexecutor-output")
            self.printer.start()
        for chunk in output.chunks:
            self.printer.put(chunk.stream, prefixed(output.host, chunk), len(chunk.text))

    def _last_output(self) -> None:
        """Print what remote tasks wrote just before their results came back: it is still
        on its way, through the host's supervisor, and would be lost with the sink."""
        now = time.monotonic()
        end, quiet = now + OUTPUT_SHUTDOWN_MAX, now + OUTPUT_SHUTDOWN_QUIET
        while (now := time.monotonic()) < min(end, quiet):
            if not self.sink.poll(max(1, int((min(end, quiet) - now) * 1000))):
                continue
            with contextlib.suppress(zmq.Again, proto.ProtocolError):
                frames = recv_frames(self.sink, zmq.NOBLOCK)
                kind, session, _ = proto.parse_header(frames[0])
                if kind is Kind.OUTPUT:
                    self._on_output(frames, session)
                    quiet = time.monotonic() + OUTPUT_SHUTDOWN_QUIET

    def _on_hello(self, hello: msg.Hello) -> None:
        """A worker process registers (``hello`` is checked: before any socket exists)."""
        if hello.id in self.core.workers:
            return  # a repeated HELLO; WELCOME is on its way
        mismatch = hello.mismatch()
        if mismatch:
            self._refuse(hello.inbox, f"{hello.host} pid {hello.pid}", mismatch)
            return
        try:
            push = self.ctx.socket(zmq.PUSH)
        except zmq.ZMQError as e:  # out of sockets or files: the worker repeats its HELLO
            log.error("cannot accept worker %s pid %s yet: %s", hello.host, hello.pid, e)
            return
        push.linger = 0
        push.sndhwm = 0  # credit bounds what is queued
        set_heartbeats(push, self.settings.heartbeat_interval, self.settings.heartbeat_timeout)
        self.security.client(push)
        try:
            push.connect(hello.inbox)
        except zmq.ZMQError as e:
            push.close()
            raise proto.ProtocolError(f"HELLO with a bad inbox address: {e}") from None
        w = self.core.worker_joined(
            hello.id,
            hello.host_id,
            hello.host,
            hello.pid,
            hello.slots,
            time.monotonic(),
            dict(hello.resources),
        )
        self.links[hello.id] = Link(push, hello.id.encode())
        self.version_requests.note_hello(w, hello)
        self.remote_joined = self.remote_joined or w.host_id != self.local_host
        push.send_multipart(self.welcome.encode(self.session))
        log.info("%s joined (inbox %s)", w.describe(), hello.inbox)

    def _refuse(self, inbox: str, who: str, reason: str) -> None:
        """Tell a worker that cannot work with us why, once, and forget it."""
        log.error("refused worker %s: %s", who, reason)
        try:
            push = self.ctx.socket(zmq.PUSH)
        except zmq.ZMQError:
            return  # out of sockets: it hears the reason on its next HELLO
        self.security.client(push)
        try:
            push.connect(inbox)
            push.send_multipart(msg.Refuse(reason=reason).encode(), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        finally:
            push.close(linger=1000)

    def _refuse_other_version(self, frames: list[Any], e: proto.VersionMismatch) -> None:
        if e.kind != Kind.HELLO:
            log.warning("dropped a message of protocol version %d", e.version)
            return
        try:
            inbox, who = msg.Hello.inbox_of(frames)
        except proto.ProtocolError as bad:
            log.warning("dropped a HELLO of protocol version %d: %s", e.version, bad)
            return
        self._refuse(
            inbox,
            who,
            f"the worker speaks protocol version {e.version}, this executor "
            f"{PROTOCOL_VERSION}: install the same zmqexecutor version on both sides",
        )

    def _close(self) -> None:
        self._close_links()
        self.ends.stop_local()
        detach = msg.Detach().encode(self.session)
        for worker_id, link in self.links.items():
            w = self.core.workers.get(worker_id)
            with contextlib.suppress(zmq.ZMQError):
                link.push.send_multipart(detach, zmq.NOBLOCK)
            # a local worker was sent SIGTERM and may be gone: waiting for it to take the
            # DETACH would only hold up shutdown (and context.term()) by the linger
            local = w is not None and w.host_id == self.local_host
            link.push.close(linger=0 if local else int(TICK * 1000))
        self.links.clear()
        for sock in self.attach:
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart(detach, zmq.NOBLOCK)
            sock.close(linger=int(TICK * 1000))
        if self.forward_output and self.remote_joined:
            self._last_output()
        self.sink.close(linger=0)
        if self.printer is not None:
            self.printer.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.ends.close()
