"""Load and soak (TEST-CATALOGUE C.3): L-01 a large queue stays memory-bound and credit-bound,
L-03 a long mixed run with failing tasks and killed worker hosts neither leaks nor slows down.

L-01 has a small variant that runs in ``make test`` and the full 100 000-task one (slow).
L-03 is slow only (``make test-slow``); ``ZMQEXECUTOR_SOAK_SECONDS`` sets its length (default
60 s; the catalogue's nightly run is 600) and ``ZMQEXECUTOR_SOAK_SEED`` its random choices. It
prints one line starting ``SOAK SUMMARY:`` with the figures (run pytest with ``-s`` to see it).

Both observe the executor through ``stats()`` only (a snapshot the dispatcher thread takes).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import gc
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crash_cases as cc
import pytest
from conftest import RESULT_TIMEOUT, WorkerHost, rendezvous_pids, wait_until

# ---------------------------------------------------------------------------- measurements


def rss_mb() -> float:
    """This process's resident set size (VmRSS), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def worker_records(ex: Any) -> list[Any]:
    """The executor's workers as ``stats()`` shows them (WorkerStats)."""
    return list(ex.stats().workers)


@dataclass
class CreditSampler:
    """Samples, per worker, how many tasks it holds (``outstanding``) against its credit bound
    ``slots * MAX_PREFETCH``, and the executor's RSS."""

    ex: Any
    samples: int = 0
    busy_samples: int = 0
    max_held: int = 0
    max_bound: int = 0
    peak_rss: float = 0.0
    violations: list[str] = field(default_factory=list)

    def sample(self) -> None:
        from zmqexecutor._defaults import MAX_PREFETCH

        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss_mb())
        held_total = 0
        for w in worker_records(self.ex):
            held = w.in_flight
            bound = w.slots * MAX_PREFETCH
            held_total += held
            self.max_bound = max(self.max_bound, bound)
            if held > self.max_held:
                self.max_held = held
            if held > bound:
                self.violations.append(
                    f"worker {w.host} pid {w.pid} held {held} > {w.slots} x {MAX_PREFETCH}"
                )
        if held_total:
            self.busy_samples += 1


# ---------------------------------------------------------------------------- L-01


def run_queued_tasks(
    make_executor: Callable[..., Any], tmp_path: Path, n: int, budget: float
) -> None:
    """Submit ``n`` tiny tasks at once to 2 local workers; check results, RSS and credit.

    The RSS growth is mostly the caller's own futures, all kept until the end: a finished
    concurrent.futures.Future (with its Condition) costs about 1.7 kB, so 100 000 of them
    alone take about 170 MB; the executor's share is the rest."""
    ex = make_executor(max_workers=2)
    assert len(rendezvous_pids(ex, 2, tmp_path)) == 2  # both workers up and registered
    wait_until(lambda: len(worker_records(ex)) == 2, what="2 worker records")
    gc.collect()
    rss_before = rss_mb()
    sampler = CreditSampler(ex)

    t0 = time.monotonic()
    futures = []
    for i in range(n):
        futures.append(ex.submit(pow, i, 2))
        if i % 1000 == 999:
            sampler.sample()
    submitted = time.monotonic() - t0

    # Wait for all, sampling as we go: futures finish roughly in order, so advance a cursor.
    deadline = time.monotonic() + max(RESULT_TIMEOUT, n / 1000)
    cursor = 0
    while cursor < n:
        while cursor < n and futures[cursor].done():
            cursor += 1
        sampler.sample()
        if time.monotonic() > deadline:
            pytest.fail(f"only {cursor} of {n} tasks done after {time.monotonic() - t0:.0f}s")
        time.sleep(0.005)
    elapsed = time.monotonic() - t0
    rss_after = rss_mb()
    growth = max(rss_after, sampler.peak_rss) - rss_before

    results = [f.result(timeout=0) for f in futures]
    slots = sorted(w.slots for w in worker_records(ex))
    print(
        f"\nL-01 {n} tasks: submit {submitted:.2f}s, all done {elapsed:.2f}s; RSS "
        f"{rss_before:.0f} MB -> peak {sampler.peak_rss:.0f} / end {rss_after:.0f} MB, growth "
        f"{growth:.0f} MB (budget {budget:.0f}); worker slots {slots}; max outstanding per "
        f"worker {sampler.max_held} (bound {sampler.max_bound}); {sampler.samples} samples, "
        f"{sampler.busy_samples} with tasks in flight"
    )
    assert results == [i * i for i in range(n)], "wrong results"
    assert len(set(results)) == n, "duplicate results"
    stats = ex.stats()
    assert (stats.pending, stats.running) == (0, 0), f"tasks left in the dispatcher: {stats!r}"
    assert sampler.busy_samples >= 3, f"only {sampler.busy_samples} samples saw tasks in flight"
    assert not sampler.violations, "credit exceeded: " + "; ".join(sampler.violations[:10])
    assert growth < budget, f"RSS grew by {growth:.0f} MB (budget {budget:.0f} MB)"


