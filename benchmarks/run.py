#!/usr/bin/env python3
"""zmqexecutor vs ProcessPoolExecutor vs a hand-written pyzmq floor, side by side.

    .venv/bin/python benchmarks/run.py                          # W1..W6, all systems, 3 repeats
    .venv/bin/python benchmarks/run.py --scale 0.05 --repeat 1  # smoke run
    .venv/bin/python benchmarks/run.py --workloads W1,W3 --systems zmqexecutor,process

Systems (2 worker processes each):

* ``zmqexecutor``: ``ZmqExecutor(max_workers=2)``;
* ``zmqexecutor_curve``: the remote mode over loopback TCP with CurveZMQ:
  ``ZmqExecutor(listen="tcp://127.0.0.1:*", token=...)`` plus one worker host
  ``python -m zmqexecutor worker ADDRESS -n 2`` (token in ``$ZMQEXECUTOR_TOKEN``); both
  worker processes are registered and have run tasks before anything is timed (W6: start
  = construct + launch the host + first result; stop = executor shutdown + SIGTERM the host
  and wait for it);
* ``process``: ``concurrent.futures.ProcessPoolExecutor(2)`` (platform start method);
* ``raw_zmq``: the floor, not an executor: pyzmq PUSH -> 2 forked workers -> PULL sink on
  tcp://127.0.0.1, HWM 0, one ``cloudpickle.dumps((id, fn, args))`` per task, tight loops;
  for W4 pickle-5 out-of-band buffers as separate frames with ``copy=False`` on both ends;
* ``raw_zmq_curve``: ``raw_zmq`` over CurveZMQ (the driver's two sockets are CURVE servers,
  each worker a CURVE client with its own ``zmq.curve_keypair()``): the floor for
  ``zmqexecutor_curve``, which pays the same encryption of every byte in both directions
  (not run for W5, which measures scheduling: ``SKIPPED``).

Workloads (same sizes and task semantics as the shared harness ``execbench``):

* W1: submit 20,000 ``noop()``, then wait for all (tasks/s);
* W2: ``list(map(square, range(200_000), chunksize=1000))`` (items/s);
* W3: 2,000 sequential ``submit(noop).result()`` (p50 / p99 µs);
* W4: 20 sequential round trips of ``echo(x)``, x = 32 MiB float64 array
  (MB/s = 2 * 20 * 32 MiB / 1e6 / s, both directions);
* W5: 120 ``sleep_for(d)``, d = 0.4 s if i % 10 == 0 else 0.02 s, submitted in order
  (makespan s, makespan / max(sum(d)/2, max d));
* W6: construct -> first ``noop()`` result (start s), then shutdown (stop s).

Each (system, workload) runs in a fresh child interpreter (this script with ``--child``):
start the system -> untimed warm-up -> ``--repeat`` timed repetitions -> shutdown.  W6 uses
one fresh interpreter per repeat.  Every result is checked.  Children get ``benchmarks/`` on
``PYTHONPATH`` (so workers import ``tasks`` by reference), a private scratch directory as
cwd and ``TMPDIR``, their own session, and a wall-clock timeout (a hung child's process group
is killed and reported as TIMEOUT).  This process is a child subreaper: any process a
system leaves behind after its child exited is reported and killed by PID.

``--scale F`` multiplies the task counts (W1, W2, W3, W4 and, unlike the shared harness,
W5); it is printed in the report.  Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime
import importlib.metadata
import itertools
import json
import multiprocessing
import os
import pickle
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

MIB = 1024 * 1024
SYSTEMS = ("zmqexecutor", "zmqexecutor_curve", "process", "raw_zmq", "raw_zmq_curve")
ORDER = ("W1", "W2", "W3", "W4", "W5", "W6")
#: (system, workload) pairs not run: W5 measures scheduling, which CURVE does not change
#: (raw_zmq_curve's W5 is raw_zmq's, and would add 18 s to ``make bench``)
SKIPPED = {("raw_zmq_curve", "W5")}

# wid -> base parameters, the parameters --scale multiplies, shown metrics
# (key, label, higher_is_better)
WORKLOADS = {
    "W1": ({"n": 20_000}, ("n",), [("tasks_per_s", "W1 noop tasks/s", True)]),
    "W2": ({"n": 200_000, "chunksize": 1000}, ("n",), [("items_per_s", "W2 map items/s", True)]),
    "W3": ({"n": 2_000}, ("n",), [("p50_us", "W3 p50 µs", False), ("p99_us", "W3 p99 µs", False)]),
    "W4": ({"n": 20, "mib": 32}, ("n",), [("mb_per_s", "W4 echo MB/s", True)]),
    "W5": (
        {"n": 120, "long": 0.4, "short": 0.02, "every": 10, "workers": 2},
        ("n",),
        [("makespan_s", "W5 makespan s", False), ("ratio", "W5 /ideal", False)],
    ),
    "W6": ({}, (), [("startup_s", "W6 start s", False), ("shutdown_s", "W6 stop s", False)]),
}


def scaled_params(wid, scale):
    params, scalable, _ = WORKLOADS[wid]
    p = dict(params)
    for k in scalable:
        p[k] = max(1, round(p[k] * scale))
    return p


# ================================================================ checks and metrics


def make_payload(mib):
    import numpy as np

    return np.random.default_rng(0).random(mib * MIB // 8)  # float64


def check_payload(x, y, full=False):
    if y is x:
        raise AssertionError("W4: echo returned the very same object: no round trip happened")
    if (
        y.shape != x.shape
        or y.dtype != x.dtype
        or y[0] != x[0]
        or y[-1] != x[-1]
        or y[len(y) // 2] != x[len(x) // 2]
    ):
        raise AssertionError("W4: echo payload corrupted")
    if full:
        import numpy as np

        if not np.array_equal(x, y):
            raise AssertionError("W4: echo payload corrupted (full comparison)")


def check_nones(res, n, what):
    if len(res) != n or any(r is not None for r in res):
        raise AssertionError(f"{what}: wrong results (expected {n} x None)")


def w5_durations(p):
    return [p["long"] if i % p["every"] == 0 else p["short"] for i in range(p["n"])]


def w5_metrics(p, makespan, pids):
    ds = w5_durations(p)
    me = os.getpid()
    if len(pids) != len(ds) or any(not isinstance(q, int) or q == me for q in pids):
        raise AssertionError("W5: wrong results (expected worker pids)")
    ideal = max(sum(ds) / p["workers"], max(ds))
    busy = {}
    for d, pid in zip(ds, pids, strict=True):
        busy[pid] = busy.get(pid, 0.0) + d
    return {
        "makespan_s": makespan,
        "ideal_s": ideal,
        "ratio": makespan / ideal,
        "n_workers_used": len(busy),
        # seconds of sleep given to each worker, busiest first: shows head-of-line blocking
        "worker_sleep_s": [round(v, 3) for v in sorted(busy.values(), reverse=True)],
    }


def latency_metrics(lat_ns):
    lat = sorted(lat_ns)
    n = len(lat)

    def pct(q):
        return lat[min(n - 1, int(q * n))] / 1000.0

    return {
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": lat[-1] / 1000.0,
        "mean_us": statistics.fmean(lat) / 1000.0,
        "seconds": sum(lat) / 1e9,
    }


# ================================================================ systems (child side)


class ExecutorSystem:
    """Any concurrent.futures.Executor; the generic workloads below drive it."""

    def __init__(self, name):
        self.name = name
        self.ex = None

    def prepare(self):
        """Imports (not timed by W6): the executor classes themselves, which both packages
        import only when first used."""
        if self.name.startswith("zmqexecutor"):
            import zmqexecutor._security  # noqa: F401
            from zmqexecutor import ZmqExecutor  # noqa: F401
        else:
            from concurrent.futures import ProcessPoolExecutor  # noqa: F401

    def start(self):
        if self.name == "zmqexecutor":
            from zmqexecutor import ZmqExecutor

            self.ex = ZmqExecutor(max_workers=2)
        else:
            from concurrent.futures import ProcessPoolExecutor

            self.ex = ProcessPoolExecutor(max_workers=2)

    def shutdown(self):
        self.ex.shutdown(wait=True)

    def submit(self, fn, *args):
        return self.ex.submit(fn, *args)

    def result(self, handle):
        return handle.result()

    def gather(self, handles):
        return [h.result() for h in handles]

    def map(self, fn, iterable, chunksize):
        return list(self.ex.map(fn, iterable, chunksize=chunksize))

    def workload_impl(self, wid):
        return None

    def wait_ready(self):
        """Untimed, before the warm-up: nothing to wait for (local workers)."""


class CurveSystem(ExecutorSystem):
    """Remote mode over loopback TCP with CurveZMQ: one worker host with 2 processes."""

    def __init__(self, name="zmqexecutor_curve"):
        super().__init__(name)
        self.host = None

    def start(self):
        import zmqexecutor._security
        from zmqexecutor import ZmqExecutor

        token = zmqexecutor._security.new_token()
        self.ex = ZmqExecutor(listen="tcp://127.0.0.1:*", token=token)
        env = dict(os.environ)
        env["ZMQEXECUTOR_TOKEN"] = token  # never on argv
        env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "zmqexecutor", "worker", self.ex.address]
        cmd += ["-n", "2", "--log-level", "WARNING"]
        try:
            self.host = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            self.ex.shutdown(wait=True, cancel_futures=True)
            raise

    def wait_ready(self, timeout=30.0):
        """Both worker processes registered, and each has run a task."""
        import tasks

        deadline = time.monotonic() + timeout
        while True:
            pids = {w.pid for w in self.ex.stats().workers}
            if len(pids) >= 2:
                break
            if self.host.poll() is not None:
                raise RuntimeError(f"worker host exited with rc={self.host.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(pids)} of 2 workers registered in {timeout:g} s")
            time.sleep(0.01)
        seen = set()
        while not pids <= seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {sorted(pids - seen)} got no task in {timeout:g} s")
            seen.update(self.gather([self.submit(tasks.sleep_for, 0.05) for _ in range(4)]))

    def shutdown(self):
        try:
            self.ex.shutdown(wait=True)
        finally:
            host, self.host = self.host, None
            if host is not None and host.poll() is None:
                host.send_signal(signal.SIGTERM)
                try:
                    host.wait(15)
                except subprocess.TimeoutExpired:
                    host.kill()
                    host.wait(5)


def make_system(name, wid):
    if name in ("raw_zmq", "raw_zmq_curve"):
        return RawZmq(oob=wid == "W4", curve=name == "raw_zmq_curve")
    if name == "zmqexecutor_curve":
        return CurveSystem()
    return ExecutorSystem(name)


def _raw_worker_main(conn, oob):
    """A raw_zmq worker: PULL tasks, run them, PUSH results (forked by the driver)."""
    ep_tasks, ep_sink, server_key = conn.recv()
    conn.close()
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    if server_key is not None:  # raw_zmq_curve: a CURVE client of the driver's sockets
        public, secret = zmq.curve_keypair()
        for sock in (pull, push):
            sock.curve_serverkey = server_key
            sock.curve_publickey = public
            sock.curve_secretkey = secret
    pull.rcvhwm = 0
    pull.connect(ep_tasks)
    push.sndhwm = 0
    push.connect(ep_sink)
    loads, dumps = pickle.loads, pickle.dumps
    try:
        if not oob:
            recv, send = pull.recv, push.send
            while True:
                tid, fn, args = loads(recv())
                if fn is None:
                    break
                try:
                    res = (tid, True, fn(*args))
                except BaseException as e:
                    res = (tid, False, e)
                send(dumps(res, 5))
        else:
            recv_multipart, send_multipart = pull.recv_multipart, push.send_multipart
            while True:
                frames = recv_multipart(copy=False)
                tid, fn, args = loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])
                if fn is None:
                    break
                try:
                    res = (tid, True, fn(*args))
                except BaseException as e:
                    res = (tid, False, e)
                del frames, args
                bufs = []
                head = dumps(res, 5, buffer_callback=bufs.append)
                del res
                send_multipart([head] + [b.raw() for b in bufs], copy=False)
                del bufs
    finally:
        push.close(linger=5000)
        pull.close(linger=0)
        ctx.term()


class RawZmq:
    """The floor: no futures, no threads, no bookkeeping beyond a task id.

    Workers are forked before the driver creates its zmq context; start-up waits (socket
    monitor) until both workers completed the handshake on the task socket, otherwise
    PUSH would send everything to the first one (slow joiner).  W1..W5 are tight loops.
    """

    def __init__(self, oob=False, curve=False):
        self.name = "raw_zmq_curve" if curve else "raw_zmq"
        self.oob = oob  # pickle-5 out-of-band frames, copy=False (W4)
        self.curve = curve  # both sockets CURVE servers, workers CURVE clients
        self.procs = []

    def wait_ready(self):
        """start() already waited for both workers' handshakes."""

    def prepare(self):
        import cloudpickle  # noqa: F401
        import zmq  # noqa: F401

    def start(self):
        import cloudpickle
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        self._dumps = cloudpickle.dumps
        self._tid = 0
        mp = multiprocessing.get_context("fork")
        conns = []
        for _ in range(2):
            parent, child = mp.Pipe()
            p = mp.Process(target=_raw_worker_main, args=(child, self.oob), daemon=True)
            p.start()
            child.close()
            conns.append(parent)
            self.procs.append(p)
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.sink = self.ctx.socket(zmq.PULL)
        server_public = None
        if self.curve:
            server_public, server_secret = zmq.curve_keypair()
            for sock in (self.push, self.sink):
                sock.curve_server = True
                sock.curve_secretkey = server_secret
        self.push.sndhwm = 0
        self.push.linger = 0
        port_t = self.push.bind_to_random_port("tcp://127.0.0.1")
        self.sink.rcvhwm = 0
        self.sink.linger = 0
        port_s = self.sink.bind_to_random_port("tcp://127.0.0.1")
        mon = self.push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        for c in conns:
            c.send((f"tcp://127.0.0.1:{port_t}", f"tcp://127.0.0.1:{port_s}", server_public))
            c.close()
        connected = 0
        deadline = time.monotonic() + 30
        while connected < 2:
            if not mon.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                raise TimeoutError("raw_zmq: workers did not connect within 30 s")
            if recv_monitor_message(mon)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                connected += 1
        self.push.disable_monitor()
        mon.close()

    def shutdown(self):
        stop = self._encode((-1, None, ()))
        for _ in self.procs:  # round-robin: one STOP per connected worker
            self._send(stop)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        self.procs = []
        self.push.close()
        self.sink.close()
        self.ctx.term()

    # -- wire format
    def _encode(self, msg):
        if not self.oob:
            return self._dumps(msg)
        bufs = []
        head = self._dumps(msg, protocol=5, buffer_callback=bufs.append)
        return [head] + [b.raw() for b in bufs]

    def _send(self, enc):
        if self.oob:
            self.push.send_multipart(enc, copy=False)
        else:
            self.push.send(enc)

    def _recv(self):
        if not self.oob:
            return pickle.loads(self.sink.recv())
        frames = self.sink.recv_multipart(copy=False)
        return pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])

    # -- minimal task API (warm-up and W6 only)
    def submit(self, fn, *args):
        tid = self._tid
        self._tid += 1
        self._send(self._encode((tid, fn, args)))
        return tid

    def gather(self, tids):
        pos = {t: i for i, t in enumerate(tids)}
        out = [None] * len(tids)
        for _ in tids:
            tid, ok, val = self._recv()
            if not ok:
                raise val
            out[pos[tid]] = val
        return out

    def result(self, tid):
        return self.gather([tid])[0]

    def map(self, fn, iterable, chunksize):
        import tasks

        it = iter(iterable)
        tids = []
        while chunk := list(itertools.islice(it, chunksize)):
            tids.append(self.submit(tasks.apply_chunk, fn, chunk))
        return [y for part in self.gather(tids) for y in part]

    # -- tight workloads
    def workload_impl(self, wid):
        return {"W1": self._w1, "W2": self._w2, "W3": self._w3, "W4": self._w4, "W5": self._w5}[wid]

    def _drain(self, n):
        """Receive n in-band results into a list indexed by task id (0..n-1)."""
        recv, loads = self.sink.recv, pickle.loads
        out = [None] * n
        for _ in range(n):
            tid, ok, val = loads(recv())
            if not ok:
                raise val
            out[tid] = val
        return out

    def _w1(self, p):
        import tasks

        n = p["n"]
        noop, dumps, send = tasks.noop, self._dumps, self.push.send
        t0 = time.perf_counter()
        for i in range(n):
            send(dumps((i, noop, ())))
        t1 = time.perf_counter()
        res = self._drain(n)
        dt = time.perf_counter() - t0
        check_nones(res, n, "W1")
        return {"tasks_per_s": n / dt, "seconds": dt, "submit_s": t1 - t0}

    def _w2(self, p):
        import tasks

        n, cs = p["n"], p["chunksize"]
        apply_chunk, square = tasks.apply_chunk, tasks.square
        dumps, send = self._dumps, self.push.send
        t0 = time.perf_counter()
        nchunks = 0
        for start in range(0, n, cs):
            send(dumps((nchunks, apply_chunk, (square, list(range(start, min(start + cs, n)))))))
            nchunks += 1
        out = []
        for part in self._drain(nchunks):
            out.extend(part)
        dt = time.perf_counter() - t0
        if out != [i * i for i in range(n)]:
            raise AssertionError("W2: wrong results")
        return {"items_per_s": n / dt, "seconds": dt}

    def _w3(self, p):
        import tasks

        n = p["n"]
        noop, dumps, send = tasks.noop, self._dumps, self.push.send
        recv, loads = self.sink.recv, pickle.loads
        clock = time.perf_counter_ns
        lat = []
        for i in range(n):
            t = clock()
            send(dumps((i, noop, ())))
            tid, ok, val = loads(recv())
            lat.append(clock() - t)
            if tid != i or not ok or val is not None:
                raise AssertionError("W3: wrong result")
        return latency_metrics(lat)

    def _w4(self, p):
        import tasks

        x = make_payload(p["mib"])
        echo = tasks.echo
        y = None
        t0 = time.perf_counter()
        for i in range(p["n"]):
            del y
            self._send(self._encode((i, echo, (x,))))
            tid, ok, y = self._recv()
            if tid != i or not ok:
                raise AssertionError("W4: wrong result")
            check_payload(x, y)
        dt = time.perf_counter() - t0
        check_payload(x, y, full=True)
        moved = 2 * p["n"] * x.nbytes
        return {"mb_per_s": moved / 1e6 / dt, "seconds": dt, "per_round_trip_ms": dt / p["n"] * 1e3}

    def _w5(self, p):
        import tasks

        ds = w5_durations(p)
        sleep_for, dumps, send = tasks.sleep_for, self._dumps, self.push.send
        t0 = time.perf_counter()
        for i, d in enumerate(ds):
            send(dumps((i, sleep_for, (d,))))
        pids = self._drain(len(ds))
        makespan = time.perf_counter() - t0
        return w5_metrics(p, makespan, pids)


