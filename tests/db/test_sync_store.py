"""
Tests of the ``blip`` command's blocking store against a real PostgreSQL:
each statement answers a typed value (the commands built on them are
tested in tests/cli/test_main.py).
"""

import io
from collections.abc import Iterator

import psycopg2
import pytest

from blip.db.layouts import SCHEMA_VERSION
from blip.db.sync_store import Counts, Extent, Mismatch, Rebuilt, SyncStore
from blip.meters import default_meter

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR


@pytest.fixture
def sync_store(database) -> Iterator[SyncStore]:
    """A blocking store on a fresh, prepared database."""
    connection = psycopg2.connect(database.dsn)
    try:
        store = SyncStore(connection)
        store.apply_schema()
        yield store
    finally:
        connection.close()


def test_import_export_and_the_meters_with_readings(sync_store) -> None:
    """
    Points are imported once, exported as CSV, and tell which meters have
    readings and how far they reach.
    """
    assert sync_store.layout() == SCHEMA_VERSION
    assert sync_store.meter_ids() == []
    assert sync_store.span(1) == Extent(None, None, None)
    sync_store.note_meter(default_meter(1))
    assert sync_store.import_points(1, [(T0, 1000), (T0 + 1000, 1000)]) == 2
    assert sync_store.import_points(1, [(T0 + 1000, 1000), (T0 + 2000, 500)]) == 1
    assert sync_store.import_points(3, [(T0, 7)]) == 1
    assert sync_store.meter_ids() == [1, 3]
    assert sync_store.span(1) == Extent(T0, T0 + 2000, T0)
    out = io.BytesIO()
    sync_store.export(1, T0 + 1000, T0 + 5000, out)
    assert out.getvalue() == f"stamp,ms\n{T0 + 1000},1000\n{T0 + 2000},500\n".encode()


def test_rollups_checked_and_rebuilt(sync_store, database) -> None:
    """
    A rollup row that does not match a recount is found, with both
    sides, and a rebuild says how many rows it corrected.
    """
    sync_store.import_points(1, [(T0 + i * 1000, 1000) for i in range(3)])
    database.sql("UPDATE readings_minutely SET events = 9")
    database.sql("DELETE FROM readings_hourly")
    assert sync_store.mismatches("readings_minutely", 1, T0, T0 + HOUR, T0) == [
        Mismatch(T0, Counts(3, 3000, 1000, 1000), Counts(9, 3000, 1000, 1000))
    ]
    assert sync_store.mismatches("readings_hourly", 1, T0, T0 + HOUR, T0) == [
        Mismatch(T0, Counts(3, 3000, 1000, 1000), Counts(None, None, None, None))
    ]
    assert sync_store.history("readings_hourly", 1, T0) == 0
    assert sync_store.rebuild(1, T0, T0 + HOUR) == Rebuilt(1, 1)
    assert sync_store.mismatches("readings_minutely", 1, T0, T0 + HOUR, T0) == []
