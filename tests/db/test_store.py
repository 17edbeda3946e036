"""
Tests of the store against a real PostgreSQL: the schema, batched inserts
with their rollups (also under concurrent writers), and the queries.
"""

import io
import json
import random

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from blip.db.pool import Pool
from blip.db.store import Store
from blip.model import Point

MINUTE = 60_000
HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR


def recount(database, width: int) -> list[tuple]:
    """:return: rollup rows recomputed from readings."""
    return database.sql(
        "SELECT id, stamp - stamp %% %s, count(*), sum(ms), min(ms), max(ms)"
        "  FROM readings GROUP BY 1, 2 ORDER BY 1, 2",
        (width,),
    )


def rollups(database, table: str) -> list[tuple]:
    """:return: the rows of a rollup table."""
    return database.sql(
        f"SELECT id, stamp, events, sum_ms, min_ms, max_ms FROM {table} ORDER BY 1, 2"
    )


def assert_rollups_match(database) -> None:
    """Both rollup tables agree with a recount of readings."""
    assert rollups(database, "readings_minutely") == recount(database, 60_000)
    assert rollups(database, "readings_hourly") == recount(database, HOUR)


@pytest_twisted.ensureDeferred
async def test_schema_has_the_originals_tables_and_is_idempotent(store, database) -> None:
    """
    The schema creates the original's tables and views with their columns,
    and applying it again changes nothing.
    """
    await store.insert([Point(1, T0, 1000)])
    await store.apply_schema()
    columns = database.sql(
        "SELECT table_name, string_agg(column_name, ',' ORDER BY ordinal_position)"
        "  FROM information_schema.columns WHERE table_schema = 'public'"
        " GROUP BY 1 ORDER BY 1"
    )
    assert dict(columns) == {
        "blip_schema": "version,applied,note",
        "ingest_periods": "node,started,alive_at,ended,end_reason",
        "meters": "id,label,description,pulses_per_kwh,multiplier,price_per_kwh,currency,timezone",
        "readings": "id,stamp,ms",
        "readings_hourly": "id,stamp,events,sum_ms,min_ms,max_ms",
        "readings_minutely": "id,stamp,events,sum_ms,min_ms,max_ms",
        "usage_hourly": "id,stamp,wh,min_ms,max_ms,events",
        "usage_minutely": "id,stamp,wh,min_ms,max_ms,events",
    }
    assert rollups(database, "readings_hourly") == [(1, T0, 1, 1000, 1000, 1000)]


@pytest_twisted.ensureDeferred
async def test_insert_maintains_both_rollups(store, database) -> None:
    """
    One batch spanning minutes, hours and meters updates both rollups, and
    later batches add to existing buckets.
    """
    points = [Point(1 + i % 2, T0 + i * 7_000, 500 + i) for i in range(1200)]
    assert await store.insert(points[:700]) == 700
    assert await store.insert(points[700:]) == 500
    assert_rollups_match(database)
    hours = database.sql("SELECT count(*) FROM readings_hourly")[0][0]
    assert hours >= 4


@pytest_twisted.ensureDeferred
async def test_duplicates_are_skipped_and_not_counted_twice(store, database) -> None:
    """
    Points already stored are skipped, and the rollups count them once.
    """
    points = [Point(1, T0 + i * 1000, 1000) for i in range(10)]
    assert await store.insert(points[:6]) == 6
    assert await store.insert(points) == 4
    assert database.sql("SELECT count(*) FROM readings")[0][0] == 10
    assert_rollups_match(database)


@pytest_twisted.ensureDeferred
async def test_concurrent_writers_into_the_same_hour(store, database) -> None:
    """
    Two writers, each on its own connections, inserting interleaved batches
    into the same minutes and hour at the same time, leave rollups that
    match a recount.
    """
    from twisted.internet import reactor

    pools = [Pool(database.dsn, 2, reactor) for _ in range(2)]
    await gatherResults([p.start() for p in pools])
    writers = [Store(p) for p in pools]
    rng = random.Random(7)
    try:
        work = []
        for batch in range(20):
            for meter_offset, writer in enumerate(writers):
                points = [
                    Point(1, T0 + (batch * 100 + i) * 20 + meter_offset, rng.randint(1, 5000))
                    for i in range(100)
                ]
                work.append(Deferred.fromCoroutine(writer.insert(points)))
        counts = await gatherResults(work)
    finally:
        for p in pools:
            p.close()
    assert sum(counts) == 4000
    assert_rollups_match(database)
    assert database.sql("SELECT sum(events) FROM readings_hourly")[0][0] == 4000


