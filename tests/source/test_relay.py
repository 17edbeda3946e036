"""
Tests of the serial line relayed over the network, against Debian's ser2net
relaying a real pty: the URL, the endpoint under the service that keeps the
line open (raw TCP and RFC 2217), and the daemon reading through a relay
that is killed and started again, or that falls silent without closing.
"""

import re
import socket
import termios
import time

import pytest
import pytest_twisted
from twisted.conch.telnet import DONT, IAC, WILL
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from blip.source.device import SerialService
from blip.source.relay import (
    COM_PORT_OPTION,
    KEEPALIVE_PROBES,
    SHORTEST_SILENCE,
    SILENCE_LIMIT,
    ComPort,
    Relay,
    RelayEndpoint,
    RelayError,
    keepalive_times,
    parse_relay,
)
from tests.conftest import wait_until
from tests.source.test_device import Recorder, warnings
from tests.test_faults import ms_of, stored_lines
from tests.test_service import eventually, get


@pytest.mark.parametrize(
    "url, relay, text",
    [
        ("tcp://esp-link.lan:23", Relay("tcp", "esp-link.lan", 23), "tcp://esp-link.lan:23"),
        ("rfc2217://192.168.1.9:2217/", Relay("rfc2217", "192.168.1.9", 2217), "rfc2217://192.168.1.9:2217"),
        (" tcp://[fd00::7]:4001 ", Relay("tcp", "fd00::7", 4001), "tcp://[fd00::7]:4001"),
    ],
)
def test_relay_urls(url: str, relay: Relay, text: str) -> None:
    """
    A relay URL gives the kind of relay, its host (an IPv6 address in
    brackets) and its port, and is logged as it was meant.
    """
    assert parse_relay(url) == relay
    assert str(relay) == text


@pytest.mark.parametrize(
    "url, message",
    [
        ("tcp://esp-link.lan", "no port in 'tcp://esp-link.lan'"),
        ("tcp://esp-link.lan:0", "no port"),
        ("tcp://:23", "no host"),
        ("tcp://esp-link.lan:99999", "not a relay URL"),
        ("tcp://esp-link.lan:telnet", "not a relay URL"),
        ("telnet://esp-link.lan:23", "unknown kind of relay 'telnet'"),
        ("tcp://me@esp-link.lan:23", "only a host and a port"),
        ("tcp://esp-link.lan:23/dev/ttyUSB0", "only a host and a port"),
        ("tcp://esp-link.lan:23?baud=9600", "only a host and a port"),
    ],
)
def test_bad_relay_urls(url: str, message: str) -> None:
    """
    A URL that names no relay is refused, saying why and what is expected.
    """
    with pytest.raises(RelayError, match=re.escape(message)) as refused:
        parse_relay(url)
    assert "expected tcp://HOST:PORT or rfc2217://HOST:PORT" in str(refused.value)


def relayed(r: Recorder, relay: Relay, baudrate: int = 9600) -> SerialService:
    """:return: the service keeping the line relayed at ``relay`` open."""
    from twisted.internet import reactor

    return SerialService(RelayEndpoint(reactor, relay, baudrate, r.counters), r.factory, reactor)


def test_keepalive_times() -> None:
    """
    TCP asks after a silent relay from half of --relay-silence on, and
    shares the other half between its probes.
    """
    assert keepalive_times(SILENCE_LIMIT) == (20, 5)
    assert keepalive_times(SHORTEST_SILENCE) == (4, 1)
    assert keepalive_times(3600) == (1800, 450)


@pytest_twisted.ensureDeferred
async def test_lines_through_ser2net(ser2net, pty_meter, log_events) -> None:
    """
    Lines written into the pty arrive through ser2net (raw TCP), the first
    one after connecting dropped, as from a local device; the connection
    sends keepalive probes after 20 quiet seconds, every 5 s, and gives up
    after SILENCE_LIMIT (40 s); stopping the service is not a loss.
    """
    from twisted.internet import reactor

    relay = ser2net()
    relay.start()
    r = Recorder()
    service = relayed(r, parse_relay(relay.url))
    service.startService()
    try:
        protocol = await service.whenConnected().addTimeout(10, reactor)
        pty_meter.write(b"tail\n1 100\n200\r\n")
        await wait_until(lambda: [(p.meter, p.ms) for p in r.points] == [(1, 100), (1, 200)])
        handle = protocol.transport.getHandle()
        assert handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        tcp = socket.IPPROTO_TCP
        assert handle.getsockopt(tcp, socket.TCP_KEEPIDLE) == 20
        assert handle.getsockopt(tcp, socket.TCP_KEEPINTVL) == 5
        assert handle.getsockopt(tcp, socket.TCP_KEEPCNT) == KEEPALIVE_PROBES == 4
        assert handle.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == SILENCE_LIMIT * 1000 == 40_000
    finally:
        await service.stopService()
    assert r.counters.serial_opens == 1 and r.counters.serial_lost == 0
    assert r.events == ["opened"]
    assert warnings(log_events) == []


