"""
The cap on heavy requests: those that read every point of their range
without a cap on rows (exports over more than
:data:`~blip.web.limits.HEAVY_SPAN`, and live streams while they replay).
At most :data:`~blip.web.limits.HEAVY_REQUESTS` of them run at once, so
that they always leave the other requests connections to the database;
more are refused at once with 503 and ``Retry-After`` rather than queued
behind each other. (Every other request is bounded: by a cap on its rows,
by a week of points per answer for short gaps, or by the rollups, which
hold a row per minute or hour; the statement timeout bounds them all.)
"""

from typing import Any, Optional

from twisted.web.iweb import IRequest

from blip.web.errors import Busy
from blip.web.limits import HEAVY_REQUESTS, HEAVY_SPAN, RETRY_AFTER

#: The headers of a heavy request refused.
RETRY_HEADERS = ((b"Retry-After", b"%d" % RETRY_AFTER),)


class Ticket:
    """
    A heavy request's place among those running; a context manager that
    gives it up on exit.
    """

    def __init__(self, heavy: Optional["Heavy"]) -> None:
        self._heavy = heavy

    def release(self) -> None:
        """Give the place up (again: nothing)."""
        heavy, self._heavy = self._heavy, None
        if heavy is not None:
            heavy.running -= 1

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Heavy:
    """
    Counts the heavy requests running.

    :param limit: how many may run at once.
    """

    def __init__(self, limit: int = HEAVY_REQUESTS) -> None:
        self.limit = limit
        #: Heavy requests running now.
        self.running = 0

    def take(self, request: IRequest, span: Optional[int] = None) -> Ticket:
        """
        Admit a request that may be heavy.

        :param span: the ms its range covers: one of at most
            :data:`HEAVY_SPAN` is light, and takes no place; None: heavy
            whatever its range.
        :return: its place, to release when it is done.
        :raise Busy: when no place is free (``Retry-After`` is set).
        """
        if span is not None and span <= HEAVY_SPAN:
            return Ticket(None)
        ticket = self.admit()
        if ticket is None:
            for name, value in RETRY_HEADERS:
                request.setHeader(name, value)
            raise self.refusal()
        return ticket

    def refusal(self) -> Busy:
        """
        :return: the error of a heavy request refused: no place is free.
        """
        return Busy(
            f"{self.limit} requests that read long ranges or replay live points are running;"
            f" try again in {RETRY_AFTER} s"
        )

    def admit(self) -> Optional[Ticket]:
        """
        Admit a heavy request, if a place is free.

        :return: its place, to release when it is done; None when no place
            is free.
        """
        if self.running >= self.limit:
            return None
        self.running += 1
        return Ticket(self)