# ================================================================ generic workloads


def w1_noop_throughput(sy, p):
    import tasks

    n = p["n"]
    noop, submit = tasks.noop, sy.submit
    t0 = time.perf_counter()
    futs = [submit(noop) for _ in range(n)]
    t1 = time.perf_counter()
    res = sy.gather(futs)
    dt = time.perf_counter() - t0
    check_nones(res, n, "W1")
    return {"tasks_per_s": n / dt, "seconds": dt, "submit_s": t1 - t0}


def w2_map_small(sy, p):
    import tasks

    n, cs = p["n"], p["chunksize"]
    t0 = time.perf_counter()
    out = sy.map(tasks.square, range(n), cs)
    dt = time.perf_counter() - t0
    if out != [i * i for i in range(n)]:
        raise AssertionError("W2: wrong results")
    return {"items_per_s": n / dt, "seconds": dt}


def w3_latency(sy, p):
    import tasks

    n = p["n"]
    noop, submit, result = tasks.noop, sy.submit, sy.result
    clock = time.perf_counter_ns
    lat = []
    bad = 0
    for _ in range(n):
        t = clock()
        r = result(submit(noop))
        lat.append(clock() - t)
        bad += r is not None
    if bad:
        raise AssertionError("W3: wrong results")
    return latency_metrics(lat)


