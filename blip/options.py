"""
The command line of ``twistd blip``: every option, its environment variable
(``BLIP_<NAME>``), and the checks that turn a bad value into one clear line
at start.
"""

import os
import pwd
import socket
import stat
from pathlib import Path
from typing import Any, Optional, Sequence

import psycopg2.extensions
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from blip.common.env import env_name
from blip.common.owned import Folder, Unsafe, user_name
from blip.db.embedded import Cluster, EmbeddedError
from blip.db.partitions import KeepRaw, parse_keep_raw
from blip.meters import Meters, MetersError
from blip.mqtt.broker import Broker, BrokerError, parse_broker
from blip.source.relay import Relay, RelayError, is_relay, parse_relay
from blip.web import access

ROLES = ("all", "ingest", "web")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class Options(usage.Options):
    """
    Options of ``twistd blip``. Every option can also be set through its
    environment variable; the command line wins.
    """

    synopsis = "[options]"
    longdesc = (
        "Logs an electricity meter's blinks, read by an Arduino on a serial port,"
        " into PostgreSQL, and serves a JSON API and live power graphs. Every option"
        " can also be set in the environment: --state-dir as BLIP_STATE_DIR, and so on."
    )

    optFlags = [
        ["simulate", None, "Feed built-in simulated meters through the same ingest path."],
    ]

    optParameters: list[list[Any]] = [
        ["serial", None, None,
         "Serial device of the Arduino (a path; a pty works), or its serial line relayed"
         " over the network: tcp://HOST:PORT (raw, as ser2net and ESP-Link serve it)"
         " or rfc2217://HOST:PORT."],
        ["baudrate", None, "9600",
         "Serial speed (of a relayed line: set through rfc2217://; a tcp:// relay keeps its own)."],
        ["db", None, None,
         "libpq connection string or URI of PostgreSQL"
         " [default: an embedded private cluster in the state dir]."],
        ["state-dir", None, "./var",
         "Where the embedded cluster, the ingest spool and other state live."],
        ["listen", None, "tcp:8080:interface=127.0.0.1", "Twisted server endpoint to serve HTTP on."],
        ["meters", None, None,
         "TOML file describing the meters [default: meter 1, 1000 pulses/kWh, x1]."],
        ["role", None, "all", "What this node does: all, ingest (serial to database) or web."],
        ["longpoll-timeout", None, "0",
         "Seconds a long-poll waits before 204 No Content; 0 waits for ever."],
        ["max-waiters", None, "10000", "Most long-poll clients parked at once; more get 503."],
        ["node-name", None, None,
         "Name of this node in the record of ingest periods [default: the host name]."],
        ["health-window", None, "600",
         "Seconds without a blip from the serial source before /healthz answers 503."],
        ["mqtt", None, None,
         "MQTT broker to publish power and energy to, with Home Assistant discovery:"
         " mqtt://[user:password@]host[:port][/prefix], or mqtts:// for TLS."],
        ["mqtt-interval", None, "5", "Seconds between MQTT power messages of a meter (0: every blip)."],
        ["db-read", None, None,
         "libpq connection string or URI of a read replica for the HTTP side's queries"
         " (live points still come from --db) [default: --db]."],
        ["keep-raw", None, None,
         "Drop raw points older than this (400d, 8w, 18mo, 2y), a whole month at a time;"
         " the minute and hour rollups stay [default: keep them for ever]."],
    ]

    #: Options that may be given several times; in the environment, a list
    #: separated by spaces or commas.
    lists = ("allow", "trusted-proxy")

    def __init__(self) -> None:
        super().__init__()
        for name in self.lists:
            self[name] = []
        for name, _, _, _ in self.optParameters:
            value = os.environ.get(env_name(name))
            if value is not None:
                self[name] = value
        flag = os.environ.get(env_name("simulate"))
        if flag is not None:
            self["simulate"] = flag

    def opt_allow(self, network: str) -> None:
        """
        Serve only clients in this network (an address or CIDR; repeat for
        several); everyone else gets 403 [default: everyone].
        """
        self["allow"].append(network)

    def opt_trusted_proxy(self, network: str) -> None:
        """
        Take the client's address from the X-Forwarded-For and Forwarded
        headers of requests from this network (an address or CIDR; repeat
        for several): the reverse proxy's.
        """
        self["trusted-proxy"].append(network)

    # --help prints an option's docstring as it is written: one line each.
    for _method in (opt_allow, opt_trusted_proxy):
        _method.__doc__ = " ".join((_method.__doc__ or "").split())
    del _method

    def postOptions(self) -> None:
        flag = self["simulate"]
        if isinstance(flag, str):
            if flag.strip().lower() not in _TRUE + _FALSE:
                raise usage.UsageError(f"{env_name('simulate')}: expected 1 or 0, not {flag!r}")
            self["simulate"] = flag.strip().lower() in _TRUE
        self["simulate"] = bool(self["simulate"])
        self["baudrate"] = _integer(self["baudrate"], "--baudrate", 1, 4_000_000)
        self["longpoll-timeout"] = _seconds(self["longpoll-timeout"], "--longpoll-timeout")
        self["max-waiters"] = _integer(self["max-waiters"], "--max-waiters", 1, 10_000_000)
        self["health-window"] = _seconds(self["health-window"], "--health-window")
        if self["health-window"] == 0:
            raise usage.UsageError("--health-window: must be more than 0 seconds")
        if self["role"] not in ROLES:
            raise usage.UsageError(f"--role: must be one of {', '.join(ROLES)}, not {self['role']!r}")
        if self["serial"] == "":
            self["serial"] = None
        if self["serial"] and self["simulate"]:
            raise usage.UsageError("--serial and --simulate: choose one source of blips")
        self["serial"] = _serial(self["serial"])
        self["state-dir"] = state = Path(self["state-dir"] or "./var")
        #: The user and group twistd switches to after start (--uid/--gid).
        self.run_as = run_as = _run_as(self.parent)
        _state_dir(state, run_as)
        self["node-name"] = (self["node-name"] or socket.gethostname()).strip()
        if not self["node-name"] or len(self["node-name"]) > 200:
            raise usage.UsageError("--node-name: must be 1 to 200 characters")
        self["db"] = self["db"] or None
        if self["db"] is not None:
            _check_dsn(self["db"], "--db")
        else:
            try:
                Cluster.at(state / "pg", run_as[0] if run_as else None).check()
            except EmbeddedError as e:
                raise usage.UsageError(f"embedded database: {e}")
        self["db-read"] = self["db-read"] or None
        if self["db-read"] is not None:
            if self["db"] is None:
                raise usage.UsageError("--db-read: needs --db (the embedded database has no replica)")
            if self["role"] == "ingest":
                raise usage.UsageError("--db-read: an ingest node serves no queries")
            _check_dsn(self["db-read"], "--db-read")
        for name in self.lists:
            values = self[name] or _env_list(name)
            try:
                self[name] = tuple(access.network(value) for value in values)
            except ValueError as e:
                raise usage.UsageError(f"--{name}: {e}") from None
        self["meters"] = _meters(self["meters"])
        _check_endpoint(self["listen"])
        self["mqtt"] = _broker(self["mqtt"], self["role"])
        self["mqtt-interval"] = _seconds(self["mqtt-interval"], "--mqtt-interval")
        self["keep-raw"] = _keep_raw(self["keep-raw"])


