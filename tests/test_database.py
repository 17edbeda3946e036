"""
Tests of the connection pool and the database service against real
servers: closing while a connection attempt hangs, waiting for a
connection, and reconnecting after the test cluster restarts.
"""

import select
import socket

import pytest_twisted
from twisted.internet.threads import deferToThread

from blip.counters import Counters
from blip.database import DatabaseService, Pool
from blip.store import Store
from tests.test_web import wait_until


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
async def test_reconnects_after_a_restart_and_says_so(database, stoppable_cluster) -> None:
    """
    The service prepares the database once; after the cluster restarts,
    the pool's connections come back by themselves, when_alive fires, and
    the reconnections are counted.
    """
    from twisted.internet import reactor

    counters = Counters()
    pool = Pool(database.dsn, 2, reactor, counters)
    service = DatabaseService(pool, Store(pool).apply_schema)
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
