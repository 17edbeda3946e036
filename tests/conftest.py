"""
Fixtures: a private PostgreSQL cluster for the whole run, a fresh database
per test, a real pty standing in for the Arduino, and ``twistd -n blip`` as a
child process.
"""

import os
import re
import resource
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
from typing import TYPE_CHECKING, Any, Callable, Optional

import psycopg2
import psycopg2.errors
import pytest
import pytest_twisted
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from blip.db.embedded import Cluster, EmbeddedError
from blip.db.pool import Pool
from blip.db.readings import Readings
from blip.db.schema import Schema

ROOT = Path(__file__).resolve().parent.parent
#: How long any wait for an event may take before the test fails.
TIMEOUT = 30.0


# --- Parallel runs (pytest-xdist): the long tests first ---


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Run the tests marked ``long(seconds)`` first, the longest first, the
    rest in their order: the workers of a parallel run (``make test``)
    then each begin with one of them and share the short ones out while
    they wait, instead of one finishing the run alone with a long one.
    """

    def seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("long")
        return float(mark.args[0]) if mark is not None else 0.0

    items.sort(key=seconds, reverse=True)


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


def sql_at(dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    """
    Run one statement synchronously on the database of ``dsn``, in a
    connection of its own, and return its rows.
    """
    connection = psycopg2.connect(dsn)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


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
        return sql_at(self.dsn(dbname), statement, params)


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


def _fresh_database(pg_cluster: TestCluster) -> Iterator[Database]:
    name = "t_" + uuid.uuid4().hex[:16]
    pg_cluster.sql("postgres", f"CREATE DATABASE {name}")
    try:
        yield Database(pg_cluster, name)
    finally:
        try:
            pg_cluster.sql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except psycopg2.OperationalError:
            pass


@pytest.fixture
def database(pg_cluster: TestCluster) -> Iterator[Database]:
    """
    An empty database, dropped after the test.
    """
    yield from _fresh_database(pg_cluster)


@pytest.fixture
def other_database(pg_cluster: TestCluster) -> Iterator[Database]:
    """
    A second empty database (another logger's, say), dropped after the
    test.
    """
    yield from _fresh_database(pg_cluster)


class Forger:
    """
    A session of a role that may only read the test's database (such as the
    read-only role the README suggests for Grafana), announcing points
    nobody stored on the points channel.

    :param database: the test's database.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self.role = "reader_" + uuid.uuid4().hex[:12]
        database.sql(f"CREATE ROLE {self.role} LOGIN")
        database.sql(f"GRANT CONNECT ON DATABASE {database.name} TO {self.role}")
        database.sql(f"GRANT USAGE ON SCHEMA public TO {self.role}")
        database.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {self.role}")
        self.connection = psycopg2.connect(database.dsn)
        self.connection.autocommit = True
        with self.connection.cursor() as cursor:
            cursor.execute(f"SET ROLE {self.role}")

    def may_write(self) -> bool:
        """:return: whether the role may write readings (it may not)."""
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("INSERT INTO readings VALUES (1, 1, 1)")
        except psycopg2.errors.InsufficientPrivilege:
            return False
        return True

    def notify(self, *payloads: str) -> None:
        """Send each payload on the points channel, as ``NOTIFY`` does."""
        from blip.db.readings import CHANNEL

        with self.connection.cursor() as cursor:
            for payload in payloads:
                cursor.execute(f"NOTIFY {CHANNEL}, %s", (payload,))

    def close(self) -> None:
        """Disconnect and drop the role."""
        self.connection.close()
        self.database.sql(f"DROP OWNED BY {self.role}")
        self.database.sql(f"DROP ROLE {self.role}")


@pytest.fixture
def forger(database: Database) -> Iterator[Forger]:
    """
    A read-only role's session on the test's database that forges
    notifications.
    """
    forger = Forger(database)
    try:
        yield forger
    finally:
        forger.close()


@pytest_twisted.async_yield_fixture
async def raw_pool(database: Database) -> AsyncIterator[Pool]:
    """
    An open pool on a fresh database whose schema is not applied.
    """
    from twisted.internet import reactor

    pool = Pool(database.dsn, 3, reactor)
    await pool.start()
    try:
        yield pool
    finally:
        pool.close()


