"""The wire format: a fixed binary header, then kind-specific frames. Headers, TASKS and
RESULTS are built and parsed here, control messages' JSON bodies in ``_messages.py`` on top
of this; nothing here does I/O.

Every message is a list of frames whose first frame is the header::

    magic "ZMQX" | version u8 | kind u8 | flags u16 | session 8 bytes | count u32

Control messages (HELLO, WELCOME, READY, BYE, DIED, ATTACH, OUTPUT, ...) are the header
frame and one JSON frame (WELCOME has a third: the pickled initializer); their records, and
which pickles travel where and why that is safe, are in ``_messages.py``. TASKS and RESULTS
are one frame of header, packed index and blob (the small pickles side by side; one frame,
because every frame costs microseconds on the way), then one frame per out-of-band (pickle
protocol 5) buffer, so large arrays travel without a copy. The index's size follows from
the counts, and every length is checked against the frames before anything is sliced. A
TASKS index starts with the id of the worker process it is for, a RESULTS index with the id
of the one it is from.
"""

from __future__ import annotations

import enum
import json
import platform
import struct
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cloudpickle
import zmq

from ._defaults import OUTPUT_MAX_LINE, PROTOCOL_VERSION

_V = TypeVar("_V")

MAGIC = b"ZMQX"
HEADER = struct.Struct("<4sBBH8sI")
NO_SESSION = bytes(8)

# TASKS index: count of callables and tasks, then one record per callable and per task.
_TASKS_COUNTS = struct.Struct("<II")
_FN_RECORD = struct.Struct("<16sI")  # digest, length in blob
# task id, callable digest, payload length, buffers, length of the task's extra JSON (the
# resource units it holds; empty for almost every task)
_TASK_RECORD = struct.Struct("<q16sIHH")
_MAX_EXTRA = 2**16 - 1
# RESULTS index: one record per result.
_RESULT_RECORD = struct.Struct("<qBIHI")  # task id, status, payload length, buffers, run µs
_MAX_MICROS = 2**32 - 1
#: RESULTS index: the sending worker's id first; TASKS index: the receiving worker's id
#: first (a process that took over a dead one's port must not run what was meant for it)
SENDER = RECIPIENT = struct.Struct("<16s")
#: bytes a TASKS or RESULTS frame holds besides the pickles of its one task or result: a
#: pickle may be at most this much under the frame limit (ZMQ_MAXMSGSIZE)
RECORD_OVERHEAD = (
    HEADER.size + max(RECIPIENT.size + _TASKS_COUNTS.size + _FN_RECORD.size + _TASK_RECORD.size,
                      SENDER.size + _RESULT_RECORD.size)
)  # fmt: skip


class Kind(enum.IntEnum):
    # worker -> executor (the sink)
    HELLO = 1
    READY = 2
    INIT_FAILED = 3
    RESULTS = 4
    BYE = 5
    DIED = 6
    HEARTBEAT = 7
    VERSIONS = 8  #: a worker process's answer to ASK_VERSIONS
    OUTPUT = 9  #: a host's worker processes wrote to stdout/stderr (see output())
    # executor -> worker (an inbox) or worker host (its rendezvous socket)
    WELCOME = 16
    TASKS = 17
    DETACH = 18
    ATTACH = 19
    REFUSE = 20  #: registration refused (versions); kept stable across protocol versions
    ASK_VERSIONS = 21  #: which versions of these packages does your host have?


class Status(enum.IntEnum):
    OK = 0  #: payload is the pickled return value
    RAISED = 1  #: payload is the pickled (exception, traceback text)
    ERROR = 2  #: payload is JSON {"error": name, "message": ..., "traceback": ...}


# Enum(x) costs microseconds per call; these lookups are what the receive loops use.
_KINDS = {k.value: k for k in Kind}
_STATUSES = {s.value: s for s in Status}


class ProtocolError(ValueError):
    """A message that does not follow the wire format; it is dropped."""


