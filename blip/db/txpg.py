"""
Everything blipserver relies on in txpostgres beyond its documented use,
in one place, each pinned by ``tests/db/test_txpg.py`` so that an upgrade
of txpostgres that changes one fails a test rather than production:

- how a :class:`~txpostgres.reconnection.DeadConnectionDetector` goes
  about a reconnection (:class:`Detector` replaces that part, to be able to
  stop it and to say when the connection is lost and back);
- what :meth:`txpostgres.txpostgres.Connection.doRead` does when the server
  closes an idle connection (:class:`Connection` turns the error it raises
  into a lost connection);
- that a connection's :meth:`~txpostgres.txpostgres.Connection.pollable`
  is None until it was first opened (:meth:`Connection.close_for_good`);
- that :meth:`~txpostgres.txpostgres.Connection.connect` gives its
  arguments to the detector, which connects with them again on each
  reconnection (:meth:`Connection.connect` gives it the host names rather
  than the addresses it found), and that closing a connection while it
  opens fails the opening (:meth:`Connection.connect` gives up on an
  opening that takes too long);
- that cancelling a query's Deferred calls psycopg2's ``cancel()``, which
  blocks (so nothing here cancels one: see :mod:`blip.db.pool`).
"""

import os
from typing import Any, Callable, Iterator, Mapping, Optional

import psycopg2
import psycopg2.extensions
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHostnameResolver, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres

from blip.common.waiting import detached, within
from blip.db.hosts import attempts


