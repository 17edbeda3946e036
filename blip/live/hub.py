"""
The live hub: every new point goes from here to the parked long-polls and
the live subscribers, before (and whether or not) the database has it.
"""

from typing import Callable, Optional

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


class Hub:
    """
    Parked long-poll waiters per meter, live listeners, and the last point of
    each meter.

    A waiter is a :class:`Deferred` whose canceller removes it, so a client
    that hangs up (Klein cancels the request's Deferred) leaves nothing
    behind. Publishing takes the meter's waiters out before firing them, so a
    canceller never meets a fired waiter.

    :param max_waiters: how many long-polls may be parked at once.
    :param counters: where parked and refused long-polls are counted.
    """

    log = Logger()

    def __init__(self, max_waiters: int = 10000, counters: Optional[Counters] = None) -> None:
        self.max_waiters = max_waiters
        self.counters = counters if counters is not None else Counters()
        self._waiters: dict[int, dict[Deferred[Point], None]] = {}
        self._last: dict[int, Point] = {}
        self._listeners: list[Listener] = []

    def wait(self, meter: int) -> "Deferred[Point]":
        """
        :param meter: the meter whose next point is wanted.
        :return: a Deferred that fires with that point.
        :raise TooManyWaiters: when ``max_waiters`` are already parked.
        """
        if self.waiting >= self.max_waiters:
            self.counters.waiters_refused += 1
            raise TooManyWaiters()
        waiters = self._waiters.setdefault(meter, {})

        def cancel(d: "Deferred[Point]") -> None:
            if d in waiters:
                del waiters[d]
                self.waiting -= 1
                # Nothing is kept for a meter nobody waits for: a client
                # may ask for any meter id.
                if not waiters and self._waiters.get(meter) is waiters:
                    del self._waiters[meter]

        d: Deferred[Point] = Deferred(cancel)
        waiters[d] = None
        self.waiting += 1
        return d

    @property
    def waiting(self) -> int:
        """
        How many long-polls are parked now.
        """
        return self.counters.waiters

    @waiting.setter
    def waiting(self, count: int) -> None:
        self.counters.waiters = count

    def publish(self, point: Point) -> None:
        """
        Hand a new point to the meter's waiters and to every listener.
        """
        self._last[point.meter] = point
        waiters = self._waiters.pop(point.meter, None)
        if waiters:
            self.waiting -= len(waiters)
            for d in waiters:
                d.callback(point)
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
        self.waiting = 0
        for parked in waiters.values():
            for d in parked:
                d.errback(CancelledError("shutting down"))


class HubService(Service):
    """
    Releases the parked long-polls when the daemon stops.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def stopService(self) -> None:
        super().stopService()
        self.hub.close()
