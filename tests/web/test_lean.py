"""
Tests of the lean path: the heads it reads, its deadlines, and over real
ports that its answers are byte for byte those of the usual way (a
connection handed over to Twisted Web's channel), that a parked client
holds no request, that what it does not answer goes the usual way, and
that pipelining, deadlines, access control and metrics hold on it.
"""

import gc
import socket
import ssl
from typing import Callable, Optional

import psycopg2
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.web.server import Request

from blip.meters import Meter, Meters
from blip.model import Point
from blip.web.access import Rules, network
from blip.web.answers import Cors
from blip.web.lean import MAX_AHEAD, Deadlines, Front, Lean, read_head
from blip.web.v1.heavy import Heavy
from tests.conftest import (
    TIMEOUT,
    Database,
    Served,
    closed_by_server,
    read_response,
    wait_until,
)

T0 = 1_700_000_000_000
METERS = Meters([Meter(1), Meter(3)])
PAGE = b"https://page.example"
#: Pages of one origin may read the answers: the CORS headers vary.
ONE_PAGE = Cors(frozenset({PAGE}))


@pytest.mark.parametrize(
    "head, kind, meter, meters, close, origin",
    [
        (b"GET /blip/12 HTTP/1.1\r\nHost: x", b"blip", 12, None, False, None),
        (b"GET /last?_=12 HTTP/1.1", b"last", 1, None, False, None),
        (b"GET /api/v1/live?meters=3,1,3 HTTP/1.1", b"live", 1, {1, 3}, False, None),
        (b"GET /last HTTP/1.1\r\nConnection: keep-alive, close\r\nOrigin: a\r\nOrigin: b", b"last", 1, None, True, b"b"),
        (b"GET /last HTTP/1.1\r\nconnection:Close\r\nContent-Length: 00", b"last", 1, None, True, None),
        (b"GET /last HTTP/1.1\r\nConnection: close, te", b"last", 1, None, False, None),
        (b"GET /last HTTP/1.1\r\nX-Any: \x01 odd but allowed", b"last", 1, None, False, None),
    ],
)
def test_heads_read(
    head: bytes, kind: bytes, meter: int, meters: Optional[set[int]], close: bool, origin: Optional[bytes]
) -> None:
    """
    A GET over HTTP/1.1 of a route of the lean path is read: its route,
    meter or meters (a query of /blip or /last changes nothing), whether
    it closes the connection (as Twisted reads ``Connection``: its first
    line, split at spaces), its last ``Origin``; headers it does not need
    are let be.
    """
    read = read_head(head)
    assert read is not None
    assert (read.kind, read.meter, read.meters, read.close, read.origin) == (kind, meter, meters, close, origin)


@pytest.mark.parametrize(
    "head",
    [
        b"HEAD /last HTTP/1.1",
        b"POST /last HTTP/1.1",
        b"GET /last HTTP/1.0",
        b"GET  /last HTTP/1.1",
        b"GET last HTTP/1.1",
        b"GET /last HTTP/1.1\r\nHost: x\r\nHost: y",
        b"GET /last HTTP/1.1\r\nHost: a..b",
        b"GET /last/ HTTP/1.1",
        b"GET /last/%31 HTTP/1.1",
        b"GET /blip/2147483648 HTTP/1.1",
        b"GET /since/1/%30 HTTP/1.1",
        b"GET /since/1/0/0/0 HTTP/1.1",
        b"GET /since//0 HTTP/1.1",
        b"GET /since/-1 HTTP/1.1",
        b"GET http://blip.example/last HTTP/1.1",
        b"GET /api/v1/live?meters=1&x=2 HTTP/1.1",
        b"GET /api/v1/live?meters= HTTP/1.1",
        b"GET /last HTTP/1.1\r\nX-Folded: a\r\n b",
        b"GET /last HTTP/1.1\r\nBad Name: a",
        b"GET /last HTTP/1.1\r\nNoColon",
        b"GET /last HTTP/1.1\r\nX: a\nY: b",
        b"GET /last HTTP/1.1\r\nX: a\rb",
        b"GET /last HTTP/1.1\r\nX: a\0b",
        b"GET /last HTTP/1.1\r\nContent-Length: 1",
        b"GET /last HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0",
        b"GET /last HTTP/1.1\r\nContent-Length: ",
        b"GET /last HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"GET /last HTTP/1.1\r\nExpect: 100-continue",
        b"GET /last HTTP/1.1" + b"\r\nX: y" * 101,
    ],
)
def test_heads_left_to_the_usual_way(head: bytes) -> None:
    """
    Anything but a plain GET over HTTP/1.1 without a body of a route of
    the lean path — another method, version or route, a path the router
    reads otherwise (percent-encoded, empty segments), a meter id out of
    range, a query of the live stream
    other than meter ids, a malformed line, a second or bad Host, a folded
    header, a bare CR or LF, a NUL, a body, chunks, an expectation, too
    many headers — is not read here: the site answers it as it always did.
    """
    assert read_head(head) is None


