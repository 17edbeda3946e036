"""
Tests of the partitions of readings against a real PostgreSQL: months made
ahead of time, once, whoever asks; stray points of the default partition
moved into the partition of their month without being counted twice;
ingest across months with the daemon stopped over the turn of one; the
hot queries reading only the partitions they need; and old partitions
dropped for a retention, archived first, with what they held still
answering from the rollups.
"""

import gzip
import io
import json
from typing import Any, Optional

import psycopg2
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from blip.cli import rollups
from blip.cli.transfer import archive_csv
from blip.db.legacy import LegacyQueries
from blip.db.partitions import (
    DEFAULT_PARTITION,
    KeepRaw,
    Month,
    Partition,
    Partitions,
    ensure_months,
    month_of,
    older_than,
    parse_bound,
    parse_keep_raw,
)
from blip.db.pool import Pool
from blip.db.program import run_in, run_sync
from blip.db.queries import Queries
from blip.db.readings import Readings
from blip.db.schema import Schema
from blip.db.sync_store import SyncStore
from blip.db.v1 import V1Queries
from blip.ingest.spool import Spool
from blip.ingest.writer import BATCH_DELAY
from blip.meters import Meter, Meters
from blip.model import Point
from tests import originals
from tests.conftest import Served, open_site, wait_until
from tests.ingest.test_writer import make_ingest
from tests.originals import PLAIN, assert_rollups_match

DAY = 86_400_000
HOUR = 3_600_000
#: Now, in the tests: the middle of May 2024.
NOW = Month(2024, 5).start + 14 * DAY + 5 * HOUR


def clock_at(ms: int) -> Clock:
    """:return: a clock at unix ms ``ms``."""
    clock = Clock()
    clock.advance(ms / 1000)
    return clock


def partitions_of(database) -> list[tuple[str, str]]:
    """:return: the partitions of readings and their bounds, by name."""
    return database.sql(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        "  JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'readings'::regclass ORDER BY 1"
    )


def test_months_bounds_and_durations() -> None:
    """
    Months run on UTC from the first; partition bounds are read as
    PostgreSQL prints them; a retention is a number of days, weeks,
    calendar months or years, and its cutoff keeps the day of the month
    where the month has it.
    """
    assert month_of(Month(2024, 2).start) == month_of(Month(2024, 3).start - 1) == Month(2024, 2)
    assert Month(2024, 2).end - Month(2024, 2).start == 29 * DAY
    assert (Month(2024, 12).after(1), Month(2024, 1).after(-1)) == (Month(2025, 1), Month(2023, 12))
    assert Month(2024, 3).name == "readings_2024_03"
    assert parse_bound("p", "FOR VALUES FROM ('-5') TO ('7')") == Partition("p", -5, 7)
    assert parse_bound("q", "FOR VALUES FROM (MINVALUE) TO ('7')") == Partition("q", None, 7)
    assert parse_bound("d", "DEFAULT").default
    with pytest.raises(ValueError, match="not a range of stamps"):
        parse_bound("x", "FOR VALUES IN (1)")
    assert older_than([Partition("b", 5, 10), Partition("a", None, 5), Partition("c", 10, 20),
                       Partition("d", None, None, True)], 10) == [Partition("a", None, 5), Partition("b", 5, 10)]
    now = Month(2024, 8).start + 30 * DAY + HOUR  # 2024-08-31 01:00
    assert parse_keep_raw("400d").cutoff(now) == now - 400 * DAY
    assert parse_keep_raw(" 8W ").cutoff(now) == now - 56 * DAY
    assert parse_keep_raw("18mo").cutoff(now) == Month(2023, 2).start + 27 * DAY + HOUR
    assert parse_keep_raw("2y").cutoff(now) == Month(2022, 8).start + 30 * DAY + HOUR
    assert KeepRaw(1, "y").describe() == "1 year" and KeepRaw(18, "mo").describe() == "18 months"
    for bad in ("0d", "12", "3h", "-1y", "y", ""):
        with pytest.raises(ValueError):
            parse_keep_raw(bad)


