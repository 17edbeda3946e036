"""
A private PostgreSQL cluster under the state directory, for running without
``--db`` (the demo, a quick start, the tests).

The cluster is private: it listens on no TCP port, whatever its files say
(the settings that make it so are given on the server's command line), and
is reached only through a Unix socket in a folder that only the server's
user may enter. Its own database user, ``blip``, logs in over that socket
as the system user the server runs as, or as root ("peer" authentication,
through a map in ``pg_ident.conf``); roles made by hand log in with a
password; TCP connections are rejected. When blipserver runs as root, the
server runs as the unprivileged ``postgres`` user (PostgreSQL refuses to
run as root), which then owns the cluster's folder: what root does there
goes through :mod:`blip.common.owned`, never through a link that user
planted.
"""

import glob
import hashlib
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from psycopg2.extensions import make_dsn
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from blip.common.latch import Latch
from blip.common.owned import Folder, Unsafe, WrongOwner

#: The port number only names the socket file; nothing listens on TCP.
PORT = 5432
#: Name of the superuser and of the database blipserver uses, and of the
#: map in ``pg_ident.conf`` of the system users who may log in as it.
NAME = "blip"
#: Longest Unix socket path (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
#: The unprivileged user the server runs as when blipserver runs as root.
SERVER_USER = "postgres"
#: Who may connect, and how (written at start when it differs).
HBA = f"""\
# Written by blipserver when it starts: changes made here are undone.
# Its database user, as the system users of pg_ident.conf's map {NAME}:
local   all   {NAME}   peer map={NAME}
# Roles made by hand (a reader for Grafana, say), with their password:
local   all   all    scram-sha-256
# Nothing over TCP (the server listens on no TCP port anyway):
host    all   all    all    reject
"""
#: The settings file of clusters made by blipserver before the settings
#: moved to the server's command line, and the line that included it.
LEGACY_SETTINGS = "blip.conf"
LEGACY_INCLUDE = "include_if_exists = 'blip.conf'"


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


def server_user(uid: Optional[int] = None) -> pwd.struct_passwd:
    """
    :param uid: the user the daemon runs as (twistd's --uid, or the one
        this process runs as now).
    :return: the user the server runs as: the daemon's, or the
        unprivileged ``postgres`` user for root.
    :raise EmbeddedError: when there is no such user.
    """
    uid = os.geteuid() if uid is None else uid
    if uid != 0:
        try:
            return pwd.getpwuid(uid)
        except KeyError:
            raise EmbeddedError(
                f"user id {uid} has no name (in /etc/passwd), which PostgreSQL needs:"
                f" run blipserver as a user that has one, or pass --db"
            ) from None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise EmbeddedError(
            f"running as root, the embedded database needs the unprivileged"
            f" user {SERVER_USER!r} (PostgreSQL refuses to run as root):"
            f" create it, run blipserver as another user, or pass --db"
        ) from None


