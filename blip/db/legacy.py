"""
The queries behind the original's routes: each list (``/since``,
``/range``, ``/aggregate``, ``/hourly``, ...) comes as the original's JSON,
one text that PostgreSQL writes (no row reaches Python) and the route sends
as it is; ``/usage`` is a count, and ``/last`` is
:meth:`blip.db.queries.Queries.last`.
"""

from typing import Any, Optional

from blip.db.layouts import HOUR, MINUTE
from blip.db.pool import Prepared
from blip.db.queries import Queries, uncompiled


def _pairs(select: str) -> str:
    """
    :return: a statement answering one text: the rows of ``select`` (two
        columns, ordered) as the original's JSON, ``[[a,b],...]``.
        PostgreSQL writes the numbers (as the original sent them: its own
        text of each value), so no row reaches Python. The rows are
        aggregated in the order ``select`` gives them, as PostgreSQL does
        for a sorted subquery under a plain aggregate (its documentation on
        aggregate expressions): an ORDER BY inside string_agg would sort
        them again. The brackets between rows are the separator, so that
        each row costs two concatenations rather than four.
    """
    return f"SELECT coalesce('[[' || string_agg(a || ',' || b, '],[') || ']]', '[]') FROM ({select}) AS r (a, b)"


def _usage(select: str) -> str:
    """
    :return: like :func:`_pairs`, for rows of five columns.
    """
    return (
        "SELECT coalesce('[[' || string_agg(concat_ws(',', a, b, c, d, e), '],[') || ']]', '[]')"
        f" FROM ({select}) AS r (a, b, c, d, e)"
    )



# The rollups' statements are prepared: a week of hours takes the server
# longer to parse and plan than to read (from the primary key alone).
_HOURLY = Prepared(
    "blip_hourly",
    _usage(
        "SELECT stamp, events, wh, min_ms, max_ms FROM usage_hourly"
        " WHERE id = $1 AND stamp >= $2::bigint AND stamp <= $3::bigint ORDER BY stamp"
    ),
    3,
)
_MINUTELY = Prepared(
    "blip_minutely",
    _usage(
        "SELECT stamp, events, wh, min_ms, max_ms FROM usage_minutely"
        " WHERE id = $1 AND stamp >= $2::bigint AND stamp <= $3::bigint ORDER BY stamp LIMIT $4"
    ),
    4,
)


