"""
Every SQL statement blipserver runs, one typed method each.

Parameters are always bound by the driver. Stamps and widths are cast to
BIGINT in the SQL so that arithmetic on them cannot overflow an INTEGER.

:class:`Store` is the daemon's (txpostgres, asynchronous); :class:`SyncStore`
is the commands' (plain psycopg2, blocking). Preparing the database is
written once, as a generator of statements (see :func:`_prepare`), which
both run.
"""

import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generator, Mapping, Optional, Sequence, TypeVar, Union

from psycopg2 import sql
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from blip.db import layouts
from blip.db.layouts import Catalog, Column, Grant, Outcome, Trigger
from blip.db.pool import Pool
from blip.meters import Meter
from blip.model import DEFAULT_METER, Point

Row = tuple[Any, ...]
T = TypeVar("T")

#: Key of the advisory lock that serialises schema changes between nodes.
SCHEMA_LOCK = 0x626C6970  # "blip"
#: Bucket widths of the rollups, in ms.
MINUTE, HOUR = 60_000, 3_600_000
#: Widths of the rollups' buckets in ms, by table.
WIDTHS = {"readings_minutely": MINUTE, "readings_hourly": HOUR}
#: Bounds of a BIGINT stamp.
STAMP_MIN, STAMP_MAX = -(2**63 - 1), 2**63 - 1

#: The channel on which every batch of new points is announced (NOTIFY).
CHANNEL = "blip_points"
#: Most points in one notification. The longest point takes 43 bytes (a
#: 10-digit meter, a 20-character stamp, a 10-digit ms and separators),
#: so a notification stays under PostgreSQL's 8000-byte payload limit.
NOTIFY_POINTS = 180

# The ingest write: insert the points (the rollup trigger counts them) and
# announce those that were new, in the same statement and so the same
# transaction: a notification is delivered when, and only if, its points are
# committed, and points skipped as duplicates (a spool written again) are
# not announced twice. Only this write notifies, not the trigger: history
# loaded with `blip import` or psql is not live and must not reach live
# clients as if the meter had just blinked.
#
# Payload (see blip.live.notify.decode): groups separated by ";", one per
# meter, "<meter>:<stamp>,<ms> <step>,<ms> ..." where each step is the
# stamp's increase over the previous point of the group. Stamps of a meter
# strictly increase, so a step is a small positive number.
_INSERT = (
    "WITH new AS ("
    " INSERT INTO readings (id, stamp, ms)"
    " SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::integer[])"
    " ORDER BY 1, 2"
    " ON CONFLICT DO NOTHING RETURNING id, stamp, ms),"
    " chunked AS ("
    " SELECT id, stamp, ms,"
    f"       (row_number() OVER (ORDER BY id, stamp) - 1) / {NOTIFY_POINTS} AS chunk"
    "  FROM new),"
    " stepped AS ("
    " SELECT chunk, id, stamp, ms,"
    "        stamp - lag(stamp) OVER (PARTITION BY chunk, id ORDER BY stamp) AS step"
    "  FROM chunked),"
    " groups AS ("
    " SELECT chunk, id,"
    "        id || ':' || string_agg(coalesce(step, stamp) || ',' || ms, ' ' ORDER BY stamp) AS text"
    "  FROM stepped GROUP BY chunk, id),"
    " payloads AS ("
    " SELECT string_agg(text, ';' ORDER BY id) AS payload FROM groups GROUP BY chunk)"
    " SELECT (SELECT count(*) FROM new),"
    f"       (SELECT count(pg_notify('{CHANNEL}', payload)) FROM payloads)"
)
# The same without the announcement, for history that is not live.
_INSERT_QUIETLY = (
    "WITH new AS ("
    " INSERT INTO readings (id, stamp, ms)"
    " SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::integer[])"
    " ORDER BY 1, 2"
    " ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT count(*) FROM new"
)


def _array(numbers: list[int]) -> str:
    """
    :return: integers as the text of a PostgreSQL array, ``{1,2,3}``: bound
        as one string, eight times cheaper to build than psycopg2's
        ``ARRAY[...]`` of a list.
    """
    return "{" + ",".join(map(str, numbers)) + "}"


def _pairs(select: str) -> str:
    """
    :return: a statement answering one text: the rows of ``select`` (two
        columns, ordered) as the original's JSON, ``[[a,b],...]``.
        PostgreSQL writes the numbers (as the original sent them: its own
        text of each value), so no row reaches Python. The rows are
        aggregated in the order ``select`` gives them, as PostgreSQL does
        for a sorted subquery under a plain aggregate (its documentation on
        aggregate expressions): an ORDER BY inside string_agg would sort
        them again.
    """
    return (
        "SELECT '[' || coalesce(string_agg('[' || a || ',' || b || ']', ','), '')"
        f" || ']' FROM ({select}) AS r (a, b)"
    )


def _usage(select: str) -> str:
    """
    :return: like :func:`_pairs`, for rows of five columns.
    """
    return (
        "SELECT '[' || coalesce(string_agg('[' || concat_ws(',', a, b, c, d, e) || ']', ','), '')"
        f" || ']' FROM ({select}) AS r (a, b, c, d, e)"
    )


