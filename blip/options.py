"""
The command line of ``twistd blip``: every option, its environment variable
(``BLIP_<NAME>``), and the checks that turn a bad value into one clear line
at start.
"""

import dataclasses
import os
import pwd
import re
import socket
import stat
from pathlib import Path
from typing import Any, Optional, Sequence

import psycopg2.extensions
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from blip.common.env import env_name
from blip.common.owned import Folder, Unsafe, user_name
from blip.db import hosts
from blip.db.embedded import Cluster, EmbeddedError
from blip.db.partitions import KeepRaw, parse_keep_raw
from blip.meters import Meters, MetersError
from blip.mqtt.broker import Broker, BrokerError, parse_broker
from blip.remote.client import UrlError, base_url, read_token
from blip.remote.repair import WINDOW_DAYS
from blip.source.relay import (
    SHORTEST_SILENCE,
    SILENCE_LIMIT,
    Relay,
    RelayError,
    is_relay,
    parse_relay,
)
from blip.web import access, answers, connections

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
        ["relay-silence", None, str(SILENCE_LIMIT),
         "Seconds after a relayed serial line's last word at which it is given up and"
         " connected again; TCP asks whether the relay is still there from half that on."],
        ["db", None, None,
         "libpq connection string or URI of PostgreSQL; for a primary with standbys,"
         " every server: host=a,b port=5432,5432 ... target_session_attrs=read-write"
         " [default: an embedded private cluster in the state dir]."],
        ["state-dir", None, "./var",
         "Where the embedded cluster, the ingest spool and other state live."],
        ["listen", None, "tcp:8080:interface=127.0.0.1", "Twisted server endpoint to serve HTTP on."],
        ["meters", None, None,
         "TOML file describing the meters [default: meter 1, 1000 pulses/kWh, x1]."],
        ["role", None, "all", "What this node does: all, ingest (serial to database) or web."],
        ["longpoll-timeout", None, "0",
         "Seconds a long-poll waits before 204 No Content; 0 waits for ever."],
        ["max-waiters", None, "10000",
         "Most long-poll clients parked at once, and live streams; more get 503."],
        ["max-connections", None, None,
         "Most HTTP connections open at once; more are closed as they open"
         " [default: as many as the open-files limit allows, less a reserve]."],
        ["max-connections-per-client", None, str(connections.PER_CLIENT),
         "Most HTTP connections of one client address (an IPv6 client's /64) at once;"
         " 0 for no cap. Trusted proxies have none."],
        ["node-name", None, None,
         "Name of this node in the record of ingest periods [default: the host name]."],
        ["health-window", None, "600",
         "Seconds without a blip from the serial source before /healthz answers 503."],
        ["mqtt", None, None,
         "MQTT broker to publish power and energy to, with Home Assistant discovery:"
         " mqtt://[user:password@]host[:port][/prefix], or mqtts:// for TLS."],
        ["mqtt-interval", None, "5", "Seconds between MQTT power messages of a meter (0: every blip)."],
        ["query-timeout", None, "30",
         "Seconds a query of the HTTP side may run before the database cancels it"
         " (its request gets 503); 0: no limit but the database's own."],
        ["mqtt-password-file", None, None,
         "File holding the password of the --mqtt URL's user, when the URL has none;"
         " or give it in BLIP_MQTT_PASSWORD. Never on the command line, which every user sees."],
        ["db-read", None, None,
         "libpq connection string or URI of a read replica for the HTTP side's queries,"
         " or of several (host=r1,r2 ... target_session_attrs=prefer-standby"
         " load_balance_hosts=random); live points still come from --db [default: --db]."],
        ["upstream", None, None,
         "Send every point to this central blipserver's write API too (http:// or https://,"
         " where it is served); without --db, this node keeps no database and serves no HTTP."],
        ["token-file", None, None, "File holding the --upstream token (blip token create)."],
        ["peer-window", None, str(WINDOW_DAYS), "Days of the past repaired from --peer loggers."],
        ["peer-token-file", None, None,
         "File holding a bearer token sent to every --peer (for a peer behind a proxy that wants one)."],
        ["keep-raw", None, None,
         "Drop raw points older than this (400d, 8w, 18mo, 2y), a whole month at a time;"
         " the minute and hour rollups stay [default: keep them for ever]."],
    ]

    #: Options that may be given several times; in the environment, a list
    #: separated by spaces or commas.
    lists = ("allow", "trusted-proxy", "cors", "peer")
    #: Settings read from the environment alone (BLIP_<NAME>): secrets,
    #: which a command line would show every user.
    secrets = ("mqtt-password",)

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

    def opt_cors(self, origin: str) -> None:
        """
        Let the scripts of web pages of this origin (https://example.org;
        repeat for several) read the answers; * for any page, none for
        none [default: * without --allow, none with it].
        """
        self["cors"].append(origin)

    def opt_peer(self, url: str) -> None:
        """
        Another blipserver reading the same meter (http:// or https://, where
        it is served): this node's stretches when its logger was down are
        filled with the peer's points; repeat for several.
        """
        self["peer"].append(url)

    # --help prints an option's docstring as it is written: one line each.
    for _method in (opt_allow, opt_trusted_proxy, opt_cors, opt_peer):
        _method.__doc__ = " ".join((_method.__doc__ or "").split())
    del _method

    def _remotes(self) -> None:
        """
        Check --upstream, --token-file, --peer and their company, and read
        the tokens (now, while the daemon may still be root).
        """
        #: Whether this node has a database (none: it only forwards).
        self.database = self["db"] is not None or not self["upstream"]
        try:
            self["upstream"] = base_url(self["upstream"]) if self["upstream"] else None
        except UrlError as e:
            raise usage.UsageError(f"--upstream: {e}") from None
        try:
            self["peer"] = tuple(base_url(url) for url in self["peer"] or _env_list("peer"))
        except UrlError as e:
            raise usage.UsageError(f"--peer: {e}") from None
        self["peer-window"] = _days(self["peer-window"], "--peer-window")
        try:
            if self["upstream"] is not None:
                if not self["token-file"]:
                    raise usage.UsageError("--upstream: needs --token-file (the token of blip token create)")
                self["token-file"] = read_token(self["token-file"], "--token-file")
            elif self["token-file"]:
                raise usage.UsageError("--token-file: is the token of --upstream, which is not given")
            else:
                self["token-file"] = None
            if self["peer-token-file"]:
                if not self["peer"]:
                    raise usage.UsageError("--peer-token-file: is the token of --peer, which is not given")
                self["peer-token-file"] = read_token(self["peer-token-file"], "--peer-token-file")
            else:
                self["peer-token-file"] = None
        except UrlError as e:
            raise usage.UsageError(str(e)) from None
        if self["upstream"] is not None and self["role"] == "web":
            raise usage.UsageError("--upstream: forwards what this node reads (--role all or ingest)")
        if self["peer"] and self["role"] == "web":
            raise usage.UsageError("--peer: repairs the outages of this node's logger (--role all or ingest)")
        if not self.database:
            for name, why in (
                ("peer", "repairs this node's database"),
                ("mqtt", "counts energy from the database"),
                ("keep-raw", "drops points from the database"),
            ):
                if self[name]:
                    raise usage.UsageError(
                        f"--{name}: {why}, and with --upstream but no --db this node has none"
                    )

    def postOptions(self) -> None:
        flag = self["simulate"]
        if isinstance(flag, str):
            if flag.strip().lower() not in _TRUE + _FALSE:
                raise usage.UsageError(f"{env_name('simulate')}: expected 1 or 0, not {flag!r}")
            self["simulate"] = flag.strip().lower() in _TRUE
        self["simulate"] = bool(self["simulate"])
        self["baudrate"] = _integer(self["baudrate"], "--baudrate", 1, 4_000_000)
        self["relay-silence"] = _integer(self["relay-silence"], "--relay-silence", SHORTEST_SILENCE, 3600)
        self["longpoll-timeout"] = _seconds(self["longpoll-timeout"], "--longpoll-timeout")
        self["max-waiters"] = _integer(self["max-waiters"], "--max-waiters", 1, 10_000_000)
        if self["max-connections"] not in (None, ""):
            self["max-connections"] = _integer(self["max-connections"], "--max-connections", 1, 10_000_000)
        else:
            self["max-connections"] = None
        self["max-connections-per-client"] = _integer(
            self["max-connections-per-client"], "--max-connections-per-client", 0, 10_000_000
        )
        self["health-window"] = _seconds(self["health-window"], "--health-window")
        self["query-timeout"] = _seconds(self["query-timeout"], "--query-timeout")
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
            if hosts.may_reach_a_standby(self["db"]):
                raise usage.UsageError(f"--db: {hosts.SEVERAL_HOSTS}")
        elif not self["upstream"]:
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
        for name in ("allow", "trusted-proxy"):
            values = self[name] or _env_list(name)
            try:
                self[name] = tuple(access.network(value) for value in values)
            except ValueError as e:
                raise usage.UsageError(f"--{name}: {e}") from None
        self._remotes()
        self["cors"] = _cors(self["cors"] or _env_list("cors"), bool(self["allow"]))
        self["meters"] = _meters(self["meters"])
        _check_endpoint(self["listen"])
        self["mqtt"] = _broker(self["mqtt"], self["role"], self["mqtt-password-file"] or None)
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


