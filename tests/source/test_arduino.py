"""
Tests of the Arduino line protocol (including a property test over random
bytes), the stamps, and the serial endpoint and service on a real pty: a
device unplugged and plugged back behind its symlink, and a device missing
at start.
"""

import re
from typing import Optional

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel

from blip.counters import Counters
from blip.ingest.stamps import Stamps
from blip.model import INT_MAX, Point
from blip.source.arduino import (
    MAX_BLIP_LINE,
    MeterFactory,
    SerialEndpoint,
    SerialService,
    unescape,
)
from tests.conftest import wait_until


class Harness:
    """
    A protocol on a StringTransport, its clock, and what it produced.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.clock = Clock()
        self.clock.advance(start)
        self.points: list[Point] = []
        self.described: list[tuple[int, str]] = []
        self.counters = Counters()
        self.stamps = Stamps()
        self.factory = MeterFactory(
            self.points.append,
            self.stamps,
            self.clock,
            self.counters,
            lambda meter, text: self.described.append((meter, text)),
        )
        self.protocol = self.factory.buildProtocol(None)
        self.protocol.makeConnection(StringTransport())

    def feed(self, data: bytes, skip_first: bool = True) -> None:
        """Feed bytes, first ending the partial first line if asked."""
        if skip_first:
            self.protocol.dataReceived(b"partial\n")
        self.protocol.dataReceived(data)


def test_single_meter_lines() -> None:
    """
    A bare ``<ms>`` line is a blip of meter 1 stamped with the arrival time.
    """
    h = Harness()
    h.feed(b"1234\n")
    assert h.points == [Point(1, 1_700_000_000_000, 1234)]
    assert h.counters.blips == 1


def test_multi_meter_lines_and_crlf() -> None:
    """
    ``<id> <ms>`` lines carry their meter; ``\\r\\n`` ends lines too.
    """
    h = Harness()
    h.feed(b"2 500\r\n3\t700\r\n")
    assert [(p.meter, p.ms) for p in h.points] == [(2, 500), (3, 700)]


def test_first_line_after_open_is_dropped() -> None:
    """
    The first line may be the tail of a line the Arduino began before the
    port opened: it is dropped, and not counted as garbage.
    """
    h = Harness()
    h.feed(b"4500\n4600\n", skip_first=False)
    assert [p.ms for p in h.points] == [4600]
    assert h.counters.garbage == 0


def test_lines_split_across_reads() -> None:
    """
    A line arriving in pieces is parsed once it is whole.
    """
    h = Harness()
    h.feed(b"12")
    h.protocol.dataReceived(b"34")
    assert h.points == []
    h.protocol.dataReceived(b"\n")
    assert [p.ms for p in h.points] == [1234]


@pytest.mark.parametrize(
    "line, why",
    [
        (b"abc", "not a blip"),
        (b"12a", "not a blip"),
        (b"0", "interval of 0 ms"),
        (b"1 0", "interval of 0 ms"),
        (b"-5", "negative number"),
        (b"2147483648", "number too large"),
        (b"2147483648 5", "number too large"),
        (b"1" * 70, "longer than 64 bytes"),
        (b"\x00\xff\xfe\x80", "not a blip"),
        (b"", "empty line"),
        (b"1 2 3", "not a blip"),
        (b"12.5", "not a blip"),
        (b"INFO x y", "not a blip"),
    ],
)
def test_garbage_is_counted_and_dropped(line: bytes, why: str, log_events) -> None:
    """
    Every class of garbage is counted, logged with its reason, and not
    stored; the protocol keeps reading.
    """
    h = Harness()
    events = log_events
    h.feed(line + b"\n99\n")
    assert [p.ms for p in h.points] == [99]
    assert h.counters.garbage == 1
    warnings = [e for e in events if e.get("why") is not None]
    assert [e["why"] for e in warnings] == [why]


def test_largest_values_are_accepted() -> None:
    """
    The largest INTEGER is a valid interval and meter id.
    """
    h = Harness()
    h.feed(b"2147483647\n2147483647 2147483647\n")
    assert [(p.meter, p.ms) for p in h.points] == [(1, 2147483647), (2147483647, 2147483647)]


def test_overlong_line_without_newline_is_skipped_to_the_next_line() -> None:
    """
    A flood without newlines is dropped once it passes the buffer limit, up
    to the next newline; the lines after it are read as usual.
    """
    h = Harness()
    h.feed(b"7" * 3000)
    h.protocol.dataReceived(b"123\n456\n")
    assert [p.ms for p in h.points] == [456]
    assert h.counters.garbage == 1


def test_overlong_line_does_not_swallow_the_lines_read_with_it() -> None:
    """
    Valid lines arriving in the same read as an overlong line are kept.
    """
    h = Harness()
    h.feed(b"9" * 200 + b"\n100\n200\n")
    assert [p.ms for p in h.points] == [100, 200]


def test_garbage_warnings_are_rate_limited(log_events) -> None:
    """
    At most one garbage warning a second; the next one says how many were
    not logged.
    """
    h = Harness()
    events = log_events
    h.feed(b"x\n" * 50)
    assert len([e for e in events if "why" in e]) == 1
    h.clock.advance(1.0)
    h.protocol.dataReceived(b"y\n")
    warnings = [e for e in events if "why" in e]
    assert len(warnings) == 2
    assert warnings[1]["unwarned"] == 49
    assert h.counters.garbage == 51


def test_connected_and_info_lines() -> None:
    """
    ``CONNECTED`` lines are logged; ``INFO`` lines name a meter, with
    ``\\xx`` escapes decoded; neither is a blip or garbage.
    """
    h = Harness()
    h.feed(b"CONNECTED v2\nINFO 3 K\\c3\\b8kken\\20\\2f\\20fryser\n")
    assert h.points == []
    assert h.counters.garbage == 0
    assert h.described == [(3, "Køkken / fryser")]


def test_unescape_keeps_bad_bytes_visible() -> None:
    """
    Escapes that do not make UTF-8 become replacement characters.
    """
    assert unescape(b"a\\ffb") == "a\ufffdb"
    assert unescape(b"no escapes \\zz") == "no escapes \\zz"


def test_stamps_strictly_increase_per_meter() -> None:
    """
    Two blips in one millisecond, or after the clock stepped back, get the
    previous stamp + 1; meters are independent.
    """
    h = Harness()
    h.feed(b"10\n10\n2 10\n")
    h.clock.advance(-5.0)
    h.protocol.dataReceived(b"10\n")
    stamps = [(p.meter, p.stamp) for p in h.points]
    t = 1_700_000_000_000
    assert stamps == [(1, t), (1, t + 1), (2, t), (1, t + 2)]


def test_stamps_seeded_from_a_later_stamp() -> None:
    """
    A seeded stamp (the last one stored before a restart) bounds the next.
    """
    stamps = Stamps()
    stamps.seed(1, 5000)
    assert stamps.next(1, 4000) == 5001
    stamps.seed(1, 100)
    assert stamps.next(1, 9000) == 9000


@pytest_twisted.ensureDeferred
async def test_serial_port_on_a_pty(pty_meter) -> None:
    """
    The real SerialPort reads the lines written into a pty, through the
    endpoint and ClientService used in production.
    """
    from twisted.internet import reactor

    points: list[Point] = []
    arrived: list[Deferred[None]] = []

    def receive(point: Point) -> None:
        points.append(point)
        if arrived:
            arrived.pop().callback(None)

    counters = Counters()
    factory = MeterFactory(receive, Stamps(), reactor, counters)
    service = ClientService(
        SerialEndpoint(reactor, pty_meter.path, 9600, counters),
        factory,
        retryPolicy=backoffPolicy(0.1, 1.0),
    )
    service.startService()
    try:
        await service.whenConnected().addTimeout(10, reactor)
        done: Deferred[None] = Deferred()
        arrived.append(done)
        pty_meter.write(b"tail\n2 1500\r\n")
        await done.addTimeout(10, reactor)
        assert [(p.meter, p.ms) for p in points] == [(2, 1500)]
        assert counters.serial_opens == 1
    finally:
        await service.stopService()


def test_endpoint_fails_for_a_missing_device(tmp_path, log_events) -> None:
    """
    Opening a device that does not exist fails the connection attempt
    (ClientService then retries) and is logged once however often it is
    retried.
    """
    from twisted.internet import reactor

    counters = Counters()
    endpoint = SerialEndpoint(reactor, str(tmp_path / "nothing"), 9600, counters)
    factory = MeterFactory(lambda p: None, Stamps(), Clock(), counters)
    failures: list[Optional[BaseException]] = []
    for _ in range(3):
        endpoint.connect(factory).addErrback(lambda f: failures.append(f.value))
    assert len(failures) == 3
    assert counters.serial_failures == 3
    assert len([e for e in log_events if "cannot open" in e["log_format"]]) == 1


#: What a blip line is, written independently of the parser: one or two
#: runs of ASCII digits between whitespace (the id first when there are two).
BLIP = re.compile(rb"[ \t\r\x0b\x0c]*(?:([0-9]+)[ \t\r\x0b\x0c]+)?([0-9]+)[ \t\r\x0b\x0c]*")


def expected_blip(line: bytes) -> Optional[tuple[int, int]]:
    """
    :return: ``(meter, ms)`` if the line (without its newline) must be
        stored, else None.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    match = BLIP.fullmatch(line)
    if len(line) > MAX_BLIP_LINE or match is None:
        return None
    meter = int(match.group(1)) if match.group(1) is not None else 1
    ms = int(match.group(2))
    if ms == 0 or ms > INT_MAX or meter > INT_MAX:
        return None
    return meter, ms