def w4_payload(sy, p):
    import tasks

    x = make_payload(p["mib"])
    echo = tasks.echo
    y = None
    t0 = time.perf_counter()
    for _ in range(p["n"]):
        del y
        y = sy.result(sy.submit(echo, x))
        check_payload(x, y)
    dt = time.perf_counter() - t0
    check_payload(x, y, full=True)
    moved = 2 * p["n"] * x.nbytes
    return {"mb_per_s": moved / 1e6 / dt, "seconds": dt, "per_round_trip_ms": dt / p["n"] * 1e3}


def w5_imbalance(sy, p):
    import tasks

    ds = w5_durations(p)
    t0 = time.perf_counter()
    futs = [sy.submit(tasks.sleep_for, d) for d in ds]
    pids = sy.gather(futs)
    makespan = time.perf_counter() - t0
    return w5_metrics(p, makespan, pids)


GENERIC = {
    "W1": w1_noop_throughput,
    "W2": w2_map_small,
    "W3": w3_latency,
    "W4": w4_payload,
    "W5": w5_imbalance,
}


def warmup(sy, wid, p):
    """Untimed: both workers alive and warm (and numpy imported on them for W4)."""
    import tasks

    pids = sy.gather([sy.submit(tasks.sleep_for, 0.05) for _ in range(4)])
    check_nones(sy.gather([sy.submit(tasks.noop) for _ in range(20)]), 20, "warm-up")
    if wid == "W2":
        m = 2 * p["chunksize"]
        if sy.map(tasks.square, range(m), p["chunksize"]) != [i * i for i in range(m)]:
            raise AssertionError("warm-up map: wrong results")
    if wid == "W4":
        sy.gather([sy.submit(tasks.warm_numpy, 0.05) for _ in range(4)])
        x = make_payload(p["mib"])
        check_payload(x, sy.result(sy.submit(tasks.echo, x)), full=True)
    return {"warmup_distinct_worker_pids": len(set(pids))}


