"""The ``versions()`` calls the dispatcher thread answers: handed over by callers, asked of
one worker process per host, finished when every host has answered or the deadline passed.

::

    versions() --VersionsRequest--> requests --ask()--> ASK_VERSIONS to one worker per host
    caller waits on request.future <--finish()-- answers <--VERSIONS-- worker processes

Everything but ``hand_over`` runs on the dispatcher thread, which owns the sockets; this
module sends through the callable it is given and never touches a socket itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from . import _messages as msg
from . import _protocol as proto
from ._scheduler import Scheduler, WorkerState
from ._versions import Versions, host_entry

__all__ = ["VersionRequests", "VersionsRequest"]

log = logging.getLogger("zmqexecutor.dispatcher")

#: sends frames to a worker process without blocking; False if it could not
SendTo = Callable[[str, list[bytes]], bool]


@dataclass(eq=False)
class VersionsRequest:
    """One ``versions()`` call, from the caller's thread to the dispatcher's and back."""

    packages: tuple[str, ...]
    timeout: float
    #: the client's versions, looked up in the caller's thread
    client: dict[str, str]
    future: Future[Versions] = field(default_factory=Future)
    #: when the caller stops waiting (monotonic; set by the caller, as its wait starts)
    deadline: float = 0.0
    request_id: int = 0
    #: the hosts it covers (host id -> name) and, of those asked, the ones that have not
    #: answered (host id -> why they may not)
    hosts: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)
    answers: dict[str, dict[str, str | None]] = field(default_factory=dict)


class VersionRequests:
    """The requests handed over and those asked (by id), and each live host's base
    versions (from its first HELLO)."""

    def __init__(self, core: Scheduler) -> None:
        self.core = core
        #: handed over by callers (any thread), not asked yet
        self.handed: deque[VersionsRequest] = deque()
        #: asked and waiting for answers (by request id)
        self.asked: dict[int, VersionsRequest] = {}
        self._ids = itertools.count(1)
        #: the base versions each live host told in its first HELLO (by host id)
        self.host_versions: dict[str, dict[str, str | None]] = {}

    def hand_over(self, request: VersionsRequest) -> None:
        """From the caller's thread: the dispatcher asks about it as it next wakes."""
        self.handed.append(request)

    def answer(self, send_to: SendTo, session: bytes, final: bool = False) -> None:
        """Ask about the new requests; answer those complete, past their deadline, or all
        of them (``final``: the dispatcher thread is exiting)."""
        while self.handed:
            self._ask(self.handed.popleft(), send_to, session, final)
        if not self.asked:
            return
        now = time.monotonic()
        for request in list(self.asked.values()):
            if final or not request.waiting or now >= request.deadline:
                self._finish(request, final)

    def _ask(self, request: VersionsRequest, send_to: SendTo, session: bytes, final: bool) -> None:
        """Send the question to one idle worker process of each host, or, on a host with
        none idle, to all of them: the first to finish its tasks answers."""
        core = self.core
        request.request_id = next(self._ids)
        ask = msg.AskVersions(request=request.request_id, packages=request.packages)
        question = ask.encode(session)
        for host in list(core.hosts.values()):
            workers = [w for w in map(core.workers.get, host.workers) if w is not None]
            if not workers:
                continue  # no registered worker process: nothing it says can be checked
            request.hosts[host.host_id] = host.name
            if not request.packages or final:
                continue  # the base versions came with HELLO
            idle = [w for w in workers if w.ready and not w.outstanding]
            for w in idle[:1] or workers:
                if send_to(w.worker_id, question):
                    request.waiting[host.host_id] = (
                        "" if idle else ": every worker process was running a task"
                    )
        self.asked[request.request_id] = request

    def on_reply(self, w: WorkerState, reply: msg.VersionsReply) -> None:
        """A worker process's answer: the first one from each host counts."""
        request = self.asked.get(reply.request)
        if request is None or w.host_id not in request.waiting:
            return  # late (past the deadline), or another process of its host was first
        request.answers[w.host_id] = reply.of(request.packages)
        del request.waiting[w.host_id]
        if not request.waiting:
            self._finish(request)

    def _finish(self, request: VersionsRequest, final: bool = False) -> None:
        self.asked.pop(request.request_id, None)
        hosts = []
        for host_id, name in request.hosts.items():
            answer = request.answers.get(host_id)
            note = ""
            if request.packages and answer is None:
                if final:
                    note = "the executor shut down before the host answered"
                elif host_id not in self.core.hosts:
                    note = "the host was lost before it answered"
                elif host_id not in request.waiting:
                    note = "no worker process of the host could be asked"
                else:
                    note = (
                        f"did not answer within {request.timeout:g}s"
                        f"{request.waiting[host_id]}; a worker process answers between "
                        "tasks (the other versions are from its registration)"
                    )
            base = self.host_versions.get(host_id, {})
            hosts.append(
                host_entry(name, host_id, base, answer, request.packages, request.client, note)
            )
        result = Versions(request.client, hosts, request.packages)
        with contextlib.suppress(InvalidStateError):  # answered by a caller meanwhile
            request.future.set_result(result)

    def note_hello(self, w: WorkerState, hello: msg.Hello) -> None:
        """Keep the base versions a host's first HELLO tells; warn, once per host, when its
        zmqexecutor or Python version differs from ours (pickles may still work)."""
        if w.host_id in self.host_versions:
            return
        for gone in [h for h in self.host_versions if h not in self.core.hosts]:
            del self.host_versions[gone]  # bounded by the live hosts
        theirs = self.host_versions[w.host_id] = hello.base_versions()
        ours = proto.host_versions()
        differ = [
            (label, theirs[name], ours[name])
            for name, label in (("zmqexecutor", "zmqexecutor"), ("python", "Python"))
            if theirs[name] is not None and theirs[name] != ours[name]
        ]
        if differ:
            log.warning(
                "worker host %s runs %s, this executor %s: install the same versions on "
                "every host to rule out subtle differences (executor.versions() lists them)",
                w.host,
                " and ".join(f"{label} {v}" for label, v, _ in differ),
                " and ".join(f"{label} {v}" for label, _, v in differ),
            )