class LegacyQueries(Queries):
    """
    The original's answers, read from the readings and the rollups.

    :param pool: the connections to run statements on.
    """

    async def since(self, meter: int, since: int, limit: int) -> str:
        """
        :return: the first ``limit`` points with ``stamp >= since``, oldest
            first, as the original's JSON (see :func:`_pairs`).
        """
        return await self._text(
            _pairs(
                "SELECT stamp, ms FROM readings WHERE id = %s AND stamp >= %s::bigint"
                " ORDER BY stamp LIMIT %s"
            ),
            (meter, since, limit),
        )

    async def recent_unless_meter(self, number: int, meter: int, since: int, limit: int) -> Optional[str]:
        """
        :return: None when ``number`` is the id of a meter with readings
            (its hourly rollups say so, which stay when its raw points are
            dropped); else what :meth:`since` returns for ``meter``.
        """
        rows = await self.pool.runQuery(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM readings_hourly WHERE id = %(n)s::bigint) THEN NULL"
            " ELSE (" + _pairs(
                "SELECT stamp, ms FROM readings WHERE id = %(m)s AND stamp >= %(s)s::bigint"
                " ORDER BY stamp LIMIT %(l)s"
            ) + ") END",
            {"n": number, "m": meter, "s": since, "l": limit},
        )
        text: Optional[str] = rows[0][0]
        return text

    async def between(self, meter: int, first: int, last: int, limit: int) -> str:
        """
        :return: the first ``limit`` points with ``first <= stamp <= last``,
            oldest first, as JSON.
        """
        return await self._text(
            _pairs(
                "SELECT stamp, ms FROM readings WHERE id = %s"
                " AND stamp >= %s::bigint AND stamp <= %s::bigint"
                " ORDER BY stamp LIMIT %s"
            ),
            (meter, first, last, limit),
        )

    async def aggregate(self, meter: int, start: int, width: int, count: int) -> str:
        """
        :return: ``[offset,blips]`` per ``width``-ms bucket of the ``count``
            buckets from ``start``, as JSON; offset is ``width *
            floor((stamp - start) / width)``; empty buckets are left out.
            When ``start`` and ``width`` are whole hours (or minutes), every
            bucket is a sum of hour (minute) rollups, which are read instead
            of the points; otherwise, for buckets of a minute or more, only
            the hours and minutes that a bucket's edge cuts are read finer
            (see :data:`_AGGREGATE_MIXED`).
        """
        params = {"m": meter, "s": start, "w": width, "c": count}
        if start % HOUR == 0 and width % HOUR == 0:
            counted = "sum(events)", "readings_hourly"
        elif start % MINUTE == 0 and width % MINUTE == 0:
            counted = "sum(events)", "readings_minutely"
        elif width >= MINUTE:
            return str((await uncompiled(self.pool, _pairs(_AGGREGATE_MIXED), params))[0][0])
        else:
            counted = "count(*)", "readings"
        return await self._text(
            _pairs(
                "SELECT %(w)s::bigint * ((stamp - %(s)s::bigint) / %(w)s::bigint) AS o, {}"
                "  FROM {}"
                " WHERE id = %(m)s AND stamp >= %(s)s::bigint"
                "   AND stamp < %(s)s::bigint + %(w)s::bigint * %(c)s::bigint"
                " GROUP BY o ORDER BY o".format(*counted)
            ),
            params,
        )

    async def aggregate_hourly(self, meter: int, start: int, width: int, count: int) -> str:
        """
        :return: ``[offset,sum of wh]`` per bucket, like :meth:`aggregate`
            but over the hourly rollups, as JSON.
        """
        return await self._text(
            _pairs(
                "SELECT %(w)s::bigint * ((stamp - %(s)s::bigint) / %(w)s::bigint) AS o,"
                "       sum(wh)"
                "  FROM usage_hourly"
                " WHERE id = %(m)s AND stamp >= %(s)s::bigint"
                "   AND stamp < %(s)s::bigint + %(w)s::bigint * %(c)s::bigint"
                " GROUP BY o ORDER BY o"
            ),
            {"m": meter, "s": start, "w": width, "c": count},
        )

    async def hourly(self, meter: int, first: int, last: int) -> str:
        """
        :return: ``[stamp,events,wh,min_ms,max_ms]`` of each hour with
            ``first <= stamp <= last``, as JSON.
        """
        return str((await self.pool.runPrepared(_HOURLY, (meter, first, last)))[0][0])

    async def minutely(self, meter: int, first: int, last: int, limit: int) -> str:
        """
        :return: ``[stamp,events,wh,min_ms,max_ms]`` of the first ``limit``
            minutes with ``first <= stamp <= last``, as JSON.
        """
        return str((await self.pool.runPrepared(_MINUTELY, (meter, first, last, limit)))[0][0])

    async def count_since(self, meter: int, since: int) -> int:
        """
        :return: how many points have ``stamp >= since``: those of the
            whole hours from ``since`` on counted from the hour rollups,
            of the whole minutes before them from the minute rollups, and
            only those of the first partial minute one by one, so that any
            span costs a row per hour at most, not a row per point. (The
            rollups' buckets before the first minute after 1970 hold
            earlier stamps too: those are counted one by one.)
        """
        minute = max(-(-since // MINUTE) * MINUTE, MINUTE)
        hour = max(-(-since // HOUR) * HOUR, HOUR)
        rows = await self.pool.runQuery(
            "SELECT (SELECT count(*) FROM readings WHERE id = %(m)s"
            "          AND stamp >= %(s)s::bigint AND stamp < %(mi)s::bigint)"
            "     + (SELECT coalesce(sum(events), 0) FROM readings_minutely WHERE id = %(m)s"
            "          AND stamp >= %(mi)s::bigint AND stamp < %(h)s::bigint)"
            "     + (SELECT coalesce(sum(events), 0) FROM readings_hourly WHERE id = %(m)s"
            "          AND stamp >= %(h)s::bigint)",
            {"m": meter, "s": since, "mi": minute, "h": hour},
        )
        return int(rows[0][0])

    async def _text(self, statement: str, params: Any) -> str:
        rows = await self.pool.runQuery(statement, params)
        return str(rows[0][0])


# /aggregate of buckets of a minute or more whose edges are not on whole
# minutes: an hour (minute) that lies inside one bucket and the range is
# "clean" and counted from its rollup; the others each hold an edge
# (start + k * width, k = 0..count), so they are found from the edges:
# the minutes of a cut hour from the minute rollups when clean, and the
# points of a cut minute one by one. Every point is counted once: a clean
# hour's minutes are clean, and with buckets of a minute or more no minute
# holds two edges. (OFFSET 0 keeps each lateral read an index range per
# cut hour or minute, which the planner would otherwise flatten into a
# scan of the whole range.)
_AGGREGATE_MIXED = """
WITH edges AS (
    SELECT %(s)s::bigint + %(w)s::bigint * k AS edge FROM generate_series(0, %(c)s::bigint) AS k),
counted AS (
    SELECT stamp, events FROM readings_hourly
     WHERE id = %(m)s AND stamp >= %(s)s::bigint AND stamp <= {hi} - 3600000
       AND (stamp - %(s)s::bigint) %% %(w)s::bigint <= %(w)s::bigint - 3600000
    UNION ALL
    SELECT r.stamp, r.events
      FROM (SELECT DISTINCT edge - edge %% 3600000 AS hour FROM edges) AS cut
     CROSS JOIN LATERAL (
           SELECT stamp, events FROM readings_minutely
            WHERE id = %(m)s AND stamp >= greatest(hour, %(s)s::bigint) AND stamp < hour + 3600000
              AND stamp <= {hi} - 60000
              AND (stamp - %(s)s::bigint) %% %(w)s::bigint <= %(w)s::bigint - 60000
           OFFSET 0) AS r
     WHERE NOT (hour >= %(s)s::bigint AND hour <= {hi} - 3600000
                AND (hour - %(s)s::bigint) %% %(w)s::bigint <= %(w)s::bigint - 3600000)
    UNION ALL
    SELECT r.stamp, 1
      FROM (SELECT edge - edge %% 60000 AS minute FROM edges) AS cut
     CROSS JOIN LATERAL (
           SELECT stamp FROM readings
            WHERE id = %(m)s AND stamp >= greatest(minute, %(s)s::bigint)
              AND stamp < least(minute + 60000, {hi})
           OFFSET 0) AS r
     WHERE NOT (minute >= %(s)s::bigint AND minute <= {hi} - 60000
                AND (minute - %(s)s::bigint) %% %(w)s::bigint <= %(w)s::bigint - 60000))
SELECT %(w)s::bigint * ((stamp - %(s)s::bigint) / %(w)s::bigint) AS o, sum(events)
  FROM counted GROUP BY o ORDER BY o
""".format(hi="(%(s)s::bigint + %(w)s::bigint * %(c)s::bigint)")

