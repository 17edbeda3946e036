"""
Ingest: every point from the serial source goes to the live hub at once and
into the database in batches, in the order the points arrived, whatever
happens to the database.

While the database keeps up, points wait in memory for at most
:data:`BATCH_DELAY` and nothing touches the disk. A write that is merely
slow (a loaded machine may take longer than a batch period to commit) holds
the points that arrive meanwhile in memory, and they are written together
as soon as it commits. When the database does not keep up — not ready yet
at start, unreachable, refusing writes, a write unanswered for
:data:`SLOW_WRITE` seconds, or more points waiting behind a write than the
next one takes (:data:`MAX_STATEMENT`) — the points of the write in flight,
those waiting and every later one as it arrives are appended to the spool
(:mod:`blip.ingest.spool`), the spool is fsynced once per batch period, and
it is written to the database in order, chunk by chunk, with backoff
between failed attempts, until it is empty; then points go straight to the
database again. Writes are idempotent, so a chunk that was committed just
before a failure or a crash and is written again changes nothing.

What a kill -9 (or a crash) can lose is what is held in memory only: while
writes keep up, the points of the last batch period or two; while they are
slow, up to the points of the last two :data:`SLOW_WRITE` periods (those of
a write unanswered for less than that, which arrived while the write before
it was in flight, and those that arrived since); while spooling, nothing
(but what a power cut takes before the next fsync). A stop writes or spools
every point.

When the spool cannot be written either (a full disk), points wait in
memory, up to :data:`MAX_PENDING` of them; the spool is tried again every
:data:`SPOOL_RETRY` seconds, and only the points it has not taken yet are
appended. Beyond that bound new points are dropped (they still go live),
counted and logged: memory stays bounded however long the disk stays full.

A write commits on whichever server the database connections reach: with
a list of hosts (a primary and its standbys), another one after a
failover. What the old primary committed last may not have reached the
standby promoted in its place (replication runs behind the commits), so
when a write commits on another server than the one before (or on the
same one restarted), the points committed in the :data:`RESEND_WINDOW`
seconds before the last commit on the one before (at most
:data:`RESEND_MOST`) are written to it again, ahead of the points that
wait: those it has are skipped, and counted nowhere twice.

The database is one kind of :class:`Sink`: a node that forwards its points
to another blipserver writes them through a second Ingest whose sink is
that server's write API (see :mod:`blip.remote.upstream`), with a spool of
its own.
"""

import typing
from collections import deque
from datetime import datetime
from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from blip.common.retry import backoff, retrying
from blip.common.throttle import Throttle
from blip.common.waiting import detached, within
from blip.counters import Counters
from blip.db.pool import RETRIABLE
from blip.db.readings import Committed
from blip.ingest.spool import PLAIN, AppendError, Spool
from blip.ingest.stamps import Stamps
from blip.live.hub import Hub
from blip.model import Point

#: A batch is written this many seconds after its first point at the latest.
BATCH_DELAY = 0.05
#: A batch is written as soon as it holds this many points.
BATCH_SIZE = 500
#: Seconds a write may stay unanswered before its points and those behind
#: it go to the spool. A healthy database commits a batch in milliseconds,
#: and in a few hundredths of a second under the heaviest readers on a busy
#: two-core machine (more than a batch period now and then); one
#: unanswered for a second is far beyond that: the database is not keeping
#: up. Longer would hold more points in memory only, where a kill -9 loses
#: them (up to about twice this many seconds' worth).
SLOW_WRITE = 1.0
#: The spool, or a backlog in memory, is written in statements of at most
#: this many points.
MAX_STATEMENT = 5000
#: On stop, seconds to wait for the database before leaving what it has not
#: taken in the spool for the next start.
STOP_TIMEOUT = 2.0
#: Seconds without an answer after which a write counts as failed (its
#: points are in the spool by then; a late commit of it is harmless).
WRITE_TIMEOUT = 10.0
#: Most points kept in memory while neither the database nor the spool
#: takes them; later points are dropped.
MAX_PENDING = 100_000
#: Seconds between two attempts to write the spool after it failed.
SPOOL_RETRY = 1.0
#: Seconds between two warnings about dropped points.
DROP_WARN_INTERVAL = 60.0
#: Points committed this many seconds before the last commit on a server
#: are written again when the next write commits on another server: far
#: more than a streaming replica lags behind its primary while it keeps up.
RESEND_WINDOW = 10.0
#: Most points kept to be written again (the newest), packed: 16 bytes each.
RESEND_MOST = 100_000

