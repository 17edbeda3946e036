"""
PostgreSQL connections: txpostgres's pool, made to survive the database
going away, and the service that opens it and prepares the schema.

No SQL lives here (that is :mod:`blip.store`); this module only keeps
connections open.
"""

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Optional

import psycopg2
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres

#: Seconds between reconnection attempts grow up to this.
MAX_RECONNECT_DELAY = 30.0



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
    :return: the delays between attempts to reach the database: at once,
        then growing from half a second to :data:`MAX_RECONNECT_DELAY`.
    """
    return retrying.simpleBackoffIterator(
        initialDelay=0.25, maxDelay=MAX_RECONNECT_DELAY, factor=2.0,
        maxRetries=0, now=True,
    )


class _Detector(reconnection.DeadConnectionDetector):
    """
    A dead-connection detector that logs once per outage and can be told to
    stop reconnecting.
    """

    log = Logger()

    def __init__(self, reactor: IReactorCore) -> None:
        super().__init__(reconnectionIterator=reconnect_delays, reactor=reactor)
        self._retrying: Optional[Deferred[None]] = None
        self.stopped = False
        #: Whether the connection is open and usable.
        self.alive = False

    def startReconnecting(self, f: Failure) -> None:
        self.alive = False
        if self.stopped:
            return
        self.log.warn(
            "database connection lost: {why}; reconnecting",
            why=f.getErrorMessage().strip(),
        )
        call = retrying.RetryingCall(self.reconnect)
        call.reactor = self.reactor
        self._retrying = call.start(reconnect_delays())
        self._retrying.addCallback(lambda _: self.connectionRecovered())
        self._retrying.addErrback(self._gave_up)

    def connectionRecovered(self) -> "Deferred[Any]":
        self._retrying = None
        self.alive = True
        self.log.info("database connection is back")
        return super().connectionRecovered()

    def _gave_up(self, f: Failure) -> None:
        if not self.stopped:
            self.log.failure("stopped reconnecting to the database", f)

    def stop(self) -> None:
        """
        Stop any reconnection under way, for good.
        """
        self.stopped = True
        if self._retrying is not None:
            self._retrying.cancel()


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


class Pool(txpostgres.ConnectionPool):
    """
    A fixed number of connections to one database; each reconnects by itself
    with backoff when it finds the database gone, and queries go to a live
    connection whenever there is one.

    :param dsn: a libpq connection string or URI.
    :param size: how many connections (and so concurrent queries).
    """

    log = Logger()

    def __init__(self, dsn: str, size: int, reactor: IReactorCore) -> None:
        self.reactor = reactor
        super().__init__(None, dsn, min=size, connect_timeout=10)
        self._all = list(self.connections)

    def connectionFactory(self, reactor: IReactorCore, cooperator: Any) -> txpostgres.Connection:
        return txpostgres.Connection(
            reactor, cooperator, detector=_Detector(reactor)
        )

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

    @staticmethod
    def _opened(connection: txpostgres.Connection) -> None:
        connection.detector.alive = True

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
    """

    log = Logger()

    def __init__(
        self,
        pool: Pool,
        prepare: Callable[[], Awaitable[None]],
        before: Optional[Callable[[], "Deferred[None]"]] = None,
    ) -> None:
        self.pool = pool
        self.prepare = prepare
        self.before = before
        self.ready = False
        self._waiters: list[Deferred[None]] = []
        self._starting: Optional[Deferred[None]] = None

    def when_ready(self) -> "Deferred[None]":
        """
        :return: a Deferred that fires once the database is prepared.
        """
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._failed)

    async def _start(self) -> None:
        if self.before is not None:
            await self.before()
        await self.pool.start()
        call = retrying.RetryingCall(lambda: Deferred.fromCoroutine(self.prepare()))
        call.reactor = self.pool.reactor
        await call.start(reconnect_delays(), self._retry_or_stop)
        self.ready = True
        self.log.info("database ready")
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _retry_or_stop(self, f: Failure) -> Optional[Failure]:
        if f.check(*RETRIABLE):
            self.log.warn(
                "database not ready: {why}; retrying", why=f.getErrorMessage().strip()
            )
            return None
        return f

    def _failed(self, f: Failure) -> None:
        if not f.check(CancelledError):
            self.log.failure("cannot prepare the database", f)

    def stopService(self) -> None:
        super().stopService()
        if self._starting is not None:
            self._starting.cancel()
        self.pool.close()
