"""
The live stream: Server-Sent Events of every new point to each client that
asked for its meter, with heartbeats, resumption after a reconnect, and no
patience for clients that cannot keep up.

A client resuming with ``Last-Event-ID: <stamp>`` first gets, in stamp
order, every point of its meters after that stamp: from the database, then
from the points kept here that the database may not have yet, then the
points that arrived meanwhile. A meter's point is never sent twice.

Each meter's stamps strictly increase, and ingest stamps points of all
meters from one clock in the order they arrive, so "after the last stamp
seen" is exact but for one case: a meter whose stamp was pushed ahead of
the clock (two blips in one millisecond) followed within that millisecond
by another meter's point.
"""

from collections import deque
from typing import Callable, Iterable, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Request

from blip.db.readings import Readings
from blip.live.hub import Hub
from blip.meters import Meter, Meters
from blip.model import INT_MAX, Point
from blip.web.answers import encode
from blip.web.backpressure import Backpressure, Outlet, RequestOutlet
from blip.web.limits import REPLAY_DEPTH

#: Seconds between heartbeat comments.
HEARTBEAT = 15.0
#: Newest points kept (of all meters together: memory stays bounded however
#: many meters blink), for clients resuming while the database catches up.
KEEP = 10_000
#: Events a client may fall behind by before it is dropped.
MAX_BACKLOG = 1000
#: Points read from the database at a time when replaying.
PAGE = 2000
#: How long a client waits before reconnecting, in ms.
RETRY = 2000


#: The headers of a live stream's answer, after the CORS and caching ones
#: (whose ``Cache-Control`` the stream's replaces).
STREAM_HEADERS = (
    (b"Content-Type", b"text/event-stream"),
    (b"Cache-Control", b"no-cache"),
    (b"X-Accel-Buffering", b"no"),
)


class Stream:
    """
    One client's event stream.

    :param live: the live hub it belongs to.
    :param outlet: where its events go: its request's answer, the status
        and headers set, or its connection, the head written.
    :param meters: the meters it follows; None for every meter.
    """

    __slots__ = ("live", "meters", "sent", "held", "ended", "producer", "_done")

    log = Logger()

    def __init__(self, live: "Live", outlet: Outlet, meters: Optional[frozenset[int]]) -> None:
        self.live = live
        self.meters = meters
        #: The stamp of the last point sent, per meter.
        self.sent: dict[int, int] = {}
        #: Points that arrive while the stream replays, sent after it.
        self.held: Optional[deque[Point]] = None
        #: Whether the stream is over.
        self.ended = False
        #: Knows whether the client's connection takes more.
        self.producer = Backpressure(outlet)
        self._done: Optional[Deferred[None]] = None

    @property
    def done(self) -> "Deferred[None]":
        """
        Fires when the stream is over.
        """
        if self._done is None:
            self._done = Deferred()
            if self.ended:
                self._done.callback(None)
        return self._done

    def wants(self, point: Point) -> bool:
        """
        :return: whether ``point`` is of a meter this stream follows.
        """
        return self.meters is None or point.meter in self.meters

    def offer(self, point: Point) -> None:
        """
        Take a new live point: hold it while replaying, else send it.
        """
        if not self.wants(point):
            return
        if self.held is not None:
            self.held.append(point)
            if len(self.held) > MAX_BACKLOG:
                self.drop("fell behind while catching up")
        else:
            self.send(point)

    def send(self, point: Point) -> None:
        """
        Send ``point`` unless this meter's point at that stamp or a later
        one was sent already.
        """
        if point.stamp <= self.sent.get(point.meter, -(2**63)):
            return
        self.sent[point.meter] = point.stamp
        self.write(self.live.event(point))

    def write(self, data: bytes) -> None:
        """
        Write ``data``, or queue it while the connection is saturated; drop
        the client when its queue is full.
        """
        if not self.ended and self.producer.send(data) > MAX_BACKLOG:
            self.drop("too slow")

    async def pace(self) -> None:
        """
        Wait, if the connection is saturated, until it takes data again.
        """
        if not self.ended:
            await self.producer.ready()

    def drop(self, why: str) -> None:
        """
        End the stream of a client that does not keep up; it reconnects
        and resumes from the last event it got.
        """
        self.log.warn("dropping live client {peer}: {why}", peer=self.producer.outlet.peer(), why=why)
        self.live.dropped += 1
        self.end()

    def end(self) -> None:
        """
        Forget the stream and let its outlet finish the answer.
        """
        if self.ended:
            return
        self.ended = True
        self.live.forget(self)
        self.producer.close()
        if self._done is not None and not self._done.called:
            self._done.callback(None)


def replayable(last_id: int, now: int) -> bool:
    """
    :param last_id: the ``Last-Event-ID`` a stream resumes from.
    :param now: the unix time in ms.
    :return: whether what came after it is replayed: at most
        :data:`~blip.web.limits.REPLAY_DEPTH` back.
    """
    return last_id >= now - REPLAY_DEPTH


