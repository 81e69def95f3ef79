"""Functions run on the workers by ``benchmarks/run.py``.

They live in an importable module (``tasks``, not ``__main__``) so every system ships
them by reference (module + qualified name): run.py puts ``benchmarks/`` on
``PYTHONPATH`` for its children and their worker processes.  Same semantics as
``execbench/tasks.py`` of the shared harness.

No heavy imports here: numpy is only imported on a worker when it unpickles an array
(W4) or in ``warm_numpy``.
"""

import os
import time


def noop():
    return None


def square(x):
    return x * x


def echo(x):
    return x


def sleep_for(d):
    """Sleep ``d`` seconds; return the worker's pid (W5 computes each worker's load)."""
    time.sleep(d)
    return os.getpid()


def warm_numpy(d=0.0):
    """Warm-up helper: import numpy on the worker, optionally stay busy, return its pid."""
    import numpy  # noqa: F401

    if d:
        time.sleep(d)
    return os.getpid()


def apply_chunk(fn, chunk):
    """Batching equivalent of ``Executor.map(..., chunksize=N)`` (used by raw_zmq)."""
    return [fn(x) for x in chunk]
