"""
Tests of the upgrade steps against a real PostgreSQL: the original
blipserver's layouts, built and filled through their own per-row trigger,
are upgraded in place and answer every legacy route as before; a step
PostgreSQL refuses changes nothing.
"""

import json
import uuid

import psycopg2
import pytest
import pytest_twisted

from blip.db.layouts import (
    ORIGINAL_MULTI,
    ORIGINAL_SINGLE,
    SCHEMA_VERSION,
    UNPARTITIONED,
    Refused,
)
from blip.db.partitions import Month
from blip.db.pool import Pool
from blip.db.readings import Readings
from blip.db.schema import Schema
from blip.meters import Meters
from blip.model import Point
from tests import originals
from tests.conftest import TIMEOUT, eventually, open_site
from tests.db.test_partitions import clock_at, partitions_of
from tests.db.test_schema import COVERING_KEYS, core_schema, rollup_keys
from tests.originals import (
    HOUR,
    MINUTE,
    MULTI,
    PLAIN,
    SINGLE,
    SINGLE_WITH_MINUTES,
    T0,
    assert_rollups_match,
)

#: Readings per meter in the layouts built here: about 12 hours.
ROWS = 12_000
#: The time the relative routes are asked at: the end of the data.
NOW = T0 + ROWS * 3700


async def answers(pool: Pool, paths: list[str]) -> dict[str, object]:
    """
    Ask blipserver's legacy API, on a real port, every path.

    :return: each path's decoded JSON answer.
    """
    site = open_site(Readings(pool), Meters(), now=NOW / 1000, longpoll_timeout=5.0, max_waiters=10)
    found = {}
    try:
        for path in paths:
            code, _, body = await site.get(path)
            assert code == 200, (path, body)
            found[path] = json.loads(body)
    finally:
        await site.close()
    return found


def assert_partitioned_in_place(database, file: list[tuple]) -> None:
    """
    Readings is partitioned by month: the table it was (its file ``file``,
    so not a row rewritten) holds every stamp before December 2023, the
    month after the upgrade; the months from there on and the default
    partition take the rest.
    """
    december = Month(2023, 12).start
    assert database.sql("SELECT relkind FROM pg_class WHERE relname = 'readings'") == [("p",)]
    assert partitions_of(database) == [
        ("readings_2023_12", f"FOR VALUES FROM ('{december}') TO ('{Month(2024, 1).start}')"),
        ("readings_2024_01", f"FOR VALUES FROM ('{Month(2024, 1).start}') TO ('{Month(2024, 2).start}')"),
        ("readings_before_2023_12", f"FOR VALUES FROM (MINVALUE) TO ('{december}')"),
        ("readings_default", "DEFAULT"),
    ]
    assert database.sql("SELECT pg_relation_filenode('readings_before_2023_12')") == file
    assert database.sql(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'readings_before_2023_12'::regclass"
    ) == [("readings_before_2023_12_pkey",)]


def triggers(database) -> list[tuple]:
    """:return: the triggers on readings, with their functions."""
    return database.sql(
        "SELECT tgname, tgfoid::regproc::text FROM pg_trigger"
        " WHERE tgrelid = 'readings'::regclass AND NOT tgisinternal"
    )


#: What each layout is found to be, and what its upgrade records and
#: logs first.
UPGRADES = {
    MULTI: (ORIGINAL_MULTI, [], "upgraded from the original multi-meter layout",
            "dropped the original's per-row trigger monthly_aggregate"),
    SINGLE: (ORIGINAL_SINGLE, [], "upgraded from the original single-meter layout",
             "gave every reading and rollup row meter id 1"),
    SINGLE_WITH_MINUTES: (ORIGINAL_SINGLE, [], "upgraded from the original single-meter layout",
                          "gave every reading and rollup row meter id 1"),
    PLAIN: (UNPARTITIONED, [(3, "created")], "upgraded from a plain readings table to one partitioned by month",
            "made readings a table partitioned by month, its points until now the partition"
            " readings_before_2023_12 (not rewritten)"),
}


