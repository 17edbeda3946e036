"""
Fault injection, end to end: ``twistd -n blip`` reads a pty behind a symlink
and writes to the test cluster while the cluster is stopped and started,
the daemon is killed with SIGKILL and restarted, the device is unplugged and
plugged back, the daemon is stopped with SIGTERM while the database is
down, its disk fills up while the database is down, it starts with its
clock behind the points it stored and the database down, and a flood of
idle connections fills its descriptors. Every line written
must end up in ``readings`` exactly once — all but the first line after each
opening of the device, which is documented to be dropped, and those counted
as dropped when neither the database nor the disk could take them — with
rollups matching a recount.
"""

import json
import re
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest_twisted
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from blip.ingest.writer import MAX_PENDING
from blip.service import Options, make_service
from tests.conftest import (
    TIMEOUT,
    MeterLink,
    Pty,
    SmallFilesystem,
    closed_by_server,
    eventually,
    wait_until,
)
from tests.ingest.test_writer import rollups_match_readings
from tests.test_service import answer, get, metric, park


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


def replug(daemon, link: MeterLink, blips: Blips, database) -> int:
    """
    Unplug the device and plug it back, once the daemon has read every
    line written (a pty's unread input vanishes with it, as a USB
    device's does); return once the daemon reads it again and 30 more
    lines are written.

    :return: the number of the first line written after the replug (the
        daemon drops it, as the first after an opening).
    """
    seen = len(daemon.output)
    with link.lock:
        assert eventually(lambda: stored_lines(database)[-1:] == [blips.sent - 1]), blips.sent
        link.replug()
        replugged_at = blips.sent
    daemon.wait_for("serial source lost", since=seen)
    daemon.wait_for("reading serial device", since=seen)
    blips.wait_sent(blips.sent + 30)
    return replugged_at


def all_kept(daemon, points: int) -> bool:
    """
    :return: whether the daemon has read ``points`` points, and stored or
        spooled each.
    """
    blips = metric(daemon, "blip_blips_total")
    return blips == points == metric(daemon, "blip_stored_total") + metric(daemon, "blip_spooled_total")


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
        with meter_link.lock:
            # Killed once every line written is stored or spooled: what a
            # daemon has read and holds in memory only dies with it.
            assert eventually(lambda: all_kept(daemon, blips.sent - 1)), blips.sent
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

        replugged_at = replug(daemon, meter_link, blips, database)
    finally:
        blips.stop()
    total = blips.sent
    assert eventually(lambda: len(stored_lines(database)) >= total - 3), (
        f"lines missing: {sorted(set(range(total)) - set(stored_lines(database)))}"
        f" (killed after {before_kill}, replugged at {replugged_at})\n" + "\n".join(daemon.output)
    )
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


def resident_bytes(pid: int) -> int:
    """:return: the resident memory of process ``pid``."""
    with open(f"/proc/{pid}/status") as status:
        match = re.search(r"VmRSS:\s+(\d+) kB", status.read())
    assert match is not None
    return int(match.group(1)) * 1024


