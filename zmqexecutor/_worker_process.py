"""One worker process: registers with the executor, runs its initializer, then runs the
tasks it is sent, one at a time, in the order sent, and sends their results back.

It is started by its host's supervisor (``_supervisor.py``) as a fresh interpreter
(``python -c ...``), never a fork of the caller, and it is the mirror of the executor's
dispatcher: ``recv`` TASKS on its inbox, ``send`` RESULTS to the executor's sink::

    executor dispatcher --TASKS--> PULL inbox --> run in order --> PUSH --RESULTS--> sink
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import zmq

from . import _messages as msg
from . import _protocol as proto
from ._defaults import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ENV_TOKEN,
    HELLO_INTERVAL,
    INBOX_CHECK_INTERVAL,
    RESULT_BATCH_WINDOW,
    TICK,
    WORKER_EXIT_TIMEOUT,
    log_format,
)
from ._net import (
    Endpoint,
    bound_endpoint,
    guard_listener,
    parse_endpoint,
    recv_frames,
)
from ._protocol import Kind, ResultRecord
from ._resources import hold
from ._security import Security
from ._serialize import error_result, exception_result, load_args, loads, value_result
from ._status import State, StatusFile
from ._versions import package_versions
from .errors import ResultTooLargeError, TaskDeserializationError

log = logging.getLogger("zmqexecutor.worker")

#: exit code of a worker process whose initializer failed
EXIT_INIT_FAILED = 3
#: exit code of a worker process (and its host) that the executor refused (versions)
EXIT_REFUSED = 4
#: exit code of a worker process that found no free port for its inbox in its range
EXIT_NO_PORT = 5
#: task ids a worker process remembers, so that a replayed task never runs twice
SEEN_TASKS = 65536

_POLLIN = int(zmq.POLLIN)


class _Refused(Exception):
    """The executor refused this worker (versions differ): a person must act."""


class _ExecutorGone(Exception):
    """A message to the executor cannot leave, and this process's supervisor is gone."""


class _NoPort(Exception):
    """Every port of the inbox range is taken: the supervisor retries later."""