def startup(sy):
    """W6: construct -> first noop() result, then shutdown."""
    import tasks

    t0 = time.perf_counter()
    sy.start()
    r = sy.result(sy.submit(tasks.noop))
    t1 = time.perf_counter()
    if r is not None:
        raise AssertionError("W6: wrong result")
    sy.shutdown()
    t2 = time.perf_counter()
    return {"startup_s": t1 - t0, "shutdown_s": t2 - t1}


def child_main(a):
    """One (system, workload) measurement; always writes a JSON result file."""
    res = {"system": a.system, "workload": a.workload, "status": "error", "runs": [], "info": {}}

    def write():
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1, default=str)
        os.replace(tmp, a.out)

    sy = None
    started = False
    try:
        p = scaled_params(a.workload, a.scale)
        res["params"] = p
        sy = make_system(a.system, a.workload)
        t = time.perf_counter()
        sy.prepare()
        res["import_s"] = time.perf_counter() - t
        if a.workload == "W6":
            for _ in range(a.repeat):
                started = True
                res["runs"].append(startup(sy))
                started = False
        else:
            impl = sy.workload_impl(a.workload)
            run = impl if impl is not None else (lambda q: GENERIC[a.workload](sy, q))
            t = time.perf_counter()
            sy.start()
            started = True
            res["start_s"] = time.perf_counter() - t
            t = time.perf_counter()
            sy.wait_ready()
            res["ready_s"] = time.perf_counter() - t
            t = time.perf_counter()
            res["info"].update(warmup(sy, a.workload, p))
            res["warmup_s"] = time.perf_counter() - t
            for _ in range(a.repeat):
                res["runs"].append(run(p))
                write()  # partial results survive a later hang
            t = time.perf_counter()
            started = False
            sy.shutdown()
            res["shutdown_s"] = time.perf_counter() - t
        res["status"] = "ok"
    except BaseException as e:
        res["status"] = "error"
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-4000:]
        if started and sy is not None:
            with contextlib.suppress(BaseException):
                sy.shutdown()
    finally:
        write()
    return 0


