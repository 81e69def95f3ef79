"""Deterministic simulation of the scheduling core (``zmqexecutor/_scheduler.py``).

A hypothesis ``RuleBasedStateMachine`` plays the dispatcher and a small cluster at once: it
submits and cancels tasks, lets simulated workers join, start and finish tasks, die (with
or without a report), leave, freeze and resume with their hosts, delivers results late,
twice and to the wrong place, answers RECALLs between tasks (its answer crossing results,
its death or its host's loss), changes a host's round trip, moves the clock, and shuts
down at any point. After every
step it checks the invariants listed in ``_scheduler.py``'s docstring; at the end of every
run it lets the cluster run to completion and checks that every future ended exactly once.

Nothing here sleeps or starts a thread: time is a number. ``make test`` runs a bounded number
of examples (about 30 s); ``make test-slow`` (``ZMQEXECUTOR_SIM_EXAMPLES``) many more. Every bug
this found keeps its minimal example below as a regression test.
"""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from zmqexecutor._defaults import (
    DEFAULT_MAX_BATCH,
    LOST_RESULT_GRACE,
    MAX_PREFETCH,
    PREFETCH_BACKLOG,
    RTT_SAMPLES,
)
from zmqexecutor._hosts import has_slot, load
from zmqexecutor._protocol import ResultRecord, Status
from zmqexecutor._scheduler import Scheduler, Settings, WorkerState, WorkItem
from zmqexecutor._window import plan_recalls, recall_tail

HB_INTERVAL = 0.2
HB_TIMEOUT = 1.0
NO_WORKER_TIMEOUT = 3.0
DIGESTS = [bytes([i]) * 16 for i in range(3)]
EXAMPLES = int(os.environ.get("ZMQEXECUTOR_SIM_EXAMPLES", "250"))
#: round trips a host's link may be measured at (seconds)
RTTS = [0.0, 0.0, 0.0005, 0.002, 0.05]


@dataclass(eq=False)
class SimWorker:
    """A simulated worker process: what it holds, runs, and has sent."""

    state: WorkerState
    host: SimHost
    limit: int | None  #: max_tasks_per_child
    #: received, not started, in the order sent
    inbox: deque[tuple[int, WorkItem]] = field(default_factory=deque)
    running: tuple[int, WorkItem] | None = None
    last_started: int = 0
    done: int = 0
    #: messages on their way to the executor, in order: ("result", task id, duration),
    #: ("returned", recall id, task ids) or ("bye",)
    outbox: deque[tuple[Any, ...]] = field(default_factory=deque)
    #: RECALLs received and not answered yet: (recall id, task ids asked for); each came
    #: after the tasks it asks for (one socket), so they are running, done or in ``inbox``
    recalls: deque[tuple[int, list[int]]] = field(default_factory=deque)
    alive: bool = True  #: the process exists
    draining: bool = False  #: SIGTERM: finish the running task, then BYE
    leaving: bool = False  #: sent BYE

    @property
    def stopping(self) -> bool:
        """It starts no more tasks (SIGTERM, or max_tasks_per_child reached)."""
        return self.draining or self.leaving

    @property
    def worker_id(self) -> str:
        return self.state.worker_id


@dataclass(eq=False)
class SimHost:
    host_id: str
    name: str
    frozen: bool = False
    frozen_at: float = 0.0
    #: its supervisor died: it comes back only as a new incarnation
    dead: bool = False
    #: a new incarnation (after a death, or a freeze the executor may have taken for one)
    #: kills the old worker processes and registers under a new host id
    incarnation: int = 0
    #: what it declares (--resources)
    resources: dict[str, float] = field(default_factory=dict)
    #: the round trip of its link (seconds): the part of the time between sending a task
    #: and its result that the worker does not report as the task's run time
    rtt: float = 0.0


