"""
The queries behind ``/api/v1``: raw points a keyset page at a time (as
rows, or as text the database writes for exports), the rollups summed into
buckets, blips per calendar period for energy and cost, and the silences
and context the gaps are made of (classified by the record of ingest
periods: see :mod:`blip.ingest.downtime`).

Ranges are half-open: ``first <= stamp < last``, in unix ms.
"""

from typing import NamedTuple, Optional

from blip.db.queries import Queries, uncompiled


class PointsText(NamedTuple):
    """
    One keyset page of points, written out by the database.

    :param text: the points as CSV lines or JSON pairs.
    :param size: how many points it holds.
    :param last: the stamp of the last, None when there are none.
    """

    text: str
    size: int
    last: Optional[int]


class Rollup(NamedTuple):
    """
    The blips of one bucket.

    :param stamp: unix ms the bucket starts.
    :param events: how many blips.
    :param sum_ms: the sum of their ms.
    :param min_ms: the shortest ms.
    :param max_ms: the longest ms.
    """

    stamp: int
    events: int
    sum_ms: int
    min_ms: int
    max_ms: int


class PeriodBlips(NamedTuple):
    """
    The blips of one calendar period.

    :param start: unix ms the period starts.
    :param end: unix ms the next period starts.
    :param blips: how many blips.
    :param priced: the blips, each weighted by the price of a kWh at its
        time.
    """

    start: int
    end: int
    blips: int
    priced: float


class GapContext(NamedTuple):
    """
    What tells the gaps of a range from its edges.

    :param before: the stamp of the last point before the range.
    :param first_in: the stamp of the first point in it.
    :param last_in: the stamp of the last point in it.
    :param after: the stamp of the first point from its end on.
    :param mean_ms: the mean blip interval over the hours of the range.

    Each is None when there is no such point (or no blip).
    """

    before: Optional[int]
    first_in: Optional[int]
    last_in: Optional[int]
    after: Optional[int]
    mean_ms: Optional[float]


class Silence(NamedTuple):
    """
    Two consecutive points of a meter far apart.

    :param start: the stamp of the first.
    :param end: the stamp of the second.
    """

    start: int
    end: int