class VersionMismatch(ProtocolError):
    """A well-formed header of another protocol version."""

    def __init__(self, version: int, kind: int) -> None:
        super().__init__(f"protocol version {version}, expected {PROTOCOL_VERSION}")
        self.version = version
        self.kind = kind


@dataclass(slots=True)
class TaskRecord:
    task_id: int
    digest: bytes
    payload: memoryview | bytes
    buffers: list[Any]
    #: the resource units the task holds on its host, e.g. {"GPU": [1]} (empty: none)
    resources: dict[str, list[int]] = field(default_factory=dict)


@dataclass(slots=True)
class ResultRecord:
    task_id: int
    status: Status
    payload: memoryview | bytes
    buffers: list[Any] = field(default_factory=list)
    #: how long the task ran on the worker, in seconds (the executor's scheduling estimate)
    duration: float = 0.0


def header(kind: Kind, session: bytes = NO_SESSION, count: int = 0) -> bytes:
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, 0, session, count)


def parse_header(frame: bytes | memoryview) -> tuple[Kind, bytes, int]:
    """Return (kind, session, count) of a header frame or raise ProtocolError."""
    if len(frame) < HEADER.size:
        raise ProtocolError(f"header of {len(frame)} bytes, expected {HEADER.size}")
    magic, version, kind, _flags, session, count = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise ProtocolError("bad magic")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(version, kind)
    known = _KINDS.get(kind)
    if known is None:
        raise ProtocolError(f"unknown message kind {kind}")
    return known, session, count


# -- control messages ----------------------------------------------------------------


def control(kind: Kind, body: dict[str, Any], session: bytes = NO_SESSION) -> list[bytes]:
    """The frames of a control message with this JSON body (``_messages`` makes the bodies)."""
    return [header(kind, session), json.dumps(body, separators=(",", ":")).encode()]