# ================================================================ runner: process hygiene


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def become_subreaper():
    """Orphaned descendants get re-parented to us, so leftovers can be found and killed."""
    try:
        return _libc().prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:
        return False


def _live_children():
    """(pid, comm) of our non-zombie children (reaping zombies first)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue
        rp = data.rfind(")")
        rest = data[rp + 2 :].split()
        if int(rest[1]) == me and rest[0] != "Z":
            out.append((int(name), data[data.find("(") + 1 : rp]))
    return out


def sweep_leftovers(grace_s=5.0):
    """Wait up to grace_s for re-parented descendants to exit, then SIGTERM/SIGKILL each
    remaining one by PID.  Returns the names of those that had to be killed."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _live_children():
            return []
        time.sleep(0.1)
    killed = {}
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
        left = _live_children()
        if not left:
            break
        for pid, comm in left:
            killed[pid] = comm
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        end = time.monotonic() + 3.0
        while time.monotonic() < end and _live_children():
            time.sleep(0.1)
    _live_children()
    return sorted(killed.values())


def run_isolated(cmd, *, cwd, env, logf, timeout):
    """Run ``cmd`` in its own process group, output to ``logf``; on timeout kill the whole
    group (TERM, then KILL). Returns (returncode, timed_out)."""
    timed_out = False
    with open(logf, "wb") as lf:
        p = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=lf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)  # the child's own process group, by its id
                try:
                    p.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
    return p.returncode, timed_out


