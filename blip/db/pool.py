"""
PostgreSQL connections: a pool of txpostgres connections that survives the
database going away, and the service that opens it and prepares the
schema.

No SQL lives here (that is the query modules of :mod:`blip.db`); this
module only keeps connections open. What it relies on in txpostgres beyond
its documented use lives in :mod:`blip.db.txpg`.

A query is never cancelled: txpostgres would call psycopg2's ``cancel()``,
which opens a connection to the server and waits for it, blocking the
reactor (for as long as the network takes: a minute on a link that drops
packets). Cancelling the Deferred of a query of the pool only lets its
caller go (with :exc:`~twisted.internet.defer.CancelledError`, at once);
the query runs to its end on its connection, which is free again only
then. What ends a slow query is the server's ``statement_timeout``, which
a pool sets on its connections when given a ``statement_timeout``.
"""

import os
from dataclasses import dataclass
from itertools import count
from typing import Any, Awaitable, Callable, Iterator, Optional, Sequence

import psycopg2
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection

from blip.common.latch import Latch
from blip.common.retry import backoff, retrying
from blip.common.waiting import detached
from blip.counters import Counters
from blip.db.embedded import EmbeddedError
from blip.db.layouts import Refused
from blip.db.txpg import Connection, Detector


class DatabaseUnavailable(Exception):
    """
    No connection to the database is open (yet, or any more).
    """


