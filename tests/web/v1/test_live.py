"""
Tests of the live stream (/api/v1/live, Server-Sent Events) over real
ports: events and heartbeats, resumption with Last-Event-ID, clients that
go or fall behind, and the stream of a real daemon reading a real pty.
"""

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from blip.meters import Meter, Meters
from blip.model import Point
from blip.web.v1.live import HEARTBEAT, MAX_BACKLOG, PAGE
from tests.conftest import TIMEOUT, Served, eventually, wait_until, within

T0 = 1_700_000_000_000
METERS = Meters([Meter(1, pulses_per_kwh=1000.0), Meter(2, pulses_per_kwh=500.0)])


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event."""

    id: str
    event: str
    data: Any


class EventReader(Protocol):
    """
    Reads a Server-Sent Events body: events and comments into queues.
    """

    def __init__(self) -> None:
        self.events: DeferredQueue[Event] = DeferredQueue()
        self.comments: DeferredQueue[str] = DeferredQueue()
        self.fields: list[tuple[str, str]] = []
        self.buffer = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields = {}
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments.put(line[1:].strip())
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            if "event" in fields:
                self.events.put(Event(fields["id"], fields["event"], json.loads(fields["data"])))

    def connectionLost(self, reason: Failure = None) -> None:
        self.lost.callback(None)

    async def take(self, count: int) -> list[Event]:
        """:return: the next ``count`` events."""
        return [await within(self.events.get()) for _ in range(count)]

    def close(self) -> None:
        """Hang up."""
        self.transport.stopProducing()


async def subscribe(site: Served, query: str = "", last_id: Optional[int] = None) -> tuple[int, Any, EventReader]:
    """
    Open the live stream.

    :return: status, headers and the reader of its body.
    """
    from twisted.internet import reactor

    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    headers = {b"Accept": [b"text/event-stream"]}
    if last_id is not None:
        headers[b"Last-Event-ID"] = [str(last_id).encode()]
    response = await within(
        agent.request(b"GET", (site.url + "/api/v1/live" + query).encode(), Headers(headers))
    )
    reader = EventReader()
    response.deliverBody(reader)
    return response.code, response.headers, reader


@pytest.fixture
def site(serve: Callable[..., Served]) -> Served:
    """The site, with meter 1 at 1000/kWh and meter 2 at 500/kWh."""
    return serve(METERS)


@pytest_twisted.ensureDeferred
async def test_events_of_the_asked_meters(site: Served) -> None:
    """
    A stream sends each new point of its meters as a `point` event whose
    id is the stamp and whose data holds the power; other meters' points
    are left out; every meter when none is asked for.
    """
    code, headers, one = await subscribe(site, "?meters=1")
    _, _, every = await subscribe(site)
    assert code == 200
    assert headers.getRawHeaders(b"Content-Type") == [b"text/event-stream"]
    assert headers.getRawHeaders(b"Cache-Control") == [b"no-cache"]
    await wait_until(lambda: site.live.clients == 2)
    for point in (Point(1, T0, 1000), Point(2, T0 + 1, 1000), Point(1, T0 + 2, 500)):
        site.hub.publish(point)
    assert await one.take(2) == [
        Event(str(T0), "point", {"meter": 1, "stamp": T0, "ms": 1000, "watts": 3600.0}),
        Event(str(T0 + 2), "point", {"meter": 1, "stamp": T0 + 2, "ms": 500, "watts": 7200.0}),
    ]
    assert [e.data["watts"] for e in await every.take(3)] == [3600.0, 7200.0, 7200.0]
    one.close()
    every.close()


@pytest_twisted.ensureDeferred
async def test_heartbeat_every_15_seconds(site: Served) -> None:
    """
    Every stream gets a comment every 15 s, so that proxies and clients
    know it is alive.
    """
    _, _, reader = await subscribe(site)
    await wait_until(lambda: site.live.clients == 1)
    site.clock.advance(HEARTBEAT)
    assert await within(reader.comments.get()) == "heartbeat"
    site.clock.advance(HEARTBEAT)
    assert await within(reader.comments.get()) == "heartbeat"
    reader.close()


@pytest_twisted.ensureDeferred
async def test_clients_that_go_are_removed(site: Served) -> None:
    """
    A client hanging up is forgotten at once; the heartbeat stops with the
    last one.
    """
    readers = [(await subscribe(site))[2] for _ in range(3)]
    await wait_until(lambda: site.live.clients == 3)
    readers[0].close()
    readers[1].close()
    await wait_until(lambda: site.live.clients == 1)
    readers[2].close()
    await wait_until(lambda: site.live.clients == 0)
    assert not site.clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_resume_replays_what_was_missed(site: Served) -> None:
    """
    A client reconnecting with Last-Event-ID gets, in stamp order and each
    once, every point of its meters after that stamp: stored ones, ones
    the database does not have yet, then live ones.
    """
    _, _, reader = await subscribe(site, "?meters=1,2")
    await wait_until(lambda: site.live.clients == 1)
    first = [Point(1, T0, 100), Point(2, T0 + 1, 100)]
    for point in first:
        site.hub.publish(point)
    await site.store.insert(first)
    seen = await reader.take(2)
    reader.close()
    await wait_until(lambda: site.live.clients == 0)

    # While it is away: many stored points of both meters, interleaved,
    # then two published but not stored yet.
    stored = [Point(1 + i % 2, T0 + 10 + i, 100) for i in range(PAGE * 2 + 5)]
    for point in stored:
        site.hub.publish(point)
    await site.store.insert(stored)
    pending = [Point(2, T0 + 10 + len(stored), 100), Point(1, T0 + 11 + len(stored), 100)]
    for point in pending:
        site.hub.publish(point)

    _, _, reader = await subscribe(site, "?meters=1,2", last_id=int(seen[-1].id))
    replayed = await reader.take(len(stored) + len(pending))
    live = Point(2, T0 + 100_000, 100)
    await wait_until(lambda: site.live.clients == 1)
    site.hub.publish(live)
    replayed += await reader.take(1)
    assert [(e.data["meter"], e.data["stamp"]) for e in replayed] == [
        (p.meter, p.stamp) for p in stored + pending + [live]
    ]
    reader.close()


@pytest_twisted.ensureDeferred
async def test_resume_of_one_meter_from_the_database(site: Served) -> None:
    """
    Resuming leaves out the other meters' points and the points up to the
    given stamp; the live ones after the replay follow without a repeat.
    """
    await site.store.insert([Point(m, T0 + i, 10) for i in range(10) for m in (1, 2)])
    _, _, reader = await subscribe(site, "?meters=2", last_id=T0 + 6)
    assert [e.data["stamp"] for e in await reader.take(3)] == [T0 + 7, T0 + 8, T0 + 9]
    await wait_until(lambda: site.live.clients == 1)
    site.hub.publish(Point(2, T0 + 9, 10))
    site.hub.publish(Point(2, T0 + 10, 10))
    assert [e.data["stamp"] for e in await reader.take(1)] == [T0 + 10]
    reader.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_falls_behind_is_dropped_and_loses_nothing(site: Served) -> None:
    """
    A client whose connection cannot take the points as fast as they come
    is dropped once it is MAX_BACKLOG events behind; resuming from its last
    event, it gets every point.
    """
    _, _, reader = await subscribe(site, "?meters=1")
    await wait_until(lambda: site.live.clients == 1)
    # Published in one go, without the reactor letting the client read:
    # once the sockets' buffers are full, the stream queues, and past
    # MAX_BACKLOG events it is dropped.
    points: list[Point] = []
    while site.live.clients and len(points) < 2_000_000:
        for i in range(len(points), len(points) + MAX_BACKLOG):
            points.append(Point(1, T0 + i, 1000))
            site.hub.publish(points[-1])
    assert site.live.clients == 0 and site.live.dropped == 1
    await within(reader.lost)
    received = []
    while reader.events.pending:
        received.append((await reader.events.get()).data["stamp"])
    assert 0 < len(received) < len(points)
    await site.store.insert(points)
    _, _, again = await subscribe(site, "?meters=1", last_id=received[-1])
    rest = [e.data["stamp"] for e in await again.take(len(points) - len(received))]
    assert received + rest == [p.stamp for p in points]
    again.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_falls_behind_while_catching_up(site: Served) -> None:
    """
    A client that stops reading during a long replay is dropped once the
    live points held for it pass MAX_BACKLOG; its answer ends, and resuming
    from its last event it gets every point.
    """
    old = [Point(1, T0 + i, 1000) for i in range(50_000)]
    await site.store.insert(old)
    _, _, reader = await subscribe(site, "?meters=1", last_id=T0 - 1)
    reader.transport.pauseProducing()
    await wait_until(lambda: site.live.clients == 1)
    (stream,) = site.live.streams
    await wait_until(lambda: stream.producer.paused)
    new = [Point(1, T0 + 100_000 + i, 1000) for i in range(MAX_BACKLOG + 1)]
    for point in new:
        site.hub.publish(point)
    assert site.live.clients == 0 and site.live.dropped == 1
    reader.transport.resumeProducing()
    await within(reader.lost)
    received = []
    while reader.events.pending:
        received.append((await reader.events.get()).data["stamp"])
    assert received == [p.stamp for p in old[: len(received)]]
    await site.store.insert(new)
    _, _, again = await subscribe(site, "?meters=1", last_id=received[-1])
    rest = await again.take(len(old) + len(new) - len(received))
    assert received + [e.data["stamp"] for e in rest] == [p.stamp for p in old + new]
    again.close()


@pytest_twisted.ensureDeferred
async def test_stream_limits_and_plain_answers(serve: Callable[..., Served]) -> None:
    """
    Past max_clients a stream is refused with 503; a client not asking for
    text/event-stream gets the newest point of each meter as JSON; a bad
    Last-Event-ID is a 400; shutting down ends every stream.
    """
    site = serve(METERS, max_clients=1)
    await site.store.insert([Point(1, T0, 1000)])
    site.hub.publish(Point(2, T0 + 5, 250))
    _, _, reader = await subscribe(site)
    code, headers, body = await site.get("/api/v1/live", {"Accept": "text/event-stream"})
    assert code == 503 and json.loads(body)["status"] == 503
    code, headers, body = await site.get("/api/v1/live")
    assert (code, json.loads(body)) == (200, {"points": [
        {"meter": 1, "stamp": T0, "ms": 1000, "watts": 3600.0},
        {"meter": 2, "stamp": T0 + 5, "ms": 250, "watts": 28800.0},
    ]})
    code, _, body = await site.get("/api/v1/live?meters=2")
    assert [p["meter"] for p in json.loads(body)["points"]] == [2]
    code, _, body = await site.get("/api/v1/live", {"Accept": "text/event-stream", "Last-Event-ID": "x"})
    assert code == 400 and "Last-Event-ID" in json.loads(body)["detail"]
    site.live.close()
    await within(reader.lost)


def _read_events(response: http.client.HTTPResponse, count: int) -> list[dict[str, Any]]:
    """Read ``count`` point events from a streaming answer."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    while len(events) < count:
        line = response.readline().decode()
        assert line, "stream ended"
        line = line.rstrip("\n")
        if not line:
            if fields.get("event") == "point":
                events.append({"id": fields["id"], **json.loads(fields["data"])})
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return events


