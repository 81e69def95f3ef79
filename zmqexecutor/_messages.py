"""The control messages: one frozen record per kind, with its encoding and every check its
fields get on the way in. Both sides build and read control messages only here.

A control message is the header frame (``_protocol.header``) and one frame of JSON, an
object with one member per field of its record; WELCOME has a third frame. Who sends
what, and with which session in the header (the executor's, unless it says otherwise)::

    worker process -> executor (sink)   HELLO (none), READY, INIT_FAILED, BYE, VERSIONS
    worker host    -> executor (sink)   HEARTBEAT (none), DIED (the process's session),
                                        OUTPUT (the session its processes serve, or none)
    executor -> worker process (inbox)  WELCOME, ASK_VERSIONS, DETACH; REFUSE (none: it is
                                        understood across protocol versions)
    executor -> worker host (rendezvous) ATTACH, DETACH

``Message.decode`` checks every field (type, range, length) and raises ProtocolError naming
the message and the field; the constructors check nothing, so that sending costs nothing
and a test builds a bad message from a good one with ``dataclasses.replace``. Each field's
``Check`` (in its metadata) also lists values it refuses, from which the tests build their
malformed messages. A new field is one line: ``name: type = wire(Check(...), default=...)``
(a default lets a peer that does not send it yet still be understood).

Nothing in a JSON body is ever unpickled. Pickles travel only in binary frames: TASKS
(callables and arguments) and WELCOME's third frame (the initializer, pickled by the
executor for every worker process it welcomes) go executor -> worker process; RESULTS
(return values) go worker process -> executor. That is safe for the reason every task is:
only an authenticated peer gets a message through (CurveZMQ with keys derived from the
token, or ipc:// in a private directory; see the README, Security), and that peer is
trusted. The JSON bodies come from the same peers, but are checked all the same, so that a
bug or a version skew on the other side is a dropped message, never a crashed loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from . import _protocol as proto
from ._defaults import OUTPUT_MAX_LINE
from ._net import parse_endpoint
from ._protocol import Kind, OutputChunk, ProtocolError
from ._resources import check_resources
from ._versions import BASE, check_package_names, clean_version

__all__ = [
    "ABOUT_A_WORKER",
    "ABSENT",
    "BY_KIND",
    "AboutWorker",
    "AskVersions",
    "Attach",
    "Bye",
    "Check",
    "Detach",
    "Died",
    "Heartbeat",
    "Hello",
    "InitFailed",
    "Message",
    "Output",
    "Ready",
    "Refuse",
    "VersionsReply",
    "Welcome",
    "check_of",
    "wire",
]

_M = TypeVar("_M", bound="Message")

_INT64 = 2**63 - 1


# -- what a field may hold ---------------------------------------------------------------


class Check:
    """How one field travels: ``load`` checks (and may convert) what arrived and raises
    ValueError saying why it is refused; ``dump`` makes the value JSON."""

    def load(self, raw: Any) -> Any:
        return raw

    def dump(self, value: Any) -> Any:
        return value

    def invalid(self) -> list[Any]:
        """Values ``load`` refuses: the tests send each one."""
        return []


class Text(Check):
    def __init__(self, max_len: int | None = 255, exact: int | None = None) -> None:
        self.max_len, self.exact = max_len, exact

    def load(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, not {type(raw).__name__}")
        if self.exact is not None and len(raw) != self.exact:
            raise ValueError(f"expected {self.exact} characters, not {len(raw)}")
        if self.max_len is not None and len(raw) > self.max_len:
            raise ValueError(f"longer than {self.max_len} characters")
        return raw

    def invalid(self) -> list[Any]:
        bad: list[Any] = [7, None, ["x"]]
        if self.exact is not None:
            bad += ["x" * (self.exact - 1), "x" * (self.exact + 1)]
        elif self.max_len is not None:
            bad.append("x" * (self.max_len + 1))
        return bad


class Address(Text):
    """A ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH, inproc://NAME)."""

    def __init__(self) -> None:
        super().__init__(max_len=1024)

    def load(self, raw: Any) -> str:
        value = super().load(raw)
        parse_endpoint(value)
        return value

    def invalid(self) -> list[Any]:
        return [*super().invalid(), "", "nowhere", "tcp://no-port"]