def _number() -> st.SearchStrategy[bytes]:
    edges = st.sampled_from([0, 1, INT_MAX, INT_MAX + 1, 10**15, 2**63])
    return st.one_of(st.integers(0, 10**12), edges).map(lambda n: b"%d" % n)


LINES = st.one_of(
    _number(),
    st.tuples(_number(), _number()).map(lambda t: t[0] + b" " + t[1]),
    st.tuples(_number(), st.sampled_from([b"\t", b"  ", b"\x0b"]), _number()).map(b"".join),
    st.tuples(st.integers(40, 70), _number()).map(lambda t: b" " * (t[0] - len(t[1])) + t[1]),
    st.sampled_from(
        [b"", b"\r", b"-5", b"12a", b"1 2 3", b"12.5", b"INFO 3 K\\c3\\b8", b"INFO x",
         b"CONNECTED v2", b"\x00\xff", b" 7 ", b"7" * 80]
    ),
    st.binary(max_size=70).map(lambda b: b.replace(b"\n", b"")),
).flatmap(lambda line: st.sampled_from([line, line + b"\r"]))


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """:return: ``data`` cut at the given offsets."""
    edges = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(edges, edges[1:])]


@settings(max_examples=300, deadline=None, database=None)
@given(lines=st.lists(LINES, max_size=40), cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_property_only_valid_lines_are_stored(lines: list[bytes], cuts: list[int]) -> None:
    """
    Whatever lines arrive, cut into reads at any offsets: nothing raises,
    the points are exactly the valid lines after the first, in order, with
    stamps strictly increasing per meter, and every other line is counted.
    """
    h = Harness()
    data = b"".join(line + b"\n" for line in lines)
    for chunk in chunks(data, cuts):
        h.protocol.dataReceived(chunk)
    expected = [e for e in map(expected_blip, lines[1:]) if e is not None]
    assert [(p.meter, p.ms) for p in h.points] == expected
    assert h.counters.lines == max(len(lines) - 1, 0)
    assert h.counters.blips == len(expected)
    named = [l for l in lines[1:] if l.startswith((b"INFO", b"CONNECTED")) and expected_blip(l) is None]
    assert h.counters.garbage <= h.counters.lines - h.counters.blips
    assert h.counters.garbage >= h.counters.lines - h.counters.blips - len(named)
    last: dict[int, int] = {}
    for p in h.points:
        assert p.stamp > last.get(p.meter, -1)
        last[p.meter] = p.stamp


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=6000), cuts=st.lists(st.integers(0, 6000), max_size=20))
def test_property_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    """
    Any bytes at all, floods without newlines included, cut into reads
    anywhere: nothing raises, and every point stored comes from a valid
    line of the input.
    """
    h = Harness()
    for chunk in chunks(data, cuts):
        h.protocol.dataReceived(chunk)
    valid = {e for e in map(expected_blip, data.split(b"\n")[:-1]) if e is not None}
    assert {(p.meter, p.ms) for p in h.points} <= valid
    assert h.counters.blips == len(h.points)


