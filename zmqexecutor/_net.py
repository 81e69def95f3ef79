"""Endpoint parsing and address discovery (which local address reaches a peer)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, NamedTuple, cast

import zmq


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
