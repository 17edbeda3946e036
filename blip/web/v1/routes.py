"""
The modern API under ``/api/v1``: meters with their settings and last
point, power in W at a resolution that fits, energy and cost per calendar
period, the gaps in the readings, every point streamed as JSON or CSV, a
live stream of Server-Sent Events, and the write API for devices with a
token (see :mod:`blip.web.v1.writes`); described by the OpenAPI document
it serves at ``/api/v1/openapi.json``.

Times are unix ms; ranges are half-open, ``from <= t < to``. Every error is
``application/problem+json`` (RFC 9457) whose ``detail`` also appears as
``error``, as in the legacy routes' ``{"error": "..."}``.
"""

from dataclasses import replace
from functools import wraps
from typing import Any, Awaitable, Callable, Optional

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request

from blip.db.v1 import V1Queries
from blip.meters import Meter, Meters
from blip.model import Point
from blip.web.answers import (
    V1,
    V1_PREFIX,
    RawSince,
    Style,
    dress,
    encode,
    json_body,
    kept_for_ever,
    options,
    say_raw_since,
)
from blip.web.errors import Busy, NotFound, answer_error
from blip.web.latest import Latest
from blip.web.limits import (
    DEFAULT_PERIOD,
    MAX_MIN_GAP,
    PERIODS,
    POWER_POINTS,
    POWER_POINTS_CAP,
    READINGS_LIMIT,
    REPLAY_DEPTH,
)
from blip.web.paths import meter_id
from blip.web.v1.export import Export
from blip.web.v1.heavy import Heavy, Ticket
from blip.web.v1.live import STREAM_HEADERS, Live, replayable
from blip.web.v1.openapi import document
from blip.web.v1.query import EARLIEST, BadParameter, Query, last_event_id
from blip.web.v1.series import Series
from blip.web.v1.writes import Writes, check_batch, read_batch

PREFIX = V1_PREFIX.decode()
#: A range without ``from`` starts this long before its end.
DEFAULT_SPAN = 86_400_000

Handler = Callable[..., Awaitable[Any]]


#: The answers of a path that also takes POST (the write API).
WRITABLE = replace(V1, allow=b"GET, HEAD, OPTIONS, POST")


