"""
Tests of the two runners of a program against a real PostgreSQL: the
daemon's and the command's run the same program to the same result, in
one transaction.
"""

import psycopg2
import pytest
import pytest_twisted
from psycopg2 import sql
from twisted.internet.defer import Deferred

from blip.db.program import Program, Statement, run, run_sync


def counting(table: str) -> Program[tuple[int, list[tuple]]]:
    """
    A program that fills a table and reads it back, each statement
    depending on what the one before returned.
    """
    yield Statement(sql.SQL("CREATE TABLE {} (n INTEGER)").format(sql.Identifier(table)))
    written = (yield Statement(
        sql.SQL("INSERT INTO {} SELECT generate_series(1, %s)").format(sql.Identifier(table)), (3,)
    )).count
    rows = (yield Statement(
        sql.SQL("SELECT n, '100%%' FROM {} WHERE n > %s ORDER BY n").format(sql.Identifier(table)), (written - 2,)
    )).rows
    # Without parameters the text runs as it is: no % processing.
    yield Statement("COMMENT ON TABLE " + table + " IS '100%'")
    return written, rows


def failing() -> Program[None]:
    """A program whose second statement fails."""
    yield Statement("CREATE TABLE kept (n INTEGER)")
    yield Statement("SELECT 1 / 0")


@pytest_twisted.ensureDeferred
async def test_both_runners_run_a_program_alike(raw_pool, database) -> None:
    """
    The asynchronous and the blocking runner send each statement, give the
    program each result, and return what it returned.
    """
    expected = (3, [(2, "100%"), (3, "100%")])
    done = await raw_pool.runInteraction(lambda cursor: Deferred.fromCoroutine(run(cursor, counting("a"))))
    assert done == expected
    connection = psycopg2.connect(database.dsn)
    try:
        with connection, connection.cursor() as cursor:
            assert run_sync(cursor, counting("b")) == expected
    finally:
        connection.close()
    assert database.sql("SELECT obj_description('a'::regclass), obj_description('b'::regclass)") == [
        ("100%", "100%")
    ]


@pytest_twisted.ensureDeferred
async def test_a_failing_program_changes_nothing(raw_pool, database) -> None:
    """
    A statement that fails ends the program with its error, and its
    transaction leaves nothing behind.
    """
    with pytest.raises(psycopg2.errors.DivisionByZero):
        await raw_pool.runInteraction(lambda cursor: Deferred.fromCoroutine(run(cursor, failing())))
    connection = psycopg2.connect(database.dsn)
    try:
        with pytest.raises(psycopg2.errors.DivisionByZero):
            with connection, connection.cursor() as cursor:
                run_sync(cursor, failing())
    finally:
        connection.close()
    assert database.sql("SELECT to_regclass('kept')") == [(None,)]
