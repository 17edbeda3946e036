"""
Readers against the writer, end to end: the HTTP side's queries run on
connections of their own, each ended by the server after --query-timeout;
ingest's are never limited.
"""

import json
import time

import psycopg2

from tests.test_service import eventually, get


def test_queries_over_the_timeout_are_refused_and_ingest_is_not(start_daemon, database, meter_link) -> None:
    """
    With --query-timeout 0.5, a query of the HTTP side that waits longer
    (for a lock on the readings held by another session) is cancelled by
    the database: the legacy route answers 503 ``{"error": ...}``, the
    modern one a 503 problem, both saying so. Ingest's write waits for the
    same lock as long as it takes, and its blips are stored once it is
    released.
    """
    daemon = start_daemon("--serial", str(meter_link.path), "--db", database.dsn, "--query-timeout", "0.5")
    daemon.wait_for("database ready")
    daemon.wait_for("reading serial device")
    meter_link.write(b"partial\n1000\n")
    assert eventually(lambda: database.sql("SELECT count(*) FROM readings") == [(1,)])
    holder = psycopg2.connect(database.dsn)
    try:
        with holder.cursor() as cursor:
            cursor.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
            meter_link.write(b"1001\n1002\n")
            for path, field in (("/since/1/0", "error"), ("/api/v1/meters/1/gaps", "detail")):
                started = time.monotonic()
                status, body = get(daemon, path)
                assert status == 503, body
                assert json.loads(body)[field] == "the query took longer than this server allows; ask for less"
                assert time.monotonic() - started < 5
        holder.rollback()
    finally:
        holder.close()
    assert eventually(lambda: database.sql("SELECT count(*) FROM readings") == [(3,)])
    assert daemon.stop() == 0
