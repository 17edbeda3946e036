"""
The original blipserver's JSON routes (but the two hot ones,
:mod:`blip.web.hot`), and the page at ``/``.

The legacy routes answer byte for byte like the original: points as
``[stamp,ms]``, lists without spaces, numbers as PostgreSQL prints them.
Once raw points were dropped (``--keep-raw``), those that return or count
raw points (:class:`RawPoints`) say since when they are kept in a header
(see :data:`blip.web.answers.RAW_SINCE`); their bodies hold what is left.

They are small answers asked for all the time, so they are found without
a general router: a route is known by its first path segment and its
number of segments (:data:`ROUTES`), each segment after the first being
one number; what matches none goes on to the page. Their plain GETs are
mostly answered by the lean path (:mod:`blip.web.lean`), through
:meth:`LegacyApi.body` and the whole answers made here; the rest come
through :meth:`LegacyApi.render`.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine, Optional, Sequence

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request

from blip.db.legacy import LegacyQueries
from blip.model import DEFAULT_METER, Point
from blip.web.answers import (
    LEGACY,
    HeaderPairs,
    RawSince,
    dress,
    json_answer,
    json_body,
    kept_for_ever,
    options,
    raw_since_headers,
)
from blip.web.errors import NotFound, answer_error, error_answer, judge, refuse
from blip.web.hot import encode_point
from blip.web.limits import LAST_POINTS, MINUTELY_ROWS, RANGE_POINTS, SINCE_POINTS
from blip.web.paths import buckets, meter_id, number, stamps
from blip.web.static import StaticFiles
from blip.web.twisted_private import send_now

Handler = Callable[..., Coroutine[Any, Any, bytes]]


class RawPoints(bytes):
    """
    A body made of raw points, or counting them: its answer says since
    when they are kept.
    """


@dataclass(frozen=True, slots=True)
class Route:
    """
    One path of a legacy route.

    :param template: the path, its numbers named (``/since/<meter>/<since>``):
        what the metrics call it.
    :param handler: answers GET and HEAD with the body, given the numbers
        by name (as text); None for a path whose GET and HEAD
        :class:`blip.web.hot.HotRoutes` answers.
    """

    template: str
    handler: Optional[Handler]
    #: The names of the numbers of the path, in order.
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(part[1:-1] for part in self.template.split("/")[2:]))


#: The legacy routes, by first path segment and number of segments.
ROUTES: dict[tuple[bytes, int], Route] = {}


def legacy(*templates: str) -> Callable[[Handler], Handler]:
    """
    Register a legacy JSON route under each of ``templates`` (every
    segment after the first a ``<name>``d number), answering GET and HEAD
    with the handler's bytes and OPTIONS with the CORS headers alone.
    """

    def register(f: Handler) -> Handler:
        for template in templates:
            _add(Route(template, f))
        return f

    return register


def _add(route: Route) -> None:
    segments = route.template.split("/")[1:]
    ROUTES[(segments[0].encode(), len(segments))] = route


# OPTIONS of the paths whose GET and HEAD the hot routes answer.
for _template in ("/blip", "/blip/<meter>", "/last"):
    _add(Route(_template, None))


def route_of(segments: Sequence[bytes]) -> Optional[Route]:
    """
    :param segments: a request's path, split at its slashes.
    :return: the legacy route of that path, if any.
    """
    # Each segment holds one number, like a router's: none is empty, and
    # none holds a slash (percent-encoded).
    if not segments or any(not segment or b"/" in segment for segment in segments):
        return None
    return ROUTES.get((segments[0], len(segments)))


def template(segments: Sequence[bytes]) -> Optional[str]:
    """
    :return: the template of the legacy route of a path (for the metrics),
        if any.
    """
    route = route_of(segments)
    return None if route is None else route.template


class LegacyApi:
    """
    The original blipserver's routes, and the static page at ``/``.

    :param store: the database.
    :param clock: the current time, for routes relative to now.
    :param static: the folder of the page.
    :param raw_since: since when raw points are kept.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self, store: LegacyQueries, clock: IReactorTime, static: Path, raw_since: RawSince = kept_for_ever
    ) -> None:
        self.store = store
        self.clock = clock
        self.static = StaticFiles(str(static))
        self.raw_since = raw_since

    def now(self) -> int:
        """
        :return: the current unix time in milliseconds.
        """
        return int(self.clock.seconds() * 1000)

    def render(self, request: Request) -> Any:
        """
        Answer ``request`` if its path is a legacy route's.

        :return: what a resource's ``render`` returns, or None to let the
            page's router answer.
        """
        path = request.postpath
        assert path is not None  # set by the site before any resource renders
        route = route_of(path)
        if route is None:
            return None
        method = request.method
        if method == b"OPTIONS":
            return options(request, LEGACY)
        dress(request, LEGACY)
        if method not in (b"GET", b"HEAD"):
            return refuse(request, 405, "method not allowed")
        if route.handler is None:
            return refuse(request, 404, "no such route")
        _Answer(self, request, self.body(route, path))
        return NOT_DONE_YET

    def body(self, route: Route, path: Sequence[bytes]) -> "Deferred[bytes]":
        """
        :param route: a route with a handler, the route of ``path``.
        :return: the body of the answer to a GET of ``path``
            (:class:`RawPoints` when made of raw points).
        """
        assert route.handler is not None
        numbers = {name: segment.decode() for name, segment in zip(route.names, path[1:])}
        return Deferred.fromCoroutine(route.handler(self, **numbers))

    def raw_headers(self, body: bytes) -> HeaderPairs:
        """
        :return: the headers that say since when raw points are kept, on
            an answer of ``body`` (none unless it is made of raw points).
        """
        return raw_since_headers(self.raw_since()) if isinstance(body, RawPoints) else ()

    def answer(self, headers: HeaderPairs, body: bytes) -> bytes:
        """
        :param headers: its CORS and caching headers.
        :return: the whole HTTP/1.1 answer of ``body`` (:meth:`body`).
        """
        return json_answer(200, headers + self.raw_headers(body), body, self.clock.seconds())

    def failed(self, headers: HeaderPairs, failure: Failure, target: bytes) -> tuple[int, bytes]:
        """
        :param headers: its CORS and caching headers.
        :param target: the request's target, for the log.
        :return: the status and whole HTTP/1.1 answer of a request whose
            body (:meth:`body`) failed, from the one error table; a 500 (a
            bug) is logged with its traceback.
        """
        status, message = judge(failure, self.log, target)
        return status, error_answer(status, message, headers, self.clock.seconds())

    @app.handle_errors(Exception)
    def error(self, request: IRequest, failure: Failure) -> Optional[bytes]:
        return answer_error(request, failure, self.log, LEGACY)

    @app.route("/", branch=True, methods=["GET", "HEAD"])
    def page(self, request: IRequest) -> IResource:
        return self.static

    @legacy("/last/<meter>")
    async def last_or_recent(self, meter: str) -> bytes:
        """
        ``/last/<n>`` that :class:`blip.web.hot.HotRoutes` left: a meter it
        does not know, or the single-meter original's points of the last
        ``n`` ms of the default meter.

        A meter with readings (kept, or rolled up) is that meter; any
        other number is a span.
        """
        n = number(meter, "meter id or ms")
        recent = await self.store.recent_unless_meter(n, DEFAULT_METER, self.now() - n, LAST_POINTS)
        if recent is not None:
            return RawPoints(recent.encode())
        reading = await self.store.last(n)
        if reading is None:
            raise NotFound(f"no readings for meter {n}")
        return encode_point(Point(n, *reading))

    @legacy("/last/<meter>/<ms>")
    async def last_ms(self, meter: str, ms: str) -> bytes:
        m, span = meter_id(meter), number(ms, "ms")
        return RawPoints((await self.store.since(m, self.now() - span, LAST_POINTS)).encode())

    @legacy("/since/<since>", "/since/<meter>/<since>")
    async def since(self, since: str, meter: Optional[str] = None) -> bytes:
        m, start = meter_id(meter), number(since, "stamp")
        return RawPoints((await self.store.since(m, start, SINCE_POINTS)).encode())

    @legacy("/range/<first>/<last>", "/range/<meter>/<first>/<last>")
    async def range(self, first: str, last: str, meter: Optional[str] = None) -> bytes:
        m = meter_id(meter)
        a, b = stamps(first, last)
        return RawPoints((await self.store.between(m, a, b, RANGE_POINTS)).encode())

    @legacy("/aggregate/<start>/<width>/<count>", "/aggregate/<meter>/<start>/<width>/<count>")
    async def aggregate(self, start: str, width: str, count: str, meter: Optional[str] = None) -> bytes:
        m = meter_id(meter)
        s, w, c = buckets(start, width, count)
        return RawPoints((await self.store.aggregate(m, s, w, c)).encode())

    @legacy(
        "/aggregate_hourly/<start>/<width>/<count>",
        "/aggregate_hourly/<meter>/<start>/<width>/<count>",
    )
    async def aggregate_hourly(self, start: str, width: str, count: str, meter: Optional[str] = None) -> bytes:
        m = meter_id(meter)
        s, w, c = buckets(start, width, count)
        return (await self.store.aggregate_hourly(m, s, w, c)).encode()

    @legacy("/hourly/<first>/<last>", "/hourly/<meter>/<first>/<last>")
    async def hourly(self, first: str, last: str, meter: Optional[str] = None) -> bytes:
        m = meter_id(meter)
        a, b = stamps(first, last)
        return (await self.store.hourly(m, a, b)).encode()

    @legacy("/minutely/<first>/<last>", "/minutely/<meter>/<first>/<last>")
    async def minutely(self, first: str, last: str, meter: Optional[str] = None) -> bytes:
        m = meter_id(meter)
        a, b = stamps(first, last)
        return (await self.store.minutely(m, a, b, MINUTELY_ROWS)).encode()

    @legacy("/usage/<ms>", "/usage/<meter>/<ms>")
    async def usage(self, ms: str, meter: Optional[str] = None) -> bytes:
        m, span = meter_id(meter), number(ms, "ms")
        return RawPoints(b"[%d]" % await self.store.count_since(m, self.now() - span))


