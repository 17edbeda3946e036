"""
Failover, end to end: a primary PostgreSQL server and a streaming standby
made from it with ``pg_basebackup``, both on loopback ports, and two
daemons (an ``all`` node reading a pty, a web node) given both in one
``--db`` with ``target_session_attrs=read-write``. While 50 blips a second
arrive, the standby stops receiving (its replication goes through a relay
that goes dark), the primary is killed with SIGKILL and the standby
promoted: every blip must end up in the promoted database exactly once,
with rollups that agree, and a long-poll on the web node keeps getting
blips.
"""

import json
import os
import shlex
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import psycopg2
import pytest

from blip.db.embedded import Cluster
from tests.conftest import (
    TIMEOUT,
    eventually,
    free_port,
    open_pty,
    shared_tempdir,
    sql_at,
)
from tests.ingest.test_writer import rollups_match_readings
from tests.link import Link
from tests.test_service import answer, park

#: Blips written into the pty per second.
RATE = 50
#: The database and the login of the daemons (trusted on loopback).
NAME = "blip"


class Server:
    """
    One PostgreSQL server of the test: its data directory in a folder of
    the server's user, listening on a loopback port and on a Unix socket
    in that folder, logins on loopback trusted (replication too).

    :param root: its folder.
    """

    def __init__(self, root: Path) -> None:
        self.cluster = Cluster.at(root)
        self.port = free_port()
        #: Whether :meth:`kill` killed it (its pid file is left, and its
        #: pid may be another process's by now).
        self.killed = False

    def run(self, *argv: str) -> None:
        """Run one of PostgreSQL's programs as the server's user, in its folder."""
        done = self.cluster.run_sync([str(self.cluster.bindir / argv[0]), *argv[1:]])
        log = self.cluster.log_file
        assert done.returncode == 0, (argv, done.stdout, done.stderr, log.exists() and log.read_text())

    def initdb(self) -> None:
        """Make a new cluster."""
        self.cluster.prepare_folders()
        self.run("initdb", "-D", "data", "-U", NAME, "--auth=trust", "--no-locale", "-E", "UTF8")

    def copy_of(self, primary: "Server", port: int) -> None:
        """Make this server a streaming standby of ``primary``, reached on ``port``."""
        self.cluster.prepare_folders()
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(port), "-U", NAME, "-D", "data",
                 "-R", "-X", "stream", "--checkpoint=fast")

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        settings = [
            "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.cluster.sockets}", "-c", "fsync=off",
            "-c", "wal_level=replica",
        ]
        self.run("pg_ctl", "start", "-D", "data", "-w", "-t", "60", "-l", self.cluster.log_file.name,
                 "-o", shlex.join(settings))

    @property
    def socket(self) -> Path:
        """Its Unix socket."""
        return self.cluster.sockets / f".s.PGSQL.{self.port}"

    def kill(self) -> None:
        """
        Kill the server and every process of it with SIGKILL, as a dead
        machine: the postmaster is stopped first, so that it starts no
        other process meanwhile, and its processes are found while they
        are still its children.
        """
        postmaster = int((self.cluster.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGSTOP)
        children = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(entry.name))
            except (OSError, ValueError):
                pass  # gone meanwhile
        for pid in (postmaster, *children):
            os.kill(pid, signal.SIGKILL)
        self.killed = True

    def promote(self) -> None:
        """Promote a standby, and wait until it takes writes."""
        self.run("pg_ctl", "promote", "-D", "data", "-w", "-t", "60")

    def stop(self) -> None:
        """Stop the server if it runs (immediately)."""
        if not self.killed and self.cluster.run_sync(self.cluster.status_argv()).returncode == 0:
            self.run("pg_ctl", "stop", "-D", "data", "-m", "immediate", "-w", "-t", "60")

    def sql(self, statement: str, params: tuple = (), dbname: str = NAME) -> list[tuple]:
        """Run one statement over TCP and return its rows."""
        dsn = psycopg2.extensions.make_dsn(host="127.0.0.1", port=self.port, user=NAME, dbname=dbname)
        return sql_at(dsn, statement, params)

    def count(self) -> int:
        """:return: how many readings it has."""
        return self.sql("SELECT count(*) FROM readings")[0][0]


