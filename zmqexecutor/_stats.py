"""Snapshots of what an executor is doing: ``ZmqExecutor.stats()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._scheduler import Scheduler


@dataclass(frozen=True)
class WorkerStats:
    """One worker process as the executor sees it."""

    worker_id: str
    host: str
    pid: int
    slots: int
    in_flight: int  #: tasks sent and not answered
    done: int  #: results received (a value or the task's own exception)
    failed: int  #: tasks that raised
    heartbeat_age: float | None  #: seconds since its host was last heard from
    task_ids: tuple[int, ...] = ()  #: ids of the tasks in flight on it, in the order sent
    ready: bool = True  #: it said READY (initializer done) and may be sent tasks


@dataclass(frozen=True)
class HostStats:
    """One worker host as the executor sees it: what it declared and what its tasks hold."""

    host_id: str
    name: str
    resources: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutorStats:
    """A snapshot of an executor: its workers, its tasks, its traffic."""

    workers: list[WorkerStats] = field(default_factory=list)
    pending: int = 0  #: submitted, not yet sent to a worker
    running: int = 0  #: sent to a worker, not answered
    done: int = 0  #: completed with a value
    failed: int = 0  #: completed with an exception of any kind
    bytes_sent: int = 0
    bytes_received: int = 0
    protocol_errors: int = 0  #: bad messages dropped
    discarded_results: int = 0  #: late, replayed or misdirected results dropped
    hosts: list[HostStats] = field(default_factory=list)  #: heard from, not (yet) declared lost
    #: tasks waiting at each priority (only those with any)
    pending_by_priority: dict[int, int] = field(default_factory=dict)
    #: bytes of remote tasks' stdout and stderr printed here (``forward_output``)
    output_bytes: int = 0
    #: bytes of it dropped: over a host's rate limit, or while this process's stdout or
    #: stderr was blocked
    output_dropped: int = 0

    def __str__(self) -> str:
        lines = [
            f"tasks: {self.pending} pending, {self.running} running, {self.done} done, "
            f"{self.failed} failed; {self.bytes_sent:,} bytes sent, "
            f"{self.bytes_received:,} received"
            + (
                f"; remote output: {self.output_bytes:,} bytes printed, "
                f"{self.output_dropped:,} dropped"
                if self.output_bytes or self.output_dropped
                else ""
            ),
            f"{'host':<20} {'pid':>7} {'slots':>5} {'in flight':>9} {'done':>8} {'failed':>6} "
            f"{'heartbeat':>9}",
        ]
        for w in sorted(self.workers, key=lambda w: (w.host, w.pid)):
            age = "-" if w.heartbeat_age is None else f"{w.heartbeat_age:.1f}s"
            lines.append(
                f"{w.host:<20} {w.pid:>7} {w.slots:>5} {w.in_flight:>9} {w.done:>8} "
                f"{w.failed:>6} {age:>9}"
            )
        for h in sorted(self.hosts, key=lambda h: h.name):
            if h.resources:
                held = ", ".join(f"{k} {h.used.get(k, 0):g}/{v:g}" for k, v in h.resources.items())
                lines.append(f"host {h.name}: resources in use {held}")
        if set(self.pending_by_priority) - {0}:
            queued = ", ".join(f"{n} at priority {p}" for p, n in self.pending_by_priority.items())
            lines.append(f"queued: {queued}")
        return "\n".join(lines)


def snapshot(
    core: Scheduler,
    now: float,
    *,
    bytes_sent: int,
    bytes_received: int,
    protocol_errors: int,
    output_bytes: int,
    output_dropped: int,
) -> ExecutorStats:
    """The stats of a scheduling core's state at ``now`` (monotonic), with the dispatcher's
    counters. Called on the dispatcher thread only: nothing else reads the core's state."""
    workers = []
    for w in list(core.workers.values()):
        host = core.hosts.get(w.host_id)
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
                task_ids=tuple(w.outstanding),
                ready=w.ready,
            )
        )
    return ExecutorStats(
        workers=workers,
        pending=len(core.pending),
        running=len(core.owner),
        done=core.done,
        failed=core.failed,
        bytes_sent=bytes_sent,
        bytes_received=bytes_received,
        protocol_errors=protocol_errors,
        discarded_results=core.discarded_results,
        hosts=[
            HostStats(h.host_id, h.name, dict(h.resources), dict(h.used))
            for h in core.hosts.values()
        ],
        pending_by_priority=core.pending.by_priority(),
        output_bytes=output_bytes,
        output_dropped=output_dropped,
    )
