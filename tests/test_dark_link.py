"""
The daemon with its database behind a link that goes dark: a relay of the
test's own between them forwards nothing more, and closes nothing, as a
network that drops every packet would look. Nothing the daemon does may
wait for the network on its one thread: serial lines are stamped as they
arrive, long-polls, ``/last`` and the live stream answer from memory,
``/healthz`` says within its timeout that the database does not answer;
once the link is back, every blip is stored.
"""

import json
import socket
import threading
import time

import pytest
from psycopg2.extensions import make_dsn

from blip.db.embedded import PORT
from blip.web.health import DATABASE_TIMEOUT
from tests.conftest import TIMEOUT, eventually
from tests.link import Link
from tests.test_service import answer, get, park

#: Lines written while the link is dark, and seconds between them: longer
#: than the health check's timeout and ingest's write timeout.
LINES, INTERVAL = 120, 0.1
#: Most ms between a line's writing and its stamp.
STAMPED_WITHIN = 50


class LiveStream(threading.Thread):
    """
    Reads meter 1's live stream (Server-Sent Events) and keeps each point.

    :param port: the daemon's.
    """

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.points: list[tuple[int, int]] = []
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.socket.sendall(
            b"GET /api/v1/live?meters=1 HTTP/1.1\r\nHost: blip\r\nAccept: text/event-stream\r\n\r\n"
        )
        self.lines = self.socket.makefile("rb")
        while self.lines.readline().strip() != b"retry: 2000":
            pass

    def run(self) -> None:
        try:
            for line in self.lines:
                if line.startswith(b"data: "):
                    point = json.loads(line[6:])
                    self.points.append((point["stamp"], point["ms"]))
        except OSError:
            pass

    def close(self) -> None:
        """Hang up."""
        self.socket.close()


@pytest.mark.alone
def test_a_dark_link_blocks_nothing(start_daemon, database, pty_meter) -> None:
    """
    While the link to the database is dark for longer than the health
    check's and ingest's timeouts: every serial line written is stamped
    within 50 ms of its writing (so the reactor never stopped for longer),
    the live stream and long-polls get each point, ``/last`` answers at
    once, and ``/healthz`` answers 503 within its timeout saying that the
    database does not answer. Once the link is back, every blip is stored,
    and the daemon logged no error and stops cleanly.
    """
    link = Link(database.cluster.cluster.sockets / f".s.PGSQL.{PORT}")
    stream = None
    try:
        dsn = make_dsn(database.dsn, host="127.0.0.1", port=link.port)
        daemon = start_daemon("--serial", pty_meter.path, "--db", dsn)
        daemon.wait_for("database ready")
        daemon.wait_for("reading serial device")
        pty_meter.write(b"partial\n1000\n")
        assert eventually(lambda: database.sql("SELECT count(*) FROM readings") == [(1,)])
        stream = LiveStream(daemon.port)
        stream.start()

        link.go_dark()
        written: list[float] = []

        def write() -> None:
            due = time.monotonic()
            for n in range(LINES):
                written.append(time.time())
                pty_meter.write(b"%d\n" % (2000 + n))
                due += INTERVAL
                time.sleep(max(0.0, due - time.monotonic()))

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        started = time.monotonic()
        status, body = get(daemon, "/healthz")
        assert status == 503, body
        assert time.monotonic() - started < DATABASE_TIMEOUT + 1.5
        assert json.loads(body)["checks"]["database"]["error"] == f"not answering within {DATABASE_TIMEOUT:g} s"
        for _ in range(5):
            started = time.monotonic()
            status, body = get(daemon, "/last/1")
            assert status == 200 and json.loads(body)[1] >= 2000
            parked = park(daemon, "/blip/1")
            head, _, point = answer(parked).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and json.loads(point)[1] > json.loads(body)[1]
            assert time.monotonic() - started < 4 * INTERVAL
        writer.join(TIMEOUT)
        assert eventually(lambda: len(stream.points) == LINES), len(stream.points)
        late = [
            (n, stamp - round(at * 1000))
            for n, ((stamp, ms), at) in enumerate(zip(stream.points, written))
            if not -2 <= stamp - at * 1000 <= STAMPED_WITHIN or ms != 2000 + n
        ]
        assert not late, late
    finally:
        link.light()
        if stream is not None:
            stream.close()
    try:
        stored = "SELECT count(*) FROM readings"
        assert eventually(lambda: database.sql(stored) == [(LINES + 1,)], 2 * TIMEOUT)
        assert daemon.stop() == 0
    finally:
        link.close()
    errors = [line for line in daemon.output if "Traceback" in line or "Unhandled" in line]
    assert not errors, "\n".join(daemon.output)
