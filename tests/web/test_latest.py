"""
Tests of finding each meter's newest point: from memory first, else from
the database.
"""

import pytest_twisted

from blip.db.readings import Readings
from blip.live.hub import Hub
from blip.model import Point
from blip.web.latest import Latest

T0 = 1_700_000_000_000


@pytest_twisted.ensureDeferred
async def test_memory_first_then_the_database(store: Readings) -> None:
    """
    A meter's newest point is the hub's when it has one (it may not be
    written yet), else the database's; a meter without readings has none.
    """
    hub = Hub()
    latest = Latest(hub, store)
    await store.insert([Point(1, T0, 1000), Point(2, T0, 500)])
    assert await latest.point(1) == Point(1, T0, 1000)
    hub.publish(Point(1, T0 + 5000, 900))
    assert await latest.point(1) == Point(1, T0 + 5000, 900)
    assert await latest.point(3) is None


@pytest_twisted.ensureDeferred
async def test_every_meters_newest_point(store: Readings) -> None:
    """
    The newest point of every meter with readings, the newer of memory's
    and the database's; a point in memory only counts for the meters
    asked about (the configured ones) or with readings.
    """
    hub = Hub()
    latest = Latest(hub, store)
    await store.insert([Point(1, T0, 1000), Point(2, T0, 500)])
    hub.publish(Point(2, T0 + 1, 400))
    hub.publish(Point(3, T0 + 2, 300))
    hub.publish(Point(4, T0 + 3, 200))
    assert await latest.points([1, 3]) == {
        1: Point(1, T0, 1000), 2: Point(2, T0 + 1, 400), 3: Point(3, T0 + 2, 300),
    }
