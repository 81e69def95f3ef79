"""Security (TEST-CATALOGUE C.4 S-01..S-08 and the security rows BI-07..BI-14 of C.1).

zmqexecutor unpickles what arrives on its sockets, so whoever can deliver a message can run
code. Every attacker here carries a pickle that would create a canary directory (``os.mkdir``
runs while it is unpickled); the tests assert the directory never appears, and that the
executor and its workers keep serving.

How a test knows an attack has been dealt with, without sleeping:

- a ZeroMQ attacker's socket carries a monitor: its first ``HANDSHAKE_*`` event says whether
  the executor (or worker) accepted it. A PUSH socket sends nothing before its handshake
  succeeds, so ``HANDSHAKE_FAILED_*`` proves that not one byte of its messages was delivered;
- a raw TCP attacker writes its bytes and waits until the peer closes the connection;
- an *authenticated* test peer (CurveZMQ with the keys derived from the token) gets through, so
  its bad messages must be dropped by the parser: ``executor.stats().protocol_errors``
  counts them.

Worker hosts are ``python -m zmqexecutor worker`` subprocesses, each leading its own process
group (its pgid is its pid), so a task returning ``os.getpgid(0)`` says which host ran it.

Only "this must not happen" checks (a wrong-token worker never registers) watch a condition for
a fixed time (``holds_for``); nothing synchronizes on a sleep.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import crash_cases as cc
import pytest
import zmq
from conftest import (
    RESULT_TIMEOUT,
    TESTS_DIR,
    Gates,
    WorkerHost,
    descendants,
    free_tcp_port,
    holds_for,
    host_logs,
    rendezvous_pids,
    wait_until,
    worker_env,
)
from peers import (  # noqa: F401  (importing the fixtures registers them here)
    FORGED_ID,
    LOOPBACK,
    Peers,
    assert_shuts_down,
    attack,
    bait,
    cmdline,
    derive,
    dispatcher_alive,
    dropped,
    example,
    forged_hello,
    forged_id,
    forged_results,
    forged_tasks,
    held_task,
    inboxes_of,
    joined_pids,
    new_token,
    no_ambient_token,
    peers_fixture,
    pgids,
    registered_ids,
    registered_pids,
    secret_forms,
    session_of,
    write_token_file,
)

from zmqexecutor import _messages as msg
from zmqexecutor import _protocol as proto
from zmqexecutor._protocol import Kind

# TEST-NET-1 (RFC 5737): never routed; configurations naming it are refused before any socket.
REMOTE = "tcp://192.0.2.1:5555"
WORKER_CMD = WorkerHost.COMMAND
TOKEN_CMD = [sys.executable, "-m", "zmqexecutor", "token"]
MiB = 2**20
#: what a worker process that keeps saying HELLO gets to try before "it never registered"
NEVER_WINDOW = 3.0


# ---------------------------------------------------------------------------- S-01


@pytest.mark.timeout(120)
def test_s01_unauthenticated_peer_cannot_execute_code(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    gates: Gates,
    peers: Peers,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S-01 (and BI-08's vectors): attackers without the token target the executor's sink and a
    worker's inbox; nothing they send is unpickled, no future is resolved by them, and the real
    worker keeps serving (the same processes: none crashed)."""
    caplog.set_level(logging.INFO, logger="zmqexecutor")
    token = new_token()
    canary = tmp_path / "canary"
    ex = make_executor(listen=LOOPBACK, token=token)
    host = worker_hosts(ex.address, name="legit", token=token, processes=2)
    assert set(pgids(ex, 4)) == {host.pid}, host_logs(host)
    inboxes = inboxes_of(caplog, host, 2)
    processes = host.processes()

    gate = gates("held")
    held = ex.submit(cc.block_until, str(gate.path), "genuine", str(gate.started))
    gate.wait_started()
    session = session_of(ex)  # forging a message of this session needs its id
    held_id, owner_id = held_task(ex)

    # At the sink: a result for the running task (right session, worker and task id) whose
    # pickle is the canary, and a HELLO that would register the attacker as a worker.
    trap = peers.bind(zmq.PULL)
    intruder = forged_hello("intruder", trap.endpoint)
    to_sink = [forged_results(session, owner_id, held_id, bait(canary)), intruder.encode()]
    attack(peers, ex.address, token, to_sink)
    # At each worker inbox: a TASKS message of this very session whose callable and arguments
    # are the canary.
    ids = {w.pid: w.worker_id for w in ex.stats().workers}
    for pid, inbox in inboxes.items():
        forged = forged_tasks(session, 10**9, bait(canary), bait(canary), ids[pid])
        attack(peers, inbox, token, [forged])

    assert not held.done(), f"an attacker resolved a future: {held!r}"
    gate.open()
    assert held.result(timeout=RESULT_TIMEOUT) == "genuine"
    assert set(pgids(ex, 8)) == {host.pid}
    assert not canary.exists(), "an unauthenticated peer's pickle was loaded"
    assert trap.received() == [], "the executor talked to the attacker's inbox"
    assert intruder.id not in registered_ids(ex)
    assert host.processes() == processes, "a worker process died or was replaced"
    assert dispatcher_alive(ex)


@pytest.mark.timeout(120)
def test_s01_unauthenticated_peer_cannot_feed_a_listening_worker_host(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    peers: Peers,
    tmp_path: Path,
) -> None:
    """S-01 against a worker host waiting for an executor (mode 3): an unauthenticated ATTACH
    that would send its worker processes to the attacker's sink is refused; a real executor
    with the token still gets the host."""
    token = new_token()
    rendezvous = f"tcp://127.0.0.1:{free_tcp_port()}"
    host = worker_hosts("--listen", rendezvous, name="waiting", token=token)
    trap = peers.bind(zmq.PULL)  # the attacker's sink: a HELLO here would be answered
    attach = msg.Attach(sink=trap.endpoint).encode(os.urandom(8))
    attack(peers, rendezvous, token, [attach])

    ex = make_executor(workers=[rendezvous], token=token)
    assert set(pgids(ex, 4)) == {host.pid}, host_logs(host)
    assert trap.received() == [], "a worker process said HELLO to the attacker"
    assert host.proc.poll() is None, host_logs(host)


