"""Endpoint parsing, address discovery (which local address reaches a peer) and the socket
and process settings that keep a listening port usable under a flood of idle connections."""

from __future__ import annotations

import ipaddress
import logging
import socket
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


def is_wildcard(host: str) -> bool:
    return host in ("*", "0.0.0.0", "::", "")


def is_loopback(endpoint: Endpoint) -> bool:
    """True for ipc/inproc and for tcp on a loopback address (or "localhost")."""
    if endpoint.transport != "tcp":
        return True
    if endpoint.host == "localhost":
        return True
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