@pytest_twisted.ensureDeferred
async def test_months_are_made_ahead_once_whoever_asks(database) -> None:
    """
    Two nodes preparing an empty database at once make this month's
    partition and the next two's, and the default one, once. A point of a
    month without a partition lands in the default partition, and moves
    into its month's partition when that is made, without being counted
    again by the rollups; one far ahead stays where it is. Keeping them
    again changes nothing.
    """
    from twisted.internet import reactor

    pools = [Pool(database.dsn, 1, reactor) for _ in range(2)]
    await gatherResults([p.start() for p in pools])
    try:
        await gatherResults([Deferred.fromCoroutine(Schema(p, clock_at(NOW)).apply()) for p in pools])
        names = [name for name, _ in partitions_of(database)]
        assert names == ["readings_2024_05", "readings_2024_06", "readings_2024_07", DEFAULT_PARTITION]
        readings = Readings(pools[0])
        august = Month(2024, 8).start
        far = Month(2031, 1).start
        await readings.insert([Point(1, NOW, 1000), Point(1, august + 5, 700), Point(2, august + 9, 300),
                               Point(1, far, 5)])
        assert database.sql(f"SELECT stamp FROM {DEFAULT_PARTITION} ORDER BY 1") == [
            (august + 5,), (august + 9,), (far,)
        ]
        assert_rollups_match(database.sql)

        keeper = Partitions(pools[1], clock_at(august + 3 * DAY))
        await keeper.keep()
        assert [name for name, _ in partitions_of(database)] == [
            "readings_2024_05", "readings_2024_06", "readings_2024_07", "readings_2024_08",
            "readings_2024_09", "readings_2024_10", DEFAULT_PARTITION,
        ]
        assert database.sql("SELECT id, stamp FROM readings_2024_08 ORDER BY 2") == [(1, august + 5), (2, august + 9)]
        assert database.sql(f"SELECT stamp FROM {DEFAULT_PARTITION}") == [(far,)]
        assert_rollups_match(database.sql)
        before = partitions_of(database)
        await keeper.keep()
        assert partitions_of(database) == before
        assert keeper.raw_since is None
    finally:
        for p in pools:
            p.close()


@pytest_twisted.ensureDeferred
async def test_readers_see_the_points_a_new_partition_takes(database) -> None:
    """
    A query of readings that comes while a month's partition is made and
    takes the default partition's points of that month sees those points:
    it waits until they moved, rather than reading the default partition
    after they left it without knowing the partition they went to.
    """
    from twisted.internet import reactor

    pool = Pool(database.dsn, 1, reactor)
    await pool.start()
    try:
        await Schema(pool, clock_at(NOW)).apply()
        august = Month(2024, 8).start
        await Readings(pool).insert([Point(1, august + 5, 700)])
    finally:
        pool.close()
    mover = psycopg2.connect(database.dsn)
    try:
        with mover.cursor() as cursor:
            run_sync(cursor, ensure_months(august + 3 * DAY))
        reading = deferToThread(
            database.sql, "SELECT stamp FROM readings WHERE id = 1 AND stamp >= %s", (august,)
        )
        await wait_until(
            lambda: database.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                ("SELECT stamp FROM readings%",),
            )[0][0]
        )
        mover.commit()
    finally:
        mover.close()
    assert await reading == [(august + 5,)]


