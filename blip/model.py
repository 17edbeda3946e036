"""
The value objects every layer shares: a point, the limits of its fields,
and a point read from text (a CSV row, as ``blip import`` and the write API
take them).
"""

import csv
from dataclasses import dataclass
from typing import Iterable, Iterator, Union

#: The meter a single-meter Arduino's bare ``<ms>`` lines belong to, and the
#: meter the legacy routes without an id answer for.
DEFAULT_METER = 1

#: Largest value of a PostgreSQL INTEGER: the ceiling for meter ids and ms.
INT_MAX = 2**31 - 1
#: Bounds of a stamp (a PostgreSQL BIGINT).
STAMP_MIN, STAMP_MAX = -(2**63 - 1), 2**63 - 1
#: The optional header of CSV points.
CSV_HEADER = ["stamp", "ms"]


@dataclass(frozen=True, slots=True)
class Point:
    """
    One blink of a meter's LED.

    :param meter: the meter's id.
    :param stamp: unix time in milliseconds when the line arrived.
    :param ms: milliseconds since the meter's previous blink.
    """

    meter: int
    stamp: int
    ms: int


def parse_point(fields: list[str]) -> Union[tuple[int, int], str]:
    """
    :param fields: one CSV row, ``stamp,ms`` (unix ms, and ms since the
        previous blink).
    :return: the point ``(stamp, ms)``, or why the row is not one.
    """
    if len(fields) != 2:
        return f"expected 2 fields (stamp,ms), found {len(fields)}"
    stamp_text, ms_text = fields[0].strip(), fields[1].strip()
    if not (stamp_text.isascii() and stamp_text.isdigit()):
        return f"stamp {stamp_text[:40]!r} is not a whole number of ms"
    if not (ms_text.isascii() and ms_text.isdigit()):
        return f"ms {ms_text[:40]!r} is not a whole number"
    stamp, ms = int(stamp_text), int(ms_text)
    if stamp > STAMP_MAX:
        return f"stamp {stamp_text[:40]} is too large"
    if not 1 <= ms <= INT_MAX:
        return f"ms {ms_text[:40]} is not from 1 to {INT_MAX}"
    return stamp, ms


def csv_points(lines: Iterable[str]) -> Iterator[tuple[int, Union[tuple[int, int], str]]]:
    """
    Read CSV points, ``stamp,ms`` per row, skipping blank rows and a
    ``stamp,ms`` header.

    :return: for each other row, its line number and its point, or why it
        is not one (see :func:`parse_point`).
    """
    reader = csv.reader(lines)
    first = True
    for fields in reader:
        if not any(field.strip() for field in fields):
            continue
        if first and [field.strip().lower() for field in fields] == CSV_HEADER:
            first = False
            continue
        first = False
        yield reader.line_num, parse_point(fields)