@pytest_twisted.ensureDeferred
async def test_rfc2217_sets_the_line(ser2net, pty_meter, log_events) -> None:
    """
    Through an RFC 2217 relay, the daemon's --baudrate is what the relay
    sets the device to (ser2net's own setting was another), and the line's
    bytes arrive unescaped from Telnet: a 0xff byte, which Telnet doubles,
    is one byte of a garbage line again.
    """
    relay = ser2net(rfc2217=True, speed=115200)
    relay.start()
    r = Recorder()
    service = relayed(r, parse_relay(relay.url), baudrate=4800)
    service.startService()
    try:
        def speeds() -> tuple[int, int]:
            attributes = termios.tcgetattr(pty_meter.slave)
            return attributes[4], attributes[5]

        await wait_until(lambda: speeds() == (termios.B4800, termios.B4800))
        pty_meter.write(b"tail\n300\n\xff7\xff\n400\n")
        await wait_until(lambda: [p.ms for p in r.points] == [300, 400])
        dropped = [e["line"] for e in log_events if "dropped serial line" in e["log_format"]]
        assert dropped == [b"\xff7\xff"] and r.counters.garbage == 1
        await wait_until(lambda: any("baud" in e["log_format"] for e in log_events))
        answer = [e for e in log_events if "baud" in e["log_format"]]
        assert [e["baudrate"] for e in answer] == [4800]
    finally:
        await service.stopService()
    assert r.events == ["opened"]
    assert len(warnings(log_events)) == 1


def test_a_relay_refusing_rfc2217_or_telnet(log_events) -> None:
    """
    A relay that refuses RFC 2217's option is read all the same, with one
    warning that the line keeps the relay's speed; one that sends a Telnet
    command nobody knows is warned of and dropped (the service then
    connects again), not left to raise in the reactor.
    """
    r = Recorder()
    line = r.factory.buildProtocol(None)
    port = ComPort(line, Relay("rfc2217", "relay.lan", 2217), 9600)
    transport = StringTransport()
    port.makeConnection(transport)
    assert IAC + WILL + COM_PORT_OPTION in transport.value()
    port.dataReceived(IAC + DONT + COM_PORT_OPTION + b"tail\n5\n")
    assert [p.ms for p in r.points] == [5] and r.events == ["opened"]
    assert warnings(log_events) == [
        "the relay {relay} does not take RFC 2217 settings; the line keeps"
        " the speed the relay gives it"
    ]
    port.dataReceived(IAC + b"\xee")
    assert transport.disconnecting
    assert len(warnings(log_events)) == 2


@pytest_twisted.ensureDeferred
async def test_a_relay_missing_at_start_is_waited_for(ser2net, pty_meter, log_events) -> None:
    """
    A relay that does not answer yet when the daemon starts is logged once
    (not once per attempt) and read as soon as it is up.
    """
    relay = ser2net()
    r = Recorder()
    service = relayed(r, parse_relay(relay.url))
    service.startService()
    try:
        await wait_until(lambda: r.counters.serial_failures >= 2)
        relay.start()
        connected: Deferred[object] = service.whenConnected()
        await connected
        pty_meter.write(b"\n42\n")
        await wait_until(lambda: [p.ms for p in r.points] == [42], 15)
    finally:
        await service.stopService()
    assert warnings(log_events) == [
        "cannot connect to the serial relay {relay}: {why}; waiting for it"
    ]
    assert r.events == ["opened"]


def write_lines(pty, lines: range) -> None:
    """Write the numbered blip lines ``lines`` into the pty."""
    for line in lines:
        pty.write(b"%d\n" % ms_of(line))


def counter(daemon, name: str) -> float:
    """:return: a counter of the daemon, from /metrics."""
    status, body = get(daemon, "/metrics")
    assert status == 200
    found = re.search(rf"^blip_{name}_total (\S+)$", body.decode(), re.MULTILINE)
    assert found, name
    return float(found.group(1))


