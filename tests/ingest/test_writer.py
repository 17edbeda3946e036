"""
Tests of ingest: live first, batches by time and size, order, retries after
a failed write, the flush on stop, the spool through database outages
(the test cluster stopped mid-stream), restarts, slow and stalled writes,
damaged records and a full disk, and what observers of ingest are told.
"""

import os
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.threads import deferToThread

from blip.counters import Counters
from blip.db.pool import Pool
from blip.db.readings import Committed, Readings
from blip.ingest.spool import HEADER, RECORD, Spool
from blip.ingest.stamps import Stamps
from blip.ingest.writer import (
    BATCH_DELAY,
    BATCH_SIZE,
    MAX_STATEMENT,
    RESEND_WINDOW,
    SLOW_WRITE,
    SPOOL_RETRY,
    STOP_TIMEOUT,
    Ingest,
)
from blip.live.hub import Hub
from blip.model import Point
from tests.conftest import SmallFilesystem, free_port, wait_until
from tests.ingest.test_spool import damage, file_reads

T0 = 1_700_000_000_000


def make_ingest(
    store, spool: Optional[Spool] = None, clock=None, **options
) -> tuple[Ingest, Clock, Hub, Counters]:
    """:return: an ingest on ``store`` and its clock, hub and counters."""
    clock = clock or Clock()
    hub = Hub()
    counters = Counters()
    ingest = Ingest(store, hub, Stamps(), clock, counters, spool, store.pool.when_alive, **options)
    return ingest, clock, hub, counters


def rollups_match_readings(database) -> bool:
    """
    :return: whether both rollups equal a recount from readings.
    """
    for table, width in (("readings_minutely", 60000), ("readings_hourly", 3600000)):
        recount = database.sql(
            "SELECT id, stamp - stamp %% %s, count(*), sum(ms), min(ms), max(ms)"
            "  FROM readings GROUP BY 1, 2 ORDER BY 1, 2",
            (width,),
        )
        kept = database.sql(
            f"SELECT id, stamp, events, sum_ms, min_ms, max_ms FROM {table} ORDER BY 1, 2"
        )
        if recount != kept:
            return False
    return True


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
async def test_failed_write_is_retried_in_order(store, database, log_events) -> None:
    """
    A batch the database refuses goes to the spool, ahead of later points,
    and is written once the database takes it again; nothing is lost or
    reordered. The warning gives the database's reason (not the
    AssertionError Twisted raises for a failed Deferred awaited while its
    callbacks run).
    """
    ingest, clock, hub, counters = make_ingest(store)
    await ingest.start()
    database.sql("ALTER TABLE readings RENAME TO readings_away")
    ingest.receive(Point(1, T0, 100))
    clock.advance(BATCH_DELAY)
    await wait_until(lambda: counters.write_failures == 1)
    [why] = [e["why"] for e in log_events if e.get("log_format", "").startswith("cannot write")]
    assert 'relation "readings" does not exist' in why
    ingest.receive(Point(1, T0 + 1, 100))
    assert [p.stamp for p in ingest.spool.peek(10)] == [T0, T0 + 1]
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


@pytest_twisted.ensureDeferred
async def test_points_wait_in_the_spool_until_the_database_is_ready(
    store, database, tmp_path: Path
) -> None:
    """
    Before the database is ready, points go live at once and into the spool
    file as they arrive; once it is ready they are written in order and the
    file is removed.
    """
    path = tmp_path / "spool"
    ingest, clock, hub, counters = make_ingest(store, Spool(path))
    ingest.open()
    for i in range(3):
        ingest.receive(Point(1, T0 + i, 100 + i))
    assert hub.last(1) == Point(1, T0 + 2, 102)
    assert Spool(path).open() == [Point(1, T0 + 2, 102)]
    assert path.stat().st_size > 3 * 16
    clock.advance(BATCH_DELAY)
    assert counters.spooled == 3 and counters.backlog == 3
    await ingest.start()
    await wait_until(lambda: counters.stored == 3)
    assert database.sql("SELECT stamp, ms FROM readings ORDER BY stamp") == [
        (T0, 100), (T0 + 1, 101), (T0 + 2, 102)
    ]
    assert not path.exists()
    assert counters.replayed == 3 and counters.backlog == 0
    ingest.receive(Point(1, T0 + 10, 5))
    clock.advance(BATCH_DELAY)
    await wait_until(lambda: counters.stored == 4)
    assert counters.spooled == 3