def run_child(system, wid, repeat, args, root, idx):
    rundir = os.path.join(root, f"r{idx:03d}")
    os.makedirs(rundir)
    out = os.path.join(rundir, "result.json")
    logf = os.path.join(rundir, "child.log")
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TMPDIR"] = rundir
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--system", system,
        "--workload", wid,
        "--repeat", str(repeat),
        "--scale", str(args.scale),
        "--out", out,
    ]  # fmt: skip
    t0 = time.monotonic()
    rc, timed_out = run_isolated(cmd, cwd=rundir, env=env, logf=logf, timeout=args.timeout)
    wall = time.monotonic() - t0
    leftovers = sweep_leftovers()
    try:
        with open(out) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {"system": system, "workload": wid, "status": "error", "runs": []}
        res["error"] = f"child exited with rc={rc} and no result file"
    if timed_out:
        res["status"] = "timeout"
        res["error"] = (
            f"no result within {args.timeout:.0f} s (killed); "
            f"{len(res.get('runs', []))} repeat(s) had finished"
        )
    if res["status"] != "ok":
        with open(logf, "rb") as f:
            res["log_tail"] = f.read()[-3000:].decode(errors="replace")
    res["wall_s"] = wall
    res["leftover_processes"] = leftovers
    return res


def merge(parts):
    """Merge W6's one-child-per-repeat results."""
    base = dict(parts[0])
    base["runs"] = [r for p in parts for r in p.get("runs", [])]
    base["leftover_processes"] = [x for p in parts for x in p.get("leftover_processes", [])]
    base["wall_s"] = sum(p.get("wall_s", 0) for p in parts)
    bad = [p for p in parts if p["status"] != "ok"]
    if bad:
        for k in ("status", "error", "traceback", "log_tail"):
            base[k] = bad[0].get(k)
    return base


