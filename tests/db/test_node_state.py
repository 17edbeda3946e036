"""
Tests of the tables the nodes record besides readings, against a real
PostgreSQL: the meters table's rows and the ingest periods' (how the
daemon keeps them is tested in tests/db/test_meter_table.py and
tests/ingest/test_periods.py).
"""

import pytest_twisted

from blip.db.node_state import IngestPeriods, MeterRows
from blip.meters import Meter

HOUSE = Meter(1, "Hus", "", 600.0, 4.0, 2.0, "kr", "Europe/Copenhagen")


@pytest_twisted.ensureDeferred
async def test_meter_rows(store) -> None:
    """
    Saved settings replace the stored ones but keep a stored description
    unless they bring their own; noting a meter adds it, or only its new
    description; the rows come back as meters, by id.
    """
    rows = MeterRows(store.pool)
    await rows.note_meter(Meter(2, "Meter 2", "Lathe", 1000.0, 1.0, 0.0, "", "UTC"))
    await rows.note_meter(Meter(2, "Other", "", 5.0, 1.0, 0.0, "", "UTC"))
    await rows.save_meters([Meter(1, "Old", "Main board", 1000.0, 1.0, 1.0, "EUR", "UTC")])
    await rows.save_meters([HOUSE])
    assert await rows.meters() == [
        Meter(1, "Hus", "Main board", 600.0, 4.0, 2.0, "kr", "Europe/Copenhagen"),
        Meter(2, "Meter 2", "Lathe", 1000.0, 1.0, 0.0, "", "UTC"),
    ]
    await rows.note_meter(Meter(2, "Other", "Heat pump", 5.0, 1.0, 0.0, "", "UTC"))
    assert (await rows.meters())[1].description == "Heat pump"


@pytest_twisted.ensureDeferred
async def test_ingest_periods(store, database) -> None:
    """
    A period's ``alive_at`` only moves forward and its end, once recorded,
    stays; the periods a node left open before it started again are closed
    as crashes at their last ``alive_at``.
    """
    periods = IngestPeriods(store.pool)
    await periods.save_ingest_period("n1", 1000, 5000, None, None)
    await periods.save_ingest_period("n1", 1000, 3000, None, None)
    await periods.save_ingest_period("n1", 6000, 7000, None, None)
    await periods.save_ingest_period("n2", 1000, 2000, None, None)
    assert await periods.end_crashed_ingest_periods("n1", 6000) == 1
    await periods.save_ingest_period("n1", 1000, 9000, 9000, "stop")
    assert database.sql(
        "SELECT node, started, alive_at, ended, end_reason FROM ingest_periods ORDER BY 1, 2"
    ) == [
        ("n1", 1000, 9000, 5000, "crash"),
        ("n1", 6000, 7000, None, None),
        ("n2", 1000, 2000, None, None),
    ]
