"""Fixed ports for firewalls and containers: inbox port ranges, port mapping in
``--advertise``, and the executor's sink port with ``workers=``.

The ports a worker process really listens on are read from ``/proc/PID/net/tcp``: the
executor's ``stats()`` names the worker processes (pids) but not their inboxes.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    RESULT_TIMEOUT,
    WorkerHost,
    free_tcp_port,
    host_logs,
    rendezvous_pids,
    wait_until,
)

from zmqexecutor import _messages as msg
from zmqexecutor import _protocol as proto
from zmqexecutor._net import (
    Endpoint,
    PortRange,
    check_port_plan,
    parse_advertise,
    parse_listen,
    parse_port_range,
    port_candidates,
)
from zmqexecutor._security import new_token

WORKER = [sys.executable, "-m", "zmqexecutor", "worker"]
HB_ARGS = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5"]
#: what every worker host here runs with, after its own arguments
HOST_ARGS = ["--insecure", *HB_ARGS]
HB: dict[str, Any] = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.5}
#: below Linux's ephemeral range (32768-60999), so no outgoing connection takes them meanwhile
RANGE_LOW, RANGE_HIGH = 20000, 32000


# ---------------------------------------------------------------------------- helpers


def free_port_range(count: int) -> PortRange:
    """``count`` consecutive ports on 127.0.0.1 that were all free a moment ago."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(RANGE_LOW, RANGE_HIGH - count)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(first, first + count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return PortRange(first, first + count - 1)
    pytest.fail(f"found no {count} consecutive free ports in {RANGE_LOW}-{RANGE_HIGH}")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def tcp_sockets(pid: int) -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of each IPv4/IPv6 TCP socket process ``pid`` holds;
    state is ``/proc/net/tcp``'s hex code: ``0A`` listening, ``01`` established."""
    try:
        inodes = _socket_inodes(pid)
    except FileNotFoundError:
        return []
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    local, remote = fields[1], fields[2]
                    found.append(
                        (
                            int(local.rsplit(":", 1)[1], 16),
                            int(remote.rsplit(":", 1)[1], 16),
                            fields[3],
                        )
                    )
    return found


def listening_ports(pid: int) -> set[int]:
    return {local for local, _, state in tcp_sockets(pid) if state == "0A"}


def inbox_port(pid: int) -> int:
    """The one port worker process ``pid`` listens on: its inbox."""
    ports = listening_ports(pid)
    assert len(ports) == 1, f"worker process {pid} listens on {ports}, expected its inbox only"
    return ports.pop()


def worker_pids(ex: Any) -> set[int]:
    return {w.pid for w in ex.stats().workers}


# ---------------------------------------------------------------------------- parsing (units)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("6000", PortRange(6000, 6000)), ("6000-6015", PortRange(6000, 6015)), (" 1-65535", None)],
)
def test_parse_port_range(text: str, expected: PortRange | None) -> None:
    ports = parse_port_range(text)
    assert ports == (expected or PortRange(1, 65535))
    assert len(PortRange(6000, 6015)) == 16 and list(PortRange(7, 9)) == [7, 8, 9]
    assert str(PortRange(6000, 6015)) == "6000-6015" and str(PortRange(6000, 6000)) == "6000"