class Int(Check):
    def __init__(self, lo: int = 0, hi: int = _INT64) -> None:
        self.lo, self.hi = lo, hi

    def load(self, raw: Any) -> int:
        if type(raw) is not int:  # bool is no number here
            raise ValueError(f"expected an integer, not {type(raw).__name__}")
        if not self.lo <= raw <= self.hi:
            raise ValueError(f"{raw} is outside {self.lo}..{self.hi}")
        return raw

    def invalid(self) -> list[Any]:
        return ["1", 1.5, True, None, self.lo - 1, self.hi + 1]


class Number(Check):
    """A finite number of at least ``lo`` (seconds, mostly)."""

    def __init__(self, lo: float = 0.0) -> None:
        self.lo = lo

    def load(self, raw: Any) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"expected a number, not {type(raw).__name__}")
        if not math.isfinite(raw) or raw < self.lo:
            raise ValueError(f"{raw} is not a finite number of at least {self.lo:g}")
        return float(raw)

    def invalid(self) -> list[Any]:
        return ["1", True, None, [1], self.lo - 1, math.inf]


class Flag(Check):
    def load(self, raw: Any) -> bool:
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, not {type(raw).__name__}")
        return raw

    def invalid(self) -> list[Any]:
        return [1, "true", None]


class Optional(Check):
    """``check``'s values, or null."""

    def __init__(self, check: Check) -> None:
        self.check = check

    def load(self, raw: Any) -> Any:
        return None if raw is None else self.check.load(raw)

    def invalid(self) -> list[Any]:
        return [v for v in self.check.invalid() if v is not None]


class Names(Check):
    """A list of short strings (e.g. worker ids), kept as a tuple."""

    def __init__(self, max_items: int = 4096) -> None:
        self.max_items = max_items
        self.item = Text(64)

    def load(self, raw: Any) -> tuple[str, ...]:
        if not isinstance(raw, list) or len(raw) > self.max_items:
            raise ValueError(f"expected a list of at most {self.max_items} strings")
        return tuple(self.item.load(v) for v in raw)

    def dump(self, value: Any) -> Any:
        return list(value)

    def invalid(self) -> list[Any]:
        return ["x", None, [7], ["x" * 65], ["x"] * (self.max_items + 1)]


class Resources(Check):
    """What a host declares: {name: non-negative amount} (``_resources.check_resources``)."""

    def load(self, raw: Any) -> dict[str, float]:
        return check_resources(raw, "resources")

    def invalid(self) -> list[Any]:
        return [[], None, {"": 1}, {"GPU": -1}, {"GPU": "1"}]


class VersionMap(Check):
    """{distribution name: version} as another host tells it; versions it does not know
    are null, and every version is bounded (``_versions.clean_version``)."""

    def load(self, raw: Any) -> dict[str, str | None]:
        if not isinstance(raw, dict) or len(raw) > 256:
            raise ValueError("expected an object of at most 256 names")
        if not all(isinstance(v, (str, type(None))) for v in raw.values()):
            raise ValueError("a version is neither a string nor null")
        return {name: clean_version(v) for name, v in raw.items()}

    def invalid(self) -> list[Any]:
        return [[], "1.0", None, {"numpy": 1}, {str(i): "1" for i in range(257)}]


class Packages(Check):
    """Distribution names to ask about (``_versions.check_package_names``)."""

    def load(self, raw: Any) -> tuple[str, ...]:
        if not isinstance(raw, list):
            raise ValueError(f"expected a list of package names, not {type(raw).__name__}")
        return check_package_names(raw)

    def dump(self, value: Any) -> Any:
        return list(value)

    def invalid(self) -> list[Any]:
        return ["numpy", None, [7], ["not a name!"], ["p"] * 1000]


