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

    # The modern API (/api/v1). Ranges are half-open: first <= stamp < last.

    async def ping(self) -> None:
        """
        Ask the database a trivial question (a health check).
        """
        await self.pool.runQuery("SELECT 1")

    async def events_in(self, meter: int, first: int, last: int) -> int:
        """
        :return: an upper bound, from the hourly rollups, of how many points
            have ``first <= stamp < last``: every blip of the hours that
            start before ``last`` and end after ``first``.
        """
        rows = await self.pool.runQuery(
            "SELECT coalesce(sum(events), 0) FROM readings_hourly"
            " WHERE id = %s AND stamp > %s::bigint - 3600000 AND stamp < %s::bigint",
            (meter, first, last),
        )
        return int(rows[0][0])

    async def points_page(self, meter: int, first: int, last: int, limit: int) -> list[Row]:
        """
        :return: ``(stamp, ms)`` of the first ``limit`` points with
            ``first <= stamp < last``, oldest first (one keyset page).
        """
        return await self.pool.runQuery(
            "SELECT stamp, ms FROM readings WHERE id = %s"
            " AND stamp >= %s::bigint AND stamp < %s::bigint"
            " ORDER BY stamp LIMIT %s",
            (meter, first, last, limit),
        )

    async def points_text(
        self, meter: int, first: int, last: int, limit: int, csv: bool
    ) -> tuple[str, int, Optional[int]]:
        """
        One keyset page of points, written out by the database: CSV lines
        ``stamp,ms`` (each ending in CRLF), or JSON pairs ``[stamp,ms]``
        separated by commas.

        :return: the text, how many points it holds, and the stamp of the
            last (None when there are none).
        """
        rows = await self.pool.runQuery(
            _POINTS_TEXT[csv], {"m": meter, "f": first, "l": last, "n": limit}
        )
        text, count, final = rows[0]
        return text or "", int(count), final

    async def rollups(self, meter: int, hourly: bool, first: int, last: int) -> list[Row]:
        """
        :param hourly: the hourly rollups if true, else the minutely.
        :return: ``(stamp, events, sum_ms, min_ms, max_ms)`` of each bucket
            with ``first <= stamp < last``.
        """
        return await self.pool.runQuery(
            _ROLLUPS[hourly], {"m": meter, "f": first, "l": last}
        )

    async def wide_buckets(self, meter: int, origin: int, width: int, last: int) -> list[Row]:
        """
        Sum the hourly rollups into buckets of ``width`` ms (a whole number
        of hours) from ``origin`` (a whole hour).

        :return: ``(start, events, sum_ms, min_ms, max_ms)`` of each bucket
            holding hours with ``origin <= stamp < last``.
        """
        return await self.pool.runQuery(
            "SELECT %(o)s::bigint + %(w)s::bigint * ((stamp - %(o)s::bigint) / %(w)s::bigint) AS b,"
            "       sum(events), sum(sum_ms), min(min_ms), max(max_ms)"
            "  FROM readings_hourly"
            " WHERE id = %(m)s AND stamp >= %(o)s::bigint AND stamp < %(l)s::bigint"
            " GROUP BY b ORDER BY b",
            {"m": meter, "o": origin, "w": width, "l": last},
        )

    async def energy(
        self,
        meter: int,
        period: str,
        zone: str,
        first: int,
        last: int,
        week_prices: list[float],
        hourly: bool,
        limit: int,
    ) -> list[Row]:
        """
        Blips per calendar period in a time zone, from the rollups.

        :param period: ``hour``, ``day``, ``week``, ``month`` or ``year``.
        :param zone: the IANA zone of the calendar.
        :param first: an instant in the first period; for hours, the start
            of the first (local hours need not start on UTC hours).
        :param last: periods that start before this are counted.
        :param week_prices: the price of a kWh in each hour of the week,
            Monday 00-01 first, in local time.
        :param hourly: sum the hourly rollups (right when every offset of
            the zone is a whole number of hours), else the minutely.
        :return: ``(start, end, blips, blips weighted by price)`` of each of
            the first ``limit`` periods, empty ones included.
        """
        if period == "hour":
            series = (
                "SELECT generate_series(%(f)s::bigint, %(l)s::bigint + 3600000, 3600000) AS lo"
            )
        else:
            series = (
                "SELECT (extract(epoch FROM local AT TIME ZONE %(tz)s) * 1000)::bigint AS lo"
                "  FROM generate_series("
                "         date_trunc(%(unit)s, to_timestamp(%(f)s / 1000.0) AT TIME ZONE %(tz)s),"
                "         (to_timestamp(%(l)s / 1000.0) AT TIME ZONE %(tz)s) + %(step)s::interval,"
                "         %(step)s::interval) AS local"
            )
        return await self.pool.runQuery(
            _ENERGY.format(series=series, rollup=_ROLLUP_TABLE[hourly]),
            {
                "m": meter, "tz": zone, "f": first, "l": last, "unit": period,
                "step": f"1 {period}", "prices": week_prices, "n": limit,
            },
        )

    async def gap_context(self, meter: int, first: int, last: int) -> Row:
        """
        :return: ``(before, first_in, last_in, after, mean_ms)``: the
            stamp of the last point before ``first``, of the first and the
            last point in ``[first, last)``, of the first point from
            ``last`` on (each None when there is none), and the mean blip
            interval over the hours of the range (None without blips).
        """
        rows = await self.pool.runQuery(
            "SELECT"
            " (SELECT stamp FROM readings WHERE id = %(m)s AND stamp < %(f)s::bigint"
            "   ORDER BY stamp DESC LIMIT 1),"
            " (SELECT stamp FROM readings WHERE id = %(m)s AND stamp >= %(f)s::bigint"
            "   AND stamp < %(l)s::bigint ORDER BY stamp LIMIT 1),"
            " (SELECT stamp FROM readings WHERE id = %(m)s AND stamp >= %(f)s::bigint"
            "   AND stamp < %(l)s::bigint ORDER BY stamp DESC LIMIT 1),"
            " (SELECT stamp FROM readings WHERE id = %(m)s AND stamp >= %(l)s::bigint"
            "   ORDER BY stamp LIMIT 1),"
            " (SELECT sum(sum_ms)::float8 / sum(events) FROM readings_hourly"
            "   WHERE id = %(m)s AND stamp > %(f)s::bigint - 3600000 AND stamp < %(l)s::bigint)",
            {"m": meter, "f": first, "l": last},
        )
        return rows[0]

    async def silences(
        self, meter: int, first: int, last: int, before: int, longer: int, limit: int
    ) -> list[Row]:
        """
        :param before: the stamp taken as the point before the first one
            of the range.
        :return: ``(a, b)`` of the first ``limit`` pairs of consecutive
            points with ``first <= b < last`` more than ``longer`` ms apart.
        """
        return await self.pool.runQuery(
            "SELECT a, b FROM ("
            "  SELECT lag(stamp, 1, %(p)s::bigint) OVER (ORDER BY stamp) AS a, stamp AS b"
            "    FROM readings WHERE id = %(m)s"
            "     AND stamp >= %(f)s::bigint AND stamp < %(l)s::bigint) s"
            " WHERE b - a > %(g)s::bigint ORDER BY b LIMIT %(n)s",
            {"m": meter, "f": first, "l": last, "p": before, "g": longer, "n": limit},
        )

    async def long_silences(
        self, meter: int, first: int, last: int, longer: int, limit: int
    ) -> list[Row]:
        """
        Like :meth:`silences` for ``longer`` of two minutes or more, found
        from the minute rollups: such a silence holds a whole empty minute,
        so only the points next to empty minutes are read, whatever the
        number of points in the range. The silence that ends at the first
        point of the range is left out when the point before lies before
        the minute of ``first``.
        """
        return await self.pool.runQuery(
            "WITH minutes AS ("
            "  SELECT lag(stamp) OVER (ORDER BY stamp) AS a, stamp AS b"
            "    FROM readings_minutely WHERE id = %(m)s"
            "     AND stamp >= %(f0)s::bigint AND stamp < %(l)s::bigint),"
            " pairs AS ("
            "  SELECT (SELECT max(stamp) FROM readings WHERE id = %(m)s"
            "            AND stamp >= m.a AND stamp < m.a + 60000) AS a,"
            "         (SELECT min(stamp) FROM readings WHERE id = %(m)s"
            "            AND stamp >= m.b AND stamp < m.b + 60000) AS b"
            "    FROM minutes m WHERE m.b - m.a > %(g)s::bigint - 60000)"
            " SELECT a, b FROM pairs"
            "  WHERE b - a > %(g)s::bigint AND b >= %(f)s::bigint AND b < %(l)s::bigint"
            "  ORDER BY b LIMIT %(n)s",
            {"m": meter, "f": first, "f0": first - first % 60000, "l": last, "g": longer, "n": limit},
        )

    async def points_after(
        self, meters: Sequence[int], stamp: int, meter: int, limit: int
    ) -> list[Point]:
        """
        One keyset page of the points of several meters in ``(stamp,
        meter)`` order.

        :return: the first ``limit`` points of ``meters`` that come after
            ``meter``'s point at ``stamp`` in that order.
        """
        rows = await self.pool.runQuery(
            "SELECT r.id, r.stamp, r.ms"
            "  FROM unnest(%(ids)s::integer[]) AS m(id)"
            " CROSS JOIN LATERAL ("
            "   SELECT id, stamp, ms FROM readings"
            "    WHERE id = m.id"
            "      AND stamp >= %(s)s::bigint + CASE WHEN m.id > %(i)s THEN 0 ELSE 1 END"
            "    ORDER BY stamp LIMIT %(n)s) AS r"
            " ORDER BY r.stamp, r.id LIMIT %(n)s",
            {"ids": list(meters), "s": stamp, "i": meter, "n": limit},
        )
        return [Point(*row) for row in rows]


