"""
What the numbers in a legacy route's path mean: each is read once, or
turned into a 400 (or, for a meter id no meter can have, a 404) saying
what is wrong.
"""

from typing import Optional

from blip.model import DEFAULT_METER, INT_MAX
from blip.web.errors import BadRequest, NotFound
from blip.web.limits import MAX_BUCKETS, MAX_DIGITS


def number(text: str, what: str) -> int:
    """
    Parse a non-negative decimal number from a path.

    :raise BadRequest: for anything but 1 to :data:`MAX_DIGITS` ASCII
        digits.
    """
    if not (text.isascii() and text.isdigit()):
        raise BadRequest(f"{what} must be a non-negative integer, not {text[:40]!r}")
    if len(text) > MAX_DIGITS:
        raise BadRequest(f"{what} has more than {MAX_DIGITS} digits")
    return int(text)


def meter_id(text: Optional[str]) -> int:
    """
    Parse a meter id from a path (None means the default meter).

    :raise NotFound: for an id no meter can have.
    """
    if text is None:
        return DEFAULT_METER
    meter = number(text, "meter id")
    if meter > INT_MAX:
        raise NotFound(f"unknown meter {meter}")
    return meter


def stamps(first: str, last: str) -> tuple[int, int]:
    """
    Parse the first and last stamp of a range, both included.

    :raise BadRequest: for a range that ends before it starts.
    """
    a, b = number(first, "first stamp"), number(last, "last stamp")
    if a > b:
        raise BadRequest("range ends before it starts")
    return a, b


def buckets(start: str, width: str, count: str) -> tuple[int, int, int]:
    """
    Parse the start, width and count of an aggregate's buckets.

    :raise BadRequest: for a width of 0 or more than :data:`MAX_BUCKETS`.
    """
    s, w, c = number(start, "start"), number(width, "bucket width"), number(count, "bucket count")
    if w == 0:
        raise BadRequest("bucket width must be at least 1 ms")
    if c > MAX_BUCKETS:
        raise BadRequest(f"at most {MAX_BUCKETS} buckets")
    return s, w, c
