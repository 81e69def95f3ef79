"""A throwaway multi-host network built from Linux network namespaces, for tests.

::

      host ns "exec"         host ns "h1"           host ns "h2"
      eth0 10.250.0.1/24     eth0 10.250.0.2/24     eth0 10.250.0.3/24
           |                      |                      |
           | veth                 | veth                 | veth
      -----+----------------------+----------------------+-----
      p1                     p2                     p3       switch ns: bridge br0

Every veth pair is created inside the switch namespace with its peer moved straight into the
host namespace, so the root namespace's links, addresses and routes are never touched, and the
fixed 10.250.0.0/24 subnet cannot collide with anything (each lab has its own private bridge).
Namespace names carry a random suffix so parallel runs do not collide.

On exit the lab kills every process it started (their whole process groups, then anything else
still living in its namespaces, found with ``ip netns pids``) and deletes its namespaces, which
takes the bridge and the veth pairs with them -- also when the test body raised or was stopped by
pytest-timeout (the default ``signal`` method unwinds through ``__exit__``).

Needs root and iproute2; :func:`unavailable_reason` says why a lab cannot be built, and the
``netns_lab`` fixture skips with that reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pytest

__all__ = [
    "PROJECT_ROOT",
    "SUBNET_PREFIX",
    "Host",
    "NetnsLab",
    "find_ip",
    "netns_lab_fixture",
    "unavailable_reason",
    "wait_until",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUBNET_PREFIX = "10.250.0."  # host n gets SUBNET_PREFIX + str(n), /24
HOST_IFACE = "eth0"
BRIDGE = "br0"
IP_CANDIDATES = ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")
NAME_PREFIX = "zxlab"
LINK_UP_TIMEOUT = 10.0
CLEANUP_TIMEOUT = 10.0

T = TypeVar("T")


def find_ip() -> str | None:
    """The path of iproute2's ``ip``, or None (sbin is often missing from PATH)."""
    found = shutil.which("ip")
    if found:
        return found
    for candidate in IP_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network-namespace tests need root (CI runs them as root)"
    if find_ip() is None:
        return "iproute2 `ip` not found (apt-get install iproute2)"
    return None


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError after ``timeout``.

    This is how tests synchronize: on a condition with a deadline, never on a fixed sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's own environment, plus the project root on PYTHONPATH and unbuffered output.

    Together with ``sys.executable`` this makes a Python started inside a namespace import the
    same zmqexecutor, from the same interpreter and site-packages, as the test itself.
    """
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class Host:
    """One machine of the lab: a network namespace with ``eth0`` on the lab's bridge.

    Attributes:
        name: the short name given to :meth:`NetnsLab.add_host`.
        ns: the network namespace's name (unique per run).
        ip: the host's IPv4 address on the lab subnet, e.g. ``"10.250.0.1"``.
    """

    def __init__(self, lab: NetnsLab, name: str, ns: str, ip: str, port: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.ip = ip
        self.iface = HOST_IFACE
        self.switch_port = port  # the veth end on the bridge, in the switch namespace

    def __repr__(self) -> str:
        state = "cut" if self in self.lab.cut_hosts else "up"
        return f"<Host {self.name} ns={self.ns} ip={self.ip} link={state}>"

    def command(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``argv`` wrapped to run inside this namespace (``ip netns exec NS ...``)."""
        return [self.lab.ip_cmd, "netns", "exec", self.ns, *map(os.fspath, argv)]

    def popen(self, argv: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this namespace; the lab kills it (and its group) on exit.

        ``ip netns exec`` execs the command, so the returned Popen's pid is the command itself:
        signals sent to it reach it directly. The process leads a new session (its own process
        group) unless ``start_new_session`` is given, and gets :func:`subprocess_env` unless
        ``env`` is given. Other keyword arguments go to :class:`subprocess.Popen`.
        """
        kw.setdefault("env", subprocess_env())
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.command(argv), **kw)
        self.lab.processes.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        check: bool = True,
        timeout: float = 30.0,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this namespace to completion; text output is captured."""
        kw.setdefault("env", subprocess_env())
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.command(argv), check=check, timeout=timeout, **kw)

    def python(self, *args: str | os.PathLike[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start the test's own interpreter (``sys.executable``) inside this namespace."""
        return self.popen([sys.executable, *args], **kw)

    def netns_id(self) -> str:
        """The namespace's identity as a process inside sees it, e.g. ``"net:[4026532177]"``.

        The same string ``os.readlink("/proc/self/ns/net")`` returns in any process of the host.
        """
        return self.run(["readlink", "/proc/self/ns/net"]).stdout.strip()

    def pids(self) -> list[int]:
        """Every process currently living in this namespace."""
        return self.lab.ns_pids(self.ns)

    def operstate(self) -> str:
        """The kernel's operational state of ``eth0`` (``"UP"``, ``"DOWN"``, ...)."""
        out = self.lab.ip("-n", self.ns, "-j", "link", "show", "dev", self.iface)
        return str(json.loads(out)[0].get("operstate", "UNKNOWN"))


class NetnsLab:
    """A private bridged network of namespaced hosts; a context manager.

    ::

        with NetnsLab() as lab:
            a, b = lab.add_host("a"), lab.add_host("b")      # 10.250.0.1, 10.250.0.2
            server = b.popen([sys.executable, "-m", "http.server", "8000"])
            a.run(["curl", f"http://{b.ip}:8000/"])
            lab.cut(b)   # partition b: its eth0 goes down
            lab.heal(b)
    """

    def __init__(self, prefix: str = NAME_PREFIX) -> None:
        ip_cmd = find_ip()
        if ip_cmd is None:
            raise RuntimeError(unavailable_reason() or "iproute2 `ip` not found")
        self.ip_cmd = ip_cmd
        self.tag = f"{prefix}-{secrets.token_hex(4)}"
        self.switch_ns = f"{self.tag}-sw"
        self.hosts: list[Host] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self.cut_hosts: set[Host] = set()
        self._namespaces: list[str] = []  # every namespace created, deleted on exit
        self._closed = False

    def __repr__(self) -> str:
        names = ", ".join(h.name for h in self.hosts)
        return f"<NetnsLab {self.tag} hosts=[{names}] processes={len(self.processes)}>"

    # -- plumbing ------------------------------------------------------------------------------

    def ip(self, *args: str) -> str:
        """Run ``ip ARGS`` (in the root namespace unless ``-n NS`` is among them); its stdout."""
        done = subprocess.run(
            [self.ip_cmd, *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
        return done.stdout

    def _add_namespace(self, ns: str) -> None:
        self.ip("netns", "add", ns)
        self._namespaces.append(ns)
        self.ip("-n", ns, "link", "set", "lo", "up")

    def ns_pids(self, ns: str) -> list[int]:
        """Every process living in namespace ``ns`` (``ip netns pids``)."""
        try:
            out = self.ip("netns", "pids", ns)
        except RuntimeError:
            return []  # namespace already gone
        return [int(tok) for tok in out.split()]

    # -- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> NetnsLab:
        try:
            self._add_namespace(self.switch_ns)
            # STP off and no forward delay: a port forwards as soon as its link is up.
            self.ip(
                "-n", self.switch_ns, "link", "add", BRIDGE, "type", "bridge",
                "stp_state", "0", "forward_delay", "0",
            )  # fmt: skip
            self.ip("-n", self.switch_ns, "link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        leftovers = self.close()
        if leftovers and exc is None:
            raise RuntimeError(f"netns lab {self.tag} left things behind: {leftovers}")

    def add_host(self, name: str) -> Host:
        """Create a host namespace wired to the bridge; addresses are given in order from .1."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,15}", name):
            raise ValueError(f"host name {name!r}: use 1-16 of [a-z0-9-]")
        if any(h.name == name for h in self.hosts):
            raise ValueError(f"host {name!r} already exists")
        if self._closed:
            raise RuntimeError("lab is closed")
        index = len(self.hosts) + 1
        if index > 250:
            raise ValueError("at most 250 hosts")
        ns = f"{self.tag}-{name}"
        port = f"p{index}"
        host = Host(self, name, ns, f"{SUBNET_PREFIX}{index}", port)
        self._add_namespace(ns)
        self.hosts.append(host)
        sw = self.switch_ns
        # Both ends are born inside our namespaces: the root namespace never sees them.
        self.ip(
            "-n", sw, "link", "add", port, "type", "veth", "peer", "name", HOST_IFACE, "netns", ns
        )
        self.ip("-n", sw, "link", "set", port, "master", BRIDGE, "up")
        self.ip("-n", ns, "addr", "add", f"{host.ip}/24", "dev", HOST_IFACE)
        self.ip("-n", ns, "link", "set", HOST_IFACE, "up")
        wait_until(lambda: host.operstate() == "UP", LINK_UP_TIMEOUT, f"{ns} {HOST_IFACE} up")
        return host

    def cut(self, host: Host) -> None:
        """Partition ``host``: take its ``eth0`` down (inside its namespace). Packets to and
        from it are dropped silently, like a pulled cable; its processes keep running."""
        self.ip("-n", host.ns, "link", "set", host.iface, "down")
        self.cut_hosts.add(host)

    def heal(self, host: Host) -> None:
        """Undo :meth:`cut`: bring ``eth0`` up again and wait until the link is operational."""
        self.ip("-n", host.ns, "link", "set", host.iface, "up")
        self.cut_hosts.discard(host)
        wait_until(lambda: host.operstate() == "UP", LINK_UP_TIMEOUT, f"{host.ns} link up")

    def close(self) -> list[str]:
        """Kill every process, delete every namespace; idempotent.

        Returns a description of whatever could not be removed (empty when all is clean).
        """
        if self._closed:
            return []
        self._closed = True
        # 1. Every process we started, with its process group.
        for proc in self.processes:
            if proc.poll() is None:  # leader not reaped yet, so its pid is still its group id
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # in case it left its group
        # 2. Anything else still in our namespaces (daemons that called setsid, grandchildren).
        for ns in self._namespaces:
            for pid in self.ns_pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        leftovers: list[str] = []
        for proc in self.processes:
            try:
                proc.wait(timeout=CLEANUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                leftovers.append(f"process {proc.pid} ({proc.args!r}) did not die")
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for ns in self._namespaces:
            try:
                wait_until(lambda ns=ns: not self.ns_pids(ns), CLEANUP_TIMEOUT, f"{ns} empty")
            except TimeoutError:
                leftovers.append(f"processes {self.ns_pids(ns)} still in {ns}")
        # 3. The namespaces; their veth ends and the bridge go with them.
        for ns in reversed(self._namespaces):
            try:
                self.ip("netns", "del", ns)
            except RuntimeError as err:
                leftovers.append(str(err))
        still = set(self.list_namespaces()) & set(self._namespaces)
        if still:
            leftovers.append(f"namespaces not deleted: {sorted(still)}")
        return leftovers

    def list_namespaces(self) -> list[str]:
        """Names of every network namespace on the machine (``ip netns list``)."""
        out = self.ip("netns", "list")
        return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture(name="netns_lab")
def netns_lab_fixture() -> Iterator[NetnsLab]:
    """Fixture ``netns_lab``: a fresh :class:`NetnsLab`, torn down after the test.

    Skips when not root or without ``ip``. A test module gets it by importing
    ``netns_lab_fixture`` (a conftest.py could import it for the whole directory).
    """
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with NetnsLab() as lab:
        yield lab
