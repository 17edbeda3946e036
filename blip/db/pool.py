"""
PostgreSQL connections: txpostgres's pool, made to survive the database
going away, and the service that opens it and prepares the schema.

No SQL lives here (that is the query modules of :mod:`blip.db`); this
module only keeps connections open.
"""

from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Optional

import psycopg2
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres
from txpostgres.retrying import RetryingCall

from blip.common.latch import Latch
from blip.common.retry import backoff, retrying
from blip.counters import Counters
from blip.db.embedded import EmbeddedError
from blip.db.layouts import Refused

class DatabaseUnavailable(Exception):
    """
    No connection to the database is open (yet, or any more).
    """


#: Errors that mean the database is away rather than wrong.
RETRIABLE = (
    DatabaseUnavailable,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    reconnection.ConnectionDead,
)


def reconnect_delays() -> Iterator[float]:
    """
    :return: the delays between attempts to reach the database, as
        txpostgres takes them: at once, then
        :func:`blip.common.retry.backoff`'s.
    """
    yield 0.0
    yield from map(backoff(), count(1))


class _Detector(reconnection.DeadConnectionDetector):
    """
    A dead-connection detector that tells its pool when the connection is
    lost and back, and can be told to stop reconnecting.

    :param on_lost: called with the reason when the connection is lost.
    :param on_alive: called when it is open again, ready for queries.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        on_lost: Callable[[str], None] = lambda why: None,
        on_alive: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(reconnectionIterator=reconnect_delays, reactor=reactor)
        self._retrying: Optional[Deferred[None]] = None
        self.stopped = False
        #: Whether the connection is open and usable.
        self.alive = False
        self.on_lost = on_lost
        self.on_alive = on_alive

    def startReconnecting(self, f: Failure) -> None:
        self.alive = False
        if self.stopped:
            return
        self.on_lost(f.getErrorMessage().strip())
        call = RetryingCall(self.reconnect)
        call.reactor = self.reactor
        self._retrying = call.start(reconnect_delays())
        self._retrying.addCallback(lambda _: self.connectionRecovered())
        self._retrying.addErrback(self._gave_up)

    def connectionRecovered(self) -> "Deferred[Any]":
        self._retrying = None
        if self.stopped:
            # An attempt under way when the pool closed has just succeeded.
            self.reconnectable.close()
            return succeed(None)
        self.alive = True
        # Clears txpostgres's own dead flag first: queries started by
        # on_alive would fail while it is set.
        recovered: Deferred[Any] = super().connectionRecovered()
        self.on_alive()
        return recovered

    def _gave_up(self, f: Failure) -> None:
        if not self.stopped:
            self.log.failure("stopped reconnecting to the database", f)

    def stop(self) -> None:
        """
        Stop any reconnection under way, for good.
        """
        self.stopped = True
        if self._retrying is not None:
            try:
                self._retrying.cancel()
            except psycopg2.Error:
                # psycopg2 cannot cancel a connection attempt under way; it
                # is closed when it ends (connectionRecovered).
                pass


class _Connection(txpostgres.Connection):
    """
    A txpostgres connection that reports the server going away while the
    connection is idle as a lost connection (and so a reconnection), rather
    than as an unhandled error with a traceback.
    """

    def doRead(self) -> Optional[Exception]:
        try:
            super().doRead()
        except psycopg2.Error as e:
            return e
        return None


@dataclass(frozen=True, slots=True)
class PoolState:
    """
    What the pool's connections are doing, for metrics.

    :param size: connections in the pool.
    :param alive: connections open and usable.
    :param busy: connections running a query or transaction.
    :param waiting: queries waiting for a free connection.
    """

    size: int
    alive: int
    busy: int
    waiting: int


def own_connection(
    reactor: IReactorTime,
    cooperator: Any = None,
    on_lost: Callable[[str], None] = lambda why: None,
) -> txpostgres.Connection:
    """
    A connection of its own, outside any pool (for LISTEN), that reconnects
    itself with backoff like the pool's do; add recovery handlers to its
    ``detector`` to act when it is back, and call ``detector.stop()`` before
    closing it for good.

    :param cooperator: hands NOTIFY events to the connection's observers
        (txpostgres's default when None).
    :param on_lost: called with the reason when the connection is lost or
        cannot be opened.
    """
    return _Connection(reactor, cooperator, detector=_Detector(reactor, on_lost))


#: Settings of every connection unless the connection string has its own:
#: TCP keepalives and a user timeout, so that a server that vanished
#: without closing the connection (a network cut) is noticed within about
#: a minute, and a query sent to it fails then, rather than after the
#: system's retransmissions (a quarter of an hour) or never.
CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def connection_settings(dsn: str) -> dict[str, str]:
    """
    :return: the settings to connect to ``dsn`` with, besides the string
        itself: :data:`CONNECTION_DEFAULTS` it does not set.
    """
    try:
        given = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        given = {}  # connecting says what is wrong with it
    return {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}


class Pool(txpostgres.ConnectionPool):
    """
    A fixed number of connections to one database; each reconnects by itself
    with backoff when it finds the database gone, and queries go to a live
    connection whenever there is one.

    :param dsn: a libpq connection string or URI.
    :param size: how many connections (and so concurrent queries).
    :param reactor: times the reconnections, and watches the connections'
        sockets (so it is a whole reactor, not only a clock).
    :param counters: where reconnections are counted, if anywhere.
    """

    log = Logger()

    if TYPE_CHECKING:
        # txpostgres has no type hints; this is what its pool's runQuery
        # gives: the rows of psycopg2's default cursor.
        def runQuery(self, *args: Any, **kwargs: Any) -> "Deferred[list[tuple[Any, ...]]]":
            """
            Run one query on a free connection.

            :return: its rows.
            """

    def __init__(
        self, dsn: str, size: int, reactor: IReactorTime, counters: Optional[Counters] = None
    ) -> None:
        self.reactor = reactor
        self.counters = counters
        self._alive = Latch()
        # Whether the loss of the last open connection has been logged.
        self._down = False
        super().__init__(None, dsn, min=size, **connection_settings(dsn))
        self._all = list(self.connections)

    def connectionFactory(self, reactor: IReactorTime, cooperator: Any) -> txpostgres.Connection:
        detector = _Detector(reactor, self._lost, self._reconnected)
        return _Connection(reactor, cooperator, detector=detector)

    @property
    def alive(self) -> bool:
        """
        Whether at least one connection is open.
        """
        return any(c.detector.alive for c in self._all)

    def when_alive(self) -> "Deferred[None]":
        """
        :return: a Deferred that fires as soon as a connection is open (at
            once if one is); cancelling it stops the wait.
        """
        return self._alive.wait()

    def _lost(self, why: str) -> None:
        if not self.alive:
            self._alive.clear()
            if not self._down:
                self.log.warn("database unreachable: {why}; reconnecting", why=why)
                self._down = True

    def _reconnected(self) -> None:
        if self.counters is not None:
            self.counters.db_reconnects += 1
        if self._down:
            self.log.info("database connection is back")
            self._down = False
        self._alive.set()

    def start(self) -> "Deferred[Pool]":
        """
        Open every connection. A connection that cannot be opened keeps
        trying in the background.

        :return: a Deferred that fires once every connection has either
            opened or started retrying.
        """
        attempts = []
        for connection in self._all:
            d = connection.connect(*self.connargs, **self.connkw)
            d.addCallback(self._opened)
            d.addErrback(connection.detector.checkForDeadConnection)
            attempts.append(d)
        return DeferredList(attempts, consumeErrors=True).addCallback(lambda _: self)

    def _opened(self, connection: txpostgres.Connection) -> None:
        connection.detector.alive = True
        self._alive.set()

    def state(self) -> PoolState:
        """
        :return: what the connections are doing now.
        """
        return PoolState(
            size=len(self._all),
            alive=sum(1 for c in self._all if c.detector.alive),
            busy=len(self._all) - len(self.connections),
            waiting=len(self._semaphore.waiting),
        )

    def close(self) -> None:
        """
        Close every connection and stop reconnecting.
        """
        for connection in self._all:
            connection.detector.stop()
            connection.detector.alive = False
            if connection._connection is not None:
                connection.close()
        self._alive.clear()

    def _take(self) -> txpostgres.Connection:
        for connection in self.connections:
            if connection.detector.alive:
                self.connections.remove(connection)
                return connection
        return self.connections.pop()

    def _run(self, method: Callable[..., "Deferred[Any]"], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        connection = self._take()
        if not connection.detector.alive:
            self.connections.add(connection)
            return fail(DatabaseUnavailable("no connection to the database"))
        d = method(connection, *args, **kwargs)
        return d.addBoth(self._putBackAndPassthrough, connection)

    def _runQuery(self, *args: Any, **kwargs: Any) -> "Deferred[Any]":
        return self._run(txpostgres.Connection.runQuery, *args, **kwargs)

    def _runOperation(self, *args: Any, **kwargs: Any) -> "Deferred[Any]":
        return self._run(txpostgres.Connection.runOperation, *args, **kwargs)

    def _runInteraction(self, *args: Any, **kwargs: Any) -> "Deferred[Any]":
        return self._run(txpostgres.Connection.runInteraction, *args, **kwargs)


class DatabaseService(Service):
    """
    Opens the pool, then prepares the database (schema and upgrades) as soon
    as it answers, retrying with backoff for as long as it does not; then
    tells whoever waits on :meth:`when_ready`.

    :param pool: the connections to open.
    :param prepare: run once the database answers; retried until it works.
    :param before: what to wait for before connecting (the embedded
        cluster), if anything.
    :param fatal: called when the database cannot be prepared for a reason
        that waiting will not cure (a database that is not blipserver's, an
        upgrade PostgreSQL refuses): the failure is logged as critical, then
        this stops the daemon.
    """

    log = Logger()

    def __init__(
        self,
        pool: Pool,
        prepare: Callable[[], Awaitable[object]],
        before: Optional[Callable[[], "Deferred[None]"]] = None,
        fatal: Optional[Callable[[], None]] = None,
    ) -> None:
        self.pool = pool
        self.prepare = prepare
        self.before = before
        self.fatal = fatal
        self._ready = Latch()
        self._starting: Optional[Deferred[None]] = None

    @property
    def ready(self) -> bool:
        """
        Whether the database is prepared.
        """
        return self._ready.is_set

    def when_ready(self) -> "Deferred[None]":
        """
        :return: a Deferred that fires once the database is prepared (at
            once if it is); cancelling it stops the wait.
        """
        return self._ready.wait()

    def startService(self) -> None:
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._failed)

    async def _start(self) -> None:
        if self.before is not None:
            await self.before()
        await self.pool.start()
        # No attempt while no connection is open: the pool reconnects with
        # backoff and says when one is.
        await retrying(
            self.prepare, RETRIABLE, self.pool.reactor, self.log, "prepare the database",
            ready=self.pool.when_alive,
        )
        self.log.info("database ready")
        self._ready.set()

    def _failed(self, f: Failure) -> None:
        if f.check(CancelledError) or not self.running:
            # Stopped while preparing: whatever the cancelled work raised.
            return
        if f.check(Refused):
            self.log.critical(
                "refusing to use the database: {why}; nothing was changed",
                why=f.getErrorMessage(),
            )
        elif f.check(psycopg2.Error):
            self.log.critical(
                "cannot prepare the database: {why}",
                why="; ".join(f.getErrorMessage().split("\n")).strip("; "),
            )
        elif f.check(EmbeddedError):
            self.log.critical("cannot start the database: {why}", why=f.getErrorMessage())
        else:
            self.log.failure("cannot prepare the database", f)
        if self.fatal is not None:
            self.fatal()

    def stopService(self) -> None:
        super().stopService()
        if self._starting is not None:
            self._starting.cancel()
        self.pool.close()


class PoolService(Service):
    """
    Opens a pool that needs no preparing (a read replica's) when the daemon
    starts, and closes it when it stops. Its connections keep trying in the
    background while the database cannot be reached.

    :param pool: the connections.
    """

    log = Logger()

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start().addErrback(lambda f: self.log.failure("cannot open the pool", f))

    def stopService(self) -> None:
        super().stopService()
        self.pool.close()
