"""ZmqExecutor: argument checks, submit/map/shutdown and the executor's state flags.

It never touches a socket: the dispatcher (``_dispatcher.py``) opens the context, the
sockets, the ipc directory and the local worker host as it is made (``_endpoints.py``), and
closes them as its thread ends. The whole seam between the two::

    ZmqExecutor --submit: pending.append(item), wake()------------> Dispatcher thread
                --cancel_pending(), request_shutdown(), end_workers()-->
                <--stats(), versions(), summary()----------------------
                <--Flags: shutdown (the executor writes it), broken (the core writes it)
"""

from __future__ import annotations

import concurrent.futures
import itertools
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from functools import partial
from types import ModuleType
from typing import Any, TypeVar

import cloudpickle

from . import _protocol as proto
from ._defaults import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_VERSIONS_TIMEOUT,
)
from ._dispatcher import Dispatcher, Flags
from ._endpoints import placement
from ._future import LazyFuture
from ._map import map_calls
from ._resources import check_resources
from ._scheduler import WorkItem
from ._serialize import FunctionCache, dump_args, ship_by_value
from ._settings import Settings, check, local_workers
from ._stats import ExecutorStats
from ._version_requests import VersionsRequest
from ._versions import Versions, check_package_names, package_versions
from .errors import BrokenZmqExecutor, TaskSerializationError, TaskTooLargeError

T = TypeVar("T")

# Dispatchers still running, joined at interpreter exit (as concurrent.futures does), so a
# script that never calls shutdown() still gets its results and leaves no process behind.
_live_dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
_exiting = False


def _python_exit() -> None:
    global _exiting
    _exiting = True
    for dispatcher in list(_live_dispatchers):
        dispatcher.request_shutdown()
    for dispatcher in list(_live_dispatchers):
        dispatcher.join()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