def _days(value: Any, option: str) -> float:
    try:
        days = float(str(value).strip())
    except ValueError:
        raise usage.UsageError(f"{option}: not a number of days: {value!r}") from None
    if not 0 < days <= 36_500:
        raise usage.UsageError(f"{option}: must be more than 0 and at most 36500 days, not {value}")
    return days
#: An origin as a browser's Origin header spells it.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#@\s]+")


def _cors(values: list[str], allow: bool) -> answers.Cors:
    """
    :param allow: whether --allow limits the clients.
    :return: which pages may read the answers: by default any without
        --allow, none with it.
    """
    if not values:
        return answers.NO_ORIGIN if allow else answers.ANY_ORIGIN
    if len(values) > 1 and ("*" in values or "none" in values):
        raise usage.UsageError("--cors: * and none stand alone, without origins")
    if values == ["*"]:
        return answers.ANY_ORIGIN
    if values == ["none"]:
        return answers.NO_ORIGIN
    origins = set()
    for value in values:
        origin = value.strip().rstrip("/")
        scheme, _, host = origin.partition("://")
        origin = f"{scheme.lower()}://{host.lower()}"
        if not _ORIGIN.fullmatch(origin):
            raise usage.UsageError(
                f"--cors: not an origin (scheme://host[:port], as https://example.org): {value!r}"
            )
        origins.add(origin.encode())
    return answers.Cors(frozenset(origins))


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


