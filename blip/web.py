"""
The HTTP side: the original blipserver's JSON routes, the static page, and
the mapping of every error to a JSON answer.

The legacy routes answer byte for byte like the original: points as
``[stamp,ms]``, lists without spaces, numbers as PostgreSQL prints them.
"""

import json
from functools import wraps
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.static import File
from werkzeug.exceptions import HTTPException

from blip.database import RETRIABLE
from blip.hub import Hub, TooManyWaiters
from blip.meters import Meters
from blip.model import DEFAULT_METER, INT_MAX
from blip.store import Row, Store

#: Longest request target answered; longer ones get 414.
MAX_URI = 8192
#: Most digits a number in a path may have.
MAX_DIGITS = 15
#: Most bytes of a refused request read (and thrown away) before closing,
#: so that the client reads the answer instead of a connection reset.
MAX_DRAIN = 1 << 20

_NO_POINT = object()


class ApiError(Exception):
    """
    An error answered as ``{"error": message}`` with a status code.
    """

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    """The request's numbers are not acceptable."""

    status = 400


class NotFound(ApiError):
    """The request names something that does not exist."""

    status = 404


def describe_error(failure: Failure) -> tuple[int, str]:
    """
    The one table from errors to answers.

    :return: the status code and message for ``failure``; 500 means a bug.
    """
    error = failure.value
    if isinstance(error, ApiError):
        return error.status, error.message
    if isinstance(error, HTTPException):
        if error.code == 404:
            return 404, "no such route"
        if error.code == 405:
            return 405, "method not allowed"
        return error.code or 400, error.name
    if isinstance(error, TooManyWaiters):
        return 503, "too many long-poll clients; try again later"
    if isinstance(error, RETRIABLE):
        return 503, "database unavailable; try again later"
    if isinstance(error, CancelledError):
        return 503, "shutting down"
    return 500, "internal error"


def error_body(message: str) -> bytes:
    """
    :return: the JSON body of an error answer.
    """
    return json.dumps({"error": message}, separators=(",", ":")).encode()


def refuse(request: IRequest, status: int, message: str) -> bytes:
    """
    Answer a request that never reaches a route with a JSON error.

    :return: the body to render: empty for HEAD (whose Content-Length still
        gives the length), as Twisted otherwise logs a warning for each one.
    """
    body = error_body(message)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return b"" if request.method == b"HEAD" else body


def number(text: str, what: str) -> int:
    """
    Parse a non-negative decimal number from a path.

    :raise BadRequest: for anything but 1 to 15 ASCII digits.
    """
    if not (text.isascii() and text.isdigit()):
        raise BadRequest(f"{what} must be a non-negative integer, not {text[:40]!r}")
    if len(text) > MAX_DIGITS:
        raise BadRequest(f"{what} has more than {MAX_DIGITS} digits")
    return int(text)


def meter_id(text: Optional[str]) -> int:
    """
    Parse a meter id from a path (None means the default meter).

    :raise NotFound: for an id no meter can have.
    """
    if text is None:
        return DEFAULT_METER
    meter = number(text, "meter id")
    if meter > INT_MAX:
        raise NotFound(f"unknown meter {meter}")
    return meter


def pg_float(value: float) -> bytes:
    """
    :return: ``value`` as PostgreSQL prints a DOUBLE PRECISION (and so as
        the original served it): shortest exact digits, no ``.0``.
    """
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
    return text.encode()


def encode_point(stamp: int, ms: int) -> bytes:
    """
    :return: a point as the original's ``[stamp,ms]``.
    """
    return b"[%d,%d]" % (stamp, ms)


def encode_pairs(rows: list[Row]) -> bytes:
    """
    :return: ``[[a,b],...]`` for rows of two integers.
    """
    return b"[" + b",".join([b"[%d,%d]" % (a, b) for a, b in rows]) + b"]"


def encode_sums(rows: list[Row]) -> bytes:
    """
    :return: ``[[offset,sum],...]`` for rows of an integer and a float.
    """
    return b"[" + b",".join([b"[%d,%s]" % (a, pg_float(b)) for a, b in rows]) + b"]"


def encode_usage(rows: list[Row]) -> bytes:
    """
    :return: ``[[stamp,events,wh,min_ms,max_ms],...]``.
    """
    return (
        b"["
        + b",".join(
            [b"[%d,%d,%s,%d,%d]" % (s, e, pg_float(w), lo, hi) for s, e, w, lo, hi in rows]
        )
        + b"]"
    )


