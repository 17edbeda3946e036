"""
Tests of preparing a database at start: the original blipserver's layouts,
built and filled through their own per-row trigger, are upgraded in place
and answer every legacy route as before; blipserver's own databases are
recognised; anything else is refused untouched.
"""

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg2
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from blip.db.layouts import ORIGINAL_MULTI, ORIGINAL_SINGLE, SCHEMA_VERSION, Refused
from blip.db.pool import Pool
from blip.db.store import Store, schema_sql
from blip.meters import Meters
from blip.model import Point
from tests import originals
from tests.conftest import ROOT, TIMEOUT, eventually, open_site
from tests.originals import HOUR, MINUTE, MULTI, SINGLE_WITH_MINUTES, T0

#: Readings per meter in the layouts built here: about 12 hours.
ROWS = 12_000
#: The time the relative routes are asked at: the end of the data.
NOW = T0 + ROWS * 3700


@pytest_twisted.async_yield_fixture
async def raw_store(database) -> AsyncIterator[Store]:
    """
    A :class:`Store` on a fresh database whose schema is not applied.
    """
    from twisted.internet import reactor

    pool = Pool(database.dsn, 2, reactor)
    await pool.start()
    try:
        yield Store(pool)
    finally:
        pool.close()


async def answers(store: Store, paths: list[str]) -> dict[str, object]:
    """
    Ask blipserver's legacy API, on a real port, every path.

    :return: each path's decoded JSON answer.
    """
    site = open_site(store, Meters(), now=NOW / 1000, longpoll_timeout=5.0, max_waiters=10)
    found = {}
    try:
        for path in paths:
            code, _, body = await site.get(path)
            assert code == 200, (path, body)
            found[path] = json.loads(body)
    finally:
        await site.close()
    return found


def assert_rollups_match(database) -> None:
    """Both rollup tables hold exactly a recount of readings."""
    assert originals.rollups(database.sql, "readings_minutely") == originals.recount(database.sql, MINUTE)
    assert originals.rollups(database.sql, "readings_hourly") == originals.recount(database.sql, HOUR)


def triggers(database) -> list[tuple]:
    """:return: the triggers on readings, with their functions."""
    return database.sql(
        "SELECT tgname, tgfoid::regproc::text FROM pg_trigger"
        " WHERE tgrelid = 'readings'::regclass AND NOT tgisinternal"
    )


@pytest.mark.parametrize("layout", originals.LAYOUTS)
@pytest_twisted.ensureDeferred
async def test_original_layout_is_upgraded_in_place(layout, raw_store, database, log_events) -> None:
    """
    A database laid out as the original's (multi-meter, single-meter, and
    single-meter with minute rollups), filled through its per-row trigger,
    is upgraded in one step: every legacy route then answers with the same
    data as the original's tables gave; both rollups equal a recount; only
    blipserver's trigger remains, so new rows are counted once; privileges
    on the views carry over; and preparing it again changes nothing.
    """
    originals.build(database.dsn, layout)
    originals.fill(database.dsn, layout, ROWS)
    reader = "reader_" + uuid.uuid4().hex[:8]
    database.sql(f"CREATE ROLE {reader}")
    try:
        database.sql(f"GRANT SELECT ON usage_hourly TO {reader}")
        before = originals.original_answers(database.sql, layout, NOW, ROWS)

        outcome = await raw_store.apply_schema()

        assert outcome.before == (ORIGINAL_MULTI if layout == MULTI else ORIGINAL_SINGLE)
        after = await answers(raw_store, [route.path for route in before])
        for route in before:
            assert after[route.path] == route.answer, route.path
        assert len(before) >= (18 if layout == MULTI else 17)
        assert all(route.answer for route in before)
        assert_rollups_match(database)
        assert triggers(database) == [("blip_rollup", "blip_rollup")]
        assert database.sql("SELECT count(*) FROM pg_proc WHERE proname = 'do_monthly_aggregate'") == [(0,)]
        assert database.sql(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = 'readings_hourly' AND column_name = 'sum_ms'"
        ) == [("bigint",)]
        assert database.sql("SELECT has_table_privilege(%s, 'usage_hourly', 'SELECT')", (reader,)) == [(True,)]
        notes = database.sql("SELECT version, note FROM blip_schema")
        assert notes == [(SCHEMA_VERSION, f"upgraded from the original {'multi' if layout == MULTI else 'single'}-meter layout")]
        logged = [e for e in log_events if "upgraded the database in place" in e.get("outcome", "")]
        assert len(logged) == 1
        assert "dropped the original's per-row trigger monthly_aggregate" in logged[0]["outcome"]

        state = originals.snapshot(database.sql)
        again = await raw_store.apply_schema()
        assert (again.before, again.notes) == (SCHEMA_VERSION, ())
        assert originals.snapshot(database.sql) == state

        end = T0 + ROWS * 3700
        await raw_store.insert([Point(1, end + i * 1000, 1000) for i in range(1, 100)] + [Point(7, end, 5)])
        assert_rollups_match(database)
    finally:
        database.sql(f"DROP OWNED BY {reader}")
        database.sql(f"DROP ROLE {reader}")


@pytest_twisted.ensureDeferred
async def test_history_and_hours_cut_in_another_time_zone(raw_store, database) -> None:
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

    outcome = await raw_store.apply_schema()

    assert f"kept {len(kept_hours)} rows of readings_hourly older than the first reading" in outcome.notes
    hourly = originals.rollups(database.sql, "readings_hourly")
    assert hourly[: len(kept_hours)] == kept_hours
    assert hourly[len(kept_hours):] == originals.recount(database.sql, HOUR)
    assert all(row[1] % HOUR == 0 for row in hourly[len(kept_hours):])


