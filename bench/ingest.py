"""
Ingest benchmark: Arduino lines written into a pty as fast as the daemon
reads them (or at a set rate), for a fixed time; then how many reached the database (with their
rollups), how far behind it was when writing stopped, and what the daemon
used meanwhile. The points go to readings partitioned by month, or with
``--layout single`` to a plain table the daemon converted at start (one
partition holding every point); into an empty database, or with
``--dataset-days N`` into the query benchmark's data set of N days (of
``--dataset-meters``), as meters 1001 and up, removed afterwards.

    .venv/bin/python -m bench.ingest [--quick] [--seconds S] [--meters N] [--rate N]
                                     [--layout monthly|single] [--dataset-days N [--dataset-meters M]]
                                     [--profile]
"""

import threading
import time
from typing import Any

from bench import dataset
from bench.harness import (
    BenchCluster,
    Daemon,
    Profiler,
    Pty,
    cpu_seconds,
    emit,
    note,
    parse_args,
    rss_kib,
)
from tests.originals import plain_sql

DATABASE = "bench_ingest"
#: Sustained blips per second the daemon must take end to end.
TARGET = 20000


#: The first meter of the lines written into a data set of the query benchmark.
DATASET_METERS = 1001


def lines_block(meters: int, count: int, first: int = 1) -> bytes:
    """
    :return: ``count`` multi-meter Arduino lines, meters from ``first``
        taking turns, with intervals that vary like a household's.
    """
    return b"".join(
        b"%d %d\n" % (first + i % meters, 200 + (i * 7919) % 5000) for i in range(count)
    )


def rows(cluster: BenchCluster, database: str, first: int) -> int:
    """:return: the points of meters from ``first`` on committed so far."""
    return int(cluster.sql(database, "SELECT count(*) FROM readings WHERE id >= %s", (first,))[0][0])


