"""
The write API: ``POST /api/v1/meters/<id>/readings`` takes a batch of a
meter's points from a device with a token (a logger elsewhere, another
blipserver forwarding its points), as JSON ``[[stamp, ms], ...]`` or as
CSV ``stamp,ms`` lines.

A request is authorised by ``Authorization: Bearer <token>`` (see
:mod:`blip.db.tokens`); a token writes only its meters. Each refusal is a
401 (no token, or one that is malformed, unknown or revoked) or a 403 (a
token of other meters), counted. The batch is checked whole before
anything is stored: at most :data:`~blip.web.limits.WRITE_POINTS` points,
stamps strictly increasing and at most
:data:`~blip.web.limits.WRITE_AHEAD` seconds ahead of this node's clock,
ms from 1; a point already stored is skipped, so a batch sent again stores
nothing twice. Points stamped within the live window (as
:mod:`blip.live.notify` takes announced points) go to this node's
long-polls and live streams and are announced to other nodes, as if read
from a serial line; older ones are history, stored quietly, as
``blip import`` stores them.
"""

import json
from typing import Any, Callable, Coroutine, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from blip.common.throttle import Throttle
from blip.common.waiting import detached
from blip.counters import Counters
from blip.db.readings import Readings
from blip.db.tokens import BadToken, Grant, Tokens
from blip.live.hub import Hub
from blip.live.notify import PAST
from blip.model import INT_MAX, Point, csv_points
from blip.web.errors import ApiError, BadRequest, Forbidden, Unauthorized, Unsupported
from blip.web.limits import WRITE_AHEAD, WRITE_POINTS

#: Seconds between two log lines about refused writes.
LOG_INTERVAL = 60.0
#: The media types of a batch.
JSON, CSV = b"application/json", b"text/csv"


def bearer(request: IRequest) -> str:
    """
    :return: the token of the request's ``Authorization: Bearer`` header.
    :raise Unauthorized: without one.
    """
    values: list[bytes] = request.requestHeaders.getRawHeaders(b"authorization") or []
    if not values:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    if len(values) > 1:
        raise Unauthorized("more than one Authorization header")
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("malformed token: expected Authorization: Bearer <token>")
    return token


def read_batch(body: bytes, media: bytes) -> list[tuple[int, int]]:
    """
    :param media: the body's media type (``application/json`` or
        ``text/csv``, without parameters).
    :return: the ``(stamp, ms)`` pairs of a batch, in order.
    :raise Unsupported: for another media type.
    :raise BadRequest: for a body that is not a batch of points.
    """
    if media == JSON:
        return _json_batch(body)
    if media == CSV:
        return _csv_batch(body)
    raise Unsupported(
        "Content-Type must be application/json ([[stamp, ms], ...]) or text/csv (stamp,ms lines)"
    )


def _json_batch(body: bytes) -> list[tuple[int, int]]:
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("body is not JSON") from None
    if not isinstance(data, list):
        raise BadRequest("body must be a JSON array of [stamp, ms] pairs")
    if len(data) > WRITE_POINTS:
        raise BadRequest(f"more than {WRITE_POINTS} points in one batch")
    points: list[tuple[int, int]] = []
    for index, pair in enumerate(data):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(type(value) is int for value in pair)
        ):
            raise BadRequest(f"point {index}: not a pair of integers [stamp, ms]")
        points.append((pair[0], pair[1]))
    return points


