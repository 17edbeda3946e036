"""
The lean path: the requests clients repeat all day long, answered right on
the connection without Twisted Web's request machinery, so that a parked
client costs a socket and a few small objects, and a blip to thousands of
them little more than one system call each: ``/blip`` long-polls,
``/last`` from memory, and ``/api/v1/live`` streams; and the other legacy
routes (``/hourly/...``, ``/since/...``), whose answers cost their query
and little else.

Every connection starts with a :class:`Front`, which reads each request's
head itself. A request it can answer plainly — a GET over HTTP/1.1 of one
of those routes, with no body and only headers it understands, from a
client served as it is, for a point in memory or a meter known — it
answers; at the first other one it hands the connection, with all it has
read, to Twisted Web's channel for good, and that request and every later
one go the usual way: errors, refusals and every other route are the
site's. The answers are the same bytes as the usual way's (rendered once
per point by :mod:`blip.web.hot` and :mod:`blip.web.v1.live`, by
:mod:`blip.web.legacy` for the other legacy routes), counted in the same
metrics, under the same deadlines.
"""

import re
import time
from typing import Any, Callable, Generic, Optional, Protocol, Sequence, TypeVar, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from blip.live.hub import Hub
from blip.model import DEFAULT_METER, INT_MAX, Point
from blip.web.access import IP, Rules
from blip.web.answers import LEGACY, V1, Cors, HeaderPairs, closing, whole_answer
from blip.web.channel import good_host
from blip.web.connections import Entry
from blip.web.errors import BadRequest, error_answer, judge
from blip.web.hot import HotRoutes
from blip.web.lane import Lane
from blip.web.legacy import ROUTES, LegacyApi, Route, route_of
from blip.web.limits import MAX_DIGITS
from blip.web.metrics import RequestMetrics, RouteNamer
from blip.web.twisted_private import hand_over, send
from blip.web.v1.heavy import RETRY_HEADERS, Heavy
from blip.web.v1.live import STREAM_HEADERS, Live, Stream, replayable
from blip.web.v1.query import MAX_VALUE, event_id

#: Longest head read here; a longer one goes the usual way (its refusals
#: are the channel's).
MAX_HEAD = 4096
#: Most headers of a head read here.
MAX_HEADERS = 100
#: Bytes read ahead while a request waits (pipelined requests); beyond it
#: the connection is not read until the answer is out.
MAX_AHEAD = 16384

_REQUEST_LINE = re.compile(rb"GET (/[!-~]*) HTTP/1\.1")
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HOT = re.compile(rb"/(blip|last)(?:/([0-9]{1,%d}))?" % MAX_DIGITS)
_LIVE = b"/api/v1/live"
# A path of the other legacy routes read here: segments of letters, digits
# and underscores (none percent-encoded, as the usual way would decode it).
_LEGACY = re.compile(rb"(?:/[0-9A-Za-z_]+)+")
# A query of meter ids that the usual way reads as it is (others go there).
_METERS = re.compile(rb"meters=([0-9]{1,10}(?:,[0-9]{1,10})*)")
#: The headers read; any other is let be.
_READ = frozenset(
    {
        b"host", b"connection", b"origin", b"accept", b"last-event-id", b"forwarded",
        b"x-forwarded-for", b"content-length", b"transfer-encoding", b"expect",
    }
)
#: Most heads remembered as read (most clients send the same head again and
#: again).
MAX_HEADS = 256
#: The end of a stream's chunked answer.
_LAST_CHUNK = b"0\r\n\r\n"

_log = Logger()


class Head:
    """
    What a request's head says, as far as the lean path reads it.

    :param kind: its route: ``blip``, ``last``, ``live`` or ``legacy`` (the
        other legacy routes).
    """

    __slots__ = (
        "kind", "meter", "numbered", "meters", "close", "origin", "accept", "last_event_id", "forwarded",
        "x_forwarded", "route", "path", "target",
    )

    def __init__(self, kind: bytes, target: bytes) -> None:
        self.kind = kind
        #: The request target, and the legacy route of its path and the
        #: path's segments (``legacy``).
        self.target = target
        self.route: Optional[Route] = None
        self.path: Sequence[bytes] = ()
        #: The meter of ``blip`` and ``last``, and whether the path named it.
        self.meter = DEFAULT_METER
        self.numbered = False
        #: The meters a live stream asks for; None for every meter.
        self.meters: Optional[frozenset[int]] = None
        #: Whether the client asks to close the connection after the answer.
        self.close = False
        #: Its last ``Origin`` and ``Accept`` headers, if any.
        self.origin: Optional[bytes] = None
        self.accept = b""
        #: Its last ``Last-Event-ID`` header, if any.
        self.last_event_id: Optional[bytes] = None
        #: Its ``Forwarded`` and ``X-Forwarded-For`` headers.
        self.forwarded: list[bytes] = []
        self.x_forwarded: list[bytes] = []


