"""
The benchmarks' data: meters blinking about once a second for a number of
days up to now, with their minute and hour rollups, generated inside
PostgreSQL and kept in the benchmarks' cluster between runs.

Two layouts of readings:

- ``monthly``: partitioned by month as blipserver makes it, the partitions
  of the data's months made before the load;
- ``single``: blipserver's plain readings table of old (schema version 3),
  loaded, then converted in place as the daemon converts one at start: the
  old table becomes one partition holding everything (how a database
  upgraded from a plain table is), the seconds that took recorded.

This is the one place of benchmark code that writes SQL of its own: bulk
generation (no index or rollup trigger during the load, both built after)
has no counterpart in the daemon.
"""

import time
from typing import Any

from bench.harness import BenchCluster, note
from blip.db.partitions import Month, ensure_months, month_of
from blip.db.program import run_sync
from blip.db.sync_store import SyncStore
from tests.originals import plain_sql

#: Changing how data is generated changes this, which regenerates caches.
VERSION = 3
DAY_MS = 86_400_000
LAYOUTS = ("monthly", "single")


def database_name(days: int, meters: int = 1, layout: str = "monthly") -> str:
    """:return: the database holding ``days`` of data of ``meters`` meters."""
    return f"bench_{days}d_{meters}m_{layout}_v{VERSION}"


def prepare(
    cluster: BenchCluster, days: int, regenerate: bool = False, meters: int = 1, layout: str = "monthly"
) -> tuple[str, int, int]:
    """
    Make sure the data set exists (generating it the first time, which
    takes minutes for a year) and reaches up to now.

    :return: the database name and the first and last stamps.
    """
    name = database_name(days, meters, layout)
    if regenerate or not _complete(cluster, name):
        generate(cluster, name, days, meters, layout)
    first, last = top_up(cluster, name, meters)
    return name, first, last


def _complete(cluster: BenchCluster, name: str) -> bool:
    if not cluster.database_exists(name):
        return False
    return bool(cluster.sql(name, "SELECT 1 FROM pg_tables WHERE tablename = 'bench_dataset'"))


def described(cluster: BenchCluster, name: str) -> dict[str, Any]:
    """:return: how a data set was made: its days, meters, layout, and the seconds its conversion took."""
    days, meters, layout, converted = cluster.sql(
        name, "SELECT days, meters, layout, conversion_s FROM bench_dataset"
    )[0]
    return {"days": days, "meters": meters, "layout": layout, "conversion_s": converted}


def _transaction(cluster: BenchCluster, name: str) -> Any:
    """:return: a connection that is not in autocommit, for the programs of the schema."""
    connection = cluster.connect(name)
    connection.autocommit = False
    return connection


