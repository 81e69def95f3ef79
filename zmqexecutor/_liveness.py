"""A worker host's view of whether its executor still knows it (sans-I/O).

The executor declares a host lost when no HEARTBEAT arrived from it for ``heartbeat_timeout``
seconds, forgets its worker processes and closes their inboxes' sockets. It has no way to say
so to the host: a host that was only frozen (SIGSTOP, laptop sleep, a paused or migrated VM,
hard swapping) comes back with worker processes that believe they are still registered, and
that the executor will never send a task again. Whether a TCP disconnect tells the host
depends on which ZMTP timer fired first (issue 9), so the host judges from what it knows for
sure: the executor cannot have heard from this host later than the last heartbeat it sent
over a live connection. When that is longer ago than ``heartbeat_timeout`` (typically because
the supervisor's own loop stood still that long), the executor has declared the host lost,
and the host starts a **new incarnation**: a new host id and fresh worker processes that say
HELLO again.

This class owns only that judgement. It has no socket, thread or clock: the supervisor feeds
it events with the time (``time.monotonic()``) as an argument and acts on what it returns::

    supervisor loop                      HostLiveness
    ---------------                      ------------
    every iteration, first       --->    tick(now)              -> NewIncarnation | None
    handshake with the executor  --->    executor_seen(now)
    connection dropped           --->    connection_dropped(now) -> SessionOver | None
    HEARTBEAT queued on a socket --->    heartbeat_sent(now)

The executor's and the host's ``heartbeat_timeout`` must agree (both default to
``DEFAULT_HEARTBEAT_TIMEOUT``): the host can only compare against its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NewIncarnation:
    """The executor has (almost certainly) declared this host lost: replace every worker
    process and the host id, so that fresh processes register again."""

    reason: str


@dataclass(frozen=True)
class SessionOver:
    """The connection to the executor broke: the session is over (the executor died, was
    restarted, or the network cut it). Running tasks are abandoned."""

    reason: str


class HostLiveness:
    """Decides when a worker host must start a new incarnation.

    Args:
        heartbeat_timeout: seconds of silence after which the executor declares a host lost.
        now: the current time (any monotonic clock, in seconds).
    """

    def __init__(self, heartbeat_timeout: float, now: float) -> None:
        if heartbeat_timeout <= 0:
            raise ValueError(f"heartbeat_timeout must be positive, not {heartbeat_timeout!r}")
        self.heartbeat_timeout = heartbeat_timeout
        #: how many incarnations came before the current one
        self.incarnation = 0
        #: a ZMTP connection to the executor is up (handshake done, no drop since)
        self.connected = False
        self._last_tick = now
        #: when the executor last may have heard from this incarnation: the handshake or
        #: the last heartbeat sent over a live connection (None: it cannot know us yet)
        self._reached: float | None = None

    def __repr__(self) -> str:
        return (
            f"<HostLiveness incarnation={self.incarnation} connected={self.connected} "
            f"reached={self._reached} timeout={self.heartbeat_timeout:g}>"
        )

    @property
    def known(self) -> bool:
        """May the executor know this incarnation?"""
        return self._reached is not None

    def tick(self, now: float) -> NewIncarnation | None:
        """The supervisor's loop runs at ``now``; call it first in every iteration, before
        anything is sent, so that no message of a lost incarnation goes out."""
        gap = now - self._last_tick
        self._last_tick = max(self._last_tick, now)
        if self._reached is None:
            return None  # the executor does not know us: nothing to lose, nothing to renew
        silent = now - self._reached
        if silent <= self.heartbeat_timeout:
            return None
        if gap > self.heartbeat_timeout:
            reason = (
                f"this host stood still for {gap:.1f}s (suspended, stopped, or swapping), "
                f"longer than heartbeat_timeout={self.heartbeat_timeout:g}s"
            )
        else:
            reason = (
                f"no heartbeat could reach the executor for {silent:.1f}s, longer than "
                f"heartbeat_timeout={self.heartbeat_timeout:g}s"
            )
        return self._renew(reason)

    def executor_seen(self, now: float) -> SessionOver | None:
        """A connection to the executor completed its handshake: it is alive now, and from
        now on it may know us (heartbeats queued before the connection arrive now, and
        worker processes say HELLO), even before our next heartbeat.

        A second handshake with no drop seen in between means the connection was made
        anew, possibly to another executor on the same address (a restarted one, while
        this host was frozen): the session is over, as after a drop."""
        if self.connected:
            self._reached = now
            return SessionOver("the connection to the executor was made anew")
        self.connected = True
        if self._reached is None:
            self._reached = now
        return None

    def connection_dropped(self, now: float) -> SessionOver | None:
        """The connection to the executor broke. None if none was up (nothing ends)."""
        if not self.connected:
            return None
        self.connected = False
        # heartbeats sent from now on reach nobody; the next session starts from scratch
        self._reached = None
        return SessionOver("the connection to the executor was lost")

    def heartbeat_sent(self, now: float) -> None:
        """A HEARTBEAT was handed to the socket at ``now``; it counts only while connected,
        and only in time: one sent after the executor's deadline (the host froze between
        its last tick and this send) cannot revive an incarnation it has forgotten."""
        if not self.connected:
            return
        if self._reached is not None and now - self._reached > self.heartbeat_timeout:
            return  # too late: the next tick starts a new incarnation
        self._reached = max(self._reached or now, now)

    def _renew(self, reason: str) -> NewIncarnation:
        self.incarnation += 1
        self._reached = None  # the new incarnation is unknown until its first heartbeat
        return NewIncarnation(reason)