class TwistdOptions(Options):
    """
    The options as ``twistd blip`` reads them: a bad one ends the process
    with status 1 and one line saying what is wrong, instead of twistd's
    whole usage text before it.
    """

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"twistd blip: {e}") from None


def _integer(value: Any, option: str, low: int, high: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise usage.UsageError(f"{option}: not an integer: {value!r}") from None
    if not low <= number <= high:
        raise usage.UsageError(f"{option}: must be from {low} to {high}, not {number}")
    return number


def _seconds(value: Any, option: str) -> float:
    try:
        seconds = float(str(value).strip())
    except ValueError:
        raise usage.UsageError(f"{option}: not a number of seconds: {value!r}") from None
    if not 0 <= seconds < 1e9:
        raise usage.UsageError(f"{option}: must be 0 or more seconds, not {value}")
    return seconds


def _keep_raw(text: Optional[str]) -> Optional[KeepRaw]:
    if not text:
        return None
    try:
        return parse_keep_raw(text)
    except ValueError as e:
        raise usage.UsageError(f"--keep-raw: {e}") from None


def _meters(path: Optional[str]) -> Meters:
    if not path:
        return Meters()
    try:
        return Meters.from_file(Path(path))
    except MetersError as e:
        raise usage.UsageError(f"--meters: {e}") from None


def _serial(serial: Optional[str]) -> "str | Relay | None":
    if not serial or not is_relay(serial):
        return serial
    try:
        return parse_relay(serial)
    except RelayError as e:
        raise usage.UsageError(f"--serial: {e}") from None


def _check_endpoint(description: str) -> None:
    from twisted.internet import reactor

    try:
        serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"--listen: not a server endpoint: {description!r} ({e})") from None


