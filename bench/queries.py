"""
Query benchmark: on one meter's year of 1 Hz data (31.5 million points with
their rollups, generated once and cached under bench/state), for each route:
the latency of single requests, the requests/s of 50 concurrent keep-alive
clients, and next to them the floor: the very SQL the daemon ran for that
route (read from PostgreSQL's statement log), run straight through psycopg2,
and the partitions of readings it read.

    .venv/bin/python -m bench.queries [--quick] [--days N] [--meters N] [--layout monthly|single]
                                      [--seconds S] [--connections C] [--only NAME,...] [--profile]
                                      [--latency-only]

Quick mode uses 30 days of data and shorter runs; the full mode a year.
``--layout single`` reads a plain table converted in place (one partition
holding every point) rather than one partition per month; ``--meters 100
--days 1`` a day of 100 meters.
"""

import json
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Optional

from bench import dataset
from bench.harness import (
    APPLICATION,
    BenchCluster,
    Daemon,
    Profiler,
    Pty,
    cpu_seconds,
    emit,
    http_get,
    need_wrk,
    note,
    parse_args,
    percentiles,
)

DAY = 86_400_000
HOUR = 3_600_000
#: Routes that must answer within this many times the floor, and ms.
FLOOR_RATIO, MAX_P50_MS = 2.0, 30.0


@dataclass
class Route:
    """
    One request to measure.

    :param name: its name in the report.
    :param path: the request target.
    :param p50_target: whether the p50 targets (x floor, ms) apply.
    :param rps_target: requests/s it must reach with 50 clients, if any.
    :param rollups: whether it must read rollups rather than raw points.
    :param optional: a route that may not exist yet (reported as missing).
    """

    name: str
    path: str
    p50_target: bool = False
    rps_target: Optional[int] = None
    rollups: bool = False
    optional: bool = False


def routes(first: int, last: int, days: int) -> list[Route]:
    """
    :return: the routes to measure, relative to the data's last stamp: each
        legacy route in its multi-meter form (``/since/1/...``) and, where
        the single-meter original had it, in that form too (``/since/...``,
        named ``..._labitat``), then ``/api/v1``.
    """
    span = min(92, days)
    by_day = (last - span * DAY) - (last - span * DAY) % DAY
    by_hour = (last - 1000 * HOUR) - (last - 1000 * HOUR) % HOUR
    year = max(first, last - 365 * DAY)
    week = max(first, last - 7 * DAY)
    legacy = [
        # name, route, the rest of the path after the meter, whether the
        # single-meter original had the route, targets
        ("last", "last", "", True, {"rps_target": 3000}),
        ("last_20min", "last", "/1200000", True, {"p50_target": True}),
        ("since_2000", "since", f"/{last - DAY}", True, {"p50_target": True}),
        ("range_1h", "range", f"/{last - 2 * HOUR}/{last - HOUR}", True, {}),
        ("hourly_week", "hourly", f"/{week}/{last}", True, {"p50_target": True}),
        ("hourly_year", "hourly", f"/{year}/{last}", True, {"p50_target": True}),
        ("minutely_day", "minutely", f"/{last - DAY}/{last}", True, {}),
        (f"aggregate_{span}d_by_day", "aggregate", f"/{by_day}/{DAY}/{span}", True,
         {"p50_target": True, "rollups": True}),
        (f"aggregate_hourly_{span}d_by_day", "aggregate_hourly", f"/{by_day}/{DAY}/{span}", False,
         {"rollups": True}),
        ("aggregate_1000h_by_hour", "aggregate", f"/{by_hour}/{HOUR}/1000", True, {"rollups": True}),
        (f"aggregate_{span}d_by_day_unaligned", "aggregate", f"/{by_day + 12345}/{DAY}/{span}", False, {}),
        ("usage_day", "usage", f"/{DAY}", False, {}),
    ]
    found = []
    for name, route, rest, single, targets in legacy:
        found.append(Route(name, f"/{route}/1{rest}", **targets))
        if single:
            found.append(Route(f"{name}_labitat", f"/{route}{rest}"))
    return found + [
        Route("v1_meters", "/api/v1/meters", optional=True),
        Route("v1_meter", "/api/v1/meters/1", optional=True),
        Route("v1_power_year", f"/api/v1/meters/1/power?from={year}&to={last}", optional=True),
        Route("v1_power_day", f"/api/v1/meters/1/power?from={last - DAY}&to={last}", optional=True),
        Route(f"v1_energy_{span}d_by_day",
              f"/api/v1/meters/1/energy?from={by_day}&to={last}&period=day", optional=True),
        Route("v1_readings_1h", f"/api/v1/meters/1/readings?from={last - HOUR}&to={last}", optional=True),
    ]


