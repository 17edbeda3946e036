"""
Fixtures: a private PostgreSQL cluster for the whole run, a fresh database
per test, a real pty standing in for the Arduino, and ``twistd -n blip`` as a
child process.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import psycopg2
import pytest
import pytest_twisted
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from blip.database import Pool
from blip.embedded import Cluster, EmbeddedError
from blip.store import Store

ROOT = Path(__file__).resolve().parent.parent
#: How long any wait for an event may take before the test fails.
TIMEOUT = 30.0


def shared_tempdir(prefix: str) -> Path:
    """
    :return: a new temporary folder that the unprivileged database user can
        enter too (the default ones are private to their owner).
    """
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


def _cluster_or_fail(root: Path) -> Cluster:
    try:
        return Cluster.at(root)
    except EmbeddedError as e:
        pytest.fail(f"the tests need PostgreSQL's server programs: {e}", pytrace=False)


def _must(cluster: Cluster, argv: list[str]) -> None:
    done = cluster.run_sync(argv)
    if done.returncode != 0:
        log = cluster.log_file.read_text() if cluster.log_file.exists() else ""
        pytest.fail(f"{argv[0]} {argv[1]} failed: {done.stdout}{done.stderr}{log}", pytrace=False)


class TestCluster:
    """
    The run's PostgreSQL cluster, which tests may stop and start again.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def dsn(self, dbname: str = "postgres") -> str:
        """:return: the connection string of database ``dbname``."""
        return self.cluster.dsn(dbname)

    def stop(self) -> None:
        """Stop the server (fast shutdown: connections are cut)."""
        _must(self.cluster, self.cluster.stop_argv())

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        _must(self.cluster, self.cluster.start_argv())

    def running(self) -> bool:
        """Whether the server is running."""
        return self.cluster.run_sync(self.cluster.status_argv()).returncode == 0

    def sql(self, dbname: str, statement: str, params: tuple = ()) -> list[tuple]:
        """
        Run one statement synchronously and return its rows (for checks
        made outside the code under test).
        """
        connection = psycopg2.connect(self.dsn(dbname))
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[TestCluster]:
    """
    A private PostgreSQL cluster, started once for the whole run.
    """
    root = shared_tempdir("blip-test-pg-")
    cluster = _cluster_or_fail(root / "pg")
    cluster.prepare_folders()
    _must(cluster, cluster.initdb_argv())
    cluster.configure()
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write("fsync = off\nfull_page_writes = off\nmax_connections = 200\n")
    cluster.prepare_folders()
    _must(cluster, cluster.start_argv())
    try:
        yield TestCluster(cluster)
    finally:
        cluster.run_sync(cluster.stop_argv())
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stoppable_cluster(pg_cluster: TestCluster) -> Iterator[TestCluster]:
    """
    The run's cluster, for a test that stops it: it is running again after
    the test, whatever happened.
    """
    try:
        yield pg_cluster
    finally:
        if not pg_cluster.running():
            pg_cluster.start()


@dataclass
class Database:
    """
    A fresh database of the test cluster.
    """

    cluster: TestCluster
    name: str

    @property
    def dsn(self) -> str:
        """Its connection string."""
        return self.cluster.dsn(self.name)

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one statement and return its rows."""
        return self.cluster.sql(self.name, statement, params)


@pytest.fixture
def database(pg_cluster: TestCluster) -> Iterator[Database]:
    """
    An empty database, dropped after the test.
    """
    name = "t_" + uuid.uuid4().hex[:16]
    pg_cluster.sql("postgres", f"CREATE DATABASE {name}")
    try:
        yield Database(pg_cluster, name)
    finally:
        try:
            pg_cluster.sql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except psycopg2.OperationalError:
            pass


@pytest_twisted.async_yield_fixture
async def store(database: Database) -> AsyncIterator[Store]:
    """
    A :class:`Store` on a fresh database with the schema applied.
    """
    from twisted.internet import reactor

    pool = Pool(database.dsn, 3, reactor)
    await pool.start()
    store = Store(pool)
    await store.apply_schema()
    try:
        yield store
    finally:
        pool.close()


@dataclass
class Pty:
    """
    A pseudo-terminal: the daemon opens ``path`` as its serial device, the
    test writes the Arduino's lines into ``master``.
    """

    master: int
    slave: int
    path: str

    def write(self, data: bytes) -> None:
        """Write bytes as the Arduino would."""
        os.write(self.master, data)

    def close(self) -> None:
        """Close both ends (the device vanishes)."""
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def open_pty() -> Pty:
    """
    :return: a new pty in raw mode.
    """
    master, slave = os.openpty()
    tty.setraw(slave)
    return Pty(master, slave, os.ttyname(slave))


class MeterLink:
    """
    A pty behind a symlink, as udev gives an Arduino a stable name: the
    daemon opens :attr:`path`; :meth:`replug` makes the device vanish and
    come back as a new pty behind the same name.

    :param path: the symlink.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.pty = open_pty()
        path.symlink_to(self.pty.path)

    def write(self, data: bytes) -> None:
        """Write into the pty that is plugged in now."""
        with self.lock:
            self.pty.write(data)

    def unplug(self) -> None:
        """Close the pty: the device vanishes."""
        with self.lock:
            self.pty.close()
            self.path.unlink()

    def plug(self) -> None:
        """A new pty appears behind the same name."""
        with self.lock:
            self.pty = open_pty()
            staged = self.path.with_name(self.path.name + ".new")
            staged.symlink_to(self.pty.path)
            staged.replace(self.path)

    def replug(self) -> None:
        """Unplug and plug again at once."""
        with self.lock:
            self.unplug()
            self.plug()

    def close(self) -> None:
        """Close the pty for good."""
        self.pty.close()