@pytest.mark.parametrize("text", ["", "abc", "6000-", "-6000", "6015-6000", "0", "6000-70000"])
def test_bad_port_range_says_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape("FIRST-LAST, e.g. 6000 or 6000-6015")):
        parse_port_range(text, "--inbox-ports")


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("tcp://10.0.0.5:6000-6015", (Endpoint("tcp", "10.0.0.5", "*"), PortRange(6000, 6015))),
        ("tcp://*:6000", (Endpoint("tcp", "*", "*"), PortRange(6000, 6000))),
        ("tcp://[::1]:6000-6001", (Endpoint("tcp", "::1", "*"), PortRange(6000, 6001))),
        ("tcp://10.0.0.5:*", (Endpoint("tcp", "10.0.0.5", "*"), None)),
        ("tcp://10.0.0.5:0", (Endpoint("tcp", "10.0.0.5", "0"), None)),
    ],
)
def test_parse_listen_with_port_range(
    endpoint: str, expected: tuple[Endpoint, PortRange | None]
) -> None:
    assert parse_listen(endpoint) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", ("203.0.113.7", None)),
        ("worker-7.example.org", ("worker-7.example.org", None)),
        ("203.0.113.7:7000-7015", ("203.0.113.7", PortRange(7000, 7015))),
        ("203.0.113.7:7000", ("203.0.113.7", PortRange(7000, 7000))),
        ("2001:db8::7", ("2001:db8::7", None)),
        ("[2001:db8::7]:7000-7015", ("2001:db8::7", PortRange(7000, 7015))),
    ],
)
def test_advertise_mapping_parsed(text: str, expected: tuple[str, PortRange | None]) -> None:
    assert parse_advertise(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host:x", "FIRST-LAST"),
        ("host:7015-7000", "FIRST-LAST"),
        (":7000", "HOST or HOST:FIRST-LAST"),
        ("[2001:db8::7", r"\[IPV6\]:FIRST-LAST"),
    ],
)
def test_bad_advertise_says_the_expected_form(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_advertise(text)


def test_port_plan_checks() -> None:
    check_port_plan(PortRange(6000, 6000), 1, None)
    check_port_plan(PortRange(6000, 6015), 16, PortRange(7000, 7015))
    check_port_plan(None, 64, None)
    with pytest.raises(ValueError, match=r"has 2 port.* for 3 worker processes.*6000-6002"):
        check_port_plan(PortRange(6000, 6001), 3, None)
    with pytest.raises(ValueError, match="same length"):
        check_port_plan(PortRange(6000, 6015), 2, PortRange(7000, 7003))
    with pytest.raises(ValueError, match="ephemeral ports: give the ports"):
        check_port_plan(None, 2, PortRange(7000, 7003))


def test_port_candidates_prefer_ports_unused_longest() -> None:
    ports = PortRange(6000, 6003)
    # fresh: in order; a live process's port comes last (it may have bound another)
    assert port_candidates(ports, set(), {}) == [6000, 6001, 6002, 6003]
    assert port_candidates(ports, {6000}, {6000: 1.0}) == [6001, 6002, 6003, 6000]
    # 6001's process died just now: its port is tried after the never-used spare ones
    assert port_candidates(ports, {6000}, {6000: 1.0, 6001: 2.0}) == [6002, 6003, 6001, 6000]
    assert port_candidates(ports, {6000, 6002, 6003}, {p: 1.0 for p in ports})[0] == 6001


# ---------------------------------------------------------------------------- the command line


def test_range_too_small_exits_2_with_the_reason() -> None:
    ports = free_port_range(2)
    proc = subprocess.run(
        [*WORKER, f"tcp://127.0.0.1:{free_tcp_port()}", "--listen",
         f"tcp://127.0.0.1:{ports}", "--processes", "3", "--insecure"],
        capture_output=True, text=True, timeout=RESULT_TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"inbox port range {ports} has 2 port(s) for 3 worker processes" in proc.stderr
    assert "widen the range" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("EXEC", "--inbox-ports", "6000-6001", "-n", "3"), "has 2 port(s) for 3"),
        (("EXEC", "--listen", "tcp://127.0.0.1:6000", "-n", "2"), "has 1 port(s) for 2"),
        (("EXEC", "--inbox-ports", "6001-6000", "-n", "1"), "expected PORT or FIRST-LAST"),
        (("EXEC", "--listen", "tcp://127.0.0.1:6000-x"), "is not PORT or FIRST-LAST"),
        (("EXEC", "--listen", "tcp://127.0.0.1:6000-6001", "--inbox-ports", "6000-6001"),
         "given twice"),
        (("--listen", "tcp://127.0.0.1:6000-6001"), "give the worker processes' ports with"),
        (("EXEC", "--inbox-ports", "6000-6003", "-n", "1", "--advertise", "h:7000-7001"),
         "same length"),
        (("EXEC", "-n", "1", "--advertise", "h:7000"), "ephemeral ports"),
    ],
)  # fmt: skip
def test_bad_port_arguments_exit_2(args: tuple[str, ...], message: str) -> None:
    executor = f"tcp://127.0.0.1:{free_tcp_port()}"
    argv = [executor if a == "EXEC" else a for a in args]
    proc = subprocess.run(
        [*WORKER, *argv, "--insecure"], capture_output=True, text=True, timeout=RESULT_TIMEOUT
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


# ---------------------------------------------------------------------------- real hosts


@pytest.mark.timeout(90)
def test_cli_host_binds_inboxes_in_the_range(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
) -> None:
    ports = free_port_range(2)
    ex = make_executor(listen="tcp://127.0.0.1:*", insecure=True, **HB)
    host = worker_hosts(ex.address, "--listen", f"tcp://127.0.0.1:{ports}", *HOST_ARGS, processes=2)
    pids = rendezvous_pids(ex, 2, tmp_path)  # both worker processes run tasks
    assert {inbox_port(pid) for pid in pids} == set(ports), host_logs(host)
    assert pids == worker_pids(ex)


@pytest.mark.timeout(90)
def test_single_port_with_one_process(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
) -> None:
    port = free_port_range(1).first
    ex = make_executor(listen="tcp://127.0.0.1:*", insecure=True, **HB)
    host = worker_hosts(ex.address, "--listen", f"tcp://127.0.0.1:{port}", *HOST_ARGS)
    pid = ex.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    assert inbox_port(pid) == port, host_logs(host)


@pytest.mark.timeout(120)
def test_killed_worker_comes_back_on_a_port_in_the_range(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
) -> None:
    """As many ports as processes: the replacement must rebind the port of the killed one,
    which still has the executor's connection to it in TIME_WAIT or reconnecting."""
    ports = free_port_range(2)
    ex = make_executor(listen="tcp://127.0.0.1:*", insecure=True, **HB)
    host = worker_hosts(ex.address, "--inbox-ports", str(ports), *HOST_ARGS, processes=2)
    pids = rendezvous_pids(ex, 2, tmp_path)
    victim = min(pids)
    victim_port = inbox_port(victim)
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(worker_pids(ex) - pids) == 1 and len(worker_pids(ex)) == 2,
        what=lambda: f"a replacement worker process: {worker_pids(ex)}\n{host_logs(host)}",
    )
    new_pids = rendezvous_pids(ex, 2, tmp_path)  # tasks still run, on both
    assert new_pids == worker_pids(ex) and victim not in new_pids
    (replacement,) = new_pids - pids
    assert inbox_port(replacement) == victim_port, host_logs(host)
    assert {inbox_port(pid) for pid in new_pids} == set(ports)


