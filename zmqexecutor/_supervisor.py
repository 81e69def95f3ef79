"""The supervisor of one worker host: keeps its worker processes running, reports the ones
that die, heartbeats to the executor, and starts a new incarnation when the executor must
have declared the host lost.

::

    executor                          worker host
    --------                          -----------
    PUSH, one per worker process ---> PULL inbox   (worker process 1..N: runs tasks)
    PULL sink <---------------------- PUSH         (each worker process: HELLO, RESULTS, BYE)
              <---------------------- PUSH         (the supervisor: DIED, HEARTBEAT)
    PUSH attach --------------------> PULL rendezvous (the supervisor; only with --listen)
              <---------------------- PUSH         (the supervisor: OUTPUT, see _output.py)

It runs in the ``zmqexecutor-worker`` process (remote hosts) or in a thread of the executor
(local mode), and it is the executor's mirror on the host's side: the dispatcher owns the
executor's sockets and the scheduling core decides; here the supervisor owns the host's and
``_liveness.py`` decides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import _messages as msg
from . import _protocol as proto
from ._defaults import (
    ENV_TOKEN,
    OUTPUT_FLUSH_INTERVAL,
    OUTPUT_SNDHWM,
    RESPAWN_BACKOFF_MAX,
    RESPAWN_BACKOFF_MIN,
    TICK,
    WORKER_EXIT_TIMEOUT,
)
from ._host_settings import HostSettings
from ._liveness import HostLiveness, SessionOver
from ._net import (
    Endpoint,
    concrete,
    guard_listener,
    parse_endpoint,
    port_candidates,
    route_to,
    set_heartbeats,
)
from ._output import OutputCapture, Printer, echo_to
from ._protocol import Kind
from ._security import Security
from ._status import State, StatusReading, create, read_status, request_end_now

log = logging.getLogger("zmqexecutor.worker")

#: how a worker process starts: a fresh interpreter, never a fork of the caller
_CHILD_MAIN = "from zmqexecutor._worker_process import child_main; child_main()"


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
    """Keeps ``settings.processes`` worker processes connected to an executor's sink.

    Runs in the ``zmqexecutor-worker`` process (remote hosts) or in a thread of the executor
    (local mode, with the executor's ``context``). With ``rendezvous`` it binds that endpoint
    and waits for an executor to ATTACH (mode 3); otherwise it connects its worker processes
    to ``sink`` at once (mode 2).
    """

    def __init__(
        self, settings: HostSettings, *, context: zmq.Context[zmq.Socket[bytes]] | None = None
    ) -> None:
        self.settings = settings
        #: the executor's sink now (ATTACH and DETACH change it in mode 3)
        self.sink = settings.sink
        #: when each inbox port was last given to a worker process (monotonic seconds)
        self._ports_handed_out: dict[int, float] = {}
        self.slots = [_Slot() for _ in range(settings.processes)]
        self.stopping = False
        self._terminate_requested = False
        #: terminate_workers() / kill_workers(): the signal that ends the children now
        self._end_children: int | None = None
        self.host_id = uuid.uuid4().hex[:16]
        self.security = Security(settings.token)
        self.refused = False
        self._last_served = time.monotonic()
        self._next_heartbeat = 0.0
        self._liveness = HostLiveness(settings.heartbeat_timeout, time.monotonic())
        self._monitor: zmq.Socket[bytes] | None = None
        self._poller = zmq.Poller()
        self._own_context = context is None
        self.ctx = context or zmq.Context()
        self._status_dir = tempfile.mkdtemp(prefix="zmqexecutor-status-", dir=settings.local_dir)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._report: zmq.Socket[bytes] | None = None
        self._rendezvous_sock: zmq.Socket[bytes] | None = None
        # Remote hosts read their worker processes' stdout and stderr from pipes and forward
        # them (_output.py); local ones (in the executor) leave them on the shared terminal.
        # A worker process whose executor does not want its output puts these copies of
        # our own stdout and stderr back in place of the pipes (_worker_process.py).
        self._terminal: tuple[int, int] | None = None
        self._capture: OutputCapture | None = None
        self._output_sock: zmq.Socket[bytes] | None = None
        self._output_due = 0.0  #: when the next OUTPUT message may go
        self._session = proto.NO_SESSION  #: the session our worker processes serve, for OUTPUT
        if not settings.in_executor:
            self._terminal = (_dup_or_devnull(1), _dup_or_devnull(2))
            echo = None
            if settings.echo_output:
                echo = Printer(echo_to(self._terminal), "zmqexecutor-echo")
                echo.start()
            self._capture = OutputCapture(socket.gethostname(), time.monotonic(), echo)

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

    def end_children(self, signum: int) -> None:
        """Stop, and end every worker process now with ``signum`` (SIGTERM or SIGKILL),
        running tasks included: ``ZmqExecutor.terminate_workers()`` / ``kill_workers()``.

        Safe to call from another thread; the supervisor's own loop sends the signals.
        """
        self._end_children = signum
        self.stop(terminate_children=True)

    # -- the loop --

    def serve(self) -> None:
        """Run until stopped and every worker process has exited."""
        poller = self._poller
        poller.register(self._wake_r, zmq.POLLIN)
        rendezvous = self.settings.rendezvous
        if rendezvous is not None:
            if self._own_context:
                self.security.start(self.ctx)
            self._rendezvous_sock = self.ctx.socket(zmq.PULL)
            self._rendezvous_sock.linger = 0
            self._rendezvous_sock.maxmsgsize = 64 * 1024  # only small control messages
            guard_listener(self._rendezvous_sock, network=rendezvous.startswith("tcp:"))
            self.security.server(self._rendezvous_sock)
            self._rendezvous_sock.bind(rendezvous)
            poller.register(self._rendezvous_sock, zmq.POLLIN)
        if self.sink is not None:
            self._connect_report(self.sink)
        stop_deadline: float | None = None
        ended = False
        try:
            while True:
                if not self.stopping:
                    self._spawn_due(poller)
                elif stop_deadline is None:
                    stop_deadline = time.monotonic() + WORKER_EXIT_TIMEOUT
                    if self._terminate_requested and self._end_children is None:
                        self._signal_children(signal.SIGTERM)
                if self._end_children is not None and not ended:
                    # also after a plain stop() began: end_children() may come second
                    ended = True
                    if self._end_children == signal.SIGTERM:
                        for child in self._children():  # this SIGTERM ends, not drains
                            with contextlib.suppress(OSError):
                                request_end_now(child.status_path)
                    self._signal_children(self._end_children)
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
                if self._capture is not None:
                    self._read_output(events)  # before _reap: a dead process's last words
                self._reap(poller)
                self._watch_children()
        finally:
            self._close()

    def _poll_timeout(self) -> float:
        now = time.monotonic()
        timeout = min(TICK, max(0.0, self._next_heartbeat - now))
        if self._capture is not None and self._capture.chunks:
            timeout = min(timeout, max(0.0, self._output_due - now))
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
        set_heartbeats(report, self.settings.heartbeat_interval, self.settings.heartbeat_timeout)
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
        if self._output_sock is not None:
            self._output_sock.close(linger=0)
            self._output_sock = None
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
                    over = self._liveness.executor_seen(time.monotonic()) or over
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
        self._session = proto.NO_SESSION  # output from now on is for whoever comes next
        if self.settings.once:
            self._session_over()
        if self.settings.rendezvous is not None:
            self.sink = None  # mode 3: wait for the next ATTACH
            self._close_report()

    def _send_heartbeat(self) -> None:
        self._check_liveness()  # the host may have stood still since the loop's own check
        self._next_heartbeat = time.monotonic() + self.settings.heartbeat_interval
        if self._report is None:
            return
        beat = msg.Heartbeat(
            host_id=self.host_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            interval=self.settings.heartbeat_interval,
            timeout=self.settings.heartbeat_timeout,
            workers=tuple(c.worker_id for c in self._children()),
        )
        with contextlib.suppress(zmq.Again):  # nobody listens: nothing to tell
            self._report.send_multipart(beat.encode(), zmq.NOBLOCK)
            self._liveness.heartbeat_sent(time.monotonic())

    def _read_output(self, events: dict[Any, int]) -> None:
        """Read the worker processes' pipes that have data; send what is due."""
        assert self._capture is not None
        now = time.monotonic()
        # nothing to forward to without an executor (the echo still shows it)
        forward = self._forwarding()
        for fd in [fd for fd in events if fd in self._capture.pipes]:
            if not self._capture.read(fd, now, forward):
                self._poller.unregister(fd)
        capture = self._capture
        if not forward:
            capture.take()  # the executor left meanwhile: the echo has shown them
            return
        if (capture.chunks and (now >= self._output_due or capture.full())) or (
            capture.dropped and now >= self._output_due + 1.0  # drops alone: once a second
        ):
            self._send_output(now)

    def _forwarding(self) -> bool:
        """Is there an executor to send output to? (DETACH forgets the sink at once, the
        report socket only when the next executor attaches.)"""
        return self._report is not None and self.sink is not None

    def _send_output(self, now: float) -> None:
        """One OUTPUT message, on a socket of its own: output never crowds out the
        heartbeats and DIED reports on ``_report``, and a slow executor makes us drop
        output (counted), never queue it without bound."""
        assert self._capture is not None and self.sink is not None
        chunks, dropped = self._capture.take()
        self._output_due = now + OUTPUT_FLUSH_INTERVAL
        if self._output_sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.linger = 0
            sock.sndhwm = OUTPUT_SNDHWM  # bounds what waits for a slow or absent executor
            self.security.client(sock)
            sock.connect(self.sink)
            self._output_sock = sock
        try:
            output = msg.Output.of(self._capture.host, chunks, dropped)
            self._output_sock.send_multipart(output.encode(self._session), zmq.NOBLOCK)
        except zmq.Again:
            self._capture.dropped += dropped + sum(len(data) for _, _, data in chunks)

    def _check_liveness(self) -> None:
        """Start a new incarnation when the executor must have declared this host lost."""
        renew = self._liveness.tick(time.monotonic())
        if renew is None or self.stopping or self.settings.in_executor:
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
            self.settings.idle_timeout is not None
            and not self.stopping
            and now - self._last_served > self.settings.idle_timeout
        ):
            log.info("no executor for %gs; exiting (--idle-timeout)", self.settings.idle_timeout)
            self.stop(terminate_children=True)
        for child in self._children():
            try:
                status = read_status(child.status_path)
            except OSError:
                continue
            if status.session != proto.NO_SESSION:
                self._last_served, self._session = now, status.session
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
            kind, session, _ = proto.parse_header(frames[0])
            sink = msg.Attach.decode(frames).sink if kind is Kind.ATTACH else ""
        except proto.ProtocolError as e:
            log.warning("dropped a bad message on %s: %s", self.settings.rendezvous, e)
            return
        if kind is Kind.ATTACH and (sink != self.sink or self._report is None):
            log.info("executor at %s attached", sink)
            if self._children():
                log.warning("a new executor replaces the previous one; stopping its workers")
                self._signal_children(signal.SIGKILL)
            self.sink, self._session = sink, session
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
        create(status_path, proto.NO_SESSION)
        ports: list[int] | None = None
        offset = 0
        if self.settings.local_dir is not None:
            inbox = f"ipc://{self.settings.local_dir}/w-{worker_id}"
            advertise = None
        else:
            sink_host = parse_endpoint(sink).host
            inbox = str(Endpoint("tcp", self.settings.inbox_host or route_to(sink_host), "*"))
            advertise = self.settings.advertise or parse_endpoint(concrete(inbox, sink_host)).host
            if self.settings.inbox_ports is not None:
                live = {c.inbox_port for c in self._children() if c.inbox_port is not None}
                ports = port_candidates(self.settings.inbox_ports, live, self._ports_handed_out)
                self._ports_handed_out[ports[0]] = time.monotonic()
                if self.settings.advertise_ports is not None:
                    offset = self.settings.advertise_ports.first - self.settings.inbox_ports.first
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
            "sys_path": self.settings.sys_path,
            "log_level": self.settings.log_level,
            "secure": self.settings.token is not None,
            "max_tasks": self.settings.max_tasks_per_child,
            "resources": self.settings.resources,
        }
        env = dict(os.environ)
        env.pop(ENV_TOKEN, None)
        if self.settings.token is not None:
            env[ENV_TOKEN] = self.settings.token  # never on argv: the environment is private
        captured = subprocess.PIPE if self._capture is not None else None
        if self._terminal is not None:
            config["terminal_fds"] = list(self._terminal)
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_MAIN, json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=captured,
            stderr=captured,
            close_fds=True,
            pass_fds=self._terminal or (),
            env=env,
        )  # fmt: skip
        if self._capture is not None:
            assert proc.stdout is not None and proc.stderr is not None
            for fd in self._capture.add(proc.pid, proc.stdout, proc.stderr):
                self._poller.register(fd, zmq.POLLIN)
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
            if status.state == State.CLEAN_EXIT or (self.stopping and code == -signal.SIGTERM):
                slot.failures = 0
                served = status.session != proto.NO_SESSION
                if self.settings.once and served and status.state == State.CLEAN_EXIT:
                    self._session_over()
                continue
            if status.state == State.REFUSED:
                self.refused = True  # versions differ: respawning cannot help
                self.stop(terminate_children=True)
                continue
            if status.state == State.INIT_FAILED:
                slot.retired = not self.settings.respawn_init_failed
            elif status.state == State.READY:
                slot.failures = 0
            self._report_death(child, code, status)
            if status.state != State.READY and not child.replaced:
                slot.failures += 1
                slot.not_before = time.monotonic() + self._backoff(slot)

    def _report_death(self, child: _Child, code: int, status: StatusReading) -> None:
        if status.state == State.INIT_FAILED:
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
        died = msg.Died(
            id=child.worker_id,
            pid=child.proc.pid,
            host=socket.gethostname(),
            exit=how,
            running=status.running,
            last_started=status.started,
            timeout=child.timed_out,
        )
        with contextlib.suppress(zmq.Again):
            self._report.send_multipart(died.encode(status.session), zmq.NOBLOCK)

    def _close(self) -> None:
        if self._capture is not None:
            for fd in list(self._capture.pipes):  # the last words of the last processes
                self._capture.read(fd, time.monotonic(), self._forwarding())
            if self._capture.chunks and self._forwarding():
                self._send_output(time.monotonic())
            self._capture.close()
        if self._terminal is not None:
            for fd in self._terminal:
                os.close(fd)
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


def _dup_or_devnull(fd: int) -> int:
    """A copy of our ``fd`` (stdout, stderr), or of /dev/null when it is closed."""
    try:
        return os.dup(fd)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


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
