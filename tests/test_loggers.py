"""
Loggers anywhere, end to end with ``twistd -n blip`` children: two loggers
of one meter, each with its own pty and database, that repair each other's
outages; and a logger without a database forwarding every blip to a
central server through a link the test cuts, while the central server
restarts and a live client of it resumes.
"""

import json
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import TIMEOUT, eventually, free_port, make_token, open_pty
from tests.link import Link
from tests.test_service import get

# --- Two loggers of one meter repairing each other ----------------------------

#: ms between blinks: the two loggers' stamps of one blink differ by tens
#: of ms, far less than half of this.
BLINK = 400
#: How far the second logger's clock is behind the first's (ms).
OFFSET = 45


def clock_behind(folder: Path, ms: int) -> dict[str, str]:
    """
    :return: the environment of a daemon whose clock (``time.time``, which
        the reactor's is) runs ``ms`` behind this machine's, through a
        ``sitecustomize`` module in ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import time\n"
        "_time = time.time\n"
        f"time.time = lambda: _time() - {ms / 1000!r}\n"
    )
    return {"PYTHONPATH": str(folder)}


class Pair:
    """
    Feeds the same blink sequence to two ptys from a thread, skipping a
    pty whose logger is down (as a USB Arduino's lines are lost while
    nothing reads them).
    """

    def __init__(self, ptys: list) -> None:
        self.ptys = ptys
        self.up = [True, True]
        self.written: list[int] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Begin blinking."""
        self._thread.start()

    def stop(self) -> None:
        """Stop blinking, after the blink under way."""
        self._stop.set()
        self._thread.join(TIMEOUT)

    def _run(self) -> None:
        count = 0
        deadline = time.monotonic()
        while not self._stop.is_set():
            ms = BLINK + (count % 5) * 10
            deadline += ms / 1000
            time.sleep(max(0.0, deadline - time.monotonic()))
            line = b"%d\n" % ms
            with self.lock:
                self.written.append(ms)
                up = list(self.up)
            for pty, listening in zip(self.ptys, up):
                if listening:
                    pty.write(line)
            count += 1


