"""Fuzzing (issue 4): random frame lists at the sockets of a live executor and worker host.

The fuzzer is an *authenticated* peer (CurveZMQ with the keys derived from the token): an
unauthenticated one never gets a byte through (test_security S-01), so only an insider can
exercise the parsers. Each example is a list of 0..60 frames: pure noise, or a header (often
exactly right: magic, version, a real kind, sometimes the live session) followed by noise, JSON
bodies with the protocol's field names and ill-typed values, RESULTS-shaped index frames, and a
canary pickle.

After every example a barrier message with a visible effect is sent on the same connection
(ZeroMQ keeps one connection's messages in order), so the example has been processed before the
checks run: the dispatcher thread (or the worker process) is still alive. At the end real tasks
still succeed, nothing was unpickled that should not have been, and shutdown is prompt.

Messages an insider could legitimately use to disrupt the session are left out: DETACH with the
live session to a worker, READY/BYE/DIED/INIT_FAILED with the live session to the executor,
ATTACH/DETACH to a waiting host. Those are authenticated control, not malformed input.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import crash_cases as cc
import pytest
from conftest import RESULT_TIMEOUT, WorkerHost, free_tcp_port, wait_until
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from peers import (  # noqa: F401  (importing the fixtures registers them here)
    LOOPBACK,
    VALID_MESSAGES,
    Peers,
    assert_shuts_down,
    bait,
    dispatcher_alive,
    forged_hello,
    inboxes_of,
    new_token,
    no_ambient_token,
    peers_fixture,
    pgids,
    session_of,
)

from zmqexecutor import _messages as msg
from zmqexecutor import _protocol as proto
from zmqexecutor._protocol import Kind

EXAMPLES = 200
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # one live executor for every example: state carries over, so shrinking would blame an
    # innocent example after the culprit broke something; the culprit is reported instead
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)
BARRIER_TIMEOUT = 10.0

#: the members of every control message's body (from the records of _messages.py)
FIELDS = sorted({f.name for m in VALID_MESSAGES for f in dataclasses.fields(m)})
PLAUSIBLE = [
    "tcp://127.0.0.1:1",
    "ipc:///nonexistent/zmqexecutor-fuzz",
    "inproc://fuzz",
    "tcp://[::1]:1",
    "3.11",
    "3",
    "",
    "0" * 16,
]
SESSION_CONTROL = {Kind.READY, Kind.INIT_FAILED, Kind.BYE, Kind.DIED}
#: a valid message of each control kind, where the fuzzer starts from; the HELLO has our
#: versions (so it gets past the version check) and an inbox nobody listens on
VALID: dict[Kind, msg.Message] = {m.KIND: m for m in VALID_MESSAGES} | {
    Kind.HELLO: forged_hello("fuzz", PLAUSIBLE[0])
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=16)
    | st.sampled_from(PLAUSIBLE),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
json_frames = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=8
).map(lambda d: json.dumps(d).encode())
result_indexes = st.tuples(
    st.binary(min_size=16, max_size=16),
    st.lists(
        st.tuples(
            st.integers(-(2**63), 2**63 - 1),
            st.integers(0, 255),
            st.integers(0, 300),
            st.integers(0, 3),
            st.integers(0, 2**32 - 1),
        ),
        max_size=4,
    ),
).map(lambda t: t[0] + b"".join(proto._RESULT_RECORD.pack(*r) for r in t[1]))


@st.composite
def headers(draw: Any, session: bytes, forbidden: Callable[[int, bytes], bool]) -> bytes:
    """A header frame: usually well-formed, sometimes a wrong magic, version, kind, size."""
    magic = draw(st.sampled_from([proto.MAGIC] * 3) | st.binary(min_size=4, max_size=4))
    version = draw(st.sampled_from([proto.PROTOCOL_VERSION] * 3) | st.integers(0, 255))
    kind = draw(st.sampled_from([int(k) for k in Kind]) | st.integers(0, 255))
    sess = draw(
        st.sampled_from([session, session, proto.NO_SESSION]) | st.binary(min_size=8, max_size=8)
    )
    if forbidden(kind, sess):
        sess = proto.NO_SESSION
    frame = proto.HEADER.pack(
        magic, version, kind, draw(st.integers(0, 65535)), sess, draw(st.integers(0, 2**32 - 1))
    )
    cut = draw(st.sampled_from(["exact"] * 6 + ["short", "long"]))
    if cut == "short":
        return frame[: draw(st.integers(0, len(frame) - 1))]
    if cut == "long":
        return frame + draw(st.binary(min_size=1, max_size=8))
    return frame


@st.composite
def control_messages(
    draw: Any, session: bytes, forbidden: Callable[[int, bytes], bool]
) -> list[bytes]:
    """A well-formed control message (often a HELLO): a valid one of its kind (``VALID``) whose
    members are each kept, replaced by a value its check refuses or by a random one, or left
    out: reaches the code past the JSON parser, the version check and the field checks."""
    kind = draw(st.sampled_from([Kind.HELLO] * 4 + list(Kind)))
    sess = draw(st.sampled_from([session, proto.NO_SESSION]) | st.binary(min_size=8, max_size=8))
    if forbidden(kind, sess):
        sess = proto.NO_SESSION
    valid = VALID.get(kind)
    if valid is None:  # TASKS and RESULTS have no JSON body: any members
        body = {name: draw(json_values) for name in FIELDS if draw(st.booleans())}
        frames = proto.control(kind, body, sess)
    else:
        members: dict[str, Any] = {}
        for f in dataclasses.fields(valid):
            refused = msg.check_of(f).invalid()
            how = draw(st.sampled_from(["valid"] * 6 + ["refused", "random", "absent"]))
            if how == "refused" and refused:
                members[f.name] = draw(st.sampled_from(refused))
            elif how == "random":
                members[f.name] = draw(json_values)
            elif how == "absent":
                members[f.name] = msg.ABSENT
        frames = valid.forge(sess, **members)
    return [*frames, *draw(st.lists(st.binary(max_size=16), max_size=2))]


def frame_lists(
    session: bytes, forbidden: Callable[[int, bytes], bool], extra: list[bytes]
) -> st.SearchStrategy[list[bytes]]:
    frames = st.one_of(
        st.binary(max_size=128), json_frames, result_indexes, st.sampled_from(extra or [b""])
    )
    noise = st.lists(st.binary(max_size=64), max_size=60)
    structured = st.tuples(headers(session, forbidden), st.lists(frames, max_size=59)).map(
        lambda t: [t[0], *t[1]]
    )
    return st.one_of(noise, structured, structured, control_messages(session, forbidden))


# ---------------------------------------------------------------------------- the executor


@pytest.mark.timeout(120)
def test_fuzz_executor_sink(
    make_executor: Callable[..., Any], peers: Peers, tmp_path: Path
) -> None:
    """Random frame lists at the executor's sink: the dispatcher survives every one, never
    unpickles a result that is not outstanding (canary), and real tasks still succeed."""
    token = new_token()
    canary = tmp_path / "canary"
    ex = make_executor(listen=LOOPBACK, token=token, max_workers=1)
    assert ex.submit(pow, 2, 5).result(timeout=RESULT_TIMEOUT) == 32
    session = session_of(ex)  # the fuzzer forges messages of this session
    fuzzer = peers.authenticated(ex.address, token)

    def forbidden(kind: int, sess: bytes) -> bool:
        return kind in SESSION_CONTROL and sess == session

    def barrier() -> None:
        """A HEARTBEAT from a new host id: once the executor knows that host, everything sent
        before it on this connection has been processed."""
        host_id = uuid.uuid4().hex
        fuzzer.send(msg.Heartbeat(host_id=host_id, host="fuzz", pid=1, interval=1.0).encode())
        wait_until(
            lambda: not dispatcher_alive(ex) or host_id in {h.host_id for h in ex.stats().hosts},
            BARRIER_TIMEOUT,
            "the barrier HEARTBEAT to be processed",
        )

    culprit: list[list[bytes]] = []

    @FUZZ_SETTINGS
    @given(frames=frame_lists(session, forbidden, [bait(canary)]))
    def throw(frames: list[bytes]) -> None:
        if culprit:
            pytest.fail(f"the dispatcher thread died after this message: {culprit[0]!r}")
        if frames:
            fuzzer.send(frames)
        barrier()
        if not dispatcher_alive(ex) or ex._broken is not None:
            culprit.append(frames)
            pytest.fail(f"the dispatcher thread died after this message: {frames!r}")

    throw()
    assert ex.submit(pow, 2, 10).result(timeout=RESULT_TIMEOUT) == 1024
    assert [f.result(timeout=RESULT_TIMEOUT) for f in [ex.submit(abs, -i) for i in range(20)]] == [
        *range(20)
    ]
    assert not canary.exists(), "a result that was not outstanding was unpickled"
    assert ex.stats().protocol_errors > 0
    assert_shuts_down(ex)


# ---------------------------------------------------------------------------- a worker host


@pytest.mark.timeout(120)
def test_fuzz_worker_inbox(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    peers: Peers,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Random frame lists at a worker process's inbox (TCP, CURVE): the worker process never
    dies (the same pid runs the barrier task after every example) and serves its executor."""
    caplog.set_level(logging.INFO, logger="zmqexecutor")
    token = new_token()
    ex = make_executor(listen=LOOPBACK, token=token)
    host = worker_hosts(ex.address, name="fuzzed", token=token)
    assert pgids(ex, 2) == [host.pid] * 2
    ((worker_pid, inbox),) = inboxes_of(caplog, host, 1).items()
    session = session_of(ex)  # the fuzzer forges tasks of this session
    (worker_id,) = [w.worker_id.encode() for w in ex.stats().workers if w.pid == worker_pid]
    fuzzer = peers.authenticated(inbox, token)
    marker = tmp_path / "barrier.marker"
    fn = cloudpickle.dumps(cc.record, protocol=5)
    digest = os.urandom(16)
    next_id = iter(range(10**12, 10**13))

    def forbidden(kind: int, sess: bytes) -> bool:
        return kind == Kind.DETACH and sess == session

    def barrier() -> None:
        """A real task of this session, sent by the fuzzer: once it ran, the worker process
        had handled everything sent before it."""
        task_id = next(next_id)
        args = cloudpickle.dumps(((str(marker), task_id), {}), protocol=5)
        fuzzer.send(
            proto.encode_tasks(session, [(digest, fn)], [(task_id, digest, args, [])], worker_id)
        )
        wait_until(
            lambda: (
                any(label == str(task_id) for *_, label in cc.read_marker(marker))
                or host.proc.poll() is not None
            ),
            BARRIER_TIMEOUT,
            lambda: f"the barrier task to run\n{host.log()[-3000:]}",
        )

    culprit: list[list[bytes]] = []

    @FUZZ_SETTINGS
    @given(frames=frame_lists(session, forbidden, []))
    def throw(frames: list[bytes]) -> None:
        if culprit:
            pytest.fail(f"the worker process died after this message: {culprit[0]!r}")
        if frames:
            fuzzer.send(frames)
        barrier()
        if {pid for pid, *_ in cc.read_marker(marker)} != {worker_pid}:
            culprit.append(frames)
            pytest.fail(f"the worker process died after this message: {frames!r}\n{host.log()}")

    throw()
    assert host.proc.poll() is None, host.log()[-3000:]
    assert pgids(ex, 10) == [host.pid] * 10
    assert {pid for pid, *_ in cc.read_marker(marker)} == {worker_pid}
    assert_shuts_down(ex)


