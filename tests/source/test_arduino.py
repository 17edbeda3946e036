"""
Tests of the Arduino line protocol on a StringTransport, including property
tests over random lines and bytes.
"""

import re
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from blip.counters import Counters
from blip.ingest.stamps import Stamps
from blip.model import INT_MAX, Point
from blip.source.arduino import MAX_BLIP_LINE, MeterFactory, unescape


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