def own_inbox_port() -> tuple[int, int]:
    """Runs on a worker process: its pid and the port its inbox listens on."""
    return os.getpid(), inbox_port(os.getpid())


@pytest.mark.timeout(90)
def test_replaced_process_rebinds_the_single_port(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
) -> None:
    """max_tasks_per_child=1 on one port: each replacement binds the port its predecessor
    left a moment ago (its connections in TIME_WAIT), and every task runs."""
    port = free_port_range(1).first
    ex = make_executor(listen="tcp://127.0.0.1:*", insecure=True, **HB)
    host = worker_hosts(
        ex.address, "--listen", f"tcp://127.0.0.1:{port}", "--max-tasks-per-child", "1", *HOST_ARGS
    )
    seen = [ex.submit(own_inbox_port).result(timeout=RESULT_TIMEOUT) for _ in range(5)]
    assert len({pid for pid, _ in seen}) == 5, host_logs(host)
    assert {p for _, p in seen} == {port}, host_logs(host)


@pytest.mark.timeout(90)
def test_a_port_taken_by_another_program_is_skipped(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
) -> None:
    ports = free_port_range(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.first))  # the port every first choice starts with
        squatter.listen()
        ex = make_executor(listen="tcp://127.0.0.1:*", insecure=True, **HB)
        host = worker_hosts(
            ex.address, "--listen", f"tcp://127.0.0.1:{ports}", *HOST_ARGS, processes=2
        )
        pids = rendezvous_pids(ex, 2, tmp_path)
        assert {inbox_port(pid) for pid in pids} == set(ports) - {ports.first}, host_logs(host)
    # the process tried the next port itself: no worker process died and was respawned
    assert "exited with code" not in host.log(), host_logs(host)


