"""Output of remote tasks: a host reads its worker processes' stdout and stderr from pipes,
echoes them and forwards them at a bounded rate; the executor prints them, each line
prefixed with its origin, from a thread that a blocked terminal stalls alone.

::

    worker process fd 1/2 --pipe--> supervisor (OutputCapture) --OUTPUT--> executor sink
                                       |                                      |
                                       v echo (Printer)                       v Printer
                                    host's own stdout/stderr      sys.stdout / sys.stderr
                                                                  "(hostA pid=123) line"

Capture happens in the supervisor, not in the worker process: a pipe keeps what a process
wrote before it crashed (segfault, ``os._exit``), and the supervisor reads it to the end.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from . import _protocol as proto
from ._defaults import OUTPUT_BATCH, OUTPUT_BURST, OUTPUT_MAX_LINE, OUTPUT_QUEUE, OUTPUT_RATE

#: most bytes read from one pipe per loop of the supervisor (its heartbeats come first)
_READ_LIMIT = 256 * 1024
_CUT = b" [cut]\n"


class TokenBucket:
    """At most ``rate`` bytes per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def available(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens


@dataclass(eq=False)
class _Pipe:
    """The read end of one worker process's stdout or stderr."""

    file: IO[bytes]
    pid: int
    stream: int
    partial: bytes = b""  #: the start of a line not yet ended
    skipping: bool = False  #: the current line was too long: drop the rest of it

    def lines(self, data: bytes) -> tuple[bytes, int]:
        """The whole lines that ``data`` completes, and how many bytes were cut from
        lines longer than OUTPUT_MAX_LINE."""
        if self.partial:
            data = self.partial + data
        end = data.rfind(b"\n") + 1
        whole, rest, cut = data[:end], data[end:], 0
        if self.skipping and end:
            first = whole.find(b"\n") + 1
            cut, whole, self.skipping = first, whole[first:], False
        if len(whole) > OUTPUT_MAX_LINE:  # only then may one of its lines be too long
            parts = whole[:-1].split(b"\n")
            if max(map(len, parts)) > OUTPUT_MAX_LINE:
                cut += sum(max(0, len(p) - OUTPUT_MAX_LINE) for p in parts)
                whole = b"".join(
                    p + b"\n" if len(p) <= OUTPUT_MAX_LINE else p[:OUTPUT_MAX_LINE] + _CUT
                    for p in parts
                )
        if self.skipping:
            cut, rest = cut + len(rest), b""
        elif len(rest) > OUTPUT_MAX_LINE:  # a line that does not end: send its start
            whole += rest[:OUTPUT_MAX_LINE] + _CUT
            cut += len(rest) - OUTPUT_MAX_LINE
            rest, self.skipping = b"", True
        self.partial = rest
        return whole, cut


@dataclass(eq=False)
class OutputCapture:
    """A host's side: the pipes of its worker processes, the lines waiting to be sent to
    the executor (at most OUTPUT_RATE bytes per second, OUTPUT_BURST at once) and the
    count of those dropped.

    Runs on the supervisor's thread; only the echo writes from its own thread.
    """

    host: str
    now: float
    echo: Printer | None
    pipes: dict[int, _Pipe] = field(default_factory=dict)
    #: (pid, stream, whole lines) to send
    chunks: list[tuple[int, int, bytes]] = field(default_factory=list)
    size: int = 0
    dropped: int = 0
    bucket: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(OUTPUT_RATE, OUTPUT_BURST, self.now)

    def add(self, pid: int, stdout: IO[bytes], stderr: IO[bytes]) -> list[int]:
        """Watch a new worker process's pipes; returns their fds, to poll for reading."""
        fds = []
        for file, stream in ((stdout, proto.STDOUT), (stderr, proto.STDERR)):
            os.set_blocking(file.fileno(), False)
            self.pipes[file.fileno()] = _Pipe(file, pid, stream)
            fds.append(file.fileno())
        return fds

    def read(self, fd: int, now: float, forward: bool) -> bool:
        """Read what the pipe ``fd`` holds (up to a limit); False once it is closed (the
        process exited, and so did every child it gave the pipe to)."""
        pipe = self.pipes[fd]
        data, eof = [], False
        total = 0
        while total < _READ_LIMIT:
            try:
                block = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                block = b""
            if not block:
                eof = True
                break
            data.append(block)
            total += len(block)
        if eof and pipe.partial:
            data.append(b"\n")  # the last line of a process that exited without a newline
        if data:
            whole, cut = pipe.lines(b"".join(data))
            self._take(pipe, whole, cut, now, forward)
        if eof:
            del self.pipes[fd]
            pipe.file.close()
        return not eof

    def _take(self, pipe: _Pipe, whole: bytes, cut: int, now: float, forward: bool) -> None:
        if not whole:
            self.dropped += cut if forward else 0
            return
        if self.echo is not None:
            self.echo.put(pipe.stream, whole, len(whole))
        if not forward:
            return
        self.dropped += cut
        room = int(self.bucket.available(now))
        if len(whole) > room:  # send the lines that fit, drop the rest
            end = whole.rfind(b"\n", 0, room) + 1
            self.dropped += len(whole) - end
            whole = whole[:end]
        if whole:
            self.bucket.tokens -= len(whole)
            self.chunks.append((pipe.pid, pipe.stream, whole))
            self.size += len(whole)

    def full(self) -> bool:
        return self.size >= OUTPUT_BATCH

    def take(self) -> tuple[list[tuple[int, int, bytes]], int]:
        """The chunks to send and the bytes dropped since the last call."""
        chunks, dropped = self.chunks, self.dropped
        self.chunks, self.size, self.dropped = [], 0, 0
        return chunks, dropped

    def close(self) -> None:
        for pipe in self.pipes.values():
            pipe.file.close()
        self.pipes.clear()
        if self.echo is not None:
            self.echo.close()


class Printer(threading.Thread):
    """Writes what it is given from its own (daemon) thread, so that a blocked destination
    (a full pipe, a terminal stopped with Ctrl-S) stalls only this thread. At most
    ``limit`` bytes wait; beyond, ``put`` refuses and counts them in ``dropped``."""

    def __init__(
        self, write: Callable[[int, list[Any]], None], name: str, limit: int = OUTPUT_QUEUE
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._write = write
        self._limit = limit
        self._queue: deque[tuple[int, Any, int]] = deque()
        self._queued = 0  #: bytes queued or being written
        self._cond = threading.Condition()
        self._closing = False
        self.written = 0  #: bytes written (read by other threads: one int, no lock needed)
        self.dropped = 0  #: bytes refused (queue full) or lost (the write failed)

    def put(self, stream: int, item: Any, size: int) -> bool:
        with self._cond:
            if self._queued + size > self._limit or self._closing:
                self.dropped += size
                return False
            self._queue.append((stream, item, size))
            self._queued += size
            self._cond.notify()
        return True

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
            size = sum(s for _, _, s in batch)
            # one write per run of the same stream keeps their relative order
            start = 0
            try:
                for i in range(1, len(batch) + 1):
                    if i == len(batch) or batch[i][0] != batch[start][0]:
                        self._write(batch[start][0], [item for _, item, _ in batch[start:i]])
                        start = i
                self.written += size
            except Exception:  # a closed or broken destination: nothing else to do
                self.dropped += size
            with self._cond:
                self._queued -= size

    def close(self, timeout: float = 1.0) -> None:
        """Write what is queued (waiting up to ``timeout`` s for it), then end the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self.is_alive():
            self.join(timeout)


def echo_to(fds: tuple[int, int]) -> Callable[[int, list[bytes]], None]:
    """A Printer's write function: bytes to the file descriptors of stdout and stderr."""

    def write(stream: int, items: list[bytes]) -> None:
        data = memoryview(b"".join(items))
        fd = fds[0] if stream == proto.STDOUT else fds[1]
        while data:
            data = data[os.write(fd, data) :]

    return write


def print_lines(stream: int, items: list[str]) -> None:
    """The executor's Printer's write function: to this process's ``sys.stdout`` or
    ``sys.stderr`` as they are now (a test or a program may have replaced them)."""
    target = sys.stdout if stream == proto.STDOUT else sys.stderr
    if target is None:  # pythonw, or closed on purpose
        return
    target.write("".join(items))
    with contextlib.suppress(Exception):
        target.flush()


def prefixed(host: str, chunk: proto.OutputChunk) -> str:
    """The lines of ``chunk``, each prefixed with its origin as Ray does: ``(host pid=N) ``."""
    prefix = f"({host} pid={chunk.pid}) "
    return prefix + chunk.text[:-1].replace("\n", "\n" + prefix) + "\n"