@pytest.mark.parametrize(
    "setup, reason",
    [
        ("CREATE TABLE invoices (number INTEGER PRIMARY KEY, total NUMERIC);"
         " INSERT INTO invoices VALUES (1, 9.5)", "has no readings table"),
        ("CREATE TABLE readings (sensor TEXT, value FLOAT, at TIMESTAMPTZ);"
         " INSERT INTO readings VALUES ('hall', 21.5, now())", "readings table has columns"),
        ("CREATE TABLE readings (stamp TEXT PRIMARY KEY, ms INTEGER);"
         " INSERT INTO readings VALUES ('x', 1)", "readings.stamp is text, not an integer"),
        ("CREATE VIEW readings AS SELECT 1::bigint AS stamp, 2 AS ms", "readings is not a table"),
        (originals.layout_sql(MULTI) + "CREATE TABLE meters (serial TEXT, room TEXT);"
         " INSERT INTO readings VALUES (1, 5, 5)", "meters table that is not blipserver's"),
        (schema_sql() + "INSERT INTO blip_schema VALUES (9, 0, 'from the future')",
         "version 9, written by a newer blipserver"),
    ],
    ids=["unrelated", "other-readings", "text-stamps", "readings-view", "foreign-meters", "newer"],
)
@pytest_twisted.ensureDeferred
async def test_foreign_database_is_refused_untouched(setup, reason, raw_store, database) -> None:
    """
    A database that is neither empty, blipserver's, nor the original's is
    refused with a message saying why, and nothing in it changes.
    """
    originals.execute(database.dsn, setup)
    state = originals.snapshot(database.sql)
    with pytest.raises(Refused, match=reason):
        await raw_store.apply_schema()
    assert originals.snapshot(database.sql) == state


@pytest_twisted.ensureDeferred
async def test_a_failing_upgrade_changes_nothing(raw_store, database) -> None:
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
        await raw_store.apply_schema()
    assert originals.snapshot(database.sql) == state


@pytest_twisted.ensureDeferred
async def test_nodes_starting_together_take_turns(database) -> None:
    """
    Two nodes preparing the same original database at once: one upgrades
    it, the other then finds it current.
    """
    from twisted.internet import reactor

    originals.build(database.dsn, MULTI)
    originals.fill(database.dsn, MULTI, 3000)
    pools = [Pool(database.dsn, 1, reactor) for _ in range(2)]
    await gatherResults([p.start() for p in pools])
    try:
        outcomes = await gatherResults(
            [Deferred.fromCoroutine(Store(p).apply_schema()) for p in pools]
        )
    finally:
        for p in pools:
            p.close()
    assert sorted(o.before for o in outcomes) == [ORIGINAL_MULTI, SCHEMA_VERSION]
    assert_rollups_match(database)


def core_schema(database) -> None:
    """
    Lay out a database as blipserver did before it recorded schema
    versions (and before its meters table).
    """
    originals.execute(database.dsn, schema_sql() + "DROP TABLE blip_schema; DROP TABLE meters;")


@pytest_twisted.ensureDeferred
async def test_blipservers_database_without_a_version_is_recognised(raw_store, database) -> None:
    """
    A database blipserver made before versions were recorded is its own:
    its version is recorded and no row changes.
    """
    core_schema(database)
    await raw_store.insert([Point(1, T0 + i * 1000, 1000) for i in range(100)])
    rows = originals.rollups(database.sql, "readings_hourly")
    outcome = await raw_store.apply_schema()
    assert (outcome.before, outcome.notes) == (SCHEMA_VERSION, ("recorded its version",))
    assert originals.rollups(database.sql, "readings_hourly") == rows
    assert database.sql("SELECT version FROM blip_schema") == [(SCHEMA_VERSION,)]


@pytest_twisted.ensureDeferred
async def test_an_original_database_with_both_triggers_is_repaired(raw_store, database) -> None:
    """
    An original database on which blipserver's schema was applied without
    the upgrade (both triggers then counted every new row) is upgraded:
    the original's trigger goes and the double counts are recomputed.
    """
    originals.build(database.dsn, MULTI)
    originals.fill(database.dsn, MULTI, 1000)
    core_schema(database)
    await raw_store.insert([Point(1, NOW + i * 1000, 700) for i in range(50)])
    assert originals.rollups(database.sql, "readings_hourly") != originals.recount(database.sql, HOUR)

    outcome = await raw_store.apply_schema()

    assert outcome.before == ORIGINAL_MULTI
    assert_rollups_match(database)
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
    assert_rollups_match(database)


def test_twistd_refuses_a_foreign_database_and_exits_1(daemon_env, database, tmp_path) -> None:
    """
    Given a database that is not blipserver's, the daemon logs why as
    critical, leaves it untouched and exits with status 1 (not retrying
    for ever behind a healthy-looking process).
    """
    originals.execute(database.dsn, "CREATE TABLE invoices (number INTEGER PRIMARY KEY, total NUMERIC)")
    state = originals.snapshot(database.sql)
    twistd = str(Path(sys.executable).parent / "twistd")
    done = subprocess.run(
        [twistd, "--nodaemon", "--pidfile=", "blip", "--db", database.dsn,
         "--state-dir", str(tmp_path), "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=ROOT, env=daemon_env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "#critical] refusing to use the database: it is not empty (invoices)" in done.stdout
    assert "nothing was changed" in done.stdout
    assert "Traceback" not in done.stdout
    assert originals.snapshot(database.sql) == state
