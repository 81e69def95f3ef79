"""Every exception a user of zmqexecutor can catch."""

from __future__ import annotations

from concurrent.futures import BrokenExecutor

__all__ = [
    "BrokenZmqExecutor",
    "ConfigurationError",
    "NoWorkersError",
    "RemoteError",
    "RemoteTraceback",
    "ResultSerializationError",
    "ResultTooLargeError",
    "TaskDeserializationError",
    "TaskSerializationError",
    "TaskTimeoutError",
    "TaskTooLargeError",
    "WorkerLostError",
    "ZmqExecutorError",
]


class ZmqExecutorError(Exception):
    """Base class of every zmqexecutor error."""


class ConfigurationError(ZmqExecutorError, ValueError):
    """The executor or worker was configured in a way that cannot work or is unsafe."""


class BrokenZmqExecutor(ZmqExecutorError, BrokenExecutor):
    """The executor itself is unusable (e.g. no local worker could start its initializer)."""


class NoWorkersError(BrokenZmqExecutor):
    """No worker was available to run the task."""


class WorkerLostError(ZmqExecutorError):
    """The worker process running this task died or was lost; only this task failed.

    Deliberately not a BrokenExecutor: the executor and the other workers keep serving.
    The task may have partly run.
    """


class TaskTooLargeError(ZmqExecutorError):
    """The pickled call is larger than ``max_message_size``; nothing was sent."""


class ResultTooLargeError(ZmqExecutorError):
    """The task ran, but its pickled result is larger than ``max_message_size``."""


class TaskTimeoutError(ZmqExecutorError):
    """The task ran longer than ``task_timeout``; its worker process was killed and replaced."""


class TaskSerializationError(ZmqExecutorError):
    """The callable or its arguments could not be pickled; nothing was sent."""


class TaskDeserializationError(ZmqExecutorError):
    """The worker could not unpickle the callable or its arguments; the task did not run."""


class ResultSerializationError(ZmqExecutorError):
    """The task ran, but the worker could not pickle its result (or the executor could not
    unpickle it)."""


class RemoteError(ZmqExecutorError):
    """The task raised an exception that could not be sent back as itself.

    Carries the original type name, message and remote traceback text.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text


class RemoteTraceback(Exception):
    """Holds the formatted traceback of a task that raised on a worker (set as ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