DatabaseAlive = Callable[[], "Deferred[None]"]


class Sink(typing.Protocol):
    """
    Where an :class:`Ingest` writes its points (the database: a
    :class:`~blip.db.readings.Readings`).
    """

    async def write(self, points: Sequence[Point]) -> Committed:
        """
        Store ``points`` (in order), skipping those stored already.

        :return: how many were new, and which server stored them.
        """

    async def last_points(self) -> list[Point]:
        """
        :return: the newest point stored of each meter.
        """


class Observer(typing.Protocol):
    """
    What is told of this node's own points (see :meth:`Ingest.observe`).
    """

    def receive(self, point: Point) -> None:
        """
        A point arrived from this node's source.
        """

    def stored(self, points: Sequence[Point]) -> None:
        """
        A write of this node committed ``points`` (some may have been
        stored before: a spool written again).
        """


class WriteStalled(Exception):
    """
    The database did not answer a write within :data:`WRITE_TIMEOUT`.
    """


class Ingest:
    """
    Hands each point to the hub on arrival and gets it committed to the
    database, through the spool when the database is not keeping up.

    At most one write is in flight at any time, so points reach the
    database in the order they arrived.

    :param store: where points are written.
    :param hub: where points go live.
    :param stamps: seeded with each meter's last stamp at start.
    :param clock: times batches and retries.
    :param counters: the daemon's counters.
    :param spool: where points wait while the database is away (in memory
        only when None).
    :param db_alive: returns a Deferred that fires as soon as a database
        connection is open, so that a retry waits for the database rather
        than for a timer; when None, retries run on their timer.
    :param max_pending: most points kept in memory while neither the
        database nor the spool takes them.
    :param name: what the sink is, for the log (``database``).
    :param backlog: told how many points are not committed yet whenever
        that changes (by default the counters' ``backlog``).
    :param retriable: the errors of the sink that mean it is away rather
        than wrong (reading the last points is retried on those).
    """

    log = Logger()

    def __init__(
        self,
        store: Sink,
        hub: Hub,
        stamps: Stamps,
        clock: IReactorTime,
        counters: Counters,
        spool: Optional[Spool] = None,
        db_alive: Optional[DatabaseAlive] = None,
        max_pending: int = MAX_PENDING,
        name: str = "database",
        backlog: Optional[Callable[[int], None]] = None,
        retriable: tuple[type[BaseException], ...] = RETRIABLE,
    ) -> None:
        self.store = store
        self.name = name
        self._backlog = backlog
        self.retriable = retriable
        self.hub = hub
        self.stamps = stamps
        self.clock = clock
        self.counters = counters
        self.spool = spool if spool is not None else Spool(None)
        self.db_alive = db_alive
        self.max_pending = max_pending
        #: Points received and neither written nor spooled yet.
        self.pending: list[Point] = []
        # Whether new points go to the spool (rather than to pending).
        self._spooling = True
        self._ready = False
        self._stopping = False
        self._closed = False
        self._spool_failing = False
        self._spool_retry: Optional[IDelayedCall] = None
        self._drops = Throttle(clock, DROP_WARN_INTERVAL)
        self._observers: list[Observer] = []
        self._timer: Optional[IDelayedCall] = None
        # Whether the batch period of pending points ended while a write was
        # in flight: they are written as soon as it is done.
        self._overdue = False
        self._retry: Optional[IDelayedCall] = None
        # Waits that stop cancels (never a query: that would block on
        # psycopg2's cancel): for the database to come back after a failed
        # write, and for the last stored points at start.
        self._waiting: Optional[Deferred[None]] = None
        self._starting: Optional[Deferred[list[Point]]] = None
        # Fires when the write in flight has been dealt with.
        self._writing: Optional[Deferred[None]] = None
        # Spools once the write in flight has been unanswered for SLOW_WRITE.
        self._slow: Optional[IDelayedCall] = None
        self._batch: list[Point] = []
        self._batch_spooled = False
        self._failures = 0
        self._retry_delay = backoff()
        # The server that committed the last write, the batches it
        # committed within RESEND_WINDOW of it (when, how many points, and
        # the points packed: a tenth of their size as objects), how many
        # points they hold, and the points to write again to another server.
        self._server: Optional[datetime] = None
        self._recent: deque[tuple[float, int, bytes]] = deque()
        self._recent_points = 0
        self._again: list[Point] = []

    def observe(self, observer: Observer) -> Callable[[], None]:
        """
        Tell ``observer`` of every point that arrives from now on, and of
        every write committed.

        :return: a function that stops it.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def receive(self, point: Point) -> None:
        """
        Take a new point: publish it, and queue it for the database.
        """
        self.hub.publish(point)
        if self._observers:
            self._tell(lambda observer: observer.receive(point))
        if self._spool_failing and len(self.pending) >= self.max_pending:
            self._drop()
            return
        self.pending.append(point)
        if self._spooling:
            self._spool_pending()
        elif self._writing is not None:
            if len(self.pending) >= MAX_STATEMENT:
                # More than the next write takes: the database is behind.
                self._behind()
        elif len(self.pending) >= BATCH_SIZE:
            self._write_pending()
            return
        if self._timer is None:
            self._timer = self.clock.callLater(BATCH_DELAY, self._tick)

    def open(self) -> None:
        """
        Take over the spool a previous run left: its points are written
        before any new one, and each meter's newest spooled point seeds the
        stamps and the hub. The newest stamps a previous run kept seed the
        stamps too.
        """
        for point in self.spool.open():
            self.stamps.seed(point.meter, point.stamp)
            self.hub.remember(point)
        self.counters.spool_invalid += self.spool.invalid
        self.stamps.load()
        if len(self.spool):
            self.log.info(
                "{count} points of a previous run wait in the spool; they are"
                " written to the {sink} before new ones",
                count=len(self.spool),
                sink=self.name,
            )
        self._update_backlog()

    async def start(self) -> None:
        """
        Begin writing, once the database is ready: seed the stamps and the
        hub with each meter's last stored point first (retried while the
        database is away), then write the spool.
        """
        if self._stopping:
            return
        reading = self._starting = Deferred.fromCoroutine(
            retrying(
                lambda: detached(Deferred.fromCoroutine(self.store.last_points())),
                self.retriable,
                self.clock,
                self.log,
                "read the last points",
                ready=self.db_alive,
            )
        )
        try:
            last = await reading
        except CancelledError:
            # Stopped meanwhile.
            return
        finally:
            self._starting = None
        for point in last:
            self.stamps.seed(point.meter, point.stamp)
            self.hub.remember(point)
        self._ready = True
        self.log.info("ready: points go to the {sink}", sink=self.name)
        if len(self.spool):
            self.log.info(
                "writing {count} spooled points to the {sink}", count=len(self.spool), sink=self.name
            )
        self._replay()

    async def stop(self) -> None:
        """
        Finish: wait (a little) for the write in flight, write what is
        queued if the database is taking writes, and leave everything else
        in the spool for the next start.
        """
        self._stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._cancel_slow()
        self._cancel_retry()
        if self._spool_retry is not None and self._spool_retry.active():
            self._spool_retry.cancel()
        self._spool_retry = None
        if self._starting is not None:
            self._starting.cancel()
        self.pending[:0], self._again = self._again, []
        deadline = self.clock.seconds() + STOP_TIMEOUT
        while True:
            if self._writing is None:
                if not self.pending or self._spooling or not self._ready:
                    break
                # The database was keeping up: one more direct write (which
                # may fail at once, and then spool).
                self._write_pending()
                continue
            left = deadline - self.clock.seconds()
            if left <= 0 or not await within(self._writing, left, self.clock):
                if not self._batch_spooled:
                    self.pending[:0] = self._batch
                    self._batch_spooled = True
                break
        self._spooling = True
        self._spool_pending(retry=True)
        self._closed = True
        try:
            self.spool.close()
        except OSError as e:
            self.log.error("cannot sync the spool: {why}", why=str(e))
        if self.pending:
            self.log.error(
                "stopping with {count} points neither written nor spooled",
                count=len(self.pending),
            )
        elif len(self.spool):
            what = "are written at the next start" if self.spool.path else "are lost"
            self.log.warn(
                "stopping with {count} points in the spool; they {what}",
                count=len(self.spool),
                what=what,
            )
        self._update_backlog()
        self.stamps.keep()

    def _tick(self) -> None:
        self._timer = None
        if self._spooling:
            self._spool_pending()
            self._sync()
        elif self._writing is None:
            self._write_pending()
        else:
            # The write in flight is slow: these points follow it as soon as
            # it is done (or go to the spool with it, should it take
            # SLOW_WRITE).
            self._overdue = True
        self._update_backlog()

    def _behind(self) -> None:
        self.log.debug("the {sink} is behind: spooling until it catches up", sink=self.name)
        self._start_spooling()

    def _write_slow(self) -> None:
        self._slow = None
        self._behind()
        self._update_backlog()

    def _cancel_slow(self) -> None:
        if self._slow is not None and self._slow.active():
            self._slow.cancel()
        self._slow = None

    def _start_spooling(self) -> None:
        if self._writing is not None and not self._batch_spooled:
            self.pending[:0] = self._batch
            self._batch_spooled = True
        self._spooling = True
        self._spool_pending()
        self._sync()

    def _spool_pending(self, retry: bool = False) -> None:
        """
        Append the pending points to the spool. After a failure, only the
        retry timer (or a stop) tries again.
        """
        if not self.pending:
            return
        if self._spool_failing and not retry:
            self._retry_spool_later()
            return
        error: Optional[AppendError] = None
        try:
            self.spool.append(self.pending)
            appended = len(self.pending)
        except AppendError as e:
            error, appended = e, e.appended
        self.counters.spooled += appended
        del self.pending[:appended]
        if error is None:
            if self._spool_failing:
                self.log.info("the spool can be written again")
            self._spool_failing = False
            return
        if not self._spool_failing:
            self.log.error(
                "cannot write the spool: {why}; keeping up to {most} points in memory"
                " and trying again every {every:g} s",
                why=error.strerror or str(error),
                most=self.max_pending,
                every=SPOOL_RETRY,
            )
            self._spool_failing = True
        self._retry_spool_later()

    def _retry_spool_later(self) -> None:
        if self._spool_retry is None and not self._stopping:
            self._spool_retry = self.clock.callLater(SPOOL_RETRY, self._retry_spool)

    def _retry_spool(self) -> None:
        self._spool_retry = None
        if self._spooling:
            self._spool_pending(retry=True)
            self._sync()
            self._update_backlog()

    def _tell(self, news: Callable[[Observer], None]) -> None:
        for observer in self._observers:
            try:
                news(observer)
            except Exception:
                self.log.failure("ingest observer {observer!r} failed", observer=observer)

    def _drop(self) -> None:
        self.counters.dropped_points += 1
        if self._drops.due() is not None:
            self.log.error(
                "dropping new points: neither the database nor the spool takes them,"
                " and {most} points wait in memory ({count} dropped so far)",
                most=self.max_pending,
                count=self.counters.dropped_points,
            )

    def _sync(self) -> None:
        try:
            self.spool.sync()
        except OSError as e:
            self.log.error("cannot sync the spool: {why}", why=str(e))

    def _write_pending(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._overdue = False
        if self.pending:
            batch = self.pending[:MAX_STATEMENT]
            del self.pending[:MAX_STATEMENT]
            self._start_write(batch, False)

    def _replay(self) -> None:
        self._cancel_retry()
        if not self._ready or self._stopping or self._writing is not None:
            return
        chunk = self.spool.peek(MAX_STATEMENT)
        if chunk:
            self._start_write(chunk, True)
            return
        self._spooling = False
        self._schedule()

    def _schedule(self) -> None:
        if self._spooling or not self.pending or self._stopping:
            return
        if self._writing is None and (len(self.pending) >= BATCH_SIZE or self._overdue):
            self._write_pending()
        elif self._timer is None:
            self._timer = self.clock.callLater(BATCH_DELAY, self._tick)

    def _start_write(self, batch: list[Point], from_spool: bool) -> None:
        self._batch, self._batch_spooled = batch, from_spool
        self._writing = Deferred()
        if not from_spool and not self._stopping:
            # (Armed first: the write may be done before the call returns.)
            self._slow = self.clock.callLater(SLOW_WRITE, self._write_slow)
        Deferred.fromCoroutine(self._write(batch, from_spool)).addErrback(
            lambda f: self.log.failure("ingest write failed", f)
        )

    async def _write(self, batch: list[Point], from_spool: bool) -> None:
        done = self._writing
        assert done is not None
        try:
            try:
                insert = Deferred.fromCoroutine(self.store.write(batch))
                if not await within(insert, WRITE_TIMEOUT, self.clock):
                    insert.addErrback(lambda f: None)
                    raise WriteStalled(f"no answer from the {self.name} in {WRITE_TIMEOUT:.0f} s")
                # (Awaiting it directly would fail with an AssertionError of
                # Twisted's: it is still running its callbacks.)
                committed = await detached(insert)
            except Exception as e:
                self._end_write()
                if not self._closed:
                    self._failed(batch, from_spool, e)
            else:
                self._end_write()
                if not self._closed:
                    self._written(batch, from_spool, committed)
        finally:
            if self._writing is done:
                self._end_write()
            self._update_backlog()
            done.callback(None)

    def _end_write(self) -> None:
        self._writing = None
        self._cancel_slow()

    def _written(self, batch: list[Point], from_spool: bool, committed: Committed) -> None:
        self.counters.stored += committed.new
        self._tell(lambda observer: observer.stored(batch))
        self._remember(batch, committed.server)
        if from_spool:
            self.spool.consume(len(batch))
            self.counters.replayed += len(batch)
        if self._failures:
            self.log.info(
                "{sink} writes are back after {failures} failed attempts;"
                " {count} points wait in the spool",
                sink=self.name,
                failures=self._failures,
                count=len(self.spool),
            )
            self._failures = 0
        if self._again:
            chunk = self._again[:MAX_STATEMENT]
            del self._again[:MAX_STATEMENT]
            self._start_write(chunk, False)
        elif self._spooling:
            self._replay()
        else:
            self._schedule()

    def _remember(self, batch: list[Point], server: datetime) -> None:
        """
        Keep the points ``server`` committed last; when it is another
        server than the one before, queue the points that one committed
        last to be written to it again.
        """
        if server != self._server:
            if self._server is not None and self._recent:
                again = [point for _, _, packed in self._recent for point in PLAIN.read(packed)]
                self.counters.resent += len(again)
                self.log.info(
                    "the database server changed (a failover, or a restart): writing"
                    " again the {count} points committed in the last {window:g} s on the"
                    " one before, which it may not have had",
                    count=len(again), window=RESEND_WINDOW,
                )
                self._again[:0] = again
            self._server = server
            self._recent.clear()
            self._recent_points = 0
        now = self.clock.seconds()
        self._recent.append((now, len(batch), PLAIN.pack(batch)))
        self._recent_points += len(batch)
        while self._recent and (
            self._recent[0][0] < now - RESEND_WINDOW or self._recent_points > RESEND_MOST
        ):
            self._recent_points -= self._recent.popleft()[1]

    def _failed(self, batch: list[Point], from_spool: bool, error: Exception) -> None:
        self.counters.write_failures += 1
        if self._failures == 0:
            self.log.warn(
                "cannot write to the {sink}: {why}; spooling points and"
                " retrying until it takes them",
                sink=self.name,
                why=str(error).strip() or repr(error),
            )
        self._failures += 1
        if not self._batch_spooled:
            self.pending[:0] = batch
            self._batch_spooled = True
        self._start_spooling()
        if not self._stopping:
            self._retry = self.clock.callLater(
                self._retry_delay(self._failures), self._retry_when_alive
            )

    def _retry_when_alive(self) -> None:
        self._retry = None
        if self.db_alive is None:
            self._replay()
            return
        waiting = self._waiting = self.db_alive()
        waiting.addCallback(self._alive)
        waiting.addErrback(self._not_alive)

    def _alive(self, _: Any) -> None:
        self._waiting = None
        self._replay()

    def _not_alive(self, f: Failure) -> None:
        if not f.check(CancelledError):
            self.log.failure("waiting for the database failed", f)

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()

    def _update_backlog(self) -> None:
        in_flight = 0 if self._writing is None or self._batch_spooled else len(self._batch)
        backlog = len(self.pending) + len(self.spool) + in_flight
        if self._backlog is None:
            self.counters.backlog = backlog
        else:
            self._backlog(backlog)