class Detector(reconnection.DeadConnectionDetector):
    """
    A dead-connection detector that says when its connection is lost and
    back, and can be told to stop reconnecting.

    txpostgres calls :meth:`startReconnecting` once when a failure shows the
    connection dead (after setting ``connectionIsDead``); reconnecting
    means calling :meth:`reconnect` (close, then connect again with the
    arguments of the last ``connect``) until it works, then
    :meth:`connectionRecovered`, which clears ``connectionIsDead`` and runs
    the recovery handlers. txpostgres's own attempts cannot be stopped;
    these can.

    :param reactor: times the attempts.
    :param delays: returns the delays before each attempt.
    :param on_lost: called with the reason when the connection is lost.
    :param on_alive: called when it is open again, ready for queries.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        delays: Callable[[], Iterator[float]],
        on_lost: Callable[[str], None] = lambda why: None,
        on_alive: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(reconnectionIterator=delays, reactor=reactor)
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
        call = retrying.RetryingCall(self.reconnect)
        call.reactor = self.reactor
        self._retrying = call.start(self.reconnectionIterator())
        self._retrying.addCallback(lambda _: self.connectionRecovered())
        self._retrying.addErrback(self._gave_up)

    def connectionRecovered(self) -> "Deferred[Any]":
        self._retrying = None
        if self.stopped:
            # An attempt under way when the connection closed for good has
            # just succeeded.
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
        self.alive = False
        if self._retrying is not None:
            # An attempt under way is closed (Connection.connect).
            self._retrying.cancel()


def connect_timeout(dsn: str, settings: Mapping[str, str]) -> float:
    """
    :return: the seconds libpq's ``connect_timeout`` setting (of
        ``settings``, else of ``dsn``, else of ``PGCONNECT_TIMEOUT``) gives
        each host to answer, as libpq reads it (2 at least); 0 for no limit.
    """
    try:
        given = {**psycopg2.extensions.parse_dsn(dsn), **settings}
    except psycopg2.ProgrammingError:
        given = dict(settings)
    try:
        seconds = int(given.get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT") or 0)
    except ValueError:
        return 0.0
    return float(max(seconds, 2)) if seconds > 0 else 0.0


#: What an attempt to open a connection that took too long fails with.
TIMED_OUT = "timeout expired"


def _where(attempt: Mapping[str, str]) -> str:
    """
    :return: the start of libpq's message about a failed attempt to reach
        the host of ``attempt`` (see :func:`blip.db.hosts.attempts`).
    """
    address = attempt.get("hostaddr")
    shown = f' ({address})' if address and address != attempt["host"] else ""
    port = f', port {attempt["port"]}' if attempt.get("port") else ""
    return f'connection to server at "{attempt["host"]}"{shown}{port} failed: '


class Connection(txpostgres.Connection):
    """
    A txpostgres connection that opens without blocking and within its
    ``connect_timeout``, and reports the server going away while the
    connection is idle as a lost connection (and so a reconnection by its
    detector), rather than as an unhandled error with a traceback.

    :param reactor: watches its socket.
    :param cooperator: hands NOTIFY events to its observers (txpostgres's
        default when None).
    :param detector: reconnects it.
    """

    detector: Detector

    def __init__(self, reactor: IReactorTime, cooperator: Any, detector: Detector) -> None:
        super().__init__(reactor, cooperator, detector=detector)
        #: The names of the statements prepared in the session now open
        #: (a new session, after a reconnection, has none).
        self.prepared: set[str] = set()

    def connect(self, dsn: str, **settings: str) -> "Deferred[Connection]":
        """
        Open the connection: resolve its host names without blocking, and
        try a list of hosts one address at a time
        (:func:`blip.db.hosts.attempts`), each given up (closed, and
        failed with :exc:`psycopg2.OperationalError`) when it is not open
        after ``connect_timeout``: libpq applies that setting only to
        connections it opens while blocking. Cancelling the returned
        Deferred closes the attempt (txpostgres would call psycopg2's
        ``cancel()``).

        :param dsn: a libpq connection string or URI.
        :param settings: more libpq settings, which win over ``dsn``'s.
        :return: a Deferred that fires with this connection once it is
            open; or fails with the reasons of every attempt, one a line.
        """
        return Deferred.fromCoroutine(self._open(dsn, settings))

    async def _open(self, dsn: str, settings: dict[str, str]) -> "Connection":
        self.prepared = set()
        resolver: Optional[IHostnameResolver] = getattr(self.reactor, "nameResolver", None)
        tried = [] if resolver is None else await attempts(dsn, settings, resolver)
        timeout = connect_timeout(dsn, settings)
        try:
            if not tried:
                return await self._attempt(dsn, settings, timeout)
            failures = []
            for extra in tried:
                try:
                    return await self._attempt(dsn, {**settings, **extra}, timeout)
                except psycopg2.OperationalError as e:
                    why = str(e).strip()
                    named = why.startswith("connection to server")
                    failures.append(why if named else _where(extra) + why)
            raise psycopg2.OperationalError("\n".join(failures))
        finally:
            # Reconnections connect again with the host names, not with
            # the addresses found this time.
            self.detector.setReconnectable(self, dsn, **settings)

    async def _attempt(self, dsn: str, settings: dict[str, str], timeout: float) -> "Connection":
        """
        One attempt to open the connection, given up after ``timeout``
        seconds (0: never).
        """
        opening: Deferred[Connection] = super().connect(dsn, **settings)
        try:
            if timeout and not await within(opening, timeout, self.reactor):
                raise psycopg2.OperationalError(TIMED_OUT)
            return await detached(opening)
        except BaseException:
            if not opening.called:
                # Closing fails the opening (with ConnectionDone); what
                # failed is said above.
                opening.addErrback(lambda f: None)
            if self.pollable() is not None:
                # Before the next attempt (txpostgres refuses to open a
                # connection that is not closed).
                self.close()
            raise

    def doRead(self) -> Optional[Exception]:
        # The reactor takes an exception returned (not raised) by doRead as
        # the reason the connection was lost.
        try:
            super().doRead()
        except psycopg2.Error as e:
            return e
        return None

    def close_for_good(self) -> None:
        """
        Stop reconnecting, and close the connection if it was ever opened.
        """
        self.detector.stop()
        if self.pollable() is not None:
            self.close()
