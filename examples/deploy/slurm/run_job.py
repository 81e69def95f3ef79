"""The example job of every deploy example: an executor that waits for its worker hosts, maps
a function over 100,000 numbers and prints the result.

    python run_job.py --listen tcp://0.0.0.0:5555 --token-file ~/.zmqexecutor/token --hosts 3

Worker hosts join with:

    zmqexecutor-worker tcp://THIS_HOST:5555 --token-file ~/.zmqexecutor/token

Without --token-file the token comes from $ZMQEXECUTOR_TOKEN or $ZMQEXECUTOR_TOKEN_FILE. Replace
``work`` (and the lines that print) with your own job; the rest is the set-up you keep.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import socket
import sys
import time

from zmqexecutor import ZmqExecutor


def node() -> str:
    """Where a task runs: the SLURM node under srun, else the host (container, pod) name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def work(x: int) -> tuple[int, str]:
    return x * x, node()


def probe(_: int) -> str:
    time.sleep(0.02)  # long enough for a round of probes to spread over every worker
    return node()


def wait_for_hosts(executor: ZmqExecutor, hosts: int, timeout: float) -> list[str]:
    """Run probe tasks until they have run on ``hosts`` different hosts; return their names.

    Workers may join at any time and get work at once, so a job need not wait; this one does,
    so that its work is spread over the whole allocation from the start.
    """
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < hosts:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"only {len(seen)} of {hosts} worker hosts joined within {timeout:.0f}s: "
                f"{sorted(seen)}; check the workers' output"
            )
        probes = [executor.submit(probe, i) for i in range(4 * hosts)]
        done, pending = concurrent.futures.wait(probes, timeout=remaining)
        for fut in pending:
            fut.cancel()
        seen.update(fut.result() for fut in done)
    return sorted(seen)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--listen", default="tcp://0.0.0.0:5555", help="(default: %(default)s)")
    p.add_argument("--token-file", help="default: $ZMQEXECUTOR_TOKEN, $ZMQEXECUTOR_TOKEN_FILE")
    p.add_argument(
        "--hosts",
        type=int,
        default=int(os.environ.get("SLURM_JOB_NUM_NODES", "1")),
        help="worker hosts to wait for (default: $SLURM_JOB_NUM_NODES, else 1)",
    )
    p.add_argument("--join-timeout", type=float, default=300.0, help="(default: %(default)ss)")
    p.add_argument("--items", type=int, default=100_000, help="(default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with ZmqExecutor(listen=args.listen, token_file=args.token_file) as executor:
        print(f"executor listening on {executor.address}", flush=True)
        try:
            joined = wait_for_hosts(executor, args.hosts, args.join_timeout)
        except TimeoutError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            executor.shutdown(wait=False, cancel_futures=True)
            return 1
        print(f"all {len(joined)} worker hosts joined: {', '.join(joined)}", flush=True)
        start = time.monotonic()
        results = list(executor.map(work, range(args.items), chunksize=1000))
        elapsed = time.monotonic() - start
    total = sum(square for square, _ in results)
    per_host = collections.Counter(host for _, host in results)
    print(f"sum of squares below {args.items:,}: {total}")
    print(f"{len(results):,} tasks in {elapsed:.2f}s; per host: {dict(sorted(per_host.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
