"""
Wiring: builds the daemon's objects from its options and puts them in a
service tree. No logic lives here.
"""

# Loaded now, not on the first request: werkzeug's routing encodes each
# request's host name as IDNA, and once twistd --uid/--gid has made the
# daemon another user, Python's library may be out of its reach.
import encodings.idna  # noqa: F401
import gc
from pathlib import Path
from typing import Any, Optional

from prometheus_client import CollectorRegistry
from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import IService
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from blip.common.descriptors import raise_limit
from blip.common.lifecycle import AfterReady, CleanExit, Sequence
from blip.common.owned import Unsafe
from blip.common.statelock import StateDirInUse, hold, note_process
from blip.counters import Counters, CountersLog
from blip.db.embedded import Cluster, EmbeddedPostgres
from blip.db.legacy import LegacyQueries
from blip.db.meter_table import MeterTable
from blip.db.node_state import IngestPeriods, MeterRows
from blip.db.partitions import Partitions
from blip.db.pool import DatabaseService, Pool, PoolService
from blip.db.queries import Queries
from blip.db.readings import Readings
from blip.db.schema import Schema, schema_sql
from blip.db.tokens import Tokens
from blip.db.v1 import V1Queries
from blip.ingest.periods import ALIVE_INTERVAL, Periods, PeriodsService
from blip.ingest.spool import Spool
from blip.ingest.stamps import Stamps
from blip.ingest.writer import Ingest
from blip.live.hub import Hub, HubService
from blip.live.notify import Listener
from blip.mqtt.service import mqtt_service
from blip.options import TwistdOptions as Options
from blip.remote.client import Client
from blip.remote.repair import Repairer, RepairService
from blip.remote.upstream import RETRIABLE as UPSTREAM_RETRIABLE
from blip.remote.upstream import UPSTREAM_SPOOL, Copies, Forwarding, Upstream
from blip.source.arduino import MeterFactory
from blip.source.device import SerialEndpoint, SerialService
from blip.source.relay import Relay, RelayEndpoint
from blip.source.simulate import SimulatedHistory, SimulatorService
from blip.web.access import Refusals, Rules
from blip.web.connections import Door, plan
from blip.web.health import Health, Operations
from blip.web.hot import HotRoutes
from blip.web.latest import Latest
from blip.web.legacy import LegacyApi
from blip.web.metrics import RequestMetrics, StateCollector
from blip.web.site import web_site, with_backlog
from blip.web.v1.live import Live, LiveService
from blip.web.v1.routes import ApiV1
from blip.web.v1.writes import Writes

__all__ = ["Options", "makeService", "make_service"]

#: The page's files.
STATIC = Path(__file__).parent / "static"
#: The cyclic garbage collector's thresholds in the daemon.
GC_THRESHOLDS = (50_000, 20, 100)
#: Connections for the HTTP side's queries (to --db, and as many to
#: --db-read).
POOL_SIZE = 4
#: Connections of their own for ingest and what the node itself reads and
#: writes (the schema, meters, ingest periods, catching up with missed
#: notifications, health checks), so that however many queries the HTTP
#: side runs, and however long, a write never waits for them.
WRITE_POOL_SIZE = 2
#: The ingest spool's file name in the state dir.
SPOOL = "spool"
#: Seconds between readings of the meters table, for what other nodes wrote.
METERS_REFRESH = 60.0
#: Where ingest periods not yet recorded wait over a restart, in the state dir.
PERIODS = "ingest-periods.json"
#: Where each meter's newest stamp is kept over a restart, in the state dir.
STAMPS = "stamps.json"