class Live:
    """
    Hands every point the hub publishes to the open streams, keeps the
    latest points of each meter, and beats the heart of every stream.

    :param hub: the source of live points.
    :param store: where replays read missed points.
    :param meters: the meters' settings, for the power in W.
    :param clock: times the heartbeats.
    :param max_clients: how many streams may be open at once.
    """

    log = Logger()

    def __init__(
        self,
        hub: Hub,
        store: Readings,
        meters: Meters,
        clock: IReactorTime,
        max_clients: int = 10_000,
    ) -> None:
        self.store = store
        self.meters = meters
        self.clock = clock
        self.max_clients = max_clients
        #: Streams dropped for falling behind, since start.
        self.dropped = 0
        #: The open streams (a dict for its order).
        self.streams: dict[Stream, None] = {}
        self._recent: deque[Point] = deque(maxlen=KEEP)
        # The newest point's event, written to every stream as it is, with
        # the point and the meter settings it was made from.
        self._event: tuple[Optional[Point], Optional[Meter], bytes] = (None, None, b"")
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = clock
        self._unlisten: Optional[Callable[[], None]] = hub.listen(self._publish)

    @property
    def clients(self) -> int:
        """How many streams are open."""
        return len(self.streams)

    def event(self, point: Point) -> bytes:
        """
        :return: the Server-Sent Event of ``point``.
        """
        meter = self.meters.get(point.meter)
        if self._event[0] is point and self._event[1] is meter:
            return self._event[2]
        data = encode(
            {
                "meter": point.meter,
                "stamp": point.stamp,
                "ms": point.ms,
                "watts": meter.watts(point.ms),
            }
        )
        event = b"id: %d\nevent: point\ndata: %s\n\n" % (point.stamp, data)
        self._event = (point, meter, event)
        return event

    def open(self, request: Request, meters: Optional[Iterable[int]]) -> Stream:
        """
        Start a stream on ``request`` (whose status and headers are set).
        """
        stream = self.attach(RequestOutlet(request), None if meters is None else frozenset(meters))
        request.notifyFinish().addBoth(lambda _: stream.end())
        return stream

    def attach(self, outlet: Outlet, meters: Optional[frozenset[int]]) -> Stream:
        """
        Start a stream whose events go to ``outlet``; it ends when the
        client hangs up (whoever sees that calls :meth:`Stream.end`), falls
        behind, or the daemon stops.
        """
        stream = Stream(self, outlet, meters)
        self.streams[stream] = None
        if not self._beat.running:
            self._beat.start(HEARTBEAT, now=False).addErrback(
                lambda f: self.log.failure("heartbeat failed", f)
            )
        stream.write(b"retry: %d\n\n" % RETRY)
        return stream

    def forget(self, stream: Stream) -> None:
        """
        Stop sending to ``stream``.
        """
        self.streams.pop(stream, None)
        if not self.streams and self._beat.running:
            self._beat.stop()

    async def run(
        self, stream: Stream, last_id: Optional[int], replayed: Callable[[], None] = lambda: None
    ) -> None:
        """
        Replay what the client missed after ``last_id`` (if given), then
        send live points until the stream ends.

        :param replayed: called when the replay is over.
        """
        if last_id is not None:
            await self.resume(stream, last_id, replayed)
        await stream.done

    async def resume(self, stream: Stream, last_id: int, replayed: Callable[[], None] = lambda: None) -> None:
        """
        Replay what the client missed after ``last_id``, and the points that
        came meanwhile; live points follow as they come.

        :param replayed: called when the replay is over.
        """
        held = stream.held = deque()
        try:
            await self._replay(stream, last_id)
            # Points that came meanwhile, and those that come while these
            # are sent, in order.
            while held and not stream.ended:
                await stream.pace()
                stream.send(held.popleft())
        finally:
            stream.held = None
            replayed()

    async def _replay(self, stream: Stream, last_id: int) -> None:
        if stream.meters is not None:
            meters = sorted(stream.meters)
        else:
            known = {m.id for m in self.meters} | {p.meter for p in self._recent}
            known |= {p.meter for p in await self.store.last_points()}
            meters = sorted(known)
        stamp, meter = last_id, INT_MAX
        while not stream.ended:
            page = await self.store.points_after(meters, stamp, meter, PAGE)
            for point in page:
                await stream.pace()
                stream.send(point)
            if len(page) < PAGE:
                break
            stamp, meter = page[-1].stamp, page[-1].meter
        wanted = set(meters)
        recent = [p for p in self._recent if p.stamp > last_id and p.meter in wanted]
        for point in sorted(recent, key=lambda p: (p.stamp, p.meter)):
            await stream.pace()
            stream.send(point)

    def _publish(self, point: Point) -> None:
        self._recent.append(point)
        for stream in list(self.streams):
            stream.offer(point)

    def _heartbeat(self) -> None:
        for stream in list(self.streams):
            stream.write(b": heartbeat\n\n")

    def close(self) -> None:
        """
        End every stream and stop listening (shutdown).
        """
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        for stream in list(self.streams):
            stream.end()


class LiveService(Service):
    """
    Ends the live streams when the daemon stops, so that their clients
    reconnect elsewhere.
    """

    def __init__(self, live: Live) -> None:
        self.live = live

    def stopService(self) -> None:
        super().stopService()
        self.live.close()
