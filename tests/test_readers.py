"""
Readers against the writer, end to end: on a year of 1 Hz data of one
meter, eight clients ask the heaviest questions the HTTP API takes, over
and over for 30 s, while blips arrive at 50 a second on the serial line.
Ingest writes on connections of its own, the HTTP side's queries are ended
by the server after --query-timeout, the spans that would read raw points
without bound are bounded, and heavy requests are capped: every blip is
committed within a second of its line, and none goes to the spool.
"""

import json
import re
import select
import socket
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest

from blip.db.partitions import ensure_months
from blip.db.program import run_sync
from blip.db.readings import CHANNEL
from blip.db.sync_store import SyncStore
from blip.live.notify import decode
from tests.conftest import TIMEOUT, eventually
from tests.test_faults import Blips, ms_of
from tests.test_service import get

HOUR, DAY = 3_600_000, 86_400_000
#: Seconds the clients ask and the blips arrive.
SECONDS = 30
#: Most seconds from a line's writing to the commit of its point.
COMMITTED_WITHIN = 1.0


def year_of_points(database) -> int:
    """
    Store a year of points of meter 1, one a second, up to the last whole
    hour, with their rollups: generated inside PostgreSQL in bulk (no
    index, no rollup trigger, no WAL for the readings meanwhile), as
    ``bench/dataset.py`` does.

    :return: the stamp after the last point.
    """
    now = int(time.time() * 1000)
    end = now - now % HOUR
    span = {"s": end - 365 * DAY, "e": end}
    connection = psycopg2.connect(database.dsn)
    try:
        SyncStore(connection).apply_schema()
        with connection, connection.cursor() as cursor:
            # The months' partitions first, as the daemon makes them.
            run_sync(cursor, ensure_months(None, [*range(span["s"], span["e"], 20 * DAY), span["e"] - 1]))
        connection.autocommit = True
        with connection.cursor() as cursor:
            for statement in (
                "SET maintenance_work_mem = '1GB'",
                "ALTER TABLE readings SET UNLOGGED",
                "ALTER TABLE readings DROP CONSTRAINT readings_pkey",
                "ALTER TABLE readings DISABLE TRIGGER blip_rollup",
                "INSERT INTO readings (id, stamp, ms) SELECT 1, s, 1000"
                "  FROM generate_series(%(s)s::bigint, %(e)s::bigint - 1000, 1000) AS s",
                "ALTER TABLE readings ADD PRIMARY KEY (id, stamp)",
                "INSERT INTO readings_minutely SELECT 1, s, 60, 60000, 1000, 1000"
                "  FROM generate_series(%(s)s::bigint, %(e)s::bigint - 60000, 60000) AS s",
                "INSERT INTO readings_hourly SELECT 1, s, 3600, 3600000, 1000, 1000"
                "  FROM generate_series(%(s)s::bigint, %(e)s::bigint - 3600000, 3600000) AS s",
                "ALTER TABLE readings ENABLE TRIGGER blip_rollup",
                "ANALYZE readings, readings_minutely, readings_hourly",
                # Not vacuumed behind the test's back: a daemon's tables are
                # not loaded with a year of points every minute.
                "DO $$ DECLARE part regclass; BEGIN"
                "  FOR part IN SELECT relid FROM pg_partition_tree('readings') WHERE isleaf LOOP"
                "    EXECUTE format('ALTER TABLE %%s SET (autovacuum_enabled = off)', part);"
                "  END LOOP; END $$",
            ):
                cursor.execute(statement, span)
    finally:
        connection.close()
    return end


class Commits(threading.Thread):
    """
    Listens to the daemon's announcements of new points (delivered when
    their transaction commits) and notes when each arrives, by its ms.

    :param dsn: the database.
    """

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.connection = psycopg2.connect(dsn)
        self.connection.autocommit = True
        self.connection.cursor().execute(f"LISTEN {CHANNEL}")
        #: When the point with each ms was announced.
        self.at: dict[int, float] = {}
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            if select.select([self.connection], [], [], 0.1)[0]:
                self.connection.poll()
                arrived = time.time()
                for notify in self.connection.notifies:
                    for point in decode(notify.payload):
                        self.at.setdefault(point.ms, arrived)
                self.connection.notifies.clear()

    def stop(self) -> None:
        """Stop listening."""
        self._stopping.set()
        self.join(TIMEOUT)
        self.connection.close()