class SchedulerSimulation(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.items: list[WorkItem] = []
        self.sim_workers: list[SimWorker] = []
        self.ends: Counter[int] = Counter()  #: future id -> times it ended
        self.exec_count: Counter[int] = Counter()  #: item index -> times started
        self.id_starts: Counter[int] = Counter()  #: task id -> times started
        self.started_twice: list[int] = []  #: task ids started more than once
        self.index: dict[int, int] = {}  #: id(item) -> index in self.items
        self.delivered: list[tuple[str, int]] = []  #: results delivered (for replays)
        self.ids = itertools.count(1)
        self.core: Scheduler | None = None

    # -- set-up ----------------------------------------------------------------------------

    @initialize(
        max_retries=st.sampled_from([0, 0, 1, 2]),
        prefetch=st.sampled_from([None, None, 0, 2]),
        max_tasks=st.sampled_from([None, None, 1, 3]),
        hosts=st.integers(1, 3),
        gpus=st.lists(st.sampled_from([0, 0, 1, 2]), min_size=3, max_size=3),
        plain=st.booleans(),
    )
    def setup(
        self,
        max_retries: int,
        prefetch: int | None,
        max_tasks: int | None,
        hosts: int,
        gpus: tuple[int, ...] = (0, 0, 0),
        plain: bool = False,
    ) -> None:
        #: only tasks of the default priority without resources: they may be prefetched
        #: (and taken back), which a priority or a resource request anywhere turns off
        self.plain = plain
        self.settings = Settings(
            prefetch=prefetch,
            max_tasks_per_child=max_tasks,
            max_retries=max_retries,
            heartbeat_interval=HB_INTERVAL,
            heartbeat_timeout=HB_TIMEOUT,
            no_worker_timeout=NO_WORKER_TIMEOUT,
        )
        self.core = Scheduler(self.settings, self.ids, "ipc://sim")
        self.hosts = [
            SimHost(f"host{i}-0", f"h{i}", resources={"GPU": gpus[i]} if gpus[i] else {})
            for i in range(hosts)
        ]
        for host in self.hosts:
            self.core.heartbeat(host.host_id, host.name, self.now)
        self.core.tick(self.now)  # the dispatcher's loop ticks from its first round

    # -- the dispatcher's part -----------------------------------------------------------------

    def after_event(self) -> None:
        """What the dispatcher does after every event: dispatch, then carry out actions."""
        core = self.core
        assert core is not None
        while True:  # as the dispatcher: again while a worker took a whole batch
            backlog = len(core.pending) >= PREFETCH_BACKLOG * core._ready_slots
            self.dispatch_once()
            if not core.cut_short or not core.pending:
                break
        self.check_round_complete(backlog)
        core.rebalance()
        for w, task_ids in core.recalls:
            assert w.alive and w.recall_id, f"a RECALL to {w.worker_id}, which is gone"
            self.sim_of(w).recalls.append((w.recall_id, list(task_ids)))
        core.recalls.clear()
        self.apply_resolutions()
        core.closed.clear()

    def dispatch_once(self) -> None:
        core = self.core
        assert core is not None
        for w, items in core.dispatch(self.now):
            sim = self.sim_of(w)
            assert w.alive and w.ready, f"sent tasks to {w.worker_id}, which is not ready"
            assert 0 < len(items) <= DEFAULT_MAX_BATCH, f"a batch of {len(items)} tasks"
            for item in items:
                i = self.index[id(item)]
                self.check_order(w, item)
                if item.resources:
                    declared = sim.host.resources
                    assert all(v <= declared.get(k, 0) for k, v in item.resources.items()), (
                        f"task {i} needs {item.resources}, sent to a host with {declared}"
                    )
                assert self.exec_count[i] <= self.settings.max_retries, (
                    f"task {i} ran {self.exec_count[i]} time(s) and is sent again "
                    f"(max_retries={self.settings.max_retries})"
                )
                lost_on = item.lost_on or set()
                assert w.worker_id not in lost_on and w.host_id not in lost_on, (
                    "a retry went back where it was lost"
                )
                sim.inbox.append((item.task_id, item))
            core.sent(items, self.now)

    def check_round_complete(self, backlog: bool) -> None:
        """A round fills the window: the least loaded ready worker would not take the next
        queued task (a round that stopped early, e.g. at a batch's size, would leave a
        worker across a long link idle until the next results come; ``Scheduler._fill``)."""
        core = self.core
        assert core is not None
        first = next(iter(core.pending), None)
        if first is None or first.resources is not None or first.lost_on:
            return
        if first.future.cancelled():
            return  # a later round drops it
        ready = [w for w in core._ready.values() if w.remaining is None or w.remaining > 0]
        if ready:
            w = min(ready, key=load)
            assert not core._accepts(w, first, self.now, backlog), (
                f"dispatch stopped while the least loaded worker {w.worker_id} (holding "
                f"{len(w.outstanding)}) would still take the next task"
            )

    def apply_resolutions(self) -> None:
        core = self.core
        assert core is not None
        resolved, core.resolved = core.resolved, []
        for future, ok, value in resolved:
            assert not future.done(), "a future was resolved twice"
            self.ends[id(future)] += 1
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def sim_of(self, w: WorkerState) -> SimWorker:
        return next(s for s in self.sim_workers if s.state is w)

    # -- the executor's events --------------------------------------------------------------

    def check_order(self, w: WorkerState, item: WorkItem) -> None:
        """Higher priority first; FIFO within a priority (for tasks never sent before)."""
        assert self.core is not None
        lost_here = {w.worker_id, w.host_id}
        for other in self.core.pending:
            if other.resources is not None or other.future.cancelled():
                continue
            if (other.lost_on or set()) & lost_here:
                continue
            assert other.priority <= item.priority, (
                f"task {self.index[id(item)]} (priority {item.priority}) was sent before "
                f"task {self.index[id(other)]} (priority {other.priority})"
            )
            if item.sends == 1 and other.sends == 0 and other.priority == item.priority:
                assert self.index[id(other)] > self.index[id(item)] or item.resources, (
                    f"task {self.index[id(item)]} overtook task {self.index[id(other)]} "
                    f"of the same priority"
                )

    @rule(
        n=st.integers(1, 6),
        digest=st.sampled_from(DIGESTS),
        priority=st.sampled_from([0, 0, 0, 1, 2, -1]),
        resources=st.sampled_from([None, None, None, {"GPU": 1}, {"GPU": 2}, {"TPU": 1}]),
    )
    def submit(
        self,
        n: int,
        digest: bytes,
        priority: int = 0,
        resources: dict[str, float] | None = None,
    ) -> None:
        assert self.core is not None
        if self.core.shutdown_requested:
            return  # the executor refuses new work after shutdown()
        if self.plain:
            priority, resources = 0, None
        for _ in range(n):
            item = WorkItem(Future(), next(self.ids), digest, b"fn", b"args", ())
            item.priority, item.resources = priority, resources
            self.index[id(item)] = len(self.items)
            self.items.append(item)
            self.core.pending.append(item)
        self.after_event()

    @precondition(lambda self: self.items)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(self.items))
        item.future.cancel()
        self.after_event()

    @rule(cancel_futures=st.booleans())
    def shutdown(self, cancel_futures: bool) -> None:
        assert self.core is not None
        if cancel_futures:
            self.core.cancel_queued()
        self.core.request_shutdown()
        self.after_event()

    # -- workers -------------------------------------------------------------------------------

    def eligible(self, predicate: Any) -> list[SimWorker]:
        return [s for s in self.sim_workers if not s.host.frozen and predicate(s)]

    def draw(self, data: st.DataObject, predicate: Any) -> SimWorker:
        return data.draw(st.sampled_from(self.eligible(predicate)))

    @precondition(lambda self: any(not h.frozen for h in self.hosts))
    @rule(
        data=st.data(),
        slots=st.sampled_from([1, 1, 2]),
        init=st.sampled_from(["ready", "ready", "ready", "failed", "later"]),
    )
    def join(self, data: st.DataObject, slots: int, init: str) -> None:
        host = data.draw(st.sampled_from([h for h in self.hosts if not h.frozen]))
        self.add_worker(host, slots, init)

    def add_worker(self, host: SimHost, slots: int = 1, init: str = "ready") -> SimWorker:
        assert self.core is not None
        n = len(self.sim_workers)
        w = self.core.worker_joined(
            f"w{n:015d}", host.host_id, host.name, 1000 + n, slots, self.now, host.resources
        )
        sim = SimWorker(w, host, self.settings.max_tasks_per_child)
        self.sim_workers.append(sim)
        if init == "ready":
            self.core.worker_ready(w)
        elif init == "failed":
            sim.alive = False
            self.core.worker_init_failed(w, "ValueError: bad init", "")
        self.after_event()
        return sim

    @precondition(lambda self: self.eligible(lambda s: s.alive))
    @rule(data=st.data())
    def become_ready(self, data: st.DataObject) -> None:
        assert self.core is not None
        self.core.worker_ready(self.draw(data, lambda s: s.alive).state)  # repeats are harmless
        self.after_event()

    @staticmethod
    def can_start(sim: SimWorker) -> bool:
        return sim.alive and not sim.running and bool(sim.inbox) and not sim.stopping

    @precondition(lambda self: self.eligible(self.can_start))
    @rule(data=st.data())
    def start_task(self, data: st.DataObject) -> None:
        self.start(self.draw(data, self.can_start))

    def start(self, sim: SimWorker) -> None:
        """The worker starts the next task it holds (it runs them in order)."""
        task_id, item = sim.inbox.popleft()
        sim.running = (task_id, item)
        sim.last_started = task_id
        self.exec_count[self.index[id(item)]] += 1
        self.id_starts[task_id] += 1
        if self.id_starts[task_id] > 1:
            self.started_twice.append(task_id)

    @precondition(lambda self: self.eligible(lambda s: s.alive and (s.running or s.inbox)))
    @rule(data=st.data(), k=st.integers(1, 3))
    def work(self, data: st.DataObject, k: int) -> None:
        """The worker runs through what it holds: finishes its task and starts the next,
        ``k`` times (leaving results unsent and, often, a task running)."""
        self.work_on(self.draw(data, lambda s: s.alive and (s.running or s.inbox)), k)

    def work_on(self, sim: SimWorker, k: int, duration: float = 0.001) -> None:
        for _ in range(k):
            if sim.running is not None:
                self.finish(sim, duration)
            if not self.can_start(sim):
                break
            self.start(sim)

    @precondition(lambda self: self.eligible(lambda s: s.alive and s.running))
    @rule(data=st.data(), duration=st.sampled_from([0.0001, 0.001, 0.5]))
    def finish_task(self, data: st.DataObject, duration: float) -> None:
        self.finish(self.draw(data, lambda s: s.alive and s.running), duration)

    def finish(self, sim: SimWorker, duration: float) -> None:
        assert sim.running is not None
        task_id, _ = sim.running
        sim.running = None
        sim.outbox.append(("result", task_id, duration))
        sim.done += 1
        if sim.draining or (sim.limit is not None and sim.done >= sim.limit):
            self._leave(sim)

    def _leave(self, sim: SimWorker) -> None:
        """BYE after the running task's result; what it holds and has not started stays."""
        sim.leaving = True
        sim.outbox.append(("bye",))

    @precondition(lambda self: self.eligible(lambda s: s.alive and not s.stopping))
    @rule(data=st.data())
    def sigterm(self, data: st.DataObject) -> None:
        self.sigterm_now(self.draw(data, lambda s: s.alive and not s.stopping))

    def sigterm_now(self, sim: SimWorker) -> None:
        sim.draining = True
        if sim.running is None:  # else the running task finishes first, then BYE
            self._leave(sim)

    @staticmethod
    def can_answer(sim: SimWorker) -> bool:
        return sim.alive and bool(sim.recalls) and not sim.leaving

    @precondition(lambda self: self.eligible(self.can_answer))
    @rule(data=st.data())
    def answer_recall(self, data: st.DataObject) -> None:
        self.answer(self.draw(data, self.can_answer))

    def answer(self, sim: SimWorker) -> None:
        """Between tasks, the worker answers its oldest RECALL: it gives back the tasks
        asked for that it holds and has not started (the one it runs stays)."""
        recall_id, asked = sim.recalls.popleft()
        back = [task_id for task_id, _ in sim.inbox if task_id in asked]
        sim.inbox = deque(entry for entry in sim.inbox if entry[0] not in back)
        sim.outbox.append(("returned", recall_id, back))

    @precondition(lambda self: self.eligible(lambda s: s.outbox))
    @rule(data=st.data(), n=st.integers(1, 3))
    def deliver_results(self, data: st.DataObject, n: int) -> None:
        self.deliver(self.draw(data, lambda s: s.outbox), n)

    def deliver(self, sim: SimWorker, n: int) -> None:
        """The next messages of this worker reach the sink (in order: one socket), even
        after the worker died or was declared lost: those results are late."""
        assert self.core is not None
        for _ in range(n):
            if not sim.outbox:
                break
            message = sim.outbox.popleft()
            if message[0] == "result":
                _, task_id, duration = message
                held = self.core.owner.get(task_id)
                item = held.outstanding.get(task_id) if held is not None else None
                if item is not None and held is sim.state:  # time passed: it ran long
                    duration = max(duration, self.now - item.sent_at - sim.host.rtt)
                self._deliver_result(sim.worker_id, task_id, duration)
            elif message[0] == "returned":
                self.core.returned(sim.worker_id, message[1], message[2])
            elif sim.state.alive:
                self.core.worker_left(sim.state, sim.done)
                sim.alive = False
        self.after_event()

    def _deliver_result(self, sender: str, task_id: int, duration: float = 0.001) -> None:
        assert self.core is not None
        record = ResultRecord(task_id, Status.OK, b"", [], duration)
        self.core.results(sender.encode(), [record], self.now, lambda r: (True, r.task_id))
        self.delivered.append((sender, task_id))

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """A captured result is sent again (by an authenticated peer)."""
        sender, task_id = data.draw(st.sampled_from(self.delivered))
        self._deliver_result(sender, task_id)
        self.after_event()

    @precondition(lambda self: len(self.sim_workers) >= 2)
    @rule(data=st.data())
    def misdirect(self, data: st.DataObject) -> None:
        """A result for a task held by one worker claims to come from another."""
        a, b = data.draw(st.permutations(self.sim_workers).map(lambda p: p[:2]))
        held = list(a.state.outstanding)
        if held:
            self._deliver_result(b.worker_id, held[0])
        self.after_event()

    @precondition(lambda self: self.eligible(lambda s: s.alive))
    @rule(data=st.data(), report=st.sampled_from(["died", "died", "timeout", "host"]))
    def die(self, data: st.DataObject, report: str) -> None:
        """The process dies (crash, OOM kill, task_timeout) and its supervisor reports it;
        or the whole host dies with it ("host": no report, its heartbeats stop)."""
        self.die_now(self.draw(data, lambda s: s.alive), report)

    def die_now(self, sim: SimWorker, report: str = "died") -> None:
        assert self.core is not None
        if report == "host":
            for other in self.sim_workers:
                if other.host is sim.host:
                    other.alive = False
                    other.running = None
            sim.host.frozen = sim.host.dead = True  # silent until restarted (resume)
            sim.host.frozen_at = self.now
            return
        sim.alive = False
        running = sim.running[0] if sim.running else 0
        sim.running = None
        if sim.state.alive:
            self.core.worker_died(
                sim.state,
                running=running,
                last_started=sim.last_started,
                how="was killed by SIGKILL",
                timeout=1.0 if report == "timeout" and running else 0.0,
                now=self.now,
            )
        self.after_event()

    # -- hosts and time -------------------------------------------------------------------------

    @rule(data=st.data())
    def freeze(self, data: st.DataObject) -> None:
        """SIGSTOP of a host's whole tree, or a partition: nothing moves either way."""
        self.freeze_host(data.draw(st.sampled_from(self.hosts)))

    def freeze_host(self, host: SimHost) -> None:
        if not host.frozen:
            host.frozen, host.frozen_at = True, self.now

    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        """SIGCONT, the link heals, or a dead host is restarted."""
        host = data.draw(st.sampled_from(self.hosts))
        if host.frozen:
            self.resume_host(host)
            self.after_event()

    @rule(data=st.data(), rtt=st.sampled_from(RTTS))
    def change_link(self, data: st.DataObject, rtt: float) -> None:
        """A host's link gets slower or faster (the scheduler times it in ``results``)."""
        data.draw(st.sampled_from(self.hosts)).rtt = rtt

    @rule(dt=st.sampled_from([0.01, 0.1, HB_INTERVAL, LOST_RESULT_GRACE + 0.1, HB_TIMEOUT + 0.5]))
    def advance(self, dt: float) -> None:
        """Time passes; hosts that are not frozen say they are alive on the way."""
        assert self.core is not None
        end = self.now + dt
        while self.now < end:
            self.now = min(end, self.now + HB_INTERVAL)
            for host in self.hosts:
                if not host.frozen:
                    self.core.heartbeat(host.host_id, host.name, self.now)
            self.core.tick(self.now)
            self.after_event()

    @rule()
    def stall(self) -> None:
        """The executor itself stands still longer than heartbeat_timeout (SIGSTOP, a
        suspended VM); the hosts' heartbeats wait in the sink and are read after its first
        tick. No host that kept beating may be declared lost for the executor's silence."""
        assert self.core is not None
        beating = [h.host_id for h in self.hosts if not h.frozen and h.host_id in self.core.hosts]
        self.now += HB_TIMEOUT + 0.5
        self.core.tick(self.now)
        for host in self.hosts:
            if not host.frozen:
                self.core.heartbeat(host.host_id, host.name, self.now)
        self.after_event()
        lost = [h for h in beating if h not in self.core.hosts]
        assert not lost, f"hosts {lost} were declared lost while the executor stood still"

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def every_task_is_in_exactly_one_place(self) -> None:
        core = self.core
        if core is None:
            return
        queued = Counter(id(item) for item in core.pending)
        for i, item in enumerate(self.items):
            held = core.owner.get(item.task_id)
            is_held = held is not None and held.outstanding.get(item.task_id) is item
            places = queued[id(item)] + is_held
            assert places <= 1, f"task {i} is queued {queued[id(item)]}x and held {is_held}"
            if item.future.done():
                assert not is_held, f"task {i} has ended but a worker still holds it"
                continue
            assert places == 1, f"task {i} is neither done, queued nor held: lost"

    @invariant()
    def owner_agrees_with_outstanding(self) -> None:
        core = self.core
        if core is None:
            return
        for task_id, w in core.owner.items():
            assert task_id in w.outstanding, f"owner says {w.worker_id} holds {task_id}"
        for sim in self.sim_workers:
            for task_id in sim.state.outstanding:
                assert core.owner.get(task_id) is sim.state, (
                    f"{sim.worker_id} holds task {task_id} but owner says "
                    f"{getattr(core.owner.get(task_id), 'worker_id', None)}"
                )

    @invariant()
    def at_most_once(self) -> None:
        if self.core is None:
            return
        for i, count in self.exec_count.items():
            assert count <= 1 + self.settings.max_retries, f"task {i} ran {count} times"

    @invariant()
    def a_task_id_starts_once(self) -> None:
        """A task that may have run is sent again only under a new id (a retry): a task
        taken back (RECALL, BYE, a death before it started) had not started."""
        assert not self.started_twice, f"task ids {self.started_twice} started twice"

    @invariant()
    def recalls_agree(self) -> None:
        """A worker is asked for tasks only by one RECALL at a time, and only for tasks it
        holds."""
        core = self.core
        if core is None:
            return
        for sim in self.sim_workers:
            w = sim.state
            assert w.recall <= set(w.outstanding), f"{w.worker_id} asked for tasks it lacks"
            assert w.recall_id or not w.recall, f"{w.worker_id} asked without a RECALL"

    @invariant()
    def no_idle_worker_beside_a_long_queue(self) -> None:
        """No lost wake-up of the recall rule: while a ready worker has a free slot (so
        nothing waits that it may take: invariant 4), every worker holding a tail worth
        taking back has been asked for it (or the ready workers with a free slot are all
        matched with a RECALL already)."""
        core = self.core
        if core is None or core.broken is not None:
            return
        idle = [w for w in core.workers.values() if w.ready and w.alive and has_slot(w)]
        asked = sum(1 for w in core.workers.values() if w.recall_id)
        if not idle or asked >= len(idle):
            return
        for w in core.workers.values():
            if w.ready and w.alive and not w.recall_id and len(w.outstanding) > w.slots:
                hosts = [core.hosts.get(x.host_id) for x in (w, *idle)]
                rtt = max((h.rtt or 0.0) if h is not None else 0.0 for h in hosts)
                assert not recall_tail(w, 1.5 * rtt), (
                    f"{w.worker_id} holds a tail worth taking back while {idle[0].worker_id} idles"
                )

    @invariant()
    def futures_end_once(self) -> None:
        assert all(n == 1 for n in self.ends.values())

    @invariant()
    def resources_never_overcommitted(self) -> None:
        core = self.core
        if core is None:
            return
        for host in core.hosts.values():
            held: Counter[str] = Counter()
            units: list[tuple[str, int]] = []
            for sim in self.sim_workers:
                if sim.state.host_id != host.host_id:
                    continue
                for item in sim.state.outstanding.values():
                    if item.units is None:
                        continue  # holds nothing (now)
                    assert sim.state.alive, "a task of a gone worker still holds resources"
                    for k, v in (item.resources or {}).items():
                        held[k] += int(v)
                    units += [(k, u) for k, us in item.units.items() for u in us]
            for k, v in held.items():
                assert v <= host.resources.get(k, 0), f"{host.name} holds {v} {k}"
                assert abs(host.used.get(k, 0) - v) < 1e-9, f"{host.name} counts {k} wrong"
            assert len(units) == len(set(units)), f"a unit of {host.name} is held twice"

    @invariant()
    def no_lost_wakeup(self) -> None:
        core = self.core
        if core is None or not core.pending:
            return
        for w in core.workers.values():
            if not (w.ready and w.alive) or len(w.outstanding) >= w.slots:
                continue
            if w.remaining is not None and w.remaining <= 0:
                continue
            host = core.hosts.get(w.host_id)
            for item in core.pending:
                if not item.sends and item.future.cancelled():
                    continue
                if item.resources is not None and (host is None or not host.fits(item.resources)):
                    continue  # it waits for resources, not for this worker
                lost_on = item.lost_on or set()
                assert w.worker_id in lost_on or w.host_id in lost_on, (
                    f"{w.worker_id} has a free slot while task {self.index[id(item)]} waits"
                )

    # -- the end: run to completion --------------------------------------------------------------

    def teardown(self) -> None:
        core = self.core
        if core is None:
            return
        for host in self.hosts:
            if host.frozen:
                self.resume_host(host)
        for _ in range(50):
            if all(item.future.done() for item in self.items) and core.finished():
                break
            self.run_everything_once()
        unfinished = [i for i, item in enumerate(self.items) if not item.future.done()]
        assert not unfinished, f"tasks {unfinished} never ended"
        core.request_shutdown()
        assert core.finished(), "the dispatcher could not finish after shutdown"

    def resume_host(self, host: SimHost) -> None:
        """A host that was silent longer than heartbeat_timeout (or that the executor
        declared lost, or that died) kills its worker processes and registers anew under
        a new host id; one that was silent briefly just goes on."""
        assert self.core is not None
        host.frozen = False
        gone = host.dead or host.host_id not in self.core.hosts
        if gone or self.now - host.frozen_at > HB_TIMEOUT:
            if host.host_id not in self.core.hosts:
                # a heartbeat of the old incarnation, sent before it noticed: no revival
                self.core.heartbeat(host.host_id, host.name, self.now)
                assert host.host_id not in self.core.hosts, "a lost host came back to life"
            host.dead = False
            for sim in self.sim_workers:
                if sim.host is host:
                    sim.alive = False
                    sim.running = None
            host.incarnation += 1
            host.host_id = f"{host.host_id.split('-')[0]}-{host.incarnation}"
        self.core.heartbeat(host.host_id, host.name, self.now)

    def run_everything_once(self) -> None:
        """One round of a healthy cluster: every host keeps a ready worker (its supervisor
        replaces the ones that leave), every worker runs and reports what it holds, and
        time moves on."""
        core = self.core
        assert core is not None
        busy = True
        while busy:
            busy = False
            for sim in self.sim_workers:
                if sim.alive and sim.state.alive and not sim.state.ready:
                    core.worker_ready(sim.state)
            for host in self.hosts:
                if not any(s.alive and s.host is host and not s.stopping for s in self.sim_workers):
                    n = len(self.sim_workers)
                    w = core.worker_joined(
                        f"w{n:015d}", host.host_id, host.name, 1000 + n, 1, self.now, host.resources
                    )
                    self.sim_workers.append(SimWorker(w, host, self.settings.max_tasks_per_child))
                    core.worker_ready(w)
            self.after_event()
            for sim in list(self.sim_workers):
                if not sim.alive:
                    while sim.outbox:  # late results (and answers) of the dead
                        message = sim.outbox.popleft()
                        if message[0] == "result":
                            self._deliver_result(sim.worker_id, message[1])
                        elif message[0] == "returned":
                            core.returned(sim.worker_id, message[1], message[2])
                    continue
                while sim.recalls and not sim.leaving:
                    busy = True
                    self.answer(sim)
                while sim.running or (sim.inbox and not sim.stopping):
                    busy = True
                    if sim.running is None:
                        self.start(sim)
                    self.finish(sim, 0.001)
                while sim.outbox:
                    busy = True
                    self.deliver(sim, 1)
        self.advance(HB_INTERVAL)


