"""
Disk benchmark: what a point costs on disk. On the query benchmark's data
(one meter blinking about once a second, with its minute and hour rollups),
the size of each table and index, per point and per day of one meter.

    .venv/bin/python -m bench.disk [--quick] [--days N]
"""

from bench import dataset
from bench.harness import BenchCluster, emit, note, parse_args

RELATIONS = ("readings", "readings_minutely", "readings_hourly")


def main() -> None:
    """Measure and print the JSON."""
    args = parse_args(
        __doc__.strip().splitlines()[0],
        [(["--days"], {"type": int, "help": "days of 1 Hz data [365; quick: 30]"})],
    )
    days = args.days or (30 if args.quick else 365)
    cluster = BenchCluster().start()
    try:
        name, first, last = dataset.prepare(cluster, days)
        cluster.sql(name, "VACUUM (ANALYZE) readings, readings_minutely, readings_hourly")
        points = int(cluster.sql(name, "SELECT count(*) FROM readings")[0][0])
        sizes = {}
        for relation in RELATIONS:
            table, indexes = cluster.sql(
                name,
                "SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)",
                (relation, relation),
            )[0]
            rows = int(cluster.sql(name, f"SELECT count(*) FROM {relation}")[0][0])
            sizes[relation] = {"rows": rows, "table_bytes": int(table), "index_bytes": int(indexes)}
        total = sum(s["table_bytes"] + s["index_bytes"] for s in sizes.values())
        readings = sizes["readings"]["table_bytes"] + sizes["readings"]["index_bytes"]
        span_days = (last - first) / dataset.DAY_MS
        note(f"{points:,} points over {span_days:.1f} days: {total / points:.1f} bytes each")
    finally:
        cluster.stop()
    emit({
        "benchmark": "disk",
        "mode": "quick" if args.quick else "full",
        "days": round(span_days, 2),
        "points": points,
        "points_per_day": round(points / span_days),
        "relations": sizes,
        "bytes_per_point": {
            "readings": round(readings / points, 1),
            "rollups": round((total - readings) / points, 2),
            "total": round(total / points, 1),
        },
        "mib_per_meter_year_at_1_hz": round(total / points * 86_400 * 365 / 2**20),
    })


if __name__ == "__main__":
    main()