def _api_headers(request: IRequest) -> None:
    request.setHeader(b"Access-Control-Allow-Origin", b"*")
    request.setHeader(b"Access-Control-Allow-Methods", b"GET")
    request.setHeader(b"Access-Control-Allow-Headers", b"origin, x-requested-with, accept")
    request.setHeader(b"Access-Control-Max-Age", b"60")
    request.setHeader(b"Cache-Control", b"max-age=0, must-revalidate")


Handler = Callable[..., Awaitable[bytes]]


def legacy(app: Klein, *paths: str) -> Callable[[Handler], Handler]:
    """
    Register a legacy JSON route under each of ``paths``, answering GET and
    HEAD with the handler's bytes and OPTIONS with the CORS headers alone.
    """

    def register(f: Handler) -> Handler:
        @wraps(f)
        async def handler(self: Any, request: IRequest, **kwargs: str) -> bytes:
            _api_headers(request)
            if request.method == b"OPTIONS":
                return b""
            request.setHeader(b"Content-Type", b"application/json")
            body = await f(self, request, **kwargs)
            if request.code != 204:
                request.setHeader(b"Content-Length", b"%d" % len(body))
            return body

        for path in paths:
            app.route(
                path, methods=["GET", "HEAD", "OPTIONS"], endpoint=f"{f.__name__} {path}"
            )(handler)
        return handler

    return register


class JSONNotFound(Resource):
    """
    A 404 with a JSON body, for paths that match no route and no file.
    """

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        return refuse(request, 404, "no such route")


class StaticFiles(File):
    """
    The page's files: no directory listings, JSON 404s.
    """

    childNotFound = JSONNotFound()
    forbidden = JSONNotFound()

    def directoryListing(self) -> Resource:
        return self.childNotFound