@pytest_twisted.ensureDeferred
async def test_a_previous_runs_spool_is_written_first_and_seeds_the_stamps(
    store, database, tmp_path: Path
) -> None:
    """
    A spool left by a killed daemon seeds the stamps and the hub (the
    database may be down at start, and the clock behind), and its points
    are committed before the points of the new run.
    """
    path = tmp_path / "spool"
    left = Spool(path)
    left.append([Point(1, T0 + 5000, 7), Point(2, T0 + 6000, 8), Point(1, T0 + 7000, 9)])
    left.close()
    await store.insert([Point(1, T0, 1)])
    ingest, clock, hub, counters = make_ingest(store, Spool(path))
    ingest.open()
    assert hub.last(1) == Point(1, T0 + 7000, 9)
    assert ingest.stamps.next(1, T0 + 100) == T0 + 7001
    assert ingest.stamps.next(2, T0 + 100) == T0 + 6001
    ingest.receive(Point(1, T0 + 7002, 10))
    await ingest.start()
    await wait_until(lambda: counters.stored == 4)
    # Commit order, read from the transaction ids that wrote the rows.
    rows = database.sql(
        "SELECT id, stamp FROM readings ORDER BY xmin::text::bigint, stamp"
    )
    assert rows == [(1, T0), (1, T0 + 5000), (2, T0 + 6000), (1, T0 + 7000), (1, T0 + 7002)]
    assert not path.exists()


@pytest_twisted.ensureDeferred
async def test_spooled_points_already_stored_count_once(store, database, tmp_path: Path) -> None:
    """
    A spool holding points the database already has (committed just before
    a crash) writes only the new ones: readings and rollups count each
    point once.
    """
    path = tmp_path / "spool"
    old = [Point(1, T0 + i * 1000, 1000) for i in range(5)]
    new = [Point(1, T0 + (5 + i) * 1000, 1000) for i in range(5)]
    await store.insert(old)
    left = Spool(path)
    left.append(old + new)
    left.close()
    ingest, clock, hub, counters = make_ingest(store, Spool(path))
    ingest.open()
    await ingest.start()
    await wait_until(lambda: not path.exists())
    assert counters.stored == 5 and counters.replayed == 10
    assert database.sql("SELECT count(*), count(DISTINCT stamp) FROM readings") == [(10, 10)]
    assert database.sql("SELECT events FROM readings_minutely") == [(10,)]
    assert rollups_match_readings(database)


@pytest_twisted.ensureDeferred
async def test_database_stopped_mid_stream_loses_nothing(
    store, database, tmp_path: Path, stoppable_cluster
) -> None:
    """
    The test cluster is stopped while points keep arriving and started
    again: every point is in readings exactly once, in order, with rollups
    matching a recount, and the spool is gone.
    """
    from twisted.internet import reactor

    path = tmp_path / "spool"
    ingest, _, hub, counters = make_ingest(store, Spool(path), clock=reactor)
    ingest.open()
    await ingest.start()
    sent: list[Point] = []

    def blip() -> None:
        point = Point(1, T0 + len(sent) * 10, 1000 + len(sent))
        sent.append(point)
        ingest.receive(point)

    feeder = LoopingCall(blip)
    feeder.start(0.005)
    try:
        await wait_until(lambda: counters.stored >= 20)
        await deferToThread(stoppable_cluster.stop)
        await wait_until(lambda: counters.write_failures >= 1)
        spooled_at = len(sent)
        await wait_until(lambda: len(sent) >= spooled_at + 50)
        assert path.exists()
        await deferToThread(stoppable_cluster.start)
        await wait_until(lambda: counters.stored >= len(sent) - 5, 30)
    finally:
        feeder.stop()
    await wait_until(lambda: counters.backlog == 0 and counters.stored == len(sent), 30)
    rows = database.sql("SELECT id, stamp, ms FROM readings ORDER BY stamp")
    assert rows == [(p.meter, p.stamp, p.ms) for p in sent]
    assert rollups_match_readings(database)
    assert counters.spooled > 0 and counters.write_failures >= 1
    await ingest.stop()
    assert not path.exists()


