"""
Gap repair from peer loggers (``--peer URL``, ``blip repair``): two
blipservers reading the same meter, each with its own database, fill the
stretches when one's logger was down with the other's points, so that
each ends with every blink, once.

A stretch to repair is one when no ingest of this node's database was
listening (``logger_down``, from the record of ingest periods: see
:mod:`blip.ingest.downtime`; for history, ``blip repair`` takes the
``unknown`` stretches before the first record too). The peer is asked for
its points between this node's last own point before the stretch and its
first own point after it (``/api/v1/meters/<id>/readings``, a page at a
time), and a point of the peer is stored when the middle of its interval,
``stamp - ms / 2``, lies after this node's own point before it and before
the start, ``stamp - ms``, of this node's own point after it. So the blink
of either edge, which both loggers saw, is not stored twice, although the
two loggers' clocks and serial lines differ by some milliseconds: a blink
is told apart from the next by half the time between them. Own points
inside the stretch (imported, say) count as edges too.

A peer's page is refused whole if its points are not strictly increasing,
lie outside what was asked, are stamped after this node's now or have ms
out of range. A stretch is repaired once, from one peer (the first that
answers, in the order given), and recorded (see :mod:`blip.db.repairs`);
points already stored are skipped, so a repair cut short and run again
stores nothing twice. A stretch whose end has no own point yet (the
logger has not seen a blink since it came back) waits for one.

The daemon repairs the stretches of the last ``--peer-window`` at start
and after each of its own outages ends (an ingest period starts), and
tries again with growing intervals while a peer is away or slow, or a
stretch waits for its end: never in the way of ingest, which does not
wait for it.
"""

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from blip.common.retry import backoff
from blip.common.waiting import within
from blip.counters import Counters
from blip.db.node_state import IngestPeriods
from blip.db.pool import RETRIABLE, Pool
from blip.db.queries import Queries, Reading
from blip.db.readings import Readings
from blip.db.repairs import Repair, Repairs
from blip.ingest.downtime import LOGGER_DOWN, Downtime, Stretch
from blip.model import INT_MAX, Point
from blip.remote.client import Client, RemoteError, RemoteRefused

#: Points asked of a peer, and read of this node, at a time.
PAGE = 5000
#: Most bytes of a page of a peer's points.
PAGE_BYTES = 2 << 20
#: Seconds before the first new attempt after a pass left stretches
#: unrepaired; each later one waits twice as long, up to :data:`MOST_WAIT`.
FIRST_WAIT = 5.0
MOST_WAIT = 300.0
#: Seconds after an ingest period starts before its outage is repaired (a
#: blink or two for the stretch to end at).
AFTER_OUTAGE = 2.0
#: Seconds a stop waits for a pass under way.
STOP_WAIT = 1.0
#: Default ``--peer-window``: days of the past the daemon repairs.
WINDOW_DAYS = 7


class PeerWrong(RemoteError):
    """
    A peer answered points that cannot be right; the message says how.
    """


class Pending(Exception):
    """
    The stretch has no own point after it yet.
    """


