"""
Tests of what every set of queries shares, against a real PostgreSQL: the
newest points, a ping, and statements run without JIT compilation.
"""

import pytest_twisted

from blip.db.queries import Queries, Reading, uncompiled
from blip.model import Point

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR


@pytest_twisted.ensureDeferred
async def test_the_newest_points(store) -> None:
    """
    The newest point of one meter comes as a reading (None without any),
    and the newest of every meter with readings as points.
    """
    queries = Queries(store.pool)
    await queries.ping()
    assert await queries.last(1) is None
    assert await queries.last_points() == []
    await store.insert([Point(1, T0 + i * 1000, 1000 + i) for i in range(30)] + [Point(2, T0, 77)])
    assert await queries.last(1) == Reading(T0 + 29_000, 1029)
    assert await queries.last(9) is None
    assert sorted(await queries.last_points(), key=lambda p: p.meter) == [
        Point(1, T0 + 29_000, 1029), Point(2, T0, 77)
    ]


@pytest_twisted.ensureDeferred
async def test_queries_the_planner_misprices_run_without_jit(store) -> None:
    """
    The statements whose cost the planner overestimates run with JIT off
    for their own transaction; other queries keep the server's setting.
    """
    assert await uncompiled(store.pool, "SELECT current_setting('jit')", None) == [("off",)]
    assert await store.pool.runQuery("SELECT current_setting('jit')") == [("on",)]
