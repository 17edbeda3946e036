"""
Pins of what blipserver relies on in txpostgres beyond its documented use
(see blip/db/txpg.py): how a dead-connection detector goes about a
reconnection, what a connection's doRead does when the server ends an idle
connection, a connection's pollable before it is opened, closing one while
it opens, the arguments a reconnection uses, and what cancelling a query
does. A txpostgres release that changes one of them fails here.
"""

import socket
import time
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres

from blip.db.txpg import Connection, Detector
from tests.conftest import wait_until


class Reconnectable:
    """
    What a detector reconnects, in memory: each ``connect`` answers the
    next of ``outcomes`` (True: opened).
    """

    def __init__(self, *outcomes: bool) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[Any] = []

    def connect(self, *args: Any, **kwargs: Any) -> "Deferred[None]":
        """Record the attempt and answer the next outcome."""
        self.calls.append(("connect", args, kwargs))
        if self.outcomes.pop(0):
            return succeed(None)
        return fail(psycopg2.OperationalError("still away"))

    def close(self) -> None:
        """Record the close."""
        self.calls.append(("close",))


def lost() -> Failure:
    """:return: a failure that shows a connection dead."""
    return Failure(psycopg2.OperationalError("server closed the connection"))


def failures(events) -> list[Failure]:
    """:return: the failures logged among ``events`` (Twisted's legacy log.err included)."""
    return [e.get("log_failure") or e["failure"] for e in events if e.get("log_failure") or e.get("failure")]


def detector(clock: Clock, events: list[Any]) -> Detector:
    """:return: a detector on ``clock`` that records when it is told of a loss or a return."""
    return Detector(
        clock, lambda: iter([0.0, 5.0, 5.0]),
        on_lost=lambda why: events.append(("lost", why)), on_alive=lambda: events.append("alive"),
    )


def test_a_reconnection_goes_through_the_detectors_steps() -> None:
    """
    A failure that shows the connection dead starts one reconnection, at
    once (a zero delay is a call without the reactor), then on the clock;
    each attempt closes and connects again with the arguments of the first
    connect; the first that works clears txpostgres's dead flag, then runs
    the recovery handlers. Queries meanwhile fail at once. Other failures
    start nothing.
    """
    clock, events = Clock(), []
    watch = detector(clock, events)
    reconnectable = Reconnectable(False, True)
    watch.setReconnectable(reconnectable, "dbname=x", application_name="a")
    watch.addRecoveryHandler(lambda: events.append(("handler", watch.connectionIsDead)))

    watch.checkForDeadConnection(Failure(psycopg2.ProgrammingError("syntax")))
    assert events == [] and not watch.connectionIsDead
    watch.checkForDeadConnection(lost())
    watch.checkForDeadConnection(lost())
    assert events == [("lost", "server closed the connection")] and watch.connectionIsDead
    assert reconnectable.calls == [("close",), ("connect", ("dbname=x",), {"application_name": "a"})]
    refused = watch.callChecking(lambda: succeed(None))
    refused.addErrback(lambda f: events.append(f.type))
    assert events[-1] is reconnection.ConnectionDead

    clock.advance(5)
    assert len(reconnectable.calls) == 4
    assert events[-2:] == [("handler", False), "alive"]
    assert watch.alive and not watch.connectionIsDead and clock.getDelayedCalls() == []


def test_stopping_cancels_the_reconnection_under_way() -> None:
    """
    A stopped detector makes no further attempt (the wait under way is
    cancelled), and a loss after the stop is not reported.
    """
    clock, events = Clock(), []
    watch = detector(clock, events)
    reconnectable = Reconnectable(False, True)
    watch.setReconnectable(reconnectable)
    watch.checkForDeadConnection(lost())
    assert len(clock.getDelayedCalls()) == 1
    watch.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert len(reconnectable.calls) == 2 and events == [("lost", "server closed the connection")]
    assert not watch.alive


@pytest_twisted.ensureDeferred
async def test_a_server_ending_an_idle_connection(database, log_events) -> None:
    """
    When the server ends an idle connection, txpostgres's own doRead
    raises (the reactor logs it as an unhandled error); blipserver's
    connection reports it as a lost connection instead, quietly, and its
    detector reconnects.
    """
    from twisted.internet import reactor

    async def terminate(connection: txpostgres.Connection) -> None:
        [(pid,)] = await connection.runQuery("SELECT pg_backend_pid()")
        database.sql("SELECT pg_terminate_backend(%s)", (pid,))

    plain = txpostgres.Connection(reactor)
    await plain.connect(database.dsn)
    try:
        await terminate(plain)
        await wait_until(lambda: bool(failures(log_events)))
        assert failures(log_events)[0].check(psycopg2.OperationalError)
    finally:
        plain.close()
    logged = len(failures(log_events))

    events: list[Any] = []
    ours = Connection(reactor, None, detector(reactor, events))
    await ours.connect(database.dsn)
    ours.detector.alive = True
    try:
        await terminate(ours)
        await wait_until(lambda: "alive" in events)
        assert events[0][0] == "lost" and "server closed the connection" in events[0][1]
        assert await ours.runQuery("SELECT 1") == [(1,)]
    finally:
        ours.close_for_good()
    assert len(failures(log_events)) == logged


@pytest_twisted.ensureDeferred
async def test_closing_for_good_before_and_after_opening(database) -> None:
    """
    A connection's pollable is None until it is first opened, so one
    never opened is closed for good without error; an open one is closed,
    and stays closed.
    """
    from twisted.internet import reactor

    never = Connection(reactor, None, detector(reactor, []))
    assert never.pollable() is None
    never.close_for_good()
    opened = Connection(reactor, None, detector(reactor, []))
    await opened.connect(database.dsn)
    opened.close_for_good()
    assert opened.pollable().closed
    assert opened.detector.stopped and not opened.detector.alive


@pytest_twisted.ensureDeferred
async def test_cancelling_a_query_cancels_it_on_the_server(database) -> None:
    """
    Cancelling a txpostgres query's Deferred calls psycopg2's cancel(), a
    blocking PQcancel that has the server end the statement, and raises
    _CancelInProgress out of Deferred.cancel: why nothing in blipserver
    cancels a query (blip.db.pool lets its caller go instead).
    """
    from twisted.internet import reactor

    plain = txpostgres.Connection(reactor)
    await plain.connect(database.dsn)
    try:
        query = plain.runQuery("SELECT pg_sleep(30)")
        running = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
        await wait_until(lambda: database.sql(running)[0][0] == 1)
        with pytest.raises(txpostgres._CancelInProgress):
            query.cancel()
        with pytest.raises(CancelledError):
            await query
    finally:
        plain.close()


@pytest_twisted.ensureDeferred
async def test_an_opening_closed_fails_and_reconnections_repeat_the_arguments(log_events) -> None:
    """
    Closing a connection while it opens fails the opening (Connection
    gives up so on an opening past its connect_timeout), and the detector
    reconnects with the arguments given to Connection.connect, not those
    Connection.connect handed txpostgres.
    """
    from twisted.internet import reactor

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        port = silent.getsockname()[1]
        connection = Connection(reactor, None, detector(reactor, []))
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError, match="timeout expired"):
            await connection.connect(f"host=127.0.0.1 port={port} dbname=x", connect_timeout="2")
        assert 2 <= time.monotonic() - started < 10
        assert connection.pollable().closed
        assert (connection.detector._connargs, connection.detector._connkw) == (
            (f"host=127.0.0.1 port={port} dbname=x",), {"connect_timeout": "2"}
        )
        connection.close_for_good()
    finally:
        silent.close()
