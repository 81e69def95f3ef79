"""zmqexecutor: a concurrent.futures.Executor whose workers run on many machines, over ZeroMQ."""

from ._stats import ExecutorStats, WorkerStats
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
from .executor import ZmqExecutor
from .worker import run_worker

__version__ = "0.1.0"

__all__ = [
    "BrokenZmqExecutor",
    "ConfigurationError",
    "ExecutorStats",
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
    "run_worker",
]
