"""
Forwarding (``--upstream URL --token-file FILE``): this node's points go
to a central blipserver through its write API. The upstream is the sink of
an :class:`~blip.ingest.writer.Ingest` of its own, so the points are sent
as the database gets them: in order, in batches, waiting in memory while
the central server answers each batch in time, and otherwise kept in a
spool of their own (``<state-dir>/upstream-spool``) until it has
acknowledged them, and sent again from there, a batch of
:data:`POST_POINTS` per request, as soon as it takes them (what a kill -9
can lose is as for the database: see :mod:`blip.ingest.writer`). A batch sent
twice (its answer lost) stores nothing twice there.
"""

import json
from datetime import datetime, timezone
from typing import Any, Sequence

from twisted.logger import Logger

from blip.counters import Counters
from blip.db.readings import Committed
from blip.ingest.writer import Ingest
from blip.model import Point
from blip.remote.client import Client, RemoteError, RemoteUnavailable

#: Points per request: within any blipserver's cap on a batch (10 000).
POST_POINTS = 5000
#: Where the points wait for the upstream, in the state dir.
UPSTREAM_SPOOL = "upstream-spool"
#: The errors of the upstream after which sending is tried again: all of
#: them (a refused token or a clock too far ahead is set right by the
#: operator, and the points wait in the spool meanwhile).
RETRIABLE = (RemoteError,)
#: The server that stores what is sent, as the Ingest sees it: always the
#: same one (what it acknowledged stays acknowledged; nothing is sent again
#: for a failover behind it).
CENTRAL = datetime.min.replace(tzinfo=timezone.utc)


class Upstream:
    """
    The write API of a central blipserver, as the sink of an Ingest.

    :param client: the central server.
    :param counters: where acknowledged points and failed batches are
        counted.
    """

    log = Logger()

    def __init__(self, client: Client, counters: Counters) -> None:
        self.client = client
        self.counters = counters

    async def write(self, points: Sequence[Point]) -> Committed:
        """
        Send ``points``, as :meth:`insert` does.

        :return: how many the server stored, and :data:`CENTRAL`.
        """
        return Committed(await self.insert(points), CENTRAL)

    async def insert(self, points: Sequence[Point]) -> int:
        """
        Send ``points``: each meter's in order, :data:`POST_POINTS` per
        request.

        :return: how many the server stored (the others it had).
        :raise RemoteError: when a request fails (the points sent before
            are stored; sending them again is harmless).
        """
        by_meter: dict[int, list[list[int]]] = {}
        for point in points:
            by_meter.setdefault(point.meter, []).append([point.stamp, point.ms])
        stored = 0
        for meter, pairs in by_meter.items():
            for start in range(0, len(pairs), POST_POINTS):
                chunk = pairs[start:start + POST_POINTS]
                stored += await self._send(meter, chunk)
        return stored

    async def _send(self, meter: int, pairs: list[list[int]]) -> int:
        body = json.dumps(pairs, separators=(",", ":")).encode()
        try:
            answer = await self.client.post(
                f"/api/v1/meters/{meter}/readings", body, b"application/json"
            )
            stored = _count(answer, len(pairs))
        except RemoteError:
            self.counters.forward_failures += 1
            raise
        self.counters.forwarded += len(pairs)
        return stored

    async def last_points(self) -> list[Point]:
        """
        :return: the newest point the central server has of each meter.
        """
        answer = await self.client.get("/api/v1/meters")
        try:
            return [
                Point(int(m["id"]), int(m["last"]["stamp"]), int(m["last"]["ms"]))
                for m in answer["meters"]
                if m.get("last") is not None
            ]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise RemoteUnavailable(f"{self.client.url} answered /api/v1/meters strangely") from None


def _count(answer: Any, sent: int) -> int:
    """
    :return: how many points an answer of the write API says were stored.
    :raise RemoteUnavailable: for an answer that is not one.
    """
    stored = answer.get("stored") if isinstance(answer, dict) else None
    if type(stored) is not int or not 0 <= stored <= sent:
        raise RemoteUnavailable(f"not an answer of the write API: {str(answer)[:100]}")
    return stored


class Copies:
    """
    An observer of this node's ingest that hands each point to the
    forwarding as it arrives (a node with a database and an upstream).

    :param forward: the forwarding's Ingest.
    """

    def __init__(self, forward: Ingest) -> None:
        self.forward = forward

    def receive(self, point: Point) -> None:
        """A point arrived: forward it too."""
        self.forward.receive(point)

    def stored(self, points: Sequence[Point]) -> None:
        """The database has points: nothing to do."""


class Forwarding:
    """
    The forwarding's life: its Ingest (whose sink is an :class:`Upstream`)
    starts at once, whatever the database does, and on stop leaves what
    the upstream has not acknowledged in its spool and closes the
    connections.

    :param ingest: the Ingest whose sink is the upstream.
    :param client: the upstream's client.
    """

    log = Logger()

    def __init__(self, ingest: Ingest, client: Client) -> None:
        self.ingest = ingest
        self.client = client

    async def start(self) -> None:
        """
        Begin sending (the spool a previous run left first).
        """
        self.log.info("forwarding points to {url}", url=self.client.url)
        await self.ingest.start()

    async def stop(self) -> None:
        """
        Stop sending.
        """
        await self.ingest.stop()
        await self.client.close()
