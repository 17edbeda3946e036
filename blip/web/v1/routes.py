"""
The modern API under ``/api/v1``: meters with their settings and last
point, power in W at a resolution that fits, energy and cost per calendar
period, the gaps in the readings, every point streamed as JSON or CSV, and
a live stream of Server-Sent Events; described by the OpenAPI document it
serves at ``/api/v1/openapi.json``.

Times are unix ms; ranges are half-open, ``from <= t < to``. Every error is
``application/problem+json`` (RFC 9457) whose ``detail`` also appears as
``error``, as in the legacy routes' ``{"error": "..."}``.
"""

import json
import re
from functools import wraps
from typing import Any, Awaitable, Callable, Optional

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed

from blip.db.v1 import V1Queries
from blip.live.hub import Hub
from blip.meters import Meter, Meters
from blip.model import Point
from blip.web.legacy import (
    MODERN_PREFIX,
    ApiError,
    NotFound,
    describe_error,
    meter_id,
    no_content,
    problem,
)
from blip.web.v1.export import Export
from blip.web.v1.heavy import Heavy, Ticket
from blip.web.v1.live import REPLAY_DEPTH, Live
from blip.web.v1.openapi import document
from blip.web.v1.query import EARLIEST, BadParameter, Query
from blip.web.v1.series import Series

PREFIX = MODERN_PREFIX.decode()
#: Rows of a power series unless asked otherwise, and at most.
MAX_POINTS = 2000
MAX_POINTS_CAP = 20_000
#: A range without ``from`` starts this long before its end.
DEFAULT_SPAN = 86_400_000
PERIODS = ("hour", "day", "week", "month", "year")
ALLOW = b"GET, HEAD, OPTIONS"

_EVENT_ID = re.compile(r"-?[0-9]{1,18}")


class Busy(ApiError):
    """Too many clients of some kind; try again later."""

    status = 503


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def _headers(request: IRequest) -> None:
    request.setHeader(b"Access-Control-Allow-Origin", b"*")
    request.setHeader(b"Access-Control-Allow-Methods", b"GET")
    request.setHeader(
        b"Access-Control-Allow-Headers", b"origin, x-requested-with, accept, last-event-id"
    )
    request.setHeader(b"Access-Control-Max-Age", b"60")
    request.setHeader(b"Cache-Control", b"max-age=0, must-revalidate")


Handler = Callable[..., Awaitable[Any]]


def route(app: Klein, path: str) -> Callable[[Handler], Handler]:
    """
    Register a route of the API at ``PREFIX + path``, answering GET and HEAD
    with what the handler returns (data as JSON; bytes or None when it
    wrote the answer itself) and OPTIONS with the CORS headers.
    """

    def register(f: Handler) -> Handler:
        @wraps(f)
        async def handler(self: Any, request: IRequest, **kwargs: str) -> Optional[bytes]:
            _headers(request)
            if request.method == b"OPTIONS":
                request.setHeader(b"Allow", ALLOW)
                return no_content(request)
            result = await f(self, request, **kwargs)
            if result is None or isinstance(result, bytes):
                return result
            body = _json(result)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return body

        app.route(PREFIX + path, methods=["GET", "HEAD", "OPTIONS"], endpoint=f.__name__)(handler)
        return handler

    return register


def meter_json(meter: Meter, last: Optional[Point]) -> dict[str, Any]:
    """
    :return: a meter's settings and last point as the API shows them.
    """
    return {
        "id": meter.id,
        "label": meter.label,
        "description": meter.description,
        "pulses_per_kwh": meter.pulses_per_kwh,
        "multiplier": meter.multiplier,
        "price_per_kwh": meter.price_per_kwh,
        "currency": meter.currency,
        "timezone": meter.timezone,
        "tariff": [
            {"price_per_kwh": rule.price_per_kwh, "days": list(rule.days), "hours": rule.hours}
            for rule in meter.tariff
        ]
        or None,
        "last": None
        if last is None
        else {"stamp": last.stamp, "ms": last.ms, "watts": meter.watts(last.ms)},
    }


