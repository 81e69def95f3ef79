#!/usr/bin/env python3
"""Long links: remote worker hosts behind TCP proxies that add a fixed delay on loopback.

    .venv/bin/python benchmarks/longlink.py              # direct, 0, 10, 50 ms; 3 rounds
    .venv/bin/python benchmarks/longlink.py --rtts direct,10 --rounds 1 --workloads W1

Topology (as a user would run it, with CurveZMQ): ``ZmqExecutor(listen="tcp://127.0.0.1:*",
token=...)`` and two worker hosts ``python -m zmqexecutor worker ADDRESS -n 1`` (token in
``$ZMQEXECUTOR_TOKEN``). Both directions cross a proxy: each host connects to the
executor's sink through one, and its worker process binds its inbox to a fixed port and
advertises (``--advertise 127.0.0.1:P-P``) the port of another proxy in front of it, which the
executor connects to. ``direct`` runs without proxies, ``0`` through proxies without delay
(what the proxies themselves cost on a machine of 2 cores). Each proxy forwards the bytes
of each direction in order, each chunk RTT/2 after it arrived (there is no ``tc netem``
here); the proxies run in a child process, so they do not take the executor's GIL.

Workloads (``run.py``'s): W1, 20,000 ``noop()`` submitted, then waited for (tasks/s); W5,
120 ``sleep_for(d)`` with d = 0.4 s every tenth, else 0.02 s (makespan / ideal). Each round
measures every RTT once (in the order given, so rounds alternate), each with fresh hosts,
proxies and executor after an untimed warm-up. The table shows medians over rounds and,
for W1, the median of each round's ratio to that round's direct run (the goal) and to its
0 ms run (what the round trip costs beyond the proxies themselves).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from run import ExecutorSystem  # noqa: E402  (run.py is beside this file)

# ================================================================ the delay proxy (child)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
    """Forward ``src`` to ``dst`` in order, each chunk ``delay`` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while True:
            data = await src.read(1 << 16)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                return

    async def write() -> None:
        while True:
            due, data = await queue.get()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if not data:
                with contextlib.suppress(OSError):
                    dst.write_eof()
                return
            dst.write(data)
            await dst.drain()

    with contextlib.suppress(OSError, ConnectionError):
        await asyncio.gather(read(), write())


async def _serve(routes: list[tuple[int, int]], delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: int):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer, delay), _pump(up_reader, writer, delay))
        for w in (writer, up_writer):
            w.close()

    servers = []
    for listen, target in routes:

        async def on_connect(r, w, target=target):
            await handle(r, w, target)

        servers.append(await asyncio.start_server(on_connect, "127.0.0.1", listen))
    print("ready", flush=True)
    await asyncio.Event().wait()


def proxy_main(spec: list[str], delay: float) -> None:
    routes = [tuple(int(p) for p in s.split(":")) for s in spec]
    asyncio.run(_serve(routes, delay))  # type: ignore[arg-type]


