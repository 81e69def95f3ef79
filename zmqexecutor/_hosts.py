"""What the scheduling core (``_scheduler.py``) knows about each worker process
(``WorkerState``: the tasks it holds, its credit) and each worker host (``HostState``: when it
was last heard from, its resources).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ._defaults import DEFAULT_MAX_BATCH, LOST_HOSTS_KEPT, RTT_SAMPLES
from ._queue import WorkItem

log = logging.getLogger("zmqexecutor.dispatcher")

#: a resource request, as a key: sorted (name, amount) pairs
Request = tuple[tuple[str, float], ...]


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
    #: when its last result arrived
    answered: float = 0.0
    #: the RECALL it has not answered yet (0: none), and the tasks it asks for that the
    #: worker still holds
    recall_id: int = 0
    recall: set[int] = field(default_factory=set)

    def describe(self) -> str:
        return f"worker {self.host} pid {self.pid}"

    def hold(self, item: WorkItem) -> None:
        """Count ``item``'s expected run time in what it holds."""
        if item.estimate is None:
            self.unknown += 1
        else:
            self.queued += item.estimate


@dataclass
class HostState:
    """A worker host (one supervisor) and when it was last heard from."""

    host_id: str
    name: str
    last_seen: float
    #: the round trip to its worker processes (seconds; None: not known): the least of
    #: its last RTT_SAMPLES measurements (``_window.round_trip``)
    rtt: float | None = None
    rtt_samples: deque[float] = field(default_factory=lambda: deque(maxlen=RTT_SAMPLES))
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


class HostTable(dict[str, HostState]):
    """The worker hosts by id, and those declared lost (bounded): a late heartbeat of a
    lost host must not revive it (its worker processes register anew, under a new id)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: OrderedDict[str, bool] = OrderedDict()
        self.last_tick: float | None = None

    def add(self, host_id: str, name: str, now: float) -> HostState:
        host = self.get(host_id)
        if host is None:
            host = self[host_id] = HostState(host_id, name, now)
        return host

    def heard(
        self, host_id: str, name: str, now: float, timeout: float | None, ours: float
    ) -> None:
        """A HEARTBEAT of ``host_id`` (``timeout``: the heartbeat_timeout it judges itself
        by; ``ours``: the executor's)."""
        if host_id in self.lost:
            if not self.lost[host_id]:
                self.lost[host_id] = True
                log.warning(
                    "worker host %s (%s), declared lost, is alive again; its worker processes "
                    "register anew under a new host id",
                    name,
                    host_id,
                )
            return
        host = self.get(host_id)
        if host is None:
            host = self.add(host_id, name, now)
            if timeout is not None and timeout != ours:
                log.warning(
                    "worker host %s judges the executor with heartbeat_timeout=%gs, this executor "
                    "uses %gs: give both sides the same --heartbeat-timeout, or a host that was "
                    "frozen may not notice that it was declared lost",
                    name,
                    timeout,
                    ours,
                )
        host.last_seen = now

    def tick(self, now: float, timeout: float) -> None:
        """The executor's loop runs at ``now``."""
        if self.last_tick is not None and now - self.last_tick > timeout / 2:
            # The executor itself stood still (SIGSTOP, a suspended VM, a stalled process):
            # the hosts' heartbeats wait unread in the sink. Silence we did not listen to
            # is no evidence, so every host gets its window again.
            for host in self.values():
                host.last_seen += now - self.last_tick
            log.warning("the executor did not run for %.1fs", now - self.last_tick)
        self.last_tick = now

    def silent(self, now: float, timeout: float) -> list[HostState]:
        """The hosts silent for longer than ``timeout``: they are lost, and forgotten."""
        gone = [host for host in self.values() if now - host.last_seen > timeout]
        for host in gone:
            del self[host.host_id]
            self.lost[host.host_id] = False
            if len(self.lost) > LOST_HOSTS_KEPT:
                self.lost.popitem(last=False)
        return gone


def load(w: WorkerState) -> tuple[float, float, int, str]:
    """How loaded a worker is (the least loaded gets the next task); ties by work queued,
    then by tasks ever sent, so that work spreads."""
    return (len(w.outstanding) / w.slots, w.queued, w.sent, w.worker_id)


def has_slot(w: WorkerState) -> bool:
    """May ``w`` take a task without prefetching?"""
    return len(w.outstanding) < w.slots and (w.remaining is None or w.remaining > 0)


def place(
    item: WorkItem,
    workers: list[WorkerState],
    hosts: dict[str, HostState],
    batches: dict[str, tuple[WorkerState, list[WorkItem]]],
) -> tuple[WorkerState | None, bool]:
    """The least loaded worker with a free slot (never prefetch: a task holds its
    resources from the moment it is sent) on a host where ``item``'s resources are free
    now, or None; and whether any host could ever satisfy the request."""
    assert item.resources is not None
    best: WorkerState | None = None
    possible = False
    for w in workers:
        host = hosts.get(w.host_id)
        if host is None or not host.could_ever_fit(item.resources):
            continue
        possible = True
        if not has_slot(w) or not host.fits(item.resources):
            continue
        if item.lost_on and not item.lost_on.isdisjoint((w.worker_id, w.host_id)):
            continue
        if len(batches.get(w.worker_id, (w, ()))[1]) >= DEFAULT_MAX_BATCH:
            continue
        if best is None or load(w) < load(best):
            best = w
    return best, possible


class Unsatisfiable:
    """Resource requests that no connected host declares: the tasks seen waiting for each
    in the last dispatch, and since when each has waited."""

    def __init__(self) -> None:
        self.seen: dict[Request, int] = {}
        self.since: dict[Request, float] = {}

    def note(self, request: dict[str, float]) -> None:
        key = tuple(sorted(request.items()))
        self.seen[key] = self.seen.get(key, 0) + 1

    def due(self, now: float, limit: float | None, sink_address: str) -> list[Request]:
        """Warn once about each new request; return those that waited over ``limit``."""
        seen, self.seen = self.seen, {}
        for key in list(self.since):
            if key not in seen:
                del self.since[key]  # a host declares it now, or none wait
        due = []
        for key, count in seen.items():
            since = self.since.setdefault(key, now)
            if since == now:
                log.warning(
                    "%d task(s) wait for %s, which no connected host declares (start a host "
                    "with: zmqexecutor-worker %s --resources %s)",
                    count,
                    dict(key),
                    sink_address,
                    ",".join(f"{k}={v:g}" for k, v in key),
                )
            if limit is not None and now - since > limit:
                due.append(key)
                del self.since[key]
        return due
