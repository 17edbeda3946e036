"""
What every benchmark shares: the benchmarks' own PostgreSQL cluster, the
daemon under test (``twistd -n blip`` as a child process reading a pty),
process figures from ``/proc``, percentiles, a sampling profiler and the
JSON report.

Everything a benchmark keeps between runs lives under ``bench/state/``.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import tty
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import psycopg2

from blip.db.embedded import Cluster

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / "bench" / "state"
#: Seconds any wait for the daemon or the database may take.
TIMEOUT = 60.0
#: Settings of the benchmarks' cluster, on top of PostgreSQL's defaults. The
#: statement log (JSON lines) lets the query benchmark see the exact SQL the
#: daemon runs for a route; it is switched on only while it looks.
SETTINGS = """
max_connections = 300
shared_buffers = 512MB
max_wal_size = 4GB
logging_collector = on
log_destination = 'stderr,jsonlog'
log_directory = 'log'
log_filename = 'postgresql'
log_rotation_age = 0
log_rotation_size = 0
"""
#: The name the benchmarks' own database sessions carry, so that the
#: statement log can tell them from the daemon's.
APPLICATION = "blipbench"


def parse_args(description: str, extra: Sequence[tuple[Sequence[str], dict[str, Any]]] = ()) -> argparse.Namespace:
    """
    The options every benchmark takes (``--quick``, ``--profile``) plus its
    own.

    :param extra: ``(flags, keyword arguments)`` of ``add_argument`` calls.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument(
        "--profile", action="store_true",
        help="sample the daemon with py-spy during the measured phase; summary on"
        " stderr, collapsed stacks under bench/state/",
    )
    for flags, kwargs in extra:
        parser.add_argument(*flags, **kwargs)
    return parser.parse_args()


def note(message: str) -> None:
    """Progress for the person running the benchmark (stderr; stdout is JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(report: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object."""
    print(json.dumps(report, indent=2), flush=True)


