"""
A private PostgreSQL cluster under the state directory, for running without
``--db`` (the demo, a quick start, the tests).

The cluster is reached only through a Unix socket in a directory its owner
alone may enter; it listens on no TCP port. When blipserver runs as root,
the server runs as the unprivileged ``postgres`` user (PostgreSQL refuses to
run as root), which then owns the cluster's folder.
"""

import glob
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from blip.common.latch import Latch

#: The port number only names the socket file; nothing listens on TCP.
PORT = 5432
#: Name of the superuser and of the database blipserver uses.
NAME = "blip"
#: Longest Unix socket path (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
#: The unprivileged user the server runs as when blipserver runs as root.
SERVER_USER = "postgres"


class EmbeddedError(Exception):
    """
    The embedded cluster cannot be set up or started; the message says why.
    """


def server_bindir() -> Path:
    """
    Find PostgreSQL's server programs: on the PATH, where ``pg_config``
    says, or in Debian's versioned folders (newest first).

    :raise EmbeddedError: when ``initdb`` and ``pg_ctl`` are nowhere.
    """
    candidates = []
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(p) for p in versions)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise EmbeddedError(
        "PostgreSQL server programs (initdb, pg_ctl, postgres) not found:"
        " install them (Debian: apt install postgresql) or pass --db"
    )


def server_user() -> Optional[pwd.struct_passwd]:
    """
    :return: the user the server must run as, or None to run it as
        ourselves (when we are not root).
    :raise EmbeddedError: when we are root and there is no such user.
    """
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise EmbeddedError(
            f"running as root, the embedded database needs the unprivileged"
            f" user {SERVER_USER!r} (PostgreSQL refuses to run as root):"
            f" create it, run blipserver as another user, or pass --db"
        ) from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass
