"""ZmqExecutor: argument checks, submit/map/shutdown and the executor's state flags.

It never touches a socket: the dispatcher thread (``_dispatcher.py``) owns them all.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor, Future
from functools import partial
from types import ModuleType
from typing import Any, TypeVar

import zmq

from . import _protocol as proto
from ._defaults import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_VERSIONS_TIMEOUT,
    MAX_SOCKETS,
)
from ._dispatcher import Dispatcher, VersionsRequest, pickle_initializer
from ._future import LazyFuture
from ._net import (
    bound_endpoint,
    concrete,
    guard_listener,
    parse_endpoint,
    route_to,
    set_heartbeats,
)
from ._resources import check_resources
from ._scheduler import Settings, WorkItem
from ._security import Security, check_exposure, resolve_token
from ._serialize import FunctionCache, dump_args, ship_by_value
from ._stats import ExecutorStats
from ._supervisor import Supervisor
from ._versions import Versions, check_package_names, package_versions
from .errors import (
    BrokenZmqExecutor,
    ConfigurationError,
    TaskSerializationError,
    TaskTooLargeError,
)

log = logging.getLogger("zmqexecutor.executor")

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
            milliseconds of queued work, so that small tasks are batched and no task waits
            behind a long one; 0 disables prefetching.
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
        worker_list = list(workers or ())
        local_resources = check_resources(resources or {}, "resources")
        if max_workers is None:
            max_workers = 0 if (listen or worker_list) else (os.cpu_count() or 1)
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ValueError("max_tasks_per_child must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if prefetch is not None and prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        if max_message_size < 1024:
            raise ValueError("max_message_size must be at least 1024 bytes")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not 0 < heartbeat_interval < heartbeat_timeout:
            raise ValueError("need 0 < heartbeat_interval < heartbeat_timeout")
        for name, value in (
            ("task_timeout", task_timeout),
            ("no_worker_timeout", no_worker_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (or None)")
        ship_by_value(ship_modules)  # before anything is pickled (the initializer below)
        settings = Settings(
            prefetch=prefetch,
            max_tasks_per_child=max_tasks_per_child,
            max_retries=max_retries,
            task_timeout=task_timeout,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            no_worker_timeout=no_worker_timeout,
            local_workers=max_workers or 0,
            max_message_size=max_message_size,
        )
        # Local mode is ipc:// only and needs no token; any TCP endpoint does (or insecure).
        remote = bool(listen or worker_list)
        resolved = resolve_token(token, token_file) if remote else None
        security = Security(resolved)
        if listen is not None:
            check_exposure(
                listen, secure=security.enabled, insecure=insecure, role="listen endpoint"
            )
        for endpoint in worker_list:
            check_exposure(
                endpoint, secure=security.enabled, insecure=insecure, role="worker endpoint"
            )

        self._max_message_size = max_message_size
        self._mode = "listen" if listen else "workers" if worker_list else "local"
        self._max_workers = max_workers  # resolved: 0 for remote workers only
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self._task_ids = itertools.count(1)
        self._functions = FunctionCache()
        self._functions_lock = threading.Lock()

        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # one PUSH per worker process: libzmq's default of 1,023 sockets would cap the workers
        self._context.max_sockets = MAX_SOCKETS
        security.start(self._context)
        self._dir = tempfile.mkdtemp(prefix="zmqexecutor-")  # 0700: local sockets are private
        sink = self._context.socket(zmq.PULL)
        sink.linger = 0
        sink.maxmsgsize = max_message_size
        guard_listener(sink, network=bool(listen or worker_list))
        set_heartbeats(sink, heartbeat_interval, heartbeat_timeout)
        security.server(sink)
        attach: list[zmq.Socket[bytes]] = []
        try:
            local_sink = f"ipc://{self._dir}/sink"
            if max_workers:
                sink.bind(local_sink)
            sink_address = local_sink
            if listen:
                # with workers= too, listen= fixes the sink's port (for a firewall); a
                # wildcard host is then told to them as the address that routes to them
                sink.bind(listen)
                peer = parse_endpoint(worker_list[0]).host if worker_list else ""
                sink_address = concrete(bound_endpoint(sink), peer or None)
            elif worker_list:
                sink_address = self._bind_for(sink, worker_list)
            for endpoint in worker_list:
                sock = self._context.socket(zmq.PUSH)
                sock.linger = 0
                sock.sndhwm = 10  # ATTACH is repeated until the host answers
                set_heartbeats(sock, heartbeat_interval, heartbeat_timeout)
                security.client(sock)
                sock.connect(endpoint)
                attach.append(sock)
        except (zmq.ZMQError, OSError, ValueError) as e:
            for sock in [sink, *attach]:
                sock.close(linger=0)
            security.stop()
            self._context.term()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise ConfigurationError(f"cannot set up the executor's sockets: {e}") from e

        supervisor = None
        if max_workers:
            supervisor = Supervisor(
                processes=max_workers,
                sink=local_sink,
                local_dir=self._dir,
                respawn_init_failed=False,
                sys_path=list(sys.path),
                log_level=logging.getLevelName(
                    logging.getLogger("zmqexecutor").getEffectiveLevel()
                ),
                heartbeat_interval=heartbeat_interval,
                heartbeat_timeout=heartbeat_timeout,
                token=resolved,
                context=self._context,
                in_executor=True,
                resources=local_resources,
            )
        self._address = sink_address
        self._supervisor = supervisor
        self._supervisor_thread = (
            threading.Thread(target=supervisor.serve, name="zmqexecutor-supervisor", daemon=True)
            if supervisor
            else None
        )
        self._dispatcher = Dispatcher(
            self,
            context=self._context,
            sink=sink,
            attach=attach,
            sink_address=sink_address,
            settings=settings,
            security=security,
            initializer=pickle_initializer(initializer, initargs),
            task_ids=self._task_ids,
            before_detach=partial(_stop_supervisor, supervisor),
            local_host=supervisor.host_id if supervisor else None,
            forward_output=forward_output,
            on_exit=partial(
                _release, self._context, security, self._supervisor_thread, self._dir, self._mode
            ),
        )
        if self._supervisor_thread is not None:
            self._supervisor_thread.start()
        self._dispatcher.start()
        _live_dispatchers.add(self._dispatcher)

    def _bind_for(self, sink: zmq.Socket[bytes], endpoints: list[str]) -> str:
        """Bind the sink where the given worker hosts can reach it; return its address."""
        routes = {route_to(parse_endpoint(e).host) for e in endpoints}
        host = routes.pop() if len(routes) == 1 else "*"
        sink.bind(f"tcp://{host}:*")
        bound = bound_endpoint(sink)
        return concrete(bound, parse_endpoint(endpoints[0]).host)

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
        return self._dispatcher.core.broken

    def _check_open(self) -> None:
        if self._broken is not None:
            raise BrokenZmqExecutor(self._broken)
        if self._shutdown_thread or _exiting:
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
        return _map(self, fn, iterables, timeout, chunksize, buffersize)

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
            self._shutdown_thread = True
            if cancel_futures:
                self._dispatcher.core.cancel_queued()
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
        self._dispatcher.request_break(f"{how} ended the worker processes")
        if self._supervisor is not None:
            self._supervisor.end_children(signum)

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
        core = self._dispatcher.core
        state = "broken" if self._broken else "shut down" if self._shutdown_thread else "running"
        # read without the dispatcher's help: sizes only, each an atomic read
        return (
            f"<ZmqExecutor {self._mode} {state}: {core.ready_count()} worker(s) ready, "
            f"{len(core.pending)} pending, {len(core.owner)} sent>"
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
        return _map(self, fn, iterables, timeout, chunksize, buffersize)

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


def _stop_supervisor(supervisor: Supervisor | None) -> None:
    # SIGTERM reaches the worker processes still registering too; registered ones are
    # idle by now (every task has been answered) and also get DETACH.
    if supervisor is not None:
        supervisor.stop(terminate_children=True)


def _release(
    context: zmq.Context[zmq.Socket[bytes]],
    security: Security,
    supervisor_thread: threading.Thread | None,
    directory: str,
    mode: str,
) -> None:
    """Runs on the dispatcher thread once it has sent DETACH to every worker."""
    if supervisor_thread is not None and supervisor_thread.is_alive():
        supervisor_thread.join()
    security.stop()
    context.term()
    shutil.rmtree(directory, ignore_errors=True)
    log.debug("%s executor released its resources", mode)


def _process_chunk(fn: Callable[..., T], chunk: list[Any]) -> list[T]:
    """Runs on the worker: one task for ``chunksize`` items of map() over one iterable."""
    return list(map(fn, chunk))


def _process_star_chunk(fn: Callable[..., T], chunk: list[tuple[Any, ...]]) -> list[T]:
    """Runs on the worker: one task for ``chunksize`` items of map() over several iterables."""
    return list(itertools.starmap(fn, chunk))


def _map(
    executor: Executor,
    fn: Callable[..., T],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
) -> Iterator[T]:
    """ZmqExecutor.map, for an executor or a view of one (their submit() is all it uses)."""
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    # the checks and messages of Python 3.14's Executor.map
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")
    if chunksize == 1:
        return _map_results(executor, fn, zip(*iterables, strict=False), timeout, buffersize)
    if len(iterables) == 1:  # chunks of plain values pickle fast (see dump_args)
        process, it = _process_chunk, iter(iterables[0])
    else:
        process, it = _process_star_chunk, zip(*iterables, strict=False)
    chunks = iter(lambda: list(itertools.islice(it, chunksize)), [])
    return _chain(
        _map_results(executor, partial(process, fn), zip(chunks, strict=False), timeout, buffersize)
    )


def _map_results(
    executor: Executor,
    fn: Callable[..., T],
    calls: Iterator[tuple[Any, ...]],
    timeout: float | None,
    buffersize: int | None,
) -> Generator[T, None, None]:
    """Submit map()'s first tasks now (all of them when ``buffersize`` is None) and return
    the generator of their results, as Python 3.14's ``Executor.map`` does."""
    deadline = None if timeout is None else time.monotonic() + timeout
    first = calls if buffersize is None else itertools.islice(calls, buffersize)
    futures = collections.deque(executor.submit(fn, *args) for args in first)
    # weak, so that an iterator nobody reads does not keep the executor (and its workers)
    return _results(weakref.ref(executor), fn, calls, futures, deadline, buffersize is not None)


