"""Endpoint and port-range parsing, address discovery (which local address reaches a peer),
and the socket and process settings that keep a listening port usable under a flood of idle
connections."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import zmq

from ._defaults import HANDSHAKE_TIMEOUT, OPEN_FILES_WANTED

try:
    import resource
except ImportError:  # Windows: no rlimits
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


class Endpoint(NamedTuple):
    transport: str  # "tcp", "ipc", "inproc"
    host: str  # tcp: host or address ("*" and "0.0.0.0" mean every interface); else ""
    port: str  # tcp: port or "*"; else the path

    def __str__(self) -> str:
        if self.transport == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp://{host}:{self.port}"
        return f"{self.transport}://{self.port}"


def parse_endpoint(endpoint: str) -> Endpoint:
    """Split a ZeroMQ endpoint; raise ValueError with the expected form if it is not one."""
    transport, sep, rest = endpoint.partition("://")
    if not sep or transport not in ("tcp", "ipc", "inproc") or not rest:
        raise ValueError(
            f"{endpoint!r} is not a ZeroMQ endpoint; expected tcp://HOST:PORT or ipc:///path"
        )
    if transport != "tcp":
        return Endpoint(transport, "", rest)
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not (port == "*" or port.isdigit()):
        raise ValueError(f"{endpoint!r} needs a host and a port: tcp://HOST:PORT")
    return Endpoint("tcp", host.strip("[]"), port)


@dataclass(frozen=True)
class PortRange:
    """The TCP ports ``first`` to ``last``, both included (a single port: first == last)."""

    first: int
    last: int

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


_RANGE_FORM = "PORT or FIRST-LAST, e.g. 6000 or 6000-6015"


def parse_port_range(text: str, what: str = "port range") -> PortRange:
    """``"6000"`` or ``"6000-6015"`` as a PortRange; ValueError naming the expected form."""
    first, sep, last = text.strip().partition("-")
    if not sep:
        last = first
    if not (first.isdigit() and last.isdigit()):
        raise ValueError(f"{what} {text!r} is not {_RANGE_FORM}")
    ports = PortRange(int(first), int(last))
    if not 1 <= ports.first <= ports.last <= 65535:
        raise ValueError(
            f"{what} {text!r} must run from a lower to a higher port within 1-65535; "
            f"expected {_RANGE_FORM}"
        )
    return ports


def parse_listen(endpoint: str) -> tuple[Endpoint, PortRange | None]:
    """A bind endpoint whose port may be a range: ``tcp://HOST:6000-6015``.

    Returns the endpoint with port ``*`` when a port or range was given, and that range;
    ``tcp://HOST:*`` (or port 0) gives the endpoint as is and None (the system picks a port).
    """
    transport, sep, rest = endpoint.partition("://")
    host, colon, port = rest.rpartition(":")
    if transport == "tcp" and sep and colon and host and "-" in port:
        ports = parse_port_range(port, f"the port range of {endpoint!r}")
        return Endpoint("tcp", host.strip("[]"), "*"), ports
    ep = parse_endpoint(endpoint)
    if ep.transport != "tcp" or ep.port in ("*", "0"):
        return ep, None
    return Endpoint("tcp", ep.host, "*"), parse_port_range(ep.port)


def parse_advertise(text: str) -> tuple[str, PortRange | None]:
    """``HOST``, ``HOST:PORT`` or ``HOST:FIRST-LAST`` (IPv6 as ``[ADDR]:FIRST-LAST``): the
    host the executor should reach this host at, and the ports it should use, if mapped."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"--advertise {text!r} is not [IPV6] or [IPV6]:FIRST-LAST")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:  # a name, an IPv4 address or a bare IPv6 address: no ports
        host, port = text, None
    if not host or "/" in host:
        raise ValueError(
            f"--advertise {text!r} is not HOST or HOST:FIRST-LAST (e.g. 203.0.113.7 or "
            "203.0.113.7:7000-7015)"
        )
    ports = parse_port_range(port, f"the port range of --advertise {text!r}") if port else None
    return host, ports


def check_port_plan(
    inbox_ports: PortRange | None, processes: int, advertise_ports: PortRange | None
) -> None:
    """Raise ValueError, saying what to change, if ``processes`` worker processes cannot
    each bind a port of ``inbox_ports``, or ``advertise_ports`` does not map onto it."""
    if inbox_ports is not None and len(inbox_ports) < processes:
        raise ValueError(
            f"the inbox port range {inbox_ports} has {len(inbox_ports)} port(s) for "
            f"{processes} worker processes: each process binds its own port; widen the range "
            f"to at least {processes} ports (e.g. {inbox_ports.first}-"
            f"{inbox_ports.first + processes - 1}) or lower --processes"
        )
    if advertise_ports is None:
        return
    if inbox_ports is None:
        raise ValueError(
            f"--advertise maps ports ({advertise_ports}), but the worker processes bind "
            "ephemeral ports: give the ports they bind, e.g. --listen tcp://HOST:6000-6015 "
            "or --inbox-ports 6000-6015"
        )
    if len(advertise_ports) != len(inbox_ports):
        raise ValueError(
            f"--advertise port range {advertise_ports} has {len(advertise_ports)} port(s), the "
            f"inbox port range {inbox_ports} has {len(inbox_ports)}: the process that binds "
            "port FIRST+i is reached at advertised FIRST+i, so give ranges of the same length "
            "(as in docker -p 7000-7015:6000-6015)"
        )


