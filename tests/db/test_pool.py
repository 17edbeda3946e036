"""
Tests of the connection pool and the database service against real
servers: closing while a connection attempt hangs, an attempt that never
gets an answer given up, waiting for a connection or a free one, a
cancelled query that runs to its end, the server's statement timeout,
reconnecting after the test cluster restarts on the common backoff,
preparing retried while the database is away, and a database that cannot
be prepared stopping the daemon instead of being retried for ever.
"""

import select
import socket
import time

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from blip.common.retry import FIRST_DELAY, MAX_DELAY
from blip.counters import Counters
from blip.db.pool import (
    RETRIABLE,
    DatabaseService,
    DatabaseUnavailable,
    Pool,
    PoolState,
    Prepared,
    QueryCancelled,
    connection_settings,
    reconnect_delays,
)
from blip.db.schema import SCHEMA_LOCK, Schema
from tests import originals
from tests.conftest import TIMEOUT, wait_until


@pytest_twisted.ensureDeferred
async def test_closing_while_a_reconnection_attempt_hangs() -> None:
    """
    The first attempt is refused, so the pool retries; the retry reaches a
    server that accepts and never answers. Closing the pool then (a daemon
    stopping while its database host is unreachable) neither raises nor
    says the database is alive.
    """
    from twisted.internet import reactor

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    pool = Pool(f"host=127.0.0.1 port={port} dbname=x connect_timeout=30", 1, reactor)
    try:
        await pool.start()
        waiting = pool.when_alive()
        silent.listen(8)
        silent.setblocking(False)
        await wait_until(lambda: select.select([silent], [], [], 0)[0] != [])
        pool.close()
        assert not pool.alive and not waiting.called
        waiting.cancel()
        waiting.addErrback(lambda f: None)
    finally:
        silent.close()


@pytest_twisted.ensureDeferred
async def test_an_opening_without_an_answer_is_given_up(log_events) -> None:
    """
    libpq applies connect_timeout only to connections it opens while
    blocking, and a pool opens them without: a server that accepts the
    connection and never answers (a relay in front of a dark link) is
    given up after connect_timeout all the same, said once, and tried
    again, rather than waited for for ever.
    """
    from twisted.internet import reactor

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    pool = Pool(f"host=127.0.0.1 port={port} dbname=x connect_timeout=2", 1, reactor)
    started = time.monotonic()
    try:
        pool.start()

        def warned() -> list[str]:
            return [
                e["why"] for e in log_events if e.get("log_format", "").startswith("database unreachable")
            ]

        await wait_until(lambda: bool(warned()), 15)
        assert warned() == ["timeout expired"]
        assert 2 <= time.monotonic() - started < 10
        assert not pool.alive
    finally:
        pool.close()
        silent.close()
    assert not [e for e in log_events if e.get("log_failure") or e.get("isError")]


@pytest_twisted.ensureDeferred
async def test_a_cancelled_query_runs_to_its_end(database, log_events) -> None:
    """
    Cancelling a query (a client that hung up, a health check that gave
    up) lets its caller go at once, but sends the server no cancel
    (psycopg2's cancel() would block the reactor on a new connection to
    the server): the query runs to its end on its connection, which is
    busy until then and free after. Cancelling a query that waits for a
    free connection ends the wait. Nothing is logged, nothing reconnects.
    """
    import psycopg2
    from twisted.internet import reactor

    counters = Counters()
    pool = Pool(database.dsn, 1, reactor, counters)
    await pool.start()

    def waiting_for_the_lock() -> int:
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return database.sql(waiting)[0][0]

    holder = psycopg2.connect(database.dsn)
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(7)")
            query = pool.runQuery("SELECT 'done' FROM pg_advisory_lock(7)")
            queued = pool.runQuery("SELECT 1")
            await wait_until(lambda: waiting_for_the_lock() == 1)
            query.cancel()
            queued.cancel()
            for cancelled in (query, queued):
                with pytest.raises(CancelledError):
                    await cancelled
            assert pool.state() == PoolState(size=1, alive=1, busy=1, waiting=0)
            assert waiting_for_the_lock() == 1
            cursor.execute("SELECT pg_advisory_unlock(7)")
        await wait_until(lambda: pool.state().busy == 0)
        # The query took the lock when it was released: it ran to its end.
        granted = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        assert database.sql(granted) == [(1,)]
        assert await pool.runQuery("SELECT 1") == [(1,)]
    finally:
        holder.close()
        pool.close()
    assert counters.db_reconnects == 0
    assert not [e for e in log_events if e["log_level"].name in ("warn", "error", "critical")]


