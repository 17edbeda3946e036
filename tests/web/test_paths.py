"""
Tests of the numbers in legacy paths: what each accepts, and the error
each refuses the rest with.
"""

import pytest

from blip.model import DEFAULT_METER, INT_MAX
from blip.web.errors import ApiError, BadRequest, NotFound
from blip.web.paths import buckets, meter_id, number, stamps


@pytest.mark.parametrize(
    "text, value",
    [("0", 0), ("007", 7), ("9" * 15, 10**15 - 1)],
)
def test_numbers(text: str, value: int) -> None:
    """A number is 1 to 15 ASCII digits."""
    assert number(text, "stamp") == value


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "stamp must be a non-negative integer, not ''"),
        ("-5", "stamp must be a non-negative integer, not '-5'"),
        ("１２", "stamp must be a non-negative integer"),
        ("²", "stamp must be a non-negative integer"),
        ("1e9", "stamp must be a non-negative integer"),
        ("9" * 16, "stamp has more than 15 digits"),
    ],
)
def test_bad_numbers(text: str, message: str) -> None:
    """Anything else is a 400 naming the number."""
    with pytest.raises(BadRequest, match=message):
        number(text, "stamp")


def test_meter_ids() -> None:
    """
    No id is the default meter; an id no meter can have (past a
    PostgreSQL INTEGER) is unknown (404), not bad.
    """
    assert meter_id(None) == DEFAULT_METER
    assert meter_id(str(INT_MAX)) == INT_MAX
    with pytest.raises(NotFound, match=f"unknown meter {INT_MAX + 1}"):
        meter_id(str(INT_MAX + 1))
    with pytest.raises(BadRequest, match="meter id must be"):
        meter_id("x")


def test_ranges_and_buckets() -> None:
    """
    A range may be one stamp long but not end before it starts; buckets
    are at least 1 ms wide and at most 1000.
    """
    assert stamps("5", "5") == (5, 5)
    with pytest.raises(BadRequest, match="range ends before it starts"):
        stamps("5", "4")
    with pytest.raises(BadRequest, match="last stamp must be"):
        stamps("5", "x")
    assert buckets("0", "1", "1000") == (0, 1, 1000)
    for args, message in [
        (("0", "0", "1"), "bucket width must be at least 1 ms"),
        (("0", "1", "1001"), "at most 1000 buckets"),
        (("x", "1", "1"), "start must be"),
    ]:
        with pytest.raises(ApiError, match=message):
            buckets(*args)