def _results(
    executor_ref: weakref.ref[Executor],
    fn: Callable[..., T],
    calls: Iterator[tuple[Any, ...]],
    futures: collections.deque[Future[T]],
    deadline: float | None,
    refill: bool,
) -> Generator[T, None, None]:
    futures.reverse()  # the oldest on the right, where pop() takes it; new ones join left
    try:
        while futures:
            # One more task per result asked for, submitted before waiting (as in 3.14: up
            # to buffersize + 1 are outstanding during a next(), CPython gh-131466). Once
            # the executor is gone, only what was submitted is yielded. As in 3.14, the
            # `executor` local keeps it alive while this generator is suspended.
            if refill and (executor := executor_ref()) is not None:
                args = next(calls, None)
                if args is not None:
                    futures.appendleft(executor.submit(fn, *args))
            # popped straight into the call: no reference to a yielded result stays here
            yield _result_or_cancel(
                futures.pop(), None if deadline is None else deadline - time.monotonic()
            )
    finally:  # close(), garbage collection, a timeout or an error: cancel what is left
        for future in futures:
            future.cancel()


def _result_or_cancel(future: Future[T], timeout: float | None) -> T:
    try:
        return future.result(timeout)
    finally:
        future.cancel()  # after a timeout: the task need not run any more
        del future  # break the cycle through a raised exception's traceback


def _chain(results: Generator[list[T], None, None]) -> Generator[T, None, None]:
    """The items of map()'s chunk results. Keeps at most one chunk of results alive (the
    results generator drops each chunk as it is yielded); closing it closes ``results``
    at once, which cancels the chunks not started."""
    try:
        yield from itertools.chain.from_iterable(results)
    finally:
        results.close()