@pytest_twisted.ensureDeferred
async def test_ingest_across_months_with_the_daemon_stopped_over_the_turn(
    raw_pool, database, tmp_path
) -> None:
    """
    A node whose database went away in April spools what it reads, among
    it the turn of July to August, and is stopped; it starts again in
    September, with the database back. The months due are made before
    ingest writes; the spooled points of July and August, months no one
    made (the database was away), land in the default partition, and the
    next turn of keeping the partitions makes their months and moves them
    there; every point is counted once, and stays readable throughout.
    """
    april = Month(2024, 4)
    await Schema(raw_pool, clock_at(april.start + 10 * DAY)).apply()
    store = Readings(raw_pool)
    await store.insert([Point(1, april.start + 10 * DAY + i * 1000, 1000) for i in range(5)])
    turn = Month(2024, 8).start
    left = [Point(1, turn + i * 60_000, 60_000) for i in range(-3, 3)]
    spool = Spool(tmp_path / "spool")
    spool.append(left)
    spool.close()
    september = Month(2024, 9).start + 2 * HOUR
    clock = clock_at(september)
    outcome = await Schema(raw_pool, clock).apply()
    assert outcome.notes == ("made the partitions readings_2024_09, readings_2024_10, readings_2024_11",)
    ingest, _, hub, counters = make_ingest(store, Spool(tmp_path / "spool"), clock=clock)
    ingest.open()
    await ingest.start()
    new = [Point(1, september + i * 1000, 1000) for i in range(3)]
    for point in new:
        ingest.receive(point)
    clock.advance(BATCH_DELAY)
    await wait_until(lambda: counters.stored == len(left) + len(new))
    await ingest.stop()
    assert database.sql(f"SELECT count(*) FROM {DEFAULT_PARTITION}") == [(6,)]
    since = LegacyQueries(raw_pool)
    answer = await since.since(1, turn - HOUR, 100)

    await Partitions(raw_pool, clock).keep()

    assert database.sql(f"SELECT count(*) FROM {DEFAULT_PARTITION}") == [(0,)]
    assert [n for n, _ in partitions_of(database)] == [
        "readings_2024_04", "readings_2024_05", "readings_2024_06", "readings_2024_07",
        "readings_2024_08", "readings_2024_09", "readings_2024_10", "readings_2024_11",
        DEFAULT_PARTITION,
    ]
    for month, count in (("04", 5), ("07", 3), ("08", 3), ("09", 3)):
        assert database.sql(f"SELECT count(*) FROM readings_2024_{month}") == [(count,)]
    assert await since.since(1, turn - HOUR, 100) == answer
    assert answer.count("[") == 1 + len(left) + len(new)
    assert_rollups_match(database.sql)


#: The scans that read a table through its primary key.
INDEXED = {"Index Scan", "Index Scan Backward", "Index Only Scan", "Bitmap Heap Scan"}


