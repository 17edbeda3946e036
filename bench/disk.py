"""
Disk benchmark: what a point costs on disk. On the query benchmark's data
(meters blinking about once a second, with their minute and hour rollups),
the size of each table and index (readings: of all its partitions), per
point and per day of one meter; and what a year of one meter takes with
its raw points, and once --keep-raw has dropped them (its rollups alone).

    .venv/bin/python -m bench.disk [--quick] [--days N] [--meters N] [--layout monthly|single]
"""

from bench import dataset
from bench.harness import BenchCluster, emit, note, parse_args

RELATIONS = ("readings", "readings_minutely", "readings_hourly")
#: The sizes of a table, or of every partition of a partitioned one.
_SIZES = (
    "SELECT coalesce(sum(pg_table_size(relid)), pg_table_size(%(r)s::regclass)),"
    "       coalesce(sum(pg_indexes_size(relid)), pg_indexes_size(%(r)s::regclass))"
    "  FROM pg_partition_tree(%(r)s::regclass) WHERE isleaf"
)
MIB = 2**20


def main() -> None:
    """Measure and print the JSON."""
    args = parse_args(
        __doc__.strip().splitlines()[0],
        [
            (["--days"], {"type": int, "help": "days of 1 Hz data [365; quick: 30]"}),
            (["--meters"], {"type": int, "default": 1, "help": "meters blinking at 1 Hz [1]"}),
            (["--layout"], {"choices": dataset.LAYOUTS, "default": "monthly",
                            "help": "readings partitioned by month, or one converted plain table [monthly]"}),
        ],
    )
    days = args.days or (30 if args.quick else 365)
    cluster = BenchCluster().start()
    try:
        name, first, last = dataset.prepare(cluster, days, meters=args.meters, layout=args.layout)
        cluster.sql(name, "VACUUM (ANALYZE) readings, readings_minutely, readings_hourly")
        points = int(cluster.sql(name, "SELECT count(*) FROM readings")[0][0])
        sizes = {}
        for relation in RELATIONS:
            table, indexes = cluster.sql(name, _SIZES, {"r": relation})[0]
            rows = int(cluster.sql(name, f"SELECT count(*) FROM {relation}")[0][0])
            sizes[relation] = {"rows": rows, "table_bytes": int(table), "index_bytes": int(indexes)}
        total = sum(s["table_bytes"] + s["index_bytes"] for s in sizes.values())
        readings = sizes["readings"]["table_bytes"] + sizes["readings"]["index_bytes"]
        span_days = (last - first) / dataset.DAY_MS
        note(f"{points:,} points over {span_days:.1f} days: {total / points:.1f} bytes each")
    finally:
        cluster.stop()
    year = 86_400 * 365
    emit({
        "benchmark": "disk",
        "mode": "quick" if args.quick else "full",
        "layout": args.layout,
        "meters": args.meters,
        "days": round(span_days, 2),
        "points": points,
        "points_per_day": round(points / span_days),
        "relations": sizes,
        "bytes_per_point": {
            "readings": round(readings / points, 1),
            "rollups": round((total - readings) / points, 2),
            "total": round(total / points, 1),
        },
        "mib_per_meter_year_at_1_hz": {
            "with_raw_points": round(total / points * year / MIB),
            "rollups_only": round((total - readings) / points * year / MIB, 1),
        },
    })


if __name__ == "__main__":
    main()
