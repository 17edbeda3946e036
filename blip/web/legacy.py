"""
The original blipserver's JSON routes (but the two hot ones,
:mod:`blip.web.hot`), and the page at ``/``.

The legacy routes answer byte for byte like the original: points as
``[stamp,ms]``, lists without spaces, numbers as PostgreSQL prints them.
Once raw points were dropped (``--keep-raw``), those that return or count
raw points say since when they are kept in a header (see
:data:`blip.web.answers.RAW_SINCE`); their bodies hold what is left.
"""

from functools import wraps
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request

from blip.db.legacy import LegacyQueries
from blip.web.answers import (
    LEGACY,
    RawSince,
    dress,
    json_body,
    kept_for_ever,
    options,
    say_raw_since,
)
from blip.web.errors import answer_error
from blip.web.limits import LAST_POINTS, MINUTELY_ROWS, RANGE_POINTS, SINCE_POINTS
from blip.web.paths import buckets, meter_id, number, stamps
from blip.web.static import StaticFiles

Handler = Callable[..., Awaitable[bytes]]


def legacy(app: Klein, *paths: str, raw: bool = False) -> Callable[[Handler], Handler]:
    """
    Register a legacy JSON route under each of ``paths``, answering GET and
    HEAD with the handler's bytes and OPTIONS with the CORS headers alone.

    :param raw: whether the route reads raw points, and so says since when
        they are kept.
    """

    def register(f: Handler) -> Handler:
        @wraps(f)
        async def handler(self: Any, request: Request, **kwargs: str) -> bytes:
            if request.method == b"OPTIONS":
                return options(request, LEGACY)
            dress(request, LEGACY)
            body = await f(self, request, **kwargs)
            if raw:
                say_raw_since(request, self.raw_since())
            return json_body(request, body)

        for path in paths:
            app.route(
                path, methods=["GET", "HEAD", "OPTIONS"], endpoint=f"{f.__name__} {path}"
            )(handler)
        return handler

    return register


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

    @app.handle_errors(Exception)
    def error(self, request: IRequest, failure: Failure) -> Optional[bytes]:
        return answer_error(request, failure, self.log, LEGACY)

    @app.route("/", branch=True, methods=["GET", "HEAD"])
    def page(self, request: IRequest) -> IResource:
        return self.static

    @app.route("/blip", methods=["OPTIONS"], endpoint="options /blip")
    @app.route("/blip/<meter>", methods=["OPTIONS"], endpoint="options /blip/<meter>")
    @app.route("/last", methods=["OPTIONS"], endpoint="options /last")
    @app.route("/last/<meter>", methods=["OPTIONS"], endpoint="options /last/<meter>")
    def hot_options(self, request: IRequest, meter: Optional[str] = None) -> bytes:
        """
        OPTIONS of the routes whose GET and HEAD
        :class:`blip.web.hot.HotRoutes` answers.
        """
        return options(request, LEGACY)

    @legacy(app, "/last/<meter>/<ms>", raw=True)
    async def last_ms(self, request: IRequest, meter: str, ms: str) -> bytes:
        m, span = meter_id(meter), number(ms, "ms")
        return (await self.store.since(m, self.now() - span, LAST_POINTS)).encode()

    @legacy(app, "/since/<since>", "/since/<meter>/<since>", raw=True)
    async def since(self, request: IRequest, since: str, meter: Optional[str] = None) -> bytes:
        m, start = meter_id(meter), number(since, "stamp")
        return (await self.store.since(m, start, SINCE_POINTS)).encode()

    @legacy(app, "/range/<first>/<last>", "/range/<meter>/<first>/<last>", raw=True)
    async def range(
        self, request: IRequest, first: str, last: str, meter: Optional[str] = None
    ) -> bytes:
        m = meter_id(meter)
        a, b = stamps(first, last)
        return (await self.store.between(m, a, b, RANGE_POINTS)).encode()

    @legacy(app, "/aggregate/<start>/<width>/<count>", "/aggregate/<meter>/<start>/<width>/<count>", raw=True)
    async def aggregate(
        self, request: IRequest, start: str, width: str, count: str, meter: Optional[str] = None
    ) -> bytes:
        m = meter_id(meter)
        s, w, c = buckets(start, width, count)
        return (await self.store.aggregate(m, s, w, c)).encode()

    @legacy(
        app,
        "/aggregate_hourly/<start>/<width>/<count>",
        "/aggregate_hourly/<meter>/<start>/<width>/<count>",
    )
    async def aggregate_hourly(
        self, request: IRequest, start: str, width: str, count: str, meter: Optional[str] = None
    ) -> bytes:
        m = meter_id(meter)
        s, w, c = buckets(start, width, count)
        return (await self.store.aggregate_hourly(m, s, w, c)).encode()

    @legacy(app, "/hourly/<first>/<last>", "/hourly/<meter>/<first>/<last>")
    async def hourly(
        self, request: IRequest, first: str, last: str, meter: Optional[str] = None
    ) -> bytes:
        m = meter_id(meter)
        a, b = stamps(first, last)
        return (await self.store.hourly(m, a, b)).encode()

    @legacy(app, "/minutely/<first>/<last>", "/minutely/<meter>/<first>/<last>")
    async def minutely(
        self, request: IRequest, first: str, last: str, meter: Optional[str] = None
    ) -> bytes:
        m = meter_id(meter)
        a, b = stamps(first, last)
        return (await self.store.minutely(m, a, b, MINUTELY_ROWS)).encode()

    @legacy(app, "/usage/<ms>", "/usage/<meter>/<ms>", raw=True)
    async def usage(self, request: IRequest, ms: str, meter: Optional[str] = None) -> bytes:
        m, span = meter_id(meter), number(ms, "ms")
        return b"[%d]" % await self.store.count_since(m, self.now() - span)