@pytest.mark.timeout(90)
def test_s01_control_the_same_attacks_succeed_without_a_token(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    gates: Gates,
    peers: Peers,
    tmp_path: Path,
) -> None:
    """Harness check for S-01: on loopback with ``insecure=True`` the very same attacker does
    run code, in the executor (a forged result) and on a worker host (ATTACH, then WELCOME with
    an initializer). So S-01 passing means authentication stopped it, not a broken attacker."""
    canary = tmp_path / "executor-canary"
    ex = make_executor(listen=LOOPBACK, insecure=True)
    host = worker_hosts(ex.address, "--insecure", name="insecure")
    assert pgids(ex, 1) == [host.pid], host_logs(host)
    gate = gates("held")
    held = ex.submit(cc.block_until, str(gate.path), "genuine", str(gate.started))
    gate.wait_started()
    held_id, owner_id = held_task(ex)
    null = peers.connect(zmq.PUSH, ex.address)
    # forging a result of this session needs its id (nothing public tells it)
    null.send(forged_results(session_of(ex), owner_id, held_id, bait(canary)))
    wait_until(canary.exists, what="the forged result to be unpickled by the executor")
    assert held.result(timeout=RESULT_TIMEOUT) is None  # os.mkdir's return value
    gate.open()

    canary = tmp_path / "worker-canary"
    rendezvous = f"tcp://127.0.0.1:{free_tcp_port()}"
    worker_hosts("--listen", rendezvous, "--insecure", name="waiting")
    trap = peers.bind(zmq.PULL)
    peers.connect(zmq.PUSH, rendezvous).send(msg.Attach(sink=trap.endpoint).encode(os.urandom(8)))
    hellos: list[list[bytes]] = []

    def hello_arrived() -> bool:
        hellos.extend(m for m in trap.received() if m[0][5:6] == bytes([Kind.HELLO]))
        return bool(hellos)

    wait_until(hello_arrived, what="a worker process to say HELLO to the attacker's sink")
    inbox = msg.Hello.decode(hellos[0]).inbox
    welcome = dataclasses.replace(example(msg.Welcome), initializer=bait(canary))
    peers.connect(zmq.PUSH, inbox).send(welcome.encode(os.urandom(8)))
    wait_until(canary.exists, what="the worker to unpickle the attacker's initializer")


# ---------------------------------------------------------------------------- S-02


@pytest.mark.timeout(120)
def test_s02_rogue_worker_cannot_steal_tasks(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    peers: Peers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S-02: rogue workers without the token -- announcing their own inbox to the sink (NULL or
    random-key CURVE), or a PULL connected straight to a legit worker's inbox -- receive nothing
    while 50 tasks complete on the legit worker host."""
    caplog.set_level(logging.INFO, logger="zmqexecutor")
    token = new_token()
    ex = make_executor(listen=LOOPBACK, token=token)
    host = worker_hosts(ex.address, name="legit", token=token, processes=2)
    assert set(pgids(ex, 4)) == {host.pid}, host_logs(host)
    inboxes = inboxes_of(caplog, host, 2)
    session = session_of(ex)  # the rogues' READY claims this session

    rogue_inboxes = [peers.bind(zmq.PULL), peers.bind(zmq.PULL, server_keys=zmq.curve_keypair())]
    announcers = []
    for i, rogue in enumerate(rogue_inboxes):
        hello = forged_hello(f"rogue-{i}", rogue.endpoint)
        messages = [hello.encode(), msg.Ready(id=hello.id).encode(session)]
        for sender in (
            peers.connect(zmq.PUSH, ex.address),
            peers.random_curve(zmq.PUSH, ex.address, token),
        ):
            for m in messages:
                sender.send(m)
            announcers.append(sender)
    thieves = []
    for inbox in inboxes.values():
        thieves += [peers.connect(zmq.PULL, inbox), peers.random_curve(zmq.PULL, inbox, token)]
    for peer in announcers + thieves:
        assert peer.handshake().startswith("HANDSHAKE_FAILED"), (peer.endpoint, peer.events)

    assert pgids(ex, 50) == [host.pid] * 50
    for peer in rogue_inboxes + thieves:
        assert peer.received() == [], f"{peer.endpoint} received a message"
    assert not {forged_id("rogue-0"), forged_id("rogue-1")} & registered_ids(ex)


# ---------------------------------------------------------------------------- S-03, S-04


@pytest.mark.timeout(120)
@pytest.mark.parametrize("intruder", ["wrong-token", "no-token"])
def test_s03_wrong_keys_rejected(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    intruder: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S-03: a worker host with another token (or none, --insecure on loopback) never
    registers and gets no task; the executor keeps working with the right-token host."""
    caplog.set_level(logging.INFO, logger="zmqexecutor")
    token = new_token()
    ex = make_executor(listen=LOOPBACK, token=token)
    if intruder == "wrong-token":
        bad = worker_hosts(ex.address, name="bad", token=new_token())
    else:
        bad = worker_hosts(ex.address, "--insecure", name="bad")
    good = worker_hosts(ex.address, name="good", token=token)
    wait_until(
        lambda: len(bad.processes()) >= 2 or bad.proc.poll() is not None,
        what="the intruder host's worker process to start",
    )
    assert set(pgids(ex, 20)) == {good.pid}, host_logs(good, bad)
    # Only the good host's processes ever register: a statement about the good host, which
    # stays up, so it holds whether or not the intruder has given up and exited by now.
    assert holds_for(lambda: registered_pids(ex) <= good.processes(), NEVER_WINDOW), (
        f"the intruder registered: {ex.stats()!r}" + host_logs(bad)
    )
    assert set(pgids(ex, 20)) == {good.pid}
    strangers = {pid for pid in joined_pids(caplog) if not good.owns(pid)}
    assert not strangers, f"processes not of the good host registered: {strangers}" + host_logs(bad)


@pytest.mark.timeout(120)
def test_s04_spoofed_executor_cannot_feed_waiting_worker_host(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
) -> None:
    """S-04 (mode 3): an executor with another token connects to the address a worker host
    waits on; the host runs none of its tasks (canary), and still serves the real executor."""
    token = new_token()
    canary = tmp_path / "canary"
    rendezvous = f"tcp://127.0.0.1:{free_tcp_port()}"
    host = worker_hosts("--listen", rendezvous, name="waiting", token=token)
    fake = make_executor(
        workers=[rendezvous], token=new_token(), heartbeat_interval=0.2, heartbeat_timeout=2.0
    )
    spoofed = fake.submit(os.mkdir, str(canary))
    assert holds_for(lambda: not spoofed.done() and not canary.exists(), NEVER_WINDOW)

    ex = make_executor(workers=[rendezvous], token=token)
    assert set(pgids(ex, 4)) == {host.pid}, host_logs(host)
    assert not spoofed.done() and not canary.exists()
    assert not fake.stats().workers
    fake.shutdown(wait=True, cancel_futures=True)
    assert spoofed.cancelled()
    assert not canary.exists()


@pytest.mark.timeout(120)
def test_s04_spoofed_executor_cannot_feed_connecting_worker_host(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
) -> None:
    """S-04 (mode 2): an executor with another token listens where a worker host connects; the
    host never registers with it and never runs its task (canary)."""
    token = new_token()
    canary = tmp_path / "canary"
    fake = make_executor(listen=LOOPBACK, token=new_token())
    spoofed = fake.submit(os.mkdir, str(canary))
    host = worker_hosts(fake.address, name="victim", token=token)
    wait_until(
        lambda: len(host.processes()) >= 2 or host.proc.poll() is not None,
        what="the worker host's worker process to start",
    )
    assert holds_for(
        lambda: not spoofed.done() and not canary.exists() and not fake.stats().workers,
        NEVER_WINDOW,
    ), host_logs(host)
    fake.shutdown(wait=True, cancel_futures=True)
    assert spoofed.cancelled()
    assert not canary.exists()


# ---------------------------------------------------------------------------- S-06


@pytest.fixture
def socket_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Every bind/connect of any ZeroMQ socket in this process, recorded."""
    calls: list[tuple[str, tuple[Any, ...]]] = []
    for name in ("bind", "connect", "bind_to_random_port"):
        original = getattr(zmq.Socket, name)

        def spy(self: Any, *args: Any, _name: str = name, _orig: Any = original, **kw: Any) -> Any:
            calls.append((_name, args))
            return _orig(self, *args, **kw)

        monkeypatch.setattr(zmq.Socket, name, spy)
    return calls


def without_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend libzmq was built without CURVE: zmq.has("curve") is False (also where
    zmqexecutor imported ``has`` by name)."""
    real_has = zmq.has

    def has(capability: str) -> bool:
        return False if capability == "curve" else real_has(capability)

    monkeypatch.setattr(zmq, "has", has)
    for name, module in list(sys.modules.items()):
        if name.startswith("zmqexecutor") and getattr(module, "has", None) is real_has:
            monkeypatch.setattr(module, "has", has)


def assert_says_how_to_get_a_token(message: str) -> None:
    assert "zmqexecutor token" in message, f"does not say how to create a token: {message}"
    assert "ZMQEXECUTOR_TOKEN" in message or "token=" in message, (
        f"does not say how to pass a token: {message}"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"listen": "tcp://0.0.0.0:*"},
        {"listen": "tcp://*:*"},
        {"workers": [REMOTE]},
        {"listen": "tcp://0.0.0.0:*", "insecure": True},
        {"workers": [REMOTE], "insecure": True},
        {"listen": "tcp://127.0.0.1:*"},
        {"listen": "tcp://localhost:*"},
        {"workers": ["tcp://127.0.0.1:5555"]},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_s06_insecure_configuration_refused(
    kwargs: dict[str, Any], socket_calls: list[Any]
) -> None:
    """S-06: TCP without a token is refused before any socket binds or connects, with a message
    saying how to create and pass a token; insecure=True does not open non-loopback TCP."""
    from zmqexecutor import ConfigurationError, ZmqExecutor

    with pytest.raises(ConfigurationError) as info:
        ZmqExecutor(**kwargs)
    assert socket_calls == []
    loopback = "127.0.0.1" in str(kwargs) or "localhost" in str(kwargs)
    if loopback:  # the fix is a token, or the explicit opt-in
        assert "token" in str(info.value) and "insecure" in str(info.value), str(info.value)
    else:
        assert_says_how_to_get_a_token(str(info.value))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"listen": "tcp://127.0.0.1:*"},
        {"listen": "tcp://0.0.0.0:*"},
        {"workers": [REMOTE]},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
