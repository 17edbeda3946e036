"""
The front of the HTTP side: what is refused before any route is looked up,
and the two legacy routes every page asks for all the time, answered
without the router.

``/blip`` long-polls and ``/last`` are answered here straight from the hub.
When a meter blinks, every long-poll parked on it gets the same answer, so
the whole HTTP response (status line, headers and body) is rendered once
per point and written as it is to each client on a persistent HTTP/1.1
connection; others get it through the usual request machinery. Anything
else, and every OPTIONS, goes on to the router (:mod:`blip.web.legacy`).

With thousands of long-polls parked, what makes the last client wait is
the work done per client before its answer leaves. So a blip's fan-out
only writes each answer out on its connection, at once; the requests'
bookkeeping (finishing them, which readies the connections for the next
request) runs after every answer is out.
"""

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel, datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, version

from blip.live.hub import Hub, TooManyWaiters
from blip.meters import Meters
from blip.model import Point
from blip.web.legacy import (
    API_HEADERS,
    ApiError,
    LegacyApi,
    api_headers,
    describe_error,
    encode_point,
    error_body,
    meter_id,
    refuse,
)

#: Longest request target answered; longer ones get 414.
MAX_URI = 8192
#: Most bytes of a refused request read (and thrown away) before closing,
#: so that the client reads the answer instead of a connection reset.
MAX_DRAIN = 1 << 20

#: What a long-poll's waiter gives when --longpoll-timeout passes first.
_NO_POINT: Any = object()
_HEADERS = b"".join(b"%s: %s\r\n" % header for header in API_HEADERS)


class HotRoutes:
    """
    GET and HEAD of ``/blip``, ``/blip/<id>``, ``/last`` and ``/last/<id>``.

    :param hub: parks the long-polls and knows each meter's last point.
    :param meters: the configured meters (others are known once seen).
    :param clock: times --longpoll-timeout and dates the answers.
    :param longpoll_timeout: seconds before a long-poll answers 204; 0 never.
    :param reactor: whose turns the finishing of answered long-polls waits
        for.
    """

    def __init__(
        self,
        hub: Hub,
        meters: Meters,
        clock: IReactorTime,
        longpoll_timeout: float,
        reactor: IReactorTime,
    ) -> None:
        self.hub = hub
        self.meters = meters
        self.clock = clock
        self.longpoll_timeout = longpoll_timeout
        self.reactor = reactor
        self._point: Optional[Point] = None
        self._second = 0
        self._response = b""
        self._unfinished: list[_Parked] = []

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
        try:
            meter = meter_id(path[1].decode() if len(path) == 2 else None)
        except ApiError as e:
            api_headers(request)
            return refuse(request, e.status, e.message)
        if path[0] == b"last":
            point = self.hub.last(meter)
            if point is None:
                return None
            if _plain(request):
                transport = request.channel.transport
                assert transport is not None  # set while the request is answered
                request.startedWriting = 1
                transport.write(self.response(point))
                request.finish()
                return NOT_DONE_YET
            api_headers(request)
            return _body(request, encode_point(point.stamp, point.ms))
        return self._park(request, meter)

    def _park(self, request: Request, meter: int) -> Any:
        api_headers(request)
        if meter not in self.meters and self.hub.last(meter) is None:
            return refuse(request, 404, f"unknown meter {meter}")
        try:
            waiter = self.hub.wait(meter)
        except TooManyWaiters as e:
            return refuse(request, *describe_error(Failure(e)))
        if self.longpoll_timeout:
            waiter.addTimeout(self.longpoll_timeout, self.clock, onTimeoutCancel=_no_point)
        _Parked(self, request, waiter)
        return NOT_DONE_YET

    def response(self, point: Point) -> bytes:
        """
        :return: the whole HTTP/1.1 answer with ``point`` (of a long-poll,
            or of /last), rendered once per point and second.
        """
        now = int(self.clock.seconds())
        if point is not self._point or now != self._second:
            body = encode_point(point.stamp, point.ms)
            self._response = (
                b"HTTP/1.1 200 OK\r\nServer: %s\r\nDate: %s\r\n%s"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (version, datetimeToString(now), _HEADERS, len(body), body)
            )
            self._point, self._second = point, now
        return self._response

    def finish_later(self, parked: "_Parked") -> None:
        """
        Finish an answered long-poll once every answer of this fan-out has
        been sent (at the reactor's next turn).
        """
        if not self._unfinished:
            self.reactor.callLater(0, self._finish)
        self._unfinished.append(parked)

    def _finish(self) -> None:
        unfinished, self._unfinished = self._unfinished, []
        for parked in unfinished:
            if not parked.gone:
                parked.request.finish()


def _no_point(result: object, timeout: float) -> Any:
    return _NO_POINT


def _plain(request: Request) -> bool:
    """
    :return: whether the answer to ``request`` may be a pre-rendered one: a
        GET on a persistent HTTP/1.1 connection (no ``Connection: close``
        to add, a body to send).
    """
    return (
        request.method == b"GET"
        and request.clientproto == b"HTTP/1.1"
        and getattr(request.channel, "persistent", False)
    )


def _body(request: IRequest, body: bytes) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