def writes_waiting_for_a_lock(database) -> int:
    """:return: how many statements of the database wait for a lock."""
    return database.sql(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )[0][0]


@pytest_twisted.ensureDeferred
async def test_a_stalled_write_sends_points_to_the_spool(store, database, tmp_path: Path) -> None:
    """
    A write that takes longer than SLOW_WRITE (here: blocked by a lock
    another session holds) sends it and the points behind it to the spool,
    so a kill in the meantime would lose nothing; once the lock goes,
    everything is written exactly once.
    """
    import psycopg2
    from twisted.internet import reactor

    path = tmp_path / "spool"
    ingest, _, hub, counters = make_ingest(store, Spool(path), clock=reactor)
    ingest.open()
    await ingest.start()
    blocker = psycopg2.connect(database.dsn)
    try:
        blocker.cursor().execute("LOCK TABLE readings IN EXCLUSIVE MODE")
        ingest.receive(Point(1, T0, 10))
        await wait_until(lambda: writes_waiting_for_a_lock(database) == 1)
        for i in range(1, 4):
            ingest.receive(Point(1, T0 + i, 10))
        await wait_until(lambda: counters.spooled == 4)
        assert [p.stamp for p in Spool(path).open()] == [T0 + 3]
    finally:
        blocker.rollback()
        blocker.close()
    await wait_until(lambda: not path.exists())
    assert database.sql("SELECT stamp FROM readings ORDER BY stamp") == [(T0 + i,) for i in range(4)]
    assert counters.stored == 4
    assert rollups_match_readings(database)
    await ingest.stop()


class HeldWrites:
    """
    A sink whose writes are answered when the test says: each waits, in
    :attr:`writes`, until :meth:`commit` (or :meth:`fail`) answers it.
    """

    server = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def __init__(self) -> None:
        #: The points of each write not answered yet, and its answer.
        self.writes: list[tuple[list[Point], Deferred[None]]] = []
        #: Every point committed, as often as it was.
        self.committed: list[Point] = []

    async def write(self, points) -> Committed:
        """Wait for the test's answer; then commit ``points``."""
        answer: Deferred[None] = Deferred()
        self.writes.append((list(points), answer))
        await answer
        new = [point for point in points if point not in self.committed]
        self.committed.extend(points)
        return Committed(len(new), self.server)

    async def last_points(self) -> list[Point]:
        """Nothing stored before."""
        return []

    def waiting(self) -> list[list[Point]]:
        """:return: the points of each write not answered yet."""
        return [points for points, _ in self.writes]

    def commit(self) -> None:
        """Answer the oldest write waiting: committed."""
        self.writes.pop(0)[1].callback(None)


def held_ingest(tmp_path: Path) -> tuple[Ingest, Clock, HeldWrites, Counters]:
    """
    :return: a started ingest writing to a :class:`HeldWrites`, with a spool
        file under ``tmp_path``, and its clock, sink and counters.
    """
    sink, clock, counters = HeldWrites(), Clock(), Counters()
    ingest = Ingest(sink, Hub(), Stamps(), clock, counters, Spool(tmp_path / "spool"))
    ingest.open()
    assert Deferred.fromCoroutine(ingest.start()).called
    return ingest, clock, sink, counters


def test_a_slow_write_keeps_the_points_behind_it_in_memory(tmp_path: Path) -> None:
    """
    A write the database takes longer than a batch period but less than
    SLOW_WRITE to commit (a loaded machine) sends nothing to the spool: the
    points that arrive meanwhile wait in memory and are written as soon as
    it commits, in one batch, in order, each once.
    """
    ingest, clock, sink, counters = held_ingest(tmp_path)
    first = Point(1, T0, 10)
    ingest.receive(first)
    clock.advance(BATCH_DELAY)
    assert sink.waiting() == [[first]]
    behind = [Point(1, T0 + i, 10) for i in range(1, 41)]
    for point in behind:
        ingest.receive(point)
        clock.advance(SLOW_WRITE / 42)
    assert sink.waiting() == [[first]]
    assert counters.spooled == 0 and len(ingest.spool) == 0
    assert ingest.pending == behind
    sink.commit()
    assert sink.waiting() == [behind], "written at once: their batch period is over"
    sink.commit()
    assert sink.committed == [first, *behind]
    assert counters.stored == 41 and counters.backlog == 0
    assert counters.spooled == 0 and not (tmp_path / "spool").exists()


