"""
Tests of the meters table kept in step with the registry of meters, against
a real database.
"""

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from blip.db.meter_table import MeterTable
from blip.db.node_state import MeterRows
from blip.db.pool import Pool
from blip.meters import Meter, Meters
from blip.model import Point
from tests.conftest import wait_until

HOUSE = Meter(1, "Hus", "", 600.0, 4.0, 2.0, "kr", "Europe/Copenhagen")
WORKSHOP = Meter(2, "Værksted", "Lathe", 1000.0, 1.0, 2.0, "kr", "Europe/Copenhagen")


def rows(database) -> list[tuple]:
    """:return: the meters table, by id."""
    return database.sql(
        "SELECT id, label, description, pulses_per_kwh, multiplier, price_per_kwh, currency, timezone"
        "  FROM meters ORDER BY id"
    )


def row(meter: Meter) -> tuple:
    """:return: a meter as a row of the meters table."""
    return (meter.id, meter.label, meter.description, meter.pulses_per_kwh, meter.multiplier,
            meter.price_per_kwh, meter.currency, meter.timezone)


@pytest.fixture
def table_rows(store) -> MeterRows:
    """The rows of the meters table of ``store``'s database."""
    return MeterRows(store.pool)


@pytest_twisted.ensureDeferred
async def test_configured_meters_are_written_and_stored_ones_learnt(table_rows, database) -> None:
    """
    At start the meters file's settings replace the stored ones (a stored
    description stays unless the file gives one), and meters only the
    table knows join the registry with their stored settings.
    """
    await table_rows.save_meters([Meter(1, "Old", "Main board", 1000.0, 1.0, 1.0, "EUR", "UTC")])
    await table_rows.note_meter(Meter(9, "Meter 9", "Garage", 800.0, 1.0, 0.0, "", "UTC"))
    meters = Meters([HOUSE, WORKSHOP])
    await MeterTable(table_rows, meters, Clock()).load()
    assert rows(database) == [
        row(HOUSE)[:2] + ("Main board",) + row(HOUSE)[3:],
        row(WORKSHOP),
        (9, "Meter 9", "Garage", 800.0, 1.0, 0.0, "", "UTC"),
    ]
    assert meters.get(1).description == "Main board"
    assert meters.get(1).pulses_per_kwh == 600.0
    assert 9 in meters and meters.get(9).pulses_per_kwh == 800.0


@pytest_twisted.ensureDeferred
async def test_without_a_meters_file_the_table_is_not_overwritten(table_rows, database) -> None:
    """
    A node without a meters file adds the default meter only if the table
    lacks it, and then uses the stored settings (written by a node that has
    the file).
    """
    await table_rows.save_meters([HOUSE])
    meters = Meters()
    await MeterTable(table_rows, meters, Clock()).load()
    assert rows(database) == [row(HOUSE)]
    assert meters.get(1) == HOUSE

    fresh = Meters()
    await table_rows.pool.runOperation("DELETE FROM meters")
    await MeterTable(table_rows, fresh, Clock()).load()
    assert rows(database) == [(1, "Meter 1", "", 1000.0, 1.0, 0.0, "", "UTC")]


@pytest_twisted.ensureDeferred
async def test_info_lines_and_new_meters_reach_the_table(table_rows, database) -> None:
    """
    A description from an INFO line and a meter first seen on the serial
    line reach both the registry (at once) and the table; points are
    passed on unchanged.
    """
    meters = Meters([HOUSE])
    table = MeterTable(table_rows, meters, Clock())
    received = []
    receive = table.noticing(received.append)
    receive(Point(4, 1000, 50))
    table.describe(1, "Main board")
    assert 4 in meters and meters.get(1).description == "Main board"
    await table.load()
    receive(Point(5, 2000, 60))
    receive(Point(5, 3000, 70))
    table.describe(5, "Heat pump")
    assert received == [Point(4, 1000, 50), Point(5, 2000, 60), Point(5, 3000, 70)]
    expected = [
        row(HOUSE)[:2] + ("Main board",) + row(HOUSE)[3:],
        (4, "Meter 4", "", 1000.0, 1.0, 0.0, "", "UTC"),
        (5, "Meter 5", "Heat pump", 1000.0, 1.0, 0.0, "", "UTC"),
    ]
    await wait_until(lambda: rows(database) == expected)


@pytest_twisted.ensureDeferred
async def test_a_write_the_database_refuses_is_retried(table_rows, database) -> None:
    """
    While the database is unreachable a new meter waits, and is written
    with backoff once it is back.
    """
    from twisted.internet import reactor

    clock = Clock()
    table = MeterTable(table_rows, Meters(), clock)
    await table.load()
    away = Pool(database.dsn, 1, reactor)
    table.store = MeterRows(away)
    table.describe(3, "Sauna")
    await wait_until(lambda: bool(clock.getDelayedCalls()))
    assert [r[0] for r in rows(database)] == [1]
    await away.start()
    try:
        clock.advance(30)
        await wait_until(lambda: [r[:3] for r in rows(database)] == [(1, "Meter 1", ""), (3, "Meter 3", "Sauna")])
    finally:
        away.close()


@pytest_twisted.ensureDeferred
async def test_a_node_follows_what_other_nodes_write_to_the_table(table_rows, database, log_events) -> None:
    """
    A node started before another wrote its meters file to the table (or
    imported a new meter) takes those settings at its next refresh; meters
    configured by its own file keep theirs; a database away is no error.
    """
    web = Meters()
    table = MeterTable(table_rows, web, Clock())
    await table.load()
    assert web.get(1).pulses_per_kwh == 1000.0

    await table_rows.save_meters([HOUSE])
    await table_rows.note_meter(Meter(7, "Meter 7", "", 800.0, 1.0, 0.0, "", "UTC"))
    await table.refreshing()
    assert web.get(1) == HOUSE
    assert web.get(7).pulses_per_kwh == 800.0

    own = Meters([WORKSHOP])
    mine = MeterTable(table_rows, own, Clock())
    await mine.load()
    await table_rows.save_meters([Meter(2, "Other", "", 500.0, 1.0, 1.0, "EUR", "UTC")])
    await mine.refreshing()
    assert own.get(2) == WORKSHOP

    table_rows.pool.close()
    await table.refreshing()
    assert web.get(1) == HOUSE
    assert not [e for e in log_events if e.get("log_failure")]


@pytest_twisted.ensureDeferred
async def test_a_refresh_never_undoes_a_change_being_written(table_rows, database) -> None:
    """
    A description from an INFO line (or a new meter) given while a refresh
    reads the table, or while its write is under way, is not replaced by
    the row the refresh read before the change was stored.
    """
    meters = Meters()
    table = MeterTable(table_rows, meters, Clock())
    await table.load()
    refreshing = table.refreshing()
    table.describe(1, "Kitchen")
    await refreshing
    assert meters.get(1).description == "Kitchen"
    await wait_until(lambda: rows(database)[0][2] == "Kitchen")
    await table.refreshing()
    assert meters.get(1).description == "Kitchen"