class ZmqExecutor(Executor):
    """An Executor whose worker processes run here, on other machines, or both.

    With no arguments it starts one local worker process per core, like
    ProcessPoolExecutor. With ``listen=`` remote workers (``zmqexecutor-worker ENDPOINT``)
    connect to it; with ``workers=`` it connects to workers started with
    ``zmqexecutor-worker --listen ENDPOINT``.

    Args:
        max_workers: local worker processes to start. None: one per core, or none when
            ``listen`` or ``workers`` is given.
        mp_context: accepted for compatibility with ProcessPoolExecutor and ignored: worker
            processes are always fresh interpreters (never a fork of the caller), so a
            script without an ``if __name__ == "__main__":`` guard is never re-run.
        initializer: called with ``*initargs`` in every worker process before its first
            task. If it raises, that worker gets no task; if it fails on every local
            worker, pending futures fail with BrokenZmqExecutor.
        initargs: arguments of ``initializer``.
        max_tasks_per_child: a worker process exits after this many tasks and is replaced.
        listen: endpoint the executor binds for workers to connect to
            (e.g. ``"tcp://0.0.0.0:5555"``). With ``workers``: the endpoint of the sink the
            attached workers connect back to (default: an ephemeral port), e.g. to open
            one fixed port in a firewall.
        workers: endpoints of worker hosts started with ``--listen`` to connect to.
        insecure: allow loopback TCP endpoints without a token (logs a warning; any user of
            this machine could connect). Never allows non-loopback endpoints.
        prefetch: tasks a worker process may hold beyond the one it runs. None (default):
            adaptive: only tasks whose callable is known to run briefly, up to a few
            milliseconds of queued work, widened to two round trips of the host's link for
            a remote host, so that small tasks are batched, a worker across a long link
            never idles for a round trip, and no task waits behind a long one (a worker
            that runs dry takes back another's unstarted tail); 0 disables prefetching.
        heartbeat_interval: seconds between the heartbeats of worker hosts (local ones; for
            remote ones it is their ``--heartbeat-interval``) and of ZMTP connections.
        heartbeat_timeout: a worker host silent this long is lost: its running tasks fail
            with WorkerLostError (or are retried, see ``max_retries``).
        max_retries: re-run a task whose worker was lost while it may have run, on another
            worker, at most this many more times (at-least-once; default 0: at-most-once).
        task_timeout: kill a task (and its worker process, which is replaced) that runs
            longer than this many seconds; its future fails with TaskTimeoutError.
        no_worker_timeout: fail queued tasks with NoWorkersError when no worker has been
            connected for this many seconds (default: wait for workers forever).
        token: the shared secret of the executor and its remote workers; every TCP socket
            then uses CurveZMQ (encrypted, authenticated). Default: ``token_file``, then
            $ZMQEXECUTOR_TOKEN, then the file named by $ZMQEXECUTOR_TOKEN_FILE. Required for
            non-loopback endpoints; create one with ``python -m zmqexecutor token``.
        token_file: a file holding the token (must not be readable by others).
        max_message_size: largest task or result frame in bytes; a larger task fails with
            TaskTooLargeError, a larger result with ResultTooLargeError.
        ship_modules: modules (names or module objects) whose code is sent with the tasks,
            for workers that cannot import them: a helper module next to your script, a
            package (with its submodules) that is not installed on the workers. They are
            pickled by value (cloudpickle's ``register_pickle_by_value``), which is
            process-wide: from now on every user of cloudpickle in this process, other
            executors included, sends them by value, and that stays so after shutdown
            (undoing it could break another executor that relies on it). Their functions
            are pickled once per executor, as importable ones are: a worker sees the
            module's globals as they were when a function was first submitted.
        resources: what the local host has for tasks that ask for it
            (``options(resources=...)``), shared by the local worker processes, e.g.
            ``{"GPU": 1}``; remote hosts declare theirs with ``--resources``.
        forward_output: print what tasks on remote hosts write to stdout and stderr to
            this process's ``sys.stdout`` and ``sys.stderr``, each line prefixed with its
            origin, e.g. ``(hostA pid=123) ``. It arrives shortly after it is written,
            possibly after the task's result; each host sends at most about 256 KiB/s
            (``stats()`` counts what was dropped beyond). False: it stays on each host's
            own terminal, and the hosts do not read it at all. Local worker processes
            always write to this process's terminal directly, unprefixed.

    Raises:
        ValueError: ``max_workers`` or ``max_tasks_per_child`` is less than 1.
        ConfigurationError: an endpoint is malformed or exposed without ``insecure``, or a
            name in ``ship_modules`` cannot be imported.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: object = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        listen: str | None = None,
        workers: Iterable[str] | None = None,
        insecure: bool = False,
        prefetch: int | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        max_retries: int = 0,
        task_timeout: float | None = None,
        no_worker_timeout: float | None = None,
        token: str | None = None,
        token_file: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ship_modules: Iterable[str | ModuleType] | str | ModuleType = (),
        resources: dict[str, float] | None = None,
        forward_output: bool = True,
    ) -> None:
        worker_list = tuple(workers or ())
        local_resources = check_resources(resources or {}, "resources")
        settings = Settings(
            prefetch=prefetch,
            max_tasks_per_child=max_tasks_per_child,
            max_retries=max_retries,
            task_timeout=task_timeout,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            no_worker_timeout=no_worker_timeout,
            local_workers=local_workers(max_workers, remote=bool(listen or worker_list)),
            max_message_size=max_message_size,
        )
        check(settings, initializer)
        ship_by_value(ship_modules)  # before anything is pickled (the initializer below)
        where = placement(
            settings.local_workers,
            listen,
            worker_list,
            token=token,
            token_file=token_file,
            insecure=insecure,
            resources=local_resources,
        )
        self._max_message_size = max_message_size
        self._mode = where.mode
        self._max_workers = settings.local_workers  # resolved: 0 for remote workers only
        self._shutdown_lock = threading.Lock()
        self._task_ids = itertools.count(1)
        self._functions = FunctionCache()
        self._functions_lock = threading.Lock()
        # the dispatcher opens the sockets, the ipc directory and the local worker host,
        # and closes them as its thread ends; a failed bind raises ConfigurationError here
        self._dispatcher = Dispatcher(
            self,
            settings=settings,
            placement=where,
            initializer=_pickle_initializer(initializer, initargs),
            task_ids=self._task_ids,
            forward_output=forward_output,
        )
        self._flags: Flags = self._dispatcher.flags
        self._address = self._dispatcher.sink_address
        self._dispatcher.start()
        _live_dispatchers.add(self._dispatcher)

    @property
    def address(self) -> str:
        """The endpoint workers connect to (``zmqexecutor-worker ADDRESS``); with
        ``listen="tcp://host:*"`` it carries the port the system chose."""
        return self._address

    @property
    def max_workers(self) -> int:
        """The local worker processes this executor runs: ``max_workers`` as the constructor
        resolved it (one per core by default, 0 with ``listen=`` or ``workers=`` alone).
        They count before they have connected; remote workers' slots are in ``stats()``."""
        return self._max_workers

    # -- the Executor API ---------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker and return its Future.

        The call is pickled here, in the caller's thread; if it cannot be pickled, the
        returned future holds a TaskSerializationError and nothing is sent.

        Raises:
            RuntimeError: after shutdown().
            BrokenZmqExecutor: the executor can no longer run tasks.
        """
        return self._submit(fn, args, kwargs)

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        priority: int = 0,
        resources: dict[str, float] | None = None,
    ) -> Future[T]:
        self._check_open()
        future: Future[T] = LazyFuture()
        task_id = next(self._task_ids)
        try:
            digest, fn_bytes = self._pickle_function(fn)
            payload, buffers = dump_args(args, kwargs)
        except (Exception, SystemExit) as e:  # a __reduce__ may even call sys.exit()
            future.set_exception(
                TaskSerializationError(
                    f"cannot pickle the call to {getattr(fn, '__qualname__', fn)!r}: "
                    f"{type(e).__name__}: {e}; pass picklable arguments (cloudpickle) or create "
                    "the object inside the task"
                )
            )
            future.exception().__cause__ = e  # type: ignore[union-attr]
            return future
        size = proto.frame_size(payload, buffers, extra=len(fn_bytes))
        if size > self._max_message_size:
            future.set_exception(
                TaskTooLargeError(
                    f"the call to {getattr(fn, '__qualname__', fn)!r} pickles to a frame of "
                    f"{size} bytes, over max_message_size={self._max_message_size}; nothing was "
                    "sent. Pass large data another way (a file, shared storage) or raise "
                    "max_message_size"
                )
            )
            return future
        item = WorkItem(future, task_id, digest, fn_bytes, payload, buffers)
        if priority or resources:
            item.priority, item.resources = priority, resources or None
        with self._shutdown_lock:
            self._check_open()
            self._dispatcher.core.pending.append(item)
        if self._dispatcher.idle:
            self._dispatcher.send_now()
        return future

    @property
    def _broken(self) -> str | None:
        """Why the executor cannot run tasks any more, or None."""
        return self._flags.broken

    def _check_open(self) -> None:
        flags = self._flags
        if flags.broken is not None:
            raise BrokenZmqExecutor(flags.broken)
        if flags.shutdown or _exiting:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _pickle_function(self, fn: Callable[..., Any]) -> tuple[bytes, bytes]:
        if not _cacheable(fn):
            return self._functions.pickle(fn)
        with self._functions_lock:
            cached = self._functions.lookup(fn)
        if cached is not None:
            return cached
        entry = self._functions.pickle(fn)
        with self._functions_lock:
            self._functions.store(fn, entry)
        return entry

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like ProcessPoolExecutor.map of Python 3.14, on every Python: results in order,
        lazily; ``chunksize`` items per task.

        Args:
            fn: called as ``fn(*args)`` for each tuple of items of ``iterables``.
            timeout: seconds, counted from this call, that the whole iteration may take.
            chunksize: items sent to a worker as one task.
            buffersize: None: every task is submitted now (the iterables are read to the
                end). Otherwise only this many tasks (chunks when ``chunksize > 1``) are
                submitted now, and one more each time a result is asked for, so an
                infinite iterator works.

        Returns:
            An iterator of the results; closing it (or dropping it) cancels the tasks
            that have not started. Until it is first read it holds the executor only by a
            weak reference: once the executor is gone, it yields the results already
            submitted and stops.

        Raises:
            ValueError: chunksize or buffersize is less than 1.
            TypeError: buffersize is not an int.
            TimeoutError: a result is not ready ``timeout`` seconds after the call.
        """
        return map_calls(self, fn, iterables, timeout, chunksize, buffersize)

    def options(
        self, *, resources: dict[str, float] | None = None, priority: int | None = None
    ) -> ExecutorView:
        """A view of this executor whose ``submit`` and ``map`` carry options, for any code
        that takes an Executor: ``ex.options(resources={"GPU": 1}).map(train, configs)``.

        Args:
            resources: what each task needs of its host while it runs, e.g. ``{"GPU": 1}``;
                it runs only where that much is free (``zmqexecutor-worker --resources``,
                or ``ZmqExecutor(resources=...)`` for local workers).
            priority: among queued tasks a higher priority is sent first (default 0);
                equal priorities keep their order.

        Raises:
            ValueError: resources is not a dict of names to non-negative numbers.
            TypeError: priority is not an int.
        """
        return ExecutorView(self, resources=resources, priority=priority)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; run what is queued (or cancel it), then stop the workers.

        Args:
            wait: block until every running task has finished and every local worker
                process has exited.
            cancel_futures: cancel the futures that have not been sent to a worker yet.
        """
        with self._shutdown_lock:
            self._flags.shutdown = True
            if cancel_futures:
                self._dispatcher.cancel_pending()
        self._dispatcher.request_shutdown()
        if wait:
            self._dispatcher.join()

    def terminate_workers(self) -> None:
        """Like Python 3.14's ProcessPoolExecutor.terminate_workers(): shut down without
        waiting, cancel what is queued, and end every worker process this executor started
        with SIGTERM, running tasks included (their futures fail with BrokenZmqExecutor).
        Remote worker hosts stay up: they end the processes that ran this executor's tasks
        and wait for the next executor. The executor accepts no new work."""
        self._force_shutdown(signal.SIGTERM)

    def kill_workers(self) -> None:
        """As terminate_workers(), with SIGKILL."""
        self._force_shutdown(signal.SIGKILL)

    def _force_shutdown(self, signum: int) -> None:
        self.shutdown(wait=False, cancel_futures=True)
        how = "terminate_workers()" if signum == signal.SIGTERM else "kill_workers()"
        self._dispatcher.end_workers(f"{how} ended the worker processes", signum)

    def stats(self) -> ExecutorStats:
        """A snapshot: every worker (host, pid, slots, in flight, done, failed, heartbeat age),
        tasks pending/running/done/failed, bytes sent and received, and bytes of remote
        tasks' output printed and dropped.
        ``print(executor.stats())`` shows it as a table."""
        return self._dispatcher.stats()

    def versions(
        self, packages: Iterable[str] = (), *, timeout: float = DEFAULT_VERSIONS_TIMEOUT
    ) -> Versions:
        """The versions each worker host runs, compared with this process's.

        Per host: Python (e.g. 3.11.7), zmqexecutor, cloudpickle, pyzmq and libzmq, which
        every host tells when it joins, plus the installed version of each package named
        in ``packages`` (read from its metadata, never imported; ``"not installed"`` when
        absent), which one idle worker process of each host looks up when asked. A worker
        process answers between tasks: a host whose every worker process runs a long task
        cannot answer in time and is reported so (its ``answered`` is False, its ``note``
        says why); this call never waits longer than ``timeout`` for it.
        ``print(executor.versions(["numpy"]))`` shows a table marking with ``*`` every
        version that differs from this process's.

        Args:
            packages: distribution names as pip knows them (``["numpy", "pandas"]``), at
                most 100.
            timeout: seconds to wait for the hosts to name the packages' versions.

        Returns:
            A Versions: ``.client``, ``.hosts`` (HostVersions, with ``.mismatches``) and
            ``.mismatched`` (the hosts with a version that differs).

        Raises:
            ValueError: ``packages`` is not a list of distribution names, or names too many.
            TimeoutError: the executor's dispatcher thread did not answer at all
                (``concurrent.futures.TimeoutError`` before Python 3.11).
        """
        names = check_package_names(packages)
        if timeout < 0:
            raise ValueError(f"timeout={timeout!r} must not be negative")
        client = {**proto.host_versions(), **package_versions(names)}
        request = VersionsRequest(names, timeout, client, deadline=time.monotonic() + timeout)
        return self._dispatcher.versions(request)

    def __repr__(self) -> str:
        ready, pending, sent = self._dispatcher.summary()
        state = "broken" if self._broken else "shut down" if self._flags.shutdown else "running"
        return (
            f"<ZmqExecutor {self._mode} {state}: {ready} worker(s) ready, "
            f"{pending} pending, {sent} sent>"
        )


class ExecutorView(Executor):
    """A ZmqExecutor seen through options (``executor.options(...)``): it shares the
    executor's workers and queue, and its ``submit`` and ``map`` carry the options.

    ``shutdown()`` closes the view only: it accepts no new task, ``cancel_futures`` cancels
    the tasks submitted through it that are still queued, and ``wait`` waits for the rest
    of them. The executor and its other views go on; shut the executor down itself.
    """

    def __init__(
        self,
        executor: ZmqExecutor,
        *,
        resources: dict[str, float] | None = None,
        priority: int | None = None,
    ) -> None:
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        self._executor = executor
        self._resources = check_resources(resources, "resources") if resources else None
        self._priority = priority or 0
        self._shutdown = False
        self._futures: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        options = f"resources={self._resources} priority={self._priority}"
        return f"<ExecutorView {options} of {self._executor!r}>"

    def options(
        self, *, resources: dict[str, float] | None = None, priority: int | None = None
    ) -> ExecutorView:
        """Another view of the same executor, with these options instead of this view's."""
        return ExecutorView(
            self._executor,
            resources=self._resources if resources is None else resources,
            priority=self._priority if priority is None else priority,
        )

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """As ZmqExecutor.submit, with this view's options.

        Raises:
            RuntimeError: after this view's or the executor's shutdown().
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown (of this view)")
        future = self._executor._submit(fn, args, kwargs, self._priority, self._resources)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """As ZmqExecutor.map, with this view's options."""
        return map_calls(self, fn, iterables, timeout, chunksize, buffersize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Close this view (see the class docstring); the executor goes on."""
        self._shutdown = True
        with self._lock:
            futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            concurrent.futures.wait(futures)


def _pickle_initializer(initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> bytes:
    """The WELCOME frame that carries the initializer (empty: none)."""
    if initializer is None:
        return b""
    data: bytes = cloudpickle.dumps((initializer, initargs), protocol=5)
    return data


def _cacheable(fn: Callable[..., Any]) -> bool:
    """May ``fn``'s pickle be reused for later calls? Yes for what cloudpickle sends by
    reference (importable functions) and for map()'s per-call partial; no for functions
    from ``__main__`` (a script, a notebook) or closures, which travel by value with the
    globals they use: a notebook that changes a global must see the change, as with
    ProcessPoolExecutor. (The workers' content-addressed cache still avoids resending.)"""
    if isinstance(fn, partial):
        return True
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "<locals>")
    return (
        module not in (None, "__main__") and "<locals>" not in qualname and qualname != "<lambda>"
    )
