"""
The two legacy routes every page asks for all the time, answered before
the router: ``/blip`` long-polls, parked on the hub, and ``/last``, from
memory when the hub has the point (else from the database).

When a meter blinks, every long-poll parked on it gets the same answer, so
the whole HTTP response (status line, headers and body) is rendered once
per point (and CORS headers: with ``--cors`` origins, each allowed origin
has its own) and written as it is to each client: by the lean path
(:mod:`blip.web.lean`), which parks most long-polls and answers most
``/last`` on the connection itself, and here on a persistent HTTP/1.1
connection; others get it through the usual request machinery.

With thousands of long-polls parked, what makes the last client wait is
the work done per client before its answer leaves. So a blip's fan-out
only writes each answer out on its connection, at once; the requests'
bookkeeping (finishing them, which readies the connections for the next
request) runs after every answer is out.
"""

from typing import Any, Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from blip.live.hub import Hub, TooManyWaiters
from blip.meters import Meters
from blip.model import Point
from blip.web.answers import (
    LEGACY,
    HeaderPairs,
    cors_of,
    dress,
    json_answer,
    json_body,
    whole_answer,
)
from blip.web.errors import (
    ApiError,
    NotFound,
    answer_error,
    describe,
    error_answer,
    refuse,
)
from blip.web.latest import Latest
from blip.web.paths import meter_id
from blip.web.twisted_private import prerenderable, send_now, send_prerendered


class Answered(Protocol):
    """
    A long-poll whose answer is out, its bookkeeping to come.
    """

    def settle(self) -> None:
        """Do the bookkeeping of the answer."""


#: What a long-poll's waiter gives when --longpoll-timeout passes first.
_NO_POINT: Any = object()


def encode_point(point: Point) -> bytes:
    """
    :return: a point as the original's ``[stamp,ms]``.
    """
    return b"[%d,%d]" % (point.stamp, point.ms)