def test_a_full_disk_during_an_outage_keeps_memory_bounded(
    start_daemon, database, pty_meter, stoppable_cluster, small_filesystem: SmallFilesystem
) -> None:
    """
    The database stops and then the state dir's filesystem fills up: the
    daemon keeps running and answering, holds at most MAX_PENDING points
    in memory (its memory stops growing), drops the others and says how
    many in /metrics. Once there is room and the database is back, every
    line not counted as dropped is stored exactly once, in order.
    """
    state = small_filesystem.path / "state"
    daemon = start_daemon("--serial", pty_meter.path, "--db", database.dsn, state_dir=state)
    daemon.wait_for("database ready")
    daemon.wait_for("reading serial device")
    sent = 0

    def send(count: int) -> None:
        nonlocal sent
        lines = b"".join(b"%d\n" % ms_of(n) for n in range(sent, sent + count))
        pty_meter.write(lines)
        sent += count
        assert eventually(lambda: metric(daemon, "blip_blips_total") == sent, TIMEOUT * 2)

    pty_meter.write(b"\n")
    send(100)
    assert eventually(lambda: len(stored_lines(database)) == 100)
    spooled = metric(daemon, "blip_spooled_total")
    stoppable_cluster.stop()
    send(100)
    daemon.wait_for("cannot write to the database")
    assert eventually(lambda: metric(daemon, "blip_spooled_total") == spooled + 100)
    small_filesystem.fill()
    before = resident_bytes(daemon.pid)
    send(MAX_PENDING)
    daemon.wait_for("cannot write the spool")
    holding = resident_bytes(daemon.pid)
    send(MAX_PENDING // 2)
    daemon.wait_for("dropping new points")
    dropped = metric(daemon, "blip_dropped_points_total")
    # All but what the spool file's last, partly used, page could take.
    assert MAX_PENDING // 2 - 250 <= dropped <= MAX_PENDING // 2
    assert metric(daemon, "blip_backlog") + dropped == sent - 100
    growth = resident_bytes(daemon.pid) - holding
    assert growth < (holding - before) / 4, (before, holding, growth)
    status, body = get(daemon, "/last/1")
    assert status == 200 and json.loads(body)[1] == ms_of(sent - 1)

    small_filesystem.free()
    assert eventually(lambda: metric(daemon, "blip_spooled_total") == spooled + sent - 100 - dropped)
    stoppable_cluster.start()
    assert eventually(lambda: metric(daemon, "blip_backlog") == 0, TIMEOUT * 2)
    assert daemon.stop() == 0
    lines = stored_lines(database)
    assert lines == sorted(set(lines)), "lines stored twice or out of order"
    assert len(lines) == sent - dropped
    assert set(lines) <= set(range(sent)) and set(range(100 + 100)) <= set(lines)
    assert rollups_match_readings(database)


@implementer(IReactorTime)
class StoppedClock:
    """
    A clock that shows one moment for ever (as one without a battery, set
    at boot from what it last saved), with the reactor's timers.

    :param reactor: runs the timers.
    :param seconds: the moment shown.
    """

    def __init__(self, reactor: Any, seconds: float) -> None:
        self.reactor = reactor
        self._seconds = seconds

    def seconds(self) -> float:
        """:return: the moment shown."""
        return self._seconds

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> IDelayedCall:
        """Run ``callable`` after ``delay`` seconds of the reactor's time."""
        return self.reactor.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> list[IDelayedCall]:
        """:return: the reactor's timers."""
        return self.reactor.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_a_clock_behind_the_stored_points_loses_no_blip(
    database, pty_meter: Pty, stoppable_cluster, tmp_path: Path
) -> None:
    """
    A Raspberry Pi without a real-time clock: an ingest node whose clock
    stands still stamps 20 blips (one millisecond apart) and stops; it
    starts again with its clock showing the same moment, behind what it
    stored, while the database is down, and reads 30 more blips. Stamps
    continue from those the first run kept in its state dir, so once the
    database is back no blip is dropped as a duplicate of a stored one.
    """
    from twisted.internet import reactor

    handlers = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
    clock = StoppedClock(reactor, 1_700_000_000.0)

    def node() -> Any:
        options = Options()
        options.parseOptions([
            "--role", "ingest", "--serial", pty_meter.path, "--db", database.dsn,
            "--state-dir", str(tmp_path / "state"),
        ])
        service = make_service(options, reactor, clock)
        service.startService()
        return service

    def stored() -> list[int]:
        if database.sql("SELECT to_regclass('readings')") == [(None,)]:
            return []
        return [ms for (ms,) in database.sql("SELECT ms FROM readings ORDER BY stamp")]

    def blips(first: int, count: int) -> None:
        # The first line after the device opens may be partial: dropped.
        pty_meter.write(b"\n" + b"".join(b"%d\n" % ms_of(n) for n in range(first, first + count)))

    try:
        first = node()
        try:
            blips(0, 20)
            await wait_until(lambda: len(stored()) == 20, TIMEOUT)
        finally:
            await first.stopService()
        await deferToThread(stoppable_cluster.stop)
        second = node()
        try:
            blips(20, 30)
            spool = tmp_path / "state" / "spool"
            await wait_until(lambda: spool.exists() and spool.stat().st_size >= 8 + 30 * 20, TIMEOUT)
            await deferToThread(stoppable_cluster.start)
            await wait_until(lambda: len(stored()) == 50, TIMEOUT)
        finally:
            await second.stopService()
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert stored() == [ms_of(n) for n in range(50)]
#: The open-files limit of the daemon flooded with connections.
FLOOD_FILES = 256


def test_a_flood_of_idle_connections_loses_no_blip(
    start_daemon, database, meter_link, stoppable_cluster
) -> None:
    """
    A daemon that may open 256 files keeps half for its own: it logs at
    start that it serves at most 128 connections and parks as many
    long-polls. 300 idle connections come; 128 stay open, the others are
    closed at once, while blips arrive at 50 a second. During the flood
    the device is unplugged and plugged back and the database restarted:
    the daemon reopens both, every line but the first after each opening
    is stored exactly once, and once the flood is gone it serves again.
    """
    args = ["--serial", str(meter_link.path), "--db", database.dsn]
    daemon = start_daemon(*args, files=FLOOD_FILES)
    daemon.wait_for(r"--max-waiters 10000 lowered to 128: the process may open 256 files")
    daemon.wait_for(r"serving at most 128 connections \(256 per client\), 128 long-polls")
    daemon.wait_for("database ready")
    daemon.wait_for("reading serial device")
    blips = Blips(meter_link, 50)
    blips.start()
    flood: list[socket.socket] = []
    try:
        for _ in range(300):
            flood.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=TIMEOUT))
        # Those over the cap are closed at once, the others stay.
        assert eventually(lambda: sum(map(closed_by_server, flood)) == 300 - 128), sum(map(closed_by_server, flood))

        seen = len(daemon.output)
        replugged_at = replug(daemon, meter_link, blips, database)
        stoppable_cluster.stop()
        daemon.wait_for("cannot write to the database", since=seen)
        blips.wait_sent(blips.sent + 30)
        stoppable_cluster.start()
        daemon.wait_for("database writes are back", since=seen)
        blips.wait_sent(blips.sent + 30)
        assert sum(map(closed_by_server, flood)) == 300 - 128
    finally:
        blips.stop()
        for s in flood:
            s.close()
    total = blips.sent
    assert eventually(lambda: len(stored_lines(database)) >= total - 2), (
        f"lines missing: {sorted(set(range(total)) - set(stored_lines(database)))}"
        f" (replugged at {replugged_at})\n" + "\n".join(daemon.output)
    )
    assert get(daemon, "/last/1")[0] == 200
    assert daemon.stop() == 0
    lines = stored_lines(database)
    assert lines == sorted(set(lines)), "lines stored twice or out of order"
    assert sorted(set(range(total)) - set(lines)) == [0, replugged_at]
    assert rollups_match_readings(database)