@pytest.mark.long(30)
def test_two_loggers_repair_each_others_outages(start_daemon, database, other_database, tmp_path) -> None:
    """
    Two daemons read the same blink sequence, each from its own pty, into
    their own databases, each the other's --peer; the second one's clock
    is 45 ms behind the first's. Each is
    stopped for a while at a different time (its lines then lost, and the
    first line after it opens its device again dropped). Afterwards each
    database holds every blink exactly once — no blink of either edge of
    an outage twice, none missing — its energy is the blinks written, and
    /gaps names the peer where the outage was.
    """
    other = other_database
    ptys = [open_pty(), open_pty()]
    ports = [free_port(), free_port()]
    daemons = []
    try:
        for i, (name, db) in enumerate((("a", database), ("b", other))):
            daemons.append(start_daemon(
                "--serial", ptys[i].path, "--db", db.dsn, "--node-name", name,
                "--listen", f"tcp:{ports[i]}:interface=127.0.0.1",
                "--peer", f"http://127.0.0.1:{ports[1 - i]}/",
                listen=False, state_dir=tmp_path / name,
                env=clock_behind(tmp_path / "clock", OFFSET) if i else None,
            ))
        for daemon in daemons:
            daemon.wait_for("reading serial device")
        for pty in ptys:
            pty.write(b"partial\n")
        feeder = Pair(ptys)
        feeder.start()
        for i in (0, 1):
            time.sleep(3.0)
            with feeder.lock:
                feeder.up[i] = False
            assert daemons[i].stop() == 0
            time.sleep(2.5)
            daemons[i].start()
            daemons[i].wait_for("reading serial device")
            with feeder.lock:
                feeder.up[i] = True
        time.sleep(3.0)
        feeder.stop()
        written = list(feeder.written)
        sums = [sum(written), len(written)]

        def settled(sql: Callable) -> bool:
            return sql("SELECT coalesce(sum(ms), 0), count(*) FROM readings")[0] == tuple(sums)

        for sql, daemon in zip((database.sql, other.sql), daemons):
            assert eventually(lambda: settled(sql), timeout=60), (
                sql("SELECT sum(ms), count(*) FROM readings"), sums, "\n".join(daemon.output[-40:])
            )
            rows = sql("SELECT stamp, ms FROM readings ORDER BY stamp")
            assert [ms for _, ms in rows] == written
            # Each blink once: stamps follow the blinks' intervals, never
            # two stamps of one blink tens of ms apart.
            steps = [b[0] - a[0] - b[1] for a, b in zip(rows, rows[1:])]
            assert max(map(abs, steps)) < BLINK / 2, steps
            assert sql("SELECT sum(events) FROM readings_hourly")[0][0] == len(written)
            assert sql("SELECT count(*) FROM repairs")[0][0] == 1
        # The clocks were as far apart as meant: a blink both loggers saw
        # is stamped 45 ms earlier by the second. Only the blinks each
        # stamped itself count: a point one got from the other is the
        # other's, stamp for stamp (and the repaired stretches are longer
        # the slower the restarts, up to most of the points).
        query = "SELECT stamp FROM readings ORDER BY stamp"
        apart = [
            a - b for (a,), (b,) in zip(database.sql(query), other.sql(query)) if a != b
        ]
        assert len(apart) >= 10, apart
        assert OFFSET - 15 < sorted(apart)[len(apart) // 2] < OFFSET + 15, apart
        for i, daemon in enumerate(daemons):
            status, body = get(daemon, "/api/v1/meters/1/gaps?min_gap=1000")
            gaps = json.loads(body)
            peer = f"http://127.0.0.1:{ports[1 - i]}"
            assert [r["peer"] for r in gaps["repairs"]] == [peer]
            assert all(g["kind"] != "logger_down" for g in gaps["gaps"]), gaps
        for daemon in daemons:
            assert daemon.stop() == 0
    finally:
        for pty in ptys:
            pty.close()
        for daemon in daemons:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.stop()


# --- A logger forwarding to a central server ---------------------------------

#: Blips a second, and for how many seconds.
RATE, BLINKING = 50, 120
#: When the link goes dark (s after the first blip), and for how long.
DARK_FROM, DARK_FOR = 20, 60


class LiveClient:
    """
    A live client of the central server (Server-Sent Events) in a thread
    that, like a browser's EventSource, connects again with Last-Event-ID
    whenever its stream ends, and records every point event.

    :param path: the server's Unix socket.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[tuple[int, int]] = []
        self.connections = 0
        self.changed = threading.Condition()
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self._stream()
            except OSError:
                pass
            time.sleep(0.2)

    def _stream(self) -> None:
        last = self.events[-1][0] if self.events else None
        request = "GET /api/v1/live?meters=1 HTTP/1.1\r\nHost: blip\r\nAccept: text/event-stream\r\n"
        if last is not None:
            request += f"Last-Event-ID: {last}\r\n"
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.path))
            s.sendall((request + "\r\n").encode())
            s.settimeout(60)
            with self.changed:
                self.connections += 1
                self.changed.notify_all()
            buffer = b""
            while not self._stop:
                data = s.recv(65536)
                if not data:
                    return
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    self._event(event.decode())

    def _event(self, text: str) -> None:
        fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        if fields.get("event") == "point":
            point = json.loads(fields["data"])
            with self.changed:
                self.events.append((point["stamp"], point["ms"]))
                self.changed.notify_all()

    def stop(self) -> None:
        """Stop listening."""
        self._stop = True


@pytest.mark.long(125)
def test_a_forwarding_logger_loses_nothing(start_daemon, database, pty_meter, tmp_path) -> None:
    """
    A logger without a database reads blips at 50/s for two minutes and
    forwards them to a central server through a relay the test controls.
    The link goes dark for a minute (nothing passes, nothing is closed:
    requests hang, time out, and the points wait in the forwarder's spool)
    and the central daemon is restarted meanwhile. Once the link is back
    every blip reaches the central database exactly once, in order; a live
    client of the central server, reconnecting with Last-Event-ID after the
    restart, has every point once; and the forwarder's metrics count them.
    """
    listening = tmp_path / "central.sock"
    central = start_daemon(
        "--db", database.dsn, "--node-name", "central", "--listen", f"unix:{listening}",
        listen=False, state_dir=tmp_path / "central", ready="receiving live points from the database",
    )
    token_file = tmp_path / "token"
    token_file.write_text(make_token(database, [1], "meter pi") + "\n")
    link = Link(listening)
    live = LiveClient(listening)
    forwarder = start_daemon(
        "--serial", pty_meter.path, "--upstream", f"http://127.0.0.1:{link.port}",
        "--token-file", str(token_file), "--node-name", "meter-pi",
        listen=False, state_dir=tmp_path / "pi", ready="reading serial device",
    )
    written = 0
    stop = threading.Event()

    def blink() -> None:
        nonlocal written
        pty_meter.write(b"partial\n")
        deadline = time.monotonic()
        while not stop.is_set():
            deadline += 1 / RATE
            time.sleep(max(0.0, deadline - time.monotonic()))
            pty_meter.write(b"20\n")
            written += 1

    feeder = threading.Thread(target=blink, daemon=True)
    try:
        assert not (tmp_path / "pi" / "pg").exists()
        forwarder.wait_for("forwarding points to")
        began = time.monotonic()
        feeder.start()

        def at(seconds: float) -> None:
            time.sleep(max(0.0, began + seconds - time.monotonic()))

        stored = lambda: database.sql("SELECT count(*) FROM readings")[0][0]
        assert eventually(lambda: stored() > 3 * RATE)
        at(DARK_FROM)
        link.go_dark()
        at(DARK_FROM + 15)
        assert central.stop() == 0
        central.start()
        at(DARK_FROM + DARK_FOR)
        link.light()
        at(BLINKING)
        stop.set()
        feeder.join(TIMEOUT)
        assert eventually(lambda: stored() == written, timeout=60), (stored(), written, "\n".join(forwarder.output[-30:]))
        rows = database.sql("SELECT stamp, ms FROM readings ORDER BY stamp")
        assert {ms for _, ms in rows} == {20} and len(rows) == written
        assert any("cannot write to the upstream" in line for line in forwarder.output)
        with live.changed:
            assert live.changed.wait_for(lambda: len(live.events) >= written - 1, TIMEOUT)
            events = list(live.events)
        stamps = [stamp for stamp, _ in events]
        assert stamps == sorted(set(stamps)), "live events out of order or repeated"
        assert set(stamps) <= {stamp for stamp, _ in rows}
        assert stamps[-1] == rows[-1][0] and live.connections >= 2
        # From its first event on, the live client missed nothing.
        assert stamps == [s for s, _ in rows if s >= stamps[0]]
        assert forwarder.stop() == 0
        # Every blip acknowledged; a batch whose answer the dark link lost
        # was sent again, and counted as forwarded twice.
        counted = [line for line in forwarder.output if "counters:" in line][-1]
        forwarded = int(counted.split("forwarded ")[1].split(",")[0])
        assert forwarded >= written and "forward_backlog 0" in counted, counted
    finally:
        stop.set()
        live.stop()
        link.close()


def test_a_logger_with_a_database_forwards_too(start_daemon, database, other_database, pty_meter, tmp_path) -> None:
    """
    A logger with a database of its own and --upstream stores every blip
    it reads and sends each to the central server too: both databases end
    with the same points, once.
    """
    central = start_daemon("--db", database.dsn, "--node-name", "central", state_dir=tmp_path / "central")
    central.wait_for("database ready")
    token_file = tmp_path / "token"
    token_file.write_text(make_token(database, [1], "logger") + "\n")
    logger = start_daemon(
        "--serial", pty_meter.path, "--db", other_database.dsn, "--node-name", "logger",
        "--upstream", central.url("/"), "--token-file", str(token_file),
        state_dir=tmp_path / "logger",
    )
    for line in ("forwarding points to", "reading serial device", "database ready"):
        logger.wait_for(line)
    pty_meter.write(b"partial\n")
    for i in range(30):
        pty_meter.write(b"%d\n" % (100 + i))
    query = "SELECT stamp, ms FROM readings ORDER BY stamp"
    own = other_database.sql
    assert eventually(lambda: len(own(query)) == 30 and database.sql(query) == own(query))
    assert [ms for _, ms in own(query)] == list(range(100, 130))
    assert logger.stop() == 0
