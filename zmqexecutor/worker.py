"""The worker side: the loop of one worker process, and the supervisor that keeps a host's
worker processes running and reports the ones that die.

::

    executor                          worker host
    --------                          -----------
    PUSH, one per worker process ---> PULL inbox   (worker process 1..N: runs tasks)
    PULL sink <---------------------- PUSH         (each worker process: HELLO, RESULTS, BYE)
              <---------------------- PUSH         (the supervisor: DIED reports)
    PUSH attach --------------------> PULL rendezvous (the supervisor; only with --listen)

Each worker process is a worker in the executor's eyes (one slot, its own inbox), so a task
makes one hop each way. The supervisor starts worker processes as fresh interpreters
(``python -c ...``), never by forking the caller, so a user's script without a
``__main__`` guard is never re-run. A worker process writes the id of the task it starts
and finishes into a small shared status file; when it dies, the supervisor reads the file
and tells the executor exactly which task was running, so that only that task fails and
the tasks it had merely received run elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import zmq

from . import _protocol as proto
from ._defaults import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    ENV_TOKEN,
    HELLO_INTERVAL,
    RESPAWN_BACKOFF_MAX,
    RESPAWN_BACKOFF_MIN,
    RESULT_BATCH_WINDOW,
    TICK,
    WORKER_EXIT_TIMEOUT,
)
from ._liveness import HostLiveness, SessionOver
from ._net import (
    Endpoint,
    PortRange,
    bound_endpoint,
    check_port_plan,
    concrete,
    guard_listener,
    parse_advertise,
    parse_endpoint,
    parse_listen,
    parse_port_range,
    port_candidates,
    recv_frames,
    route_to,
    set_heartbeats,
)
from ._protocol import Kind, ResultRecord
from ._security import Security, check_exposure, resolve_token
from ._serialize import error_result, exception_result, load_args, loads, value_result
from .errors import ConfigurationError, ResultTooLargeError, TaskDeserializationError

log = logging.getLogger("zmqexecutor.worker")

#: worker process status file: started task id, finished task id, state, session, task timeout
_STATUS = struct.Struct("<qqq8sd")
STARTING, READY, CLEAN_EXIT, INIT_FAILED, REFUSED = range(5)
#: callables a worker process keeps; the executor evicts in the same (insertion) order
FN_SLOTS = 1024
#: exit code of a worker process whose initializer failed
EXIT_INIT_FAILED = 3
#: exit code of a worker process (and its host) that the executor refused (versions)
EXIT_REFUSED = 4
#: exit code of a worker process that found no free port for its inbox in its range
EXIT_NO_PORT = 5
#: task ids a worker process remembers, so that a replayed task never runs twice
SEEN_TASKS = 65536


# -- one worker process -----------------------------------------------------------------


class _Status:
    """The shared status file of one worker process (written by it, read by its supervisor)."""

    def __init__(self, path: str) -> None:
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), _STATUS.size)

    def started(self, task_id: int) -> None:
        struct.pack_into("<q", self._map, 0, task_id)

    def finished(self, task_id: int) -> None:
        struct.pack_into("<q", self._map, 8, task_id)

    def state(self, state: int) -> None:
        struct.pack_into("<q", self._map, 16, state)

    def session(self, session: bytes) -> None:
        struct.pack_into("<8s", self._map, 24, session)

    def task_timeout(self, seconds: float) -> None:
        struct.pack_into("<d", self._map, 32, seconds)


@dataclass(frozen=True)
class StatusReading:
    started: int
    finished: int
    state: int
    session: bytes
    task_timeout: float

    @property
    def running(self) -> int:
        """The task id running now, or 0."""
        return self.started if self.started != self.finished else 0


def read_status(path: str) -> StatusReading:
    with open(path, "rb") as f:
        return StatusReading(*_STATUS.unpack(f.read(_STATUS.size)))


def python_version() -> str:
    """The Python minor version; pickled code needs the same one on both sides."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def cloudpickle_major() -> str:
    return str(cloudpickle.__version__).split(".")[0]


def version_mismatch(hello: dict[str, Any]) -> str | None:
    """Why a worker that said ``hello`` cannot run our pickles, naming both sides; or None."""
    ours = {"python": python_version(), "cloudpickle": cloudpickle_major()}
    for name, mine in ours.items():
        theirs = hello.get(name)
        if theirs != mine:
            what = "Python" if name == "python" else "cloudpickle major version"
            return (
                f"the worker runs {what} {theirs}, this executor {mine}; pickled callables "
                f"need the same {what} on both sides"
            )
    return None


class _Refused(Exception):
    """The executor refused this worker (versions differ): a person must act."""


class _NoPort(Exception):
    """Every port of the inbox range is taken: the supervisor retries later."""


