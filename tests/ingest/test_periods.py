"""
Tests of the record of ingest periods against a real database: opening,
refreshing, losing and stopping, the crash left by a killed daemon, and a
database that is not there yet.
"""

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from blip.db.node_state import IngestPeriods
from blip.ingest.periods import ALIVE_INTERVAL, Periods, PeriodsService
from tests.conftest import wait_until

T0 = 1_700_000_000_000


def clock_at(ms: int) -> Clock:
    """:return: a clock showing unix time ``ms``."""
    clock = Clock()
    clock.advance(ms / 1000)
    return clock


def rows(database, node: str = "n1") -> list[tuple]:
    """:return: the node's periods, oldest first."""
    return database.sql(
        "SELECT started, alive_at, ended, end_reason FROM ingest_periods"
        " WHERE node = %s ORDER BY started",
        (node,),
    )


@pytest_twisted.ensureDeferred
async def test_open_refresh_lose_reopen_and_stop(store, database) -> None:
    """
    A period starts when the source opens, its alive_at moves with each
    refresh, it ends with 'device lost' when the source is lost; the next
    opening starts another, which ends with 'stop'.
    """
    clock = clock_at(T0)
    periods = Periods(IngestPeriods(store.pool), "n1", clock)
    periods.start()
    periods.opened()
    await wait_until(lambda: rows(database) == [(T0, T0, None, None)])
    clock.advance(ALIVE_INTERVAL)
    periods.alive()
    alive = T0 + int(ALIVE_INTERVAL * 1000)
    await wait_until(lambda: rows(database) == [(T0, alive, None, None)])
    clock.advance(5)
    periods.lost()
    clock.advance(10)
    periods.opened()
    clock.advance(1)
    await periods.stop()
    assert rows(database) == [
        (T0, alive + 5000, alive + 5000, "device lost"),
        (alive + 15000, alive + 16000, alive + 16000, "stop"),
    ]
    periods.opened()
    assert periods.current is None


@pytest_twisted.ensureDeferred
async def test_a_period_left_open_is_closed_as_a_crash(store, database, log_events) -> None:
    """
    At start, a period of this node that a killed daemon left open ends at
    its last alive_at for reason 'crash'; other nodes' periods and closed
    ones are left alone.
    """
    database.sql(
        "INSERT INTO ingest_periods VALUES"
        " ('n1', %s, %s, NULL, NULL), ('n1', %s, %s, %s, 'stop'), ('n2', %s, %s, NULL, NULL)",
        (T0 - 9000, T0 - 5000, T0 - 20000, T0 - 19000, T0 - 19000, T0 - 9000, T0 - 1000),
    )
    periods = Periods(IngestPeriods(store.pool), "n1", clock_at(T0))
    periods.start()
    await wait_until(lambda: any("left open by a crash" in e["log_format"] for e in log_events))
    assert (T0 - 9000, T0 - 5000, T0 - 5000, "crash") in rows(database)
    assert rows(database, "n2") == [(T0 - 9000, T0 - 1000, None, None)]
    assert rows(database)[0] == (T0 - 20000, T0 - 19000, T0 - 19000, "stop")
    assert sorted(await IngestPeriods(store.pool).ingest_periods(T0 - 10000, T0)) == [(T0 - 9000, T0 - 5000), (T0 - 9000, T0 - 1000)]


@pytest_twisted.ensureDeferred
async def test_periods_wait_in_memory_until_the_database_is_ready(store, database) -> None:
    """
    Periods that open and close before the database is ready are recorded
    once it is.
    """
    clock = clock_at(T0)
    periods = Periods(IngestPeriods(store.pool), "n1", clock)
    periods.opened()
    clock.advance(2)
    periods.lost()
    periods.opened()
    assert rows(database) == []
    periods.start()
    await wait_until(lambda: len(rows(database)) == 2)
    assert rows(database) == [(T0, T0 + 2000, T0 + 2000, "device lost"), (T0 + 2000, T0 + 2000, None, None)]
    assert periods.current is not None and periods.current.started == T0 + 2000
    await periods.stop()


