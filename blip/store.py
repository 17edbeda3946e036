"""
Every SQL statement blipserver runs, one typed method each.

Parameters are always bound by the driver. Stamps and widths are cast to
BIGINT in the SQL so that arithmetic on them cannot overflow an INTEGER.
"""

from importlib.resources import files
from typing import Any, Optional, Sequence

from twisted.logger import Logger

from blip.model import Point
from blip.database import Pool

Row = tuple[Any, ...]

#: Key of the advisory lock that serialises schema changes between nodes.
SCHEMA_LOCK = 0x626C6970  # "blip"


def schema_sql() -> str:
    """
    :return: the text of ``schema.sql``.
    """
    return files("blip").joinpath("schema.sql").read_text(encoding="utf-8")


class Store:
    """
    The database, as blipserver uses it.

    :param pool: the connections to run statements on.
    """

    log = Logger()

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def apply_schema(self) -> None:
        """
        Create or update the schema, holding a lock so that nodes starting
        together take turns.
        """
        schema = schema_sql()

        def apply(cursor: Any) -> Any:
            d = cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            return d.addCallback(lambda _: cursor.execute(schema))

        await self.pool.runInteraction(apply)

    async def insert(self, points: Sequence[Point]) -> int:
        """
        Store points in one statement; the rollup trigger updates the
        minute and hour rollups in the same transaction. Points already
        stored are skipped.

        :return: how many points were new.
        """
        rows = await self.pool.runQuery(
            "WITH new AS ("
            " INSERT INTO readings (id, stamp, ms)"
            " SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::integer[])"
            " ORDER BY 1, 2"
            " ON CONFLICT DO NOTHING RETURNING 1)"
            " SELECT count(*) FROM new",
            (
                [p.meter for p in points],
                [p.stamp for p in points],
                [p.ms for p in points],
            ),
        )
        return int(rows[0][0])

    async def last_points(self) -> list[Point]:
        """
        :return: the newest point of every meter that has readings.
        """
        rows = await self.pool.runQuery(
            "SELECT r.id, r.stamp, r.ms"
            "  FROM (SELECT DISTINCT id FROM readings_hourly) m"
            " CROSS JOIN LATERAL (SELECT id, stamp, ms FROM readings"
            "                      WHERE id = m.id"
            "                      ORDER BY stamp DESC LIMIT 1) r"
        )
        return [Point(*row) for row in rows]

    async def last(self, meter: int) -> Optional[Row]:
        """
        :return: ``(stamp, ms)`` of the meter's newest point, or None.
        """
        rows = await self.pool.runQuery(
            "SELECT stamp, ms FROM readings WHERE id = %s"
            " ORDER BY stamp DESC LIMIT 1",
            (meter,),
        )
        return rows[0] if rows else None

    async def since(self, meter: int, since: int, limit: int) -> list[Row]:
        """
        :return: ``(stamp, ms)`` of the first ``limit`` points with
            ``stamp >= since``, oldest first.
        """
        return await self.pool.runQuery(
            "SELECT stamp, ms FROM readings WHERE id = %s AND stamp >= %s::bigint"
            " ORDER BY stamp LIMIT %s",
            (meter, since, limit),
        )

    async def between(self, meter: int, first: int, last: int, limit: int) -> list[Row]:
        """
        :return: ``(stamp, ms)`` of the first ``limit`` points with
            ``first <= stamp <= last``, oldest first.
        """
        return await self.pool.runQuery(
            "SELECT stamp, ms FROM readings WHERE id = %s"
            " AND stamp >= %s::bigint AND stamp <= %s::bigint"
            " ORDER BY stamp LIMIT %s",
            (meter, first, last, limit),
        )

    async def aggregate(self, meter: int, start: int, width: int, count: int) -> list[Row]:
        """
        :return: ``(offset, blips)`` per ``width``-ms bucket of the ``count``
            buckets from ``start``; offset is ``width * floor((stamp -
            start) / width)``; empty buckets are left out.
        """
        return await self.pool.runQuery(
            "SELECT %(w)s::bigint * ((stamp - %(s)s::bigint) / %(w)s::bigint) AS o,"
            "       count(*)"
            "  FROM readings"
            " WHERE id = %(m)s AND stamp >= %(s)s::bigint"
            "   AND stamp < %(s)s::bigint + %(w)s::bigint * %(c)s::bigint"
            " GROUP BY o ORDER BY o",
            {"m": meter, "s": start, "w": width, "c": count},
        )

    async def aggregate_hourly(
        self, meter: int, start: int, width: int, count: int
    ) -> list[Row]:
        """
        :return: ``(offset, sum of wh)`` per bucket, like :meth:`aggregate`
            but over the hourly rollups.
        """
        return await self.pool.runQuery(
            "SELECT %(w)s::bigint * ((stamp - %(s)s::bigint) / %(w)s::bigint) AS o,"
            "       sum(wh)"
            "  FROM usage_hourly"
            " WHERE id = %(m)s AND stamp >= %(s)s::bigint"
            "   AND stamp < %(s)s::bigint + %(w)s::bigint * %(c)s::bigint"
            " GROUP BY o ORDER BY o",
            {"m": meter, "s": start, "w": width, "c": count},
        )

    async def hourly(self, meter: int, first: int, last: int) -> list[Row]:
        """
        :return: ``(stamp, events, wh, min_ms, max_ms)`` of each hour with
            ``first <= stamp <= last``.
        """
        return await self.pool.runQuery(
            "SELECT stamp, events, wh, min_ms, max_ms FROM usage_hourly"
            " WHERE id = %s AND stamp >= %s::bigint AND stamp <= %s::bigint"
            " ORDER BY stamp",
            (meter, first, last),
        )

    async def minutely(self, meter: int, first: int, last: int, limit: int) -> list[Row]:
        """
        :return: ``(stamp, events, wh, min_ms, max_ms)`` of the first
            ``limit`` minutes with ``first <= stamp <= last``.
        """
        return await self.pool.runQuery(
            "SELECT stamp, events, wh, min_ms, max_ms FROM usage_minutely"
            " WHERE id = %s AND stamp >= %s::bigint AND stamp <= %s::bigint"
            " ORDER BY stamp LIMIT %s",
            (meter, first, last, limit),
        )

    async def count_since(self, meter: int, since: int) -> int:
        """
        :return: how many points have ``stamp >= since``.
        """
        rows = await self.pool.runQuery(
            "SELECT count(*) FROM readings WHERE id = %s AND stamp >= %s::bigint",
            (meter, since),
        )
        return int(rows[0][0])

    async def ingest_periods(self, first: int, last: int) -> list[Row]:
        """
        :return: ``(started, ended)`` of every period of any node when ingest
            ran with its source open that overlaps ``[first, last]``, by
            start; a period still open ends at its ``alive_at``.
        """
        return await self.pool.runQuery(
            "SELECT started, coalesce(ended, alive_at) FROM ingest_periods"
            " WHERE started <= %s::bigint AND coalesce(ended, alive_at) >= %s::bigint"
            " ORDER BY started",
            (last, first),
        )

    async def save_ingest_period(
        self,
        node: str,
        started: int,
        alive_at: int,
        ended: Optional[int],
        end_reason: Optional[str],
    ) -> None:
        """
        Record a period of ``node`` ingesting with its source open, or
        update it: ``alive_at`` only moves forward, and an end, once
        recorded, stays.
        """
        await self.pool.runOperation(
            "INSERT INTO ingest_periods AS p (node, started, alive_at, ended, end_reason)"
            " VALUES (%s, %s::bigint, %s::bigint, %s::bigint, %s)"
            " ON CONFLICT (node, started) DO UPDATE"
            "   SET alive_at = greatest(p.alive_at, excluded.alive_at),"
            "       ended = coalesce(p.ended, excluded.ended),"
            "       end_reason = coalesce(p.end_reason, excluded.end_reason)",
            (node, started, alive_at, ended, end_reason),
        )

    async def end_crashed_ingest_periods(self, node: str, before: int) -> int:
        """
        Close the periods of ``node`` that started before ``before`` and
        were never closed (the node was killed or lost power): they end at
        their last ``alive_at``, for reason ``crash``.

        :return: how many were closed.
        """
        rows = await self.pool.runQuery(
            "WITH closed AS ("
            " UPDATE ingest_periods SET ended = alive_at, end_reason = 'crash'"
            "  WHERE node = %s AND ended IS NULL AND started < %s::bigint"
            " RETURNING 1)"
            " SELECT count(*) FROM closed",
            (node, before),
        )
        return int(rows[0][0])