class Chunks(Check):
    """OUTPUT's [[pid, stream, text], ...]: whole lines, one worker process and stream each.
    Loaded as OutputChunks, each ending in a newline, long lines cut (OUTPUT_MAX_LINE)."""

    def load(self, raw: Any) -> tuple[OutputChunk, ...]:
        if not isinstance(raw, list):
            raise ValueError("expected a list of [pid, stream, text]")
        chunks = []
        for chunk in raw:
            if not (isinstance(chunk, list) and len(chunk) == 3):
                raise ValueError("a chunk is not [pid, stream, text]")
            pid, stream, text = chunk
            if type(pid) is not int or stream not in (proto.STDOUT, proto.STDERR):
                raise ValueError("a chunk with a bad pid or stream")
            if not isinstance(text, str):
                raise ValueError("a chunk's text is not a string")
            if not text:
                continue
            if not text.endswith("\n"):
                text += "\n"
            if len(text) > OUTPUT_MAX_LINE + 1:  # only then may one of its lines be too long
                text = "".join(proto.cut_line(line + "\n") for line in text[:-1].split("\n"))
            chunks.append(OutputChunk(pid, stream, text))
        return tuple(chunks)

    def dump(self, value: Any) -> Any:
        return [[c.pid, c.stream, c.text] for c in value]

    def invalid(self) -> list[Any]:
        return ["x", None, [[1, 1]], [["1", 1, "a"]], [[1, 3, "a"]], [[1, 1, 7]], [7]]


def wire(check: Check, **kwargs: Any) -> Any:
    """A field of a message, with the check its value gets on the way in."""
    return field(metadata={"check": check}, **kwargs)


def check_of(f: Any) -> Check:
    """The Check of a message's field (``dataclasses.fields``)."""
    check: Check = f.metadata["check"]
    return check


#: ``Message.forge``: leave this member out of the body
ABSENT: Any = object()

WORKER_ID = Text(exact=16)  #: a worker process's id (16 hex digits)
HOST = Text(255)  #: a host's name


# -- the messages ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A control message: its fields are the members of its JSON body."""

    KIND: ClassVar[Kind]

    def body(self) -> dict[str, Any]:
        """The JSON body: every field, as ``dump`` makes it."""
        return {f.name: check_of(f).dump(getattr(self, f.name)) for f in fields(self)}

    def encode(self, session: bytes = proto.NO_SESSION) -> list[bytes]:
        return self._frames(self.body(), session)

    def forge(self, session: bytes = proto.NO_SESSION, **members: Any) -> list[bytes]:
        """The frames of this message with these members of its body replaced by raw JSON
        values (``ABSENT``: left out), unchecked: how the tests make malformed messages."""
        body = {**self.body(), **members}
        return self._frames({k: v for k, v in body.items() if v is not ABSENT}, session)

    def _frames(self, body: dict[str, Any], session: bytes) -> list[bytes]:
        return proto.control(self.KIND, body, session)

    @classmethod
    def decode(cls: type[_M], frames: Sequence[Any]) -> _M:
        """The message in ``frames`` (of this kind: the caller has read the header), every
        field checked; ProtocolError names the first bad one."""
        return cls.from_body(proto.parse_control(frames))

    @classmethod
    def from_body(cls: type[_M], body: Mapping[str, Any]) -> _M:
        values = {}
        for f in fields(cls):
            if f.name not in body:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ProtocolError(f"{cls.KIND.name} without {f.name!r}")
                continue
            try:
                values[f.name] = check_of(f).load(body[f.name])
            except ValueError as e:
                raise ProtocolError(f"{cls.KIND.name} with a bad {f.name!r}: {e}") from None
        return cls(**values)


# worker process -> executor


