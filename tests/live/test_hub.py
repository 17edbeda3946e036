"""
Tests of the live hub: parked waiters, fan-out, cancellation, the cap.
"""

import pytest
from twisted.internet.defer import CancelledError

from blip.live.hub import Hub, TooManyWaiters
from blip.model import Point


def test_publish_fires_the_meters_waiters_only() -> None:
    """
    A point fires every waiter of its meter, once, and no other meter's.
    """
    hub = Hub()
    one, two, other = hub.wait(1), hub.wait(1), hub.wait(2)
    got: list[Point] = []
    one.addCallback(got.append)
    two.addCallback(got.append)
    point = Point(1, 1000, 50)
    hub.publish(point)
    assert got == [point, point]
    assert not other.called
    assert hub.waiting == 1
    hub.publish(Point(1, 1001, 50))
    assert got == [point, point]


def test_cancelled_waiter_is_removed_at_once() -> None:
    """
    A client that hangs up (its Deferred cancelled) leaves no waiter.
    """
    hub = Hub()
    waiters = [hub.wait(1) for _ in range(5)]
    assert hub.waiting == 5
    for d in waiters[:3]:
        d.cancel()
        d.addErrback(lambda f: f.trap(CancelledError))
    assert hub.waiting == 2
    got: list[Point] = []
    for d in waiters[3:]:
        d.addCallback(got.append)
    hub.publish(Point(1, 1, 1))
    assert len(got) == 2
    assert hub.waiting == 0


def test_waiters_for_any_meter_id_leave_nothing_behind() -> None:
    """
    Clients may park on any meter id: once they hang up, nothing is kept
    for those meters (memory does not grow with the ids asked for), and a
    meter that still has a waiter keeps it.
    """
    hub = Hub()
    kept = hub.wait(1)
    for meter in range(2, 1002):
        d = hub.wait(meter)
        d.cancel()
        d.addErrback(lambda f: f.trap(CancelledError))
    assert hub._waiters.keys() == {1}
    got: list[Point] = []
    kept.addCallback(got.append)
    hub.publish(Point(1, 1000, 50))
    assert got == [Point(1, 1000, 50)] and hub._waiters == {}


def test_cancel_after_publish_is_harmless() -> None:
    """
    Cancelling a waiter that already fired changes nothing.
    """
    hub = Hub()
    d = hub.wait(1)
    hub.publish(Point(1, 1, 1))
    d.cancel()
    assert hub.waiting == 0


def test_cap_on_waiters() -> None:
    """
    Past ``max_waiters`` parked clients, waiting is refused.
    """
    hub = Hub(max_waiters=2)
    hub.wait(1)
    hub.wait(2)
    with pytest.raises(TooManyWaiters):
        hub.wait(1)


def test_close_releases_every_waiter() -> None:
    """
    At shutdown every parked waiter fails with CancelledError.
    """
    hub = Hub()
    failures = []
    for meter in (1, 2):
        hub.wait(meter).addErrback(lambda f: failures.append(f.check(CancelledError)))
    hub.close()
    assert failures == [CancelledError, CancelledError]
    assert hub.waiting == 0


def test_last_point_and_remember() -> None:
    """
    The hub keeps each meter's newest point; remembering an older one does
    not replace it.
    """
    hub = Hub()
    assert hub.last(1) is None
    hub.remember(Point(1, 500, 5))
    hub.publish(Point(1, 900, 9))
    hub.remember(Point(1, 600, 6))
    assert hub.last(1) == Point(1, 900, 9)


def test_listeners_get_every_point_and_a_failing_one_is_isolated() -> None:
    """
    Listeners see every point; one that raises does not stop the others.
    """
    hub = Hub()
    got: list[Point] = []

    def broken(point: Point) -> None:
        raise RuntimeError("boom")

    hub.listen(broken)
    stop = hub.listen(got.append)
    hub.publish(Point(1, 1, 1))
    stop()
    hub.publish(Point(1, 2, 1))
    assert got == [Point(1, 1, 1)]


class Parked:
    """A waiter of its own kind: notes what it is handed."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.got: list[object] = []

    def point(self, point: Point) -> None:
        self.got.append(point)
        if self.broken:
            raise RuntimeError("boom")

    def released(self, reason: Exception) -> None:
        self.got.append(type(reason))
        if self.broken:
            raise RuntimeError("boom")


def test_any_waiter_is_handed_its_point_or_its_release() -> None:
    """
    Any object with the waiter's methods parks as a Deferred does, under
    the same cap: it is handed its meter's next point once, or its release
    when the hub closes; one that leaves is forgotten (leaving twice, or
    after its point, changes nothing); one that fails stops no other.
    """
    hub = Hub(max_waiters=3)
    broken, kept, gone = Parked(broken=True), Parked(), Parked()
    for waiter in (broken, kept, gone):
        hub.park(1, waiter)
    with pytest.raises(TooManyWaiters):
        hub.park(2, Parked())
    hub.unpark(1, gone)
    hub.unpark(1, gone)
    assert hub.waiting == 2
    point = Point(1, 1000, 50)
    hub.publish(point)
    hub.unpark(1, kept)
    assert (broken.got, kept.got, gone.got, hub.waiting) == ([point], [point], [], 0)
    hub.park(2, broken)
    hub.park(3, kept)
    hub.close()
    assert broken.got[-1] is CancelledError and kept.got[-1] is CancelledError
    assert hub.waiting == 0 and hub._waiters == {}
