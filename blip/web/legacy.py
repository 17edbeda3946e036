"""
The HTTP side: the original blipserver's JSON routes, the static page, and
the mapping of every error to a JSON answer.

The legacy routes answer byte for byte like the original: points as
``[stamp,ms]``, lists without spaces, numbers as PostgreSQL prints them.
"""

import gzip
import json
from functools import wraps
from http import HTTPStatus
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

import psycopg2.errors
from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.static import File, getTypeAndEncoding
from werkzeug.exceptions import HTTPException

from blip.db.legacy import LegacyQueries
from blip.db.pool import RETRIABLE, QueryCancelled
from blip.live.hub import Hub, TooManyWaiters
from blip.meters import Meters
from blip.model import DEFAULT_METER, INT_MAX

#: Most digits a number in a path may have.
MAX_DIGITS = 15
#: Where the modern API lives; its errors are problem documents.
MODERN_PREFIX = b"/api/v1"


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
    if isinstance(error, QueryCancelled):
        return 503, "the query took longer than this server allows; ask for less"
    if isinstance(error, RETRIABLE):
        return 503, "database unavailable; try again later"
    if isinstance(error, psycopg2.errors.UndefinedTable):
        # A node serving a database whose schema another node (or this
        # one, still starting) has yet to create.
        return 503, "database not prepared yet; try again later"
    if isinstance(error, CancelledError):
        return 503, "shutting down"
    return 500, "internal error"


def error_body(message: str) -> bytes:
    """
    :return: the JSON body of an error answer.
    """
    return json.dumps({"error": message}, separators=(",", ":")).encode()


def problem(status: int, message: str) -> bytes:
    """
    :return: the ``application/problem+json`` body (RFC 9457) of an error
        of the modern API; ``error`` repeats ``detail``, as the legacy
        routes name it.
    """
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    document = {"type": "about:blank", "title": title, "status": status, "detail": message, "error": message}
    return json.dumps(document, separators=(",", ":")).encode()


def refuse(request: IRequest, status: int, message: str) -> bytes:
    """
    Answer a request that never reaches a route with a JSON error: a
    problem document under the modern API's prefix.

    :return: the body to render: empty for HEAD (whose Content-Length still
        gives the length), as Twisted otherwise logs a warning for each one.
    """
    request.setResponseCode(status)
    if (getattr(request, "path", None) or b"").startswith(MODERN_PREFIX):
        body = problem(status, message)
        request.setHeader(b"Content-Type", b"application/problem+json")
    else:
        body = error_body(message)
        request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return b"" if request.method == b"HEAD" else body


def answer_error(request: IRequest, failure: Failure, log: Logger) -> bytes:
    """
    Answer a failed request from the one error table, with a JSON body; a
    500 (a bug) is logged with its traceback.

    :return: the body to render.
    """
    status, message = describe_error(failure)
    if status == 500:
        log.failure("error answering {uri}", failure, uri=request.uri)
    return refuse(request, status, message)


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


def encode_point(stamp: int, ms: int) -> bytes:
    """
    :return: a point as the original's ``[stamp,ms]``.
    """
    return b"[%d,%d]" % (stamp, ms)


#: The headers of every legacy answer but the length: CORS and caching.
API_HEADERS = (
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Methods", b"GET"),
    (b"Access-Control-Allow-Headers", b"origin, x-requested-with, accept"),
    (b"Access-Control-Max-Age", b"60"),
    (b"Cache-Control", b"max-age=0, must-revalidate"),
)


def api_headers(request: IRequest) -> None:
    """
    Set the CORS and caching headers of the legacy routes.
    """
    for name, value in API_HEADERS:
        request.setHeader(name, value)


def no_content(request: IRequest) -> bytes:
    """
    :return: the empty body of an OPTIONS answer, said to be empty (no
        chunked encoding) and without the default text/html type.
    """
    request.setHeader(b"Content-Length", b"0")
    request.defaultContentType = None  # type: ignore[attr-defined]  # server.Request's
    return b""


Handler = Callable[..., Awaitable[bytes]]


def legacy(app: Klein, *paths: str) -> Callable[[Handler], Handler]:
    """
    Register a legacy JSON route under each of ``paths``, answering GET and
    HEAD with the handler's bytes and OPTIONS with the CORS headers alone.
    """

    def register(f: Handler) -> Handler:
        @wraps(f)
        async def handler(self: Any, request: Request, **kwargs: str) -> bytes:
            api_headers(request)
            if request.method == b"OPTIONS":
                return no_content(request)
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


#: Types worth compressing.
_COMPRESSIBLE = (b"text/", b"application/javascript", b"application/json", b"image/svg+xml")
#: Compressed files by (path, modification time, size): the page is small.
_gzipped: dict[tuple[str, float, int], bytes] = {}