@dataclass(frozen=True, slots=True, kw_only=True)
class AboutWorker(Message):
    """A message about one registered worker process, in its session (from the process
    itself, or DIED from its host)."""

    id: str = wire(WORKER_ID)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """A worker process registers (repeated until WELCOME or REFUSE)."""

    KIND: ClassVar[Kind] = Kind.HELLO
    id: str = wire(WORKER_ID)
    host: str = wire(HOST)
    host_id: str = wire(Text(64))
    pid: int = wire(Int())
    inbox: str = wire(Address())
    slots: int = wire(Int(lo=1, hi=1024))
    resources: Mapping[str, float] = wire(Resources(), default_factory=dict)
    #: the Python minor and cloudpickle major version: pickles need the same on both sides
    python: str = wire(Text(32))
    cloudpickle: str = wire(Text(32))
    #: the host's base versions (``_versions.BASE``), for ``versions()`` and a warning
    versions: Mapping[str, str | None] = wire(VersionMap(), default_factory=dict)

    def mismatch(self) -> str | None:
        """Why this worker cannot run our pickles, naming both sides; or None."""
        ours = {"python": proto.python_version(), "cloudpickle": proto.cloudpickle_major()}
        for name, mine in ours.items():
            theirs = getattr(self, name)
            if theirs != mine:
                what = "Python" if name == "python" else "cloudpickle major version"
                return (
                    f"the worker runs {what} {theirs}, this executor {mine}; pickled "
                    f"callables need the same {what} on both sides"
                )
        return None

    def base_versions(self) -> dict[str, str | None]:
        """The base versions it tells (None for those it does not: an older worker)."""
        return {name: self.versions.get(name) for name in BASE}

    @staticmethod
    def inbox_of(frames: Sequence[Any]) -> tuple[str, str]:
        """(inbox, "host pid") of a HELLO of another protocol version, read as far as it
        goes: enough to tell that worker why it is refused; ProtocolError if not even that."""
        body = proto.parse_control(frames)
        inbox = body.get("inbox")
        if not isinstance(inbox, str):
            raise ProtocolError("a HELLO of another protocol version without an inbox")
        return inbox, f"{str(body.get('host'))[:255]} pid {str(body.get('pid'))[:20]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready(AboutWorker):
    """Its initializer ran: it takes tasks."""

    KIND: ClassVar[Kind] = Kind.READY


@dataclass(frozen=True, slots=True, kw_only=True)
class InitFailed(AboutWorker):
    """Its initializer raised; the process exits."""

    KIND: ClassVar[Kind] = Kind.INIT_FAILED
    error: str = wire(Text(None))
    traceback: str = wire(Text(None), default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye(AboutWorker):
    """It leaves; what it was sent and did not start goes elsewhere."""

    KIND: ClassVar[Kind] = Kind.BYE
    done: int = wire(Int())  #: tasks it ran


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionsReply(AboutWorker):
    """The answer to ASK_VERSIONS: the installed versions of the packages asked about."""

    KIND: ClassVar[Kind] = Kind.VERSIONS
    request: int = wire(Int())
    versions: Mapping[str, str | None] = wire(VersionMap())

    def of(self, asked: Sequence[str]) -> dict[str, str | None]:
        """The versions it names for the packages ``asked`` (and no others)."""
        return {name: self.versions.get(name) for name in asked}


# worker host -> executor


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Message):
    """The host's supervisor is alive, and which worker processes it runs."""

    KIND: ClassVar[Kind] = Kind.HEARTBEAT
    host_id: str = wire(Text(64))
    host: str = wire(HOST)
    pid: int = wire(Int())
    interval: float = wire(Number())
    #: after how long without the executor the host gives up on it (None: not told)
    timeout: float | None = wire(Optional(Number()), default=None)
    workers: tuple[str, ...] = wire(Names(), default=())


@dataclass(frozen=True, slots=True, kw_only=True)
class Died(AboutWorker):
    """A worker process died (or was killed); sent in that process's session."""

    KIND: ClassVar[Kind] = Kind.DIED
    pid: int = wire(Int())
    host: str = wire(HOST)
    exit: str = wire(Text(1024))  #: how it died, e.g. "was killed by SIGSEGV (...)"
    running: int = wire(Int(lo=-_INT64 - 1))  #: the task it ran (0: none)
    last_started: int = wire(Int(lo=-_INT64 - 1))
    timeout: float = wire(Number(), default=0.0)  #: task_timeout it was killed for (0: none)


