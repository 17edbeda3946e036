"""
What every set of queries on the readings shares: the pool it runs on,
whether the database answers, the newest points (which the legacy routes,
``/api/v1``, the live stream and ingest all ask for), a meter's points a
page at a time (``/api/v1`` and the repair of gaps), and running a
statement the planner misprices without JIT compilation.

Parameters are always bound by the driver. Stamps and widths are cast to
BIGINT in the SQL so that arithmetic on them cannot overflow an INTEGER.
"""

from typing import Any, NamedTuple, Optional

from twisted.internet.defer import Deferred

from blip.db.pool import Pool
from blip.model import STAMP_MIN, Point


def skip_meters(table: str) -> str:
    """
    :return: a recursive ``m (id)`` of the meters of ``table``, found by
        skipping through its primary key ``(id, ...)`` one meter at a time
        (a DISTINCT would read every row); its last row is NULL.
    """
    return (
        "WITH RECURSIVE m AS ("
        f"   (SELECT id FROM {table} ORDER BY id LIMIT 1)"
        "   UNION ALL"
        f"   SELECT (SELECT id FROM {table} WHERE id > m.id ORDER BY id LIMIT 1)"
        "     FROM m WHERE m.id IS NOT NULL)"
    )


#: The meters with rollups: every meter with readings, and those whose
#: readings were dropped (see :func:`skip_meters`). The hourly rollups
#: have one index to skip through, where readings has one per partition.
METERS_WITH_ROLLUPS = skip_meters("readings_hourly")


class Reading(NamedTuple):
    """
    A point of the meter asked about.

    :param stamp: unix ms of the blink.
    :param ms: ms since the blink before.
    """

    stamp: int
    ms: int


class Queries:
    """
    The reads every user of the readings needs; the sets of queries of
    each concern build on it.

    :param pool: the connections to run statements on.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        """
        Ask the database a trivial question (a health check).
        """
        await self.pool.runQuery("SELECT 1")

    async def last(self, meter: int) -> Optional[Reading]:
        """
        :return: the meter's newest point, or None.
        """
        rows = await self.pool.runQuery(_LAST, {"m": meter, "min": STAMP_MIN})
        return Reading(*rows[0]) if rows else None

    async def points_page(self, meter: int, first: int, last: int, limit: int) -> list[Reading]:
        """
        :return: the first ``limit`` points with ``first <= stamp < last``,
            oldest first (one keyset page).
        """
        rows = await self.pool.runQuery(
            "SELECT stamp, ms FROM readings WHERE id = %s"
            " AND stamp >= %s::bigint AND stamp < %s::bigint"
            " ORDER BY stamp LIMIT %s",
            (meter, first, last, limit),
        )
        return list(map(Reading._make, rows))

    async def last_points(self) -> list[Point]:
        """
        :return: the newest point of every meter that has readings.
        """
        rows = await self.pool.runQuery(_LAST_POINTS, {"min": STAMP_MIN})
        return [Point(*row) for row in rows]


# A meter's newest point is in the newest hour of its hourly rollups (the
# trigger counts every point in the transaction that writes it): reading
# from there on, the partitions of readings before it are left out when
# the statement starts, rather than each asked for its newest point.
_LAST = (
    "SELECT stamp, ms FROM readings WHERE id = %(m)s"
    "   AND stamp >= coalesce((SELECT max(stamp) FROM readings_hourly WHERE id = %(m)s),"
    "                         %(min)s::bigint)"
    " ORDER BY stamp DESC LIMIT 1"
)
_LAST_POINTS = (
    METERS_WITH_ROLLUPS
    + ", h AS MATERIALIZED ("
    "   SELECT id, (SELECT max(stamp) FROM readings_hourly WHERE id = m.id) AS hour"
    "     FROM m WHERE id IS NOT NULL)"
    " SELECT r.id, r.stamp, r.ms FROM h"
    " CROSS JOIN LATERAL (SELECT id, stamp, ms FROM readings"
    "                      WHERE id = h.id AND stamp >= coalesce(h.hour, %(min)s::bigint)"
    "                      ORDER BY stamp DESC LIMIT 1) r"
    " ORDER BY r.id"
)


# The planner's guesses for the lateral index ranges of some statements
# (/aggregate across bucket edges, energy per calendar period) and the rows
# of generate_series price queries of a few ms high enough that PostgreSQL
# 11+ would spend 150 ms and more compiling them: they run with JIT off for
# their transaction (PostgreSQL 10 has no such setting, and no JIT).
_NO_JIT = (
    "SELECT set_config('jit', 'off', true)"
    " WHERE current_setting('server_version_num')::integer >= 110000"
)


async def uncompiled(pool: Pool, statement: str, params: Any) -> list[tuple[Any, ...]]:
    """
    Run a statement in a transaction of its own without JIT compilation.

    :return: its rows, as the driver gives them.
    """

    async def run(cursor: Any) -> list[tuple[Any, ...]]:
        await cursor.execute(_NO_JIT)
        await cursor.execute(statement, params)
        return list(cursor.fetchall())

    rows: list[tuple[Any, ...]] = await pool.runInteraction(lambda c: Deferred.fromCoroutine(run(c)))
    return rows
