"""The worker host's liveness view (zmqexecutor._liveness), driven with fake times.

Examples first, then a hypothesis state machine that runs the host's view against a model
of the executor (which declares the host lost after ``heartbeat_timeout`` without a
heartbeat) and checks after every step that the host never stays a forgotten zombie and
never renews an incarnation the executor still knows.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zmqexecutor._liveness import HostLiveness, NewIncarnation, SessionOver

T = 2.0  # heartbeat_timeout
INTERVAL = 0.2  # heartbeat_interval


def live(now: float = 0.0) -> HostLiveness:
    """A host whose executor knows it: connected, one heartbeat sent at ``now``."""
    h = HostLiveness(T, now)
    h.executor_seen(now)
    h.heartbeat_sent(now)
    assert h.tick(now) is None
    return h


def run(h: HostLiveness, start: float, end: float) -> float:
    """A healthy loop from ``start`` to ``end``: a tick and a heartbeat every INTERVAL."""
    now = start
    while now < end:
        now = round(now + INTERVAL, 6)
        assert h.tick(now) is None, f"healthy loop renewed at {now}"
        h.heartbeat_sent(now)
    return now


# ---------------------------------------------------------------------------- examples


def test_frozen_longer_than_timeout_starts_new_incarnation() -> None:
    h = live()
    now = run(h, 0.0, 3.0)
    decision = h.tick(now + T + 0.3)  # the loop stood still 2.3 s (SIGSTOP, sleep)
    assert isinstance(decision, NewIncarnation), decision
    assert "stood still for 2.3s" in decision.reason and "heartbeat_timeout=2s" in decision.reason
    assert h.incarnation == 1
    assert not h.known, "the new incarnation is unknown until its first heartbeat"


def test_one_freeze_gives_one_incarnation() -> None:
    h = live()
    assert isinstance(h.tick(5.0), NewIncarnation)
    for now in (5.0, 5.1, 9.0, 20.0):  # no heartbeat of the new incarnation yet
        assert h.tick(now) is None
    assert h.incarnation == 1


def test_freeze_within_timeout_keeps_incarnation() -> None:
    h = live()
    now = run(h, 0.0, 1.0)
    assert h.tick(now + T) is None, "silence of exactly heartbeat_timeout is not loss"
    h.heartbeat_sent(now + T)
    assert h.tick(now + T + 0.1) is None
    assert h.incarnation == 0


def test_later_freezes_renew_again() -> None:
    h = live()
    assert isinstance(h.tick(3.0), NewIncarnation)
    h.heartbeat_sent(3.0)  # the new incarnation announces itself
    now = run(h, 3.0, 4.0)
    assert isinstance(h.tick(now + 10.0), NewIncarnation)
    assert h.incarnation == 2


def test_unknown_host_never_renews() -> None:
    """Before the executor was ever reached there is nothing to lose."""
    h = HostLiveness(T, 0.0)
    h.heartbeat_sent(0.1)  # not connected yet: reaches nobody (for now)
    assert h.tick(60.0) is None
    assert h.incarnation == 0 and not h.known


def test_frozen_after_handshake_before_first_heartbeat() -> None:
    """The executor knows us from the handshake on (the queued heartbeat arrives then, and
    the worker processes say HELLO): a freeze before our next heartbeat still counts. Seen
    under CPU load: the host stayed forgotten."""
    h = HostLiveness(T, 0.0)
    h.heartbeat_sent(0.0)  # queued before the connection
    h.executor_seen(0.05)
    assert h.known
    assert h.tick(0.1) is None
    assert isinstance(h.tick(2.3), NewIncarnation)


def test_heartbeats_that_cannot_be_sent_lead_to_new_incarnation() -> None:
    """The loop runs, but no heartbeat goes out (the socket refuses): the executor hears
    nothing, so after heartbeat_timeout it has declared us lost."""
    h = live()
    decision = None
    now = 0.0
    while decision is None and now < 10.0:
        now = round(now + INTERVAL, 6)
        decision = h.tick(now)
    assert isinstance(decision, NewIncarnation)
    assert now == pytest.approx(T + INTERVAL)
    assert "no heartbeat could reach the executor" in decision.reason


def test_connection_dropped_ends_session_once() -> None:
    h = live()
    over = h.connection_dropped(1.0)
    assert isinstance(over, SessionOver)
    assert h.connection_dropped(1.1) is None, "a second drop without a connection ends nothing"
    assert not h.connected and not h.known
    h.heartbeat_sent(1.2)  # into a dead connection: reaches nobody
    assert h.tick(30.0) is None, "the session already ended; no incarnation on top"
    assert h.incarnation == 0


def test_reconnect_then_freeze_renews() -> None:
    h = live()
    h.connection_dropped(1.0)
    h.executor_seen(1.5)
    h.heartbeat_sent(1.5)
    assert isinstance(h.tick(4.0), NewIncarnation)


def test_heartbeat_after_the_deadline_does_not_revive() -> None:
    """The host froze after its tick and before its heartbeat: that heartbeat comes too
    late for the executor, so it must not keep the lost incarnation (seen in a stress run:
    the host stayed forgotten)."""
    h = live()
    now = run(h, 0.0, 1.0)
    h.heartbeat_sent(now + T + 0.5)
    decision = h.tick(now + T + 0.6)
    assert isinstance(decision, NewIncarnation), decision
    assert "2.6s" in decision.reason, decision.reason


def test_clock_never_runs_backwards_in_the_view() -> None:
    h = live(10.0)
    assert h.tick(9.0) is None  # a caller's stale timestamp does not move the view back
    assert isinstance(h.tick(12.5), NewIncarnation)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="heartbeat_timeout must be positive"):
        HostLiveness(0.0, 0.0)


def test_repr_shows_state() -> None:
    assert "incarnation=0 connected=True" in repr(live())


# ---------------------------------------------------------------------------- simulation


class HostAgainstExecutor(RuleBasedStateMachine):
    """The host's view and a model of the executor, driven through random histories.

    Model: a heartbeat sent while connected reaches the executor at once; the executor
    declares the host's current incarnation lost as soon as it heard nothing from it for
    longer than T; a dropped connection ends the session (the supervisor kills the
    session's worker processes), after which the executor knows no incarnation of us.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.host = HostLiveness(T, self.now)
        self.connected = False
        #: when the executor last heard from the current incarnation (None: it does not
        #: know it)
        self.heard: float | None = None
        #: the executor has declared the current incarnation lost (forgot its workers)
        self.lost = False
        self.renewals = 0

    def _advance(self, dt: float) -> None:
        self.now += dt
        if self.heard is not None and self.now - self.heard > T:
            self.lost = True

    def _tick(self) -> None:
        decision = self.host.tick(self.now)
        if decision is None:
            assert not self.lost, (
                f"zombie: the executor declared this incarnation lost (silent since "
                f"{self.heard}, now {self.now:.2f}) but the host kept it"
            )
            return
        assert isinstance(decision, NewIncarnation)
        assert self.lost, "renewed an incarnation that the executor still knows"
        self.renewals += 1
        self.heard, self.lost = None, False

    @rule(dt=st.floats(0.0, INTERVAL))
    def loop_iteration(self, dt: float) -> None:
        self._advance(dt)
        self._tick()

    @rule(dt=st.floats(0.0, 5 * T))
    def stand_still(self, dt: float) -> None:
        """SIGSTOP, suspend, a paused VM: time passes, the loop does not."""
        self._advance(dt)
        self._tick()

    @rule(dt=st.floats(0.0, 5 * T))
    def stand_still_before_heartbeat(self, dt: float) -> None:
        """Frozen between the loop's tick and its heartbeat: the heartbeat goes out first."""
        self._advance(dt)
        self.heartbeat()

    @rule()
    def heartbeat(self) -> None:
        self.host.heartbeat_sent(self.now)
        if self.connected and not self.lost:
            self.heard = self.now  # a lost incarnation stays lost: its workers are forgotten

    @precondition(lambda self: not self.connected)
    @rule()
    def handshake(self) -> None:
        """From now on the executor may know us: queued heartbeats, workers' HELLO."""
        self.connected = True
        self.host.executor_seen(self.now)
        self.heard = self.now

    @rule()
    def drop(self) -> None:
        over = self.host.connection_dropped(self.now)
        assert (over is not None) == self.connected, "SessionOver exactly when one was up"
        self.connected = False
        self.heard, self.lost = None, False

    @invariant()
    def views_agree(self) -> None:
        assert self.host.connected == self.connected
        assert self.host.known == (self.heard is not None)
        assert self.host.incarnation == self.renewals


HostAgainstExecutor.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None
)
test_host_against_executor = HostAgainstExecutor.TestCase


def test_a_second_handshake_without_a_drop_ends_the_session() -> None:
    """The connection was made anew with no drop seen (a restarted executor on the same
    address while this host was frozen, seen in test_executor_restart under load): the
    worker processes hold the old session and would wait forever, so the session ends."""
    h = live()
    over = h.executor_seen(2.0)
    assert isinstance(over, SessionOver) and "anew" in over.reason
    assert h.connected and h.known, "the new connection is up and knows us"
    assert h.tick(2.1) is None