def parse_control(frames: Sequence[Any], n_frames: int = 2) -> dict[str, Any]:
    """The JSON body of a control message of exactly ``n_frames`` frames."""
    if len(frames) != n_frames:
        raise ProtocolError(f"control message with {len(frames)} frames, expected {n_frames}")
    if len(frames[0]) != HEADER.size:
        raise ProtocolError(f"control message header of {len(frames[0])} bytes")
    try:
        body = json.loads(bytes(frames[1]))
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, too deep, too many digits
        raise ProtocolError(f"control message body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError("control message body is not an object")
    return body


# -- output of remote tasks ---------------------------------------------------------

#: the streams of OUTPUT chunks, by file descriptor number
STDOUT, STDERR = 1, 2


@dataclass(slots=True)
class OutputChunk:
    """Whole lines (each ending in a newline) one worker process wrote to one stream."""

    pid: int
    stream: int  #: STDOUT or STDERR
    text: str


def cut_line(line: str) -> str:
    """``line`` (ending in a newline) cut to OUTPUT_MAX_LINE characters, marked as cut."""
    if len(line) <= OUTPUT_MAX_LINE + 1:
        return line
    return line[:OUTPUT_MAX_LINE] + " [cut]\n"


# -- tasks ---------------------------------------------------------------------------


def encode_tasks(
    session: bytes,
    functions: Sequence[tuple[bytes, bytes]],
    tasks: Sequence[tuple[Any, ...]],
    recipient: bytes,
) -> list[Any]:
    """Frames of one TASKS message.

    Args:
        recipient: the id of the worker process it is for (it drops TASKS for another).
        functions: (digest, pickled callable) for callables the worker has not seen yet.
        tasks: (task id, callable digest, pickled (args, kwargs), out-of-band buffers) and,
            optionally, the resource units the task holds ({"GPU": [1]}).
    """
    parts = [
        header(Kind.TASKS, session, len(tasks)),
        RECIPIENT.pack(recipient),
        _TASKS_COUNTS.pack(len(functions), len(tasks)),
    ]
    blob: list[bytes] = []
    buffers: list[Any] = []
    for digest, data in functions:
        parts.append(_FN_RECORD.pack(digest, len(data)))
        blob.append(data)
    for task_id, digest, payload, bufs, *more in tasks:
        extra = json.dumps(more[0], separators=(",", ":")).encode() if more and more[0] else b""
        if len(extra) > _MAX_EXTRA:
            raise ValueError(f"resource units of task {task_id} take {len(extra)} bytes")
        parts.append(_TASK_RECORD.pack(task_id, digest, len(payload), len(bufs), len(extra)))
        blob.append(payload)
        blob.append(extra)
        buffers.extend(bufs)
    parts.extend(blob)
    return [b"".join(parts), *buffers]


def _body(frames: Sequence[Any], what: str) -> memoryview:
    """The first frame after its header (which the caller has checked)."""
    if not frames:
        raise ProtocolError(f"{what} message without frames")
    return memoryview(frames[0])[HEADER.size :]


def decode_tasks(
    frames: Sequence[Any],
) -> tuple[bytes, dict[bytes, memoryview], list[TaskRecord]]:
    """Return (recipient, {digest: pickled callable}, [TaskRecord]) or raise ProtocolError."""
    body = _body(frames, "TASKS")
    try:
        (recipient,) = RECIPIENT.unpack_from(body, 0)
        n_fns, n_tasks = _TASKS_COUNTS.unpack_from(body, RECIPIENT.size)
    except struct.error:
        raise ProtocolError("TASKS index truncated") from None
    start = RECIPIENT.size + _TASKS_COUNTS.size
    index_size = start + n_fns * _FN_RECORD.size + n_tasks * _TASK_RECORD.size
    if len(body) < index_size:
        raise ProtocolError(f"TASKS frame of {len(body)} bytes, its index needs {index_size}")
    blob = body[index_size:]
    pos = start
    offset = 0
    functions: dict[bytes, memoryview] = {}
    for _ in range(n_fns):
        digest, length = _FN_RECORD.unpack_from(body, pos)
        pos += _FN_RECORD.size
        functions[digest] = blob[offset : offset + length]
        offset += length
    tasks: list[TaskRecord] = []
    frame_no = 1
    for _ in range(n_tasks):
        task_id, digest, length, n_bufs, n_extra = _TASK_RECORD.unpack_from(body, pos)
        pos += _TASK_RECORD.size
        record = TaskRecord(
            task_id,
            digest,
            blob[offset : offset + length],
            list(frames[frame_no : frame_no + n_bufs]),
        )
        offset += length
        if n_extra:
            record.resources = _parse_units(blob[offset : offset + n_extra])
            offset += n_extra
        tasks.append(record)
        frame_no += n_bufs
    if offset != len(blob) or frame_no != len(frames):
        raise ProtocolError("TASKS lengths do not match the frames")
    return recipient, functions, tasks


def _parse_units(data: memoryview) -> dict[str, list[int]]:
    """A task's resource units, checked: {name: [unit index, ...]}."""
    try:
        units = json.loads(bytes(data))
    except ValueError:
        raise ProtocolError("TASKS with a bad resource field") from None
    if not isinstance(units, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(type(i) is int for i in v)
        for k, v in units.items()
    ):
        raise ProtocolError("TASKS with a bad resource field")
    return units


# -- results -------------------------------------------------------------------------


def encode_results(session: bytes, sender: bytes, results: Sequence[ResultRecord]) -> list[Any]:
    parts = [header(Kind.RESULTS, session, len(results)), SENDER.pack(sender)]
    blob: list[Any] = []
    buffers: list[Any] = []
    for r in results:
        micros = min(_MAX_MICROS, int(r.duration * 1e6))
        parts.append(
            _RESULT_RECORD.pack(r.task_id, r.status, len(r.payload), len(r.buffers), micros)
        )
        blob.append(r.payload)
        buffers.extend(r.buffers)
    parts.extend(blob)
    return [b"".join(parts), *buffers]


def decode_results(frames: Sequence[Any]) -> tuple[bytes, list[ResultRecord]]:
    """Return (sender worker id, records) or raise ProtocolError."""
    body = _body(frames, "RESULTS")
    count = HEADER.unpack_from(frames[0])[-1]
    index_size = SENDER.size + count * _RESULT_RECORD.size
    if len(body) < index_size:
        raise ProtocolError(f"RESULTS frame of {len(body)} bytes, its index needs {index_size}")
    (sender,) = SENDER.unpack_from(body, 0)
    blob = body[index_size:]
    results = []
    offset = 0
    frame_no = 1
    for task_id, status, length, n_bufs, micros in _RESULT_RECORD.iter_unpack(
        body[SENDER.size : index_size]
    ):
        st = _STATUSES.get(status)
        if st is None:
            raise ProtocolError(f"unknown result status {status}")
        results.append(
            ResultRecord(
                task_id,
                st,
                blob[offset : offset + length],
                list(frames[frame_no : frame_no + n_bufs]),
                micros / 1e6,
            )
        )
        offset += length
        frame_no += n_bufs
    if offset != len(blob) or frame_no != len(frames):
        raise ProtocolError("RESULTS lengths do not match the frames")
    return sender, results


# -- shared by both sides: limits and estimates they must agree on ---------------------------

#: callables a worker process keeps; the executor tracks the same slots (FunctionSlots) so
#: that it sends each callable exactly when the worker lacks it
FN_SLOTS = 1024


class FunctionSlots(OrderedDict[bytes, _V]):
    """The callables a worker process holds, by digest, evicted oldest first beyond
    FN_SLOTS: the worker keeps the callables, the executor the same keys."""

    def add(self, digest: bytes, value: _V) -> None:
        self[digest] = value
        if len(self) > FN_SLOTS:
            self.popitem(last=False)


def frame_size(payload: bytes | memoryview, buffers: Sequence[Any], extra: int = 0) -> int:
    """The largest frame a task or result makes: its pickle with its record (and ``extra``
    bytes beside it, e.g. its callable), or its largest out-of-band buffer
    (ZMQ_MAXMSGSIZE bounds every frame)."""
    size = len(payload) + extra + RECORD_OVERHEAD
    return max(size, *(memoryview(b).nbytes for b in buffers)) if buffers else size


def under_limit(costs: Sequence[int], limit: int, first: int = 0) -> list[tuple[int, int]]:
    """Split items of these ``costs`` into runs [start, end) whose sum stays under ``limit``
    (the first run also carries ``first``); an item alone over the limit is a run of its
    own, for the receiver to refuse. Every message's first frame stays under the limit."""
    runs, start, size = [], 0, first
    for end, cost in enumerate(costs):
        if end > start and size + cost > limit:
            runs.append((start, end))
            start, size = end, 0
        size += cost
    runs.append((start, len(costs)))
    return runs


def learn_duration(durations: dict[bytes, float], digest: bytes, seconds: float) -> None:
    """Update the moving average of a callable's run time (by digest), keeping the
    FN_SLOTS most recent: how the executor sizes prefetch and a worker batches results."""
    old = durations.get(digest)
    durations[digest] = seconds if old is None else old + (seconds - old) / 8
    if len(durations) > FN_SLOTS:
        del durations[next(iter(durations))]


# -- the versions a HELLO tells (``_messages.Hello``; the executor refuses a mismatch) --------


def python_version() -> str:
    """The Python minor version; pickled code needs the same one on both sides."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def cloudpickle_major() -> str:
    return str(cloudpickle.__version__).split(".")[0]


def python_full_version() -> str:
    """The Python version with its patch level, e.g. 3.11.7."""
    return platform.python_version()


def zmqexecutor_version() -> str:
    from . import __version__  # at call time: the package has finished importing by then

    return __version__


def host_versions() -> dict[str, str]:
    """The versions a worker process tells in its HELLO (``_versions.BASE``)."""
    return {
        "python": python_full_version(),
        "zmqexecutor": zmqexecutor_version(),
        "cloudpickle": str(cloudpickle.__version__),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
    }