@pytest_twisted.ensureDeferred
async def test_the_server_ends_queries_after_the_statement_timeout(database, log_events) -> None:
    """
    A pool given a statement timeout has the server end its statements
    after it (a transaction's too), among the server options the
    connection string gives: such a query fails with QueryCancelled, not
    as if the database were away, and its connection stays open.
    """
    from twisted.internet import reactor

    counters = Counters()
    dsn = f"{database.dsn} options='-c work_mem=7MB'"
    pool = Pool(dsn, 1, reactor, counters, statement_timeout=0.2)
    await pool.start()
    try:
        started = time.monotonic()
        with pytest.raises(QueryCancelled):
            await pool.runQuery("SELECT pg_sleep(5)")
        with pytest.raises(QueryCancelled):
            await pool.runInteraction(lambda cursor: cursor.execute("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 3
        settings = "SELECT current_setting('work_mem'), current_setting('statement_timeout')"
        assert await pool.runQuery(settings) == [("7MB", "200ms")]
        assert pool.alive
    finally:
        pool.close()
    assert counters.db_reconnects == 0
    assert not [e for e in log_events if e["log_level"].name in ("warn", "error", "critical")]


def test_the_statement_timeout_comes_after_the_options_given(monkeypatch) -> None:
    """
    The statement timeout is one more server option, after those of the
    connection string, or of PGOPTIONS when it has none (the setting given
    replaces both); none is added without a timeout.
    """
    monkeypatch.setenv("PGOPTIONS", "-c geqo=off")
    both = "-c geqo=off -c statement_timeout=1500"
    assert connection_settings("dbname=x", 1.5)["options"] == both
    assert connection_settings("dbname=x options='-c jit=off'", 30)["options"] == (
        "-c jit=off -c statement_timeout=30000"
    )
    assert "options" not in connection_settings("dbname=x", 0)


@pytest_twisted.ensureDeferred
async def test_reconnects_after_a_restart_and_says_so(database, stoppable_cluster) -> None:
    """
    The service prepares the database once; after the cluster restarts,
    the pool's connections come back by themselves, when_alive fires, and
    the reconnections are counted.
    """
    from twisted.internet import reactor

    counters = Counters()
    pool = Pool(database.dsn, 2, reactor, counters)
    service = DatabaseService(pool, Schema(pool).apply)
    service.startService()
    try:
        await service.when_ready()
        assert pool.alive
        await deferToThread(stoppable_cluster.stop)
        await wait_until(lambda: not pool.alive)
        back = pool.when_alive()
        await deferToThread(stoppable_cluster.start)
        await back
        await wait_until(lambda: counters.db_reconnects == 2, 30)
        assert (await pool.runQuery("SELECT 1")) == [(1,)]
    finally:
        service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_refused_database_is_fatal(database, log_events) -> None:
    """
    Preparing a database that is not blipserver's logs why as critical,
    once, and calls ``fatal`` (which stops the daemon) instead of retrying.
    """
    from twisted.internet import reactor

    originals.execute(database.dsn, "CREATE TABLE invoices (number INTEGER PRIMARY KEY)")
    pool = Pool(database.dsn, 1, reactor)
    stopped: Deferred[None] = Deferred()
    service = DatabaseService(pool, Schema(pool).apply, fatal=lambda: stopped.callback(None))
    service.startService()
    try:
        await stopped.addTimeout(TIMEOUT, reactor)
    finally:
        service.stopService()
    critical = [e for e in log_events if e["log_level"].name == "critical"]
    assert len(critical) == 1
    assert critical[0]["log_format"].startswith("refusing to use the database")
    assert "no readings table" in critical[0]["why"]
    assert not service.ready


@pytest_twisted.ensureDeferred
async def test_stopping_while_preparing_is_not_a_failure(database, log_events) -> None:
    """
    A daemon stopped while the schema is being prepared (here: waiting for
    another node's schema lock) is not failing: nothing critical is logged
    and ``fatal`` is not called, so it exits with status 0.
    """
    import psycopg2
    from twisted.internet import reactor

    holder = psycopg2.connect(database.dsn)
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            pool = Pool(database.dsn, 1, reactor)
            fatal: list[None] = []
            service = DatabaseService(pool, Schema(pool).apply, fatal=lambda: fatal.append(None))
            service.startService()
            await wait_until(
                lambda: database.sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )[0][0] == 1
            )
            service.stopService()
            await deferLater(reactor, 0.1, lambda: None)
    finally:
        holder.close()
    assert fatal == []
    ours = [e for e in log_events if e.get("log_namespace", "").startswith("blip.")]
    assert not [e for e in ours if e["log_level"].name == "critical"]


@pytest_twisted.ensureDeferred
async def test_connections_notice_a_vanished_server(database) -> None:
    """
    The pool's connections have TCP keepalives and a user timeout unless
    the connection string sets its own; its other settings still apply.
    """
    from twisted.internet import reactor

    pool = Pool(f"{database.dsn} options='-c work_mem=7MB' keepalives_idle=5", 1, reactor)
    await pool.start()
    try:
        assert await pool.runQuery("SELECT current_setting('work_mem')") == [("7MB",)]
        settings = await pool.runInteraction(lambda cursor: cursor.connection.get_dsn_parameters())
        assert (settings["keepalives"], settings["keepalives_idle"], settings["tcp_user_timeout"]) == (
            "1", "5", "60000"
        )
    finally:
        pool.close()


@pytest_twisted.ensureDeferred
async def test_a_prepared_statement_is_prepared_once_per_session(database) -> None:
    """
    A prepared statement is prepared in a connection's session the first
    time it runs there, then only executed; a new session, after a
    reconnection, prepares it again. A session that forgot it
    (DEALLOCATE) fails the query as a lost connection, and is replaced.
    """
    from twisted.internet import reactor

    statement = Prepared("blip_test_sum", "SELECT $1::integer + $2::integer, 7 % 4", 2)
    pool = Pool(database.dsn, 1, reactor)
    await pool.start()

    async def prepared() -> list[tuple]:
        return await pool.runQuery("SELECT name, statement FROM pg_prepared_statements")

    try:
        assert await pool.runPrepared(statement, (2, 3)) == [(5, 3)]
        assert await prepared() == [("blip_test_sum", statement.prepare)]
        assert await pool.runPrepared(statement, (4, 5)) == [(9, 3)]
        pid = (await pool.runQuery("SELECT pg_backend_pid()"))[0][0]
        database.sql("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(RETRIABLE):
            await pool.runPrepared(statement, (6, 1))
        await wait_until(lambda: pool.state().alive == 1)
        assert await pool.runPrepared(statement, (6, 1)) == [(7, 3)]
        assert (await pool.runQuery("SELECT pg_backend_pid()"))[0][0] != pid
        assert await prepared() == [("blip_test_sum", statement.prepare)]
        await pool.runOperation("DEALLOCATE ALL")
        with pytest.raises(RETRIABLE):
            await pool.runPrepared(statement, (1, 1))
        await wait_until(lambda: pool.state().alive == 1)
        assert await pool.runPrepared(statement, (1, 1)) == [(2, 3)]
    finally:
        pool.close()


def test_reconnection_delays_follow_the_common_backoff() -> None:
    """
    txpostgres is given the first attempt at once, then the waits of the
    one backoff policy: doubling from half a second (plus up to a second
    of jitter), up to its most.
    """
    delays = reconnect_delays()
    assert next(delays) == 0.0
    waits = [next(delays) for _ in range(12)]
    for n, wait in enumerate(waits, 1):
        base = min(FIRST_DELAY * 2**n, MAX_DELAY)
        assert base <= wait < base + 1, (n, wait)


@pytest_twisted.ensureDeferred
async def test_queries_fail_at_once_without_a_connection_and_wait_for_a_free_one(database) -> None:
    """
    Before any connection is open a query fails at once (the database is
    away); once one is, queries beyond the free connections wait their
    turn, and the pool's state says how many are busy and waiting.
    """
    import psycopg2
    from twisted.internet import reactor

    pool = Pool(database.dsn, 1, reactor)
    try:
        with pytest.raises(DatabaseUnavailable):
            await pool.runQuery("SELECT 1")
        assert pool.state() == PoolState(size=1, alive=0, busy=0, waiting=0)
        opened = pool.when_alive()
        await pool.start()
        await opened
        holder = psycopg2.connect(database.dsn)
        try:
            with holder.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(7)")
                first = pool.runQuery("SELECT 'first' FROM pg_advisory_lock(7)")
                second = pool.runQuery("SELECT 'second'")
                assert pool.state() == PoolState(size=1, alive=1, busy=1, waiting=1)
                cursor.execute("SELECT pg_advisory_unlock(7)")
        finally:
            holder.close()
        assert await first == [("first",)]
        assert await second == [("second",)]
        assert pool.state() == PoolState(size=1, alive=1, busy=0, waiting=0)
    finally:
        pool.close()


@pytest_twisted.ensureDeferred
async def test_preparing_is_retried_while_the_database_is_away(database, log_events) -> None:
    """
    A preparation that fails because the database is away is tried again
    with backoff; the failure is said once, and the database is ready once
    it works.
    """
    import psycopg2
    from twisted.internet import reactor

    attempts: list[None] = []

    async def prepare() -> None:
        attempts.append(None)
        if len(attempts) == 1:
            raise psycopg2.OperationalError("the database is starting up")

    pool = Pool(database.dsn, 1, reactor)
    service = DatabaseService(pool, prepare)
    service.startService()
    try:
        await service.when_ready().addTimeout(TIMEOUT, reactor)
    finally:
        service.stopService()
    assert len(attempts) == 2 and service.ready
    warned = [e for e in log_events if e["log_level"].name == "warn" and "why" in e]
    assert [(e["what"], e["why"]) for e in warned] == [("prepare the database", "the database is starting up")]
