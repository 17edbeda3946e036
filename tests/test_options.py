"""
Tests of the command line: defaults, environment variables, and one clear
error for each bad value.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python import usage

from blip.db.partitions import KeepRaw
from blip.options import Options


def parse(args: list[str], monkeypatch=None, **env: str) -> Options:
    options = Options()
    options.parseOptions(args)
    return options


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No BLIP_ variables from outside; run where ./var may be created."""
    import os

    for name in list(os.environ):
        if name.startswith("BLIP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    """
    The defaults are DESIGN.md's.
    """
    options = parse(["--db", "dbname=x"])
    assert options["serial"] is None
    assert options["baudrate"] == 9600
    assert options["relay-silence"] == 40
    assert options["simulate"] is False
    assert options["listen"] == "tcp:8080:interface=127.0.0.1"
    assert options["role"] == "all"
    assert options["longpoll-timeout"] == 0.0
    assert options["max-waiters"] == 10000
    assert options["state-dir"] == Path("./var")
    assert [m.id for m in options["meters"]] == [1]


def test_environment_and_command_line(monkeypatch) -> None:
    """
    Every option can come from BLIP_<NAME>; the command line wins.
    """
    monkeypatch.setenv("BLIP_SERIAL", "/dev/arduino")
    monkeypatch.setenv("BLIP_BAUDRATE", "115200")
    monkeypatch.setenv("BLIP_DB", "dbname=power")
    monkeypatch.setenv("BLIP_LONGPOLL_TIMEOUT", "30")
    monkeypatch.setenv("BLIP_LISTEN", "tcp:9000")
    monkeypatch.setenv("BLIP_RELAY_SILENCE", "90")
    options = parse(["--baudrate", "57600"])
    assert options["relay-silence"] == 90
    assert options["serial"] == "/dev/arduino"
    assert options["baudrate"] == 57600
    assert options["db"] == "dbname=power"
    assert options["longpoll-timeout"] == 30.0
    assert options["listen"] == "tcp:9000"


def test_a_primary_with_standbys_and_several_replicas() -> None:
    """
    --db may name a primary and its standbys when it asks for the server
    that takes writes (key=value or URI); --db-read may name several
    replicas as libpq would pick among them.
    """
    primary = "host=a,b port=5432,5433 dbname=x target_session_attrs=read-write"
    replicas = "host=r1,r2 dbname=x target_session_attrs=prefer-standby load_balance_hosts=random"
    options = parse(["--db", primary, "--db-read", replicas])
    assert (options["db"], options["db-read"]) == (primary, replicas)
    uri = "postgresql://a:5432,b:5432/x?target_session_attrs=primary"
    assert parse(["--db", uri])["db"] == uri


def test_node_name(monkeypatch) -> None:
    """
    The node name defaults to the host name and can be set by option or
    environment.
    """
    import socket

    assert parse(["--db", "dbname=x"])["node-name"] == socket.gethostname()
    monkeypatch.setenv("BLIP_NODE_NAME", "cellar")
    assert parse(["--db", "dbname=x"])["node-name"] == "cellar"
    assert parse(["--db", "dbname=x", "--node-name", "attic"])["node-name"] == "attic"


def test_a_serial_line_relayed_over_the_network(monkeypatch) -> None:
    """
    --serial (or BLIP_SERIAL) takes tcp://HOST:PORT or rfc2217://HOST:PORT
    for a serial line relayed over the network; a path stays a path.
    """
    from blip.source.relay import Relay

    assert parse(["--db", "dbname=x", "--serial", "rfc2217://[fd00::7]:2217"])["serial"] == Relay(
        "rfc2217", "fd00::7", 2217
    )
    monkeypatch.setenv("BLIP_SERIAL", "tcp://esp-link.lan:23")
    assert parse(["--db", "dbname=x"])["serial"] == Relay("tcp", "esp-link.lan", 23)
    assert parse(["--db", "dbname=x", "--serial", "/dev/ttyUSB0"])["serial"] == "/dev/ttyUSB0"
    with pytest.raises(usage.UsageError, match="--serial and --simulate"):
        parse(["--db", "dbname=x", "--simulate"])


def test_simulate_from_the_environment(monkeypatch) -> None:
    """
    BLIP_SIMULATE=1 turns the simulator on; a value that is not a yes or
    no is an error.
    """
    monkeypatch.setenv("BLIP_SIMULATE", "1")
    assert parse(["--db", "dbname=x"])["simulate"] is True
    monkeypatch.setenv("BLIP_SIMULATE", "maybe")
    with pytest.raises(usage.UsageError, match="BLIP_SIMULATE"):
        parse(["--db", "dbname=x"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--baudrate", "fast"], "--baudrate: not an integer"),
        (["--baudrate", "0"], "--baudrate: must be from 1"),
        (["--relay-silence", "7"], "--relay-silence: must be from 8 to 3600, not 7"),
        (["--relay-silence", "a minute"], "--relay-silence: not an integer"),
        (["--longpoll-timeout", "-1"], "--longpoll-timeout"),
        (["--longpoll-timeout", "soon"], "--longpoll-timeout"),
        (["--query-timeout", "-1"], "--query-timeout: must be 0 or more"),
        (["--query-timeout", "long"], "--query-timeout: not a number"),
        (["--max-waiters", "0"], "--max-waiters"),
        (["--max-connections", "0"], "--max-connections: must be from 1"),
        (["--max-connections", "many"], "--max-connections: not an integer"),
        (["--max-connections-per-client", "-1"], "--max-connections-per-client: must be from 0"),
        (["--role", "boss"], "--role"),
        (["--listen", "carrier-pigeon:80"], "--listen"),
        (["--listen", "tcp:notaport"], "--listen"),
        (["--db", "host=x = y"], "--db"),
        (["--db", "host=a,b dbname=x"], "--db: names several hosts: add target_session_attrs"),
        (["--db", "postgresql://a,b/x?target_session_attrs=any"], "--db: names several hosts"),
        (["--meters", "/nonexistent/meters.toml"], "--meters"),
        (["--serial", "/dev/ttyUSB0", "--simulate"], "--serial and --simulate"),
        (["--serial", "tcp://esp-link.lan"], "--serial: no port in 'tcp://esp-link.lan'"),
        (["--serial", "ftp://esp-link.lan:21"], "--serial: unknown kind of relay 'ftp'"),
        (["--node-name", " "], "--node-name"),
        (["--node-name", "n" * 201], "--node-name"),
        (["--db-read", "host=x = y"], "--db-read"),
        (["--db-read", "dbname=replica", "--role", "ingest"], "--db-read: an ingest node"),
        (["--allow", "everyone"], "--allow: not an address or network"),
        (["--allow", "172.16.1.0/16"], "did you mean 172.16.0.0/16"),
        (["--trusted-proxy", "10.0.0.0/40"], "--trusted-proxy"),
    ],
)
def test_bad_values_are_one_clear_error(args: list[str], message: str) -> None:
    """
    Each bad value is refused with a message naming the option.
    """
    if "--db" not in args:
        args = [*args, "--db", "dbname=x"]
    with pytest.raises(usage.UsageError, match=message):
        parse(args)


def test_twistd_prints_one_line_and_no_traceback(tmp_path) -> None:
    """
    Through twistd, a bad option ends the process with status 1 and one
    line naming the option: no traceback, no usage text.
    """
    twistd = Path(sys.executable).parent / "twistd"
    done = subprocess.run(
        [str(twistd), "--nodaemon", "--pidfile=", "blip", "--baudrate", "fast", "--db", "dbname=x"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert done.returncode == 1
    assert (done.stdout, done.stderr) == ("", "twistd blip: --baudrate: not an integer: 'fast'\n")


def test_keep_raw(monkeypatch) -> None:
    """
    --keep-raw (or BLIP_KEEP_RAW) is how long raw points are kept: for
    ever by default, else a number of days, weeks, months or years.
    """
    assert parse(["--db", "dbname=x"])["keep-raw"] is None
    assert parse(["--db", "dbname=x", "--keep-raw", "400d"])["keep-raw"] == KeepRaw(400, "d")
    monkeypatch.setenv("BLIP_KEEP_RAW", "18mo")
    assert parse(["--db", "dbname=x"])["keep-raw"] == KeepRaw(18, "mo")
    for bad, message in (("0y", "must keep raw points for more than 0 days"), ("1 fortnight", "not a duration"), ("-2y", "not a duration")):
        with pytest.raises(usage.UsageError, match=f"--keep-raw: {message}"):
            parse(["--db", "dbname=x", "--keep-raw", bad])


def test_health_window(monkeypatch) -> None:
    """
    --health-window (or BLIP_HEALTH_WINDOW) sets the seconds without a blip
    before /healthz fails: 600 by default, more than 0, a number.
    """
    assert parse(["--db", "dbname=x"])["health-window"] == 600.0
    assert parse(["--db", "dbname=x", "--health-window", "90"])["health-window"] == 90.0
    monkeypatch.setenv("BLIP_HEALTH_WINDOW", "30.5")
    assert parse(["--db", "dbname=x"])["health-window"] == 30.5
    for bad, message in (("0", "more than 0"), ("-1", "0 or more"), ("soon", "not a number")):
        with pytest.raises(usage.UsageError, match=f"--health-window: .*{message}"):
            parse(["--db", "dbname=x", "--health-window", bad])


def test_query_timeout(monkeypatch) -> None:
    """
    --query-timeout (or BLIP_QUERY_TIMEOUT) sets the seconds the database
    gives each query of the HTTP side: 30 by default, 0 for no limit.
    """
    assert parse(["--db", "dbname=x"])["query-timeout"] == 30.0
    assert parse(["--db", "dbname=x", "--query-timeout", "0"])["query-timeout"] == 0.0
    monkeypatch.setenv("BLIP_QUERY_TIMEOUT", "2.5")
    assert parse(["--db", "dbname=x"])["query-timeout"] == 2.5
def test_connection_caps(monkeypatch) -> None:
    """
    --max-connections defaults to as many as fit (None here; the daemon
    finds out at start), --max-connections-per-client to 256, 0 being no
    cap; both come from the environment too.
    """
    options = parse(["--db", "dbname=x"])
    assert (options["max-connections"], options["max-connections-per-client"]) == (None, 256)
    monkeypatch.setenv("BLIP_MAX_CONNECTIONS", "5000")
    monkeypatch.setenv("BLIP_MAX_CONNECTIONS_PER_CLIENT", "0")
    options = parse(["--db", "dbname=x"])
    assert (options["max-connections"], options["max-connections-per-client"]) == (5000, 0)


def test_cors(monkeypatch) -> None:
    """
    --cors defaults to any page without --allow and to none with it; it
    takes origins (repeated, or a list in BLIP_CORS), spelled as a
    browser's Origin header spells them, or * or none alone.
    """
    from blip.web.answers import ANY_ORIGIN, NO_ORIGIN

    assert parse(["--db", "dbname=x"])["cors"] is ANY_ORIGIN
    assert parse(["--db", "dbname=x", "--allow", "10.0.0.0/8"])["cors"] is NO_ORIGIN
    assert parse(["--db", "dbname=x", "--allow", "10.0.0.0/8", "--cors", "*"])["cors"] is ANY_ORIGIN
    assert parse(["--db", "dbname=x", "--cors", "none"])["cors"] is NO_ORIGIN
    options = parse(["--db", "dbname=x", "--cors", "HTTPS://Power.Example.org/", "--cors", "http://[::1]:8000"])
    assert options["cors"].origins == {b"https://power.example.org", b"http://[::1]:8000"}
    monkeypatch.setenv("BLIP_CORS", "https://a.example, https://b.example:8443")
    options = parse(["--db", "dbname=x", "--allow", "10.0.0.0/8"])
    assert options["cors"].origins == {b"https://a.example", b"https://b.example:8443"}
    for bad in (["null"], ["https://a.example/page"], ["a.example"], ["*", "https://a.example"],
                ["none", "https://a.example"], ["https://user@a.example"]):
        with pytest.raises(usage.UsageError, match="--cors: "):
            parse(["--db", "dbname=x", *(arg for value in bad for arg in ("--cors", value))])


def test_mqtt_options(monkeypatch) -> None:
    """
    --mqtt is off by default and --mqtt-interval 5 s; both come from
    BLIP_MQTT and BLIP_MQTT_INTERVAL too; the broker URL is parsed.
    """
    options = parse(["--db", "dbname=x"])
    assert (options["mqtt"], options["mqtt-interval"]) == (None, 5.0)
    monkeypatch.setenv("BLIP_MQTT", "mqtts://me:secret@broker.lan/home")
    monkeypatch.setenv("BLIP_MQTT_INTERVAL", "0.5")
    options = parse(["--db", "dbname=x"])
    assert (options["mqtt"].host, options["mqtt"].port, options["mqtt"].tls) == ("broker.lan", 8883, True)
    assert options["mqtt"].prefix == "home"
    assert options["mqtt-interval"] == 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mqtt", "http://me:hunter2@broker"], "--mqtt: the URL must start with mqtt://"),
        (["--mqtt", "mqtt://me:hunter2@broker:1x"], "--mqtt: not a broker URL"),
        (["--mqtt", "mqtt://broker", "--role", "web"], "--mqtt: publish from the node"),
        (["--mqtt", "mqtt://broker", "--mqtt-interval", "-1"], "--mqtt-interval"),
    ],
)
def test_bad_mqtt_options(args: list[str], message: str) -> None:
    """
    A bad broker URL or interval is one clear error, without the password.
    """
    with pytest.raises(usage.UsageError, match=message) as caught:
        parse([*args, "--db", "dbname=x"])
    assert "hunter2" not in str(caught.value)


def test_mqtt_password_from_a_file_or_the_environment(monkeypatch, tmp_path) -> None:
    """
    A broker URL without a password takes it from --mqtt-password-file
    (its text, but the line end at its end) or else from
    BLIP_MQTT_PASSWORD; a password in the URL stands. Mistakes are one
    clear error that never repeats the password.
    """
    secret = tmp_path / "mqtt-password"
    secret.write_text("hunter2:p@ss\n")
    url = "mqtt://meter@broker.lan/home"
    options = parse(["--db", "dbname=x", "--mqtt", url, "--mqtt-password-file", str(secret)])
    assert (options["mqtt"].username, options["mqtt"].password) == ("meter", "hunter2:p@ss")
    assert "hunter2" not in repr(options["mqtt"]) + str(options["mqtt"])
    monkeypatch.setenv("BLIP_MQTT_PASSWORD", "from-env")
    assert parse(["--db", "dbname=x", "--mqtt", url])["mqtt"].password == "from-env"
    assert parse(["--db", "dbname=x", "--mqtt", "mqtt://meter:in-url@broker"])["mqtt"].password == "in-url"
    monkeypatch.setenv("BLIP_MQTT_PASSWORD_FILE", str(secret))
    assert parse(["--db", "dbname=x", "--mqtt", url])["mqtt"].password == "hunter2:p@ss"
    monkeypatch.delenv("BLIP_MQTT_PASSWORD_FILE")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for args, message in [
        (["--mqtt", "mqtt://meter:hunter2@broker", "--mqtt-password-file", str(secret)],
         "--mqtt-password-file: the --mqtt URL has a password already"),
        (["--mqtt", "mqtt://broker", "--mqtt-password-file", str(secret)],
         "--mqtt-password-file: a password needs a user"),
        (["--mqtt", "mqtt://broker"], "BLIP_MQTT_PASSWORD: a password needs a user"),
        (["--mqtt", url, "--mqtt-password-file", str(tmp_path / "none")],
         "--mqtt-password-file: cannot read .*none: No such file"),
        (["--mqtt", url, "--mqtt-password-file", str(empty)], "--mqtt-password-file: .*empty is empty"),
        (["--mqtt-password-file", str(secret)], "--mqtt-password-file: there is no --mqtt broker"),
    ]:
        with pytest.raises(usage.UsageError, match=message) as caught:
            parse(["--db", "dbname=x", *args])
        assert "hunter2" not in str(caught.value)


def test_the_daemon_logs_in_with_a_password_file(start_daemon, database, mosquitto, tmp_path) -> None:
    """
    The daemon given the broker's URL without the password, and the
    password in a file readable by root alone (or in BLIP_MQTT_PASSWORD),
    logs in to the broker and publishes; the password is never logged.
    """
    secret = tmp_path / "mqtt-password"
    secret.write_text(mosquitto.password + "\n")
    secret.chmod(0o600)
    for prefix, extra, env in (
        ("file", ["--mqtt-password-file", str(secret)], {}),
        ("env", [], {"BLIP_MQTT_PASSWORD": mosquitto.password}),
    ):
        url = f"mqtt://{mosquitto.user}@127.0.0.1:{mosquitto.port}/{prefix}"
        subscriber = mosquitto.subscribe(f"{prefix}/status")
        daemon = start_daemon("--db", database.dsn, "--simulate", "--mqtt", url, *extra, env=env)
        try:
            assert subscriber.wait_latest(f"{prefix}/status") == "online"
        finally:
            subscriber.close()
            assert daemon.stop() == 0
        assert not any(mosquitto.password in line for line in daemon.output)


def test_networks_and_replica(monkeypatch) -> None:
    """
    --allow and --trusted-proxy may be repeated, or listed in BLIP_ALLOW
    and BLIP_TRUSTED_PROXY (the command line wins); --db-read needs --db.
    """
    from ipaddress import ip_network

    options = parse(["--db", "dbname=x", "--allow", "10.0.0.0/8", "--allow", "192.0.2.7"])
    assert options["allow"] == (ip_network("10.0.0.0/8"), ip_network("192.0.2.7/32"))
    assert options["trusted-proxy"] == ()
    assert options["db-read"] is None
    monkeypatch.setenv("BLIP_ALLOW", "10.0.0.0/8, 2001:db8::/32")
    monkeypatch.setenv("BLIP_TRUSTED_PROXY", "127.0.0.1")
    options = parse(["--db", "dbname=x", "--db-read", "dbname=replica"])
    assert options["allow"] == (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))
    assert options["trusted-proxy"] == (ip_network("127.0.0.1/32"),)
    assert options["db-read"] == "dbname=replica"
    assert parse(["--db", "dbname=x", "--allow", "192.0.2.0/24"])["allow"] == (
        ip_network("192.0.2.0/24"),
    )
    with pytest.raises(usage.UsageError, match="--db-read: needs --db"):
        parse(["--db-read", "dbname=replica"])


def test_upstream_and_peers(monkeypatch, tmp_path) -> None:
    """
    --upstream takes a server's URL and needs --token-file, whose token is
    read at once; without --db such a node has no database (and needs no
    PostgreSQL); --peer may be repeated or listed in BLIP_PEER, with an
    optional token for all, and a window of 7 days by default.
    """
    token = tmp_path / "token"
    token.write_text("abc.def\n")
    options = parse(["--db", "dbname=x"])
    assert (options["upstream"], options["token-file"], options["peer"]) == (None, None, ())
    assert options.database and options["peer-window"] == 7.0
    options = parse(["--upstream", "https://power.example/ajax/", "--token-file", str(token)])
    assert (options["upstream"], options["token-file"], options.database) == (
        "https://power.example/ajax", "abc.def", False,
    )
    options = parse(["--upstream", "http://central:8080", "--token-file", str(token), "--db", "dbname=x"])
    assert options.database
    options = parse([
        "--db", "dbname=x", "--peer", "http://a.lan:8080/", "--peer", "https://b.lan",
        "--peer-token-file", str(token), "--peer-window", "1.5",
    ])
    assert options["peer"] == ("http://a.lan:8080", "https://b.lan")
    assert (options["peer-token-file"], options["peer-window"]) == ("abc.def", 1.5)
    monkeypatch.setenv("BLIP_PEER", "http://a.lan, http://c.lan")
    assert parse(["--db", "dbname=x"])["peer"] == ("http://a.lan", "http://c.lan")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--upstream", "ftp://central"], "--upstream: expected http"),
        (["--upstream", "http://central"], "--upstream: needs --token-file"),
        (["--upstream", "http://central", "--token-file", "/nonexistent"], "--token-file: cannot read"),
        (["--upstream", "http://central", "--token-file", "{token}", "--role", "web", "--db", "dbname=x"],
         "--upstream: forwards what this node reads"),
        (["--token-file", "{token}"], "--token-file: is the token of --upstream"),
        (["--upstream", "http://central", "--token-file", "{token}", "--peer", "http://a"],
         "--peer: repairs this node's database"),
        (["--upstream", "http://central", "--token-file", "{token}", "--mqtt", "mqtt://b"],
         "--mqtt: counts energy from the database"),
        (["--peer", "http://user:pw@a.lan"], "--peer: .*not in the URL"),
        (["--peer", "http://a", "--role", "web"], "--peer: repairs the outages of this node's logger"),
        (["--peer-token-file", "{token}"], "--peer-token-file: is the token of --peer"),
        (["--peer", "http://a", "--peer-window", "0"], "--peer-window: must be more than 0"),
        (["--peer", "http://a", "--peer-window", "a week"], "--peer-window: not a number of days"),
    ],
)
def test_bad_remote_options(args: list[str], message: str, tmp_path) -> None:
    """
    A bad --upstream, --token-file, --peer or --peer-window, or one given
    with what it cannot go with, is one clear error naming the option.
    """
    token = tmp_path / "token"
    token.write_text("abc.def\n")
    args = [arg.replace("{token}", str(token)) for arg in args]
    if "--db" not in args and "--upstream" not in args:
        args = [*args, "--db", "dbname=x"]
    with pytest.raises(usage.UsageError, match=message):
        parse(args)


def test_a_password_in_a_bad_connection_string_is_not_repeated() -> None:
    """
    A connection string that cannot be read is refused without quoting
    it: it may hold a password.
    """
    for option in ("--db", "--db-read"):
        args = ["--db", "dbname=x", option, "host=db password=s3cr3t user"]
        with pytest.raises(usage.UsageError) as refused:
            parse(args)
        assert "s3cr3t" not in str(refused.value)
        assert str(refused.value).startswith(option)


def twistd_options(args: list[str]):
    """:return: the blip options as twistd parses them, with its own."""
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    options.parseOptions(args)
    return options.subOptions


def test_state_dir_belongs_to_the_user_twistd_switches_to(tmp_path) -> None:
    """
    Started as root with twistd's --uid/--gid, a state dir blipserver
    creates is given to that user, and one that user cannot write in is
    refused at start, saying how to fix it. (Without root there is no
    switch, and the state dir is only checked for ourselves.)
    """
    import os
    import pwd

    nobody = pwd.getpwnam("nobody")
    fresh = tmp_path / "fresh" / "state"
    twistd_options(["--uid", "nobody", "blip", "--db", "dbname=x", "--state-dir", str(fresh)])
    if os.geteuid() != 0:
        assert fresh.stat().st_uid == os.geteuid()
        return
    assert (fresh.stat().st_uid, fresh.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert fresh.parent.stat().st_uid == 0
    root_only = tmp_path / "root-only"
    root_only.mkdir(mode=0o755)
    with pytest.raises(SystemExit, match=f"nobody.*chown nobody {root_only}"):
        twistd_options(["--uid", "nobody", "blip", "--db", "dbname=x", "--state-dir", str(root_only)])
    os.chmod(root_only, 0o1777)
    twistd_options(["--uid", "nobody", "blip", "--db", "dbname=x", "--state-dir", str(root_only)])


def test_a_daemon_running_as_root_wants_a_state_dir_of_roots_alone(tmp_path) -> None:
    """
    A daemon that runs as root (no --uid) writes its spool, lock and
    records in the state dir: one that another user may write in (theirs,
    or open to a group or to all) is refused, saying how to fix it, since
    that user could put a link there to any file.
    """
    import os
    import pwd

    if os.geteuid() != 0:
        pytest.fail("this test needs root (a daemon running as root): run the tests as root")
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    parse(["--db", "dbname=x", "--state-dir", str(state)])
    for mode, owner, who in ((0o775, 0, "other users"), (0o1777, 0, "other users"),
                             (0o755, nobody.pw_uid, "nobody")):
        os.chown(state, owner, owner)
        os.chmod(state, mode)
        with pytest.raises(usage.UsageError, match=(
            f"^--state-dir: the daemon runs as root, and {who} may write in {state}:"
            f" give it to root alone .chown root {state}; chmod go-w {state}."
        )):
            parse(["--db", "dbname=x", "--state-dir", str(state)])