def main() -> None:
    """Run the benchmark and print its JSON."""
    args = parse_args(
        __doc__.strip().splitlines()[0],
        [
            (["--seconds"], {"type": float, "help": "how long to write [30; quick: 8]"}),
            (["--meters"], {"type": int, "default": 500, "help": "meters the lines take turns between [500]"}),
            (["--rate"], {"type": int, "help": "write this many lines/s instead of as fast as the daemon reads"}),
            (["--layout"], {"choices": dataset.LAYOUTS, "default": "monthly",
                            "help": "readings partitioned by month, or one converted plain table [monthly]"}),
            (["--dataset-days"], {"type": int, "help": "write into the query benchmark's data set of N days"}),
            (["--dataset-meters"], {"type": int, "default": 1, "help": "... of N meters [1]"}),
        ],
    )
    seconds = args.seconds or (8.0 if args.quick else 30.0)
    cluster = BenchCluster().start()
    if args.dataset_days:
        database, first_meter = dataset.prepare(
            cluster, args.dataset_days, meters=args.dataset_meters, layout=args.layout
        )[0], DATASET_METERS
        _remove(cluster, database, first_meter)
        points_before = int(cluster.sql(database, "SELECT sum(events) FROM readings_hourly")[0][0])
    else:
        database, first_meter, points_before = DATABASE, 1, 0
        cluster.fresh_database(database)
        if args.layout == "single":
            connection = cluster.connect(database)
            try:
                connection.cursor().execute(plain_sql())
            finally:
                connection.close()
    pty = Pty.open()
    daemon = Daemon("ingest", ["--db", cluster.dsn(database), "--serial", pty.path])
    try:
        daemon.start(r"database ready", r"reading serial device")
        pty.write_all(b"CONNECTED bench\n")  # the first line may be partial: dropped
        block = lines_block(args.meters, 2000, first_meter)
        per_block = block.count(b"\n")
        # Paced writes go round a doubled block, so every meter keeps blinking.
        twice = block + block
        starts = [0] + [i + 1 for i, byte in enumerate(twice) if byte == 0x0A]
        position = 0
        rss: list[int] = [rss_kib(daemon.pid)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                rss.append(rss_kib(daemon.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        note(f"writing lines of {args.meters} meters for {seconds:.0f} s")
        with Profiler(daemon.pid, "ingest", args.profile) as profiler:
            cpu0, pg0, t0 = cpu_seconds(daemon.pid), cluster.cpu_seconds(), time.monotonic()
            sampler.start()
            written = 0
            while time.monotonic() - t0 < seconds:
                if args.rate:
                    due = min(per_block, int(args.rate * (time.monotonic() - t0)) - written)
                    if due <= 0:
                        time.sleep(0.002)
                        continue
                    pty.write_all(twice[starts[position]:starts[position + due]])
                    position = (position + due) % per_block
                    written += due
                else:
                    pty.write_all(block)
                    written += per_block
            elapsed = time.monotonic() - t0
            committed_at_stop = rows(cluster, database, first_meter)
            cpu1, pg1 = cpu_seconds(daemon.pid), cluster.cpu_seconds()
            # Lag: until everything written is committed (or nothing moves
            # for 10 s, which means points were lost).
            last_change, seen = time.monotonic(), committed_at_stop
            while seen < written and time.monotonic() - last_change < 10:
                time.sleep(0.05)
                now = rows(cluster, database, first_meter)
                if now != seen:
                    seen, last_change = now, time.monotonic()
            lag_s = time.monotonic() - t0 - elapsed
        stop.set()
        sampler.join()
        rss.append(rss_kib(daemon.pid))
        minute_events, hour_events, minute_rows, hour_rows = cluster.sql(
            database,
            "SELECT (SELECT coalesce(sum(events), 0) FROM readings_minutely WHERE id >= %(m)s),"
            "       (SELECT coalesce(sum(events), 0) FROM readings_hourly WHERE id >= %(m)s),"
            "       (SELECT count(*) FROM readings_minutely WHERE id >= %(m)s),"
            "       (SELECT count(*) FROM readings_hourly WHERE id >= %(m)s)",
            {"m": first_meter},
        )[0]
        stored = rows(cluster, database, first_meter)
        # What the points take on disk as the daemon writes them (many
        # meters at once: index pages split in the middle, unlike the bulk
        # built index of the disk benchmark).
        table_bytes = index_bytes = 0
        if not args.dataset_days:
            cluster.sql(database, "VACUUM (ANALYZE) readings")
            table_bytes, index_bytes = cluster.sql(
                database,
                "SELECT sum(pg_table_size(relid)), sum(pg_indexes_size(relid))"
                "  FROM pg_partition_tree('readings') WHERE isleaf",
            )[0]
        third = max(1, len(rss) // 3)
        report: dict[str, Any] = {
            "benchmark": "ingest",
            "mode": "quick" if args.quick else "full",
            "seconds": round(elapsed, 2),
            "layout": args.layout,
            "into_points": points_before,
            "meters": args.meters,
            "rate_asked": args.rate,
            "lines_written": written,
            "lines_per_s_written": round(written / elapsed),
            "rows_committed_while_writing": committed_at_stop,
            "rows_per_s_committed": round(committed_at_stop / elapsed),
            "rows_per_s_end_to_end": round(stored / (elapsed + lag_s)),
            "lag_at_end_rows": written - committed_at_stop,
            "lag_at_end_s": round(lag_s, 2),
            "rows_stored": stored,
            "rows_lost": written - stored,
            "rollups_consistent": int(minute_events) == stored == int(hour_events),
            "rollup_rows": {"minutely": minute_rows, "hourly": hour_rows},
            "readings_bytes_per_point": {
                "table": round(int(table_bytes) / max(stored, 1), 1),
                "index": round(int(index_bytes) / max(stored, 1), 1),
            },
            "daemon_cpu_percent": round(100 * (cpu1 - cpu0) / elapsed, 1),
            "daemon_cpu_us_per_line": round(1e6 * (cpu1 - cpu0) / written, 2),
            "postgres_cpu_percent": round(100 * (pg1 - pg0) / elapsed, 1),
            "daemon_rss_kib": {
                "start": rss[0],
                "max": max(rss),
                "end": rss[-1],
                "first_third_mean": round(sum(rss[:third]) / third),
                "last_third_mean": round(sum(rss[-third:]) / third),
            },
            "target_blips_per_s": TARGET,
            "memory_flat": rss[-1] <= 1.1 * rss[0],
            "meets_target": stored == written and committed_at_stop / elapsed >= TARGET and rss[-1] <= 1.1 * rss[0],
        }
        if profiler.summary is not None:
            report["profile"] = profiler.summary
        emit(report)
    finally:
        daemon.stop()
        pty.close()
        if args.dataset_days:
            _remove(cluster, database, first_meter)
        cluster.stop()


def _remove(cluster: BenchCluster, database: str, first: int) -> None:
    """Take the points of meters from ``first`` on, and their rollups, out of a data set."""
    for table in ("readings", "readings_minutely", "readings_hourly", "meters"):
        cluster.sql(database, f"DELETE FROM {table} WHERE id >= %s", (first,))


if __name__ == "__main__":
    main()