def _broker(url: Optional[str], role: str, password_file: Optional[str]) -> Optional[Broker]:
    """
    :param password_file: where the password of the URL's user is, when
        the URL has none; else it may be in ``BLIP_MQTT_PASSWORD``.
    """
    if not url:
        if password_file:
            raise usage.UsageError("--mqtt-password-file: there is no --mqtt broker")
        return None
    try:
        broker = parse_broker(url)
    except BrokerError as e:
        raise usage.UsageError(f"--mqtt: {e}") from None
    if role == "web":
        raise usage.UsageError("--mqtt: publish from the node that reads the meter (--role all or ingest)")
    if password_file and broker.password is not None:
        raise usage.UsageError("--mqtt-password-file: the --mqtt URL has a password already")
    if broker.password is not None:
        return broker
    password = _read_password(password_file) if password_file else os.environ.get(env_name("mqtt-password"))
    if not password:
        return broker
    if broker.username is None:
        where = "--mqtt-password-file" if password_file else env_name("mqtt-password")
        raise usage.UsageError(f"{where}: a password needs a user in the --mqtt URL (mqtt://user@host)")
    return dataclasses.replace(broker, password=password)


def _read_password(path: str) -> str:
    """
    :return: the password in the file at ``path``: its text, but a line
        end at its end.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise usage.UsageError(f"--mqtt-password-file: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise usage.UsageError(f"--mqtt-password-file: {path} is not UTF-8 text") from None
    password = text[:-1] if text.endswith("\n") else text
    password = password[:-1] if password.endswith("\r") else password
    if not password:
        raise usage.UsageError(f"--mqtt-password-file: {path} is empty")
    return password


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