class HotRoutes:
    """
    GET and HEAD of ``/blip``, ``/blip/<id>``, ``/last`` and ``/last/<id>``
    (of a meter configured or seen here; another number is left to the
    legacy routes).

    :param hub: parks the long-polls, and has each meter's last point in
        memory.
    :param latest: each meter's last point, when it is not in memory.
    :param meters: the configured meters (others are known once seen).
    :param clock: times --longpoll-timeout and dates the answers.
    :param longpoll_timeout: seconds before a long-poll answers 204; 0 never.
    :param reactor: whose turns the bookkeeping of answered long-polls
        waits for.
    """

    log = Logger()

    def __init__(
        self,
        hub: Hub,
        latest: Latest,
        meters: Meters,
        clock: IReactorTime,
        longpoll_timeout: float,
        reactor: IReactorTime,
    ) -> None:
        self.hub = hub
        self.latest = latest
        self.meters = meters
        self.clock = clock
        self.longpoll_timeout = longpoll_timeout
        self.reactor = reactor
        self._point: Optional[Point] = None
        self._second = 0
        self._headers: HeaderPairs = ()
        self._response = b""
        self._unsettled: list[Answered] = []

    def render(self, request: Request) -> Any:
        """
        Answer ``request`` if it is one of the hot routes.

        :return: what a resource's ``render`` returns, or None to let the
            router answer.
        """
        path = request.postpath
        assert path is not None  # set by the site before any resource renders
        if (
            request.method not in (b"GET", b"HEAD")
            or not 1 <= len(path) <= 2
            or path[0] not in (b"blip", b"last")
            or path[-1] == b""
        ):
            return None
        if path[0] == b"last" and len(path) == 2 and not self._knows(path[1]):
            # Not a meter known here: the legacy routes tell a meter with
            # readings from the single-meter original's /last/<ms>.
            return None
        try:
            meter = meter_id(path[1].decode() if len(path) == 2 else None)
        except ApiError as e:
            dress(request, LEGACY)
            return refuse(request, e.status, e.message)
        if path[0] == b"blip":
            return self._park(request, meter)
        point = self.hub.last(meter)
        if point is None:
            dress(request, LEGACY)
            _Parked(self, request, Deferred.fromCoroutine(self._stored(meter)))
            return NOT_DONE_YET
        if prerenderable(request):
            send_prerendered(request, self.response(point, self.headers(request)))
            request.finish()
            return NOT_DONE_YET
        return self.body(request, point)

    def _knows(self, segment: bytes) -> bool:
        """
        :return: whether ``segment`` is the id of a meter configured or
            seen here.
        """
        try:
            meter = meter_id(segment.decode())
        except ApiError:
            return False
        return meter in self.meters or self.hub.last(meter) is not None

    @staticmethod
    def headers(request: Request) -> HeaderPairs:
        """
        :return: the CORS and caching headers of the answer to ``request``.
        """
        return cors_of(request).headers(LEGACY, request)

    def _park(self, request: Request, meter: int) -> Any:
        dress(request, LEGACY)
        if not self.known(meter):
            return refuse(request, 404, f"unknown meter {meter}")
        try:
            waiter = self.hub.wait(meter)
        except TooManyWaiters:
            return refuse(request, *describe(Failure()))
        if self.longpoll_timeout:
            waiter.addTimeout(self.longpoll_timeout, self.clock, onTimeoutCancel=_no_point)
        _Parked(self, request, waiter)
        return NOT_DONE_YET

    async def _stored(self, meter: int) -> Point:
        point = await self.latest.point(meter)
        if point is None:
            raise NotFound(f"no readings for meter {meter}")
        return point

    def body(self, request: Request, point: Point) -> bytes:
        """
        Dress the answer to ``request`` with ``point``.

        :return: its body.
        """
        dress(request, LEGACY)
        return json_body(request, encode_point(point))

    def response(self, point: Point, headers: HeaderPairs) -> bytes:
        """
        :param headers: its CORS and caching headers (:meth:`headers`).
        :return: the whole HTTP/1.1 answer with ``point`` (of a long-poll,
            or of /last), rendered once per point, second and headers.
        """
        now = int(self.clock.seconds())
        if point is not self._point or now != self._second or headers is not self._headers:
            self._response = json_answer(200, headers, encode_point(point), now)
            self._point, self._second, self._headers = point, now, headers
        return self._response

    def known(self, meter: int) -> bool:
        """
        :return: whether a long-poll may park on ``meter``: it is
            configured or has a point here (else the answer is 404).
        """
        return meter in self.meters or self.hub.last(meter) is not None

    def no_point(self, headers: HeaderPairs) -> bytes:
        """
        :param headers: its CORS and caching headers (:meth:`headers`).
        :return: the whole answer of a long-poll that --longpoll-timeout
            ended first (204).
        """
        return whole_answer(204, headers, b"", self.clock.seconds())

    def failure(self, headers: HeaderPairs, reason: Exception) -> bytes:
        """
        :param headers: its CORS and caching headers (:meth:`headers`).
        :return: the whole answer of a long-poll that failed with
            ``reason`` (the daemon stopping), from the one error table.
        """
        status, message = describe(Failure(reason))
        return error_answer(status, message, headers, self.clock.seconds())

    def settle_later(self, answered: Answered) -> None:
        """
        Settle an answered long-poll (finish its request, count it, read
        the next one) once every answer of this fan-out has been sent, at
        the reactor's next turn.
        """
        if not self._unsettled:
            self.reactor.callLater(0, self._settle)
        self._unsettled.append(answered)

    def _settle(self) -> None:
        unsettled, self._unsettled = self._unsettled, []
        for answered in unsettled:
            answered.settle()


def _no_point(result: object, timeout: float) -> Any:
    return _NO_POINT


class _Parked:
    """
    A request waiting for its point: a long-poll for its meter's next one
    (its waiter fails when the daemon stops), or ``/last`` for the one the
    database has.
    """

    __slots__ = ("routes", "request", "waiter", "gone", "headers")

    def __init__(self, routes: HotRoutes, request: Request, waiter: "Deferred[Point]") -> None:
        self.routes = routes
        self.request = request
        self.waiter = waiter
        self.gone = False
        #: The CORS and caching headers of its answer.
        self.headers = routes.headers(request)
        request.notifyFinish().addErrback(self.hung_up)
        waiter.addCallbacks(self.answer, self.failed)

    def hung_up(self, reason: Failure) -> None:
        """
        The client went away: forget it (the hub drops a waiter cancelled).
        """
        self.gone = True
        self.waiter.cancel()

    def answer(self, point: Point) -> None:
        """
        Answer with the point, or 204 when the timeout came first.
        """
        if self.gone:
            return
        request = self.request
        if point is _NO_POINT:
            request.setResponseCode(204)
            request.finish()
        elif prerenderable(request):
            send_now(send_prerendered(request, self.routes.response(point, self.headers)))
            self.routes.settle_later(self)
        else:
            request.write(self.routes.body(request, point))
            request.finish()

    def settle(self) -> None:
        """
        Finish the request answered with a pre-rendered answer (unless the
        client left meanwhile).
        """
        if not self.gone:
            self.request.finish()

    def failed(self, failure: Failure) -> None:
        """
        Answer with the error that came instead of a point.
        """
        if self.gone:
            return
        request = self.request
        request.write(answer_error(request, failure, self.routes.log) or b"")
        request.finish()
