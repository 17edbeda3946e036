"""
Tests of the readings against a real PostgreSQL: batched inserts with their
rollups (also under concurrent writers), and the reads that catch up with
what is stored.
"""

import random

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from blip.db.pool import Pool
from blip.db.readings import CHANNEL, BlipTotal, Readings
from blip.model import Point
from tests.conftest import TIMEOUT
from tests.originals import assert_rollups_match

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR


@pytest_twisted.ensureDeferred
async def test_insert_maintains_both_rollups(store, database) -> None:
    """
    One batch spanning minutes, hours and meters updates both rollups, and
    later batches add to existing buckets.
    """
    points = [Point(1 + i % 2, T0 + i * 7_000, 500 + i) for i in range(1200)]
    assert await store.insert(points[:700]) == 700
    assert await store.insert(points[700:]) == 500
    assert_rollups_match(database.sql)
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
    assert_rollups_match(database.sql)


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
    writers = [Readings(p) for p in pools]
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
    assert_rollups_match(database.sql)
    assert database.sql("SELECT sum(events) FROM readings_hourly")[0][0] == 4000


@pytest_twisted.ensureDeferred
async def test_the_reads_that_catch_up(store) -> None:
    """
    A node catches up from the newest stamp it knows of each meter (and
    reads every point of a meter it does not know), a live client pages
    through several meters in (stamp, meter) order, and the stored blips
    of each meter come with the stamp of its newest.
    """
    await store.insert([Point(1, T0 + i * 1000, 1000) for i in range(5)] + [Point(2, T0 + 1500, 700)])
    assert await store.has_readings_before(1, T0 + 1)
    assert not await store.has_readings_before(1, T0)
    assert await store.catch_up({1: T0 + 2000}, 10) == [
        Point(1, T0 + 3000, 1000), Point(1, T0 + 4000, 1000), Point(2, T0 + 1500, 700)
    ]
    assert await store.catch_up({1: T0 + 2000}, 1) == [Point(1, T0 + 3000, 1000)]
    assert await store.points_after([1, 2], T0 + 1000, 1, 3) == [
        Point(2, T0 + 1500, 700), Point(1, T0 + 2000, 1000), Point(1, T0 + 3000, 1000)
    ]
    assert await store.points_after([1, 2], T0 + 1500, 2, 10) == [
        Point(1, T0 + 2000, 1000), Point(1, T0 + 3000, 1000), Point(1, T0 + 4000, 1000)
    ]
    assert await store.blip_totals() == [BlipTotal(1, 5, T0 + 4000), BlipTotal(2, 1, T0 + 1500)]


@pytest_twisted.ensureDeferred
async def test_history_is_stored_without_an_announcement(store, database) -> None:
    """
    Points stored quietly (history, not live) are counted like the others
    but announce nothing, while an ordinary insert does.
    """
    import select

    import psycopg2

    listener = psycopg2.connect(database.dsn)
    listener.autocommit = True
    try:
        with listener.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        assert await store.insert([Point(1, T0, 1000)], announce=False) == 1
        assert await store.insert([Point(1, T0 + 1000, 1000)]) == 1
        # Notifications arrive in the order of their commits: once the
        # second insert's is here, any of the first would be too.
        while not listener.notifies:
            assert select.select([listener], [], [], TIMEOUT)[0], "nothing announced"
            listener.poll()
        assert [n.payload for n in listener.notifies] == [f"1:{T0 + 1000},1000"]
    finally:
        listener.close()
    assert_rollups_match(database.sql)