def ask(port: int, path: str, headers: str = "", seconds: float = 3.0) -> tuple[int, bytes]:
    """
    One request, reading its answer for ``seconds`` at most (a stream or
    an export), then hanging up.

    :return: its status and head.
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT + 15)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: blip\r\nConnection: close\r\n{headers}\r\n".encode())
        received, deadline = b"", time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if b"\r\n\r\n" in received:
                if left <= 0:
                    break
                s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received = (received + chunk)[:65536]
    finally:
        s.close()
    head = received.partition(b"\r\n\r\n")[0]
    return int(head.split(b" ", 2)[1]), head


@pytest.mark.alone
def test_heavy_readers_never_hold_up_the_writer(start_daemon, database, meter_link) -> None:
    """
    Eight clients ask, over and over for 30 s: a count of every blip ever
    (``/usage`` over 15 digits), the gaps of the year longer than the
    interval of its points (every point is read, none is a gap) and of the
    default length, a live stream resumed from stamp 0, a CSV export of the
    year, blips per minute of the last 1000 minutes from the points, and
    the longest answers of ``/range`` and daily energy. Meanwhile blips arrive at 50 a second: every one is
    committed within a second of its line, and none is spooled. The
    clients get answers, 400 for a replay deeper than an hour, and 503
    with Retry-After beyond the heavy requests that may run at once;
    never a 500. A light query is answered throughout.
    """
    end = year_of_points(database)
    daemon = start_daemon("--serial", str(meter_link.path), "--db", database.dsn)
    daemon.wait_for("reading serial device")
    # (Points that come before ingest has read the newest stored ones wait
    # in the spool: not what is measured here.)
    daemon.wait_for("ready: points go to the database")
    meter_link.write(b"partial\n")
    commits = Commits(database.dsn)
    commits.start()
    first = end - 365 * DAY
    heavy = [
        ("/usage/1/999999999999999", ""),
        # Points are a second apart: every one is read, and no gap found.
        (f"/api/v1/meters/1/gaps?from={first}&min_gap=1001", ""),
        (f"/api/v1/meters/1/gaps?from={first}", ""),
        ("/api/v1/live?meters=1", "Accept: text/event-stream\r\nLast-Event-ID: 0\r\n"),
        (f"/api/v1/meters/1/readings?from={first}&format=csv", ""),
        (f"/aggregate/1/{end - 59_999_000}/59999/1000", ""),
        (f"/range/1/{first}/{end}", ""),
        (f"/api/v1/meters/1/energy?from={first}&period=day", ""),
    ]
    answers: list[tuple[str, int, bytes]] = []
    light: list[tuple[int, float]] = []
    stop_at = time.monotonic() + SECONDS

    def client(first: int) -> None:
        n = first
        while time.monotonic() < stop_at:
            path, headers = heavy[n % len(heavy)]
            status, head = ask(daemon.port, path, headers)
            answers.append((path, status, head))
            if status == 503:
                time.sleep(2)  # as Retry-After asks
            n += 1

    def probe() -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            status, _ = get(daemon, f"/since/1/{end - 1000}")
            light.append((status, time.monotonic() - started))
            time.sleep(0.5)

    blips = Blips(meter_link, 50)
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(len(heavy))]
    threads.append(threading.Thread(target=probe, daemon=True))
    blips.start()
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(SECONDS + TIMEOUT + 30)
    finally:
        blips.stop()
    try:
        assert eventually(lambda: all(ms_of(n) in commits.at for n in range(blips.sent)))
    finally:
        commits.stop()
    late = [
        (n, round(commits.at[ms_of(n)] - at, 3))
        for n, at in enumerate(blips.times)
        if commits.at[ms_of(n)] - at > COMMITTED_WITHIN
    ]
    assert not late, late
    metrics = get(daemon, "/metrics")[1].decode()
    assert re.search(r"^blip_spooled_total 0\.0$", metrics, re.MULTILINE), metrics

    statuses = {status for _, status, _ in answers}
    assert statuses <= {200, 400, 503}, [a for a in answers if a[1] not in (200, 400, 503)]
    refused = [head for _, status, head in answers if status == 503]
    assert refused and all(b"\r\nRetry-After: 2" in head for head in refused), refused
    assert {path for path, status, _ in answers if status == 400} == {"/api/v1/live?meters=1"}
    assert all(status == 200 for status, _ in light) and len(light) >= SECONDS // 2, light
    assert daemon.stop() == 0


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