def route(app: Klein, path: str, style: Style = V1) -> Callable[[Handler], Handler]:
    """
    Register a route of the API at ``PREFIX + path``, answering GET and HEAD
    with what the handler returns (data as JSON; bytes or None when it
    wrote the answer itself) and OPTIONS with the CORS headers and the
    ``Allow`` header of ``style``.
    """

    def register(f: Handler) -> Handler:
        @wraps(f)
        async def handler(self: Any, request: IRequest, **kwargs: str) -> Optional[bytes]:
            if request.method == b"OPTIONS":
                return options(request, style)
            dress(request, V1)
            result = await f(self, request, **kwargs)
            if result is None or isinstance(result, bytes):
                return result
            return json_body(request, encode(result))

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
    :param latest: each meter's last point.
    :param live: the live streams.
    :param meters: the configured meters.
    :param clock: the current time, for ranges that end now.
    :param writes: the write API.
    :param raw_since: since when raw points are kept.
    """

    app = Klein()
    # Empty path segments are not merged away (werkzeug would answer them
    # with a redirect): such a path matches no route.
    app.url_map.merge_slashes = False
    log = Logger()

    def __init__(
        self, store: V1Queries, latest: Latest, live: Live, meters: Meters, clock: IReactorTime,
        writes: Writes, raw_since: RawSince = kept_for_ever,
    ) -> None:
        self.store = store
        self.writes = writes
        self.latest = latest
        self.live = live
        self.meters = meters
        self.clock = clock
        self.raw_since = raw_since
        self.series = Series(store, raw_since)
        self.heavy = Heavy()
        self._document = encode(document())

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
        return answer_error(request, failure, self.log, V1)

    async def meter(self, text: str) -> Meter:
        """
        :return: the settings of the meter a path names.
        :raise NotFound: unless it is configured or has readings.
        """
        m = meter_id(text)
        if m in self.meters or await self.latest.point(m) is not None:
            return self.meters.get(m)
        raise NotFound(f"unknown meter {m}")

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
        return json_body(request, self._document)

    @route(app, "/meters")
    async def list_meters(self, request: IRequest) -> Any:
        latest = await self.latest.points(m.id for m in self.meters)
        ids = sorted({m.id for m in self.meters} | set(latest))
        return {"meters": [meter_json(self.meters.get(m), latest.get(m)) for m in ids]}

    @route(app, "/meters/<meter>")
    async def one_meter(self, request: IRequest, meter: str) -> Any:
        settings = await self.meter(meter)
        return meter_json(settings, await self.latest.point(settings.id))

    @route(app, "/meters/<meter>/power")
    async def power(self, request: IRequest, meter: str) -> Any:
        settings = await self.meter(meter)
        query = Query(request)
        first, last = self.span(query, settings)
        max_points = query.integer("max_points", POWER_POINTS, 1, POWER_POINTS_CAP)
        power = await self.series.power(settings, first, last, max_points)
        return {
            "meter": settings.id,
            "from": first,
            "to": last,
            "resolution_ms": power.resolution_ms,
            "raw_since": self._raw_since(request),
            "points": power.points,
        }

    @route(app, "/meters/<meter>/energy")
    async def energy(self, request: IRequest, meter: str) -> Any:
        settings = await self.meter(meter)
        query = Query(request)
        first, last = self.span(query, settings)
        period = query.choice("period", DEFAULT_PERIOD, PERIODS)
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
            min_gap = query.integer("min_gap", 0, 1, MAX_MIN_GAP)
        gaps = await self.series.gaps(settings, first, last, self.now(), min_gap)
        return {
            "meter": settings.id,
            "from": first,
            "to": last,
            "raw_since": self._raw_since(request),
            "min_gap": gaps.min_gap,
            "gaps": [
                {"from": g.start, "to": g.end, "kind": g.kind}
                | ({} if g.peer is None else {"peer": g.peer})
                for g in gaps.gaps
            ],
            "repairs": [
                {"from": r.start, "to": r.end, "peer": r.peer, "points": r.points, "at": r.at}
                for r in gaps.repairs
            ],
            "next": gaps.next,
        }

    @route(app, "/meters/<meter>/readings", WRITABLE)
    async def readings(self, request: Request, meter: str) -> Optional[bytes]:
        settings = await self.meter(meter)
        query = Query(request)
        first, last = self.span(query, settings)
        csv = query.choice("format", "json", ("json", "csv")) == "csv"
        limit = None
        if query.text("limit") is not None:
            limit = query.integer("limit", 0, 1, READINGS_LIMIT)
        # A page of at most READINGS_LIMIT points is light, whatever its range.
        heavy = self.heavy.take(request, last - first) if limit is None else Ticket(None)
        if csv:
            request.setHeader(b"Content-Type", b"text/csv; charset=utf-8")
            request.setHeader(
                b"Content-Disposition",
                b'attachment; filename="meter-%d-%d-%d.csv"' % (settings.id, first, last),
            )
        else:
            request.setHeader(b"Content-Type", b"application/json")
        with heavy:
            raw_since = self._raw_since(request)
            if request.method == b"HEAD":
                return b""
            await Export(self.store, settings.id, first, last, csv, raw_since, limit).write_to(request)
        return None

    @app.route(PREFIX + "/meters/<meter>/readings", methods=["POST"], endpoint="write_readings")
    async def write_readings(self, request: IRequest, meter: str) -> bytes:
        dress(request, V1)
        m = meter_id(meter)
        await self.writes.authorise(request, m)
        media = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        assert request.content is not None  # a request with a body has one
        points = read_batch(request.content.read(), media)
        check_batch(points, self.now())
        return json_body(request, encode(await self.writes.write(m, points)))

    def _raw_since(self, request: IRequest) -> Optional[int]:
        """
        Say in the answer's headers since when raw points are kept.

        :return: the unix ms before which raw points were dropped, None when
            none were.
        """
        since = self.raw_since()
        say_raw_since(request, since)
        return since

    @route(app, "/live")
    async def live_points(self, request: Request) -> Any:
        query = Query(request)
        meters = query.meters("meters")
        last_id = last_event_id(request)
        if meters is not None:
            for m in meters:
                await self.meter(str(m))
        accept = (request.getHeader(b"accept") or b"").lower()
        if b"text/event-stream" not in accept:
            latest = await self.latest.points(m.id for m in self.meters)
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
            if not replayable(last_id, self.now()):
                raise BadParameter(
                    "Last-Event-ID", f"a stream resumes at most {REPLAY_DEPTH} ms"
                    f" ({REPLAY_DEPTH // 60_000} minutes) back; open it without Last-Event-ID",
                )
            replaying = self.heavy.take(request)
        for name, value in STREAM_HEADERS:
            request.setHeader(name, value)
        with replaying:
            if request.method == b"HEAD":
                return b""
            stream = self.live.open(request, meters)
            try:
                await self.live.run(stream, last_id, replaying.release)
            finally:
                stream.end()
        return None

