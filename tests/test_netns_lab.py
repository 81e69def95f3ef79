"""Self-test of tests/netns.py: the namespaced lab network the multi-host tests stand on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netns import (
    PROJECT_ROOT,
    Host,
    NetnsLab,
    netns_lab_fixture,  # noqa: F401  (registers the `netns_lab` fixture)
    unavailable_reason,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

ECHO_PORT = 7007

# Echoes one message per connection, forever; the lab kills it.
ECHO_SERVER = """
import socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(conn.recv(64))
"""

# Prints what happened to one connection attempt; the exit code says it too.
CLIENT = """
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(b"ping")
        print(conn.recv(64).decode())
except TimeoutError:
    print("timeout")
    sys.exit(3)
except OSError as err:
    print(type(err).__name__, err)
    sys.exit(4)
"""

# Only works if `lo` is up in the namespace.
LOOPBACK = """
import socket
srv = socket.create_server(("127.0.0.1", 0))
with socket.create_connection(srv.getsockname(), timeout=2) as conn:
    peer, _ = srv.accept()
    peer.sendall(b"lo-ok")
    print(conn.recv(16).decode())
"""


def connect(host: Host, target_ip: str, timeout: float = 1.0) -> subprocess.CompletedProcess[str]:
    return host.run(
        [sys.executable, "-c", CLIENT, target_ip, str(ECHO_PORT), str(timeout)], check=False
    )


def _root_links(lab: NetnsLab) -> set[str]:
    return {link["ifname"] for link in json.loads(lab.ip("-j", "link", "show"))}


def test_hosts_have_addresses_loopback_and_own_namespaces(netns_lab: NetnsLab) -> None:
    root_links_before = _root_links(netns_lab)
    a, b = netns_lab.add_host("a"), netns_lab.add_host("b")
    assert (a.ip, b.ip) == ("10.250.0.1", "10.250.0.2")
    ids = {a.netns_id(), b.netns_id(), os.readlink("/proc/self/ns/net")}
    assert len(ids) == 3, ids
    assert all(i.startswith("net:[") for i in ids)
    for host in (a, b):
        assert f"inet {host.ip}/24" in host.run(["ip", "-4", "addr", "show", "eth0"]).stdout
        assert host.run([sys.executable, "-c", LOOPBACK]).stdout.strip() == "lo-ok"
    # The root namespace is untouched: no lab address or route, no lab link.
    assert "10.250.0." not in netns_lab.ip("-4", "addr") + netns_lab.ip("-4", "route")
    new_root_links = _root_links(netns_lab) - root_links_before
    assert not new_root_links & {"br0", "p1", "p2", "eth0"}, new_root_links


def test_python_in_namespace_uses_same_interpreter_and_env(netns_lab: NetnsLab) -> None:
    host = netns_lab.add_host("a")
    probe = (
        "import json, os, sys; print(json.dumps([sys.executable, sys.prefix,"
        " os.environ.get('PYTHONPATH', ''), os.readlink('/proc/self/ns/net')]))"
    )
    exe, prefix, pythonpath, netns_id = json.loads(host.run([sys.executable, "-c", probe]).stdout)
    assert exe == sys.executable
    assert prefix == sys.prefix
    assert str(PROJECT_ROOT) in pythonpath.split(os.pathsep)
    assert netns_id == host.netns_id()


def test_reach_cut_heal(netns_lab: NetnsLab) -> None:
    a, b = netns_lab.add_host("a"), netns_lab.add_host("b")
    b.popen([sys.executable, "-c", ECHO_SERVER, str(ECHO_PORT)])
    # The server may not be listening yet: retry until it answers (refused fails at once).
    wait_until(lambda: connect(a, b.ip).returncode == 0, 15, "echo server on b reachable from a")
    assert connect(a, b.ip).stdout.strip() == "ping"

    netns_lab.cut(b)
    cut = connect(a, b.ip, timeout=1.0)
    assert (cut.returncode, cut.stdout.strip()) == (3, "timeout"), cut
    assert connect(b, a.ip).returncode != 0  # and b cannot reach out either

    netns_lab.heal(b)
    wait_until(lambda: connect(a, b.ip).returncode == 0, 15, "b reachable again after heal")
    assert connect(a, b.ip).stdout.strip() == "ping"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie holds no namespace


# Starts a grandchild in a session of its own, escaping the lab's process-group kill.
ESCAPER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_exit_leaves_nothing_behind_even_on_error() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = NetnsLab()
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="test body failed"), lab:
        a, b = lab.add_host("a"), lab.add_host("b")
        long_runner = a.popen([sys.executable, "-c", "import time; time.sleep(600)"])
        escaper = b.popen([sys.executable, "-c", ESCAPER], stdout=subprocess.PIPE)
        pids += [long_runner.pid, escaper.pid, int(escaper.stdout.readline())]
        assert all(_alive(pid) for pid in pids)
        namespaces = {lab.switch_ns, a.ns, b.ns}
        assert namespaces <= set(lab.list_namespaces())
        raise RuntimeError("test body failed")
    assert not namespaces & set(lab.list_namespaces())
    assert [pid for pid in pids if _alive(pid)] == []
    assert long_runner.returncode is not None and escaper.returncode is not None