class WorkerProcess:
    """Registers with the executor, runs its initializer, then runs tasks one at a time."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.worker_id: str = config["worker_id"]
        self._id_bytes = self.worker_id.encode()
        self.origin = f"worker {socket.gethostname()} pid {os.getpid()}"
        self.status = StatusFile(config["status"])
        self.session = proto.NO_SESSION
        self.max_tasks: int | None = None
        self.tasks_done = 0
        self.draining = False
        self.functions: proto.FunctionSlots[Callable[..., Any] | BaseException] = (
            proto.FunctionSlots()
        )
        self.max_message_size = DEFAULT_MAX_MESSAGE_SIZE
        self.seen: set[int] = set()
        #: moving average of each callable's run time here: may its results wait in a batch?
        self.durations: dict[bytes, float] = {}
        self.seen_order: deque[int] = deque()
        #: a message read between tasks that waits until they are done (DETACH, ASK_VERSIONS)
        self._stashed: list[Any] | None = None
        self.ctx = zmq.Context()
        token = os.environ.get(ENV_TOKEN) if config.get("secure") else None
        self.security = Security(token)
        self.security.start(self.ctx)
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.linger = 0
        self.inbox.maxmsgsize = DEFAULT_MAX_MESSAGE_SIZE
        guard_listener(self.inbox, network=config["inbox"].startswith("tcp:"))
        self.security.server(self.inbox)
        self.sink = self.ctx.socket(zmq.PUSH)
        self.security.client(self.sink)
        # results are flushed before a clean exit; a dead executor must not hang us forever
        self.sink.linger = int(WORKER_EXIT_TIMEOUT * 1000)
        # queue HELLOs only on a live connection, so a late executor gets no backlog of them
        self.sink.immediate = True
        # SIGTERM only sets ``draining`` (raising from a handler can surface anywhere, even in
        # a zmq destructor); the signal module writes a byte here, which ends any wait at once.
        self.wakeup, self._wakeup_w = socket.socketpair()
        for sock in (self.wakeup, self._wakeup_w):
            sock.setblocking(False)
        # A connection to the executor that drops (it died, was restarted on the same
        # address, or the network cut it) ends the session this process registered in: an
        # executor that comes back, or a new one, must see a fresh registration. The host's
        # supervisor may not see it happen (frozen, or connected only afterwards).
        self._sink_events = self.sink.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.executor_dropped = False
        self._inbox_poller = zmq.Poller()
        self._inbox_poller.register(self.inbox, zmq.POLLIN)
        self._inbox_poller.register(self.wakeup, zmq.POLLIN)
        self._inbox_poller.register(self._sink_events, zmq.POLLIN)
        self._sink_poller = zmq.Poller()
        self._sink_poller.register(self.sink, zmq.POLLOUT)
        self._sink_poller.register(self.wakeup, zmq.POLLIN)

    def _wait(self, poller: zmq.Poller, sock: zmq.Socket[bytes], timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``sock`` (as registered in ``poller``); a signal ends
        the wait early. True when ``sock`` is ready."""
        events = dict(poller.poll(int(timeout * 1000)))
        if self.wakeup in events:
            with contextlib.suppress(BlockingIOError):
                self.wakeup.recv(64)
        if self._sink_events in events:
            with contextlib.suppress(zmq.Again):
                while True:
                    self._sink_events.recv_multipart(zmq.NOBLOCK)
            self.executor_dropped = True
        return sock in events

    def run(self) -> int:
        """Serve until drained, told to leave, or orphaned; the exit code."""
        # signals reach the main thread only (benchmarks run simulated workers in threads)
        on_signals = threading.current_thread() is threading.main_thread()
        if on_signals:
            signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        try:
            return self._serve()
        except _Refused as e:
            log.error("%s was refused by the executor: %s", self.origin, e)
            self.status.state(State.REFUSED)
            return EXIT_REFUSED
        except _NoPort as e:
            log.error("%s: %s", self.origin, e)
            return EXIT_NO_PORT
        except _ExecutorGone as e:
            log.error("%s: %s; leaving", self.origin, e)
            self.sink.linger = 0  # nobody is left to take what waits there
            self.status.state(State.CLEAN_EXIT)
            return 0
        finally:
            if on_signals:
                signal.set_wakeup_fd(-1)
            self.wakeup.close()
            self._wakeup_w.close()
            self.inbox.close()
            self.sink.disable_monitor()
            self._sink_events.close(linger=0)
            self.sink.close()
            self.security.stop()
            self.ctx.term()

    def _serve(self) -> int:
        self._bind_inbox()
        inbox = bound_endpoint(self.inbox)
        if self.config.get("advertise"):
            # a port mapping (NAT, docker -p) moves every port of the range by one offset
            port = int(parse_endpoint(inbox).port) + int(self.config.get("advertise_offset") or 0)
            inbox = str(Endpoint("tcp", self.config["advertise"], str(port)))
        self.sink.connect(self.config["sink"])
        welcome = self._register(inbox)
        if welcome is None:
            self.sink.linger = 0  # only HELLOs can wait there: never hold up our exit for them
            self.status.state(State.CLEAN_EXIT)
            return 0
        if not self._initialize(welcome):
            return EXIT_INIT_FAILED
        self.status.state(State.READY)
        if not self._send_ready():
            self.sink.linger = 0
            self.status.state(State.CLEAN_EXIT)
            return 0
        self._loop()
        self.status.state(State.CLEAN_EXIT)
        return 0

    def _send_ready(self) -> bool:
        """Say READY once the sink takes it; False when told to leave before it does.

        immediate=True makes a plain send block while the executor is not connected: one
        that shut down just after our WELCOME would hold us until SIGKILL. Stopped
        (SIGTERM) while the sink takes it, we still say READY: ``_loop`` then says BYE."""
        ready = msg.Ready(id=self.worker_id).encode(self.session)
        while True:
            if self._wait(self._sink_poller, self.sink, 0.0 if self.draining else TICK):
                with contextlib.suppress(zmq.Again):
                    self.sink.send_multipart(ready, zmq.NOBLOCK)
                    return True
            if self.draining or self._orphaned():
                return False

    def _bind_inbox(self) -> None:
        """Bind the inbox: to ``inbox`` as given, or to the first free port of
        ``inbox_ports`` (the supervisor's order: its choice first, then the others)."""
        ports: list[int] | None = self.config.get("inbox_ports")
        if not ports:
            self.inbox.bind(self.config["inbox"])
            return
        host = parse_endpoint(self.config["inbox"]).host
        for port in ports:
            try:
                self.inbox.bind(str(Endpoint("tcp", host, str(port))))
                return
            except zmq.ZMQError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                log.info("%s: inbox port %d is in use, trying another", self.origin, port)
        raise _NoPort(
            f"every port of the inbox range {min(ports)}-{max(ports)} on {host} is in use "
            "(by this host's other worker processes or another program); free one, or widen "
            "the range (--listen tcp://HOST:FIRST-LAST or --inbox-ports FIRST-LAST)"
        )

    def _register(self, inbox: str) -> msg.Welcome | None:
        """Say HELLO until the executor WELCOMEs us; None if told to stop first."""
        hello = msg.Hello(
            id=self.worker_id,
            host=socket.gethostname(),
            host_id=self.config["host_id"],
            pid=os.getpid(),
            inbox=inbox,
            slots=1,
            resources=self.config.get("resources") or {},
            python=proto.python_version(),
            cloudpickle=proto.cloudpickle_major(),
            versions=proto.host_versions(),
        ).encode()
        while not self.draining:
            # immediate=True: writable only once connected, so a HELLO is never queued stale
            if self._wait(self._sink_poller, self.sink, HELLO_INTERVAL):
                # the executor may close its end between the poll and the send (a shutdown
                # while we start): the next round, or the SIGTERM that comes with it, decides
                with contextlib.suppress(zmq.Again):
                    self.sink.send_multipart(hello, zmq.NOBLOCK)
            deadline = time.monotonic() + HELLO_INTERVAL
            while not self.draining and (timeout := deadline - time.monotonic()) > 0:
                if not self._wait(self._inbox_poller, self.inbox, timeout + 0.001):
                    continue
                frames = recv_frames(self.inbox)
                try:
                    try:
                        kind, session, _ = proto.parse_header(frames[0])
                    except proto.VersionMismatch as e:
                        if e.kind != Kind.REFUSE:  # REFUSE is understood across versions
                            raise
                        kind, session = Kind.REFUSE, proto.NO_SESSION
                    if kind is Kind.REFUSE:
                        raise _Refused(msg.Refuse.decode(frames).reason)
                    if kind is Kind.WELCOME:
                        welcome = msg.Welcome.decode(frames)
                        self.session = session
                        self.status.session(session)
                        return welcome
                except proto.ProtocolError as e:
                    log.warning("dropped a bad message while registering: %s", e)
                    continue
                if kind is Kind.DETACH:
                    self.sink.linger = 0
                    return None
            if self._orphaned():
                return None
        return None

    def _initialize(self, welcome: msg.Welcome) -> bool:
        limits = [n for n in (welcome.max_tasks_per_child, self.config.get("max_tasks")) if n]
        self.max_tasks = min(limits) if limits else None
        self.max_message_size = welcome.max_message_size
        self.status.task_timeout(welcome.task_timeout or 0.0)
        self._choose_output(welcome.forward_output)
        if not welcome.initializer:
            return True
        try:
            initializer, initargs = loads(welcome.initializer)
            initializer(*initargs)
        except BaseException as e:
            tb = traceback.format_exc()
            log.error("initializer failed in %s: %r", self.origin, e)
            self.status.state(State.INIT_FAILED)
            failed = msg.InitFailed(
                id=self.worker_id, error=f"{type(e).__name__}: {e}", traceback=tb
            )
            self._send_to_sink(failed.encode(self.session))
            return False
        return True

    def _choose_output(self, forward: bool) -> None:
        """On a remote host our stdout and stderr are pipes to the supervisor, which
        forwards what we write to the executor. An executor that does not want it
        (``forward_output=False``) gets none: we write to the host's terminal directly,
        and the supervisor, seeing the pipes close, has nothing more to do for us."""
        fds = self.config.get("terminal_fds")
        if not fds:
            return  # a local worker process: stdout and stderr are the executor's own
        if not forward:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)

    def _orphaned(self) -> bool:
        return os.getppid() != int(self.config["parent_pid"])

    def _loop(self) -> None:
        self.executor_dropped = False  # a drop before registering ended nothing
        while not self.draining:
            if self.executor_dropped:
                log.info("%s: the connection to the executor dropped; leaving", self.origin)
                break  # BYE reaches the executor if it is still the same one
            if self._stashed is not None:
                frames, self._stashed = self._stashed, None
            elif not self._wait(self._inbox_poller, self.inbox, TICK):
                if self._orphaned():
                    log.error("%s: supervisor is gone, exiting", self.origin)
                    return
                continue
            else:
                frames = recv_frames(self.inbox)
            try:
                kind, session, _ = proto.parse_header(frames[0])
                if session != self.session:
                    raise proto.ProtocolError("message from another session")
                if kind is Kind.DETACH:
                    self.sink.linger = 0  # the executor has every result already, and leaves
                    return
                if kind is Kind.ASK_VERSIONS:
                    self._answer_versions(frames)
                    continue
                if kind is Kind.RECALL:  # everything it asks for has started already
                    self._give_back(deque(), msg.Recall.decode(frames))
                    continue
                if kind is not Kind.TASKS:
                    raise proto.ProtocolError(f"unexpected {kind.name}")
                recipient, functions, tasks = proto.decode_tasks(frames)
                if recipient != self._id_bytes:
                    raise proto.ProtocolError("TASKS for another worker process")
            except proto.ProtocolError as e:
                log.warning("%s dropped a bad message: %s", self.origin, e)
                continue
            if self._run_tasks(functions, tasks):
                return
        # SIGTERM while idle: nothing runs, so leave at once
        self.sink.linger = 200  # BYE is a courtesy: never wait long for a gone executor
        self._say_bye()

    def _answer_versions(self, frames: list[Any]) -> None:
        """Name the installed versions of the packages asked about (between tasks: a busy
        process answers when its tasks are done, see ``ZmqExecutor.versions``)."""
        ask = msg.AskVersions.decode(frames)
        versions = package_versions(ask.packages)
        reply = msg.VersionsReply(id=self.worker_id, request=ask.request, versions=versions)
        with contextlib.suppress(zmq.Again):  # no executor to hear it: nobody waits for it
            self.sink.send_multipart(reply.encode(self.session), zmq.NOBLOCK)

    def _run_tasks(self, functions: dict[bytes, memoryview], tasks: list[proto.TaskRecord]) -> bool:
        """Run a batch; return True when this process must exit (task limit or SIGTERM)."""
        for digest, data in functions.items():
            self._learn_function(digest, data)
        # Results of short tasks are batched, but none is held longer than about the window:
        # they are sent once the oldest is that old, and before any task that may run long
        # (a crash would lose them, and a slow task would delay them).
        results: list[ResultRecord] = []
        held_since = checked = 0.0
        # names bound once: this loop runs for every task (a no-op task costs a few µs here)
        clock, durations, status = time.perf_counter, self.durations, self.status
        limit = self.max_message_size - proto.RECORD_OVERHEAD
        queue = deque(tasks)
        while queue:
            task = queue.popleft()
            if self.draining:
                break  # the rest never started: BYE tells the executor to send them elsewhere
            if self._replayed(task.task_id):
                log.warning(
                    "%s ignored task %d: it was delivered before", self.origin, task.task_id
                )
                continue
            expected = durations.get(task.digest)
            if results and (expected is None or expected > RESULT_BATCH_WINDOW):
                self._send_results(results)
                results = []
            start = clock()
            status.started(task.task_id)
            result = self._run_one(task)
            if result.buffers or len(result.payload) > limit:
                result = self._check_size(result)
            status.finished(task.task_id)
            end = clock()
            result.duration = end - start
            proto.learn_duration(durations, task.digest, result.duration)
            if not results:
                held_since = start
            results.append(result)
            self.tasks_done += 1
            if self.max_tasks is not None and self.tasks_done >= self.max_tasks:
                self.draining = True
            if end - held_since > RESULT_BATCH_WINDOW:
                self._send_results(results)
                results = []
            if end - checked > INBOX_CHECK_INTERVAL and queue:
                checked = end
                self._between_tasks(queue)
        if results:
            self._send_results(results)
        if self.draining:
            self._say_bye()
        return self.draining

    def _between_tasks(self, queue: deque[proto.TaskRecord]) -> None:
        """Read the inbox without waiting: new TASKS join ``queue``, a RECALL is answered
        from it (a task it holds has not started), anything else waits until it is done."""
        while self._stashed is None and cast(int, self.inbox.get(zmq.EVENTS)) & _POLLIN:
            frames = recv_frames(self.inbox, zmq.NOBLOCK)
            try:
                kind, session, _ = proto.parse_header(frames[0])
                if session != self.session:
                    raise proto.ProtocolError("message from another session")
                if kind is Kind.TASKS:
                    recipient, functions, tasks = proto.decode_tasks(frames)
                    if recipient != self._id_bytes:
                        raise proto.ProtocolError("TASKS for another worker process")
                    for digest, data in functions.items():
                        self._learn_function(digest, data)
                    queue.extend(tasks)
                elif kind is Kind.RECALL:
                    self._give_back(queue, msg.Recall.decode(frames))
                else:
                    self._stashed = frames
            except proto.ProtocolError as e:
                log.warning("%s dropped a bad message: %s", self.origin, e)

    def _give_back(self, queue: deque[proto.TaskRecord], recall: msg.Recall) -> None:
        """Answer a RECALL: take the tasks asked for out of ``queue`` (never started) and
        name them; the others asked for have started, and run here."""
        wanted = set(recall.tasks)
        back = [t.task_id for t in queue if t.task_id in wanted]
        if back:
            kept = [t for t in queue if t.task_id not in wanted]
            queue.clear()
            queue.extend(kept)
        reply = msg.Returned(id=self.worker_id, recall=recall.recall, tasks=tuple(back))
        self._send_to_sink(reply.encode(self.session))

    def _say_bye(self) -> None:
        """Tell the executor we leave: what it sent us and we did not start goes elsewhere."""
        bye = msg.Bye(id=self.worker_id, done=self.tasks_done).encode(self.session)
        # immediate=True: with the executor gone a plain send would block forever. An
        # executor that shuts down closes its sink as it stops us: that disconnect ends the
        # wait at once (a worker that had just registered held up shutdown() by 100 ms).
        poller = zmq.Poller()
        poller.register(self.sink, zmq.POLLOUT)
        poller.register(self._sink_events, zmq.POLLIN)
        if self.sink in dict(poller.poll(100)):
            with contextlib.suppress(zmq.Again):
                self.sink.send_multipart(bye, zmq.NOBLOCK)

    def _replayed(self, task_id: int) -> bool:
        if task_id in self.seen:
            return True
        self.seen.add(task_id)
        self.seen_order.append(task_id)
        if len(self.seen_order) > SEEN_TASKS:
            self.seen.discard(self.seen_order.popleft())
        return False

    def _check_size(self, result: ResultRecord) -> ResultRecord:
        """A result over the executor's frame limit becomes an error it can receive."""
        size = proto.frame_size(result.payload, result.buffers)
        if size <= self.max_message_size:
            return result
        return error_result(
            result.task_id,
            ResultTooLargeError,
            f"the task ran, but its pickled result of {size} bytes is over the executor's "
            f"max_message_size={self.max_message_size}: return less data (write large results "
            "to shared storage), or raise max_message_size",
        )

    def _send_results(self, results: list[ResultRecord]) -> None:
        costs = [len(r.payload) + proto.RECORD_OVERHEAD for r in results]
        if sum(costs) <= self.max_message_size:  # almost always: one message
            self._send_result_batch(results)
            return
        for start, end in proto.under_limit(costs, self.max_message_size):
            self._send_result_batch(results[start:end])

    def _send_result_batch(self, results: list[ResultRecord]) -> None:
        frames = proto.encode_results(self.session, self._id_bytes, results)
        try:
            if len(frames) == 1:
                self.sink.send(frames[0], zmq.NOBLOCK)  # send_multipart's loop costs a µs
            else:
                self.sink.send_multipart(frames, zmq.NOBLOCK, copy=False)  # for buffers
        except zmq.Again:  # the executor is not connected (immediate) or its queue is full
            self._send_to_sink(frames, copy=len(frames) == 1)

    def _send_to_sink(self, frames: list[Any], copy: bool = True) -> None:
        """Send ``frames`` to the executor, waiting while it cannot take them. immediate=True
        makes a send wait while the executor is not connected, so a blocking send held a
        local worker whose executor (and supervisor thread) had died forever: orphans were
        found blocked in a RESULTS send for hours. This one gives up when the supervisor is
        gone (``_ExecutorGone``). A dropped connection is waited out: across a partition
        the result arrives when the link heals (the executor discards it if it declared the
        host lost), and a remote supervisor ends its processes when the executor is gone."""
        while True:
            try:
                self.sink.send_multipart(frames, zmq.NOBLOCK, copy=copy)
                return
            except zmq.Again:
                pass
            if self._orphaned():
                raise _ExecutorGone("the supervisor is gone")
            self._wait(self._sink_poller, self.sink, TICK)

    def _learn_function(self, digest: bytes, data: memoryview) -> None:
        fn: Callable[..., Any] | BaseException
        try:
            fn = loads(data)
        except BaseException as e:
            e.__traceback_text__ = traceback.format_exc()  # type: ignore[attr-defined]
            fn = e
        self.functions.add(digest, fn)

    def _run_one(self, task: proto.TaskRecord) -> ResultRecord:
        fn = self.functions.get(task.digest)
        try:
            if fn is None:
                raise LookupError("the executor did not send the callable (protocol error)")
            if isinstance(fn, BaseException):
                raise fn
            args, kwargs = load_args(task.payload, task.buffers)
        except BaseException as e:
            tb = getattr(e, "__traceback_text__", None) or traceback.format_exc()
            return error_result(
                task.task_id,
                TaskDeserializationError,
                f"{self.origin} could not unpickle the task: {type(e).__name__}: {e}; the task "
                "did not run (is its module importable on the worker, with the same versions?)",
                tb,
            )
        if task.resources:
            hold(task.resources)  # current_resources() tells the task which units it holds
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:
            return exception_result(task.task_id, e, self.origin)
        finally:
            if task.resources:
                hold({})
        return value_result(task.task_id, value)


def child_main() -> None:
    """Entry point of a worker process: ``python -c '...child_main()' CONFIG_JSON``."""
    config = json.loads(sys.argv[1])
    if config.get("sys_path"):
        sys.path[:] = config["sys_path"]
    logging.basicConfig(
        level=config.get("log_level", "WARNING"),
        format=log_format(),
    )
    if config.get("terminal_fds") and sys.stdout is not None:
        # stdout is a pipe to the supervisor: write each line at once, as to a terminal,
        # so that it arrives promptly and survives a crash (os._exit, a segfault)
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # Ctrl-C in a terminal reaches the whole process group: the executor decides, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = WorkerProcess(config)

    def drain(signum: int, frame: object) -> None:
        if worker.status.end_now():  # terminate_workers(): end as SIGTERM does by default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        worker.draining = True  # a running task finishes first; waits end at once

    signal.signal(signal.SIGTERM, drain)
    code = worker.run()
    # Leave as multiprocessing's forked children do: flush, then os._exit. A full
    # interpreter teardown costs ~40 ms here, which every shutdown() would wait for; atexit
    # handlers a task registered do not run (nor do they in ProcessPoolExecutor's children).
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
