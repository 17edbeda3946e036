"""
Fault injection, end to end: ``twistd -n blip`` reads a pty behind a symlink
and writes to the test cluster while the cluster is stopped and started,
the daemon is killed with SIGKILL and restarted, the device is unplugged and
plugged back, and the daemon is stopped with SIGTERM while the database is
down. Every line written must end up in ``readings`` exactly once — all but
the first line after each opening of the device, which is documented to be
dropped — with rollups matching a recount.
"""

import json
import select
import signal
import threading
import time

from tests.conftest import TIMEOUT, MeterLink
from tests.ingest.test_writer import rollups_match_readings
from tests.test_service import answer, eventually, get, park


def ms_of(line: int) -> int:
    """:return: the interval written on line number ``line`` (unique per line)."""
    return 1000 + line


class Blips(threading.Thread):
    """
    Writes numbered blip lines into the meter's pty at a steady rate, as
    the Arduino would, whatever the daemon is doing.

    :param link: where to write.
    :param per_second: lines a second.
    """

    def __init__(self, link: MeterLink, per_second: float) -> None:
        super().__init__(daemon=True)
        self.link = link
        self.interval = 1 / per_second
        #: Lines written so far; line n carries ms_of(n).
        self.sent = 0
        #: When each line was written (unix time).
        self.times: list[float] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        due = time.monotonic()
        while not self._stopping.is_set():
            with self.link.lock:
                self.times.append(time.time())
                self.link.write(b"%d\n" % ms_of(self.sent))
                self.sent += 1
            due += self.interval
            self._stopping.wait(max(0.0, due - time.monotonic()))

    def wait_sent(self, count: int) -> None:
        """Return once ``count`` lines are written."""
        assert eventually(lambda: self.sent >= count), f"only {self.sent} lines written"

    def stop(self) -> None:
        """Stop writing."""
        self._stopping.set()
        self.join(TIMEOUT)


def stored_lines(database) -> list[int]:
    """:return: the line numbers in readings, by stamp."""
    return [ms - 1000 for (ms,) in database.sql("SELECT ms FROM readings ORDER BY stamp")]


def test_outage_kill_and_unplug_lose_no_blip(
    start_daemon, database, meter_link, stoppable_cluster
) -> None:
    """
    At 100 blips a second: the database stops; the daemon, now spooling,
    is killed with SIGKILL and restarted while the database is still down;
    the database comes back; the device is unplugged and plugged back. In
    the end every line is in readings exactly once and in order, but the
    first line after each of the three openings, rollups match a recount,
    and the record of ingest periods tells the crash, the lost device and
    the stop apart.
    """
    args = ["--serial", str(meter_link.path), "--db", database.dsn, "--node-name", "basement"]
    daemon = start_daemon(*args)
    daemon.wait_for("database ready")
    daemon.wait_for("reading serial device")
    blips = Blips(meter_link, 100)
    blips.start()
    try:
        assert eventually(lambda: len(stored_lines(database)) >= 20)
        stoppable_cluster.stop()
        daemon.wait_for("cannot write to the database")
        blips.wait_sent(blips.sent + 30)
        before_kill = blips.sent
        daemon.stop(signal.SIGKILL)
        after_kill = blips.sent
        blips.wait_sent(after_kill + 20)

        daemon = start_daemon(*args)
        daemon.wait_for("points of a previous run wait in the spool")
        daemon.wait_for("reading serial device")
        status, body = get(daemon, "/last/1")
        assert status == 200 and json.loads(body)[1] >= ms_of(before_kill - 1)
        blips.wait_sent(blips.sent + 30)
        stoppable_cluster.start()
        daemon.wait_for("database ready")
        assert eventually(lambda: not (start_daemon.state / "spool").exists())

        seen = len(daemon.output)
        with meter_link.lock:
            meter_link.replug()
            replugged_at = blips.sent
        daemon.wait_for("serial source lost", since=seen)
        daemon.wait_for("reading serial device", since=seen)
        blips.wait_sent(blips.sent + 30)
    finally:
        blips.stop()
    total = blips.sent
    assert eventually(lambda: len(stored_lines(database)) >= total - 3)
    assert daemon.stop() == 0

    lines = stored_lines(database)
    assert lines == sorted(set(lines)), "lines stored twice or out of order"
    missing = sorted(set(range(total)) - set(lines))
    assert len(missing) == 3, missing
    assert missing[0] == 0
    assert before_kill <= missing[1] <= after_kill
    assert missing[2] == replugged_at
    assert rollups_match_readings(database)
    reasons = database.sql(
        "SELECT end_reason FROM ingest_periods WHERE node = 'basement' ORDER BY started"
    )
    assert reasons == [("crash",), ("device lost",), ("stop",)]
    assert not (start_daemon.state / "spool").exists()


def test_sigterm_with_the_database_down(start_daemon, database, pty_meter, stoppable_cluster) -> None:
    """
    SIGTERM while the database is down: a parked long-poll gets a JSON 503,
    the daemon exits 0 within 5 s, the points it could not write are in the
    spool, and the next start writes them; the period ended by that stop is
    recorded as a stop.
    """
    args = ["--serial", pty_meter.path, "--db", database.dsn, "--max-waiters", "1",
            "--node-name", "attic"]
    daemon = start_daemon(*args)
    daemon.wait_for("database ready")
    daemon.wait_for("reading serial device")
    pty_meter.write(b"\n")
    stoppable_cluster.stop()
    for i in range(20):
        pty_meter.write(b"%d\n" % (500 + i))
    assert eventually(lambda: get(daemon, "/last/1")[1].endswith(b",519]"))
    # With room for one waiter, one of two long-polls is refused: the
    # other is then parked.
    polls = [park(daemon, "/blip/1"), park(daemon, "/blip/1")]
    ready, _, _ = select.select(polls, [], [], TIMEOUT)
    refused = answer(ready[0])
    assert b" 503 " in refused.split(b"\r\n", 1)[0]
    parked = polls[1 - polls.index(ready[0])]

    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    shutdown = answer(parked)
    assert shutdown.startswith(b"HTTP/1.1 503 ")
    assert json.loads(shutdown.split(b"\r\n\r\n", 1)[1]) == {"error": "shutting down"}
    assert (start_daemon.state / "spool").exists()
    assert (start_daemon.state / "ingest-periods.json").exists()

    stoppable_cluster.start()
    daemon = start_daemon(*args)
    assert eventually(
        lambda: database.sql("SELECT ms FROM readings ORDER BY stamp") == [(500 + i,) for i in range(20)]
    )
    assert eventually(lambda: not (start_daemon.state / "spool").exists())
    assert daemon.stop() == 0
    reasons = database.sql("SELECT end_reason FROM ingest_periods WHERE node = 'attic' ORDER BY started")
    assert reasons == [("stop",), ("stop",)]
    assert rollups_match_readings(database)