def _open_stream(port: int, last_id: Optional[str] = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    headers = {"Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    connection.request("GET", "/api/v1/live?meters=1", headers=headers)
    response = connection.getresponse()
    assert response.status == 200
    return connection, response


def test_resume_after_a_dropped_connection_end_to_end(start_daemon, pty_meter, database) -> None:
    """
    The daemon reads blips from a pty; a live client gets them, hangs up,
    misses some, reconnects with Last-Event-ID, and ends up with every
    stored point exactly once, in order.
    """
    daemon = start_daemon("--serial", pty_meter.path, "--db", database.dsn)
    daemon.wait_for("reading serial device")
    daemon.wait_for("database ready")
    pty_meter.write(b"junk to end the first partial line\n")
    connection, response = _open_stream(daemon.port)
    # A blip is live as soon as it is read; write until the client sees one.
    seen: list[dict[str, Any]] = []
    written = 0
    deadline = time.monotonic() + TIMEOUT
    while not seen:
        assert time.monotonic() < deadline
        pty_meter.write(b"1000\n")
        written += 1
        connection.sock.settimeout(0.2)
        try:
            seen = _read_events(response, 1)
        except TimeoutError:
            pass
    connection.sock.settimeout(TIMEOUT)
    for _ in range(5):
        pty_meter.write(b"900\n")
    seen += _read_events(response, 5)
    connection.close()

    for _ in range(20):
        pty_meter.write(b"800\n")
    written += 25
    last_id = seen[-1]["id"]
    connection, response = _open_stream(daemon.port, last_id)

    def stored() -> list[list[int]]:
        with urllib_get(daemon.url(f"/api/v1/meters/1/readings?from=0&to={10**14}")) as answer:
            return json.load(answer)["points"]

    for _ in range(10):
        pty_meter.write(b"700\n")
    written += 10
    points = eventually(lambda: (lambda p: p if len(p) == written else None)(stored()))
    resumed = _read_events(response, len(points) - len(seen))
    connection.close()
    got = [(e["stamp"], e["ms"]) for e in seen + resumed]
    assert got == [tuple(p) for p in points]
    assert [e["id"] for e in seen + resumed] == [str(p[0]) for p in points]


def urllib_get(url: str) -> Any:
    """:return: the open answer to a GET."""
    import urllib.request

    return urllib.request.urlopen(url, timeout=TIMEOUT)
