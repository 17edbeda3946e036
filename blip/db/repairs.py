"""
The record of repairs: stretches when this node's logger was down that were
filled with a peer logger's points (see :mod:`blip.remote.repair`), and
what the repair needs to know of this node's own points around a stretch.
"""

from typing import NamedTuple, Optional

from blip.db.pool import Pool
from blip.db.queries import Reading


class Repair(NamedTuple):
    """
    One repaired stretch of a meter.

    :param start: unix ms the stretch starts.
    :param end: unix ms it ends.
    :param peer: the peer's URL.
    :param points: how many of its points were stored.
    :param at: unix ms of the repair.
    """

    start: int
    end: int
    peer: str
    points: int
    at: int


class Edges(NamedTuple):
    """
    This node's own points around a stretch.

    :param before: the last point before the stretch, or None.
    :param after: the first point from its end on, or None.
    """

    before: Optional[Reading]
    after: Optional[Reading]


class Repairs:
    """
    The rows of the repairs table, and the points around a stretch.

    :param pool: the connections to run statements on.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def overlapping(self, meter: int, first: int, last: int, limit: int) -> list[Repair]:
        """
        :return: the first ``limit`` repairs of ``meter`` whose stretch
            overlaps ``[first, last)``, by start.
        """
        rows = await self.pool.runQuery(
            "SELECT started, ended, peer, points, repaired FROM repairs"
            " WHERE meter = %s AND started < %s::bigint AND ended > %s::bigint"
            " ORDER BY started LIMIT %s",
            (meter, last, first, limit),
        )
        return list(map(Repair._make, rows))

    async def record(self, meter: int, repair: Repair) -> bool:
        """
        Record a repair, unless one of the meter's stretches that overlaps
        it is recorded already (by another node or run meanwhile).

        :return: whether it was recorded.
        """
        rows = await self.pool.runQuery(
            "INSERT INTO repairs (meter, started, ended, peer, points, repaired)"
            " SELECT %(m)s, %(s)s::bigint, %(e)s::bigint, %(p)s, %(n)s, %(at)s::bigint"
            "  WHERE NOT EXISTS (SELECT 1 FROM repairs WHERE meter = %(m)s"
            "                       AND started < %(e)s::bigint AND ended > %(s)s::bigint)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            {"m": meter, "s": repair.start, "e": repair.end, "p": repair.peer,
             "n": repair.points, "at": repair.at},
        )
        return bool(rows)

    async def edges(self, meter: int, first: int, last: int) -> Edges:
        """
        :return: the meter's last point before ``first`` and its first
            point from ``last`` on.
        """
        rows = await self.pool.runQuery(
            "SELECT"
            " (SELECT ARRAY[stamp, ms] FROM readings WHERE id = %(m)s AND stamp < %(f)s::bigint"
            "   ORDER BY stamp DESC LIMIT 1),"
            " (SELECT ARRAY[stamp, ms] FROM readings WHERE id = %(m)s AND stamp >= %(l)s::bigint"
            "   ORDER BY stamp LIMIT 1)",
            {"m": meter, "f": first, "l": last},
        )
        before, after = rows[0]
        return Edges(
            None if before is None else Reading(*before), None if after is None else Reading(*after)
        )