class WorkerProcess:
    """Registers with the executor, runs its initializer, then runs tasks one at a time."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.worker_id: str = config["worker_id"]
        self.origin = f"worker {socket.gethostname()} pid {os.getpid()}"
        self.status = _Status(config["status"])
        self.session = proto.NO_SESSION
        self.max_tasks: int | None = None
        self.tasks_done = 0
        self.draining = False
        self.functions: OrderedDict[bytes, Callable[..., Any] | BaseException] = OrderedDict()
        self.max_message_size = DEFAULT_MAX_MESSAGE_SIZE
        self.seen: set[int] = set()
        #: moving average of each callable's run time here: may its results wait in a batch?
        self.durations: dict[bytes, float] = {}
        self.seen_order: deque[int] = deque()
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
        self._inbox_poller = zmq.Poller()
        self._inbox_poller.register(self.inbox, zmq.POLLIN)
        self._inbox_poller.register(self.wakeup, zmq.POLLIN)
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
            self.status.state(REFUSED)
            return EXIT_REFUSED
        except _NoPort as e:
            log.error("%s: %s", self.origin, e)
            return EXIT_NO_PORT
        finally:
            if on_signals:
                signal.set_wakeup_fd(-1)
            self.wakeup.close()
            self._wakeup_w.close()
            self.inbox.close()
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
            self.status.state(CLEAN_EXIT)
            return 0
        if not self._initialize(welcome):
            return EXIT_INIT_FAILED
        self.status.state(READY)
        self.sink.send_multipart(proto.control(Kind.READY, {"id": self.worker_id}, self.session))
        self._loop()
        self.status.state(CLEAN_EXIT)
        return 0

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

    def _register(self, inbox: str) -> list[Any] | None:
        """Say HELLO until the executor WELCOMEs us; None if told to stop first."""
        hello = proto.control(
            Kind.HELLO,
            {
                "id": self.worker_id,
                "host": socket.gethostname(),
                "host_id": self.config["host_id"],
                "pid": os.getpid(),
                "inbox": inbox,
                "slots": 1,
                "python": python_version(),
                "cloudpickle": cloudpickle_major(),
            },
        )
        while not self.draining:
            # immediate=True: writable only once connected, so a HELLO is never queued stale
            if self._wait(self._sink_poller, self.sink, HELLO_INTERVAL):
                self.sink.send_multipart(hello, zmq.NOBLOCK)
            deadline = time.monotonic() + HELLO_INTERVAL
            while not self.draining and (timeout := deadline - time.monotonic()) > 0:
                if not self._wait(self._inbox_poller, self.inbox, timeout + 0.001):
                    continue
                frames = recv_frames(self.inbox)
                try:
                    kind, session, _ = proto.parse_header(frames[0])
                except proto.VersionMismatch as e:
                    if e.kind == Kind.REFUSE:  # REFUSE is understood across versions
                        raise _Refused(proto.parse_control(frames).get("reason", "")) from None
                    log.warning("dropped a message while registering: %s", e)
                    continue
                except proto.ProtocolError as e:
                    log.warning("dropped a bad message while registering: %s", e)
                    continue
                if kind is Kind.REFUSE:
                    raise _Refused(str(proto.parse_control(frames).get("reason", "")))
                if kind is Kind.WELCOME:
                    self.session = session
                    self.status.session(session)
                    return frames
                if kind is Kind.DETACH:
                    self.sink.linger = 0
                    return None
            if self._orphaned():
                return None
        return None

    def _initialize(self, welcome: list[Any]) -> bool:
        body = proto.parse_control(welcome, n_frames=3)
        limits = [n for n in (body.get("max_tasks_per_child"), self.config.get("max_tasks")) if n]
        self.max_tasks = min(limits) if limits else None
        self.max_message_size = int(body.get("max_message_size") or DEFAULT_MAX_MESSAGE_SIZE)
        self.status.task_timeout(float(body.get("task_timeout") or 0.0))
        if len(welcome) < 3 or len(welcome[2]) == 0:
            return True
        try:
            initializer, initargs = loads(welcome[2])
            initializer(*initargs)
        except BaseException as e:
            tb = traceback.format_exc()
            log.error("initializer failed in %s: %r", self.origin, e)
            self.status.state(INIT_FAILED)
            self.sink.send_multipart(
                proto.control(
                    Kind.INIT_FAILED,
                    {"id": self.worker_id, "error": f"{type(e).__name__}: {e}", "traceback": tb},
                    self.session,
                )
            )
            return False
        return True

    def _orphaned(self) -> bool:
        return os.getppid() != int(self.config["parent_pid"])

    def _loop(self) -> None:
        while not self.draining:
            if not self._wait(self._inbox_poller, self.inbox, TICK):
                if self._orphaned():
                    log.error("%s: supervisor is gone, exiting", self.origin)
                    return
                continue
            frames = recv_frames(self.inbox)
            try:
                kind, session, _ = proto.parse_header(frames[0])
                if session != self.session:
                    raise proto.ProtocolError("message from another session")
                if kind is Kind.DETACH:
                    self.sink.linger = 0  # the executor has every result already, and leaves
                    return
                if kind is not Kind.TASKS:
                    raise proto.ProtocolError(f"unexpected {kind.name}")
                functions, tasks = proto.decode_tasks(frames)
            except proto.ProtocolError as e:
                log.warning("%s dropped a bad message: %s", self.origin, e)
                continue
            if self._run_tasks(functions, tasks):
                return
        # SIGTERM while idle: nothing runs, so leave at once
        self.sink.linger = 200  # BYE is a courtesy: never wait long for a gone executor
        self._say_bye()

    def _run_tasks(self, functions: dict[bytes, memoryview], tasks: list[proto.TaskRecord]) -> bool:
        """Run a batch; return True when this process must exit (task limit or SIGTERM)."""
        for digest, data in functions.items():
            self._learn_function(digest, data)
        # Results of short tasks are batched, but none is held longer than about the window:
        # they are sent once the oldest is that old, and before any task that may run long
        # (a crash would lose them, and a slow task would delay them).
        results: list[ResultRecord] = []
        held_since = 0.0
        for task in tasks:
            if self.draining:
                break  # the rest never started: BYE tells the executor to send them elsewhere
            if self._replayed(task.task_id):
                log.warning(
                    "%s ignored task %d: it was delivered before", self.origin, task.task_id
                )
                continue
            expected = self.durations.get(task.digest)
            if results and (expected is None or expected > RESULT_BATCH_WINDOW):
                self._send_results(results)
                results = []
            start = time.perf_counter()
            self.status.started(task.task_id)
            result = self._check_size(self._run_one(task))
            self.status.finished(task.task_id)
            end = time.perf_counter()
            result.duration = end - start
            self._learn_duration(task.digest, result.duration)
            if not results:
                held_since = start
            results.append(result)
            self.tasks_done += 1
            if self.max_tasks is not None and self.tasks_done >= self.max_tasks:
                self.draining = True
            if end - held_since > RESULT_BATCH_WINDOW:
                self._send_results(results)
                results = []
        if results:
            self._send_results(results)
        if self.draining:
            self._say_bye()
        return self.draining

    def _learn_duration(self, digest: bytes, duration: float) -> None:
        old = self.durations.get(digest)
        self.durations[digest] = duration if old is None else old + (duration - old) / 8
        if len(self.durations) > FN_SLOTS:
            del self.durations[next(iter(self.durations))]

    def _say_bye(self) -> None:
        """Tell the executor we leave: what it sent us and we did not start goes elsewhere."""
        bye = {"id": self.worker_id, "done": self.tasks_done}
        # immediate=True: with the executor gone a plain send would block forever
        if self.sink.poll(100, zmq.POLLOUT):
            with contextlib.suppress(zmq.Again):
                self.sink.send_multipart(proto.control(Kind.BYE, bye, self.session), zmq.NOBLOCK)

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
        if (
            not result.buffers
            and len(result.payload) + proto.RECORD_OVERHEAD <= self.max_message_size
        ):
            return result  # the common case, without building the max() below
        size = max(
            len(result.payload) + proto.RECORD_OVERHEAD,
            *(memoryview(b).nbytes for b in result.buffers),
            0,
        )
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
        # ZMQ_MAXMSGSIZE bounds each frame: keep each message's first frame under the limit
        start, size = 0, 0
        for end, result in enumerate(results):
            cost = len(result.payload) + proto.RECORD_OVERHEAD
            if end > start and size + cost > self.max_message_size:
                self._send_result_batch(results[start:end])
                start, size = end, 0
            size += cost
        self._send_result_batch(results[start:])

    def _send_result_batch(self, results: list[ResultRecord]) -> None:
        frames = proto.encode_results(self.session, self.worker_id.encode(), results)
        self.sink.send_multipart(frames, copy=len(frames) == 1)  # zero-copy only pays for buffers

    def _learn_function(self, digest: bytes, data: memoryview) -> None:
        fn: Callable[..., Any] | BaseException
        try:
            fn = loads(data)
        except BaseException as e:
            e.__traceback_text__ = traceback.format_exc()  # type: ignore[attr-defined]
            fn = e
        self.functions[digest] = fn
        if len(self.functions) > FN_SLOTS:
            self.functions.popitem(last=False)

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
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:
            return exception_result(task.task_id, e, self.origin)
        return value_result(task.task_id, value)


def child_main() -> None:
    """Entry point of a worker process: ``python -c '...child_main()' CONFIG_JSON``."""
    config = json.loads(sys.argv[1])
    if config.get("sys_path"):
        sys.path[:] = config["sys_path"]
    logging.basicConfig(
        level=config.get("log_level", "WARNING"),
        format=f"%(asctime)s {socket.gethostname()} %(name)s[%(process)d] %(levelname)s "
        "%(message)s",
    )
    # Ctrl-C in a terminal reaches the whole process group: the executor decides, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = WorkerProcess(config)

    def drain(signum: int, frame: object) -> None:
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


# -- the supervisor of one host ------------------------------------------------------------


@dataclass
class _Child:
    slot: int
    worker_id: str
    status_path: str
    proc: subprocess.Popen[bytes]
    pidfd: int | None
    #: the inbox port it was told to try first (with a fixed inbox port range)
    inbox_port: int | None = None
    #: the running task and since when (for task_timeout)
    running: int = 0
    since: float = 0.0
    timed_out: float = 0.0
    #: why the supervisor killed it on purpose (a new incarnation), for the DIED report
    replaced: str = ""


@dataclass
class _Slot:
    failures: int = 0  #: consecutive deaths before becoming ready
    not_before: float = 0.0  #: respawn backoff
    child: _Child | None = None
    retired: bool = field(default=False)  #: never respawn (initializer failed in local mode)


class Supervisor:
    """Keeps ``processes`` worker processes connected to an executor's sink.

    Runs in the ``zmqexecutor-worker`` process (remote hosts) or in a thread of the executor
    (local mode). With ``rendezvous`` it binds that endpoint and waits for an executor to
    ATTACH (mode 3); otherwise it connects its worker processes to ``sink`` at once (mode 2).
    """

    def __init__(
        self,
        *,
        processes: int,
        sink: str | None = None,
        rendezvous: str | None = None,
        inbox_host: str | None = None,
        inbox_ports: PortRange | None = None,
        advertise: str | None = None,
        advertise_ports: PortRange | None = None,
        local_dir: str | None = None,
        respawn_init_failed: bool = True,
        sys_path: list[str] | None = None,
        log_level: str | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        token: str | None = None,
        max_tasks_per_child: int | None = None,
        once: bool = False,
        idle_timeout: float | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        in_executor: bool = False,
    ) -> None:
        self.processes = processes
        self.sink = sink
        self.rendezvous = rendezvous
        self.inbox_host = inbox_host
        self.inbox_ports = inbox_ports
        self.advertise = advertise
        self.advertise_ports = advertise_ports
        #: when each inbox port was last given to a worker process (monotonic seconds)
        self._ports_handed_out: dict[int, float] = {}
        self.local_dir = local_dir
        self.respawn_init_failed = respawn_init_failed
        self.sys_path = sys_path
        self.log_level = log_level or logging.getLevelName(logging.getLogger().level)
        self.slots = [_Slot() for _ in range(processes)]
        self.stopping = False
        self._terminate_requested = False
        self.host_id = uuid.uuid4().hex[:16]
        self._token = token
        self.security = Security(token)
        self.refused = False
        self.max_tasks_per_child = max_tasks_per_child
        self.once = once
        self.idle_timeout = idle_timeout
        self._last_served = time.monotonic()
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._next_heartbeat = 0.0
        self._liveness = HostLiveness(heartbeat_timeout, time.monotonic())
        self._monitor: zmq.Socket[bytes] | None = None
        self._poller = zmq.Poller()
        self._own_context = context is None
        #: runs in the executor's own process (local mode): a freeze stops both alike, and
        #: the executor does not count silence it did not listen to, so never renew
        self._in_executor = in_executor
        self.ctx = context or zmq.Context()
        self._status_dir = tempfile.mkdtemp(prefix="zmqexecutor-status-", dir=local_dir)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._report: zmq.Socket[bytes] | None = None
        self._rendezvous_sock: zmq.Socket[bytes] | None = None

    # -- control from other threads and signal handlers --

    def stop(self, *, terminate_children: bool) -> None:
        """Stop respawning; with ``terminate_children`` also SIGTERM (drain) every child.

        Safe to call from another thread or a signal handler.
        """
        self.stopping = True
        self._terminate_requested = terminate_children
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def kill_children(self) -> None:
        """SIGKILL every worker process (abort running tasks)."""
        self._signal_children(signal.SIGKILL)

    # -- the loop --

    def serve(self) -> None:
        """Run until stopped and every worker process has exited."""
        poller = self._poller
        poller.register(self._wake_r, zmq.POLLIN)
        if self.rendezvous is not None:
            if self._own_context:
                self.security.start(self.ctx)
            self._rendezvous_sock = self.ctx.socket(zmq.PULL)
            self._rendezvous_sock.linger = 0
            self._rendezvous_sock.maxmsgsize = 64 * 1024  # only small control messages
            guard_listener(self._rendezvous_sock, network=self.rendezvous.startswith("tcp:"))
            self.security.server(self._rendezvous_sock)
            self._rendezvous_sock.bind(self.rendezvous)
            poller.register(self._rendezvous_sock, zmq.POLLIN)
        if self.sink is not None:
            self._connect_report(self.sink)
        stop_deadline: float | None = None
        try:
            while True:
                if not self.stopping:
                    self._spawn_due(poller)
                elif stop_deadline is None:
                    stop_deadline = time.monotonic() + WORKER_EXIT_TIMEOUT
                    if self._terminate_requested:
                        self._signal_children(signal.SIGTERM)
                if self.stopping and not self._children():
                    return
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    self._signal_children(signal.SIGKILL)
                    stop_deadline = time.monotonic() + WORKER_EXIT_TIMEOUT
                events = dict(poller.poll(int(self._poll_timeout() * 1000)))
                self._check_liveness()  # first: nothing of a lost incarnation may go out
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                if self._rendezvous_sock is not None and self._rendezvous_sock in events:
                    self._on_rendezvous(self._rendezvous_sock.recv_multipart())
                if self._monitor is not None and self._monitor in events:
                    self._on_monitor_event()
                self._reap(poller)
                self._watch_children()
        finally:
            self._close()

    def _poll_timeout(self) -> float:
        now = time.monotonic()
        timeout = min(TICK, max(0.0, self._next_heartbeat - now))
        for slot in self.slots:
            if slot.child is None and not slot.retired and slot.not_before > now:
                timeout = min(timeout, slot.not_before - now)
        return max(timeout, 0.001)

    def _children(self) -> list[_Child]:
        return [s.child for s in self.slots if s.child is not None]

    def _signal_children(self, signum: int) -> None:
        for child in self._children():
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signum)

    def _connect_report(self, sink: str) -> None:
        """Connect the supervisor's own PUSH to the sink: DIED reports and HEARTBEATs go
        there, and its ZMTP heartbeats tell us when the executor is gone."""
        self._close_report()
        report = self.ctx.socket(zmq.PUSH)
        report.linger = 1000
        report.sndhwm = 100  # heartbeats for a missing executor must not pile up
        set_heartbeats(report, self.heartbeat_interval, self.heartbeat_timeout)
        self.security.client(report)
        self._liveness.connection_dropped(time.monotonic())  # a previous one ends here
        self._monitor = report.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self._poller.register(self._monitor, zmq.POLLIN)
        report.connect(sink)
        self._report = report
        self._next_heartbeat = 0.0

    def _close_report(self) -> None:
        if self._monitor is not None:
            self._poller.unregister(self._monitor)
            assert self._report is not None
            self._report.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._report is not None:
            self._report.close()
            self._report = None

    def _on_monitor_event(self) -> None:
        """Feed the report socket's connection events to the liveness view; a broken
        connection (the executor died, or the network did) ends the session."""
        assert self._monitor is not None
        over: SessionOver | None = None
        with contextlib.suppress(zmq.Again):
            while True:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
                # the event id is the first uint16 of the first frame (zmq.utils.monitor
                # would import asyncio: 30 ms, at shutdown, holding the GIL)
                (event,) = struct.unpack_from("<H", frames[0])
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self._liveness.executor_seen(time.monotonic())
                elif event == zmq.EVENT_DISCONNECTED:
                    over = self._liveness.connection_dropped(time.monotonic()) or over
        if over is None or self.stopping:
            return  # nothing ended, or our own shutdown closed the connection
        self._end_session()

    def _end_session(self) -> None:
        """The session is over. Running tasks are abandoned; fresh worker processes wait
        for the next executor."""
        abandoned = 0
        for child in self._children():
            if child.replaced:
                continue  # already killed with its incarnation
            status = read_status(child.status_path)
            if status.session != proto.NO_SESSION:
                child.proc.kill()
                abandoned += bool(status.running)
        log.log(
            logging.WARNING if abandoned else logging.INFO,
            "the executor is gone; %d running task(s) abandoned",
            abandoned,
        )
        if self.once:
            self._session_over()
        if self.rendezvous is not None:
            self.sink = None  # mode 3: wait for the next ATTACH
            self._close_report()

    def _send_heartbeat(self) -> None:
        self._check_liveness()  # the host may have stood still since the loop's own check
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval
        if self._report is None:
            return
        body = {
            "host_id": self.host_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "interval": self.heartbeat_interval,
            "timeout": self.heartbeat_timeout,
            "workers": [c.worker_id for c in self._children()],
        }
        with contextlib.suppress(zmq.Again):  # nobody listens: nothing to tell
            self._report.send_multipart(proto.control(Kind.HEARTBEAT, body), zmq.NOBLOCK)
            self._liveness.heartbeat_sent(time.monotonic())

    def _check_liveness(self) -> None:
        """Start a new incarnation when the executor must have declared this host lost."""
        renew = self._liveness.tick(time.monotonic())
        if renew is None or self.stopping or self._in_executor:
            return
        # The executor forgot this host's worker processes and will never send them a task;
        # they would wait forever. Fresh ones under a new host id register as a new host.
        old, self.host_id = self.host_id, uuid.uuid4().hex[:16]
        abandoned = 0
        for child in self._children():
            with contextlib.suppress(OSError):
                abandoned += bool(read_status(child.status_path).running)
            child.replaced = "was replaced by a new incarnation of its host"
            child.proc.kill()
        log.warning(
            "%s: the executor has declared this host lost; starting incarnation %d "
            "(host id %s, was %s): %d worker process(es) replaced, %d running task(s) abandoned",
            renew.reason,
            self._liveness.incarnation,
            self.host_id,
            old,
            len(self._children()),
            abandoned,
        )
        self._next_heartbeat = 0.0  # announce the new host id at once

    def _session_over(self) -> None:
        """With ``once``: the executor we served has left, so this host is done too."""
        if not self.stopping:
            log.info("the executor's session is over; exiting (--once)")
            self.stop(terminate_children=True)

    def _watch_children(self) -> None:
        """Heartbeat on time, kill a worker process whose task ran past its timeout, and
        leave after ``idle_timeout`` without an executor."""
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._send_heartbeat()
        if (
            self.idle_timeout is not None
            and not self.stopping
            and now - self._last_served > self.idle_timeout
        ):
            log.info("no executor for %gs; exiting (--idle-timeout)", self.idle_timeout)
            self.stop(terminate_children=True)
        for child in self._children():
            try:
                status = read_status(child.status_path)
            except OSError:
                continue
            if status.session != proto.NO_SESSION:
                self._last_served = now
            if status.running != child.running:
                child.running, child.since = status.running, now
            elif (
                status.running
                and status.task_timeout > 0
                and now - child.since > status.task_timeout
                and not child.timed_out
            ):
                log.warning(
                    "task %d ran past its timeout of %gs: killing worker process %d",
                    status.running,
                    status.task_timeout,
                    child.proc.pid,
                )
                child.timed_out = status.task_timeout
                child.proc.kill()

    def _on_rendezvous(self, frames: list[bytes]) -> None:
        try:
            kind, _, _ = proto.parse_header(frames[0])
            body = proto.parse_control(frames) if kind is Kind.ATTACH else {}
        except proto.ProtocolError as e:
            log.warning("dropped a bad message on %s: %s", self.rendezvous, e)
            return
        if kind is Kind.ATTACH:
            sink = str(body.get("sink", ""))
            try:
                parse_endpoint(sink)
            except ValueError as e:
                log.warning("ATTACH with a bad sink address: %s", e)
                return
            if sink != self.sink or self._report is None:
                log.info("executor at %s attached", sink)
                if self._children():
                    log.warning("a new executor replaces the previous one; stopping its workers")
                    self._signal_children(signal.SIGKILL)
                self.sink = sink
                self._connect_report(sink)
        elif kind is Kind.DETACH:
            log.info("executor at %s detached", self.sink)
            self.sink = None

    def _spawn_due(self, poller: zmq.Poller) -> None:
        if self.sink is None:
            return
        now = time.monotonic()
        for index, slot in enumerate(self.slots):
            if slot.child is None and not slot.retired and slot.not_before <= now:
                try:
                    slot.child = self._spawn(index, self.sink)
                except OSError as e:  # e.g. no route to the executor while partitioned
                    log.warning("cannot start a worker process yet: %s; retrying", e)
                    slot.failures += 1
                    slot.not_before = now + self._backoff(slot)
                    continue
                if slot.child.pidfd is not None:
                    poller.register(slot.child.pidfd, zmq.POLLIN)

    @staticmethod
    def _backoff(slot: _Slot) -> float:
        return min(RESPAWN_BACKOFF_MAX, RESPAWN_BACKOFF_MIN * 2.0 ** (slot.failures - 1))

    def _spawn(self, index: int, sink: str) -> _Child:
        worker_id = uuid.uuid4().hex[:16]
        status_path = os.path.join(self._status_dir, worker_id)
        with open(status_path, "wb") as f:
            f.write(_STATUS.pack(0, 0, STARTING, proto.NO_SESSION, 0.0))
        ports: list[int] | None = None
        offset = 0
        if self.local_dir is not None:
            inbox = f"ipc://{self.local_dir}/w-{worker_id}"
            advertise = None
        else:
            sink_host = parse_endpoint(sink).host
            inbox = str(Endpoint("tcp", self.inbox_host or route_to(sink_host), "*"))
            advertise = self.advertise or parse_endpoint(concrete(inbox, sink_host)).host
            if self.inbox_ports is not None:
                live = {c.inbox_port for c in self._children() if c.inbox_port is not None}
                ports = port_candidates(self.inbox_ports, live, self._ports_handed_out)
                self._ports_handed_out[ports[0]] = time.monotonic()
                if self.advertise_ports is not None:
                    offset = self.advertise_ports.first - self.inbox_ports.first
        config = {
            "worker_id": worker_id,
            "host_id": self.host_id,
            "sink": sink,
            "inbox": inbox,
            "inbox_ports": ports,
            "advertise": advertise,
            "advertise_offset": offset,
            "status": status_path,
            "parent_pid": os.getpid(),
            "sys_path": self.sys_path,
            "log_level": self.log_level,
            "secure": self._token is not None,
            "max_tasks": self.max_tasks_per_child,
        }
        env = dict(os.environ)
        env.pop(ENV_TOKEN, None)
        if self._token is not None:
            env[ENV_TOKEN] = self._token  # never on argv: the environment is private
        proc = subprocess.Popen(
            [sys.executable, "-c", "from zmqexecutor.worker import child_main; child_main()",
             json.dumps(config)],
            stdin=subprocess.DEVNULL,
            close_fds=True,
            env=env,
        )  # fmt: skip
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(proc.pid)
            except OSError:
                pidfd = None  # old kernel: the loop's tick finds the exit instead
        return _Child(index, worker_id, status_path, proc, pidfd, ports[0] if ports else None)

    def _reap(self, poller: zmq.Poller) -> None:
        for slot in self.slots:
            child = slot.child
            if child is None or child.proc.poll() is None:
                continue
            slot.child = None
            if child.pidfd is not None:
                poller.unregister(child.pidfd)
                os.close(child.pidfd)
            status = read_status(child.status_path)
            os.unlink(child.status_path)
            code = child.proc.returncode
            if status.state == CLEAN_EXIT or (self.stopping and code == -signal.SIGTERM):
                slot.failures = 0
                if self.once and status.session != proto.NO_SESSION and status.state == CLEAN_EXIT:
                    self._session_over()
                continue
            if status.state == REFUSED:
                self.refused = True  # versions differ: respawning cannot help
                self.stop(terminate_children=True)
                continue
            if status.state == INIT_FAILED:
                slot.retired = not self.respawn_init_failed
            elif status.state == READY:
                slot.failures = 0
            self._report_death(child, code, status)
            if status.state != READY and not child.replaced:
                slot.failures += 1
                slot.not_before = time.monotonic() + self._backoff(slot)

    def _report_death(self, child: _Child, code: int, status: StatusReading) -> None:
        if status.state == INIT_FAILED:
            return  # the worker process reported it itself
        how = describe_exit(code)
        if child.timed_out:
            how = f"was killed because its task ran past task_timeout={child.timed_out:g}s"
        elif child.replaced:
            how = child.replaced
        log.warning(
            "worker process %d %s (running task %s)", child.proc.pid, how, status.running or "-"
        )
        if self._report is None:
            return
        body = {
            "id": child.worker_id,
            "pid": child.proc.pid,
            "host": socket.gethostname(),
            "exit": how,
            "running": status.running,
            "last_started": status.started,
            "timeout": child.timed_out,
        }
        with contextlib.suppress(zmq.Again):
            self._report.send_multipart(proto.control(Kind.DIED, body, status.session), zmq.NOBLOCK)

    def _close(self) -> None:
        self._close_report()
        if self._own_context:
            self.security.stop()
        if self._rendezvous_sock is not None:
            self._rendezvous_sock.close()
        if self._own_context:
            self.ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)
        for name in os.listdir(self._status_dir):
            os.unlink(os.path.join(self._status_dir, name))
        os.rmdir(self._status_dir)


def describe_exit(code: int) -> str:
    """'exited with code 3' or 'was killed by SIGSEGV (a crash in native code?)'."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = {
        "SIGSEGV": " (a segmentation fault, e.g. a crash in native code)",
        "SIGKILL": " (killed from outside, e.g. by the out-of-memory killer)",
        "SIGBUS": " (a bus error, e.g. a crash in native code)",
        "SIGABRT": " (aborted, e.g. a failed assertion in native code)",
    }.get(name, "")
    return f"was killed by {name}{hint}"