class Recorder:
    """
    Counts, points and source events of a factory on the real reactor.
    """

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.points: list[Point] = []
        self.events: list[str] = []
        self.counters = Counters()
        self.factory = MeterFactory(
            self.points.append, Stamps(), reactor, self.counters,
            opened=lambda: self.events.append("opened"),
            lost=lambda: self.events.append("lost"),
        )

    def service(self, path: str) -> SerialService:
        """:return: the serial service for the device at ``path``."""
        from twisted.internet import reactor

        endpoint = SerialEndpoint(reactor, path, 9600, self.counters)
        return SerialService(endpoint, self.factory, reactor)


def warnings(log_events) -> list[str]:
    """:return: the formats of the warnings and worse logged."""
    return [e["log_format"] for e in log_events if e["log_level"] >= LogLevel.warn]


@pytest_twisted.ensureDeferred
async def test_unplugged_device_is_logged_once_and_reopened(meter_link, log_events) -> None:
    """
    A device that vanishes is logged once (not once per attempt to reopen
    it), reopened when it is back behind its symlink, and the first line
    after reopening is dropped; lines it sent before the reopening are
    read. Stopping the service is not a loss.
    """
    r = Recorder()
    service = r.service(str(meter_link.path))
    service.startService()
    try:
        meter_link.write(b"tail\n100\n")
        await wait_until(lambda: [p.ms for p in r.points] == [100])
        meter_link.unplug()
        await wait_until(lambda: r.counters.serial_failures >= 1)
        meter_link.plug()
        meter_link.write(b"partial\n200\n300\n")
        await wait_until(lambda: [p.ms for p in r.points] == [100, 200, 300], 15)
    finally:
        await service.stopService()
    assert r.counters.serial_opens == 2 and r.counters.serial_lost == 1
    assert r.events == ["opened", "lost", "opened"]
    assert warnings(log_events) == [
        "serial source lost: {why}; reopening it as soon as it is back"
    ]


