"""
Tests of the modern API's query parameters: times as unix ms or ISO 8601,
integers, choices and meter lists, each refused with its name when bad.
"""

import pytest
from twisted.web.test.requesthelper import DummyRequest

from blip.web.v1.query import EARLIEST, LATEST, BadParameter, Query, instant


def query(**args: bytes | list[bytes]) -> Query:
    """:return: the Query of a request with these arguments."""
    request = DummyRequest([b""])
    request.args = {k.encode(): v if isinstance(v, list) else [v] for k, v in args.items()}
    return Query(request)


@pytest.mark.parametrize(
    "text, zone, ms",
    [
        ("1700000000123", "UTC", 1_700_000_000_123),
        ("-5", "UTC", -5),
        ("2024-03-31T00:00:00Z", "UTC", 1_711_843_200_000),
        ("2024-03-31T02:00:00+02:00", "UTC", 1_711_843_200_000),
        ("2024-03-31T00:00:00.5+00:00", "UTC", 1_711_843_200_500),
        # Without an offset: the meter's local time, daylight saving included.
        ("2024-03-31", "Europe/Copenhagen", 1_711_839_600_000),
        ("2024-07-01T00:00", "Europe/Copenhagen", 1_719_784_800_000),
        ("2024-07-01 00:00:00", "Europe/Copenhagen", 1_719_784_800_000),
        # A "+" that arrived unescaped in a query string reads as a space.
        ("2024-03-31T02:00:00 02:00", "UTC", 1_711_843_200_000),
        ("0001-01-01T00:00:00+23:59", "UTC", -62_135_683_140_000),
        ("9999-12-31T23:59:59.999-23:59", "UTC", 253_402_387_139_999),
    ],
)
def test_times(text: str, zone: str, ms: int) -> None:
    """
    A time is unix ms or an ISO 8601 date or date-time; without an offset
    it is local time in the meter's zone; every RFC 3339 date-time fits.
    """
    assert instant(text, "from", zone) == ms


@pytest.mark.parametrize(
    "text, message",
    [
        ("yesterday", "from: must be unix ms or an ISO 8601 date-time"),
        ("2024-13-01", "from: must be unix ms or an ISO 8601"),
        ("1.5", "from: must be unix ms"),
        (str(LATEST + 1), "from: must be from"),
        (str(EARLIEST - 1), "from: must be from"),
        ("9" * 30, "from: must be unix ms"),
    ],
)
def test_bad_times_name_the_parameter(text: str, message: str) -> None:
    """
    A time that is neither is refused with a message naming the parameter.
    """
    with pytest.raises(BadParameter, match=message):
        instant(text, "from", "UTC")


def test_parameters() -> None:
    """
    Integers, choices and meter lists are read with their defaults, and
    refused by name when bad, given twice, or not UTF-8.
    """
    assert query().integer("max_points", 2000, 1, 20000) == 2000
    assert query(max_points=b"7").integer("max_points", 2000, 1, 20000) == 7
    assert query(period=b"week").choice("period", "day", ("day", "week")) == "week"
    assert query(meters=b"3,1, 2,1").meters("meters") == [1, 2, 3]
    assert query().meters("meters") is None
    assert query(to=b"5").instant("to", 9, "UTC") == 5
    bad = [
        (query(max_points=b"0"), lambda q: q.integer("max_points", 1, 1, 20000), "max_points: must be from 1"),
        (query(max_points=b"x"), lambda q: q.integer("max_points", 1, 1, 20000), "max_points: must be an integer"),
        (query(period=b"fortnight"), lambda q: q.choice("period", "day", ("day",)), "period: must be one of day"),
        (query(meters=b"1,,2"), lambda q: q.meters("meters"), "meters: must be meter ids"),
        (query(meters=b"-1"), lambda q: q.meters("meters"), "meters: must be meter ids"),
        (query(to=[b"1", b"2"]), lambda q: q.text("to"), "to: given more than once"),
        (query(to=b"\xff"), lambda q: q.text("to"), "to: not UTF-8"),
        (query(to=b"1" * 300), lambda q: q.text("to"), "to: longer than"),
    ]
    for q, read, message in bad:
        with pytest.raises(BadParameter, match=message):
            read(q)
