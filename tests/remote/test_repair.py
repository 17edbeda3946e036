"""
Tests of gap repair from a peer logger, with this node's database and the
peer's each a real database, the peer served by the whole site on a real
port (or, for a peer that answers wrong, a server of the test's own):
every blink once at both edges of a stretch whatever the clocks' offset,
paged, idempotent, refusing wrong points, waiting for a stretch's end,
and trying again while the peer is away.
"""

import json
from typing import Any, AsyncIterator, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Site

from blip.counters import Counters
from blip.db.pool import Pool
from blip.db.readings import Readings
from blip.db.schema import Schema
from blip.ingest.downtime import LOGGER_DOWN, UNKNOWN, Stretch
from blip.meters import Meters
from blip.model import Point
from blip.remote.client import Client
from blip.remote.repair import PAGE, Pass, PeerWrong, Pending, Repairer, RepairService
from tests.conftest import Database, Served, wait_until

SECOND = 1000
#: Blinks of the meter are a second apart from here on (unix ms).
T0 = 1_690_000_000_000


@pytest_twisted.async_yield_fixture
async def peer_store(other_database: Database) -> AsyncIterator[Readings]:
    """The readings of a second fresh database: the peer's."""
    pool = Pool(other_database.dsn, 2, reactor)
    await pool.start()
    try:
        await Schema(pool).apply()
        yield Readings(pool)
    finally:
        pool.close()


def blinks(indices, offset: int = 0, jitter: int = 0) -> list[Point]:
    """
    Points of meter 1 for blinks ``indices`` (a second apart from T0) as a
    logger whose clock is ``offset`` ms ahead sees them; each ms is the
    Arduino's, the same for every logger.
    """
    return [
        Point(1, T0 + i * SECOND + offset + (jitter if i % 2 else -jitter), SECOND)
        for i in indices
    ]


def periods(database: Database, *spans: tuple[int, int]) -> None:
    """Record this node's ingest periods, each (started, ended)."""
    for started, ended in spans:
        database.sql(
            "INSERT INTO ingest_periods VALUES ('here', %s, %s, %s, 'stop')", (started, ended, ended)
        )


def repairer(store: Readings, *peers: str, counters: Counters = None, clock: Any = reactor) -> Repairer:
    """A repairer of the test's database from ``peers``."""
    return Repairer([Client(reactor, url, timeout=5) for url in peers], store.pool, counters or Counters(), clock)


def blink_numbers(database: Database) -> list[int]:
    """:return: which blink each stored point is (by its stamp, to the nearest second)."""
    return [round((s - T0) / SECOND) for (s,) in database.sql("SELECT stamp FROM readings ORDER BY stamp")]


@pytest.mark.parametrize("offset", [-450, -40, 0, 40, 450])
@pytest_twisted.ensureDeferred
async def test_every_blink_once_whatever_the_clocks_offset(
    store: Readings, peer_store: Readings, database, serve: Callable[..., Served], offset: int
) -> None:
    """
    This node saw blinks 0-9, was down, and (the first line after the
    device opened being dropped) saw 21-40 again; the peer, its clock
    ``offset`` ms off (and its serial line 5 ms of jitter), saw all. The
    repair stores blinks 10-20, each once: the blink at each edge, which
    both saw, not again. The stretch is recorded and not asked again.
    """
    await store.insert(blinks(range(10)) + blinks(range(21, 41)))
    periods(database, (T0 - 60 * SECOND, T0 + 9500), (T0 + 19_500, T0 + 41 * SECOND))
    await peer_store.insert(blinks(range(41), offset, jitter=5))
    peer = serve(Meters(), peer_store)
    counters = Counters()
    work = repairer(store, peer.url, counters=counters)
    outcome = await work.run([1], T0 - 60 * SECOND, T0 + 41 * SECOND, wait=True)
    assert (outcome.repaired, outcome.points, outcome.done) == (1, 11, True)
    assert blink_numbers(database) == list(range(41))
    assert database.sql("SELECT sum(ms) FROM readings")[0][0] == 41 * SECOND
    assert database.sql("SELECT sum(events) FROM readings_hourly")[0][0] == 41
    assert database.sql("SELECT meter, started, ended, peer, points FROM repairs") == [
        (1, T0 + 9500, T0 + 19_500, peer.url, 11)
    ]
    assert counters.repaired == 11
    again = await work.run([1], T0 - 60 * SECOND, T0 + 41 * SECOND)
    assert again == Pass()


@pytest_twisted.ensureDeferred
async def test_history_is_repaired_in_pages_around_own_points(
    store: Readings, peer_store: Readings, database, serve: Callable[..., Served]
) -> None:
    """
    History with no record of ingest (unknown), as ``blip repair`` takes
    it: more points than a page, around a few own points imported inside
    the stretch, which are not stored twice; with nothing after the
    stretch, it ends where it ends.
    """
    fast = [Point(1, T0 + i * 10, 10) for i in range(1, PAGE + 300)]
    await peer_store.insert(fast)
    own = [fast[100], fast[2000], fast[PAGE + 50]]
    await store.insert([Point(1, p.stamp + 2, p.ms) for p in own])
    peer = serve(Meters(), peer_store)
    outcome = await repairer(store, peer.url).run([1], T0, T0 + 10 * (PAGE + 300), (LOGGER_DOWN, UNKNOWN), wait=False)
    assert outcome.done and outcome.points == len(fast) - len(own)
    assert database.sql("SELECT count(*), sum(ms) FROM readings") == [(len(fast), 10 * len(fast))]