@pytest.mark.parametrize("layout", list(UPGRADES))
@pytest_twisted.ensureDeferred
async def test_each_layout_is_upgraded_in_place(layout, raw_pool, database, log_events) -> None:
    """
    A database laid out as the original's (multi-meter, single-meter, and
    single-meter with minute rollups), filled through its per-row trigger,
    or as blipserver's with a plain readings table, is upgraded in one
    step: every legacy route then answers with the same data as before;
    both rollups equal a recount, keyed with every column; only
    blipserver's trigger remains, so
    new rows are counted once; readings is partitioned, its table of old
    the partition of everything before the next month, not rewritten;
    privileges on the views and readings carry over; and preparing it
    again changes nothing.
    """
    found, earlier, note, first_step = UPGRADES[layout]
    originals.build(database.dsn, layout)
    originals.fill(database.dsn, layout, ROWS)
    reader = "reader_" + uuid.uuid4().hex[:8]
    database.sql(f"CREATE ROLE {reader}")
    try:
        database.sql(f"GRANT SELECT ON usage_hourly, readings TO {reader}")
        before = originals.original_answers(database.sql, layout, NOW, ROWS)
        file = database.sql("SELECT pg_relation_filenode('readings')")

        outcome = await Schema(raw_pool, clock_at(NOW)).apply()

        assert (outcome.before, outcome.notes[0]) == (found, first_step)
        after = await answers(raw_pool, [route.path for route in before])
        for route in before:
            assert after[route.path] == route.answer, route.path
        assert len(before) >= (17 if layout in (SINGLE, SINGLE_WITH_MINUTES) else 18)
        assert all(route.answer for route in before)
        assert_rollups_match(database.sql)
        assert triggers(database) == [("blip_rollup", "blip_rollup")]
        assert database.sql("SELECT count(*) FROM pg_proc WHERE proname = 'do_monthly_aggregate'") == [(0,)]
        assert database.sql(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = 'readings_hourly' AND column_name = 'sum_ms'"
        ) == [("bigint",)]
        assert database.sql("SELECT has_table_privilege(%s, 'usage_hourly', 'SELECT')", (reader,)) == [(True,)]
        assert database.sql("SELECT has_table_privilege(%s, 'readings', 'SELECT')", (reader,)) == [(True,)]
        assert_partitioned_in_place(database, file)
        assert rollup_keys(database) == COVERING_KEYS
        assert database.sql("SELECT version, note FROM blip_schema ORDER BY 1") == [*earlier, (SCHEMA_VERSION, note)]
        logged = [e for e in log_events if "upgraded the database in place" in e.get("outcome", "")]
        assert len(logged) == 1 and first_step in logged[0]["outcome"]

        state = originals.snapshot(database.sql)
        again = await Schema(raw_pool, clock_at(NOW)).apply()
        assert (again.before, again.notes) == (SCHEMA_VERSION, ())
        assert originals.snapshot(database.sql) == state

        end = T0 + ROWS * 3700
        await Readings(raw_pool).insert(
            [Point(1, end + i * 1000, 1000) for i in range(1, 100)] + [Point(7, end, 5)]
            + [Point(2, Month(2023, 12).start + 7, 5)]
        )
        assert database.sql("SELECT count(*) FROM readings_2023_12") == [(1,)]
        assert_rollups_match(database.sql)
    finally:
        database.sql(f"DROP OWNED BY {reader}")
        database.sql(f"DROP ROLE {reader}")


@pytest_twisted.ensureDeferred
async def test_a_view_of_readings_stops_the_partitioning(raw_pool, database) -> None:
    """
    A view of the user's that reads readings would go on reading the old
    table alone: the upgrade refuses, saying which, and changes nothing.
    """
    originals.build(database.dsn, PLAIN)
    originals.fill(database.dsn, PLAIN, 100)
    database.sql("CREATE VIEW recent AS SELECT stamp, ms FROM readings WHERE stamp > 0")
    state = originals.snapshot(database.sql)
    with pytest.raises(Refused, match="readings is read by recent"):
        await Schema(raw_pool, clock_at(NOW)).apply()
    assert originals.snapshot(database.sql) == state