def make_service(options: Options, reactor: Any = None, clock: Optional[IReactorTime] = None) -> IService:
    """
    Build the daemon.

    :param options: parsed and checked options.
    :param reactor: the reactor (the global one when None).
    :param clock: the time source for stamps and timeouts (the reactor when
        None).
    """
    if reactor is None:
        from twisted.internet import reactor
    clock = clock or reactor
    top = Sequence()
    clean_exit = CleanExit(reactor)
    clean_exit.setServiceParent(top)
    counters = Counters()
    meters = options["meters"]
    # A node that only forwards (no database) serves no HTTP.
    serves = options["role"] in ("all", "web") and options.database
    # What the HTTP side may hold at once, within the descriptors it may open.
    held = plan(
        raise_limit(reactor), options["max-connections"], options["max-connections-per-client"],
        options["max-waiters"],
    ) if serves else None
    hub = Hub(max_waiters=held.waiters if held else options["max-waiters"], counters=counters)
    if not options.database:
        return _forwarding_only(options, reactor, clock, top, counters, hub)

    before = None
    dsn = options["db"]
    if dsn is None:
        run_as = options.run_as
        cluster = Cluster.at(options["state-dir"] / "pg", run_as[0] if run_as else None)
        embedded = EmbeddedPostgres(cluster, reactor)
        embedded.setServiceParent(top)
        before, dsn = embedded.when_ready, embedded.dsn
    pool = Pool(dsn, WRITE_POOL_SIZE, reactor, counters, name="ingest")
    readings = Readings(pool)
    # The HTTP side's queries, each ended by the server after --query-timeout.
    timeout = options["query-timeout"]
    queries = Pool(dsn, POOL_SIZE, reactor, counters, timeout, name="query")
    # Read now, while the daemon may still be root.
    schema_sql()
    meter_table = MeterTable(MeterRows(pool), meters, clock)
    partitions = Partitions(pool, clock, options["keep-raw"])

    async def prepare() -> None:
        await Schema(pool, clock).apply()
        await meter_table.load()
        await partitions.load()

    database = DatabaseService(pool, prepare, before, fatal=clean_exit.fail, others=[queries] if serves else [])
    database.setServiceParent(top)
    TimerService(METERS_REFRESH, meter_table.refreshing).setServiceParent(top)
    AfterReady(
        "keeping the partitions of readings", database.when_ready, partitions.start, partitions.stop
    ).setServiceParent(top)

    has_source = options["role"] == "all" and bool(options["serial"] or options["simulate"])
    # /healthz judges the source by the blips this node reads from it.
    health = Health(readings, clock, options["health-window"], has_source)
    if options["role"] in ("all", "ingest"):
        stamps = Stamps(options["state-dir"] / STAMPS)
        spool = Spool(options["state-dir"] / SPOOL)
        ingest = Ingest(readings, hub, stamps, clock, counters, spool, pool.when_alive)
        AfterReady(
            "ingest", database.when_ready, ingest.start, ingest.stop, ingest.open
        ).setServiceParent(top)
        if options["upstream"] is not None:
            forward = _forwarding(options, reactor, clock, counters, Hub(), stamps, top)
            ingest.observe(Copies(forward))
        periods = Periods(IngestPeriods(pool), options["node-name"], clock, options["state-dir"] / PERIODS)
        opened = periods.opened
        if options["peer"]:
            peers = [Client(reactor, url, options["peer-token-file"]) for url in options["peer"]]
            repairs = RepairService(
                Repairer(peers, pool, counters, clock), lambda: [m.id for m in meters],
                options["peer-window"] * 86_400, database.when_ready, clock,
            )
            repairs.setServiceParent(top)

            def opened() -> None:
                periods.opened()
                repairs.outage_ended()

        factory = MeterFactory(
            health.watching(meter_table.noticing(ingest.receive)), stamps, clock, counters,
            meter_table.describe, opened=opened, lost=periods.lost,
        )
        _source(options, reactor, clock, counters, factory, top)
        if options["simulate"]:
            SimulatedHistory(list(meters), readings, database.when_ready, clock).setServiceParent(top)
            SimulatorService(list(meters), factory, clock).setServiceParent(top)
        # After the source, so that a stop is recorded before the source closes.
        PeriodsService(periods, database.when_ready, clock, stamps.keep).setServiceParent(top)
        if options["mqtt"] is not None:
            mqtt_service(
                options["mqtt"], options["mqtt-interval"], ingest, meters, readings,
                database.when_ready, reactor, clock,
            ).setServiceParent(top)

    CountersLog(counters, clock).setServiceParent(top)
    HubService(hub).setServiceParent(top)
    if held is not None:
        # Live points of every ingest node (an all node's own are published
        # on arrival, and not again: see blip.live.notify).
        listener = Listener(
            dsn, readings, hub, meters, reactor, counters, options["node-name"], clock,
            meter_table.refreshing,
        )
        AfterReady(
            "listening for live points", database.when_ready, listener.start, listener.stop
        ).setServiceParent(top)
        read_pool = queries
        if options["db-read"] is not None:
            read_pool = Pool(options["db-read"], POOL_SIZE, reactor, counters, timeout, name="replica")
            PoolService(read_pool).setServiceParent(top)
        # Live replays come from the primary: a replica may lag behind the
        # notifications.
        live = Live(hub, Readings(queries), meters, clock, max_clients=held.waiters)
        LiveService(live).setServiceParent(top)
        registry = CollectorRegistry()
        registry.register(StateCollector(counters, hub, live, queries))
        latest = Latest(hub, Queries(read_pool))
        rules = Rules(options["allow"], options["trusted-proxy"])
        refusals = Refusals(counters, clock)
        site = web_site(
            HotRoutes(hub, latest, meters, clock, options["longpoll-timeout"], reactor),
            LegacyApi(LegacyQueries(read_pool), clock, STATIC, partitions.raw_kept_since),
            ApiV1(
                V1Queries(read_pool), latest, live, meters, clock,
                Writes(
                    Tokens(queries), Readings(queries), hub, counters, clock,
                    lambda meter: meter_table.notice(meter, "through the write API"),
                ),
                partitions.raw_kept_since,
            ),
            Operations(health, registry),
            RequestMetrics(registry),
            rules,
            refusals,
            options["cors"],
            Door(rules, held.caps, counters, refusals, clock),
            reactor,
        )
        site.noisy = False
        strports.service(with_backlog(options["listen"]), site).setServiceParent(top)
    return top


