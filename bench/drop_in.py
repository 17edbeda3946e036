"""
Benchmark of moving onto blipserver with a big original database: a year of
1 Hz readings (31.5 million rows) of the original multi-meter layout is
upgraded, its rollups checked and rebuilt, exported to CSV and imported
back as another meter, each by the ``blip`` command. Prints JSON: seconds
and peak memory of each step.

    .venv/bin/python bench/drop_in.py [--rows N] [--db DSN]

Without --db it runs its own PostgreSQL cluster in a temporary folder. With
--db (a maintenance database such as ``dbname=postgres``) it creates a
database of its own there and drops it afterwards. The original layout is
filled in bulk with its trigger disabled and its hourly rollups computed as
that trigger would have (filling through it row by row takes 13 minutes
for a year).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extensions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blip.db.embedded import Cluster  # noqa: E402
from tests import originals  # noqa: E402
from tests.conftest import sql_at as sql  # noqa: E402

#: 2023-01-01 00:00 UTC.
START = 1_672_531_200_000


def blip(dsn: str, *args: str, stdout=None) -> dict:
    """
    Run the ``blip`` command.

    :return: its exit status, seconds and peak memory in MiB.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BLIP_")}
    environment["BLIP_DB"] = dsn
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "blip", *args], stdout=stdout or subprocess.DEVNULL,
        env=environment, cwd=ROOT,
    )
    _, status, usage = os.wait4(child.pid, 0)
    return {
        "status": os.waitstatus_to_exitcode(status),
        "seconds": round(time.monotonic() - started, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def fill(dsn: str, rows: int) -> float:
    """
    Lay out the original multi-meter database with ``rows`` readings of
    meter 1, one a second from :data:`START`.

    :return: the seconds it took.
    """
    started = time.monotonic()
    originals.build(dsn, originals.MULTI)
    sql(dsn, "ALTER TABLE readings DISABLE TRIGGER monthly_aggregate")
    step = 5_000_000
    for first in range(0, rows, step):
        sql(dsn,
            "INSERT INTO readings (id, stamp, ms)"
            " SELECT 1, %s + i * 1000 + (i * 7919) %% 200, 900 + (i * 104729) %% 300"
            "   FROM generate_series(%s::bigint, %s::bigint) i",
            (START, first, min(first + step, rows) - 1))
    sql(dsn,
        "INSERT INTO readings_hourly (id, stamp, events, sum_ms, min_ms, max_ms)"
        " SELECT id, stamp - stamp %% 3600000, count(*), sum(ms), min(ms), max(ms)"
        "   FROM readings GROUP BY 1, 2")
    sql(dsn, "ALTER TABLE readings ENABLE TRIGGER monthly_aggregate")
    sql(dsn, "VACUUM ANALYZE")
    return time.monotonic() - started


def private_cluster(folder: Path) -> Cluster:
    """Start a PostgreSQL cluster in ``folder``."""
    folder.chmod(0o755)
    cluster = Cluster.at(folder / "pg")
    cluster.prepare_folders()
    for argv in (cluster.initdb_argv(),):
        done = cluster.run_sync(argv)
        if done.returncode:
            sys.exit(f"initdb failed: {done.stdout}{done.stderr}")
    cluster.configure()
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write("fsync = off\nmax_wal_size = 4GB\n")
    cluster.prepare_folders()
    done = cluster.run_sync(cluster.start_argv())
    if done.returncode:
        sys.exit(f"starting PostgreSQL failed: {done.stdout}{done.stderr}")
    return cluster


def main() -> None:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=365 * 86400, help="readings (default: a year at 1 Hz)")
    parser.add_argument("--db", help="maintenance database to create the benchmark's database on")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="blip-bench-"))
    cluster = None
    try:
        if args.db:
            server = args.db
        else:
            cluster = private_cluster(folder)
            server = cluster.dsn("postgres")
        name = "blip_bench_" + uuid.uuid4().hex[:8]
        sql(server, f"CREATE DATABASE {name}")
        dsn = psycopg2.extensions.make_dsn(server, dbname=name)
        try:
            result = {"rows": args.rows, "fill_seconds": round(fill(dsn, args.rows), 1)}
            result["upgrade"] = blip(dsn, "upgrade")
            result["check"] = blip(dsn, "rollups", "check")
            result["rebuild"] = blip(dsn, "rollups", "rebuild")
            csv = folder / "points.csv"
            with open(csv, "wb") as out:
                result["export"] = blip(dsn, "export", "--meter", "1", stdout=out)
            result["export"]["mib"] = round(csv.stat().st_size / 2**20, 1)
            result["import"] = blip(dsn, "import", str(csv), "--meter", "2")
            result["check_after_import"] = blip(dsn, "rollups", "check")
            result["database_mib"] = round(
                sql(dsn, "SELECT pg_database_size(current_database())")[0][0] / 2**20
            )
        finally:
            sql(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        print(json.dumps(result, indent=2))
    finally:
        if cluster is not None:
            cluster.run_sync(cluster.stop_argv())
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