@pytest_twisted.ensureDeferred
async def test_history_and_hours_cut_in_another_time_zone(raw_pool, database) -> None:
    """
    Rollup rows older than a meter's first reading (their readings deleted
    to save space) are kept as they were; hours the original cut in a time
    zone half an hour off UTC are recomputed on UTC hours.
    """
    originals.build(database.dsn, SINGLE_WITH_MINUTES)
    originals.fill(database.dsn, SINGLE_WITH_MINUTES, 4000, timezone="Asia/Kolkata")
    database.sql("DELETE FROM readings WHERE stamp < %s", (T0 + 3 * HOUR,))
    first = database.sql("SELECT min(stamp) FROM readings")[0][0]
    kept_hours = database.sql(
        "SELECT 1, stamp, events, sum_ms, min_ms, max_ms FROM readings_hourly"
        " WHERE stamp + 3600000 <= %s ORDER BY stamp", (first,)
    )
    assert kept_hours and all(row[1] % HOUR == 30 * MINUTE for row in kept_hours)

    outcome = await Schema(raw_pool).apply()

    assert f"kept {len(kept_hours)} rows of readings_hourly older than the first reading" in outcome.notes
    hourly = originals.rollups(database.sql, "readings_hourly")
    assert hourly[: len(kept_hours)] == kept_hours
    assert hourly[len(kept_hours):] == originals.recount(database.sql, HOUR)
    assert all(row[1] % HOUR == 0 for row in hourly[len(kept_hours):])


@pytest_twisted.ensureDeferred
async def test_a_failing_upgrade_changes_nothing(raw_pool, database) -> None:
    """
    When PostgreSQL refuses a step (here: a view of the user's depends on
    the original's view), the whole upgrade is rolled back: the original's
    trigger still keeps its rollups.
    """
    originals.build(database.dsn, MULTI)
    originals.fill(database.dsn, MULTI, 500)
    database.sql("CREATE VIEW dashboard AS SELECT stamp, wh FROM usage_hourly")
    state = originals.snapshot(database.sql)
    with pytest.raises(psycopg2.errors.DependentObjectsStillExist, match="dashboard"):
        await Schema(raw_pool).apply()
    assert originals.snapshot(database.sql) == state


@pytest_twisted.ensureDeferred
async def test_an_original_database_with_both_triggers_is_repaired(raw_pool, database) -> None:
    """
    An original database on which blipserver's schema was applied without
    the upgrade (both triggers then counted every new row) is upgraded:
    the original's trigger goes and the double counts are recomputed.
    """
    originals.build(database.dsn, MULTI)
    originals.fill(database.dsn, MULTI, 1000)
    core_schema(database)
    await Readings(raw_pool).insert([Point(1, NOW + i * 1000, 700) for i in range(50)])
    assert originals.rollups(database.sql, "readings_hourly") != originals.recount(database.sql, HOUR)

    outcome = await Schema(raw_pool).apply()

    assert outcome.before == ORIGINAL_MULTI
    assert_rollups_match(database.sql)
    assert triggers(database) == [("blip_rollup", "blip_rollup")]


def test_twistd_upgrades_an_original_database_and_keeps_ingesting(start_daemon, pty_meter, database) -> None:
    """
    ``twistd -n blip --db`` on an original multi-meter database upgrades it
    at start with one log line, answers the legacy routes as before, and
    stores new blips counted once.
    """
    import urllib.request

    rows = 30_000
    originals.build(database.dsn, MULTI)
    originals.fill(database.dsn, MULTI, rows)
    before = [
        route for route in originals.original_answers(database.sql, MULTI, NOW, rows)
        if not route.path.startswith(("/usage", "/last/1/", "/last/2/"))
    ]
    daemon = start_daemon("--serial", pty_meter.path, "--db", database.dsn)
    daemon.wait_for("upgraded the database in place from the original multi-meter layout")
    daemon.wait_for("database ready")
    for route in before:
        with urllib.request.urlopen(daemon.url(route.path), timeout=TIMEOUT) as answer:
            assert json.loads(answer.read()) == route.answer, route.path

    count = database.sql("SELECT count(*) FROM readings")[0][0]
    daemon.wait_for("reading serial device")
    pty_meter.write(b"partial\nINFO 2 Workshop\\20lights\n")
    for _ in range(20):
        pty_meter.write(b"1 1000\n2 2000\n")
    assert eventually(lambda: database.sql("SELECT count(*) FROM readings")[0][0] == count + 40)
    assert eventually(lambda: database.sql("SELECT id, description FROM meters ORDER BY id")
                      == [(1, ""), (2, "Workshop lights")])
    assert daemon.stop() == 0, "\n".join(daemon.output)
    assert_rollups_match(database.sql)