@pytest_twisted.async_yield_fixture
async def store(raw_pool: Pool) -> AsyncIterator[Readings]:
    """
    The readings of a fresh database with the schema applied; the other
    sets of queries are built on its pool, ``store.pool``.
    """
    await Schema(raw_pool).apply()
    yield Readings(raw_pool)


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
    #: The twistd program (ours when None) and the folder it runs in.
    program: Optional[Path] = None
    cwd: Path = ROOT
    #: The most files it may open (RLIMIT_NOFILE, soft and hard), or None
    #: for ours.
    files: Optional[int] = None
    process: Optional[subprocess.Popen[bytes]] = None
    output: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _reader: Optional[threading.Thread] = None
    _ended: bool = False

    def start(self) -> "Daemon":
        """Start it; return once it serves HTTP."""
        twistd = str(self.program or Path(sys.executable).parent / "twistd")
        argv = [twistd, "--nodaemon", "--pidfile=", *self.twistd_args, "blip", *self.args]
        files = self.files
        limit = None if files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
        self.process = subprocess.Popen(
            argv, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=limit,
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
    ``twistd`` are options of twistd itself; ``program`` another twistd,
    run in ``cwd``); every daemon is stopped after the test.
    ``files`` the most files it may open;
    ``start_daemon.refused(...)`` starts one that must refuse to start,
    and returns its exit status and output.
    """
    started: list[Daemon] = []
    state = shared_tempdir("blip-test-state-")

    def daemon(
        *args: str, listen: bool = True, state_dir: Optional[Path] = None,
        ready: Optional[str] = None, env: Optional[dict[str, str]] = None,
        twistd: tuple[str, ...] = (), program: Optional[Path] = None, cwd: Path = ROOT,
        files: Optional[int] = None,
    ) -> Daemon:
        extra = ["--state-dir", str(state_dir or state)]
        if listen:
            extra += ["--listen", f"tcp:{free_port()}:interface=127.0.0.1"]
        made = Daemon(
            [*extra, *args], {**daemon_env, **(env or {})}, ready=ready, twistd_args=list(twistd),
            program=program, cwd=cwd, files=files,
        )
        started.append(made)
        return made

    def start(*args: str, **options: Any) -> Daemon:
        return daemon(*args, **options).start()

    def refused(*args: str, **options: Any) -> tuple[int, list[str]]:
        made = daemon(*args, **options)
        try:
            made.start()
        except AssertionError:
            if not made._ended or made.process is None:
                raise
            made.process.wait(TIMEOUT)
            return made.stop(), made.output
        raise AssertionError("the daemon started:\n" + "\n".join(made.output))

    start.state = state
    start.refused = refused
    yield start
    for daemon in started:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)
    shutil.rmtree(state, ignore_errors=True)


class SmallFilesystem:
    """
    A small tmpfs of the test's own, which the test can fill up and free.

    :param path: where it is mounted.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> None:
        """Take every byte left (the last ones one at a time)."""
        with open(self._filler, "ab", buffering=0) as f:
            for size in (1 << 20, 1 << 12, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    pass

    def free(self) -> None:
        """Give back what :meth:`fill` took."""
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def small_filesystem() -> Iterator[SmallFilesystem]:
    """
    A tmpfs of 8 MiB mounted on a temporary folder (the tests run as root),
    unmounted after the test.
    """
    folder = shared_tempdir("blip-test-fs-")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(folder)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        folder.rmdir()
        pytest.fail(f"the tests need to mount a tmpfs, as root: {done.stderr.strip()}", pytrace=False)
    try:
        yield SmallFilesystem(folder)
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True)
        folder.rmdir()


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


if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock
    from twisted.web.http_headers import Headers
    from twisted.web.iweb import IAgent
    from twisted.web.resource import IResource

    from blip.counters import Counters
    from blip.live.hub import Hub
    from blip.meters import Meters
    from blip.web.access import Rules
    from blip.web.answers import Cors
    from blip.web.connections import Caps
    from blip.web.health import Health
    from blip.web.v1.live import Live


