"""Test peers and attack material for the security and fuzz tests: who attacks, and with what.

An unauthenticated peer (NULL security, CURVE with a random key, raw TCP) must be refused at its
handshake; an *authenticated* one (CurveZMQ with the keys derived from the token) gets through,
so its bad messages must be dropped by the parser. ``Peer`` watches a socket's handshake through
a monitor, ``Peers`` owns their ZeroMQ context (no ZAP handler of ours guards it), and the
``bait`` pickles create a canary directory when loaded: code execution made visible.

Test modules register the fixtures defined here by importing them (``no_ambient_token``,
``peers_fixture``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import pickle
import random
import re
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
from conftest import (
    RESULT_TIMEOUT,
    TOKEN_VARS,
    WorkerHost,
    wait_until,
)
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from zmqexecutor import _messages as msg
from zmqexecutor import _protocol as proto

M = TypeVar("M", bound=msg.Message)
LOOPBACK = "tcp://127.0.0.1:*"
HANDSHAKE_TIMEOUT = 15.0

_HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "HANDSHAKE_SUCCEEDED",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "HANDSHAKE_FAILED_NO_DETAIL",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "HANDSHAKE_FAILED_PROTOCOL",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "HANDSHAKE_FAILED_AUTH",
}
_MONITORED = zmq.EVENT_DISCONNECTED | sum(_HANDSHAKE_EVENTS)


# ---------------------------------------------------------------------------- environment


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token reaches a test unless it passes one: the token variables are unset and HOME is
    a fresh directory (so a developer's ~/.zmqexecutor/token cannot change the outcome)."""
    for var in TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def derive(token: str) -> Any:
    from zmqexecutor._security import derive_keys

    return derive_keys(token)