class StaticFiles(File):
    """
    The page's files: no directory listings, JSON 404s, an ETag and
    Last-Modified on each so browsers revalidate cheaply, and gzip for
    clients that accept it.
    """

    # Twisted takes any resource here, though their types are inferred from
    # its defaults.
    childNotFound = JSONNotFound()  # type: ignore[assignment]
    forbidden = JSONNotFound()  # type: ignore[assignment]

    def directoryListing(self) -> Resource:
        return self.childNotFound

    def render_GET(self, request: IRequest) -> Any:
        if not self.isfile():
            # A folder named without its slash: no redirect to an absolute
            # URL (it would escape a proxy's path prefix), no listing.
            return self.childNotFound.render(request)
        mtime, size = self.getModificationTime(), self.getsize()
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Vary", b"Accept-Encoding")
        if request.setETag(b'"%x-%x"' % (int(mtime * 1000), size)) is http.CACHED:
            return b""
        content_type, _ = getTypeAndEncoding(
            self.basename(), self.contentTypes, self.contentEncodings, self.defaultType
        )
        accepted = request.getHeader(b"Accept-Encoding") or b""
        if (
            b"gzip" in accepted
            and content_type
            and content_type.encode().startswith(_COMPRESSIBLE)
            and not request.getHeader(b"Range")
        ):
            key = (self.path, mtime, size)
            if key not in _gzipped:
                _gzipped[key] = gzip.compress(self.getContent(), 9, mtime=0)
            body = _gzipped[key]
            request.setLastModified(mtime)
            request.setHeader(b"Content-Type", content_type.encode())
            request.setHeader(b"Content-Encoding", b"gzip")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return body
        return super().render_GET(request)


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
        store: LegacyQueries,
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

    @app.handle_errors(Exception)
    def error(self, request: IRequest, failure: Failure) -> bytes:
        api_headers(request)
        return answer_error(request, failure, self.log)

    @app.route("/", branch=True, methods=["GET", "HEAD"])
    def page(self, request: IRequest) -> IResource:
        return self.static

    @app.route("/blip", methods=["OPTIONS"], endpoint="options /blip")
    @app.route("/blip/<meter>", methods=["OPTIONS"], endpoint="options /blip/<meter>")
    def options(self, request: IRequest, meter: Optional[str] = None) -> bytes:
        """
        OPTIONS of the long-poll, whose GET :class:`blip.web.front.HotRoutes`
        answers.
        """
        api_headers(request)
        return no_content(request)

    @legacy(app, "/last", "/last/<meter>")
    async def last(self, request: IRequest, meter: Optional[str] = None) -> bytes:
        """
        The meter's last point; :class:`blip.web.front.HotRoutes` answers it
        from memory when the hub has it, so this asks the database.
        """
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
        return (await self.store.since(m, self.now() - span, 20000)).encode()

    @legacy(app, "/since/<since>", "/since/<meter>/<since>")
    async def since(self, request: IRequest, since: str, meter: Optional[str] = None) -> bytes:
        m, start = meter_id(meter), number(since, "stamp")
        return (await self.store.since(m, start, 2000)).encode()

    @legacy(app, "/range/<first>/<last>", "/range/<meter>/<first>/<last>")
    async def range(
        self, request: IRequest, first: str, last: str, meter: Optional[str] = None
    ) -> bytes:
        m, a, b = meter_id(meter), number(first, "first stamp"), number(last, "last stamp")
        if a > b:
            raise BadRequest("range ends before it starts")
        return (await self.store.between(m, a, b, 100000)).encode()

    @legacy(app, "/aggregate/<start>/<width>/<count>", "/aggregate/<meter>/<start>/<width>/<count>")
    async def aggregate(
        self, request: IRequest, start: str, width: str, count: str, meter: Optional[str] = None
    ) -> bytes:
        m, s, w, c = _buckets(meter, start, width, count)
        return (await self.store.aggregate(m, s, w, c)).encode()

    @legacy(
        app,
        "/aggregate_hourly/<start>/<width>/<count>",
        "/aggregate_hourly/<meter>/<start>/<width>/<count>",
    )
    async def aggregate_hourly(
        self, request: IRequest, start: str, width: str, count: str, meter: Optional[str] = None
    ) -> bytes:
        m, s, w, c = _buckets(meter, start, width, count)
        return (await self.store.aggregate_hourly(m, s, w, c)).encode()

    @legacy(app, "/hourly/<first>/<last>", "/hourly/<meter>/<first>/<last>")
    async def hourly(
        self, request: IRequest, first: str, last: str, meter: Optional[str] = None
    ) -> bytes:
        m, a, b = meter_id(meter), number(first, "first stamp"), number(last, "last stamp")
        if a > b:
            raise BadRequest("range ends before it starts")
        return (await self.store.hourly(m, a, b)).encode()

    @legacy(app, "/minutely/<first>/<last>", "/minutely/<meter>/<first>/<last>")
    async def minutely(
        self, request: IRequest, first: str, last: str, meter: Optional[str] = None
    ) -> bytes:
        m, a, b = meter_id(meter), number(first, "first stamp"), number(last, "last stamp")
        if a > b:
            raise BadRequest("range ends before it starts")
        return (await self.store.minutely(m, a, b, 100000)).encode()

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
