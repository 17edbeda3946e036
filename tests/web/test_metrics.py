"""
Tests of the metrics: /metrics in Prometheus's text format with every
family it promises, and requests counted by route template.
"""

from typing import Callable

import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from blip.counters import GAUGES, Counters
from blip.meters import Meters
from blip.web.metrics import RequestMetrics
from tests.conftest import Served, wait_until
from tests.web.v1.test_live import subscribe


@pytest_twisted.ensureDeferred
async def test_metrics(serve: Callable[..., Served]) -> None:
    """
    /metrics serves the counters (read by name; the current values as
    gauges, the running totals as counters), parked long-polls, live
    clients, database pool state, and requests and latencies by route,
    in Prometheus's text format.
    """
    counters = Counters()
    counters.lines = 7
    counters.garbage = 2
    site = serve(Meters(), counters=counters)
    await site.get("/api/v1/meters/1")
    await site.get("/api/v1/meters/1")
    await site.get("/api/v1/meters/9")
    await site.get("/last/1")
    await site.get("/api/v1/nowhere")
    await site.get("/blip/7")
    _, _, reader = await subscribe(site)
    await wait_until(lambda: site.live.clients == 1)
    code, headers, body = await site.get("/metrics")
    assert code == 200
    assert headers.getRawHeaders(b"Content-Type")[0].startswith(b"text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    types = {family.name: family.type for family in text_string_to_metric_families(body.decode())}
    # Open now: the live stream and the scrape (at least: others may not
    # be seen closing yet).
    assert samples[("blip_connections", ())] >= 2
    for name, value in counters.as_dict().items():
        if name == "connections":
            continue
        if name in GAUGES:
            assert (samples[(f"blip_{name}", ())], types[f"blip_{name}"]) == (value, "gauge")
        else:
            assert (samples[(f"blip_{name}_total", ())], types[f"blip_{name}"]) == (value, "counter")
    assert samples[("blip_live_clients", ())] == 1
    assert samples[("blip_longpoll_waiters", ())] == 0
    assert samples[("blip_live_dropped_total", ())] == 0
    assert samples[("blip_db_connections", (("state", "total"),))] == 3
    assert samples[("blip_db_connections", (("state", "alive"),))] == 3
    assert ("blip_db_waiting", ()) in samples

    def requests(route: str, status: str) -> float:
        return samples.get(
            ("blip_http_requests_total", (("method", "GET"), ("route", route), ("status", status))), 0
        )

    assert requests("/api/v1/meters/<meter>", "200") == 2
    assert requests("/api/v1/meters/<meter>", "404") == 1
    assert requests("/last/<meter>", "404") == 1
    assert requests("/blip/<meter>", "404") == 1
    assert requests("none", "404") == 1
    assert samples[
        ("blip_http_request_duration_seconds_count", (("route", "/api/v1/meters/<meter>"),))
    ] == 3
    reader.close()


def test_request_tallies_read_as_prometheus_counts_and_buckets() -> None:
    """
    Requests are tallied by route, method and status (methods outside the
    known ones together as ``other``), and their seconds in cumulative
    buckets whose bounds include the value on them, with count and sum,
    as Prometheus's own histogram reports them.
    """
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    for seconds in (0.0005, 0.0007, 0.02, 11.0):
        metrics.observe("/last", b"GET", 200, seconds)
    metrics.observe("/last", b"BREW", 405, 0.001)
    metrics.observe("/last", b"WHEN", 405, 0.001)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    route = (("route", "/last"),)
    assert samples[("blip_http_requests_total", (("method", "GET"),) + route + (("status", "200"),))] == 4
    assert samples[("blip_http_requests_total", (("method", "other"),) + route + (("status", "405"),))] == 2
    bucket = {
        le: samples[("blip_http_request_duration_seconds_bucket", (("le", le),) + route)]
        for le in ("0.0005", "0.001", "0.025", "10.0", "+Inf")
    }
    assert bucket == {"0.0005": 1, "0.001": 4, "0.025": 5, "10.0": 5, "+Inf": 6}
    assert samples[("blip_http_request_duration_seconds_count", route)] == 6
    assert abs(samples[("blip_http_request_duration_seconds_sum", route)] - 11.0232) < 1e-9
