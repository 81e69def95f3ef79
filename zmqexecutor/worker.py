"""``run_worker``: the library entry point of a worker host (``zmqexecutor-worker`` is a
thin command line over it). The host itself is ``_supervisor.py`` (its settings record in
``_host_settings.py``); one worker process is ``_worker_process.py``; the messages they
exchange with the executor are ``_messages.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket

from ._defaults import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
)
from ._host_settings import HostSettings
from ._net import (
    check_port_plan,
    parse_advertise,
    parse_endpoint,
    parse_listen,
    parse_port_range,
    route_to,
)
from ._resources import check_resources, parse_resources
from ._security import Security, check_exposure, resolve_token
from ._supervisor import Supervisor
from ._worker_process import EXIT_REFUSED
from .errors import ConfigurationError

log = logging.getLogger("zmqexecutor.worker")


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
    resources: dict[str, float] | str | None = None,
    echo_output: bool = True,
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
        resources: what this host has for tasks that ask for it, shared by its worker
            processes: ``{"GPU": 2, "MEM": 64e9}`` or ``"GPU=2,MEM=64e9"``. A task submitted
            with ``executor.options(resources={"GPU": 1})`` runs only where one unit is free.
        echo_output: the worker processes' stdout and stderr, forwarded to the executor
            (its ``forward_output``), are also written to this process's stdout and
            stderr, all of it: also what the rate limit kept from the executor. An
            executor with ``forward_output=False`` gets none, and the worker processes
            write here directly, whatever this says.

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
    if processes is None:
        processes = os.cpu_count() or 1
    if processes < 1:
        raise ConfigurationError("--processes must be at least 1")
    if max_tasks_per_child is not None and max_tasks_per_child < 1:
        raise ConfigurationError("--max-tasks-per-child must be at least 1")
    if idle_timeout is not None and idle_timeout <= 0:
        raise ConfigurationError("--idle-timeout must be > 0")
    if not 0 < heartbeat_interval < heartbeat_timeout:
        raise ConfigurationError("need 0 < --heartbeat-interval < --heartbeat-timeout")
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
    declared = (
        parse_resources(resources)
        if isinstance(resources, str)
        else check_resources(resources or {}, "resources")
    )
    settings = HostSettings(
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
        resources=declared,
        echo_output=echo_output,
    )
    supervisor = Supervisor(settings)
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