@pytest.mark.timeout(120)
def test_fuzz_waiting_worker_host(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    peers: Peers,
) -> None:
    """Random frame lists (no ATTACH/DETACH) at a worker host waiting for an executor
    (mode 3): the host survives and then serves a real executor."""
    token = new_token()
    rendezvous = f"tcp://127.0.0.1:{free_tcp_port()}"
    host = worker_hosts("--listen", rendezvous, name="waiting", token=token)
    fuzzer = peers.authenticated(rendezvous, token)
    session = os.urandom(8)

    def forbidden(kind: int, sess: bytes) -> bool:
        return False

    control = {int(Kind.ATTACH), int(Kind.DETACH)}

    def harmless(frames: list[bytes]) -> bool:
        head = frames[0] if frames else b""
        return not (len(head) >= 6 and head[5] in control)

    culprit: list[list[bytes]] = []

    @FUZZ_SETTINGS
    @given(frames=frame_lists(session, forbidden, []).filter(harmless))
    def throw(frames: list[bytes]) -> None:
        if culprit:
            pytest.fail(f"the host died after this message (or one before): {culprit[0]!r}")
        if frames:
            fuzzer.send(frames)
        if host.proc.poll() is not None:
            culprit.append(frames)
            pytest.fail(f"the host died after this message (or one before): {frames!r}")

    throw()
    ex = make_executor(workers=[rendezvous], token=token)
    assert pgids(ex, 4) == [host.pid] * 4, host.log()[-3000:]
    assert host.proc.poll() is None
    assert "Traceback" not in host.log(), host.log()[-3000:]
