"""A joblib parallel backend that runs ``joblib.Parallel`` (and so scikit-learn) on
zmqexecutor workers.

Usage::

    import joblib
    from zmqexecutor.joblib_backend import register

    register()  # once per process: makes the backend name "zmqexecutor" known to joblib

    # local worker processes, as many as n_jobs, started on first use
    with joblib.parallel_config(backend="zmqexecutor", n_jobs=4):
        scores = cross_val_score(model, X, y, cv=5)

    # any ZmqExecutor argument is forwarded (listen=, workers=, token_file=, ...)
    with joblib.parallel_config(backend="zmqexecutor", listen="tcp://0.0.0.0:5555",
                                token_file="~/.zmqexecutor-token"):
        ...

    # or share an executor you manage (recommended for remote workers)
    with ZmqExecutor(workers=[...]) as ex, joblib.parallel_config(backend="zmqexecutor",
                                                                  executor=ex):
        ...

(``joblib.parallel_backend(...)`` works the same on joblib versions without
``parallel_config``.)

Lifetime. A backend given ``executor=`` never shuts it down. Otherwise the backend creates
its executor on the first ``Parallel`` call and reuses it for every later call made under
the same ``parallel_config`` block (so remote workers stay connected between the fits of a
grid search); the executor is shut down when the backend is garbage collected (normally as
the ``with`` block ends), at interpreter exit, or by ``backend.shutdown()``.

``n_jobs``. ``n_jobs=1`` runs in the calling process, as with every joblib backend. A
positive ``n_jobs`` is the number of local worker processes the backend starts (unless
``max_workers=`` is given); with ``executor=``, ``listen=`` or ``workers=`` it only sizes
joblib's batches and pre-dispatch, and the executor's workers bound the concurrency.
Negative values count from the executor's worker slots when the ``Parallel`` call starts
(``-1``: all of them; the default when neither ``Parallel`` nor ``parallel_config`` sets
``n_jobs``): the slots connected, or its local workers (``ZmqExecutor.max_workers``) if
more, which count before they have started; with no worker known at all (remote workers
still to connect), this machine's core count.

The workers need joblib installed too (the batches joblib sends are joblib objects).
joblib is an optional dependency: ``pip install 'zmqexecutor[joblib]'``; importing
``zmqexecutor`` never imports joblib.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

try:
    import joblib
except ImportError as e:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "zmqexecutor.joblib_backend needs joblib, which is not installed: "
        "pip install 'zmqexecutor[joblib]'"
    ) from e

# joblib.parallel re-exports these for backend authors (dask and ray import them too).
from joblib.parallel import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from .executor import ZmqExecutor

__all__ = ["BACKEND_NAME", "ZmqExecutorBackend", "register"]

#: the name to pass as ``backend=`` to ``joblib.parallel_config`` after ``register()``
BACKEND_NAME = "zmqexecutor"

_EXECUTOR_PARAMETERS = inspect.signature(ZmqExecutor).parameters


def register(make_default: bool = False) -> None:
    """Register the backend with joblib under the name ``"zmqexecutor"``.

    Args:
        make_default: also make it joblib's default backend (every ``Parallel`` call without
            a ``backend`` then runs on zmqexecutor workers).
    """
    joblib.register_parallel_backend(BACKEND_NAME, ZmqExecutorBackend, make_default=make_default)


def _run_batch(batch: Callable[[], Any]) -> Any:
    """Run one joblib batch on a worker.

    A single module-level callable (pickled once per executor, cached by the workers),
    with the batch as its argument: submitting each batch as the callable itself would
    fill the executor's and the workers' function caches with one-use entries.
    """
    return batch()


class ZmqExecutorBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib backend running batches on a ZmqExecutor (see the module docstring).

    Args:
        nesting_level, inner_max_num_threads: set by joblib.
        executor: an existing ZmqExecutor to run on; the backend never shuts it down.
        **executor_kwargs: arguments of ZmqExecutor for the executor the backend creates
            itself (on the first ``Parallel`` call); not allowed with ``executor``.

    Raises:
        TypeError: ``executor`` together with executor arguments, or an argument that
            ZmqExecutor does not take.
    """

    default_n_jobs = -1  # n_jobs=None in Parallel (scikit-learn's default): all worker slots
    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    supports_sharedmem = False  # joblib falls back to threads for require="sharedmem"
    uses_threads = False
    # Auto-batching aims at batches of 0.2 to 1 s (loky: 2 s at most, dask: 1 s): long enough
    # to hide a network round trip, short enough that no batch strands the end of a call.
    MIN_IDEAL_BATCH_DURATION = 0.2
    MAX_IDEAL_BATCH_DURATION = 1.0

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        executor: ZmqExecutor | None = None,
        **executor_kwargs: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if executor is not None:
            if executor_kwargs:
                raise TypeError(
                    "pass either executor= or ZmqExecutor arguments to the zmqexecutor "
                    f"backend, not both (got {sorted(executor_kwargs)})"
                )
            if not isinstance(executor, ZmqExecutor):
                raise TypeError(f"executor must be a ZmqExecutor, not {type(executor).__name__}")
        unknown = sorted(set(executor_kwargs) - set(_EXECUTOR_PARAMETERS))
        if unknown:
            raise TypeError(f"ZmqExecutor got unexpected argument(s) {unknown}")
        self._executor: ZmqExecutor | None = executor
        self._owns_executor = executor is None
        self._executor_kwargs = dict(executor_kwargs)
        self._lock = threading.Lock()
        self._futures: set[Future[Any]] = set()
        self.parallel: Any = None

    # -- the executor -------------------------------------------------------------------

    @property
    def executor(self) -> ZmqExecutor | None:
        """The executor batches run on; None until the first ``Parallel`` call when the
        backend creates its own."""
        return self._executor

    def _remote(self) -> bool:
        return bool(self._executor_kwargs.get("listen") or self._executor_kwargs.get("workers"))

    def _local_workers_for(self, n_jobs: int) -> int | None:
        """max_workers of the executor the backend creates for this n_jobs."""
        if "max_workers" in self._executor_kwargs:
            explicit: int | None = self._executor_kwargs["max_workers"]
            return explicit
        if self._remote():
            return None  # remote workers only, as ZmqExecutor itself does
        if n_jobs < 0:
            return max((os.cpu_count() or 1) + 1 + n_jobs, 1)
        return n_jobs

    def _get_executor(self, n_jobs: int) -> ZmqExecutor:
        with self._lock:
            if self._executor is None:
                kwargs = dict(self._executor_kwargs)
                kwargs["max_workers"] = self._local_workers_for(n_jobs)
                self._executor = ZmqExecutor(**kwargs)
            return self._executor

    def shutdown(self, wait: bool = True) -> None:
        """Shut down the executor the backend created (cancelling batches not yet sent);
        a later ``Parallel`` call creates a new one. An ``executor=`` is left running."""
        with self._lock:
            executor, futures = self._executor, list(self._futures)
            if self._owns_executor:
                self._executor = None
        for future in futures:
            future.cancel()
        if self._owns_executor and executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)

    def _capacity(self) -> int:
        """Worker slots: the connected ones, or the executor's local workers if more (they
        count before they connect: right after the executor is made, none has), else 0."""
        executor = self._executor
        if executor is None:
            return self._local_workers_for(-1) or 0
        try:
            slots = sum(w.slots for w in executor.stats().workers)
        except Exception:  # stats() is best effort here: a shut down or busy executor
            slots = 0
        # connected slots include the local workers' own: the larger, not the sum
        return max(slots, executor.max_workers)

    # -- the joblib backend API ---------------------------------------------------------

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs > 0:
            return n_jobs
        # No worker known yet (remote workers still to connect): the count only sizes
        # joblib's batches, so guess this machine's. Never 1: that would make joblib run
        # everything in this process, which only an explicit n_jobs=1 should do.
        capacity = self._capacity() or (os.cpu_count() or 1)
        return max(capacity + 1 + n_jobs, 2)

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **joblib_kwargs: Any,  # max_nbytes, mmap_mode, temp_folder...: loky's, unused here
    ) -> int:
        """Called by joblib at the start of each Parallel call: returns the n_jobs used."""
        self.parallel = parallel
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._get_executor(n_jobs)
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], Any] | None = None) -> Any:
        """Send one batch; ``callback`` runs in the executor's dispatcher thread."""
        executor = self._get_executor(self.parallel.n_jobs if self.parallel is not None else -1)
        future = executor.submit(_run_batch, func)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    # joblib < 1.5 calls apply_async instead of submit
    apply_async = submit

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        return out.result()

    def retrieve_result(self, out: Future[Any], timeout: float | None = None) -> Any:
        return out.result(timeout=timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A batch failed: cancel the batches not yet sent to a worker (running ones finish
        and their results are dropped). The executor stays usable either way."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.cancel()

    def terminate(self) -> None:
        """End of a Parallel call: forget it; the executor is kept for the next call."""
        self.reset_batch_stats()
        self.parallel = None
