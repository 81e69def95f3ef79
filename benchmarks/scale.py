#!/usr/bin/env python3
"""Issue 5's scale case: many connected workers, and a million queued tasks.

    .venv/bin/python benchmarks/scale.py                 # 2 vs 200 workers, 1 M queued
    .venv/bin/python benchmarks/scale.py --workers 100 --queued 200000 --repeat 1

Goals: W1 throughput with 200 connected workers >= 0.8x that with 2, and the executor's
memory grows <= 300 MB for 1,000,000 queued tasks.

* W1 at N workers: ``ZmqExecutor(listen="tcp://127.0.0.1:*", insecure=True)``; N simulated
  workers connect to it: ``--procs`` helper processes (this script with ``--helper``), each
  running its share of real ``zmqexecutor._worker_process.WorkerProcess`` loops in threads (one
  inbox, one sink connection, one status file each, exactly as a worker process has) and
  sending its host's heartbeats like a worker host's supervisor.  Once all N are
  registered and READY, an untimed warm-up gives every worker a task; then W1 (submit
  20,000 ``noop()``, wait for all; tasks/s), ``--repeat`` times, median.  The same harness
  with 2 workers (2 threads in 1 helper) is the baseline.  Threads of one helper share its
  GIL: this measures the executor's side (the dispatcher with N sockets), not worker CPU.
* Memory: the same executor with no worker connected; submit 1,000,000 ``noop()`` (they
  queue; the caller keeps the futures, as a real caller does) and report the growth of
  the process's VmRSS (and its peak, VmHWM), then ``shutdown(cancel_futures=True)``.

Each case runs in a fresh interpreter (this script with ``--child``) in its own session,
with a wall-clock timeout (its process group is killed).  This process is a child
subreaper: any helper left behind is killed by PID.  Progress goes to stderr, the report
to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def rss_kib(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


# ================================================================ helper: simulated workers


def helper_main(a):
    """N WorkerProcess loops in threads of this process, plus a supervisor's heartbeats."""
    import zmq

    from zmqexecutor import _messages as msg
    from zmqexecutor import _protocol as proto
    from zmqexecutor._status import State, create, read_status
    from zmqexecutor._worker_process import WorkerProcess

    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
    )
    parent = os.getppid()  # a WorkerProcess exits when os.getppid() changes
    host_id = uuid.uuid4().hex[:16]
    status_dir = tempfile.mkdtemp(prefix="zs-status-")
    workers, paths = [], []
    for _ in range(a.threads):
        worker_id = uuid.uuid4().hex[:16]
        path = os.path.join(status_dir, worker_id)
        create(path, proto.NO_SESSION)
        config = {
            "worker_id": worker_id,
            "host_id": host_id,
            "sink": a.address,
            "inbox": "tcp://127.0.0.1:*",
            "advertise": None,
            "status": path,
            "parent_pid": parent,
            "sys_path": None,
            "log_level": "WARNING",
            "secure": False,
            "max_tasks": None,
        }
        workers.append(WorkerProcess(config))
        paths.append(path)
    stop = threading.Event()

    def heartbeats():
        # what a worker host's Supervisor sends: without them the executor declares the
        # host lost after heartbeat_timeout
        ctx = zmq.Context.instance()
        push = ctx.socket(zmq.PUSH)
        push.linger = 0
        push.sndhwm = 100
        push.connect(a.address)
        beat = msg.Heartbeat(
            host_id=host_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            interval=1.0,
            workers=tuple(w.worker_id for w in workers),
        ).encode()
        try:
            while True:
                with contextlib.suppress(zmq.Again):
                    push.send_multipart(beat, zmq.NOBLOCK)
                if stop.wait(1.0) or os.getppid() != parent:
                    return
        finally:
            push.close()

    def drain(signum, frame):
        for w in workers:
            w.draining = True  # each loop notices within its poll tick (0.5 s)
        stop.set()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threads = [threading.Thread(target=heartbeats, name="heartbeats", daemon=True)]
    threads += [threading.Thread(target=w.run, name=f"w{i}") for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    ready_reported = False
    try:
        while any(t.is_alive() for t in threads[1:]):
            if not ready_reported and all(read_status(p).state == State.READY for p in paths):
                tmp = a.ready_file + ".tmp"
                with open(tmp, "w") as f:
                    f.write(f"{os.getpid()} {a.threads}\n")
                os.replace(tmp, a.ready_file)
                ready_reported = True
            if os.getppid() != parent:
                drain(None, None)
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        import shutil

        shutil.rmtree(status_dir, ignore_errors=True)
    return 0


# ================================================================ children: one case each


def start_helpers(address, n_workers, n_procs, tmp):
    per = [n_workers // n_procs + (i < n_workers % n_procs) for i in range(n_procs)]
    helpers = []
    for i, k in enumerate(x for x in per if x):
        ready = os.path.join(tmp, f"ready-{i}")
        cmd = [sys.executable, os.path.abspath(__file__), "--helper", address]
        cmd += ["--threads", str(k), "--ready-file", ready]
        helpers.append((subprocess.Popen(cmd, stdin=subprocess.DEVNULL), ready))
    return helpers


def stop_helpers(helpers, grace=15.0):
    """Executor already shut down (its DETACH ends every loop); SIGTERM, then SIGKILL."""
    deadline = time.monotonic() + grace
    for p, _ in helpers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    rcs = []
    for p, _ in helpers:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        rcs.append(p.returncode)
    return rcs


def wait_workers(ex, helpers, n, timeout):
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        registered = len(ex.stats().workers)
        ready = all(os.path.exists(f) for _, f in helpers)
        if registered == n and ready:
            return time.monotonic() - t0
        for p, _ in helpers:
            if p.poll() is not None:
                raise RuntimeError(f"helper {p.pid} exited with rc={p.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{registered} of {n} workers registered, helpers ready: {ready}, "
                f"after {timeout:g} s"
            )
        time.sleep(0.05)


def w1(ex, n):
    import tasks

    noop, submit = tasks.noop, ex.submit
    cpu0 = time.process_time()  # this process: the caller and the executor's threads
    t0 = time.perf_counter()
    futs = [submit(noop) for _ in range(n)]
    t1 = time.perf_counter()
    res = [f.result() for f in futs]
    dt = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if len(res) != n or any(r is not None for r in res):
        raise AssertionError("W1: wrong results")
    return {
        "tasks_per_s": n / dt,
        "seconds": dt,
        "submit_s": t1 - t0,
        "executor_cpu_us_per_task": cpu / n * 1e6,
    }


def case_workers(a, res):
    import tasks

    from zmqexecutor import ZmqExecutor

    logging.getLogger("zmqexecutor").setLevel(logging.ERROR)  # the insecure=True warning
    tmp = tempfile.mkdtemp(prefix="zs")
    ex = ZmqExecutor(listen="tcp://127.0.0.1:*", insecure=True)
    helpers = []
    try:
        helpers = start_helpers(ex.address, a.workers, a.procs, tmp)
        res["connect_s"] = wait_workers(ex, helpers, a.workers, a.connect_timeout)
        # warm-up: every worker gets a task (sleeps overlap: threads release the GIL)
        t = time.perf_counter()
        pids = [f.result() for f in [ex.submit(tasks.sleep_for, 0.05) for _ in range(a.workers)]]
        if len(pids) != a.workers:
            raise AssertionError("warm-up: wrong results")
        idle = [w for w in ex.stats().workers if w.done == 0]
        for _ in range(20):
            if not idle:
                break
            [f.result() for f in [ex.submit(tasks.sleep_for, 0.05) for _ in range(a.workers)]]
            idle = [w for w in ex.stats().workers if w.done == 0]
        res["warmup_idle_workers"] = len(idle)
        w1(ex, min(a.n, 2000))
        res["warmup_s"] = time.perf_counter() - t
        for _ in range(a.repeat):
            res["runs"].append(w1(ex, a.n))
        st = ex.stats()
        res["workers_at_end"] = len(st.workers)
        res["protocol_errors"] = st.protocol_errors
        done = sorted(w.done for w in st.workers)
        res["done_per_worker_min_median_max"] = [done[0], done[len(done) // 2], done[-1]]
        t = time.perf_counter()
        ex.shutdown(wait=True)
        res["shutdown_s"] = time.perf_counter() - t
        res["helper_rcs"] = stop_helpers(helpers)  # DETACH ends their loops: they exit 0
        helpers = []
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        if helpers:  # failed: no waiting for loops that may still be registering
            res["helper_rcs"] = stop_helpers(helpers, grace=0.5)
    res["median"] = {
        k: statistics.median(r[k] for r in res["runs"])
        for k in ("tasks_per_s", "executor_cpu_us_per_task")
    }


def case_memory(a, res):
    import tasks

    from zmqexecutor import ZmqExecutor

    logging.getLogger("zmqexecutor").setLevel(logging.ERROR)  # insecure, no-worker warnings
    ex = ZmqExecutor(listen="tcp://127.0.0.1:*", insecure=True)
    futs = []
    try:
        noop, submit = tasks.noop, ex.submit
        futs.extend(submit(noop) for _ in range(1000))  # code paths and caches warm
        time.sleep(0.2)
        base, hwm0 = rss_kib(), rss_kib("VmHWM")
        t = time.perf_counter()
        for _ in range(a.queued):
            futs.append(submit(noop))
        res["submit_s"] = time.perf_counter() - t
        time.sleep(0.5)  # let the dispatcher take what it takes from the queue
        st = ex.stats()
        after, hwm1 = rss_kib(), rss_kib("VmHWM")
        res["pending"] = st.pending
        res["rss_base_mb"] = base * 1024 / 1e6
        res["rss_growth_mb"] = (after - base) * 1024 / 1e6
        res["hwm_growth_mb"] = (max(hwm1, hwm0) - base) * 1024 / 1e6
        res["bytes_per_task"] = (after - base) * 1024 / a.queued
        if st.pending < a.queued:
            raise AssertionError(f"only {st.pending} of {a.queued} tasks are queued")
        t = time.perf_counter()
        ex.shutdown(wait=True, cancel_futures=True)
        res["shutdown_s"] = time.perf_counter() - t
        res["cancelled"] = sum(f.cancelled() for f in futs)
        if res["cancelled"] != len(futs):
            raise AssertionError(f"{len(futs) - res['cancelled']} futures were not cancelled")
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def case_futures(a, res):
    """For comparison with the memory case: as many stdlib concurrent.futures.Futures
    (what every queued task would cost in ProcessPoolExecutor, before its work item)."""
    from concurrent.futures import Future

    futs = [Future() for _ in range(1000)]
    base = rss_kib()
    futs.extend(Future() for _ in range(a.queued))
    res["rss_growth_mb"] = (rss_kib() - base) * 1024 / 1e6
    res["bytes_per_task"] = (rss_kib() - base) * 1024 / a.queued


def child_main(a):
    res = {"case": a.case, "status": "error", "runs": []}
    cases = {"memory": case_memory, "futures": case_futures, "workers": case_workers}
    try:
        cases[a.case](a, res)
        res["status"] = "ok"
    except BaseException as e:
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-4000:]
    finally:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return 0


# ================================================================ runner


def run_child(case, workers, procs, a, root):
    from run import run_isolated, sweep_leftovers

    out = os.path.join(root, f"{case}-{workers}-{procs}.json")
    logf = os.path.join(root, f"{case}-{workers}-{procs}.log")
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TMPDIR"] = root
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--case", case]
    cmd += ["--workers", str(workers), "--procs", str(procs)]
    cmd += ["--n", str(a.n), "--repeat", str(a.repeat), "--queued", str(a.queued)]
    cmd += ["--connect-timeout", str(a.connect_timeout), "--out", out]
    t0 = time.monotonic()
    rc, timed_out = run_isolated(cmd, cwd=root, env=env, logf=logf, timeout=a.timeout)
    wall = time.monotonic() - t0
    leftovers = sweep_leftovers()
    try:
        with open(out) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {"case": case, "status": "error", "runs": []}
        res["error"] = f"child exited with rc={rc} and no result file"
    if timed_out:
        res["status"] = "timeout"
        res["error"] = f"no result within {a.timeout:.0f} s (killed)"
    with open(logf, "rb") as f:
        res["log_tail"] = f.read()[-3000:].decode(errors="replace")
    res["wall_s"] = wall
    res["leftover_processes"] = leftovers
    return res


def fmt(v):
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def report(out, a, elapsed, load_start):
    base1, base2, many = out["base1"], out["base2"], out["many"]
    mem, bare = out["mem"], out["futures"]
    procs = min(a.procs, a.workers)

    def tps(r):
        return r.get("median", {}).get("tasks_per_s") if r["status"] == "ok" else None

    def cell(r):
        return fmt(tps(r)) if tps(r) is not None else r["status"].upper()

    def runs(r):
        if not r.get("runs"):
            return "—"
        cpu = statistics.median(x["executor_cpu_us_per_task"] for x in r["runs"])
        return ", ".join(fmt(x["tasks_per_s"]) for x in r["runs"]) + (
            f"; executor process CPU {cpu:.0f} µs/task"
        )

    def ratio_row(b, label):
        m, v = tps(many), tps(b)
        ratio = m / v if v and m is not None else None
        return (
            f"| W1 {a.workers} workers / {label} | "
            f"{'—' if ratio is None else f'{ratio:.2f}x'} | | ≥ 0.8x | "
            f"{'—' if ratio is None else 'yes' if ratio >= 0.8 else '**no**'} |"
        )

    lines = [
        f"Scale case (issue 5); W1 = {a.n:,} noop submits, median of {a.repeat}; simulated "
        f"workers are WorkerProcess loops in threads of helper processes; "
        f"{os.cpu_count()} cores; load average {load_start:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; wall time {elapsed:.0f} s.",
        "",
        "| case | value | runs; details | goal | met |",
        "|---|---|---|---|---|",
        f"| W1 tasks/s, 2 workers (2 threads in 1 process) | {cell(base1)} | {runs(base1)} | | |",
        f"| W1 tasks/s, 2 workers (1 thread in each of 2 processes) | {cell(base2)} | "
        f"{runs(base2)} | | |",
        f"| W1 tasks/s, {a.workers} workers ({procs} processes) | {cell(many)} | {runs(many)} "
        "| | |",
        ratio_row(base1, "2 (1 process)"),
        ratio_row(base2, "2 (2 processes)"),
    ]
    goal = 300 * a.queued / 1e6
    if mem["status"] == "ok":
        g = mem["rss_growth_mb"]
        lines.append(
            f"| RSS growth, {a.queued:,} queued tasks (futures included), MB | {g:,.0f} | "
            f"peak {mem['hwm_growth_mb']:,.0f}; {mem['bytes_per_task']:,.0f} B/task; submit "
            f"{mem['submit_s']:.1f} s; cancel+shutdown {mem['shutdown_s']:.2f} s | "
            f"≤ {goal:,.0f} | {'yes' if g <= goal else '**no**'} |"
        )
    else:
        lines.append(
            f"| RSS growth, {a.queued:,} queued tasks, MB | {mem['status'].upper()} | | | |"
        )
    if bare["status"] == "ok":
        lines.append(
            f"| for comparison: {a.queued:,} stdlib `concurrent.futures.Future()`s, MB | "
            f"{bare['rss_growth_mb']:,.0f} | {bare['bytes_per_task']:,.0f} B each (fresh "
            "interpreter); zmqexecutor's futures make their lock on first use | | |"
        )
    notes = []
    cases = (
        (base1, "2 workers, 1 process"),
        (base2, "2 workers, 2 processes"),
        (many, f"{a.workers} workers"),
        (mem, "memory"),
        (bare, "futures"),
    )
    for r, what in cases:
        if r["status"] != "ok":
            notes.append(f"- {what}: **{r['status']}**: {r.get('error', '')}")
            if r.get("traceback"):
                notes.append("  ```\n  " + r["traceback"].strip().replace("\n", "\n  ") + "\n  ```")
        if r.get("leftover_processes"):
            notes.append(f"- {what}: leftover processes killed: {r['leftover_processes']}")
        if r["status"] == "ok" and r["case"] == "workers":
            notes.append(
                f"- {what}: connect+ready {r['connect_s']:.2f} s, warm-up {r['warmup_s']:.2f} s, "
                f"tasks per worker min/median/max {r['done_per_worker_min_median_max']}, "
                f"shutdown {r['shutdown_s']:.2f} s, helper exit codes {r['helper_rcs']}"
            )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, default=200, help="connected workers (default 200)")
    ap.add_argument("--procs", type=int, default=4, help="helper processes (default 4)")
    ap.add_argument("--n", type=int, default=20_000, help="W1 tasks (default 20,000)")
    ap.add_argument("--repeat", type=int, default=3, help="W1 repetitions (default 3)")
    ap.add_argument("--queued", type=int, default=1_000_000, help="queued tasks (default 1 M)")
    ap.add_argument("--connect-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per case (180)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--helper", metavar="ADDRESS", dest="address", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ready-file", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.address:
        return helper_main(a)
    if a.child:
        return child_main(a)
    if min(a.workers, a.procs, a.n, a.repeat, a.queued) < 1:
        ap.error("--workers, --procs, --n, --repeat and --queued must be positive")

    from run import become_subreaper

    become_subreaper()
    root = tempfile.mkdtemp(prefix="zs")
    t_all = time.monotonic()
    load_start = os.getloadavg()[0]
    out = {}
    try:
        for key, case, workers, procs in (
            ("base1", "workers", 2, 1),  # 2 threads in 1 helper process
            ("base2", "workers", 2, 2),  # 1 thread in each of 2 helper processes
            ("many", "workers", a.workers, min(a.procs, a.workers)),
            ("mem", "memory", 0, 0),
            ("futures", "futures", 0, 0),
        ):
            r = out[key] = run_child(case, workers, procs, a, root)
            shown = (
                f"tasks/s={fmt(r['median']['tasks_per_s'])}"
                if r["status"] == "ok" and case == "workers"
                else f"rss_growth_mb={r['rss_growth_mb']:,.0f}"
                if r["status"] == "ok"
                else r.get("error", "")
            )
            print(
                f"[{key}: {case} {workers}] {r['status']} {r['wall_s']:.1f}s  {shown}",
                file=sys.stderr,
                flush=True,
            )
            if r["status"] != "ok":
                print(r.get("log_tail", ""), file=sys.stderr, flush=True)
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    text = report(out, a, time.monotonic() - t_all, load_start)
    print(text)
    failed = any(r["status"] != "ok" for r in out.values())
    return 1 if failed else 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
