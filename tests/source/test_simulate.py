"""
Tests of the simulated meters: realistic blips through the real protocol,
and the history written for the demo.
"""

import random
import time

import pytest_twisted
from twisted.internet.task import Clock

from blip.counters import Counters
from blip.ingest.stamps import Stamps
from blip.meters import Meter
from blip.model import Point
from blip.source.arduino import MeterFactory
from blip.source.simulate import House, SimulatedHistory, SimulatorService, history
from tests.conftest import wait_until
from tests.live.test_notify import announcements  # noqa: F401 (a fixture)

#: A morning in local time, when the household is up.
NOON = time.mktime((2026, 6, 1, 9, 0, 0, 0, 0, -1))


def run(meters: list[Meter], seconds: int) -> tuple[list[Point], Counters]:
    clock = Clock()
    clock.advance(NOON)
    points: list[Point] = []
    counters = Counters()
    factory = MeterFactory(points.append, Stamps(), clock, counters)
    service = SimulatorService(meters, factory, clock)
    service.startService()
    for _ in range(seconds):
        clock.advance(1)
    service.stopService()
    return points, counters


def test_simulated_hours_of_one_meter() -> None:
    """
    Four morning hours of the default meter: bare lines, no garbage, a first blip
    within seconds, and a mean power and peaks a household has.
    """
    points, counters = run([Meter(1)], 4 * 3600)
    assert counters.garbage == 0
    assert {p.meter for p in points} == {1}
    assert points[0].stamp - NOON * 1000 <= 3000
    watts = [3_600_000 / p.ms for p in points]
    energy_kwh = len(points) / 1000
    assert 0.15 * 4 < energy_kwh < 2.5 * 4
    assert max(watts) > 1900, "the coffee maker or an appliance shows"
    assert min(watts) > 90, "the base load never stops"
    for a, b in zip(points, points[1:]):
        assert b.stamp > a.stamp
        assert abs((b.stamp - a.stamp) - b.ms) <= 1000


def test_several_meters_write_their_ids() -> None:
    """
    With several meters each writes ``<id> <ms>`` lines, at its own
    pulses per kWh.
    """
    points, counters = run([Meter(1), Meter(2, pulses_per_kwh=10000)], 1800)
    per_meter = {m: len([p for p in points if p.meter == m]) for m in (1, 2)}
    assert counters.garbage == 0
    # Each house uses between 0.05 and 1.5 kWh in half an hour.
    assert 50 < per_meter[1] < 1500
    assert 500 < per_meter[2] < 15000


def test_coffee_maker_and_fridge_cycle() -> None:
    """
    Over two hours the coffee maker runs every ~14 minutes at ~2 kW and the
    fridge every ~40 minutes.
    """
    noon = time.mktime((2026, 6, 1, 11, 0, 0, 0, 0, -1))
    house = House(random.Random(3), noon)
    times = [noon + t for t in range(0, 7200, 5)]
    samples = [house.power(t) for t in times]
    high = [t for t, w in zip(times, samples) if w > 1900]
    assert len(high) >= 8
    assert min(samples) > 90


def test_history_is_a_plausible_year() -> None:
    """
    The simulated history of a meter is in order, a blip's interval is the
    time since the one before, and a year uses what a household uses.
    """
    start = 1_700_000_000.0
    points = [p for chunk in history(Meter(2, pulses_per_kwh=100), start, start + 365 * 86400,
                                     random.Random(5)) for p in chunk]
    assert {p.meter for p in points} == {2}
    assert all(b.stamp > a.stamp for a, b in zip(points, points[1:]))
    assert all(abs((b.stamp - a.stamp) - b.ms) <= 1 for a, b in zip(points, points[1:]))
    assert 2000 < len(points) / 100 < 6000, "kWh in a year"


@pytest_twisted.ensureDeferred
async def test_history_fills_an_empty_database_once(store, database, announcements) -> None:
    """
    A simulated meter without readings from before the start gets its
    history written, rollups included, and not announced as live points;
    one that has them is left alone.
    """
    from twisted.internet.defer import succeed

    clock = Clock()
    clock.advance(NOON)
    await store.insert([Point(2, int(NOON * 1000) - 5000, 1000)])
    service = SimulatedHistory(
        [Meter(1), Meter(2)], store, lambda: succeed(None), clock, days=2
    )
    service.startService()
    await service.done
    service.stopService()
    counts = dict(database.sql("SELECT id, count(*) FROM readings GROUP BY id"))
    assert counts[2] == 1
    assert 2 * 2000 < counts[1] < 2 * 40000
    assert database.sql("SELECT max(stamp) FROM readings WHERE id = 1")[0][0] < NOON * 1000
    assert database.sql("SELECT sum(events) FROM readings_hourly WHERE id = 1")[0][0] == counts[1]
    await store.insert([Point(3, int(NOON * 1000), 1000)])
    await wait_until(lambda: any(p.meter == 3 for p in announcements.points()))
    assert announcements.points() == [Point(2, int(NOON * 1000) - 5000, 1000), Point(3, int(NOON * 1000), 1000)]
