"""
Tests of telling a database's layout: blipserver's own and the original's
are recognised (see also tests/db/test_upgrades.py), and anything else is
refused untouched, by the daemon too.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from blip.db.layouts import (
    ORIGINAL_MULTI,
    ORIGINAL_SINGLE,
    SCHEMA_VERSION,
    Catalog,
    Column,
    Refused,
    detect,
)
from blip.db.schema import Schema, schema_sql
from tests import originals
from tests.conftest import ROOT, TIMEOUT
from tests.originals import MULTI


def catalog(relations: dict[str, str], columns: dict[str, list[str]], version=None) -> Catalog:
    """:return: a catalog of integer columns, without keys, triggers or grants."""
    return Catalog(
        relations,
        {t: tuple(Column(c, "integer", True) for c in names) for t, names in columns.items()},
        {}, (), (), version,
    )


def test_layouts_are_told_from_the_catalog() -> None:
    """
    An empty database has no layout, the original's are told by their
    readings' columns, a versioned one by its version; one from a newer
    blipserver, or without a readings table, is refused.
    """
    assert detect(catalog({}, {})) is None
    assert detect(catalog({"readings": "r"}, {"readings": ["stamp", "ms"]})) == ORIGINAL_SINGLE
    assert detect(catalog({"readings": "r"}, {"readings": ["id", "stamp", "ms"]})) == ORIGINAL_MULTI
    assert detect(catalog({"blip_schema": "r"}, {}, SCHEMA_VERSION)) == SCHEMA_VERSION
    with pytest.raises(Refused, match="newer blipserver"):
        detect(catalog({"blip_schema": "r"}, {}, SCHEMA_VERSION + 1))
    with pytest.raises(Refused, match="has no readings table"):
        detect(catalog({"invoices": "r"}, {"invoices": ["number"]}))


@pytest.mark.parametrize(
    "setup, reason",
    [
        ("CREATE TABLE invoices (number INTEGER PRIMARY KEY, total NUMERIC);"
         " INSERT INTO invoices VALUES (1, 9.5)", "has no readings table"),
        ("CREATE TABLE readings (sensor TEXT, value FLOAT, at TIMESTAMPTZ);"
         " INSERT INTO readings VALUES ('hall', 21.5, now())", "readings table has columns"),
        ("CREATE TABLE readings (stamp TEXT PRIMARY KEY, ms INTEGER);"
         " INSERT INTO readings VALUES ('x', 1)", "readings.stamp is text, not an integer"),
        ("CREATE VIEW readings AS SELECT 1::bigint AS stamp, 2 AS ms", "readings is not a table"),
        (originals.layout_sql(MULTI) + "CREATE TABLE meters (serial TEXT, room TEXT);"
         " INSERT INTO readings VALUES (1, 5, 5)", "meters table that is not blipserver's"),
        (schema_sql() + "INSERT INTO blip_schema VALUES (9, 0, 'from the future')",
         "version 9, written by a newer blipserver"),
    ],
    ids=["unrelated", "other-readings", "text-stamps", "readings-view", "foreign-meters", "newer"],
)
@pytest_twisted.ensureDeferred
async def test_foreign_database_is_refused_untouched(setup, reason, raw_pool, database) -> None:
    """
    A database that is neither empty, blipserver's, nor the original's is
    refused with a message saying why, and nothing in it changes.
    """
    originals.execute(database.dsn, setup)
    state = originals.snapshot(database.sql)
    with pytest.raises(Refused, match=reason):
        await Schema(raw_pool).apply()
    assert originals.snapshot(database.sql) == state


def test_twistd_refuses_a_foreign_database_and_exits_1(daemon_env, database, tmp_path) -> None:
    """
    Given a database that is not blipserver's, the daemon logs why as
    critical, leaves it untouched and exits with status 1 (not retrying
    for ever behind a healthy-looking process).
    """
    originals.execute(database.dsn, "CREATE TABLE invoices (number INTEGER PRIMARY KEY, total NUMERIC)")
    state = originals.snapshot(database.sql)
    twistd = str(Path(sys.executable).parent / "twistd")
    done = subprocess.run(
        [twistd, "--nodaemon", "--pidfile=", "blip", "--db", database.dsn,
         "--state-dir", str(tmp_path), "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=ROOT, env=daemon_env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "#critical] refusing to use the database: it is not empty (invoices)" in done.stdout
    assert "nothing was changed" in done.stdout
    assert "Traceback" not in done.stdout
    assert originals.snapshot(database.sql) == state
