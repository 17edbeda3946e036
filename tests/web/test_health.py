"""
Tests of /healthz: a fresh and a stale serial source, a node without one,
and an absent database.
"""

import json
from typing import Callable

import pytest_twisted

from blip.meters import Meters
from blip.model import Point
from tests.conftest import Served


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
    site.hub.publish(Point(1, 1, 1000))
    assert (await site.get("/healthz"))[0] == 200


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
    assert report["checks"]["database"]["ok"] is False
    assert report["error"].startswith("database: ")
    code, headers, body = await site.get("/api/v1/meters")
    assert code == 503 and json.loads(body)["status"] == 503