@pytest.fixture
def replicated() -> Iterator[tuple[Server, Server, Link]]:
    """
    A primary with database ``blip``, and a standby streaming from it
    through a relay (which the test may darken), both running; both
    stopped and removed after the test.
    """
    root = shared_tempdir("blip-test-failover-")
    primary, standby = Server(root / "primary"), Server(root / "standby")
    link: Optional[Link] = None
    try:
        primary.initdb()
        primary.start()
        primary.sql(f"CREATE DATABASE {NAME}", dbname="postgres")
        link = Link(primary.socket)
        standby.copy_of(primary, link.port)
        standby.start()
        assert eventually(lambda: primary.sql(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == [(1,)])
        yield primary, standby, link
    finally:
        if link is not None:
            link.close()
        try:
            if standby.cluster.initialized:
                standby.stop()
        finally:
            try:
                if primary.cluster.initialized:
                    primary.stop()
            finally:
                shutil.rmtree(root, ignore_errors=True)


class Feeder:
    """
    Writes a blip into a pty :data:`RATE` times a second, in a thread,
    each with its own ms (1000, 1001, ...), until stopped.
    """

    def __init__(self, pty) -> None:
        self.pty = pty
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(max(0.0, started + self.written / RATE - time.monotonic())):
            self.pty.write(f"{1000 + self.written}\n".encode())
            self.written += 1

    def stop(self) -> int:
        """Stop writing; :return: how many blips were written."""
        self._stop.set()
        self._thread.join(TIMEOUT)
        return self.written


class LongPolls:
    """
    A client of a daemon that keeps a long-poll on ``/blip`` parked, in a
    thread, and records the ms of each answer.
    """

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.answers: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            raw = answer(park(self.daemon, "/blip"))
            if raw.startswith(b"HTTP/1.1 200"):
                self.answers.append(json.loads(raw.split(b"\r\n\r\n", 1)[1])[1])

    def stop(self) -> None:
        """Stop asking (after the answer under way)."""
        self._stop.set()


def test_a_promoted_standby_gets_every_blip_once(start_daemon, replicated, tmp_path) -> None:
    """
    The primary dies (SIGKILL, every process of it) while blips arrive,
    with the last ones it committed not yet on the standby; the standby is
    promoted. The ingest node writes its spool to the promoted server, and
    writes again the points committed last on the dead one, so that the
    promoted database holds every blip written, once and in order, with
    rollups that agree; the web node subscribes again there and its
    long-poll keeps getting blips, never one twice.
    """
    primary, standby, link = replicated
    dsn = (f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} dbname={NAME}"
           f" user={NAME} target_session_attrs=read-write connect_timeout=2")
    pty = open_pty()
    feeder = polls = None
    try:
        ingest = start_daemon("--serial", pty.path, "--db", dsn, state_dir=tmp_path / "all")
        ingest.wait_for("reading serial device")
        web = start_daemon("--role", "web", "--db", dsn, state_dir=tmp_path / "web")
        web.wait_for("receiving live points from the database")
        pty.write(b"partial\n")
        feeder = Feeder(pty)
        polls = LongPolls(web)
        assert eventually(lambda: primary.count() >= RATE)

        # The standby stops receiving; the primary commits more; it dies.
        link.go_dark()
        replicated_at_most = primary.count()
        assert eventually(lambda: primary.count() >= replicated_at_most + RATE // 2)
        committed = primary.count()
        primary.kill()
        link.close()
        assert standby.count() <= replicated_at_most < committed
        standby.promote()
        promoted = feeder.written

        assert eventually(lambda: standby.count() >= promoted + RATE)
        assert eventually(lambda: polls.answers and polls.answers[-1] >= 1000 + promoted)
        polls.stop()
        written = feeder.stop()
        assert eventually(lambda: standby.count() == written), (written, ingest.output)
        assert standby.sql("SELECT ms FROM readings ORDER BY stamp") == [
            (1000 + i,) for i in range(written)
        ]
        assert rollups_match_readings(standby)
        assert standby.sql("SELECT sum(events) FROM readings_hourly") == [(written,)]
        assert polls.answers == sorted(set(polls.answers))
        ingest.wait_for("the database server changed")
        web.wait_for("live points from the database are back")

    finally:
        for running in (feeder, polls):
            if running is not None:
                running.stop()
        pty.close()
