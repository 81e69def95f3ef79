"""The executor's settings: what ``ZmqExecutor(...)`` decided once its arguments were
checked, handed to the dispatcher and its scheduling core as one frozen record (the mirror
of the worker side's ``_host_settings.py``).

::

    ZmqExecutor(...)  --local_workers(), check()-->  Settings  -->  Dispatcher, Scheduler
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ._defaults import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
)

__all__ = ["Settings", "check", "local_workers"]


@dataclass(frozen=True)
class Settings:
    """The executor's options that scheduling acts on."""

    prefetch: int | None = None
    max_tasks_per_child: int | None = None
    max_retries: int = 0
    task_timeout: float | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    no_worker_timeout: float | None = None
    local_workers: int = 0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE


def local_workers(max_workers: int | None, *, remote: bool) -> int:
    """``max_workers`` None: one local worker per core, none if the workers are remote."""
    if max_workers is None:
        return 0 if remote else (os.cpu_count() or 1)
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    return max_workers


def check(settings: Settings, initializer: Callable[..., object] | None) -> None:
    """The constructor's checks of its numbers (messages as ProcessPoolExecutor's where it
    has the argument)."""
    if settings.max_tasks_per_child is not None and settings.max_tasks_per_child < 1:
        raise ValueError("max_tasks_per_child must be >= 1")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    if settings.prefetch is not None and settings.prefetch < 0:
        raise ValueError("prefetch must be >= 0")
    if settings.max_message_size < 1024:
        raise ValueError("max_message_size must be at least 1024 bytes")
    if settings.max_retries < 0:
        raise ValueError("max_retries must be >= 0")
    if not 0 < settings.heartbeat_interval < settings.heartbeat_timeout:
        raise ValueError("need 0 < heartbeat_interval < heartbeat_timeout")
    for name in ("task_timeout", "no_worker_timeout"):
        value = getattr(settings, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be > 0 (or None)")
