"""
Tests of the operators' routes over a real port: /healthz for a fresh and
a stale serial source and an absent database, /metrics in Prometheus's
text format with every family it promises.
"""

import json
from typing import Callable

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from blip.counters import GAUGES, Counters
from blip.meters import Meters
from blip.model import Point
from tests.conftest import Served, wait_until
from tests.web.v1.test_live import subscribe


@pytest_twisted.ensureDeferred
async def test_healthy_while_blips_arrive(serve: Callable[..., Served]) -> None:
    """
    /healthz answers 200 while the source delivered a blip within the
    window (the start counts as one), and 503 naming the serial source once
    it has not for longer; a blip makes it healthy again.
    """
    site = serve(Meters())
    code, headers, body = await site.get("/healthz")
    assert code == 200
    assert headers.getRawHeaders(b"Content-Type") == [b"application/json"]
    report = json.loads(body)
    assert report["status"] == "ok"
    assert report["checks"]["database"] == {"ok": True}
    assert report["checks"]["serial"]["ok"] is True
    site.clock.advance(601)
    code, _, body = await site.get("/healthz")
    report = json.loads(body)
    assert (code, report["status"]) == (503, "fail")
    assert report["error"].startswith("serial: no blip for 601 s")
    assert report["checks"]["serial"] == {"ok": False, "seconds_since_blip": 601.0}
    site.hub.publish(Point(1, 1, 1000))
    assert (await site.get("/healthz"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_web_node_has_no_serial_check(serve: Callable[..., Served]) -> None:
    """
    A node without a serial source only checks the database.
    """
    site = serve(Meters(), has_source=False)
    site.clock.advance(10_000)
    code, _, body = await site.get("/healthz")
    assert (code, json.loads(body)["checks"]) == (200, {"database": {"ok": True}})


@pytest_twisted.ensureDeferred
async def test_unhealthy_without_the_database(serve: Callable[..., Served]) -> None:
    """
    With the database unreachable, /healthz answers 503 naming it, and
    the API answers 503 problems, not 500s.
    """
    site = serve(Meters())
    site.store.pool.close()
    code, _, body = await site.get("/healthz")
    report = json.loads(body)
    assert code == 503
    assert report["checks"]["database"]["ok"] is False
    assert report["error"].startswith("database: ")
    code, headers, body = await site.get("/api/v1/meters")
    assert code == 503 and json.loads(body)["status"] == 503


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
    for name, value in counters.as_dict().items():
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
    assert requests("none", "404") == 1
    assert samples[
        ("blip_http_request_duration_seconds_count", (("route", "/api/v1/meters/<meter>"),))
    ] == 3
    reader.close()