@dataclass(frozen=True, slots=True, kw_only=True)
class Output(Message):
    """What a remote host's worker processes wrote to stdout and stderr (host ->
    executor), sent in the session they serve (NO_SESSION: none yet)."""

    KIND: ClassVar[Kind] = Kind.OUTPUT
    host: str = wire(HOST)
    chunks: tuple[OutputChunk, ...] = wire(Chunks())
    dropped: int = wire(Int(), default=0)  #: bytes dropped on the host since the last one

    @classmethod
    def of(cls, host: str, chunks: Sequence[tuple[int, int, bytes]], dropped: int) -> Output:
        """From (pid, stream, whole lines as bytes), decoded as UTF-8, errors replaced."""
        return cls(
            host=host[:255],
            chunks=tuple(
                OutputChunk(pid, stream, data.decode("utf-8", "replace"))
                for pid, stream, data in chunks
            ),
            dropped=dropped,
        )


# executor -> worker process


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(Message):
    """The executor accepts a worker process and tells it its settings. The third frame is
    ``initializer``: the pickled (initializer, initargs), or empty (see the module
    docstring on pickles)."""

    KIND: ClassVar[Kind] = Kind.WELCOME
    max_tasks_per_child: int | None = wire(Optional(Int(lo=1)))
    task_timeout: float | None = wire(Optional(Number()))
    heartbeat_interval: float = wire(Number())
    max_message_size: int = wire(Int(lo=1))
    forward_output: bool = wire(Flag(), default=True)
    initializer: bytes = field(default=b"", metadata={"check": Check(), "frame": True})

    def body(self) -> dict[str, Any]:
        body = Message.body(self)
        del body["initializer"]  # a frame of its own
        return body

    def _frames(self, body: dict[str, Any], session: bytes) -> list[bytes]:
        return [*proto.control(self.KIND, body, session), self.initializer]

    @classmethod
    def decode(cls, frames: Sequence[Any]) -> Welcome:
        body = proto.parse_control(frames, n_frames=3)
        body.pop("initializer", None)  # a frame of its own, never a member of the body
        return replace(cls.from_body(body), initializer=bytes(frames[2]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse(Message):
    """Registration refused (versions). Kind and body are kept across protocol versions."""

    KIND: ClassVar[Kind] = Kind.REFUSE
    reason: str = wire(Text(None))


@dataclass(frozen=True, slots=True, kw_only=True)
class AskVersions(Message):
    """ASK_VERSIONS: which versions of these packages does your host have?"""

    KIND: ClassVar[Kind] = Kind.ASK_VERSIONS
    request: int = wire(Int())
    packages: tuple[str, ...] = wire(Packages())


@dataclass(frozen=True, slots=True, kw_only=True)
class Detach(Message):
    """The executor leaves (to worker processes and to rendezvous sockets)."""

    KIND: ClassVar[Kind] = Kind.DETACH


# executor -> worker host


@dataclass(frozen=True, slots=True, kw_only=True)
class Attach(Message):
    """Mode 3: connect your worker processes to this sink."""

    KIND: ClassVar[Kind] = Kind.ATTACH
    sink: str = wire(Address())


#: the messages about one worker process that arrive on the sink, by kind
ABOUT_A_WORKER: dict[Kind, type[AboutWorker]] = {
    m.KIND: m for m in (Ready, InitFailed, Bye, VersionsReply, Died)
}

#: the message record of each control kind (TASKS and RESULTS are binary: ``_protocol``)
BY_KIND: dict[Kind, type[Message]] = {
    m.KIND: m
    for m in (
        Hello, Ready, InitFailed, Bye, VersionsReply, Heartbeat, Died, Output,
        Welcome, Refuse, AskVersions, Detach, Attach,
    )
}  # fmt: skip