@pytest_twisted.ensureDeferred
async def test_a_device_missing_at_start_is_waited_for(meter_link, log_events) -> None:
    """
    A device that does not exist when the daemon starts is logged once and
    opened as soon as it appears.
    """
    meter_link.unplug()
    r = Recorder()
    service = r.service(str(meter_link.path))
    service.startService()
    try:
        await wait_until(lambda: r.counters.serial_failures >= 2)
        meter_link.plug()
        meter_link.write(b"\n42\n")
        await wait_until(lambda: [p.ms for p in r.points] == [42], 15)
    finally:
        await service.stopService()
    assert warnings(log_events) == [
        "cannot open serial device {device}: {why}; waiting for it"
    ]
    assert r.events == ["opened"]


def test_stamps_ahead_of_the_clock_are_warned_about_once(log_events) -> None:
    """
    A meter whose stamps run ahead of the clock is warned about once, not
    on every blip, until the clock catches up; a later step back warns
    again.
    """
    stamps = Stamps()
    stamps.next(1, 10_000)
    for _ in range(100):
        stamps.next(1, 5_000)
    stamps.next(1, 20_000)
    stamps.next(1, 15_000)
    warnings = [e for e in log_events if "ahead of the clock" in e.get("log_format", "")]
    assert len(warnings) == 2
