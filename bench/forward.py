"""
Forwarding benchmark: a logger without a database (``--upstream``) reads a
backlog of blips while its central server is away, then the central
server starts and the backlog drains from the logger's spool into it;
how fast, and whether every blip arrived once.

    .venv/bin/python -m bench.forward [--quick] [--points N] [--meters N] [--profile]
"""

import time
from typing import Any

from bench.harness import (
    STATE,
    BenchCluster,
    Daemon,
    Profiler,
    Pty,
    cpu_seconds,
    emit,
    note,
    parse_args,
)
from blip.db.tokens import CREATE, new_token
from blip.ingest.spool import HEADER, RECORD

DATABASE = "bench_forward"
#: Lines written into the pty per second while the backlog builds up (the
#: stamps of a meter must not run ahead of the clock by minutes).
WRITE_RATE = 10_000


def stored(cluster: BenchCluster) -> int:
    """:return: the points the central server has."""
    return int(cluster.sql(DATABASE, "SELECT count(*) FROM readings")[0][0])


def main() -> None:
    """Run the benchmark and print its JSON."""
    args = parse_args(
        __doc__.strip().splitlines()[0],
        [
            (["--points"], {"type": int, "help": "the backlog, in points [200000; quick: 50000]"}),
            (["--meters"], {"type": int, "default": 1, "help": "meters the lines take turns between [1]"}),
        ],
    )
    points = args.points or (50_000 if args.quick else 200_000)
    cluster = BenchCluster().start()
    cluster.fresh_database(DATABASE)
    central = Daemon("central", ["--db", cluster.dsn(DATABASE)])
    pty = Pty.open()
    token_file = STATE / "forward.token"
    pi = Daemon(
        "pi",
        ["--serial", pty.path, "--upstream", f"http://127.0.0.1:{central.port}", "--token-file", str(token_file)],
        listens=False,
    )
    try:
        # The central server prepares its database once, for the token.
        central.start("database ready")
        made = new_token("bench", list(range(1, args.meters + 1)), int(time.time() * 1000))
        cluster.sql(DATABASE, CREATE, made.row)
        token_file.write_text(made.token + "\n")
        central.stop()
        pi.start("reading serial device", "forwarding points to")
        spool = STATE / "daemon-pi" / "upstream-spool"
        note(f"writing {points} blips while the central server is away")
        pty.write_all(b"CONNECTED bench\n")
        t0 = time.monotonic()
        for start in range(0, points, 1000):
            due = t0 + start / WRITE_RATE
            time.sleep(max(0.0, due - time.monotonic()))
            pty.write_all(b"".join(b"%d 100\n" % (1 + i % args.meters) for i in range(start, min(points, start + 1000))))
        expected = len(HEADER) + RECORD.size * points
        deadline = time.monotonic() + 120
        while not (spool.exists() and spool.stat().st_size >= expected):
            if time.monotonic() > deadline:
                raise SystemExit(f"the spool never held {points} points")
            time.sleep(0.1)
        note("starting the central server: the backlog drains")
        central.start("database ready")
        with Profiler(pi.pid, "forward", args.profile) as profiler:
            cpu0 = cpu_seconds(pi.pid)
            while stored(cluster) == 0:
                time.sleep(0.01)
            first = time.monotonic()
            last_change, seen = first, 0
            while seen < points and time.monotonic() - last_change < 60:
                time.sleep(0.05)
                now = stored(cluster)
                if now != seen:
                    seen, last_change = now, time.monotonic()
            drained = last_change - first
            cpu1 = cpu_seconds(pi.pid)
        report: dict[str, Any] = {
            "benchmark": "forward",
            "mode": "quick" if args.quick else "full",
            "points": points,
            "meters": args.meters,
            "points_stored": seen,
            "points_lost": points - seen,
            "drain_s": round(drained, 2),
            "points_per_s": round(seen / drained) if drained else None,
            "logger_cpu_percent": round(100 * (cpu1 - cpu0) / drained) if drained else None,
            "spool_left": spool.exists(),
        }
        if profiler.summary is not None:
            report["profile"] = profiler.summary
        emit(report)
    finally:
        pi.stop()
        central.stop()
        pty.close()
        cluster.stop()


if __name__ == "__main__":
    main()