def port_candidates(ports: PortRange, live: Set[int], handed_out: Mapping[int, float]) -> list[int]:
    """The order in which a new worker process tries the ports of ``ports``.

    First the ports no live worker process was given, the longest unused first (never used
    before recently used): a port given up a moment ago may still have connections in
    TIME_WAIT, or a peer still reconnecting to it. Then the live ones, in case a process
    bound another port than the one it was given first (another program held that one).
    """
    free = sorted((p for p in ports if p not in live), key=lambda p: handed_out.get(p, -1.0))
    return free + [p for p in ports if p in live]


def is_wildcard(host: str) -> bool:
    return host in ("*", "0.0.0.0", "::", "")


def is_loopback(endpoint: Endpoint) -> bool:
    """True for ipc/inproc and for tcp on a loopback address (or "localhost")."""
    if endpoint.transport != "tcp":
        return True
    if endpoint.host == "localhost":
        return True
    import ipaddress  # here: a local worker process never needs it

    try:
        return ipaddress.ip_address(endpoint.host).is_loopback
    except ValueError:
        return False


def route_to(host: str) -> str:
    """The local address the kernel would use to reach ``host`` (no packet is sent)."""
    infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(sockaddr)
        address: str = s.getsockname()[0]
        return address


def bound_endpoint(sock: zmq.Socket[bytes]) -> str:
    """The endpoint a socket last bound (with the port the system chose for ``*``)."""
    return cast(bytes, sock.getsockopt(zmq.LAST_ENDPOINT)).decode()


def set_heartbeats(sock: zmq.Socket[bytes], interval: float, timeout: float) -> None:
    """ZMTP heartbeats: libzmq drops a connection whose peer stopped answering."""
    sock.heartbeat_ivl = int(interval * 1000)
    sock.heartbeat_timeout = int(timeout * 1000)
    sock.heartbeat_ttl = int(timeout * 1000)


def guard_listener(sock: zmq.Socket[bytes], *, network: bool) -> None:
    """Settings for a socket about to bind where peers connect (call before ``bind``: libzmq
    copies the options into the listener).

    Anyone who can reach a TCP port can open connections to it without the token and send
    nothing. libzmq gives each one a file descriptor until its handshake times out (30 s by
    default); about a thousand of them used to exhaust the usual soft limit of 1,024 open
    files, so no worker could join and the user's own process could not open a file. So:
    connections that have not finished the ZMTP handshake after ``HANDSHAKE_TIMEOUT`` are
    closed, and with ``network`` (the socket binds TCP) the process's open-file limit is
    raised (:func:`raise_open_file_limit`). The context's ``MAX_SOCKETS`` (1023) is no
    limit here: it counts sockets, not the connections of one bound socket.
    """
    sock.handshake_ivl = int(HANDSHAKE_TIMEOUT * 1000)
    if network:
        raise_open_file_limit()


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> int | None:
    """Raise this process's soft limit on open files (RLIMIT_NOFILE) toward its hard limit,
    to at most ``wanted``; never lower it. Failure is logged and tolerated.

    The soft limit (usually 1,024) is what a shell or systemd gives; the hard limit is what
    the administrator allows, and servers that hold many connections raise the soft one to
    it themselves, as Go's runtime and the JVM do. Code in this process that uses
    ``select.select`` cannot watch fds above 1,023 either way; zmq, asyncio, ``selectors`` and
    ``subprocess`` use poll or epoll.

    Returns:
        the soft limit now in force, or None where there are no rlimits (Windows).
    """
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:  # e.g. macOS refuses more than OPEN_MAX
            log.debug("cannot raise the open-file limit from %d to %d: %s", soft, target, e)
            return soft
        log.debug("raised the open-file limit from %d to %d (hard limit %s)", soft, target, hard)
        return target
    log.debug("open-file limit left at %s (hard limit %s)", soft, hard)
    return soft


def concrete(endpoint: str, peer_host: str | None = None) -> str:
    """An endpoint a peer can connect to: a wildcard host becomes the address that routes
    to ``peer_host`` (or this host's name when no peer is known)."""
    ep = parse_endpoint(endpoint)
    if ep.transport != "tcp" or not is_wildcard(ep.host):
        return endpoint
    host = route_to(peer_host) if peer_host else socket.gethostname()
    return str(Endpoint("tcp", host, ep.port))


def recv_frames(sock: zmq.Socket[bytes], flags: int = 0) -> list[Any]:
    """One message: the first frame (header, index, in-band pickles) as bytes, since a copy
    costs less than a zmq.Frame at the usual sizes; the rest (out-of-band pickle buffers,
    the large arrays) as memoryviews of their frames, without a copy."""
    frames: list[Any] = [sock.recv(flags)]
    while sock.get(zmq.RCVMORE):
        frames.append(sock.recv(copy=False).buffer)
    return frames
