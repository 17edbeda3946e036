"""
Tests of /healthz: a fresh and a stale serial source, judged by this
node's own blips, a node without one, and an absent or silent database
named in plain words, its details in the log.
"""

import json
from typing import Callable

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver

from blip.counters import Counters
from blip.db.queries import Queries
from blip.db.readings import Readings
from blip.live.notify import Listener
from blip.meters import Meters
from blip.model import Point
from blip.web.health import Health
from tests.conftest import Database, Served, wait_until


def source_blip(site: Served, point: Point) -> None:
    """A blip read from the node's own serial source."""
    site.health.watching(site.hub.publish)(point)


@pytest_twisted.ensureDeferred
async def test_healthy_while_blips_arrive(serve: Callable[..., Served]) -> None:
    """
    /healthz answers 200 while the source delivered a blip within the
    window (the start counts as one), and 503 naming the serial source once
    it has not for longer; a blip makes it healthy again.
    """
    site = serve(Meters())
    code, headers, body = await site.get("/healthz")
    assert code == 200
    assert headers.getRawHeaders(b"Content-Type") == [b"application/json"]
    report = json.loads(body)
    assert report["status"] == "ok"
    assert report["checks"]["database"] == {"ok": True}
    assert report["checks"]["serial"]["ok"] is True
    site.clock.advance(601)
    code, _, body = await site.get("/healthz")
    report = json.loads(body)
    assert (code, report["status"]) == (503, "fail")
    assert report["error"].startswith("serial: no blip for 601 s")
    assert report["checks"]["serial"] == {"ok": False, "seconds_since_blip": 601.0}
    source_blip(site, Point(1, 1, 1000))
    assert (await site.get("/healthz"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_points_of_other_nodes_say_nothing_of_the_source(
    serve: Callable[..., Served], database: Database
) -> None:
    """
    Points that reach the hub from another node, through LISTEN, leave a
    stale source stale: only this node's own blips count.
    """
    meters = Meters()
    site = serve(meters)
    listener = Listener(database.dsn, site.store, site.hub, meters, reactor, Counters(), clock=site.clock)
    listener.start()
    try:
        await listener.when_live()
        site.clock.advance(601)
        now = int(site.clock.seconds() * 1000)
        # Another ingest node writes (and announces) a point.
        await Readings(site.store.pool).insert([Point(1, now, 1000)])
        await wait_until(lambda: site.hub.last(1) is not None)
        code, _, body = await site.get("/healthz")
        assert code == 503
        assert json.loads(body)["error"].startswith("serial: no blip for 601 s")
        source_blip(site, Point(1, now + 1000, 1000))
        assert (await site.get("/healthz"))[0] == 200
    finally:
        listener.stop()


@pytest_twisted.ensureDeferred
async def test_web_node_has_no_serial_check(serve: Callable[..., Served]) -> None:
    """
    A node without a serial source only checks the database.
    """
    site = serve(Meters(), has_source=False)
    site.clock.advance(10_000)
    code, _, body = await site.get("/healthz")
    assert (code, json.loads(body)["checks"]) == (200, {"database": {"ok": True}})


@pytest_twisted.ensureDeferred
async def test_unhealthy_without_the_database(serve: Callable[..., Served]) -> None:
    """
    With the database unreachable, /healthz answers 503 naming it, and
    the API answers 503 problems, not 500s.
    """
    site = serve(Meters())
    site.store.pool.close()
    code, _, body = await site.get("/healthz")
    report = json.loads(body)
    assert code == 503
    assert report["checks"]["database"] == {"ok": False, "error": "unreachable"}
    assert report["error"] == "database: unreachable"
    code, headers, body = await site.get("/api/v1/meters")
    assert code == 503 and json.loads(body)["status"] == 503


class Silent(Queries):
    """A database that never answers, nor fails."""

    async def ping(self) -> None:
        await Deferred()


class Refusing(Queries):
    """A database that refuses, saying who and where."""

    async def ping(self) -> None:
        import psycopg2

        raise psycopg2.OperationalError(
            'connection to server at "db.internal" (10.1.2.3), port 5432 failed:'
            ' FATAL: password authentication failed for user "blipserver"'
        )


@pytest_twisted.ensureDeferred
async def test_the_database_is_named_in_plain_words(
    serve: Callable[..., Served], log_events: EventLoggingObserver
) -> None:
    """
    /healthz says what is wrong with the database in words that name no
    host or user (it echoed PostgreSQL's message); the details are
    logged, at most once a minute; a database that does not answer is
    "not answering within 5 s".
    """
    site = serve(Meters())
    site.health.store = Refusing(site.store.pool)
    for _ in range(3):
        code, _, body = await site.get("/healthz")
        assert (code, json.loads(body)["error"]) == (503, "database: unreachable")
        assert b"db.internal" not in body and b"blipserver" not in body
    lines = [e for e in log_events if e.get("log_namespace") == "blip.web.health.Health"]
    assert len(lines) == 1
    assert "db.internal" in lines[0]["detail"] and lines[0]["why"] == "unreachable"

    health = Health(Silent(site.store.pool), site.clock, 600.0, False)
    checking = Deferred.fromCoroutine(health.check())
    site.clock.advance(5)
    ok, report = await checking
    assert (ok, report["error"]) == (False, "database: not answering within 5 s")