def _route(target: bytes) -> Optional[Head]:
    # The lean route of a request target, if it is one.
    path, mark, query = target.partition(b"?")
    if path == _LIVE:
        head = Head(b"live", target)
        if mark:
            given = _METERS.fullmatch(query)
            if given is None or len(query) > len(b"meters=") + MAX_VALUE:
                return None
            head.meters = frozenset(int(m) for m in given.group(1).split(b","))
        return head
    hot = _HOT.fullmatch(path)
    if hot is None:
        return _legacy(path, target)
    # The query of /blip and /last changes nothing.
    kind, number = hot.groups()
    head = Head(kind, target)
    if number is not None:
        head.meter, head.numbered = int(number), True
        if head.meter > INT_MAX:
            return None
    return head


def _legacy(path: bytes, target: bytes) -> Optional[Head]:
    # The head of a GET of one of the other legacy routes, if it is one (its
    # query changes nothing either).
    if _LEGACY.fullmatch(path) is None:
        return None
    segments = path[1:].split(b"/")
    route = route_of(segments)
    if route is None or route.handler is None:
        return None
    head = Head(b"legacy", target)
    head.route, head.path = route, segments
    return head


#: The legacy route of /last/<n>.
_LAST_OR_RECENT = ROUTES[b"last", 2]


def read_head(head: bytes) -> Optional[Head]:
    """
    Read a request's head (its request line and header lines, without the
    blank line that ends it).

    :return: what it says, or None unless it is a GET over HTTP/1.1 of a
        route of the lean path, with no body, with lines that Twisted Web
        would take as they are (no folded or malformed header, no bare CR
        or LF, no NUL), one good ``Host`` at most, and nothing that asks
        for more than an answer (``Expect``).
    """
    lines = head.split(b"\r\n")
    ends = len(lines) - 1
    if head.count(b"\n") != ends or head.count(b"\r") != ends or b"\0" in head or ends > MAX_HEADERS:
        return None
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        return None
    parsed = _route(line.group(1))
    if parsed is None:
        return None
    connection: Optional[bytes] = None
    host = length = False
    for line_ in lines[1:]:
        name, colon, value = line_.partition(b":")
        if not colon or _NAME.fullmatch(name) is None:
            return None
        name = name.lower()
        if name not in _READ:
            continue
        value = value.strip(b" \t")
        if name == b"host":
            if host or not good_host(value):
                return None
            host = True
        elif name == b"connection":
            # Twisted reads the first one, split at spaces.
            if connection is None:
                connection = value
        elif name == b"origin":
            parsed.origin = value
        elif name == b"accept":
            parsed.accept = value
        elif name == b"last-event-id":
            parsed.last_event_id = value
        elif name == b"forwarded":
            parsed.forwarded.append(value)
        elif name == b"x-forwarded-for":
            parsed.x_forwarded.append(value)
        elif name != b"content-length" or length or value.strip(b"0") or not value:
            # A body, chunks, an expectation, or two lengths: the usual way.
            return None
        else:
            length = True
    if connection is not None:
        parsed.close = b"close" in connection.lower().split(b" ")
    return parsed


Who = TypeVar("Who")


