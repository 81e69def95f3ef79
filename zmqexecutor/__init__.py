"""zmqexecutor: a concurrent.futures.Executor whose workers run on many machines, over ZeroMQ."""

from ._resources import current_resources
from ._stats import ExecutorStats, HostStats, WorkerStats
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