# ================================================================ the cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster(ExecutorSystem):
    """An executor, two worker hosts of one process each, and (rtt_ms not None) the
    proxies; run.py's workloads drive it as they drive run.py's systems."""

    def __init__(self, rtt_ms: float | None) -> None:
        super().__init__("zmqexecutor_longlink")
        import zmqexecutor._security
        from zmqexecutor import ZmqExecutor

        self.procs: list[subprocess.Popen[bytes]] = []
        token = zmqexecutor._security.new_token()
        self.ex = ZmqExecutor(listen="tcp://127.0.0.1:*", token=token)
        sink_port = int(self.ex.address.rsplit(":", 1)[1])
        env = dict(os.environ, ZMQEXECUTOR_TOKEN=token)
        env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        hosts, routes = [], []
        for _ in range(2):
            inbox = free_port()
            if rtt_ms is not None:
                sink_proxy, inbox_proxy = free_port(), free_port()
                routes += [f"{sink_proxy}:{sink_port}", f"{inbox_proxy}:{inbox}"]
                hosts.append((sink_proxy, inbox, inbox_proxy))
            else:
                hosts.append((sink_port, inbox, inbox))
        if routes:
            assert rtt_ms is not None
            cmd = [sys.executable, __file__, "--proxy", *routes, "--delay", str(rtt_ms / 2000)]
            proxy = subprocess.Popen(cmd, stdout=subprocess.PIPE)
            self.procs.append(proxy)
            assert proxy.stdout is not None
            if proxy.stdout.readline().strip() != b"ready":
                raise RuntimeError("the delay proxy did not start")
        for sink, inbox, advertised in hosts:
            cmd = [sys.executable, "-m", "zmqexecutor", "worker", f"tcp://127.0.0.1:{sink}"]
            cmd += ["-n", "1", "--log-level", "WARNING", "--listen", f"tcp://127.0.0.1:{inbox}"]
            cmd += ["--advertise", f"127.0.0.1:{advertised}-{advertised}"]
            self.procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(w.ready for w in self.ex.stats().workers) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the worker hosts did not register")
            time.sleep(0.02)

    def close(self) -> None:
        try:
            self.ex.shutdown(wait=True)
        finally:
            for p in reversed(self.procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def measure(rtt_ms: float | None, workloads: list[str]) -> dict[str, float]:
    import run

    cluster = Cluster(rtt_ms)
    try:
        cluster.wait_ready()
        out: dict[str, float] = {}
        for wid in workloads:
            p = run.scaled_params(wid, 1.0)
            run.warmup(cluster, wid, p)
            r = run.GENERIC[wid](cluster, p)
            if wid == "W1":
                out["W1"] = r["tasks_per_s"]
            else:
                out["W5"] = r["ratio"]
        return out
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rtts",
        default="direct,0,10,50",
        help="round trips in ms through the proxies (direct: no proxy; 0: the proxies' own cost)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workloads", default="W1,W5")
    ap.add_argument("--w5-rtts", default="direct,10", help="round trips that also run W5")
    ap.add_argument("--proxy", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--delay", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.proxy is not None:
        proxy_main(a.proxy, a.delay)
        return
    rtts = a.rtts.split(",")
    w5_rtts = set(a.w5_rtts.split(","))
    workloads = a.workloads.split(",")
    results: dict[str, list[dict[str, float]]] = {r: [] for r in rtts}
    for n in range(a.rounds):
        for rtt in rtts:
            wids = [w for w in workloads if w != "W5" or rtt in w5_rtts]
            r = measure(None if rtt == "direct" else float(rtt), wids)
            print(f"round {n + 1} rtt {rtt}: {r}", file=sys.stderr, flush=True)
            results[rtt].append(r)
    # the goal is against direct; against the 0 ms row the proxies' own cost (a Python
    # process on the same cores) is left out, which shows what the round trip alone costs
    bases = [b for b in (rtts[0], "0") if b in results]
    bases = list(dict.fromkeys(bases))
    heads = " | ".join(f"vs {b if b == 'direct' else b + ' ms'} (median; per round)" for b in bases)
    print(f"| round trip | W1 tasks/s | {heads} | W5 makespan/ideal |")
    print("|---|---|" + "---|" * len(bases) + "---|")
    for rtt in rtts:
        runs = results[rtt]
        w1 = statistics.median(r["W1"] for r in runs) if "W1" in workloads else float("nan")
        cells = []
        for base in bases:
            ratios = ""
            if "W1" in workloads:
                per = [r["W1"] / d["W1"] for r, d in zip(runs, results[base], strict=True)]
                ratios = f"{statistics.median(per):.2f} ({', '.join(f'{x:.2f}' for x in per)})"
            cells.append(ratios)
        w5 = [r["W5"] for r in runs if "W5" in r]
        w5s = f"{statistics.median(w5):.3f} ({', '.join(f'{x:.3f}' for x in w5)})" if w5 else ""
        label = rtt if rtt == "direct" else f"{rtt} ms (proxied)"
        print(f"| {label} | {w1:,.0f} | {' | '.join(cells)} | {w5s} |")


if __name__ == "__main__":
    main()