@pytest_twisted.ensureDeferred
async def test_rows_copied_in_by_another_writer_are_rolled_up(store, database) -> None:
    """
    Rows written by COPY (as ``psql \\copy`` does) reach the rollups too.
    """
    import psycopg2

    await store.insert([Point(1, T0, 100)])
    connection = psycopg2.connect(database.dsn)
    try:
        with connection, connection.cursor() as cursor:
            data = "".join(f"1\t{T0 + i * 1000}\t{200 + i}\n" for i in range(1, 50))
            cursor.copy_expert("COPY readings (id, stamp, ms) FROM STDIN", io.StringIO(data))
    finally:
        connection.close()
    assert_rollups_match(database)


@pytest_twisted.ensureDeferred
async def test_queries(store) -> None:
    """
    The queries behind the legacy routes return what the original's SQL
    returns for the same rows.
    """
    points = [Point(1, T0 + i * 1000, 1000) for i in range(30)] + [Point(2, T0, 77)]
    await store.insert(points)
    assert await store.last(1) == (T0 + 29_000, 1000)
    assert await store.last(9) is None
    assert json.loads(await store.since(1, T0 + 27_000, 2000)) == [
        [T0 + 27_000, 1000], [T0 + 28_000, 1000], [T0 + 29_000, 1000]
    ]
    assert len(json.loads(await store.since(1, 0, 5))) == 5
    assert await store.since(3, 0, 5) == "[]"
    assert json.loads(await store.between(1, T0 + 1000, T0 + 2000, 100)) == [
        [T0 + 1000, 1000], [T0 + 2000, 1000]
    ]
    assert await store.aggregate(1, T0 + 500, 10_000, 2) == "[[0,10],[10000,10]]"
    assert await store.count_since(1, T0 + 20_000) == 10
    assert await store.hourly(1, T0, T0) == f"[[{T0},30,3600,1000,1000]]"
    assert await store.aggregate_hourly(1, T0, HOUR, 3) == "[[0,3600]]"
    assert await store.minutely(1, T0, T0 + HOUR, 10) == f"[[{T0},30,3600,1000,1000]]"
    assert sorted(await store.last_points(), key=lambda p: p.meter) == [Point(1, T0 + 29_000, 1000), Point(2, T0, 77)]


@pytest_twisted.ensureDeferred
async def test_aggregate_reads_the_rollups_when_buckets_align(store, database) -> None:
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
    hourly = await store.aggregate(1, T0, HOUR, 5)
    minutely = await store.aggregate(1, T0 + 60_000, 120_000, 100)
    raw = await store.aggregate(1, T0 + 1, 10_000, 500)
    mixed = await store.aggregate(1, T0 + HOUR + 1, HOUR, 3)

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
        answer = await store.aggregate(1, start, width, count)
        assert json.loads(answer) == counted(start, width, count), (start - T0, width, count)
    database.sql("DELETE FROM readings WHERE stamp < %s", (T0 + 2 * HOUR,))
    assert await store.aggregate(1, T0, HOUR, 5) == hourly
    assert await store.aggregate(1, T0 + 60_000, 120_000, 100) == minutely
    assert await store.aggregate(1, T0 + 1, 10_000, 500) != raw
    # The whole hour from T0 + HOUR + 1 cut by no edge came from a rollup;
    # the minute its first edge cuts, from the points.
    assert json.loads(await store.aggregate(1, T0 + HOUR + 1, HOUR, 3))[0][1] == (
        json.loads(mixed)[0][1] - sum(T0 + HOUR + 1 <= p.stamp < T0 + HOUR + MINUTE for p in points)
    )


@pytest_twisted.ensureDeferred
async def test_queries_the_planner_misprices_run_without_jit(store) -> None:
    """
    The statements whose cost the planner overestimates run with JIT off
    for their own transaction; other queries keep the server's setting.
    """
    assert await store._uncompiled("SELECT current_setting('jit')", None) == [("off",)]
    assert await store.pool.runQuery("SELECT current_setting('jit')") == [("on",)]