@functools.cache
def schema_sql() -> str:
    """
    :return: the text of ``schema.sql``, read once: the daemon reads it when
        it is built, before twistd --uid/--gid make it a user who may not
        be able to read it.
    """
    # Read beside this module rather than through importlib.resources, which
    # loads more of Python's library on first use.
    return Path(__file__).parent.parent.joinpath("schema.sql").read_text(encoding="utf-8")


class Store:
    """
    The database, as blipserver uses it.

    :param pool: the connections to run statements on.
    """

    log = Logger()

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def apply_schema(self, meter: int = DEFAULT_METER) -> Outcome:
        """
        Bring the database to blipserver's schema in one transaction (see
        :func:`_prepare`: create, upgrade the original's layouts in place,
        or find it current), holding a lock so that nodes starting together
        take turns, and log what was done.

        :param meter: the meter the rows of a single-meter database belong
            to.
        :raise blip.db.layouts.Refused: for a database that is neither empty,
            blipserver's nor the original's; it is left untouched.
        """
        started = self.pool.reactor.seconds()
        outcome: Outcome = await self.pool.runInteraction(
            lambda cursor: Deferred.fromCoroutine(_run(cursor, _prepare(meter)))
        )
        self.log.info(
            "{outcome} ({seconds:.1f} s)",
            outcome=outcome.describe(),
            seconds=self.pool.reactor.seconds() - started,
        )
        return outcome

    async def insert(self, points: Sequence[Point], announce: bool = True) -> int:
        """
        Store points in one statement; the rollup trigger updates the
        minute and hour rollups in the same transaction. Points already
        stored are skipped. The new points are announced on
        :data:`CHANNEL` (see :data:`_INSERT`), delivered when the
        transaction commits.

        :param announce: False for history, which no live client wants.
        :return: how many points were new.
        """
        rows = await self.pool.runQuery(
            _INSERT if announce else _INSERT_QUIETLY,
            (
                _array([p.meter for p in points]),
                _array([p.stamp for p in points]),
                _array([p.ms for p in points]),
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

    async def has_readings_before(self, meter: int, stamp: int) -> bool:
        """
        :return: whether the meter has a reading older than ``stamp``.
        """
        rows = await self.pool.runQuery(
            "SELECT EXISTS (SELECT 1 FROM readings WHERE id = %s AND stamp < %s::bigint)",
            (meter, stamp),
        )
        return bool(rows[0][0])

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
            return str((await self._uncompiled(_pairs(_AGGREGATE_MIXED), params))[0][0])
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
        return await self._text(
            _usage(
                "SELECT stamp, events, wh, min_ms, max_ms FROM usage_hourly"
                " WHERE id = %s AND stamp >= %s::bigint AND stamp <= %s::bigint"
                " ORDER BY stamp"
            ),
            (meter, first, last),
        )

    async def minutely(self, meter: int, first: int, last: int, limit: int) -> str:
        """
        :return: ``[stamp,events,wh,min_ms,max_ms]`` of the first ``limit``
            minutes with ``first <= stamp <= last``, as JSON.
        """
        return await self._text(
            _usage(
                "SELECT stamp, events, wh, min_ms, max_ms FROM usage_minutely"
                " WHERE id = %s AND stamp >= %s::bigint AND stamp <= %s::bigint"
                " ORDER BY stamp LIMIT %s"
            ),
            (meter, first, last, limit),
        )

    async def _text(self, statement: str, params: Any) -> str:
        rows = await self.pool.runQuery(statement, params)
        return str(rows[0][0])

    async def _uncompiled(self, statement: str, params: Any) -> list[Row]:
        """
        :return: the rows of ``statement``, run in a transaction without
            JIT compilation (see :data:`_NO_JIT`).
        """

        async def run(cursor: Any) -> list[Row]:
            await cursor.execute(_NO_JIT)
            await cursor.execute(statement, params)
            return list(cursor.fetchall())

        rows: list[Row] = await self.pool.runInteraction(lambda c: Deferred.fromCoroutine(run(c)))
        return rows

    async def count_since(self, meter: int, since: int) -> int:
        """
        :return: how many points have ``stamp >= since``.
        """
        rows = await self.pool.runQuery(
            "SELECT count(*) FROM readings WHERE id = %s AND stamp >= %s::bigint",
            (meter, since),
        )
        return int(rows[0][0])

    async def blip_totals(self) -> list[tuple[int, int, Optional[int]]]:
        """
        Count every meter's blips ever stored from the hourly rollups (a row
        per hour, where counting readings would read every row), in one
        snapshot with the stamp of its newest reading, so that blips seen
        live can be told apart from those already counted.

        :return: ``(meter, blips, newest stamp or None)`` of each meter with
            rollups.
        """
        rows = await self.pool.runQuery(
            "SELECT h.id, h.events,"
            "       (SELECT max(r.stamp) FROM readings r WHERE r.id = h.id)"
            "  FROM (SELECT id, sum(events)::bigint AS events"
            "          FROM readings_hourly GROUP BY id) h"
            " ORDER BY h.id"
        )
        return [(int(meter), int(events), last) for meter, events, last in rows]

    async def catch_up(self, after: Mapping[int, int], limit: int) -> list[Point]:
        """
        Points newer than those a node knows, to catch up on notifications
        it missed: for each meter of ``after``, its points with a stamp
        above ``after[meter]``; for each other meter with readings, all of
        its points.

        :param after: the newest stamp known of each meter.
        :param limit: the most points returned; ask again from the last
            ones for more.
        :return: the oldest ``limit`` of those points, by meter and stamp.
        """
        ids = list(after)
        rows = await self.pool.runQuery(
            # The meters with readings, by skipping through the primary key.
            "WITH RECURSIVE m AS ("
            "   (SELECT id FROM readings ORDER BY id LIMIT 1)"
            "   UNION ALL"
            "   SELECT (SELECT id FROM readings WHERE id > m.id ORDER BY id LIMIT 1)"
            "     FROM m WHERE m.id IS NOT NULL)"
            " SELECT r.id, r.stamp, r.ms"
            "  FROM m LEFT JOIN unnest(%(ids)s::integer[], %(first)s::bigint[]) AS k (id, first)"
            "    ON k.id = m.id"
            " CROSS JOIN LATERAL (SELECT id, stamp, ms FROM readings"
            "                      WHERE id = m.id"
            "                        AND stamp >= coalesce(k.first, %(min)s::bigint)"
            "                      ORDER BY stamp LIMIT %(limit)s) r"
            " ORDER BY r.id, r.stamp LIMIT %(limit)s",
            {
                "ids": ids,
                "first": [min(after[i] + 1, STAMP_MAX) for i in ids],
                "min": STAMP_MIN,
                "limit": limit,
            },
        )
        return [Point(*row) for row in rows]

    async def ingest_periods(
        self, first: int, last: int, now: Optional[int] = None, fresh: int = 0
    ) -> list[Row]:
        """
        :return: ``(started, ended)`` of every period of any node when ingest
            ran with its source open that overlaps ``[first, last]``, by
            start; a period still open ends at its ``alive_at``, or at
            ``now`` if that is at most ``fresh`` ms before (its node runs).
        """
        return await self.pool.runQuery(
            "SELECT started, until FROM ("
            " SELECT started,"
            "        CASE WHEN ended IS NULL AND alive_at >= %(now)s::bigint - %(fresh)s::bigint"
            "             THEN greatest(alive_at, %(now)s::bigint)"
            "             ELSE coalesce(ended, alive_at) END AS until"
            "   FROM ingest_periods WHERE started <= %(last)s::bigint) AS p"
            " WHERE until >= %(first)s::bigint ORDER BY started",
            {"first": first, "last": last, "now": now, "fresh": fresh},
        )

    async def first_ingest(self) -> Optional[int]:
        """
        :return: when the first recorded period of ingest started (any
            node), or None: before it nothing says whether a logger ran.
        """
        rows = await self.pool.runQuery("SELECT min(started) FROM ingest_periods")
        return None if rows[0][0] is None else int(rows[0][0])

    async def save_meters(self, meters: Sequence[Meter]) -> None:
        """
        Write the settings of configured meters, replacing those stored; a
        stored description stays unless the meter has one of its own.
        """
        await self.pool.runOperation(_SAVE_METERS, _meter_columns(meters))

    async def note_meter(self, meter: Meter) -> None:
        """
        Record a meter seen on the serial line (with the given settings if
        it is new) and its description, if it has one.
        """
        await self.pool.runOperation(_NOTE_METER, _meter_row(meter))

    async def meters(self) -> list[Meter]:
        """
        :return: every meter of the meters table, by id.
        """
        return [_meter(row) for row in await self.pool.runQuery(_METERS)]

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
        since: int,
    ) -> list[Row]:
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
        # Minutes from since to the first whole hour, hours up to the last,
        # minutes from there; minutes throughout without whole hours.
        since -= since % 60_000
        whole_from = -(-since // 3_600_000) * 3_600_000
        whole_to = last - last % 3_600_000
        if not hourly or whole_from >= whole_to:
            whole_from = whole_to = last
        return await self._uncompiled(
            _ENERGY.format(series=series),
            {
                "m": meter, "tz": zone, "f": first, "l": last, "unit": period,
                "step": f"1 {period}", "prices": week_prices, "n": limit,
                "s": since, "hf": whole_from, "ht": whole_to,
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

# The planner's guesses for the lateral index ranges of _AGGREGATE_MIXED
# and _ENERGY (and the rows of generate_series) price queries of a few ms
# high enough that PostgreSQL 11+ would spend 150 ms and more compiling
# them: they run with JIT off for their transaction (PostgreSQL 10 has no
# such setting, and no JIT).
_NO_JIT = (
    "SELECT set_config('jit', 'off', true)"
    " WHERE current_setting('server_version_num')::integer >= 110000"
)

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


async def listen(connection: Any) -> None:
    """
    Subscribe ``connection`` to :data:`CHANNEL`. It must be a connection of
    its own, never a pool's: a subscription belongs to its connection.

    :param connection: an open :class:`txpostgres.txpostgres.Connection`.
    """
    await connection.runOperation(f"LISTEN {CHANNEL}")


# --- Preparing the database: detect its layout, upgrade, apply schema.sql ---


@dataclass(frozen=True, slots=True)
class Statement:
    """
    One statement of a program.

    :param text: the SQL (identifiers composed with :mod:`psycopg2.sql`).
    :param params: its parameters; None runs the text as it is (no ``%``
        processing), as ``schema.sql`` needs.
    """

    text: Union[str, sql.Composable]
    params: Any = None


@dataclass(frozen=True, slots=True)
class Result:
    """
    What a statement of a program returned.

    :param rows: its rows (empty for statements without a result).
    :param count: how many rows it returned or changed.
    """

    rows: list[Row]
    count: int


#: A generator that yields statements, is sent their results, and returns
#: a value; a driver runs it inside one transaction.
Program = Generator[Statement, Result, T]

_RELATIONS = (
    "SELECT c.relname::text, c.relkind::text FROM pg_class c"
    "  JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"
)
_COLUMNS = (
    "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),"
    "       a.attnotnull"
    "  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
    "  JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = current_schema() AND c.relname::text = ANY(%s)"
    "   AND a.attnum > 0 AND NOT a.attisdropped"
    " ORDER BY c.relname, a.attnum"
)
_PRIMARY_KEYS = (
    "SELECT c.relname::text, k.conname::text,"
    "       array(SELECT a.attname::text"
    "               FROM unnest(k.conkey) WITH ORDINALITY u(num, i)"
    "               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.num"
    "              ORDER BY u.i)"
    "  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
    "  JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE k.contype = 'p' AND n.nspname = current_schema()"
    "   AND c.relname::text = ANY(%s)"
)
_TRIGGERS = (
    "SELECT t.tgname::text, fn.nspname::text, f.proname::text,"
    "       f.prosrc ~* 'readings_(hourly|minutely)',"
    "       (SELECT count(*) FROM pg_trigger o WHERE o.tgfoid = t.tgfoid)"
    "  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
    "  JOIN pg_namespace n ON n.oid = c.relnamespace"
    "  JOIN pg_proc f ON f.oid = t.tgfoid"
    "  JOIN pg_namespace fn ON fn.oid = f.pronamespace"
    " WHERE n.nspname = current_schema() AND c.relname = 'readings'"
    "   AND NOT t.tgisinternal"
    " ORDER BY t.tgname"
)
_GRANTS = (
    "SELECT c.relname::text,"
    "       CASE WHEN g.grantee = 0 THEN NULL ELSE pg_get_userbyid(g.grantee)::text END,"
    "       g.privilege_type"
    "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,"
    "       aclexplode(c.relacl) g"
    " WHERE n.nspname = current_schema() AND c.relname::text = ANY(%s)"
    "   AND g.grantee <> c.relowner"
    " ORDER BY 1, 2, 3"
)
_VERSION = "SELECT max(version) FROM blip_schema"
_RECORD_VERSION = (
    "INSERT INTO blip_schema (version, applied, note)"
    " VALUES (%s, (extract(epoch FROM now()) * 1000)::bigint, %s)"
    " ON CONFLICT (version) DO NOTHING"
)
#: Privileges that may be granted on a view again after it was recreated.
_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"})


def _read_catalog() -> Program[Catalog]:
    """
    Read what :func:`blip.db.layouts.detect` needs to know.
    """
    known = list(layouts.KNOWN)
    relations: dict[str, str] = dict((yield Statement(_RELATIONS)).rows)
    columns: dict[str, list[Column]] = {}
    for table, name, type_, not_null in (yield Statement(_COLUMNS, (known,))).rows:
        columns.setdefault(table, []).append(Column(name, type_, not_null))
    keys = {
        table: (name, tuple(names))
        for table, name, names in (yield Statement(_PRIMARY_KEYS, (known,))).rows
    }
    triggers = tuple(Trigger(*row) for row in (yield Statement(_TRIGGERS)).rows)
    grants = tuple(
        Grant(*row) for row in (yield Statement(_GRANTS, (list(layouts.VIEWS),))).rows
    )
    version = None
    if "blip_schema" in relations:
        version = (yield Statement(_VERSION)).rows[0][0]
    return Catalog(
        relations, {t: tuple(c) for t, c in columns.items()}, keys, triggers, grants, version
    )


def _prepare(meter: int) -> Program[Outcome]:
    """
    Bring the database to blipserver's schema, in the caller's transaction:
    create it in an empty database, upgrade the original's layouts in place
    (ordered steps, from the version found), apply ``schema.sql`` (which
    changes nothing where it is already applied), and record the version.

    :param meter: the meter the rows of a single-meter database belong to.
    :raise blip.db.layouts.Refused: before changing anything, for a database
        that is not one of these.
    """
    yield Statement("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
    # An upgrade of years of readings takes minutes: a statement timeout
    # set for the role would cancel it at every start.
    yield Statement("SET LOCAL statement_timeout = 0")
    catalog = yield from _read_catalog()
    before = layouts.detect(catalog)
    original = before in (layouts.ORIGINAL_SINGLE, layouts.ORIGINAL_MULTI)
    grants = catalog.grants
    notes: list[str] = []
    if before == layouts.ORIGINAL_SINGLE:
        notes += yield from _add_meter_ids(catalog, meter)
        catalog = yield from _read_catalog()
    if original:
        notes += yield from _replace_original_rollups(catalog)
    yield Statement(schema_sql())
    if original:
        notes += yield from _grant_again(grants)
        notes += yield from _recompute_rollups()
    if catalog.version is None:
        note = LAYOUTS_NOTE.get(before, "created")
        yield Statement(_RECORD_VERSION, (layouts.SCHEMA_VERSION, note))
        if before == layouts.SCHEMA_VERSION:
            notes.append("recorded its version")
    return Outcome(before, tuple(notes))


#: What the version row says of where the schema came from.
LAYOUTS_NOTE = {
    None: "created",
    layouts.ORIGINAL_SINGLE: "upgraded from the original single-meter layout",
    layouts.ORIGINAL_MULTI: "upgraded from the original multi-meter layout",
    layouts.SCHEMA_VERSION: "recorded for a database made before versions were recorded",
}


def _drop_views() -> Program[None]:
    # The views depend on the columns the steps change; schema.sql makes
    # them again. Without CASCADE: a view of the user's built on them stops
    # the upgrade with PostgreSQL's message, and nothing is changed.
    yield Statement("DROP VIEW IF EXISTS usage_minutely, usage_hourly")


def _add_meter_ids(catalog: Catalog, meter: int) -> Program[list[str]]:
    """
    Step 1 to 2: give every row of the single-meter layout a meter id (a
    change of the catalog only: no row is rewritten).
    """
    yield Statement("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
    yield from _drop_views()
    for table in (layouts.READINGS, *catalog.rollups()):
        name = sql.Identifier(table)
        yield Statement(
            sql.SQL("ALTER TABLE {} ADD COLUMN id INTEGER NOT NULL DEFAULT %s").format(name),
            (meter,),
        )
        yield Statement(sql.SQL("ALTER TABLE {} ALTER COLUMN id DROP DEFAULT").format(name))
    return [f"gave every reading and rollup row meter id {meter}"]


def _replace_original_rollups(catalog: Catalog) -> Program[list[str]]:
    """
    Step 2 to 3, before ``schema.sql``: drop the original's per-row
    trigger (with blipserver's as well, every row would be counted twice),
    and give readings and the rollups blipserver's types, NOT NULLs and
    keys, in place (their privileges stay).
    """
    notes = []
    yield Statement("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
    dropped: dict[tuple[str, str], int] = {}
    for trigger in catalog.original_triggers():
        yield Statement(
            sql.SQL("DROP TRIGGER {} ON readings").format(sql.Identifier(trigger.name))
        )
        function = (trigger.function_schema, trigger.function)
        dropped[function] = dropped.get(function, 0) + 1
        notes.append(f"dropped the original's per-row trigger {trigger.name}")
    for trigger in catalog.original_triggers():
        function = (trigger.function_schema, trigger.function)
        if dropped.pop(function, None) == trigger.function_uses:
            yield Statement(sql.SQL("DROP FUNCTION {}.{}()").format(*map(sql.Identifier, function)))
            notes.append(f"dropped its function {trigger.function}()")
    others = [t.name for t in catalog.triggers if not t.writes_rollups and not t.is_blips]
    if others:
        notes.append(f"left the other triggers on readings alone ({', '.join(others)})")
    yield from _drop_views()
    names = [c.name for c in catalog.columns[layouts.READINGS] if not c.not_null]
    if "ms" in names:
        gone = (yield Statement("DELETE FROM readings WHERE ms IS NULL")).count
        if gone:
            notes.append(f"deleted {gone} readings without ms")
    notes += yield from _conform(catalog, layouts.READINGS, layouts.READINGS_TYPES)
    for table in catalog.rollups():
        gone = (yield Statement(sql.SQL(
            "DELETE FROM {} WHERE events IS NULL OR sum_ms IS NULL OR min_ms IS NULL"
            " OR max_ms IS NULL OR events <= 0 OR sum_ms <= 0"
        ).format(sql.Identifier(table)))).count
        if gone:
            notes.append(f"deleted {gone} incomplete rows of {table}")
        notes += yield from _conform(catalog, table, layouts.ROLLUP_TYPES)
    if not catalog.has("readings_minutely"):
        notes.append("created readings_minutely")
    return notes


def _conform(catalog: Catalog, table: str, types: dict[str, str]) -> Program[list[str]]:
    """
    Give a table's columns blipserver's types and NOT NULLs (one ALTER, so
    at most one rewrite) and its primary key ``(id, stamp)``.
    """
    notes = []
    changes = []
    for column in catalog.columns[table]:
        name = sql.Identifier(column.name)
        target = types[column.name]
        if column.type != target:
            changes.append(sql.SQL("ALTER COLUMN {} TYPE " + target).format(name))
            wider = target == "bigint" or column.type == "smallint"
            notes.append(f"{'widened' if wider else 'changed'} {table}.{column.name} to {target.upper()}")
        if not column.not_null:
            changes.append(sql.SQL("ALTER COLUMN {} SET NOT NULL").format(name))
    table_name = sql.Identifier(table)
    if changes:
        yield Statement(sql.SQL("ALTER TABLE {} ").format(table_name) + sql.SQL(", ").join(changes))
    key = catalog.primary_keys.get(table)
    if key is None or key[1] != ("id", "stamp"):
        if key is not None:
            yield Statement(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table_name, sql.Identifier(key[0]))
            )
        yield Statement(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, stamp)").format(table_name))
        notes.append(f"keyed {table} by (id, stamp)")
    return notes


def _grant_again(grants: Sequence[Grant]) -> Program[list[str]]:
    """
    Give the views recreated by ``schema.sql`` the privileges the
    original's had (a dashboard's read-only role, say).
    """
    count = 0
    for grant in grants:
        if grant.privilege not in _PRIVILEGES:
            continue
        role = sql.SQL("PUBLIC") if grant.role is None else sql.Identifier(grant.role)
        yield Statement(
            sql.SQL("GRANT " + grant.privilege + " ON {} TO {}").format(sql.Identifier(grant.view), role)
        )
        count += 1
    return [f"granted {count} privileges on the views again"] if count else []


def _recompute_rollups() -> Program[list[str]]:
    """
    Step 2 to 3, after ``schema.sql``: recompute both rollups from readings
    for every meter. Rows older than a meter's first reading (history whose
    readings were deleted) are kept.
    """
    every = {"meter": None, "start": STAMP_MIN, "end": STAMP_MAX}
    counts = []
    for statement in _rebuild_statements():
        counts.append((yield Statement(statement, every)).count)
    kept = []
    for table, width in WIDTHS.items():
        rows = (yield Statement(_HISTORY_ALL.format(table=sql.Identifier(table), width=sql.Literal(width)))).rows
        if rows[0][0]:
            kept.append(f"kept {rows[0][0]} rows of {table} older than the first reading")
    minutes, stale_minutes, hours, stale_hours = counts
    return [
        f"recomputed the rollups from readings ({minutes} minute and {hours} hour rows"
        f" written or corrected, {stale_minutes + stale_hours} without readings removed)",
        *kept,
    ]


# Rollups are recomputed from readings by these four statements, for one
# meter or all (meter NULL) and a range of stamps: minutes from readings,
# then hours from those minutes, each followed by removing rows whose bucket
# has no readings or is not aligned. Rows whose bucket ends at or before
# the meter's first reading are history and never touched. Only rows that
# change are written, so their counts say how many were wrong.
_MINUTES_FROM_READINGS = sql.SQL(
    "INSERT INTO readings_minutely AS t (id, stamp, events, sum_ms, min_ms, max_ms)"
    " SELECT id, stamp - stamp %% 60000, count(*), sum(ms), min(ms), max(ms)"
    "   FROM readings"
    "  WHERE (%(meter)s::integer IS NULL OR id = %(meter)s)"
    "    AND stamp >= %(start)s::bigint AND stamp < %(end)s::bigint"
    "  GROUP BY 1, 2"
    " ON CONFLICT (id, stamp) DO UPDATE"
    "    SET events = excluded.events, sum_ms = excluded.sum_ms,"
    "        min_ms = excluded.min_ms, max_ms = excluded.max_ms"
    "  WHERE (t.events, t.sum_ms, t.min_ms, t.max_ms) IS DISTINCT FROM"
    "        (excluded.events, excluded.sum_ms, excluded.min_ms, excluded.max_ms)"
)
_HOURS_FROM_MINUTES = sql.SQL(
    "INSERT INTO readings_hourly AS t (id, stamp, events, sum_ms, min_ms, max_ms)"
    " SELECT id, stamp - stamp %% 3600000, sum(events), sum(sum_ms), min(min_ms), max(max_ms)"
    "   FROM readings_minutely m"
    "  WHERE (%(meter)s::integer IS NULL OR id = %(meter)s)"
    "    AND stamp >= %(start)s::bigint AND stamp < %(end)s::bigint"
    "    AND stamp + 60000 > (SELECT min(r.stamp) FROM readings r WHERE r.id = m.id)"
    "  GROUP BY 1, 2"
    " ON CONFLICT (id, stamp) DO UPDATE"
    "    SET events = excluded.events, sum_ms = excluded.sum_ms,"
    "        min_ms = excluded.min_ms, max_ms = excluded.max_ms"
    "  WHERE (t.events, t.sum_ms, t.min_ms, t.max_ms) IS DISTINCT FROM"
    "        (excluded.events, excluded.sum_ms, excluded.min_ms, excluded.max_ms)"
)
_STALE = sql.SQL(
    "DELETE FROM {table} t"
    " WHERE (%(meter)s::integer IS NULL OR t.id = %(meter)s)"
    "   AND t.stamp >= %(start)s::bigint AND t.stamp < %(end)s::bigint"
    "   AND t.stamp + {width} > (SELECT min(r.stamp) FROM readings r WHERE r.id = t.id)"
    "   AND (t.stamp %% {width} <> 0"
    "        OR NOT EXISTS (SELECT 1 FROM readings r WHERE r.id = t.id"
    "                        AND r.stamp >= t.stamp AND r.stamp < t.stamp + {width}))"
)
_HISTORY_ALL = sql.SQL(
    "SELECT count(*) FROM {table} t"
    " WHERE t.stamp + {width} <= coalesce("
    "       (SELECT min(r.stamp) FROM readings r WHERE r.id = t.id), 9223372036854775807)"
)


def _rebuild_statements() -> list[sql.Composable]:
    """
    :return: the four statements that recompute the rollups, in order.
    """
    return [
        _MINUTES_FROM_READINGS,
        _STALE.format(table=sql.Identifier("readings_minutely"), width=sql.Literal(60_000)),
        _HOURS_FROM_MINUTES,
        _STALE.format(table=sql.Identifier("readings_hourly"), width=sql.Literal(3_600_000)),
    ]


async def _run(cursor: Any, program: Program[T]) -> T:
    """
    Run a program on a txpostgres cursor, in its transaction.
    """
    result: Optional[Result] = None
    while True:
        try:
            statement = program.send(result)  # type: ignore[arg-type]
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await cursor.execute(statement.text, statement.params)
        result = Result(cursor.fetchall() if cursor.description else [], cursor.rowcount)


def _run_sync(cursor: Any, program: Program[T]) -> T:
    """
    Run a program on a psycopg2 cursor, in its transaction.
    """
    result: Optional[Result] = None
    while True:
        try:
            statement = program.send(result)  # type: ignore[arg-type]
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        cursor.execute(statement.text, statement.params)
        result = Result(cursor.fetchall() if cursor.description else [], cursor.rowcount)


# --- Meters ---

_METER_COLUMNS = "id, label, description, pulses_per_kwh, multiplier, price_per_kwh, currency, timezone"
_SAVE_METERS = (
    f"INSERT INTO meters AS m ({_METER_COLUMNS})"
    " SELECT * FROM unnest(%s::integer[], %s::text[], %s::text[], %s::float8[],"
    "                      %s::float8[], %s::float8[], %s::text[], %s::text[])"
    " ON CONFLICT (id) DO UPDATE"
    "    SET label = excluded.label,"
    "        description = CASE WHEN excluded.description <> '' THEN excluded.description"
    "                           ELSE m.description END,"
    "        pulses_per_kwh = excluded.pulses_per_kwh, multiplier = excluded.multiplier,"
    "        price_per_kwh = excluded.price_per_kwh, currency = excluded.currency,"
    "        timezone = excluded.timezone"
)
_NOTE_METER = (
    f"INSERT INTO meters AS m ({_METER_COLUMNS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO UPDATE SET description = excluded.description"
    "  WHERE excluded.description <> '' AND excluded.description <> m.description"
)
_METERS = f"SELECT {_METER_COLUMNS} FROM meters ORDER BY id"


_METER_FIELDS = [name.strip() for name in _METER_COLUMNS.split(",")]


def _meter_row(meter: Meter) -> tuple[Any, ...]:
    return tuple(getattr(meter, name) for name in _METER_FIELDS)


def _meter_columns(meters: Sequence[Meter]) -> tuple[list[Any], ...]:
    return tuple([getattr(m, name) for m in meters] for name in _METER_FIELDS)


def _meter(row: Row) -> Meter:
    return Meter(**dict(zip(_METER_FIELDS, row)))


# --- The commands' statements (blocking psycopg2) ---

_METER_IDS = (
    # Every meter with readings, by skipping through the primary key
    # (a DISTINCT would read every row), or with rollups.
    "WITH RECURSIVE r AS ("
    "   (SELECT id FROM readings ORDER BY id LIMIT 1)"
    "   UNION ALL"
    "   SELECT (SELECT id FROM readings WHERE id > r.id ORDER BY id LIMIT 1)"
    "     FROM r WHERE r.id IS NOT NULL)"
    " SELECT id FROM r WHERE id IS NOT NULL"
    " UNION SELECT id FROM readings_hourly"
    " UNION SELECT id FROM readings_minutely"
    " ORDER BY 1"
)
_SPAN = (
    "SELECT (SELECT min(stamp) FROM readings WHERE id = %(m)s),"
    "       (SELECT max(stamp) FROM readings WHERE id = %(m)s),"
    "       greatest((SELECT max(stamp) FROM readings_minutely WHERE id = %(m)s),"
    "                (SELECT max(stamp) FROM readings_hourly WHERE id = %(m)s))"
)
_MISMATCHES = sql.SQL(
    "WITH counted AS ("
    "  SELECT stamp - stamp %% {width} AS stamp, count(*) AS events, sum(ms) AS sum_ms,"
    "         min(ms) AS min_ms, max(ms) AS max_ms"
    "    FROM readings"
    "   WHERE id = %(meter)s AND stamp >= %(start)s::bigint AND stamp < %(end)s::bigint"
    "   GROUP BY 1),"
    " stored AS ("
    "  SELECT stamp, events, sum_ms, min_ms, max_ms FROM {table}"
    "   WHERE id = %(meter)s AND stamp >= %(start)s::bigint AND stamp < %(end)s::bigint"
    "     AND stamp + {width} > %(first)s::bigint)"
    " SELECT coalesce(c.stamp, s.stamp), c.events, c.sum_ms, c.min_ms, c.max_ms,"
    "        s.events, s.sum_ms, s.min_ms, s.max_ms"
    "   FROM counted c FULL JOIN stored s ON s.stamp = c.stamp"
    "  WHERE (c.events, c.sum_ms, c.min_ms, c.max_ms) IS DISTINCT FROM"
    "        (s.events, s.sum_ms, s.min_ms, s.max_ms)"
    "  ORDER BY 1"
)
_HISTORY = sql.SQL(
    "SELECT count(*) FROM {table} WHERE id = %(meter)s AND stamp + {width} <= %(first)s::bigint"
)
_IMPORT_TABLE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS blip_import"
    " (stamp BIGINT NOT NULL, ms INTEGER NOT NULL) ON COMMIT DELETE ROWS"
)
_IMPORT_COPY = "COPY blip_import (stamp, ms) FROM STDIN"
_IMPORT = (
    "INSERT INTO readings (id, stamp, ms)"
    " SELECT %s, stamp, ms FROM blip_import ORDER BY stamp"
    " ON CONFLICT DO NOTHING"
)
_EXPORT = (
    "SELECT stamp, ms FROM readings"
    " WHERE id = %s AND stamp >= %s::bigint AND stamp <= %s::bigint ORDER BY stamp"
)


class SyncStore:
    """
    The statements the commands run, on a plain (blocking) psycopg2
    connection; each method is one transaction.

    :param connection: an open psycopg2 connection, not in autocommit.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def apply_schema(self, meter: int = DEFAULT_METER) -> Outcome:
        """
        Prepare the database exactly as the daemon does at start (see
        :meth:`Store.apply_schema`).
        """
        with self.connection, self.connection.cursor() as cursor:
            return _run_sync(cursor, _prepare(meter))

    def layout(self) -> Optional[int]:
        """
        Tell the database's layout without changing anything.

        :return: its schema version, or None when it is empty.
        :raise blip.db.layouts.Refused: for a database blipserver cannot use.
        """
        with self.connection, self.connection.cursor() as cursor:
            return layouts.detect(_run_sync(cursor, _read_catalog()))

    def meter_ids(self) -> list[int]:
        """
        :return: the id of every meter with readings or rollups.
        """
        return [row[0] for row in self._rows(_METER_IDS)]

    def span(self, meter: int) -> tuple[Optional[int], Optional[int], Optional[int]]:
        """
        :return: the meter's first and last reading's stamps and its last
            rollup bucket's, each None if there is none.
        """
        first, last, rolled = self._rows(_SPAN, {"m": meter})[0]
        return first, last, rolled

    def rebuild(self, meter: int, start: int, end: int) -> tuple[int, int]:
        """
        Recompute a meter's rollups from its readings with ``start <= stamp <
        end`` (hour-aligned) in one transaction. Writers of readings wait
        meanwhile, so none of their rows is missed or counted twice.

        :return: how many minute rows and hour rows were written, corrected
            or removed.
        """
        params = {"meter": meter, "start": start, "end": end}
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute("LOCK TABLE readings IN SHARE ROW EXCLUSIVE MODE")
            counts = []
            for statement in _rebuild_statements():
                cursor.execute(statement, params)
                counts.append(cursor.rowcount)
        return counts[0] + counts[1], counts[2] + counts[3]

    def mismatches(self, table: str, meter: int, start: int, end: int, first: int) -> list[Row]:
        """
        Compare a rollup table with a recount of readings, for one meter and
        ``start <= stamp < end``; buckets ending at or before ``first`` (the
        meter's first reading) are history and left out.

        :return: ``(stamp, events, sum_ms, min_ms, max_ms)`` counted from
            readings followed by the same stored, for each bucket where they
            differ (None where a side has no row), by stamp.
        """
        statement = _MISMATCHES.format(table=sql.Identifier(table), width=sql.Literal(WIDTHS[table]))
        return self._rows(statement, {"meter": meter, "start": start, "end": end, "first": first})

    def history(self, table: str, meter: int, first: int) -> int:
        """
        :return: how many rows of a rollup table are history: their bucket
            ends at or before ``first``, the meter's first reading.
        """
        statement = _HISTORY.format(table=sql.Identifier(table), width=sql.Literal(WIDTHS[table]))
        return int(self._rows(statement, {"meter": meter, "first": first})[0][0])

    def note_meter(self, meter: Meter) -> None:
        """
        Add a meter to the meters table unless it is there.
        """
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute(_NOTE_METER, _meter_row(meter))

    def import_points(self, meter: int, points: Sequence[tuple[int, int]]) -> int:
        """
        Store ``(stamp, ms)`` points of one meter in one transaction, skipping
        those already stored; the rollup trigger counts the new ones.

        :return: how many were new.
        """
        text = "".join(f"{stamp}\t{ms}\n" for stamp, ms in points)
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute(_IMPORT_TABLE)
            cursor.copy_expert(_IMPORT_COPY, io.StringIO(text))
            cursor.execute(_IMPORT, (meter,))
            return int(cursor.rowcount)

    def export(self, meter: int, first: int, last: int, out: IO[bytes]) -> None:
        """
        Write a meter's points with ``first <= stamp <= last`` to ``out`` as
        CSV with a ``stamp,ms`` header, oldest first. PostgreSQL streams the
        rows (COPY), so memory stays constant for any range.
        """
        with self.connection, self.connection.cursor() as cursor:
            query = cursor.mogrify(_EXPORT, (meter, first, last)).decode()
            cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)", out)

    def _rows(self, statement: Any, params: Any = None) -> list[Row]:
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute(statement, params)
            rows: list[Row] = cursor.fetchall()
            return rows