def test_deadlines_pass_in_order_and_can_be_lifted() -> None:
    """
    Each party armed has its deadline, the same time after it was armed
    (armed again, counted afresh); those passed are handed over in order,
    a disarmed one never; one timer runs at a time.
    """
    clock = Clock()
    passed: list[str] = []
    deadlines: Deadlines[str] = Deadlines(clock, passed.append)
    deadlines.arm("a", 10)
    clock.advance(3)
    deadlines.arm("b", 10)
    deadlines.arm("c", 10)
    clock.advance(3)
    deadlines.arm("a", 10)
    deadlines.disarm("c")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(4)
    assert passed == []
    clock.advance(3)
    assert passed == ["b"]
    clock.advance(3)
    assert passed == ["b", "a"] and len(deadlines) == 0
    assert clock.getDelayedCalls() == []


# -- over real ports ---------------------------------------------------------


def connect(site: Served) -> socket.socket:
    """:return: a connection to the site."""
    return socket.create_connection(("127.0.0.1", site.port), timeout=TIMEOUT)


def handed_over(site: Served) -> socket.socket:
    """
    :return: a connection that the lean path handed over to the channel
        (its first request, an OPTIONS, went the usual way), whose next
        requests go the usual way too.
    """
    s = connect(site)
    s.sendall(b"OPTIONS /last HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_until(s, b"\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    return s


def read_until(s: socket.socket, end: bytes) -> bytes:
    """:return: what arrives on ``s`` up to and with ``end`` (blocking)."""
    data = b""
    while not data.endswith(end):
        chunk = s.recv(1)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def undated(answer: bytes) -> bytes:
    """:return: ``answer`` without its Date header."""
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.startswith(b"Date: "))


def request(path: bytes, origin: Optional[bytes], close: bool, *more: bytes) -> bytes:
    """:return: a GET of ``path`` with the headers given."""
    lines = [b"GET %s HTTP/1.1" % path, b"Host: blip.example", *more]
    if origin is not None:
        lines.append(b"Origin: " + origin)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def both(site: Served, sent: bytes) -> tuple[socket.socket, socket.socket]:
    """:return: a lean connection and a handed-over one, each sent ``sent``."""
    lean = connect(site)
    usual = await deferToThread(handed_over, site)
    lean.sendall(sent)
    usual.sendall(sent)
    return lean, usual


@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize("origin", [None, PAGE, b"https://elsewhere.example"])
@pytest.mark.parametrize("path", [b"/last", b"/last/1"])
@pytest_twisted.ensureDeferred
async def test_last_answers_as_the_usual_way(
    serve: Callable[..., Served], path: bytes, origin: Optional[bytes], close: bool
) -> None:
    """
    /last from memory answers, on the lean path, the very bytes of the
    usual way, CORS headers and ``Connection: close`` included.
    """
    site = serve(METERS, cors=ONE_PAGE)
    site.hub.publish(Point(1, T0, 1000))
    lean, usual = await both(site, request(path, origin, close))
    try:
        ends = b"[%d,1000]" % T0
        answers = [await deferToThread(read_until, s, ends) for s in (lean, usual)]
        assert undated(answers[0]) == undated(answers[1])
        assert (b"\r\nConnection: close\r\n" in answers[0]) is close
    finally:
        lean.close()
        usual.close()