def percentiles(values_ms: Sequence[float]) -> dict[str, Optional[float]]:
    """
    :return: count, p50, p99 and max of ``values_ms``, rounded to µs.
    """
    if not values_ms:
        return {"n": 0, "min": None, "p50": None, "p99": None, "max": None}
    ordered = sorted(values_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(ordered), "min": round(ordered[0], 3), "p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1], 3)}


def raise_open_files(wanted: int) -> int:
    """
    Raise this process's open-file limit (inherited by the daemon) to at
    least ``wanted``, as ``ulimit -n`` would.

    :return: the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def free_port() -> int:
    """:return: a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- processes -------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """:return: user + system CPU seconds ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """:return: the resident set size of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children_of(pid: int) -> list[int]:
    """:return: the processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return found


def wait_idle(pid: int, quiet: float = 0.15, timeout: float = TIMEOUT) -> float:
    """
    Wait until ``pid`` uses (almost) no CPU for ``quiet`` seconds: the sign
    that it has handled everything sent to it.

    :return: seconds waited.
    """
    started = time.monotonic()
    last = cpu_seconds(pid)
    calm_since = time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(0.03)
        now = cpu_seconds(pid)
        if now - last > 0.011:
            calm_since = time.monotonic()
        last = now
        if time.monotonic() - calm_since >= quiet:
            break
    return time.monotonic() - started


# -- PostgreSQL --------------------------------------------------------------


class BenchCluster:
    """
    The benchmarks' private PostgreSQL cluster under ``bench/state/pg``,
    kept between runs (the year of data is cached in it) and run by the
    unprivileged ``postgres`` user when we are root, as the daemon's
    embedded cluster is.
    """

    def __init__(self) -> None:
        STATE.mkdir(parents=True, exist_ok=True)
        STATE.chmod(0o755)
        self.cluster = Cluster.at(STATE / "pg")

    def _must(self, argv: list[str]) -> None:
        done = self.cluster.run_sync(argv)
        if done.returncode != 0:
            raise SystemExit(f"{argv[0]} {argv[1]} failed: {done.stdout}{done.stderr}")

    def start(self) -> "BenchCluster":
        """Create the cluster on first use, then start it unless it runs."""
        cluster = self.cluster
        cluster.prepare_folders()
        if not cluster.initialized:
            note(f"creating the benchmark cluster in {cluster.data}")
            self._must(cluster.initdb_argv())
            cluster.configure()
            with open(cluster.data / "postgresql.conf", "a") as conf:
                conf.write(SETTINGS)
            cluster.prepare_folders()
        if cluster.run_sync(cluster.status_argv()).returncode != 0:
            self._must(cluster.start_argv())
        # A query benchmark killed while it read the statement log left it on.
        self.sql("postgres", "ALTER SYSTEM RESET log_statement")
        self.sql("postgres", "SELECT pg_reload_conf()")
        return self

    def stop(self) -> None:
        """Stop the server (the data stays)."""
        self.cluster.run_sync(self.cluster.stop_argv())

    @property
    def postmaster(self) -> int:
        """The server's main process id."""
        return int((self.cluster.data / "postmaster.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server and its live backends."""
        total = 0.0
        for pid in [self.postmaster, *children_of(self.postmaster)]:
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
        return total

    @property
    def statement_log(self) -> Path:
        """The JSON-lines server log."""
        return self.cluster.data / "log" / "postgresql.json"

    def dsn(self, dbname: str) -> str:
        """:return: the connection string of ``dbname``."""
        return self.cluster.dsn(dbname)

    def connect(self, dbname: str) -> Any:
        """:return: an autocommit psycopg2 connection to ``dbname``."""
        connection = psycopg2.connect(self.dsn(dbname), application_name=APPLICATION)
        connection.autocommit = True
        return connection

    def sql(self, dbname: str, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one statement on ``dbname``; return its rows."""
        connection = self.connect(dbname)
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()

    def fresh_database(self, dbname: str) -> None:
        """Drop ``dbname`` if it exists and create it empty."""
        self.sql("postgres", f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        self.sql("postgres", f'CREATE DATABASE "{dbname}"')

    def database_exists(self, dbname: str) -> bool:
        """Whether ``dbname`` exists."""
        return bool(self.sql("postgres", "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)))


# -- the daemon --------------------------------------------------------------


@dataclass
class Pty:
    """A pseudo-terminal: the daemon reads ``path``, we write into ``master``."""

    master: int
    slave: int
    path: str

    @classmethod
    def open(cls) -> "Pty":
        """:return: a new pty in raw mode."""
        master, slave = os.openpty()
        tty.setraw(slave)
        return cls(master, slave, os.ttyname(slave))

    def write_all(self, data: bytes) -> None:
        """Write every byte of ``data`` (blocks while the daemon lags)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view):]

    def close(self) -> None:
        """Close both ends."""
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class Daemon:
    """
    ``twistd -n blip`` as a child process, logging to a file under
    ``bench/state``.

    :param name: names its state dir and log file.
    :param args: the ``blip`` options (``--db``, ``--serial``, ...).
    """

    name: str
    args: list[str]
    port: int = field(default_factory=free_port)
    process: Optional[subprocess.Popen[bytes]] = None
    #: Whether it serves HTTP (an ingest node does not).
    listens: bool = True

    @property
    def log_file(self) -> Path:
        """Where its output goes."""
        return STATE / f"daemon-{self.name}.log"

    @property
    def pid(self) -> int:
        """Its process id."""
        assert self.process is not None
        return self.process.pid

    def start(self, *patterns: str) -> "Daemon":
        """
        Start it and wait until it listens and has logged a line matching
        each of ``patterns``.
        """
        state = STATE / f"daemon-{self.name}"
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        twistd = str(Path(sys.executable).parent / "twistd")
        argv = [
            twistd, "--nodaemon", "--pidfile=", "blip",
            "--state-dir", str(state),
            "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            *self.args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLIP_")}
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        for pattern in ((r"starting on \d+",) if self.listens else ()) + patterns:
            self.wait_for(pattern)
        return self

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> None:
        """Wait until its log has a line matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_file.read_text(errors="replace")
            if regex.search(text):
                return
            if self.process is not None and self.process.poll() is not None:
                raise SystemExit(f"the daemon exited before logging {pattern!r}:\n{text[-4000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not log {pattern!r}:\n{text[-4000:]}")
            time.sleep(0.05)

    def url(self, path: str) -> str:
        """:return: the URL of ``path`` on the daemon."""
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> Optional[int]:
        """Stop it with SIGTERM (SIGKILL after a while); return its status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# -- HTTP --------------------------------------------------------------------


def http_get(sock: socket.socket, host_port: str, path: str) -> tuple[int, bytes]:
    """
    One GET on a keep-alive connection, with as little client work as
    possible.

    :return: the status code and the body.
    """
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode())
    buffer = b""
    while True:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        buffer += chunk
    head = buffer[:head_end]
    status = int(head.split(b" ", 2)[1])
    rest = buffer[head_end + 4:]

    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        return chunk

    if re.search(rb"\r\ntransfer-encoding:\s*chunked", head, re.IGNORECASE):
        # A streamed answer: chunks until the empty one.
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += more()
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += more()
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                return status, body
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    length = int(match.group(1)) if match else 0
    body = rest
    while len(body) < length:
        body += more()
    return status, body