class LegacyApi:
    """
    The original blipserver's routes, and the static page at ``/``.

    :param store: the database.
    :param hub: live points and each meter's last point.
    :param meters: the configured meters.
    :param clock: the current time, for routes relative to now.
    :param longpoll_timeout: seconds before a long-poll answers 204; 0 never.
    :param static: the folder of the page.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        store: Store,
        hub: Hub,
        meters: Meters,
        clock: IReactorTime,
        longpoll_timeout: float,
        static: Path,
    ) -> None:
        self.store = store
        self.hub = hub
        self.meters = meters
        self.clock = clock
        self.longpoll_timeout = longpoll_timeout
        self.static = StaticFiles(str(static))

    def now(self) -> int:
        """
        :return: the current unix time in milliseconds.
        """
        return int(self.clock.seconds() * 1000)

    def resource(self) -> IResource:
        """
        :return: the root resource to serve.
        """
        return Guard(self.app.resource())

    @app.handle_errors(Exception)
    def error(self, request: IRequest, failure: Failure) -> bytes:
        status, message = describe_error(failure)
        if status == 500:
            self.log.failure("error answering {uri}", failure, uri=request.uri)
        request.setResponseCode(status)
        _api_headers(request)
        request.setHeader(b"Content-Type", b"application/json")
        body = error_body(message)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    @app.route("/", branch=True, methods=["GET", "HEAD"])
    def page(self, request: IRequest) -> IResource:
        return self.static

    @legacy(app, "/blip", "/blip/<meter>")
    async def blip(self, request: IRequest, meter: Optional[str] = None) -> bytes:
        m = meter_id(meter)
        if m not in self.meters and self.hub.last(m) is None:
            raise NotFound(f"unknown meter {m}")
        waiter = self.hub.wait(m)
        if self.longpoll_timeout:
            waiter.addTimeout(
                self.longpoll_timeout, self.clock, onTimeoutCancel=lambda *_: _NO_POINT
            )
        point = await waiter
        if point is _NO_POINT:
            request.setResponseCode(204)
            return b""
        return encode_point(point.stamp, point.ms)

    @legacy(app, "/last", "/last/<meter>")
    async def last(self, request: IRequest, meter: Optional[str] = None) -> bytes:
        m = meter_id(meter)
        point = self.hub.last(m)
        if point is not None:
            return encode_point(point.stamp, point.ms)
        row = await self.store.last(m)
        if row is None:
            raise NotFound(f"no readings for meter {m}")
        return encode_point(*row)

    @legacy(app, "/last/<meter>/<ms>")
    async def last_ms(self, request: IRequest, meter: str, ms: str) -> bytes:
        m, span = meter_id(meter), number(ms, "ms")
        return encode_pairs(await self.store.since(m, self.now() - span, 20000))

    @legacy(app, "/since/<since>", "/since/<meter>/<since>")
    async def since(self, request: IRequest, since: str, meter: Optional[str] = None) -> bytes:
        m, start = meter_id(meter), number(since, "stamp")
        return encode_pairs(await self.store.since(m, start, 2000))

    @legacy(app, "/range/<first>/<last>", "/range/<meter>/<first>/<last>")
    async def range(
        self, request: IRequest, first: str, last: str, meter: Optional[str] = None
    ) -> bytes:
        m, a, b = meter_id(meter), number(first, "first stamp"), number(last, "last stamp")
        if a > b:
            raise BadRequest("range ends before it starts")
        return encode_pairs(await self.store.between(m, a, b, 100000))

    @legacy(app, "/aggregate/<start>/<width>/<count>", "/aggregate/<meter>/<start>/<width>/<count>")
    async def aggregate(
        self, request: IRequest, start: str, width: str, count: str, meter: Optional[str] = None
    ) -> bytes:
        m, s, w, c = _buckets(meter, start, width, count)
        return encode_pairs(await self.store.aggregate(m, s, w, c))

    @legacy(
        app,
        "/aggregate_hourly/<start>/<width>/<count>",
        "/aggregate_hourly/<meter>/<start>/<width>/<count>",
    )
    async def aggregate_hourly(
        self, request: IRequest, start: str, width: str, count: str, meter: Optional[str] = None
    ) -> bytes:
        m, s, w, c = _buckets(meter, start, width, count)
        return encode_sums(await self.store.aggregate_hourly(m, s, w, c))

    @legacy(app, "/hourly/<first>/<last>", "/hourly/<meter>/<first>/<last>")
    async def hourly(
        self, request: IRequest, first: str, last: str, meter: Optional[str] = None
    ) -> bytes:
        m, a, b = meter_id(meter), number(first, "first stamp"), number(last, "last stamp")
        if a > b:
            raise BadRequest("range ends before it starts")
        return encode_usage(await self.store.hourly(m, a, b))

    @legacy(app, "/minutely/<first>/<last>", "/minutely/<meter>/<first>/<last>")
    async def minutely(
        self, request: IRequest, first: str, last: str, meter: Optional[str] = None
    ) -> bytes:
        m, a, b = meter_id(meter), number(first, "first stamp"), number(last, "last stamp")
        if a > b:
            raise BadRequest("range ends before it starts")
        return encode_usage(await self.store.minutely(m, a, b, 100000))

    @legacy(app, "/usage/<ms>", "/usage/<meter>/<ms>")
    async def usage(self, request: IRequest, ms: str, meter: Optional[str] = None) -> bytes:
        m, span = meter_id(meter), number(ms, "ms")
        return b"[%d]" % await self.store.count_since(m, self.now() - span)


def _buckets(
    meter: Optional[str], start: str, width: str, count: str
) -> tuple[int, int, int, int]:
    m, s = meter_id(meter), number(start, "start")
    w, c = number(width, "bucket width"), number(count, "bucket count")
    if w == 0:
        raise BadRequest("bucket width must be at least 1 ms")
    if c > 1000:
        raise BadRequest("at most 1000 buckets")
    return m, s, w, c


class Guard(Resource):
    """
    Refuses, with JSON, what must not reach the router: request targets over
    :data:`MAX_URI` bytes (414), paths that are not UTF-8 (400), and methods
    that are not upper case (405: methods are case-sensitive, but the
    router would take ``get`` for ``GET``).
    """

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self.inner = inner

    def render(self, request: IRequest) -> Any:
        if len(request.uri) > MAX_URI:
            return refuse(request, 414, f"request target longer than {MAX_URI} bytes")
        if request.method != request.method.upper():
            return refuse(request, 405, "method not allowed")
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return refuse(request, 400, "path is not UTF-8")
        return self.inner.render(request)


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
    _drained: Optional[int] = None
    _tail = b""

    def dataReceived(self, data: bytes) -> None:
        if self._drained is None:
            super().dataReceived(data)
        else:
            self._drain(data)

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
        if self.transport.disconnecting:
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