def test_a_write_unanswered_for_the_grace_sends_it_and_what_follows_to_the_spool(
    tmp_path: Path,
) -> None:
    """
    Once a write has been unanswered for SLOW_WRITE, its points and those
    that wait behind it are spooled, in order, even if no point arrives
    then; later points go to the spool as they arrive. When the write
    commits after all, the spool is written and every point is counted
    stored once.
    """
    ingest, clock, sink, counters = held_ingest(tmp_path)
    sent = [Point(1, T0 + i, 10) for i in range(8)]
    ingest.receive(sent[0])
    clock.advance(BATCH_DELAY)
    for point in sent[1:5]:
        ingest.receive(point)
        clock.advance(BATCH_DELAY)
    clock.advance(SLOW_WRITE - 5 * BATCH_DELAY)
    assert counters.spooled == 0, "not yet: unanswered for a little less"
    clock.advance(2 * BATCH_DELAY)
    assert counters.spooled == 5 and ingest.pending == []
    assert ingest.spool.peek(10) == sent[:5]
    assert Spool(tmp_path / "spool").open() == [sent[4]], "on disk"
    for point in sent[5:]:
        ingest.receive(point)
    assert counters.spooled == 8 and ingest.spool.peek(10) == sent
    sink.commit()
    assert sink.waiting() == [sent]
    sink.commit()
    assert sink.committed == [sent[0], *sent]
    assert counters.stored == 8 and counters.backlog == 0
    assert not (tmp_path / "spool").exists()


def test_more_points_behind_a_write_than_a_statement_takes_go_to_the_spool(
    tmp_path: Path,
) -> None:
    """
    Points arriving faster than writes take them, however quick each write
    is, do not pile up in memory: once MAX_STATEMENT points wait behind the
    write in flight, they are spooled.
    """
    ingest, clock, sink, counters = held_ingest(tmp_path)
    ingest.receive(Point(1, T0, 10))
    clock.advance(BATCH_DELAY)
    for i in range(1, MAX_STATEMENT):
        ingest.receive(Point(1, T0 + i, 10))
    assert counters.spooled == 0 and len(ingest.pending) == MAX_STATEMENT - 1
    ingest.receive(Point(1, T0 + MAX_STATEMENT, 10))
    assert ingest.pending == [] and counters.spooled == MAX_STATEMENT + 1


@pytest_twisted.ensureDeferred
async def test_stop_during_a_slow_write_writes_or_spools_every_point(tmp_path: Path) -> None:
    """
    A stop while a write is slow waits for it, then writes the points that
    waited behind it; should the write not be answered within STOP_TIMEOUT,
    they and its own points are left in the spool, in order.
    """
    ingest, clock, sink, counters = held_ingest(tmp_path)
    ingest.receive(Point(1, T0, 10))
    clock.advance(BATCH_DELAY)
    ingest.receive(Point(1, T0 + 1, 10))
    stopping = Deferred.fromCoroutine(ingest.stop())
    sink.commit()
    assert sink.waiting() == [[Point(1, T0 + 1, 10)]]
    sink.commit()
    await stopping
    assert counters.stored == 2 and counters.spooled == 0

    ingest, clock, sink, counters = held_ingest(tmp_path)
    ingest.receive(Point(1, T0, 10))
    clock.advance(BATCH_DELAY)
    ingest.receive(Point(1, T0 + 1, 10))
    stopping = Deferred.fromCoroutine(ingest.stop())
    clock.advance(STOP_TIMEOUT)
    await stopping
    left = Spool(tmp_path / "spool")
    left.open()
    assert left.peek(10) == [Point(1, T0, 10), Point(1, T0 + 1, 10)]


