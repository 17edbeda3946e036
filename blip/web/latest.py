"""
Each meter's newest point, found in one place: in the hub's memory when a
point passed through it (live, and not necessarily written yet), else in
the database.
"""

from typing import Iterable, Optional

from blip.db.queries import Queries
from blip.live.hub import Hub
from blip.model import Point


class Latest:
    """
    Finds the newest point of a meter.

    :param hub: the points that passed through this node.
    :param store: the database.
    """

    def __init__(self, hub: Hub, store: Queries) -> None:
        self.hub = hub
        self.store = store

    async def point(self, meter: int) -> Optional[Point]:
        """
        :return: the meter's newest point, or None when it has none.
        """
        point = self.hub.last(meter)
        if point is not None:
            return point
        row = await self.store.last(meter)
        return None if row is None else Point(meter, *row)

    async def points(self, meters: Iterable[int]) -> dict[int, Point]:
        """
        :param meters: meters whose points in memory count even before
            the database has any (the configured ones).
        :return: the newest point of each meter with readings, by meter.
        """
        latest = {p.meter: p for p in await self.store.last_points()}
        for m in set(latest) | set(meters):
            point = self.hub.last(m)
            if point is not None and (m not in latest or latest[m].stamp < point.stamp):
                latest[m] = point
        return latest