@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize("ending", ["point", "timeout", "stop"])
@pytest_twisted.ensureDeferred
async def test_long_polls_answer_as_the_usual_way(
    serve: Callable[..., Served], ending: str, close: bool
) -> None:
    """
    A long-poll parked on the lean path is answered with the bytes the
    usual way answers: the point, 204 once --longpoll-timeout passed, 503
    when the daemon stops; then the connection serves its next request,
    or closes if asked to.
    """
    site = serve(METERS, cors=ONE_PAGE, longpoll_timeout=5.0)
    lean, usual = await both(site, request(b"/blip/1", PAGE, close))
    try:
        await wait_until(lambda: site.hub.waiting == 2)
        if ending == "point":
            site.hub.publish(Point(1, T0, 1234))
            ends = b"[%d,1234]" % T0
        elif ending == "timeout":
            site.clock.advance(5)
            ends = b"\r\n\r\n"
        else:
            site.hub.close()
            ends = b'{"error":"shutting down"}'
        answers = [await deferToThread(read_until, s, ends) for s in (lean, usual)]
        assert undated(answers[0]) == undated(answers[1])
        assert site.hub.waiting == 0
        if close:
            assert await deferToThread(lean.recv, 1) == b""
        else:
            site.hub.publish(Point(1, T0 + 1, 5))
            lean.sendall(request(b"/last/1", None, False))
            assert (await deferToThread(read_until, lean, b"[%d,5]" % (T0 + 1))).startswith(
                b"HTTP/1.1 200 OK\r\n"
            )
    finally:
        lean.close()
        usual.close()


@pytest.mark.parametrize("close", [False, True])
@pytest_twisted.ensureDeferred
async def test_live_streams_answer_as_the_usual_way(serve: Callable[..., Served], close: bool) -> None:
    """
    A live stream on the lean path has the head, events and end of the
    usual way's, byte for byte; after its end (the daemon stopping) the
    connection serves its next request, or closes if asked to.
    """
    site = serve(METERS, cors=ONE_PAGE)
    sent = request(b"/api/v1/live?meters=1,3", PAGE, close, b"Accept: text/event-stream")
    lean, usual = await both(site, sent)
    try:
        heads = [await deferToThread(read_until, s, b"retry: 2000\n\n\r\n") for s in (lean, usual)]
        assert undated(heads[0]) == undated(heads[1])
        assert b"\r\nTransfer-Encoding: chunked\r\n" in heads[0]
        await wait_until(lambda: site.live.clients == 2)
        site.hub.publish(Point(3, T0, 1000))
        site.hub.publish(Point(2, T0 + 1, 1000))
        events = [await deferToThread(read_until, s, b"}\n\n\r\n") for s in (lean, usual)]
        assert events[0] == events[1] and b'"meter":3' in events[0]
        site.live.close()
        ends = [await deferToThread(read_until, s, b"0\r\n\r\n") for s in (lean, usual)]
        assert ends[0] == ends[1] == b"0\r\n\r\n"
        if close:
            assert await deferToThread(lean.recv, 1) == b""
        else:
            lean.sendall(request(b"/last/1", None, False))
            site.hub.publish(Point(1, T0 + 2, 7))
            assert (await deferToThread(read_until, lean, b"[%d,7]" % (T0 + 2))).startswith(b"HTTP/1.1 200")
    finally:
        lean.close()
        usual.close()


