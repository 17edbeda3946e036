"""
Tests of ingest: live first, batches by time and size, order, retries after
a failed write, and the flush on stop.
"""

import pytest_twisted
from twisted.internet.task import Clock

from blip.arduino import Stamps
from blip.counters import Counters
from blip.hub import Hub
from blip.ingest import BATCH_DELAY, BATCH_SIZE, Ingest
from blip.model import Point
from tests.test_web import wait_until

T0 = 1_700_000_000_000


def make_ingest(store) -> tuple[Ingest, Clock, Hub, Counters]:
    clock = Clock()
    hub = Hub()
    counters = Counters()
    return Ingest(store, hub, Stamps(), clock, counters), clock, hub, counters


@pytest_twisted.ensureDeferred
async def test_points_go_live_at_once_and_to_the_database_in_a_batch(store, database) -> None:
    """
    Each point reaches the hub on arrival; the database gets them in one
    batch when the batch delay has passed.
    """
    ingest, clock, hub, counters = make_ingest(store)
    await ingest.start()
    for i in range(3):
        ingest.receive(Point(1, T0 + i, 100))
        assert hub.last(1) == Point(1, T0 + i, 100)
    assert database.sql("SELECT count(*) FROM readings")[0][0] == 0
    clock.advance(BATCH_DELAY)
    await wait_until(lambda: counters.stored == 3)
    assert database.sql("SELECT stamp FROM readings ORDER BY stamp") == [(T0,), (T0 + 1,), (T0 + 2,)]


@pytest_twisted.ensureDeferred
async def test_a_full_batch_is_written_without_waiting(store) -> None:
    """
    A batch is written as soon as it holds BATCH_SIZE points.
    """
    ingest, clock, hub, counters = make_ingest(store)
    await ingest.start()
    for i in range(BATCH_SIZE):
        ingest.receive(Point(1, T0 + i, 100))
    await wait_until(lambda: counters.stored == BATCH_SIZE)


@pytest_twisted.ensureDeferred
async def test_failed_write_is_retried_in_order(store, database) -> None:
    """
    A batch the database refuses stays queued, ahead of later points, and
    is written once the database takes it again; nothing is lost or
    reordered.
    """
    ingest, clock, hub, counters = make_ingest(store)
    await ingest.start()
    database.sql("ALTER TABLE readings RENAME TO readings_away")
    ingest.receive(Point(1, T0, 100))
    clock.advance(BATCH_DELAY)
    await wait_until(lambda: counters.write_failures == 1)
    ingest.receive(Point(1, T0 + 1, 100))
    assert [p.stamp for p in ingest.pending] == [T0, T0 + 1]
    database.sql("ALTER TABLE readings_away RENAME TO readings")
    clock.advance(30.0)
    await wait_until(lambda: counters.stored == 2)
    assert database.sql("SELECT stamp FROM readings ORDER BY stamp") == [(T0,), (T0 + 1,)]


@pytest_twisted.ensureDeferred
async def test_stop_writes_what_is_queued(store, database) -> None:
    """
    Stopping writes the queued points before returning.
    """
    ingest, clock, hub, counters = make_ingest(store)
    await ingest.start()
    ingest.receive(Point(1, T0, 100))
    await ingest.stop()
    assert database.sql("SELECT count(*) FROM readings")[0][0] == 1


@pytest_twisted.ensureDeferred
async def test_start_seeds_stamps_and_hub(store) -> None:
    """
    At start, each meter's last stored point seeds the stamps (so new ones
    come after it) and the hub (so /last answers at once).
    """
    await store.insert([Point(1, T0 + 5000, 10)])
    ingest, clock, hub, counters = make_ingest(store)
    await ingest.start()
    assert hub.last(1) == Point(1, T0 + 5000, 10)
    assert ingest.stamps.next(1, T0) == T0 + 5001
