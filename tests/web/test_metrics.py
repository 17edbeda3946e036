"""
Tests of the metrics: /metrics in Prometheus's text format with every
family it promises, and requests counted by route template.
"""

from typing import Callable

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from blip.counters import GAUGES, Counters
from blip.meters import Meters
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