@pytest_twisted.ensureDeferred
async def test_two_openings_in_one_millisecond_are_two_periods(store, database) -> None:
    """
    Periods of a node are keyed by their start, so a source reopened in the
    same millisecond starts one millisecond later.
    """
    periods = Periods(IngestPeriods(store.pool), "n1", clock_at(T0))
    periods.start()
    periods.opened()
    periods.lost()
    periods.opened()
    await periods.stop()
    assert [r[0] for r in rows(database)] == [T0, T0 + 1]


@pytest_twisted.ensureDeferred
async def test_a_stop_the_database_missed_is_recorded_at_the_next_start(
    store, database, tmp_path
) -> None:
    """
    A period that ends while the database cannot record it (a clean stop
    during an outage) is kept in a file; the next start records it as a
    'stop', not as a crash, and removes the file.
    """
    path = tmp_path / "periods.json"
    clock = clock_at(T0)
    first = Periods(IngestPeriods(store.pool), "n1", clock, path)
    first.start()
    first.opened()
    await wait_until(lambda: rows(database) == [(T0, T0, None, None)])
    database.sql("ALTER TABLE ingest_periods RENAME TO ingest_periods_away")
    clock.advance(30)
    await first.stop()
    database.sql("ALTER TABLE ingest_periods_away RENAME TO ingest_periods")
    assert path.exists()
    assert rows(database) == [(T0, T0, None, None)]
    clock.advance(10)
    second = Periods(IngestPeriods(store.pool), "n1", clock, path)
    second.open()
    second.start()
    await wait_until(lambda: not path.exists())
    assert rows(database) == [(T0, T0 + 30000, T0 + 30000, "stop")]


@pytest_twisted.ensureDeferred
async def test_a_crash_during_an_outage_ends_at_the_last_local_refresh(
    store, database, tmp_path
) -> None:
    """
    While the database cannot record, each refresh keeps the periods in the
    file; after a crash, the next start records the open one as a crash at
    its last refresh — later than anything the database saw.
    """
    path = tmp_path / "periods.json"
    clock = clock_at(T0)
    first = Periods(IngestPeriods(store.pool), "n1", clock, path)
    first.opened()
    for _ in range(3):
        clock.advance(ALIVE_INTERVAL)
        first.alive()
    assert path.exists()
    # The process dies here: no stop.
    clock.advance(100)
    second = Periods(IngestPeriods(store.pool), "n1", clock, path)
    second.open()
    second.start()
    await wait_until(lambda: not path.exists())
    end = T0 + int(3 * ALIVE_INTERVAL * 1000)
    assert rows(database) == [(T0, end, end, "crash")]


@pytest_twisted.ensureDeferred
async def test_the_service_refreshes_from_the_start_and_records_once_ready(
    store, database, tmp_path
) -> None:
    """
    The service refreshes the open period every ALIVE_INTERVAL from the
    start (keeping it in the file while the database is not ready, and
    keeping the other state it is given each time), records once the
    database is ready, and records the end on stop.
    """
    path = tmp_path / "periods.json"
    clock = clock_at(T0)
    ready: Deferred[None] = Deferred()
    periods = Periods(IngestPeriods(store.pool), "n1", clock, path)
    kept: list[float] = []
    service = PeriodsService(periods, lambda: ready, clock, lambda: kept.append(clock.seconds()))
    service.startService()
    periods.opened()
    clock.advance(ALIVE_INTERVAL)
    assert path.exists() and rows(database) == []
    assert kept == [clock.seconds()]
    ready.callback(None)
    alive = T0 + int(ALIVE_INTERVAL * 1000)
    await wait_until(lambda: rows(database) == [(T0, alive, None, None)])
    clock.advance(5)
    await service.stopService()
    assert rows(database) == [(T0, alive + 5000, alive + 5000, "stop")]
    assert not path.exists()
