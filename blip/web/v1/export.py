"""
The export of every point in a range, read in keyset pages (written out
as text by the database), each page read only once the client has taken
the previous one, so that memory stays constant whatever the range.
"""

from typing import Optional

from twisted.web.server import Request

from blip.db.v1 import V1Queries
from blip.web.answers import encode
from blip.web.backpressure import Backpressure, RequestOutlet

#: Points read from the database at a time.
PAGE = 20_000


class Export:
    """
    Writes every point of a meter in ``[first, last)`` to a request, as
    JSON or CSV.

    :param store: the database.
    :param meter: the meter.
    :param first: the first stamp included.
    :param last: the first stamp left out.
    :param csv: CSV with a ``stamp,ms`` header, else a JSON object.
    :param raw_since: the unix ms before which raw points were dropped,
        None when none were (in the JSON object).
    :param limit: the most points written (the first ones), or None for
        every one.
    """

    def __init__(
        self, store: V1Queries, meter: int, first: int, last: int, csv: bool,
        raw_since: Optional[int] = None, limit: Optional[int] = None,
    ) -> None:
        self.store = store
        self.meter = meter
        self.first = first
        self.last = last
        self.csv = csv
        self.limit = limit
        self.raw_since = raw_since

    def _head(self) -> bytes:
        if self.csv:
            return b"stamp,ms\r\n"
        head = {"meter": self.meter, "from": self.first, "to": self.last, "raw_since": self.raw_since}
        return encode(head)[:-1] + b',"points":['

    def _tail(self) -> bytes:
        return b"" if self.csv else b"]}"

    async def write_to(self, request: Request) -> None:
        """
        Write the whole answer body, a page at a time, pausing while the
        client's connection does not take more.
        """
        producer = Backpressure(RequestOutlet(request))
        try:
            request.write(self._head())
            cursor, first_page = self.first, True
            left = self.limit
            while not producer.stopped and left != 0:
                await producer.ready()
                page = PAGE if left is None else min(PAGE, left)
                text, count, final = await self.store.points_text(
                    self.meter, cursor, self.last, page, self.csv
                )
                if count:
                    if not (first_page or self.csv):
                        request.write(b",")
                    request.write(text.encode())
                    first_page = False
                if left is not None:
                    left -= count
                if count < page or final is None:
                    break
                cursor = final + 1
            request.write(self._tail())
        finally:
            producer.close()