@pytest.fixture
def meter_link(tmp_path: Path) -> Iterator[MeterLink]:
    """
    A pty standing in for the Arduino, reached through a symlink that can
    be pointed at a new pty.
    """
    link = MeterLink(tmp_path / "arduino")
    try:
        yield link
    finally:
        link.close()


@pytest.fixture
def pty_meter() -> Iterator[Pty]:
    """
    A pty standing in for the Arduino's serial port.
    """
    pty = open_pty()
    try:
        yield pty
    finally:
        pty.close()


def free_port() -> int:
    """
    :return: a TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    """
    ``twistd -n blip`` running as a child process. Its output is read all
    the time by a thread into :attr:`output`, so it never blocks on a full
    pipe however much it logs.
    """

    args: list[str]
    env: dict[str, str]
    port: int = 0
    #: What the daemon logs once it is ready, when that is not that it
    #: serves HTTP (a node that does not).
    ready: Optional[str] = None
    #: Options of twistd itself (before ``blip``).
    twistd_args: list[str] = field(default_factory=list)
    process: Optional[subprocess.Popen[bytes]] = None
    output: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _reader: Optional[threading.Thread] = None
    _ended: bool = False

    def start(self) -> "Daemon":
        """Start it; return once it serves HTTP."""
        twistd = str(Path(sys.executable).parent / "twistd")
        argv = [twistd, "--nodaemon", "--pidfile=", *self.twistd_args, "blip", *self.args]
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output = []
        self._ended = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        found = self.wait_for((self.ready or r"starting on (\d+)") + "|Server Shut Down")
        if "Shut Down" in found.group(0):
            raise AssertionError("daemon did not start:\n" + "\n".join(self.output))
        if self.ready is None:
            self.port = int(found.group(1))
        return self

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.process is not None
        return self.process.pid

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        partial = b""
        while chunk := os.read(self.process.stdout.fileno(), 65536):
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            with self._changed:
                self.output.extend(line.decode("utf-8", "replace") for line in lines)
                self._changed.notify_all()
        with self._changed:
            if partial:
                self.output.append(partial.decode("utf-8", "replace"))
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = TIMEOUT, since: int = 0) -> re.Match[str]:
        """
        Wait until the daemon logs a line matching ``pattern``.

        :param since: ignore lines before this index of :attr:`output`.
        """
        regex = re.compile(pattern)
        checked = since
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(checked, len(self.output)):
                    match = regex.search(self.output[index])
                    if match:
                        return match
                checked = len(self.output)
                if self._ended:
                    raise AssertionError(
                        f"daemon exited before logging {pattern!r}:\n" + "\n".join(self.output)
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no log line matching {pattern!r}:\n" + "\n".join(self.output)
                    )
                self._changed.wait(left)

    def url(self, path: str) -> str:
        """:return: the URL of ``path`` on the daemon."""
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit; return the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(TIMEOUT)
        finally:
            if self._reader is not None:
                self._reader.join(TIMEOUT)
            if self.process.stdout is not None:
                self.process.stdout.close()
        return code


@pytest.fixture
def daemon_env() -> dict[str, str]:
    """
    The environment for daemon children: ours without BLIP_ settings.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("BLIP_")}


@pytest.fixture
def start_daemon(daemon_env: dict[str, str]) -> Iterator:
    """
    A function that starts ``twistd -n blip`` with the given arguments (plus
    a free port and a private state dir, shared by the test's daemons
    unless ``state_dir`` gives one; ``ready`` is what a daemon without a
    listener logs when it is ready; ``env`` adds to its environment;
    ``twistd`` are options of twistd itself); every daemon is stopped after
    the test.
    """
    started: list[Daemon] = []
    state = shared_tempdir("blip-test-state-")

    def start(
        *args: str, listen: bool = True, state_dir: Optional[Path] = None,
        ready: Optional[str] = None, env: Optional[dict[str, str]] = None,
        twistd: tuple[str, ...] = (),
    ) -> Daemon:
        extra = ["--state-dir", str(state_dir or state)]
        if listen:
            extra += ["--listen", f"tcp:{free_port()}:interface=127.0.0.1"]
        daemon = Daemon(
            [*extra, *args], {**daemon_env, **(env or {})}, ready=ready, twistd_args=list(twistd)
        )
        started.append(daemon)
        return daemon.start()

    start.state = state
    yield start
    for daemon in started:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def log_events() -> Iterator[EventLoggingObserver]:
    """
    Every log event emitted during the test.
    """
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)
