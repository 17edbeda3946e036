"""
Retention benchmark: the time to drop the raw points of a year (quick: a
month) of one meter at 1 Hz, as --keep-raw drops them (each month's
partition detached and dropped, one per transaction), and for contrast as
a DELETE of the same points from one big partition (a plain table
converted in place) would, with the VACUUM that gives their space back to
the table; and the disk space before and after. Each run generates its
two data sets afresh (13 months; quick: 2) in databases of its own.

    .venv/bin/python -m bench.retention [--quick] [--months N]
"""

import time
from typing import Any

from bench import dataset
from bench.harness import BenchCluster, emit, note, parse_args
from blip.db.partitions import drop_partition, month_of, older_than, read_partitions
from blip.db.program import run_sync

_SIZE = (
    "SELECT sum(pg_table_size(relid) + pg_indexes_size(relid))"
    "  FROM pg_partition_tree('readings'::regclass) WHERE isleaf"
)
MIB = 2**20


def size(cluster: BenchCluster, name: str) -> int:
    """:return: the bytes of readings, every partition with its index."""
    return int(cluster.sql(name, _SIZE)[0][0])


def dropped_by_partitions(cluster: BenchCluster, name: str, cutoff: int) -> dict[str, Any]:
    """Detach and drop every partition wholly before ``cutoff``, timed."""
    connection = cluster.connect(name)
    connection.autocommit = False
    each = []
    rows = 0
    started = time.monotonic()
    try:
        with connection, connection.cursor() as cursor:
            old = older_than(run_sync(cursor, read_partitions()), cutoff)
        for partition in old:
            t0 = time.monotonic()
            with connection, connection.cursor() as cursor:
                done = run_sync(cursor, drop_partition(partition.name, cutoff, int(time.time() * 1000)))
            each.append(time.monotonic() - t0)
            rows += done.rows if done else 0
    finally:
        connection.close()
    return {
        "partitions": len(each),
        "points": rows,
        "seconds": round(time.monotonic() - started, 2),
        "longest_transaction_s": round(max(each, default=0.0), 3),
    }


def deleted(cluster: BenchCluster, name: str, cutoff: int) -> dict[str, Any]:
    """DELETE the points before ``cutoff``, then VACUUM, timed."""
    connection = cluster.connect(name)
    try:
        with connection.cursor() as cursor:
            t0 = time.monotonic()
            cursor.execute("DELETE FROM readings WHERE stamp < %s", (cutoff,))
            rows = cursor.rowcount
            t1 = time.monotonic()
            cursor.execute("VACUUM readings")
            t2 = time.monotonic()
    finally:
        connection.close()
    return {"points": rows, "delete_s": round(t1 - t0, 2), "vacuum_s": round(t2 - t1, 2)}


def main() -> None:
    """Measure and print the JSON."""
    args = parse_args(
        __doc__.strip().splitlines()[0],
        [(["--months"], {"type": int, "help": "months of 1 Hz data, the oldest all but one dropped [13; quick: 2]"})],
    )
    months = args.months or (2 if args.quick else 13)
    days = months * 31
    cluster = BenchCluster().start()
    report: dict[str, Any] = {"benchmark": "retention", "mode": "quick" if args.quick else "full"}
    try:
        for layout in dataset.LAYOUTS:
            name = f"bench_retention_{layout}"
            dataset.generate(cluster, name, days, 1, layout)
            first = int(cluster.sql(name, "SELECT min(stamp) FROM readings")[0][0])
            # Keep the newest month (and this one): drop from the first on.
            cutoff = month_of(int(time.time() * 1000)).after(-1).start
            points = int(cluster.sql(name, "SELECT count(*) FROM readings WHERE stamp < %s", (cutoff,))[0][0])
            before = size(cluster, name)
            note(f"{layout}: dropping {points:,} points before {cutoff} ms (from {first})")
            figures: dict[str, Any] = {"points_before_cutoff": points, "readings_mib_before": round(before / MIB)}
            if layout == "monthly":
                figures["detach_and_drop"] = dropped_by_partitions(cluster, name, cutoff)
            else:
                figures["delete"] = deleted(cluster, name, cutoff)
            figures["readings_mib_after"] = round(size(cluster, name) / MIB)
            report[layout] = figures
            cluster.sql("postgres", f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        cluster.stop()
    emit(report)


if __name__ == "__main__":
    main()
