"""
Answers written a piece at a time: the export of every point in a range,
read in keyset pages (written out as text by the database), each page read
only once the client has taken the previous one, so that memory stays
constant whatever the range.
"""

import json
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

from blip.db.v1 import V1Queries

#: Points read from the database at a time.
PAGE = 20_000


@implementer(IPushProducer)
class Pausable:
    """
    A push producer that only records whether the transport wants more:
    the writer awaits :meth:`ready` before producing each piece.
    """

    def __init__(self) -> None:
        self._resumed: Optional[Deferred[None]] = None
        #: Whether the consumer is gone for good.
        self.stopped = False

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred(lambda _: self._forget())

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()

    def _forget(self) -> None:
        self._resumed = None

    @property
    def paused(self) -> bool:
        """Whether the transport has asked for a pause."""
        return self._resumed is not None

    async def ready(self) -> None:
        """
        Wait until the transport takes data again.
        """
        if self._resumed is not None:
            await self._resumed


def unregister(request: Request) -> None:
    """
    Unregister the request's producer, unless its connection is gone (and
    the producer with it).
    """
    if getattr(request, "channel", None) is not None:
        request.unregisterProducer()


class Export:
    """
    Writes every point of a meter in ``[first, last)`` to a request, as
    JSON or CSV.

    :param store: the database.
    :param meter: the meter.
    :param first: the first stamp included.
    :param last: the first stamp left out.
    :param csv: CSV with a ``stamp,ms`` header, else a JSON object.
    """

    def __init__(self, store: V1Queries, meter: int, first: int, last: int, csv: bool) -> None:
        self.store = store
        self.meter = meter
        self.first = first
        self.last = last
        self.csv = csv

    def _head(self) -> bytes:
        if self.csv:
            return b"stamp,ms\r\n"
        return (
            json.dumps({"meter": self.meter, "from": self.first, "to": self.last}, separators=(",", ":"))[:-1]
            + ',"points":['
        ).encode()

    def _tail(self) -> bytes:
        return b"" if self.csv else b"]}"

    async def write_to(self, request: Request) -> None:
        """
        Write the whole answer body, a page at a time, pausing while the
        client's connection does not take more.
        """
        producer = Pausable()
        request.registerProducer(producer, True)
        try:
            request.write(self._head())
            cursor, first_page = self.first, True
            while not producer.stopped:
                await producer.ready()
                text, count, final = await self.store.points_text(
                    self.meter, cursor, self.last, PAGE, self.csv
                )
                if count:
                    if not (first_page or self.csv):
                        request.write(b",")
                    request.write(text.encode())
                    first_page = False
                if count < PAGE or final is None:
                    break
                cursor = final + 1
            request.write(self._tail())
        finally:
            unregister(request)