def requests_alive() -> int:
    """:return: how many Twisted Web requests exist now."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Request))


@pytest_twisted.ensureDeferred
async def test_a_parked_client_holds_no_request(serve: Callable[..., Served]) -> None:
    """
    Long-polls and live streams on the lean path hold no request object
    while they wait: a socket and a few small objects each, read by the
    lane; when their clients hang up, the lane forgets them.
    """
    site = serve(METERS)
    lane = site.listening.factory.lean.lane
    before = requests_alive()
    clients = [connect(site) for _ in range(20)]
    try:
        for i, s in enumerate(clients):
            if i % 2:
                s.sendall(request(b"/blip", None, False))
            else:
                s.sendall(request(b"/api/v1/live", None, False, b"Accept: text/event-stream"))
        await wait_until(lambda: site.hub.waiting == 10 and site.live.clients == 10)
        assert requests_alive() <= before
        assert len(lane) == 20
    finally:
        for s in clients:
            s.close()
    await wait_until(lambda: site.hub.waiting == 0 and site.live.clients == 0)
    await wait_until(lambda: len(lane) == 0)


@pytest_twisted.ensureDeferred
async def test_answers_over_tls_go_through_tls(serve: Callable[..., Served]) -> None:
    """
    On a TLS port (``--listen ssl:...``) the lean path's answers go through
    TLS like every other: a long-poll and ``/last`` on one connection are
    read by a TLS client whole and in order.
    """
    site = serve(METERS, tls=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # The handshake needs the reactor: a thread waits for it.
    s = await deferToThread(context.wrap_socket, connect(site))
    try:
        s.sendall(request(b"/blip/1", None, False) + request(b"/last/1", None, False))
        await wait_until(lambda: site.hub.waiting == 1)
        site.hub.publish(Point(1, T0, 10))
        for _ in range(2):
            answer = await deferToThread(read_until, s, b"[%d,10]" % T0)
            assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order(serve: Callable[..., Served]) -> None:
    """
    Requests sent at once on one connection are answered in order: a
    long-poll holds those behind it until its point, and a request that
    goes the usual way takes the rest along.
    """
    site = serve(METERS)
    s = connect(site)
    try:
        s.sendall(
            request(b"/blip/1", None, False) + request(b"/last/1", None, False)
            + request(b"/blip/1", None, False) + request(b"/api/v1/meters/3", None, False)
            + request(b"/last", None, False)
        )
        await wait_until(lambda: site.hub.waiting == 1)
        site.hub.publish(Point(1, T0, 10))
        first = await deferToThread(read_until, s, b"[%d,10]" % T0)
        second = await deferToThread(read_until, s, b"[%d,10]" % T0)
        assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 ")
        await wait_until(lambda: site.hub.waiting == 1)
        site.hub.publish(Point(1, T0 + 1, 11))
        assert (await deferToThread(read_until, s, b"[%d,11]" % (T0 + 1))).startswith(b"HTTP/1.1 200 ")
        meter = await deferToThread(read_until, s, b"}")
        assert meter.startswith(b"HTTP/1.1 200 ") and b'"id":3' in meter
        assert (await deferToThread(read_until, s, b"[%d,11]" % (T0 + 1))).startswith(b"HTTP/1.1 200 ")
    finally:
        s.close()


def unread(site: Served, s: socket.socket) -> int:
    """
    :return: how many bytes of what ``s`` sent the site has not read (the
        kernel's receive queue of its end of the connection, from
        ``/proc/net/tcp``).
    """
    ends = ("0100007F:%04X" % site.port, "0100007F:%04X" % s.getsockname()[1])
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == ends:
                return int(fields[4].split(":")[1], 16)
    return 0


@pytest_twisted.ensureDeferred
async def test_requests_far_ahead_wait_unread_and_are_answered_after(
    serve: Callable[..., Served]
) -> None:
    """
    More than MAX_AHEAD bytes of requests sent behind a parked long-poll
    are not read on while it waits (reading pauses), and once its point
    has answered it, reading resumes and every one of them is answered,
    in order.
    """
    site = serve(METERS)
    s = connect(site)
    try:
        behind = request(b"/last/1", None, False)
        count = MAX_AHEAD // len(behind) + 50
        s.sendall(request(b"/blip/1", None, False))
        await wait_until(lambda: site.hub.waiting == 1)
        s.sendall(behind * count)
        await wait_until(lambda: unread(site, s) == 0)
        s.sendall(behind * 10)
        count += 10
        # These stay in the kernel: nothing more is read while it waits.
        await wait_until(lambda: unread(site, s) == len(behind) * 10)
        site.hub.publish(Point(1, T0, 10))

        body = b"[%d,10]" % T0

        def answers() -> bytes:
            data = b""
            while data.count(body) < count + 1:
                chunk = s.recv(65536)
                assert chunk, f"closed after {data.count(body)} answers"
                data += chunk
            return data

        data = await deferToThread(answers)
        assert data.count(b"HTTP/1.1 200 ") == data.count(body) == count + 1
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_an_idle_connection_is_closed_at_its_deadline(serve: Callable[..., Served]) -> None:
    """
    A connection that sends no request, or no next one after an answer,
    is closed once the site's timeout passes, as the channel closes it.
    """
    site = serve(METERS)
    site.listening.factory.timeOut = 0.3
    site.hub.publish(Point(1, T0, 10))
    idle, answered = connect(site), connect(site)
    try:
        answered.sendall(request(b"/last/1", None, False))
        assert (await deferToThread(read_until, answered, b"[%d,10]" % T0)).startswith(b"HTTP/1.1 200 ")
        assert await deferToThread(idle.recv, 1) == b""
        assert await deferToThread(answered.recv, 1) == b""
    finally:
        idle.close()
        answered.close()


@pytest_twisted.ensureDeferred
async def test_a_proxy_s_clients_are_judged_by_their_headers(serve: Callable[..., Served]) -> None:
    """
    Behind a trusted proxy, each request on the lean path is judged by
    who its headers say it is from: an allowed client is served, another
    is refused 403 the usual way.
    """
    rules = Rules((network("10.0.0.0/8"),), (network("127.0.0.1"),))
    site = serve(METERS, rules=rules)
    site.hub.publish(Point(1, T0, 10))
    s = connect(site)
    try:
        s.sendall(request(b"/last/1", None, False, b"X-Forwarded-For: 10.1.2.3"))
        assert (await deferToThread(read_until, s, b"[%d,10]" % T0)).startswith(b"HTTP/1.1 200 ")
        s.sendall(request(b"/last/1", None, False, b"X-Forwarded-For: 192.0.2.7"))
        refused = await deferToThread(read_until, s, b"}")
        assert refused.startswith(b"HTTP/1.1 403 ") and b"192.0.2.7 is not allowed" in refused
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_lean_requests_are_counted(serve: Callable[..., Served]) -> None:
    """
    Requests answered on the lean path are counted and timed by route, as
    every other request: /last, and long-polls answered or hung up.
    """
    site = serve(METERS)
    site.hub.publish(Point(1, T0, 10))
    s, gone = connect(site), connect(site)
    try:
        s.sendall(request(b"/last/1", None, False) * 2 + request(b"/blip", None, False))
        gone.sendall(request(b"/blip/3", None, False))
        await wait_until(lambda: site.hub.waiting == 2)
        gone.close()
        await wait_until(lambda: site.hub.waiting == 1)
        site.hub.publish(Point(1, T0 + 1, 10))
        await deferToThread(read_until, s, b"[%d,10]" % (T0 + 1))
    finally:
        s.close()
    _, _, body = await site.get("/metrics")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }

    def requests(route: str) -> float:
        return samples.get(
            ("blip_http_requests_total", (("method", "GET"), ("route", route), ("status", "200"))), 0
        )

    assert (requests("/last/<meter>"), requests("/blip"), requests("/blip/<meter>")) == (2, 1, 1)
    assert samples[("blip_http_request_duration_seconds_count", (("route", "/last/<meter>"),))] == 2


# -- the other legacy routes ---------------------------------------------------

HOUR = 3_600_000
#: Meter 1's points, a second apart from an hour's start; now is an hour on.
STARTS = T0 - T0 % HOUR
POINTS = [Point(1, STARTS + i * 1000, 1000 + i) for i in range(10)]
NOW = STARTS / 1000 + 3600


def test_heads_of_the_other_legacy_routes_are_read() -> None:
    """
    A GET of another legacy route is read with its route and the segments
    of its path (its query changes nothing); a path of no route is not.
    """
    read = read_head(b"GET /hourly/1/2/3?_=4 HTTP/1.1\r\nConnection: close")
    assert read is not None and read.route is not None
    assert (read.kind, read.route.template, list(read.path), read.close) == (
        b"legacy", "/hourly/<meter>/<first>/<last>", [b"hourly", b"1", b"2", b"3"], True
    )
    assert read_head(b"GET /hourly/1/2/3/4 HTTP/1.1") is None
    assert read_head(b"GET /page HTTP/1.1") is None


#: Twisted Web's own request constructor (tests count the requests made).
init = Request.__init__


#: Paths of the other legacy routes, and their answers' status.
LEGACY_PATHS = [
    (b"/hourly/1/%d/%d" % (STARTS, STARTS + HOUR), 200),
    (b"/hourly/%d/%d" % (STARTS, STARTS), 200),
    (b"/since/1/%d" % (STARTS + 7000), 200),
    (b"/range/%d/%d" % (STARTS + 2000, STARTS + 4000), 200),
    (b"/aggregate/1/%d/3000/2" % (STARTS + 500), 200),
    (b"/usage/1/%d" % (HOUR - 5000), 200),
    # A number no meter has: the single-meter original's last n ms.
    (b"/last/%d" % (HOUR - 8000), 200),
    (b"/last/1/%d" % (HOUR - 8000), 200),
    # A range that ends before it starts, a width of 0, no meter id, a
    # number too long.
    (b"/range/1/5/4", 400),
    (b"/aggregate/1/0/0/5", 400),
    (b"/hourly/x/1/2", 400),
    (b"/since/1/1234567890123456", 400),
    (b"/last/1234567890123456", 400),
]


@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize("origin", [None, PAGE])
@pytest.mark.parametrize("path, status", LEGACY_PATHS)
@pytest_twisted.ensureDeferred
async def test_legacy_routes_answer_as_the_usual_way(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch, path: bytes, status: int,
    origin: Optional[bytes], close: bool,
) -> None:
    """
    The other legacy routes answer, on the lean path, the very bytes of
    the usual way: their bodies from the database, the header saying
    since when raw points are kept, CORS headers, errors, and
    ``Connection: close``; and no Twisted Web request is made for them.
    """
    site = serve(METERS, now=NOW, cors=ONE_PAGE, raw_since=lambda: STARTS + 3000)
    await site.store.insert(POINTS)
    lean, usual = await both(site, b"")
    made = []
    monkeypatch.setattr(Request, "__init__", lambda self, *a, **k: made.append(self) or init(self, *a, **k))
    try:
        sent = request(path, origin, close)
        lean.sendall(sent)
        lean_answer = b"\r\n\r\n".join(await deferToThread(read_response, lean))
        assert made == []
        usual.sendall(sent)
        usual_answer = b"\r\n\r\n".join(await deferToThread(read_response, usual))
        assert len(made) == 1
        assert undated(lean_answer) == undated(usual_answer)
        assert lean_answer.startswith(b"HTTP/1.1 %d " % status)
        assert (b"\r\nBlip-Raw-Since: %d\r\n" % (STARTS + 3000) in lean_answer) is (
            status == 200 and not path.startswith(b"/hourly")
        )
        if close:
            assert await deferToThread(lean.recv, 1) == b""
        else:
            lean.sendall(request(b"/usage/1/1000", None, False))
            assert (await deferToThread(read_response, lean))[1] == b"[0]"
    finally:
        lean.close()
        usual.close()



def asking() -> int:
    """:return: how many lean connections wait for a legacy route's body."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Front) and isinstance(o.waiting, Deferred))


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_before_its_answer_costs_only_the_query(
    serve: Callable[..., Served], database: Database, log_events: EventLoggingObserver
) -> None:
    """
    A client that hangs up while its legacy route's query runs is counted
    as answered; its query runs to its end, and the database connection it
    used is free again; nothing is logged as a failure.
    """
    site = serve(METERS, now=NOW)
    await site.store.insert(POINTS)
    path = "/hourly/1/%d/%d" % (STARTS, STARTS + HOUR)
    lock = psycopg2.connect(database.dsn)
    try:
        with lock.cursor() as cursor:
            cursor.execute("LOCK TABLE usage_hourly IN ACCESS EXCLUSIVE MODE")
        s = connect(site)
        s.sendall(request(path.encode(), None, False))
        await wait_until(lambda: site.store.pool.state().busy == 1 and asking() == 1)
        s.close()
        await wait_until(lambda: asking() == 0)
        assert site.store.pool.state().busy == 1
    finally:
        lock.rollback()
        lock.close()
    await wait_until(lambda: site.store.pool.state().busy == 0)
    _, _, metrics = await site.get("/metrics")
    assert b'blip_http_requests_total{method="GET",route="/hourly/<meter>/<first>/<last>",status="200"} 1.0' in metrics
    status, _, body = await site.get(path)
    assert status == 200 and body.startswith(b"[[%d,10," % STARTS)
    assert [e for e in log_events if "log_failure" in e] == []