@dataclass
class Served:
    """
    The daemon's whole HTTP site (legacy routes, /api/v1, /healthz,
    /metrics), built as the daemon builds it (``web_site``: access
    control, metrics, the hot routes and every application) over a real
    database, with a fake clock for "now", timeouts, heartbeats and
    health; reached over a real port or in memory.
    """

    url: str
    store: Readings
    hub: "Hub"
    live: "Live"
    clock: "Clock"
    health: "Health"
    counters: "Counters"
    #: Makes the HTTP client of one request.
    agent: Any
    #: What listens on the real port (None in memory).
    listening: Any = None

    async def close(self) -> None:
        """End the live streams, release the long-polls, stop listening."""
        self.live.close()
        self.hub.close()
        if self.listening is not None:
            await self.listening.stopListening()

    @property
    def port(self) -> int:
        """The port it listens on (a site on a real port)."""
        return int(self.url.rsplit(":", 1)[1])

    async def get(
        self, path: str, headers: Optional[dict[str, str]] = None, method: str = "GET",
        body: Optional[bytes] = None,
    ) -> tuple[int, "Headers", bytes]:
        """:return: status, headers and body of one request (with ``body``, if given)."""
        from io import BytesIO

        from twisted.web.client import FileBodyProducer, readBody
        from twisted.web.http_headers import Headers

        sent = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        response = await self.agent().request(
            method.encode(), (self.url + path).encode(), sent, producer
        )
        received = response.headers.copy()
        if isinstance(response.length, int):
            # Twisted's client moves Content-Length out of the headers.
            received.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        return response.code, received, await readBody(response)


def in_memory(root: "IResource") -> "IAgent":
    """
    :return: an HTTP client of ``root`` in memory (treq's
        ``RequestTraversalAgent``: a real HTTP client and server over
        ``twisted.test.iosim``), whose answers arrive as soon as they are
        finished, however late.
    """
    from treq.testing import RequestTraversalAgent
    from twisted.internet import reactor
    from twisted.web.resource import Resource

    class Flushing(Resource):
        # Above the site's root, it only moves each finished answer to the
        # client (the in-memory connections move data when flushed).
        isLeaf = True

        def render(self, request: Any) -> Any:
            request.notifyFinish().addBoth(lambda _: reactor.callLater(0, agent.flush))
            return root.render(request)

    agent = RequestTraversalAgent(Flushing())
    return agent