@dataclass
class Cluster:
    """
    The files and commands of one private cluster.

    :param root: its folder (``<state-dir>/pg``).
    :param bindir: where PostgreSQL's programs are.
    :param user: who runs the server.
    """

    root: Path
    bindir: Path
    user: pwd.struct_passwd

    @classmethod
    def at(cls, root: Path, uid: Optional[int] = None) -> "Cluster":
        """
        :param uid: the user the daemon runs as (twistd's --uid, or the
            one this process runs as now).
        :return: the cluster in ``root``, with the programs and user found
            on this machine.
        """
        return cls(root.absolute(), server_bindir(), server_user(uid))

    @property
    def owner(self) -> tuple[int, int]:
        """The user and group of the server, who own its files."""
        return self.user.pw_uid, self.user.pw_gid

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
        short enough for a socket and has no comma (libpq reads a list of
        hosts there), else a fixed folder under the temporary directory
        named after the cluster's path.
        """
        inside = self.root / "run"
        if len(str(inside / f".s.PGSQL.{PORT}").encode()) <= MAX_SOCKET_PATH and "," not in str(inside):
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
        return make_dsn(host=str(self.sockets), port=PORT, user=NAME, dbname=dbname)

    def check(self) -> None:
        """
        Check, changing nothing, that the cluster's folders, its socket
        folder and the files blipserver writes in it are what blipserver
        made: folders and files of the server's user, not links.

        :raise EmbeddedError: saying what is not.
        """
        self._folders(create=False)

    def prepare_folders(self) -> None:
        """
        Make the cluster's folder and its socket folder, private to the
        server's user, or check them when they are there.

        :raise EmbeddedError: when one is not what it should be.
        """
        self._folders(create=True)

    def _folders(self, create: bool) -> None:
        uid = self.user.pw_uid
        try:
            with Folder.trusted(self.root.parent) as state:
                if create or state.check(self.root.name, folder=True, owners={uid}):
                    with state.folder(self.root.name, self.owner, create=create) as root:
                        if self.sockets.parent == self.root:
                            self._socket_folder(root, create)
                        if root.check("data", folder=True, owners={uid}):
                            with root.folder("data", self.owner, create=False) as data:
                                for name in ("pg_hba.conf", "pg_ident.conf", "postgresql.conf",
                                             LEGACY_SETTINGS):
                                    data.check(name, folder=False, owners={uid})
                if self.sockets.parent != self.root:
                    with Folder.trusted(self.sockets.parent) as temporary:
                        self._socket_folder(temporary, create)
        except WrongOwner as e:
            if e.path != self.root:
                raise EmbeddedError(str(e)) from None
            raise EmbeddedError(
                f"{e}, whom the database server would run as: give it to that user"
                f" (chown -R {self.user.pw_name} {self.root})"
            ) from None
        except Unsafe as e:
            raise EmbeddedError(str(e)) from None
        except OSError as e:
            raise EmbeddedError(f"cannot prepare {e.filename or self.root}: {e.strerror}") from None

    def _socket_folder(self, parent: Folder, create: bool) -> None:
        name = self.sockets.name
        if create or parent.check(name, folder=True, owners={self.user.pw_uid}, private=True):
            parent.folder(name, self.owner, create=create, private=True).close()

    def configure(self) -> bool:
        """
        Write who may connect (``pg_hba.conf``, ``pg_ident.conf``) when it
        differs from what blipserver wants, and bring a cluster made by an
        older blipserver (which trusted every local user and kept its
        settings in a file of its own) to the same: its settings file and
        the line including it go.

        :return: whether anything changed (a running server must restart).
        :raise EmbeddedError: when a file is not what it should be.
        """
        uid = self.user.pw_uid
        ident = "".join(
            f'{NAME}  "{name}"  {NAME}\n' for name in sorted({"root", self.user.pw_name})
        )
        wanted = {
            "pg_hba.conf": HBA,
            "pg_ident.conf": (
                "# Written by blipserver when it starts: the system users who may log in\n"
                f"# as its database user: root, and the user the server runs as.\n{ident}"
            ),
        }
        changed = False
        try:
            with Folder.trusted(self.root.parent) as state, \
                    state.folder(self.root.name, self.owner, create=False) as root, \
                    root.folder("data", self.owner, create=False) as data:
                conf = (data.read("postgresql.conf", {uid}) or b"").decode()
                kept = [line for line in conf.splitlines(True) if line.strip() != LEGACY_INCLUDE]
                if len(kept) != len(conf.splitlines()):
                    wanted["postgresql.conf"] = "".join(kept)
                for name, text in wanted.items():
                    if data.read(name, {uid}) != text.encode():
                        data.write(name, text.encode(), self.owner)
                        changed = True
                changed = data.remove(LEGACY_SETTINGS, {uid}) or changed
        except Unsafe as e:
            raise EmbeddedError(str(e)) from None
        except OSError as e:
            raise EmbeddedError(f"cannot configure {e.filename or self.data}: {e.strerror}") from None
        return changed

    def server_settings(self) -> list[str]:
        """
        The settings on the server's command line, which no file can
        undo: no TCP, the socket folder, the port.
        """
        # unix_socket_directories is a list: a name in double quotes may
        # hold any character, a double quote written twice.
        sockets = '"' + str(self.sockets).replace('"', '""') + '"'
        return ["-c", "listen_addresses=", "-c", f"unix_socket_directories={sockets}",
                "-c", f"port={PORT}"]

    # The commands run in the cluster's folder and name its files from
    # there: pg_ctl puts the data directory's and the log's paths into a
    # shell command between double quotes, where a state dir's own quotes
    # or dollars would be read by the shell.

    def initdb_argv(self) -> list[str]:
        """
        The command that creates the cluster (with no way in over TCP,
        and none but its own user's over the socket, until :meth:`configure`
        writes the rules).
        """
        return [
            str(self.bindir / "initdb"), "-D", "data", "-U", NAME,
            "--auth-local=peer", "--auth-host=reject", "--no-locale", "-E", "UTF8",
        ]

    def start_argv(self) -> list[str]:
        """The command that starts the server and waits until it is up."""
        return [
            str(self.bindir / "pg_ctl"), "start", "-D", "data", "-w", "-t", "120",
            "-l", self.log_file.name, "-o", shlex.join(self.server_settings()),
        ]

    def status_argv(self) -> list[str]:
        """The command whose exit status is 0 when the server runs."""
        return [str(self.bindir / "pg_ctl"), "status", "-D", "data"]

    def stop_argv(self) -> list[str]:
        """The command that stops the server (fast shutdown) and waits."""
        return [
            str(self.bindir / "pg_ctl"), "stop", "-D", "data", "-m", "fast", "-w", "-t", "60",
        ]

    def createdb_argv(self) -> list[str]:
        """The command that creates blipserver's database."""
        return [
            str(self.bindir / "createdb"), "-h", str(self.sockets), "-p", str(PORT),
            "-U", NAME, NAME,
        ]

    @property
    def switch_to(self) -> Optional[pwd.struct_passwd]:
        """The server's user when the commands must switch to it."""
        return self.user if self.user.pw_uid != os.geteuid() else None

    def environment(self) -> dict[str, str]:
        """The environment the commands run in."""
        other = self.switch_to
        home = other.pw_dir if other is not None else os.environ.get("HOME", "/")
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LC_ALL": "C"}

    def run_sync(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """
        Run one of the commands and wait (for tests and tools, never on the
        reactor).
        """
        other = self.switch_to
        return subprocess.run(
            argv, capture_output=True, text=True, env=self.environment(),
            user=other.pw_uid if other else None,
            group=other.pw_gid if other else None,
            extra_groups=[] if other else None,
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
        user = self.cluster.switch_to
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
        cluster = self.cluster
        cluster.prepare_folders()
        if not cluster.initialized:
            self.log.info("creating the embedded database in {data}", data=cluster.data)
            await self._must(cluster.initdb_argv(), "initdb")
        changed = cluster.configure()
        code, _ = await self._run(cluster.status_argv())
        if code == 0 and changed:
            # (One an older blipserver left running, say: started without
            # the settings of the command line.)
            self.log.info(
                "restarting the embedded database server left running: its access rules changed"
            )
            await self._must(cluster.stop_argv(), "stopping PostgreSQL")
            code = 1
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
