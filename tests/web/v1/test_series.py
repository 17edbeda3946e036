"""
Tests of the series behind the modern API, against a real database: the
resolution of power series, energy per calendar period across
daylight-saving changes and in zones offset by half hours, and gaps.
"""

import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import pytest_twisted

from blip.db.readings import Readings
from blip.db.repairs import Repair, Repairs
from blip.db.v1 import V1Queries
from blip.meters import Meter, TariffRule
from blip.model import Point
from blip.web.limits import RAW_GAP_SPAN
from blip.web.v1.series import HOUR, MINUTE, Series, whole_hours

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
METER = Meter(1, pulses_per_kwh=600.0, multiplier=4.0, price_per_kwh=2.0)
#: W of a blip interval of 1 ms for METER.
FACTOR = 3.6e9 * 4 / 600


def ms(zone: str, *fields: int) -> int:
    """:return: unix ms of a local time in ``zone``."""
    return int(datetime(*fields, tzinfo=ZoneInfo(zone)).timestamp() * 1000)


async def every(store: Readings, meter: int, first: int, last: int, step: int) -> list[Point]:
    """Store a point every ``step`` ms from ``first`` to before ``last``."""
    points = [Point(meter, s, step) for s in range(first, last, step)]
    for i in range(0, len(points), 5000):
        await store.insert(points[i:i + 5000])
    return points


@pytest_twisted.ensureDeferred
async def test_power_uses_raw_points_when_they_fit(store: Readings) -> None:
    """
    Few enough points come back raw: t in the middle of each point's
    interval, mean = min = max = its power.
    """
    await store.insert([Point(1, T0 + 1000, 1000), Point(1, T0 + 3000, 2000), Point(1, T0 + 9000, 1)])
    power = await Series(V1Queries(store.pool)).power(METER, T0, T0 + 9000, 10)
    assert power.resolution_ms == 0
    assert power.points == [
        [T0 + 500, FACTOR / 1000, FACTOR / 1000, FACTOR / 1000],
        [T0 + 2000, FACTOR / 2000, FACTOR / 2000, FACTOR / 2000],
    ]


