"""
Tests of the queries behind ``/api/v1`` against a real PostgreSQL: each
answers its rows as typed values (the series computed from them are tested
in tests/web/v1/test_series.py).
"""

import json

import pytest
import pytest_twisted

from blip.db.node_state import IngestPeriods, IngestSpan
from blip.db.queries import Reading
from blip.db.v1 import (
    GapContext,
    PeriodBlips,
    PointsText,
    Rollup,
    Silence,
    V1Queries,
)
from blip.model import Point

MINUTE = 60_000
HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR


@pytest.fixture
def v1(store) -> V1Queries:
    """The queries of ``/api/v1``, on the pool of ``store``."""
    return V1Queries(store.pool)


@pytest_twisted.ensureDeferred
async def test_points_and_rollups(store, v1) -> None:
    """
    Points come a keyset page at a time, as readings or as the text of a
    page; the rollups as buckets, also summed into wider ones.
    """
    await store.insert([Point(1, T0 + i * 1000, 1000 + i) for i in range(4)] + [Point(1, T0 + HOUR, 500)])
    assert await v1.events_in(1, T0, T0 + 1) == 4
    assert await v1.points_page(1, T0 + 1000, T0 + HOUR, 2) == [
        Reading(T0 + 1000, 1001), Reading(T0 + 2000, 1002)
    ]
    assert await v1.points_text(1, T0, T0 + 2500, 10, True) == PointsText(
        f"{T0},1000\r\n{T0 + 1000},1001\r\n{T0 + 2000},1002\r\n", 3, T0 + 2000
    )
    page = await v1.points_text(1, T0, T0 + 2500, 2, False)
    assert json.loads(f"[{page.text}]") == [[T0, 1000], [T0 + 1000, 1001]]
    assert (page.size, page.last) == (2, T0 + 1000)
    assert await v1.points_text(1, 0, T0, 2, False) == PointsText("", 0, None)
    assert await v1.rollups(1, False, T0, T0 + HOUR) == [Rollup(T0, 4, 4006, 1000, 1003)]
    assert await v1.rollups(1, True, T0, T0 + 2 * HOUR) == [
        Rollup(T0, 4, 4006, 1000, 1003), Rollup(T0 + HOUR, 1, 500, 500, 500)
    ]
    assert await v1.wide_buckets(1, T0, 2 * HOUR, T0 + 2 * HOUR) == [Rollup(T0, 5, 4506, 500, 1003)]


@pytest_twisted.ensureDeferred
async def test_blips_per_calendar_period(store, v1) -> None:
    """
    Energy rows are the blips of each period, empty ones included, and
    the blips weighted by the price of their hour.
    """
    await store.insert([Point(1, T0 + i * MINUTE, 1000) for i in range(3)])
    prices = [2.0] * (7 * 24)
    rows = await v1.energy(1, "hour", "UTC", T0, T0 + 2 * HOUR, prices, True, 10, T0)
    assert rows == [PeriodBlips(T0, T0 + HOUR, 3, 6.0), PeriodBlips(T0 + HOUR, T0 + 2 * HOUR, 0, 0.0)]


@pytest_twisted.ensureDeferred
async def test_what_gaps_are_made_of(store, v1) -> None:
    """
    The context of a range, the silences in it (read from the points or
    from the minute rollups) and the periods when ingest ran.
    """
    await store.insert([Point(1, T0 + s, 1000) for s in (0, 1000, 10 * MINUTE, 10 * MINUTE + 1000)])
    context = await v1.gap_context(1, T0 + 500, T0 + 10 * MINUTE + 500)
    assert context == GapContext(T0, T0 + 1000, T0 + 10 * MINUTE, T0 + 10 * MINUTE + 1000, 1000.0)
    assert await v1.silences(1, T0, T0 + HOUR, T0 - 5000, 2000, 10) == [
        Silence(T0 - 5000, T0), Silence(T0 + 1000, T0 + 10 * MINUTE)
    ]
    assert await v1.long_silences(1, T0, T0 + HOUR, 2 * MINUTE, 10) == [Silence(T0 + 1000, T0 + 10 * MINUTE)]
    periods = IngestPeriods(store.pool)
    assert await periods.first_ingest() is None
    await periods.save_ingest_period("n1", T0, T0 + MINUTE, T0 + 2 * MINUTE, "stop")
    await periods.save_ingest_period("n2", T0 + HOUR, T0 + HOUR + 1000, None, None)
    assert await periods.ingest_periods(T0, T0 + 2 * HOUR, T0 + HOUR + 2000, 5000) == [
        IngestSpan(T0, T0 + 2 * MINUTE), IngestSpan(T0 + HOUR, T0 + HOUR + 2000)
    ]
    assert await periods.first_ingest() == T0
