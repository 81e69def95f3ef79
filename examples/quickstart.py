"""Quickstart: ZmqExecutor as a drop-in replacement for ProcessPoolExecutor.

Run it with `make demo` (or `python examples/quickstart.py`): it starts one local worker
process per core, maps a function over a range and submits a few calls.
"""

import math
import os
import socket

from zmqexecutor import ZmqExecutor


def slow_square(x: int) -> int:
    return x * x


def where(n: int) -> str:
    return f"task {n} ran in pid {os.getpid()} on {socket.gethostname()}"


if __name__ == "__main__":
    with ZmqExecutor() as executor:  # no arguments: local workers, one per core
        total = sum(executor.map(slow_square, range(10_000), chunksize=500))
        print(f"sum of squares below 10,000: {total}")

        futures = [executor.submit(math.factorial, n) for n in (10, 20, 30)]
        for n, future in zip((10, 20, 30), futures, strict=True):
            print(f"{n}! = {future.result()}")

        offset = 100
        print("a lambda:", executor.submit(lambda x: x + offset, 1).result())
        for line in executor.map(where, range(3)):
            print(line)
        try:
            executor.submit(math.sqrt, -1).result()
        except ValueError as e:
            print(f"a task's exception comes back as itself: ValueError({e})")