@pytest.mark.timeout(60)
def test_20k_queued_tasks_memory_bound(make_executor: Callable[..., Any], tmp_path: Path) -> None:
    """L-01, small: 20 000 tiny tasks at once, 2 workers; RSS growth < 150 MB."""
    run_queued_tasks(make_executor, tmp_path, 20_000, 150.0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_100k_queued_tasks_memory_bound(make_executor: Callable[..., Any], tmp_path: Path) -> None:
    """L-01: 100 000 tiny tasks at once, 2 workers; RSS growth < 300 MB."""
    run_queued_tasks(make_executor, tmp_path, 100_000, 300.0)


# ---------------------------------------------------------------------------- L-03
#
# The run: WARMUP seconds of load (not measured: the pool settles into its crash/respawn
# equilibrium), then SOAK_SECONDS measured. Chaos runs throughout. At 20% of the measured run
# and at its end the load pauses: in-flight tasks finish and every worker host is registered
# again, then fds and RSS are sampled, so that both samples see the same pool (the fd count
# follows the number of connected worker processes, which crashing tasks keep changing).
# Throughput counts completions per second of load time (pauses excluded).

SOAK_SECONDS = float(os.environ.get("ZMQEXECUTOR_SOAK_SECONDS", "60"))
SOAK_SEED = int(os.environ.get("ZMQEXECUTOR_SOAK_SEED", "1103"))
WARMUP = min(10.0, 0.1 * SOAK_SECONDS)
#: the run, plus warm-up, two pauses, start-up, draining and teardown
SOAK_TIMEOUT = int(SOAK_SECONDS * 1.25 + 240)
SOAK_HB: dict[str, float] = {"heartbeat_interval": 0.2, "heartbeat_timeout": 2.0}
SOAK_HB_ARGS = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "2"]
SOAK_HOSTS = 3
SOAK_PROCESSES = 2
#: tasks submitted and not yet resolved, at most (keeps memory bounded)
IN_FLIGHT = 200
#: mean seconds between two host kills (uniform in [0.5, 1.5] x this)
KILL_EVERY = 15.0
BIG_SIZE = 128 * 1024
BIG_PAYLOAD = bytes(BIG_SIZE)
#: the task mix: kind -> share of tasks (the rest are tiny)
MIX = {cc.SOAK_RAISE: 0.01, cc.SOAK_EXIT: 0.01, cc.SOAK_SLEEP: 0.10, cc.SOAK_CPU: 0.05,
       cc.SOAK_BIG: 0.02}  # fmt: skip
#: drift allowed between the sample after 20% of the run and the end: 10% plus this
FD_SLACK = 5
RSS_SLACK_MB = 20.0
THROUGHPUT_FLOOR = 0.8
SAMPLE_EVERY = 1.0
#: how long a pause may take to drain in-flight tasks and see every host registered again
QUIESCE_TIMEOUT = 60.0
#: a task lost without running was held by a killed host: it fails within heartbeat_timeout
#: of the kill, plus this margin for the dispatcher's tick and a loaded machine
LOST_UNRUN_MARGIN = 5.0

VALUE, RAISED, LOST, BAD = "value", "raised", "lost", "bad"
OUTCOME_CODES = {VALUE: 1, RAISED: 2, LOST: 3, BAD: 4}