def open_site(
    store: Readings, meters: "Meters", now: float = 1_700_000_000.0, has_source: bool = True,
    max_clients: int = 100, counters: Optional["Counters"] = None, longpoll_timeout: float = 0.0,
    max_waiters: int = 10_000, rules: Optional["Rules"] = None, memory: bool = False,
    caps: Optional["Caps"] = None, cors: Optional["Cors"] = None,
    raw_since: Callable[[], Optional[int]] = lambda: None, tls: bool = False,
) -> Served:
    """
    Build the daemon's site over ``store`` as ``blip.service`` builds it,
    with a fake clock at ``now``, and serve it on a real port of 127.0.0.1
    (over TLS with ``tls``, with Twisted's own test certificate) or in
    memory; :meth:`Served.close` closes it. ``raw_since`` says since when
    raw points are kept.
    """
    from prometheus_client import CollectorRegistry
    from twisted.internet import reactor
    from twisted.internet.task import Clock
    from twisted.web.client import Agent, HTTPConnectionPool

    from blip.counters import Counters
    from blip.db.legacy import LegacyQueries
    from blip.db.tokens import Tokens
    from blip.db.v1 import V1Queries
    from blip.live.hub import Hub
    from blip.meters import default_meter
    from blip.service import STATIC
    from blip.web.access import Refusals, Rules
    from blip.web.answers import ANY_ORIGIN
    from blip.web.connections import Caps, Door
    from blip.web.health import Health, Operations
    from blip.web.hot import HotRoutes
    from blip.web.latest import Latest
    from blip.web.legacy import LegacyApi
    from blip.web.metrics import RequestMetrics, StateCollector
    from blip.web.site import web_site
    from blip.web.v1.live import Live
    from blip.web.v1.routes import ApiV1
    from blip.web.v1.writes import Writes

    clock = Clock()
    clock.advance(now)
    counters = counters or Counters()
    hub = Hub(max_waiters=max_waiters)
    live = Live(hub, store, meters, clock, max_clients=max_clients)
    registry = CollectorRegistry()
    registry.register(StateCollector(counters, hub, live, store.pool))
    health = Health(store, clock, 600.0, has_source)
    latest = Latest(hub, store)
    rules = rules or Rules()
    refusals = Refusals(counters, clock)
    site = web_site(
        HotRoutes(hub, latest, meters, clock, longpoll_timeout, reactor),
        LegacyApi(LegacyQueries(store.pool), clock, STATIC, raw_since),
        ApiV1(
            V1Queries(store.pool), latest, live, meters, clock,
            Writes(
                Tokens(store.pool), store, hub, counters, clock,
                lambda m: None if m in meters else meters.add(default_meter(m)),
            ),
            raw_since,
        ),
        Operations(health, registry),
        RequestMetrics(registry),
        rules,
        refusals,
        cors or ANY_ORIGIN,
        Door(rules, caps or Caps(10_000), counters, refusals, clock),
        reactor,
    )
    if memory:
        client = in_memory(site.resource)
        return Served("http://blip.test", store, hub, live, clock, health, counters, lambda: client)
    if tls:
        import twisted.test
        from twisted.internet.ssl import DefaultOpenSSLContextFactory

        pem = str(Path(twisted.test.__file__).parent / "server.pem")
        port = reactor.listenSSL(0, site, DefaultOpenSSLContextFactory(pem, pem), interface="127.0.0.1")
    else:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return Served(
        f"{'https' if tls else 'http'}://127.0.0.1:{port.getHost().port}", store, hub, live, clock, health, counters,
        lambda: Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)), port,
    )


@pytest_twisted.async_yield_fixture
async def serve(store: Readings) -> AsyncIterator:
    """
    A function that serves the whole site for the given meters (and
    settings, as :func:`open_site` takes them) over the test's database,
    or over ``database``; every site is closed after the test.
    """
    sites = []

    def start(meters: "Meters", database: Optional[Readings] = None, **settings: Any) -> Served:
        site = open_site(store if database is None else database, meters, **settings)
        sites.append(site)
        return site

    yield start
    for site in sites:
        await site.close()


