"""
The readings as they arrive: the ingest's write, which announces the new
points on :data:`CHANNEL` (NOTIFY), the subscription to it (LISTEN), and
the reads that let a node, a live client or a publisher catch up with what
is stored.
"""

from datetime import datetime
from typing import Any, Mapping, NamedTuple, Optional, Sequence

from blip.db.partitions import ensure_months
from blip.db.program import run_in
from blip.db.queries import METERS_WITH_ROLLUPS, Queries
from blip.model import STAMP_MAX, STAMP_MIN, Point

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
# The last column says which server committed them: when its postmaster
# started, different for every server of a list, and after a restart.
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
    f"       (SELECT count(pg_notify('{CHANNEL}', payload)) FROM payloads),"
    "        pg_postmaster_start_time()"
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


def _arrays(points: Sequence[Point]) -> tuple[str, str, str]:
    """
    :return: the meters, stamps and ms of ``points``, as the arrays the
        inserts take.
    """
    return (
        _array([p.meter for p in points]),
        _array([p.stamp for p in points]),
        _array([p.ms for p in points]),
    )


class Committed(NamedTuple):
    """
    What a write of the ingest committed.

    :param new: how many of its points were new.
    :param server: which server committed it: when that server started
        (another server of a list of hosts, or the same one restarted,
        starts at another time).
    """

    new: int
    server: datetime


class BlipTotal(NamedTuple):
    """
    How many blips of a meter are stored.

    :param meter: the meter.
    :param blips: its blips ever stored.
    :param newest: the stamp of its newest reading, None without readings.
    """

    meter: int
    blips: int
    newest: Optional[int]


async def listen(connection: Any) -> None:
    """
    Subscribe ``connection`` to :data:`CHANNEL`. It must be a connection of
    its own, never a pool's: a subscription belongs to its connection.

    :param connection: an open :class:`txpostgres.txpostgres.Connection`.
    """
    await connection.runOperation(f"LISTEN {CHANNEL}")


class Readings(Queries):
    """
    Writes points, and reads the points a reader missed.

    :param pool: the connections to run statements on.
    """

    async def write(self, points: Sequence[Point]) -> Committed:
        """
        Store points in one statement; the rollup trigger updates the
        minute and hour rollups in the same transaction. Points already
        stored are skipped. The new points are announced on
        :data:`CHANNEL` (see :data:`_INSERT`), delivered when the
        transaction commits.

        :return: how many points were new, and which server committed
            them.
        """
        rows = await self.pool.runQuery(_INSERT, _arrays(points))
        return Committed(int(rows[0][0]), rows[0][2])

    async def insert(self, points: Sequence[Point], announce: bool = True) -> int:
        """
        Store points as :meth:`write` does.

        :param announce: False for history, which no live client wants,
            and whose months may want partitions: they are made first.
        :return: how many points were new.
        """
        if announce:
            return (await self.write(points)).new
        await run_in(self.pool, ensure_months(None, (p.stamp for p in points)))
        rows = await self.pool.runQuery(_INSERT_QUIETLY, _arrays(points))
        return int(rows[0][0])

    async def has_readings_before(self, meter: int, stamp: int) -> bool:
        """
        :return: whether the meter has a reading older than ``stamp``.
        """
        rows = await self.pool.runQuery(
            "SELECT EXISTS (SELECT 1 FROM readings WHERE id = %s AND stamp < %s::bigint)",
            (meter, stamp),
        )
        return bool(rows[0][0])

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
            METERS_WITH_ROLLUPS
            + " SELECT r.id, r.stamp, r.ms"
            "  FROM m LEFT JOIN unnest(%(ids)s::integer[], %(first)s::bigint[]) AS k (id, first)"
            "    ON k.id = m.id"
            " CROSS JOIN LATERAL (SELECT id, stamp, ms FROM readings"
            "                      WHERE id = m.id"
            "                        AND stamp >= coalesce(k.first, %(min)s::bigint)"
            "                      ORDER BY stamp LIMIT %(limit)s) r"
            " WHERE m.id IS NOT NULL"
            " ORDER BY r.id, r.stamp LIMIT %(limit)s",
            {
                "ids": ids,
                "first": [min(after[i] + 1, STAMP_MAX) for i in ids],
                "min": STAMP_MIN,
                "limit": limit,
            },
        )
        return [Point(*row) for row in rows]

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

    async def blip_totals(self) -> list[BlipTotal]:
        """
        Count every meter's blips ever stored from the hourly rollups (a row
        per hour, where counting readings would read every row), in one
        snapshot with the stamp of its newest reading, so that blips seen
        live can be told apart from those already counted.

        :return: the total of each meter with rollups.
        """
        rows = await self.pool.runQuery(
            "SELECT h.id, h.events,"
            "       (SELECT max(r.stamp) FROM readings r WHERE r.id = h.id AND r.stamp >= h.hour)"
            "  FROM (SELECT id, sum(events)::bigint AS events, max(stamp) AS hour"
            "          FROM readings_hourly GROUP BY id) h"
            " ORDER BY h.id"
        )
        return [BlipTotal(int(meter), int(events), last) for meter, events, last in rows]