@pytest_twisted.ensureDeferred
async def test_memory_stays_bounded_in_a_long_outage(
    store, database, tmp_path: Path, monkeypatch
) -> None:
    """
    Through a long outage at a high rate, points go to the spool file, not
    to a list: nothing waits in memory past the cap, and the backlog is
    written in order in statements of MAX_STATEMENT points.
    """
    path = tmp_path / "spool"
    count = 4 * MAX_STATEMENT + 123
    ingest, clock, hub, counters = make_ingest(store, Spool(path, memory_cap=1000))
    ingest.open()
    for i in range(count):
        ingest.receive(Point(1 + i % 2, T0 + i, 1 + i % 977))
        if i % 1000 == 0:
            clock.advance(BATCH_DELAY)
    assert ingest.pending == []
    assert path.stat().st_size == len(HEADER) + count * RECORD.size
    reads = file_reads(monkeypatch)
    await ingest.start()
    await wait_until(lambda: counters.stored == count, 60)
    assert database.sql("SELECT count(*), min(stamp), max(stamp) FROM readings") == [
        (count, T0, T0 + count - 1)
    ]
    assert rollups_match_readings(database)
    assert not path.exists()
    assert sum(reads) == count * RECORD.size, "every point was read back from the file"


@pytest_twisted.ensureDeferred
async def test_a_full_disk_keeps_points_in_memory(store, database, log_events) -> None:
    """
    When the spool cannot be written the points stay in memory, the error
    is logged once, and they are written when the database is ready.
    """
    ingest, clock, hub, counters = make_ingest(store, Spool(Path("/dev/full")))
    for i in range(3):
        ingest.receive(Point(1, T0 + i, 10))
    clock.advance(BATCH_DELAY)
    assert len(ingest.pending) == 3
    errors = [e for e in log_events if "cannot write the spool" in e["log_format"]]
    assert len(errors) == 1
    await ingest.start()
    clock.advance(BATCH_DELAY)
    await wait_until(lambda: counters.stored == 3)


def writes_to(monkeypatch, path: Path) -> list[int]:
    """
    :return: a list that gets the size of every write made from now on to
        the file at ``path``.
    """
    sizes: list[int] = []
    write = os.write

    def counted(fd: int, data) -> int:
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(path):
            sizes.append(len(data))
        return write(fd, data)

    monkeypatch.setattr(os, "write", counted)
    return sizes


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_retried_on_a_timer_with_only_the_new_points(
    store, database, small_filesystem: SmallFilesystem, monkeypatch, log_events
) -> None:
    """
    Once the spool cannot be written, new points wait in memory without a
    write each (no rewriting of everything held at every point): the spool
    is tried again every SPOOL_RETRY seconds, and once there is room again
    it takes what waits, once; then everything is stored once, in order.
    """
    path = small_filesystem.path / "spool"
    ingest, clock, hub, counters = make_ingest(store, Spool(path))
    ingest.open()
    ingest.receive(Point(1, T0, 10))
    small_filesystem.fill()
    writes = writes_to(monkeypatch, path)
    sent = [Point(1, T0 + i, 10 + i) for i in range(1, 3001)]
    for point in sent[:2000]:
        ingest.receive(point)
    clock.advance(BATCH_DELAY)
    # The file's last page took a few; then one failed attempt, not one
    # per point, each rewriting all that waits.
    spooled = counters.spooled
    assert 0 < len(ingest.pending) == 2001 - spooled
    assert len(writes) <= spooled + 2
    assert sum(writes) <= (spooled + 2) * RECORD.size
    clock.advance(SPOOL_RETRY)
    assert len(writes) <= spooled + 3 and counters.spooled == spooled
    for point in sent[2000:]:
        ingest.receive(point)
    small_filesystem.free()
    clock.advance(SPOOL_RETRY)
    assert ingest.pending == []
    assert len(ingest.spool) == 3001 and counters.spooled == 3001
    assert sum(writes) < 3 * 3001 * RECORD.size, "each point written about once"
    assert [e["log_format"] for e in log_events].count("the spool can be written again") == 1
    await ingest.start()
    await wait_until(lambda: counters.stored == 3001)
    assert database.sql("SELECT stamp, ms FROM readings ORDER BY stamp") == [
        (p.stamp, p.ms) for p in [Point(1, T0, 10), *sent]
    ]
    assert not path.exists()
    await ingest.stop()


