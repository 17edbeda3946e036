"""
Tests of :mod:`blip.common.throttle`.
"""

from twisted.internet.task import Clock

from blip.common.throttle import Throttle


def test_one_line_per_interval_saying_how_many_were_held_back() -> None:
    """
    The first occurrence is due at once; those within the interval are
    counted, and the first after it says how many there were.
    """
    clock = Clock()
    throttle = Throttle(clock, 1.0)
    assert throttle.due() == 0
    assert [throttle.due() for _ in range(3)] == [None, None, None]
    clock.advance(1.0)
    assert throttle.due() == 3
    assert throttle.due() is None