class ApiV1:
    """
    The routes under ``/api/v1``.

    :param store: the database.
    :param hub: each meter's last point.
    :param live: the live streams.
    :param meters: the configured meters.
    :param clock: the current time, for ranges that end now.
    """

    app = Klein()
    # Empty path segments are not merged away (werkzeug would answer them
    # with a redirect): such a path matches no route.
    app.url_map.merge_slashes = False
    log = Logger()

    def __init__(
        self, store: V1Queries, hub: Hub, live: Live, meters: Meters, clock: IReactorTime
    ) -> None:
        self.store = store
        self.hub = hub
        self.live = live
        self.meters = meters
        self.clock = clock
        self.series = Series(store)
        self.heavy = Heavy()
        self._document = _json(document())

    def resource(self) -> IResource:
        """
        :return: the resource answering every path under ``/api/v1``.
        """
        return self.app.resource()

    def now(self) -> int:
        """
        :return: the current unix time in ms.
        """
        return int(self.clock.seconds() * 1000)

    @app.handle_errors(Exception)
    def error(self, request: IRequest, failure: Failure) -> Optional[bytes]:
        status, message = describe_error(failure)
        if status == 500:
            self.log.failure("error answering {uri}", failure, uri=request.uri)
        if isinstance(request, Request) and request.startedWriting:
            # Too late for an error answer: cut the connection, so that the
            # client sees a truncated answer, not a complete one.
            if status != 500:
                self.log.warn(
                    "answer to {uri} cut short: {why}", uri=request.uri, why=message
                )
            # A TCP or TLS connection, though ITransport names no abortConnection.
            request.transport.abortConnection()  # type: ignore[union-attr]
            return None
        request.setResponseCode(status)
        _headers(request)
        if failure.check(MethodNotAllowed):
            request.setHeader(b"Allow", ALLOW)
        request.setHeader(b"Content-Type", b"application/problem+json")
        body = problem(status, message)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    async def meter(self, text: str) -> Meter:
        """
        :return: the settings of the meter a path names.
        :raise NotFound: unless it is configured or has readings.
        """
        m = meter_id(text)
        if m in self.meters or self.hub.last(m) is not None or await self.store.last(m):
            return self.meters.get(m)
        raise NotFound(f"unknown meter {m}")

    async def last_points(self) -> dict[int, Point]:
        """
        :return: the newest point of each meter with readings, live ones
            first.
        """
        latest = {p.meter: p for p in await self.store.last_points()}
        for m in set(latest) | {m.id for m in self.meters}:
            point = self.hub.last(m)
            if point is not None and (m not in latest or latest[m].stamp < point.stamp):
                latest[m] = point
        return latest

    def span(self, query: Query, meter: Meter) -> tuple[int, int]:
        """
        :return: ``from`` and ``to`` of a request: ``to`` defaults to now,
            ``from`` to :data:`DEFAULT_SPAN` before ``to``.
        """
        last = query.instant("to", self.now(), meter.timezone)
        first = query.instant("from", max(EARLIEST, last - DEFAULT_SPAN), meter.timezone)
        return first, last

    @route(app, "/openapi.json")
    async def openapi(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(self._document))
        return self._document

    @route(app, "/meters")
    async def list_meters(self, request: IRequest) -> Any:
        latest = await self.last_points()
        ids = sorted({m.id for m in self.meters} | set(latest))
        return {"meters": [meter_json(self.meters.get(m), latest.get(m)) for m in ids]}

    @route(app, "/meters/<meter>")
    async def one_meter(self, request: IRequest, meter: str) -> Any:
        settings = await self.meter(meter)
        last = self.hub.last(settings.id)
        if last is None:
            row = await self.store.last(settings.id)
            last = None if row is None else Point(settings.id, *row)
        return meter_json(settings, last)

    @route(app, "/meters/<meter>/power")
    async def power(self, request: IRequest, meter: str) -> Any:
        settings = await self.meter(meter)
        query = Query(request)
        first, last = self.span(query, settings)
        max_points = query.integer("max_points", MAX_POINTS, 1, MAX_POINTS_CAP)
        power = await self.series.power(settings, first, last, max_points)
        return {
            "meter": settings.id,
            "from": first,
            "to": last,
            "resolution_ms": power.resolution_ms,
            "points": power.points,
        }

    @route(app, "/meters/<meter>/energy")
    async def energy(self, request: IRequest, meter: str) -> Any:
        settings = await self.meter(meter)
        query = Query(request)
        first, last = self.span(query, settings)
        period = query.choice("period", "day", PERIODS)
        energy = await self.series.energy(settings, period, first, last)
        return {
            "meter": settings.id,
            "period": period,
            "timezone": settings.timezone,
            "currency": settings.currency,
            "rows": [
                {"start": r.start, "end": r.end, "kwh": r.kwh, "cost": r.cost} for r in energy.rows
            ],
            "total": {"kwh": energy.kwh, "cost": energy.cost},
            "next": energy.next,
        }

    @route(app, "/meters/<meter>/gaps")
    async def gaps(self, request: IRequest, meter: str) -> Any:
        settings = await self.meter(meter)
        query = Query(request)
        first, last = self.span(query, settings)
        min_gap = None
        if query.text("min_gap") is not None:
            min_gap = query.integer("min_gap", 0, 1, 10**15)
        with self.heavy.take(request, last - first):
            gaps = await self.series.gaps(settings, first, last, self.now(), min_gap)
        return {
            "meter": settings.id,
            "from": first,
            "to": last,
            "min_gap": gaps.min_gap,
            "gaps": [{"from": g.start, "to": g.end, "kind": g.kind} for g in gaps.gaps],
            "next": gaps.next,
        }

    @route(app, "/meters/<meter>/readings")
    async def readings(self, request: Request, meter: str) -> Optional[bytes]:
        settings = await self.meter(meter)
        query = Query(request)
        first, last = self.span(query, settings)
        csv = query.choice("format", "json", ("json", "csv")) == "csv"
        heavy = self.heavy.take(request, last - first)
        if csv:
            request.setHeader(b"Content-Type", b"text/csv; charset=utf-8")
            request.setHeader(
                b"Content-Disposition",
                b'attachment; filename="meter-%d-%d-%d.csv"' % (settings.id, first, last),
            )
        else:
            request.setHeader(b"Content-Type", b"application/json")
        with heavy:
            if request.method == b"HEAD":
                return b""
            await Export(self.store, settings.id, first, last, csv).write_to(request)
        return None

    @route(app, "/live")
    async def live_points(self, request: Request) -> Any:
        query = Query(request)
        meters = query.meters("meters")
        last_id = _last_event_id(request)
        if meters is not None:
            for m in meters:
                await self.meter(str(m))
        accept = (request.getHeader(b"accept") or b"").lower()
        if b"text/event-stream" not in accept:
            latest = await self.last_points()
            wanted = sorted(latest) if meters is None else [m for m in meters if m in latest]
            return {
                "points": [
                    {
                        "meter": m,
                        "stamp": latest[m].stamp,
                        "ms": latest[m].ms,
                        "watts": self.meters.get(m).watts(latest[m].ms),
                    }
                    for m in wanted
                ]
            }
        if self.live.clients >= self.live.max_clients:
            raise Busy("too many live clients; try again later")
        replaying = Ticket(None)
        if last_id is not None:
            if last_id < self.now() - REPLAY_DEPTH:
                raise BadParameter(
                    "Last-Event-ID", f"a stream resumes at most {REPLAY_DEPTH} ms"
                    f" ({REPLAY_DEPTH // 60_000} minutes) back; open it without Last-Event-ID",
                )
            replaying = self.heavy.take(request)
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        with replaying:
            if request.method == b"HEAD":
                return b""
            stream = self.live.open(request, meters)
            try:
                await self.live.run(stream, last_id, replaying.release)
            finally:
                stream.end()
        return None


def _last_event_id(request: IRequest) -> Optional[int]:
    raw = request.getHeader(b"last-event-id")
    if raw is None:
        return None
    text = raw.decode("latin-1").strip()
    if not _EVENT_ID.fullmatch(text):
        raise BadParameter("Last-Event-ID", f"must be the stamp of an event, not {text[:40]!r}")
    return int(text)

