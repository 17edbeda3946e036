"""
Tests of the simulated meters: realistic blips through the real protocol.
"""

import random

from twisted.internet.task import Clock

from blip.arduino import MeterFactory, Stamps
from blip.counters import Counters
from blip.meters import Meter
from blip.model import Point
from blip.simulate import House, SimulatorService


def run(meters: list[Meter], seconds: int) -> tuple[list[Point], Counters]:
    clock = Clock()
    clock.advance(1_700_000_000)
    points: list[Point] = []
    counters = Counters()
    factory = MeterFactory(points.append, Stamps(), clock, counters)
    service = SimulatorService(meters, factory, clock)
    service.startService()
    for _ in range(seconds):
        clock.advance(1)
    service.stopService()
    return points, counters


def test_a_simulated_hour_of_one_meter() -> None:
    """
    An hour of the default meter: bare lines, no garbage, a first blip
    within seconds, and a mean power and peaks a household has.
    """
    points, counters = run([Meter(1)], 4 * 3600)
    assert counters.garbage == 0
    assert {p.meter for p in points} == {1}
    assert points[0].stamp - 1_700_000_000_000 <= 3000
    watts = [3_600_000 / p.ms for p in points]
    energy_kwh = len(points) / 1000
    assert 0.15 * 4 < energy_kwh < 2.5 * 4
    assert max(watts) > 1900, "the coffee maker or an appliance shows"
    assert min(watts) > 100, "the base load never stops"
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
    house = House(random.Random(3), 0.0)
    samples = [house.power(t) for t in range(0, 7200, 5)]
    high = [t for t, w in zip(range(0, 7200, 5), samples) if w > 1900]
    assert len(high) >= 8
    assert min(samples) > 100