def write_token_file(path: Path, token: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def secret_forms(token: str) -> list[str]:
    """Every spelling of the token and of the derived secret keys that must never leak."""
    keys = derive(token)
    forms = [token]
    for key in (keys.server_secret, keys.client_secret):
        raw = z85.decode(key)
        forms += [key.decode(), raw.hex(), base64.b64encode(raw).decode()]
    return forms


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------------- what the executor saw


def pgids(ex: Any, n: int) -> list[int]:
    """Run ``n`` tasks; return the process group id each ran in (the worker host's pid)."""
    futs = [ex.submit(os.getpgid, 0) for _ in range(n)]
    return [f.result(timeout=RESULT_TIMEOUT) for f in futs]


def registered_pids(ex: Any) -> set[int]:
    return {w.pid for w in ex.stats().workers}


def registered_ids(ex: Any) -> set[str]:
    return {w.worker_id for w in ex.stats().workers}


def held_task(ex: Any) -> tuple[int, str]:
    """(task id, worker id) of the one task in flight, as ``stats()`` shows it."""
    ((task_id, worker_id),) = [(t, w.worker_id) for w in ex.stats().workers for t in w.task_ids]
    return task_id, worker_id


def dropped(ex: Any) -> int:
    """Messages the executor dropped: bad ones and results it did not expect."""
    stats = ex.stats()
    return int(stats.protocol_errors + stats.discarded_results)


def session_of(ex: Any) -> bytes:
    """The executor's session id: a forged message of this very session needs it. No public
    API tells it (it is no statistic), so this is the one place the tests read it."""
    return bytes(ex._dispatcher.session)


def dispatcher_alive(ex: Any) -> bool:
    """The executor's dispatcher thread is still running. ``stats()`` cannot say so (a dead
    dispatcher still answers with its last state), so this reads the thread itself."""
    return bool(ex._dispatcher.is_alive())


def joined_pids(caplog: pytest.LogCaptureFixture) -> set[int]:
    """Every worker process that ever registered, from the executor's INFO log (a worker
    that registered and left again, or whose host exited since, is still in it)."""
    return {int(m.group(1)) for r in list(caplog.records) if (m := _JOINED.search(r.getMessage()))}


_JOINED = re.compile(r"pid (\d+) joined \(inbox ([^)\s]+)\)")


def inboxes_of(caplog: pytest.LogCaptureFixture, host: WorkerHost, count: int) -> dict[int, str]:
    """{worker process pid: inbox endpoint} of ``host``'s registered worker processes, from the
    executor's INFO log "worker HOST pid PID joined (inbox ENDPOINT)"."""

    def found() -> dict[int, str]:
        members = host.processes()
        out = {}
        for record in list(caplog.records):
            m = _JOINED.search(record.getMessage())
            if m and int(m.group(1)) in members:
                out[int(m.group(1))] = m.group(2)
        return out

    wait_until(
        lambda: len(found()) >= count,
        what=lambda: f"{count} worker process(es) of {host} to join\n{caplog.text[-3000:]}",
    )
    return found()


# ---------------------------------------------------------------------------- test peers


class Peer:
    """One socket of a test peer (attacker or authenticated fake), with a handshake monitor."""

    def __init__(self, sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes], endpoint: str):
        self.sock = sock
        self.monitor = monitor
        self.endpoint = endpoint
        self.events: list[str] = []

    def send(self, frames: Sequence[Any]) -> None:
        self.sock.send_multipart([bytes(f) for f in frames])

    def _next_event(self, deadline: float) -> str | None:
        timeout = max(0, int((deadline - time.monotonic()) * 1000))
        if not self.monitor.poll(timeout):
            return None
        event = recv_monitor_message(self.monitor)["event"]
        name = _HANDSHAKE_EVENTS.get(event, zmq.Event(event).name)
        self.events.append(name)
        return name

    def handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> str:
        """The outcome of this socket's first ZMTP handshake: ``HANDSHAKE_SUCCEEDED`` or a
        ``HANDSHAKE_FAILED_*`` event name."""
        for name in self.events:
            if name.startswith("HANDSHAKE"):
                return name
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name = self._next_event(deadline)
            if name is not None and name.startswith("HANDSHAKE"):
                return name
        pytest.fail(f"no handshake on {self.endpoint} within {timeout}s (events {self.events})")

    def wait_event(self, wanted: str, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.events:
            if time.monotonic() > deadline:
                pytest.fail(f"no {wanted} on {self.endpoint} within {timeout}s: {self.events}")
            self._next_event(deadline)

    def received(self) -> list[list[bytes]]:
        """Every message waiting on this (receiving) socket, without blocking."""
        out = []
        with contextlib.suppress(zmq.Again):
            while True:
                out.append(self.sock.recv_multipart(zmq.NOBLOCK))
        return out


class Peers:
    """Test peers in their own ZeroMQ context (so no ZAP handler of ours guards them)."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        #: every peer stays referenced (a collected socket closes, dropping what it queued)
        self.made: list[Peer] = []

    def _socket(
        self,
        kind: int,
        keys: tuple[bytes, bytes] | None,
        server_key: bytes | None,
        server: bool,
    ) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        if keys is not None:
            sock.curve_publickey, sock.curve_secretkey = keys
            if server:
                sock.curve_server = True
            else:
                assert server_key is not None
                sock.curve_serverkey = server_key
        return sock, sock.get_monitor_socket(_MONITORED)

    def connect(
        self,
        kind: int,
        endpoint: str,
        *,
        keys: tuple[bytes, bytes] | None = None,
        server_key: bytes | None = None,
    ) -> Peer:
        """A connecting socket: NULL security, or a CURVE client with ``keys`` that pins
        ``server_key``."""
        sock, monitor = self._socket(kind, keys, server_key, server=False)
        sock.connect(endpoint)
        self.made.append(Peer(sock, monitor, endpoint))
        return self.made[-1]

    def bind(self, kind: int, *, server_keys: tuple[bytes, bytes] | None = None) -> Peer:
        """A socket bound on a loopback port: NULL security, or a CURVE server."""
        sock, monitor = self._socket(kind, server_keys, None, server=True)
        sock.bind("tcp://127.0.0.1:*")
        self.made.append(Peer(sock, monitor, sock.getsockopt(zmq.LAST_ENDPOINT).decode()))
        return self.made[-1]

    def random_curve(self, kind: int, endpoint: str, token: str) -> Peer:
        """A CURVE client with a random keypair that pins the right (derived) server key."""
        return self.connect(
            kind, endpoint, keys=zmq.curve_keypair(), server_key=derive(token).server_public
        )

    def authenticated(self, endpoint: str, token: str, kind: int = zmq.PUSH) -> Peer:
        """A CURVE client with the client keys derived from ``token``: an insider."""
        keys = derive(token)
        peer = self.connect(
            kind,
            endpoint,
            keys=(keys.client_public, keys.client_secret),
            server_key=keys.server_public,
        )
        assert peer.handshake() == "HANDSHAKE_SUCCEEDED", (
            f"the derived client keys were refused by {endpoint}: {peer.events}"
        )
        return peer

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@pytest.fixture(name="peers")
def peers_fixture() -> Iterator[Peers]:
    p = Peers()
    yield p
    p.close()


# ---------------------------------------------------------------------------- attack material


class MkdirCanary:
    """Unpickling this creates the directory ``path``: code execution made visible."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def __reduce__(self) -> Any:
        return os.mkdir, (self.path,)


def bait(canary: Path) -> bytes:
    """A pickle that creates ``canary`` when loaded (plain pickle: no test module needed)."""
    return pickle.dumps(MkdirCanary(canary), protocol=5)


# -- forged control messages: made from the records of zmqexecutor/_messages.py (the one
# copy of the schema); a malformed one is ``record.forge(session, field=bad value)``

FORGED_ID = "0123456789abcdef"  #: a worker id of the right form that no worker has

#: one valid message of every control kind, its values as ``decode`` returns them
VALID_MESSAGES: list[msg.Message] = [
    msg.Hello(
        id=FORGED_ID,
        host="h",
        host_id="host-1",
        pid=42,
        inbox="tcp://127.0.0.1:5555",
        slots=1,
        resources={"GPU": 2, "MEM": 1.5e9},
        python="3.11",
        cloudpickle="3",
        versions={"zmqexecutor": "1.0", "pyzmq": None},
    ),
    msg.Ready(id=FORGED_ID),
    msg.InitFailed(id=FORGED_ID, error="ValueError: no", traceback="Traceback ..."),
    msg.Bye(id=FORGED_ID, done=3),
    msg.VersionsReply(
        id=FORGED_ID, request=7, versions={"numpy": "2.0", "absent": "not installed"}
    ),
    msg.Heartbeat(
        host_id="host-1", host="h", pid=42, interval=1.0, timeout=10.0, workers=(FORGED_ID,)
    ),
    msg.Died(
        id=FORGED_ID, pid=42, host="h", exit="exited with code 1", running=5, last_started=5,
        timeout=0.5,
    ),
    msg.Output(host="h", chunks=(proto.OutputChunk(42, proto.STDERR, "a line\n"),), dropped=10),
    msg.Welcome(
        max_tasks_per_child=None,
        task_timeout=2.5,
        heartbeat_interval=1.0,
        max_message_size=2**20,
        forward_output=False,
        initializer=b"a pickle",
    ),
    msg.Refuse(reason="versions differ"),
    msg.AskVersions(request=7, packages=("numpy", "scikit-learn")),
    msg.Detach(),
    msg.Attach(sink="ipc:///tmp/zmqexecutor-sink"),
    msg.Recall(recall=3, tasks=(5, 6)),
    msg.Returned(id=FORGED_ID, recall=3, tasks=(6,)),
]  # fmt: skip


def example(kind: type[M]) -> M:
    """The valid message of this record in VALID_MESSAGES."""
    return next(m for m in VALID_MESSAGES if isinstance(m, kind))


def forged_id(name: str) -> str:
    """A worker id of the right form (16 characters) that reads as ``name``."""
    return name.ljust(16, "-")[:16]


def forged_hello(name: str, inbox: str, **fields: Any) -> msg.Hello:
    """A HELLO as a fake worker sends it: worker id ``forged_id(name)``, our Python and
    cloudpickle versions (so it is not refused for them); ``fields`` replace any."""
    hello = dataclasses.replace(
        example(msg.Hello),
        id=forged_id(name),
        host="attacker",
        host_id=f"host-{name}"[:64],
        pid=4242,
        inbox=inbox,
        resources={},
        python=proto.python_version(),
        cloudpickle=proto.cloudpickle_major(),
    )
    return dataclasses.replace(hello, **fields)


def forged_results(session: bytes, sender: str, task_id: int, payload: bytes) -> list[bytes]:
    """A RESULTS message from worker ``sender`` saying task ``task_id`` returned ``payload``."""
    record = proto.ResultRecord(task_id, proto.Status.OK, payload)
    return [bytes(f) for f in proto.encode_results(session, sender.encode(), [record])]


def forged_tasks(
    session: bytes, task_id: int, fn: bytes, args: bytes, recipient: str
) -> list[bytes]:
    digest = os.urandom(16)
    frames = proto.encode_tasks(
        session, [(digest, fn)], [(task_id, digest, args, [])], recipient.encode()
    )
    return [bytes(f) for f in frames]


def zmtp1(frames: Sequence[bytes]) -> bytes:
    """A ZMTP/1.0 stream: an empty identity, then ``frames`` as one multipart message."""
    out = [b"\x01\x00"]
    for i, frame in enumerate(frames):
        flags = b"\x01" if i < len(frames) - 1 else b"\x00"
        size = len(frame) + 1
        out.append((bytes([size]) if size < 255 else b"\xff" + size.to_bytes(8, "big")) + flags)
        out.append(frame)
    return b"".join(out)


def _zmtp3_frame(body: bytes, flags: int) -> bytes:
    if len(body) > 255:
        return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def zmtp3_null(frames: Sequence[bytes], socket_type: bytes = b"PUSH") -> bytes:
    """A hand-made ZMTP/3.0 NULL-mechanism session: greeting, READY, then ``frames``."""
    # signature, version 3.0, mechanism, as-server, filler
    greeting = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00") + bytes(32)
    prop = b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    out = [greeting, _zmtp3_frame(b"\x05READY" + prop, 0x04)]
    for i, frame in enumerate(frames):
        out.append(_zmtp3_frame(frame, 0x01 if i < len(frames) - 1 else 0x00))
    return b"".join(out)


def raw_payloads(frames: Sequence[bytes]) -> list[bytes]:
    """What a raw-TCP attacker writes: 4 KiB of random bytes, and ``frames`` framed by hand as
    ZMTP/1.0 and as ZMTP/3.0 with the NULL mechanism."""
    return [random.Random(4242).randbytes(4096), zmtp1(frames), zmtp3_null(frames)]


def tcp_address(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host.strip("[]"), int(port)


def raw_attack(endpoint: str, payload: bytes, timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Write ``payload`` to the TCP port of ``endpoint``; return once the peer has closed the
    connection (it must: nothing it can accept is in there)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = socket.create_connection(tcp_address(endpoint), timeout=timeout)
            break
        except ConnectionRefusedError:  # a worker host still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    with conn:
        try:
            conn.sendall(payload)
            while conn.recv(65536):  # its greeting, then EOF
                if time.monotonic() > deadline:
                    pytest.fail(f"{endpoint} kept a raw-TCP attacker's connection open")
        except (ConnectionResetError, BrokenPipeError):
            return
        except TimeoutError:
            pytest.fail(f"{endpoint} kept a raw-TCP attacker's connection open for {timeout}s")


def attack(peers: Peers, endpoint: str, token: str, messages: list[list[bytes]]) -> None:
    """Deliver ``messages`` to ``endpoint`` every unauthenticated way: a NULL-security PUSH, a
    CURVE PUSH with a random keypair but the right server key, and raw TCP (random bytes, and
    each message framed by hand). Returns once each attempt was refused."""
    null = peers.connect(zmq.PUSH, endpoint)
    rogue = peers.random_curve(zmq.PUSH, endpoint, token)
    for peer in (null, rogue):
        for message in messages:
            peer.send(message)
    for peer, who in ((null, "a NULL-security peer"), (rogue, "a CURVE peer with a random key")):
        outcome = peer.handshake()
        assert outcome.startswith("HANDSHAKE_FAILED"), f"{endpoint} accepted {who}: {outcome}"
    for message in messages:
        for payload in raw_payloads(message):
            raw_attack(endpoint, payload)


def assert_shuts_down(ex: Any, timeout: float = 15.0) -> None:
    """The executor still shuts down promptly (a socket left open blocks context.term())."""
    ex.shutdown(wait=False)
    wait_until(
        lambda: not dispatcher_alive(ex),
        timeout,
        "the executor to shut down: did the bad message leave a socket open?",
    )