# -- live streams resuming -----------------------------------------------------


def resuming(last_id: int, close: bool = False) -> bytes:
    """:return: a live stream of meter 1 resuming after ``last_id``."""
    return request(
        b"/api/v1/live?meters=1", PAGE, close, b"Accept: text/event-stream", b"Last-Event-ID: %d" % last_id
    )


def events_until(s: socket.socket, stamp: int) -> bytes:
    """:return: the stream read up to and with the event of ``stamp``."""
    return read_until(s, b'"stamp":%d,' % stamp) + read_until(s, b"\n\n")


@pytest.mark.parametrize("close", [False, True])
@pytest_twisted.ensureDeferred
async def test_resumed_streams_answer_as_the_usual_way(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch, close: bool
) -> None:
    """
    A live stream resuming with ``Last-Event-ID`` goes the lean path's way
    too: the same head, the points it missed from the database, then live
    ones, byte for byte as the usual way, without a Twisted Web request;
    its replay takes a place among the heavy requests until it is over.
    """
    site = serve(METERS, now=NOW, cors=ONE_PAGE)
    await site.store.insert(POINTS)
    lean, usual = await both(site, b"")
    made = []
    monkeypatch.setattr(Request, "__init__", lambda self, *a, **k: made.append(self) or init(self, *a, **k))
    try:
        lean.sendall(resuming(POINTS[4].stamp, close))
        usual.sendall(resuming(POINTS[4].stamp, close))
        replays = [await deferToThread(events_until, s, POINTS[-1].stamp) for s in (lean, usual)]
        assert undated(replays[0]) == undated(replays[1])
        assert replays[0].count(b"event: point") == 5 and len(made) == 1
        await wait_until(lambda: site.live.clients == 2)
        live = Point(1, POINTS[-1].stamp + 5000, 1000)
        site.hub.publish(live)
        events = [await deferToThread(events_until, s, live.stamp) for s in (lean, usual)]
        assert events[0] == events[1] and events[0].count(b"event: point") == 1
        assert heavy_of(site).running == 0
    finally:
        lean.close()
        usual.close()