@pytest_twisted.ensureDeferred
async def test_power_resolution_steps_up_with_the_range(store: Readings) -> None:
    """
    As the range grows past max_points, rows come from minute rollups,
    then hour rollups, then buckets of whole hours summed from the hour
    rollups; never more than max_points rows; min from the longest
    interval, max from the shortest.
    """
    await every(store, 1, T0, T0 + 48 * HOUR, 20_000)
    await store.insert([Point(1, T0 + 5, 5)])
    series = Series(V1Queries(store.pool))

    minutes = await series.power(METER, T0, T0 + 100 * MINUTE, 100)
    assert minutes.resolution_ms == MINUTE
    assert len(minutes.points) == 100
    t, mean, low, high = minutes.points[0]
    assert t == T0 + MINUTE // 2
    # 4 blips in the first minute: 5 ms and three of 20 s.
    assert mean == pytest.approx(FACTOR * 4 / 60_005)
    assert (low, high) == (FACTOR / 20_000, FACTOR / 5)

    hours = await series.power(METER, T0 + 1, T0 + 48 * HOUR, 48)
    assert hours.resolution_ms == HOUR
    assert [p[0] for p in hours.points] == [T0 + h * HOUR + HOUR // 2 for h in range(48)]

    wide = await series.power(METER, T0, T0 + 48 * HOUR, 10)
    assert wide.resolution_ms == 5 * HOUR
    assert len(wide.points) == 10
    assert wide.points[1] == [T0 + 7 * HOUR + HOUR // 2, FACTOR / 20_000, FACTOR / 20_000, FACTOR / 20_000]

    years = await series.power(METER, T0 - 400 * 24 * HOUR, T0 + 400 * 24 * HOUR, 7)
    assert len(years.points) <= 7 and years.resolution_ms % HOUR == 0


@pytest_twisted.ensureDeferred
async def test_empty_and_reversed_ranges(store: Readings) -> None:
    """
    A range that ends where (or before) it starts holds nothing.
    """
    series = Series(V1Queries(store.pool))
    assert (await series.power(METER, T0, T0, 10)).points == []
    assert (await series.energy(METER, "day", T0, T0 - 1)).rows == []
    assert (await series.gaps(METER, T0, T0, T0, None)).gaps == []


@pytest_twisted.ensureDeferred
async def test_energy_days_across_daylight_saving(store: Readings) -> None:
    """
    In Europe/Copenhagen the day clocks go forward has 23 hours and the
    day they go back 25; blips count towards the local day they fall in;
    empty days are zero rows; cost follows the tariff by local hour.
    """
    zone = "Europe/Copenhagen"
    meter = Meter(
        1, pulses_per_kwh=1000.0, price_per_kwh=2.0, timezone=zone,
        tariff=(TariffRule(1.0, hours="22-06"),),
    )
    spring = ms(zone, 2024, 3, 31)
    autumn = ms(zone, 2024, 10, 27)
    await store.insert([
        Point(1, spring - 1, 10),           # 23:59:59.999 the day before, 1.0
        Point(1, spring, 10),               # 00:00 local, night price 1.0
        Point(1, spring + 23 * HOUR - 1, 10),  # 23:59:59.999 local, 1.0
        Point(1, autumn + 24 * HOUR, 10),   # 23:00 local on the 25-hour day, 1.0
        Point(1, autumn + 12 * HOUR, 10),   # 11:00 local (CET), 2.0
    ])
    series = Series(V1Queries(store.pool))
    energy = await series.energy(meter, "day", spring - 1, spring + 23 * HOUR + 1)
    assert [(r.start, r.end) for r in energy.rows] == [
        (spring - 24 * HOUR, spring),
        (spring, spring + 23 * HOUR),
        (spring + 23 * HOUR, spring + 47 * HOUR),
    ]
    assert [r.kwh for r in energy.rows] == [0.001, 0.002, 0.0]
    assert [r.cost for r in energy.rows] == pytest.approx([0.001, 0.002, 0.0])
    assert (energy.kwh, energy.cost) == (pytest.approx(0.003), pytest.approx(0.003))
    assert energy.next is None

    autumn_day = await series.energy(meter, "day", autumn, autumn + 25 * HOUR)
    (row,) = autumn_day.rows
    assert (row.start, row.end - row.start) == (autumn, 25 * HOUR)
    assert (row.kwh, row.cost) == (pytest.approx(0.002), pytest.approx(0.003))


@pytest_twisted.ensureDeferred
async def test_energy_weeks_months_years_and_hours(store: Readings) -> None:
    """
    Weeks start on Monday, months and years on their first day, local
    time; hours are real hours, 23 of them on the spring day.
    """
    zone = "Europe/Copenhagen"
    meter = Meter(1, timezone=zone)
    series = Series(V1Queries(store.pool))
    weeks = await series.energy(meter, "week", ms(zone, 2024, 3, 28), ms(zone, 2024, 4, 2))
    assert [r.start for r in weeks.rows] == [ms(zone, 2024, 3, 25), ms(zone, 2024, 4, 1)]
    assert weeks.rows[0].end - weeks.rows[0].start == 7 * 24 * HOUR - HOUR
    months = await series.energy(meter, "month", ms(zone, 2024, 1, 15), ms(zone, 2024, 3, 1))
    assert [r.start for r in months.rows] == [ms(zone, 2024, 1, 1), ms(zone, 2024, 2, 1)]
    years = await series.energy(meter, "year", ms(zone, 2023, 6, 1), ms(zone, 2024, 6, 1))
    assert [(r.start, r.end) for r in years.rows] == [
        (ms(zone, 2023, 1, 1), ms(zone, 2024, 1, 1)),
        (ms(zone, 2024, 1, 1), ms(zone, 2025, 1, 1)),
    ]
    hours = await series.energy(meter, "hour", ms(zone, 2024, 3, 31), ms(zone, 2024, 4, 1))
    assert len(hours.rows) == 23
    assert all(r.end - r.start == HOUR for r in hours.rows)


@pytest_twisted.ensureDeferred
async def test_energy_in_a_half_hour_zone(store: Readings) -> None:
    """
    Asia/Kolkata is 5:30 ahead of UTC: its days and hours start on half
    hours, so energy is summed from the minute rollups.
    """
    zone = "Asia/Kolkata"
    assert not whole_hours(zone) and whole_hours("Europe/Copenhagen")
    meter = Meter(1, timezone=zone, price_per_kwh=1.0, tariff=(TariffRule(5.0, hours="00-01"),))
    midnight = ms(zone, 2024, 5, 2)
    await store.insert([Point(1, midnight - 1, 10), Point(1, midnight, 10), Point(1, midnight + HOUR, 10)])
    series = Series(V1Queries(store.pool))
    days = await series.energy(meter, "day", midnight - 1, midnight + 2 * HOUR)
    assert [(r.start, r.kwh, r.cost) for r in days.rows] == [
        (midnight - 24 * HOUR, 0.001, pytest.approx(0.001)),
        (midnight, 0.002, pytest.approx(0.006)),
    ]
    hours = await series.energy(meter, "hour", midnight - 1, midnight + 2 * HOUR)
    assert [r.start for r in hours.rows] == [midnight - HOUR, midnight, midnight + HOUR]
    assert [r.kwh for r in hours.rows] == [0.001, 0.001, 0.001]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("zone", ["Europe/Copenhagen", "Asia/Kolkata"])
async def test_energy_counts_only_the_range_to_the_minute(store: Readings, zone: str) -> None:
    """
    A rolling range that starts and ends inside hours (last 24 hours, or
    20 minutes within one hour) counts exactly the blips of its minutes:
    partial first and last periods, a total equal to a count of the
    points, in a whole-hour zone (hourly rollups inside, minutely at the
    ends) and a half-hour one (minutely throughout).
    """
    meter = Meter(1, timezone=zone, pulses_per_kwh=1000.0, price_per_kwh=1.0)
    start = T0 + 5 * MINUTE
    points = [Point(1, start + i * 7 * MINUTE + i % 5, 1000) for i in range(600)]
    await store.insert(points)
    series = Series(V1Queries(store.pool))

    def count(first: int, last: int) -> int:
        last += -last % MINUTE
        return sum(first - first % MINUTE <= p.stamp < last for p in points)

    for first, last in [
        (T0 + 10 * HOUR + 17 * MINUTE + 30_000, T0 + 34 * HOUR + 17 * MINUTE + 30_000),
        (T0 + 3 * HOUR + 10 * MINUTE, T0 + 3 * HOUR + 30 * MINUTE),
        (T0 + 3 * HOUR + 50 * MINUTE, T0 + 4 * HOUR + 10 * MINUTE),
    ]:
        expected = count(first, last)
        for period in ("hour", "day", "year"):
            energy = await series.energy(meter, period, first, last)
            assert energy.kwh == pytest.approx(expected / 1000), (first, last, period)
            assert energy.cost == pytest.approx(expected / 1000)
        hours = await series.energy(meter, "hour", first, last)
        for row in hours.rows:
            inside = count(max(row.start, first), min(row.end, last))
            assert row.kwh == pytest.approx(inside / 1000)


@pytest_twisted.ensureDeferred
async def test_energy_pages(store: Readings) -> None:
    """
    More periods than one answer holds: the first 10000, and the ``from``
    of the rest.
    """
    meter = Meter(1)
    energy = await Series(V1Queries(store.pool)).energy(meter, "hour", T0 + 1, T0 + 20_000 * HOUR)
    assert len(energy.rows) == 10_000
    assert energy.rows[0].start == T0
    assert energy.next == T0 + 10_000 * HOUR
    huge = await Series(V1Queries(store.pool)).energy(meter, "hour", -62_135_683_200_000, 253_402_387_200_000)
    assert len(huge.rows) == 10_000 and huge.next == huge.rows[-1].end


@pytest_twisted.ensureDeferred
async def test_gaps_are_classified_by_ingest_periods(store: Readings, database) -> None:
    """
    Silences longer than min_gap are gaps, split into the parts when ingest
    was listening (idle) and when it was not (logger_down); the range's
    edges count, and the future is no gap.
    """
    await store.insert([Point(1, T0 + s * MINUTE, 1000) for s in (0, 1, 2, 30, 31, 90)])
    database.sql(
        "INSERT INTO ingest_periods (node, started, alive_at, ended, end_reason) VALUES"
        " ('a', %s, %s, %s, 'crash'), ('b', %s, %s, NULL, NULL)",
        (T0 - HOUR, T0 + 10 * MINUTE, T0 + 10 * MINUTE, T0 + 20 * MINUTE, T0 + 200 * MINUTE),
    )
    series = Series(V1Queries(store.pool))
    gaps = await series.gaps(METER, T0, T0 + 100 * MINUTE, T0 + 95 * MINUTE, 5 * MINUTE)
    assert [(g.start - T0, g.end - T0, g.kind) for g in gaps.gaps] == [
        (2 * MINUTE, 10 * MINUTE, "idle"),
        (10 * MINUTE, 20 * MINUTE, "logger_down"),
        (20 * MINUTE, 30 * MINUTE, "idle"),
        (31 * MINUTE, 90 * MINUTE, "idle"),
    ]
    assert gaps.next is None
    # Up to a "now" beyond the last blip, the silence since is a gap too;
    # so is the start of a range before the first blip.
    later = await series.gaps(METER, T0 - 10 * MINUTE, T0 + 300 * MINUTE, T0 + 300 * MINUTE, 5 * MINUTE)
    assert (later.gaps[0].start, later.gaps[0].end) == (T0 - 10 * MINUTE, T0)
    assert (later.gaps[-1].start - T0, later.gaps[-1].end - T0, later.gaps[-1].kind) == (
        200 * MINUTE, 300 * MINUTE, "logger_down",
    )
    # By default a gap is three mean intervals long, a minute at least.
    default = await series.gaps(METER, T0, T0 + 31 * MINUTE, T0 + 31 * MINUTE, None)
    assert default.min_gap == 2 * MINUTE
    assert [(g.start - T0, g.end - T0) for g in default.gaps] == [
        (2 * MINUTE, 10 * MINUTE), (10 * MINUTE, 20 * MINUTE), (20 * MINUTE, 30 * MINUTE),
    ]
    await store.insert([Point(2, T0 + s * 60 * MINUTE, 30 * MINUTE) for s in range(5)])
    sparse = await series.gaps(Meter(2), T0, T0 + 5 * HOUR, T0 + 5 * HOUR, None)
    assert sparse.min_gap == 90 * MINUTE and sparse.gaps == []


@pytest_twisted.ensureDeferred
async def test_gaps_before_the_first_record_of_ingest_are_unknown(store: Readings, database) -> None:
    """
    History from before blipserver recorded ingest (an upgraded or
    imported database) has no record of whether a logger ran: its gaps are
    unknown, not logger_down, up to the first recorded period; without
    any record, every gap is unknown.
    """
    await store.insert([Point(1, T0 + s * MINUTE, 1000) for s in (0, 10, 20, 40)])
    series = Series(V1Queries(store.pool))
    gaps = await series.gaps(METER, T0, T0 + 40 * MINUTE, T0 + 40 * MINUTE, 5 * MINUTE)
    assert {g.kind for g in gaps.gaps} == {"unknown"}
    database.sql(
        "INSERT INTO ingest_periods (node, started, alive_at, ended, end_reason) VALUES"
        " ('a', %s, %s, %s, 'stop')",
        (T0 + 15 * MINUTE, T0 + 25 * MINUTE, T0 + 25 * MINUTE),
    )
    gaps = await series.gaps(METER, T0, T0 + 40 * MINUTE, T0 + 40 * MINUTE, 5 * MINUTE)
    assert [(g.start - T0, g.end - T0, g.kind) for g in gaps.gaps] == [
        (0, 10 * MINUTE, "unknown"),
        (10 * MINUTE, 15 * MINUTE, "unknown"),
        (15 * MINUTE, 20 * MINUTE, "idle"),
        (20 * MINUTE, 25 * MINUTE, "idle"),
        (25 * MINUTE, 40 * MINUTE, "logger_down"),
    ]
    later = await series.gaps(METER, T0 + 20 * MINUTE, T0 + 40 * MINUTE, T0 + 40 * MINUTE, 5 * MINUTE)
    assert [(g.start - T0, g.end - T0, g.kind) for g in later.gaps] == [
        (20 * MINUTE, 25 * MINUTE, "idle"), (25 * MINUTE, 40 * MINUTE, "logger_down"),
    ]


@pytest_twisted.ensureDeferred
async def test_a_running_node_listens_until_now(store: Readings, database) -> None:
    """
    A period still open whose node refreshed it lately (it runs) lasts
    until now: the silence between its start and the first blip is idle;
    one not refreshed for long (its node was killed) ends at its last
    refresh. A period that has only just begun (no longer than an instant)
    gives no empty gap.
    """
    await store.insert([Point(1, T0, 1000), Point(1, T0 + 30 * MINUTE, 1000)])
    now = T0 + 30 * MINUTE
    series = Series(V1Queries(store.pool))
    database.sql(
        "INSERT INTO ingest_periods VALUES ('a', %s, %s, NULL, NULL), ('b', %s, %s, NULL, NULL)",
        (T0 + 10 * MINUTE, now - 5000, T0 + 5 * MINUTE, T0 + 5 * MINUTE),
    )
    gaps = await series.gaps(METER, T0, now, now, 5 * MINUTE)
    assert [(g.start - T0, g.end - T0, g.kind) for g in gaps.gaps] == [
        (0, 5 * MINUTE, "unknown"), (5 * MINUTE, 10 * MINUTE, "logger_down"),
        (10 * MINUTE, 30 * MINUTE, "idle"),
    ]
    database.sql("UPDATE ingest_periods SET alive_at = %s WHERE node = 'a'", (T0 + 20 * MINUTE,))
    gaps = await series.gaps(METER, T0, now, now, 5 * MINUTE)
    assert [(g.start - T0, g.end - T0, g.kind) for g in gaps.gaps] == [
        (0, 5 * MINUTE, "unknown"), (5 * MINUTE, 10 * MINUTE, "logger_down"),
        (10 * MINUTE, 20 * MINUTE, "idle"), (20 * MINUTE, 30 * MINUTE, "logger_down"),
    ]


@pytest_twisted.ensureDeferred
async def test_a_repaired_stretch_is_no_longer_logger_down(store: Readings, database) -> None:
    """
    Where a peer's points repaired a stretch when the logger was down, what
    silence is left in it is ``repaired`` (naming the peer), not
    ``logger_down``; the rest of the outage stays logger_down; the repairs
    that overlap the range are listed, those outside it are not.
    """
    await store.insert([Point(1, T0 + s * MINUTE, 1000) for s in (0, 60)])
    database.sql(
        "INSERT INTO ingest_periods VALUES ('a', %s, %s, %s, 'stop'), ('a', %s, %s, NULL, NULL)",
        (T0 - HOUR, T0, T0, T0 + 60 * MINUTE, T0 + 90 * MINUTE),
    )
    repairs = Repairs(store.pool)
    await repairs.record(1, Repair(T0 + 10 * MINUTE, T0 + 30 * MINUTE, "https://peer.example", 0, T0 + HOUR))
    await repairs.record(1, Repair(T0 + 2 * HOUR, T0 + 3 * HOUR, "https://peer.example", 5, T0 + HOUR))
    # Overlapping a repaired stretch: not recorded.
    assert not await repairs.record(1, Repair(T0 + 20 * MINUTE, T0 + 40 * MINUTE, "https://b.example", 1, 0))
    gaps = await Series(V1Queries(store.pool)).gaps(METER, T0, T0 + 60 * MINUTE, T0 + 90 * MINUTE, 5 * MINUTE)
    assert [(g.start - T0, g.end - T0, g.kind, g.peer) for g in gaps.gaps] == [
        (0, 10 * MINUTE, "logger_down", None),
        (10 * MINUTE, 30 * MINUTE, "repaired", "https://peer.example"),
        (30 * MINUTE, 60 * MINUTE, "logger_down", None),
    ]
    assert gaps.repairs == [Repair(T0 + 10 * MINUTE, T0 + 30 * MINUTE, "https://peer.example", 0, T0 + HOUR)]


def expected_gaps(stamps: list[int], first: int, last: int, now: int, longer: int) -> list[tuple[int, int]]:
    """
    The gaps of ``[first, last)`` in sorted ``stamps``, worked out one pair
    of neighbours at a time.
    """
    before = [s for s in stamps if s < first]
    inside = [s for s in stamps if first <= s < last]
    after = [s for s in stamps if s >= last]
    previous = before[-1] if before else first
    silences = []
    for stamp in inside:
        if stamp - previous > longer:
            silences.append((previous, stamp))
        previous = stamp
    end = after[0] if after else min(last, now)
    if end - previous > longer:
        silences.append((previous, end))
    spans = [(max(a, first), min(b, last)) for a, b in silences]
    return [(a, b) for a, b in spans if a < b]


@pytest_twisted.ensureDeferred
async def test_gaps_under_two_minutes_come_a_week_at_a_time(store: Readings) -> None:
    """
    Gaps shorter than two minutes take reading every point, so an answer
    reads a week of the range at most and ends at the last point it read;
    ``next`` asks for the rest. A silence across the end of a week, and one
    longer than a week, each come whole in one answer, and the answers
    together hold every gap.
    """
    day = 24 * HOUR
    holes = [(7 * day - 30 * MINUTE, 7 * day + 30 * MINUTE), (8 * day, 17 * day)]
    stamps = [
        T0 + t for t in range(0, 20 * day, MINUTE)
        if not any(a < t < b for a, b in holes)
    ]
    await store.insert([Point(7, s, MINUTE) for s in stamps])
    series = Series(V1Queries(store.pool))
    first, last, now = T0, T0 + 20 * day, stamps[-1] + 1000
    found, starts, start = [], [], first
    while start is not None:
        starts.append(start)
        gaps = await series.gaps(Meter(7), start, last, now, MINUTE)
        found += [(g.start, g.end) for g in gaps.gaps]
        start = gaps.next
    assert found == [(T0 + a, T0 + b) for a, b in holes] == expected_gaps(stamps, first, last, now, MINUTE)
    assert starts == [T0, T0 + 7 * day - 30 * MINUTE, T0 + 8 * day, T0 + 17 * day]


@pytest_twisted.ensureDeferred
async def test_gaps_match_a_pair_by_pair_count(store: Readings) -> None:
    """
    For irregular points with silences of every length, the gaps found
    from the minute rollups (two minutes and more) and from the points
    (shorter, a week of the range per answer at most, the rest following
    ``next``) equal those counted pair by pair, for ranges whose edges
    fall anywhere: no gap is split where an answer ends.
    """
    rng = random.Random(6)
    stamps, stamp = [], T0
    for _ in range(3000):
        stamp += rng.choice([rng.randint(1, 5000), rng.randint(50_000, 200_000), rng.randint(1, 900_000)])
        stamps.append(stamp)
    await store.insert([Point(7, s, 1000) for s in stamps])
    series = Series(V1Queries(store.pool))
    meter = Meter(7)
    for _ in range(40):
        first = rng.randint(T0 - 10 * MINUTE, stamps[-1])
        last = first + rng.choice([MINUTE, HOUR, 24 * HOUR, 400 * 24 * HOUR])
        now = rng.randint(first, last + HOUR)
        longer = rng.choice([1000, 59_999, 60_000, 119_999, 120_000, 120_001, 300_000, 3 * HOUR])
        found, start, answers = [], first, 0
        while start is not None:
            gaps = await series.gaps(meter, start, last, now, longer)
            found += [(g.start, g.end) for g in gaps.gaps]
            start, answers = gaps.next, answers + 1
        assert found == expected_gaps(stamps, first, last, now, longer), (first, last, now, longer)
        assert answers == 1 or (longer < 2 * MINUTE and last - first > RAW_GAP_SPAN)