class Recorder:
    """
    Stands for a pool: runs every statement on the real one, and keeps it
    with its parameters.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.reactor = pool.reactor
        self.statements: list[tuple[Any, Any]] = []

    def runQuery(self, statement: Any, params: Any = None) -> "Deferred[Any]":
        self.statements.append((statement, params))
        return self.pool.runQuery(statement, params)


def scans(plan: dict[str, Any]) -> list[tuple[str, str, int]]:
    """
    :return: every scan of a partition of readings in an EXPLAIN ANALYZE
        plan (JSON): its node type, partition, and how often it ran.
    """
    found = []
    relation = plan.get("Relation Name", "")
    if relation.startswith("readings_") and relation not in ("readings_minutely", "readings_hourly"):
        found.append((plan["Node Type"], relation, plan.get("Actual Loops", 0)))
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


@pytest_twisted.ensureDeferred
async def test_hot_queries_read_only_the_partitions_they_need(raw_pool, database) -> None:
    """
    Over a year of monthly partitions, the newest point of a meter (and of
    every meter), /since, /range, catching up by meter, and the pages of
    an export each read only the partitions of their range (for a range
    open to the future: those from its start on, the months made ahead,
    empty, and the default partition), through the primary key (an index
    scan, never the whole table); the meters are found in the hourly
    rollups without asking each partition.
    """
    first = Month(2023, 5)
    await Schema(raw_pool, clock_at(NOW)).apply()
    await run_in(raw_pool, ensure_months(NOW, [first.after(i).start for i in range(13)]))
    database.sql(
        "INSERT INTO readings (id, stamp, ms)"
        " SELECT m, %s::bigint + i * 600000, 600000"
        "   FROM generate_series(0::bigint, 13 * 30 * 144) i, generate_series(1, 3) m"
        "  WHERE %s::bigint + i * 600000 < %s::bigint",
        (first.start, first.start, NOW),
    )
    database.sql("ANALYZE readings")
    assert len(partitions_of(database)) == 16
    empty = {"readings_2024_06", "readings_2024_07", DEFAULT_PARTITION}
    recorder = Recorder(raw_pool)
    week = NOW - 7 * DAY
    open_ended = ["readings_2024_05", "readings_2024_06", "readings_2024_07", DEFAULT_PARTITION]
    asked = {
        "last": (lambda: Queries(recorder).last(2), open_ended),
        "last points": (lambda: Queries(recorder).last_points(), open_ended),
        "since": (lambda: LegacyQueries(recorder).since(1, week, 2000), open_ended),
        "range": (lambda: LegacyQueries(recorder).between(1, week, week + HOUR, 100_000), ["readings_2024_05"]),
        "catch up": (lambda: Readings(recorder).catch_up({m: NOW - HOUR for m in (1, 2, 3)}, 1000), open_ended),
        "export page": (lambda: V1Queries(recorder).points_text(3, week, NOW, 20_000, True), ["readings_2024_05"]),
    }
    connection = psycopg2.connect(database.dsn)
    try:
        for name, (ask, partitions) in asked.items():
            recorder.statements.clear()
            await ask()
            ((statement, params),) = recorder.statements
            with connection.cursor() as cursor:
                cursor.execute(b"EXPLAIN (ANALYZE, FORMAT JSON) " + cursor.mogrify(statement, params))
                plan = cursor.fetchone()[0][0]["Plan"]
            ran = [(kind, relation) for kind, relation, loops in scans(plan) if loops]
            assert sorted({relation for _, relation in ran}) == partitions, (name, ran)
            # An empty partition costs nothing however it is read.
            full = [(kind, relation) for kind, relation in ran if relation not in empty]
            assert full and {kind for kind, _ in full} <= INDEXED, (name, ran)
        recorder.statements.clear()
        await Readings(recorder).catch_up({}, 10)
        ((statement, params),) = recorder.statements
        with connection.cursor() as cursor:
            cursor.execute(b"EXPLAIN (FORMAT JSON) " + cursor.mogrify(statement, params))
            text = json.dumps(cursor.fetchone()[0])
        assert '"Relation Name": "readings_hourly"' in text
    finally:
        connection.close()


async def answers(site: Served, paths: dict[str, str]) -> dict[str, tuple[bytes, Optional[bytes]]]:
    """:return: the body and ``Blip-Raw-Since`` header of the answer to each named path."""
    found = {}
    for name, path in paths.items():
        code, headers, body = await site.get(path)
        assert code == 200, (path, body)
        found[name] = body, (headers.getRawHeaders(b"Blip-Raw-Since") or [None])[0]
    return found


@pytest_twisted.ensureDeferred
async def test_old_partitions_are_dropped_and_what_they_held_still_answers(
    raw_pool, database, tmp_path
) -> None:
    """
    A plain readings table converted in November 2023 becomes the
    partition of everything before December; points are written until
    March 2024. A retention of two months drops nothing while some of that
    partition is younger (though most is older); once it is all older, it
    alone is detached and dropped (not December's), after its points were
    archived: the archive holds exactly them. Then power and energy over
    its months answer as before, from the rollups (power over an hour that
    had raw points now from the minute rollups); the routes that return
    raw points answer what is left and say since when (header, and field
    in /api/v1); the record survives a restart; checking and rebuilding
    the rollups leaves their history alone.
    """
    originals.build(database.dsn, PLAIN)
    october = Month(2023, 10).start
    converted = Month(2023, 11).start + 19 * DAY
    end = Month(2024, 4).start
    fill = (
        "INSERT INTO readings (id, stamp, ms)"
        " SELECT 1, s, 240000 + (s / 300000) %% 7 * 10000"
        "   FROM generate_series(%s::bigint, %s::bigint - 1, 300000) s"
    )
    database.sql(fill, (october, converted))
    await Schema(raw_pool, clock_at(converted)).apply()
    await run_in(raw_pool, ensure_months(converted, [Month(2024, 3).start]))
    database.sql(fill, (converted, end))
    december = Month(2023, 12).start
    assert [name for name, _ in partitions_of(database)][:2] == ["readings_2023_12", "readings_2024_01"]
    assert ("readings_before_2023_12", f"FOR VALUES FROM (MINVALUE) TO ('{december}')") in partitions_of(database)

    keeper = Partitions(raw_pool, clock_at(Month(2024, 1).start + 19 * DAY), parse_keep_raw("2mo"))
    await keeper.keep()
    assert (keeper.raw_since, database.sql("SELECT count(*) FROM readings_dropped")) == (None, [(0,)])

    week = october + 4 * DAY
    v1 = "/api/v1/meters/1"
    paths = {
        "power": f"{v1}/power?from={october}&to={Month(2024, 1).start}",
        "energy by day": f"{v1}/energy?from={october}&to={Month(2024, 1).start}&period=day",
        "energy by month": f"{v1}/energy?from={october}&to={end}&period=month",
        "hourly": f"/hourly/1/{october}/{end}",
        "aggregate": f"/aggregate/1/{october}/86400000/100",
        "since": f"/since/1/{week}",
        "range": f"/range/1/{week}/{week + HOUR}",
        "readings": f"{v1}/readings?from={week}&to={week + HOUR}",
        "power of an hour": f"{v1}/power?from={week}&to={week + HOUR}",
    }
    site = open_site(Readings(raw_pool), Meters([Meter(1)]), now=end / 1000, raw_since=lambda: keeper.raw_since)
    try:
        before = await answers(site, paths)
        dropped_points = database.sql("SELECT id, stamp, ms FROM readings WHERE stamp < %s ORDER BY 2", (december,))
        connection = psycopg2.connect(database.dsn)
        try:
            archived = archive_csv(SyncStore(connection), december, tmp_path / "raw.csv.gz")
        finally:
            connection.close()
        assert archived == len(dropped_points) == (december - october) // 300_000

        keeper.clock = clock_at(Month(2024, 2).start + 9 * DAY)
        await keeper.keep()

        assert [name for name, _ in partitions_of(database)][0] == "readings_2023_12"
        assert database.sql("SELECT partition, from_stamp, to_stamp, rows FROM readings_dropped") == [
            ("readings_before_2023_12", None, december, len(dropped_points))
        ]
        assert keeper.raw_since == december
        after = await answers(site, paths)
    finally:
        await site.close()
    with gzip.open(tmp_path / "raw.csv.gz", "rt") as archive:
        assert archive.readline() == "meter,stamp,ms\n"
        assert [tuple(map(int, line.split(","))) for line in archive] == dropped_points
    since = str(december).encode()
    power = json.loads(after["power"][0])
    assert power.pop("raw_since") == december
    assert {**power, "raw_since": None} == json.loads(before["power"][0])
    for name in ("energy by day", "energy by month", "hourly"):
        assert after[name] == before[name], name
    assert after["aggregate"] == (before["aggregate"][0], since)
    assert before["since"][1] is None
    assert after["since"][1] == since and json.loads(after["since"][0])[0][0] == december
    assert after["range"] == (b"[]", since)
    readings = json.loads(after["readings"][0])
    assert (readings["points"], readings["raw_since"], after["readings"][1]) == ([], december, since)
    assert json.loads(before["readings"][0])["raw_since"] is None
    raw, rolled = json.loads(before["power of an hour"][0]), json.loads(after["power of an hour"][0])
    assert (raw["resolution_ms"], len(raw["points"]), raw["raw_since"]) == (0, 12, None)
    assert (rolled["resolution_ms"], len(rolled["points"]), rolled["raw_since"]) == (60_000, 12, december)
    assert [p[1] for p in rolled["points"]] == pytest.approx([p[1] for p in raw["points"]])

    again = Partitions(raw_pool, clock_at(end))
    await again.load()
    assert again.raw_since == december
    connection = psycopg2.connect(database.dsn)
    try:
        store = SyncStore(connection)
        rollups_before = originals.rollups(database.sql, "readings_hourly")
        out = io.StringIO()
        assert rollups.check(store, None, None, None, out) == 0, out.getvalue()
        assert rollups.rebuild(store, None, None, None, io.StringIO()) == 0
        assert originals.rollups(database.sql, "readings_hourly") == rollups_before
    finally:
        connection.close()