def heavy_of(site: Served) -> Heavy:
    """:return: the count of heavy requests of ``site``'s lean path."""
    gc.collect()
    return next(o.heavy for o in gc.get_objects() if isinstance(o, Lean) and o.live is site.live)


@pytest.mark.parametrize(
    "last_id, status",
    [(STARTS + 1000 - 3_600_001, 400), (None, 400), (STARTS, 503)],
    ids=["too-old", "not-a-number", "heavy-full"],
)
@pytest_twisted.ensureDeferred
async def test_resumptions_refused_answer_as_the_usual_way(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch, last_id: Optional[int], status: int
) -> None:
    """
    A resumption from further back than a replay goes, or with an id that
    is no number, is refused the usual way (400); one that comes while the
    heavy requests have no place is refused on the connection, without a
    Twisted Web request (a storm of reconnections is refused cheaply), in
    the usual way's bytes (503, ``Retry-After``); the connection serves on.
    """
    site = serve(METERS, now=NOW, cors=ONE_PAGE)
    heavy_of(site).running = heavy_of(site).limit if status == 503 else 0
    sent = resuming(0) if last_id is None else resuming(last_id)
    if last_id is None:
        sent = sent.replace(b"Last-Event-ID: 0", b"Last-Event-ID: x")
    lean, usual = await both(site, b"")
    made = []
    monkeypatch.setattr(Request, "__init__", lambda self, *a, **k: made.append(self) or init(self, *a, **k))
    try:
        lean.sendall(sent)
        lean_answer = b"\r\n\r\n".join(await deferToThread(read_response, lean))
        assert len(made) == (0 if status == 503 else 1)
        usual.sendall(sent)
        usual_answer = b"\r\n\r\n".join(await deferToThread(read_response, usual))
        assert undated(lean_answer) == undated(usual_answer)
        assert lean_answer.startswith(b"HTTP/1.1 %d " % status)
        lean.sendall(request(b"/usage/1/1000", None, False))
        assert (await deferToThread(read_response, lean))[1] == b"[0]"
    finally:
        lean.close()
        usual.close()


@pytest_twisted.ensureDeferred
async def test_a_replay_that_fails_cuts_the_stream_short(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch, log_events: EventLoggingObserver
) -> None:
    """
    A resumed stream whose replay fails (the database gone) is cut short,
    as the usual way cuts it: the connection is aborted after the head,
    the failure logged as a warning, the stream and its heavy place let go.
    """
    site = serve(METERS, now=NOW)

    async def gone(*args: object) -> None:
        raise psycopg2.OperationalError("the database went away")

    monkeypatch.setattr(site.store, "points_after", gone)
    s = connect(site)
    try:
        s.sendall(resuming(STARTS))
        got = await deferToThread(read_until, s, b"retry: 2000\n\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        await wait_until(lambda: closed_by_server(s))
    finally:
        s.close()
    await wait_until(lambda: site.live.clients == 0)
    assert heavy_of(site).running == 0
    assert [e for e in log_events if "cut short" in e.get("log_format", "")]