def _source(
    options: Options, reactor: Any, clock: IReactorTime, counters: Counters, factory: MeterFactory,
    top: Sequence,
) -> None:
    """
    The serial device (or its relay) of --serial, if one is given, added
    to ``top``.
    """
    source = options["serial"]
    if source:
        endpoint: IStreamClientEndpoint
        if isinstance(source, Relay):
            endpoint = RelayEndpoint(
                reactor, source, options["baudrate"], counters, options["relay-silence"]
            )
        else:
            endpoint = SerialEndpoint(reactor, source, options["baudrate"], counters)
        SerialService(endpoint, factory, clock).setServiceParent(top)


def _forwarding(
    options: Options, reactor: Any, clock: IReactorTime, counters: Counters, hub: Hub,
    stamps: Stamps, top: Sequence, own_counters: Optional[Counters] = None,
) -> Ingest:
    """
    The ingest whose sink is the --upstream server (see blip.remote.upstream),
    with its own spool, added to ``top``.

    :param own_counters: its counters when it is this node's only ingest;
        else it has its own, and only its backlog is the daemon's
        ``forward_backlog``.
    """
    url = options["upstream"]
    client = Client(reactor, url, options["token-file"])

    def backlog(count: int) -> None:
        counters.forward_backlog = count
        if own_counters is not None:
            own_counters.backlog = count

    forward = Ingest(
        Upstream(client, counters), hub, stamps, clock, own_counters or Counters(),
        Spool(options["state-dir"] / UPSTREAM_SPOOL), name=f"upstream {url}",
        backlog=backlog, retriable=UPSTREAM_RETRIABLE,
    )
    forwarding = Forwarding(forward, client)
    AfterReady(
        "forwarding to the upstream", lambda: succeed(None), forwarding.start, forwarding.stop,
        forward.open,
    ).setServiceParent(top)
    return forward


def _forwarding_only(
    options: Options, reactor: Any, clock: IReactorTime, top: Sequence, counters: Counters, hub: Hub
) -> IService:
    """
    A node without a database that sends what it reads to --upstream
    alone: no embedded cluster, no HTTP.
    """
    meters = options["meters"]
    stamps = Stamps(options["state-dir"] / STAMPS)
    forward = _forwarding(options, reactor, clock, counters, hub, stamps, top, counters)
    factory = MeterFactory(forward.receive, stamps, clock, counters, meters.describe)
    _source(options, reactor, clock, counters, factory, top)
    if options["simulate"]:
        SimulatorService(list(meters), factory, clock).setServiceParent(top)
    TimerService(ALIVE_INTERVAL, stamps.keep).setServiceParent(top)
    CountersLog(counters, clock).setServiceParent(top)
    HubService(hub).setServiceParent(top)
    return top


def makeService(options: Options) -> IService:
    """
    The entry point ``twistd`` calls.
    """
    # Thousands of parked long-polls are many small objects living for
    # minutes: with Python's default thresholds the cyclic collector walks
    # them again and again while a blip is fanned out. Collecting far less
    # often halves the CPU time per answer (see bench/fanout.py).
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        lock = hold(options["state-dir"], options.run_as)
    except (StateDirInUse, Unsafe) as e:
        raise SystemExit(f"twistd blip: --state-dir: {e}") from None
    except OSError as e:
        raise SystemExit(f"twistd blip: --state-dir: cannot lock {options['state-dir']}: {e.strerror}") from None
    daemon = make_service(options)
    # Held (and so locked) as long as the daemon lives; twistd may fork
    # into the background before the reactor runs.
    daemon.state_lock = lock  # type: ignore[attr-defined]
    from twisted.internet import reactor

    reactor.callWhenRunning(note_process, lock)
    return daemon