def exchange(port: int, request: bytes, timeout: float = TIMEOUT) -> tuple[Optional[int], bytes]:
    """
    Send raw bytes to a server on 127.0.0.1 and read until it closes the
    connection (blocking: run it in a thread from the reactor).

    :return: the status code (None if there was no status line) and the
        body.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None, answer
    return int(parts[1]), body


def fetch(
    port: int, request: bytes, timeout: float = 10.0
) -> tuple[Optional[int], dict[bytes, bytes], bytes]:
    """
    Send raw bytes and read one answer (blocking: run it in a thread):
    its head, then its body by Content-Length, by chunks or up to the
    close; the head only of a live stream.

    :return: status (None if the connection closed without a status
        line), headers by lower-case name, body.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(request)
        except OSError:
            pass
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return None, {}, data
                data += chunk
            head, data = data.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                return None, {}, head
            status = int(parts[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                continue
            break
        if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            return status, headers, b""
        no_body = request.startswith(b"HEAD ") or status in (204, 304)
        length = int(headers[b"content-length"]) if b"content-length" in headers and not no_body else None
        while length is None or len(data) < length:
            if no_body or (headers.get(b"transfer-encoding") == b"chunked" and data.endswith(b"0\r\n\r\n")):
                break
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            data += chunk
        return status, headers, data


def closed_by_server(s: socket.socket) -> bool:
    """
    :return: whether the server closed the connection ``s`` (having sent
        nothing left unread).
    """
    import select

    if not select.select([s], [], [], 0)[0]:
        return False
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def read_response(s: socket.socket) -> tuple[bytes, bytes]:
    """
    :return: the head and body of one HTTP response (with a Content-Length)
        read from ``s``, which may stay open.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "connection closed before the answer"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")][0])
    while len(body) < length:
        body += s.recv(65536)
    return head, body


def within(d: "Deferred[Any]", timeout: float = TIMEOUT) -> "Deferred[Any]":
    """
    :return: ``d``, failing with a timeout if it has not fired in
        ``timeout`` seconds (so that a test waiting for an event that never
        comes fails instead of hanging).
    """
    from twisted.internet import reactor

    return d.addTimeout(timeout, reactor)


# --- Waiting for what has no event to wait on: one helper, in two forms ---

#: Seconds between two looks at a condition.
POLL = 0.005


def _looks(timeout: float) -> Iterator[None]:
    """Yield once per look at a condition, until ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    yield
    while time.monotonic() < deadline:
        yield


async def wait_until(check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    """
    Wait, letting the reactor run, until ``check()`` returns something
    true (for a test on the reactor: the code under test runs meanwhile).

    :return: what ``check()`` returned.
    :raise AssertionError: when it never does within ``timeout`` seconds.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in _looks(timeout):
        result = check()
        if result:
            return result
        await deferLater(reactor, POLL, lambda: None)
    raise AssertionError("condition not reached in time")


def eventually(check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    """
    Ask ``check()`` until it returns something true, blocking (for a test
    off the reactor, of a daemon running as a child: the daemon writes in
    batches, so a point is queryable a moment after it is live).

    :return: what ``check()`` returned last: something true, or what it
        returned when ``timeout`` seconds passed (the caller's ``assert``
        says what was expected).
    """
    result = None
    for _ in _looks(timeout):
        result = check()
        if result:
            return result
        time.sleep(POLL * 4)
    return result


# --- MQTT: a private Mosquitto broker and a subscriber ---


def _mosquitto_program(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.fail(
            f"the tests need the Mosquitto MQTT broker ({name} not found);"
            " run ./tools/need mosquitto or: sudo apt-get install mosquitto",
            pytrace=False,
        )
    return path


@dataclass
class Mosquitto:
    """
    A private Mosquitto broker on a free port of 127.0.0.1, with one user,
    no persistence (a restart forgets retained messages), which a test may
    stop and start again on the same port.
    """

    folder: Path
    port: int
    user: str = "meter"
    password: str = "s3cret:p@ss/word"
    tls_port: Optional[int] = None
    process: Optional[subprocess.Popen[bytes]] = None

    def url(self, prefix: str = "blip", password: Optional[str] = None, tls: bool = False) -> str:
        """:return: the broker URL the daemon is given, password quoted."""
        from urllib.parse import quote

        secret = quote(self.password if password is None else password, safe="")
        if tls:
            return f"mqtts://{self.user}:{secret}@localhost:{self.tls_port}/{prefix}"
        return f"mqtt://{self.user}:{secret}@127.0.0.1:{self.port}/{prefix}"

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        log = open(self.folder / "mosquitto.log", "ab")
        self.process = subprocess.Popen(
            [_mosquitto_program("mosquitto"), "-c", str(self.folder / "mosquitto.conf")],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("mosquitto did not start:\n" + self.log())
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the broker and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(TIMEOUT)

    def log(self) -> str:
        """:return: what the broker logged."""
        path = self.folder / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def subscribe(self, topic: str = "#") -> "Subscriber":
        """:return: a connected subscriber to ``topic``."""
        return Subscriber(self, topic)


@dataclass(frozen=True)
class Received:
    """One message a subscriber received."""

    topic: str
    payload: str
    retain: bool


class Subscriber:
    """
    An MQTT client (paho, in its own network thread) that records every
    message of a topic filter; tests wait on what it has seen.
    """

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        import threading

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[Received] = []
        self._changed = threading.Condition()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
        self._client.username_pw_set(broker.user, broker.password)
        subscribed = threading.Event()
        self._client.on_connect = lambda c, u, f, reason, p: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.on_message = self._arrived
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()
        if not subscribed.wait(TIMEOUT):
            self.close()
            raise AssertionError("the test subscriber could not subscribe:\n" + broker.log())

    def _arrived(self, client, userdata, message) -> None:
        with self._changed:
            self.messages.append(
                Received(message.topic, message.payload.decode("utf-8", "replace"), bool(message.retain))
            )
            self._changed.notify_all()

    def wait_for(self, check, timeout: float = TIMEOUT, what: str = ""):
        """
        Wait until ``check(messages)`` returns something true, and return it.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = check(list(self.messages))
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(f"{m.topic} {m.payload}" for m in self.messages[-40:])
                    raise AssertionError(f"never received {what or check}; last messages:\n{seen}")
                self._changed.wait(left)

    def latest(self, topic: str, since: int = 0) -> Optional[str]:
        """:return: the payload last received on ``topic`` (after index ``since``)."""
        with self._changed:
            for message in reversed(self.messages[since:]):
                if message.topic == topic:
                    return message.payload
        return None

    def wait_latest(self, topic: str, check=lambda payload: True, since: int = 0) -> str:
        """Wait until the latest payload of ``topic`` passes ``check``; return it."""

        def found(messages: list[Received]) -> Optional[str]:
            for message in reversed(messages[since:]):
                if message.topic == topic:
                    return message.payload if check(message.payload) else None
            return None

        return self.wait_for(found, what=f"a matching message on {topic}")

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """
    A private Mosquitto broker (with a password file, and a TLS listener
    whose certificate authority is ``folder/ca.pem``), stopped after the
    test.
    """
    folder = shared_tempdir("blip-test-mqtt-")
    broker = Mosquitto(folder, free_port(), tls_port=free_port())
    passwords = folder / "passwords"
    done = subprocess.run(
        [_mosquitto_program("mosquitto_passwd"), "-b", "-c", str(passwords), broker.user, broker.password],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"mosquitto_passwd failed: {done.stdout}{done.stderr}", pytrace=False)
    _write_certificates(folder)
    (folder / "mosquitto.conf").write_text(
        "per_listener_settings false\n"
        "allow_anonymous false\n"
        f"password_file {passwords}\n"
        "persistence false\n"
        "user root\n"
        f"listener {broker.port} 127.0.0.1\n"
        f"listener {broker.tls_port} 127.0.0.1\n"
        f"certfile {folder / 'server.pem'}\n"
        f"keyfile {folder / 'server.key'}\n"
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _write_certificates(folder: Path) -> None:
    """
    Write a throw-away certificate authority (``ca.pem``) and a server
    certificate for ``localhost`` signed by it.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blipserver test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ))


# --- A serial line relayed over TCP: Debian's ser2net in front of a pty ---


def _relay_program(name: str, package: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.fail(
            f"the tests of a relayed serial line need {name} (not found);"
            f" run ./tools/need ser2net or: sudo apt-get install {package}",
            pytrace=False,
        )
    return path


@dataclass
class Ser2net:
    """
    ser2net relaying a pty (as an ESP-Link or a ser2net on a Raspberry Pi
    relays an Arduino's serial port) on a port of 127.0.0.1, in the
    foreground, with its configuration in a folder of the test; a test may
    kill it and start it again on the same port.

    With :attr:`isolated`, it runs in a network namespace of its own (with
    its own loopback), which a daemon started through :meth:`twistd` joins,
    and which :meth:`silence` cuts off: the relay then vanishes without
    closing anything, as a relay does that loses its power or its network.

    :param folder: where its configuration and log are.
    :param pty: the pty it relays.
    :param port: its TCP port.
    :param rfc2217: whether it speaks RFC 2217 (Telnet) rather than raw TCP.
    :param speed: the serial speed it sets.
    :param isolated: whether it runs in a network namespace of its own (a
        new one at each start).
    """

    folder: Path
    pty: Pty
    port: int
    rfc2217: bool = False
    speed: int = 9600
    isolated: bool = False
    process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        """The daemon's ``--serial``."""
        return f"{'rfc2217' if self.rfc2217 else 'tcp'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it listens."""
        accepter = "telnet(rfc2217),tcp" if self.rfc2217 else "tcp"
        config = self.folder / f"ser2net-{self.port}.yaml"
        config.write_text(
            "%YAML 1.1\n---\n"
            "connection: &meter\n"
            f"  accepter: {accepter},127.0.0.1,{self.port}\n"
            f"  connector: serialdev,{self.pty.path},{self.speed}n81,local\n"
            "  options:\n"
            "    kickolduser: true\n"
            "    mdns: false\n"
        )
        argv = [_relay_program("ser2net", "ser2net"), "-d", "-c", str(config)]
        if self.isolated:
            if os.geteuid() != 0:
                pytest.fail("this test needs root (it puts the relay in a network namespace)", pytrace=False)
            # unshare and sh exec into ser2net: the same process holds the
            # namespace. Without an address other than the loopback ones,
            # getaddrinfo (AI_ADDRCONFIG) finds no IPv4 address for 127.0.0.1.
            ip = _relay_program("ip", "iproute2")
            setup = f"{ip} link set lo up && {ip} addr add 192.0.2.1/32 dev lo"
            unshare = _relay_program("unshare", "util-linux")
            argv = [unshare, "--net", "--", "sh", "-c", f'{setup} && exec "$@"', "sh", *argv]
        log = open(self._log, "ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + TIMEOUT
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("ser2net did not start:\n" + self.log())
            time.sleep(0.02)

    def _listening(self) -> bool:
        assert self.process is not None
        try:
            table = Path(f"/proc/{self.process.pid}/net/tcp").read_text()
        except OSError:
            return False
        # local_address is ADDRESS:PORT in hex; state 0A is LISTEN.
        return any(
            fields[1].endswith(f":{self.port:04X}") and fields[3] == "0A"
            for fields in (line.split() for line in table.splitlines()[1:])
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop it with ``sig`` and wait for the end."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(TIMEOUT)

    def _in_namespace(self, *argv: str) -> None:
        assert self.isolated and self.process is not None
        nsenter = _relay_program("nsenter", "util-linux")
        subprocess.run([nsenter, f"--net=/proc/{self.process.pid}/ns/net", "--", *argv], check=True)

    def silence(self) -> None:
        """Cut the namespace's loopback: nothing gets through, nothing is closed."""
        self._in_namespace(_relay_program("ip", "iproute2"), "link", "set", "lo", "down")

    def restore(self) -> None:
        """Bring the loopback back."""
        self._in_namespace(_relay_program("ip", "iproute2"), "link", "set", "lo", "up")

    def twistd(self) -> Path:
        """:return: a twistd program that runs in the relay's namespace."""
        assert self.isolated and self.process is not None
        program = self.folder / f"twistd-in-namespace-{self.port}"
        nsenter = _relay_program("nsenter", "util-linux")
        program.write_text(
            "#!/bin/sh\n"
            f"exec {nsenter} --net=/proc/{self.process.pid}/ns/net -- "
            f"'{Path(sys.executable).parent / 'twistd'}' \"$@\"\n"
        )
        program.chmod(0o755)
        return program

    def log(self) -> str:
        """:return: what it logged."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    @property
    def _log(self) -> Path:
        return self.folder / f"ser2net-{self.port}.log"


@pytest.fixture
def ser2net(pty_meter: Pty) -> Iterator[Callable[..., Ser2net]]:
    """
    A function that makes (not starts) a ser2net relaying the pty
    ``pty_meter`` on a free port (``rfc2217``, ``speed``, ``isolated`` as
    :class:`Ser2net` takes them); each is killed after the test.
    """
    folder = shared_tempdir("blip-test-ser2net-")
    made: list[Ser2net] = []

    def make(**options: Any) -> Ser2net:
        relay = Ser2net(folder, pty_meter, free_port(), **options)
        made.append(relay)
        return relay

    try:
        yield make
    finally:
        for relay in made:
            relay.kill()
        shutil.rmtree(folder, ignore_errors=True)


def make_token(database: Database, meters: list[int], name: str = "device") -> str:
    """
    Make a device token of the write API for ``meters``, as ``blip token
    create`` does.

    :return: the token.
    """
    from blip.db.tokens import CREATE, new_token

    made = new_token(name, meters, int(time.time() * 1000))
    database.sql(CREATE, made.row)
    return made.token