class StatementLog:
    """
    PostgreSQL's JSON statement log, switched on while we look: what SQL
    the daemon sends for one request. psycopg2 binds parameters on the
    client, so the log holds the exact text, values included. A statement
    the daemon prepared is logged as its EXECUTE, with the PREPARE in the
    entry's detail: those are kept in :data:`PREPARED`.
    """

    def __init__(self, cluster: BenchCluster, dbname: str) -> None:
        self.cluster = cluster
        self.dbname = dbname
        self.connection = cluster.connect(dbname)
        self.markers = 0

    def switch(self, on: bool) -> None:
        """Log every statement, or stop."""
        with self.connection.cursor() as cursor:
            cursor.execute("ALTER SYSTEM SET log_statement = 'all'" if on else "ALTER SYSTEM RESET log_statement")
            cursor.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)  # backends read the new setting before their next statement

    def statements_of(self, request: Any) -> list[str]:
        """
        :param request: makes the request whose SQL is wanted.
        :return: the statements the daemon ran meanwhile.
        """
        log = self.cluster.statement_log
        offset = log.stat().st_size
        request()
        self.markers += 1
        marker = f"blipbench marker {self.markers}"
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT %s", (marker,))
        deadline = time.monotonic() + 10
        while True:
            with open(log, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
            if marker in text or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        found = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = entry.get("message", "")
            if (entry.get("dbname") == self.dbname and entry.get("application_name") != APPLICATION
                    and message.startswith("statement: ")):
                statement = message[len("statement: "):]
                if statement.startswith("PREPARE "):
                    continue
                detail = entry.get("detail", "")
                if statement.startswith("EXECUTE ") and detail.startswith("prepare: "):
                    PREPARED[statement.split()[1]] = detail[len("prepare: "):]
                found.append(statement)
        return found

    def close(self) -> None:
        """Close our connection."""
        self.connection.close()


#: The statements the daemon prepared, by name: ``PREPARE <name> AS ...``.
PREPARED: dict[str, str] = {}


def prepare(cursor: Any, statements: list[str]) -> None:
    """Prepare the statements that ``statements`` execute, as the daemon did."""
    for sql in statements:
        if sql.startswith("EXECUTE "):
            cursor.execute(PREPARED[sql.split()[1]])


def tables_read(statements: list[str]) -> list[str]:
    """:return: the tables and views the statements read from."""
    names = set()
    for sql in statements:
        if sql.startswith("EXECUTE "):
            sql = PREPARED[sql.split()[1]]
        names.update(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)", sql, re.IGNORECASE))
    return sorted(names)


def partitions_read(cluster: BenchCluster, dbname: str, statements: list[str]) -> list[str]:
    """
    :return: the partitions of readings the statements read (EXPLAIN
        ANALYZE: those pruned, when planned or when run, are not).
    """
    found: set[str] = set()

    def walk(plan: dict[str, Any]) -> None:
        relation = plan.get("Relation Name", "")
        if relation.startswith("readings_") and relation not in ROLLUP_TABLES and plan.get("Actual Loops"):
            found.add(relation)
        for child in plan.get("Plans", []):
            walk(child)

    connection = cluster.connect(dbname)
    try:
        with connection.cursor() as cursor:
            prepare(cursor, statements)
            for sql in statements:
                if not sql.lstrip().upper().startswith(("SELECT", "WITH", "EXECUTE")):
                    continue
                cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
                walk(cursor.fetchone()[0][0]["Plan"])
    finally:
        connection.close()
    return sorted(found)


ROLLUP_TABLES = ("readings_minutely", "readings_hourly", "readings_dropped")


def timed_requests(port: int, path: str, count: int, budget: float) -> tuple[list[float], int, bytes]:
    """
    ``count`` requests one after another on one keep-alive connection
    (stopping early after ``budget`` seconds).

    :return: their latencies in ms, the last status and body.
    """
    latencies = []
    status, body = 0, b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        for _ in range(count):
            t0 = time.perf_counter()
            status, body = http_get(sock, f"127.0.0.1:{port}", path)
            latencies.append((time.perf_counter() - t0) * 1000)
            if time.monotonic() - started > budget:
                break
    return latencies, status, body


def settle(daemon: Daemon, timeout: float = 30.0) -> None:
    """
    Wait until every connection of the daemon's pool answers again: the
    end of a load run cuts requests short, whose cancelled queries may cost
    the pool a connection for a moment.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        while True:
            answers = [http_get(sock, f"127.0.0.1:{daemon.port}", "/api/v1/meters/1")[0] for _ in range(8)]
            if all(code == 200 for code in answers) or time.monotonic() > deadline:
                return
            time.sleep(0.2)


def timed_floor(cluster: BenchCluster, dbname: str, statements: list[str], count: int, budget: float) -> list[float]:
    """
    :return: latencies in ms of running ``statements`` (and fetching every
        row) ``count`` times through psycopg2.
    """
    latencies = []
    connection = cluster.connect(dbname)
    try:
        with connection.cursor() as cursor:
            prepare(cursor, statements)
            started = time.monotonic()
            for _ in range(count):
                t0 = time.perf_counter()
                for sql in statements:
                    cursor.execute(sql)
                    if cursor.description:
                        cursor.fetchall()
                latencies.append((time.perf_counter() - t0) * 1000)
                if time.monotonic() - started > budget:
                    break
    finally:
        connection.close()
    return latencies


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk(url: str, connections: int, seconds: float) -> dict[str, Any]:
    """
    :return: requests/s and latency percentiles of ``connections``
        keep-alive clients hammering ``url`` (wrk, one thread).
    """
    done = subprocess.run(
        [need_wrk(), "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "30s", "--latency", url],
        capture_output=True, text=True,
    )
    out = done.stdout

    def latency(label: str) -> Optional[float]:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
        return round(float(match.group(1)) * _UNITS[match.group(2)], 3) if match else None

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": round(float(rps.group(1))) if rps else None,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else None,
    }


def measure(route: Route, daemon: Daemon, cluster: BenchCluster, dbname: str, statements: list[str],
            args: Any) -> dict[str, Any]:
    """Measure one route; return its figures."""
    count, budget = (20, 1.5) if args.quick else (300, 8.0)
    settle(daemon)
    latencies, status, body = timed_requests(daemon.port, route.path, count, budget)
    result: dict[str, Any] = {"path": route.path, "status": status, "bytes": len(body)}
    try:
        answer = json.loads(body)
        if isinstance(answer, list):
            result["rows"] = len(answer)
    except ValueError:
        pass
    result["latency_ms"] = percentiles(latencies)
    if args.latency_only:
        return result
    result["sql"] = statements
    result["tables"] = tables_read(statements)
    result["partitions_read"] = partitions_read(cluster, dbname, statements)
    if statements:
        floor = percentiles(timed_floor(cluster, dbname, statements, count, budget))
        result["floor_latency_ms"] = floor
        if floor["p50"]:
            result["p50_over_floor"] = round(result["latency_ms"]["p50"] / floor["p50"], 2)
    with Profiler(daemon.pid, f"queries-{route.name}", args.profile) as profiler:
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        load = wrk(daemon.url(route.path), args.connections, args.seconds)
        cpu = cpu_seconds(daemon.pid) - cpu0
        requests = (load["requests_per_s"] or 0) * (time.monotonic() - t0)
        # CPU per request hardly depends on what else the machine runs.
        load["daemon_cpu_us_per_request"] = round(1e6 * cpu / requests, 1) if requests else None
        result["concurrent"] = {"connections": args.connections, **load}
    if profiler.summary is not None:
        result["profile_self_percent"] = profiler.summary["self_percent"][:10]
        result["profile_file"] = profiler.summary["file"]
    checks = {}
    p50 = result["latency_ms"]["p50"]
    if route.p50_target:
        floor_p50 = result.get("floor_latency_ms", {}).get("p50")
        checks["p50_within_2x_floor"] = bool(floor_p50) and p50 <= FLOOR_RATIO * floor_p50
        checks["p50_within_30ms"] = p50 <= MAX_P50_MS
    if route.rollups:
        checks["uses_rollups"] = bool(statements) and "readings" not in result["tables"]
    if route.rps_target:
        rps = result["concurrent"]["requests_per_s"] or 0
        checks[f"at_least_{route.rps_target}_requests_per_s"] = rps >= route.rps_target
    if checks:
        result["targets_met"] = checks
    return result


def under_load(heavy: Route, light: list[Route], daemon: Daemon, args: Any) -> dict[str, Any]:
    """
    Single requests to light routes while 50 clients hammer a heavy one:
    whether one slow query holds up everyone else.
    """
    seconds = max(args.seconds, 4.0)
    load = subprocess.Popen(
        [need_wrk(), "-t1", f"-c{args.connections}", f"-d{seconds:.0f}s", "--timeout", "30s",
         daemon.url(heavy.path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        figures: dict[str, Any] = {"load": heavy.path}
        for route in light:
            latencies, status, _ = timed_requests(daemon.port, route.path, 50, (seconds - 1.5) / len(light))
            figures[route.name] = {"status": status, "latency_ms": percentiles(latencies)}
    finally:
        load.wait()
    return figures


def statements_of(
    chosen: list[Route], daemon: Daemon, cluster: BenchCluster, dbname: str, unlogged: bool
) -> tuple[dict[str, list[str]], list[str]]:
    """
    Ask each route once, with PostgreSQL's statement log on unless
    ``unlogged``.

    :return: the statements the daemon ran for each route (by name), and
        the optional routes that do not exist yet.
    """
    log = None if unlogged else StatementLog(cluster, dbname)
    sql: dict[str, list[str]] = {}
    missing = []
    if log is not None:
        log.switch(True)
    try:
        for route in chosen:
            answer: dict[str, Any] = {}

            def once() -> None:
                answer["latency"], answer["status"], answer["body"] = timed_requests(daemon.port, route.path, 1, 60)

            if log is None:
                once()
                sql[route.name] = []
            else:
                sql[route.name] = log.statements_of(once)
            if route.optional and answer["status"] == 404:
                missing.append(route.name)
    finally:
        if log is not None:
            log.switch(False)
            log.close()
    return sql, missing


def main() -> None:
    """Run the benchmark and print its JSON."""
    args = parse_args(
        __doc__.strip().splitlines()[0],
        [
            (["--days"], {"type": int, "help": "days of 1 Hz data [365; quick: 30]"}),
            (["--meters"], {"type": int, "default": 1, "help": "meters blinking at 1 Hz [1]"}),
            (["--layout"], {"choices": dataset.LAYOUTS, "default": "monthly",
                            "help": "readings partitioned by month, or one converted plain table [monthly]"}),
            (["--seconds"], {"type": float, "help": "seconds of concurrent load per route [10; quick: 2]"}),
            (["--connections"], {"type": int, "default": 50, "help": "concurrent keep-alive clients [50]"}),
            (["--only"], {"help": "comma-separated route names to measure"}),
            (["--regenerate"], {"action": "store_true", "help": "generate the data again"}),
            (["--latency-only"], {"action": "store_true",
                                  "help": "single requests only: no SQL floor, no concurrent load"}),
        ],
    )
    days = args.days or (30 if args.quick else 365)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    need_wrk()
    cluster = BenchCluster().start()
    pty = Pty.open()
    daemon: Optional[Daemon] = None
    try:
        dbname, first, last = dataset.prepare(cluster, days, args.regenerate, args.meters, args.layout)
        daemon = Daemon("queries", ["--db", cluster.dsn(dbname), "--serial", pty.path])
        daemon.start(r"database ready")
        chosen = [r for r in routes(first, last, days) if not args.only or r.name in args.only.split(",")]
        sql, missing = statements_of(chosen, daemon, cluster, dbname, args.latency_only)
        results: dict[str, Any] = {}
        for route in chosen:
            if route.name in missing:
                results[route.name] = {"path": route.path, "missing": True}
                continue
            note(f"measuring {route.name}: {route.path}")
            results[route.name] = measure(route, daemon, cluster, dbname, sql[route.name], args)
        heavy = next((r for r in chosen if r.name.startswith("aggregate_") and r.name.endswith("_by_day")), None)
        light = [r for r in chosen if r.name in ("last", "since_2000")]
        if heavy is not None and light and not args.latency_only:
            results["under_load"] = under_load(heavy, light, daemon, args)
        points = cluster.sql(dbname, "SELECT count(*) FROM readings")[0][0]
        partitions = cluster.sql(dbname, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings'::regclass")
        emit({
            "benchmark": "queries",
            "mode": "quick" if args.quick else "full",
            **dataset.described(cluster, dbname),
            "partitions": partitions[0][0],
            "points": points,
            "routes": results,
            "p50_p99_ms": {
                name: [figures["latency_ms"]["p50"], figures["latency_ms"]["p99"]]
                for name, figures in results.items() if "latency_ms" in figures
            },
            "targets": {"p50_over_floor": FLOOR_RATIO, "p50_ms": MAX_P50_MS, "last_requests_per_s": 3000},
        })
    finally:
        if daemon is not None:
            daemon.stop()
        pty.close()
        cluster.stop()


if __name__ == "__main__":
    main()
