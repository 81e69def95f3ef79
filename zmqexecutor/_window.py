"""How much a worker may hold beyond its slots (prefetch and the round-trip window), and how
much to take back from one that holds too much while another idles (RECALL).

Pure functions of the scheduling core's records (``_scheduler.py`` calls them): no state of
their own, no clock (the time is an argument). The round trip of a host is measured by the
core from the first task sent to an idle worker of the host: its result came back after the
link's round trip plus its run time, which the worker reports. Its time counts from when it
was sent, and the host's round trip is the least of its last ``RTT_SAMPLES`` measurements:
what a result waited for a busy loop grows with the window and must not widen it.

Without a round trip (not measured yet, or ~0 on one machine) a worker holds, besides a task
per slot, at most ``PREFETCH_BUDGET`` seconds of tasks known to be short. Across a link with
a round trip of RTT it may also hold ``WINDOW_RTTS`` RTTs of work queued behind the tasks it
runs, so that it never idles while its results and new tasks cross the link (TCP's window
sized to the bandwidth-delay product), but only of tasks expected to run at most
``SHORT_RTTS`` RTTs: a longer task loses little to one round trip and is never queued
behind another. A worker whose oldest task runs far longer than expected (it may block)
gets nothing more queued behind it: one whose oldest task was sent (or, across a link,
which last answered) longer ago than that task should take.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable

from ._defaults import (
    MAX_PREFETCH,
    MAX_WINDOW,
    PREFETCH_BUDGET,
    RECALL_RTTS,
    SHORT_RTTS,
    TASK_COST_FLOOR,
    WINDOW_RTTS,
)
from ._hosts import HostState, WorkerState


def round_trip(samples: deque[float], sample: float) -> float:
    """A host's round trip after the measurement ``sample`` (seconds): the least of its
    last ``RTT_SAMPLES`` (``samples``, updated). A measurement is the link's round trip
    plus the time the task waited to be sent and its result to be read while the
    executor's loop was busy, which grows with what it sends per round, which grows with
    the window: an average would feed that back into the window without bound (a local
    worker's "round trip" grew from 1 to 100 ms in one W1 run)."""
    samples.append(max(0.0, sample))
    return min(samples)


def may_prefetch(w: WorkerState, estimate: float, now: float, rtt: float | None) -> bool:
    """May ``w``, which holds a task per slot or more, also hold a task expected to run
    ``estimate`` seconds, on a host whose round trip is ``rtt`` (None: not known)?"""
    held = len(w.outstanding)
    window = WINDOW_RTTS * rtt if rtt else 0.0
    # a task that runs much longer than expected may block: queue nothing behind it
    oldest = next(iter(w.outstanding.values()))
    if window:
        # across a link the oldest started about when the worker last answered
        since = max(oldest.sent_at, w.answered)
        if now - since > (oldest.estimate or 0.0) + PREFETCH_BUDGET + window:
            return False
    elif now - oldest.sent_at > w.queued + PREFETCH_BUDGET:
        return False
    if held < w.slots * MAX_PREFETCH and w.queued + estimate <= PREFETCH_BUDGET * w.slots:
        return True
    if not window or estimate > SHORT_RTTS * rtt:  # type: ignore[operator]
        return False
    extra = min(MAX_WINDOW, int(window / max(estimate, TASK_COST_FLOOR)))
    if held >= w.slots * (MAX_PREFETCH + extra):
        return False
    # the work queued behind the tasks it runs now (the first one per slot)
    running = sum(i.estimate or 0.0 for i in itertools.islice(w.outstanding.values(), w.slots))
    return w.queued - running < (PREFETCH_BUDGET + window) * w.slots


def recall_tail(donor: WorkerState, rtt: float) -> list[int]:
    """The tasks at the end of what ``donor`` holds that an idle worker would finish
    sooner, in the order sent; ``rtt``: the time a RECALL and sending the tasks on take.

    The donor runs what it holds in order, so what it queued behind its running tasks
    (``ahead`` seconds of work) ends last. Taking back ``x`` seconds of it from the end
    ends the donor's queue at ``ahead - x`` and the idle worker's at about
    ``RECALL_RTTS * rtt + x``: balanced at ``x = (ahead - RECALL_RTTS * rtt) / 2``.
    """
    tail = list(itertools.islice(donor.outstanding.values(), donor.slots, None))
    costs = [max(i.estimate or 0.0, TASK_COST_FLOOR) for i in tail]
    take = (sum(costs) - RECALL_RTTS * rtt) / 2
    n = 0
    for cost in reversed(costs):
        if cost > take:
            break
        take -= cost
        n += 1
    return [i.task_id for i in tail[len(tail) - n :]]


def plan_recalls(
    idle: list[WorkerState], ready: Iterable[WorkerState], hosts: dict[str, HostState]
) -> list[tuple[WorkerState, list[int]]]:
    """RECALLs for the ``idle`` workers (a free slot, nothing in the queue they may take):
    each asks the most loaded worker that holds a tail worth taking back (and is not
    answering a RECALL already) for that tail."""

    def rtt(w: WorkerState) -> float:
        host = hosts.get(w.host_id)
        return host.rtt or 0.0 if host is not None else 0.0

    donors = [w for w in ready if len(w.outstanding) > w.slots and not w.recall_id]
    donors.sort(key=lambda w: len(w.outstanding) / w.slots, reverse=True)
    plan = []
    for taker in idle:
        for donor in donors:
            ids = recall_tail(donor, rtt(donor) + rtt(taker) / 2)
            if ids:
                plan.append((donor, ids))
                donors.remove(donor)
                break
    return plan