class WrongPeer(Resource):
    """A peer that answers a page of points the test chooses."""

    isLeaf = True

    def __init__(self, points: Any, status: int = 200) -> None:
        super().__init__()
        self.points = points
        self.status = status
        self.asked = 0

    def render(self, request):
        self.asked += 1
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"points": self.points, "detail": "no such meter"}).encode()


@pytest.mark.parametrize(
    "points, why",
    [
        ([[T0 + 5000, 1000], [T0 + 5000, 1000]], "not strictly increasing"),
        ([[T0 + 6000, 1000], [T0 + 5000, 1000]], "not strictly increasing"),
        ([[T0 - 50_000, 1000]], "not one asked for"),
        ([[T0 + 5000, 0]], "not one asked for"),
        ([[T0 + 5000, "1000"]], "did not answer a page"),
        ("nothing", "did not answer a page"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_peers_wrong_points_are_refused(store: Readings, database, points: Any, why: str) -> None:
    """
    A page whose points are not strictly increasing, lie outside what was
    asked or have ms out of range, or that is not a page of points, is
    refused whole and counted: nothing is stored, and the stretch is left
    to try again.
    """
    await store.insert(blinks([0, 20]))
    periods(database, (T0 - SECOND, T0 + 500), (T0 + 19_500, T0 + 21 * SECOND))
    port = reactor.listenTCP(0, Site(WrongPeer(points)), interface="127.0.0.1")
    counters = Counters()
    try:
        work = repairer(store, f"http://127.0.0.1:{port.getHost().port}", counters=counters)
        with pytest.raises(PeerWrong, match=why):
            await work.stretch(1, Stretch(T0 + 500, T0 + 19_500, LOGGER_DOWN), work.peers[0])
        outcome = await work.run([1], T0 - SECOND, T0 + 21 * SECOND)
        assert (outcome.failed, outcome.repaired) == (1, 0) and why in outcome.problems[0]
        assert counters.peer_refused >= 2 and counters.repair_failures == 1
        assert blink_numbers(database) == [0, 20]
        assert database.sql("SELECT count(*) FROM repairs") == [(0,)]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_point_in_the_future_is_refused(store: Readings, database) -> None:
    """
    A peer's point stamped after this node's now is refused, though it
    lies in what was asked (a stretch that has no end yet, for history).
    """
    await store.insert(blinks([0]))
    port = reactor.listenTCP(0, Site(WrongPeer([[T0 + 5000, 1000]])), interface="127.0.0.1")
    clock = Clock()
    clock.advance((T0 + 3000) / 1000)
    try:
        work = repairer(store, f"http://127.0.0.1:{port.getHost().port}", clock=clock)
        with pytest.raises(PeerWrong, match="not one asked for"):
            await work.stretch(1, Stretch(T0 + 500, T0 + 10_000, UNKNOWN), work.peers[0], wait=False)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_stretch_waits_for_its_end_and_an_unknown_meter_is_skipped(
    store: Readings, database
) -> None:
    """
    A stretch with no own point after it yet waits (pending), without
    asking the peer; a peer that does not know the meter (404) is no
    failure, and the next peer is asked.
    """
    await store.insert(blinks([0]))
    periods(database, (T0 - SECOND, T0 + 500), (T0 + 19_500, T0 + 21 * SECOND))
    unknown = WrongPeer([], status=404)
    port = reactor.listenTCP(0, Site(unknown), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        work = repairer(store, url)
        with pytest.raises(Pending):
            await work.stretch(1, Stretch(T0 + 500, T0 + 19_500, LOGGER_DOWN), work.peers[0])
        outcome = await work.run([1], T0 - SECOND, T0 + 21 * SECOND)
        assert (outcome.pending, outcome.failed, unknown.asked) == (1, 0, 0)
        await store.insert(blinks([21]))
        outcome = await work.run([1], T0 - SECOND, T0 + 21 * SECOND)
        assert (outcome.pending, outcome.failed, outcome.repaired, unknown.asked) == (0, 0, 0, 1)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_service_tries_again_while_the_peer_is_away(
    store: Readings, peer_store: Readings, database, serve: Callable[..., Served]
) -> None:
    """
    At start the peer is away: the stretch is left, and tried again with
    growing intervals (on the service's clock) until the peer is back;
    an outage ending makes a pass soon. Stopping is quick.
    """
    await store.insert(blinks(range(5)) + blinks(range(11, 15)))
    periods(database, (T0 - SECOND, T0 + 4500), (T0 + 9500, T0 + 15 * SECOND))
    await peer_store.insert(blinks(range(15), 7))
    peer = serve(Meters(), peer_store)
    factory = peer.listening.factory
    await peer.listening.stopListening()
    clock = Clock()
    clock.advance((T0 + 20 * SECOND) / 1000)
    counters = Counters()
    work = repairer(store, peer.url, counters=counters, clock=clock)
    service = RepairService(work, lambda: [1], 3600, lambda: succeed(None), clock)
    service.startService()
    try:
        clock.advance(0)
        await wait_until(lambda: counters.repair_failures == 1 and service._running is None)
        assert blink_numbers(database) == [0, 1, 2, 3, 4, 11, 12, 13, 14]
        clock.advance(1)
        assert service._running is None and counters.repair_failures == 1
        peer.listening = reactor.listenTCP(peer.port, factory, interface="127.0.0.1")
        clock.advance(10)
        await wait_until(lambda: counters.repaired == 6 and service._running is None)
        assert blink_numbers(database) == list(range(15))
        service.outage_ended()
        clock.advance(5)
        await wait_until(lambda: service._running is None)
        assert counters.repaired == 6
    finally:
        await service.stopService()
