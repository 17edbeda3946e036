"""
Metrics in Prometheus's text format, through its client library: the
daemon's counters, parked long-polls, live streams, the database pool, and
the count and latency of HTTP requests by route.
"""

import time
from bisect import bisect_left
from itertools import accumulate
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from klein import Klein
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import HTTPException

from blip.counters import GAUGES, Counters
from blip.db.pool import Pool
from blip.live.hub import Hub
from blip.web.v1.live import Live

#: The methods requests are counted by; any other counts as ``other``.
METHODS = {b"GET", b"HEAD", b"OPTIONS", b"POST", b"PUT", b"DELETE", b"PATCH"}
#: Most routes (and label combinations) remembered, whatever paths come.
MAX_CACHED = 4096
#: Latency buckets, in seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StateCollector(Collector):
    """
    Reads the daemon's state at each scrape.

    :param counters: the daemon's counters, each exported as
        ``blip_<name>_total``.
    :param hub: for the parked long-polls.
    :param live: for the live streams.
    :param pool: for the database connections.
    """

    def __init__(self, counters: Counters, hub: Hub, live: Optional[Live], pool: Pool) -> None:
        self.counters = counters
        self.hub = hub
        self.live = live
        self.pool = pool

    def collect(self) -> Iterable[Any]:
        for name, value in self.counters.as_dict().items():
            if name in GAUGES:
                yield GaugeMetricFamily(f"blip_{name}", f"blipserver's {name} now.", value=value)
            else:
                yield CounterMetricFamily(f"blip_{name}", f"blipserver's {name} counter.", value=value)
        yield GaugeMetricFamily(
            "blip_longpoll_waiters", "Long-poll clients parked now.", value=self.hub.waiting
        )
        if self.live is not None:
            yield GaugeMetricFamily(
                "blip_live_clients", "Live stream (SSE) clients now.", value=self.live.clients
            )
            yield CounterMetricFamily(
                "blip_live_dropped", "Live stream clients dropped for falling behind.",
                value=self.live.dropped,
            )
        state = self.pool.state()
        connections = GaugeMetricFamily(
            "blip_db_connections", "Database pool connections by state.", labels=["state"]
        )
        connections.add_metric(["total"], state.size)
        connections.add_metric(["alive"], state.alive)
        connections.add_metric(["busy"], state.busy)
        yield connections
        yield GaugeMetricFamily(
            "blip_db_waiting", "Queries waiting for a free database connection.",
            value=state.waiting,
        )


class RequestMetrics(Collector):
    """
    HTTP requests answered, and how long they took, by route: tallied in
    plain numbers (a request costs a few dictionary and list operations,
    no lock: everything runs on the reactor's thread), read by Prometheus
    at each scrape as a counter and a histogram.

    :param registry: where the metrics are registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        #: Requests by (route, method, status).
        self._requests: dict[tuple[str, bytes, int], int] = {}
        #: Per route: requests in each latency bucket (not cumulative; the
        #: last one past the largest bound), and the sum of their seconds.
        self._latency: dict[str, list[float]] = {}
        registry.register(self)

    def observe(self, route: str, method: bytes, status: int, seconds: float) -> None:
        """
        Count one answered request.
        """
        key = (route, method if method in METHODS else b"other", status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        tally = self._latency.get(route)
        if tally is None:
            tally = self._latency[route] = [0.0] * (len(BUCKETS) + 2)
        tally[bisect_left(BUCKETS, seconds)] += 1
        tally[-1] += seconds

    def collect(self) -> Iterable[Any]:
        requests = CounterMetricFamily(
            "blip_http_requests",
            "HTTP requests answered, by route template, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in self._requests.items():
            requests.add_metric([route, method.decode("ascii"), str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "blip_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template.",
            labels=["route"],
        )
        for route, tally in self._latency.items():
            cumulative = list(accumulate(tally[:-1]))
            bounds = [floatToGoString(bound) for bound in BUCKETS] + ["+Inf"]
            latency.add_metric([route], list(zip(bounds, cumulative)), tally[-1])
        yield latency


#: Names the route template of a request's path (its segments, as
#: ``request.postpath`` has them).
RouteNamer = Callable[[Sequence[bytes]], str]


def route_of(
    mounts: Mapping[bytes, Klein],
    default: Klein,
    front: Callable[[Sequence[bytes]], Optional[str]] = lambda segments: None,
) -> RouteNamer:
    """
    :param mounts: the application answering each first path segment.
    :param default: the application answering every other path.
    :param front: names the route of a path answered before the
        applications, if it is one.
    :return: a function that names the route template of a path (like
        ``/api/v1/meters/<meter>``), or ``none`` when no route matches.
    """

    # Every path parameter is a number: paths that differ only in their
    # numbers have the same route, found once.
    known: dict[tuple[bytes, ...], str] = {}

    def route(segments: Sequence[bytes]) -> str:
        shape = tuple(b"#" if segment.isdigit() else segment for segment in segments)
        name = known.get(shape)
        if name is None:
            name = match(segments)
            if len(known) < MAX_CACHED:
                known[shape] = name
        return name

    def match(segments: Sequence[bytes]) -> str:
        named = front(segments)
        if named is not None:
            return named
        first = segments[0] if segments else b""
        try:
            path = "/" + b"/".join(segments).decode("utf-8")
        except UnicodeDecodeError:
            return "none"
        adapter = mounts.get(first, default).url_map.bind("blip", path_info=path)
        # Every API route answers OPTIONS, and the page's catch-all does
        # not: asked first, OPTIONS names a route of the API, not the page.
        for method in ("OPTIONS", "GET"):
            try:
                rule, _ = adapter.match(path, method=method, return_rule=True)
            except HTTPException:
                continue
            return str(rule.rule)
        return "none"

    return route


class Metered(Resource):
    """
    Counts and times every request answered by ``inner``.

    :param inner: the resource answering.
    :param route: names a request's route from its path.
    :param metrics: where requests are counted.
    :param timer: seconds from some fixed point (a monotonic clock).
    """

    isLeaf = True

    def __init__(
        self,
        inner: IResource,
        route: RouteNamer,
        metrics: RequestMetrics,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.route = route
        self.metrics = metrics
        self.timer = timer

    def render(self, request: Request) -> Any:
        started = self.timer()
        assert request.postpath is not None  # set by the site before it renders
        route = self.route(request.postpath)
        body = self.inner.render(request)
        if body is not NOT_DONE_YET or request.finished:
            # Answered at once (what remains is sending it).
            self.metrics.observe(route, request.method, request.code, self.timer() - started)
            return body

        def done(_: object) -> None:
            self.metrics.observe(route, request.method, request.code, self.timer() - started)

        request.notifyFinish().addBoth(done)
        return body
