"""
The query benchmark's data: one meter blinking about once a second for a
number of days up to now, with its minute and hour rollups, generated inside
PostgreSQL and kept in the benchmarks' cluster between runs.

This is the one place of benchmark code that writes SQL of its own: bulk
generation (no index or rollup trigger during the load, both built after)
has no counterpart in the daemon.
"""

import time

from bench.harness import BenchCluster, note
from blip.db.sync_store import SyncStore

#: Changing how data is generated changes this, which regenerates caches.
VERSION = 2
METER = 1
DAY_MS = 86_400_000


def database_name(days: int) -> str:
    """:return: the database holding ``days`` of data."""
    return f"bench_{days}d_v{VERSION}"


def prepare(cluster: BenchCluster, days: int, regenerate: bool = False) -> tuple[str, int, int]:
    """
    Make sure the data set of ``days`` days exists (generating it the first
    time, which takes minutes for a year) and reaches up to now.

    :return: the database name and the first and last stamps.
    """
    name = database_name(days)
    if regenerate or not _complete(cluster, name):
        _generate(cluster, name, days)
    first, last = top_up(cluster, name)
    return name, first, last


def _complete(cluster: BenchCluster, name: str) -> bool:
    if not cluster.database_exists(name):
        return False
    return bool(cluster.sql(name, "SELECT 1 FROM pg_tables WHERE tablename = 'bench_dataset'"))


def _generate(cluster: BenchCluster, name: str, days: int) -> None:
    points = days * 86_400
    note(f"generating {points:,} points ({days} days at 1 Hz) in {name}; a year takes a few minutes, once")
    cluster.fresh_database(name)
    end = int(time.time()) * 1000
    start = end - days * DAY_MS
    connection = cluster.connect(name)
    t0 = time.monotonic()
    # The schema exactly as the daemon prepares it (tables, trigger, version).
    SyncStore(connection).apply_schema()
    note(f"  schema: {time.monotonic() - t0:.1f} s")
    steps = [
        ("load settings", "SET synchronous_commit = off; SET maintenance_work_mem = '1GB';"
                          " SET work_mem = '256MB'", None),
        ("bulk mode", "ALTER TABLE readings DROP CONSTRAINT readings_pkey;"
                      " ALTER TABLE readings DISABLE TRIGGER blip_rollup", None),
        # stamp_i = start + 1000 i + j(i) with j(i) in [0, 200): strictly
        # increasing; ms is the true gap between consecutive stamps.
        ("points", "INSERT INTO readings (id, stamp, ms)"
                   " SELECT %(m)s, %(s)s::bigint + i * 1000 + (i * 7919) %% 200,"
                   "        1000 + (i * 7919) %% 200 - ((i - 1) * 7919) %% 200"
                   "   FROM generate_series(0::bigint, %(n)s::bigint - 1) AS i",
         {"m": METER, "s": start, "n": points}),
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
        ("marker", "CREATE TABLE bench_dataset (days INTEGER, version INTEGER, created BIGINT);"
                   " INSERT INTO bench_dataset VALUES (%(d)s, %(v)s, %(c)s)",
         {"d": days, "v": VERSION, "c": end}),
    ]
    try:
        with connection.cursor() as cursor:
            for what, statement, params in steps:
                t0 = time.monotonic()
                cursor.execute(statement, params)
                note(f"  {what}: {time.monotonic() - t0:.1f} s")
    finally:
        connection.close()


def top_up(cluster: BenchCluster, name: str) -> tuple[int, int]:
    """
    Add 1 Hz points from the last one up to now (through the rollup
    trigger, as the daemon writes), so that routes relative to now find
    data however old the cache is.

    :return: the first and last stamps.
    """
    now = int(time.time() * 1000)
    cluster.sql(
        name,
        "INSERT INTO readings (id, stamp, ms)"
        " SELECT %(m)s, s, 1000 FROM generate_series("
        "   (SELECT max(stamp) FROM readings WHERE id = %(m)s) + 1000, %(now)s::bigint, 1000) AS s",
        {"m": METER, "now": now},
    )
    first, last = cluster.sql(name, "SELECT min(stamp), max(stamp) FROM readings WHERE id = %s", (METER,))[0]
    return int(first), int(last)