@pytest.mark.timeout(90)
def test_every_port_taken_is_reported_and_retried_until_one_is_free(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
) -> None:
    port = free_port_range(1).first
    ex = make_executor(listen="tcp://127.0.0.1:*", insecure=True, **HB)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        host = worker_hosts(ex.address, "--listen", f"tcp://127.0.0.1:{port}", *HOST_ARGS)
        wait_until(
            lambda: f"every port of the inbox range {port}-{port}" in host.log(),
            what=lambda: f"the host to report the taken port\n{host_logs(host)}",
        )
    # the port is free again: the host's next attempt (respawn backoff) gets it
    pid = ex.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    assert inbox_port(pid) == port, host_logs(host)
    assert "exited with code 5" in host.log()


@pytest.mark.timeout(90)
def test_advertised_port_range_maps_each_bound_port(
    worker_hosts: Callable[..., WorkerHost],
) -> None:
    """--advertise HOST:7000-7001 with inbox ports 6000-6001: the process on 6000+i says
    HELLO with 7000+i (a hand-made sink reads the HELLOs; nobody forwards the ports)."""
    import zmq

    ports, advertised = free_port_range(2), free_port_range(2)
    offset = advertised.first - ports.first
    ctx = zmq.Context()
    sink = ctx.socket(zmq.PULL)
    sink.linger = 0
    try:
        sink.bind("tcp://127.0.0.1:*")
        address = sink.getsockopt(zmq.LAST_ENDPOINT).decode()
        host = worker_hosts(
            address, "--inbox-ports", str(ports),
            "--advertise", f"127.0.0.1:{advertised}", *HOST_ARGS, processes=2,
        )  # fmt: skip
        hellos: dict[int, str] = {}
        while len(hellos) < 2:
            assert sink.poll(RESULT_TIMEOUT * 1000), host_logs(host)
            frames = sink.recv_multipart()
            kind, _, _ = proto.parse_header(frames[0])
            if kind is proto.Kind.HELLO:
                hello = msg.Hello.decode(frames)
                hellos[hello.pid] = hello.inbox
        for pid, inbox in hellos.items():
            assert inbox == f"tcp://127.0.0.1:{inbox_port(pid) + offset}", host_logs(host)
        assert {inbox_port(pid) for pid in hellos} == set(ports)
    finally:
        sink.close()
        ctx.term()


# ---------------------------------------------------------------------------- mode 3


@pytest.mark.timeout(90)
def test_attached_host_inbox_ports_and_fixed_sink_port(
    make_executor: Callable[..., Any],
    worker_hosts: Callable[..., WorkerHost],
    tmp_path: Path,
) -> None:
    """Mode 3 behind firewalls: the host's inboxes use --inbox-ports, and the executor's
    ``listen=`` with ``workers=`` fixes the sink port the worker processes connect to."""
    ports = free_port_range(2)
    rendezvous = f"tcp://127.0.0.1:{free_tcp_port()}"
    sink_port = free_port_range(1).first
    host = worker_hosts(
        "--listen", rendezvous, "--inbox-ports", str(ports), *HOST_ARGS, processes=2
    )
    ex = make_executor(
        workers=[rendezvous], listen=f"tcp://127.0.0.1:{sink_port}", insecure=True, **HB
    )
    assert ex.address == f"tcp://127.0.0.1:{sink_port}"
    pids = rendezvous_pids(ex, 2, tmp_path)
    assert {inbox_port(pid) for pid in pids} == set(ports), host_logs(host)
    for pid in pids:  # each worker process's sink connection goes to the fixed port
        assert sink_port in {remote for _, remote, state in tcp_sockets(pid) if state == "01"}


@pytest.mark.timeout(60)
def test_wildcard_sink_with_workers_is_told_as_the_route_to_them(
    make_executor: Callable[..., Any],
) -> None:
    rendezvous = f"tcp://127.0.0.1:{free_tcp_port()}"  # nobody there: only the address counts
    sink_port = free_port_range(1).first
    ex = make_executor(workers=[rendezvous], listen=f"tcp://*:{sink_port}", token=new_token())
    assert ex.address == f"tcp://127.0.0.1:{sink_port}"


def test_help_documents_the_port_options() -> None:
    proc = subprocess.run(
        [*WORKER, "--help"], capture_output=True, text=True, timeout=RESULT_TIMEOUT
    )
    assert proc.returncode == 0
    for text in ("--inbox-ports", "FIRST-LAST", "HOST[:FIRST-LAST]", "tcp://HOST:6000-6015"):
        assert text in proc.stdout
