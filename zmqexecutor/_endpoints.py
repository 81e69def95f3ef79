"""The executor's machinery below its dispatcher thread: the zmq context, the sink and the
ATTACH sockets, security (CURVE keys, the ZAP authenticator), the private directory of ipc://
endpoints and the local worker host (a Supervisor on a thread of this process).

The dispatcher opens them as it is made and closes them as its thread ends; nothing else
touches them::

    ZmqExecutor(...) --Placement, Settings--> Dispatcher() --opens--> Endpoints
                                                  |                     context, security,
                                 dispatcher thread ends                 directory, sink,
                                   stop_local() ... sockets closed      attach, supervisor
                                   close(): supervisor joined, ZAP stopped, context.term(),
                                            directory removed

A failure to open raises ConfigurationError and leaves nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field

import zmq

from ._defaults import MAX_SOCKETS
from ._host_settings import HostSettings
from ._net import bound_endpoint, concrete, guard_listener, parse_endpoint, route_to, set_heartbeats
from ._scheduler import Settings
from ._security import Security, check_exposure, resolve_token
from ._supervisor import Supervisor
from .errors import ConfigurationError

log = logging.getLogger("zmqexecutor.endpoints")


@dataclass(frozen=True)
class Placement:
    """Where the executor's workers are: its local ones, its listen endpoint, the worker
    hosts it attaches to; made by :func:`placement` once the arguments are checked."""

    local_workers: int
    listen: str | None = None
    workers: tuple[str, ...] = ()
    token: str | None = field(default=None, repr=False)  # a secret: never in a repr
    resources: dict[str, float] = field(default_factory=dict)
    #: CURVE keys of the token (made as the token is checked: no CURVE in libzmq fails early)
    security: Security = field(default_factory=lambda: Security(None), repr=False, compare=False)

    @property
    def mode(self) -> str:
        return "listen" if self.listen else "workers" if self.workers else "local"


def placement(
    local_workers: int,
    listen: str | None,
    workers: tuple[str, ...],
    *,
    token: str | None,
    token_file: str | None,
    insecure: bool,
    resources: dict[str, float],
) -> Placement:
    """Find the token and check that every endpoint may be used with it, before any socket
    exists.

    Raises:
        ConfigurationError: an endpoint is malformed, or exposed without a token (or on a
            non-loopback address even with ``insecure``); the token file is unusable.
    """
    # Local mode is ipc:// only and needs no token; any TCP endpoint does (or insecure).
    resolved = resolve_token(token, token_file) if (listen or workers) else None
    security = Security(resolved)
    for endpoint, role in [(listen, "listen endpoint")] + [(e, "worker endpoint") for e in workers]:
        if endpoint is not None:
            check_exposure(endpoint, secure=security.enabled, insecure=insecure, role=role)
    return Placement(local_workers, listen, workers, resolved, resources, security)


class Endpoints:
    """What the dispatcher owns below its thread (see the module docstring).

    Raises:
        ConfigurationError: a socket cannot be bound or connected (closed again, with
            everything opened before it).
    """

    def __init__(self, where: Placement, settings: Settings) -> None:
        self.mode = where.mode
        self.security = where.security
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # one PUSH per worker process: libzmq's default of 1,023 sockets would cap the workers
        self.context.max_sockets = MAX_SOCKETS
        self.directory = ""
        opened: list[zmq.Socket[bytes]] = []  # closed again if anything fails
        try:
            self.security.start(self.context)
            self.directory = tempfile.mkdtemp(prefix="zmqexecutor-")  # 0700: ipc is private
            try:
                self.sink, self.attach, self.sink_address = self._open_sockets(
                    where, settings, opened
                )
            except (zmq.ZMQError, OSError, ValueError) as e:
                raise ConfigurationError(f"cannot set up the executor's sockets: {e}") from e
            self.supervisor = self._local_host(where, settings)
        except BaseException:
            for sock in opened:
                sock.close(linger=0)
            self._release()
            raise
        #: the host id of the local worker processes (None: there are none)
        self.local_host = self.supervisor.host_id if self.supervisor else None
        self._supervisor_thread = (
            threading.Thread(
                target=self.supervisor.serve, name="zmqexecutor-supervisor", daemon=True
            )
            if self.supervisor
            else None
        )

    @property
    def _local_sink(self) -> str:
        return f"ipc://{self.directory}/sink"

    def _open_sockets(
        self, where: Placement, settings: Settings, opened: list[zmq.Socket[bytes]]
    ) -> tuple[zmq.Socket[bytes], list[zmq.Socket[bytes]], str]:
        """Bind the sink and connect the ATTACH sockets (each added to ``opened``); return
        them and the sink's address as workers are to connect to it."""
        sink = self.context.socket(zmq.PULL)
        opened.append(sink)
        sink.linger = 0
        sink.maxmsgsize = settings.max_message_size
        guard_listener(sink, network=bool(where.listen or where.workers))
        set_heartbeats(sink, settings.heartbeat_interval, settings.heartbeat_timeout)
        self.security.server(sink)
        if where.local_workers:
            sink.bind(self._local_sink)
        sink_address = self._local_sink
        if where.listen:
            # with workers= too, listen= fixes the sink's port (for a firewall); a
            # wildcard host is then told to them as the address that routes to them
            sink.bind(where.listen)
            peer = parse_endpoint(where.workers[0]).host if where.workers else ""
            sink_address = concrete(bound_endpoint(sink), peer or None)
        elif where.workers:
            sink_address = _bind_for(sink, where.workers)
        attach = []
        for endpoint in where.workers:
            sock = self.context.socket(zmq.PUSH)
            opened.append(sock)
            sock.linger = 0
            sock.sndhwm = 10  # ATTACH is repeated until the host answers
            set_heartbeats(sock, settings.heartbeat_interval, settings.heartbeat_timeout)
            self.security.client(sock)
            sock.connect(endpoint)
            attach.append(sock)
        return sink, attach, sink_address

    def _local_host(self, where: Placement, settings: Settings) -> Supervisor | None:
        """The worker host of the local worker processes, run on a thread of this process."""
        if not where.local_workers:
            return None
        host = HostSettings(
            processes=where.local_workers,
            sink=self._local_sink,
            local_dir=self.directory,
            respawn_init_failed=False,
            sys_path=tuple(sys.path),
            log_level=logging.getLevelName(logging.getLogger("zmqexecutor").getEffectiveLevel()),
            heartbeat_interval=settings.heartbeat_interval,
            heartbeat_timeout=settings.heartbeat_timeout,
            token=where.token,
            in_executor=True,
            resources=where.resources,
        )
        return Supervisor(host, context=self.context)

    def start_local(self) -> None:
        """Start the local worker host (before the dispatcher thread starts)."""
        if self._supervisor_thread is not None:
            self._supervisor_thread.start()

    def end_local(self, signum: int) -> None:
        """End the local worker processes now, running tasks included (any thread)."""
        if self.supervisor is not None:
            self.supervisor.end_children(signum)

    def stop_local(self) -> None:
        """Tell the local worker host to stop: its processes get SIGTERM, the ones still
        registering included; registered ones are idle by now (every task has been
        answered) and also get DETACH."""
        if self.supervisor is not None:
            self.supervisor.stop(terminate_children=True)

    def close(self) -> None:
        """The dispatcher thread's last act, once its sockets are closed: wait for the local
        host, then stop the authenticator, end the context and remove the directory."""
        thread = self._supervisor_thread
        if thread is not None and thread.is_alive():
            thread.join()
        self._release()
        log.debug("%s executor released its resources", self.mode)

    def _release(self) -> None:
        self.security.stop()
        self.context.term()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _bind_for(sink: zmq.Socket[bytes], endpoints: tuple[str, ...]) -> str:
    """Bind the sink where the given worker hosts can reach it; return its address."""
    routes = {route_to(parse_endpoint(e).host) for e in endpoints}
    host = routes.pop() if len(routes) == 1 else "*"
    sink.bind(f"tcp://{host}:*")
    return concrete(bound_endpoint(sink), parse_endpoint(endpoints[0]).host)