class Deadlines(Generic[Who]):
    """
    Each of some parties has until a deadline, the same time after it is
    armed; those whose deadline passes are handed to ``expire``. As the
    deadlines come in the order they are armed, one timer, for the
    earliest, serves them all: arming and disarming cost a dict operation.

    :param clock: times the deadlines.
    :param expire: called with each party whose deadline passed (no longer
        armed).
    """

    def __init__(self, clock: IReactorTime, expire: Callable[[Who], None]) -> None:
        self.clock = clock
        self.expire = expire
        self._due: dict[Who, float] = {}
        self._timer: Optional[IDelayedCall] = None

    def arm(self, who: Who, seconds: float) -> None:
        """
        Give ``who`` until ``seconds`` from now (counted afresh if armed).
        """
        due = self._due
        due.pop(who, None)
        due[who] = self.clock.seconds() + seconds
        if self._timer is None:
            self._timer = self.clock.callLater(seconds, self._check)

    def disarm(self, who: Who) -> None:
        """
        ``who`` has no deadline any more.
        """
        self._due.pop(who, None)

    def __len__(self) -> int:
        return len(self._due)

    def _check(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        passed = []
        for who, when in self._due.items():
            if when > now:
                self._timer = self.clock.callLater(when - now, self._check)
                break
            passed.append(who)
        for who in passed:
            del self._due[who]
        for who in passed:
            self.expire(who)


#: What a connection does between requests: reads the next head.
_READING = None
#: What a connection does once it closes or went to the channel: nothing.
_GONE = "gone"
#: What a long-poll does once its answer is out, until the fan-out is over.
_ANSWERED = "answered"
#: What a connection does: reads (None), waits for a meter's point (the
#: meter) or a legacy route's body (its Deferred), streams, or nothing more.
Waiting = Union[None, int, "Deferred[bytes]", Stream, str]


class Lean:
    """
    Answers, on the connection, the requests of the lean path.

    :param hot: ``/blip`` and ``/last``.
    :param live: the live streams.
    :param heavy: admits the replays of resumed streams.
    :param legacy: the other legacy routes.
    :param metrics: where requests are counted and timed.
    :param route: names a request's route.
    :param rules: who is served.
    :param cors: which web pages may read the answers.
    :param reactor: times the deadlines of the requests' heads, and reads
        the connections in a :class:`~blip.web.lane.Lane` where it can.
    :param timer: seconds from some fixed point, for the metrics.
    """

    def __init__(
        self,
        hot: HotRoutes,
        live: Live,
        heavy: Heavy,
        legacy: LegacyApi,
        metrics: RequestMetrics,
        route: RouteNamer,
        rules: Rules,
        cors: Cors,
        reactor: IReactorTime,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.hot = hot
        self.hub: Hub = hot.hub
        self.live = live
        self.heavy = heavy
        self.legacy = legacy
        self.metrics = metrics
        self.rules = rules
        self.cors = cors
        self.timer = timer
        #: Connections waiting for a request's head.
        self.heads: Deadlines[Front] = Deadlines(reactor, Front.timed_out)
        #: Reads the connections, where it can.
        self.lane = Lane(reactor)
        #: Long-polls parked, under --longpoll-timeout.
        self.polls: Deadlines[Front] = Deadlines(hot.clock, Front.no_point)
        self._routes = {
            (kind, numbered): route((kind, b"1") if numbered else (kind,))
            for kind in (b"blip", b"last")
            for numbered in (False, True)
        }
        self._live_route = route((b"api", b"v1", b"live"))
        self._heads: dict[bytes, Head] = {}

    def read(self, head: bytes) -> Optional[Head]:
        """
        :return: what ``head`` says (:func:`read_head`), read once for all
            the requests that send it.
        """
        heads = self._heads
        read = heads.get(head)
        if read is None:
            read = read_head(head)
            if read is not None:
                if len(heads) >= MAX_HEADS:
                    heads.clear()
                heads[head] = read
        return read

    def take(self, front: "Front", head: Head) -> bool:
        """
        Answer ``head``'s request on ``front``'s connection, or park it.

        :return: False when it goes the usual way (nothing done).
        """
        if front.judged and self.rules.refused(front.ip, head.forwarded, head.x_forwarded):
            return False
        kind = head.kind
        if kind == b"live":
            return self._stream(front, head)
        meter = head.meter
        headers = self.cors.headers_for(LEGACY, head.origin)
        if kind == b"legacy":
            assert head.route is not None
            return self._ask(front, head.route, head.path, head, headers)
        if kind == b"last":
            point = self.hub.last(meter)
            if point is None:
                if head.numbered and not self.hot.known(meter):
                    # Not a meter known here: the legacy route tells a meter
                    # with readings from the single-meter original's
                    # /last/<ms>.
                    return self._ask(front, _LAST_OR_RECENT, (b"last", b"%d" % meter), head, headers)
                return False
            front.begin(self._routes[kind, head.numbered], headers, head.close)
            front.reply(self.hot.response(point, headers), 200)
            return True
        hub = self.hub
        if hub.waiting >= hub.max_waiters or not self.hot.known(meter):
            return False
        front.begin(self._routes[kind, head.numbered], headers, head.close)
        front.park(meter)
        hub.park(meter, front)
        if self.hot.longpoll_timeout:
            self.polls.arm(front, self.hot.longpoll_timeout)
        return True

    def _ask(self, front: "Front", route: Route, path: Sequence[bytes], head: Head, headers: HeaderPairs) -> bool:
        # A legacy route's answer, once its body (its query) is there.
        front.begin(route.template, headers, head.close)
        front.ask(self.legacy.body(route, path), head.target)
        return True

    def _stream(self, front: "Front", head: Head) -> bool:
        live = self.live
        if b"text/event-stream" not in head.accept.lower():
            return False
        if live.clients >= live.max_clients:
            return False
        meters = head.meters
        if meters is not None and not all(self.hot.known(m) for m in meters):
            return False
        now = self.hot.clock.seconds()
        cors = self.cors.headers_for(V1, head.origin)
        resumed = None
        if head.last_event_id is not None:
            # A stream resuming: its replay is a heavy request, within its
            # depth (else the usual way refuses it).
            try:
                last_id = event_id(head.last_event_id)
            except BadRequest:
                return False
            if not replayable(last_id, int(now * 1000)):
                return False
            replaying = self.heavy.admit()
            if replaying is None:
                # Refused here, as cheaply as it can be: in a storm of
                # reconnections, refusals must not take the time the
                # replays need.
                headers = cors + RETRY_HEADERS
                front.begin(self._live_route, headers, head.close)
                busy = self.heavy.refusal()
                front.reply(error_answer(busy.status, busy.message, headers, now, problems=True), busy.status)
                return True
            resumed = last_id, replaying
        headers = _merged(cors, STREAM_HEADERS)
        front.begin(self._live_route, headers, head.close)
        front.stream(whole_answer(200, headers + ((b"Transfer-Encoding", b"chunked"),), b"", now))
        stream = front.waiting = live.attach(front, meters)
        if resumed is not None:
            last_id, replaying = resumed
            front.replay(Deferred.fromCoroutine(live.resume(stream, last_id, replaying.release)), head.target)
        return True


def _merged(headers: HeaderPairs, more: HeaderPairs) -> HeaderPairs:
    """
    :return: ``headers`` with each of ``more`` set as a request's
        ``setHeader`` sets it: in the place of one of that name, or last.
    """
    names = {name.lower(): i for i, (name, _) in enumerate(headers)}
    merged = list(headers)
    for name, value in more:
        at = names.get(name.lower())
        if at is None:
            merged.append((name, value))
        else:
            merged[at] = (merged[at][0], value)
    return tuple(merged)


# One chunk of a stream's answer, framed: the last framed (every stream
# gets the same event, one after the other).
_framed: list[bytes] = [b"", b""]


def _chunk(data: bytes) -> bytes:
    if data is not _framed[0]:
        _framed[0], _framed[1] = data, b"%x\r\n%s\r\n" % (len(data), data)
    return _framed[1]


class Site(Protocol):
    """
    What a connection of the lean path needs of its site.
    """

    #: Seconds a connection has for each request's head (None: for ever).
    timeOut: Optional[float]

    def channel(self, addr: Any, entry: Optional[Entry]) -> IProtocol:
        """
        :return: the channel that takes over a connection from ``addr``,
            with its place ``entry`` among the open ones.
        """


@implementer(IProtocol)
class Front:
    """
    A connection, as it starts: requests of the lean path are answered
    here; at the first other one the connection goes to Twisted Web's
    channel, with what arrived.

    :param site: builds the channel, and has the head deadline
        (``timeOut``).
    :param lean: the lean path.
    :param entry: the connection's place among the open ones.
    :param judged: whether each request's client is judged by its
        headers (it comes from a trusted proxy, and ``--allow`` applies).
    :param ip: the address it comes from, to judge by.
    """

    __slots__ = (
        "site", "lean", "entry", "judged", "ip", "transport", "buffer", "waiting",
        "headers", "since", "route", "close", "paused", "fd",
    )

    def __init__(
        self, site: Site, lean: Lean, entry: Entry, judged: bool, ip: Optional[IP]
    ) -> None:
        self.site = site
        self.lean = lean
        self.entry: Optional[Entry] = entry
        self.judged = judged
        self.ip = ip
        self.transport: Any = None
        #: What arrived and is not read yet.
        self.buffer = b""
        #: What the request being answered waits for.
        self.waiting: Waiting = _READING
        #: The CORS and caching headers of that request's answer.
        self.headers: HeaderPairs = ()
        #: When it arrived (the lean path's timer), and its route.
        self.since = 0.0
        self.route = ""
        #: Whether the connection closes after its answer.
        self.close = False
        #: Whether reading waits until its answer is out.
        self.paused = False
        #: The connection's descriptor in the lean path's lane, or -1 while
        #: the transport reads it (kept by the lane).
        self.fd = -1

    # -- IProtocol ----------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        self.lean.lane.take(self)
        self._await_head()

    def dataReceived(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        if self.waiting is _READING:
            self._serve()
        elif len(self.buffer) > MAX_AHEAD and not self.paused and self.waiting is not _GONE:
            self.paused = True
            self.lean.lane.pause(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        lean = self.lean
        lean.heads.disarm(self)
        waiting, self.waiting = self.waiting, _GONE
        if isinstance(waiting, int):
            lean.polls.disarm(self)
            lean.hub.unpark(waiting, self)
            self._count(200)
        elif waiting is _ANSWERED:
            self._count(200)
        elif isinstance(waiting, Stream):
            waiting.end()
            self._count(200)
        elif isinstance(waiting, Deferred):
            # Its query runs on; the answer is not waited for.
            waiting.cancel()
            self._count(200)
        if self.entry is not None:
            self.entry.leave()
            self.entry = None
        lean.lane.forget(self)

    # -- reading requests ---------------------------------------------------

    def _serve(self) -> None:
        # Answer what the buffer holds, until a request waits or a head is
        # not whole.
        lean = self.lean
        answered = False
        while self.waiting is _READING and self.buffer:
            buffer = self.buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD or buffer.startswith(b"\r\n"):
                    self._hand_over()
                break
            head = lean.read(buffer[:end]) if end <= MAX_HEAD else None
            self.buffer = buffer[end + 4:]
            if head is None or not lean.take(self, head):
                self.buffer = buffer
                self._hand_over()
                return
            answered = True
        if answered and self.waiting is _READING:
            self._await_head()

    def _await_head(self) -> None:
        # The next head has until the site's timeout to arrive whole.
        timeout = self.site.timeOut
        if timeout:
            self.lean.heads.arm(self, timeout)

    def _read_on(self) -> None:
        # The answer is out: on to the next request.
        self._await_head()
        if self.buffer:
            self._serve()

    def _hand_over(self) -> None:
        self.lean.heads.disarm(self)
        # The transport reads again, for the channel.
        self.lean.lane.give_back(self, True)
        self.waiting = _GONE
        channel = self.site.channel(self.transport.getPeer(), self.entry)
        self.entry = None
        buffer, self.buffer = self.buffer, b""
        hand_over(self.transport, channel, buffer)

    def timed_out(self) -> None:
        """
        No whole head arrived in time: close the connection, as the
        channel does.
        """
        self._close()

    def _close(self) -> None:
        self.waiting = _GONE
        self.lean.lane.give_back(self, False)
        self.transport.loseConnection()

    # -- answering ------------------------------------------------------------

    def begin(self, route: str, headers: HeaderPairs, close: bool) -> None:
        """
        A request of the lean path arrived: its route, the CORS and caching
        headers of its answer, and whether the connection closes after it.
        """
        self.lean.heads.disarm(self)
        self.since = self.lean.timer()
        self.route = route
        self.headers = headers
        self.close = close

    def reply(self, answer: bytes, status: int) -> None:
        """
        Send ``answer``, the whole answer to the request, with ``status``.
        """
        send(self.transport, closing(answer) if self.close else answer)
        self._done(status)

    def _done(self, status: int) -> None:
        self._count(status)
        if self.close:
            self._close()
            return
        self.waiting = _READING
        if self.paused:
            self.paused = False
            self.lean.lane.resume(self)

    def _count(self, status: int) -> None:
        lean = self.lean
        lean.metrics.observe(self.route, b"GET", status, lean.timer() - self.since)

    # -- the other legacy routes ---------------------------------------------

    def ask(self, body: "Deferred[bytes]", target: bytes) -> None:
        """
        The request's answer is ``body``'s, once it comes (from the
        database); ``target`` names the request in the log.
        """
        if body.called:
            # Its numbers refused at once: answered now, and the next
            # request read as after an answer from memory.
            body.addCallbacks(self._answer, self._failed, errbackArgs=(target,))
            return
        self.waiting = body
        body.addCallbacks(self._answer, self._failed, errbackArgs=(target,)).addCallback(self._answered)

    def _answer(self, body: bytes) -> None:
        if self.waiting is not _GONE:
            self.reply(self.lean.legacy.answer(self.headers, body), 200)

    def _failed(self, failure: Failure, target: bytes) -> None:
        if self.waiting is not _GONE:
            status, answer = self.lean.legacy.failed(self.headers, failure, target)
            self.reply(answer, status)

    def _answered(self, _: None) -> None:
        if self.waiting is _READING:
            self._read_on()

    # -- long-polls (a waiter of the hub) -----------------------------------

    def park(self, meter: int) -> None:
        """
        The request waits for the next point of ``meter``.
        """
        self.waiting = meter

    def point(self, point: Point) -> None:
        """
        The meter's next point: the answer.
        """
        lean = self.lean
        if lean.hot.longpoll_timeout:
            lean.polls.disarm(self)
        answer = lean.hot.response(point, self.headers)
        send(self.transport, closing(answer) if self.close else answer)
        self.waiting = _ANSWERED
        # Its bookkeeping waits until every answer of the fan-out is out,
        # so that the last client of thousands does not wait for it.
        lean.hot.settle_later(self)

    def settle(self) -> None:
        """
        The fan-out that answered the long-poll is over: count it, and go on
        to the next request (unless the client left meanwhile).
        """
        if self.waiting is _ANSWERED:
            self._done(200)
            if self.waiting is _READING:
                self._read_on()

    def released(self, reason: Exception) -> None:
        """
        No point comes (the daemon stops): the error instead.
        """
        self.lean.polls.disarm(self)
        self.reply(self.lean.hot.failure(self.headers, reason), 503)
        if self.waiting is _READING:
            self._read_on()

    def no_point(self) -> None:
        """
        --longpoll-timeout passed first: 204.
        """
        waiting = self.waiting
        if isinstance(waiting, int):
            self.lean.hub.unpark(waiting, self)
            self.reply(self.lean.hot.no_point(self.headers), 204)
            if self.waiting is _READING:
                self._read_on()

    # -- live streams (the outlet of a stream) ------------------------------

    def stream(self, head: bytes) -> None:
        """
        The request is a live stream: its head goes out now, its events
        as they come (:meth:`write`), until it ends
        (:meth:`unregisterProducer`).
        """
        send(self.transport, closing(head) if self.close else head)

    def replay(self, run: "Deferred[None]", target: bytes) -> None:
        """
        The stream first replays what its client missed (``run``). A replay
        that fails cuts the answer short, as the usual way does (``target``
        names the request in the log), and the client resumes from the last
        event it got.
        """
        run.addErrback(self._cut_short, target)

    def _cut_short(self, failure: Failure, target: bytes) -> None:
        waiting = self.waiting
        if not isinstance(waiting, Stream):
            # The client left before the replay failed.
            return
        judge(failure, _log, target, cut_short=True)
        # Gone first, so that the stream's end writes no end of the answer.
        self.waiting = _GONE
        waiting.end()
        self._count(200)
        self.lean.lane.give_back(self, False)
        self.transport.abortConnection()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        # The stream is over: its answer ends, unless the client is gone.
        self.transport.unregisterProducer()
        if isinstance(self.waiting, Stream):
            send(self.transport, _LAST_CHUNK)
            self._done(200)
            if self.waiting is _READING:
                self._read_on()

    def write(self, data: bytes) -> None:
        send(self.transport, _chunk(data))

    def peer(self) -> str:
        address = self.transport.getPeer()
        return str(getattr(address, "host", address))