@pytest_twisted.ensureDeferred
async def test_memory_is_bounded_while_the_spool_cannot_be_written(
    store, database, log_events
) -> None:
    """
    With neither the database nor the spool taking points, at most
    max_pending wait in memory; later ones still go live but are dropped,
    counted, and logged once a minute at most. Once the database is there,
    every point not counted as dropped is stored, once.
    """
    ingest, clock, hub, counters = make_ingest(store, Spool(Path("/dev/full")), max_pending=100)
    seen: list[Point] = []
    hub.listen(seen.append)
    sent = [Point(1, T0 + i, 10) for i in range(250)]
    for point in sent:
        ingest.receive(point)
        clock.advance(0.01)
    assert seen == sent
    assert len(ingest.pending) == 100
    assert counters.dropped_points == 150 and counters.backlog == 100
    dropping = [e for e in log_events if "dropping new points" in e["log_format"]]
    assert len(dropping) == 1
    await ingest.start()
    clock.advance(BATCH_DELAY)
    await wait_until(lambda: counters.stored == 100)
    assert database.sql("SELECT stamp FROM readings ORDER BY stamp") == [(p.stamp,) for p in sent[:100]]
    assert counters.backlog == 0


@pytest_twisted.ensureDeferred
async def test_damaged_spool_records_never_become_points(store, database, tmp_path: Path) -> None:
    """
    A spool left by a previous run with damaged records (a flipped bit, a
    zeroed block) stores only its valid points, counts the others, and its
    damaged stamps seed nothing.
    """
    path = tmp_path / "spool"
    left = Spool(path)
    left.append([Point(1, T0 + i, 100 + i) for i in range(6)])
    left.close()
    damage(path, 5, (T0 + 10**12).to_bytes(8, "little"), offset=4)
    damage(path, 1, bytes(RECORD.size))
    ingest, clock, hub, counters = make_ingest(store, Spool(path))
    ingest.open()
    assert counters.spool_invalid == 2
    assert ingest.stamps.next(1, T0) == T0 + 5
    await ingest.start()
    await wait_until(lambda: not path.exists())
    assert database.sql("SELECT stamp, ms FROM readings ORDER BY stamp") == [
        (T0 + i, 100 + i) for i in (0, 2, 3, 4)
    ]


@pytest_twisted.ensureDeferred
async def test_observers_are_told_of_arrivals_and_commits(store) -> None:
    """
    An observer of ingest hears of each point as it arrives, and of each
    write once it is committed; one that fails does not disturb ingest, and
    one that stopped observing hears nothing more.
    """
    ingest, clock, hub, counters = make_ingest(store)

    class Recorder:
        def __init__(self) -> None:
            self.arrived: list[Point] = []
            self.committed: list[Point] = []

        def receive(self, point: Point) -> None:
            self.arrived.append(point)

        def stored(self, points) -> None:
            self.committed.extend(points)

    class Broken:
        def receive(self, point: Point) -> None:
            raise RuntimeError("broken")

        def stored(self, points) -> None:
            raise RuntimeError("broken")

    recorder = Recorder()
    ingest.observe(Broken())
    stop = ingest.observe(recorder)
    await ingest.start()
    points = [Point(1, T0 + i, 10) for i in range(3)]
    for point in points:
        ingest.receive(point)
    assert recorder.arrived == points and recorder.committed == []
    clock.advance(BATCH_DELAY)
    await wait_until(lambda: recorder.committed == points)
    stop()
    ingest.receive(Point(1, T0 + 5, 10))
    clock.advance(BATCH_DELAY)
    await wait_until(lambda: counters.stored == 4)
    assert len(recorder.arrived) == 3 and len(recorder.committed) == 3


class Servers(Readings):
    """
    The test database as a list of servers would look to ingest: each write
    says it was committed by :attr:`server`; while :attr:`losing`, writes
    are committed on a server that dies before its standby has them (they
    succeed and store nothing).
    """

    server = datetime(2024, 1, 1, tzinfo=timezone.utc)
    losing = False

    async def write(self, points) -> Committed:
        """Commit on :attr:`server`, or lose the points there."""
        if self.losing:
            return Committed(len(points), self.server)
        return (await super().write(points))._replace(server=self.server)