class _Parked:
    """
    One long-poll waiting for its meter's next point.
    """

    __slots__ = ("routes", "request", "waiter", "gone")

    def __init__(self, routes: HotRoutes, request: Request, waiter: "Deferred[Point]") -> None:
        self.routes = routes
        self.request = request
        self.waiter = waiter
        self.gone = False
        request.notifyFinish().addErrback(self.hung_up)
        waiter.addCallbacks(self.answer, self.failed)

    def hung_up(self, reason: Failure) -> None:
        """
        The client went away: forget it (the hub drops the waiter).
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
        elif _plain(request):
            request.startedWriting = 1
            transport = request.channel.transport
            assert transport is not None  # set while the request is answered
            transport.write(self.routes.response(point))
            send_now(transport)
            self.routes.finish_later(self)
        else:
            request.write(_body(request, encode_point(point.stamp, point.ms)))
            request.finish()

    def failed(self, failure: Failure) -> None:
        """
        The waiter was released without a point (the daemon is stopping).
        """
        if self.gone:
            return
        request = self.request
        request.write(refuse(request, *describe_error(failure)))
        request.finish()


class Guard(Resource):
    """
    The root resource. Refuses, with JSON, what must not reach the routes:
    request targets over :data:`MAX_URI` bytes (414), paths that are not
    UTF-8 (400), and methods that are not upper case (405: methods are
    case-sensitive, but the router would take ``get`` for ``GET``); then
    lets :class:`HotRoutes` answer what it can, and the router the rest.
    """

    isLeaf = True

    def __init__(self, hot: HotRoutes, router: IResource) -> None:
        super().__init__()
        self.hot = hot
        self.router = router

    def render(self, request: Request) -> Any:
        if len(request.uri) > MAX_URI:
            return refuse(request, 414, f"request target longer than {MAX_URI} bytes")
        if request.method != request.method.upper():
            return refuse(request, 405, "method not allowed")
        assert request.postpath is not None  # set by the site before it renders
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return refuse(request, 400, "path is not UTF-8")
        answer = self.hot.render(request)
        if answer is not None:
            return answer
        return self.router.render(request)


def root(api: LegacyApi, reactor: IReactorTime) -> IResource:
    """
    :return: the root resource of the HTTP side of ``api``.
    """
    hot = HotRoutes(api.hub, api.meters, api.clock, api.longpoll_timeout, reactor)
    return Guard(hot, api.app.resource())


def send_now(transport: Any) -> None:
    """
    Send what ``transport`` holds now, rather than when the reactor next
    looks at the connection: during a fan-out the first clients need not
    wait for the last. What does not fit stays buffered and is sent as
    usual; a connection that this finds closing or broken is left to the
    reactor, which closes it on its next look.
    """
    send = getattr(transport, "doWrite", None)
    if send is not None and send() is not None:
        transport.startWriting()


class Channel(HTTPChannel):
    """
    Twisted's HTTP connection, refusing in JSON what it refuses before a
    request reaches :class:`Guard`: a request line longer than Twisted's
    line limit (414, whatever its length), a header line over it (431), and
    a malformed request (400).

    After a 414 or 431 the rest of the request is read and thrown away (up
    to :data:`MAX_DRAIN` bytes) before the connection closes: closing with
    unread data would reset the connection, and the client would see the
    reset rather than the answer.
    """

    #: Request line plus headers; above Twisted's 16 KiB so that a request
    #: whose line alone is under the line limit reaches Guard (414).
    totalHeadersSize = 32768
    #: The client's connection: set before any of it is read.
    transport: ITransport
    _drained: Optional[int] = None
    _tail = b""
    _host: Any = None

    def getHost(self) -> Any:
        # Every request asks for its connection's local address: one
        # system call per request, for an address that does not change.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def dataReceived(self, data: bytes) -> None:
        if self._drained is None:
            super().dataReceived(data)
        else:
            self._drain(data)

    def allContentReceived(self) -> None:
        # An absolute-form target (RFC 9112, 3.2.2: "GET http://host/last/1"),
        # which a server must accept: the path and query are what count.
        # (HTTPChannel keeps the target of the request line in _path.)
        target = self._path
        if not target.startswith(b"/"):
            scheme, found, rest = target.partition(b"://")
            if found and scheme.lower() in (b"http", b"https"):
                cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
                tail = rest[cut:]  # "/last/1", "?query" or nothing
                self._path = tail if tail.startswith(b"/") else b"/" + tail
        super().allContentReceived()

    def lineLengthExceeded(self, line: bytes) -> None:
        if getattr(self, "_HTTPChannel__first_line", 1):
            self._answer(414, f"request target longer than {MAX_URI} bytes")
        else:
            self._answer(431, "request header field too large")
        self._drained = 0
        self._drain(line)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._answer(400, "malformed HTTP request")
        self.loseConnection()

    def _drain(self, data: bytes) -> None:
        assert self._drained is not None
        # TCP and TLS transports have it; ITransport does not declare it.
        if getattr(self.transport, "disconnecting", False):
            return
        self._drained += len(data)
        seen = self._tail + data
        if b"\r\n\r\n" in seen or b"\n\n" in seen or self._drained > MAX_DRAIN:
            self.loseConnection()
        self._tail = seen[-3:]

    def _answer(self, status: int, message: str) -> None:
        body = error_body(message)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, RESPONSES.get(status, b"Error"), len(body), body)
        )
