"""
Points between nodes: every ingest write announces its new points on a
PostgreSQL channel (``NOTIFY``, sent by :meth:`blip.db.readings.Readings.insert` in
the write's own transaction), and every node that serves HTTP listens on it
(``LISTEN``) and hands the points to its hub, so that a web node's
long-polls and live streams get the points of every ingest node.

The subscription lives on a connection of its own (a pool's connections
rotate; a subscription belongs to one connection). When that connection is
lost, the points committed meanwhile are not announced to this node again:
once it is back, the listener subscribes again and then reads them from the
database, so that no client misses a point. Notifications that arrive while
it reads are held back and handed on after, in order.

A point reaches the hub only if it is newer than the newest point the hub
knows of its meter. Stamps of a meter strictly increase and each meter is
read by one ingest node, so this drops exactly what the hub has had:
points a node ingested itself (an ``all`` node publishes them on arrival,
before they are committed and announced), and points read from the
database that were also announced.

Any login of the database may ``NOTIFY`` on the channel (a read-only role
too: notifications have no privileges), so an announced point is not
trusted blindly: it reaches the hub only if its meter is known here
(configured, in the meters table, or with points stored) and its stamp lies
between :data:`PAST` seconds before and :data:`AHEAD` seconds after now.
Anything else is counted and logged (at most once a minute): a stamp far
ahead would freeze the meter's live feed here (later points would look
older), unknown meter ids would grow memory without bound. A point of a
meter not known yet makes the meters table be read again (at most every
:data:`METERS_CHECK` seconds): a meter first seen by another node is known
once that node has written it there. After the connection was lost, a
meter the hub has not seen starts from its newest stored point, not from
its first (history imported meanwhile is not live).
"""

from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from blip.common.latch import Latch
from blip.common.retry import retrying
from blip.common.throttle import Throttle
from blip.common.waiting import detached
from blip.counters import Counters
from blip.db.pool import RETRIABLE, connection_settings, own_connection
from blip.db.readings import CHANNEL, Readings, listen
from blip.live.hub import Hub
from blip.meters import Meters
from blip.model import INT_MAX, STAMP_MAX, STAMP_MIN, Point

#: Points read from the database per query when catching up.
CATCH_UP_PAGE = 5000
#: Most notified points held back while catching up; beyond that they are
#: dropped and read from the database instead (they are all committed).
MAX_HELD = 200_000
#: Seconds between two warnings about notifications that cannot be read,
#: or points that are refused.
WARN_INTERVAL = 60.0
#: Oldest stamp of an announced point taken, in seconds before now: points
#: are announced once committed, within a batch period normally, later when
#: an ingest node writes what it spooled during an outage (those are then
#: for queries, not live).
PAST = 300.0
#: Newest stamp of an announced point taken, in seconds after now: only
#: clocks of two nodes that disagree put a point committed elsewhere ahead
#: of this node's clock.
AHEAD = 60.0
#: Least seconds between two readings of the meters table prompted by
#: points of meters not known here.
METERS_CHECK = 5.0


class PayloadError(ValueError):
    """
    A notification on the channel is not a list of points.
    """


def decode(payload: str) -> list[Point]:
    """
    Read the points of a notification (the format is described with
    :data:`blip.db.readings._INSERT`): groups separated by ``;``, one per meter,
    ``<meter>:<stamp>,<ms>`` followed by `` <step>,<ms>`` for each further
    point, where the step is the stamp's increase over the previous point.

    :raise PayloadError: when the payload is anything else.
    """
    points = []
    try:
        for group in payload.split(";"):
            head, colon, rest = group.partition(":")
            if not colon:
                raise PayloadError(f"no meter in {group[:40]!r}")
            meter = int(head)
            if not 0 <= meter <= INT_MAX:
                raise PayloadError(f"meter {meter} out of range")
            stamp: Optional[int] = None
            for pair in rest.split(" "):
                step, comma, ms_text = pair.partition(",")
                if not comma:
                    raise PayloadError(f"not a point: {pair[:40]!r}")
                if stamp is None:
                    stamp = int(step)
                else:
                    increase = int(step)
                    if increase <= 0:
                        raise PayloadError(f"stamps do not increase in {group[:40]!r}")
                    stamp += increase
                ms = int(ms_text)
                if not (STAMP_MIN <= stamp <= STAMP_MAX and 0 < ms <= INT_MAX):
                    raise PayloadError(f"point out of range: {stamp},{ms}")
                points.append(Point(meter, stamp, ms))
    except ValueError as e:
        if isinstance(e, PayloadError):
            raise
        raise PayloadError(str(e)) from None
    return points


