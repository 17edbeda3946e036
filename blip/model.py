"""
The value objects every layer shares: a point, and the limits of its fields.
"""

from dataclasses import dataclass

#: The meter a single-meter Arduino's bare ``<ms>`` lines belong to, and the
#: meter the legacy routes without an id answer for.
DEFAULT_METER = 1

#: Largest value of a PostgreSQL INTEGER: the ceiling for meter ids and ms.
INT_MAX = 2**31 - 1
#: Bounds of a stamp (a PostgreSQL BIGINT).
STAMP_MIN, STAMP_MAX = -(2**63 - 1), 2**63 - 1


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
