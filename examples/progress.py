"""Progress of a long-ish workload: a tqdm bar when tqdm is installed, "done N/M" lines if not.

Run it with `python examples/progress.py` (add `--plain` to print lines even with tqdm;
`pip install 'zmqexecutor[progress]'` installs tqdm). It counts the primes below 50,000,000
in 50 blocks, twice:

- with `submit` and `concurrent.futures.as_completed`: results arrive in completion order,
  so the bar moves as soon as any block is done;
- with `map`: results arrive in input order (a bar over `map` stalls behind a slow block).

Futures are plain `concurrent.futures.Future`s, so any progress tool that works with
ProcessPoolExecutor works here too.
"""

import argparse
import math
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import as_completed
from typing import Any

from zmqexecutor import ZmqExecutor

LIMIT = 50_000_000
BLOCKS = 50


def primes_in_block(lo: int, hi: int) -> int:
    """How many primes p with lo <= p < hi (a segmented sieve of Eratosthenes)."""
    lo = max(lo, 2)
    if hi <= lo:
        return 0
    root = math.isqrt(hi - 1)
    small = bytearray([1]) * (root + 1)
    small[:2] = b"\0\0"
    for p in range(2, math.isqrt(root) + 1):
        if small[p]:
            small[p * p :: p] = bytes(len(range(p * p, root + 1, p)))
    block = bytearray([1]) * (hi - lo)
    for p in range(2, root + 1):
        if small[p]:
            start = max(p * p, (lo + p - 1) // p * p)
            block[start - lo :: p] = bytes(len(range(start, hi, p)))
    return block.count(1)


def count_block(index: int) -> int:
    size = LIMIT // BLOCKS
    return primes_in_block(index * size, (index + 1) * size)


def progress(items: Iterable[Any], total: int, label: str, plain: bool) -> Iterator[Any]:
    """Yield ``items``, showing progress: a tqdm bar, or about ten "done N/M" lines."""
    if not plain:
        try:
            from tqdm import tqdm
        except ImportError:
            plain = True
        else:
            yield from tqdm(items, total=total, desc=label, unit="block")
            return
    step = max(1, total // 10)
    for done, item in enumerate(items, 1):
        if done % step == 0 or done == total:
            print(f"{label}: done {done}/{total}", flush=True)
        yield item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help='print "done N/M" lines')
    parser.add_argument("--workers", type=int, default=None, help="local worker processes")
    args = parser.parse_args()

    with ZmqExecutor(max_workers=args.workers) as executor:
        start = time.monotonic()
        futures = [executor.submit(count_block, i) for i in range(BLOCKS)]
        total = 0
        for future in progress(as_completed(futures), BLOCKS, "as_completed", args.plain):
            total += future.result()
        print(f"submit + as_completed: {total:,} primes below {LIMIT:,}", flush=True)

        results = executor.map(count_block, range(BLOCKS))
        total = sum(progress(results, BLOCKS, "map", args.plain))
        print(f"map: {total:,} primes below {LIMIT:,}", flush=True)
        print(f"took {time.monotonic() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