# -- long random walks: deep interleavings, cheaply ----------------------------------------------
#
# hypothesis shrinks a failure to a minimal example, but its runs are short. These walks go
# hundreds of steps deep with weights that favour the interesting events (work, deaths,
# freezes, time), from fixed seeds, so a failure is replayed exactly by its seed.

WALKS = int(os.environ.get("ZMQEXECUTOR_SIM_WALKS", "1500"))
WALK_STEPS = 200


def random_walk(seed: int, steps: int = WALK_STEPS, recall: bool = False) -> list[str]:
    """Drive a simulation from ``seed``; return the trace (raises on a broken invariant).
    With ``recall`` the walk favours prefetch and RECALL: plain tasks in bursts, short
    run times, short links, and small steps of time."""
    rng = random.Random(seed)
    sim = SchedulerSimulation()
    sim.setup(
        max_retries=rng.choice([0, 0, 1, 2]),
        prefetch=rng.choice([None, 4, 8] if recall else [None, None, 0, 2]),
        max_tasks=rng.choice([None, None, None, 3] if recall else [None, None, 1, 3]),
        hosts=rng.randint(1, 3),
        gpus=(0, 0, 0) if recall else tuple(rng.choice([0, 0, 1, 2]) for _ in range(3)),
        plain=recall or rng.random() < 0.5,
    )
    durations = [0.0001, 0.0002] if recall else [0.0001, 0.001, 0.05]
    rtts = [0.0, 0.0, 0.0, 0.0005] if recall else RTTS
    steps_of_time = [0.0001, 0.0001, 0.0001, LOST_RESULT_GRACE + 0.1, HB_TIMEOUT + 0.5]
    if not recall:
        steps_of_time = [0.01, 0.1, HB_INTERVAL, LOST_RESULT_GRACE + 0.1, HB_TIMEOUT + 0.5]
    weights = [12, 5, 20, 14, 5, 2, 3, 3, 12, 2, 1, 1, 1, 1, 6, 4]
    if recall:
        weights = [10, 1, 20, 16, 4, 1, 2, 2, 6, 1, 1, 1, 1, 1, 12, 3]
    trace = [f"setup {sim.settings} {[h.resources for h in sim.hosts]}"]
    if recall:  # several workers from the start, on one host or on several
        for _ in range(rng.randint(2, 4)):
            sim.add_worker(rng.choice(sim.hosts), rng.choice([1, 1, 2]))

    def some(predicate: Any) -> SimWorker | None:
        found = sim.eligible(predicate)
        return rng.choice(found) if found else None

    def act() -> str:
        kind = rng.choices(
            ["submit", "join", "work", "deliver", "die", "sigterm", "freeze", "resume",
             "advance", "cancel", "replay", "misdirect", "shutdown", "stall", "recall", "link"],
            weights=weights,
        )[0]  # fmt: skip
        if kind == "submit":
            n = rng.randint(1, 48 if recall else 6)  # recall: a backlog, so prefetch
            priority = rng.choice([0, 0, 0, 0, 1, 2, -1])
            resources = rng.choice([None, None, None, None, {"GPU": 1}, {"GPU": 2}, {"TPU": 1}])
            sim.submit(n=n, digest=rng.choice(DIGESTS), priority=priority, resources=resources)
            return f"submit {n} priority={priority} resources={resources}"
        if kind == "join":
            hosts = [h for h in sim.hosts if not h.frozen]
            if not hosts:
                return "join: no host"
            host = rng.choice(hosts)
            init = rng.choice(["ready", "ready", "ready", "failed", "later"])
            w = sim.add_worker(host, rng.choice([1, 1, 2]), init)
            return f"join {w.worker_id[-3:]} on {host.host_id} {init}"
        if kind == "work":
            w = some(lambda s: s.alive and (s.running or s.inbox))
            if w is None:
                return "work: none"
            k = rng.randint(1, 8 if recall else 3)
            sim.work_on(w, k, rng.choice(durations))
            return f"work {w.worker_id[-3:]} x{k}"
        if kind == "deliver":
            w = some(lambda s: s.outbox)
            if w is None:
                return "deliver: none"
            n = rng.randint(1, 8 if recall else 3)
            sim.deliver(w, n)
            return f"deliver {w.worker_id[-3:]} x{n}"
        if kind == "die":
            w = some(lambda s: s.alive)
            if w is None:
                return "die: none"
            report = rng.choice(["died", "died", "timeout", "host"])
            sim.die_now(w, report)
            return f"die {w.worker_id[-3:]} {report}"
        if kind == "sigterm":
            w = some(lambda s: s.alive and not s.stopping)
            if w is None:
                return "sigterm: none"
            sim.sigterm_now(w)
            return f"sigterm {w.worker_id[-3:]}"
        if kind in ("freeze", "resume"):
            host = rng.choice(sim.hosts)
            if kind == "freeze":
                sim.freeze_host(host)
            elif host.frozen:
                sim.resume_host(host)
                sim.after_event()
            return f"{kind} {host.host_id}"
        if kind == "advance":
            dt = rng.choice(steps_of_time)
            sim.advance(dt)
            return f"advance {dt}"
        if kind == "cancel" and sim.items:
            i = rng.randrange(len(sim.items))
            sim.items[i].future.cancel()
            sim.after_event()
            return f"cancel {i}"
        if kind == "replay" and sim.delivered:
            sender, task_id = rng.choice(sim.delivered)
            sim._deliver_result(sender, task_id)
            sim.after_event()
            return f"replay {task_id}"
        if kind == "misdirect" and len(sim.sim_workers) >= 2:
            a, b = rng.sample(sim.sim_workers, 2)
            held = list(a.state.outstanding)
            if held:
                sim._deliver_result(b.worker_id, held[0])
                sim.after_event()
            return f"misdirect {held[:1]} to {b.worker_id[-3:]}"
        if kind == "stall":
            sim.stall()
            return "stall"
        if kind == "link":
            host = rng.choice(sim.hosts)
            host.rtt = rng.choice(rtts)
            return f"link of {host.host_id}: round trip {host.rtt}"
        if kind == "recall":
            w = some(sim.can_answer)
            if w is None:
                return "recall: none"
            sim.answer(w)
            return f"answer recall {w.worker_id[-3:]}"
        if kind == "shutdown":
            cancel = rng.random() < 0.5
            sim.shutdown(cancel_futures=cancel)
            return f"shutdown cancel_futures={cancel}"
        return f"{kind}: nothing"

    checks = [
        sim.resources_never_overcommitted,
        sim.every_task_is_in_exactly_one_place,
        sim.owner_agrees_with_outstanding,
        sim.at_most_once,
        sim.a_task_id_starts_once,
        sim.recalls_agree,
        sim.no_idle_worker_beside_a_long_queue,
        sim.futures_end_once,
        sim.no_lost_wakeup,
    ]
    try:
        for _ in range(steps):
            trace.append(act())
            for check in checks:
                check()
        trace.append("teardown")
        sim.teardown()
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}\n  " + "\n  ".join(trace[-60:])) from None
    return trace