def _broker(url: Optional[str], role: str) -> Optional[Broker]:
    if not url:
        return None
    try:
        broker = parse_broker(url)
    except BrokerError as e:
        raise usage.UsageError(f"--mqtt: {e}") from None
    if role == "web":
        raise usage.UsageError("--mqtt: publish from the node that reads the meter (--role all or ingest)")
    return broker


def _check_dsn(dsn: str, option: str) -> None:
    try:
        psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        # psycopg2's message quotes the string, password and all.
        raise usage.UsageError(
            f"{option}: not a connection string or URI (key=value ... or postgresql://...)"
        ) from None


def _env_list(name: str) -> list[str]:
    return os.environ.get(env_name(name), "").replace(",", " ").split()


def _run_as(parent: Optional[usage.Options]) -> Optional[tuple[int, int]]:
    """
    :return: the user and group twistd's ``--uid``/``--gid`` make the
        daemon run as after it started as root, or None.
    """
    if parent is None or os.geteuid() != 0:
        return None
    try:
        uid, gid = parent["uid"], parent["gid"]
    except KeyError:
        return None
    if uid is None and gid is None:
        return None
    if uid is None:
        uid = os.getuid()
    if gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid


def _state_dir(state: Path, run_as: Optional[tuple[int, int]]) -> None:
    """
    Make the state dir when it is missing (given to the user twistd
    switches to), and check that the daemon may write in it, and that no
    one else may when it runs as root.

    :raise usage.UsageError: saying what is wrong.
    """
    try:
        if not os.path.lexists(state):
            state.parent.mkdir(parents=True, exist_ok=True)
            with Folder.trusted(state.parent) as parent:
                parent.folder(state.name, run_as or (os.geteuid(), os.getegid()), mode=0o777).close()
    except Unsafe as e:
        raise usage.UsageError(f"--state-dir: {e}") from None
    except OSError as e:
        raise usage.UsageError(f"--state-dir: cannot create {state}: {e.strerror}") from None
    if not state.is_dir():
        raise usage.UsageError(f"--state-dir: {state} is not a folder")
    if run_as is not None and run_as[0] != 0:
        if not _writable_by(state, *run_as):
            user = user_name(run_as[0])
            raise usage.UsageError(
                f"--state-dir: {user}, whom --uid/--gid make the daemon run as, cannot"
                f" write in {state}: give it to that user (chown {user} {state})"
            )
    elif not os.access(state, os.W_OK | os.X_OK):
        raise usage.UsageError(f"--state-dir: cannot write in {state}")
    elif os.geteuid() == 0:
        # What root writes there (the spool, the lock, ...) must not be
        # where another user may put a link to some other file.
        info = state.stat()
        if info.st_uid != 0 or info.st_mode & 0o022:
            others = user_name(info.st_uid) if info.st_uid != 0 else "other users"
            raise usage.UsageError(
                f"--state-dir: the daemon runs as root, and {others} may write in {state}:"
                f" give it to root alone (chown root {state}; chmod go-w {state}),"
                f" or run the daemon as another user (--uid/--gid)"
            )


def _writable_by(path: Path, uid: int, gid: int) -> bool:
    """
    :return: whether the user ``uid`` with group ``gid`` (and that user's
        other groups) may create files in ``path``, by its mode bits.
    """
    if uid == 0:
        return True
    info = path.stat()
    try:
        groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        groups = {gid}
    if info.st_uid == uid:
        wanted = stat.S_IWUSR | stat.S_IXUSR
    elif info.st_gid in groups:
        wanted = stat.S_IWGRP | stat.S_IXGRP
    else:
        wanted = stat.S_IWOTH | stat.S_IXOTH
    return info.st_mode & wanted == wanted