class QueryCancelled(Exception):
    """
    The database cancelled a statement: it ran longer than the
    connection's ``statement_timeout`` (or an administrator cancelled it).
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


@dataclass(frozen=True, slots=True)
class Prepared:
    """
    A statement each connection has the server parse and plan once
    (``PREPARE``), then runs by name (``EXECUTE``): for small queries asked
    all the time, whose parsing and planning cost as much as their running.
    Only for statements whose one generic plan is as good as a plan made
    for each set of values (not those of readings, whose partitions are
    chosen when planning with the values). A session that forgot it
    (``DEALLOCATE``) fails the query as a lost connection would
    (txpostgres takes the error for one): the new session prepares it
    again.

    :param name: its name in each session.
    :param text: the statement, its parameters ``$1``, ``$2``...
    :param count: how many parameters it has.
    """

    name: str
    text: str
    count: int

    @property
    def prepare(self) -> str:
        """:return: the statement that prepares it in a session."""
        return f"PREPARE {self.name} AS {self.text}"

    @property
    def execute(self) -> str:
        """:return: the statement that runs it, its values as ``%s``."""
        return f"EXECUTE {self.name} ({', '.join(['%s'] * self.count)})"


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
) -> Connection:
    """
    A connection of its own, outside any pool (for LISTEN), that reconnects
    itself with backoff like the pool's do; add recovery handlers to its
    ``detector`` to act when it is back, and call ``close_for_good()`` to
    close it.

    :param cooperator: hands NOTIFY events to the connection's observers
        (txpostgres's default when None).
    :param on_lost: called with the reason when the connection is lost or
        cannot be opened.
    """
    return Connection(reactor, cooperator, Detector(reactor, reconnect_delays, on_lost))


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


def connection_settings(dsn: str, statement_timeout: float = 0.0) -> dict[str, str]:
    """
    :param statement_timeout: seconds after which the server cancels a
        statement of the connection (0: the server's own setting).
    :return: the settings to connect to ``dsn`` with, besides the string
        itself: :data:`CONNECTION_DEFAULTS` it does not set, and the
        statement timeout, among the server options it gives (or
        ``PGOPTIONS`` gives), after them.
    """
    try:
        given = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        given = {}  # connecting says what is wrong with it
    settings = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
    if statement_timeout:
        options = given.get("options", os.environ.get("PGOPTIONS", ""))
        limit = f"-c statement_timeout={max(1, round(statement_timeout * 1000))}"
        settings["options"] = f"{options} {limit}".strip()
    return settings


class Pool:
    """
    A fixed number of connections to one database; each reconnects by itself
    with backoff when it finds the database gone, and queries go to a live
    connection whenever there is one, else fail at once with
    :exc:`DatabaseUnavailable`.

    A query whose caller cancels it runs to its end (see above); one the
    server cancels fails with :exc:`QueryCancelled`.

    :param dsn: a libpq connection string or URI.
    :param size: how many connections (and so concurrent queries).
    :param reactor: times the reconnections, and watches the connections'
        sockets (so it is a whole reactor, not only a clock).
    :param counters: where reconnections are counted, if anywhere.
    :param statement_timeout: seconds after which the server cancels a
        statement (0: no limit but the server's own).
    :param name: what the connections are for, for the log.
    """

    log = Logger()

    def __init__(
        self,
        dsn: str,
        size: int,
        reactor: IReactorTime,
        counters: Optional[Counters] = None,
        statement_timeout: float = 0.0,
        name: str = "database",
    ) -> None:
        self.dsn = dsn
        self.reactor = reactor
        self.counters = counters
        self.name = name
        self._settings = connection_settings(dsn, statement_timeout)
        self._alive = Latch()
        # Whether the loss of the last open connection has been logged.
        self._down = False
        self._all = [
            Connection(reactor, None, Detector(reactor, reconnect_delays, self._lost, self._reconnected))
            for _ in range(size)
        ]
        self._free = set(self._all)
        self._slots = DeferredSemaphore(size)

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
                self.log.warn(
                    "database unreachable: {why}; reconnecting the {name} connections",
                    why=why, name=self.name,
                )
                self._down = True

    def _reconnected(self) -> None:
        if self.counters is not None:
            self.counters.db_reconnects += 1
        if self._down:
            self.log.info("database connection is back ({name} connections)", name=self.name)
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
            d = connection.connect(self.dsn, **self._settings)
            d.addCallback(self._opened)
            d.addErrback(connection.detector.checkForDeadConnection)
            attempts.append(d)
        return DeferredList(attempts, consumeErrors=True).addCallback(lambda _: self)

    def _opened(self, connection: Connection) -> None:
        connection.detector.alive = True
        self._alive.set()

    def state(self) -> PoolState:
        """
        :return: what the connections are doing now.
        """
        return PoolState(
            size=len(self._all),
            alive=sum(1 for c in self._all if c.detector.alive),
            busy=len(self._all) - len(self._free),
            waiting=len(self._slots.waiting),
        )

    def close(self) -> None:
        """
        Close every connection and stop reconnecting.
        """
        for connection in self._all:
            connection.close_for_good()
        self._alive.clear()

    def runQuery(self, query: str, params: Any = None) -> "Deferred[list[tuple[Any, ...]]]":
        """
        Run one query on a free connection, as
        :meth:`txpostgres.txpostgres.Connection.runQuery` does.

        :return: its rows (psycopg2's default cursor's).
        """
        return Deferred.fromCoroutine(self._run(_query, (query, params), {}))

    def runOperation(self, statement: str, params: Any = None) -> "Deferred[None]":
        """
        Run one statement on a free connection, as
        :meth:`txpostgres.txpostgres.Connection.runOperation` does.
        """
        return Deferred.fromCoroutine(self._run(_operation, (statement, params), {}))

    def runPrepared(self, statement: Prepared, params: Sequence[Any]) -> "Deferred[list[tuple[Any, ...]]]":
        """
        Run a prepared statement on a free connection, preparing it first
        if that connection's session has not yet.

        :return: its rows.
        """
        return Deferred.fromCoroutine(self._run(_run_prepared, (statement, params), {}))

    def runInteraction(self, interaction: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        """
        Run ``interaction`` with a cursor in a transaction on a free
        connection, as :meth:`txpostgres.txpostgres.Connection.runInteraction`
        does.

        :return: what ``interaction`` returned (or its Deferred's result).
        """
        run = self._run(Connection.runInteraction, (interaction, *args), kwargs)
        return Deferred.fromCoroutine(run)

    async def _run(self, method: Callable[..., "Deferred[Any]"], args: Any, kwargs: Any) -> Any:
        # A slot per connection: once one is taken, a connection is free
        # (a live one if any). Cancelling the wait for a slot gives it up.
        await self._slots.acquire()
        for connection in self._free:
            if connection.detector.alive:
                break
        else:
            self._slots.release()
            raise DatabaseUnavailable("no connection to the database")
        self._free.remove(connection)
        work = method(connection, *args, **kwargs)
        work.addBoth(self._put_back, connection)
        # Cancelling from here on lets the caller go, never the work.
        return await detached(work)

    def _put_back(self, result: Any, connection: Connection) -> Any:
        self._free.add(connection)
        self._slots.release()
        if isinstance(result, Failure) and result.check(CancelledError):
            # txpostgres's name for psycopg2's QueryCanceledError: the
            # server cancelled the statement (no one here does).
            return Failure(QueryCancelled("the database cancelled the query: it ran too long"))
        return result


def _operation(connection: Connection, statement: str, params: Any = None) -> "Deferred[Any]":
    """
    Run one statement on ``connection``, which the pool gave to its caller
    alone: a txpostgres cursor's ``execute``, without the queue and the
    liveness check of the connection's own ``runOperation`` (the pool
    keeps one statement on a connection at a time, and gives out only
    live ones), each a few Deferreds more for every query. A failure that
    shows the connection dead has it reconnect, as there.

    :return: a Deferred that fires with the cursor once it ran.
    """
    run: Deferred[Any] = connection.cursor().execute(statement, params)
    return run.addErrback(connection.detector.checkForDeadConnection)


def _query(connection: Connection, query: str, params: Any = None) -> "Deferred[Any]":
    """
    Run one query on ``connection`` (as :func:`_operation`).

    :return: a Deferred that fires with its rows.
    """
    return _operation(connection, query, params).addCallback(_rows)


def _rows(cursor: Any) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = cursor.fetchall()
    return rows


def _run_prepared(connection: Connection, statement: Prepared, params: Sequence[Any]) -> "Deferred[Any]":
    # Callbacks rather than a coroutine: a statement prepared already is
    # one query, run as any other.
    def execute(_: object = None) -> "Deferred[Any]":
        connection.prepared.add(statement.name)
        return _query(connection, statement.execute, params)

    if statement.name in connection.prepared:
        return execute()
    return _operation(connection, statement.prepare).addCallback(execute)


class DatabaseService(Service):
    """
    Opens the pools, then prepares the database (schema and upgrades) as
    soon as it answers, retrying with backoff for as long as it does not;
    then tells whoever waits on :meth:`when_ready`.

    :param pool: the connections to open, which prepare the database.
    :param prepare: run once the database answers; retried until it works.
    :param before: what to wait for before connecting (the embedded
        cluster), if anything.
    :param fatal: called when the database cannot be prepared for a reason
        that waiting will not cure (a database that is not blipserver's, an
        upgrade PostgreSQL refuses): the failure is logged as critical, then
        this stops the daemon.
    :param others: more pools of the same database, opened (and closed)
        with ``pool``.
    """

    log = Logger()

    def __init__(
        self,
        pool: Pool,
        prepare: Callable[[], Awaitable[object]],
        before: Optional[Callable[[], "Deferred[None]"]] = None,
        fatal: Optional[Callable[[], None]] = None,
        others: Sequence[Pool] = (),
    ) -> None:
        self.pool = pool
        self.pools = [pool, *others]
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
        await DeferredList([pool.start() for pool in self.pools])
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
        for pool in self.pools:
            pool.close()


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