@pytest.mark.timeout(300)
def test_random_walks() -> None:
    for seed in range(WALKS):
        random_walk(seed)


@pytest.mark.timeout(300)
def test_random_walks_with_recalls() -> None:
    """Walks where workers hold queued work and idle ones take it back (RECALL), through
    deaths, host losses and answers that cross results (issue 11)."""
    for seed in range(WALKS // 5):
        random_walk(seed, recall=True)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_random_walks_long() -> None:
    """``make test-slow``: 40 times the walks of ``make test``, from other seeds, and
    twice as deep."""
    for seed in range(10**6, 10**6 + 40 * WALKS):
        random_walk(seed, 2 * WALK_STEPS)


SchedulerSimulation.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.timeout(300)
class TestSchedulerSimulation(SchedulerSimulation.TestCase):  # type: ignore[name-defined,misc]
    pass


# -- regression tests: minimal examples of bugs the simulation found ------------------------


def test_retry_resolves_after_the_grace_of_finished_results() -> None:
    """Issue 9 bug 1: a worker dies with a finished result unsent and a task running; the
    running task is retried elsewhere under a new id. When the finished result's grace
    expired, the old dispatcher forgot the *new* id, whose owner by then was the live worker,
    so the retry's result was discarded and its future never ended."""
    state = SchedulerSimulation()
    state.setup(max_retries=1, prefetch=2, max_tasks=None, hosts=1)
    state.submit(n=3, digest=DIGESTS[0])
    (host,) = state.hosts
    first = state.add_worker(host)
    assert len(first.inbox) == 3
    second = state.add_worker(host)
    state.work_on(first, 2)  # finished one (result unsent), runs the second
    state.die_now(first)
    state.owner_agrees_with_outstanding()
    state.advance(LOST_RESULT_GRACE + 0.1)  # the unsent result is lost; the retry is not
    state.every_task_is_in_exactly_one_place()
    state.owner_agrees_with_outstanding()
    state.work_on(second, 4)
    state.deliver(second, 3)
    # all three ended with a value: the lost one and the unsent one were retried (max_retries=1)
    assert [i.future.result(timeout=0) for i in state.items] == [i.task_id for i in state.items]
    assert sorted(state.exec_count.values()) == [1, 2, 2]
    state.teardown()


def test_cancel_futures_keeps_a_task_that_came_back_unstarted() -> None:
    """shutdown(cancel_futures=True) popped every queued task and cancelled it; a task that
    had come back unstarted from a dead worker has a running future, which cancel() refuses,
    so it was dropped and its future never ended (the old executor code; found again by the
    walks when put back)."""
    state = SchedulerSimulation()
    state.setup(max_retries=0, prefetch=2, max_tasks=None, hosts=1)
    state.submit(n=2, digest=DIGESTS[0])
    (host,) = state.hosts
    first = state.add_worker(host)
    state.work_on(first, 1)  # runs the first, holds the second unstarted
    state.die_now(first)  # the first fails, the second goes back to the queue
    state.shutdown(cancel_futures=True)
    state.every_task_is_in_exactly_one_place()
    state.teardown()
    assert state.items[1].future.result(timeout=0) == state.items[1].task_id


def test_a_stalled_executor_keeps_its_hosts() -> None:
    """The executor itself stood still past heartbeat_timeout: its first tick after that
    must not declare every host lost before it has read their heartbeats."""
    state = SchedulerSimulation()
    state.setup(max_retries=0, prefetch=None, max_tasks=None, hosts=2)
    state.stall()  # asserts that no host that kept beating was declared lost


def test_a_lost_host_does_not_come_back_by_a_late_heartbeat() -> None:
    state = SchedulerSimulation()
    state.setup(max_retries=0, prefetch=None, max_tasks=None, hosts=1)
    (host,) = state.hosts
    assert state.core is not None
    old = host.host_id
    host.frozen, host.frozen_at = True, state.now
    state.advance(HB_TIMEOUT + 0.5)
    assert old not in state.core.hosts
    state.core.heartbeat(old, host.name, state.now)
    assert old not in state.core.hosts


def test_a_dead_workers_resources_are_free_at_once() -> None:
    """A worker died holding a finished GPU task whose result may still come (its grace
    period): the GPU is free again at once, not after the grace. Found by the walks' check
    that only live workers hold resources."""
    state = SchedulerSimulation()
    state.setup(max_retries=0, prefetch=2, max_tasks=None, hosts=1, gpus=(1, 0, 0))
    (host,) = state.hosts
    first = state.add_worker(host)
    state.submit(n=1, digest=DIGESTS[0], resources={"GPU": 1})
    state.work_on(first, 1)
    state.finish(first, 0.001)  # finished; its result is not sent yet
    state.die_now(first)
    second = state.add_worker(host)
    state.submit(n=1, digest=DIGESTS[0], resources={"GPU": 1})
    assert len(second.inbox) == 1, "the GPU was still held by the dead worker's task"
    state.resources_never_overcommitted()


def test_an_idle_worker_asks_the_next_worker_when_the_first_holds_nothing_worth_taking() -> None:
    """Random walk seed 246 (recall): the most loaded worker held a tail not worth taking
    back (tasks of unknown run time), and the idle worker asked no other, although the next
    one held enough: it idled beside a long queue."""

    def worker(name: str, estimates: list[float | None]) -> WorkerState:
        w = WorkerState(name.ljust(16, "0"), "h", 1, 1, host_id="h1")
        for estimate in estimates:
            item = WorkItem(
                Future(), len(w.outstanding) + 100 * len(name), DIGESTS[0], b"", b"", ()
            )
            item.estimate = estimate
            w.outstanding[item.task_id] = item
        return w

    first = worker("a", [None, None, 0.0002])
    second = worker("bb", [0.0002, 0.0002, 0.0002])
    idle = worker("ccc", [])
    plan = plan_recalls([idle], [first, second, idle], {})
    assert [(donor.worker_id, ids) for donor, ids in plan] == [(second.worker_id, [202])]


def test_one_round_fills_the_window_of_a_long_link() -> None:
    """Issue 11: a round gave a worker at most one batch (DEFAULT_MAX_BATCH tasks), and the
    dispatcher's loop runs again only when results come: across a 50 ms link a worker held
    a few hundred no-op tasks where its window allows thousands, and W1 ran at 0.11x of
    direct. A dispatch cut short at a batch now says so, and asked again until it is not
    it sends the whole window, in batches, each worker's in the order submitted."""
    core = Scheduler(Settings(), itertools.count(1), "ipc://sim")
    now = 1000.0
    core.heartbeat("far", "far", now)
    w = core.worker_joined("w".ljust(16, "0"), "far", "far", 1, 1, now)
    core.worker_ready(w)
    core.durations[DIGESTS[0]] = 1e-6  # noop()
    core.round_trip("far", 0.05)
    items = [
        WorkItem(Future(), next(core.task_ids), DIGESTS[0], b"fn", b"args", ())
        for _ in range(10_000)
    ]
    for item in items:
        core.pending.append(item)
    batches = []
    while not batches or core.cut_short:  # as the dispatcher does
        batches += core.dispatch(now)
    sent = [item for _, batch in batches for item in batch]
    assert all(len(batch) <= DEFAULT_MAX_BATCH for _, batch in batches)
    assert sent == items[: len(sent)]
    assert len(sent) > 1000  # 2 round trips of tasks that take TASK_COST_FLOOR at least
    assert not core._accepts(w, next(iter(core.pending)), now, backlog=True)


def test_a_round_trip_is_timed_from_the_send_and_not_raised_by_a_lagging_loop() -> None:
    """Issue 11: once a round filled the whole window, a local worker's measured round trip
    grew from 1 to 100 ms in one W1 run: a measurement timed from the start of a round of
    thousands of tasks, or taken while the loop was busy sending them, holds the loop's own
    lag, which grows with the window, which grew with the (averaged) round trip. It is
    timed from the send (``Scheduler.sent``) and is the least of the last RTT_SAMPLES."""
    core = Scheduler(Settings(), itertools.count(1), "ipc://sim")
    now = 1000.0
    core.heartbeat("h", "h", now)
    w = core.worker_joined("w".ljust(16, "0"), "h", "h", 1, 1, now)
    core.worker_ready(w)
    core.durations[DIGESTS[0]] = 0.001
    host = core.hosts["h"]

    def probe(sent_after: float, answered_after: float) -> None:
        item = WorkItem(Future(), next(core.task_ids), DIGESTS[0], b"fn", b"args", ())
        core.pending.append(item)
        [(_, batch)] = core.dispatch(now)
        assert batch == [item] and item.probe
        core.sent(batch, now + sent_after)
        record = ResultRecord(item.task_id, Status.OK, b"", [], 0.001)
        core.results(w.worker_id.encode(), [record], now + answered_after, lambda r: (True, None))

    probe(0.05, 0.052)  # sent 50 ms after the round began: the link's round trip is 1 ms
    assert host.rtt == pytest.approx(0.001)
    probe(0.0, 0.101)  # the result waited 100 ms for a busy loop
    assert host.rtt == pytest.approx(0.001)
    for _ in range(RTT_SAMPLES):
        probe(0.0, 0.051)  # the link got longer
    assert host.rtt == pytest.approx(0.05)


def test_the_executors_own_workers_get_no_round_trip_window() -> None:
    """Issue 11: a local worker's measured "round trip" is only the executor loop's lag
    (there is no link), and it grows with what the window lets the loop send per round:
    its window stays PREFETCH_BUDGET's, MAX_PREFETCH tasks at most."""
    core = Scheduler(Settings(), itertools.count(1), "ipc://sim", local_host="here")
    now = 1000.0
    core.heartbeat("here", "here", now)
    w = core.worker_joined("w".ljust(16, "0"), "here", "here", 1, 1, now)
    core.worker_ready(w)
    core.durations[DIGESTS[0]] = 1e-6
    core.round_trip("here", 0.05)  # a lagging loop
    for _ in range(10_000):
        core.pending.append(WorkItem(Future(), next(core.task_ids), DIGESTS[0], b"", b"", ()))
    while not w.outstanding or core.cut_short:
        core.dispatch(now)
    assert len(w.outstanding) == MAX_PREFETCH