def _csv_batch(body: bytes) -> list[tuple[int, int]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    points: list[tuple[int, int]] = []
    for line, point in csv_points(text.splitlines()):
        if isinstance(point, str):
            raise BadRequest(f"line {line}: {point}")
        if len(points) == WRITE_POINTS:
            raise BadRequest(f"more than {WRITE_POINTS} points in one batch")
        points.append(point)
    return points


def check_batch(points: list[tuple[int, int]], now: int) -> None:
    """
    :param now: the current unix time in ms.
    :raise BadRequest: naming the first point that is out of range, stamped
        more than :data:`WRITE_AHEAD` seconds ahead of ``now``, or not
        after the one before it.
    """
    newest = now + WRITE_AHEAD * 1000
    previous = None
    for index, (stamp, ms) in enumerate(points):
        if not 1 <= ms <= INT_MAX:
            raise BadRequest(f"point {index}: ms must be from 1 to {INT_MAX}, not {ms}")
        if stamp < 0:
            raise BadRequest(f"point {index}: stamp {stamp} is before 1970")
        if stamp > newest:
            raise BadRequest(
                f"point {index}: stamp {stamp} is {(stamp - now) / 1000:.0f} s ahead of this"
                f" server's clock (at most {WRITE_AHEAD} s)"
            )
        if previous is not None and stamp <= previous:
            raise BadRequest(f"point {index}: stamps must strictly increase ({stamp} after {previous})")
        previous = stamp


T = TypeVar("T")


def _whole(work: Coroutine[Any, Any, T]) -> "Deferred[T]":
    """
    :return: a Deferred of ``work`` (a query) that a client hanging up
        does not cancel: the query runs to its end (cancelling one would
        block on psycopg2's cancel, and a write is better finished).
    """
    return detached(Deferred.fromCoroutine(work))


class Writes:
    """
    Authorises and stores batches of points.

    :param tokens: the device tokens.
    :param store: where points are written (the primary database).
    :param hub: where recent points go live.
    :param counters: where stored points and refusals are counted.
    :param clock: the current time.
    :param notice: told of each meter written to (which makes a meter
        not known yet known, with the default settings).
    """

    log = Logger()

    def __init__(
        self,
        tokens: Tokens,
        store: Readings,
        hub: Hub,
        counters: Counters,
        clock: IReactorTime,
        notice: Callable[[int], None],
    ) -> None:
        self.tokens = tokens
        self.store = store
        self.hub = hub
        self.counters = counters
        self.clock = clock
        self.notice = notice
        self._refusals = Throttle(clock, LOG_INTERVAL)

    def now(self) -> int:
        """:return: the current unix time in ms."""
        return int(self.clock.seconds() * 1000)

    async def authorise(self, request: IRequest, meter: int) -> Grant:
        """
        :return: what the request's token may do, if it may write ``meter``.
        :raise Unauthorized: without a valid token.
        :raise Forbidden: for a token of other meters.
        """
        try:
            token = bearer(request)
            try:
                grant = await _whole(self.tokens.check(token))
            except BadToken as e:
                raise Unauthorized(str(e)) from None
            if meter not in grant.meters:
                raise Forbidden(f"this token may not write meter {meter}")
        except Unauthorized as e:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="blipserver", error="invalid_token"')
            self._refused(request, e)
            raise
        except Forbidden as e:
            self._refused(request, e)
            raise
        return grant

    async def write(self, meter: int, points: list[tuple[int, int]]) -> dict[str, Any]:
        """
        Store a checked batch of ``meter``'s points: those older than the
        live window quietly, the others announced, and those of them newer
        than any the hub has seen handed to it.

        :return: how many points were stored, and how many were there
            already.
        """
        self.notice(meter)
        batch = [Point(meter, stamp, ms) for stamp, ms in points]
        live_from = self.now() - int(PAST * 1000)
        split = next((i for i, p in enumerate(batch) if p.stamp >= live_from), len(batch))
        history, recent = batch[:split], batch[split:]
        stored = 0
        if history:
            stored += await _whole(self.store.insert(history, announce=False))
        if recent:
            stored += await _whole(self.store.insert(recent))
            last = self.hub.last(meter)
            for point in recent:
                if last is None or point.stamp > last.stamp:
                    self.hub.publish(point)
        self.counters.api_stored += stored
        return {"stored": stored, "duplicates": len(batch) - stored}

    def _refused(self, request: IRequest, error: ApiError) -> None:
        self.counters.api_refused += 1
        held = self._refusals.due()
        if held is not None:
            self.log.warn(
                "refused {count} writes since the last such line; the last from {client}:"
                " {why}",
                count=held + 1,
                client=getattr(request.getClientAddress(), "host", "?"),
                why=error.message,
            )
