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


#: the names imported on first use, and the module of each
_LAZY = {
    "ZmqExecutor": ".executor",
    "ExecutorView": ".executor",
    "ExecutorStats": "._stats",
    "HostStats": "._stats",
    "WorkerStats": "._stats",
    "run_worker": ".worker",
}


def __getattr__(name: str) -> Any:
    """The executor's and the worker host's entry points, imported on first use (and kept
    here, so that later reads do not come back to this function)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # here: a worker process never needs it

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