class Cluster:
    """
    The files and commands of one private cluster.

    :param root: its folder (``<state-dir>/pg``).
    :param bindir: where PostgreSQL's programs are.
    :param user: who runs the server, or None for ourselves.
    """

    root: Path
    bindir: Path
    user: Optional[pwd.struct_passwd]

    @classmethod
    def at(cls, root: Path) -> "Cluster":
        """
        :return: the cluster in ``root``, with the programs and user found
            on this machine.
        """
        return cls(root.absolute(), server_bindir(), server_user())

    @property
    def data(self) -> Path:
        """The data directory."""
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        """Where the server writes its log."""
        return self.root / "postgres.log"

    @property
    def sockets(self) -> Path:
        """
        The socket directory: inside the cluster's folder when the path is
        short enough for a socket, else a fixed folder under the temporary
        directory named after the cluster's path.
        """
        inside = self.root / "run"
        if len(str(inside / f".s.PGSQL.{PORT}")) <= MAX_SOCKET_PATH:
            return inside
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"blip-pg-{digest}"

    @property
    def initialized(self) -> bool:
        """Whether initdb has run here."""
        return (self.data / "PG_VERSION").is_file()

    def dsn(self, dbname: str = NAME) -> str:
        """
        :return: the libpq connection string of database ``dbname``.
        """
        return f"host={self.sockets} port={PORT} user={NAME} dbname={dbname}"

    def prepare_folders(self) -> None:
        """
        Create the cluster's folders, owned by the server's user, and write
        the settings file read at every start.
        """
        for folder in (self.root, self.sockets):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.user is not None:
                os.chown(folder, self.user.pw_uid, self.user.pw_gid)
        if self.initialized:
            settings = self.data / "blip.conf"
            settings.write_text(
                "# Written by blipserver at every start.\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                f"port = {PORT}\n"
            )
            if self.user is not None:
                os.chown(settings, self.user.pw_uid, self.user.pw_gid)

    def check_owner(self) -> None:
        """
        :raise EmbeddedError: when the cluster's folder exists and belongs
            to another user than the one the server would run as (a cluster
            made while the daemon ran as root, started now as another user,
            or the other way round).
        """
        try:
            owner = self.root.stat().st_uid
        except FileNotFoundError:
            return
        runner = self.user.pw_uid if self.user is not None else os.geteuid()
        if owner != runner:
            raise EmbeddedError(
                f"{self.root} belongs to user {_user_name(owner)}, but the database"
                f" server would run as {_user_name(runner)}: give it to that user"
                f" (chown -R {_user_name(runner)} {self.root})"
            )

    def initdb_argv(self) -> list[str]:
        """The command that creates the cluster."""
        return [
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", NAME,
            "--auth=trust", "--no-locale", "-E", "UTF8",
        ]

    def configure(self) -> None:
        """
        After initdb: make the cluster read ``blip.conf`` at every start.
        """
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_if_exists = 'blip.conf'\n")

    def start_argv(self) -> list[str]:
        """The command that starts the server and waits until it is up."""
        return [
            str(self.bindir / "pg_ctl"), "start", "-D", str(self.data), "-w",
            "-t", "120", "-l", str(self.log_file),
        ]

    def status_argv(self) -> list[str]:
        """The command whose exit status is 0 when the server runs."""
        return [str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)]

    def stop_argv(self) -> list[str]:
        """The command that stops the server (fast shutdown) and waits."""
        return [
            str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
            "-w", "-t", "60",
        ]

    def createdb_argv(self) -> list[str]:
        """The command that creates blipserver's database."""
        return [
            str(self.bindir / "createdb"), "-h", str(self.sockets), "-p", str(PORT),
            "-U", NAME, NAME,
        ]

    def environment(self) -> dict[str, str]:
        """The environment the commands run in."""
        home = self.user.pw_dir if self.user is not None else os.environ.get("HOME", "/")
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LC_ALL": "C"}

    def run_sync(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """
        Run one of the commands and wait (for tests and tools, never on the
        reactor).
        """
        return subprocess.run(
            argv, capture_output=True, text=True, env=self.environment(),
            user=self.user.pw_uid if self.user else None,
            group=self.user.pw_gid if self.user else None,
            extra_groups=[] if self.user else None,
            cwd=self.root,
        )


class _Collect(ProcessProtocol):
    def __init__(self, done: "Deferred[tuple[int, str]]") -> None:
        self.done = done
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else (getattr(reason.value, "exitCode", None) or 1)
        self.done.callback((code, self.output.decode("utf-8", "replace")))


class EmbeddedPostgres(Service):
    """
    Runs the private cluster while the daemon runs: initdb on first start,
    start (or adopt a server a killed daemon left running), create the
    database, and stop it again when the daemon stops.

    :param cluster: the cluster to run.
    :param reactor: spawns the commands.
    """

    log = Logger()

    def __init__(self, cluster: Cluster, reactor: IReactorProcess) -> None:
        self.cluster = cluster
        self.reactor = reactor
        self._ready = Latch()
        self._starting: Optional[Deferred[None]] = None

    @property
    def ready(self) -> bool:
        """
        Whether the server accepts connections.
        """
        return self._ready.is_set

    @property
    def dsn(self) -> str:
        """The connection string of the embedded database."""
        return self.cluster.dsn()

    def when_ready(self) -> "Deferred[None]":
        """
        :return: a Deferred that fires when the server accepts connections
            (at once if it does), or fails if it cannot be started;
            cancelling it stops the wait.
        """
        return self._ready.wait()

    def _run(self, argv: list[str]) -> "Deferred[tuple[int, str]]":
        done: Deferred[tuple[int, str]] = Deferred()
        user = self.cluster.user
        self.reactor.spawnProcess(
            _Collect(done), argv[0], argv, env=self.cluster.environment(),
            path=str(self.cluster.root),
            uid=user.pw_uid if user else None, gid=user.pw_gid if user else None,
        )
        return done

    async def _must(self, argv: list[str], what: str) -> str:
        code, output = await self._run(argv)
        if code != 0:
            raise EmbeddedError(f"{what} failed ({code}): {output.strip()}")
        return output

    def startService(self) -> None:
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addCallback(self._up)
        self._starting.addErrback(self._failed)

    async def _start(self) -> None:
        # Who runs the server is decided now, not when the daemon was built:
        # twistd --uid/--gid may have made the daemon another user since.
        cluster = self.cluster = replace(self.cluster, user=server_user())
        cluster.check_owner()
        cluster.prepare_folders()
        if not cluster.initialized:
            self.log.info("creating the embedded database in {data}", data=cluster.data)
            await self._must(cluster.initdb_argv(), "initdb")
            cluster.configure()
            cluster.prepare_folders()
        code, _ = await self._run(cluster.status_argv())
        if code == 0:
            self.log.info("reusing the embedded database server already running")
        else:
            await self._must(cluster.start_argv(), f"starting PostgreSQL (see {cluster.log_file})")
        code, output = await self._run(cluster.createdb_argv())
        if code != 0 and "already exists" not in output:
            raise EmbeddedError(f"createdb failed ({code}): {output.strip()}")

    def _up(self, _: None) -> None:
        self.log.info("embedded database ready at {dsn}", dsn=self.dsn)
        self._ready.set()

    def _failed(self, f: Failure) -> None:
        self.log.critical("embedded database unavailable: {why}", why=f.getErrorMessage())
        self._ready.fail(f)

    async def _stop(self) -> None:
        if self._starting is not None and not self._starting.called:
            await self._starting
        if self.ready:
            code, output = await self._run(self.cluster.stop_argv())
            if code != 0:
                self.log.error("stopping PostgreSQL failed: {output}", output=output.strip())
            else:
                self.log.info("embedded database stopped")
            self._ready.clear()

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        return Deferred.fromCoroutine(self._stop())