class V1Queries(Queries):
    """
    The rows the modern API computes its series from.

    :param pool: the connections to run statements on.
    """

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

    async def points_text(
        self, meter: int, first: int, last: int, limit: int, csv: bool
    ) -> PointsText:
        """
        One keyset page of points, written out by the database: CSV lines
        ``stamp,ms`` (each ending in CRLF), or JSON pairs ``[stamp,ms]``
        separated by commas.

        :return: the text, how many points it holds, and the stamp of the
            last.
        """
        rows = await self.pool.runQuery(
            _POINTS_TEXT[csv], {"m": meter, "f": first, "l": last, "n": limit}
        )
        text, count, final = rows[0]
        return PointsText(text or "", int(count), final)

    async def rollups(self, meter: int, hourly: bool, first: int, last: int) -> list[Rollup]:
        """
        :param hourly: the hourly rollups if true, else the minutely.
        :return: each bucket with ``first <= stamp < last``.
        """
        rows = await self.pool.runQuery(
            _ROLLUPS[hourly], {"m": meter, "f": first, "l": last}
        )
        return list(map(Rollup._make, rows))

    async def wide_buckets(self, meter: int, origin: int, width: int, last: int) -> list[Rollup]:
        """
        Sum the hourly rollups into buckets of ``width`` ms (a whole number
        of hours) from ``origin`` (a whole hour).

        :return: each bucket holding hours with ``origin <= stamp < last``.
        """
        rows = await self.pool.runQuery(
            "SELECT %(o)s::bigint + %(w)s::bigint * ((stamp - %(o)s::bigint) / %(w)s::bigint) AS b,"
            "       sum(events), sum(sum_ms)::bigint, min(min_ms), max(max_ms)"
            "  FROM readings_hourly"
            " WHERE id = %(m)s AND stamp >= %(o)s::bigint AND stamp < %(l)s::bigint"
            " GROUP BY b ORDER BY b",
            {"m": meter, "o": origin, "w": width, "l": last},
        )
        return list(map(Rollup._make, rows))

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
        since: int,
    ) -> list[PeriodBlips]:
        """
        Blips per calendar period in a time zone, from the rollups.

        :param period: ``hour``, ``day``, ``week``, ``month`` or ``year``.
        :param zone: the IANA zone of the calendar.
        :param first: an instant in the first period; for hours, the start
            of the first (local hours need not start on UTC hours).
        :param last: periods that start before this are counted; blips
            after its minute are not.
        :param week_prices: the price of a kWh in each hour of the week,
            Monday 00-01 first, in local time.
        :param hourly: sum the hourly rollups for the whole hours of the
            range (right when every offset of the zone is a whole number of
            hours) and the minutely for the partial ones at its ends, else
            the minutely throughout.
        :param since: blips before its minute are not counted.
        :return: the first ``limit`` periods, empty ones included.
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
        # Minutes from since to the first whole hour, hours up to the last,
        # minutes from there; minutes throughout without whole hours.
        since -= since % 60_000
        whole_from = -(-since // 3_600_000) * 3_600_000
        whole_to = last - last % 3_600_000
        if not hourly or whole_from >= whole_to:
            whole_from = whole_to = last
        rows = await uncompiled(
            self.pool,
            _ENERGY.format(series=series),
            {
                "m": meter, "tz": zone, "f": first, "l": last, "unit": period,
                "step": f"1 {period}", "prices": week_prices, "n": limit,
                "s": since, "hf": whole_from, "ht": whole_to,
            },
        )
        return list(map(PeriodBlips._make, rows))

    async def gap_context(self, meter: int, first: int, last: int) -> GapContext:
        """
        :return: the stamp of the last point before ``first``, of the first
            and the last point in ``[first, last)``, of the first point from
            ``last`` on, and the mean blip interval over the hours of the
            range.
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
        return GapContext._make(rows[0])

    async def silences(
        self, meter: int, first: int, last: int, before: int, longer: int, limit: int
    ) -> list[Silence]:
        """
        :param before: the stamp taken as the point before the first one
            of the range.
        :return: the first ``limit`` pairs of consecutive points more than
            ``longer`` ms apart whose second is in ``[first, last)``.
        """
        rows = await self.pool.runQuery(
            "SELECT a, b FROM ("
            "  SELECT lag(stamp, 1, %(p)s::bigint) OVER (ORDER BY stamp) AS a, stamp AS b"
            "    FROM readings WHERE id = %(m)s"
            "     AND stamp >= %(f)s::bigint AND stamp < %(l)s::bigint) s"
            " WHERE b - a > %(g)s::bigint ORDER BY b LIMIT %(n)s",
            {"m": meter, "f": first, "l": last, "p": before, "g": longer, "n": limit},
        )
        return list(map(Silence._make, rows))

    async def long_silences(
        self, meter: int, first: int, last: int, longer: int, limit: int
    ) -> list[Silence]:
        """
        Like :meth:`silences` for ``longer`` of two minutes or more, found
        from the minute rollups: such a silence holds a whole empty minute,
        so only the points next to empty minutes are read, whatever the
        number of points in the range. The silence that ends at the first
        point of the range is left out when the point before lies before
        the minute of ``first``.
        """
        rows = await self.pool.runQuery(
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
        return list(map(Silence._make, rows))


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
  LEFT JOIN LATERAL (
      SELECT stamp, events FROM readings_minutely
       WHERE id = %(m)s AND stamp >= greatest(p.lo, %(s)s::bigint) AND stamp < least(p.hi, %(hf)s::bigint)
      UNION ALL
      SELECT stamp, events FROM readings_hourly
       WHERE id = %(m)s AND stamp >= greatest(p.lo, %(hf)s::bigint) AND stamp < least(p.hi, %(ht)s::bigint)
      UNION ALL
      SELECT stamp, events FROM readings_minutely
       WHERE id = %(m)s AND stamp >= greatest(p.lo, %(ht)s::bigint) AND stamp < least(p.hi, %(l)s::bigint)
  ) r ON true
 WHERE p.hi IS NOT NULL AND p.lo < %(l)s::bigint
 GROUP BY p.lo, p.hi
 ORDER BY p.lo
 LIMIT %(n)s
"""
