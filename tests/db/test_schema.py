"""
Tests of preparing a database against a real PostgreSQL: the schema and
its rollup trigger, applied idempotently; nodes starting together take
turns; blipserver's own databases are recognised.
"""

import io

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from blip.db.layouts import ORIGINAL_MULTI, SCHEMA_VERSION, UNPARTITIONED
from blip.db.pool import Pool
from blip.db.readings import Readings
from blip.db.schema import Schema
from blip.model import Point
from tests import originals
from tests.originals import HOUR, MULTI, assert_rollups_match

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR


@pytest_twisted.ensureDeferred
async def test_schema_has_the_originals_tables_and_is_idempotent(store, database) -> None:
    """
    The schema creates the original's tables and views with their columns
    (readings partitioned), and applying it again changes nothing.
    """
    await store.insert([Point(1, T0, 1000)])
    await Schema(store.pool).apply()
    columns = database.sql(
        "SELECT table_name, string_agg(column_name, ',' ORDER BY ordinal_position)"
        "  FROM information_schema.columns c"
        "  JOIN pg_class r ON r.relname = c.table_name AND r.relnamespace = 'public'::regnamespace"
        " WHERE table_schema = 'public' AND NOT r.relispartition"
        " GROUP BY 1 ORDER BY 1"
    )
    assert dict(columns) == {
        "blip_schema": "version,applied,note",
        "device_tokens": "id,name,meters,hash,created,revoked",
        "ingest_periods": "node,started,alive_at,ended,end_reason",
        "meters": "id,label,description,pulses_per_kwh,multiplier,price_per_kwh,currency,timezone",
        "readings": "id,stamp,ms",
        "readings_dropped": "partition,from_stamp,to_stamp,rows,dropped",
        "readings_hourly": "id,stamp,events,sum_ms,min_ms,max_ms",
        "readings_minutely": "id,stamp,events,sum_ms,min_ms,max_ms",
        "repairs": "meter,started,ended,peer,points,repaired",
        "usage_hourly": "id,stamp,wh,min_ms,max_ms,events",
        "usage_minutely": "id,stamp,wh,min_ms,max_ms,events",
    }
    assert originals.rollups(database.sql, "readings_hourly") == [(1, T0, 1, 1000, 1000, 1000)]
    assert rollup_keys(database) == COVERING_KEYS


#: The rollups' primary keys: (id, stamp), carrying every other column.
COVERING_KEYS = [
    (table, f"CREATE UNIQUE INDEX {table}_pkey ON public.{table} USING btree (id, stamp)"
            " INCLUDE (events, sum_ms, min_ms, max_ms)")
    for table in ("readings_hourly", "readings_minutely")
]


def rollup_keys(database) -> list[tuple]:
    """:return: each rollup table and the definition of its primary key's index."""
    return database.sql(
        "SELECT c.conrelid::regclass::text, pg_get_indexdef(c.conindid) FROM pg_constraint c"
        " WHERE c.contype = 'p' AND c.conrelid IN ('readings_hourly'::regclass, 'readings_minutely'::regclass)"
        " ORDER BY 1"
    )


@pytest_twisted.ensureDeferred
async def test_a_meters_hours_are_read_from_the_rollups_key(store, database) -> None:
    """
    A meter's hours (and minutes) over a range are read from the primary
    key alone, in order, without reading the table or sorting: its rows
    may lie anywhere in the table.
    """
    await store.insert([Point(m, T0 + i * 60_000, 1000) for m in (1, 2) for i in range(300)])
    database.sql("VACUUM ANALYZE readings_hourly, readings_minutely")
    for view in ("usage_hourly", "usage_minutely"):
        plan = database.sql(
            "SET enable_seqscan = off; SET enable_bitmapscan = off;"
            f" EXPLAIN (ANALYZE, COSTS OFF, SUMMARY OFF, TIMING OFF) SELECT stamp, events, wh, min_ms, max_ms"
            f" FROM {view} WHERE id = 1 AND stamp >= %s AND stamp <= %s ORDER BY stamp",
            (T0, T0 + 2 * HOUR),
        )
        text = "\n".join(line for line, in plan)
        assert "Index Only Scan" in text and "Sort" not in text, text


@pytest_twisted.ensureDeferred
async def test_a_rollup_keyed_without_its_columns_is_keyed_again(store, database) -> None:
    """
    A rollup whose primary key is (id, stamp) alone, as an older
    blipserver (or the original) made it, is keyed again with every
    column when the schema is applied; its rows stay.
    """
    await store.insert([Point(1, T0, 1000)])
    for table in ("readings_hourly", "readings_minutely"):
        database.sql(
            f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey, ADD CONSTRAINT old_{table}_key PRIMARY KEY (id, stamp)"
        )
    await Schema(store.pool).apply()
    assert rollup_keys(database) == COVERING_KEYS
    assert originals.rollups(database.sql, "readings_hourly") == [(1, T0, 1, 1000, 1000, 1000)]


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
    assert_rollups_match(database.sql)


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
            [Deferred.fromCoroutine(Schema(p).apply()) for p in pools]
        )
    finally:
        for p in pools:
            p.close()
    assert sorted(o.before for o in outcomes) == [ORIGINAL_MULTI, SCHEMA_VERSION]
    assert_rollups_match(database.sql)


def core_schema(database) -> None:
    """
    Lay out a database as blipserver did before it recorded schema
    versions (and before its meters table, and before readings were
    partitioned).
    """
    originals.execute(database.dsn, originals.plain_sql(versioned=False))


@pytest_twisted.ensureDeferred
async def test_blipservers_database_without_a_version_is_recognised(raw_pool, database) -> None:
    """
    A database blipserver made before versions were recorded is its own:
    its readings are partitioned, its version is recorded and no row
    changes.
    """
    core_schema(database)
    await Readings(raw_pool).insert([Point(1, T0 + i * 1000, 1000) for i in range(100)])
    rows = originals.rollups(database.sql, "readings_hourly")
    points = database.sql("SELECT * FROM readings ORDER BY id, stamp")
    outcome = await Schema(raw_pool).apply()
    assert outcome.before == UNPARTITIONED
    assert any("made readings a table partitioned by month" in note for note in outcome.notes)
    assert originals.rollups(database.sql, "readings_hourly") == rows
    assert database.sql("SELECT * FROM readings ORDER BY id, stamp") == points
    assert database.sql("SELECT version FROM blip_schema") == [(SCHEMA_VERSION,)]
