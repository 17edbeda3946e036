"""
Tests of the counters: their names, the gauges, and the log once a minute.
"""

from dataclasses import fields

import pytest
from twisted.internet.task import Clock

from blip.counters import GAUGES, LOG_INTERVAL, Counters, CountersLog
from blip.live.hub import Hub, TooManyWaiters


def test_gauges_are_counters_and_as_dict_names_every_field() -> None:
    """
    Every gauge is a field, and as_dict has every field by name.
    """
    names = {f.name for f in fields(Counters)}
    assert GAUGES <= names
    assert set(Counters().as_dict()) == names
    assert {"blips", "stored", "spooled", "garbage", "db_reconnects", "serial_opens",
            "serial_lost", "waiters"} <= names


def test_counters_are_logged_every_minute_and_on_stop(log_events) -> None:
    """
    The counters are logged at info level once per interval, with every
    field as a named value, and once more when the daemon stops.
    """
    clock = Clock()
    counters = Counters(blips=3)
    service = CountersLog(counters, clock)
    service.startService()
    assert not [e for e in log_events if "blips" in e]
    clock.advance(LOG_INTERVAL)
    counters.blips = 5
    clock.advance(LOG_INTERVAL)
    service.stopService()
    logged = [e for e in log_events if "blips" in e]
    assert [e["blips"] for e in logged] == [3, 5, 5]
    assert all(e["log_level"].name == "info" for e in logged)
    assert all(set(Counters().as_dict()) <= set(e) for e in logged)


def test_hub_keeps_the_waiters_gauge_and_counts_refusals() -> None:
    """
    The hub's parked long-polls are the waiters gauge; refusals past the
    cap are counted.
    """
    counters = Counters()
    hub = Hub(max_waiters=2, counters=counters)
    first = hub.wait(1)
    second = hub.wait(1)
    second.addErrback(lambda f: None)
    assert counters.waiters == 2
    with pytest.raises(TooManyWaiters):
        hub.wait(1)
    assert counters.waiters_refused == 1
    first.cancel()
    assert counters.waiters == 1 == hub.waiting
    hub.close()
    assert counters.waiters == 0
