"""
Tests of the queries behind the original's routes against a real
PostgreSQL: each answers what the original's SQL answers for the same rows,
as the original's JSON text; /aggregate reads the rollups where it can.
"""

import json

import pytest
import pytest_twisted

from blip.db.legacy import LegacyQueries
from blip.model import Point

MINUTE = 60_000
HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR


@pytest.fixture
def legacy(store) -> LegacyQueries:
    """The legacy queries, on the pool of ``store``."""
    return LegacyQueries(store.pool)


@pytest_twisted.ensureDeferred
async def test_queries(store, legacy) -> None:
    """
    The queries behind the legacy routes return what the original's SQL
    returns for the same rows.
    """
    points = [Point(1, T0 + i * 1000, 1000) for i in range(30)] + [Point(2, T0, 77)]
    await store.insert(points)
    assert await legacy.last(1) == (T0 + 29_000, 1000)
    assert await legacy.last(9) is None
    assert json.loads(await legacy.since(1, T0 + 27_000, 2000)) == [
        [T0 + 27_000, 1000], [T0 + 28_000, 1000], [T0 + 29_000, 1000]
    ]
    assert len(json.loads(await legacy.since(1, 0, 5))) == 5
    assert await legacy.since(3, 0, 5) == "[]"
    assert json.loads(await legacy.between(1, T0 + 1000, T0 + 2000, 100)) == [
        [T0 + 1000, 1000], [T0 + 2000, 1000]
    ]
    assert await legacy.aggregate(1, T0 + 500, 10_000, 2) == "[[0,10],[10000,10]]"
    assert await legacy.count_since(1, T0 + 20_000) == 10
    assert await legacy.hourly(1, T0, T0) == f"[[{T0},30,3600,1000,1000]]"
    assert await legacy.aggregate_hourly(1, T0, HOUR, 3) == "[[0,3600]]"
    assert await legacy.minutely(1, T0, T0 + HOUR, 10) == f"[[{T0},30,3600,1000,1000]]"
    # A number that is a meter's id (with readings) is not read as a span.
    assert await legacy.recent_unless_meter(2, 1, T0 + 28_000, 2000) is None
    for number in (3, 2**31, 10**15 - 1):
        assert json.loads(await legacy.recent_unless_meter(number, 1, T0 + 28_000, 2000)) == [
            [T0 + 28_000, 1000], [T0 + 29_000, 1000]
        ]


@pytest_twisted.ensureDeferred
async def test_aggregate_reads_the_rollups_when_buckets_align(store, legacy, database) -> None:
    """
    /aggregate counts from the hour or minute rollups when its start and
    bucket width are whole hours or minutes, and from the rollups with the
    points of the minutes a bucket's edge cuts when they are not, with the
    same answer a count of the points gives; buckets under a minute count
    the points. (Readings deleted behind the rollups' back show which
    source was read.)
    """
    points = [Point(1, T0 + i * 7_000 + i % 3, 500) for i in range(2000)]
    await store.insert(points)
    hourly = await legacy.aggregate(1, T0, HOUR, 5)
    minutely = await legacy.aggregate(1, T0 + 60_000, 120_000, 100)
    raw = await legacy.aggregate(1, T0 + 1, 10_000, 500)
    mixed = await legacy.aggregate(1, T0 + HOUR + 1, HOUR, 3)

    def counted(start: int, width: int, count: int) -> list[list[int]]:
        buckets: dict[int, int] = {}
        for p in points:
            if start <= p.stamp < start + width * count:
                offset = width * ((p.stamp - start) // width)
                buckets[offset] = buckets.get(offset, 0) + 1
        return [[o, n] for o, n in sorted(buckets.items())]

    assert json.loads(hourly) == counted(T0, HOUR, 5)
    assert json.loads(minutely) == counted(T0 + 60_000, 120_000, 100)
    assert json.loads(raw) == counted(T0 + 1, 10_000, 500)
    assert json.loads(mixed) == counted(T0 + HOUR + 1, HOUR, 3)
    for start, width, count in [
        (T0 + 1, HOUR, 5),
        (T0 - 5 * MINUTE + 17, 2 * HOUR + 1, 3),
        (T0 + 12_345, 10 * MINUTE, 30),
        (T0 + 59_999, 90_000, 200),
        (T0 + 30_000, MINUTE, 300),
        (T0 + 1, 61_000, 250),
        (T0 + 30 * MINUTE + 1, 24 * HOUR, 1),
        (T0 + 2 * HOUR + 7, 7 * MINUTE + 3, 1000),
    ]:
        answer = await legacy.aggregate(1, start, width, count)
        assert json.loads(answer) == counted(start, width, count), (start - T0, width, count)
    database.sql("DELETE FROM readings WHERE stamp < %s", (T0 + 2 * HOUR,))
    assert await legacy.aggregate(1, T0, HOUR, 5) == hourly
    assert await legacy.aggregate(1, T0 + 60_000, 120_000, 100) == minutely
    assert await legacy.aggregate(1, T0 + 1, 10_000, 500) != raw
    # The whole hour from T0 + HOUR + 1 cut by no edge came from a rollup;
    # the minute its first edge cuts, from the points.
    assert json.loads(await legacy.aggregate(1, T0 + HOUR + 1, HOUR, 3))[0][1] == (
        json.loads(mixed)[0][1] - sum(T0 + HOUR + 1 <= p.stamp < T0 + HOUR + MINUTE for p in points)
    )


@pytest_twisted.ensureDeferred
async def test_usage_counts_from_the_rollups(store, legacy, database) -> None:
    """
    /usage counts the points of its first partial minute one by one and
    reads the rollups for the rest, so that a span of years costs a row
    per hour rather than a row per point; its count is that of the points
    for any start: inside a minute, on a minute or an hour, at the last
    point, 15 digits back, and around 1970 (whose rollup buckets also hold
    the stamps before it). Readings deleted behind the rollups' back show
    which source was read.
    """
    stamps = [T0 - 2 * HOUR + i * 7001 for i in range(1600)] + [-5000, 30_000, 90_000, 2 * HOUR + 1]
    await store.insert([Point(1, s, 1000) for s in stamps])
    await store.insert([Point(2, T0, 1000)])
    starts = [
        T0 + 1234, T0, T0 - HOUR, T0 - HOUR + MINUTE, T0 - 59 * MINUTE - 17, max(stamps),
        max(stamps) + 1, -10**15, -4999, 0, 45_000, 60_000, 3_599_999, HOUR, 2 * HOUR + 2,
    ]
    for since in starts:
        assert await legacy.count_since(1, since) == sum(s >= since for s in stamps), since
    since = T0 - HOUR + 30_000
    database.sql("DELETE FROM readings WHERE id = 1 AND stamp >= %s", (T0 - HOUR + MINUTE,))
    assert await legacy.count_since(1, since) == sum(s >= since for s in stamps)
