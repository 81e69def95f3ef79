"""The settings of one worker host: what ``run_worker`` (or the executor, for its local host)
decided once its arguments were checked, handed to the ``Supervisor`` as one frozen record.

::

    run_worker(...)  --checks-->  HostSettings  -->  Supervisor(settings)   (remote host)
    Endpoints        ---------->  HostSettings  -->  Supervisor(settings)   (local host)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ._defaults import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT
from ._net import PortRange


def _root_level() -> str:
    return logging.getLevelName(logging.getLogger().level)


@dataclass(frozen=True, slots=True)
class HostSettings:
    """How one worker host runs; its callers check the values (``run_worker`` makes every
    check the command line makes), the record only carries them."""

    processes: int
    #: the executor's sink to connect the worker processes to at once (mode 2)
    sink: str | None = None
    #: without ``sink``: the endpoint to bind and wait on for an executor's ATTACH (mode 3)
    rendezvous: str | None = None
    #: the address worker inboxes bind to (default: the one that routes to the executor)
    inbox_host: str | None = None
    #: the ports worker inboxes bind (default: ephemeral ports)
    inbox_ports: PortRange | None = None
    #: the host, and ports, the executor reaches the inboxes at (behind NAT)
    advertise: str | None = None
    advertise_ports: PortRange | None = None
    #: local mode: the directory of the worker processes' ipc:// inboxes and status files
    local_dir: str | None = None
    #: start a worker process again after its initializer failed (not in local mode)
    respawn_init_failed: bool = True
    #: the worker processes' sys.path (local mode: the executor's own)
    sys_path: tuple[str, ...] | None = None
    #: the worker processes' log level (default: the root logger's, as the record is made)
    log_level: str = field(default_factory=_root_level)
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    token: str | None = field(default=None, repr=False)  # a secret: never in a repr or a log
    max_tasks_per_child: int | None = None
    #: serve one executor, then exit
    once: bool = False
    #: exit after this many seconds without an executor
    idle_timeout: float | None = None
    #: runs in the executor's own process (local mode): a freeze stops both alike, and the
    #: executor does not count silence it did not listen to, so never renew; the worker
    #: processes' output stays on the shared terminal
    in_executor: bool = False
    #: what this host declares (--resources); its worker processes tell the executor
    resources: dict[str, float] = field(default_factory=dict)
    #: also write the worker processes' forwarded output to our stdout and stderr
    echo_output: bool = True