_POINTS_TEXT = {
    csv: (
        f"SELECT string_agg({row}, {separator} ORDER BY stamp), count(*), max(stamp)"
        "  FROM (SELECT stamp, ms FROM readings WHERE id = %(m)s"
        "         AND stamp >= %(f)s::bigint AND stamp < %(l)s::bigint"
        "         ORDER BY stamp LIMIT %(n)s) AS page"
    )
    for csv, row, separator in (
        (True, "stamp || ',' || ms || E'\\r\\n'", "''"),
        (False, "'[' || stamp || ',' || ms || ']'", "','"),
    )
}

_ROLLUP_TABLE = {True: "readings_hourly", False: "readings_minutely"}

_ROLLUPS = {
    hourly: (
        f"SELECT stamp, events, sum_ms, min_ms, max_ms FROM {table}"
        " WHERE id = %(m)s AND stamp >= %(f)s::bigint AND stamp < %(l)s::bigint"
        " ORDER BY stamp"
    )
    for hourly, table in _ROLLUP_TABLE.items()
}

# Periods are the pairs of consecutive edges; each rollup bucket is priced
# by the local day of the week and hour it starts in.
_ENERGY = """
WITH edges AS ({series}),
periods AS (SELECT lo, lead(lo) OVER (ORDER BY lo) AS hi FROM edges)
SELECT p.lo, p.hi, coalesce(sum(r.events), 0),
       coalesce(sum(r.events * (%(prices)s::float8[])[
           extract(isodow FROM to_timestamp(r.stamp / 1000.0) AT TIME ZONE %(tz)s)::integer * 24 - 23
           + extract(hour FROM to_timestamp(r.stamp / 1000.0) AT TIME ZONE %(tz)s)::integer]), 0)
  FROM periods p
  LEFT JOIN {rollup} r ON r.id = %(m)s AND r.stamp >= p.lo AND r.stamp < p.hi
 WHERE p.hi IS NOT NULL AND p.lo < %(l)s::bigint
 GROUP BY p.lo, p.hi
 ORDER BY p.lo
 LIMIT %(n)s
"""