class LogWatch(logging.Handler):
    """Counts log records by level and keeps the first errors and the last warnings, without
    storing the rest (a stored record per lost worker would itself be a memory drift)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.levels: collections.Counter[str] = collections.Counter()
        self.invalid_state: list[str] = []
        self.errors: list[str] = []
        self.recent: collections.deque[str] = collections.deque(maxlen=30)

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        self.levels[record.levelname] += 1
        self.recent.append(text[:300])
        if "InvalidStateError" in text and len(self.invalid_state) < 20:
            self.invalid_state.append(text[:500])
        if record.levelno >= logging.ERROR and len(self.errors) < 20:
            self.errors.append(text[:500])


class Ledger:
    """Per task (by index): its kind, how often its future resolved, and how; completions per
    second of load time. Compact (bytearrays) so that a long run's bookkeeping does not look
    like a leak."""

    def __init__(self, t0: float, seconds: float) -> None:
        #: load time is time.monotonic() - t0; t0 moves forward by the length of each pause
        self.t0 = t0
        self.paused = False
        self.lock = threading.Lock()
        self.kinds = bytearray()
        self.resolved = bytearray()
        self.outcome = bytearray()  # OUTCOME_CODES, 0 while unresolved
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.by_kind: collections.Counter[tuple[str, str]] = collections.Counter()
        self.bad: list[str] = []
        self.per_second = [0] * (int(seconds) + 1)
        self.unmeasured = 0  # completions in the warm-up, in pauses, after the end
        self.room = threading.Semaphore(IN_FLIGHT)
        self.unresolved = 0
        #: when each lost task's future failed (time.monotonic()); few, so a dict is fine
        self.lost_at: dict[int, float] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, kind: str) -> int:
        with self.lock:
            self.kinds.append(ord(kind))
            self.resolved.append(0)
            self.outcome.append(0)
            self.unresolved += 1
            return len(self.kinds) - 1

    def classify(self, kind: str, index: int, fut: cf.Future[Any]) -> tuple[str, str]:
        from zmqexecutor import WorkerLostError

        if fut.cancelled():
            return BAD, "cancelled"
        exc = fut.exception()
        if exc is None:
            result = fut.result()
            if kind == cc.SOAK_BIG:
                ok = (
                    isinstance(result, tuple)
                    and result[0] == cc.soak_expected(kind, index, BIG_SIZE)
                    and len(result[1]) == BIG_SIZE
                )
            else:
                ok = kind not in (cc.SOAK_RAISE, cc.SOAK_EXIT) and result == cc.soak_expected(
                    kind, index
                )
            return (VALUE, "") if ok else (BAD, f"result {result!r:.200}")
        if isinstance(exc, WorkerLostError):
            return LOST, ""
        if (
            kind == cc.SOAK_RAISE
            and type(exc) is cc.SoakIntendedError
            and str(exc) == f"intended failure of task {index}"
        ):
            return RAISED, ""
        return BAD, f"{type(exc).__name__}: {exc}"[:300]

    def done(self, index: int, fut: cf.Future[Any]) -> None:
        kind = chr(self.kinds[index])
        outcome, why = self.classify(kind, index, fut)
        with self.lock:
            second = int(self.now()) if not self.paused and self.now() >= 0 else -1
            self.resolved[index] = min(255, self.resolved[index] + 1)
            if self.resolved[index] > 1:
                self.bad.append(f"task {index} resolved {self.resolved[index]} times")
                return
            self.unresolved -= 1
            self.outcome[index] = OUTCOME_CODES[outcome]
            if outcome == LOST:
                self.lost_at[index] = time.monotonic()
            self.outcomes[outcome] += 1
            self.by_kind[kind, outcome] += 1
            if outcome == BAD and len(self.bad) < 20:
                self.bad.append(f"task {index} ({kind}): {why}")
            if 0 <= second < len(self.per_second):
                self.per_second[second] += 1
            else:
                self.unmeasured += 1
        self.room.release()

    def throughput(self, start: float, stop: float) -> float:
        """Completions per second over whole seconds [start, stop) of load time."""
        a, b = round(start), round(stop)
        return sum(self.per_second[a:b]) / max(1, b - a)


def full_pool(ex: Any) -> bool:
    """Every worker record is a ready worker of a live host: no loss or join in progress."""
    records = worker_records(ex)
    return len(records) == SOAK_HOSTS * SOAK_PROCESSES and all(w.ready for w in records)


def pick_task(rng: random.Random) -> tuple[str, Any]:
    roll = rng.random()
    kind = cc.SOAK_TINY
    for candidate, share in MIX.items():
        if roll < share:
            kind = candidate
            break
        roll -= share
    if kind == cc.SOAK_SLEEP:
        return kind, rng.uniform(0.001, 0.02)
    if kind == cc.SOAK_CPU:
        return kind, rng.uniform(0.001, 0.005)
    return kind, BIG_PAYLOAD if kind == cc.SOAK_BIG else None


@dataclass
class Quiet:
    """fds and RSS sampled in a pause (nothing in flight, every worker registered)."""

    at: float  # load time
    fds: int
    rss: float
    waited: float  # how long the pause took


@pytest.mark.slow
@pytest.mark.timeout(SOAK_TIMEOUT)
def test_soak_with_chaos(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
) -> None:
    """L-03: mixed load for SOAK_SECONDS with failing tasks, crashing tasks and worker hosts
    SIGKILLed about every 15 s; no double resolution, no re-run, no fd/RSS drift, no slowdown."""
    duration = SOAK_SECONDS
    window = 0.2 * duration
    rng = random.Random(SOAK_SEED)
    watch = LogWatch()
    # Our handler only: pytest's log capture would keep every warning (one per crashed
    # worker process) for the whole run, a growing list in the very process we measure.
    zlog = logging.getLogger("zmqexecutor")
    flog = logging.getLogger("concurrent.futures")
    old_propagate = zlog.propagate
    zlog.propagate = False
    zlog.addHandler(watch)
    flog.addHandler(watch)
    hosts: list[WorkerHost] = []
    started = 0
    exec_log = tmp_path / "exec.log"

    def start_host() -> None:
        nonlocal started
        started += 1
        hosts.append(
            worker_hosts(
                ex.address, "--insecure", *SOAK_HB_ARGS, name=str(started), processes=SOAK_PROCESSES
            )
        )

    def quiesce(ledger: Ledger, what: str) -> Quiet:
        """Let in-flight tasks finish and every host register; then sample fds and RSS."""
        t, t_start = ledger.now(), time.monotonic()
        ledger.paused = True
        wait_until(
            lambda: ledger.unresolved == 0,
            QUIESCE_TIMEOUT,
            lambda: f"{ledger.unresolved} futures to resolve ({what}); log: {list(watch.recent)}",
        )
        wait_until(
            lambda: full_pool(ex),
            QUIESCE_TIMEOUT,
            lambda: f"all worker hosts registered ({what}): {worker_records(ex)}",
        )
        gc.collect()
        sample = Quiet(t, fd_count(), rss_mb(), time.monotonic() - t_start)
        ledger.t0 += time.monotonic() - t_start
        ledger.paused = False
        return sample

    try:
        ex = make_executor(listen="tcp://127.0.0.1:*", insecure=True, max_retries=0, **SOAK_HB)
        for _ in range(SOAK_HOSTS):
            start_host()
        pids = rendezvous_pids(ex, SOAK_HOSTS * SOAK_PROCESSES, tmp_path)
        assert {os.getpgid(p) for p in pids} == {h.pid for h in hosts}
        wait_until(lambda: full_pool(ex), what="every worker registered")

        ledger = Ledger(time.monotonic() + WARMUP, duration)
        next_kill = -WARMUP + rng.uniform(0.5, 1.5) * KILL_EVERY
        next_sample = 0.0
        samples: list[tuple[float, int, float, int]] = []  # (load time, fds, rss, workers)
        kills = 0
        kill_times: list[float] = []  # time.monotonic() of each host kill
        baseline: Quiet | None = None
        while (now := ledger.now()) < duration:
            if baseline is None and now >= window:
                baseline = quiesce(ledger, "after 20% of the run")
                continue
            if now >= next_sample:
                samples.append((now, fd_count(), rss_mb(), len(worker_records(ex))))
                next_sample += SAMPLE_EVERY
            if now >= next_kill:
                kill_times.append(time.monotonic())
                hosts.pop(rng.randrange(len(hosts))).kill()
                kills += 1
                start_host()
                next_kill = now + rng.uniform(0.5, 1.5) * KILL_EVERY
            if not ledger.room.acquire(timeout=0.05):
                continue
            kind, payload = pick_task(rng)
            index = ledger.add(kind)
            fut = ex.submit(cc.soak_task, str(exec_log), kind, index, payload)
            fut.add_done_callback(functools.partial(ledger.done, index))
        assert baseline is not None
        final = quiesce(ledger, "at the end")
        ex.shutdown(wait=True)
    finally:
        for host in hosts:
            host.stop()
        zlog.removeHandler(watch)
        flog.removeHandler(watch)
        zlog.propagate = old_propagate

    # ---- figures
    total = len(ledger.kinds)
    execs = collections.Counter(int(line) for line in exec_log.read_text().split())
    over = {i: c for i, c in execs.items() if c > 1}
    # A value or the intended exception means the task body ran: exactly once.
    answered = (OUTCOME_CODES[VALUE], OUTCOME_CODES[RAISED])
    not_run_once = [i for i in range(total) if ledger.outcome[i] in answered and execs[i] != 1]
    unresolved = [i for i in range(total) if ledger.resolved[i] == 0]
    multi = [i for i in range(total) if ledger.resolved[i] > 1]

    tp_first = ledger.throughput(0, window)
    tp_last = ledger.throughput(duration - window, duration)
    per_window = [round(ledger.throughput(k * window, (k + 1) * window)) for k in range(5)]
    fd_limit = baseline.fds * 1.1 + FD_SLACK
    rss_limit = baseline.rss * 1.1 + RSS_SLACK_MB
    lost_exit = ledger.by_kind[cc.SOAK_EXIT, LOST]
    lost_other = ledger.outcomes[LOST] - lost_exit
    # lost although its body never ran: it was queued on a host that vanished
    unrun = [i for i in range(total) if ledger.outcome[i] == OUTCOME_CODES[LOST] and execs[i] == 0]
    lost_unrun = len(unrun)
    # DESIGN §4: tasks a dead worker process had not started run elsewhere, untouched; only a
    # vanished host (nobody left to say what started) may fail a task that never ran, and
    # then within heartbeat_timeout of the kill.
    lost_window = SOAK_HB["heartbeat_timeout"] + LOST_UNRUN_MARGIN
    unrun_unexplained = [
        i for i in unrun if not any(0 <= ledger.lost_at[i] - k <= lost_window for k in kill_times)
    ]
    workers_seen = [s[3] for s in samples] or [0]
    fds_seen = [s[1] for s in samples] or [0]
    mean_workers = sum(workers_seen) / len(workers_seen)
    print(
        f"\nSOAK SUMMARY: {duration:.0f}s (+{WARMUP:.0f}s warm-up) seed={SOAK_SEED} "
        f"hosts={SOAK_HOSTS}x{SOAK_PROCESSES} in_flight<={IN_FLIGHT} host_kills={kills} "
        f"hosts_started={started} | tasks={total} resolved={total - len(unresolved)} "
        f"value={ledger.outcomes[VALUE]} raised={ledger.outcomes[RAISED]} "
        f"lost={ledger.outcomes[LOST]} (exit_tasks={lost_exit} other={lost_other} "
        f"never_ran={lost_unrun}, not_after_a_kill={len(unrun_unexplained)}) "
        f"bad={ledger.outcomes[BAD]} double_resolved={len(multi)} exec_gt1={len(over)} "
        f"answered_not_run_once={len(not_run_once)} | throughput/s first20%={tp_first:.0f} "
        f"last20%={tp_last:.0f} ratio={tp_last / max(tp_first, 1e-9):.2f} "
        f"windows={per_window} | registered_workers mean={mean_workers:.1f} "
        f"min={min(workers_seen)} | fds {baseline.fds}@{baseline.at:.0f}s -> "
        f"{final.fds}@{final.at:.0f}s (limit {fd_limit:.0f}; in load {min(fds_seen)}-"
        f"{max(fds_seen)}) | rss_mb {baseline.rss:.1f} -> {final.rss:.1f} (limit "
        f"{rss_limit:.1f}) | pauses {baseline.waited:.1f}s/{final.waited:.1f}s | "
        f"log {dict(watch.levels)} invalid_state={len(watch.invalid_state)}"
    )

    # ---- checks
    assert total > 0
    assert not unresolved, f"{len(unresolved)} futures never resolved: {unresolved[:20]}"
    assert not multi and not ledger.bad, "; ".join(ledger.bad[:20])
    assert not watch.invalid_state, "InvalidStateError logged: " + " | ".join(watch.invalid_state)
    assert not [e for e in watch.errors if e.startswith("concurrent.futures")], watch.errors
    assert not [e for e in watch.errors if "dispatcher failed" in e], watch.errors
    assert not over, f"tasks ran more than once (max_retries=0): {dict(list(over.items())[:20])}"
    assert not not_run_once, f"answered but exec count != 1: {not_run_once[:20]}"
    assert not unrun_unexplained, (
        f"{len(unrun_unexplained)} tasks failed with WorkerLostError although they never ran "
        f"and no host was killed within {lost_window:g}s before: {unrun_unexplained[:20]}"
    )
    assert ledger.by_kind[cc.SOAK_EXIT, LOST] == sum(
        c for (k, _), c in ledger.by_kind.items() if k == cc.SOAK_EXIT
    ), "a task that kills its process must end in WorkerLostError"
    assert kills >= int((WARMUP + duration) / (1.5 * KILL_EVERY)), f"only {kills} host kills"
    assert final.fds <= fd_limit, f"fd count drifted: {baseline} -> {final}"
    assert final.rss <= rss_limit, f"RSS drifted: {baseline} -> {final}"
    assert tp_last >= THROUGHPUT_FLOOR * tp_first, (
        f"throughput decayed: {tp_first:.0f}/s -> {tp_last:.0f}/s"
    )
