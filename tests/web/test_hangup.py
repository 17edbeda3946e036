"""
A client that hangs up while its query runs, over a real port: Klein
cancels the request's handler, which must let the query run to its end
rather than cancel it (psycopg2's cancel blocks, and txpostgres raises out
of it), so that nothing is logged as an error and the other requests of
the moment are answered as usual.
"""

import json
import socket
import time
from typing import Callable

import psycopg2
import pytest_twisted
from twisted.internet.defer import Deferred

from blip.meters import Meters
from blip.model import Point
from tests.conftest import TIMEOUT, Served, wait_until

T0 = 1_700_000_000_000


@pytest_twisted.ensureDeferred
async def test_a_client_hanging_up_mid_query(serve: Callable[..., Served], database, log_events) -> None:
    """
    While every connection of the pool waits for a lock on the readings,
    one client hangs up; once the lock is released, the other clients get
    their points, every connection is free again, nothing was logged as an
    error, and the next request is answered. The query of the client
    gone was not cancelled: it ran to its end.
    """
    site = serve(Meters())
    await site.store.insert([Point(1, T0 + i, 1000) for i in range(5)])
    expected = [[T0 + i, 1000] for i in range(5)]
    host, port = site.url.removeprefix("http://").split(":")
    holder = psycopg2.connect(database.dsn)
    try:
        with holder.cursor() as cursor:
            cursor.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
            hanging = socket.create_connection((host, int(port)))
            hanging.sendall(b"GET /since/1/0 HTTP/1.1\r\nHost: blip\r\n\r\n")
            others = [Deferred.fromCoroutine(site.get("/since/1/0")) for _ in range(2)]

            def waiting() -> int:
                return database.sql(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'readings'::regclass AND NOT granted"
                )[0][0]

            await wait_until(lambda: waiting() == 3)
            hanging.close()
            # The site has seen the client go once it counts its request.
            deadline = time.monotonic() + TIMEOUT
            while b'route="/since/<meter>/<since>"' not in (await site.get("/metrics"))[2]:
                assert time.monotonic() < deadline, "the hang-up was never seen"
            # The query of the client gone still runs: nothing cancelled it.
            still_waiting = waiting()
        holder.rollback()
        for other in others:
            code, _, body = await other
            assert (code, json.loads(body)) == (200, expected)
        await wait_until(lambda: site.store.pool.state().busy == 0)
        assert (await site.get("/since/1/0"))[0] == 200
    finally:
        holder.close()
    bad = [e for e in log_events if e.get("log_failure") or e.get("isError")
           or e["log_level"].name in ("error", "critical")]
    assert not bad, bad
    assert still_waiting == 3
