"""The status file of one worker process: written by it, read by its supervisor.

A worker process writes the id of the task it starts and finishes, its state and its
session into a small shared file (mmap). When the process dies, its supervisor reads the file
and tells the executor exactly which task was running, so that only that task fails and the
tasks it had merely received run elsewhere.
"""

from __future__ import annotations

import enum
import mmap
import struct
from dataclasses import dataclass

#: started task id, finished task id, state, session, task timeout, and (written by the
#: supervisor) whether a SIGTERM means "end now" rather than "drain"
_STATUS = struct.Struct("<qqq8sdq")
_END_NOW = struct.Struct("<q")
_END_NOW_OFFSET = _STATUS.size - _END_NOW.size


class State(enum.IntEnum):
    """Where a worker process is in its life (not a message kind)."""

    STARTING = 0
    READY = 1
    CLEAN_EXIT = 2
    INIT_FAILED = 3
    REFUSED = 4


def create(path: str, session: bytes) -> None:
    """Write a fresh status file for a worker process about to start."""
    with open(path, "wb") as f:
        f.write(_STATUS.pack(0, 0, State.STARTING, session, 0.0, 0))


def request_end_now(path: str) -> None:
    """Tell a worker process that its next SIGTERM ends it at once (terminate_workers()),
    instead of letting its running task finish."""
    with open(path, "r+b") as f:
        f.seek(_END_NOW_OFFSET)
        f.write(_END_NOW.pack(1))


class StatusFile:
    """The shared status file of one worker process (written by it, read by its supervisor)."""

    def __init__(self, path: str) -> None:
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), _STATUS.size)

    def started(self, task_id: int) -> None:
        struct.pack_into("<q", self._map, 0, task_id)

    def finished(self, task_id: int) -> None:
        struct.pack_into("<q", self._map, 8, task_id)

    def state(self, state: State) -> None:
        struct.pack_into("<q", self._map, 16, state)

    def session(self, session: bytes) -> None:
        struct.pack_into("<8s", self._map, 24, session)

    def task_timeout(self, seconds: float) -> None:
        struct.pack_into("<d", self._map, 32, seconds)

    def end_now(self) -> bool:
        """Did the supervisor ask that SIGTERM end this process at once?"""
        return bool(_END_NOW.unpack_from(self._map, _END_NOW_OFFSET)[0])


@dataclass(frozen=True)
class StatusReading:
    started: int
    finished: int
    state: State
    session: bytes
    task_timeout: float

    @property
    def running(self) -> int:
        """The task id running now, or 0."""
        return self.started if self.started != self.finished else 0


def read_status(path: str) -> StatusReading:
    with open(path, "rb") as f:
        started, finished, state, session, timeout, _ = _STATUS.unpack(f.read(_STATUS.size))
        return StatusReading(started, finished, State(state), session, timeout)
