"""
Tests of the database service: a database that cannot be prepared stops
the daemon instead of being retried for ever.
"""

import pytest_twisted
from twisted.internet.defer import Deferred

from blip.database import DatabaseService, Pool
from blip.store import Store
from tests import originals
from tests.conftest import TIMEOUT


@pytest_twisted.ensureDeferred
async def test_a_refused_database_is_fatal(database, log_events) -> None:
    """
    Preparing a database that is not blipserver's logs why as critical,
    once, and calls ``fatal`` (which stops the daemon) instead of retrying.
    """
    from twisted.internet import reactor

    originals.execute(database.dsn, "CREATE TABLE invoices (number INTEGER PRIMARY KEY)")
    pool = Pool(database.dsn, 1, reactor)
    stopped: Deferred[None] = Deferred()
    service = DatabaseService(pool, Store(pool).apply_schema, fatal=lambda: stopped.callback(None))
    service.startService()
    try:
        await stopped.addTimeout(TIMEOUT, reactor)
    finally:
        service.stopService()
    critical = [e for e in log_events if e["log_level"].name == "critical"]
    assert len(critical) == 1
    assert critical[0]["log_format"].startswith("refusing to use the database")
    assert "no readings table" in critical[0]["why"]
    assert not service.ready