@pytest.mark.long(10)
def test_the_daemon_reads_through_a_relay_restarted_mid_stream(
    start_daemon, database, ser2net, pty_meter
) -> None:
    """
    The daemon reads the meter through ser2net: blips written to the pty
    are stamped and stored. ser2net is killed while the meter keeps
    blinking: the loss is logged once, the daemon tries again with growing
    waits (failed attempts only counted), and reads on once ser2net is back
    on its port. Every blip written while the relay was up is stored, but
    the first line after each connection; those written while it was down
    are up to the relay (ser2net leaves them in the device, and a pty keeps
    them). The record of ingest periods tells the loss; /healthz is as for
    a local device.
    """
    relay = ser2net()
    relay.start()
    daemon = start_daemon("--serial", relay.url, "--db", database.dsn, "--node-name", "shed")
    daemon.wait_for("database ready")
    daemon.wait_for(re.escape(f"reading the serial line relayed by {relay.url}"))
    pty_meter.write(b"tail\n")
    write_lines(pty_meter, range(20))
    assert eventually(lambda: stored_lines(database) == list(range(20)))
    stamps = [stamp for (stamp,) in database.sql("SELECT stamp FROM readings ORDER BY stamp")]
    assert abs(stamps[-1] - time.time() * 1000) < 60_000
    assert get(daemon, "/healthz")[0] == 200

    mark = len(daemon.output)
    relay.kill()
    daemon.wait_for("serial source lost", since=mark)
    lost = time.monotonic()
    write_lines(pty_meter, range(20, 25))
    assert eventually(lambda: counter(daemon, "serial_failures") >= 2)
    # A tight loop would have failed twice within milliseconds: the first
    # two waits are at least 0.5 and 1 s.
    assert time.monotonic() - lost >= 1.4
    relay.start()
    daemon.wait_for("reading the serial line relayed", since=mark)
    write_lines(pty_meter, range(25, 45))
    assert eventually(lambda: stored_lines(database)[-1:] == [44])
    assert counter(daemon, "serial_opens") == 2 and counter(daemon, "serial_lost") == 1
    assert daemon.stop() == 0

    lines = stored_lines(database)
    assert lines == sorted(set(lines)), "lines stored twice or out of order"
    missing = set(range(45)) - set(lines)
    # The first line after connecting again: the oldest the pty kept, or,
    # had the relay thrown those away, the first written after.
    assert missing in ({20}, set(range(20, 26))), sorted(missing)
    logged = "\n".join(daemon.output)
    assert logged.count("serial source lost") == 1
    assert "cannot connect" not in logged
    reasons = database.sql("SELECT end_reason FROM ingest_periods WHERE node = 'shed' ORDER BY started")
    assert reasons == [("device lost",), ("stop",)]


@pytest.mark.long(15)
def test_a_relay_that_falls_silent_is_given_up(start_daemon, database, ser2net, pty_meter) -> None:
    """
    A relay that vanishes without closing the connection (its network cut:
    nothing gets through, nothing is closed) is given up for lost within
    --relay-silence seconds of its last word (the shortest it takes, 8),
    logged once and counted like a lost device; once the network is back, the daemon connects again
    (ser2net's kickolduser lets the new connection replace the dead one)
    and reads on: every blip from the first that came through is stored.
    """
    relay = ser2net(isolated=True)
    relay.start()
    daemon = start_daemon(
        "--serial", relay.url, "--db", database.dsn, "--node-name", "barn",
        "--relay-silence", str(SHORTEST_SILENCE), program=relay.twistd(),
    )
    daemon.wait_for("database ready")
    daemon.wait_for("reading the serial line relayed")
    pty_meter.write(b"tail\n")
    write_lines(pty_meter, range(10))
    assert eventually(lambda: stored_lines(database) == list(range(10)))

    mark = len(daemon.output)
    relay.silence()
    silenced = time.monotonic()
    daemon.wait_for("serial source lost", since=mark, timeout=SHORTEST_SILENCE + 30)
    assert time.monotonic() - silenced < SHORTEST_SILENCE + 5
    relay.restore()
    daemon.wait_for("reading the serial line relayed", since=mark)
    # ser2net throws away what the device sent while it switched to the
    # new connection: the meter blinks until a blip comes through.
    written = 10

    def one_more_came_through() -> bool:
        nonlocal written
        write_lines(pty_meter, range(written, written + 1))
        written += 1
        return stored_lines(database)[-1] >= 10

    assert eventually(one_more_came_through), "\n".join(daemon.output) + relay.log()
    write_lines(pty_meter, range(written, written + 10))
    assert eventually(lambda: stored_lines(database)[-1:] == [written + 9])
    assert daemon.stop() == 0

    lines = stored_lines(database)
    assert lines[:10] == list(range(10))
    resumed = lines[10]
    assert lines[10:] == list(range(resumed, written + 10))
    assert "\n".join(daemon.output).count("serial source lost") == 1
    reasons = database.sql("SELECT end_reason FROM ingest_periods WHERE node = 'barn' ORDER BY started")
    assert reasons == [("device lost",), ("stop",)]


def test_a_bad_relay_url_is_refused_at_start(start_daemon, database) -> None:
    """
    A --serial URL that names no relay stops the daemon at start with one
    line saying what is wrong.
    """
    code, output = start_daemon.refused("--serial", "tcp://esp-link.lan", "--db", database.dsn)
    assert code == 1
    assert output == [
        "twistd blip: --serial: no port in 'tcp://esp-link.lan';"
        " expected tcp://HOST:PORT or rfc2217://HOST:PORT"
    ]
