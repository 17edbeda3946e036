"""
Tests of the points channel against a real PostgreSQL: what an ingest
write announces, how a notification is read, and the listener that feeds a
hub — seeding, live points, no point published twice, catching up after
its connection was cut while points were committed, and notifications
forged by a login that may only read, which no client sees.
"""

import json
from collections.abc import AsyncIterator
from typing import Callable

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from blip.counters import Counters
from blip.db.meter_table import MeterTable
from blip.db.node_state import MeterRows
from blip.db.pool import own_connection
from blip.db.readings import CHANNEL, NOTIFY_POINTS, listen
from blip.live.hub import Hub
from blip.live.notify import AHEAD, PAST, Listener, PayloadError, decode
from blip.meters import Meter, Meters, default_meter
from blip.model import INT_MAX, STAMP_MAX, Point
from tests.conftest import TIMEOUT, Forger, Served, wait_until
from tests.web.v1.test_live import subscribe

T0 = 1_700_000_000_000


def clock_at(ms: int) -> Clock:
    """:return: a clock showing unix time ``ms``."""
    clock = Clock()
    clock.advance(ms / 1000)
    return clock


def forged(points: list[Point]) -> str:
    """:return: a payload announcing ``points``, one group each."""
    return ";".join(f"{p.meter}:{p.stamp},{p.ms}" for p in points)


class Announcements:
    """
    The raw notifications on the points channel, seen by a connection of
    the test's own.
    """

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.connection = None

    async def open(self, dsn: str) -> None:
        """Connect and subscribe."""
        from twisted.internet import reactor

        self.connection = own_connection(reactor)
        self.connection.addNotifyObserver(lambda n: self.payloads.append(n.payload))
        await self.connection.connect(dsn)
        await listen(self.connection)

    def points(self) -> list[Point]:
        """Every point announced so far, decoded."""
        return [p for payload in self.payloads for p in decode(payload)]

    def close(self) -> None:
        """Disconnect."""
        self.connection.detector.stop()
        self.connection.close()


@pytest_twisted.async_yield_fixture
async def announcements(database, store) -> AsyncIterator[Announcements]:
    """
    A subscriber to the points channel of the test's database.
    """
    seen = Announcements()
    await seen.open(database.dsn)
    try:
        yield seen
    finally:
        seen.close()


def test_decode_reads_groups_and_steps() -> None:
    """
    A payload is groups per meter: the first point absolute, each next
    one as the step of its stamp.
    """
    assert decode("1:1000,10 5,20 1,30;7:2000,40") == [
        Point(1, 1000, 10), Point(1, 1005, 20), Point(1, 1006, 30), Point(7, 2000, 40)
    ]
    assert decode(f"{INT_MAX}:{STAMP_MAX},{INT_MAX}") == [Point(INT_MAX, STAMP_MAX, INT_MAX)]


@pytest.mark.parametrize(
    "payload",
    ["", "hello", "1:", "1:1000", "x:1000,10", "1:1000,10 0,10", "1:1000,10 -5,10",
     "1:1000,0", "1:1000,10;", f"1:{STAMP_MAX},10 1,10", f"{INT_MAX + 1}:1000,10",
     "-1:1000,10", "1:1000,10,5", "1:1000,1e3"],
)
def test_decode_refuses_anything_else(payload: str) -> None:
    """
    Whatever is not such a list of points (empty, truncated, steps that do
    not increase, values out of range) is a PayloadError, never a wrong
    point or another exception.
    """
    with pytest.raises(PayloadError):
        decode(payload)


@pytest_twisted.ensureDeferred
async def test_a_write_announces_its_new_points_once(store, announcements) -> None:
    """
    Each committed write announces exactly its new points, in order;
    points already stored (a spool written again) are not announced again.
    """
    first = [Point(1, T0 + i * 1000, 1000) for i in range(3)] + [Point(2, T0 + 500, 700)]
    assert await store.insert(first) == 4
    await wait_until(lambda: len(announcements.points()) == 4)
    again = first[2:] + [Point(1, T0 + 3000, 999)]
    assert await store.insert(again) == 1
    await wait_until(lambda: len(announcements.points()) == 5)
    assert announcements.points() == sorted(first, key=lambda p: (p.meter, p.stamp)) + [again[-1]]
    assert len(announcements.payloads) == 2