# -- the library entry point of a worker host ------------------------------------------------


def run_worker(
    executor: str | None = None,
    *,
    listen: str | None = None,
    processes: int | None = None,
    inbox_ports: str | None = None,
    advertise: str | None = None,
    insecure: bool = False,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    token: str | None = None,
    token_file: str | None = None,
    max_tasks_per_child: int | None = None,
    once: bool = False,
    idle_timeout: float | None = None,
) -> int:
    """Serve as a worker host until SIGTERM/SIGINT: keep ``processes`` worker processes
    connected to an executor.

    Args:
        executor: the executor's endpoint (``ZmqExecutor(listen=...)``) to connect to.
        listen: without ``executor``: the endpoint to wait on for an executor created with
            ``ZmqExecutor(workers=[...])``; with it: the address worker inboxes bind to, and
            with a port or range (``tcp://HOST:6000-6015``) the ports they bind (short for
            ``inbox_ports``).
        processes: worker processes (default: one per core).
        inbox_ports: ``"6000-6015"`` (or one port): each worker process binds its inbox to
            a free port of this range (for firewalls and containers; default: ephemeral
            ports). Needs at least ``processes`` ports.
        advertise: the host (``"HOST"``) or host and port range (``"HOST:7000-7015"``) the
            executor should use to reach this host (behind NAT or in a container): the
            process that binds inbox port FIRST+i is reached at advertised FIRST+i.
        insecure: allow unauthenticated sockets on non-loopback addresses.
        heartbeat_interval: seconds between this host's heartbeats to the executor.
        heartbeat_timeout: an executor silent this long is gone; its tasks are abandoned.
        token: the executor's token (prefer ``token_file`` or $ZMQEXECUTOR_TOKEN: a
            command-line argument is visible to other users of this host).
        token_file: a file holding the token (must not be readable by others).
        max_tasks_per_child: replace a worker process after this many tasks (the executor's
            own limit applies too; the lower one wins).
        once: serve one executor, then exit (for batch jobs).
        idle_timeout: exit after this many seconds without an executor.

    Returns:
        0 after a clean stop (SIGTERM lets running tasks finish first); EXIT_REFUSED if
        the executor refused this host (different versions).

    Raises:
        ConfigurationError: neither endpoint given, an exposed endpoint without insecure,
            or a malformed or too small port range.
    """
    if executor is None and listen is None:
        raise ConfigurationError(
            "give the executor's endpoint (zmqexecutor-worker tcp://HEAD:5555) or --listen "
            "ENDPOINT to wait for an executor"
        )
    processes = processes or os.cpu_count() or 1
    if processes < 1:
        raise ConfigurationError("--processes must be at least 1")
    try:
        ports = parse_port_range(inbox_ports, "--inbox-ports") if inbox_ports else None
        advertise_host, advertise_ports = parse_advertise(advertise) if advertise else (None, None)
        if executor is not None and listen is not None:
            listen_ports = parse_listen(listen)[1]
            if listen_ports is not None and ports is not None:
                raise ValueError(
                    f"the inbox ports are given twice ({listen} and --inbox-ports "
                    f"{inbox_ports}): give --listen tcp://HOST:FIRST-LAST or --inbox-ports alone"
                )
            ports = ports or listen_ports
        elif listen is not None and "-" in (port := listen.rpartition(":")[2]) and "/" not in port:
            raise ValueError(
                f"without EXECUTOR, --listen {listen} is the one endpoint an executor attaches "
                "to (e.g. tcp://*:5556), not a range: give the worker processes' ports with "
                "--inbox-ports FIRST-LAST"
            )
        check_port_plan(ports, processes, advertise_ports)
    except ValueError as e:
        raise ConfigurationError(str(e)) from None
    resolved = resolve_token(token, token_file)
    secure = resolved is not None
    Security(resolved)  # fails early if libzmq lacks CURVE
    inbox_host = None
    if executor is not None:
        check_exposure(executor, secure=secure, insecure=insecure, role="executor endpoint")
        sink_host = parse_endpoint(executor).host
        if listen is not None:
            inbox_host = parse_listen(listen)[0].host
        inbox = f"tcp://{inbox_host or (route_to(sink_host) if sink_host else '*')}:0"
        if parse_endpoint(executor).transport == "tcp":
            check_exposure(inbox, secure=secure, insecure=insecure, role="worker inbox")
    else:
        assert listen is not None
        check_exposure(listen, secure=secure, insecure=insecure, role="listen endpoint")
    supervisor = Supervisor(
        processes=processes,
        sink=executor,
        rendezvous=listen if executor is None else None,
        inbox_host=inbox_host,
        inbox_ports=ports,
        advertise=advertise_host,
        advertise_ports=advertise_ports,
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        token=resolved,
        max_tasks_per_child=max_tasks_per_child,
        once=once,
        idle_timeout=idle_timeout,
    )
    interrupts = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:  # a second Ctrl-C: abort the running tasks
                supervisor.kill_children()
        log.info("%s: finishing running tasks, then exiting", signal.Signals(signum).name)
        supervisor.stop(terminate_children=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "worker host %s pid %d: %d process(es), %s, inbox ports %s",
        socket.gethostname(),
        os.getpid(),
        processes,
        f"executor {executor}" if executor else f"waiting on {listen}",
        ports or "ephemeral",
    )
    supervisor.serve()
    if supervisor.refused:
        log.error("the executor refused this host (see above); exiting")
        return EXIT_REFUSED
    return 0
