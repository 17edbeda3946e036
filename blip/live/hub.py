"""
The live hub: every new point goes from here to the parked long-polls and
the live subscribers, before (and whether or not) the database has it.
"""

from typing import Callable, Optional, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from blip.counters import Counters
from blip.model import Point

Listener = Callable[[Point], None]


class TooManyWaiters(Exception):
    """
    The cap on parked long-poll clients is reached.
    """


class Waiter(Protocol):
    """
    What waits, parked on the hub, for a meter's next point.
    """

    def point(self, point: Point) -> None:
        """
        Take the meter's next point; the waiter is no longer parked.
        """

    def released(self, reason: Exception) -> None:
        """
        No point is coming: the daemon stops; the waiter is no longer
        parked.
        """


class _Waiting:
    """
    The waiter behind a Deferred of :meth:`Hub.wait`.
    """

    __slots__ = ("deferred",)

    deferred: "Deferred[Point]"

    def point(self, point: Point) -> None:
        self.deferred.callback(point)

    def released(self, reason: Exception) -> None:
        self.deferred.errback(reason)


class Hub:
    """
    Parked long-poll waiters per meter, live listeners, and the last point of
    each meter.

    A waiter is anything with the methods of :class:`Waiter` (or, from
    :meth:`wait`, a :class:`Deferred` whose canceller removes it), so a
    client that hangs up leaves nothing behind. Publishing takes the
    meter's waiters out before handing them the point, so a waiter that
    leaves meanwhile is never met again.

    :param max_waiters: how many long-polls may be parked at once.
    :param counters: where parked and refused long-polls are counted.
    """

    log = Logger()

    def __init__(self, max_waiters: int = 10000, counters: Optional[Counters] = None) -> None:
        self.max_waiters = max_waiters
        self.counters = counters if counters is not None else Counters()
        self._waiters: dict[int, dict[Waiter, None]] = {}
        self._last: dict[int, Point] = {}
        self._listeners: list[Listener] = []

    def park(self, meter: int, waiter: Waiter) -> None:
        """
        Hand ``waiter`` the next point of ``meter`` (or its release).

        :raise TooManyWaiters: when ``max_waiters`` are already parked.
        """
        counters = self.counters
        if counters.waiters >= self.max_waiters:
            counters.waiters_refused += 1
            raise TooManyWaiters()
        waiters = self._waiters.get(meter)
        if waiters is None:
            waiters = self._waiters[meter] = {}
        waiters[waiter] = None
        counters.waiters += 1

    def unpark(self, meter: int, waiter: Waiter) -> None:
        """
        Forget ``waiter`` (a client that hung up), if it is still parked on
        ``meter``.
        """
        waiters = self._waiters.get(meter)
        if waiters is not None and waiters.pop(waiter, False) is None:
            self.counters.waiters -= 1
            # Nothing is kept for a meter nobody waits for: a client may
            # ask for any meter id.
            if not waiters:
                del self._waiters[meter]

    def wait(self, meter: int) -> "Deferred[Point]":
        """
        :param meter: the meter whose next point is wanted.
        :return: a Deferred that fires with that point; cancelling it
            forgets it.
        :raise TooManyWaiters: when ``max_waiters`` are already parked.
        """
        waiting = _Waiting()
        waiting.deferred = Deferred(lambda _: self.unpark(meter, waiting))
        self.park(meter, waiting)
        return waiting.deferred

    @property
    def waiting(self) -> int:
        """
        How many long-polls are parked now.
        """
        return self.counters.waiters

    def publish(self, point: Point) -> None:
        """
        Hand a new point to the meter's waiters and to every listener.
        """
        self._last[point.meter] = point
        waiters = self._waiters.pop(point.meter, None)
        if waiters:
            self.counters.waiters -= len(waiters)
            for waiter in waiters:
                try:
                    waiter.point(point)
                except Exception:
                    self.log.failure("waiter {waiter!r} failed", waiter=waiter)
        for listener in self._listeners:
            try:
                listener(point)
            except Exception:
                self.log.failure("live listener {listener!r} failed", listener=listener)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """
        Call ``listener`` with every point published from now on.

        :return: a function that stops it.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def last(self, meter: int) -> Optional[Point]:
        """
        :return: the newest point of ``meter`` known here, if any.
        """
        return self._last.get(meter)

    def newest_stamps(self) -> dict[int, int]:
        """
        :return: the stamp of the newest point known here, by meter.
        """
        return {meter: point.stamp for meter, point in self._last.items()}

    def remember(self, point: Point) -> None:
        """
        Record ``point`` as the meter's last one unless a newer one is known
        (used to seed the hub from the database).
        """
        last = self._last.get(point.meter)
        if last is None or last.stamp < point.stamp:
            self._last[point.meter] = point

    def close(self) -> None:
        """
        Release every parked waiter with :class:`CancelledError` (shutdown).
        """
        waiters, self._waiters = self._waiters, {}
        self.counters.waiters = 0
        for parked in waiters.values():
            for waiter in parked:
                try:
                    waiter.released(CancelledError("shutting down"))
                except Exception:
                    self.log.failure("waiter {waiter!r} failed", waiter=waiter)


class HubService(Service):
    """
    Releases the parked long-polls when the daemon stops.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def stopService(self) -> None:
        super().stopService()
        self.hub.close()