# -- profiling ---------------------------------------------------------------


class Profiler:
    """
    Samples a process with py-spy while a phase runs (``with`` block), then
    writes its collapsed stacks and prints the hottest functions.

    :param pid: the process to sample.
    :param name: names the output file ``bench/state/profile-<name>.txt``.
    :param enabled: when False, does nothing.
    """

    def __init__(self, pid: int, name: str, enabled: bool) -> None:
        self.pid = pid
        self.name = name
        self.enabled = enabled
        self.output = STATE / f"profile-{name}.txt"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.summary: Optional[dict[str, Any]] = None

    def __enter__(self) -> "Profiler":
        if self.enabled:
            py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
            if py_spy is None:
                raise SystemExit("--profile needs py-spy: .venv/bin/pip install -r bench/requirements.txt")
            self.output.unlink(missing_ok=True)
            self.process = subprocess.Popen(
                [py_spy, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "200",
                 "--output", str(self.output)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.summary = summarise(self.output)
        note(f"profile of {self.name}: {self.output}\n{format_summary(self.summary)}")


_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.replace(str(ROOT) + "/", "")
    return f"{match.group('function')} ({path})"


def summarise(collapsed: Path, top: int = 25) -> dict[str, Any]:
    """
    :return: the share of samples per function, by samples where it was
        running (self) and where it was on the stack (total).
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    if collapsed.exists():
        for line in collapsed.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
            if not frames:
                continue
            samples += n
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    def share(counts: Counter[str]) -> list[list[Any]]:
        return [[name, round(100.0 * n / samples, 1)] for name, n in counts.most_common(top)]

    return {"samples": samples, "self_percent": share(own), "total_percent": share(total), "file": str(collapsed)}


def format_summary(summary: dict[str, Any]) -> str:
    """:return: the summary as text for a person."""
    lines = [f"  {summary['samples']} samples; self %:"]
    lines += [f"    {p:5.1f}  {name}" for name, p in summary["self_percent"]]
    lines.append("  total %:")
    lines += [f"    {p:5.1f}  {name}" for name, p in summary["total_percent"]]
    return "\n".join(lines)


def need_wrk() -> str:
    """
    :return: the path of wrk, installing Debian's package when root.
    """
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        note("wrk not found: installing Debian's wrk package")
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       stdout=subprocess.DEVNULL, check=False)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("the query benchmark needs wrk (HTTP load generator): sudo apt-get install wrk")