@pytest_twisted.ensureDeferred
async def test_points_committed_last_on_a_server_are_written_again_to_the_next(
    store, database, log_events
) -> None:
    """
    When a write commits on another server than the one before (a standby
    promoted after the primary died), the points committed within
    RESEND_WINDOW seconds before the last commit on the one before (those
    its standby may not have had) are written to it again, first: every
    point is then stored once, rollups counting each once. Older points,
    and writes to the same server, are not written again.
    """
    store = Servers(store.pool)
    ingest, clock, hub, counters = make_ingest(store)
    await ingest.start()

    def blip(i: int) -> None:
        ingest.receive(Point(1, T0 + i * 1000, 1000 + i))
        clock.advance(BATCH_DELAY)

    blip(0)
    await wait_until(lambda: counters.stored == 1)
    clock.advance(RESEND_WINDOW + 1)  # point 0 is older than the window from here on
    blip(1)
    await wait_until(lambda: counters.stored == 2)
    store.losing = True
    for i in (2, 3):
        blip(i)
        await wait_until(lambda: counters.stored == i + 1)
    assert database.sql("SELECT count(*) FROM readings") == [(2,)]
    assert counters.resent == 0

    store.losing = False
    store.server = datetime(2024, 1, 2, tzinfo=timezone.utc)
    blip(4)
    await wait_until(lambda: database.sql("SELECT count(*) FROM readings") == [(5,)])
    assert counters.resent == 3
    [changed] = [e for e in log_events if e.get("log_format", "").startswith("the database server changed")]
    assert changed["count"] == 3
    blip(5)
    await wait_until(lambda: database.sql("SELECT count(*) FROM readings") == [(6,)])
    assert counters.resent == 3
    assert database.sql("SELECT ms FROM readings ORDER BY stamp") == [(1000 + i,) for i in range(6)]
    assert rollups_match_readings(database)


@pytest_twisted.async_yield_fixture
async def unreachable_store() -> AsyncIterator[Readings]:
    """
    A store whose database cannot be reached: nothing listens on its port.
    """
    from twisted.internet import reactor

    pool = Pool(f"host=127.0.0.1 port={free_port()} dbname=nothing connect_timeout=2", 2, reactor)
    await pool.start()
    try:
        yield Readings(pool)
    finally:
        pool.close()


@pytest_twisted.ensureDeferred
async def test_stop_with_the_database_unreachable_is_quick_and_spools(
    unreachable_store, tmp_path: Path
) -> None:
    """
    Stopping while the database cannot be reached takes no longer than the
    stop timeout and leaves every point in the spool file for the next run.
    """
    from twisted.internet import reactor

    path = tmp_path / "spool"
    ingest, _, hub, counters = make_ingest(unreachable_store, Spool(path), clock=reactor)
    ingest.open()
    for i in range(5):
        ingest.receive(Point(1, T0 + i, 10))
    started = time.monotonic()
    await ingest.stop()
    assert time.monotonic() - started < STOP_TIMEOUT + 1
    assert [p.stamp for p in Spool(path).open()] == [T0 + 4]
    left = Spool(path)
    left.open()
    assert left.peek(10) == [Point(1, T0 + i, 10) for i in range(5)]


@pytest_twisted.ensureDeferred
async def test_stop_while_start_waits_for_the_database_ends_both(
    unreachable_store, tmp_path: Path
) -> None:
    """
    A start still waiting for an unreachable database ends when ingest
    stops, without having begun writing; the stop is as quick as ever and
    leaves the points in the spool.
    """
    from twisted.internet import reactor

    path = tmp_path / "spool"
    ingest, _, hub, counters = make_ingest(unreachable_store, Spool(path), clock=reactor)
    ingest.open()
    starting = Deferred.fromCoroutine(ingest.start())
    ingest.receive(Point(1, T0, 10))
    assert not starting.called
    started = time.monotonic()
    await ingest.stop()
    assert time.monotonic() - started < STOP_TIMEOUT + 1
    await starting
    assert counters.stored == 0
    assert [p.stamp for p in Spool(path).open()] == [T0]
