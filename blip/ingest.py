"""
Ingest: every point from the serial source goes to the live hub at once and
into the database in batches, in order, retried until the database takes it.
"""

from typing import Callable, Optional

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from blip.arduino import Stamps
from blip.counters import Counters
from blip.hub import Hub
from blip.model import Point
from blip.store import Store

#: A batch is written this many seconds after its first point at the latest.
BATCH_DELAY = 0.05
#: A batch is written as soon as it holds this many points.
BATCH_SIZE = 500
#: After an outage the backlog is written in statements of at most this many.
MAX_STATEMENT = 5000


class Ingest:
    """
    Batches points for the database and hands each to the hub on arrival.

    At most one batch is being written at any time, so points reach the
    database in the order they arrived. A batch the database does not take
    goes back to the head of the queue and is retried with backoff.

    :param store: where points are written.
    :param hub: where points go live.
    :param stamps: seeded with each meter's last stored stamp at start.
    :param clock: times batches and retries.
    :param counters: the daemon's counters.
    """

    log = Logger()

    def __init__(
        self,
        store: Store,
        hub: Hub,
        stamps: Stamps,
        clock: IReactorTime,
        counters: Counters,
    ) -> None:
        self.store = store
        self.hub = hub
        self.stamps = stamps
        self.clock = clock
        self.counters = counters
        self.pending: list[Point] = []
        self._started = False
        self._timer: Optional[IDelayedCall] = None
        self._writing: Optional[Deferred[None]] = None
        self._failures = 0
        self._retry_delay: Callable[[int], float] = backoffPolicy(
            initialDelay=0.25, maxDelay=30.0, factor=2.0
        )

    def receive(self, point: Point) -> None:
        """
        Take a new point: publish it, and queue it for the database.
        """
        self.hub.publish(point)
        self.pending.append(point)
        if self._writing is None:
            self._schedule()

    async def start(self) -> None:
        """
        Begin writing, once the database is ready: seed the stamps and the
        hub with each meter's last stored point first.
        """
        for point in await self.store.last_points():
            self.stamps.seed(point.meter, point.stamp)
            self.hub.remember(point)
        self._started = True
        self._schedule()

    async def stop(self) -> None:
        """
        Stop scheduling writes, wait for the write under way, then write
        what is still queued, unless the database fails again.
        """
        ready, self._started = self._started, False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._writing is not None:
            await self._writing
        while ready and self.pending:
            failures = self.counters.write_failures
            await self._write()
            if self.counters.write_failures != failures:
                break
        if self.pending:
            self.log.error(
                "stopping with {count} points not written to the database",
                count=len(self.pending),
            )

    def _schedule(self) -> None:
        if not self._started or not self.pending or self._writing is not None:
            return
        if self._failures == 0 and len(self.pending) >= BATCH_SIZE:
            self._flush()
        elif self._timer is None:
            delay = BATCH_DELAY
            if self._failures:
                delay = self._retry_delay(self._failures)
            self._timer = self.clock.callLater(delay, self._flush)

    def _flush(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._writing is None and self.pending:
            self._writing = Deferred.fromCoroutine(self._write())
            self._writing.addErrback(
                lambda f: self.log.failure("ingest write failed", f)
            )

    async def _write(self) -> None:
        batch = self.pending[:MAX_STATEMENT]
        del self.pending[:MAX_STATEMENT]
        try:
            new = await self.store.insert(batch)
        except Exception as e:
            self.pending[:0] = batch
            self.counters.write_failures += 1
            if self._failures == 0:
                self.log.warn(
                    "cannot write to the database: {why}; keeping {count}"
                    " points and retrying",
                    why=str(e).strip() or repr(e),
                    count=len(self.pending),
                )
            self._failures += 1
        else:
            self.counters.stored += new
            if self._failures:
                self.log.info(
                    "database writes are back after {failures} failures",
                    failures=self._failures,
                )
            self._failures = 0
        finally:
            self._writing = None
            self._schedule()


class IngestService(Service):
    """
    Starts writing once the database is ready; on stop, writes what is
    queued.

    :param ingest: the writer.
    :param ready: returns a Deferred that fires when the database is ready.
    """

    log = Logger()

    def __init__(self, ingest: Ingest, ready: Callable[[], "Deferred[None]"]) -> None:
        self.ingest = ingest
        self.ready = ready
        self._starting: Optional[Deferred[None]] = None

    def startService(self) -> None:
        super().startService()
        self._starting = self.ready()
        self._starting.addCallback(lambda _: Deferred.fromCoroutine(self.ingest.start()))
        self._starting.addErrback(self._failed)

    def _failed(self, f: Failure) -> None:
        if not f.check(CancelledError):
            self.log.failure("ingest cannot start", f)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        return Deferred.fromCoroutine(self.ingest.stop())
