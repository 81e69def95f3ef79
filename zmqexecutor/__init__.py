"""zmqexecutor: a concurrent.futures.Executor whose workers run on many machines, over ZeroMQ.

``ZmqExecutor``, ``ExecutorView``, ``run_worker`` and the stats classes are imported when
first used (PEP 562): every worker process imports this package, and the executor's side of
it (dispatcher, scheduler, supervisor) would double a worker's start-up time for nothing.
"""

from typing import TYPE_CHECKING, Any

from ._resources import current_resources
from ._versions import HostVersions, Versions
from .errors import (
    BrokenZmqExecutor,
    ConfigurationError,
    NoWorkersError,
    RemoteError,
    RemoteTraceback,
    ResultSerializationError,
    ResultTooLargeError,
    TaskDeserializationError,
    TaskSerializationError,
    TaskTimeoutError,
    TaskTooLargeError,
    WorkerLostError,
    ZmqExecutorError,
)

if TYPE_CHECKING:
    from ._stats import ExecutorStats, HostStats, WorkerStats
    from .executor import ExecutorView, ZmqExecutor
    from .worker import run_worker

__version__ = "0.1.0"

__all__ = [
    "BrokenZmqExecutor",
    "ConfigurationError",
    "ExecutorStats",
    "ExecutorView",
    "HostStats",
    "HostVersions",
    "NoWorkersError",
    "RemoteError",
    "RemoteTraceback",
    "ResultSerializationError",
    "ResultTooLargeError",
    "TaskDeserializationError",
    "TaskSerializationError",
    "TaskTimeoutError",
    "TaskTooLargeError",
    "Versions",
    "WorkerLostError",
    "WorkerStats",
    "ZmqExecutor",
    "ZmqExecutorError",
    "__version__",
    "current_resources",
    "run_worker",
]


def __getattr__(name: str) -> Any:
    """The executor's and the worker host's entry points, imported on first use."""
    if name in ("ZmqExecutor", "ExecutorView"):
        from . import executor

        return getattr(executor, name)
    if name in ("ExecutorStats", "HostStats", "WorkerStats"):
        from . import _stats

        return getattr(_stats, name)
    if name == "run_worker":
        from .worker import run_worker

        return run_worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