class _InOrder:
    """
    Hands a connection's notifications to its observers at once and in
    order. txpostgres's default runs each batch as a separate cooperative
    task, and tasks interleave: a later batch could be handed on before an
    earlier one, and its newer points would then hide the older ones.
    """

    def cooperate(self, iterator: Any) -> None:
        for _ in iterator:
            pass


class Listener:
    """
    Subscribes to the channel on a connection of its own and hands every
    announced point to the hub; seeds the hub with each meter's last point
    at start, and catches up from the database after the connection was
    lost.

    :param dsn: the primary database (notifications are not replicated, and
        a replica may lag behind them).
    :param store: reads the last points and the points missed, from the
        same database.
    :param hub: where the points go.
    :param meters: the meters known here.
    :param reactor: runs the connection and times retries.
    :param counters: the daemon's counters.
    :param node: this node's name, for ``pg_stat_activity``.
    :param clock: what "now" is for the stamps of announced points (the
        reactor when None).
    :param refresh_meters: reads the meters table again into ``meters``;
        returns a Deferred that never fails.
    """

    log = Logger()

    def __init__(
        self,
        dsn: str,
        store: Readings,
        hub: Hub,
        meters: Meters,
        reactor: IReactorTime,
        counters: Counters,
        node: str = "",
        clock: Optional[IReactorTime] = None,
        refresh_meters: Optional[Callable[[], "Deferred[None]"]] = None,
    ) -> None:
        self.dsn = dsn
        self.node = node
        self.store = store
        self.hub = hub
        self.meters = meters
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.refresh_meters = refresh_meters
        self.counters = counters
        self.connection: Any = None
        self._live = Latch()
        self._held: Optional[list[Point]] = None
        self._overflowed = False
        self._generation = 0
        self._seeded = False
        self._stopped = False
        self._down = False
        self._syncing: Optional[Deferred[None]] = None
        self._bad_warnings = Throttle(reactor, WARN_INTERVAL)
        self._refusals = Throttle(self.clock, WARN_INTERVAL)
        self._meter_checks = Throttle(self.clock, METERS_CHECK)
        self._checking: Optional[Deferred[None]] = None

    @property
    def live(self) -> bool:
        """
        Whether every committed point reaches the hub now.
        """
        return self._live.is_set

    def start(self) -> None:
        """
        Open the connection (retrying in the background while the database
        cannot be reached), subscribe, and seed the hub.
        """
        connection = self.connection = own_connection(self.reactor, _InOrder(), self._lost)
        connection.addNotifyObserver(self._notified)
        connection.detector.addRecoveryHandler(self._recovered)
        extra = connection_settings(self.dsn)
        extra["application_name"] = f"blipserver listen {self.node}".strip()
        d = connection.connect(self.dsn, **extra)
        d.addCallbacks(lambda _: self._catch_up(), self._not_opened)

    def when_live(self) -> "Deferred[None]":
        """
        :return: a Deferred that fires once every committed point reaches
            the hub (at once if it does now).
        """
        return self._live.wait()

    def stop(self) -> None:
        """
        Close the connection for good.
        """
        self._stopped = True
        self._generation += 1
        self._live.clear()
        if self._syncing is not None:
            self._syncing.cancel()
        if self.connection is not None:
            self.connection.close_for_good()

    def _not_opened(self, f: Failure) -> None:
        # Starts the reconnection (and logs, through _lost) when the
        # database cannot be reached.
        self.connection.detector.checkForDeadConnection(f)
        if not self.connection.detector.connectionIsDead:
            self.log.failure("cannot open the LISTEN connection", f)

    def _lost(self, why: str) -> None:
        self._live.clear()
        self._generation += 1
        self._held = None
        if not self._down and not self._stopped:
            self._down = True
            self.log.warn(
                "no live points from the database: {why}; reconnecting", why=why or "connection lost"
            )

    def _recovered(self) -> None:
        # A recovery handler of the connection's detector: it is open again.
        self._catch_up()

    def _catch_up(self) -> None:
        if self._stopped:
            return
        self._generation += 1
        self._held = []
        self._overflowed = False
        d = Deferred.fromCoroutine(self._sync(self._generation))
        d.addErrback(self._sync_failed)

    async def _sync(self, generation: int) -> None:
        # Subscribe first: every point committed from then on is announced
        # (and held back meanwhile); every point committed before is in
        # what is read next.
        await listen(self.connection)
        caught_up = 0

        async def read() -> None:
            nonlocal caught_up
            while generation == self._generation:
                # Each meter's newest point: all of them the first time;
                # later, those of meters the hub has not seen (first stored
                # while the connection was down, or imported), which then
                # start from there rather than from their first point.
                for point in await self.store.last_points():
                    if not self._seeded or self.hub.last(point.meter) is None:
                        self.hub.remember(point)
                if self._seeded:
                    caught_up += await self._read_missed(generation)
                self._seeded = True
                if not self._overflowed:
                    return
                # More was announced meanwhile than is held: read it too.
                self._overflowed = False
                self._held = []

        # Stop ends the wait, never a read under way (cancelling a query
        # blocks); the read then finds its generation over.
        syncing = self._syncing = Deferred.fromCoroutine(
            retrying(
                lambda: detached(Deferred.fromCoroutine(read())),
                RETRIABLE,
                self.reactor,
                self.log,
                "read the points missed",
            )
        )
        try:
            await syncing
        finally:
            if self._syncing is syncing:
                self._syncing = None
        if generation != self._generation:
            return
        held, self._held = self._held or [], None
        for point in held:
            self._deliver(point)
        if self._down:
            self._down = False
            self.log.info(
                "live points from the database are back; read {count} points committed"
                " meanwhile",
                count=caught_up,
            )
        else:
            self.log.info("receiving live points from the database (channel {channel})", channel=CHANNEL)
        self._live.set()

    async def _read_missed(self, generation: int) -> int:
        count = 0
        while True:
            page = await self.store.catch_up(self.hub.newest_stamps(), CATCH_UP_PAGE)
            if generation != self._generation:
                return count
            for point in page:
                self._deliver(point)
            count += len(page)
            self.counters.caught_up += len(page)
            if len(page) < CATCH_UP_PAGE:
                return count

    def _sync_failed(self, f: Failure) -> None:
        # The connection was lost while subscribing or reading (it is being
        # reopened, and the next opening starts over), or the daemon stops.
        if f.check(CancelledError, *RETRIABLE) or self._stopped:
            return
        self.log.failure("catching up with the database failed", f)

    def _notified(self, notify: Any) -> None:
        # A NOTIFY observer: must not raise (txpostgres would only log it).
        try:
            if notify.channel != CHANNEL:
                return
            try:
                points = decode(notify.payload)
            except PayloadError as e:
                self._bad(notify, str(e))
                return
            self.counters.notified += len(points)
            points = self._trusted(points, notify.pid)
            if self._held is None:
                for point in points:
                    self._deliver(point)
            elif len(self._held) + len(points) > MAX_HELD:
                self._held = []
                self._overflowed = True
            elif not self._overflowed:
                self._held.extend(points)
        except Exception:
            self.log.failure("handling a notification failed")

    def _trusted(self, points: list[Point], pid: int) -> list[Point]:
        """
        :return: the points of known meters stamped near now; the others
            are counted and logged.
        """
        now = int(self.clock.seconds() * 1000)
        oldest, newest = now - int(PAST * 1000), now + int(AHEAD * 1000)
        taken: list[Point] = []
        refused: Optional[tuple[Point, str]] = None
        count = 0
        for point in points:
            if point.meter not in self.meters and self.hub.last(point.meter) is None:
                why = "its meter is not known here"
                self._check_meters()
            elif not oldest <= point.stamp <= newest:
                why = f"stamped {(point.stamp - now) / 1000:+.0f} s from now"
            else:
                taken.append(point)
                continue
            count += 1
            refused = refused or (point, why)
        if refused is not None:
            self.counters.notified_refused += count
            if self._refusals.due() is not None:
                point, why = refused
                self.log.warn(
                    "ignoring {count} points announced on {channel} by server process"
                    " {pid}, such as meter {meter} at {stamp}: {why}; only points of known"
                    " meters stamped from {past:g} s before to {ahead:g} s after now go"
                    " live ({total} ignored so far)",
                    count=count, channel=CHANNEL, pid=pid, meter=point.meter,
                    stamp=point.stamp, why=why, past=PAST, ahead=AHEAD,
                    total=self.counters.notified_refused,
                )
        return taken

    def _check_meters(self) -> None:
        if (
            self.refresh_meters is None
            or self._checking is not None
            or self._meter_checks.due() is None
        ):
            return
        checking = self._checking = self.refresh_meters()

        def done(_: object) -> None:
            self._checking = None

        checking.addBoth(done)

    def _deliver(self, point: Point) -> None:
        last = self.hub.last(point.meter)
        if last is None or point.stamp > last.stamp:
            self.hub.publish(point)

    def _bad(self, notify: Any, why: str) -> None:
        self.counters.bad_notifications += 1
        if self._bad_warnings.due() is not None:
            self.log.warn(
                "ignoring a notification on {channel} from server process {pid} that is"
                " not a list of points: {why} ({count} so far)",
                channel=CHANNEL, pid=notify.pid, why=why, count=self.counters.bad_notifications,
            )