class _Answer:
    """
    A legacy route's answer on its way: written once its handler gives the
    body, or an error; the handler is let go when the client hangs up.
    """

    __slots__ = ("api", "request", "done")

    def __init__(self, api: LegacyApi, request: Request, body: "Deferred[bytes]") -> None:
        self.api = api
        self.request = request
        self.done = False
        request.notifyFinish().addErrback(self.hung_up, body)
        body.addCallbacks(self.send, self.failed)

    def hung_up(self, reason: Failure, body: "Deferred[bytes]") -> None:
        """The client went away: stop waiting for the body."""
        self.done = True
        body.cancel()

    def send(self, body: bytes) -> None:
        """
        Write the body, and send the answer at once rather than at the
        reactor's next turn.
        """
        if self.done:
            return
        request = self.request
        for name, value in self.api.raw_headers(body):
            request.setHeader(name, value)
        transport = getattr(request.channel, "transport", None)
        request.write(json_body(request, body))
        request.finish()
        if transport is not None:
            send_now(transport)

    def failed(self, failure: Failure) -> None:
        """Answer the error that came instead of the body."""
        if self.done:
            return
        request = self.request
        answer = answer_error(request, failure, self.api.log, LEGACY)
        if answer is not None:
            request.write(answer)
            request.finish()