@pytest_twisted.ensureDeferred
async def test_a_large_write_is_split_under_the_payload_limit(store, announcements) -> None:
    """
    A write of thousands of points of several meters, with the longest
    values a point can have, is announced in notifications each under
    PostgreSQL's 8000-byte limit, which together carry every point.
    """
    points = [
        Point(INT_MAX - m, STAMP_MAX - 10_000_000 + i * 1234, INT_MAX - i)
        for m in range(3) for i in range(1000)
    ] + [Point(m, -(2**62) + i, 1) for m in range(3) for i in range(500)]
    assert await store.insert(points) == len(points)
    await wait_until(lambda: len(announcements.points()) == len(points))
    assert sorted(announcements.points(), key=lambda p: (p.meter, p.stamp)) == sorted(
        points, key=lambda p: (p.meter, p.stamp)
    )
    assert max(len(p.encode()) for p in announcements.payloads) < 8000
    assert len(announcements.payloads) == -(-len(points) // NOTIFY_POINTS)


@pytest_twisted.async_yield_fixture
async def listener(database, store) -> AsyncIterator[Listener]:
    """
    A listener feeding a fresh hub from the test's database, started after
    meter 1 has two points and meter 2 one.
    """
    from twisted.internet import reactor

    await store.insert([Point(1, T0, 1000), Point(1, T0 + 1000, 1000), Point(2, T0, 500)])
    meters = Meters([default_meter(m) for m in (1, 2, 3, 4)])
    listener = Listener(database.dsn, store, Hub(), meters, reactor, Counters(), clock=clock_at(T0))
    listener.start()
    try:
        await listener.when_live().addTimeout(TIMEOUT, reactor)
        yield listener
    finally:
        listener.stop()


def published(hub: Hub) -> list[Point]:
    """:return: a list that collects every point the hub publishes from now on."""
    seen: list[Point] = []
    hub.listen(seen.append)
    return seen


@pytest_twisted.ensureDeferred
async def test_listener_seeds_the_last_points_then_publishes_new_ones(listener, store) -> None:
    """
    At start the hub learns each meter's last point without publishing
    it; then every committed point is published once, and a long-poll
    parked on the hub gets the next one.
    """
    hub = listener.hub
    assert hub.last(1) == Point(1, T0 + 1000, 1000)
    assert hub.last(2) == Point(2, T0, 500)
    seen = published(hub)
    waiter = hub.wait(2)
    new = [Point(1, T0 + 2000, 1000), Point(2, T0 + 900, 900), Point(3, T0, 300)]
    await store.insert(new)
    await wait_until(lambda: len(seen) == 3)
    assert waiter.called and waiter.result == new[1]
    assert seen == new
    assert hub.last(3) == new[2]
    assert listener.counters.notified == 3


@pytest_twisted.ensureDeferred
async def test_a_point_the_hub_has_is_not_published_again(listener, store) -> None:
    """
    On a node that ingests and serves, a point is published on arrival and
    announced after its commit: the announcement publishes nothing. Nor
    does a point older than the newest one known.
    """
    hub = listener.hub
    seen = published(hub)
    own = Point(1, T0 + 5000, 1000)
    hub.publish(own)
    await store.insert([own, Point(1, T0 + 4000, 1000), Point(2, T0 + 100, 100)])
    await wait_until(lambda: listener.counters.notified == 3)
    assert seen == [own, Point(2, T0 + 100, 100)]


@pytest_twisted.ensureDeferred
async def test_a_foreign_notification_is_counted_and_ignored(listener, database, store, log_events) -> None:
    """
    Something else notifying on the channel does not disturb the
    listener: it is counted, logged once, and the next points arrive.
    """
    database.sql("SELECT pg_notify(%s, 'not points'), pg_notify(%s, '1:x')", (CHANNEL, CHANNEL))
    await wait_until(lambda: listener.counters.bad_notifications == 2)
    warned = [e for e in log_events if "not a list of points" in e.get("log_format", "")]
    assert len(warned) == 1
    seen = published(listener.hub)
    await store.insert([Point(1, T0 + 9000, 1000)])
    await wait_until(lambda: seen == [Point(1, T0 + 9000, 1000)])


@pytest_twisted.ensureDeferred
async def test_listener_catches_up_after_its_connection_is_cut(
    listener, database, store, pg_cluster, log_events
) -> None:
    """
    The LISTEN connection is cut and cannot reconnect for a while; points
    committed meanwhile (by writers whose connections stay open) are not
    announced to it. Once it is back it reads them from the database:
    a long-poll parked before the cut gets the first, a live listener gets
    each once and in order, and later points flow as before.
    """
    hub = listener.hub
    await store.insert([Point(4, T0 - 1000, 40)])
    await wait_until(lambda: hub.last(4) == Point(4, T0 - 1000, 40))
    seen = published(hub)
    waiter = hub.wait(1)
    missed = [Point(1, T0 + 2000 + i, 1000 + i) for i in range(7000)] + [Point(4, T0, 44)]

    async def meanwhile() -> None:
        await store.insert(missed[:5000])
        await store.insert(missed[5000:])

    await cut_off(listener, database, pg_cluster, meanwhile)
    assert waiter.called and waiter.result == missed[0]
    assert seen == missed
    assert listener.counters.caught_up == len(missed)
    later = Point(1, T0 + 100_000, 5)
    listener.clock.advance(100)
    await store.insert([later])
    await wait_until(lambda: seen[-1] == later)
    assert len(seen) == len(missed) + 1
    formats = [e.get("log_format", "") for e in log_events]
    assert sum("no live points from the database" in f for f in formats) == 1
    assert sum("live points from the database are back" in f for f in formats) == 1


async def cut_off(listener: Listener, database, pg_cluster, meanwhile: Callable) -> None:
    """
    Cut the listener's connection and keep it from reconnecting while
    ``meanwhile()`` runs; return once it is live again.
    """
    pg_cluster.sql("postgres", f"ALTER DATABASE {database.name} ALLOW_CONNECTIONS false")
    try:
        cut = pg_cluster.sql(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'blipserver listen' AND datname = %s",
            (database.name,),
        )
        assert cut == [(True,)]
        await wait_until(lambda: not listener.live)
        await meanwhile()
    finally:
        pg_cluster.sql("postgres", f"ALTER DATABASE {database.name} ALLOW_CONNECTIONS true")
    await listener.when_live().addTimeout(TIMEOUT, listener.reactor)


@pytest_twisted.ensureDeferred
async def test_a_meter_not_seen_starts_from_its_newest_point_after_a_cut(
    listener, database, store, pg_cluster
) -> None:
    """
    History of a meter the listener has not seen, imported (not announced)
    while it runs, is not replayed to live clients as new points when it
    catches up after a cut: that meter starts from its newest stored
    point, and its later points go live.
    """
    hub = listener.hub
    seen = published(hub)
    history = [Point(9, T0 - 86_400_000 + i * 1000, 1000) for i in range(500)]
    await store.insert(history, announce=False)

    async def meanwhile() -> None:
        await store.insert([Point(1, T0 + 2000, 1000)])

    await cut_off(listener, database, pg_cluster, meanwhile)
    assert seen == [Point(1, T0 + 2000, 1000)]
    assert hub.last(9) == history[-1]
    listener.meters.add(default_meter(9))
    await store.insert([Point(9, T0, 1000)])
    await wait_until(lambda: seen[-1] == Point(9, T0, 1000))
    assert listener.counters.caught_up == 1


@pytest_twisted.ensureDeferred
async def test_forged_notifications_reach_no_client(
    serve: Callable[..., Served], store, database, forger: Forger, log_events
) -> None:
    """
    A login that may only read the database announces points nobody
    stored: far ahead of now (which would freeze the meter's live feed),
    far behind, and of thousands of meter ids never seen (which would grow
    memory without bound). A parked long-poll and a live stream get the
    next real point and nothing else, the hub knows no new meter, and the
    forgeries are counted and logged once.
    """
    from twisted.internet import reactor

    assert not forger.may_write()
    meters = Meters([Meter(1)])
    site = serve(meters)
    now = int(site.clock.seconds() * 1000)
    await store.insert([Point(1, now - 5000, 1000)])
    listener = Listener(database.dsn, store, site.hub, meters, reactor, Counters(), clock=site.clock)
    listener.start()
    try:
        await listener.when_live().addTimeout(TIMEOUT, reactor)
        _, _, stream = await subscribe(site, "?meters=1")
        poll = Deferred.fromCoroutine(site.get("/blip/1"))
        await wait_until(lambda: site.hub.waiting == 1 and site.live.clients == 1)
        lies = [Point(1, now + 10**12, 1), Point(1, now + int(AHEAD * 1000) + 1, 1)]
        lies += [Point(1, now - int(PAST * 1000) - 1000, 1), Point(1, 10**9, 1)]
        lies += [Point(meter, now, 1) for meter in range(1000, 6000)]
        forger.notify(*[forged(lies[i:i + 100]) for i in range(0, len(lies), 100)])
        await wait_until(lambda: listener.counters.notified == len(lies))
        assert not poll.called
        real = Point(1, now, 900)
        await store.insert([real])
        status, _, body = await poll.addTimeout(TIMEOUT, reactor)
        assert (status, json.loads(body)) == (200, [now, 900])
        [event] = await stream.take(1)
        assert event.data["stamp"] == now
        assert site.hub.last(1) == real
        assert site.hub.newest_stamps().keys() == {1}
        assert listener.counters.notified_refused == len(lies)
        warned = [e for e in log_events if "points announced on" in e.get("log_format", "")]
        assert len(warned) == 1
        stream.close()
    finally:
        listener.stop()


@pytest_twisted.ensureDeferred
async def test_a_meter_written_to_the_meters_table_is_taken_at_once(
    store, database
) -> None:
    """
    A point of a meter not known here makes the meters table be read
    again (not more than every few seconds): once another node has
    written the meter there, its points go live without waiting for the
    next periodic reading.
    """
    from twisted.internet import reactor

    clock = clock_at(T0)
    meters = Meters([Meter(1)])
    rows = MeterRows(store.pool)
    table = MeterTable(rows, meters, clock)
    await table.load()
    listener = Listener(
        database.dsn, store, Hub(), meters, reactor, Counters(), clock=clock,
        refresh_meters=table.refreshing,
    )
    listener.start()
    try:
        await listener.when_live().addTimeout(TIMEOUT, reactor)
        seen = published(listener.hub)
        await rows.note_meter(Meter(5, label="Garage"))
        await store.insert([Point(5, T0, 1000)])
        await wait_until(lambda: 5 in meters)
        assert listener.counters.notified_refused == 1
        await store.insert([Point(5, T0 + 1000, 1000)])
        await wait_until(lambda: seen == [Point(5, T0 + 1000, 1000)])
        assert meters.get(5).label == "Garage"
    finally:
        listener.stop()


@pytest_twisted.ensureDeferred
async def test_listener_waits_for_a_database_that_is_not_there_yet(store, database, pg_cluster) -> None:
    """
    Started while its database refuses connections, the listener keeps
    trying and goes live once it may connect, seeded with the last points.
    """
    from twisted.internet import reactor

    await store.insert([Point(1, T0, 1000)])
    pg_cluster.sql("postgres", f"ALTER DATABASE {database.name} ALLOW_CONNECTIONS false")
    listener = Listener(database.dsn, store, Hub(), Meters(), reactor, Counters(), clock=clock_at(T0))
    try:
        listener.start()
        live = listener.when_live()
        await wait_until(lambda: listener.connection.detector.connectionIsDead)
        assert not live.called
        pg_cluster.sql("postgres", f"ALTER DATABASE {database.name} ALLOW_CONNECTIONS true")
        await live.addTimeout(TIMEOUT, reactor)
        assert listener.hub.last(1) == Point(1, T0, 1000)
    finally:
        pg_cluster.sql("postgres", f"ALTER DATABASE {database.name} ALLOW_CONNECTIONS true")
        listener.stop()