def median_runs(runs):
    out = {}
    for k in runs[0] if runs else ():
        vals = [r[k] for r in runs if type(r.get(k)) in (int, float)]
        if vals:
            out[k] = statistics.median(vals)
    return out


# ================================================================ report


def fmt(v):
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def columns(wids):
    return [(w, key, label, hib) for w in wids for key, label, hib in WORKLOADS[w][2]]


def value(results, system, wid, key):
    e = results.get((system, wid))
    if e is None:
        return None, "—"
    if e["status"] != "ok":
        return None, {"timeout": "TIMEOUT", "error": "ERROR"}.get(e["status"], e["status"])
    v = e["median"].get(key)
    return v, ("—" if v is None else fmt(v))


def versions():
    import cloudpickle
    import zmq

    def dist(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "cloudpickle": cloudpickle.__version__,
        "numpy": dist("numpy"),
        "zmqexecutor": dist("zmqexecutor"),
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "start_method": multiprocessing.get_start_method(),
    }


def compile_package():
    """Write zmqexecutor's bytecode caches, as ``pip install`` does: with
    ``PYTHONDONTWRITEBYTECODE`` set (or a source newer than its cache) every worker process
    would compile the package again, and W6 would time the compiler (about 15 ms a worker)."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("zmqexecutor")
    for d in spec.submodule_search_locations if spec is not None else ():
        compileall.compile_dir(d, quiet=1)


def source_digest():
    """Short hash of zmqexecutor's source files: a report is only meaningful if they did
    not change while the benchmark ran (children import the package afresh)."""
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("zmqexecutor")
    if spec is None or not spec.submodule_search_locations:
        return "not installed"
    h = hashlib.sha256()
    for d in spec.submodule_search_locations:
        for name in sorted(os.listdir(d)):
            if name.endswith(".py"):
                with open(os.path.join(d, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:12]


def build_report(results, systems, wids, args, elapsed, ver):
    cols = columns(wids)
    md = [
        f"Medians over {args.repeat} repeat(s); {ver['python']}, pyzmq {ver['pyzmq']}, "
        f"libzmq {ver['libzmq']}, cloudpickle {ver['cloudpickle']}, numpy {ver['numpy']}, "
        f"zmqexecutor {ver['zmqexecutor']} (source {ver['zmqexecutor_source']}); "
        f"{ver['cpus']} cores ({ver['usable_cpus']} usable), "
        f"{ver['platform']}; 2 workers per system; suite wall time {elapsed:.0f} s"
        + (f"; **sizes scaled by --scale {args.scale}**" if args.scale != 1.0 else "")
        + ".",
        "",
        "### Results (↑ higher is better, ↓ lower is better)",
        "",
        "| system | "
        + " | ".join(f"{label} {'↑' if hib else '↓'}" for _, _, label, hib in cols)
        + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for s in systems:
        md.append(
            "| " + " | ".join([s] + [value(results, s, w, k)[1] for w, k, _, _ in cols]) + " |"
        )
    # (system, baseline); issue 5's remote goal (CURVE vs local mode), and issue 11's CURVE
    # floor (zmqexecutor_curve vs the same encryption in a minimal pyzmq echo)
    pairs = [
        (a, b)
        for a, b in [
            ("zmqexecutor", "process"),
            ("zmqexecutor", "raw_zmq"),
            ("zmqexecutor_curve", "zmqexecutor"),
            ("zmqexecutor_curve", "raw_zmq_curve"),
        ]
        if a in systems and b in systems
    ]
    if pairs:
        md += [
            "",
            "### Ratios: system value / baseline value, per metric",
            "",
            "↑ = higher is better (a ratio > 1x means the first system is better than the "
            "baseline); ↓ = lower is better (a ratio < 1x means the first system is better).",
            "",
            "| ratio | "
            + " | ".join(f"{label} {'↑' if hib else '↓'}" for _, _, label, hib in cols)
            + " |",
            "|" + "---|" * (len(cols) + 1),
        ]
        for a, b in pairs:
            row = [f"{a} / {b}"]
            for w, k, _, _ in cols:
                v, _ = value(results, a, w, k)
                r, _ = value(results, b, w, k)
                row.append("—" if v is None or not r else f"{v / r:.2f}x")
            md.append("| " + " | ".join(row) + " |")
    notes = []
    if ver["zmqexecutor_source"] != ver["zmqexecutor_source_end"]:
        notes.append(
            f"- **zmqexecutor's source changed during the run** ({ver['zmqexecutor_source']} "
            f"-> {ver['zmqexecutor_source_end']}): its rows mix code versions"
        )
    for s in systems:
        for w in wids:
            e = results.get((s, w))
            if e is None:
                continue
            if e["status"] != "ok":
                notes.append(f"- `{s}` {w}: **{e['status']}**: {e.get('error', '')}")
            if e.get("leftover_processes"):
                notes.append(
                    f"- `{s}` {w}: processes still alive 5 s after the child exited "
                    f"(killed by PID): {', '.join(e['leftover_processes'])}"
                )
            if w == "W5" and e["status"] == "ok" and e["runs"]:
                loads = [r["worker_sleep_s"] for r in e["runs"]]
                notes.append(f"- `{s}` W5: seconds of sleep per worker, per repeat: {loads}")
    if notes:
        md += ["", "### Notes", "", *notes]
    return "\n".join(md)


# ================================================================ main


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma list of " + ",".join(SYSTEMS)
    )
    ap.add_argument("--workloads", default=",".join(ORDER), help="comma list of " + ",".join(ORDER))
    ap.add_argument("--repeat", type=int, default=3, help="repetitions; tables show medians")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply task counts (smoke runs)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per child (default 300)")
    ap.add_argument("--json", help="write every repeat's raw results here")
    # child mode (internal)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    wids = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    for s in systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r} (known: {', '.join(SYSTEMS)})")
    for w in wids:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r} (known: {', '.join(ORDER)})")
    if args.repeat < 1 or args.scale <= 0 or args.timeout <= 0:
        ap.error("--repeat, --scale and --timeout must be positive")
    wids = [w for w in ORDER if w in wids]

    become_subreaper()
    compile_package()
    ver = versions()
    ver["zmqexecutor_source"] = source_digest()
    root = tempfile.mkdtemp(prefix="zb")  # short: ipc:// paths must stay < 108 chars
    runs = [(w, s) for w in wids for s in systems if (s, w) not in SKIPPED]
    results, idx, total = {}, 0, len(runs)
    t_all = time.monotonic()
    try:
        for w, s in runs:
            parts = []
            for r in [1] * args.repeat if w == "W6" else [args.repeat]:
                idx += 1
                parts.append(run_child(s, w, r, args, root, idx))
            e = merge(parts)
            e["median"] = median_runs(e["runs"]) if e["status"] == "ok" else {}
            results[(s, w)] = e
            shown = (
                ", ".join(f"{k}={value(results, s, w, k)[1]}" for k, _, _ in WORKLOADS[w][2])
                if e["status"] == "ok"
                else e.get("error", "")
            )
            print(
                f"[{len(results)}/{total}] {s:17s} {w} {e['status']:7s} "
                f"{e['wall_s']:6.1f}s  {shown}"
                + (f"  leftovers={e['leftover_processes']}" if e["leftover_processes"] else ""),
                file=sys.stderr,
                flush=True,
            )
            if e["status"] != "ok" and e.get("log_tail"):
                print(e["log_tail"], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - t_all
    ver["zmqexecutor_source_end"] = source_digest()

    print(build_report(results, systems, wids, args, elapsed, ver))
    if args.json:
        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": ver,
            "argv": sys.argv[1:],
            "repeat": args.repeat,
            "scale": args.scale,
            "timeout": args.timeout,
            "suite_wall_s": elapsed,
            "params": {w: scaled_params(w, args.scale) for w in wids},
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": list(results.values())}, f, indent=1, default=str)
    failed = any(e["status"] != "ok" for e in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # a system may leave non-daemon threads behind: never let them keep a child alive
    os._exit(rc)