@pytest.mark.parametrize("source", ["argument", "environment"])
def test_s06_token_without_curve_refused(
    kwargs: dict[str, Any],
    source: str,
    monkeypatch: pytest.MonkeyPatch,
    socket_calls: list[Any],
) -> None:
    """S-06: with a token but a libzmq without CURVE, the error says so (no silent NULL)."""
    from zmqexecutor import ConfigurationError, ZmqExecutor

    without_curve(monkeypatch)
    token = new_token()
    if source == "argument":
        kwargs = {**kwargs, "token": token}
    else:
        monkeypatch.setenv("ZMQEXECUTOR_TOKEN", token)
    with pytest.raises(ConfigurationError) as info:
        ZmqExecutor(**kwargs)
    assert socket_calls == []
    message = str(info.value)
    assert "libzmq" in message and "curve" in message.lower(), message
    assert token not in message


def test_s06_local_mode_needs_no_token(make_executor: Callable[..., Any]) -> None:
    """S-06: local mode (ipc:// in a private directory) needs no token and no opt-in."""
    ex = make_executor(max_workers=1)
    assert ex.submit(pow, 2, 10).result(timeout=RESULT_TIMEOUT) == 1024


def test_s06_loopback_opt_in_works_and_warns(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S-06: loopback TCP without a token works with the explicit opt-in, and says it is
    unauthenticated."""
    caplog.set_level(logging.WARNING, logger="zmqexecutor")
    ex = make_executor(listen=LOOPBACK, insecure=True)
    assert any(r.levelno >= logging.WARNING for r in caplog.records), caplog.text
    host = worker_hosts(ex.address, "--insecure", name="insecure")
    assert pgids(ex, 2) == [host.pid] * 2, host_logs(host)


def run_cli(
    cmd: Sequence[str], env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=RESULT_TIMEOUT,
        env=worker_env(env),
        stdin=subprocess.DEVNULL,
        **kw,
    )


@pytest.mark.parametrize(
    "args",
    [
        (REMOTE,),
        (REMOTE, "--insecure"),
        ("--listen", "tcp://0.0.0.0:5556"),
        ("--listen", "tcp://0.0.0.0:5556", "--insecure"),
        ("tcp://127.0.0.1:5555",),
        ("--listen", "tcp://127.0.0.1:5556"),
    ],
    ids=" ".join,
)
def test_s06_worker_cli_refuses_tcp_without_token(args: tuple[str, ...]) -> None:
    """S-06: the worker CLI exits 2 with a message about the token, before connecting."""
    proc = run_cli([*WORKER_CMD, *args])
    assert proc.returncode == 2, proc.stderr
    assert "token" in proc.stderr, proc.stderr


def test_s06_worker_cli_without_curve_refused(tmp_path: Path) -> None:
    """S-06: the worker CLI, given a token, exits 2 saying libzmq lacks CURVE."""
    token_file = write_token_file(tmp_path / "keys" / "token", new_token())
    code = (
        "import sys, zmq\n"
        "real = zmq.has\n"
        "zmq.has = lambda c: False if c == 'curve' else real(c)\n"
        "from zmqexecutor.cli import main\n"
        f"sys.exit(main(['worker', {REMOTE!r}, '--token-file', {str(token_file)!r}]))\n"
    )
    proc = run_cli([sys.executable, "-c", code])
    assert proc.returncode == 2, proc.stderr
    assert "libzmq" in proc.stderr and "curve" in proc.stderr.lower(), proc.stderr


# ---------------------------------------------------------------------------- S-07


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("command", ["token", "keygen"])
def test_s07_token_command_creates_private_file(tmp_path: Path, command: str) -> None:
    """S-07: ``python -m zmqexecutor token PATH`` writes a fresh token 0600 in a new 0700
    directory (whatever the umask), prints the path and never the token, refuses to overwrite
    without --force."""
    from zmqexecutor._security import read_token_file

    path = tmp_path / "keys" / "token"
    cmd = [sys.executable, "-m", "zmqexecutor", command]
    proc = run_cli([*cmd, str(path)], umask=0)
    assert proc.returncode == 0, proc.stderr
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    token = read_token_file(path)
    assert token and token == path.read_text().strip()
    assert str(path) in proc.stdout + proc.stderr
    assert token not in proc.stdout + proc.stderr
    derive(token)  # a usable token

    again = run_cli([*cmd, str(path)], umask=0)
    assert again.returncode != 0
    assert "--force" in again.stdout + again.stderr
    assert read_token_file(path) == token, "overwritten without --force"

    forced = run_cli([*cmd, str(path), "--force"], umask=0)
    assert forced.returncode == 0, forced.stderr
    assert read_token_file(path) != token
    assert mode_of(path) == 0o600


def test_s07_token_command_default_path(tmp_path: Path) -> None:
    """S-07: without PATH the token goes to ~/.zmqexecutor/token (0600 in a 0700 directory)."""
    home = Path(os.environ["HOME"])
    proc = run_cli(TOKEN_CMD, umask=0)
    assert proc.returncode == 0, proc.stderr
    path = home / ".zmqexecutor" / "token"
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    assert str(path) in proc.stdout + proc.stderr
    assert path.read_text().strip() not in proc.stdout + proc.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_s07_token_file_others_can_read_is_refused(
    tmp_path: Path, mode: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S-07: a token file readable by group or others is refused, naming the file -- read
    directly, via token_file=, via $ZMQEXECUTOR_TOKEN_FILE and via the worker's --token-file."""
    from zmqexecutor import ConfigurationError, ZmqExecutor
    from zmqexecutor._security import read_token_file

    token = new_token()
    path = write_token_file(tmp_path / "keys" / "token", token, mode)
    with pytest.raises(ConfigurationError, match=re.escape(str(path))) as info:
        read_token_file(path)
    assert token not in str(info.value)
    with pytest.raises(ConfigurationError, match=re.escape(str(path))):
        ZmqExecutor(listen=LOOPBACK, token_file=str(path))
    monkeypatch.setenv("ZMQEXECUTOR_TOKEN_FILE", str(path))
    with pytest.raises(ConfigurationError, match=re.escape(str(path))):
        ZmqExecutor(listen=LOOPBACK)
    proc = run_cli([*WORKER_CMD, "tcp://127.0.0.1:5555", "--token-file", str(path)])
    assert proc.returncode == 2
    assert str(path) in proc.stderr
    assert token not in proc.stderr + proc.stdout


@pytest.mark.parametrize("content", ["", "\n", None], ids=["empty", "newline", "missing"])
def test_s07_empty_or_missing_token_file_is_fatal(
    tmp_path: Path, content: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S-07: an empty or missing token file is an error naming the file, with no fallback to
    another source (here a valid $ZMQEXECUTOR_TOKEN)."""
    from zmqexecutor import ConfigurationError, ZmqExecutor
    from zmqexecutor._security import read_token_file

    path = tmp_path / "keys" / "token"
    if content is not None:
        path.parent.mkdir(mode=0o700)
        path.write_text(content)
        path.chmod(0o600)
    with pytest.raises(ConfigurationError, match=re.escape(str(path))):
        read_token_file(path)
    monkeypatch.setenv("ZMQEXECUTOR_TOKEN", new_token())
    with pytest.raises(ConfigurationError, match=re.escape(str(path))):
        ZmqExecutor(listen=LOOPBACK, token_file=str(path))
    proc = run_cli([*WORKER_CMD, "tcp://127.0.0.1:5555", "--token-file", str(path)])
    assert proc.returncode == 2
    assert str(path) in proc.stderr


def test_s07_owner_only_token_file_is_accepted(tmp_path: Path) -> None:
    from zmqexecutor._security import read_token_file

    token = new_token()
    for mode in (0o600, 0o400):
        path = write_token_file(tmp_path / f"token-{mode:o}", token, mode)
        assert read_token_file(path) == token


def accepts(peers: Peers, ex: Any, token: str) -> bool:
    """Does ``ex``'s sink admit a client holding the keys derived from ``token``?"""
    keys = derive(token)
    peer = peers.connect(
        zmq.PUSH,
        ex.address,
        keys=(keys.client_public, keys.client_secret),
        server_key=keys.server_public,
    )
    return peer.handshake() == "HANDSHAKE_SUCCEEDED"


@pytest.mark.parametrize(
    ("winner", "loser"),
    [
        ("token=", "token_file="),
        ("token=", "ZMQEXECUTOR_TOKEN"),
        ("token_file=", "ZMQEXECUTOR_TOKEN"),
        ("ZMQEXECUTOR_TOKEN", "ZMQEXECUTOR_TOKEN_FILE"),
        ("ZMQEXECUTOR_TOKEN_FILE", None),
    ],
)
def test_s07_token_source_precedence(
    winner: str,
    loser: str | None,
    make_executor: Callable[..., Any],
    peers: Peers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S-07: token= > token_file= > $ZMQEXECUTOR_TOKEN > $ZMQEXECUTOR_TOKEN_FILE: the executor
    admits the keys of the winning source's token, and not the other's."""
    tokens = {winner: new_token()}
    if loser is not None:
        tokens[loser] = new_token()
    kwargs: dict[str, Any] = {}
    for source, token in tokens.items():
        if source == "token=":
            kwargs["token"] = token
        elif source == "token_file=":
            kwargs["token_file"] = str(write_token_file(tmp_path / "arg" / "token", token))
        elif source == "ZMQEXECUTOR_TOKEN":
            monkeypatch.setenv(source, token)
        else:
            monkeypatch.setenv(source, str(write_token_file(tmp_path / "env" / "token", token)))
    ex = make_executor(listen=LOOPBACK, **kwargs)
    assert accepts(peers, ex, tokens[winner])
    if loser is not None:
        assert not accepts(peers, ex, tokens[loser])
    assert not accepts(peers, ex, new_token())


@pytest.mark.timeout(60)
def test_s07_worker_token_sources(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
) -> None:
    """S-07: a worker host takes its token from --token-file, from $ZMQEXECUTOR_TOKEN_FILE or
    from $ZMQEXECUTOR_TOKEN, and registers with that token's executor."""
    token = new_token()
    path = write_token_file(tmp_path / "keys" / "token", token)
    ex = make_executor(listen=LOOPBACK, token=token)
    hosts = [
        worker_hosts(ex.address, "--token-file", str(path), name="flag"),
        worker_hosts(ex.address, name="envfile", env={"ZMQEXECUTOR_TOKEN_FILE": str(path)}),
        worker_hosts(ex.address, name="env", token=token),
    ]
    # three tasks that wait for each other: each host runs one
    ran = {os.getpgid(pid) for pid in rendezvous_pids(ex, 3, tmp_path)}
    assert ran == {h.pid for h in hosts}, host_logs(*hosts)


# ---------------------------------------------------------------------------- S-08


@pytest.mark.timeout(150)
def test_s08_secrets_never_logged(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S-08: with DEBUG logging everywhere, through success, task failure, a wrong-token worker
    and refused configurations, neither the token nor the derived secret keys (Z85, hex,
    base64) appear in logs, exception messages, repr(executor), or any worker process's
    command line when the token comes from a file."""
    from zmqexecutor import ConfigurationError, ZmqExecutor
    from zmqexecutor._security import read_token_file

    caplog.set_level(logging.DEBUG)
    token, other = new_token(), new_token()
    token_file = write_token_file(tmp_path / "keys" / "token", token)
    texts: dict[str, str] = {}

    # success and failure, with a local worker process and a worker host (--token-file)
    ex = make_executor(listen=LOOPBACK, token_file=str(token_file), max_workers=1)
    good = worker_hosts(
        ex.address, "--token-file", str(token_file), "--log-level", "DEBUG", name="good"
    )
    bad = worker_hosts(ex.address, "--log-level", "DEBUG", name="bad", token=other)
    pids = rendezvous_pids(ex, 2, tmp_path)  # one task on each worker process
    assert {os.getpgid(p) for p in pids} >= {good.pid}, host_logs(good)
    failed = [ex.submit(cc.raise_error, RuntimeError, "boom") for _ in range(4)]
    for i, fut in enumerate(failed):
        exc = fut.exception(timeout=RESULT_TIMEOUT)
        texts[f"task exception {i}"] = f"{exc!s} {exc!r} {exc.__cause__!s}"
    wait_until(
        lambda: len(bad.processes()) >= 2 or bad.proc.poll() is not None,
        what="the wrong-token host's worker process to start",
    )
    # The wrong-token host never registered: only the two processes that ran the
    # rendezvous (the local worker and the good host's) ever did, whether or not it has
    # exited by now.
    assert holds_for(lambda: registered_pids(ex) <= pids, 1.0), host_logs(bad)
    assert joined_pids(caplog) <= pids, host_logs(bad)
    texts["repr(executor)"] = repr(ex)
    for pid in good.processes() | descendants(os.getpid()):
        texts[f"cmdline of {pid}"] = cmdline(pid)

    # refused configurations that had the token in hand
    world_readable = write_token_file(tmp_path / "open" / "token", token, 0o644)
    with pytest.raises(ConfigurationError) as info:
        read_token_file(world_readable)
    texts["read_token_file error"] = f"{info.value!s} {info.value!r}"
    with pytest.raises(ConfigurationError) as info:
        ZmqExecutor(listen=LOOPBACK, token_file=str(world_readable))
    texts["token_file= error"] = f"{info.value!s} {info.value!r}"
    cli = run_cli([*WORKER_CMD, "tcp://127.0.0.1:5555", "--token-file", str(world_readable)])
    texts["worker CLI refusal"] = cli.stdout + cli.stderr
    with monkeypatch.context() as m:
        without_curve(m)
        with pytest.raises(ConfigurationError) as info:
            ZmqExecutor(listen=LOOPBACK, token=token)
        texts["no-CURVE error"] = f"{info.value!s} {info.value!r}"

    ex.shutdown(wait=True)
    good.stop()
    bad.stop()
    captured = capfd.readouterr()
    texts["executor log"] = caplog.text
    texts["local worker output"] = captured.out + captured.err
    texts["good host log"] = good.log()
    texts["bad host log"] = bad.log()
    for secret in secret_forms(token) + secret_forms(other):
        for where, text in texts.items():
            assert secret not in text, f"a secret appears in the {where}"


@pytest.mark.timeout(60)
def test_s08_token_on_command_line_warns_and_is_not_echoed(
    make_executor: Callable[..., Any], worker_hosts: Callable[..., WorkerHost]
) -> None:
    """S-08: --token works but warns that the command line is visible to other users; the
    worker's log never repeats the token."""
    token = new_token()
    ex = make_executor(listen=LOOPBACK, token=token)
    host = worker_hosts(ex.address, "--token", token, "--log-level", "DEBUG", name="argv")
    assert pgids(ex, 2) == [host.pid] * 2, host_logs(host)
    host.stop()
    log = host.log()
    assert any("WARNING" in line and "--token" in line for line in log.splitlines()), log
    for secret in secret_forms(token):
        assert secret not in log


def test_s08_host_settings_repr_hides_the_token() -> None:
    """S-08: a worker host's settings record (what run_worker hands its supervisor) never
    shows its token in its repr or str, which is what a log line or a traceback would print."""
    from zmqexecutor._host_settings import HostSettings

    token = new_token()
    settings = HostSettings(processes=1, sink="tcp://127.0.0.1:5555", token=token)
    assert settings.token == token
    for secret in secret_forms(token):
        assert secret not in repr(settings) and secret not in str(settings)


# ---------------------------------------------------------------------------- BI-07


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_bi07_result_and_task_too_large(
    make_executor: Callable[..., Any], tmp_path: Path, kind: type
) -> None:
    """BI-07: with max_message_size=1 MiB a result of 1 MiB + 1 bytes fails its future with
    ResultTooLargeError (made by the worker, which keeps serving); arguments of 1 MiB + 1 fail
    the future with TaskTooLargeError and nothing is sent. In-band (bytes) and out-of-band
    (bytearray, pickle protocol 5 buffers) payloads alike."""
    from zmqexecutor import ResultTooLargeError, TaskTooLargeError

    ex = make_executor(max_workers=1, max_message_size=MiB)
    pid = ex.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    assert len(ex.submit(kind, MiB - 64 * 1024).result(timeout=RESULT_TIMEOUT)) == MiB - 65536

    exc = ex.submit(kind, MiB + 1).exception(timeout=RESULT_TIMEOUT)
    assert isinstance(exc, ResultTooLargeError), repr(exc)
    assert re.search(r"1048576|1(\.0)? ?MiB", str(exc)), f"the limit is not named: {exc}"
    assert ex.submit(os.getpid).result(timeout=RESULT_TIMEOUT) == pid

    marker = tmp_path / "ran"
    exc = ex.submit(cc.touch, str(marker), kind(MiB + 1)).exception(timeout=RESULT_TIMEOUT)
    assert isinstance(exc, TaskTooLargeError), repr(exc)
    assert ex.submit(os.getpid).result(timeout=RESULT_TIMEOUT) == pid  # FIFO: it came after
    assert not marker.exists(), "the oversized task was sent and ran"


# ---------------------------------------------------------------------------- BI-09, BI-10


def _hdr(kind: int, session: bytes = proto.NO_SESSION, count: int = 0) -> bytes:
    return proto.HEADER.pack(proto.MAGIC, proto.PROTOCOL_VERSION, kind, 0, session, count)


def _hdr_v(version: int, kind: int) -> bytes:
    return proto.HEADER.pack(proto.MAGIC, version, kind, 0, proto.NO_SESSION, 0)


SENDER = b"0123456789abcdef"  # a worker id (16 bytes)


def _result_index(task_id: int, status: int, length: int, buffers: int = 0) -> bytes:
    return SENDER + proto._RESULT_RECORD.pack(task_id, status, length, buffers, 0)


UNKNOWN_TASK = 10**9
MALFORMED: dict[str, Callable[[bytes], list[bytes]]] = {
    "one empty frame": lambda s: [b""],
    "three empty frames": lambda s: [b"", b"", b""],
    "one garbage frame": lambda s: [b"\x00" * 7],
    "header alone": lambda s: [_hdr(Kind.RESULTS, s, 1)],
    "HELLO header alone": lambda s: [_hdr(Kind.HELLO)],
    "fifty frames": lambda s: [_hdr(Kind.RESULTS, s, 1)] + [b""] * 49,
    "fifty-frame HELLO": lambda s: [_hdr(Kind.HELLO), b"{}"] + [b"{}"] * 48,
    "short header": lambda s: [_hdr(Kind.HELLO)[:-1], b"{}"],
    "long header": lambda s: [_hdr(Kind.HELLO) + b"\x00", b"{}"],
    "bad magic": lambda s: [b"ZMQY" + _hdr(Kind.HELLO)[4:], b"{}"],
    "unknown kind": lambda s: [_hdr(99, s), b"{}"],
    "bad JSON": lambda s: [_hdr(Kind.HELLO), b"{not json"],
    "JSON not an object": lambda s: [_hdr(Kind.HELLO), b"[1, 2]"],
    "JSON not UTF-8": lambda s: [_hdr(Kind.HELLO), b"\xff\xfe\xfa"],
    "RESULTS index without sender": lambda s: [_hdr(Kind.RESULTS, s, 1), b"\x00" * 5, b""],
    "RESULTS partial record": lambda s: [_hdr(Kind.RESULTS, s, 1), SENDER + b"\x00" * 5, b""],
    "RESULTS length > payload": lambda s: [
        _hdr(Kind.RESULTS, s, 1),
        _result_index(UNKNOWN_TASK, 0, 100),
        b"x" * 10,
    ],
    "RESULTS length < payload": lambda s: [
        _hdr(Kind.RESULTS, s, 1),
        _result_index(UNKNOWN_TASK, 0, 10),
        b"x" * 100,
    ],
    "RESULTS missing buffers": lambda s: [
        _hdr(Kind.RESULTS, s, 1),
        _result_index(UNKNOWN_TASK, 0, 1, buffers=2),
        b"x",
    ],
    "RESULTS unknown status": lambda s: [
        _hdr(Kind.RESULTS, s, 1),
        _result_index(UNKNOWN_TASK, 9, 1),
        b"x",
    ],
    "RESULTS of another session": lambda s: forged_results(
        os.urandom(8), SENDER.decode(), UNKNOWN_TASK, b"x"
    ),
    "HELLO with mistyped fields": lambda s: forged_hello("typo", "tcp://127.0.0.1:1").forge(
        slots="many", pid="x", host=7, host_id=[]
    ),
    "READY of another session": lambda s: msg.Ready(id=FORGED_ID).encode(os.urandom(8)),
    "HELLO of another version, body not JSON": lambda s: [_hdr_v(99, Kind.HELLO), b"\xbd"],
    "HELLO of another version, no body": lambda s: [_hdr_v(99, Kind.HELLO)],
    "HELLO of another version, body not an object": lambda s: [_hdr_v(99, Kind.HELLO), b"7"],
}


def sys_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(MALFORMED))
def test_bi09_truncated_and_wrong_frame_count(
    case: str, make_executor: Callable[..., Any], peers: Peers
) -> None:
    """BI-09/BI-10: an authenticated peer's malformed message is dropped and counted in
    protocol_errors; the executor keeps working."""
    token = new_token()
    ex = make_executor(listen=LOOPBACK, token=token, max_workers=1)
    assert ex.submit(pow, 2, 5).result(timeout=RESULT_TIMEOUT) == 32
    before = ex.stats().protocol_errors
    peer = peers.authenticated(ex.address, token)
    peer.send(MALFORMED[case](session_of(ex)))  # malformed, but of this very session
    wait_until(
        lambda: ex.stats().protocol_errors > before,
        what=f"the {case!r} message to be counted as a protocol error",
    )
    assert dispatcher_alive(ex)
    assert ex.submit(pow, 2, 10).result(timeout=RESULT_TIMEOUT) == 1024
    assert forged_id("typo") not in registered_ids(ex)
    assert_shuts_down(ex)


#: what arrives on the sink: every field of every one, with every value its check refuses
#: (from the records of _messages.py); those about a worker are of the live session
SINK_RECORDS = [msg.Hello, msg.Heartbeat, msg.Output, *msg.ABOUT_A_WORKER.values()]


def bad_sink_messages(session: bytes) -> list[list[bytes]]:
    messages = []
    for record in SINK_RECORDS:
        valid = example(record)
        if isinstance(valid, msg.Hello):
            valid = forged_hello("typo", "tcp://127.0.0.1:1")
        in_session = session if isinstance(valid, msg.AboutWorker) else proto.NO_SESSION
        for f in dataclasses.fields(valid):
            messages += [
                valid.forge(in_session, **{f.name: bad}) for bad in msg.check_of(f).invalid()
            ]
    return messages


@pytest.mark.timeout(60)
def test_bi09_every_bad_field_is_dropped_and_counted(
    make_executor: Callable[..., Any], peers: Peers
) -> None:
    """BI-09: a message that reaches the sink with any field of the wrong type, range or
    length (each value each field's check refuses) is dropped and counted, one protocol
    error each; nothing registers, and the executor keeps working."""
    token = new_token()
    ex = make_executor(listen=LOOPBACK, token=token, max_workers=1)
    assert ex.submit(pow, 2, 5).result(timeout=RESULT_TIMEOUT) == 32
    before = ex.stats().protocol_errors
    messages = bad_sink_messages(session_of(ex))
    peer = peers.authenticated(ex.address, token)
    for message in messages:
        peer.send(message)
    wait_until(
        lambda: ex.stats().protocol_errors >= before + len(messages),
        what=lambda: f"{len(messages)} protocol errors, counted {ex.stats().protocol_errors}",
    )
    assert ex.submit(pow, 2, 10).result(timeout=RESULT_TIMEOUT) == 1024
    assert ex.stats().protocol_errors == before + len(messages)
    assert forged_id("typo") not in registered_ids(ex)
    assert_shuts_down(ex)


@pytest.mark.timeout(60)
def test_bi10_oversized_frame_and_frame_flood(
    make_executor: Callable[..., Any], peers: Peers
) -> None:
    """BI-10: a frame over max_message_size makes libzmq drop the connection; a message of
    10 000 small frames is dropped by the frame-count check and counted; legit work goes on."""
    token = new_token()
    ex = make_executor(listen=LOOPBACK, token=token, max_workers=1, max_message_size=MiB)
    assert ex.submit(pow, 2, 5).result(timeout=RESULT_TIMEOUT) == 32

    big = peers.authenticated(ex.address, token)
    big.send([_hdr(Kind.HELLO), b"x" * (2 * MiB)])
    big.wait_event("DISCONNECTED")
    assert ex.submit(pow, 2, 6).result(timeout=RESULT_TIMEOUT) == 64

    before = ex.stats().protocol_errors
    flood = peers.authenticated(ex.address, token)
    flood.send([_hdr(Kind.RESULTS, session_of(ex), 1)] + [b"y" * 100] * 10_000)
    wait_until(lambda: ex.stats().protocol_errors > before, what="the flood to be counted")
    assert dispatcher_alive(ex)
    assert ex.submit(pow, 2, 10).result(timeout=RESULT_TIMEOUT) == 1024


# ---------------------------------------------------------------------------- BI-13


def _is_welcome_or_tasks(message: list[bytes]) -> bool:
    return len(message[0]) > 5 and message[0][5] in (Kind.WELCOME, Kind.TASKS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mismatch", ["protocol", "python"])
def test_bi13_protocol_or_python_version_mismatch(
    mismatch: str,
    make_executor: Callable[..., Any],
    peers: Peers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BI-13: a (fake, authenticated) worker announcing protocol version 99, or another Python
    minor version, is refused: logged naming both versions, never welcomed nor given a task,
    and the executor stays healthy."""
    from zmqexecutor._protocol import python_version

    caplog.set_level(logging.INFO, logger="zmqexecutor")
    token = new_token()
    keys = derive(token)
    ex = make_executor(listen=LOOPBACK, token=token, max_workers=1)
    # an inbox the executor could really reach (CURVE server with the derived server keys)
    inbox = peers.bind(zmq.PULL, server_keys=(keys.server_public, keys.server_secret))
    hello = forged_hello("future-worker", inbox.endpoint)
    if mismatch == "protocol":
        header = proto.HEADER.pack(proto.MAGIC, 99, Kind.HELLO, 0, proto.NO_SESSION, 0)
        theirs, ours = "99", str(proto.PROTOCOL_VERSION)
    else:
        header = proto.header(Kind.HELLO)
        hello = dataclasses.replace(hello, python="2.7")
        theirs, ours = "2.7", python_version()
    frames = [header, hello.encode()[1]]
    sender = peers.authenticated(ex.address, token)
    for _ in range(3):  # a real worker repeats its HELLO
        sender.send(frames)

    def refusal() -> str | None:
        for r in list(caplog.records):
            msg = r.getMessage()
            if r.levelno >= logging.WARNING and theirs in msg and ours in msg:
                return msg
        return None

    wait_until(lambda: refusal() is not None, what=lambda: f"a refusal log\n{caplog.text}")
    assert ex.submit(pow, 3, 3).result(timeout=RESULT_TIMEOUT) == 27
    assert holds_for(lambda: hello.id not in registered_ids(ex), 1.0)
    assert not [m for m in inbox.received() if _is_welcome_or_tasks(m)]
    assert dispatcher_alive(ex)


def _cloudpickle_major() -> str:
    return str(cloudpickle.__version__).split(".")[0]


#: sitecustomize.py for a worker host that differs from us: (code, theirs, ours)
OTHER_VERSIONS = {
    "protocol": (
        "import zmqexecutor._defaults as d, zmqexecutor._protocol as p\n"
        "d.PROTOCOL_VERSION = p.PROTOCOL_VERSION = 99\n",
        "99",
        str(proto.PROTOCOL_VERSION),
    ),
    "python": (
        "import zmqexecutor._protocol as w\nw.python_version = lambda: '3.99'\n",
        "3.99",
        sys_python(),
    ),
    "cloudpickle": (
        "import zmqexecutor._protocol as w\nw.cloudpickle_major = lambda: '99'\n",
        "99",
        _cloudpickle_major(),
    ),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mismatch", list(OTHER_VERSIONS))
def test_bi13_worker_host_with_another_version_exits_naming_both(
    mismatch: str,
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BI-13: a real worker host with another protocol version, Python minor version or
    cloudpickle major version (patched in at interpreter start by a sitecustomize) is refused:
    it exits non-zero with a message naming both versions, and runs no task; the executor
    logs the refusal and keeps serving."""
    code, theirs, ours = OTHER_VERSIONS[mismatch]
    caplog.set_level(logging.INFO, logger="zmqexecutor")
    patch_dir = tmp_path / "patch"
    patch_dir.mkdir()
    (patch_dir / "sitecustomize.py").write_text(code)
    token = new_token()
    ex = make_executor(listen=LOOPBACK, token=token, max_workers=1)
    env = {"PYTHONPATH": os.pathsep.join([str(patch_dir), str(TESTS_DIR)])}
    host = worker_hosts(ex.address, name="other", token=token, env=env)
    wait_until(lambda: host.proc.poll() is not None, what=lambda: "the host to exit\n" + host.log())
    assert host.proc.returncode != 0, host.log()

    def names_both(text: str) -> bool:
        return any(
            re.search(rf"(?<![\d.]){re.escape(theirs)}(?![\d.])", line)
            and re.search(rf"(?<![\d.]){re.escape(ours)}(?![\d.])", line)
            for line in text.splitlines()
        )

    assert names_both(host.log()), host.log()
    assert names_both(caplog.text), caplog.text
    assert set(pgids(ex, 4)) == {os.getpgid(0)}  # the executor's local worker ran them
    assert not registered_pids(ex) & host.processes()


# ---------------------------------------------------------------------------- BI-14


@pytest.mark.timeout(90)
def test_bi14_replayed_result_resolves_nothing_twice(
    make_executor: Callable[..., Any],
    gates: Gates,
    peers: Peers,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BI-14: an authenticated peer replays a RESULTS message for a task that is already
    resolved (and one with a canary pickle): nothing is resolved twice, nothing is unpickled,
    no InvalidStateError, and the discard is counted or logged."""
    caplog.set_level(logging.DEBUG, logger="zmqexecutor")
    token = new_token()
    canary = tmp_path / "canary"
    ex = make_executor(listen=LOOPBACK, token=token, max_workers=1)
    gate = gates("first")
    fut = ex.submit(cc.block_until, str(gate.path), "original", str(gate.started))
    gate.wait_started()
    task_id, sender = held_task(ex)
    gate.open()
    assert fut.result(timeout=RESULT_TIMEOUT) == "original"
    resolutions: list[Any] = []
    fut.add_done_callback(resolutions.append)  # runs once, now
    wait_until(lambda: ex.stats().running == 0, what="the task to be forgotten")

    before = dropped(ex)
    peer = peers.authenticated(ex.address, token)
    session = session_of(ex)  # a replay carries the session id
    peer.send(forged_results(session, sender, task_id, pickle.dumps("replayed", protocol=5)))
    peer.send(forged_results(session, sender, task_id, bait(canary)))

    def discarded() -> bool:
        if dropped(ex) >= before + 2:
            return True
        logged = [
            r
            for r in list(caplog.records)
            if "discard" in r.getMessage().lower() and str(task_id) in r.getMessage()
        ]
        return len(logged) >= 2

    wait_until(discarded, what=lambda: f"both replays to be discarded\n{caplog.text[-3000:]}")
    assert fut.result() == "original"
    assert len(resolutions) == 1
    assert not canary.exists(), "a replayed result was unpickled"
    assert "InvalidStateError" not in caplog.text
    assert dispatcher_alive(ex)
    assert ex.submit(pow, 2, 3).result(timeout=RESULT_TIMEOUT) == 8


@pytest.mark.timeout(90)
def test_bi14_replayed_task_runs_once(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    gates: Gates,
    peers: Peers,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BI-14: an authenticated peer re-sends, to the same worker process, the exact TASKS
    frames of a task it already ran (same session, id, callable and arguments): it does not
    run a second time. A fresh task sent after it on the same connection proves the replay was
    processed first."""
    from zmqexecutor._serialize import dump_args

    caplog.set_level(logging.INFO, logger="zmqexecutor")
    token = new_token()
    marker = tmp_path / "exec.marker"
    ex = make_executor(listen=LOOPBACK, token=token)
    host = worker_hosts(ex.address, name="single", token=token)
    ((worker_pid, inbox),) = inboxes_of(caplog, host, 1).items()

    gate = gates("orig")
    fut = ex.submit(cc.record_and_block, str(marker), str(gate.path), "orig")
    wait_until(lambda: len(cc.read_marker(marker)) == 1, what="the task to start")
    task_id, _ = held_task(ex)
    # The frames the executor sent: the same callable and arguments pickle to the same bytes
    # (the callable's digest is content-addressed).
    digest, fn_bytes = ex._pickle_function(cc.record_and_block)
    payload, _ = dump_args((str(marker), str(gate.path), "orig"), {})
    gate.open()
    assert fut.result(timeout=RESULT_TIMEOUT) == "orig"

    session = session_of(ex)  # a replay carries the session id
    (worker_id,) = [w.worker_id.encode() for w in ex.stats().workers if w.pid == worker_pid]
    replay = proto.encode_tasks(
        session, [(digest, fn_bytes)], [(task_id, digest, payload, [])], worker_id
    )
    barrier_args, barrier_bufs = dump_args((str(marker), str(gate.path), "barrier"), {})
    barrier = proto.encode_tasks(
        session, [(digest, fn_bytes)], [(10**12, digest, barrier_args, barrier_bufs)], worker_id
    )
    peer = peers.authenticated(inbox, token)
    peer.send(replay)
    peer.send(barrier)
    wait_until(
        lambda: any(label == "barrier" for *_, label in cc.read_marker(marker)),
        what=lambda: "the barrier task to run" + host_logs(host),
    )
    runs = [label for *_, label in cc.read_marker(marker)]
    assert runs.count("orig") == 1, f"the replayed task ran again: {runs}"
    assert {pid for pid, *_ in cc.read_marker(marker)} == {worker_pid}
    assert pgids(ex, 2) == [host.pid] * 2


@pytest.mark.timeout(90)
def test_tasks_for_another_worker_process_are_dropped(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    peers: Peers,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """TASKS name the worker process they are for: a process that took over a dead one's
    port (fixed inbox ports) must not run what was sent to the dead one. A TASKS message for
    another worker id, else valid, is dropped; one for this worker id then runs."""
    from zmqexecutor._serialize import dump_args

    caplog.set_level(logging.INFO, logger="zmqexecutor")
    token = new_token()
    marker = tmp_path / "exec.marker"
    ex = make_executor(listen=LOOPBACK, token=token)
    host = worker_hosts(ex.address, name="single", token=token)
    ((worker_pid, inbox),) = inboxes_of(caplog, host, 1).items()
    (worker_id,) = [w.worker_id.encode() for w in ex.stats().workers if w.pid == worker_pid]
    session = session_of(ex)  # forged tasks carry the session id
    digest, fn_bytes = ex._pickle_function(cc.record)

    def tasks(task_id: int, label: str, recipient: bytes) -> list[Any]:
        args, bufs = dump_args((str(marker), label), {})
        return proto.encode_tasks(
            session, [(digest, fn_bytes)], [(task_id, digest, args, bufs)], recipient
        )

    peer = peers.authenticated(inbox, token)
    peer.send(tasks(10**12, "not-mine", b"f" * 16))
    peer.send(tasks(10**12 + 1, "mine", worker_id))
    wait_until(
        lambda: any(label == "mine" for *_, label in cc.read_marker(marker)),
        what=lambda: "the task for this worker process to run" + host_logs(host),
    )
    assert [label for *_, label in cc.read_marker(marker)] == ["mine"]
    assert "TASKS for another worker process" in host.log()


@pytest.mark.timeout(90)
def test_bi14_misdirected_result_is_rejected(
    make_executor: Callable[..., Any],
    gates: Gates,
    peers: Peers,
    tmp_path: Path,
) -> None:
    """BI-14 (misdirection): a result for a running task that claims to come from a worker the
    task was not given to is discarded unread (canary); the real result resolves the future."""
    token = new_token()
    canary = tmp_path / "canary"
    ex = make_executor(listen=LOOPBACK, token=token, max_workers=1)
    gate = gates("held")
    fut = ex.submit(cc.block_until, str(gate.path), "genuine", str(gate.started))
    gate.wait_started()
    task_id, owner_id = held_task(ex)
    other = "f" * 16 if owner_id != "f" * 16 else "e" * 16
    before = dropped(ex)
    peer = peers.authenticated(ex.address, token)
    # forging a result of this session needs its id (nothing public tells it)
    peer.send(forged_results(session_of(ex), other, task_id, bait(canary)))
    wait_until(
        lambda: dropped(ex) > before,
        what="the misdirected result to be discarded",
    )
    assert not fut.done(), f"a result from the wrong worker resolved the future: {fut!r}"
    gate.open()
    assert fut.result(timeout=RESULT_TIMEOUT) == "genuine"
    assert not canary.exists()