def generate(cluster: BenchCluster, name: str, days: int, meters: int = 1, layout: str = "monthly") -> None:
    """
    Make the data set afresh in database ``name``: ``days`` of points at
    about 1 Hz for each of ``meters`` meters, up to now.
    """
    points = days * 86_400
    note(f"generating {points * meters:,} points ({days} days at 1 Hz, {meters} meters, {layout}) in {name}")
    cluster.fresh_database(name)
    end = int(time.time()) * 1000
    start = end - days * DAY_MS
    schema = _transaction(cluster, name)
    t0 = time.monotonic()
    try:
        if layout == "single":
            # blipserver's plain table of old, converted after the load.
            with schema, schema.cursor() as cursor:
                cursor.execute(plain_sql())
        else:
            # The schema exactly as the daemon prepares it, and the months.
            SyncStore(schema).apply_schema()
            with schema, schema.cursor() as cursor:
                run_sync(cursor, ensure_months(None, [m.start for m in months_of(start, end)]))
    finally:
        schema.close()
    note(f"  schema: {time.monotonic() - t0:.1f} s")
    steps = [
        ("load settings", "SET synchronous_commit = off; SET maintenance_work_mem = '1GB';"
                          " SET work_mem = '256MB'; SET max_parallel_maintenance_workers = 1", None),
        ("bulk mode", "ALTER TABLE readings DROP CONSTRAINT readings_pkey;"
                      " ALTER TABLE readings DISABLE TRIGGER blip_rollup", None),
        # stamp_i = start + 1000 i + j(i) with j(i) in [0, 200), a jitter of
        # its own per meter: strictly increasing; ms is the true gap
        # between consecutive stamps.
        ("points", "INSERT INTO readings (id, stamp, ms)"
                   " SELECT m, %(s)s::bigint + i * 1000 + (i * 7919 + m * 104729) %% 200,"
                   "        1000 + (i * 7919 + m * 104729) %% 200 - ((i - 1) * 7919 + m * 104729) %% 200"
                   "   FROM generate_series(1, %(meters)s) AS m,"
                   "        generate_series(0::bigint, %(n)s::bigint - 1) AS i",
         {"s": start, "n": points, "meters": meters}),
        ("primary key", "ALTER TABLE readings ADD PRIMARY KEY (id, stamp)", None),
        ("minute rollups", "INSERT INTO readings_minutely (id, stamp, events, sum_ms, min_ms, max_ms)"
                           " SELECT id, stamp - stamp %% 60000, count(*), sum(ms), min(ms), max(ms)"
                           "   FROM readings GROUP BY 1, 2", {}),
        ("hour rollups", "INSERT INTO readings_hourly (id, stamp, events, sum_ms, min_ms, max_ms)"
                         " SELECT id, stamp - stamp %% 3600000, sum(events), sum(sum_ms),"
                         "        min(min_ms), max(max_ms)"
                         "   FROM readings_minutely GROUP BY 1, 2", {}),
        ("trigger", "ALTER TABLE readings ENABLE TRIGGER blip_rollup", None),
        ("vacuum", "VACUUM (ANALYZE) readings, readings_minutely, readings_hourly", None),
    ]
    connection = cluster.connect(name)
    try:
        with connection.cursor() as cursor:
            for what, statement, params in steps:
                t0 = time.monotonic()
                cursor.execute(statement, params)
                note(f"  {what}: {time.monotonic() - t0:.1f} s")
    finally:
        connection.close()
    converted = None
    if layout == "single":
        schema = _transaction(cluster, name)
        t0 = time.monotonic()
        try:
            outcome = SyncStore(schema).apply_schema()
        finally:
            schema.close()
        converted = round(time.monotonic() - t0, 1)
        note(f"  converted in place in {converted} s: {outcome.describe()}")
        cluster.sql(name, "VACUUM (ANALYZE) readings")
    cluster.sql(
        name,
        "CREATE TABLE bench_dataset (days INTEGER, meters INTEGER, layout TEXT, conversion_s REAL,"
        " version INTEGER, created BIGINT);"
        " INSERT INTO bench_dataset VALUES (%s, %s, %s, %s, %s, %s)",
        (days, meters, layout, converted, VERSION, end),
    )


def months_of(start: int, end: int) -> list[Month]:
    """:return: every UTC month from ``start`` to ``end``."""
    month, last = month_of(start), month_of(end)
    found = []
    while month <= last:
        found.append(month)
        month = month.after(1)
    return found


def top_up(cluster: BenchCluster, name: str, meters: int = 1) -> tuple[int, int]:
    """
    Prepare the database as the daemon does at start (the month's
    partitions), then add 1 Hz points of every meter from its last one up
    to now (through the rollup trigger, as the daemon writes), so that
    routes relative to now find data however old the cache is.

    :return: the first and last stamps of meter 1.
    """
    schema = _transaction(cluster, name)
    try:
        SyncStore(schema).apply_schema()
    finally:
        schema.close()
    now = int(time.time() * 1000)
    cluster.sql(
        name,
        "INSERT INTO readings (id, stamp, ms)"
        " SELECT m, s, 1000 FROM generate_series(1, %(meters)s) AS m,"
        "   LATERAL generate_series((SELECT max(stamp) FROM readings WHERE id = m) + 1000,"
        "                           %(now)s::bigint, 1000) AS s",
        {"meters": meters, "now": now},
    )
    # The rollups' pages marked all-visible, as autovacuum keeps those of a
    # live database (the VACUUM after generating them may find an ANALYZE
    # of autovacuum's still holding an older snapshot, and mark none): a
    # range of them is then read from their primary key alone.
    cluster.sql(name, "VACUUM readings_minutely, readings_hourly")
    first, last = cluster.sql(name, "SELECT min(stamp), max(stamp) FROM readings WHERE id = 1")[0]
    return int(first), int(last)
