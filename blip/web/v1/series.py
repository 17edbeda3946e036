"""
The series the modern API serves, computed from the store: power at a
resolution that fits the asked number of points, energy and cost per
calendar period of a meter's time zone, and the gaps in its readings.

Ranges are half-open: ``first <= stamp < last``, in unix ms.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Optional

from blip.db.node_state import IngestPeriods
from blip.db.repairs import Repair, Repairs
from blip.db.v1 import Rollup, V1Queries
from blip.ingest.downtime import Downtime, Stretch, repaired
from blip.meters import Meter
from blip.web.answers import RawSince, kept_for_ever
from blip.web.limits import ENERGY_ROWS, GAP_ROWS, RAW_GAP_SPAN, ROLLUP_GAP

MINUTE = 60_000
HOUR = 3_600_000
DAY = 24 * HOUR

#: The longest each energy period can be (a day across a daylight-saving
#: change has 25 hours).
LONGEST = {
    "hour": HOUR,
    "day": DAY + HOUR,
    "week": 7 * DAY + HOUR,
    "month": 31 * DAY + HOUR,
    "year": 366 * DAY + HOUR,
}
#: The shortest gap reported unless asked otherwise.
MIN_GAP = 2 * MINUTE
#: A gap is this many mean blip intervals long at least.
GAP_FACTOR = 3

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class Power:
    """
    A power series.

    :param resolution_ms: how long a row's interval is: 0 for raw points
        (each covers its own ``ms``), else the bucket width.
    :param points: ``[t, mean_w, min_w, max_w]`` per row, ``t`` the middle
        of the interval the row covers.
    """

    resolution_ms: int
    points: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EnergyRow:
    """
    The energy used in one calendar period.

    :param start: unix ms the period starts.
    :param end: unix ms the next period starts.
    :param kwh: energy used.
    :param cost: its price.
    """

    start: int
    end: int
    kwh: float
    cost: float


@dataclass(frozen=True, slots=True)
class Energy:
    """
    Energy per period.

    :param rows: the periods, oldest first.
    :param next: the ``from`` that asks for the periods after these, when
        there are more than one answer holds; else None.
    """

    rows: list[EnergyRow]
    next: Optional[int]

    @property
    def kwh(self) -> float:
        """The energy of every row."""
        return sum(row.kwh for row in self.rows)

    @property
    def cost(self) -> float:
        """The cost of every row."""
        return sum(row.cost for row in self.rows)


@dataclass(frozen=True, slots=True)
class Gaps:
    """
    The gaps of a range.

    :param gaps: oldest first.
    :param min_gap: the shortest silence counted as a gap, in ms.
    :param next: the ``from`` that asks for the gaps after these, when
        there are more than one answer holds; else None.
    :param repairs: the stretches of the range (up to ``next``) filled
        with a peer's points, oldest first.
    """

    gaps: list[Stretch]
    min_gap: int
    next: Optional[int]
    repairs: list[Repair] = field(default_factory=list)


def offset_ms(zone: str, instant: int) -> int:
    """
    :return: the UTC offset of ``zone`` at unix ms ``instant``, in ms.
    """
    from zoneinfo import ZoneInfo

    # Python's datetimes end at years 1 and 9999; offsets there are those
    # of the nearest instant they can name.
    seconds = min(max(instant // 1000, -62_135_510_400), 253_402_214_400)
    moment = _EPOCH + timedelta(seconds=seconds)
    offset = moment.astimezone(ZoneInfo(zone)).utcoffset()
    return (offset or timedelta(0)) // timedelta(milliseconds=1)


@lru_cache(maxsize=64)
def whole_hours(zone: str) -> bool:
    """
    :return: whether every UTC offset ``zone`` has had since 1970 (and
        keeps to 2040) is a whole number of hours, so that its local hours
        and days are made of whole UTC hours.
    """
    day = 0
    while day < 70 * 366:
        if offset_ms(zone, day * DAY) % HOUR:
            return False
        day += 1
    return True


def _rollup_watts(meter: Meter, width: int, rows: list[Rollup]) -> list[list[float]]:
    factor = 3.6e9 * meter.multiplier / meter.pulses_per_kwh
    return [
        [start + width // 2, factor * int(events) / int(sum_ms), factor / max_ms, factor / min_ms]
        for start, events, sum_ms, min_ms, max_ms in rows
    ]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Series:
    """
    Computes the modern API's series from the store.

    :param store: the database.
    :param raw_since: since when raw points are kept.
    """

    def __init__(self, store: V1Queries, raw_since: RawSince = kept_for_ever) -> None:
        self.store = store
        self.downtime = Downtime(IngestPeriods(store.pool))
        self.repairs = Repairs(store.pool)
        self.raw_since = raw_since

    async def power(self, meter: Meter, first: int, last: int, max_points: int) -> Power:
        """
        Power in W over ``[first, last)`` in at most ``max_points`` rows: the
        raw points when they are few enough (and all kept), else minute
        rollups, else hour rollups, else hour rollups summed into buckets of
        whole hours.
        """
        if last <= first:
            return Power(0)
        dropped = self.raw_since()
        kept = dropped is None or first >= dropped
        if kept and await self.store.events_in(meter.id, first, last) <= max_points:
            factor = 3.6e9 * meter.multiplier / meter.pulses_per_kwh
            points = []
            for stamp, ms in await self.store.points_page(meter.id, first, last, max_points):
                watts = factor / ms
                points.append([stamp - ms // 2, watts, watts, watts])
            return Power(0, points)
        for width in (MINUTE, HOUR):
            origin = first - first % width
            if _ceil_div(last - origin, width) <= max_points:
                rows = await self.store.rollups(meter.id, width == HOUR, origin, last)
                return Power(width, _rollup_watts(meter, width, rows))
        origin = first - first % HOUR
        width = HOUR * _ceil_div(last - origin, HOUR * max_points)
        rows = await self.store.wide_buckets(meter.id, origin, width, last)
        return Power(width, _rollup_watts(meter, width, rows))

    async def energy(self, meter: Meter, period: str, first: int, last: int) -> Energy:
        """
        Energy and cost per ``period`` of the meter's calendar, for every
        period that overlaps ``[first, last)``; only the blips inside the
        range count (to the minute), so the first and last periods may be
        partial and the total is the energy of the range.
        """
        if last <= first:
            return Energy([], None)
        zone = meter.timezone
        start = first
        if period == "hour":
            start = first - (first + offset_ms(zone, first)) % HOUR
        # Only as many periods as one answer holds are generated.
        end = min(last, start + (ENERGY_ROWS + 2) * LONGEST[period])
        rows = await self.store.energy(
            meter.id, period, zone, start, end, meter.week_prices(), whole_hours(zone),
            ENERGY_ROWS + 1, first,
        )
        following = None
        if len(rows) > ENERGY_ROWS:
            following = int(rows[ENERGY_ROWS][0])
        elif end < last and rows:
            following = int(rows[-1][1])
        per_blip = meter.kwh_per_blip
        return Energy(
            [
                EnergyRow(int(lo), int(hi), int(blips) * per_blip, float(priced) * per_blip)
                for lo, hi, blips, priced in rows[:ENERGY_ROWS]
            ],
            following,
        )

    async def gaps(
        self, meter: Meter, first: int, last: int, now: int, min_gap: Optional[int]
    ) -> Gaps:
        """
        The stretches of ``[first, last)`` (and not after ``now``) in which
        the meter did not blink for longer than ``min_gap`` ms (by default
        :data:`GAP_FACTOR` mean blip intervals of the range, and at least
        :data:`MIN_GAP`), each split into the parts when ingest was
        listening (``idle``) and when it was not (``logger_down``, or
        ``repaired`` where a peer's points fill the stretch), or
        ``unknown`` before the first recorded period of ingest (history
        from before blipserver, or imported); with the repairs of the
        range.

        Silences of two minutes or more are found from the minute rollups,
        at a cost that does not grow with the points in the range; shorter
        ones by reading every point of the range, :data:`RAW_GAP_SPAN` of it
        at most: an answer then ends at the last point read, and ``next``
        asks for the rest. Only the range from when raw points are kept is
        looked at.
        """
        dropped = self.raw_since()
        if dropped is not None:
            first = max(first, dropped)
        if last <= first:
            return Gaps([], min_gap if min_gap is not None else MIN_GAP, None)
        end = last
        if min_gap is not None and min_gap < ROLLUP_GAP:
            end = min(last, first + RAW_GAP_SPAN)
        context = await self.store.gap_context(meter.id, first, end)
        before, first_in, last_in, after, mean = context
        if min_gap is None:
            min_gap = max(MIN_GAP, int(GAP_FACTOR * mean) if mean else 0)
        previous = first if before is None else before
        silences: list[tuple[int, int]] = []
        if min_gap >= ROLLUP_GAP:
            # From the minute rollups; the silence before the first point
            # of the range is theirs only when it starts at a point in the
            # range's first minute or later.
            if first_in is not None and (before is None or before < first - first % MINUTE):
                if first_in - previous > min_gap:
                    silences.append((previous, first_in))
            found = await self.store.long_silences(meter.id, first, last, min_gap, GAP_ROWS + 1)
        else:
            found = await self.store.silences(
                meter.id, first, end, previous, min_gap, GAP_ROWS + 1
            )
        silences += [(int(a), int(b)) for a, b in found]
        following = None
        if len(silences) > GAP_ROWS:
            silences = silences[:GAP_ROWS]
            following = silences[-1][1]
        elif end < last and last_in is not None and last_in > first:
            # The silence after the last point read is the next answer's.
            following = last_in
        else:
            start = next(s for s in (last_in, previous) if s is not None)
            stop = min(last, now) if after is None else after
            if stop - start > min_gap:
                silences.append((start, stop))
            if end < last and after is not None and after < last:
                following = after
        spans = [(max(a, first), min(b, last)) for a, b in silences]
        spans = [(a, b) for a, b in spans if a < b]
        repairs = await self.repairs.overlapping(
            meter.id, first, last if following is None else following, GAP_ROWS
        )
        gaps = repaired(await self.downtime.split(spans, now), repairs)
        return Gaps(gaps, min_gap, following, repairs)