@dataclass
class Pass:
    """
    What one pass over the stretches did.

    :param repaired: stretches repaired.
    :param points: points stored.
    :param pending: stretches that wait for their end.
    :param failed: stretches no peer could repair this time.
    :param problems: what went wrong, one line each (a stretch, a peer, why).
    """

    repaired: int = 0
    points: int = 0
    pending: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether nothing is left to try again."""
        return not (self.pending or self.failed)


class Repairer:
    """
    Repairs this node's stretches from its peers.

    :param peers: the peers, tried in this order.
    :param pool: this node's database.
    :param counters: where stored and refused points and failures are
        counted.
    :param clock: the current time.
    """

    log = Logger()

    def __init__(
        self, peers: Sequence[Client], pool: Pool, counters: Counters, clock: IReactorTime
    ) -> None:
        self.peers = list(peers)
        self.counters = counters
        self.clock = clock
        self.repairs = Repairs(pool)
        self.readings = Readings(pool)
        self.own = Queries(pool)
        self.downtime = Downtime(IngestPeriods(pool))
        #: Set when the daemon stops: a pass ends at its next step.
        self.stopping = False

    def now(self) -> int:
        """:return: the current unix time in ms."""
        return int(self.clock.seconds() * 1000)

    async def run(
        self,
        meters: Iterable[int],
        first: int,
        last: int,
        kinds: Sequence[str] = (LOGGER_DOWN,),
        wait: bool = True,
    ) -> Pass:
        """
        Repair every stretch of ``kinds`` in ``[first, last)`` of each of
        ``meters`` not repaired yet.

        :param wait: whether a stretch with no own point after it waits for
            one; else (history) it ends where it ends.
        """
        outcome = Pass()
        now = self.now()
        last = min(last, now)
        if last <= first:
            return outcome
        stretches = [
            s for s in await self.downtime.split([(first, last)], now) if s.kind in kinds
        ]
        for meter in sorted(set(meters)):
            for stretch in stretches:
                if self.stopping:
                    return outcome
                await self._one(meter, stretch, wait, outcome)
        return outcome

    async def _one(self, meter: int, stretch: Stretch, wait: bool, outcome: Pass) -> None:
        if await self.repairs.overlapping(meter, stretch.start, stretch.end, 1):
            return
        failed = False
        for peer in self.peers:
            if self.stopping:
                return
            try:
                count = await self.stretch(meter, stretch, peer, wait)
            except Pending:
                outcome.pending += 1
                return
            except RemoteError as e:
                if isinstance(e, RemoteRefused) and e.status == 404:
                    # The peer does not know the meter: nothing to take.
                    continue
                self.counters.repair_failures += 1
                outcome.problems.append(
                    f"meter {meter} from {stretch.start} to {stretch.end} from {peer.url}: {e}"
                )
                failed = True
            else:
                outcome.repaired += 1
                outcome.points += count
                self.log.info(
                    "repaired meter {meter} from {start} to {end} with {count} points of {peer}",
                    meter=meter, start=stretch.start, end=stretch.end, count=count, peer=peer.url,
                )
                return
        if failed:
            outcome.failed += 1

    async def stretch(self, meter: int, stretch: Stretch, peer: Client, wait: bool = True) -> int:
        """
        Fill one stretch of one meter with the points of one peer, and
        record it.

        :param wait: whether a stretch with no own point after it waits for
            one (else it ends where it ends).
        :return: how many points were stored.
        :raise Pending: when the stretch has no own point after it yet and
            ``wait`` is true.
        :raise RemoteError: when the peer is away or wrong (what was stored
            stays: trying again stores it no second time).
        """
        before, after = await self.repairs.edges(meter, stretch.start, stretch.end)
        if after is None and wait:
            raise Pending()
        low = stretch.start if before is None else before.stamp
        high = stretch.end if after is None else after.stamp
        own = _OwnPoints(self.own, meter, stretch.start, stretch.end, after)
        stored = 0
        cursor = low + 1
        previous: Optional[int] = None
        while cursor < high:
            if self.stopping:
                raise Pending()
            page = await self._page(peer, meter, cursor, high)
            taken: list[Point] = []
            now = self.now()
            for stamp, ms in page:
                if previous is not None and stamp <= previous:
                    self._refused(len(page))
                    raise PeerWrong(f"points of meter {meter} not strictly increasing at {stamp}")
                if not (cursor <= stamp < high) or stamp > now or not 1 <= ms <= INT_MAX:
                    self._refused(len(page))
                    raise PeerWrong(f"point ({stamp}, {ms}) of meter {meter} is not one asked for")
                previous = stamp
                middle = stamp - ms / 2
                if middle <= low:
                    continue
                if await own.admits(middle):
                    taken.append(Point(meter, stamp, ms))
            if taken:
                new = await self.readings.insert(taken, announce=False)
                stored += new
                self.counters.repaired += new
            if len(page) < PAGE:
                break
            cursor = page[-1][0] + 1
        await self.repairs.record(
            meter, Repair(stretch.start, stretch.end, peer.url, stored, self.now())
        )
        return stored

    async def _page(self, peer: Client, meter: int, first: int, last: int) -> list[tuple[int, int]]:
        answer = await peer.get(
            f"/api/v1/meters/{meter}/readings?from={first}&to={last}&limit={PAGE}", PAGE_BYTES
        )
        try:
            pairs = answer["points"]
            points = [(p[0], p[1]) for p in pairs if len(p) == 2]
            if len(points) != len(pairs) or len(points) > PAGE or not all(
                type(s) is int and type(m) is int for s, m in points
            ):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            self._refused(1)
            raise PeerWrong(f"{peer.url} did not answer a page of points of meter {meter}") from None
        return points

    def _refused(self, count: int) -> None:
        self.counters.peer_refused += count


class _OwnPoints:
    """
    This node's own points inside a stretch, read a page at a time as the
    peer's points go by, and the one after it: which own point follows a
    moment.

    :param after: the own point after the stretch, None when there is none
        (the stretch then ends where the caller says).
    """

    def __init__(
        self, store: Queries, meter: int, first: int, last: int, after: Optional[Reading]
    ) -> None:
        self.store = store
        self.meter = meter
        self.cursor = first
        self.last = last
        self.after = after
        self.ahead: deque[Reading] = deque()
        self.exhausted = False
        self.behind: Optional[Reading] = None

    async def admits(self, middle: float) -> bool:
        """
        :return: whether a peer's point whose interval's middle is
            ``middle`` (later than that of any asked before) lies after the
            own point before it and before the start of the own point after
            it.
        """
        while True:
            if not self.ahead and not self.exhausted:
                page = await self.store.points_page(self.meter, self.cursor, self.last, PAGE)
                self.ahead.extend(page)
                if len(page) < PAGE:
                    self.exhausted = True
                else:
                    self.cursor = page[-1].stamp + 1
            if self.ahead and self.ahead[0].stamp < middle:
                self.behind = self.ahead.popleft()
                continue
            break
        if self.behind is not None and middle <= self.behind.stamp:
            return False
        following = self.ahead[0] if self.ahead else self.after
        return following is None or middle < following.stamp - following.ms


class RepairService(Service):
    """
    Repairs this node's stretches of the last ``window`` seconds: at start
    (once the database is ready), after each outage of its own ends, and
    again with growing intervals while some are left. One pass at a time.

    :param repairer: does the work.
    :param meters: the meters to repair (those known now).
    :param window: seconds of the past repaired.
    :param ready: fires when the database is ready.
    :param clock: times the passes.
    """

    log = Logger()

    def __init__(
        self,
        repairer: Repairer,
        meters: Callable[[], Iterable[int]],
        window: float,
        ready: Callable[[], "Deferred[None]"],
        clock: IReactorTime,
    ) -> None:
        self.repairer = repairer
        self.meters = meters
        self.window = window
        self.ready = ready
        self.clock = clock
        self._delay = backoff(FIRST_WAIT, MOST_WAIT)
        self._attempts = 0
        self._timer: Optional[IDelayedCall] = None
        self._running: Optional[Deferred[None]] = None
        self._again = False
        self._waiting: Optional[Deferred[None]] = None
        self._said: set[str] = set()
        self._later = FIRST_WAIT

    def startService(self) -> None:
        super().startService()
        waiting = self._waiting = self.ready()
        waiting.addCallback(lambda _: self.soon(0))
        waiting.addErrback(lambda f: None if f.check(CancelledError) else self.log.failure("repair", f))

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self._waiting is not None and not self._waiting.called:
            self._waiting.cancel()
        self._cancel_timer()
        self.repairer.stopping = True
        return Deferred.fromCoroutine(self._stop(self._running))

    async def _stop(self, running: Optional["Deferred[None]"]) -> None:
        # A pass under way ends at its next step (a query or a request runs
        # to its end: cancelling a query would block); the stop waits a
        # little for it, not for a slow peer.
        if running is not None:
            await within(running, STOP_WAIT, self.clock)
        for peer in self.repairer.peers:
            await peer.close()

    def outage_ended(self) -> None:
        """
        An ingest period started: repair the outage before it soon.
        """
        self._attempts = 0
        self.soon(AFTER_OUTAGE)

    def soon(self, seconds: float) -> None:
        """
        Make a pass in ``seconds`` (or after the one under way).
        """
        if not self.running:
            return
        if self._running is not None:
            self._again = True
            return
        self._cancel_timer()
        self._timer = self.clock.callLater(seconds, self._start)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _start(self) -> None:
        self._timer = None
        running = self._running = Deferred.fromCoroutine(self._pass())
        running.addErrback(self._crashed)
        running.addBoth(self._ended)

    async def _pass(self) -> None:
        now = self.repairer.now()
        try:
            outcome = await self.repairer.run(self.meters(), now - int(self.window * 1000), now)
        except RETRIABLE as e:
            outcome = Pass(failed=1, problems=[f"the database: {e}"])
        for problem in outcome.problems:
            if problem not in self._said:
                self.log.warn("cannot repair {problem}; trying again later", problem=problem)
                self._said.add(problem)
        if outcome.done:
            self._attempts = 0
            self._said.clear()
        else:
            self._attempts += 1
            self._later = self._delay(self._attempts)

    def _crashed(self, f: Failure) -> None:
        self.log.failure("repairing gaps from peers failed", f)
        self._attempts += 1
        self._later = self._delay(self._attempts)

    def _ended(self, _: object) -> None:
        self._running = None
        if not self.running:
            return
        if self._again:
            self._again = False
            self.soon(0)
        elif self._attempts:
            self.soon(self._later)

